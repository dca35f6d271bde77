//! The metrics and status document of a process's shards: the runtime's per-shard figures (CPU, loop, tasks,
//! timers, mesh) that `serve` and `dispatch` share, and a node's (`serve`) requests, responses, cache,
//! connections, handoffs, latency histogram, containers and hot targets.
//!
//! Everything is read from what the shards publish (`StatsHandle::snapshot`, `StatsReader`): relaxed loads, plus
//! two locks the shards take only at their periodic samples (the container list every 100 ms, the hot-target
//! window every 100 ms), never per request. A scrape of a 64-shard node reads ~3,000 atomics.
//!
//! Families are described by tables ([`RUNTIME_COUNTERS`], [`NODE_COUNTERS`], ...): one row per metric, so the
//! README's metrics table and this code list the same names.

use larder_runtime::ShardStats;
use larder_server::exposition::{Exposition, Kind};
use larder_server::node::{
    quantile_of, NodeStats, ShardSnapshot, StatsReader, LATENCY_BUCKETS_US, LATENCY_CELLS,
};
use serde_json::{json, Value};

/// One metric family over the shards: name (a counter without `_total`), kind, help, and its value for a shard.
type Row<T> = (&'static str, Kind, &'static str, fn(&T) -> f64);

const MICROS_PER_SECOND: f64 = 1e6;

/// Per-shard figures of the runtime (label `shard`).
pub const RUNTIME_COUNTERS: &[Row<ShardStats>] = &[
    (
        "larder_shard_busy_seconds",
        Kind::Counter,
        "CPU time the shard's thread used (user + system).",
        |s| s.busy_us as f64 / MICROS_PER_SECOND,
    ),
    (
        "larder_shard_idle_seconds",
        Kind::Counter,
        "Wall time the shard's thread did not use CPU (parked in the kernel).",
        |s| s.idle_us as f64 / MICROS_PER_SECOND,
    ),
    (
        "larder_shard_loop_turns",
        Kind::Counter,
        "Turns of the shard's scheduler loop.",
        |s| s.loop_turns as f64,
    ),
    (
        "larder_shard_tasks_spawned",
        Kind::Counter,
        "Tracked tasks spawned on the shard.",
        |s| s.tasks_spawned as f64,
    ),
    (
        "larder_shard_tasks_polled",
        Kind::Counter,
        "Polls of the shard's tracked tasks.",
        |s| s.tasks_polled as f64,
    ),
    (
        "larder_shard_timers_armed",
        Kind::Counter,
        "Timers armed on the shard's timer wheel.",
        |s| s.timers_armed as f64,
    ),
    (
        "larder_shard_timers_active",
        Kind::Gauge,
        "Timers in the shard's wheel now.",
        |s| s.timers_active as f64,
    ),
    (
        "larder_shard_mesh_sent_messages",
        Kind::Counter,
        "Mesh messages the shard sent to other shards.",
        |s| s.mesh_sent as f64,
    ),
    (
        "larder_shard_mesh_received_messages",
        Kind::Counter,
        "Mesh messages the shard received from other shards.",
        |s| s.mesh_received as f64,
    ),
    (
        "larder_shard_mesh_refused_messages",
        Kind::Counter,
        "Mesh sends refused because the destination queue was full.",
        |s| s.mesh_refused_full as f64,
    ),
    (
        "larder_shard_mesh_queued_messages",
        Kind::Gauge,
        "Messages waiting in the shard's incoming queues.",
        |s| s.queue_depths.iter().sum::<usize>() as f64,
    ),
];

/// Per-shard figures of a node (label `shard`).
pub const NODE_COUNTERS: &[Row<ShardSnapshot>] = &[
    (
        "larder_requests",
        Kind::Counter,
        "Requests answered (any status).",
        |s| s.requests as f64,
    ),
    (
        "larder_sent_bytes",
        Kind::Counter,
        "Bytes written to clients.",
        |s| s.bytes_sent as f64,
    ),
    (
        "larder_requests_active",
        Kind::Gauge,
        "Requests being answered now.",
        |s| s.requests_active as f64,
    ),
    (
        "larder_connections_open",
        Kind::Gauge,
        "Client connections open now.",
        |s| s.connections_active as f64,
    ),
    (
        "larder_connections_accepted",
        Kind::Counter,
        "Client connections accepted.",
        |s| s.connections_accepted as f64,
    ),
    (
        "larder_connections_refused",
        Kind::Counter,
        "Connections answered 503 at accept (connections_max open).",
        |s| s.connections_refused as f64,
    ),
    (
        "larder_header_timeouts",
        Kind::Counter,
        "Requests answered 408: the head did not arrive in time.",
        |s| s.header_timeouts as f64,
    ),
    (
        "larder_handoffs_in",
        Kind::Counter,
        "Connections handed to this shard by another.",
        |s| s.handoffs_in as f64,
    ),
    (
        "larder_handoffs_out",
        Kind::Counter,
        "Connections this shard handed to another.",
        |s| s.handoffs_out as f64,
    ),
    (
        "larder_handoffs_refused",
        Kind::Counter,
        "Handoffs that could not be queued (served locally instead).",
        |s| s.handoffs_refused as f64,
    ),
    (
        "larder_cache_hits",
        Kind::Counter,
        "Cache lookups that found the object.",
        |s| s.cache_hits as f64,
    ),
    (
        "larder_cache_misses",
        Kind::Counter,
        "Cache lookups that did not.",
        |s| s.cache_misses as f64,
    ),
    (
        "larder_cache_evictions",
        Kind::Counter,
        "Objects evicted from the shard's cache.",
        |s| s.cache_evictions as f64,
    ),
    (
        "larder_cache_bytes",
        Kind::Gauge,
        "Bytes held in the shard's cache.",
        |s| s.cache_bytes as f64,
    ),
    (
        "larder_cache_objects",
        Kind::Gauge,
        "Objects held in the shard's cache.",
        |s| s.cache_objects as f64,
    ),
    (
        "larder_container_rejected_connections",
        Kind::Counter,
        "Connections answered 503 because their container was at its limit.",
        |s| s.container_rejections as f64,
    ),
];

/// Status classes of `larder_responses_total{class}`.
/// A status class and its counter.
type Class = (&'static str, fn(&ShardSnapshot) -> u64);

const CLASSES: [Class; 5] = [
    ("1xx", |s| s.responses_1xx),
    ("2xx", |s| s.responses_2xx),
    ("3xx", |s| s.responses_3xx),
    ("4xx", |s| s.responses_4xx),
    ("5xx", |s| s.responses_5xx),
];

/// Writes one family per row, one sample per shard.
pub fn write_rows<T>(out: &mut Exposition, rows: &[Row<T>], shards: &[(String, &T)]) {
    for (name, kind, help, value) in rows {
        let mut family = out.family(name, *kind, help);
        for (shard, item) in shards {
            family.sample(&[("shard", shard)], value(item));
        }
    }
}

/// The runtime's per-shard families.
pub fn write_runtime(out: &mut Exposition, runtime: &[ShardStats]) {
    let shards: Vec<(String, &ShardStats)> =
        runtime.iter().map(|s| (s.shard.0.to_string(), s)).collect();
    write_rows(out, RUNTIME_COUNTERS, &shards);
}

/// What a node's families are written from: one read of its published counters.
#[derive(Default)]
pub struct NodeFigures {
    pub stats: NodeStats,
    /// The configured containers' names, by container index.
    pub container_names: Vec<String>,
    /// Per shard, requests per container index.
    pub container_requests: Vec<Vec<u64>>,
}

impl NodeFigures {
    pub fn read(reader: &StatsReader) -> NodeFigures {
        NodeFigures {
            stats: reader.stats(),
            container_names: reader.container_names(),
            container_requests: reader.container_requests(),
        }
    }
}

/// A node's families (besides the runtime's).
pub fn write_node(out: &mut Exposition, figures: &NodeFigures, runtime: &[ShardStats]) {
    let stats = &figures.stats;
    let shards: Vec<(String, &ShardSnapshot)> = stats
        .shards
        .iter()
        .map(|s| (s.shard.to_string(), s))
        .collect();
    write_rows(out, NODE_COUNTERS, &shards);
    let mut responses = out.family(
        "larder_responses",
        Kind::Counter,
        "Responses by status class.",
    );
    for (shard, snapshot) in &shards {
        for (class, count) in CLASSES {
            responses.sample(
                &[("shard", shard), ("class", class)],
                count(snapshot) as f64,
            );
        }
    }
    let bounds: Vec<f64> = LATENCY_BUCKETS_US
        .iter()
        .map(|&us| us as f64 / MICROS_PER_SECOND)
        .collect();
    let mut latency = out.family(
        "larder_request_duration_seconds",
        Kind::Histogram,
        "Time from a whole request head to its response written, on the shard that served it.",
    );
    for (shard, snapshot) in &shards {
        let histogram = snapshot.latency;
        let sum_seconds = histogram.sum_us as f64 / MICROS_PER_SECOND;
        latency.histogram(
            &[("shard", shard)],
            &bounds,
            &histogram.buckets,
            sum_seconds,
        );
    }
    write_containers(out, figures, runtime);
}

/// Per container per shard (labels `shard`, `container`).
fn write_containers(out: &mut Exposition, figures: &NodeFigures, runtime: &[ShardStats]) {
    let (names, requests) = (&figures.container_names, &figures.container_requests);
    type ContainerRow = (
        &'static str,
        Kind,
        &'static str,
        fn(&larder_runtime::container::ContainerStats) -> f64,
    );
    const ROWS: &[ContainerRow] = &[
        (
            "larder_container_cpu_seconds",
            Kind::Counter,
            "CPU time charged to the container on the shard.",
            |c| c.cpu_ns as f64 / 1e9,
        ),
        (
            "larder_container_tasks_queued",
            Kind::Gauge,
            "Tasks of the container ready to run (queued work).",
            |c| c.tasks_queued as f64,
        ),
        (
            "larder_container_tasks_active",
            Kind::Gauge,
            "Tasks (connections) of the container alive.",
            |c| c.tasks_active as f64,
        ),
        (
            "larder_container_rejections",
            Kind::Counter,
            "Spawns refused by the container's limit (each answered 503).",
            |c| c.rejections as f64,
        ),
        (
            "larder_container_throttles",
            Kind::Counter,
            "Times the container's CPU cap held it back.",
            |c| c.throttles as f64,
        ),
        (
            "larder_container_shares",
            Kind::Gauge,
            "The container's CPU shares.",
            |c| c.shares as f64,
        ),
    ];
    for (name, kind, help, value) in ROWS {
        let mut family = out.family(name, *kind, help);
        for shard in runtime {
            let label = shard.shard.0.to_string();
            for container in &shard.containers {
                family.sample(
                    &[("shard", &label), ("container", &container.name)],
                    value(container),
                );
            }
        }
    }
    let mut family = out.family(
        "larder_container_requests",
        Kind::Counter,
        "Requests answered in the container on the shard.",
    );
    for (shard, counts) in requests.iter().enumerate() {
        let label = shard.to_string();
        for (name, count) in names.iter().zip(counts) {
            family.sample(&[("shard", &label), ("container", name)], *count as f64);
        }
    }
}

/// The status page's per-shard rows of the runtime (the page computes rates between two documents).
pub fn runtime_rows(runtime: &[ShardStats]) -> Vec<Value> {
    runtime
        .iter()
        .map(|s| {
            json!({
                "shard": s.shard.0, "cpu": s.cpu.0, "busy_us": s.busy_us, "wall_us": s.wall_us,
                "requests": 0, "cache_hits": 0, "cache_misses": 0, "connections_active": 0,
                "handoffs_in": 0, "handoffs_out": 0, "latency_buckets": vec![0u64; LATENCY_CELLS],
            })
        })
        .collect()
}

/// The status document of a node: shards, containers, hottest targets.
pub fn node_status(title: String, reader: &StatsReader, runtime: &[ShardStats]) -> Value {
    let figures = NodeFigures::read(reader);
    let stats = &figures.stats;
    let mut shards = runtime_rows(runtime);
    for (row, snapshot) in shards.iter_mut().zip(&stats.shards) {
        row["requests"] = json!(snapshot.requests);
        row["cache_hits"] = json!(snapshot.cache_hits);
        row["cache_misses"] = json!(snapshot.cache_misses);
        row["connections_active"] = json!(snapshot.connections_active);
        row["handoffs_in"] = json!(snapshot.handoffs_in);
        row["handoffs_out"] = json!(snapshot.handoffs_out);
        row["latency_buckets"] = json!(snapshot.latency.buckets);
    }
    let (names, requests) = (&figures.container_names, &figures.container_requests);
    let mut containers = Vec::new();
    for shard in runtime {
        for container in &shard.containers {
            let index = names.iter().position(|name| *name == container.name);
            let answered = index
                .and_then(|index| requests.get(shard.shard.0 as usize)?.get(index).copied())
                .unwrap_or(0);
            containers.push(json!({
                "container": container.name, "shard": shard.shard.0, "shares": container.shares,
                "cpu_seconds": (container.cpu_ns as f64 / 1e9 * 1000.0).round() / 1000.0,
                "requests": answered, "queued": container.tasks_queued, "active": container.tasks_active,
                "rejections": container.rejections,
            }));
        }
    }
    let mut hot: Vec<Value> = Vec::new();
    for (shard, window) in reader.hot_windows().iter().enumerate() {
        for target in &window.targets {
            hot.push(json!({
                "path": target.path, "shard": shard,
                "req_per_s": (window.rate(target.requests) * 10.0).round() / 10.0,
            }));
        }
    }
    hot.sort_by(|a, b| {
        b["req_per_s"]
            .as_f64()
            .partial_cmp(&a["req_per_s"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    hot.truncate(HOT_TARGETS_SHOWN);
    let total = stats.total(|s| s.requests);
    let p99 = {
        let mut buckets = [0u64; LATENCY_CELLS];
        for snapshot in &stats.shards {
            for (sum, n) in buckets.iter_mut().zip(snapshot.latency.buckets) {
                *sum += n;
            }
        }
        quantile_of(&buckets, 0.99)
    };
    json!({
        "kind": "node",
        "title": title,
        "time_ms": unix_ms(),
        "summary": format!("{} shards · {total} requests · p99 since start {}", runtime.len(), p99_text(p99)),
        "latency_bounds_us": LATENCY_BUCKETS_US,
        "shards": shards,
        "tables": [
            {"title": "Containers", "id": "containers", "rows": containers},
            {"title": "Hottest targets (last window)", "id": "hot", "rows": hot},
        ],
    })
}

/// Rows of the hottest-targets table.
const HOT_TARGETS_SHOWN: usize = 20;

fn p99_text(p99: Option<u64>) -> String {
    match p99 {
        None => "–".to_string(),
        Some(u64::MAX) => "> 10 s".to_string(),
        Some(us) => format!("≤ {us} µs"),
    }
}

/// Milliseconds since the Unix epoch (the page's clock for rates).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
