//! `larder dispatch`: flags → `DispatchConfig` → a running front-end (and, with `--control`, its control-plane
//! link, `dispatch_link.rs`) → exit 0 after SIGINT/SIGTERM once the exchanges in flight are finished.
//!
//! Back-ends come from `--backend` flags, from the control plane (`--control` without `--backend`), or both
//! (`--backend` with `--control`: only those back-ends, steered by the control plane). With neither flag the
//! command fails naming both. `--no-control` ignores the control plane.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use larder_dispatch::{DispatchConfig, Dispatcher};
use larder_lard::{PolicyConfig, PolicyKind};

use crate::cores::CoreFlags;
use crate::dispatch_link::{self, BackendSource, DispatchLink, LinkConfig};
use crate::metrics::{self, DispatchProbe, Stopping};
use crate::signals::TerminationSignals;

#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// Address to listen on (not `larder serve`'s 8080, so both run on one machine).
    #[arg(long, value_name = "IP:PORT", default_value_t = larder_dispatch::config::LISTEN_DEFAULT)]
    listen: SocketAddr,
    /// A back-end HTTP/1.1 server, IP:PORT (repeat the flag for each back-end). Optional with --control: the
    /// control plane's nodes are then the back-ends.
    #[arg(long = "backend", value_name = "IP:PORT")]
    backends: Vec<String>,
    /// Distribution policy: lard-r, lard, wrr, lc, ch or ch-bl.
    #[arg(long, default_value = "lard-r")]
    policy: String,
    #[command(flatten)]
    cores: CoreFlags,
    /// I/O driver: auto (io_uring when the kernel allows it, else epoll), uring or epoll.
    #[arg(long = "io-driver", value_name = "DRIVER", default_value = "auto")]
    io_driver: String,
    /// Path of the active health check of each back-end (`GET <path>`; any status below 500 is alive).
    #[arg(long = "health-path", value_name = "PATH", default_value = "/")]
    health_path: String,
    /// Requests in flight to one back-end before 503 + Retry-After [default: 1024].
    #[arg(long = "pending-max", value_name = "N")]
    pending_max: Option<u32>,
    /// Address of the operations listener (`/metrics`, the status page `/`, `/healthz`, `/readyz`) [default: 127.0.0.1:9181; if taken, none
    /// runs].
    #[arg(long, value_name = "IP:PORT", conflicts_with = "no_metrics")]
    metrics: Option<String>,
    /// Do not start the health and metrics listener.
    #[arg(long = "no-metrics")]
    no_metrics: bool,
    /// Do not contact a control plane (back-ends only from --backend).
    #[arg(long = "no-control", conflicts_with = "control")]
    no_control: bool,
    /// The control plane's gRPC address: back-ends (without --backend), drain, node state, weights,
    /// load and the policy come from it, polled every --control-interval-ms.
    #[arg(long)]
    control: Option<String>,
    /// Bearer token for the control plane, if it has one.
    #[arg(long)]
    token: Option<String>,
    /// Milliseconds between two polls of the control plane.
    #[arg(long = "control-interval-ms", default_value_t = dispatch_link::INTERVAL_MS_DEFAULT)]
    control_interval_ms: u64,
}

/// The control-plane link the flags ask for, if any.
fn link_config(args: &DispatchArgs) -> anyhow::Result<Option<LinkConfig>> {
    let control = match (&args.control, args.no_control) {
        (Some(control), false) => control,
        _ if args.backends.is_empty() => anyhow::bail!(
            "no back-ends: give --backend IP:PORT (one or more) or --control HOST:PORT (the control plane's nodes)"
        ),
        _ => return Ok(None),
    };
    if !dispatch_link::INTERVAL_MS_RANGE.contains(&args.control_interval_ms) {
        anyhow::bail!(
            "--control-interval-ms {}: expected {}..={}",
            args.control_interval_ms,
            dispatch_link::INTERVAL_MS_RANGE.start(),
            dispatch_link::INTERVAL_MS_RANGE.end()
        );
    }
    let source = if args.backends.is_empty() {
        BackendSource::Discover
    } else {
        BackendSource::Explicit
    };
    let mut config = LinkConfig::new(control.clone(), source);
    config.token = args.token.clone();
    config.interval_ms = args.control_interval_ms;
    Ok(Some(config))
}

fn config_from(args: &DispatchArgs) -> anyhow::Result<DispatchConfig> {
    let mut config = DispatchConfig {
        listen: args.listen,
        policy: PolicyConfig::new(args.policy.parse::<PolicyKind>().context("--policy")?),
        io_driver: args.io_driver.parse().context("--io-driver")?,
        health_path: args.health_path.clone(),
        ..DispatchConfig::default()
    };
    if let Some(selection) = args.cores.selection()? {
        config.cores = selection;
    }
    for backend in &args.backends {
        config.backends.push(
            backend
                .parse()
                .with_context(|| format!("--backend {backend}: expected IP:PORT"))?,
        );
    }
    if let Some(pending_max) = args.pending_max {
        config.pending_per_backend_max = pending_max;
    }
    config.validate()?;
    Ok(config)
}

pub fn run(args: DispatchArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging();
    let link_config = link_config(&args)?;
    let config = config_from(&args)?;
    if link_config.is_none() {
        tracing::info!("running without a control plane");
    }
    let metrics = metrics::bind(
        args.no_metrics,
        args.metrics.as_deref(),
        metrics::DISPATCH_METRICS_DEFAULT,
    )?;
    // SIGINT/SIGTERM are blocked before the shard threads exist (they inherit the mask), so only this
    // thread takes them, in sigwait.
    let signals = TerminationSignals::block()?;
    let dispatcher = Dispatcher::start(config).context("starting the dispatcher")?;
    let link = match link_config {
        Some(link_config) => {
            tracing::info!(control = %link_config.control, source = ?link_config.source, "control-plane link");
            let started = DispatchLink::start(link_config, dispatcher.handle());
            match started {
                Ok(link) => Some(link),
                Err(error) => {
                    dispatcher.shutdown();
                    let _ = dispatcher.join();
                    return Err(error).context("starting the control-plane link");
                }
            }
        }
        None => None,
    };
    println!(
        "larder: dispatching on http://{} with {} shards",
        dispatcher.local_addr(),
        dispatcher.shard_count()
    );
    let stopping = Stopping::default();
    let probe = DispatchProbe {
        shards: dispatcher.runtime_stats_handles(),
        stopping: stopping.clone(),
        handle: dispatcher.handle(),
        title: format!("larder dispatch {}", dispatcher.local_addr()),
    };
    let metrics = metrics::start(metrics, probe)?;
    let signal = signals.wait();
    tracing::info!(signal, "shutting down: finishing exchanges in flight");
    // /readyz says 503 from here on, while the exchanges drain.
    stopping.set();
    // The link first, so nothing is applied while the dispatcher drains.
    if let Some(link) = link {
        tracing::info!(stats = ?link.stats(), "stopping the control-plane link");
        if !link.shutdown() {
            tracing::warn!("the control-plane link was still in a call; it ends with the process");
        }
    }
    dispatcher.shutdown();
    let report = dispatcher.join().context("stopping the dispatcher")?;
    if !report.fully_drained() {
        tracing::warn!("some exchanges were still running at the drain deadline and were closed");
    }
    if let Some(metrics) = metrics {
        metrics.shutdown();
    }
    Ok(ExitCode::SUCCESS)
}
