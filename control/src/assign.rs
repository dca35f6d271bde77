//! The cluster dispatcher of distributed mode (Aron et al., USENIX '00): one
//! `larder_lard` policy whose members are the cluster's nodes, answering
//! `NodeService.Assign` (which node serves each target of a batch).
//!
//! # What it owns
//! - The cluster policy, built from the cluster's [`PolicyConfig`] and rebuilt when
//!   SetPolicy changes it. A rebuild keeps what the policy's public interface lets
//!   it keep: members, weights, drain flags and loads (re-added from the state); a
//!   LARD target table starts empty (targets are placed again at their next Assign).
//! - The map between [`NodeId`]s and the policy's [`ServerId`]s: a node keeps its
//!   server id for the life of the control plane (nodes never leave the registry),
//!   so a node that comes back finds the targets LARD had not yet moved.
//! - A seeded RNG (SplitMix64, seed = the state's epoch, so a test that fixes the
//!   epoch gets the same assignments every run) for the policy's tie-breaks.
//! - The table of assigned targets behind ListTargets: name, last answer, count.
//!
//! # Membership rules (applied by [`Assigner::sync`] whenever the steering version moved)
//! | node in the registry | in the policy |
//! |---|---|
//! | up, not drained | member with the node's weight |
//! | up, drained | member, draining: gets no new targets, its targets move at their next Assign |
//! | down | removed: its targets move at their next Assign |
//!
//! A node's load is the sum over its shards of active connections + queued work
//! (latest report), fed through `Policy::set_external_load` on every report.
//! The control plane sees no requests, so this is the policy's only load.
//!
//! # Cost
//! One Assign call of b targets costs O(b) policy decisions (LARD: one table lookup
//! each while the target's node is not overloaded) plus O(b) table updates, under
//! the state's one lock; a sync after a membership change is O(nodes).
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`ASSIGN_TARGETS_MAX`] | 1024 targets a call | bounds the time the state lock is held (~1024 decisions) and the answer's size (≤ 1024 × (1 KiB + 3 ids)) |
//! | [`ASSIGNED_NODES_MAX`] | 3 ids a target | lard's decision: the choice + `FALLBACKS_MAX` alternatives (LARD/R; 1 id otherwise) |
//! | [`ASSIGNED_TARGETS_MAX`] | 65 536 targets | ListTargets' table: two generations of 32 768; a target not assigned for a whole generation is forgotten (≤ ~75 MB at 1 KiB names, ~10 MB at 64 B ones) |
//! | [`ASSIGN_TTL_DEFAULT`] | 1000 ms | how long nodes cache an answer: a moved target reaches every node within one TTL |
//! | target bytes | 1..=[`TARGET_BYTES_MAX`] (1024) | as everywhere in the control plane |

use std::collections::HashMap;
use std::time::{Duration, Instant};

use larder_lard::{Decision, Policy, PolicyConfig, PolicyKind, ServerId, TargetId, FALLBACKS_MAX};

use crate::state::{NodeId, ShardLoad, StateError, TARGET_BYTES_MAX};

/// Most targets in one Assign call.
pub const ASSIGN_TARGETS_MAX: usize = 1024;
/// Most node ids in one target's answer: the choice and, under LARD/R, the
/// alternatives lard's decision carries (`FALLBACKS_MAX`).
pub const ASSIGNED_NODES_MAX: usize = 1 + FALLBACKS_MAX;
/// Most targets the ListTargets table remembers (two generations of half this).
pub const ASSIGNED_TARGETS_MAX: usize = 1 << 16;
/// Default time a node may use an answer.
pub const ASSIGN_TTL_DEFAULT: Duration = Duration::from_millis(1000);

/// The answer for one target: node ids, first = the one to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub target: String,
    /// 1 node, or under LARD/R 1..=[`ASSIGNED_NODES_MAX`]: the chosen node, then
    /// the other members of the target's server set (while the set has one member,
    /// the runners-up of lard's least-loaded scan). Distinct, all up and not
    /// drained when answered.
    pub node_ids: Vec<NodeId>,
}

/// A target the dispatcher has assigned, as ListTargets shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignedView {
    pub target: String,
    /// The last answer, restricted to nodes that are still live members.
    pub node_ids: Vec<NodeId>,
    /// Assign answers given for this target while it was remembered.
    pub assignments: u64,
}

/// Why an Assign call was rejected. A rejected call assigned nothing.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AssignError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no node is up and undrained: there is nobody to assign targets to")]
    NoLiveNode,
}

/// One registry node as [`Assigner::sync`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct MemberSnapshot<'a> {
    pub node_id: &'a NodeId,
    pub weight: u32,
    pub up: bool,
    pub drained: bool,
    /// See [`node_load`].
    pub load: u32,
}

/// A node's load for the cluster policy: Σ over its shards' latest reports of
/// active connections + queued work, saturating at `u32::MAX`.
pub fn node_load(shards: &[Option<ShardLoad>]) -> u32 {
    let total: u64 = shards
        .iter()
        .flatten()
        .map(|shard| shard.active_connections.saturating_add(shard.queued_work))
        .fold(0, u64::saturating_add);
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// SplitMix64 (Steele, Lea, Flood, OOPSLA '14): a seeded 64-bit generator, enough
/// for tie-breaks and free of any global state.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// What the policy holds for one server id: `None` = not a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InPolicy {
    weight: u32,
    drained: bool,
}

#[derive(Clone, Debug)]
struct AssignedTarget {
    name: Box<str>,
    servers: [Option<ServerId>; ASSIGNED_NODES_MAX],
    assignments: u64,
}

/// The bounded table of assigned targets: two generations, so a target assigned
/// at least once per generation (32 768 distinct new targets) is never forgotten.
#[derive(Debug, Default)]
struct AssignedTable {
    current: HashMap<TargetId, AssignedTarget>,
    previous: HashMap<TargetId, AssignedTarget>,
}

impl AssignedTable {
    const GENERATION_MAX: usize = ASSIGNED_TARGETS_MAX / 2;

    fn record(
        &mut self,
        id: TargetId,
        name: &str,
        servers: [Option<ServerId>; ASSIGNED_NODES_MAX],
    ) {
        if let Some(entry) = self.current.get_mut(&id) {
            entry.servers = servers;
            entry.assignments += 1;
            return;
        }
        if self.current.len() >= Self::GENERATION_MAX {
            self.previous = std::mem::take(&mut self.current);
        }
        let (name, assignments) = match self.previous.remove(&id) {
            Some(old) => (old.name, old.assignments),
            None => (name.into(), 0),
        };
        self.current.insert(
            id,
            AssignedTarget {
                name,
                servers,
                assignments: assignments + 1,
            },
        );
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// The answer for one decision: the chosen server, then under LARD/R (`set`) the
/// decision's fallbacks (the set's other members, or the runners-up of the scan
/// that placed a new target). Other policies answer one node: a LARD answer would
/// otherwise carry runners-up only on the calls that ran a scan.
fn servers_of(decision: &Decision, set: bool) -> [Option<ServerId>; ASSIGNED_NODES_MAX] {
    let mut servers = [None; ASSIGNED_NODES_MAX];
    servers[0] = Some(decision.server);
    if set {
        servers[1..].copy_from_slice(&decision.fallbacks);
    }
    servers
}

/// The cluster policy and everything around it. See the module docs.
pub struct Assigner {
    /// The configuration `policy` was built from.
    config: PolicyConfig,
    policy: Box<dyn Policy>,
    /// Server id `i` is node `nodes[i]`.
    nodes: Vec<NodeId>,
    servers: HashMap<NodeId, ServerId>,
    /// Indexed by server id.
    in_policy: Vec<Option<InPolicy>>,
    /// Steering version of the last sync (0 = never synced; versions start at 1).
    synced_version: u64,
    random: SplitMix64,
    /// Time 0 of the policy's `now_ms`.
    origin: Option<Instant>,
    assigned: AssignedTable,
}

impl std::fmt::Debug for Assigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assigner")
            .field("policy", &self.policy.name())
            .field("nodes", &self.nodes.len())
            .field("synced_version", &self.synced_version)
            .field("assigned_targets", &self.assigned.len())
            .finish_non_exhaustive()
    }
}

fn build(config: &PolicyConfig) -> Box<dyn Policy> {
    larder_lard::build(config).expect("the state validates every policy before it is stored")
}

impl Assigner {
    /// An assigner with no members. `config` must be valid (the state validated it).
    pub fn new(config: &PolicyConfig, seed: u64) -> Assigner {
        Assigner {
            config: config.clone(),
            policy: build(config),
            nodes: Vec::new(),
            servers: HashMap::new(),
            in_policy: Vec::new(),
            synced_version: 0,
            random: SplitMix64(seed),
            origin: None,
            assigned: AssignedTable::default(),
        }
    }

    fn server_id(&mut self, node_id: &NodeId) -> ServerId {
        if let Some(server) = self.servers.get(node_id) {
            return *server;
        }
        let server = ServerId(u32::try_from(self.nodes.len()).expect("at most NODES_MAX nodes"));
        self.nodes.push(node_id.clone());
        self.servers.insert(node_id.clone(), server);
        self.in_policy.push(None);
        server
    }

    /// Brings the policy in line with the registry (see the module docs). Does
    /// nothing when `version` is the one last synced.
    pub fn sync<'a>(
        &mut self,
        version: u64,
        config: &PolicyConfig,
        members: impl Iterator<Item = MemberSnapshot<'a>>,
    ) {
        if version == self.synced_version {
            return;
        }
        if *config != self.config {
            self.config = config.clone();
            self.policy = build(config);
            self.in_policy.iter_mut().for_each(|slot| *slot = None);
        }
        for member in members {
            let server = self.server_id(member.node_id);
            let want = member.up.then_some(InPolicy {
                weight: member.weight,
                drained: member.drained,
            });
            let have = self.in_policy[server.0 as usize];
            if let Err(error) = self.apply(server, have, want, member.load) {
                // Only a hash ring out of points refuses a valid member: the node is left out.
                tracing::warn!(node = %member.node_id, %error, "cluster policy refused a membership change");
            }
        }
        self.synced_version = version;
    }

    fn apply(
        &mut self,
        server: ServerId,
        have: Option<InPolicy>,
        want: Option<InPolicy>,
        load: u32,
    ) -> Result<(), larder_lard::MembershipError> {
        let policy = &mut self.policy;
        let slot = &mut self.in_policy[server.0 as usize];
        match (have, want) {
            (None, None) => {}
            (Some(_), None) => {
                policy.remove_server(server)?;
                *slot = None;
            }
            (None, Some(want)) => {
                policy.add_server(server, want.weight)?;
                // A member now: these two cannot fail.
                policy.set_draining(server, want.drained)?;
                policy.set_external_load(server, load)?;
                *slot = Some(want);
            }
            (Some(have), Some(want)) => {
                if have.weight != want.weight {
                    policy.set_weight(server, want.weight)?;
                }
                if have.drained != want.drained {
                    policy.set_draining(server, want.drained)?;
                }
                policy.set_external_load(server, load)?;
                *slot = Some(want);
            }
        }
        Ok(())
    }

    /// A node's new load; ignored while the node is not a member.
    pub fn set_load(&mut self, node_id: &NodeId, load: u32) {
        if let Some(server) = self.servers.get(node_id) {
            if self.in_policy[server.0 as usize].is_some() {
                // A member by the table above, so this cannot fail.
                let _ = self.policy.set_external_load(*server, load);
            }
        }
    }

    /// Checks a batch without assigning anything.
    pub fn validate(targets: &[String]) -> Result<(), StateError> {
        if targets.len() > ASSIGN_TARGETS_MAX {
            return Err(StateError::Invalid {
                field: "targets".to_string(),
                reason: format!("{} targets, at most {ASSIGN_TARGETS_MAX}", targets.len()),
            });
        }
        for (index, target) in targets.iter().enumerate() {
            let reason = if target.is_empty() {
                "must not be empty".to_string()
            } else if target.len() > TARGET_BYTES_MAX {
                format!("{} bytes, at most {TARGET_BYTES_MAX}", target.len())
            } else {
                continue;
            };
            return Err(StateError::Invalid {
                field: format!("targets[{index}]"),
                reason,
            });
        }
        Ok(())
    }

    /// Assigns every target of a valid batch (call [`Assigner::validate`] and
    /// [`Assigner::sync`] first), in order, or none when no member is live.
    pub fn assign(
        &mut self,
        now: Instant,
        targets: Vec<String>,
    ) -> Result<Vec<Assignment>, AssignError> {
        debug_assert!(Self::validate(&targets).is_ok(), "batch not validated");
        let live = self
            .in_policy
            .iter()
            .flatten()
            .any(|member| !member.drained);
        if !live {
            return Err(AssignError::NoLiveNode);
        }
        let origin = *self.origin.get_or_insert(now);
        let now_ms =
            u64::try_from(now.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX);
        let set = self.config.kind == PolicyKind::LardR;
        let mut assignments = Vec::with_capacity(targets.len());
        for target in targets {
            let id = TargetId::from_path(&target);
            let decision = self
                .policy
                .select(id, now_ms, self.random.next())
                .map_err(|_| AssignError::NoLiveNode)?;
            let servers = servers_of(&decision, set);
            self.assigned.record(id, &target, servers);
            let node_ids = servers
                .into_iter()
                .flatten()
                .map(|server| self.nodes[server.0 as usize].clone())
                .collect();
            assignments.push(Assignment { target, node_ids });
        }
        Ok(assignments)
    }

    /// The `limit` most assigned targets (most first, then by name), each with its
    /// last answer restricted to current live members.
    pub fn targets(&self, limit: usize) -> Vec<AssignedView> {
        let mut entries: Vec<&AssignedTarget> = self
            .assigned
            .current
            .values()
            .chain(self.assigned.previous.values())
            .collect();
        entries.sort_by(|a, b| {
            b.assignments
                .cmp(&a.assignments)
                .then_with(|| a.name.cmp(&b.name))
        });
        entries
            .into_iter()
            .take(limit)
            .map(|entry| AssignedView {
                target: entry.name.to_string(),
                node_ids: entry
                    .servers
                    .iter()
                    .flatten()
                    .filter(|server| {
                        self.in_policy[server.0 as usize].is_some_and(|member| !member.drained)
                    })
                    .map(|server| self.nodes[server.0 as usize].clone())
                    .collect(),
                assignments: entry.assignments,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|name| NodeId(name.to_string())).collect()
    }

    fn snapshot<'a>(node_id: &'a NodeId, up: bool, drained: bool) -> MemberSnapshot<'a> {
        MemberSnapshot {
            node_id,
            weight: 1,
            up,
            drained,
            load: 0,
        }
    }

    fn paths(count: usize) -> Vec<String> {
        (0..count).map(|index| format!("/file-{index}")).collect()
    }

    #[test]
    fn assignments_follow_membership_and_keep_locality() {
        let nodes = ids(&["a", "b"]);
        let config = PolicyConfig::new(PolicyKind::Lard);
        let mut assigner = Assigner::new(&config, 42);
        assigner.sync(1, &config, nodes.iter().map(|id| snapshot(id, true, false)));
        let first = assigner.assign(Instant::now(), paths(64)).unwrap();
        let on_a = first.iter().filter(|a| a.node_ids[0] == nodes[0]).count();
        assert!(
            (1..64).contains(&on_a),
            "seed 42: LARD ties spread targets over both nodes, a got {on_a} of 64"
        );
        let again = assigner.assign(Instant::now(), paths(64)).unwrap();
        assert_eq!(again, first, "seed 42: every target stays on its node");

        // b drains: none of its targets stay there.
        assigner.sync(
            2,
            &config,
            [
                snapshot(&nodes[0], true, false),
                snapshot(&nodes[1], true, true),
            ]
            .into_iter(),
        );
        let drained = assigner.assign(Instant::now(), paths(64)).unwrap();
        assert!(drained.iter().all(|a| a.node_ids == [nodes[0].clone()]));

        // Both down: nothing can be assigned.
        assigner.sync(
            3,
            &config,
            nodes.iter().map(|id| snapshot(id, false, false)),
        );
        assert_eq!(
            assigner.assign(Instant::now(), paths(1)),
            Err(AssignError::NoLiveNode)
        );
    }

    #[test]
    fn same_seed_same_answers_and_policy_change_rebuilds() {
        let nodes = ids(&["a", "b", "c"]);
        let lard = PolicyConfig::new(PolicyKind::Lard);
        let run = |seed| {
            let mut assigner = Assigner::new(&lard, seed);
            assigner.sync(1, &lard, nodes.iter().map(|id| snapshot(id, true, false)));
            assigner.assign(Instant::now(), paths(100)).unwrap()
        };
        assert_eq!(run(7), run(7), "seed 7");

        let mut assigner = Assigner::new(&lard, 7);
        assigner.sync(1, &lard, nodes.iter().map(|id| snapshot(id, true, false)));
        let wrr = PolicyConfig::new(PolicyKind::Wrr);
        assigner.sync(2, &wrr, nodes.iter().map(|id| snapshot(id, true, false)));
        // Smooth WRR over three equal members: each gets every third request.
        let answers = assigner.assign(Instant::now(), paths(6)).unwrap();
        let firsts: Vec<&NodeId> = answers.iter().map(|a| &a.node_ids[0]).collect();
        assert_eq!(firsts[0..3], firsts[3..6], "WRR cycles through the members");
        assert_eq!(assigner.policy.name(), "wrr");
        assert_eq!(assigner.policy.members().len(), 3, "members kept");
    }

    #[test]
    fn invalid_batches_name_the_field() {
        let field = |targets: Vec<String>| match Assigner::validate(&targets) {
            Err(StateError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert_eq!(field(paths(ASSIGN_TARGETS_MAX + 1)), "targets");
        assert_eq!(field(vec!["/a".into(), String::new()]), "targets[1]");
        assert_eq!(field(vec!["/".repeat(TARGET_BYTES_MAX + 1)]), "targets[0]");
        assert_eq!(Assigner::validate(&paths(ASSIGN_TARGETS_MAX)), Ok(()));
    }

    #[test]
    fn assigned_table_stays_bounded_and_keeps_hot_targets() {
        let nodes = ids(&["a"]);
        let config = PolicyConfig::new(PolicyKind::ConsistentHash);
        let mut assigner = Assigner::new(&config, 1);
        assigner.sync(1, &config, nodes.iter().map(|id| snapshot(id, true, false)));
        let now = Instant::now();
        let generation = AssignedTable::GENERATION_MAX;
        for round in 0..3 * generation / ASSIGN_TARGETS_MAX {
            let batch: Vec<String> = (0..ASSIGN_TARGETS_MAX - 1)
                .map(|index| format!("/cold-{round}-{index}"))
                .chain(std::iter::once("/hot".to_string()))
                .collect();
            assigner.assign(now, batch).unwrap();
            assert!(assigner.assigned.len() <= ASSIGNED_TARGETS_MAX);
        }
        let top = assigner.targets(1);
        assert_eq!(top[0].target, "/hot");
        assert_eq!(
            top[0].assignments,
            (3 * generation / ASSIGN_TARGETS_MAX) as u64
        );
        assert_eq!(top[0].node_ids, nodes);
    }

    /// One registry state of the property test: per node (up, drained, load).
    type Registry = Vec<(bool, bool, u32)>;

    fn registry() -> impl proptest::strategy::Strategy<Value = Registry> {
        use proptest::prelude::*;
        proptest::collection::vec((any::<bool>(), any::<bool>(), 0u32..200), 4)
    }

    proptest::proptest! {
        /// Over any sequence of membership changes, loads and batches, under every
        /// policy: each answer names 1..=3 distinct nodes that are up and undrained
        /// (1 unless LARD/R), every target of a batch is answered in order, and under
        /// LARD a target stays on its node while that node stays live and lightly loaded.
        #[test]
        fn answers_name_live_nodes_and_lard_keeps_locality(
            kind in proptest::sample::select(PolicyKind::ALL.to_vec()),
            seed in proptest::prelude::any::<u64>(),
            steps in proptest::collection::vec((registry(), 0usize..40), 1..12),
        ) {
            let nodes = ids(&["n0", "n1", "n2", "n3"]);
            let config = PolicyConfig::new(kind);
            let mut assigner = Assigner::new(&config, seed);
            let mut owners: HashMap<String, NodeId> = HashMap::new();
            let now = Instant::now();
            for (version, (registry, batch)) in steps.into_iter().enumerate() {
                let members = nodes.iter().zip(&registry).map(|(node_id, &(up, drained, load))| {
                    MemberSnapshot { node_id, weight: 1, up, drained, load }
                });
                assigner.sync(version as u64 + 1, &config, members);
                let live: Vec<&NodeId> = nodes
                    .iter()
                    .zip(&registry)
                    .filter(|(_, &(up, drained, _))| up && !drained)
                    .map(|(node_id, _)| node_id)
                    .collect();
                let targets: Vec<String> = (0..batch).map(|index| format!("/t{}", index % 16)).collect();
                let outcome = assigner.assign(now, targets.clone());
                if live.is_empty() {
                    proptest::prop_assert_eq!(outcome, Err(AssignError::NoLiveNode), "seed {}", seed);
                    continue;
                }
                let answers = outcome.expect("a live node exists");
                let answered: Vec<&String> = answers.iter().map(|a| &a.target).collect();
                proptest::prop_assert_eq!(answered, targets.iter().collect::<Vec<_>>());
                for answer in &answers {
                    let ids = &answer.node_ids;
                    let most = if kind == PolicyKind::LardR { ASSIGNED_NODES_MAX } else { 1 };
                    proptest::prop_assert!((1..=most).contains(&ids.len()), "seed {}: {:?}", seed, answer);
                    for (index, id) in ids.iter().enumerate() {
                        proptest::prop_assert!(live.contains(&id), "seed {}: {:?} not live", seed, id);
                        proptest::prop_assert!(!ids[..index].contains(id), "seed {}: duplicate in {:?}", seed, ids);
                    }
                    if kind == PolicyKind::Lard {
                        let owner = &ids[0];
                        let light = |id: &NodeId| {
                            let index = nodes.iter().position(|node| node == id).expect("known node");
                            registry[index].2 <= config.lard.t_high
                        };
                        if let Some(previous) = owners.get(&answer.target) {
                            if live.contains(&previous) && light(previous) {
                                proptest::prop_assert_eq!(owner, previous, "seed {}: {} moved", seed, &answer.target);
                            }
                        }
                        owners.insert(answer.target.clone(), owner.clone());
                    }
                }
            }
        }
    }

    #[test]
    fn node_load_sums_connections_and_queued_work() {
        let shard = |connections, queued| {
            Some(ShardLoad {
                active_connections: connections,
                queued_work: queued,
                ..ShardLoad::default()
            })
        };
        assert_eq!(node_load(&[shard(3, 4), None, shard(10, 0)]), 17);
        assert_eq!(node_load(&[shard(u64::MAX, 1)]), u32::MAX);
    }
}
