//! The operations listener: a small HTTP/1.1 endpoint beside the data plane for orchestrators and monitoring.
//! `GET /healthz` answers whether the process and its shards are alive (a liveness probe), `GET /readyz` whether
//! it should get traffic (a readiness probe); `larder serve` and `larder dispatch` each run one (`--metrics ADDR`,
//! `--no-metrics`; `larder control` too). `GET /metrics` answers the process's metrics in Prometheus' text format
//! or OpenMetrics ([`crate::exposition`], negotiated with `Accept`), `GET /` a status page (one HTML file,
//! `ops_status.html`, no external assets) that fetches `GET /status.json` every second and draws it. A route is
//! one arm of [`route`] and, if it needs the process's state, one method of [`OpsProbe`].
//!
//! # Why plain threads, reading only published state
//! A probe matters most when the shards are in trouble, and must never cost a shard anything. So the listener runs
//! on its own OS threads, not on a shard, and a probe reads only what the process already publishes with atomics
//! (each shard's [`StatsHandle::liveness`], the control-plane agent's `connected`, a draining flag): no message to
//! a shard, no lock a shard takes. The control plane's tokio runtime is not always there (`--no-control`,
//! `dispatch` without `--control`), and a few probes a second need no async I/O.
//!
//! # Protocol (one request per connection)
//! 1. The accept thread (`larder-ops`) takes a connection. With [`CONNECTIONS_MAX`] already open it closes the new
//!    one at once (a flood of idle connections cannot pile up threads).
//! 2. A thread per connection reads the request head: at most [`REQUEST_BYTES_MAX`] bytes, all within
//!    [`TIMEOUT_MS`]; the body, if any, is not read.
//! 3. It answers and closes (`Connection: close`): `GET`/`HEAD` `/healthz` or `/readyz` → 200 `ok` or 503 with the
//!    reason as the body; `/metrics`, `/status.json`, `/` → 200 with the probe's figures (read from published
//!    snapshots on this thread, at the request: nothing is cached, nothing is sent to a shard); another path → 404; another method → 405; a head that does not parse → 400; a head over
//!    the limit → 431; a client silent past the deadline gets nothing.
//!
//! # Shutdown ([`OpsListener::shutdown`])
//! The stop flag is set and the accept thread is woken with a connection of our own; it exits without waiting
//! for connection threads (each ends within [`TIMEOUT_MS`]). Shutdown waits for it at most [`TIMEOUT_MS`]: after
//! a binary handover the listening socket is shared with the new process, which may take the waking connection.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`CONNECTIONS_MAX`] | 16 open connections | probes and a scraper; beyond, new ones are closed |
//! | [`REQUEST_BYTES_MAX`] | 4 KiB request head | a probe's head is ~100 bytes |
//! | [`TIMEOUT_MS`] | 2,000 ms per connection | Kubernetes' probe timeout is 1 s by default |
//! | [`HEARTBEAT_STALE_MS`] | 10,000 ms | a shard samples every 100 ms; 100 missed samples mean a stuck loop |
//! | `/metrics` size | ~6 KiB per shard, ~0.6 KiB per container per shard | written whole, then sent |
//! | status page | 15 KiB of HTML; `/status.json` ~1 KiB per shard | the page keeps 60 samples of history |

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use larder_runtime::StatsHandle;

use crate::exposition::{Exposition, Format};

/// The status page (`GET /`): it draws whatever `/status.json` holds (a node's shards, a dispatcher's back-ends,
/// a control plane's nodes).
pub const STATUS_PAGE_HTML: &str = include_str!("ops_status.html");

/// Most connections open at once.
pub const CONNECTIONS_MAX: usize = 16;
/// Largest request head read.
pub const REQUEST_BYTES_MAX: usize = 4 * 1024;
/// Most input read and dropped after a 431 answer, so that closing does not reset the connection.
const LINGER_BYTES_MAX: usize = 64 * 1024;
/// Longest a connection may take to send its head and read the answer.
pub const TIMEOUT_MS: u64 = 2_000;
/// A shard whose heartbeat (its statistics sample, every 100 ms) is older than this is not alive.
pub const HEARTBEAT_STALE_MS: u64 = 10_000;

/// What the probes ask. `Err` carries the reason, sent as the 503 answer's body.
pub trait OpsProbe: Send + Sync + 'static {
    /// Liveness: the process and its shards are alive (a failure asks an orchestrator to restart it).
    fn healthy(&self) -> Result<(), String>;
    /// Readiness: the process should get traffic now (a failure takes it out of a load balancer).
    fn ready(&self) -> Result<(), String>;
    /// `GET /metrics`: writes the process's metric families (none by default).
    fn metrics(&self, _out: &mut Exposition) {}
    /// `GET /status.json`: the status page's document (a JSON object; `{}` by default).
    fn status_json(&self) -> String {
        "{}".to_string()
    }
}

/// Liveness of a set of shards: every thread still running and every heartbeat younger than
/// [`HEARTBEAT_STALE_MS`]. The reason names the first shard that is not.
pub fn shards_alive(shards: &[StatsHandle]) -> Result<(), String> {
    for handle in shards {
        let liveness = handle.liveness();
        let shard = handle.shard().0;
        if !liveness.running {
            return Err(format!("shard {shard} has stopped"));
        }
        if liveness.since_sample_ms > HEARTBEAT_STALE_MS {
            return Err(format!(
                "shard {shard} has not turned its loop for {} ms",
                liveness.since_sample_ms
            ));
        }
    }
    Ok(())
}

/// Why the listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("binding the metrics listener on {addr}: {reason}")]
    Bind {
        addr: SocketAddr,
        reason: std::io::Error,
    },
    #[error("starting the metrics listener's thread: {0}")]
    Thread(std::io::Error),
}

/// A running listener; stop it with [`OpsListener::shutdown`] (dropping it leaves the thread to the process's end).
pub struct OpsListener {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// Closed when the accept thread exits.
    exited: std::sync::mpsc::Receiver<()>,
}

/// A bound, not yet answering listener: bind first (a taken address fails before anything else starts), then
/// [`OpsBound::start`] once the probe's state exists.
pub struct OpsBound {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl OpsBound {
    pub fn bind(addr: SocketAddr) -> Result<OpsBound, OpsError> {
        let bind_error = |reason| OpsError::Bind { addr, reason };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(OpsBound {
            listener,
            local_addr,
        })
    }

    /// A listener taken over from the process this one replaces (binary handover), already bound and listening.
    pub fn adopt(listener: TcpListener) -> Result<OpsBound, OpsError> {
        let local_addr = listener.local_addr().map_err(|reason| OpsError::Bind {
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            reason,
        })?;
        Ok(OpsBound {
            listener,
            local_addr,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A second descriptor of the listening socket (to offer it to the next process in a binary handover).
    pub fn try_clone_listener(&self) -> std::io::Result<TcpListener> {
        self.listener.try_clone()
    }

    /// Starts the accept thread (connections that arrived since the bind wait in the backlog).
    pub fn start(self, probe: Arc<dyn OpsProbe>) -> Result<OpsListener, OpsError> {
        let OpsBound {
            listener,
            local_addr,
        } = self;
        let stop = Arc::new(AtomicBool::new(false));
        let accept_stop = Arc::clone(&stop);
        let (exiting, exited) = std::sync::mpsc::channel::<()>();
        let accept = std::thread::Builder::new()
            .name("larder-ops".to_string())
            .spawn(move || {
                let _exiting = exiting;
                accept_loop(&listener, &accept_stop, &probe)
            })
            .map_err(OpsError::Thread)?;
        Ok(OpsListener {
            local_addr,
            stop,
            accept: Some(accept),
            exited,
        })
    }
}

impl OpsListener {
    /// The bound address (the real port when `addr` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Shutdown (module docs): returns once the accept thread has exited, at once if it cannot be woken, and after
    /// [`TIMEOUT_MS`] if another process sharing the socket took the waking connection.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        let woken = TcpStream::connect_timeout(&wake, Duration::from_millis(TIMEOUT_MS)).is_ok();
        if let Some(accept) = self.accept.take() {
            let exited = woken
                && self
                    .exited
                    .recv_timeout(Duration::from_millis(TIMEOUT_MS))
                    .is_err_and(|error| error == std::sync::mpsc::RecvTimeoutError::Disconnected);
            if exited {
                let _ = accept.join();
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, probe: &Arc<dyn OpsProbe>) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        // Step 1: a connection over the limit is closed (dropped) unanswered.
        if open.load(Ordering::SeqCst) >= CONNECTIONS_MAX {
            continue;
        }
        open.fetch_add(1, Ordering::SeqCst);
        let (probe, connection_open) = (Arc::clone(probe), Arc::clone(&open));
        let spawned = std::thread::Builder::new()
            .name("larder-ops-conn".to_string())
            .spawn(move || {
                serve_connection(stream, probe.as_ref());
                connection_open.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Steps 2 and 3 for one connection.
fn serve_connection(mut stream: TcpStream, probe: &dyn OpsProbe) {
    let deadline = Instant::now() + Duration::from_millis(TIMEOUT_MS);
    let (answer, unread_input) = match read_head(&mut stream, deadline) {
        Ok(head) => (answer_for(&head, probe), false),
        Err(HeadError::TooLarge) => (Answer::new(431, "request head too large\n"), true),
        Err(HeadError::Closed) => return,
    };
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let _ = stream.set_write_timeout(Some(left()));
    if stream.write_all(&answer.bytes()).is_err() || !unread_input {
        return;
    }
    // Closing with unread input would reset the connection and could destroy the answer in flight: half-close,
    // then read and drop the rest (at most LINGER_BYTES_MAX, within the deadline) until the client closes.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut chunk = [0u8; 512];
    let mut drained = 0;
    while drained < LINGER_BYTES_MAX && stream.set_read_timeout(Some(left())).is_ok() {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
        if Instant::now() >= deadline {
            break;
        }
    }
}

enum HeadError {
    /// The client closed, failed or missed the deadline before a whole head arrived.
    Closed,
    TooLarge,
}

/// Reads until the blank line that ends the head.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Closed);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        if head.len() > REQUEST_BYTES_MAX {
            return Err(HeadError::TooLarge);
        }
    }
    Ok(head)
}

struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
    /// `HEAD`: headers only.
    head_only: bool,
    allow: bool,
}

impl Answer {
    fn new(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            head_only: false,
            allow: false,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let allow = if self.allow {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut bytes = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// Step 3: the answer to one parsed head.
fn answer_for(head: &[u8], probe: &dyn OpsProbe) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let (Ok(httparse::Status::Complete(_)), Some(method), Some(target)) =
        (request.parse(head), request.method, request.path)
    else {
        return Answer::new(400, "bad request\n");
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let mut answer = Answer::new(405, "only GET and HEAD\n");
        answer.allow = true;
        return answer;
    }
    let path = target.split('?').next().unwrap_or(target);
    let accept = request
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("accept"))
        .and_then(|header| std::str::from_utf8(header.value).ok());
    let mut answer = route(path, accept, probe);
    answer.head_only = head_only;
    answer
}

/// The routes.
fn route(path: &str, accept: Option<&str>, probe: &dyn OpsProbe) -> Answer {
    let with_type = |content_type, body| Answer {
        content_type,
        ..Answer::new(200, body)
    };
    let verdict = match path {
        "/healthz" => probe.healthy(),
        "/readyz" => probe.ready(),
        "/metrics" => {
            let mut exposition = Exposition::new(Format::negotiate(accept));
            probe.metrics(&mut exposition);
            let content_type = exposition.format().content_type();
            return with_type(content_type, exposition.finish());
        }
        "/status.json" => return with_type("application/json", probe.status_json()),
        "/" => return with_type("text/html; charset=utf-8", STATUS_PAGE_HTML.to_string()),
        _ => {
            return Answer::new(
                404,
                "not found: /, /status.json, /metrics, /healthz, /readyz\n",
            )
        }
    };
    match verdict {
        Ok(()) => Answer::new(200, "ok\n"),
        Err(reason) => Answer::new(503, format!("{reason}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed {
        ready: Result<(), String>,
    }

    impl OpsProbe for Fixed {
        fn healthy(&self) -> Result<(), String> {
            Ok(())
        }
        fn ready(&self) -> Result<(), String> {
            self.ready.clone()
        }
    }

    fn answer(head: &str, ready: Result<(), String>) -> String {
        let answer = answer_for(head.as_bytes(), &Fixed { ready });
        String::from_utf8(answer.bytes()).unwrap()
    }

    #[test]
    fn routes_methods_and_bad_heads() {
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer(&get("/healthz"), Ok(())).starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(answer(&get("/readyz?verbose"), Ok(())).ends_with("\r\n\r\nok\n"));
        let draining = answer(&get("/readyz"), Err("draining".into()));
        assert!(draining.starts_with("HTTP/1.1 503 "), "{draining}");
        assert!(draining.ends_with("\r\n\r\ndraining\n"), "{draining}");
        assert!(answer(&get("/metricz"), Ok(())).starts_with("HTTP/1.1 404 "));
        let metrics = answer(&get("/metrics"), Ok(()));
        assert!(
            metrics.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{metrics}"
        );
        let openmetrics = answer(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
            Ok(()),
        );
        assert!(
            openmetrics.starts_with("HTTP/1.1 200 ") && openmetrics.ends_with("\r\n\r\n# EOF\n"),
            "{openmetrics}"
        );
        let page = answer(&get("/"), Ok(()));
        assert!(page.contains("Content-Type: text/html"), "{page}");
        assert!(page.ends_with("</html>\n"), "the whole page");
        assert!(answer(&get("/status.json"), Ok(())).ends_with("\r\n\r\n{}"));
        let post = answer("POST /readyz HTTP/1.1\r\n\r\n", Ok(()));
        assert!(
            post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET, HEAD\r\n"),
            "{post}"
        );
        assert!(answer("GARBAGE\r\n\r\n", Ok(())).starts_with("HTTP/1.1 400 "));
        let head = answer("HEAD /healthz HTTP/1.1\r\n\r\n", Ok(()));
        assert!(
            head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(head.contains("Content-Length: 3\r\n"), "{head}");
    }
}
