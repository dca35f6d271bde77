//! [`ShardPool`] and its start-up: from a [`PoolConfig`] to N shard threads that all run, or none.
//!
//! # Start-up protocol ([`ShardPool::start`])
//! 1. Validate the configuration (timer, scheduler, mesh capacities) and select CPUs from the topology
//!    (`PoolConfig::shards`, default one shard per physical core).
//! 2. Build the mesh (queues + one eventfd doorbell per shard) and one statistics cell per shard.
//! 3. Spawn one thread per shard (`larder-shard-<i>`). Each thread: pins itself with `sched_setaffinity` and checks
//!    with `sched_getcpu` that it runs on its CPU; builds its monoio runtime (`IoDriver::Auto` probes io_uring and
//!    falls back to epoll with a `warn!` saying so); reports *ready* with its driver (`shard.rs`).
//! 4. When all N shards are ready, `start` tells each to go; if any failed (or did not report within
//!    [`STARTUP_TIMEOUT_MS`]), it tells all to abort, joins them and returns [`PoolError::Startup`]. No init closure
//!    runs unless every shard started.
//! 5. Each shard spawns its local tasks (yield bouncer, doorbell pump, timer driver, container scheduler, stats
//!    sampler), then the init closure's future as tracked in-flight work, and waits for shutdown (`shard.rs`).
//!
//! # What this file owns
//! The pool handle (CPUs, control senders, statistics readers, the shutdown flag, the event channel and the
//! thread handles), steps 1, 2 and 4 above, the abort path, and the accessors other threads use.
//!
//! # Invariants
//! - Either every shard got *go* and runs the init closure, or every shard got *abort* and `start` returned an
//!   error after joining the threads that exited.
//! - Shard `i` runs on `cpus[i]`, owns `controls[i]` and `stats[i]`.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | shards | 1..=256 ([`crate::mesh::SHARDS_MAX`]) | the mesh has N² queues |
//! | [`STARTUP_TIMEOUT_MS`] | 10,000 ms | building a runtime takes microseconds; anything slower is broken |
//! | events channel | 2 × shards | each shard sends at most *ready* and *exit* |
//! | go channel | 1 per shard | one *go* or *abort* |

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::config::{PoolConfig, PoolError, STARTUP_TIMEOUT_MS};
use super::context::ShardContext;
use super::shard::shard_thread;
use super::shutdown::{ShardExit, ShutdownState};
use crate::bell::Doorbell;
use crate::container::{ContainerScheduler, MonotonicClock};
use crate::mesh::{self, ControlSender, MeshEndpoint};
use crate::stats::{ShardStats, StatsCell, StatsHandle};
use crate::timer::TimerWheel;
use crate::topology::{CpuId, Topology};
use crate::ShardId;

/// Messages from shard threads to the pool.
pub(super) enum Event {
    Ready { shard: ShardId },
    Exit { shard: ShardId, outcome: Outcome },
}

pub(super) enum Outcome {
    /// Boxed: a `ShardExit` carries the shard's final statistics (~200 bytes), the other variants a string.
    Exited(Box<ShardExit>),
    StartupFailed(String),
    Panicked(String),
}

/// A pool of shards; see the module docs of `pool/start.rs` and `pool/shutdown.rs` for the start-up and
/// shutdown protocols.
pub struct ShardPool<M> {
    pub(super) cpus: Vec<CpuId>,
    pub(super) controls: Vec<ControlSender<M>>,
    pub(super) stats: Vec<StatsHandle>,
    pub(super) shutdown: Arc<ShutdownState>,
    pub(super) events: Receiver<Event>,
    pub(super) threads: Vec<Option<JoinHandle<()>>>,
    pub(super) drain_timeout_ms: u64,
    pub(super) join_grace_ms: u64,
}

/// What a shard thread starts with.
pub(super) struct Seed<M> {
    pub(super) shard: ShardId,
    pub(super) cpu: CpuId,
    pub(super) endpoint: MeshEndpoint<M>,
    pub(super) bell: Arc<Doorbell>,
    pub(super) stats: Arc<StatsCell>,
    pub(super) go: Receiver<bool>,
}

impl<M: Send + 'static> ShardPool<M> {
    /// Starts the shards (start-up protocol, `pool/start.rs`) and runs `init` on each once all are up.
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
}

impl<M> std::fmt::Debug for ShardPool<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardPool")
            .field("cpus", &self.cpus)
            .field("shutdown_requested", &self.shutdown.is_requested())
            .finish()
    }
}
