//! Forwarding on one shard: a request whose target another node owns goes there over a pooled keep-alive
//! node-to-node connection, and the peer's response is relayed to the client through one buffer.
//!
//! # One forward ([`Forwarder::forward`], numbered as in the code)
//! 1. Only a GET or HEAD without a body is forwarded, and never one that carries `X-Larder-Forwarded` (it was
//!    forwarded once already: serving it here makes loops impossible even when two nodes disagree).
//! 2. The [`Directory`](super::Directory) routes the normalised path; anything but `Forward(peer)` is served here.
//!    A target the directory does not know yet (`Unknown`: its first request on this node) waits up to
//!    `assign_wait_ms` (checking every millisecond) for the control plane's answer, which the feeder fetches in
//!    batches every 5 ms: serving it here at once would cache it on every node that sees it first and cost the
//!    cluster one cold miss per node per target; waiting costs the first request a few milliseconds once.
//! 3. The request head is copied into the relay buffer with `X-Larder-Forwarded: <this node id>` added before
//!    the blank line; the rest of the head is forwarded verbatim (so `Connection: close` from the client also
//!    ends the pooled connection).
//! 4. An idle connection to the peer is taken from this shard's pool (newest first), else one is connected
//!    (`connect_timeout_ms`). The head is written; the response head is read (`read_timeout_ms` per read) and
//!    parsed with `larder_dispatch::http`.
//! 5. The head and the `Content-Length` body are relayed to the client through the same buffer; a response
//!    without a length is relayed until the peer closes, then the client connection closes too.
//! 6. The peer connection returns to the pool when its response allowed keep-alive and ended exactly at the
//!    end of what was read, unless the peer would end it after its next request (peers are assumed to share
//!    this node's `keepalive_requests_max`): so a peer's `Connection: close` reaches a client only when the
//!    client's own request or this node's limits close the client connection, and then the forwarded head
//!    carries `Connection: close` itself.
//!
//! # Failures
//! - A pooled connection closed before any response byte (the peer closed it while idle) is replaced by a
//!   fresh connection once; that is not a peer failure (`stale_reconnects`).
//! - A connect error, a timeout or a close before any byte reached the client: the peer is marked suspect
//!   ([`Directory::peer_failed`](super::Directory::peer_failed)), this shard's idle connections to it are
//!   dropped, and the request is served here (`fallbacks`): the client never sees the failure.
//! - A malformed response head, one larger than the relay buffer, an interim 1xx or a chunked body (larder
//!   nodes never send one): 502 and the client connection closes (`bad_gateway`).
//! - A response that fits the relay buffer (head + body ≤ 32 KiB) is read whole before its first byte is
//!   written to the client, so a peer dying mid-response is a failure before any byte too.
//! - A failure after bytes reached the client closes the client connection (it sees a truncated response).
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`IDLE_PER_PEER_MAX`] | 16 idle connections per peer per shard | more are closed; a shard rarely has 16 forwards in flight to one peer |
//! | [`POOLED_PEERS_MAX`] | 64 peers per shard with idle connections | bounds the pool to 1,024 sockets per shard |
//! | [`RELAY_BUFFER_BYTES`] | 32 KiB per forward in flight | one read of the peer, written on unchanged; a larger response head → 502 |
//! | [`FREE_BUFFERS_MAX`] | 16 relay buffers kept per shard | reuse without unbounded growth (512 KiB) |
//! | [`CONNECT_TIMEOUT_MS`] | 1 s | a live node on a LAN connects in < 1 ms |
//! | [`ASSIGN_WAIT_MS`] | 20 ms for a target's first request on a node | about 4 feeder batches; then it is served here |
//! | [`READ_TIMEOUT_MS`] | 10 s per read of the peer | a cold miss on a slow disk, not a hung exchange |

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_dispatch::http::{parse_response, BodyFraming};
use larder_dispatch::relay::{self, timed, IoFail};
use monoio::net::TcpStream;

use super::{Cluster, Route};
use crate::http::{Method, RequestHead};

/// The request field that marks a forwarded request (its value: the forwarding node's id).
pub const FORWARDED_HEADER: &str = "X-Larder-Forwarded";
/// The response field naming the node that served the request (cluster mode only).
pub const NODE_HEADER: &str = "X-Larder-Node";
/// Idle connections kept per peer per shard.
pub const IDLE_PER_PEER_MAX: usize = 16;
/// Peers per shard with idle connections.
pub const POOLED_PEERS_MAX: usize = 64;
/// The relay buffer of one forward (and the largest response head).
pub const RELAY_BUFFER_BYTES: usize = 32 * 1024;
/// Relay buffers kept for reuse per shard.
pub const FREE_BUFFERS_MAX: usize = 16;
/// Connecting to a peer.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How long a request for a target this node has no assignment for waits for the control plane's answer.
pub const ASSIGN_WAIT_MS: u64 = 20;
/// One read from (or write to) a peer.
pub const READ_TIMEOUT_MS: u64 = 10_000;

/// Timeouts of forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardConfig {
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    /// Wait for the assignment of a target not yet known here (0: serve such a request here at once).
    pub assign_wait_ms: u64,
    /// One write to the client (the node's `write_timeout_ms`).
    pub client_write_timeout_ms: u64,
    /// Requests a peer connection carries at most: peers are assumed to share this node's
    /// `keepalive_requests_max` (1,000 by default), and a connection is retired one request before it.
    pub peer_requests_max: u32,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            connect_timeout_ms: CONNECT_TIMEOUT_MS,
            read_timeout_ms: READ_TIMEOUT_MS,
            assign_wait_ms: ASSIGN_WAIT_MS,
            client_write_timeout_ms: 60_000,
            peer_requests_max: 1_000,
        }
    }
}

/// One shard's forwarding counters (monotonic; [`Cluster::stats`] sums them).
#[derive(Debug, Default)]
pub struct ForwardCounters {
    pub forwards: AtomicU64,
    pub forward_failures: AtomicU64,
    pub fallbacks: AtomicU64,
    pub forwarded_in: AtomicU64,
    pub bad_gateway: AtomicU64,
    pub stale_reconnects: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How one exchange with a peer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// A pooled connection was closed before any response byte: retry on a fresh one.
    Stale,
    /// The peer failed before any byte reached the client: serve here.
    Peer,
    /// The peer's response cannot be relayed: 502.
    Malformed,
    /// The client already has part of a response (or the client failed): close the client connection.
    Abort { peer_fault: bool },
}

/// Reads into `slot[len..RELAY_BUFFER_BYTES]`; 0 means the peer closed. After a timeout `slot` is left empty.
async fn read_more(
    stream: &mut TcpStream,
    slot: &mut Vec<u8>,
    timeout_ms: u64,
) -> Result<usize, IoFail> {
    relay::read_more(stream, slot, RELAY_BUFFER_BYTES, timeout_ms).await
}

/// Writes `slot[..to]` completely. After a timeout `slot` is left empty.
async fn write_prefix(
    stream: &mut TcpStream,
    slot: &mut Vec<u8>,
    to: usize,
    timeout_ms: u64,
) -> Result<(), IoFail> {
    relay::write_range(stream, slot, 0, to, timeout_ms).await
}

/// Whether a request head carries `X-Larder-Forwarded` (any case).
pub fn is_forwarded(head: &[u8]) -> bool {
    let name = FORWARDED_HEADER.as_bytes();
    head.split(|&byte| byte == b'\n').skip(1).any(|line| {
        line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name) && {
            line[name.len()..]
                .iter()
                .find(|byte| !matches!(byte, b' ' | b'\t'))
                == Some(&b':')
        }
    })
}

/// Step 3: `head` (a whole request head, blank line included) with `X-Larder-Forwarded: <node_id>` added, and
/// `Connection: close` when this node closes the client connection after the response anyway (so the relayed
/// response tells the client; a head with both `keep-alive` and `close` means close).
pub fn forwarded_head(out: &mut Vec<u8>, head: &[u8], node_id: SocketAddr, close: bool) {
    use std::io::Write as _;
    out.clear();
    let fields = if head.ends_with(b"\r\n\r\n") {
        &head[..head.len() - 2]
    } else if head.ends_with(b"\n\n") {
        &head[..head.len() - 1]
    } else {
        head
    };
    out.extend_from_slice(fields);
    let _ = write!(out, "{FORWARDED_HEADER}: {node_id}\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\n502 Bad Gateway\n";

/// A connection to a peer and the exchanges it carried.
struct PeerConn {
    stream: TcpStream,
    exchanges: u32,
}

/// One shard's forwarding state: its pool of idle peer connections and spare relay buffers.
pub(crate) struct Forwarder {
    cluster: Arc<Cluster>,
    shard: usize,
    idle: RefCell<HashMap<SocketAddr, Vec<PeerConn>>>,
    buffers: RefCell<Vec<Vec<u8>>>,
}

impl Forwarder {
    pub(crate) fn new(cluster: Arc<Cluster>, shard: usize) -> Forwarder {
        assert!(
            shard < cluster.counters.len(),
            "shard {shard} of a cluster state made for {} shards",
            cluster.counters.len()
        );
        Forwarder {
            cluster,
            shard,
            idle: RefCell::new(HashMap::new()),
            buffers: RefCell::new(Vec::new()),
        }
    }

    /// Steps 1-6 for one parsed request whose whole head is `request` and normalised path is `path`;
    /// `keep_alive`: this node keeps the client connection after the response (else the peer is asked to say
    /// `Connection: close`). `None`: serve it here. `Some(keep)`: a response was relayed (or a 502 sent); `keep`
    /// is whether the client connection may stay open as far as the relayed response says.
    pub(crate) async fn forward(
        &self,
        path: &[u8],
        head: &RequestHead<'_>,
        request: &[u8],
        keep_alive: bool,
        client: &mut TcpStream,
    ) -> Option<bool> {
        // Step 1.
        if head.method == Method::Other || head.content_length > 0 {
            return None;
        }
        let counters = self.cluster.shard_counters(self.shard);
        if is_forwarded(request) {
            bump(&counters.forwarded_in);
            return None;
        }
        // Step 2.
        let path = std::str::from_utf8(path).ok()?;
        let directory = self.cluster.directory();
        let mut route = directory.route(path, self.cluster.now_ms());
        let mut waited_ms = 0;
        while route == Route::Unknown && waited_ms < self.cluster.forward.assign_wait_ms {
            monoio::time::sleep(Duration::from_millis(1)).await;
            waited_ms += 1;
            route = directory.route(path, self.cluster.now_ms());
        }
        let Route::Forward(peer) = route else {
            return None;
        };
        // Steps 3-6.
        let node_id = self.cluster.node_id();
        let is_head = head.method == Method::Head;
        let mut buf = self.buffers.borrow_mut().pop().unwrap_or_default();
        let mut outcome = Err(Fail::Stale);
        let pooled = self.idle.borrow_mut().get_mut(&peer).and_then(Vec::pop);
        if let Some(stream) = pooled {
            forwarded_head(&mut buf, request, node_id, !keep_alive);
            outcome = self.exchange(peer, stream, &mut buf, is_head, client).await;
            if outcome == Err(Fail::Stale) {
                bump(&counters.stale_reconnects);
            }
        }
        if outcome == Err(Fail::Stale) {
            forwarded_head(&mut buf, request, node_id, !keep_alive);
            outcome = match self.connect(peer).await {
                Some(stream) => self.exchange(peer, stream, &mut buf, is_head, client).await,
                None => Err(Fail::Peer),
            };
        }
        if buf.capacity() >= RELAY_BUFFER_BYTES {
            let mut buffers = self.buffers.borrow_mut();
            if buffers.len() < FREE_BUFFERS_MAX {
                buffers.push(buf);
            }
        }
        match outcome {
            Ok(keep) => {
                bump(&counters.forwards);
                Some(keep)
            }
            Err(Fail::Stale | Fail::Peer) => {
                bump(&counters.forward_failures);
                bump(&counters.fallbacks);
                self.peer_failed(peer);
                None
            }
            Err(Fail::Malformed) => {
                bump(&counters.bad_gateway);
                let mut answer = BAD_GATEWAY.to_vec();
                let timeout_ms = self.cluster.forward.client_write_timeout_ms;
                let _ = write_prefix(client, &mut answer, BAD_GATEWAY.len(), timeout_ms).await;
                Some(false)
            }
            Err(Fail::Abort { peer_fault }) => {
                if peer_fault {
                    bump(&counters.forward_failures);
                    self.peer_failed(peer);
                }
                Some(false)
            }
        }
    }

    fn peer_failed(&self, peer: SocketAddr) {
        tracing::debug!(%peer, "forward failed; peer suspect");
        self.cluster
            .directory()
            .peer_failed(peer, self.cluster.now_ms());
        self.idle.borrow_mut().remove(&peer);
    }

    async fn connect(&self, peer: SocketAddr) -> Option<PeerConn> {
        let timeout_ms = self.cluster.forward.connect_timeout_ms;
        match timed(timeout_ms, TcpStream::connect_addr(peer)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Some(PeerConn {
                    stream,
                    exchanges: 0,
                })
            }
            _ => None,
        }
    }

    /// Pools a connection after an exchange, unless the peer would close it on the next one (it ends a
    /// connection after `keepalive_requests_max` requests, and its `Connection: close` would reach the client).
    fn put_idle(&self, peer: SocketAddr, mut connection: PeerConn) {
        connection.exchanges += 1;
        if connection.exchanges + 1 >= self.cluster.forward.peer_requests_max {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        if idle.len() >= POOLED_PEERS_MAX && !idle.contains_key(&peer) {
            return;
        }
        let stack = idle.entry(peer).or_default();
        if stack.len() < IDLE_PER_PEER_MAX {
            stack.push(connection);
        }
    }

    /// Steps 4-6 on one connection; `buf` holds the forwarded head.
    async fn exchange(
        &self,
        peer: SocketAddr,
        connection: PeerConn,
        buf: &mut Vec<u8>,
        is_head: bool,
        client: &mut TcpStream,
    ) -> Result<bool, Fail> {
        let config = &self.cluster.forward;
        let silent = if connection.exchanges > 0 {
            Fail::Stale
        } else {
            Fail::Peer
        };
        let PeerConn {
            stream: mut upstream,
            exchanges,
        } = connection;
        let head_len = buf.len();
        write_prefix(&mut upstream, buf, head_len, config.read_timeout_ms)
            .await
            .map_err(|_| silent)?;
        buf.clear();
        buf.reserve(RELAY_BUFFER_BYTES);
        let response = loop {
            match parse_response(buf, is_head) {
                Ok(Some(head)) if head.status >= 200 => break head,
                Ok(Some(_)) | Err(_) => return Err(Fail::Malformed),
                Ok(None) if buf.len() >= RELAY_BUFFER_BYTES => return Err(Fail::Malformed),
                Ok(None) => {}
            }
            match read_more(&mut upstream, buf, config.read_timeout_ms).await {
                Ok(read) if read > 0 => {}
                Err(IoFail::Timeout) => return Err(Fail::Peer),
                _ if buf.is_empty() => return Err(silent),
                _ => return Err(Fail::Peer),
            }
        };
        let until_close = response.framing == BodyFraming::UntilClose;
        let mut body_left = match response.framing {
            BodyFraming::Empty => 0,
            BodyFraming::Length(length) => length,
            BodyFraming::UntilClose => u64::MAX,
            BodyFraming::Chunked => return Err(Fail::Malformed),
        };
        // A response that fits the relay buffer reaches the client whole or not at all: read it all before
        // the first write, so a peer dying mid-response still falls back to local service.
        let whole = (response.head_bytes as u64).saturating_add(body_left);
        while !until_close && (buf.len() as u64) < whole && buf.len() < RELAY_BUFFER_BYTES {
            match read_more(&mut upstream, buf, config.read_timeout_ms).await {
                Ok(read) if read > 0 => {}
                _ => return Err(Fail::Peer),
            }
        }
        let mut start = response.head_bytes;
        let mut leftover = false;
        loop {
            let available = buf.len() - start;
            let take = body_left.min(available as u64) as usize;
            if !until_close {
                body_left -= take as u64;
            }
            leftover |= start + take < buf.len();
            write_prefix(client, buf, start + take, config.client_write_timeout_ms)
                .await
                .map_err(|_| Fail::Abort { peer_fault: false })?;
            buf.clear();
            if body_left == 0 {
                break;
            }
            match read_more(&mut upstream, buf, config.read_timeout_ms).await {
                Ok(read) if read > 0 => start = 0,
                Ok(_) if until_close => return Ok(false),
                _ => return Err(Fail::Abort { peer_fault: true }),
            }
        }
        if response.keep_alive && !leftover {
            let connection = PeerConn {
                stream: upstream,
                exchanges,
            };
            self.put_idle(peer, connection);
        }
        Ok(response.keep_alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_field_is_found_in_any_case_and_not_in_the_request_line() {
        assert!(is_forwarded(
            b"GET / HTTP/1.1\r\nx-larder-forwarded: 1.2.3.4:5\r\n\r\n"
        ));
        assert!(is_forwarded(
            b"GET / HTTP/1.1\r\nX-Larder-Forwarded : a\r\n\r\n"
        ));
        assert!(!is_forwarded(b"GET /X-Larder-Forwarded: HTTP/1.1\r\n\r\n"));
        assert!(!is_forwarded(
            b"GET / HTTP/1.1\r\nX-Larder-Forwarded-For: a\r\n\r\n"
        ));
    }

    #[test]
    fn forwarded_head_adds_one_field_before_the_blank_line() {
        let node: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut out = Vec::new();
        forwarded_head(&mut out, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", node, false);
        assert_eq!(
            out,
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-Larder-Forwarded: 127.0.0.1:9\r\n\r\n"
        );
        forwarded_head(&mut out, b"GET /a HTTP/1.1\nHost: x\n\n", node, false);
        assert_eq!(
            out,
            b"GET /a HTTP/1.1\nHost: x\nX-Larder-Forwarded: 127.0.0.1:9\r\n\r\n"
        );
        forwarded_head(&mut out, b"GET /a HTTP/1.1\r\n\r\n", node, true);
        assert_eq!(
            out,
            b"GET /a HTTP/1.1\r\nX-Larder-Forwarded: 127.0.0.1:9\r\nConnection: close\r\n\r\n"
        );
        assert!(is_forwarded(&out));
    }
}
