//! The shard pool: N pinned OS threads, each running one monoio runtime, one timer wheel, one container scheduler,
//! one end of the mesh and one statistics cell — nothing shared between shards except the mesh queues.
//!
//! # Start-up protocol ([`ShardPool::start`])
//! 1. Validate the configuration (timer, scheduler, mesh capacities) and select CPUs from the topology
//!    (`PoolConfig::shards`, default one shard per physical core).
//! 2. Build the mesh (queues + one eventfd doorbell per shard) and one statistics cell per shard.
//! 3. Spawn one thread per shard (`larder-shard-<i>`). Each thread: pins itself with `sched_setaffinity` and checks
//!    with `sched_getcpu` that it runs on its CPU; builds its monoio runtime (`IoDriver::Auto` probes io_uring and
//!    falls back to epoll with a `warn!` saying so); reports *ready* with its driver.
//! 4. When all N shards are ready, `start` tells each to go; if any failed (or did not report within
//!    [`STARTUP_TIMEOUT_MS`]), it tells all to abort, joins them and returns [`PoolError::Startup`]. No init closure
//!    runs unless every shard started.
//! 5. Each shard spawns its local tasks (yield bouncer, doorbell pump, timer driver, container scheduler, stats
//!    sampler), then
//!    the init closure's future as tracked in-flight work, and waits for shutdown.
//!
//! # Shutdown protocol ([`ShardPool::shutdown`], [`ShutdownHandle::request`], or a shard panic)
//! 1. **Stop accepting.** The shutdown flag is set and every shard's doorbell rung; each shard observes it
//!    ([`ShardContext::shutdown_requested`] resolves, [`ShardContext::is_shutting_down`] turns true). Accept loops
//!    must stop taking new work when they see it; in-flight work keeps running.
//! 2. **Drain.** Each shard waits until its tracked tasks ([`ShardContext::spawn`], including the init future) and
//!    its container tasks have finished, up to `drain_timeout_ms` (default [`DRAIN_TIMEOUT_MS_DEFAULT`]) after it
//!    observed the request. The check runs every [`DRAIN_CHECK_INTERVAL_MS`] ms on the shard's timer wheel. Work
//!    still running at the deadline is dropped (cancelled) and counted in [`ShardExit::tasks_abandoned`].
//! 3. **Join.** The shard stops its scheduler, takes a last statistics sample and leaves its runtime (dropping
//!    its remaining tasks); [`ShardPool::join`] collects every exit. A shard that has not exited within
//!    `drain_timeout_ms + join_grace_ms` of the request (e.g. stuck in a non-yielding loop) is detached and
//!    reported as [`PoolError::ShardsStuck`] — `join` never hangs once shutdown was requested.
//! 4. **Report.** `join` logs one line per shard and returns a [`PoolReport`] (or the first panic/stuck error).
//!
//! # Panics
//! Each thread body runs under `catch_unwind`. A panic in a shard — in the init future, a spawned task, a
//! container task or the runtime — is caught on that thread, requests shutdown of the whole pool (step 1 for
//! every other shard) and is returned by `join` as [`PoolError::ShardPanicked`] with the shard and the message.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | shards | 1..=256 ([`crate::mesh::SHARDS_MAX`]) | the mesh has N² queues |
//! | [`DRAIN_TIMEOUT_MS_DEFAULT`] | 5,000 ms | long enough for in-flight responses, short enough for a restart |
//! | [`JOIN_GRACE_MS_DEFAULT`] | 1,000 ms | time for a shard to leave its runtime after the drain deadline |
//! | [`STARTUP_TIMEOUT_MS`] | 10,000 ms | building a runtime takes microseconds; anything slower is broken |
//! | [`URING_ENTRIES_DEFAULT`] | 1,024 submission entries | monoio's default; 8 MiB memlock holds several rings |
//! | [`DRAIN_CHECK_INTERVAL_MS`] | 1 ms | drain progress check, only while shutting down |

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::bell::{Doorbell, LocalBell, Reason};
use crate::container::{ContainerError, ContainerScheduler, MonotonicClock, SchedulerConfig};
use crate::handoff::{Handoff, HandoffError};
use crate::mesh::{self, ControlSender, MeshBuildError, MeshConfig, MeshEndpoint, ShardMesh};
use crate::sleep::ShardTimers;
use crate::stats::{DriverKind, ShardStats, StatsCell, StatsHandle, STATS_INTERVAL_MS_DEFAULT};
use crate::timer::{TimerConfig, TimerError, TimerWheel};
use crate::topology::{self, CpuId, ShardSelection, Topology, TopologyError};
use crate::yielder::Yielder;
use crate::ShardId;

/// Default drain deadline (shutdown step 2).
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default extra wait after the drain deadline before `join` gives a shard up (shutdown step 3).
pub const JOIN_GRACE_MS_DEFAULT: u64 = 1_000;
/// How long `start` waits for every shard to report ready.
pub const STARTUP_TIMEOUT_MS: u64 = 10_000;
/// Default io_uring submission queue entries per shard.
pub const URING_ENTRIES_DEFAULT: u32 = 1_024;
/// Period of the drain progress check.
pub const DRAIN_CHECK_INTERVAL_MS: u64 = 1;
/// How often `join` looks at the shutdown flag while waiting for it.
const JOIN_POLL_INTERVAL_MS: u64 = 20;

/// Which I/O driver shards use. Parsed from `auto`, `uring` (or `io_uring`), `epoll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoDriver {
    /// io_uring if the kernel allows it, else epoll (with a warning in the log).
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// An I/O driver name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad I/O driver {0:?} (expected \"auto\", \"uring\" or \"epoll\")")]
pub struct IoDriverParseError(pub String);

impl FromStr for IoDriver {
    type Err = IoDriverParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(IoDriver::Auto),
            "uring" | "io_uring" | "iouring" => Ok(IoDriver::Uring),
            "epoll" | "legacy" => Ok(IoDriver::Epoll),
            _ => Err(IoDriverParseError(s.to_string())),
        }
    }
}

impl std::fmt::Display for IoDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoDriver::Auto => "auto",
            IoDriver::Uring => "uring",
            IoDriver::Epoll => "epoll",
        })
    }
}

/// Settings of a shard pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Which CPUs run shards (default: one per physical core).
    pub shards: ShardSelection,
    /// I/O driver (default: auto).
    pub driver: IoDriver,
    /// Pin each shard thread to its CPU (default: true). Tests that oversubscribe CPUs may turn it off.
    pub pin: bool,
    /// Mesh queue capacities.
    pub mesh: MeshConfig,
    /// Per-shard timer wheel.
    pub timer: TimerConfig,
    /// Per-shard container scheduler.
    pub scheduler: SchedulerConfig,
    /// Shutdown step 2 deadline.
    pub drain_timeout_ms: u64,
    /// Shutdown step 3 grace.
    pub join_grace_ms: u64,
    /// Period of the CPU-time and container statistics sample.
    pub stats_interval_ms: u64,
    /// io_uring submission queue entries.
    pub uring_entries: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            shards: ShardSelection::All,
            driver: IoDriver::Auto,
            pin: true,
            mesh: MeshConfig::default(),
            timer: TimerConfig::default(),
            scheduler: SchedulerConfig::default(),
            drain_timeout_ms: DRAIN_TIMEOUT_MS_DEFAULT,
            join_grace_ms: JOIN_GRACE_MS_DEFAULT,
            stats_interval_ms: STATS_INTERVAL_MS_DEFAULT,
            uring_entries: URING_ENTRIES_DEFAULT,
        }
    }
}

/// Errors of starting or joining a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Mesh(#[from] MeshBuildError),
    #[error("timer configuration: {0}")]
    Timer(#[from] TimerError),
    #[error("container scheduler configuration: {0}")]
    Container(#[from] ContainerError),
    #[error("stats_interval_ms must be at least 1")]
    StatsInterval,
    #[error("spawning the thread of {shard}: {source}")]
    Spawn {
        shard: ShardId,
        source: std::io::Error,
    },
    #[error("{shard} on {cpu} failed to start: {reason}")]
    Startup {
        shard: ShardId,
        cpu: CpuId,
        reason: String,
    },
    #[error("{shard} panicked: {message}")]
    ShardPanicked { shard: ShardId, message: String },
    #[error("shards {shards:?} did not stop within {waited_ms} ms of the shutdown request; their threads were detached")]
    ShardsStuck {
        shards: Vec<ShardId>,
        waited_ms: u64,
    },
}

/// How one shard ended (shutdown step 4).
#[derive(Debug, Clone)]
pub struct ShardExit {
    pub shard: ShardId,
    pub cpu: CpuId,
    pub driver: DriverKind,
    /// Tracked and container tasks still running at the drain deadline (dropped).
    pub tasks_abandoned: usize,
    /// Final statistics.
    pub stats: ShardStats,
}

/// What `join` returns when every shard stopped cleanly.
#[derive(Debug, Clone)]
pub struct PoolReport {
    /// One exit per shard, by shard id.
    pub exits: Vec<ShardExit>,
}

impl PoolReport {
    /// True if every shard finished its in-flight work before the drain deadline.
    pub fn fully_drained(&self) -> bool {
        self.exits.iter().all(|e| e.tasks_abandoned == 0)
    }
}

/// The pool-wide shutdown flag (Send + Sync).
struct ShutdownState {
    requested: AtomicBool,
    requested_at: OnceLock<Instant>,
    bells: Vec<Arc<Doorbell>>,
}

impl ShutdownState {
    fn request(&self) {
        self.requested_at.get_or_init(Instant::now);
        if !self.requested.swap(true, Ordering::SeqCst) {
            for bell in &self.bells {
                bell.ring(Reason::Shutdown);
            }
        }
    }

    fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// Requests shutdown of a pool from any thread (a signal handler thread, the control plane, a shard).
#[derive(Clone)]
pub struct ShutdownHandle {
    state: Arc<ShutdownState>,
}

impl ShutdownHandle {
    /// Starts the shutdown protocol (idempotent).
    pub fn request(&self) {
        self.state.request();
    }

    /// True once shutdown was requested.
    pub fn is_requested(&self) -> bool {
        self.state.is_requested()
    }
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("requested", &self.is_requested())
            .finish()
    }
}

/// Everything a shard owns, handed to the init closure on the shard's thread. A cheap `Rc` handle (`!Send`):
/// clone it into the shard's tasks.
pub struct ShardContext<M> {
    inner: Rc<ContextInner<M>>,
}

impl<M> Clone for ShardContext<M> {
    fn clone(&self) -> Self {
        ShardContext {
            inner: self.inner.clone(),
        }
    }
}

struct ContextInner<M> {
    shard: ShardId,
    cpu: CpuId,
    driver: DriverKind,
    mesh: ShardMesh<M>,
    stats: StatsHandle,
    shutdown: Arc<ShutdownState>,
    local: Rc<LocalBell>,
    timers: ShardTimers,
    containers: ContainerScheduler,
    yielder: Yielder,
    in_flight: Rc<Cell<usize>>,
}

impl<M: Send + 'static> ShardContext<M> {
    /// This shard.
    pub fn shard(&self) -> ShardId {
        self.inner.shard
    }

    /// The CPU this shard is pinned to.
    pub fn cpu(&self) -> CpuId {
        self.inner.cpu
    }

    /// Shards in the pool.
    pub fn shard_count(&self) -> usize {
        self.inner.mesh.shard_count()
    }

    /// The I/O driver this shard runs.
    pub fn driver(&self) -> DriverKind {
        self.inner.driver
    }

    /// This shard's end of the mesh: `send`/`try_send` to other shards, `recv` from shards and the control plane.
    pub fn mesh(&self) -> &ShardMesh<M> {
        &self.inner.mesh
    }

    /// This shard's statistics (also readable from other threads through the pool).
    pub fn stats(&self) -> &StatsHandle {
        &self.inner.stats
    }

    /// The shard's timer facility (sleeps and timeouts on its timer wheel). Prefer it to `monoio::time`: monoio's
    /// timers are only processed when the shard parks, so they stall on a shard that is never idle.
    pub fn timers(&self) -> &ShardTimers {
        &self.inner.timers
    }

    /// The shard's resource-container scheduler.
    pub fn containers(&self) -> &ContainerScheduler {
        &self.inner.containers
    }

    /// The shard's yield service: `ctx.yielder().yield_now().await` lets every other ready task run first
    /// (monoio's self-wake yield does not; see `yielder.rs`).
    pub fn yielder(&self) -> &Yielder {
        &self.inner.yielder
    }

    /// True once shutdown was requested (shutdown step 1): stop accepting new work.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_requested()
    }

    /// Resolves once shutdown is requested (shutdown step 1), without polling.
    pub async fn shutdown_requested(&self) {
        let shutdown = &self.inner.shutdown;
        self.inner
            .local
            .wait_for(Reason::Shutdown, || shutdown.is_requested().then_some(()))
            .await
    }

    /// A handle that stops the whole pool (e.g. from a task that decides the node must stop).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            state: self.inner.shutdown.clone(),
        }
    }

    /// Spawns a task on this shard as tracked in-flight work: shutdown waits for it (up to the drain deadline),
    /// and its polls are counted in the statistics.
    pub fn spawn<F>(&self, future: F) -> monoio::task::JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let cell = self.inner.stats.cell().clone();
        StatsCell::bump(&cell.tasks_spawned);
        let in_flight = self.inner.in_flight.clone();
        in_flight.set(in_flight.get() + 1);
        monoio::spawn(Tracked {
            future: Box::pin(future),
            _guard: InFlightGuard(in_flight),
            stats: cell,
        })
    }

    /// Tracked tasks still running on this shard.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.get()
    }

    /// Takes over a connection handed off by another shard (handoff protocol step 4).
    pub fn adopt(
        &self,
        handoff: Handoff,
    ) -> Result<(monoio::net::TcpStream, Vec<u8>, SocketAddr), HandoffError> {
        handoff.into_monoio(self.inner.driver)
    }
}

impl<M> std::fmt::Debug for ShardContext<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardContext")
            .field("shard", &self.inner.shard)
            .field("cpu", &self.inner.cpu)
            .field("driver", &self.inner.driver)
            .finish()
    }
}

struct InFlightGuard(Rc<Cell<usize>>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A tracked task: counts polls and completion; its guard decrements the in-flight count when it ends or is dropped.
struct Tracked<F: Future> {
    future: Pin<Box<F>>,
    _guard: InFlightGuard,
    stats: Arc<StatsCell>,
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        StatsCell::bump(&self.stats.tasks_polled);
        let poll = self.future.as_mut().poll(cx);
        if poll.is_ready() {
            StatsCell::bump(&self.stats.tasks_completed);
        }
        poll
    }
}

/// Messages from shard threads to the pool.
enum Event {
    Ready { shard: ShardId },
    Exit { shard: ShardId, outcome: Outcome },
}

enum Outcome {
    Exited(ShardExit),
    StartupFailed(String),
    Panicked(String),
}

/// A pool of shards; see the module docs for the start-up and shutdown protocols.
pub struct ShardPool<M> {
    cpus: Vec<CpuId>,
    controls: Vec<ControlSender<M>>,
    stats: Vec<StatsHandle>,
    shutdown: Arc<ShutdownState>,
    events: Receiver<Event>,
    threads: Vec<Option<JoinHandle<()>>>,
    drain_timeout_ms: u64,
    join_grace_ms: u64,
}

/// What a shard thread starts with.
struct Seed<M> {
    shard: ShardId,
    cpu: CpuId,
    endpoint: MeshEndpoint<M>,
    bell: Arc<Doorbell>,
    stats: Arc<StatsCell>,
    go: Receiver<bool>,
}

impl<M: Send + 'static> ShardPool<M> {
    /// Starts the shards (start-up protocol, module docs) and runs `init` on each once all are up.
    /// `init` is called on each shard's thread with that shard's context; its future is tracked in-flight work.
    pub fn start<F, Fut>(config: PoolConfig, init: F) -> Result<Self, PoolError>
    where
        F: Fn(ShardContext<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        // Step 1: validate and select.
        TimerWheel::<()>::new(config.timer)?;
        ContainerScheduler::new(config.scheduler, MonotonicClock::new())?;
        if config.stats_interval_ms == 0 {
            return Err(PoolError::StatsInterval);
        }
        let cpus = Topology::discover()?.select(&config.shards)?;
        // Step 2: mesh and statistics.
        let parts = mesh::build::<M>(cpus.len(), config.mesh)?;
        let stats_cells: Vec<Arc<StatsCell>> = parts
            .depth_probes
            .into_iter()
            .enumerate()
            .map(|(i, probe)| Arc::new(StatsCell::new(ShardId(i as u32), cpus[i], probe)))
            .collect();
        let shutdown = Arc::new(ShutdownState {
            requested: AtomicBool::new(false),
            requested_at: OnceLock::new(),
            bells: parts.bells.clone(),
        });
        let (event_tx, events) = crossbeam_channel::bounded(2 * cpus.len());
        let config = Arc::new(config);
        let init = Arc::new(init);
        let mut pool = ShardPool {
            cpus: cpus.clone(),
            controls: parts.controls,
            stats: stats_cells.iter().cloned().map(StatsHandle::new).collect(),
            shutdown: shutdown.clone(),
            events,
            threads: Vec::new(),
            drain_timeout_ms: config.drain_timeout_ms,
            join_grace_ms: config.join_grace_ms,
        };
        // Step 3: one thread per shard.
        let mut go_senders = Vec::with_capacity(cpus.len());
        for ((i, endpoint), stats) in parts.endpoints.into_iter().enumerate().zip(stats_cells) {
            let shard = ShardId(i as u32);
            let (go_tx, go_rx) = crossbeam_channel::bounded(1);
            go_senders.push(go_tx);
            let seed = Seed {
                shard,
                cpu: cpus[i],
                endpoint,
                bell: parts.bells[i].clone(),
                stats,
                go: go_rx,
            };
            let (config, init, shutdown, event_tx) = (
                config.clone(),
                init.clone(),
                shutdown.clone(),
                event_tx.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("larder-shard-{i}"))
                .spawn(move || shard_thread(seed, &config, &*init, shutdown, event_tx));
            match spawned {
                Ok(handle) => pool.threads.push(Some(handle)),
                Err(source) => {
                    pool.abort(&go_senders);
                    return Err(PoolError::Spawn { shard, source });
                }
            }
        }
        drop(event_tx);
        // Step 4: wait for every shard to be ready, then let them go.
        let deadline = Instant::now() + Duration::from_millis(STARTUP_TIMEOUT_MS);
        let mut ready = vec![false; cpus.len()];
        while ready.iter().any(|r| !r) {
            let wait = deadline.saturating_duration_since(Instant::now());
            let failure = match pool.events.recv_timeout(wait) {
                Ok(Event::Ready { shard }) => {
                    ready[shard.index()] = true;
                    continue;
                }
                Ok(Event::Exit { shard, outcome }) => {
                    let reason = match outcome {
                        Outcome::StartupFailed(reason) => reason,
                        Outcome::Panicked(message) => format!("panicked: {message}"),
                        Outcome::Exited(_) => "exited before start-up finished".to_string(),
                    };
                    (shard, reason)
                }
                Err(_) => {
                    let reason = format!("not ready within {STARTUP_TIMEOUT_MS} ms");
                    let late = ready.iter().position(|r| !r).unwrap_or(0);
                    (ShardId(late as u32), reason)
                }
            };
            pool.abort(&go_senders);
            let (shard, reason) = failure;
            return Err(PoolError::Startup {
                shard,
                cpu: cpus[shard.index()],
                reason,
            });
        }
        for go in &go_senders {
            let _ = go.send(true);
        }
        tracing::info!(shards = cpus.len(), ?cpus, "shard pool started");
        Ok(pool)
    }

    /// Tells every shard not to run, requests shutdown and joins the threads that exit (start-up failure path).
    fn abort(&mut self, go_senders: &[Sender<bool>]) {
        for go in go_senders {
            let _ = go.send(false);
        }
        self.shutdown.request();
        let deadline = Instant::now() + Duration::from_millis(STARTUP_TIMEOUT_MS);
        let mut exited = 0;
        while exited < self.threads.len() {
            match self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Event::Exit { .. }) => exited += 1,
                Ok(Event::Ready { .. }) => {}
                Err(_) => break,
            }
        }
        if exited == self.threads.len() {
            for handle in self.threads.iter_mut().filter_map(Option::take) {
                let _ = handle.join();
            }
        }
    }

    /// Shards in the pool.
    pub fn shard_count(&self) -> usize {
        self.cpus.len()
    }

    /// The CPU of each shard, by shard id.
    pub fn cpus(&self) -> &[CpuId] {
        &self.cpus
    }

    /// Senders from ordinary threads into each shard, by shard id.
    pub fn controls(&self) -> &[ControlSender<M>] {
        &self.controls
    }

    /// The sender into one shard.
    pub fn control(&self, shard: ShardId) -> Option<&ControlSender<M>> {
        self.controls.get(shard.index())
    }

    /// Statistics readers, by shard id (cloneable, `Send + Sync`: hand them to the control plane).
    pub fn stats_handles(&self) -> &[StatsHandle] {
        &self.stats
    }

    /// A snapshot of every shard's statistics.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.stats.iter().map(StatsHandle::snapshot).collect()
    }

    /// A handle that starts the shutdown protocol from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            state: self.shutdown.clone(),
        }
    }

    /// Starts the shutdown protocol (step 1); returns at once. Follow with [`join`](Self::join).
    pub fn shutdown(&self) {
        self.shutdown.request();
    }

    /// Waits for every shard to stop (shutdown steps 3–4). Blocks until shutdown is requested by someone (this
    /// pool, a [`ShutdownHandle`], or a panicking shard), then at most `drain_timeout_ms + join_grace_ms`.
    pub fn join(mut self) -> Result<PoolReport, PoolError> {
        let shard_count = self.cpus.len();
        let mut exits: Vec<Option<ShardExit>> = vec![None; shard_count];
        let mut reported = vec![false; shard_count];
        let mut first_panic: Option<(ShardId, String)> = None;
        let mut first_failure: Option<(ShardId, String)> = None;
        let give_up_after = Duration::from_millis(self.drain_timeout_ms + self.join_grace_ms);
        while reported.iter().any(|r| !r) {
            let wait = match self.shutdown.requested_at.get() {
                Some(at) if self.shutdown.is_requested() => {
                    let left = (*at + give_up_after).saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    left
                }
                _ => Duration::from_millis(JOIN_POLL_INTERVAL_MS),
            };
            match self.events.recv_timeout(wait) {
                Ok(Event::Exit { shard, outcome }) => {
                    reported[shard.index()] = true;
                    match outcome {
                        Outcome::Exited(exit) => exits[shard.index()] = Some(exit),
                        Outcome::Panicked(message) => {
                            first_panic.get_or_insert((shard, message));
                        }
                        Outcome::StartupFailed(reason) => {
                            first_failure.get_or_insert((shard, reason));
                        }
                    }
                }
                Ok(Event::Ready { .. }) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Join the threads that reported (they are leaving or gone); detach the others.
        for (i, handle) in self.threads.iter_mut().enumerate() {
            if let Some(handle) = handle.take() {
                if reported[i] {
                    let _ = handle.join();
                }
            }
        }
        for exit in exits.iter().flatten() {
            tracing::info!(
                shard = exit.shard.0,
                cpu = exit.cpu.0,
                driver = %exit.driver,
                tasks_abandoned = exit.tasks_abandoned,
                busy_us = exit.stats.busy_us,
                mesh_sent = exit.stats.mesh_sent,
                mesh_received = exit.stats.mesh_received,
                "shard stopped"
            );
        }
        if let Some((shard, message)) = first_panic {
            return Err(PoolError::ShardPanicked { shard, message });
        }
        if let Some((shard, reason)) = first_failure {
            return Err(PoolError::Startup {
                shard,
                cpu: self.cpus[shard.index()],
                reason,
            });
        }
        let stuck: Vec<ShardId> = (0..shard_count)
            .filter(|&i| !reported[i])
            .map(|i| ShardId(i as u32))
            .collect();
        if !stuck.is_empty() {
            return Err(PoolError::ShardsStuck {
                shards: stuck,
                waited_ms: give_up_after.as_millis() as u64,
            });
        }
        Ok(PoolReport {
            exits: exits.into_iter().flatten().collect(),
        })
    }
}

impl<M> Drop for ShardPool<M> {
    /// Dropping a pool without `join` requests shutdown; the shards drain and exit on their own (detached).
    fn drop(&mut self) {
        self.shutdown.request();
    }
}

impl<M> std::fmt::Debug for ShardPool<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardPool")
            .field("cpus", &self.cpus)
            .field("shutdown_requested", &self.shutdown.is_requested())
            .finish()
    }
}

/// The body of one shard thread: everything under `catch_unwind`, the outcome reported as an [`Event::Exit`].
fn shard_thread<M, F, Fut>(
    seed: Seed<M>,
    config: &PoolConfig,
    init: &F,
    shutdown: Arc<ShutdownState>,
    events: Sender<Event>,
) where
    M: Send + 'static,
    F: Fn(ShardContext<M>) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let shard = seed.shard;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_shard(seed, config, init, shutdown.clone(), &events)
    }));
    let outcome = match result {
        Ok(Ok(exit)) => Outcome::Exited(exit),
        Ok(Err(reason)) => Outcome::StartupFailed(reason),
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            tracing::error!(shard = shard.0, %message, "shard panicked; stopping the pool");
            shutdown.request();
            Outcome::Panicked(message)
        }
    };
    let _ = events.send(Event::Exit { shard, outcome });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

enum ShardRuntime {
    Uring(monoio::Runtime<TimeDriver<IoUringDriver>>),
    Epoll(monoio::Runtime<TimeDriver<LegacyDriver>>),
}

fn build_runtime(
    shard: ShardId,
    driver: IoDriver,
    uring_entries: u32,
) -> Result<(DriverKind, ShardRuntime), String> {
    let uring = || {
        RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(uring_entries)
            .enable_timer()
            .build()
            .map(|rt| (DriverKind::Uring, ShardRuntime::Uring(rt)))
    };
    let epoll = || {
        RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|rt| (DriverKind::Epoll, ShardRuntime::Epoll(rt)))
            .map_err(|e| format!("building the epoll driver: {e}"))
    };
    match driver {
        IoDriver::Uring => uring().map_err(|e| format!("building the io_uring driver: {e}")),
        IoDriver::Epoll => epoll(),
        IoDriver::Auto if !monoio::utils::detect_uring() => {
            tracing::warn!(
                shard = shard.0,
                "io_uring is unavailable (probe failed, e.g. blocked by seccomp); falling back to epoll"
            );
            epoll()
        }
        IoDriver::Auto => uring().or_else(|e| {
            tracing::warn!(shard = shard.0, error = %e, "building io_uring failed; falling back to epoll");
            epoll()
        }),
    }
}

/// Start-up steps 3 and 5 on the shard's thread; returns the exit report, or a start-up failure reason.
fn run_shard<M, F, Fut>(
    seed: Seed<M>,
    config: &PoolConfig,
    init: &F,
    shutdown: Arc<ShutdownState>,
    events: &Sender<Event>,
) -> Result<ShardExit, String>
where
    M: Send + 'static,
    F: Fn(ShardContext<M>) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let Seed {
        shard,
        cpu,
        endpoint,
        bell,
        stats,
        go,
    } = seed;
    let started = Instant::now();
    if config.pin {
        topology::pin_current_thread(cpu).map_err(|e| e.to_string())?;
        let running_on = topology::current_cpu();
        if running_on != cpu {
            return Err(format!("pinned to {cpu} but running on {running_on}"));
        }
    }
    let (driver, runtime) = build_runtime(shard, config.driver, config.uring_entries)?;
    stats.set_driver(driver);
    let _ = events.send(Event::Ready { shard });
    if go.recv() != Ok(true) {
        return Err("start-up aborted by the pool".to_string());
    }
    let body = shard_body(
        ShardParts {
            shard,
            cpu,
            driver,
            endpoint,
            bell,
            stats,
            shutdown,
            started,
        },
        config,
        init,
    );
    let exit = match runtime {
        ShardRuntime::Uring(mut rt) => rt.block_on(body),
        ShardRuntime::Epoll(mut rt) => rt.block_on(body),
    };
    Ok(exit)
}

struct ShardParts<M> {
    shard: ShardId,
    cpu: CpuId,
    driver: DriverKind,
    endpoint: MeshEndpoint<M>,
    bell: Arc<Doorbell>,
    stats: Arc<StatsCell>,
    shutdown: Arc<ShutdownState>,
    started: Instant,
}

/// Start-up step 5 and shutdown steps 1–3, inside the shard's runtime.
async fn shard_body<M, F, Fut>(parts: ShardParts<M>, config: &PoolConfig, init: &F) -> ShardExit
where
    M: Send + 'static,
    F: Fn(ShardContext<M>) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let yielder = Yielder::new();
    monoio::spawn(yielder.clone().bounce());
    let local = LocalBell::new(parts.bell);
    monoio::spawn(local.clone().pump(
        parts.driver == DriverKind::Epoll,
        Duration::from_micros(config.mesh.spin_before_park_us),
        yielder.clone(),
    ));
    let timers = ShardTimers::new(config.timer, parts.started).expect("validated by start");
    monoio::spawn(timers.clone().drive(parts.driver == DriverKind::Epoll));
    let containers = ContainerScheduler::new(config.scheduler, MonotonicClock::new())
        .expect("validated by start");
    {
        // `fair`: the scheduler yields between turns with a self-wake, which monoio would re-queue in front of
        // every other task of the shard (starving I/O tasks while a container is busy).
        let containers = containers.clone();
        monoio::spawn(yielder.fair(async move { containers.run().await }));
    }
    {
        let (timers, containers, stats, yielder) = (
            timers.clone(),
            containers.clone(),
            parts.stats.clone(),
            yielder.clone(),
        );
        let interval = Duration::from_millis(config.stats_interval_ms);
        monoio::spawn(async move {
            loop {
                stats.sample_thread_cpu();
                stats.publish_containers(containers.stats().containers);
                if timers.sleep(interval).await.is_err() {
                    // The wheel is full: sample again after the next poll of this task rather than never.
                    yielder.yield_now().await;
                }
            }
        });
    }
    let stats_handle = StatsHandle::new(parts.stats.clone());
    let context = ShardContext {
        inner: Rc::new(ContextInner {
            shard: parts.shard,
            cpu: parts.cpu,
            driver: parts.driver,
            mesh: ShardMesh::new(parts.endpoint, local.clone(), parts.stats.clone()),
            stats: stats_handle.clone(),
            shutdown: parts.shutdown,
            local,
            timers: timers.clone(),
            containers: containers.clone(),
            yielder,
            in_flight: Rc::new(Cell::new(0)),
        }),
    };
    tracing::debug!(shard = parts.shard.0, cpu = parts.cpu.0, driver = %parts.driver, "shard running");
    context.spawn(init(context.clone()));
    // Shutdown step 1: observe the request.
    context.shutdown_requested().await;
    // Step 2: drain up to the deadline.
    let deadline_ns = timers.now_ns() + config.drain_timeout_ms * 1_000_000;
    let check = Duration::from_millis(DRAIN_CHECK_INTERVAL_MS);
    let tasks_left = || context.in_flight() + containers.tasks_active();
    while tasks_left() > 0 && timers.now_ns() < deadline_ns {
        let _ = timers.sleep(check).await;
    }
    // Step 3: leave the runtime.
    let tasks_abandoned = tasks_left();
    containers.stop();
    parts.stats.sample_thread_cpu();
    parts
        .stats
        .publish_containers(containers.stats().containers);
    if tasks_abandoned > 0 {
        tracing::warn!(
            shard = parts.shard.0,
            tasks_abandoned,
            "drain deadline passed; dropping unfinished tasks"
        );
    }
    ShardExit {
        shard: parts.shard,
        cpu: parts.cpu,
        driver: parts.driver,
        tasks_abandoned,
        stats: stats_handle.snapshot(),
    }
}

/// Used by tests and benches that need the driver a selection resolves to without starting a pool.
pub fn uring_available() -> bool {
    monoio::utils::detect_uring()
}
