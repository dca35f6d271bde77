//! `larder dispatch`: flags → `DispatchConfig` → a running front-end → exit 0 after SIGINT/SIGTERM once the
//! exchanges in flight are finished.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use larder_dispatch::{DispatchConfig, Dispatcher};
use larder_lard::{PolicyConfig, PolicyKind};

use crate::signals::TerminationSignals;

#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// A back-end HTTP/1.1 server, IP:PORT (repeat the flag for each back-end).
    #[arg(long = "backend", required = true)]
    backends: Vec<String>,
    /// Distribution policy: lard-r, lard, wrr, lc, ch or ch-bl [default: lard-r].
    #[arg(long, default_value = "lard-r")]
    policy: String,
    /// Shards: `all` (one per physical core), a count, or a CPU list like `0-3` [default: all].
    #[arg(long, default_value = "all")]
    cores: String,
    /// I/O driver: auto, uring or epoll [default: auto].
    #[arg(long = "io-driver", default_value = "auto")]
    io_driver: String,
    /// Path of the active health check (`GET <path>`, any status below 500 is alive) [default: /].
    #[arg(long = "health-path", default_value = "/")]
    health_path: String,
    /// Requests in flight to one back-end before 503 + Retry-After [default: 1024].
    #[arg(long = "pending-max")]
    pending_max: Option<u32>,
    /// Do not contact a control plane (the only mode in this build).
    #[arg(long = "no-control")]
    no_control: bool,
    /// Address of the control plane's gRPC endpoint (accepted, not wired yet).
    #[arg(long)]
    control: Option<String>,
}

fn config_from(args: &DispatchArgs) -> anyhow::Result<DispatchConfig> {
    let mut config = DispatchConfig {
        listen: args
            .listen
            .parse::<SocketAddr>()
            .with_context(|| format!("--listen {}: expected IP:PORT", args.listen))?,
        policy: PolicyConfig::new(args.policy.parse::<PolicyKind>().context("--policy")?),
        cores: args.cores.parse().context("--cores")?,
        io_driver: args.io_driver.parse().context("--io-driver")?,
        health_path: args.health_path.clone(),
        ..DispatchConfig::default()
    };
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    let config = config_from(&args)?;
    match (&args.control, args.no_control) {
        (Some(control), false) => tracing::info!(
            %control,
            "--control accepted; the dispatcher's control-plane link is not wired yet"
        ),
        _ => tracing::info!("running without a control plane"),
    }
    // SIGINT/SIGTERM are blocked before the shard threads exist (they inherit the mask), so only this
    // thread takes them, in sigwait.
    let signals = TerminationSignals::block()?;
    let dispatcher = Dispatcher::start(config).context("starting the dispatcher")?;
    println!(
        "larder: dispatching on http://{} with {} shards",
        dispatcher.local_addr(),
        dispatcher.shard_count()
    );
    let signal = signals.wait();
    tracing::info!(signal, "shutting down: finishing exchanges in flight");
    dispatcher.shutdown();
    let report = dispatcher.join().context("stopping the dispatcher")?;
    if !report.fully_drained() {
        tracing::warn!("some exchanges were still running at the drain deadline and were closed");
    }
    Ok(ExitCode::SUCCESS)
}
