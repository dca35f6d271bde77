//! The data path of one shard: accept clients, and for every request on a client connection choose a back-end,
//! forward the request over a pooled keep-alive connection and relay the response.
//!
//! # One exchange (numbered as in the code)
//! 1. Read the request head into the connection's head buffer (at most `head_bytes_max`: 431 beyond it; a
//!    malformed head 400; a chunked request body 501). While no byte of a request has arrived, shutdown or
//!    `client_idle_timeout_ms` closes the connection.
//! 2. Key = `TargetId::from_path` of the normalised path (no query). The balancer takes the policy's choice,
//!    else its fallbacks, else any other live back-end, the first under its pending cap (all full: 503 +
//!    `Retry-After`; none live: 503 + `Retry-After`), and counts the request on it.
//! 3. Take an idle connection to that back-end from this shard's pool (newest first) or connect
//!    (`connect_timeout_ms`). Write the head (verbatim) and the body as it arrives from the client.
//! 4. Read the response head into the relay buffer (`backend_timeout_ms`), parse status and framing, write the
//!    head and whatever body bytes came with it to the client, then read and write body bytes through the same
//!    buffer until the framing says the body ended (Content-Length, chunked scan, or back-end close). Interim
//!    1xx heads are relayed and the real head read after them.
//! 5. The back-end connection returns to the pool when the response allowed keep-alive and ended exactly at the
//!    end of what was read; the client connection stays open when both the request and the response allow it.
//!
//! # Failures (before any response byte reached the client)
//! - A pooled connection that fails (closed by the back-end while idle) is replaced by a fresh connection once,
//!   for requests that are entirely buffered and idempotent; this is not a back-end failure.
//! - A connect error, a timeout or a connection closed before a response marks the back-end down (passive
//!   health). Malformed responses do not (the node is up, its answer is wrong).
//! - A GET/HEAD without body is then retried once on another back-end if the retry budget allows; otherwise
//!   the client gets 502 (504 for a timeout).
//!
//! Once a response byte reached the client, a failure closes the client connection (the client sees a
//! truncated response, as from the back-end itself).
//!
//! Responses are relayed byte for byte: no header is added (no `Via`), so a client cannot tell the dispatcher
//! from the back-end except by the connection it holds.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use larder_lard::TargetId;
use larder_runtime::{DriverKind, ShardContext};
use monoio::net::TcpStream;

use crate::balancer::{Counters, Ticket};
use crate::config::RETRY_AFTER_S;
use crate::dispatcher::Shared;
use crate::http::{
    parse_request, parse_response, BodyFraming, ChunkedScanner, HeadError, RequestHead,
};
use crate::relay::{read_more, timed, write_range, IoFail};

/// Idle keep-alive connections to one back-end slot, newest last, for the address they were opened to.
#[derive(Default)]
struct IdleStack {
    addr: Option<SocketAddr>,
    streams: Vec<TcpStream>,
}

/// A shard's own state: its idle back-end connections and its RNG for the policy.
struct Shard {
    shared: Arc<Shared>,
    context: ShardContext<()>,
    /// One stack per back-end slot (grown on first use, at most `BACKENDS_MAX`), each at most
    /// `idle_connections_per_backend_max` connections.
    idle: RefCell<Vec<IdleStack>>,
    rng: Cell<u64>,
}

impl Shard {
    /// xorshift64*: the policy's `random` argument (seeded per shard, so runs are repeatable per shard).
    fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The stack of `ticket`'s slot, emptied first when the slot now names another address (it was reused).
    fn with_stack<R>(&self, ticket: Ticket, use_stack: impl FnOnce(&mut Vec<TcpStream>) -> R) -> R {
        let mut idle = self.idle.borrow_mut();
        let index = ticket.backend.0 as usize;
        if idle.len() <= index {
            idle.resize_with(index + 1, IdleStack::default);
        }
        let stack = &mut idle[index];
        if stack.addr != Some(ticket.addr) {
            stack.streams.clear();
            stack.addr = Some(ticket.addr);
        }
        use_stack(&mut stack.streams)
    }

    fn take_idle(&self, ticket: Ticket) -> Option<TcpStream> {
        self.with_stack(ticket, Vec::pop)
    }

    fn put_idle(&self, ticket: Ticket, stream: TcpStream) {
        let max = self.shared.config.idle_connections_per_backend_max;
        self.with_stack(ticket, |stack| {
            if stack.len() < max {
                stack.push(stream);
            }
        });
    }
}

/// The shard's init future: take the listener and accept until shutdown.
pub(crate) async fn run_shard(context: ShardContext<()>, shared: Arc<Shared>) {
    let index = context.shard().index();
    let listener = shared.listeners[index]
        .lock()
        .map(|mut slot| slot.take())
        .unwrap_or(None);
    let shard = Rc::new(Shard {
        idle: RefCell::new(Vec::new()),
        rng: Cell::new(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1)),
        shared,
        context,
    });
    if let Some(listener) = listener {
        accept_loop(shard, listener).await;
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: std::net::TcpListener) {
    let driver = shard.context.driver();
    let listener = listener
        .set_nonblocking(driver == DriverKind::Epoll)
        .and_then(|()| monoio::net::TcpListener::from_std(listener));
    let listener = match listener {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(shard = %shard.context.shard(), %error, "cannot register the listener");
            return;
        }
    };
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = shard.context.shutdown_requested() => return,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                shard.context.spawn(serve_client(Rc::clone(&shard), stream));
            }
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A response the dispatcher makes itself.
async fn respond(stream: &mut TcpStream, status: u16, keep_alive: bool, timeout_ms: u64) -> bool {
    let reason = match status {
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Gateway Timeout",
    };
    let retry_after = if status == 503 {
        format!("Retry-After: {RETRY_AFTER_S}\r\n")
    } else {
        String::new()
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let body = format!("{status} {reason}\n");
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{retry_after}Connection: {connection}\r\n\r\n{body}",
        body.len()
    );
    let mut bytes = text.into_bytes();
    let length = bytes.len();
    write_range(stream, &mut bytes, 0, length, timeout_ms)
        .await
        .is_ok()
        && keep_alive
}

/// Serves one client connection until it closes, fails or the shard shuts down.
async fn serve_client(shard: Rc<Shard>, mut client: TcpStream) {
    let config = &shard.shared.config;
    let mut head_buf: Vec<u8> = Vec::with_capacity(config.head_bytes_max);
    let mut relay: Vec<u8> = Vec::new();
    loop {
        // Step 1: a complete request head.
        let request = loop {
            if !head_buf.is_empty() {
                match parse_request(&head_buf) {
                    Ok(Some(request)) => break request,
                    Ok(None) => {}
                    Err(error) => {
                        let status = match error {
                            HeadError::TooManyHeaders => 431,
                            HeadError::ChunkedRequestBody => 501,
                            _ => 400,
                        };
                        respond(&mut client, status, false, config.client_idle_timeout_ms).await;
                        return;
                    }
                }
            }
            if head_buf.len() >= config.head_bytes_max {
                respond(&mut client, 431, false, config.client_idle_timeout_ms).await;
                return;
            }
            let idle = head_buf.is_empty();
            let read = read_more(
                &mut client,
                &mut head_buf,
                config.head_bytes_max,
                config.client_idle_timeout_ms,
            );
            let outcome = if idle {
                monoio::select! {
                    outcome = read => Some(outcome),
                    _ = shard.context.shutdown_requested() => None,
                }
            } else {
                Some(read.await)
            };
            if !matches!(outcome, Some(Ok(n)) if n > 0) {
                return;
            }
        };
        Counters::bump(&shard.shared.counters.requests);
        let keep_alive = exchange(&shard, &mut client, &mut head_buf, &request, &mut relay).await;
        if !keep_alive {
            return;
        }
    }
}

/// What went wrong in one attempt on one back-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Nothing reached the client yet; the back-end is at fault.
    Backend { fault: BackendFault, reused: bool },
    /// The client failed, or the client already has part of a response: close the client connection.
    Abort,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BackendFault {
    Connect,
    Timeout,
    Closed,
    Malformed,
}

impl BackendFault {
    fn status(self) -> u16 {
        if self == BackendFault::Timeout {
            504
        } else {
            502
        }
    }

    /// Passive health: does this fault mark the back-end down?
    fn marks_down(self) -> bool {
        self != BackendFault::Malformed
    }
}

/// Decrements the balancer's count for a started request however the attempt ends (also when the task is
/// dropped at the drain deadline).
struct Started {
    shared: Arc<Shared>,
    ticket: Ticket,
    target: TargetId,
}

impl Drop for Started {
    fn drop(&mut self) {
        let now_ms = self.shared.now_ms();
        self.shared
            .balancer()
            .finish(self.ticket, self.target, now_ms);
    }
}

/// Steps 2–5 for one request, with the retry rules; returns whether the client connection stays open. On
/// return `head_buf` holds only the bytes after this request (a pipelined next request).
async fn exchange(
    shard: &Rc<Shard>,
    client: &mut TcpStream,
    head_buf: &mut Vec<u8>,
    request: &RequestHead,
    relay: &mut Vec<u8>,
) -> bool {
    let shared = &shard.shared;
    let target = TargetId::from_path(&request.target_path);
    let request_bytes = request.head_bytes as u64 + request.body_bytes;
    let buffered = (head_buf.len() as u64).min(request_bytes) as usize;
    let whole_request_buffered = buffered as u64 == request_bytes;
    let retryable = request.idempotent && whole_request_buffered;
    let mut exclude = None;
    let mut last_fault: Option<BackendFault> = None;
    for _attempt in 0..2 {
        let now_ms = shared.now_ms();
        let chosen = shared
            .balancer()
            .begin(target, exclude, now_ms, shard.random());
        let ticket = match chosen {
            Ok(ticket) => ticket,
            Err(refusal) => {
                // A retry that finds no back-end reports the first attempt's failure.
                let status = last_fault.map_or(503, BackendFault::status);
                tracing::debug!(?refusal, path = %request.target_path, status, "no back-end");
                return refuse(shard, client, head_buf, request, buffered, status).await;
            }
        };
        let started = Started {
            shared: Arc::clone(shared),
            ticket,
            target,
        };
        let result = attempt(
            shard, ticket, client, head_buf, buffered, request, relay, retryable,
        )
        .await;
        drop(started);
        match result {
            Ok(client_keep_alive) => {
                head_buf.drain(..buffered);
                return client_keep_alive;
            }
            Err(Failure::Abort) => return false,
            Err(Failure::Backend { fault, reused }) => {
                if fault.marks_down() && !reused {
                    shared.set_health(ticket.backend, ticket.addr, true, "request failed");
                }
                last_fault = Some(fault);
                let now_ms = shared.now_ms();
                let request_intact = head_buf.len() >= buffered;
                let may_retry = retryable && request_intact;
                if !shared.balancer().fail(ticket, may_retry, now_ms) {
                    break;
                }
                Counters::bump(&shared.counters.retries);
                exclude = Some(ticket.backend);
            }
        }
    }
    let status = last_fault.map_or(502, BackendFault::status);
    refuse(shard, client, head_buf, request, buffered, status).await
}

/// Answers `status` instead of a back-end's response; keeps the connection only when the request's body was
/// fully buffered (else the rest of it would be read as the next request).
async fn refuse(
    shard: &Rc<Shard>,
    client: &mut TcpStream,
    head_buf: &mut Vec<u8>,
    request: &RequestHead,
    buffered: usize,
    status: u16,
) -> bool {
    let counters = &shard.shared.counters;
    Counters::bump(match status {
        503 => &counters.responses_503,
        504 => &counters.responses_504,
        _ => &counters.responses_502,
    });
    let complete = buffered as u64 == request.head_bytes as u64 + request.body_bytes;
    head_buf.drain(..buffered);
    let keep_alive = request.keep_alive && complete;
    respond(
        client,
        status,
        keep_alive,
        shard.shared.config.client_idle_timeout_ms,
    )
    .await
}

async fn connect(shard: &Shard, addr: SocketAddr) -> Result<TcpStream, Failure> {
    let config = &shard.shared.config;
    let connected = timed(config.connect_timeout_ms, TcpStream::connect_addr(addr)).await;
    let fault = match connected {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            return Ok(stream);
        }
        Ok(Err(_)) => BackendFault::Connect,
        Err(_) => BackendFault::Timeout,
    };
    Err(Failure::Backend {
        fault,
        reused: false,
    })
}

/// One attempt on `backend`, including the single stale-connection replacement.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    shard: &Rc<Shard>,
    ticket: Ticket,
    client: &mut TcpStream,
    head_buf: &mut Vec<u8>,
    buffered: usize,
    request: &RequestHead,
    relay: &mut Vec<u8>,
    retryable: bool,
) -> Result<bool, Failure> {
    if let Some(stream) = shard.take_idle(ticket) {
        match forward(
            shard, ticket, stream, true, client, head_buf, buffered, request, relay,
        )
        .await
        {
            Err(Failure::Backend { reused: true, .. }) if retryable => {}
            other => return other,
        }
    }
    let stream = connect(shard, ticket.addr).await?;
    forward(
        shard, ticket, stream, false, client, head_buf, buffered, request, relay,
    )
    .await
}

fn backend_failure(fail: IoFail, reused: bool) -> Failure {
    let fault = match fail {
        IoFail::Timeout => BackendFault::Timeout,
        IoFail::Closed => BackendFault::Closed,
    };
    Failure::Backend { fault, reused }
}

/// Steps 3–5 on one back-end connection. On a `Failure::Backend` the request bytes are still in `head_buf`
/// unless a timeout took them (the caller checks before retrying).
#[allow(clippy::too_many_arguments)]
async fn forward(
    shard: &Rc<Shard>,
    ticket: Ticket,
    mut upstream: TcpStream,
    reused: bool,
    client: &mut TcpStream,
    head_buf: &mut Vec<u8>,
    buffered: usize,
    request: &RequestHead,
    relay: &mut Vec<u8>,
) -> Result<bool, Failure> {
    let config = &shard.shared.config;
    let backend_timeout_ms = config.backend_timeout_ms;
    let client_timeout_ms = config.client_idle_timeout_ms;
    if relay.capacity() < config.relay_buffer_bytes {
        *relay = Vec::with_capacity(config.relay_buffer_bytes);
    }
    relay.clear();
    let relay_end = relay.capacity();
    // Step 3: the request head and the buffered part of its body.
    write_range(&mut upstream, head_buf, 0, buffered, backend_timeout_ms)
        .await
        .map_err(|fail| backend_failure(fail, reused))?;
    let mut body_left = request.head_bytes as u64 + request.body_bytes - buffered as u64;
    while body_left > 0 {
        // The rest of the body streams through the relay buffer (such a request is never retried).
        relay.clear();
        let end = relay_end.min(body_left as usize);
        let n = match read_more(client, relay, end, client_timeout_ms).await {
            Ok(n) if n > 0 => n,
            _ => return Err(Failure::Abort),
        };
        write_range(&mut upstream, relay, 0, n, backend_timeout_ms)
            .await
            .map_err(|fail| backend_failure(fail, reused))?;
        body_left -= n as u64;
    }
    relay.clear();
    // Step 4: the response head (after any interim 1xx heads).
    let mut client_has_bytes = false;
    let response = loop {
        match parse_response(relay, request.is_head) {
            Ok(Some(head)) if (100..200).contains(&head.status) && head.status != 101 => {
                write_range(client, relay, 0, head.head_bytes, client_timeout_ms)
                    .await
                    .map_err(|_| Failure::Abort)?;
                client_has_bytes = true;
                relay.drain(..head.head_bytes);
                continue;
            }
            Ok(Some(head)) => break head,
            Ok(None) if relay.len() < relay_end => {}
            Ok(None) | Err(_) => {
                relay.clear();
                return Err(if client_has_bytes {
                    Failure::Abort
                } else {
                    Failure::Backend {
                        fault: BackendFault::Malformed,
                        reused: false,
                    }
                });
            }
        }
        let fail = match read_more(&mut upstream, relay, relay_end, backend_timeout_ms).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => IoFail::Closed,
            Err(fail) => fail,
        };
        relay.clear();
        return Err(if client_has_bytes {
            Failure::Abort
        } else {
            backend_failure(fail, reused)
        });
    };
    // Relay the head, then the body, through the same buffer.
    let mut start = response.head_bytes;
    let mut body_left = match response.framing {
        BodyFraming::Length(length) => length,
        _ => 0,
    };
    let mut scanner = ChunkedScanner::default();
    let mut leftover = false;
    loop {
        let available = relay.len();
        let (end, done, broken) = match response.framing {
            BodyFraming::Empty => (start, true, false),
            BodyFraming::Length(_) => {
                let take = body_left.min((available - start) as u64) as usize;
                body_left -= take as u64;
                (start + take, body_left == 0, false)
            }
            BodyFraming::Chunked => match scanner.feed(&relay[start..]) {
                Ok(Some(used)) => (start + used, true, false),
                Ok(None) => (available, false, false),
                // Relay what came and close: the client sees the back-end's broken framing.
                Err(_) => (available, true, true),
            },
            BodyFraming::UntilClose => (available, false, false),
        };
        leftover |= end < available;
        write_range(client, relay, 0, end, client_timeout_ms)
            .await
            .map_err(|_| Failure::Abort)?;
        relay.clear();
        if broken {
            return Err(Failure::Abort);
        }
        if done {
            break;
        }
        match read_more(&mut upstream, relay, relay_end, backend_timeout_ms).await {
            Ok(0) if response.framing == BodyFraming::UntilClose => return Ok(false),
            Ok(n) if n > 0 => start = 0,
            _ => return Err(Failure::Abort),
        }
    }
    // Step 5.
    if response.keep_alive && !leftover {
        shard.put_idle(ticket, upstream);
    }
    Ok(request.keep_alive && response.keep_alive && !leftover)
}
