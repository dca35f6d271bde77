//! The link between a running node (`larder serve`) and the control plane: the embedded control plane (or a
//! remote one with `--join`), and the node agent whose [`NodeHooks`] read the node's statistics and apply
//! steering through [`NodeSteer`].
//!
//! # Start-up ([`NodeLink::start`], after the node serves)
//! 1. `--no-control`: nothing runs; the node serves with its own settings.
//! 2. Embedded (default `--control 127.0.0.1:50051`): a control plane starts on its own thread with the node's
//!    policy and containers as the cluster's initial settings, so registering changes nothing on the node. If the
//!    default address is taken (another node on this machine) the node warns and serves without a control
//!    plane; an explicit `--control ADDR` that cannot be bound is an error. With `--state FILE` the plane
//!    restores the operator's saved settings, which win over the node's configuration (the node then applies
//!    them like any steering), and keeps every later change there; a plane that cannot start is then an error
//!    too, since the operator asked for those settings.
//! 3. Embedded or `--join ADDR`: an agent registers the node (id = its HTTP address, cores = shards, cache
//!    budget) with its containers and reports its load every report interval (100 ms by default).
//!
//! # Applying steering ([`ServeHooks::apply`])
//! - The policy: when it differs from the one in force, [`NodeSteer::set_policy`] swaps it (a single-shard node
//!   records it; it takes effect with more shards).
//! - Containers the node does not have are ignored (they belong to other nodes). For one the node has:
//!   1. its limits are validated and mapped onto the shards' scheduler limits first
//!      ([`NodeSteer::scheduler_limits`]: `connections_max` → `tasks_max`, `queued_work_max` → `queued_max`,
//!      `cpu_percent_max` → the shard's CPU cap, `send_rate_bytes_per_second` → each connection's send rate;
//!      0 → the node's own configuration of the container); a limit out of range (above 1,048,576
//!      connections or queued work, 100 percent, 10 GB/s) refuses the whole container, shares included
//!      (logged);
//!   2. shares that differ from the last ones applied go out with [`NodeSteer::set_container_shares`];
//!   3. scheduler limits that differ from the last ones applied go out with
//!      [`NodeSteer::set_container_limits`]. A connection placed into a container at its `connections_max` on
//!      that shard is answered 503 + Retry-After; a `cpu_percent_max` of 25 holds the container to 2.5 ms of
//!      every 10 ms of each shard, busy or idle; a send rate paces each of its connections' responses.
//!
//!   The first "last applied" values are the node's configuration, so a control plane that repeats them (the
//!   embedded one, or one whose containers say 0) changes nothing.
//! - Node weights and drain flags steer the distribution across nodes (dispatchers), not across the cores of
//!   one node, so a node ignores them.
//!
//!   A container a reload added since the start starts from its configuration too. A reload applies only what
//!   changed in the file, so a container's shares set from the control plane stay until the file changes them,
//!   and a reloaded value stays until the control plane changes that container again.
//!
//! # Reloading (`ReloadNode`, [`ServeHooks::reload`])
//! The same `Reloader` as SIGHUP (`serve.rs`, handed over as a [`ReloadFn`]) re-reads the file (flags over it) and puts it in force; the answer lists
//! the settings applied and kept, or the refusal naming the file and the setting.
//!
//! A refused steering (e.g. a control plane with a policy this node cannot build) is logged and the node keeps
//! its current settings (fail static). So does a lost control plane: the agent reconnects with backoff.
//!
//! # Profiles ([`ServeHooks::profile`])
//! `larder ctl profile` reaches the node as an order on its agent session (`larder_control::profile`). The node
//! samples the order's shard thread (or every shard thread), found by the kernel thread id each shard
//! publishes in its statistics, with `larder_profile` for the order's 1..=60 s at 997 Hz, on a thread of its
//! own; the shards do nothing for it. One profile at a time: a second order while one runs is refused (busy)
//! at once. A shard out of range or a shard thread not started yet is refused before any sampling.
//!
//! # Shutdown ([`NodeLink::shutdown`], after the node has stopped)
//! 1. Stop the agent (it ends its session; nothing is applied after).
//! 2. Stop the embedded control plane (at most its 1 s grace).
//!
//! # Load reports
//! Per shard: active connections, requests in progress as queued work, requests/s, bytes/s and p99 latency (the
//! bound of the latency histogram's bucket that holds it; none without requests) over the last
//! interval (the first report has no interval: rates 0), cache bytes/hits/misses/evictions, handoffs sent,
//! thread CPU time, and per-container CPU time (its polls plus its part of the loop's work around them; and its
//! polls alone), rejections and cap throttles (sampled by the shard every 100 ms).
//!
//! Hot targets: every shard counts the paths it serves in a 64-counter sketch and publishes its last 100 ms
//! window (`larder_server::node::hot`); a report merges the shards' windows by path into
//! `TargetLoad { target, requests_per_second, shards }` (rates summed, the shards that served it), the
//! [`HOT_TARGETS_PER_NODE_MAX`] (64) highest rates first. A target appears while it is being served and leaves
//! one window after its traffic stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use larder_control::state::HOT_TARGETS_PER_NODE_MAX;
use larder_control::{
    AgentConfig, AgentStatsReader, Container, ContainerLimits, ContainerLoad, ContainerName,
    ControlConfig, ControlHandle, ControlPlane, NodeAgent, NodeHooks, NodeId, NodeInfo, NodeLoad,
    ProfileFailure, ProfileFailureKind, ProfileJob, ProfileRequest, ReloadOutcome, ReloadRefused,
    ShardId, ShardLoad, Steering, TargetLoad,
};
use larder_server::config::ContainerConfig;

/// Re-reads the node's file and puts it in force (`larder serve`'s `Reloader`, shared with SIGHUP). A function,
/// not the type, so this module stays free of `serve` (the steering benchmark includes it).
pub type ReloadFn = Box<dyn Fn() -> Result<ReloadOutcome, ReloadRefused> + Send>;
use larder_lard::PolicyConfig;
use larder_runtime::StatsHandle;
use larder_server::node::{
    self, HotWindow, NodeSteer, SchedulerLimits, ShardSnapshot, StatsReader,
};
use larder_server::{Node, ServeConfig};

/// Where the node's control plane is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlMode {
    /// `--no-control`.
    Off,
    /// Start a control plane in this process on `listen`. `required` (an explicit `--control` or `--state`):
    /// failing to start it is an error; otherwise (the default address) the node warns and serves without one.
    /// `state_file` (`--state`): where the plane keeps the operator's settings.
    Embedded {
        listen: SocketAddr,
        required: bool,
        state_file: Option<PathBuf>,
    },
    /// Join the control plane at this address (`--join`).
    Join(SocketAddr),
}

/// Default address of the embedded control plane.
pub const CONTROL_ADDR_DEFAULT: &str = "127.0.0.1:50051";

/// `--no-control`, `--control ADDR`, `--join ADDR` and `--state FILE` (clap rejects `--join` with either of the
/// first two, and `--state` with `--join` or `--no-control`). `--join` also takes HOST:PORT, resolved once here (a
/// Kubernetes Service name: its cluster IP does not change).
pub fn control_mode(
    no_control: bool,
    control: Option<&str>,
    join: Option<&str>,
    state_file: Option<PathBuf>,
) -> anyhow::Result<ControlMode> {
    let parse = |flag: &str, addr: &str| {
        addr.parse::<SocketAddr>()
            .with_context(|| format!("{flag} {addr}: expected IP:PORT"))
    };
    let resolve = |addr: &str| -> anyhow::Result<SocketAddr> {
        if let Ok(addr) = addr.parse::<SocketAddr>() {
            return Ok(addr);
        }
        std::net::ToSocketAddrs::to_socket_addrs(addr)
            .with_context(|| format!("--join {addr}: expected IP:PORT or HOST:PORT"))?
            .next()
            .with_context(|| format!("--join {addr}: the name has no address"))
    };
    Ok(match (no_control, join) {
        (true, _) => ControlMode::Off,
        (false, Some(join)) => ControlMode::Join(resolve(join)?),
        (false, None) => ControlMode::Embedded {
            listen: parse("--control", control.unwrap_or(CONTROL_ADDR_DEFAULT))?,
            required: control.is_some() || state_file.is_some(),
            state_file,
        },
    })
}

/// The control plane (if embedded) and the agent of one node.
pub struct NodeLink {
    plane: Option<ControlHandle>,
    agent: Option<NodeAgent>,
}

impl NodeLink {
    /// Start-up steps 1-3 (module docs). `control_listener`: the embedded control plane serves on it instead of
    /// binding its address (binary handover: the predecessor's socket; `None` otherwise). `reloader`: what
    /// `larder ctl reload-node` runs (the same as SIGHUP).
    pub fn start(
        mode: ControlMode,
        node: &Node,
        config: &ServeConfig,
        control_listener: Option<std::net::TcpListener>,
        reloader: Option<ReloadFn>,
    ) -> anyhow::Result<NodeLink> {
        let containers = node_containers(config);
        let (plane, control_addr) = match mode {
            ControlMode::Off => {
                return Ok(NodeLink {
                    plane: None,
                    agent: None,
                })
            }
            ControlMode::Join(addr) => (None, addr),
            ControlMode::Embedded {
                listen,
                required,
                state_file,
            } => {
                let mut control = ControlConfig::new(listen);
                control.policy = node.steer().policy_config();
                control.containers = containers.clone();
                control.state_file = state_file;
                let spawned = match control_listener {
                    Some(listener) => ControlPlane::spawn_on(control, listener),
                    None => ControlPlane::spawn(control),
                };
                match spawned {
                    Ok(plane) => {
                        let addr = plane.local_addr();
                        (Some(plane), addr)
                    }
                    Err(error) if !required => {
                        tracing::warn!(%listen, %error, "no control plane (pass --control ADDR or --no-control)");
                        return Ok(NodeLink {
                            plane: None,
                            agent: None,
                        });
                    }
                    Err(error) => {
                        return Err(anyhow::Error::new(error)
                            .context(format!("starting the control plane on {listen}")))
                    }
                }
            }
        };
        let info = NodeInfo {
            node_id: NodeId(node.local_addr().to_string()),
            http_address: node.local_addr().to_string(),
            cores: node.shard_count() as u32,
            cache_bytes_budget: config.cache_mb << 20,
        };
        let mut agent_config = AgentConfig::new(control_addr, info);
        agent_config.containers = containers;
        let agent = NodeAgent::spawn_with(agent_config, ServeHooks::new(node, config, reloader))
            .context("starting the node agent")?;
        Ok(NodeLink {
            plane,
            agent: Some(agent),
        })
    }

    /// The embedded control plane's listening socket, if one runs (to hand over).
    pub fn control_listener(&self) -> Option<&std::net::TcpListener> {
        self.plane.as_ref().map(ControlHandle::listener)
    }

    /// A reader of the agent's counters (is the node registered?), if an agent runs.
    pub fn agent_stats_reader(&self) -> Option<AgentStatsReader> {
        self.agent.as_ref().map(NodeAgent::stats_reader)
    }

    /// The embedded control plane's address, if one runs.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.plane.as_ref().map(ControlHandle::local_addr)
    }

    /// Shutdown steps 1-2 (module docs).
    pub fn shutdown(self) -> anyhow::Result<()> {
        if let Some(agent) = self.agent {
            agent.shutdown();
            tracing::info!("left the control plane (shutting down)");
        }
        if let Some(plane) = self.plane {
            plane.shutdown().context("stopping the control plane")?;
        }
        Ok(())
    }

    #[cfg(test)]
    fn agent_stats(&self) -> larder_control::AgentStats {
        self.agent
            .as_ref()
            .map(NodeAgent::stats)
            .unwrap_or_default()
    }
}

/// The node's containers in the control plane's terms.
fn node_containers(config: &ServeConfig) -> Vec<Container> {
    config
        .containers
        .iter()
        .map(|container| Container {
            name: ContainerName(container.name.clone()),
            shares: container.shares,
            limits: ContainerLimits {
                connections_max: u64::from(container.tasks_max),
                queued_work_max: 0,
                cpu_percent_max: container.cpu_percent_max,
                send_rate_bytes_per_second: container.send_rate_bytes_per_second,
            },
        })
        .collect()
}

/// What was last applied to one container of this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Applied {
    shares: u32,
    limits: SchedulerLimits,
}

impl Applied {
    /// As each shard builds the container from the node's configuration.
    fn configured(container: &ContainerConfig) -> Applied {
        Applied {
            shares: container.shares,
            limits: SchedulerLimits {
                tasks_max: container.tasks_max,
                queued_max: container.tasks_max,
                cpu_percent_max: container.cpu_percent_max,
                send_rate_bytes_per_second: container.send_rate_bytes_per_second,
            },
        }
    }
}

/// [`NodeHooks`] for a running node.
pub struct ServeHooks {
    stats: StatsReader,
    runtime: Vec<StatsHandle>,
    steer: NodeSteer,
    /// Shares and limits last applied per container of this node (first: its configuration).
    applied: HashMap<String, Applied>,
    /// The previous report's counters, for rates.
    previous: Option<(Instant, Vec<ShardSnapshot>)>,
    /// Re-reads the node's file (`ReloadNode`); `None`: the node refuses.
    reloader: Option<ReloadFn>,
    /// Set while a profile runs (module docs, "Profiles").
    profiling: Arc<AtomicBool>,
}

/// Holds the node's one profiling slot; frees it when dropped, whether or not the job ran.
struct ProfilingSlot(Arc<AtomicBool>);

impl Drop for ProfilingSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl ServeHooks {
    pub fn new(node: &Node, config: &ServeConfig, reloader: Option<ReloadFn>) -> ServeHooks {
        ServeHooks {
            stats: node.stats_reader(),
            runtime: node.runtime_stats_handles(),
            steer: node.steer(),
            applied: config
                .containers
                .iter()
                .map(|container| (container.name.clone(), Applied::configured(container)))
                .collect(),
            previous: None,
            reloader,
            profiling: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The threads an order samples, or why it is refused (module docs, "Profiles").
    fn profile_targets(
        &self,
        request: ProfileRequest,
    ) -> Result<Vec<larder_profile::ThreadTarget>, ProfileFailure> {
        let invalid =
            |message: String| ProfileFailure::new(ProfileFailureKind::InvalidArgument, message);
        larder_profile::validate_seconds(request.seconds)
            .map_err(|error| invalid(format!("invalid seconds: {error}")))?;
        let shards: Vec<&StatsHandle> = match request.shard {
            Some(shard) => vec![self.runtime.get(shard.0 as usize).ok_or_else(|| {
                invalid(format!(
                    "invalid shard: {} is outside 0..{}",
                    shard.0,
                    self.runtime.len()
                ))
            })?],
            None => self.runtime.iter().collect(),
        };
        shards
            .into_iter()
            .map(|handle| {
                let shard = handle.shard().0;
                let tid = handle.thread_id().ok_or_else(|| {
                    ProfileFailure::new(
                        ProfileFailureKind::Internal,
                        format!("shard {shard} has not started"),
                    )
                })?;
                Ok(larder_profile::ThreadTarget {
                    tid,
                    label: format!("larder-shard-{shard}"),
                })
            })
            .collect()
    }

    fn apply_policy(&mut self, policy: &PolicyConfig) {
        match self.steer.set_policy(policy.clone()) {
            Ok(true) | Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "steering: policy not applied; keeping the current one")
            }
        }
    }

    /// Module docs, "Applying steering", containers steps 1-3.
    fn apply_containers(&mut self, containers: &[Container]) {
        for container in containers {
            let name = &container.name.0;
            if !self.applied.contains_key(name) {
                // Added by a reload since the start: its first "last applied" values are its configuration.
                let Ok(configured) = self.steer.configured(name) else {
                    continue; // another node's container
                };
                self.applied
                    .insert(name.clone(), Applied::configured(&configured));
            }
            let Some(applied) = self.applied.get_mut(name) else {
                continue;
            };
            let requested = node::ContainerLimits {
                connections_max: container.limits.connections_max,
                queued_work_max: container.limits.queued_work_max,
                cpu_percent_max: container.limits.cpu_percent_max,
                send_rate_bytes_per_second: container.limits.send_rate_bytes_per_second,
            };
            let limits = match self.steer.scheduler_limits(name, requested) {
                Ok(limits) => limits,
                Err(error) => {
                    tracing::warn!(%error, "steering: container not changed");
                    continue;
                }
            };
            if applied.shares != container.shares {
                match self.steer.set_container_shares(name, container.shares) {
                    Ok(()) => applied.shares = container.shares,
                    Err(error) => tracing::warn!(%error, "steering: shares not applied"),
                }
            }
            if applied.limits != limits {
                match self.steer.set_container_limits(name, requested) {
                    Ok(sent) => applied.limits = sent,
                    Err(error) => tracing::warn!(%error, "steering: limits not applied"),
                }
            }
        }
    }
}

/// The shards' hot-target windows merged by path: rates summed, the shards that served each target, the
/// [`HOT_TARGETS_PER_NODE_MAX`] highest rates first (ties by path). `windows` is indexed by shard id.
fn hot_targets(windows: &[HotWindow]) -> Vec<TargetLoad> {
    let mut merged: HashMap<&str, TargetLoad> = HashMap::new();
    for (shard, window) in windows.iter().enumerate() {
        for target in &window.targets {
            let load = merged
                .entry(target.path.as_str())
                .or_insert_with(|| TargetLoad {
                    target: target.path.clone(),
                    requests_per_second: 0.0,
                    shards: Vec::new(),
                });
            load.requests_per_second += window.rate(target.requests);
            load.shards.push(ShardId(shard as u32));
        }
    }
    let mut targets: Vec<TargetLoad> = merged.into_values().collect();
    targets.sort_by(|a, b| {
        b.requests_per_second
            .total_cmp(&a.requests_per_second)
            .then_with(|| a.target.cmp(&b.target))
    });
    targets.truncate(HOT_TARGETS_PER_NODE_MAX);
    targets
}

/// `(later - earlier) / seconds`, 0 without an interval.
fn rate(later: u64, earlier: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        later.saturating_sub(earlier) as f64 / seconds
    } else {
        0.0
    }
}

impl NodeHooks for ServeHooks {
    fn load_report(&mut self) -> NodeLoad {
        let now = Instant::now();
        let stats = self.stats.stats();
        let seconds = self
            .previous
            .as_ref()
            .map_or(0.0, |(at, _)| now.duration_since(*at).as_secs_f64());
        let runtime: Vec<_> = self.runtime.iter().map(StatsHandle::snapshot).collect();
        let shards = stats
            .shards
            .iter()
            .map(|shard| {
                let before = self
                    .previous
                    .as_ref()
                    .and_then(|(_, shards)| shards.get(shard.shard as usize))
                    .copied()
                    .unwrap_or(*shard);
                let runtime = runtime.get(shard.shard as usize);
                ShardLoad {
                    shard: ShardId(shard.shard),
                    active_connections: shard.connections_active,
                    queued_work: shard.requests_active,
                    requests_per_second: rate(shard.requests, before.requests, seconds),
                    bytes_per_second: rate(shard.bytes_sent, before.bytes_sent, seconds),
                    cache_bytes: shard.cache_bytes,
                    cache_hits: shard.cache_hits,
                    cache_misses: shard.cache_misses,
                    cache_evictions: shard.cache_evictions,
                    handoffs: shard.handoffs_out,
                    cpu_time_us: runtime.map_or(0, |runtime| runtime.busy_us),
                    requests: shard.requests,
                    // Over the requests since the last report (none in the first: `larder top` shows "-"); the
                    // histogram bucket's upper bound, as `histogram_quantile` places it.
                    latency_p99_us: shard.latency.since(&before.latency).quantile_us(0.99),
                    containers: runtime
                        .map(|runtime| {
                            runtime
                                .containers
                                .iter()
                                .map(|container| ContainerLoad {
                                    container: ContainerName(container.name.clone()),
                                    cpu_time_us: container.cpu_ns / 1000,
                                    rejections: container.rejections,
                                    poll_cpu_time_us: container.poll_cpu_ns / 1000,
                                    throttles: container.throttles,
                                    shares: container.shares,
                                    limits: ContainerLimits {
                                        connections_max: u64::from(container.tasks_max),
                                        queued_work_max: u64::from(container.queued_max),
                                        cpu_percent_max: container.cpu_percent_max,
                                        send_rate_bytes_per_second: container
                                            .send_rate_bytes_per_second,
                                    },
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        self.previous = Some((now, stats.shards));
        NodeLoad {
            shards,
            hot_targets: hot_targets(&self.stats.hot_windows()),
        }
    }

    fn apply(&mut self, steering: &Steering) {
        self.apply_policy(&steering.policy);
        self.apply_containers(&steering.containers);
    }

    fn reload(&mut self) -> Result<ReloadOutcome, ReloadRefused> {
        let Some(reloader) = &self.reloader else {
            return Err(ReloadRefused(
                "this node cannot reload its configuration".to_string(),
            ));
        };
        reloader()
    }

    fn profile(&mut self, request: ProfileRequest) -> ProfileJob {
        let targets = match self.profile_targets(request) {
            Ok(targets) => targets,
            Err(failure) => return Box::new(move || Err(failure)),
        };
        if self.profiling.swap(true, Ordering::AcqRel) {
            return Box::new(|| {
                Err(ProfileFailure::new(
                    ProfileFailureKind::Busy,
                    "a profile is already running on this node (one at a time)",
                ))
            });
        }
        let slot = ProfilingSlot(Arc::clone(&self.profiling));
        let duration = std::time::Duration::from_secs(u64::from(request.seconds));
        tracing::info!(shard = ?request.shard, seconds = request.seconds, "profiling");
        Box::new(move || {
            let _slot = slot;
            larder_profile::profile(&targets, duration).map_err(|error| {
                tracing::warn!(%error, "profile refused");
                ProfileFailure::from(&error)
            })
        })
    }

    fn connection_changed(&mut self, connected: bool) {
        if connected {
            tracing::info!("registered with the control plane");
        } else {
            tracing::warn!("lost the control plane; serving with the last settings");
        }
    }
}

/// The integration tests' HTTP helper, shared with the unit tests below.
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod test_http;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use larder_control::proto::v1 as pb;
    use larder_control::{convert, CtlClient};
    use larder_lard::PolicyKind;
    use larder_runtime::ShardSelection;

    use super::*;

    use super::test_http::get;

    /// A bounded wait: `condition` is tried every 20 ms for at most 30 s (the agent's backoff tops at 5 s).
    const WAIT_ATTEMPTS_MAX: u32 = 1500;
    const WAIT_PAUSE: Duration = Duration::from_millis(20);

    fn wait_for<T>(what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
        for _ in 0..WAIT_ATTEMPTS_MAX {
            if let Some(value) = condition() {
                return value;
            }
            std::thread::sleep(WAIT_PAUSE);
        }
        panic!("timed out waiting for: {what}");
    }

    struct Fixture {
        node: Node,
        link: NodeLink,
        _root: tempfile::TempDir,
    }

    fn loopback_port_0() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// A two-shard node with its control plane embedded, once its agent has registered.
    fn start_registered(policy: PolicyKind) -> Fixture {
        let fixture = start(
            2,
            policy,
            ControlMode::Embedded {
                listen: loopback_port_0(),
                required: true,
                state_file: None,
            },
        );
        wait_for("the agent registered", || {
            (fixture.link.agent_stats().registrations >= 1).then_some(())
        });
        fixture
    }

    fn start(shards: usize, policy: PolicyKind, mode: ControlMode) -> Fixture {
        let root = tempfile::tempdir().expect("tempdir");
        for name in ["a.txt", "b.txt", "c.txt", "d.txt"] {
            std::fs::write(root.path().join(name), name).expect("write");
        }
        let config = ServeConfig {
            listen: loopback_port_0(),
            cores: ShardSelection::Count(shards),
            policy,
            root: root.path().to_path_buf(),
            shard_header: true,
            cache_mb: 4,
            ..ServeConfig::default()
        };
        let node = Node::start(config.clone()).expect("node starts");
        let link = NodeLink::start(mode, &node, &config, None, None).expect("link starts");
        Fixture {
            node,
            link,
            _root: root,
        }
    }

    impl Fixture {
        fn ctl(&self) -> CtlClient {
            let addr = self.link.control_addr().expect("embedded control plane");
            CtlClient::connect(&addr.to_string(), None).expect("ctl connects")
        }

        fn stop(self) {
            self.node.shutdown();
            self.node.join().expect("node stops");
            self.link.shutdown().expect("link stops");
        }
    }

    fn listed(ctl: &mut CtlClient, http_address: &str) -> bool {
        ctl.list_nodes()
            .map(|nodes| {
                nodes.nodes.iter().any(|node| {
                    node.state == pb::NodeState::Up as i32
                        && node
                            .info
                            .as_ref()
                            .is_some_and(|info| info.http_address == http_address)
                })
            })
            .unwrap_or(false)
    }

    #[test]
    fn the_control_plane_is_told_the_configured_cap_and_send_rate() {
        let mut config = ServeConfig::default();
        config.containers[0].cpu_percent_max = 30;
        config.containers[0].send_rate_bytes_per_second = 4096;
        let told = node_containers(&config);
        assert_eq!(
            told[0].limits,
            ContainerLimits {
                connections_max: 65_536,
                queued_work_max: 0,
                cpu_percent_max: 30,
                send_rate_bytes_per_second: 4096,
            },
            "what ListContainers shows for an embedded control plane"
        );
    }

    #[test]
    fn control_flags_choose_the_mode() {
        let default: SocketAddr = CONTROL_ADDR_DEFAULT.parse().expect("default address");
        let other: SocketAddr = "127.0.0.1:6000".parse().expect("address");
        let mode = |no_control, control, join| {
            control_mode(no_control, control, join, None).expect("valid")
        };
        assert_eq!(
            mode(false, None, None),
            ControlMode::Embedded {
                listen: default,
                required: false,
                state_file: None
            }
        );
        assert_eq!(
            mode(false, Some("127.0.0.1:6000"), None),
            ControlMode::Embedded {
                listen: other,
                required: true,
                state_file: None
            }
        );
        assert_eq!(
            mode(false, None, Some("127.0.0.1:6000")),
            ControlMode::Join(other)
        );
        assert_eq!(mode(true, None, None), ControlMode::Off);
        let state = PathBuf::from("/var/lib/larder/state.json");
        assert_eq!(
            control_mode(false, None, None, Some(state.clone())).expect("valid"),
            ControlMode::Embedded {
                listen: default,
                required: true,
                state_file: Some(state)
            },
            "--state asks for the embedded plane: failing to start it is an error"
        );
        match mode(false, None, Some("localhost:6000")) {
            ControlMode::Join(addr) => assert!(
                addr.ip().is_loopback() && addr.port() == 6000,
                "a name is resolved: {addr}"
            ),
            other => panic!("expected Join, got {other:?}"),
        }
        let error = control_mode(false, None, Some("nowhere"), None).expect_err("not IP:PORT");
        assert!(format!("{error:#}").contains("--join nowhere"), "{error:#}");
    }

    #[test]
    fn hot_targets_merge_shards_by_path_highest_rate_first() {
        use larder_server::node::HotCount;
        let window = |window_ms, targets: &[(&str, u64)]| HotWindow {
            window_ms,
            requests: targets.iter().map(|(_, count)| count).sum(),
            skipped: 0,
            targets: targets
                .iter()
                .map(|&(path, requests)| HotCount {
                    path: path.to_string(),
                    requests,
                })
                .collect(),
        };
        let windows = [
            window(100, &[("/a", 30), ("/b", 10)]),
            window(200, &[("/b", 40), ("/c", 2)]),
            window(0, &[]),
        ];
        let merged: Vec<(String, f64, Vec<u32>)> = hot_targets(&windows)
            .into_iter()
            .map(|load| {
                let shards = load.shards.iter().map(|shard| shard.0).collect();
                (load.target, load.requests_per_second, shards)
            })
            .collect();
        assert_eq!(
            merged,
            [
                ("/a".to_string(), 300.0, vec![0]),
                ("/b".to_string(), 300.0, vec![0, 1]),
                ("/c".to_string(), 10.0, vec![1]),
            ],
            "rates summed over the shards, ties by path"
        );

        let many: Vec<(String, u64)> = (0..200).map(|n| (format!("/{n:03}"), n)).collect();
        let many: Vec<(&str, u64)> = many.iter().map(|(path, n)| (path.as_str(), *n)).collect();
        let top = hot_targets(&[window(100, &many)]);
        assert_eq!(top.len(), HOT_TARGETS_PER_NODE_MAX);
        assert_eq!(top[0].target, "/199");
        assert_eq!(top[HOT_TARGETS_PER_NODE_MAX - 1].target, "/136");
    }

    #[test]
    fn embedded_control_plane_lists_its_node_and_its_load() {
        let fixture = start(
            2,
            PolicyKind::Lard,
            ControlMode::Embedded {
                listen: loopback_port_0(),
                required: true,
                state_file: None,
            },
        );
        let http = fixture.node.local_addr().to_string();
        let mut ctl = fixture.ctl();
        wait_for("ListNodes shows the node", || {
            listed(&mut ctl, &http).then_some(())
        });
        for _ in 0..4 {
            let (answer, _) = get(fixture.node.local_addr(), "/a.txt");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        let total = wait_for(
            "GetClusterLoad counts both shards and the cache traffic",
            || {
                let load = ctl.get_cluster_load().ok()?;
                let total = load.total?;
                (total.shard == 2 && total.cache_hits + total.cache_misses >= 4).then_some(total)
            },
        );
        assert!(total.cache_misses >= 1, "the first GET missed: {total:?}");
        // The node's own policy and containers are the cluster's: registering changed nothing.
        assert_eq!(fixture.node.steer().policy_name(), "lard");
        assert!(fixture.link.agent_stats().registrations >= 1);
        fixture.stop();
    }

    #[test]
    fn set_policy_reaches_the_node_and_pins_targets_to_shards() {
        let fixture = start_registered(PolicyKind::Wrr);
        let addr = fixture.node.local_addr();
        let mut ctl = fixture.ctl();
        let under_wrr: Vec<u32> = (0..4).map(|_| get(addr, "/a.txt").1).collect();
        assert!(
            under_wrr.contains(&0) && under_wrr.contains(&1),
            "wrr alternates one target over both shards: {under_wrr:?}"
        );
        ctl.set_policy(pb::SetPolicyRequest {
            policy: Some(convert::policy_to_pb(&PolicyConfig::new(
                PolicyKind::ConsistentHash,
            ))),
            node_weights: Vec::new(),
        })
        .expect("SetPolicy");
        let steer = fixture.node.steer();
        wait_for("the node runs ch", || {
            (steer.policy_name() == "ch").then_some(())
        });
        for path in ["/a.txt", "/b.txt", "/c.txt", "/d.txt"] {
            let shards: Vec<u32> = (0..4).map(|_| get(addr, path).1).collect();
            assert!(
                shards.iter().all(|&shard| shard == shards[0] && shard < 2),
                "ch keeps {path} on one shard: {shards:?}"
            );
        }
        fixture.stop();
    }

    #[test]
    fn load_reports_carry_each_shards_p99_latency_over_the_interval() {
        let fixture = start_registered(PolicyKind::Wrr);
        let addr = fixture.node.local_addr();
        let mut ctl = fixture.ctl();
        // wrr spreads the requests over both shards; a report covers the requests since the one before.
        let p99s = wait_for("every shard reports a p99", || {
            for _ in 0..4 {
                let (answer, _) = get(addr, "/a.txt");
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            }
            let node = ctl.get_node(&addr.to_string()).ok()?;
            let p99s: Option<Vec<u64>> = node
                .shards
                .iter()
                .map(|shard| shard.latency_p99_us)
                .collect();
            p99s.filter(|p99s| p99s.len() == 2)
        });
        for p99_us in p99s {
            assert!(
                (1..=10_000_000).contains(&p99_us),
                "a loopback GET of a cached file is answered within the histogram's bounds: {p99_us} µs"
            );
        }
        fixture.stop();
    }

    #[test]
    fn set_container_shares_reach_every_shard() {
        let fixture = start_registered(PolicyKind::Lard);
        let mut ctl = fixture.ctl();
        ctl.set_container(pb::SetContainerRequest {
            container: Some(pb::Container {
                name: "default".to_string(),
                shares: 9,
                limits: None,
            }),
            create: false,
        })
        .expect("SetContainer");
        let listed = ctl.list_containers().expect("ListContainers");
        assert!(listed.containers.iter().any(|status| status
            .container
            .as_ref()
            .is_some_and(|container| container.name == "default" && container.shares == 9)));
        wait_for("both shards run default with 9 shares", || {
            (fixture.node.container_shares("default") == [9, 9]).then_some(())
        });
        fixture.stop();
    }

    #[test]
    fn set_container_cpu_cap_and_send_rate_reach_every_shard() {
        let fixture = start_registered(PolicyKind::Lard);
        let mut ctl = fixture.ctl();
        let limits = pb::ContainerLimits {
            connections_max: 0,
            queued_work_max: 0,
            cpu_percent_max: 40,
            send_rate_bytes_per_second: 1_000_000,
        };
        ctl.set_container(pb::SetContainerRequest {
            container: Some(pb::Container {
                name: "default".to_string(),
                shares: 100,
                limits: Some(limits),
            }),
            create: false,
        })
        .expect("SetContainer");
        let configured_tasks_max = 65_536;
        let wanted = SchedulerLimits {
            tasks_max: configured_tasks_max,
            queued_max: configured_tasks_max,
            cpu_percent_max: 40,
            send_rate_bytes_per_second: 1_000_000,
        };
        wait_for(
            "both shards run default with the cap and the send rate",
            || (fixture.node.container_limits("default") == [wanted, wanted]).then_some(()),
        );
        fixture.stop();
    }

    #[test]
    fn fail_static_keeps_serving_and_registers_again_when_the_control_plane_returns() {
        let plane = ControlPlane::spawn(ControlConfig::new(loopback_port_0())).expect("plane");
        let control_addr = plane.local_addr();
        let fixture = start(2, PolicyKind::Lard, ControlMode::Join(control_addr));
        let http = fixture.node.local_addr().to_string();
        let mut ctl = CtlClient::connect(&control_addr.to_string(), None).expect("ctl");
        wait_for("ListNodes shows the node", || {
            listed(&mut ctl, &http).then_some(())
        });
        drop(ctl);
        plane.shutdown().expect("plane stops");
        wait_for("the agent noticed", || {
            (!fixture.link.agent_stats().connected).then_some(())
        });
        let (answer, _) = get(fixture.node.local_addr(), "/b.txt");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "serves without a control plane: {answer}"
        );

        let plane = ControlPlane::spawn(ControlConfig::new(control_addr)).expect("plane returns");
        let mut ctl = CtlClient::connect(&control_addr.to_string(), None).expect("ctl");
        wait_for("the node registered again", || {
            listed(&mut ctl, &http).then_some(())
        });
        assert!(fixture.link.agent_stats().registrations >= 2);
        fixture.stop();
        plane.shutdown().expect("plane stops");
    }
}
