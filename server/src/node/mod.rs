//! The node: `larder serve` on a [`ShardPool`] — one shard per core, each with its own listener, cache shard,
//! timer wheel, containers and access log, joined by LARD across the cores.
//!
//! # Data path of one request (numbered as the code does it)
//! 1. A shard accepts on its own `SO_REUSEPORT` listener (the kernel spreads connections over the shards'
//!    accept queues; no shared accept queue, no thundering herd). Only shards in `accept_shards` (default: all)
//!    get a listener. The connection task starts in the container its client network classifies it into.
//! 2. The shard reads until one request head is complete and parses it (`http::request`); bad input gets its
//!    status (400/414/431/501) and the connection closes. The path is normalised (`http::path`).
//! 3. With more than one shard, the shard asks the node's policy (`lard` crate) which shard serves the target
//!    (load = each shard's active requests, counted by the policy's `on_start`/`on_finish`). If another shard,
//!    it hands the connection (fd + the unparsed bytes, current request included) to that shard over the mesh
//!    ([`ShardMessage::Handoff`]); the owner serves that request without asking again. A keep-alive connection is
//!    routed again for each request (per-request distribution; hand off again when the target lives elsewhere).
//! 4. The serving shard classifies the request into a container (Host, path prefix, client network); if that
//!    is not the container the connection task runs in, the task moves to it; a container over its task limit
//!    answers 503 + Retry-After.
//! 5. The shard's cache returns the object (hit, or one read on a miss); the response head is written into the
//!    connection's reused buffer and sent with the body slices in one `writev` (`iov`). Larger files stream in
//!    bounded chunks.
//! 6. Timeouts come from the shard's timer wheel: header read (408), idle keep-alive (close), write stall (close).
//!
//! # Policy state across shards
//! One policy instance for the node, behind a `Mutex` held only for `select` + `on_start` (one critical section
//! per request) and `on_finish`. With a single shard the policy is skipped. Replicas fed by mesh messages would
//! avoid the lock but let shards disagree on ownership (two shards caching one target); on these 2-core machines
//! the uncontended lock costs ~20-40 ns a request, far below a request's ~5 µs, so the simple design wins here.
//!
//! # Shutdown (SIGINT/SIGTERM → [`Node::shutdown`])
//! 1. The pool's shutdown flag is set; every accept loop drops its listener (no new connections).
//! 2. A connection in the middle of a request finishes that response and closes; a response begun after
//!    shutdown says `Connection: close`. An idle keep-alive connection (one that may have been told
//!    `keep-alive`) waits at most `conn::DRAIN_IDLE_GRACE_MS` (1 s) for a next request, answers it with
//!    `Connection: close`, and closes; so a client between two requests as the drain begins is not reset.
//!    Every close is a `shutdown(2)` first, so the client sees the FIN even if the shard leaves its runtime
//!    before io_uring runs the asynchronous `close`.
//! 3. The pool waits for every connection task (its drain deadline), then the shards exit.
//!
//! # Reload ([`NodeSteer::reload`], module `reload`)
//! A re-read configuration is validated and planned first (`ServeConfig::plan_reload`), then sent to every
//! shard's control queue; each shard swaps the settings its requests read (`shard::Live`). A request is answered
//! under the settings it started with; no connection is closed.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | `connections_max` | 65,536 per shard (config) | a connection costs ~5 KiB of buffers when warm |
//! | read buffer | 4 KiB, grows to `header_bytes_max` + 1 (16 KiB + 1) | a head larger than that is 431 |
//! | handoff bytes | 64 KiB ([`larder_runtime::handoff::ALREADY_READ_BYTES_MAX`]) | ≥ `header_bytes_max` by validation |
//! | listen backlog | [`LISTEN_BACKLOG`] = 1,024 per shard | kernel accept queue |
//! | iovecs per write | [`iov::SEGMENTS_MAX`] = 256 | below IOV_MAX |

mod access_log;
mod conn;
pub mod hot;
pub mod iov;
mod pace;
mod reload;
mod respond;
mod shard;
mod splice;
mod stats;
mod steer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use larder_lard::{Policy, PolicyConfig, ServerId, TargetId};
use larder_runtime::pool::{PoolConfig, PoolError, PoolReport, ShardPool, ShutdownHandle};
use larder_runtime::topology::{ShardSelection, Topology};
use larder_runtime::Handoff;

pub use access_log::{format_line, AccessLog, LogEntry};
pub use hot::{HotCount, HotSketch, HotWindow};
pub use reload::{ReloadError, ReloadReport};
pub use stats::{
    quantile_of, LatencySnapshot, NodeStats, ShardCounters, ShardSnapshot, LATENCY_BUCKETS_US,
    LATENCY_CELLS,
};
pub use steer::{
    ContainerLimits, NodeSteer, SchedulerLimits, ShardSteer, SteerError, DELIVERY_TIMEOUT,
};

use crate::config::ServeConfig;

/// Kernel accept queue per shard listener.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Messages between the shards of a node.
#[derive(Debug)]
pub enum ShardMessage {
    /// Serve the next request of this connection (protocol step 3). The sender already routed `target` to the
    /// receiver and counted it with the policy's `on_start`.
    Handoff {
        handoff: Handoff,
        target: TargetId,
        /// The container the connection was bound to on the sending shard (its previous request's).
        container: usize,
    },
    /// A steering change from the control plane ([`steer`]).
    Steer(ShardSteer),
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("root {root}: {source}")]
    Root {
        root: PathBuf,
        source: std::io::Error,
    },
    #[error("root {0} is not a directory")]
    RootNotDirectory(PathBuf),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cores: {0}")]
    Topology(#[from] larder_runtime::topology::TopologyError),
    #[error("no listening socket to start on")]
    NoListener,
    #[error("the listening sockets differ in address: {first} and {other}")]
    ListenerAddresses {
        first: SocketAddr,
        other: SocketAddr,
    },
    #[error("accept_shards names shard {shard}, but the node has {shards} shards")]
    AcceptShard { shard: u32, shards: usize },
    #[error("policy: {0}")]
    Policy(String),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// What every shard of a node shares (all `Send + Sync`).
pub(crate) struct NodeShared {
    /// The configuration in force: the one the node started with, then each reload's (`reload`); held by a
    /// reload for its whole length, so reloads run one at a time. Shards read their own copy (`shard::Live`).
    pub config: Mutex<Arc<ServeConfig>>,
    pub root: PathBuf,
    /// `None` with one shard.
    pub policy: Option<Mutex<Box<dyn Policy>>>,
    /// The policy configuration in force (recorded even with one shard; [`NodeSteer`] changes it).
    pub policy_config: Mutex<PolicyConfig>,
    /// Per shard, the listeners it accepts on (none for a shard outside `accept_shards`).
    pub listeners: Vec<Mutex<Vec<std::net::TcpListener>>>,
    pub counters: Vec<Arc<ShardCounters>>,
    pub origin: Instant,
    pub shards: usize,
    /// Distributed mode's shared state (`config.cluster`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl NodeShared {
    /// The configuration in force.
    pub fn config(&self) -> Arc<ServeConfig> {
        Arc::clone(&self.running_config())
    }

    /// The lock on the configuration in force (a panic elsewhere cannot leave it half-written: it is replaced
    /// whole).
    pub fn running_config(&self) -> std::sync::MutexGuard<'_, Arc<ServeConfig>> {
        self.config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running node. Dropping it does not stop the shards: call [`Node::shutdown`] and [`Node::join`].
pub struct Node {
    pool: ShardPool<ShardMessage>,
    local_addr: SocketAddr,
    shared: Arc<NodeShared>,
}

/// Reads node statistics from any thread (the control plane keeps one).
#[derive(Clone)]
pub struct StatsReader {
    shared: Arc<NodeShared>,
}

impl StatsReader {
    pub fn stats(&self) -> NodeStats {
        node_stats(&self.shared)
    }

    /// The configured containers' names, by container index.
    pub fn container_names(&self) -> Vec<String> {
        let config = self.shared.config();
        config.containers.iter().map(|c| c.name.clone()).collect()
    }

    /// Per shard, requests answered per container (by container index).
    pub fn container_requests(&self) -> Vec<Vec<u64>> {
        let counters = &self.shared.counters;
        counters.iter().map(|c| c.container_requests()).collect()
    }
}

fn node_stats(shared: &NodeShared) -> NodeStats {
    NodeStats {
        shards: shared
            .counters
            .iter()
            .enumerate()
            .map(|(shard, counters)| counters.snapshot(shard as u32))
            .collect(),
    }
}

impl Node {
    /// Starts the shards and their listeners; returns once every shard is serving.
    pub fn start(config: ServeConfig) -> Result<Node, NodeError> {
        let listeners = Node::bind(&config)?;
        Node::start_on(config, listeners)
    }

    /// Binds the listeners [`Node::start`] would: one `SO_REUSEPORT` listener per accepting shard on
    /// `config.listen`. For a caller that keeps copies of them (binary handover).
    pub fn bind(config: &ServeConfig) -> Result<Vec<std::net::TcpListener>, NodeError> {
        config.validate()?;
        let shards = Topology::discover()?.select(&config.cores)?.len();
        let accepting = accepting_shards(config, shards)?;
        let (listeners, _) =
            larder_runtime::listen::bind_reuseport(config.listen, accepting.len(), LISTEN_BACKLOG)
                .map_err(|source| NodeError::Listen {
                    addr: config.listen,
                    source,
                })?;
        Ok(listeners)
    }

    /// Starts the shards on listeners bound already: by [`Node::bind`], or handed over by a running node (binary
    /// handover), all on one address, which becomes the node's (`config.listen` is not bound again).
    ///
    /// Listener `k` goes to accepting shard `k mod A` (A accepting shards), so with more listeners than
    /// accepting shards some shards accept on several (none is closed: closing one of a `SO_REUSEPORT` group
    /// resets the connections queued on it); with fewer, the missing ones are bound on the same address (the
    /// kernel then spreads new connections over all of them).
    pub fn start_on(
        config: ServeConfig,
        listeners: Vec<std::net::TcpListener>,
    ) -> Result<Node, NodeError> {
        let Preflight { root, cpus } = preflight(&config)?;
        let shards = cpus.len();
        let accepting = accepting_shards(&config, shards)?;
        let (listeners, local_addr) = assign_listeners(listeners, &accepting, shards)?;
        let policy = if shards > 1 {
            let mut policy = larder_lard::build(&PolicyConfig::new(config.policy))
                .map_err(|error| NodeError::Policy(error.to_string()))?;
            for shard in 0..shards {
                policy
                    .add_server(ServerId(shard as u32), 1)
                    .map_err(|error| NodeError::Policy(error.to_string()))?;
            }
            Some(Mutex::new(policy))
        } else {
            None
        };
        let pool_config = PoolConfig {
            shards: ShardSelection::List(cpus),
            driver: config.io_driver,
            ..PoolConfig::default()
        };
        let cluster = crate::cluster::Cluster::for_node(local_addr, shards, &config);
        let shared = Arc::new(NodeShared {
            root,
            cluster,
            policy,
            policy_config: Mutex::new(PolicyConfig::new(config.policy)),
            listeners: listeners.into_iter().map(Mutex::new).collect(),
            counters: (0..shards)
                .map(|_| Arc::new(ShardCounters::new(config.containers.len())))
                .collect(),
            origin: Instant::now(),
            shards,
            config: Mutex::new(Arc::new(config)),
        });
        let for_shards = Arc::clone(&shared);
        let pool = ShardPool::start(pool_config, move |context| {
            shard::run(context, Arc::clone(&for_shards))
        })?;
        tracing::info!(%local_addr, shards, root = %shared.root.display(), "larder serving");
        Ok(Node {
            pool,
            local_addr,
            shared,
        })
    }

    /// The address the shards listen on (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Distributed mode's directory and counters (`None` unless `config.cluster`).
    pub fn cluster(&self) -> Option<Arc<crate::cluster::Cluster>> {
        self.shared.cluster.clone()
    }

    /// Shards running.
    pub fn shard_count(&self) -> usize {
        self.shared.shards
    }

    /// Per-shard counters now.
    pub fn stats(&self) -> NodeStats {
        node_stats(&self.shared)
    }

    /// A `Send + Sync` reader of the statistics for another thread.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runtime statistics of the shards (CPU time, tasks, mesh, containers).
    pub fn runtime_stats(&self) -> Vec<larder_runtime::ShardStats> {
        self.pool.stats()
    }

    /// `Send + Sync` readers of each shard's runtime statistics, for another thread.
    pub fn runtime_stats_handles(&self) -> Vec<larder_runtime::StatsHandle> {
        self.pool.stats_handles().to_vec()
    }

    /// A `Send + Sync` handle that changes the policy and container shares while the node runs.
    pub fn steer(&self) -> NodeSteer {
        NodeSteer::new(Arc::clone(&self.shared), self.pool.controls().to_vec())
    }

    /// A handle that starts the shutdown protocol from any thread (e.g. a signal handler thread).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.pool.shutdown_handle()
    }

    /// Starts the shutdown protocol (module docs).
    pub fn shutdown(&self) {
        self.pool.shutdown();
    }

    /// Waits until every shard has stopped (after a shutdown request).
    pub fn join(self) -> Result<PoolReport, NodeError> {
        Ok(self.pool.join()?)
    }
}

/// What [`preflight`] found: ROOT as the node serves it and the CPUs of its shards.
#[derive(Debug)]
pub struct Preflight {
    pub root: PathBuf,
    pub cpus: Vec<larder_runtime::topology::CpuId>,
}

/// Every check [`Node::start`] makes before it binds a socket or starts a shard: the settings' ranges, ROOT (it
/// exists and is a directory), the cores (they exist and this process may run on them) and `accept_shards`
/// (each names a shard). `larder serve --check-config` runs exactly these.
pub fn preflight(config: &ServeConfig) -> Result<Preflight, NodeError> {
    config.validate()?;
    let root = resolve_root(&config.root)?;
    let cpus = Topology::discover()?.select(&config.cores)?;
    accepting_shards(config, cpus.len())?;
    Ok(Preflight { root, cpus })
}

/// The shards that accept (all, or `config.accept_shards`), checked against the shard count.
fn accepting_shards(config: &ServeConfig, shards: usize) -> Result<Vec<u32>, NodeError> {
    for &shard in &config.accept_shards {
        if shard as usize >= shards {
            return Err(NodeError::AcceptShard { shard, shards });
        }
    }
    // Only accepting shards get a listener: a socket in the SO_REUSEPORT group that never accepts would
    // hold (and, when closed, reset) the connections the kernel hashes to it.
    Ok((0..shards as u32)
        .filter(|shard| config.accept_shards.is_empty() || config.accept_shards.contains(shard))
        .collect())
}

/// ROOT as the node serves it: canonical, and a directory.
fn resolve_root(root: &std::path::Path) -> Result<PathBuf, NodeError> {
    let resolved = std::fs::canonicalize(root).map_err(|source| NodeError::Root {
        root: root.to_path_buf(),
        source,
    })?;
    if !resolved.is_dir() {
        return Err(NodeError::RootNotDirectory(resolved));
    }
    Ok(resolved)
}

/// Hands `listeners` to the accepting shards (see [`Node::start_on`]); binds the missing ones.
fn assign_listeners(
    mut listeners: Vec<std::net::TcpListener>,
    accepting: &[u32],
    shards: usize,
) -> Result<(Vec<Vec<std::net::TcpListener>>, SocketAddr), NodeError> {
    let Some(first) = listeners.first() else {
        return Err(NodeError::NoListener);
    };
    let local_addr = first.local_addr().map_err(|source| NodeError::Listen {
        addr: "0.0.0.0:0".parse().expect("a literal address"),
        source,
    })?;
    for listener in &listeners {
        let addr = listener.local_addr().map_err(|source| NodeError::Listen {
            addr: local_addr,
            source,
        })?;
        if addr != local_addr {
            return Err(NodeError::ListenerAddresses {
                first: local_addr,
                other: addr,
            });
        }
    }
    if listeners.len() < accepting.len() {
        let missing = accepting.len() - listeners.len();
        let (more, _) = larder_runtime::listen::bind_reuseport(local_addr, missing, LISTEN_BACKLOG)
            .map_err(|source| NodeError::Listen {
                addr: local_addr,
                source,
            })?;
        listeners.extend(more);
    }
    let mut per_shard: Vec<Vec<std::net::TcpListener>> = (0..shards).map(|_| Vec::new()).collect();
    for (index, listener) in listeners.into_iter().enumerate() {
        let shard = accepting[index % accepting.len()] as usize;
        per_shard[shard].push(listener);
    }
    Ok((per_shard, local_addr))
}
