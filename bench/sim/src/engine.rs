//! The discrete-event engine: one front-end, N back-ends, simulated time in µs.
//!
//! Steps of one request:
//! 1. The front-end takes the next target from the [`RequestSource`] as soon as fewer than the outstanding bound
//!    are in flight, calls `policy.select(target, now_ms, random)` and `on_start` on the chosen node.
//! 2. The node looks the target up in its [`GdsCache`]. Hit: a CPU job of `cost.cpu_us(size)`. Miss: a disk job
//!    of `cost.disk_us(size)`; when it ends the target enters the cache and the CPU job follows.
//! 3. CPU and disk are FIFO single servers. A job arriving at `t` ends at `max(t, free_at) + service`, so the
//!    queues need no storage: the heap holds one completion event per request in flight.
//! 4. When the CPU job ends, the front-end calls `on_finish` and admits the next request at that instant.
//!
//! Outstanding bound: by default LARD's admission bound `(n-1)·T_high + T_low - 1` (the paper drives the cluster
//! at saturation, and this is the most it keeps in flight without overloading a node past `2·T_high`); every
//! policy gets the same bound so they are compared at the same concurrency. [`Outstanding::Fixed`] gives a
//! closed loop of that many clients instead.
//!
//! Measurement: the first `warmup_requests` completions warm the caches and are not counted; the window runs
//! from then to the moment the source is exhausted (no drain tail). Throughput = completions in the window /
//! window length; hit ratio = hits / requests dispatched in the window; utilisation = busy time of jobs started
//! in the window / window length (capped at 1).
//!
//! Limits: [`NODES_MAX`] (1024) nodes; the heap holds at most the outstanding bound (≤ `NODES_MAX · T_high`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use larder_lard::{admission_bound, build, Policy, PolicyConfig, ServerId, TargetId};
use larder_workload::{Target, Workload};
use rand::{Rng, RngCore};

use crate::cache::GdsCache;
use crate::cost::CostModel;

/// Most back-ends in one run (the policy library's member limit).
pub const NODES_MAX: u32 = larder_lard::SERVERS_MAX as u32;

/// How many requests the front-end keeps in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outstanding {
    /// LARD's admission bound for the node count and the policy config's thresholds.
    AdmissionBound,
    /// A closed loop of this many clients.
    Fixed(u32),
}

/// One simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: u32,
    pub policy: PolicyConfig,
    pub cost: CostModel,
    /// Cache budget of each node.
    pub cache_bytes: u64,
    /// Requests taken from the source (warm-up included).
    pub requests: u64,
    pub warmup_requests: u64,
    pub outstanding: Outstanding,
    /// Seeds the request stream and, separately, the policies' `random` argument: every policy sees the same
    /// request sequence for one seed.
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("nodes must be in 1..={NODES_MAX}, got {nodes}")]
    BadNodes { nodes: u32 },
    #[error("policy: {0}")]
    Policy(String),
    #[error("cost model: {0}")]
    Cost(&'static str),
    #[error("warm-up ({warmup}) must be smaller than the number of requests ({requests})")]
    WarmupTooLong { warmup: u64, requests: u64 },
    #[error("the outstanding bound must be at least 1")]
    NoOutstanding,
    #[error("{requests} requests exceed the limit {max}")]
    TooManyRequests { requests: u64, max: u64 },
    #[error("the request source has no targets")]
    EmptySource,
}

/// Where requests come from: a synthetic workload (sampled during the run) or a fixed sequence (a replayed trace,
/// or a workload's stream drawn once with [`draw_sequence`] and shared by every run of a sweep).
#[derive(Debug, Clone, Copy)]
pub enum RequestSource<'a> {
    Workload(&'a Workload),
    Sequence {
        targets: &'a [Target],
        /// Indices into `targets`, in request order.
        requests: &'a [u32],
    },
}

/// Most requests [`draw_sequence`] draws (4 bytes each: 400 MB).
pub const SEQUENCE_REQUESTS_MAX: u64 = 100_000_000;

/// Draws `requests` target indices from `workload` with the stream RNG of `seed`: the same sequence
/// [`RequestSource::Workload`] would produce in a run with that seed.
pub fn draw_sequence(workload: &Workload, requests: u64, seed: u64) -> Result<Vec<u32>, SimError> {
    if requests > SEQUENCE_REQUESTS_MAX {
        return Err(SimError::TooManyRequests {
            requests,
            max: SEQUENCE_REQUESTS_MAX,
        });
    }
    let mut rng = larder_workload::seeded_rng(seed);
    Ok((0..requests)
        .map(|_| workload.sample_index(&mut rng) as u32)
        .collect())
}

impl RequestSource<'_> {
    fn targets(&self) -> &[Target] {
        match self {
            RequestSource::Workload(workload) => workload.targets(),
            RequestSource::Sequence { targets, .. } => targets,
        }
    }

    /// Requests available: unbounded for a workload, the trace length for a trace.
    fn len(&self) -> u64 {
        match self {
            RequestSource::Workload(_) => u64::MAX,
            RequestSource::Sequence { requests, .. } => requests.len() as u64,
        }
    }

    fn next<R: Rng>(&self, sequence: u64, rng: &mut R) -> u32 {
        match self {
            RequestSource::Workload(workload) => workload.sample_index(rng) as u32,
            RequestSource::Sequence { requests, .. } => requests[sequence as usize],
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SimResult {
    pub policy: String,
    pub nodes: u32,
    pub outstanding: u32,
    pub requests_measured: u64,
    pub window_us: u64,
    pub throughput_rps: f64,
    pub hit_ratio: f64,
    pub cpu_util: Vec<f64>,
    pub disk_util: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    DiskDone,
    CpuDone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    time_us: u64,
    /// Tie-break: events at the same instant run in scheduling order (deterministic).
    sequence: u64,
    stage: Stage,
    node: u32,
    target: u32,
}

/// A FIFO single server (a node's CPU or disk).
#[derive(Debug, Clone, Copy, Default)]
struct Resource {
    free_at_us: u64,
    /// Service time of jobs started inside the measurement window.
    busy_us: u64,
}

impl Resource {
    /// Queues a job arriving at `now_us`; returns its completion time.
    fn serve(&mut self, now_us: u64, service_us: u64, window_start_us: Option<u64>) -> u64 {
        let start = now_us.max(self.free_at_us);
        self.free_at_us = start + service_us;
        if window_start_us.is_some_and(|w| start >= w) {
            self.busy_us += service_us;
        }
        self.free_at_us
    }
}

struct Node {
    cache: GdsCache,
    cpu: Resource,
    disk: Resource,
}

/// Per-target tables, computed once: the hot loop only indexes.
struct TargetTables {
    sizes: Vec<u64>,
    ids: Vec<TargetId>,
    cpu_us: Vec<u64>,
    disk_us: Vec<u64>,
}

/// State of one run between events.
struct Sim<'a> {
    source: RequestSource<'a>,
    tables: TargetTables,
    nodes: Vec<Node>,
    policy: Box<dyn Policy>,
    stream_rng: larder_workload::Rng64,
    policy_rng: larder_workload::Rng64,
    heap: BinaryHeap<Reverse<Event>>,
    sequence: u64,
    requests: u64,
    dispatched: u64,
    window_start_us: Option<u64>,
    measured_dispatches: u64,
    measured_hits: u64,
}

impl Sim<'_> {
    fn push(&mut self, time_us: u64, stage: Stage, node: u32, target: u32) {
        self.sequence += 1;
        self.heap.push(Reverse(Event {
            time_us,
            sequence: self.sequence,
            stage,
            node,
            target,
        }));
    }

    /// Admits one request at `now_us` (steps 1 and 2); false when the source is exhausted.
    fn dispatch(&mut self, now_us: u64) -> Result<bool, SimError> {
        if self.dispatched >= self.requests {
            return Ok(false);
        }
        let target = self.source.next(self.dispatched, &mut self.stream_rng);
        self.dispatched += 1;
        let id = self.tables.ids[target as usize];
        let now_ms = now_us / 1000;
        let decision = self
            .policy
            .select(id, now_ms, self.policy_rng.next_u64())
            .map_err(|e| SimError::Policy(e.to_string()))?;
        self.policy.on_start(decision.server, id, now_ms);
        let node_index = decision.server.0;
        let node = &mut self.nodes[node_index as usize];
        let hit = node
            .cache
            .access(target, self.tables.sizes[target as usize]);
        let window = self.window_start_us;
        let (stage, done_us) = if hit {
            let service = self.tables.cpu_us[target as usize];
            (Stage::CpuDone, node.cpu.serve(now_us, service, window))
        } else {
            let service = self.tables.disk_us[target as usize];
            (Stage::DiskDone, node.disk.serve(now_us, service, window))
        };
        if self.window_start_us.is_some() {
            self.measured_dispatches += 1;
            self.measured_hits += u64::from(hit);
        }
        self.push(done_us, stage, node_index, target);
        Ok(true)
    }
}

/// Runs one simulation.
pub fn run(config: &SimConfig, source: RequestSource<'_>) -> Result<SimResult, SimError> {
    if config.nodes == 0 || config.nodes > NODES_MAX {
        return Err(SimError::BadNodes {
            nodes: config.nodes,
        });
    }
    config.cost.validate().map_err(SimError::Cost)?;
    let targets = source.targets();
    if targets.is_empty() {
        return Err(SimError::EmptySource);
    }
    let requests = config.requests.min(source.len());
    if config.warmup_requests >= requests {
        return Err(SimError::WarmupTooLong {
            warmup: config.warmup_requests,
            requests,
        });
    }
    let mut policy: Box<dyn Policy> =
        build(&config.policy).map_err(|e| SimError::Policy(e.to_string()))?;
    for node in 0..config.nodes {
        policy
            .add_server(ServerId(node), 1)
            .map_err(|e| SimError::Policy(e.to_string()))?;
    }
    let outstanding = match config.outstanding {
        Outstanding::AdmissionBound => admission_bound(config.nodes, &config.policy.lard),
        Outstanding::Fixed(clients) => clients,
    };
    if outstanding == 0 {
        return Err(SimError::NoOutstanding);
    }
    let sizes: Vec<u64> = targets.iter().map(|t| t.size_bytes).collect();
    let tables = TargetTables {
        ids: targets
            .iter()
            .map(|t| TargetId::from_path(&t.path))
            .collect(),
        cpu_us: sizes.iter().map(|&s| config.cost.cpu_us(s)).collect(),
        disk_us: sizes.iter().map(|&s| config.cost.disk_us(s)).collect(),
        sizes,
    };
    let nodes = (0..config.nodes)
        .map(|_| Node {
            cache: GdsCache::new(targets.len(), config.cache_bytes),
            cpu: Resource::default(),
            disk: Resource::default(),
        })
        .collect();
    let mut sim = Sim {
        source,
        tables,
        nodes,
        policy,
        stream_rng: larder_workload::seeded_rng(config.seed),
        policy_rng: larder_workload::seeded_rng(config.seed ^ 0x9e37_79b9_7f4a_7c15),
        heap: BinaryHeap::with_capacity(outstanding as usize),
        sequence: 0,
        requests,
        dispatched: 0,
        window_start_us: None,
        measured_dispatches: 0,
        measured_hits: 0,
    };

    for _ in 0..outstanding {
        if !sim.dispatch(0)? {
            break;
        }
    }
    let mut now_us = 0u64;
    let mut completed = 0u64;
    let mut measured_completions = 0u64;
    while let Some(Reverse(event)) = sim.heap.pop() {
        now_us = event.time_us;
        let target = event.target as usize;
        match event.stage {
            Stage::DiskDone => {
                let node = &mut sim.nodes[event.node as usize];
                node.cache
                    .insert(event.target, sim.tables.sizes[target], &sim.tables.sizes);
                let service = sim.tables.cpu_us[target];
                let done = node.cpu.serve(now_us, service, sim.window_start_us);
                sim.push(done, Stage::CpuDone, event.node, event.target);
            }
            Stage::CpuDone => {
                sim.policy
                    .on_finish(ServerId(event.node), sim.tables.ids[target], now_us / 1000);
                completed += 1;
                if sim.window_start_us.is_some() {
                    measured_completions += 1;
                } else if completed >= config.warmup_requests {
                    sim.window_start_us = Some(now_us);
                }
                if !sim.dispatch(now_us)? {
                    break;
                }
            }
        }
    }

    let window_us = now_us
        .saturating_sub(sim.window_start_us.unwrap_or(0))
        .max(1);
    let util = |busy: u64| (busy as f64 / window_us as f64).min(1.0);
    Ok(SimResult {
        policy: config.policy.kind.to_string(),
        nodes: config.nodes,
        outstanding,
        requests_measured: measured_completions,
        window_us,
        throughput_rps: measured_completions as f64 * 1e6 / window_us as f64,
        hit_ratio: if sim.measured_dispatches == 0 {
            0.0
        } else {
            sim.measured_hits as f64 / sim.measured_dispatches as f64
        },
        cpu_util: sim.nodes.iter().map(|n| util(n.cpu.busy_us)).collect(),
        disk_util: sim.nodes.iter().map(|n| util(n.disk.busy_us)).collect(),
    })
}
