//! `larder control`: a standalone control plane for a cluster. Nodes join it with
//! `larder serve --join ADDR`; operators use `larder ctl` or grpcurl.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use larder_control::{ControlConfig, ControlPlane};
use larder_lard::{PolicyConfig, PolicyKind};

use crate::signals::Signals;

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Address to serve gRPC on (larder.v1.Control, larder.v1.NodeService, reflection, health).
    #[arg(long, default_value = "127.0.0.1:50051")]
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
    /// Initial policy: wrr, lc, ch, ch-bl, lard, lard-r.
    #[arg(long, default_value = "lard")]
    policy: String,
}

pub fn run(args: ControlArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging();
    let kind = PolicyKind::from_str(&args.policy).context("--policy")?;
    let mut config = ControlConfig::new(args.listen);
    config.token = args.token;
    config.report_interval = Duration::from_millis(args.report_interval_ms);
    config.down_after_intervals = args.down_after_intervals;
    config.policy = PolicyConfig::new(kind);
    let signals = Signals::block()?;
    let plane = ControlPlane::spawn(config).context("starting the control plane")?;
    println!("larder control: listening on {}", plane.local_addr());
    let signal = signals.run_until_stopped(|| {
        tracing::info!("reload: nothing to reload (no --config file)");
    });
    tracing::info!(signal, "stopping the control plane");
    plane.shutdown().context("stopping the control plane")?;
    Ok(ExitCode::SUCCESS)
}
