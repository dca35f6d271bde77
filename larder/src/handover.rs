//! Binary handover for `larder serve`: a new process started with `--take-over PATH` takes the listening sockets
//! of the running one (started with `--handover-socket PATH`), serves on them, and the running one drains and
//! exits 0. The descriptor passing and the exchange are `larder_runtime::handover`'s; this module decides which
//! sockets go (every HTTP listener of the node, one per accepting shard, labelled `http`, and the embedded control
//! plane's gRPC listener, labelled `control`), checks them against the new configuration, and turns the outcome
//! into what each process does.
//!
//! # Protocol (numbered as the processes do it; docs/OPERATIONS.md, "Binary handover", is the operator's version)
//! 1. The running process, started with `--handover-socket PATH`, keeps a duplicate of each listening socket and
//!    offers them on PATH ([`Offer`]).
//! 2. The new process validates its flags and config file first (a bad one exits 2 before anything is asked).
//! 3. It connects to PATH and receives the sockets ([`take_over`]); a second handover while one is in progress,
//!    or after one is done, is refused.
//! 4. It checks them: each is a listening TCP socket; the HTTP ones share one address, which must be its
//!    `--listen` (port 0 there adopts any port); the control socket is adopted if its embedded control plane
//!    would listen on that address (port 0: any), else left to the old process (`--no-control`, `--join`, or
//!    another address, bound afresh). Any failure: it tells the old one why (`ABORT`) and exits 2.
//! 5. It starts its shards and control link on the sockets ([`larder_server::Node::start_on`]). Both processes
//!    now accept from the same sockets; each connection is served by the one that accepted it. A failure here
//!    drains what it accepted, then step 4's `ABORT` and exit 2.
//! 6. It sends `READY`; the old process answers `STOPPING` and raises SIGTERM on itself: the usual drain (stop
//!    accepting, finish in-flight responses, answer an idle keep-alive connection's next request with
//!    `Connection: close`), exit 0. The socket queues are never closed: the new process holds them.
//! 7. The new process, with `--handover-socket`, offers its own sockets for the next upgrade (on the same PATH,
//!    replacing the old process's socket file).
//!
//! # Limits
//! Every wait is bounded (`larder_runtime::handover`): 10 s for the sockets, 60 s for the new process to be
//! ready (past that the old one gives up and keeps serving; the new one, finding nobody to confirm, drains and
//! exits 2), 10 s for the confirmation. At most 253 sockets (one per accepting shard plus the control plane's).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context as _;
use larder_runtime::handover::{self as exchange, HandoverListener, OfferSession, Taken};

use crate::node_link::ControlMode;

/// Label of the node's HTTP listeners.
const HTTP: &str = "http";
/// Label of the embedded control plane's gRPC listener.
const CONTROL: &str = "control";
/// Label of the health and metrics listener (`--metrics`).
const METRICS: &str = "metrics";

/// The listening sockets a `larder serve` starts on.
pub struct Listeners {
    /// One per accepting shard when bound here; the old process's when taken over.
    pub http: Vec<TcpListener>,
    /// The old process's control plane socket, when this process's embedded control plane adopts it.
    pub control: Option<TcpListener>,
    /// The old process's health and metrics listener, if it ran one (`serve` adopts it if `--metrics` names it).
    pub metrics: Option<TcpListener>,
}

/// The new process's side of a handover in progress (steps 5-6): dropping it without [`Successor::ready`]
/// aborts the handover, and the old process keeps serving.
pub struct Successor {
    taken: Taken,
    path: PathBuf,
}

/// Step 3-4: takes the sockets over from the process offering them on `path`, checked against this process's
/// `listen` address and control mode.
pub fn take_over(
    path: &Path,
    listen: SocketAddr,
    control: ControlMode,
) -> anyhow::Result<(Successor, Listeners)> {
    let mut taken =
        exchange::take_over(path).with_context(|| format!("--take-over {}", path.display()))?;
    match adopt(&mut taken, listen, control) {
        Ok(listeners) => Ok((
            Successor {
                taken,
                path: path.to_path_buf(),
            },
            listeners,
        )),
        Err(error) => {
            let error = error.context(format!("--take-over {}", path.display()));
            taken.abort(&format!("{error:#}"));
            Err(error)
        }
    }
}

fn adopt(taken: &mut Taken, listen: SocketAddr, control: ControlMode) -> anyhow::Result<Listeners> {
    let http = taken
        .take_labelled(HTTP)
        .into_iter()
        .map(|fd| exchange::tcp_listener(HTTP, fd))
        .collect::<Result<Vec<_>, _>>()?;
    let mut controls = taken.take_labelled(CONTROL);
    let mut metrics = taken.take_labelled(METRICS);
    if let Some(unknown) = taken.sockets.first() {
        anyhow::bail!(
            "the running process sent a socket labelled {:?}, which this version does not know",
            unknown.label
        );
    }
    anyhow::ensure!(
        !http.is_empty(),
        "the running process sent no HTTP listener"
    );
    anyhow::ensure!(
        controls.len() <= 1 && metrics.len() <= 1,
        "the running process sent {} control and {} metrics sockets",
        controls.len(),
        metrics.len()
    );
    let metrics = metrics
        .pop()
        .map(|fd| exchange::tcp_listener(METRICS, fd))
        .transpose()?;
    let http_addr = http[0]
        .local_addr()
        .context("the HTTP listener's address")?;
    for listener in &http[1..] {
        let addr = listener
            .local_addr()
            .context("an HTTP listener's address")?;
        anyhow::ensure!(
            addr == http_addr,
            "the running process's HTTP listeners differ in address: {http_addr} and {addr}"
        );
    }
    anyhow::ensure!(
        address_matches(listen, http_addr),
        "--listen {listen}: the running process listens on {http_addr}; a handover keeps the address (give \
         --listen {http_addr}, or stop the old process and start anew to move it)"
    );
    let control = match (controls.pop(), control) {
        (Some(fd), ControlMode::Embedded { listen, .. }) => {
            let listener = exchange::tcp_listener(CONTROL, fd)?;
            let addr = listener
                .local_addr()
                .context("the control listener's address")?;
            if address_matches(listen, addr) {
                Some(listener)
            } else {
                tracing::info!(%addr, %listen, "not adopting the old control plane's socket: this one listens elsewhere");
                None
            }
        }
        (Some(_), ControlMode::Off | ControlMode::Join(_)) => {
            tracing::info!(
                "not adopting the old control plane's socket: this process runs no control plane"
            );
            None
        }
        (None, _) => None,
    };
    Ok(Listeners {
        http,
        control,
        metrics,
    })
}

/// `configured` names `actual`: the same IP, and the same port unless the configured one is 0 (any).
fn address_matches(configured: SocketAddr, actual: SocketAddr) -> bool {
    configured.ip() == actual.ip() && (configured.port() == 0 || configured.port() == actual.port())
}

impl Successor {
    /// Step 6: tells the old process this one serves; it answers that it stops.
    pub fn ready(self) -> anyhow::Result<()> {
        let path = self.path;
        self.taken.ready().with_context(|| {
            format!(
                "--take-over {}: the running process did not confirm the handover (it keeps serving)",
                path.display()
            )
        })?;
        tracing::info!(path = %path.display(), "took the listening sockets over; the old process drains and exits");
        Ok(())
    }

    /// Step 5 failed: tells the old process why; it keeps serving.
    pub fn abort(self, error: &anyhow::Error) {
        self.taken.abort(&format!("{error:#}"));
    }

    /// The path taken over from (the successor may offer its own sockets there next).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One `larder serve` start's part in handovers: the sockets it starts on (bound here, or taken over), and its
/// own offer for the next upgrade. [`Handover::begin`] → start the node and control link on
/// [`Handover::http_listeners`] and [`Handover::control_listener`] → [`Handover::complete`] (or
/// [`Handover::abort`] on a failure).
pub struct Handover {
    successor: Option<Successor>,
    http: Vec<TcpListener>,
    control: Option<TcpListener>,
    metrics: Option<TcpListener>,
    /// Duplicates of the HTTP listeners, kept to offer them (only with `--handover-socket`).
    http_copies: Vec<OwnedFd>,
    offer_path: Option<PathBuf>,
    /// A fresh process binds its offer's path at once, so a path in use fails before anything starts.
    offer_listener: Option<HandoverListener>,
}

impl Handover {
    /// Steps 1-4: binds the HTTP listeners (`take_over: None`) or takes them over from the process offering
    /// them on `take_over`; with `handover_socket`, keeps duplicates to offer there later.
    pub fn begin(
        take_over: Option<&Path>,
        handover_socket: Option<&Path>,
        config: &larder_server::ServeConfig,
        control: ControlMode,
    ) -> anyhow::Result<Handover> {
        let offer_listener = match (take_over, handover_socket) {
            (None, Some(path)) => Some(
                HandoverListener::bind(path, false)
                    .with_context(|| format!("--handover-socket {}", path.display()))?,
            ),
            _ => None,
        };
        let (successor, listeners) = match take_over {
            Some(path) => {
                let (successor, listeners) = self::take_over(path, config.listen, control)?;
                (Some(successor), listeners)
            }
            None => (
                None,
                Listeners {
                    http: larder_server::Node::bind(config).context("starting the node")?,
                    control: None,
                    metrics: None,
                },
            ),
        };
        let copy = |listener: &TcpListener| listener.as_fd().try_clone_to_owned();
        let http_copies = match handover_socket {
            Some(_) => listeners
                .http
                .iter()
                .map(copy)
                .collect::<Result<_, _>>()
                .context("keeping the listeners to offer them")?,
            None => Vec::new(),
        };
        Ok(Handover {
            successor,
            http: listeners.http,
            control: listeners.control,
            metrics: listeners.metrics,
            http_copies,
            offer_path: handover_socket.map(Path::to_path_buf),
            offer_listener,
        })
    }

    /// The HTTP listeners to start the node on (once).
    pub fn http_listeners(&mut self) -> Vec<TcpListener> {
        std::mem::take(&mut self.http)
    }

    /// The old process's control plane socket, to serve the embedded control plane on (once).
    pub fn control_listener(&mut self) -> Option<TcpListener> {
        self.control.take()
    }

    /// The old process's health and metrics listener, if it sent one (once).
    pub fn metrics_listener(&mut self) -> Option<TcpListener> {
        self.metrics.take()
    }

    /// Step 5 failed: the old process (if any) keeps serving and is told why.
    pub fn abort(self, error: &anyhow::Error) {
        if let Some(successor) = self.successor {
            successor.abort(error);
        }
    }

    /// Steps 6-7: tells the old process (if any) to stop, then offers this process's sockets (with
    /// `--handover-socket`) for the next upgrade; `control` is the embedded control plane's socket, if one runs,
    /// and `metrics` the health and metrics listener's. An error means the old process did not confirm: it keeps
    /// serving, and this one should stop.
    pub fn complete(
        self,
        control: Option<&TcpListener>,
        metrics: Option<TcpListener>,
    ) -> anyhow::Result<Option<Offer>> {
        let taken_from = self
            .successor
            .as_ref()
            .map(|successor| successor.path().to_path_buf());
        if let Some(successor) = self.successor {
            successor.ready()?;
        }
        let Some(path) = self.offer_path else {
            return Ok(None);
        };
        let mut sockets: Vec<(&'static str, OwnedFd)> =
            self.http_copies.into_iter().map(|fd| (HTTP, fd)).collect();
        if let Some(control) = control {
            match control.as_fd().try_clone_to_owned() {
                Ok(fd) => sockets.push((CONTROL, fd)),
                Err(error) => {
                    tracing::warn!(%error, "the control plane's socket will not be offered")
                }
            }
        }
        if let Some(metrics) = metrics {
            sockets.push((METRICS, OwnedFd::from(metrics)));
        }
        let listener = match self.offer_listener {
            Some(listener) => Ok(listener),
            // A successor binds only now: the path was its predecessor's until it confirmed.
            None => HandoverListener::bind(&path, taken_from.as_deref() == Some(path.as_path()))
                .with_context(|| format!("--handover-socket {}", path.display())),
        };
        // This process serves already (its predecessor is stopping): failing to offer the sockets for the next
        // upgrade must not stop it.
        match listener.and_then(|listener| Offer::start(listener, sockets, terminate_self)) {
            Ok(offer) => {
                tracing::info!(path = %path.display(), "offering the listening sockets for a handover");
                Ok(Some(offer))
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "no handover possible from this process"
                );
                Ok(None)
            }
        }
    }
}

/// Where a running process's offer stands.
const IDLE: u8 = 0;
const IN_PROGRESS: u8 = 1;
const HANDED_OVER: u8 = 2;

/// Step 1: the running process's offer of its sockets on a Unix socket path, served by one thread. Dropping it
/// stops the offer and closes the duplicates (unless a handover in progress still sends them, for at most its
/// bounded waits); drop it before draining, so that they do not keep the sockets open behind a shutdown
/// (connections would queue where nobody accepts).
pub struct Offer {
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Offer {
    /// Offers duplicates of `sockets` on `listener`. After a completed handover `on_handed_over` runs once (`larder serve`: raise
    /// SIGTERM on itself).
    pub fn start(
        listener: HandoverListener,
        sockets: Vec<(&'static str, OwnedFd)>,
        on_handed_over: impl FnOnce() + Send + 'static,
    ) -> anyhow::Result<Offer> {
        let (wake, woken) = UnixStream::pair().context("creating the handover wake-up pair")?;
        let thread = std::thread::Builder::new()
            .name("larder-handover".to_string())
            .spawn(move || {
                let callback: Callback = Arc::new(Mutex::new(Some(Box::new(on_handed_over))));
                offer_loop(listener, woken, Arc::new(sockets), callback)
            })
            .context("starting the handover thread")?;
        Ok(Offer {
            wake,
            thread: Some(thread),
        })
    }

    fn stop_and_join(&mut self) {
        use std::io::Write as _;
        let _ = (&self.wake).write_all(b"x");
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

type Sockets = Arc<Vec<(&'static str, OwnedFd)>>;
type Callback = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

fn offer_loop(
    mut listener: HandoverListener,
    woken: UnixStream,
    sockets: Sockets,
    on_handed_over: Callback,
) {
    let state = Arc::new(AtomicU8::new(IDLE));
    loop {
        let session = match listener.accept_or_stop(woken.as_fd()) {
            Ok(Some(session)) => session,
            Ok(None) => break,
            Err(error) => {
                tracing::error!(%error, "handover socket failed; no handover possible any more");
                break;
            }
        };
        match state.compare_exchange(IDLE, IN_PROGRESS, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            // The request is read before the refusal: closing a Unix socket with unread data resets it, and the
            // refusal would be lost.
            Err(HANDED_OVER) => {
                let _ = session.receive_request().and_then(|()| {
                    session.refuse("this process has handed its sockets over and is stopping")
                });
                continue;
            }
            Err(_) => {
                let _ = session
                    .receive_request()
                    .and_then(|()| session.refuse("another handover is in progress"));
                continue;
            }
        }
        let (state_for_session, sockets, callback) = (
            Arc::clone(&state),
            Arc::clone(&sockets),
            Arc::clone(&on_handed_over),
        );
        let spawned = std::thread::Builder::new()
            .name("larder-handover-session".to_string())
            .spawn(move || run_session(&session, &sockets, &state_for_session, &callback));
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a handover session; still serving");
            state.store(IDLE, Ordering::Release);
        }
    }
    if state.load(Ordering::Acquire) == HANDED_OVER {
        // The path is the successor's now (it may have bound its own offer there already).
        listener.forget_path();
    }
}

/// Steps 3 and 6 from the running process's side, on the session's own thread (so that a concurrent attempt is
/// refused at once instead of queueing behind this one's bounded waits).
fn run_session(session: &OfferSession, sockets: &Sockets, state: &AtomicU8, callback: &Callback) {
    let outcome = session
        .receive_request()
        .and_then(|()| {
            tracing::info!(
                sockets = sockets.len(),
                "handover: passing the listening sockets to a new process"
            );
            let borrowed: Vec<_> = sockets
                .iter()
                .map(|(label, fd)| (*label, fd.as_fd()))
                .collect();
            session.send_sockets(&borrowed)
        })
        .and_then(|()| session.wait_ready())
        .and_then(|()| session.confirm());
    match outcome {
        Ok(()) => {
            state.store(HANDED_OVER, Ordering::Release);
            tracing::info!("handover: the new process serves; draining and exiting");
            if let Some(callback) = callback.lock().ok().and_then(|mut slot| slot.take()) {
                callback();
            }
        }
        Err(error) => {
            tracing::warn!(%error, "handover failed; still serving");
            state.store(IDLE, Ordering::Release);
        }
    }
}

/// Raises SIGTERM on this process: `larder serve`'s signal wait then runs the usual graceful drain.
pub fn terminate_self() {
    // SAFETY: kill(2) on our own pid with a signal every thread blocks and the main thread waits for.
    let result = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    if result != 0 {
        tracing::error!(error = %std::io::Error::last_os_error(), "cannot raise SIGTERM after the handover");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_runtime::handover::HandoverError;
    use std::sync::mpsc;

    fn offer(dir: &Path) -> (Offer, PathBuf, TcpListener, mpsc::Receiver<()>) {
        let path = dir.join("handover.sock");
        let http = TcpListener::bind("127.0.0.1:0").expect("bind");
        let copy = http.as_fd().try_clone_to_owned().expect("dup");
        let (handed_over, calls) = mpsc::channel();
        let listener = HandoverListener::bind(&path, false).expect("bind the offer");
        let offer = Offer::start(listener, vec![(HTTP, copy)], move || {
            handed_over.send(()).expect("test alive");
        })
        .expect("offer");
        (offer, path, http, calls)
    }

    fn refusal(path: &Path) -> String {
        match exchange::take_over(path) {
            Err(HandoverError::Refused(reason)) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_second_concurrent_handover_is_refused_and_so_is_one_after_the_handover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (offer, path, http, calls) = offer(dir.path());
        let first = exchange::take_over(&path).expect("the first takes the sockets");
        assert_eq!(first.sockets.len(), 1);
        assert_eq!(refusal(&path), "another handover is in progress");
        first.ready().expect("confirmed");
        calls
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the handed-over callback runs");
        assert_eq!(
            refusal(&path),
            "this process has handed its sockets over and is stopping"
        );
        drop(offer);
        assert!(
            path.exists(),
            "after a handover the path is the successor's: left in place"
        );
        drop(http);
    }

    #[test]
    fn an_aborted_handover_leaves_the_offer_open_for_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (offer, path, _http, calls) = offer(dir.path());
        exchange::take_over(&path)
            .expect("sockets")
            .abort("bad config");
        // The session thread resets the state after it reads the ABORT; until then a new attempt is refused.
        let mut second = None;
        for _ in 0..1500 {
            match exchange::take_over(&path) {
                Ok(taken) => {
                    second = Some(taken);
                    break;
                }
                Err(HandoverError::Refused(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(error) => panic!("{error}"),
            }
        }
        second
            .expect("a later handover gets the sockets")
            .ready()
            .expect("confirmed");
        calls
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the handed-over callback runs");
        assert!(calls.try_recv().is_err(), "the callback runs once");
        drop(offer);
    }

    #[test]
    fn without_a_handover_the_offer_removes_its_socket_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (offer, path, _http, _calls) = offer(dir.path());
        assert!(path.exists());
        drop(offer);
        assert!(!path.exists());
    }

    #[test]
    fn a_configured_port_0_adopts_any_port_but_not_another_ip() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let fixed: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(address_matches(any, "127.0.0.1:4321".parse().unwrap()));
        assert!(address_matches(fixed, fixed));
        assert!(!address_matches(fixed, "127.0.0.1:8081".parse().unwrap()));
        assert!(!address_matches(any, "0.0.0.0:4321".parse().unwrap()));
    }
}
