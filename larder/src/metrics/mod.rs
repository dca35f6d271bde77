//! `--metrics ADDR` / `--no-metrics` of `serve`, `dispatch` and `control`: where their operations listener
//! (`larder_server::ops`: `/healthz`, `/readyz`, `/metrics`, the status page `/` and its `/status.json`) listens,
//! and the probe each command answers with. The figures each probe writes are in [`shards`] (a node's and any
//! process's shards) and [`planes`] (the dispatcher's back-ends, the control plane's nodes).
//!
//! Defaults are on loopback and collide with no other default of the project (HTTP 8080 for `serve`, 8000 for
//! `dispatch`, gRPC 50051) nor with the usual monitoring ports (Prometheus 9090, Pushgateway 9091,
//! Alertmanager 9093, node_exporter 9100): `serve` 127.0.0.1:9180, `dispatch` 127.0.0.1:9181, `control` 127.0.0.1:9182. As with the embedded
//! control plane, a default address already taken (a second node on this machine) is a warning and the process
//! runs without the listener; an explicit `--metrics ADDR` that cannot be bound is an error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use larder_control::AgentStatsReader;
use larder_dispatch::DispatchHandle;
use larder_runtime::StatsHandle;
use larder_server::exposition::Exposition;
use larder_server::node::StatsReader;
use larder_server::ops::{shards_alive, OpsBound, OpsListener, OpsProbe};

pub mod planes;
pub mod shards;

/// Default address of `larder serve`'s listener.
pub const SERVE_METRICS_DEFAULT: &str = "127.0.0.1:9180";
/// Default address of `larder dispatch`'s listener.
pub const DISPATCH_METRICS_DEFAULT: &str = "127.0.0.1:9181";
/// Default address of `larder control`'s listener.
pub const CONTROL_METRICS_DEFAULT: &str = "127.0.0.1:9182";

/// Binds the listener the flags ask for, before anything else starts: none with `--no-metrics`; `metrics`, else
/// `default` (where a taken address only warns).
pub fn bind(
    no_metrics: bool,
    metrics: Option<&str>,
    default: &str,
) -> anyhow::Result<Option<OpsBound>> {
    if no_metrics {
        return Ok(None);
    }
    let addr = metrics_addr(metrics, default)?;
    match OpsBound::bind(addr) {
        Ok(bound) => Ok(Some(bound)),
        Err(error) if metrics.is_none() => {
            tracing::warn!(%addr, %error, "no metrics listener (pass --metrics ADDR or --no-metrics)");
            Ok(None)
        }
        Err(error) => Err(error).context("--metrics"),
    }
}

fn metrics_addr(metrics: Option<&str>, default: &str) -> anyhow::Result<SocketAddr> {
    let text = metrics.unwrap_or(default);
    text.parse()
        .with_context(|| format!("--metrics {text}: expected IP:PORT"))
}

/// [`bind`] for a process taking over from another (binary handover): adopts the old process's listener
/// (`adopted`) when it is on the address this one would bind (port 0: any), so probes see no gap.
pub fn bind_or_adopt(
    no_metrics: bool,
    metrics: Option<&str>,
    default: &str,
    adopted: Option<std::net::TcpListener>,
) -> anyhow::Result<Option<OpsBound>> {
    if no_metrics {
        return Ok(None);
    }
    let addr = metrics_addr(metrics, default)?;
    if let Some(listener) = adopted {
        let bound = OpsBound::adopt(listener).context("--metrics: the old process's listener")?;
        let actual = bound.local_addr();
        if actual.ip() == addr.ip() && (addr.port() == 0 || addr.port() == actual.port()) {
            return Ok(Some(bound));
        }
        tracing::info!(%actual, %addr, "not adopting the old metrics listener: this one listens elsewhere");
    }
    bind(no_metrics, metrics, default)
}

/// Starts answering with `probe` and prints the address on stdout.
pub fn start(bound: Option<OpsBound>, probe: impl OpsProbe) -> anyhow::Result<Option<OpsListener>> {
    let Some(bound) = bound else { return Ok(None) };
    let listener = bound.start(Arc::new(probe)).context("--metrics")?;
    println!("larder: metrics on http://{}", listener.local_addr());
    Ok(Some(listener))
}

/// Set when the process starts shutting down: from then on `/readyz` answers 503 while in-flight work drains.
#[derive(Clone, Default)]
pub struct Stopping(Arc<AtomicBool>);

impl Stopping {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), String> {
        if self.0.load(Ordering::SeqCst) {
            return Err("draining: shutting down".to_string());
        }
        Ok(())
    }
}

/// `larder serve`: alive = every shard alive; ready = alive, not stopping and, with `--join`, registered with the
/// control plane (a joined node unknown to its control plane gets no assignments and no steering).
pub struct ServeProbe {
    pub shards: Vec<StatsHandle>,
    pub node: StatsReader,
    /// The status page's title (e.g. `larder serve 127.0.0.1:8080`).
    pub title: String,
    pub stopping: Stopping,
    /// The agent of a `--join`ed node, and the control plane's address.
    pub joined: Option<(AgentStatsReader, SocketAddr)>,
}

impl OpsProbe for ServeProbe {
    fn healthy(&self) -> Result<(), String> {
        shards_alive(&self.shards)
    }

    fn ready(&self) -> Result<(), String> {
        self.stopping.check()?;
        shards_alive(&self.shards)?;
        match &self.joined {
            Some((agent, control)) if !agent.stats().connected => Err(format!(
                "not registered with the control plane at {control}"
            )),
            _ => Ok(()),
        }
    }

    fn metrics(&self, out: &mut Exposition) {
        let runtime = snapshots(&self.shards);
        shards::write_runtime(out, &runtime);
        shards::write_node(out, &shards::NodeFigures::read(&self.node), &runtime);
    }

    fn status_json(&self) -> String {
        let runtime = snapshots(&self.shards);
        shards::node_status(self.title.clone(), &self.node, &runtime).to_string()
    }
}

fn snapshots(shards: &[StatsHandle]) -> Vec<larder_runtime::ShardStats> {
    shards.iter().map(StatsHandle::snapshot).collect()
}

/// `larder dispatch`: alive = every shard alive; ready = alive, not stopping, and at least one back-end that
/// takes requests (not down by health checks or the control plane, not drained), as the health thread last
/// counted them (every `health_interval_ms`, 1 s): an atomic load, not the balancer's lock the shards take.
pub struct DispatchProbe {
    pub shards: Vec<StatsHandle>,
    pub stopping: Stopping,
    pub handle: DispatchHandle,
    /// The status page's title.
    pub title: String,
}

impl OpsProbe for DispatchProbe {
    fn healthy(&self) -> Result<(), String> {
        shards_alive(&self.shards)
    }

    fn ready(&self) -> Result<(), String> {
        self.stopping.check()?;
        shards_alive(&self.shards)?;
        match self.handle.usable_backends() {
            0 => Err(
                "no back-end takes requests (all down or drained, as of the last health round)"
                    .to_string(),
            ),
            _ => Ok(()),
        }
    }

    fn metrics(&self, out: &mut Exposition) {
        let (counters, backends) = self.figures();
        shards::write_runtime(out, &snapshots(&self.shards));
        planes::write_dispatch(out, &counters, &backends);
    }

    fn status_json(&self) -> String {
        let (counters, backends) = self.figures();
        let runtime = snapshots(&self.shards);
        planes::dispatch_status(self.title.clone(), &counters, &backends, &runtime).to_string()
    }
}

impl DispatchProbe {
    /// The dispatcher's counters and its back-ends as the health thread last published them (module [`planes`]).
    fn figures(
        &self,
    ) -> (
        larder_dispatch::CountersSnapshot,
        Vec<larder_dispatch::BackendStatus>,
    ) {
        (self.handle.counters(), self.handle.published_backends())
    }
}

/// `larder control`: alive = its thread is serving (the process exits when it is not); ready = the same, and not
/// stopping.
pub struct ControlProbe {
    pub stats: larder_control::ControlStatsReader,
    pub stopping: Stopping,
    pub title: String,
}

impl OpsProbe for ControlProbe {
    fn healthy(&self) -> Result<(), String> {
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        self.stopping.check()
    }

    fn metrics(&self, out: &mut Exposition) {
        planes::write_control(out, &self.stats.stats());
    }

    fn status_json(&self) -> String {
        planes::control_status(self.title.clone(), &self.stats.stats()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use larder_server::exposition::Format;

    use super::*;

    /// Every metric name the exporters can emit (families are declared even without samples), with the
    /// suffixes of their samples.
    fn emitted_names() -> BTreeSet<String> {
        let mut out = Exposition::new(Format::Prometheus);
        shards::write_runtime(&mut out, &[]);
        shards::write_node(&mut out, &shards::NodeFigures::default(), &[]);
        planes::write_dispatch(&mut out, &Default::default(), &[]);
        let load = larder_control::ClusterLoad {
            nodes_up: 0,
            nodes_down: 0,
            total: Default::default(),
            nodes: Vec::new(),
            reports_received: 0,
        };
        let control = larder_control::ControlStats {
            load,
            steering_version: 0,
            assignment_batches: 0,
        };
        planes::write_control(&mut out, &control);
        let mut names = BTreeSet::new();
        for line in out.finish().lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
        names
    }

    #[test]
    fn the_dispatcher_exports_failures_and_retries_per_back_end() {
        let backend = |port: u16, failures: u64, retries: u64| larder_dispatch::BackendStatus {
            backend: larder_dispatch::BackendId(u32::from(port)),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            in_flight: 0,
            requests: 10,
            failures,
            retries,
            external_load: 0,
            drained: false,
            down: false,
            control_down: false,
        };
        let mut out = Exposition::new(Format::Prometheus);
        planes::write_dispatch(
            &mut out,
            &Default::default(),
            &[backend(1, 3, 2), backend(2, 0, 0)],
        );
        let text = out.finish();
        for line in [
            "larder_backend_failures_total{backend=\"127.0.0.1:1\"} 3",
            "larder_backend_retries_total{backend=\"127.0.0.1:1\"} 2",
            "larder_backend_failures_total{backend=\"127.0.0.1:2\"} 0",
            "larder_backend_retries_total{backend=\"127.0.0.1:2\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn the_grafana_dashboard_queries_only_metrics_the_exporters_emit() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/larder.json");
        let text = std::fs::read_to_string(path).expect("docs/grafana/larder.json");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let emitted = emitted_names();
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(panels.len() >= 4, "heatmap, req/s, CPU by container, p99");
        let mut queried = 0;
        for panel in panels {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("larder_") {
                        queried += 1;
                        assert!(
                            emitted.contains(word),
                            "panel {:?} queries {word}, which no exporter emits",
                            panel["title"]
                        );
                    }
                }
            }
        }
        assert!(queried >= 10, "the panels query larder metrics ({queried})");
        assert!(emitted.contains("larder_request_duration_seconds_bucket"));
    }
}
