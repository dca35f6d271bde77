//! `larder control`: a standalone control plane for a cluster. Nodes join it with
//! `larder serve --join ADDR`; operators use `larder ctl` or grpcurl. With `--state FILE`
//! the operator's run-time changes survive a restart (`larder_control::persist`); the
//! file's policy wins over `--policy`, which is only the policy of a cluster with no
//! saved one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use larder_control::{ControlConfig, ControlPlane};
use larder_lard::{PolicyConfig, PolicyKind};

use crate::metrics::{self, ControlProbe, Stopping};
use crate::signals::TerminationSignals;

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Address to serve gRPC on (larder.v1.Control, larder.v1.NodeService, reflection, health).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Bearer token required for changes; without one, changes are accepted only from loopback.
    #[arg(long)]
    token: Option<String>,
    /// How often nodes report their load, in milliseconds.
    #[arg(long, default_value_t = 100)]
    report_interval_ms: u64,
    /// A node silent for this many report intervals is marked down.
    #[arg(long, default_value_t = 5)]
    down_after_intervals: u32,
    /// Initial policy: wrr, lc (least connections), ch (consistent hashing), ch-bl (with bounded loads), lard,
    /// lard-r. A policy saved in the --state file (a run-time change) wins over it.
    #[arg(long, default_value = "lard")]
    policy: String,
    /// Keep the operator's run-time changes (policy, node weights and drains, containers) in this file: read at
    /// start (a bad file stops the start), rewritten atomically after every change, created at the first one.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Address of the operations listener (`/metrics`, the status page `/` with the nodes, `/healthz`, `/readyz`)
    /// [default: 127.0.0.1:9182; if taken, none runs].
    #[arg(long, value_name = "IP:PORT", conflicts_with = "no_metrics")]
    metrics: Option<String>,
    /// Do not start the operations listener.
    #[arg(long = "no-metrics")]
    no_metrics: bool,
}

pub fn run(args: ControlArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging();
    let kind = PolicyKind::from_str(&args.policy).context("--policy")?;
    let mut config = ControlConfig::new(args.listen);
    config.token = args.token;
    config.report_interval = Duration::from_millis(args.report_interval_ms);
    config.down_after_intervals = args.down_after_intervals;
    config.policy = PolicyConfig::new(kind);
    config.state_file = args.state;
    let metrics = metrics::bind(
        args.no_metrics,
        args.metrics.as_deref(),
        metrics::CONTROL_METRICS_DEFAULT,
    )?;
    let signals = TerminationSignals::block()?;
    let plane = ControlPlane::spawn(config).context("starting the control plane")?;
    println!("larder control: listening on {}", plane.local_addr());
    let stopping = Stopping::default();
    let probe = ControlProbe {
        stats: plane.stats_reader(),
        stopping: stopping.clone(),
        title: format!("larder control {}", plane.local_addr()),
    };
    let metrics = metrics::start(metrics, probe)?;
    let signal = signals.wait();
    tracing::info!(signal, "stopping the control plane");
    stopping.set();
    plane.shutdown().context("stopping the control plane")?;
    if let Some(metrics) = metrics {
        metrics.shutdown();
    }
    Ok(ExitCode::SUCCESS)
}
