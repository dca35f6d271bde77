//! The link between `larder dispatch` and the control plane (`--control ADDR`): it reads the cluster's nodes,
//! their load and the cluster policy from `larder.v1.Control` and applies them to the running dispatcher through
//! [`DispatchHandle`]. The dispatcher crate knows nothing of gRPC; this module is the only place where the two
//! meet, on its own thread (`larder-dispatch-link`), with [`CtlClient`]'s private current-thread runtime.
//!
//! # One poll (every `interval_ms`, default 100 ms)
//! 1. `GetClusterLoad` (every node: HTTP address, up or down, drained, weight, summed shard load) and
//!    `GetPolicy` (the cluster policy and its parameters). Two unary calls: the dispatcher is not a node, so it
//!    cannot use `WatchSteering`, and a poll needs no stream state to rebuild after a failure.
//! 2. [`plan`] compares that view with the dispatcher's back-ends and policy and lists the changes
//!    ([`Action`]); nothing is changed for what already matches.
//! 3. Each change is applied with one handle call (each is all-or-nothing in the dispatcher). A refused change
//!    is logged once and tried again at the next poll.
//!
//! # What is applied
//! - Back-ends, matched by HTTP address. Without `--backend` ([`BackendSource::Discover`]): a node that is up
//!   and not drained becomes a back-end when it first appears (weight from the control plane); a back-end whose
//!   node has been missing from the listing for `forget_after_ms` (default 30 s: a restarted control plane lists
//!   nodes again as they re-register, within their 5 s reconnect backoff) is removed. With `--backend`
//!   ([`BackendSource::Explicit`]): only those back-ends are steered; other nodes are ignored and nothing is
//!   added or removed.
//! - Drained node → the back-end is drained (in-flight requests finish, nothing new); undrained → takes requests.
//! - Down node (silent for 5 report intervals) → the back-end's control-down flag (the dispatcher's own health
//!   checks cannot undo it); up again → cleared, with slow start.
//! - Node weight → back-end weight.
//! - Node load → external load: the node's requests in progress (`queued_work` summed over its shards) minus
//!   the requests this dispatcher has in flight there, at least 0. The dispatcher's own requests are already in
//!   its count, so adding them again would double them; `active_connections` is left out because this
//!   dispatcher's pooled keep-alive connections (up to 64 per shard per back-end) are open connections on the
//!   node without being load, and would lift every node above LARD's thresholds (T_high = 65).
//! - The cluster policy → [`DispatchHandle::set_policy`] when it differs from the one in force (so with
//!   `--control`, the control plane's policy replaces `--policy` at the first poll).
//!
//! # Failure (fail static)
//! When a call fails (control plane stopped, unreachable, refusing the token), the dispatcher keeps its last
//! settings and keeps serving; the link drops its connection, waits `backoff` (100 ms doubling to 5 s, reset by
//! a successful poll) and connects again. It logs once per change of state (connected / unreachable), not once
//! per attempt.
//!
//! # Shutdown ([`DispatchLink::shutdown`])
//! The stop channel is dropped: the thread applies nothing after it sees that, and ends at its next wait. The
//! caller waits at most [`LINK_JOIN_TIMEOUT`]; a call in progress (bounded by `CtlClient`'s 3 s connect and 10 s
//! call timeouts) is left to end on its own.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | poll interval | 100 ms default (`--control-interval-ms`, 10..=60,000) | matches the nodes' load report interval |
//! | reconnect backoff | 100 ms doubling to 5 s | fail static without hammering a lost control plane |
//! | forget a missing node | 30 s | longer than a node's reconnect backoff after a control-plane restart |
//! | back-ends | 256 (the dispatcher's `BACKENDS_MAX`) | an add beyond it is refused and logged |

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_control::proto::v1 as pb;
use larder_control::{CtlClient, CtlError};
use larder_dispatch::{BackendId, BackendStatus, DispatchHandle};
use larder_lard::PolicyConfig;

/// Default time between two polls of the control plane.
pub const INTERVAL_MS_DEFAULT: u64 = 100;
/// Accepted poll intervals.
pub const INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 10..=60_000;
/// First wait after a failed poll.
pub const BACKOFF_INITIAL_MS: u64 = 100;
/// Longest wait between two attempts.
pub const BACKOFF_MAX_MS: u64 = 5_000;
/// A discovered back-end whose node is missing from the listing this long is removed.
pub const FORGET_AFTER_MS_DEFAULT: u64 = 30_000;
/// Longest wait for the link's thread at shutdown.
pub const LINK_JOIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the dispatcher's back-ends come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendSource {
    /// `--backend` flags: only those are steered, nothing is added or removed.
    Explicit,
    /// No `--backend`: the nodes of the control plane are the back-ends.
    Discover,
}

/// How to run a link.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// The control plane's gRPC address, "host:port".
    pub control: String,
    /// Bearer token, sent with every call.
    pub token: Option<String>,
    pub interval_ms: u64,
    pub source: BackendSource,
    pub forget_after_ms: u64,
}

impl LinkConfig {
    pub fn new(control: String, source: BackendSource) -> LinkConfig {
        LinkConfig {
            control,
            token: None,
            interval_ms: INTERVAL_MS_DEFAULT,
            source,
            forget_after_ms: FORGET_AFTER_MS_DEFAULT,
        }
    }
}

/// One node as the link sees it (the wire's `NodeSummary` in the link's terms).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub node_id: String,
    /// Its HTTP address; `None` when it does not resolve.
    pub http_addr: Option<SocketAddr>,
    pub up: bool,
    pub drained: bool,
    pub weight: u32,
    /// Requests in progress on the node (`queued_work` summed over its shards).
    pub requests_active: u64,
}

/// What one poll read.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    pub policy: PolicyConfig,
}

/// One change to the dispatcher.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Add {
        addr: SocketAddr,
        weight: u32,
        external_load: u32,
    },
    Remove(BackendId),
    SetDrained(BackendId, bool),
    SetControlDown(BackendId, bool),
    SetWeight(BackendId, u32),
    SetExternalLoad(BackendId, u32),
    SetPolicy(PolicyConfig),
}

/// The external load of a back-end: the node's requests in progress minus this dispatcher's own (module docs).
pub fn external_load(requests_active: u64, own_in_flight: u32) -> u32 {
    let others = requests_active.saturating_sub(u64::from(own_in_flight));
    u32::try_from(others).unwrap_or(u32::MAX)
}

/// Memory of [`plan`] between polls: since when each discovered back-end's node has been missing.
#[derive(Debug, Default)]
pub struct PlanMemory {
    missing_since_ms: HashMap<BackendId, u64>,
}

/// The changes that make the dispatcher (`backends`, `policy`) match `view` (module docs, "What is applied").
pub fn plan(
    view: &ClusterView,
    backends: &[BackendStatus],
    policy: &PolicyConfig,
    source: BackendSource,
    forget_after_ms: u64,
    now_ms: u64,
    memory: &mut PlanMemory,
) -> Vec<Action> {
    let mut actions = Vec::new();
    if view.policy != *policy {
        actions.push(Action::SetPolicy(view.policy.clone()));
    }
    let mut listed: HashSet<SocketAddr> = HashSet::new();
    for node in &view.nodes {
        let Some(addr) = node.http_addr else { continue };
        if !listed.insert(addr) {
            continue; // Two nodes with one address: the first one steers it.
        }
        let weight = node.weight.max(1);
        match backends.iter().find(|backend| backend.addr == addr) {
            None if source == BackendSource::Discover && node.up && !node.drained => {
                actions.push(Action::Add {
                    addr,
                    weight,
                    external_load: external_load(node.requests_active, 0),
                });
            }
            None => {}
            Some(backend) => {
                let id = backend.backend;
                if backend.drained != node.drained {
                    actions.push(Action::SetDrained(id, node.drained));
                }
                if backend.control_down == node.up {
                    actions.push(Action::SetControlDown(id, !node.up));
                }
                if backend.weight != weight {
                    actions.push(Action::SetWeight(id, weight));
                }
                let load = external_load(node.requests_active, backend.in_flight);
                if backend.external_load != load {
                    actions.push(Action::SetExternalLoad(id, load));
                }
            }
        }
    }
    let missing: Vec<BackendId> = backends
        .iter()
        .filter(|backend| !listed.contains(&backend.addr))
        .map(|backend| backend.backend)
        .collect();
    memory.missing_since_ms.retain(|id, _| missing.contains(id));
    if source == BackendSource::Discover {
        for id in missing {
            let since = *memory.missing_since_ms.entry(id).or_insert(now_ms);
            if now_ms.saturating_sub(since) >= forget_after_ms {
                actions.push(Action::Remove(id));
                memory.missing_since_ms.remove(&id);
            }
        }
    }
    actions
}

/// Applies one change; the error text when the dispatcher refused it.
fn apply(handle: &DispatchHandle, action: &Action) -> Result<(), String> {
    let outcome = match action {
        Action::Add {
            addr,
            weight,
            external_load,
        } => handle.add_backend(*addr, *weight).and_then(|backend| {
            tracing::info!(%backend, %addr, "back-end discovered from the control plane");
            handle.set_external_load(backend, *external_load)
        }),
        Action::Remove(backend) => handle.remove_backend(*backend),
        Action::SetDrained(backend, drained) => {
            tracing::info!(%backend, drained, "drain flag from the control plane");
            handle.set_draining(*backend, *drained)
        }
        Action::SetControlDown(backend, down) => {
            tracing::info!(%backend, down, "node state from the control plane");
            handle.set_control_down(*backend, *down).map(|_| ())
        }
        Action::SetWeight(backend, weight) => handle.set_weight(*backend, *weight),
        Action::SetExternalLoad(backend, load) => handle.set_external_load(*backend, *load),
        Action::SetPolicy(config) => handle.set_policy(config.clone()).map(|_| ()),
    };
    outcome.map_err(|error| format!("{action:?}: {error}"))
}

/// Resolves a node's "host:port" (an IP literal needs no lookup).
fn resolve(http_address: &str) -> Option<SocketAddr> {
    http_address.parse().ok().or_else(|| {
        http_address
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
    })
}

/// The wire's answers in the link's terms.
fn view_from(load: pb::ClusterLoad, policy: pb::GetPolicyResponse) -> ClusterView {
    let nodes = load
        .nodes
        .into_iter()
        .map(|node| {
            let info = node.info.unwrap_or_default();
            NodeView {
                http_addr: resolve(&info.http_address),
                node_id: info.node_id,
                up: node.state == pb::NodeState::Up as i32,
                drained: node.drained,
                weight: node.weight,
                requests_active: node.total.map_or(0, |total| total.queued_work),
            }
        })
        .collect();
    ClusterView {
        nodes,
        policy: larder_control::convert::policy_config(policy.policy),
    }
}

/// Counters of a running link.
#[derive(Debug, Default)]
struct Counters {
    connected: AtomicBool,
    polls: AtomicU64,
    polls_failed: AtomicU64,
    actions_applied: AtomicU64,
    actions_refused: AtomicU64,
}

/// A snapshot of a link's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub connected: bool,
    pub polls: u64,
    pub polls_failed: u64,
    pub actions_applied: u64,
    pub actions_refused: u64,
}

/// A running link; [`DispatchLink::shutdown`] stops it.
pub struct DispatchLink {
    counters: Arc<Counters>,
    stop: Option<Sender<()>>,
    done: Receiver<()>,
}

impl DispatchLink {
    /// Starts the link's thread; it polls at once.
    pub fn start(config: LinkConfig, handle: DispatchHandle) -> std::io::Result<DispatchLink> {
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = std::sync::mpsc::channel();
        let (done_sender, done) = std::sync::mpsc::channel();
        let thread_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("larder-dispatch-link".to_string())
            .spawn(move || {
                run(config, handle, &thread_counters, stopped);
                let _ = done_sender.send(());
            })?;
        Ok(DispatchLink {
            counters,
            stop: Some(stop),
            done,
        })
    }

    pub fn stats(&self) -> LinkStats {
        let c = &self.counters;
        LinkStats {
            connected: c.connected.load(Ordering::Relaxed),
            polls: c.polls.load(Ordering::Relaxed),
            polls_failed: c.polls_failed.load(Ordering::Relaxed),
            actions_applied: c.actions_applied.load(Ordering::Relaxed),
            actions_refused: c.actions_refused.load(Ordering::Relaxed),
        }
    }

    /// Stops the link (module docs, shutdown); true when its thread ended within [`LINK_JOIN_TIMEOUT`].
    pub fn shutdown(mut self) -> bool {
        self.stop.take();
        self.done.recv_timeout(LINK_JOIN_TIMEOUT).is_ok()
    }
}

/// One poll, steps 1 (module docs); connects first when there is no connection.
fn poll(client: &mut Option<CtlClient>, config: &LinkConfig) -> Result<ClusterView, CtlError> {
    let connected = match client {
        Some(connected) => connected,
        None => client.insert(CtlClient::connect(
            &config.control,
            config.token.as_deref(),
        )?),
    };
    let load = connected.get_cluster_load()?;
    let policy = connected.get_policy()?;
    Ok(view_from(load, policy))
}

/// The link's thread: poll, plan, apply, wait; until the stop channel is dropped.
fn run(config: LinkConfig, handle: DispatchHandle, counters: &Counters, stop: Receiver<()>) {
    let origin = Instant::now();
    let mut client: Option<CtlClient> = None;
    let mut memory = PlanMemory::default();
    let mut reachable: Option<bool> = None;
    let mut backoff_ms = BACKOFF_INITIAL_MS;
    let mut refused_last_poll: HashSet<String> = HashSet::new();
    loop {
        let outcome = poll(&mut client, &config);
        if !matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
            return; // Stopped during the call: apply nothing.
        }
        let wait_ms = match outcome {
            Ok(view) => {
                counters.polls.fetch_add(1, Ordering::Relaxed);
                counters.connected.store(true, Ordering::Relaxed);
                if reachable != Some(true) {
                    tracing::info!(control = %config.control, nodes = view.nodes.len(), "control plane reached");
                }
                reachable = Some(true);
                backoff_ms = BACKOFF_INITIAL_MS;
                let now_ms = origin.elapsed().as_millis() as u64;
                let actions = plan(
                    &view,
                    &handle.backends(),
                    &handle.policy(),
                    config.source,
                    config.forget_after_ms,
                    now_ms,
                    &mut memory,
                );
                let mut refused = HashSet::new();
                for action in &actions {
                    match apply(&handle, action) {
                        Ok(()) => counters.actions_applied.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            if !refused_last_poll.contains(&error) {
                                tracing::warn!(%error, "control-plane change refused by the dispatcher");
                            }
                            refused.insert(error);
                            counters.actions_refused.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                refused_last_poll = refused;
                config.interval_ms
            }
            Err(error) => {
                counters.polls_failed.fetch_add(1, Ordering::Relaxed);
                counters.connected.store(false, Ordering::Relaxed);
                client = None;
                if reachable != Some(false) {
                    tracing::warn!(control = %config.control, %error,
                        "control plane unreachable: keeping the last settings, retrying with backoff");
                }
                reachable = Some(false);
                let wait_ms = backoff_ms;
                backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                wait_ms
            }
        };
        match stop.recv_timeout(Duration::from_millis(wait_ms)) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_lard::PolicyKind;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn node(port: u16) -> NodeView {
        NodeView {
            node_id: format!("node-{port}"),
            http_addr: Some(addr(port)),
            up: true,
            drained: false,
            weight: 1,
            requests_active: 0,
        }
    }

    fn backend(id: u32, port: u16) -> BackendStatus {
        BackendStatus {
            backend: BackendId(id),
            addr: addr(port),
            weight: 1,
            in_flight: 0,
            requests: 0,
            failures: 0,
            retries: 0,
            external_load: 0,
            drained: false,
            down: false,
            control_down: false,
        }
    }

    fn view(nodes: Vec<NodeView>) -> ClusterView {
        ClusterView {
            nodes,
            policy: PolicyConfig::new(PolicyKind::Wrr),
        }
    }

    /// `plan` against a Wrr dispatcher at time `now_ms`.
    fn plan_at(
        view: &ClusterView,
        backends: &[BackendStatus],
        source: BackendSource,
        now_ms: u64,
        memory: &mut PlanMemory,
    ) -> Vec<Action> {
        let policy = PolicyConfig::new(PolicyKind::Wrr);
        plan(view, backends, &policy, source, 1_000, now_ms, memory)
    }

    #[test]
    fn nodes_up_and_not_drained_are_discovered_and_matching_state_changes_nothing() {
        let mut drained = node(2);
        drained.drained = true;
        let mut down = node(3);
        down.up = false;
        let mut loaded = node(1);
        loaded.weight = 4;
        loaded.requests_active = 9;
        let cluster = view(vec![loaded, drained, down]);
        let mut memory = PlanMemory::default();
        let actions = plan_at(&cluster, &[], BackendSource::Discover, 0, &mut memory);
        assert_eq!(
            actions,
            vec![Action::Add {
                addr: addr(1),
                weight: 4,
                external_load: 9
            }],
            "drained and down nodes are not added"
        );
        let mut present = backend(0, 1);
        present.weight = 4;
        present.external_load = 9;
        let again = plan_at(
            &cluster,
            &[present],
            BackendSource::Discover,
            10,
            &mut memory,
        );
        assert_eq!(again, Vec::new(), "nothing to change");
    }

    #[test]
    fn explicit_backends_are_steered_and_other_nodes_ignored() {
        let mut drained = node(1);
        drained.drained = true;
        drained.up = false;
        drained.weight = 0;
        let cluster = view(vec![drained, node(7)]);
        let mut memory = PlanMemory::default();
        let backends = [backend(0, 1), backend(1, 2)];
        let actions = plan_at(&cluster, &backends, BackendSource::Explicit, 0, &mut memory);
        assert_eq!(
            actions,
            vec![
                Action::SetDrained(BackendId(0), true),
                Action::SetControlDown(BackendId(0), true),
            ],
            "weight 0 reads as 1; node 7 is not added; unlisted back-end 1 is kept"
        );
        let later = plan_at(
            &cluster,
            &backends,
            BackendSource::Explicit,
            1_000_000,
            &mut memory,
        );
        assert!(
            !later
                .iter()
                .any(|action| matches!(action, Action::Remove(_))),
            "{later:?}"
        );
    }

    #[test]
    fn undrain_up_weight_load_and_policy_changes_are_planned() {
        let mut changed = node(1);
        changed.weight = 3;
        changed.requests_active = 10;
        let mut cluster = view(vec![changed]);
        cluster.policy = PolicyConfig::new(PolicyKind::ConsistentHash);
        let mut current = backend(0, 1);
        current.drained = true;
        current.control_down = true;
        current.in_flight = 4;
        let mut memory = PlanMemory::default();
        let actions = plan_at(
            &cluster,
            &[current],
            BackendSource::Discover,
            0,
            &mut memory,
        );
        assert_eq!(
            actions,
            vec![
                Action::SetPolicy(PolicyConfig::new(PolicyKind::ConsistentHash)),
                Action::SetDrained(BackendId(0), false),
                Action::SetControlDown(BackendId(0), false),
                Action::SetWeight(BackendId(0), 3),
                Action::SetExternalLoad(BackendId(0), 6),
            ],
            "external load = 10 in progress - 4 of ours"
        );
    }

    #[test]
    fn a_discovered_backend_missing_for_the_forget_time_is_removed() {
        let backends = [backend(0, 1), backend(1, 2)];
        let mut memory = PlanMemory::default();
        let only_first = view(vec![node(1)]);
        let everyone = view(vec![node(1), node(2)]);
        for now_ms in [0, 999] {
            let actions = plan_at(
                &only_first,
                &backends,
                BackendSource::Discover,
                now_ms,
                &mut memory,
            );
            assert_eq!(actions, Vec::new(), "at {now_ms} ms");
        }
        // Listed again: the clock restarts.
        plan_at(
            &everyone,
            &backends,
            BackendSource::Discover,
            1_500,
            &mut memory,
        );
        let actions = plan_at(
            &only_first,
            &backends,
            BackendSource::Discover,
            2_000,
            &mut memory,
        );
        assert_eq!(actions, Vec::new());
        let actions = plan_at(
            &only_first,
            &backends,
            BackendSource::Discover,
            3_000,
            &mut memory,
        );
        assert_eq!(actions, vec![Action::Remove(BackendId(1))]);
    }

    #[test]
    fn external_load_is_the_nodes_requests_minus_ours_at_least_zero() {
        assert_eq!(external_load(10, 4), 6);
        assert_eq!(external_load(3, 4), 0);
        assert_eq!(external_load(u64::MAX, 0), u32::MAX);
    }

    #[test]
    fn wire_answers_become_the_view() {
        let load = pb::ClusterLoad {
            nodes: vec![pb::NodeSummary {
                info: Some(pb::NodeInfo {
                    node_id: "a".to_string(),
                    http_address: "127.0.0.1:8080".to_string(),
                    cores: 2,
                    cache_bytes_budget: 0,
                }),
                state: pb::NodeState::Down as i32,
                drained: true,
                weight: 2,
                total: Some(pb::ShardLoad {
                    active_connections: 100,
                    queued_work: 7,
                    ..pb::ShardLoad::default()
                }),
                ..pb::NodeSummary::default()
            }],
            ..pb::ClusterLoad::default()
        };
        let policy = pb::GetPolicyResponse {
            policy: Some(larder_control::convert::policy_to_pb(&PolicyConfig::new(
                PolicyKind::LardR,
            ))),
            ..pb::GetPolicyResponse::default()
        };
        let view = view_from(load, policy);
        assert_eq!(
            view.nodes,
            vec![NodeView {
                node_id: "a".to_string(),
                http_addr: Some(addr(8080)),
                up: false,
                drained: true,
                weight: 2,
                requests_active: 7,
            }]
        );
        assert_eq!(view.policy, PolicyConfig::new(PolicyKind::LardR));
    }
}
