//! The running dispatcher: listeners, shard pool, the shared balancer, the health thread and the handle.
//!
//! # Start-up
//! 1. Validate the configuration; build the policy with every back-end as a member (weight 1). The list may be
//!    empty when back-ends come later through the handle (the control-plane link): until then every request
//!    gets 503.
//! 2. Select the shard CPUs and bind one `SO_REUSEPORT` listener per shard on `listen` (port 0: the first
//!    listener's port is used by all).
//! 3. Start the shard pool; each shard takes its listener and accepts (`proxy.rs`).
//! 4. Start the health thread.
//!
//! # Shutdown ([`Dispatcher::shutdown`], then [`Dispatcher::join`])
//! 1. The pool's shutdown flag is set: accept loops drop their listeners, and client connections close when
//!    they are between requests.
//! 2. Exchanges in flight finish (the pool drains tracked tasks up to `drain_timeout_ms`).
//! 3. The health thread is told to stop (it is detached: a probe in progress ends within its timeouts).
//!
//! # Changes at run time ([`DispatchHandle`])
//! Every change takes the balancer's lock once, is checked completely before anything is written and leaves
//! the dispatcher as it was when refused (a typed [`DispatchError`]). A back-end added at run time is health
//! checked from the next round and gets idle connection stacks on each shard at its first request, like the
//! initial ones; it starts in slow start (a new node has a cold cache). A policy swap keeps members, weights,
//! drain and down flags and the external load (`balancer`, policy swap).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use larder_runtime::{PoolConfig, PoolError, PoolReport, ShardPool, ShardSelection, Topology};

use larder_lard::PolicyConfig;

use crate::balancer::{BackendStatus, Balancer, Counters, CountersSnapshot, TableError};
use crate::config::{BackendId, ConfigError, DispatchConfig};

/// Kernel accept queue per shard listener.
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Backend(#[from] TableError),
    #[error("selecting cores: {0}")]
    Topology(#[from] larder_runtime::topology::TopologyError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("starting the health thread: {0}")]
    HealthThread(std::io::Error),
}

/// State every shard and the handle share.
pub(crate) struct Shared {
    pub(crate) config: DispatchConfig,
    pub(crate) origin: Instant,
    balancer: Mutex<Balancer>,
    pub(crate) counters: Counters,
    pub(crate) listeners: Vec<Mutex<Option<std::net::TcpListener>>>,
    /// Back-ends that take requests (not down, not drained), as of the health thread's last round: what a
    /// readiness probe reads without taking the balancer's lock.
    usable_backends: AtomicUsize,
    /// The back-ends' status as of the health thread's last round: what the metrics read, so that a scrape never
    /// takes the balancer's lock (the shards take it per request). Taken once per round and once per read.
    published_backends: Mutex<Vec<BackendStatus>>,
}

impl Shared {
    /// Milliseconds since start: the policy's and the retry budget's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub(crate) fn balancer(&self) -> MutexGuard<'_, Balancer> {
        // A panic while holding the lock is a bug that already stopped the pool; keep serving the rest.
        self.balancer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts the back-ends that take requests and publishes the count (the health thread, once per round).
    pub(crate) fn publish_usable_backends(&self) {
        let status = self.balancer().status();
        let usable = status
            .iter()
            .filter(|backend| !backend.down && !backend.control_down && !backend.drained)
            .count();
        self.usable_backends.store(usable, Ordering::Relaxed);
        *self
            .published_backends
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = status;
    }

    /// Records a health verdict about the back-end at `addr` and logs a change.
    pub(crate) fn set_health(&self, backend: BackendId, addr: SocketAddr, down: bool, why: &str) {
        let now_ms = self.now_ms();
        let changed = self.balancer().set_down(backend, addr, down, now_ms);
        if changed {
            if down {
                Counters::bump(&self.counters.backends_marked_down);
                tracing::warn!(%backend, %addr, why, "back-end marked down");
            } else {
                tracing::info!(%backend, %addr, why, "back-end is up again");
            }
        }
    }
}

/// A cheap, thread-safe handle on a running dispatcher: add, remove, drain and weigh back-ends, report their
/// external load, swap the policy, read health and counters. Every call is all-or-nothing (module docs).
#[derive(Clone)]
pub struct DispatchHandle {
    shared: Arc<Shared>,
}

impl DispatchHandle {
    /// Adds a back-end with `weight` (1..=256); it takes requests at once, in slow start. At most
    /// [`crate::config::BACKENDS_MAX`] back-ends; an address already present is refused.
    pub fn add_backend(&self, addr: SocketAddr, weight: u32) -> Result<BackendId, DispatchError> {
        let now_ms = self.shared.now_ms();
        let slow_start = (self.shared.config.slow_start_ms > 0).then_some(now_ms);
        let backend = self.shared.balancer().add(addr, weight, slow_start)?;
        tracing::info!(%backend, %addr, weight, "back-end added");
        Ok(backend)
    }

    /// Removes a back-end: it takes no new request, its requests in flight finish.
    pub fn remove_backend(&self, backend: BackendId) -> Result<(), DispatchError> {
        self.shared.balancer().remove(backend)?;
        tracing::info!(%backend, "back-end removed");
        Ok(())
    }

    /// Drain (`true`) or undrain a back-end: a drained back-end takes no new request, its in-flight requests
    /// finish, its targets move.
    pub fn set_draining(&self, backend: BackendId, draining: bool) -> Result<(), DispatchError> {
        Ok(self.shared.balancer().set_drained(backend, draining)?)
    }

    /// The control plane's verdict on a back-end (separate from the health checks, which cannot undo it);
    /// returns whether it changed. Coming back up starts slow start.
    pub fn set_control_down(&self, backend: BackendId, down: bool) -> Result<bool, DispatchError> {
        let now_ms = self.shared.now_ms();
        Ok(self
            .shared
            .balancer()
            .set_control_down(backend, down, now_ms)?)
    }

    /// Load of a back-end reported from elsewhere (requests in flight there that this dispatcher did not
    /// send), added to the dispatcher's own count in the policy (`Policy::set_external_load`).
    pub fn set_external_load(&self, backend: BackendId, load: u32) -> Result<(), DispatchError> {
        Ok(self.shared.balancer().set_external_load(backend, load)?)
    }

    /// The back-end's weight, 1..=256.
    pub fn set_weight(&self, backend: BackendId, weight: u32) -> Result<(), DispatchError> {
        Ok(self.shared.balancer().set_weight(backend, weight)?)
    }

    /// Swaps the policy (members, weights, drain and down flags and external load are kept); `false` when
    /// `config` is already in force. The new policy is built before the lock is taken.
    pub fn set_policy(&self, config: PolicyConfig) -> Result<bool, DispatchError> {
        let policy = larder_lard::build(&config).map_err(ConfigError::from)?;
        let kind = config.kind;
        let changed = self.shared.balancer().set_policy(policy, config)?;
        if changed {
            tracing::info!(policy = %kind, "policy changed");
        }
        Ok(changed)
    }

    /// The configuration of the policy in force.
    pub fn policy(&self) -> PolicyConfig {
        self.shared.balancer().policy_config().clone()
    }

    /// The back-end at `addr`, if it is one.
    pub fn backend_by_addr(&self, addr: SocketAddr) -> Option<BackendId> {
        self.shared.balancer().lookup(addr)
    }

    /// Every back-end (removed ones are not listed): address, weight, in-flight count, drain and health flags.
    pub fn backends(&self) -> Vec<BackendStatus> {
        self.shared.balancer().status()
    }

    /// Every back-end as of the health thread's last round (every `health_interval_ms`), without the balancer's
    /// lock: for metrics.
    pub fn published_backends(&self) -> Vec<BackendStatus> {
        self.shared
            .published_backends
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.shared.counters.snapshot()
    }

    /// Back-ends that take requests (not down by health checks or the control plane, not drained), as of the
    /// last health round (every `health_interval_ms`; at start: all of them). One atomic load: no lock.
    pub fn usable_backends(&self) -> usize {
        self.shared.usable_backends.load(Ordering::Relaxed)
    }
}

/// A running `larder dispatch`.
pub struct Dispatcher {
    pool: ShardPool<()>,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop_health: Mutex<Option<Sender<()>>>,
}

impl Dispatcher {
    /// Start-up steps 1–4 (module docs); returns once every shard accepts.
    pub fn start(config: DispatchConfig) -> Result<Dispatcher, DispatchError> {
        config.validate()?;
        let policy = larder_lard::build(&config.policy).map_err(ConfigError::from)?;
        let balancer = Balancer::new(
            policy,
            config.policy.clone(),
            &config.backends,
            config.retry_budget,
            config.pending_per_backend_max,
            config.slow_start_ms,
        )?;
        let cpus = Topology::discover()?.select(&config.cores)?;
        let (listeners, local_addr) =
            larder_runtime::listen::bind_reuseport(config.listen, cpus.len(), LISTEN_BACKLOG)
                .map_err(|source| DispatchError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let pool_config = PoolConfig {
            shards: ShardSelection::List(cpus),
            driver: config.io_driver,
            pin: config.pin,
            drain_timeout_ms: config.drain_timeout_ms,
            ..PoolConfig::default()
        };
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            balancer: Mutex::new(balancer),
            counters: Counters::default(),
            listeners: listeners.into_iter().map(|l| Mutex::new(Some(l))).collect(),
            usable_backends: AtomicUsize::new(0),
            published_backends: Mutex::new(Vec::new()),
            config,
        });
        shared.publish_usable_backends();
        let for_shards = Arc::clone(&shared);
        let pool = ShardPool::start(pool_config, move |context| {
            crate::proxy::run_shard(context, Arc::clone(&for_shards))
        })?;
        let (stop_sender, stop_receiver) = std::sync::mpsc::channel();
        let for_health = Arc::clone(&shared);
        let health = std::thread::Builder::new()
            .name("larder-health".to_string())
            .spawn(move || crate::health::run(for_health, stop_receiver));
        if let Err(error) = health {
            pool.shutdown();
            let _ = pool.join();
            return Err(DispatchError::HealthThread(error));
        }
        tracing::info!(%local_addr, shards = pool.shard_count(), backends = shared.config.backends.len(),
            policy = %shared.config.policy.kind, "larder dispatch running");
        Ok(Dispatcher {
            pool,
            shared,
            local_addr,
            stop_health: Mutex::new(Some(stop_sender)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shard_count(&self) -> usize {
        self.pool.shard_count()
    }

    pub fn handle(&self) -> DispatchHandle {
        DispatchHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// `Send + Sync` readers of each shard's runtime statistics and liveness, for another thread.
    pub fn runtime_stats_handles(&self) -> Vec<larder_runtime::StatsHandle> {
        self.pool.stats_handles().to_vec()
    }

    /// Shutdown step 1 and 3 (module docs); returns at once. Call [`Dispatcher::join`] to wait for step 2.
    pub fn shutdown(&self) {
        self.pool.shutdown();
        if let Ok(mut stop) = self.stop_health.lock() {
            stop.take();
        }
    }

    /// Waits for the shards to finish (after [`Dispatcher::shutdown`]).
    pub fn join(self) -> Result<PoolReport, DispatchError> {
        self.shutdown();
        Ok(self.pool.join()?)
    }
}
