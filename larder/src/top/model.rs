//! The pure half of `larder top`: samples of the control plane in, rows out.
//!
//! # What it owns
//! - [`Sample`]: what one refresh fetched, in domain types ([`ShardLoad`] from `larder-control`'s conversions),
//!   with each node's report time on top's own clock (milliseconds since top started: the clock is an argument).
//! - [`Model`]: the previous report of every core, and so the rates — utilisation, req/s, cache hit ratio,
//!   handoffs/s, CPU share of each container — from the deltas of the nodes' cumulative counters.
//! - [`ViewState`]: which node is shown (all, or one) and the sort column, changed by [`Action`]s.
//!
//! # Rates from deltas
//! A rate is `(counter now - counter before) / (report time now - report time before)`. The report time is when
//! the node measured the counters (the refresh's time minus the report's age), not when top asked, so a refresh
//! that lands just before or after a node's report does not skew the figure. Three cases have no delta:
//! 1. The first sample of a core: its rates are unknown ("-").
//! 2. The same report seen twice (the node's `reports_received` did not move, e.g. a node slower than top):
//!    the core keeps its last rates and its baseline.
//! 3. A counter that went down (the node restarted): the delta is meaningless, so the rates are unknown for this
//!    refresh and the new counters become the baseline.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`CONTAINERS_SHOWN_MAX`] | 3 containers per core | the top consumers; the column is the last to fit |
//! | baselines | one per core of the last sample | cores that left the cluster are forgotten at the next sample |

use std::cmp::Ordering;
use std::collections::HashMap;

use larder_control::ShardLoad;
use serde::Serialize;

/// Most containers named per core (the ones that used the most CPU over the interval).
pub const CONTAINERS_SHOWN_MAX: usize = 3;

/// One node as one refresh saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSample {
    pub node_id: String,
    pub up: bool,
    pub drained: bool,
    /// Load reports the control plane has received from the node; the same number means the same report.
    pub reports_received: u64,
    /// When the node measured `shards`, in milliseconds on top's clock.
    pub reported_at_ms: u64,
    pub shards: Vec<ShardLoad>,
}

/// A hot target of the cluster and the cores serving it (`node/shard`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetRow {
    pub target: String,
    pub requests_per_second: f64,
    pub servers: Vec<String>,
}

/// What one refresh fetched.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub nodes: Vec<NodeSample>,
    pub targets: Vec<TargetRow>,
}

/// A container's CPU on one core over the interval, as a share of that core (0.25 = a quarter of it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerCpu {
    pub name: String,
    pub cpu_share: f64,
}

/// One core (shard) of one node: gauges from the last report, rates over the last interval (`None` = unknown).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CoreRow {
    pub node_id: String,
    pub shard: u32,
    /// Busy time over wall time, 0..=1.
    pub utilisation: Option<f64>,
    pub requests_per_second: Option<f64>,
    /// As the node reports it; `None` when the core answered nothing in the interval.
    pub latency_p99_us: Option<u64>,
    /// Cache hits over cache lookups in the interval, 0..=1; `None` without lookups.
    pub cache_hit_ratio: Option<f64>,
    pub handoffs_per_second: Option<f64>,
    /// Handoffs since the node started.
    pub handoffs: u64,
    pub active_connections: u64,
    /// The containers that used the most CPU, the most first (at most [`CONTAINERS_SHOWN_MAX`]).
    pub containers: Vec<ContainerCpu>,
}

/// One node and its cores, by shard.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeRow {
    pub node_id: String,
    pub up: bool,
    pub drained: bool,
    pub cores: Vec<CoreRow>,
}

/// Everything one screen (or one `--once`/`--json` print) shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Snapshot {
    pub nodes: Vec<NodeRow>,
    pub targets: Vec<TargetRow>,
}

impl Snapshot {
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.node_id.clone()).collect()
    }

    /// The cores `view` shows, in its order: one node's or all, sorted by its column (highest first; the core
    /// column lowest first), unknown figures last, ties by node and shard.
    pub fn rows(&self, view: &ViewState) -> Vec<&CoreRow> {
        let mut rows: Vec<&CoreRow> = self
            .nodes
            .iter()
            .filter(|node| view.node.as_ref().is_none_or(|id| *id == node.node_id))
            .flat_map(|node| &node.cores)
            .collect();
        rows.sort_by(|a, b| view.sort.compare(a, b).then_with(|| by_core(a, b)));
        rows
    }
}

fn by_core(a: &CoreRow, b: &CoreRow) -> Ordering {
    a.node_id.cmp(&b.node_id).then(a.shard.cmp(&b.shard))
}

/// The rates of one core over one interval.
#[derive(Clone, Debug, Default, PartialEq)]
struct Rates {
    utilisation: Option<f64>,
    requests_per_second: Option<f64>,
    cache_hit_ratio: Option<f64>,
    handoffs_per_second: Option<f64>,
    containers: Vec<ContainerCpu>,
}

/// A core's last report, the base of its next deltas.
#[derive(Clone, Debug)]
struct Baseline {
    reported_at_ms: u64,
    reports_received: u64,
    load: ShardLoad,
    rates: Rates,
}

/// The rates of every core, from the deltas between samples.
#[derive(Debug, Default)]
pub struct Model {
    baselines: HashMap<(String, u32), Baseline>,
}

impl Model {
    /// Takes one sample and returns what to show; the sample's counters become the next baselines.
    pub fn update(&mut self, sample: &Sample) -> Snapshot {
        let mut baselines = HashMap::with_capacity(self.baselines.len());
        let nodes = sample
            .nodes
            .iter()
            .map(|node| {
                let mut cores: Vec<CoreRow> = node
                    .shards
                    .iter()
                    .map(|load| {
                        let key = (node.node_id.clone(), load.shard.0);
                        let baseline = match self.baselines.remove(&key) {
                            // Case 2: the same report again; keep its baseline and rates.
                            Some(before) if before.reports_received == node.reports_received => {
                                before
                            }
                            Some(before) => Baseline {
                                reported_at_ms: node.reported_at_ms,
                                reports_received: node.reports_received,
                                load: load.clone(),
                                rates: rates(
                                    &before.load,
                                    load,
                                    node.reported_at_ms.saturating_sub(before.reported_at_ms),
                                )
                                .unwrap_or_default(),
                            },
                            // Case 1: first sight.
                            None => Baseline {
                                reported_at_ms: node.reported_at_ms,
                                reports_received: node.reports_received,
                                load: load.clone(),
                                rates: Rates::default(),
                            },
                        };
                        let row = core_row(&node.node_id, &baseline.load, &baseline.rates);
                        baselines.insert(key, baseline);
                        row
                    })
                    .collect();
                cores.sort_by_key(|core| core.shard);
                NodeRow {
                    node_id: node.node_id.clone(),
                    up: node.up,
                    drained: node.drained,
                    cores,
                }
            })
            .collect();
        // Cores not in this sample are dropped with the old map.
        self.baselines = baselines;
        Snapshot {
            nodes,
            targets: sample.targets.clone(),
        }
    }
}

fn core_row(node_id: &str, load: &ShardLoad, rates: &Rates) -> CoreRow {
    CoreRow {
        node_id: node_id.to_string(),
        shard: load.shard.0,
        utilisation: rates.utilisation,
        requests_per_second: rates.requests_per_second,
        latency_p99_us: load.latency_p99_us,
        cache_hit_ratio: rates.cache_hit_ratio,
        handoffs_per_second: rates.handoffs_per_second,
        handoffs: load.handoffs,
        active_connections: load.active_connections,
        containers: rates.containers.clone(),
    }
}

/// The rates between two reports `elapsed_ms` apart; `None` without time between them or when a counter went
/// down (case 3: a restarted node).
fn rates(before: &ShardLoad, after: &ShardLoad, elapsed_ms: u64) -> Option<Rates> {
    let counters = |load: &ShardLoad| {
        [
            load.requests,
            load.cpu_time_us,
            load.cache_hits,
            load.cache_misses,
            load.handoffs,
        ]
    };
    let reset = counters(before)
        .iter()
        .zip(counters(after))
        .any(|(before, after)| after < *before);
    if elapsed_ms == 0 || reset {
        return None;
    }
    let seconds = elapsed_ms as f64 / 1000.0;
    let elapsed_us = elapsed_ms as f64 * 1000.0;
    let lookups =
        (after.cache_hits + after.cache_misses) - (before.cache_hits + before.cache_misses);
    let mut containers: Vec<ContainerCpu> = after
        .containers
        .iter()
        .filter_map(|container| {
            let earlier = before
                .containers
                .iter()
                .find(|earlier| earlier.container == container.container)
                .map_or(0, |earlier| earlier.cpu_time_us);
            let used_us = container.cpu_time_us.checked_sub(earlier)?;
            (used_us > 0).then(|| ContainerCpu {
                name: container.container.0.clone(),
                cpu_share: (used_us as f64 / elapsed_us).min(1.0),
            })
        })
        .collect();
    containers.sort_by(|a, b| {
        b.cpu_share
            .total_cmp(&a.cpu_share)
            .then_with(|| a.name.cmp(&b.name))
    });
    containers.truncate(CONTAINERS_SHOWN_MAX);
    Some(Rates {
        utilisation: Some(((after.cpu_time_us - before.cpu_time_us) as f64 / elapsed_us).min(1.0)),
        requests_per_second: Some((after.requests - before.requests) as f64 / seconds),
        cache_hit_ratio: (lookups > 0)
            .then(|| (after.cache_hits - before.cache_hits) as f64 / lookups as f64),
        handoffs_per_second: Some((after.handoffs - before.handoffs) as f64 / seconds),
        containers,
    })
}

/// The columns the core table can be sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortColumn {
    Core,
    Utilisation,
    Requests,
    Latency,
    HitRatio,
    Handoffs,
}

impl SortColumn {
    /// In the order of the table's columns (and of `s`).
    pub const ALL: [SortColumn; 6] = [
        SortColumn::Core,
        SortColumn::Utilisation,
        SortColumn::Requests,
        SortColumn::Latency,
        SortColumn::HitRatio,
        SortColumn::Handoffs,
    ];

    /// The key that sorts by this column.
    pub fn key(self) -> char {
        match self {
            SortColumn::Core => 'c',
            SortColumn::Utilisation => 'u',
            SortColumn::Requests => 'r',
            SortColumn::Latency => 'l',
            SortColumn::HitRatio => 'h',
            SortColumn::Handoffs => 'o',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortColumn::Core => "core",
            SortColumn::Utilisation => "utilisation",
            SortColumn::Requests => "req/s",
            SortColumn::Latency => "p99",
            SortColumn::HitRatio => "hit ratio",
            SortColumn::Handoffs => "handoffs/s",
        }
    }

    fn step(self, forward: bool) -> SortColumn {
        let count = SortColumn::ALL.len();
        let at = SortColumn::ALL
            .iter()
            .position(|column| *column == self)
            .unwrap_or(0);
        let next = if forward { at + 1 } else { at + count - 1 };
        SortColumn::ALL[next % count]
    }

    /// `a` before `b`: the core column by node and shard, the others highest first with unknowns last.
    fn compare(self, a: &CoreRow, b: &CoreRow) -> Ordering {
        let figure = |row: &CoreRow| match self {
            SortColumn::Core => None,
            SortColumn::Utilisation => row.utilisation,
            SortColumn::Requests => row.requests_per_second,
            SortColumn::Latency => row.latency_p99_us.map(|us| us as f64),
            SortColumn::HitRatio => row.cache_hit_ratio,
            SortColumn::Handoffs => row.handoffs_per_second,
        };
        match (figure(a), figure(b)) {
            (Some(a), Some(b)) => b.total_cmp(&a),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    NextNode,
    PreviousNode,
    NextSort,
    PreviousSort,
    Sort(SortColumn),
}

/// Which node is shown and how the cores are sorted.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewState {
    /// `None` = every node.
    pub node: Option<String>,
    pub sort: SortColumn,
}

impl Default for ViewState {
    fn default() -> ViewState {
        ViewState {
            node: None,
            sort: SortColumn::Utilisation,
        }
    }
}

impl ViewState {
    /// Applies `action` (all but [`Action::Quit`]); node switching cycles all → each of `node_ids` → all.
    pub fn apply(&mut self, action: Action, node_ids: &[String]) {
        match action {
            Action::Quit => {}
            Action::NextSort => self.sort = self.sort.step(true),
            Action::PreviousSort => self.sort = self.sort.step(false),
            Action::Sort(column) => self.sort = column,
            Action::NextNode | Action::PreviousNode => {
                let count = node_ids.len() + 1; // position 0 = all nodes
                let at = self
                    .node
                    .as_ref()
                    .and_then(|id| node_ids.iter().position(|node| node == id))
                    .map_or(0, |index| index + 1);
                let next = if action == Action::NextNode {
                    (at + 1) % count
                } else {
                    (at + count - 1) % count
                };
                self.node = next.checked_sub(1).map(|index| node_ids[index].clone());
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use larder_control::{ContainerLoad, ContainerName, ShardId};

    use super::*;

    /// A shard's counters: `requests`, busy µs, cache hits and misses, handoffs.
    pub(crate) fn load(
        shard: u32,
        requests: u64,
        busy_us: u64,
        hits: u64,
        misses: u64,
        handoffs: u64,
    ) -> ShardLoad {
        ShardLoad {
            shard: ShardId(shard),
            requests,
            cpu_time_us: busy_us,
            cache_hits: hits,
            cache_misses: misses,
            handoffs,
            ..ShardLoad::default()
        }
    }

    pub(crate) fn node(id: &str, reports: u64, at_ms: u64, shards: Vec<ShardLoad>) -> NodeSample {
        NodeSample {
            node_id: id.to_string(),
            up: true,
            drained: false,
            reports_received: reports,
            reported_at_ms: at_ms,
            shards,
        }
    }

    fn sample(nodes: Vec<NodeSample>) -> Sample {
        Sample {
            nodes,
            targets: Vec::new(),
        }
    }

    fn only_core(snapshot: &Snapshot) -> &CoreRow {
        &snapshot.nodes[0].cores[0]
    }

    #[test]
    fn rates_are_counter_deltas_over_the_time_between_the_reports() {
        let mut model = Model::default();
        let first = model.update(&sample(vec![node(
            "a",
            10,
            1_000,
            vec![load(0, 100, 0, 10, 10, 5)],
        )]));
        assert_eq!(
            only_core(&first).requests_per_second,
            None,
            "first sight: unknown"
        );
        assert_eq!(only_core(&first).utilisation, None);
        // 2 s later by the node's reports: +400 requests, 0.5 s busy, 30 hits and 10 misses, +4 handoffs.
        let second = model.update(&sample(vec![node(
            "a",
            30,
            3_000,
            vec![load(0, 500, 500_000, 40, 20, 9)],
        )]));
        let core = only_core(&second);
        assert_eq!(core.requests_per_second, Some(200.0));
        assert_eq!(core.utilisation, Some(0.25));
        assert_eq!(core.cache_hit_ratio, Some(0.75));
        assert_eq!(core.handoffs_per_second, Some(2.0));
        assert_eq!(core.handoffs, 9);
    }

    #[test]
    fn the_same_report_seen_twice_keeps_the_last_rates() {
        let mut model = Model::default();
        model.update(&sample(vec![node("a", 1, 0, vec![load(0, 0, 0, 0, 0, 0)])]));
        let moved = model.update(&sample(vec![node(
            "a",
            2,
            1_000,
            vec![load(0, 50, 0, 0, 0, 0)],
        )]));
        assert_eq!(only_core(&moved).requests_per_second, Some(50.0));
        let again = model.update(&sample(vec![node(
            "a",
            2,
            1_000,
            vec![load(0, 50, 0, 0, 0, 0)],
        )]));
        assert_eq!(
            only_core(&again).requests_per_second,
            Some(50.0),
            "not 0 and not unknown"
        );
        // The baseline stayed at the second report: the next delta is from it.
        let next = model.update(&sample(vec![node(
            "a",
            3,
            2_000,
            vec![load(0, 150, 0, 0, 0, 0)],
        )]));
        assert_eq!(only_core(&next).requests_per_second, Some(100.0));
    }

    #[test]
    fn a_counter_that_goes_down_is_a_restart_not_a_negative_rate() {
        let mut model = Model::default();
        model.update(&sample(vec![node(
            "a",
            50,
            0,
            vec![load(0, 1_000, 900_000, 5, 5, 3)],
        )]));
        // The node restarted: every counter starts again near zero.
        let restarted = model.update(&sample(vec![node(
            "a",
            2,
            1_000,
            vec![load(0, 20, 10_000, 1, 0, 0)],
        )]));
        let core = only_core(&restarted);
        assert_eq!(core.requests_per_second, None);
        assert_eq!(core.utilisation, None);
        assert_eq!(core.cache_hit_ratio, None);
        // The restarted counters are the new baseline.
        let after = model.update(&sample(vec![node(
            "a",
            3,
            2_000,
            vec![load(0, 120, 510_000, 1, 0, 0)],
        )]));
        assert_eq!(only_core(&after).requests_per_second, Some(100.0));
        assert_eq!(only_core(&after).utilisation, Some(0.5));
    }

    #[test]
    fn utilisation_is_capped_at_one_core_and_no_lookups_is_an_unknown_hit_ratio() {
        let mut model = Model::default();
        model.update(&sample(vec![node("a", 1, 0, vec![load(0, 0, 0, 7, 3, 0)])]));
        // Busy time measured slightly past the report's age: 1.02 s busy in 1 s.
        let core = model.update(&sample(vec![node(
            "a",
            2,
            1_000,
            vec![load(0, 0, 1_020_000, 7, 3, 0)],
        )]));
        assert_eq!(only_core(&core).utilisation, Some(1.0));
        assert_eq!(only_core(&core).cache_hit_ratio, None);
    }

    #[test]
    fn containers_are_ranked_by_cpu_over_the_interval_and_cut_at_the_limit() {
        let with_containers = |cpu_us: &[(&str, u64)]| {
            let mut shard = load(0, 0, 0, 0, 0, 0);
            shard.containers = cpu_us
                .iter()
                .map(|(name, cpu_time_us)| ContainerLoad {
                    container: ContainerName(name.to_string()),
                    cpu_time_us: *cpu_time_us,
                    ..ContainerLoad::default()
                })
                .collect();
            shard
        };
        let mut model = Model::default();
        model.update(&sample(vec![node(
            "a",
            1,
            0,
            vec![with_containers(&[
                ("big-before", 900_000),
                ("web", 0),
                ("api", 0),
                ("idle", 5),
                ("batch", 0),
            ])],
        )]));
        // Over 1 s: web 400 ms, api 300 ms, batch 100 ms, big-before 10 ms (large total, small delta), idle 0.
        let snapshot = model.update(&sample(vec![node(
            "a",
            2,
            1_000,
            vec![with_containers(&[
                ("big-before", 910_000),
                ("web", 400_000),
                ("api", 300_000),
                ("idle", 5),
                ("batch", 100_000),
            ])],
        )]));
        let names: Vec<(&str, f64)> = only_core(&snapshot)
            .containers
            .iter()
            .map(|container| (container.name.as_str(), container.cpu_share))
            .collect();
        assert_eq!(names, vec![("web", 0.4), ("api", 0.3), ("batch", 0.1)]);
    }

    /// Nodes of two cores with every counter at 0, in their first report at time 0.
    pub(crate) fn idle_nodes(ids: &[&str]) -> Vec<NodeSample> {
        ids.iter()
            .map(|id| {
                node(
                    id,
                    1,
                    0,
                    vec![load(0, 0, 0, 0, 0, 0), load(1, 0, 0, 0, 0, 0)],
                )
            })
            .collect()
    }

    fn two_nodes() -> Snapshot {
        let mut model = Model::default();
        model.update(&sample(idle_nodes(&["a", "b"])));
        // 1 s later. utilisation: a/0 10%, a/1 90%, b/0 50%, b/1 50%; req/s: 300, 100, 200, 400.
        // b/1 did no cache lookups (hit ratio unknown).
        model.update(&sample(vec![
            node(
                "a",
                2,
                1_000,
                vec![
                    load(0, 300, 100_000, 1, 1, 0),
                    load(1, 100, 900_000, 3, 1, 0),
                ],
            ),
            node(
                "b",
                2,
                1_000,
                vec![
                    load(0, 200, 500_000, 1, 0, 0),
                    load(1, 400, 500_000, 0, 0, 0),
                ],
            ),
        ]))
    }

    fn order(snapshot: &Snapshot, view: &ViewState) -> Vec<String> {
        snapshot
            .rows(view)
            .iter()
            .map(|row| format!("{}/{}", row.node_id, row.shard))
            .collect()
    }

    #[test]
    fn sorting_puts_the_highest_first_unknowns_last_and_breaks_ties_by_core() {
        let snapshot = two_nodes();
        let mut view = ViewState::default();
        assert_eq!(
            order(&snapshot, &view),
            ["a/1", "b/0", "b/1", "a/0"],
            "utilisation, tie b/0-b/1 by core"
        );
        view.apply(Action::Sort(SortColumn::Requests), &[]);
        assert_eq!(order(&snapshot, &view), ["b/1", "a/0", "b/0", "a/1"]);
        view.apply(Action::Sort(SortColumn::HitRatio), &[]);
        assert_eq!(
            order(&snapshot, &view),
            ["b/0", "a/1", "a/0", "b/1"],
            "b/1 has no ratio: last"
        );
        view.apply(Action::Sort(SortColumn::Core), &[]);
        assert_eq!(order(&snapshot, &view), ["a/0", "a/1", "b/0", "b/1"]);
    }

    #[test]
    fn the_sort_keys_cycle_through_every_column_both_ways() {
        let mut view = ViewState::default();
        let mut seen = vec![view.sort];
        for _ in 0..SortColumn::ALL.len() {
            view.apply(Action::NextSort, &[]);
            seen.push(view.sort);
        }
        assert_eq!(seen.first(), seen.last(), "a full cycle comes back");
        seen.pop();
        seen.sort_by_key(|column| column.key());
        seen.dedup();
        assert_eq!(seen.len(), SortColumn::ALL.len(), "every column visited");
        view.apply(Action::PreviousSort, &[]);
        assert_eq!(view.sort, SortColumn::Core, "before utilisation");
    }

    #[test]
    fn node_switching_cycles_all_then_each_node_and_filters_the_rows() {
        let snapshot = two_nodes();
        let ids = snapshot.node_ids();
        let mut view = ViewState {
            sort: SortColumn::Core,
            ..ViewState::default()
        };
        view.apply(Action::NextNode, &ids);
        assert_eq!(view.node.as_deref(), Some("a"));
        assert_eq!(order(&snapshot, &view), ["a/0", "a/1"]);
        view.apply(Action::NextNode, &ids);
        assert_eq!(order(&snapshot, &view), ["b/0", "b/1"]);
        view.apply(Action::NextNode, &ids);
        assert_eq!(view.node, None, "after the last node: all again");
        view.apply(Action::PreviousNode, &ids);
        assert_eq!(view.node.as_deref(), Some("b"));
        // A node that left: the next switch starts from "all".
        view.node = Some("gone".to_string());
        view.apply(Action::NextNode, &ids);
        assert_eq!(view.node.as_deref(), Some("a"));
    }

    #[test]
    fn cores_that_leave_the_cluster_are_forgotten() {
        let mut model = Model::default();
        model.update(&sample(vec![node("a", 1, 0, vec![load(0, 0, 0, 0, 0, 0)])]));
        model.update(&sample(vec![node("b", 1, 0, vec![load(0, 0, 0, 0, 0, 0)])]));
        assert_eq!(model.baselines.len(), 1);
        // "a" is back: first sight again, not a delta against its old report.
        let back = model.update(&sample(vec![node(
            "a",
            9,
            5_000,
            vec![load(0, 500, 0, 0, 0, 0)],
        )]));
        assert_eq!(only_core(&back).requests_per_second, None);
    }
}
