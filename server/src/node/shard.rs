//! One shard of the node: its state, its accept loop, its handoff receiver and how connection tasks are placed
//! into resource containers.
//!
//! Shard start-up (numbered as `run` does it):
//! 1. Build the shard's cache (budget = `cache_mb` / shards), Date cache, access log and containers.
//! 2. Spawn the handoff receiver (adopts connections other shards route here; it also applies steering and
//!    reloads from the control queue) and the access-log flusher.
//! 3. Take this shard's listeners (if it accepts; one accept loop each) and accept until shutdown; each
//!    connection task is spawned into the container its client network classifies it into. A connection the
//!    kernel handed over as shutdown began is still served (see `accept_loop`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use larder_runtime::container::{ContainerId, ContainerSpec, LatencyClass};
use larder_runtime::pool::ShardContext;
use larder_runtime::Source;
use rustix::fs::{Mode, OFlags};

use super::access_log::AccessLog;
use super::conn::{self, Conn};
use super::stats::ShardCounters;
use super::{NodeShared, ShardMessage, ShardSteer};
use crate::cache::{CacheConfig, ShardCache};
use crate::http::{DateCache, ParseLimits};

/// How often buffered access-log lines are handed to the writer thread.
const ACCESS_LOG_FLUSH_MS: u64 = 1000;

/// Everything one shard owns; shared by its tasks through `Rc`.
pub(crate) struct Shard {
    pub context: ShardContext<ShardMessage>,
    pub node: Arc<NodeShared>,
    pub index: u32,
    pub counters: Arc<ShardCounters>,
    pub hot: RefCell<super::hot::HotSketch>,
    pub cache: RefCell<ShardCache>,
    pub splice_pipes: Rc<super::splice::PipeBudget>,
    pub date: RefCell<DateCache>,
    /// The access log (`None`: off); a reload reopens it.
    pub log: RefCell<Option<AccessLog>>,
    /// The settings requests read; a reload replaces them whole (`super::reload`).
    pub live: RefCell<Rc<Live>>,
    pub root: PathBuf,
    /// ROOT opened once (`O_PATH`), the anchor of the one-call confined open on a miss (`respond::open_inside_root`).
    pub root_dir: OwnedFd,
    /// `X-Larder-Shard: <n>\r\n`, or empty.
    pub shard_field: Vec<u8>,
    /// xorshift64* state for the policy's `random` argument (seeded by the shard index: deterministic).
    pub rng: Cell<u64>,
    /// Counter that makes multipart boundaries unique per shard.
    pub boundaries: Cell<u64>,
    /// Distributed mode: this shard's forwarding to other nodes.
    pub cluster: Option<crate::cluster::Forwarder>,
}

/// The settings a shard's requests read, replaced whole by a reload. A request takes the `Rc` once and keeps
/// it until it is answered, so it finishes under the settings it started with; reading them is a
/// non-atomic `Rc` clone (no lock on the data path).
pub(crate) struct Live {
    pub config: Arc<crate::ServeConfig>,
    pub limits: ParseLimits,
    /// The shard's container of each of `config.containers`, in the same order (a connection's container index).
    pub containers: Vec<ContainerId>,
}

impl Live {
    /// The shard's container at `index` in `config.containers`. A connection handed off by a shard that has
    /// already applied a reload adding containers may name one this shard has not added yet (its reload is
    /// still in its queue): it runs in the default container until its next request is classified here.
    pub fn container_id(&self, index: usize) -> ContainerId {
        match self.containers.get(index) {
            Some(&id) => id,
            None => self.containers[self.config.default_container_index()],
        }
    }

    pub fn new(config: Arc<crate::ServeConfig>, containers: Vec<ContainerId>) -> Live {
        Live {
            limits: ParseLimits {
                uri_bytes_max: config.uri_bytes_max,
                header_bytes_max: config.header_bytes_max,
            },
            config,
            containers,
        }
    }
}

/// The scheduler's spec of a configured container (at start, and for one a reload adds).
pub(crate) fn container_spec(container: &crate::config::ContainerConfig) -> ContainerSpec {
    ContainerSpec {
        name: container.name.clone(),
        shares: container.shares,
        latency_class: LatencyClass::Interactive,
        tasks_max: container.tasks_max,
        queued_max: container.tasks_max,
        cpu_percent_max: container.cpu_percent_max,
        send_rate_bytes_per_second: container.send_rate_bytes_per_second,
    }
}

impl Shard {
    /// The settings in force now (see [`Live`]).
    pub fn live(&self) -> Rc<Live> {
        Rc::clone(&self.live.borrow())
    }

    pub fn now_ms(&self) -> u64 {
        self.node.origin.elapsed().as_millis() as u64
    }

    pub fn next_random(&self) -> u64 {
        let mut state = self.rng.get();
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        self.rng.set(state);
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Refreshes and returns the Date text.
    pub fn date(&self) -> [u8; crate::http::response::HTTP_DATE_BYTES] {
        let mut date = self.date.borrow_mut();
        date.refresh(SystemTime::now());
        *date.text()
    }

    pub fn flush_log(&self) {
        if let Some(log) = self.log.borrow_mut().as_mut() {
            log.flush();
            self.counters
                .access_log_lines_dropped
                .store(log.lines_dropped(), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The init future of one shard (start-up steps 1-3).
pub(crate) async fn run(context: ShardContext<ShardMessage>, node: Arc<NodeShared>) {
    let index = context.shard().0;
    let shard = match build(context.clone(), Arc::clone(&node), index) {
        Ok(shard) => Rc::new(shard),
        Err(error) => {
            tracing::error!(shard = index, %error, "shard failed to start; stopping the node");
            context.shutdown_handle().request();
            return;
        }
    };
    context.spawn(receive_handoffs(Rc::clone(&shard)));
    context.spawn(super::hot::publish_periodically(Rc::clone(&shard)));
    // Always: a reload may turn the access log on.
    context.spawn(flush_log_periodically(Rc::clone(&shard)));
    // Only accepting shards were given listeners (see `assign_listeners`); usually one, several after a
    // handover from a node with more accepting shards.
    let listeners = node.listeners[index as usize]
        .lock()
        .map(|mut slot| std::mem::take(&mut *slot))
        .unwrap_or_default();
    for listener in listeners {
        // The accept loop is a task of the default container: accepting is work for the connections it admits,
        // charged to that container and scheduled by its share (a flood of new connections waits in the kernel's
        // backlog while the container is over its share, instead of taking the shard from the others).
        let live = shard.live();
        let id = live.containers[live.config.default_container_index()];
        let accepting = {
            let shard = Rc::clone(&shard);
            async move { accept_loop(&shard, listener).await }
        };
        if let Err(error) = context.containers().spawn_unlimited(id, accepting) {
            tracing::error!(shard = index, %error, "cannot start the accept loop; stopping the node");
            context.shutdown_handle().request();
        }
    }
}

/// The answer to a connection over the shard's `connections_max`: sent without waiting (the socket's buffer is
/// empty, so it fits), then the connection closes.
const OVER_CONNECTIONS_MAX_RESPONSE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Length: 0\r\nConnection: close\r\n\r\n";

/// Answers 503 + Retry-After on a just-accepted connection without waiting, then closes it.
fn refuse_connection(stream: monoio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    // SAFETY: a non-blocking send of a static buffer on the socket `stream` owns; then shutdown(2) on it.
    unsafe {
        libc::send(
            fd,
            OVER_CONNECTIONS_MAX_RESPONSE.as_ptr().cast(),
            OVER_CONNECTIONS_MAX_RESPONSE.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
    drop(stream);
}

fn build(
    context: ShardContext<ShardMessage>,
    node: Arc<NodeShared>,
    index: u32,
) -> Result<Shard, String> {
    let config = node.config();
    let budget_bytes = (config.cache_mb << 20) / node.shards as u64;
    let mut cache_config = CacheConfig::with_budget(budget_bytes.max(1 << 20));
    cache_config.revalidate_interval_ms = config.revalidate_interval_ms;
    cache_config.read_mode = config.cache_read;
    let cache = ShardCache::new(cache_config).map_err(|error| error.to_string())?;
    let root_dir = rustix::fs::open(
        &node.root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|error| format!("opening ROOT {}: {error}", node.root.display()))?;
    let log = match &config.access_log {
        Some(log) => Some(
            AccessLog::open(&log.path, index as usize, log.format)
                .map_err(|error| format!("access log {}: {error}", log.path.display()))?,
        ),
        None => None,
    };
    let mut containers = Vec::with_capacity(config.containers.len());
    for container in &config.containers {
        let id = match context.containers().lookup(&container.name) {
            Some(id) => id,
            None => context
                .containers()
                .add_container(container_spec(container))
                .map_err(|error| error.to_string())?,
        };
        containers.push(id);
    }
    let shard_field = if config.shard_header {
        format!("X-Larder-Shard: {index}\r\n").into_bytes()
    } else {
        Vec::new()
    };
    let (cluster, shard_field) =
        crate::cluster::shard_parts(node.cluster.as_ref(), index, shard_field);
    Ok(Shard {
        cluster,
        counters: Arc::clone(&node.counters[index as usize]),
        hot: RefCell::new(super::hot::HotSketch::new()),
        cache: RefCell::new(cache),
        splice_pipes: super::splice::PipeBudget::new(super::splice::PIPES_PER_SHARD_MAX),
        date: RefCell::new(DateCache::new(SystemTime::now())),
        log: RefCell::new(log),
        live: RefCell::new(Rc::new(Live::new(config, containers))),
        root: node.root.clone(),
        root_dir,
        shard_field,
        rng: Cell::new(0x9e37_79b9_7f4a_7c15 ^ (u64::from(index) + 1)),
        boundaries: Cell::new(0),
        index,
        context,
        node,
    })
}

/// Polls `first` and `second` together; the output of whichever finishes first.
pub(crate) async fn race<A, B, T>(first: A, second: B) -> T
where
    A: Future<Output = T>,
    B: Future<Output = T>,
{
    let mut first = pin!(first);
    let mut second = pin!(second);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = first.as_mut().poll(cx) {
            return Poll::Ready(output);
        }
        second.as_mut().poll(cx)
    })
    .await
}

async fn accept_loop(shard: &Rc<Shard>, listener: std::net::TcpListener) {
    let driver = shard.context.driver();
    let listener = listener
        .set_nonblocking(driver == larder_runtime::DriverKind::Epoll)
        .and_then(|()| monoio::net::TcpListener::from_std(listener));
    let listener = match listener {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(shard = shard.index, %error, "cannot register the listener");
            return;
        }
    };
    loop {
        let canceller = monoio::io::Canceller::new();
        let mut accept = pin!(listener.cancelable_accept(canceller.handle()));
        let accepted = race(async { Some(accept.as_mut().await) }, async {
            shard.context.shutdown_requested().await;
            None
        })
        .await;
        let (stream, peer) = match accepted {
            None => {
                // Shutdown step 1: stop accepting (the listener closes when dropped). An io_uring accept may have
                // taken a connection off the queue already; dropping the operation would lose it (its descriptor
                // is never seen), so cancel it and wait for its outcome: a connection taken is served, one still
                // queued stays for whoever shares the listener (a successor after a handover) or is reset with it.
                canceller.cancel();
                let outcome = shard
                    .context
                    .timers()
                    .timeout(Duration::from_millis(ACCEPT_CANCEL_WAIT_MS), accept)
                    .await;
                if let Ok(Ok((stream, peer))) = outcome {
                    admit(shard, stream, peer);
                }
                break;
            }
            Some(Ok(accepted)) => accepted,
            Some(Err(error)) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(shard = shard.index, %error, "accept failed");
                let _ = shard
                    .context
                    .timers()
                    .sleep(Duration::from_millis(10))
                    .await;
                continue;
            }
        };
        admit(shard, stream, peer);
    }
}

/// How long a stopping accept loop waits for its cancelled accept to report (it reports at the next driver turn).
const ACCEPT_CANCEL_WAIT_MS: u64 = 1000;

/// Counts an accepted connection and starts its task, or refuses it over `connections_max`.
fn admit(shard: &Rc<Shard>, stream: monoio::net::TcpStream, peer: std::net::SocketAddr) {
    ShardCounters::add(&shard.counters.connections_accepted, 1);
    let active = shard
        .counters
        .connections_active
        .load(std::sync::atomic::Ordering::Relaxed);
    let live = shard.live();
    if active as usize >= live.config.connections_max {
        ShardCounters::add(&shard.counters.connections_refused, 1);
        refuse_connection(stream);
        return;
    }
    let _ = stream.set_nodelay(true);
    let container = live.config.classify(None, b"", peer.ip());
    let conn = Conn::new(stream, peer, Vec::new(), None, container);
    place(shard, conn);
}

/// Receives connections routed to this shard by other shards (handoff protocol step 4).
async fn receive_handoffs(shard: Rc<Shard>) {
    loop {
        let envelope = race(async { Some(shard.context.mesh().recv().await) }, async {
            shard.context.shutdown_requested().await;
            None
        })
        .await;
        let Some(envelope) = envelope.or_else(|| shard.context.mesh().try_recv()) else {
            return;
        };
        let (handoff, target, container) = match envelope.message {
            ShardMessage::Handoff {
                handoff,
                target,
                container,
            } => (handoff, target, container),
            ShardMessage::Steer(ShardSteer::Reload(config)) => {
                super::reload::apply_on_shard(&shard, config);
                continue;
            }
            ShardMessage::Steer(steer) => {
                super::steer::apply_on_shard(shard.index, shard.context.containers(), steer);
                continue;
            }
        };
        let from = match envelope.from {
            Source::Shard(from) => Some(from.0),
            Source::Control => None,
        };
        ShardCounters::add(&shard.counters.handoffs_in, 1);
        match shard.context.adopt(handoff) {
            Ok((stream, already_read, peer)) => {
                // Bound to the container it was in on the sending shard until its next head is parsed.
                let conn = Conn::new(stream, peer, already_read, Some(target), container);
                place(&shard, conn);
            }
            Err(error) => {
                tracing::warn!(shard = shard.index, ?from, %error, "adopting a handed-off connection failed");
                if let Some(policy) = &shard.node.policy {
                    if let Ok(mut policy) = policy.lock() {
                        policy.on_finish(
                            larder_lard::ServerId(shard.index),
                            target,
                            shard.now_ms(),
                        );
                    }
                }
            }
        }
    }
}

async fn flush_log_periodically(shard: Rc<Shard>) {
    while !shard.context.is_shutting_down() {
        let tick = shard
            .context
            .timers()
            .sleep(Duration::from_millis(ACCESS_LOG_FLUSH_MS));
        race(
            async {
                let _ = tick.await;
            },
            shard.context.shutdown_requested(),
        )
        .await;
        shard.flush_log();
    }
    shard.flush_log();
}

/// Spawns the connection task into its container (data path step 4); a container over its limit gets the
/// connection back, which is answered 503 + Retry-After and closed.
pub(crate) fn place(shard: &Rc<Shard>, conn: Conn) {
    let slot = Rc::new(RefCell::new(Some(conn)));
    let container = slot.borrow().as_ref().map_or(0, |conn| conn.container);
    let task = {
        let shard = Rc::clone(shard);
        let slot = Rc::clone(&slot);
        async move {
            let conn = slot.borrow_mut().take();
            if let Some(conn) = conn {
                conn::serve(shard, conn).await;
            }
        }
    };
    let id = shard.live().container_id(container);
    if shard.context.containers().spawn(id, task).is_err() {
        let conn = slot.borrow_mut().take();
        if let Some(conn) = conn {
            ShardCounters::add(&shard.counters.container_rejections, 1);
            let shard = Rc::clone(shard);
            shard
                .context
                .clone()
                .spawn(conn::reject_over_limit(shard, conn));
        }
    }
}
