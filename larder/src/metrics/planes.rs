//! The metrics and status documents of the dispatcher (per back-end, label `backend`) and of the control plane
//! (per node, label `node`).
//!
//! The dispatcher's back-ends are read from the copy its health thread publishes once per round
//! (`DispatchHandle::published_backends`, every `health_interval_ms`, 1 s by default): a scrape never takes the
//! balancer's lock, which the shards take per request; so in-flight and health are up to one round old. The
//! control plane's figures take its state lock once per scrape, as a gRPC query does (no data-plane shard takes
//! it). Label values: one per back-end (at most the dispatcher's back-end limit) or node.

use larder_control::{ControlStats, NodeState};
use larder_dispatch::{BackendStatus, CountersSnapshot};
use larder_runtime::ShardStats;
use larder_server::exposition::{Exposition, Kind};
use serde_json::{json, Value};

use super::shards;

/// The dispatcher's families (besides the runtime's per-shard ones).
pub fn write_dispatch(
    out: &mut Exposition,
    counters: &CountersSnapshot,
    backends: &[BackendStatus],
) {
    let totals: [(&str, Kind, &str, u64); 3] = [
        (
            "larder_dispatch_requests",
            Kind::Counter,
            "Requests the dispatcher took.",
            counters.requests,
        ),
        (
            "larder_dispatch_retries",
            Kind::Counter,
            "Requests retried on another back-end.",
            counters.retries,
        ),
        (
            "larder_dispatch_backends_marked_down",
            Kind::Counter,
            "Times a back-end was marked down by health checks.",
            counters.backends_marked_down,
        ),
    ];
    for (name, kind, help, value) in totals {
        out.family(name, kind, help).sample(&[], value as f64);
    }
    let mut failures = out.family(
        "larder_dispatch_failures",
        Kind::Counter,
        "Requests the dispatcher answered itself with an error status (no back-end, back-end failed, timed out).",
    );
    for (status, count) in [
        ("502", counters.responses_502),
        ("503", counters.responses_503),
        ("504", counters.responses_504),
    ] {
        failures.sample(&[("status", status)], count as f64);
    }
    type BackendRow = (&'static str, Kind, &'static str, fn(&BackendStatus) -> f64);
    const ROWS: &[BackendRow] = &[
        (
            "larder_backend_requests",
            Kind::Counter,
            "Requests started on the back-end (tries and retries).",
            |b| b.requests as f64,
        ),
        (
            "larder_backend_failures",
            Kind::Counter,
            "Tries that failed on the back-end (connect, send or read error, timeout, malformed response).",
            |b| b.failures as f64,
        ),
        (
            "larder_backend_retries",
            Kind::Counter,
            "Requests that failed on the back-end and were retried on another.",
            |b| b.retries as f64,
        ),
        (
            "larder_backend_in_flight",
            Kind::Gauge,
            "Requests in flight on the back-end.",
            |b| b.in_flight as f64,
        ),
        (
            "larder_backend_up",
            Kind::Gauge,
            "1 if health checks and the control plane find the back-end up.",
            |b| f64::from(u8::from(!b.down && !b.control_down)),
        ),
        (
            "larder_backend_drained",
            Kind::Gauge,
            "1 if the back-end is drained (takes no new requests).",
            |b| f64::from(u8::from(b.drained)),
        ),
        (
            "larder_backend_weight",
            Kind::Gauge,
            "The back-end's weight.",
            |b| b.weight as f64,
        ),
    ];
    for (name, kind, help, value) in ROWS {
        let mut family = out.family(name, *kind, help);
        for backend in backends {
            family.sample(&[("backend", &backend.addr.to_string())], value(backend));
        }
    }
}

/// The dispatcher's status document: its shards and its back-ends.
pub fn dispatch_status(
    title: String,
    counters: &CountersSnapshot,
    backends: &[BackendStatus],
    runtime: &[ShardStats],
) -> Value {
    let rows: Vec<Value> = backends
        .iter()
        .map(|b| {
            let health = match (b.down, b.control_down, b.drained) {
                (false, false, false) => "up",
                (false, false, true) => "drained",
                _ => "down",
            };
            json!({"backend": b.addr.to_string(), "health": health, "in_flight": b.in_flight, "requests": b.requests, "failures": b.failures, "retries": b.retries, "weight": b.weight})
        })
        .collect();
    json!({
        "kind": "dispatch",
        "title": title,
        "time_ms": shards::unix_ms(),
        "summary": format!("{} requests · {} retries · {} back-ends", counters.requests, counters.retries, backends.len()),
        "shards": shards::runtime_rows(runtime),
        "tables": [{"title": "Back-ends", "id": "backends", "rows": rows}],
    })
}

/// The control plane's families.
pub fn write_control(out: &mut Exposition, stats: &ControlStats) {
    let load = &stats.load;
    let mut nodes = out.family(
        "larder_control_nodes",
        Kind::Gauge,
        "Nodes registered, by state.",
    );
    nodes.sample(&[("state", "up")], f64::from(load.nodes_up));
    nodes.sample(&[("state", "down")], f64::from(load.nodes_down));
    let totals: [(&str, Kind, &str, u64); 3] = [
        (
            "larder_control_reports_received",
            Kind::Counter,
            "Load reports received from nodes.",
            load.reports_received,
        ),
        (
            "larder_control_steering_version",
            Kind::Gauge,
            "Version of the steering pushed to nodes.",
            stats.steering_version,
        ),
        (
            "larder_control_assignment_batches",
            Kind::Counter,
            "Assign calls answered (a node's batch of targets each).",
            stats.assignment_batches,
        ),
    ];
    for (name, kind, help, value) in totals {
        out.family(name, kind, help).sample(&[], value as f64);
    }
    let mut up = out.family(
        "larder_control_node_up",
        Kind::Gauge,
        "1 if the node reports in time.",
    );
    for node in &load.nodes {
        up.sample(
            &[("node", &node.info.node_id.0)],
            f64::from(u8::from(node.state == NodeState::Up)),
        );
    }
    let mut reports = out.family(
        "larder_control_node_reports_received",
        Kind::Counter,
        "Load reports received from the node.",
    );
    for node in &load.nodes {
        reports.sample(
            &[("node", &node.info.node_id.0)],
            node.reports_received as f64,
        );
    }
    let mut rate = out.family(
        "larder_control_node_requests_per_second",
        Kind::Gauge,
        "Requests per second the node last reported (all shards).",
    );
    for node in &load.nodes {
        rate.sample(
            &[("node", &node.info.node_id.0)],
            node.total.requests_per_second,
        );
    }
}

/// The control plane's status document: its nodes.
pub fn control_status(title: String, stats: &ControlStats) -> Value {
    let load = &stats.load;
    let rows: Vec<Value> = load
        .nodes
        .iter()
        .map(|node| {
            json!({
                "node": node.info.node_id.0,
                "http": node.info.http_address,
                "state": if node.state == NodeState::Up { "up" } else { "down" },
                "drained": node.drained,
                "cores": node.info.cores,
                "req_per_s": (node.total.requests_per_second * 10.0).round() / 10.0,
                "connections": node.total.active_connections,
                "reports": node.reports_received,
                "last_report_ms": node.last_report_age.as_millis() as u64,
            })
        })
        .collect();
    json!({
        "kind": "control",
        "title": title,
        "time_ms": shards::unix_ms(),
        "summary": format!("{} up · {} down · steering version {}", load.nodes_up, load.nodes_down, stats.steering_version),
        "tables": [{"title": "Nodes", "id": "nodes", "rows": rows}],
    })
}
