//! `larder serve`: flags → `ServeConfig` (flags over the TOML file over the defaults) → a running node, its
//! control link and its health listener (`metrics.rs`) → exit 0 after SIGINT/SIGTERM once in-flight responses
//! are finished (`/readyz` answers 503 from the signal on). With `--take-over` it starts on the sockets of a
//! running process instead of binding them, and with `--handover-socket` it offers its own (see `handover`).
//!
//! SIGHUP (and `larder ctl reload-node`) re-reads the file the same way, flags over it, and puts it in force
//! ([`Reloader`], `larder_server::node::NodeSteer::reload`). `--check-config` stops after reading: it prints the
//! effective settings as TOML and exits 0, or prints the error and exits 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use larder_control::{ReloadOutcome, ReloadRefused as AgentReloadRefused};
use larder_server::config::{parse_cache_read, parse_io_driver, parse_policy};
use larder_server::node::{NodeSteer, ReloadError, ReloadReport, SteerError};
use larder_server::{Node, ServeConfig};

use crate::cores::CoreFlags;
use crate::handover::Handover;
use crate::metrics::{self, ServeProbe, Stopping};
use crate::node_link::{self, ControlMode, NodeLink};
use crate::signals::Signals;

#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<String>,
    #[command(flatten)]
    cores: CoreFlags,
    /// I/O driver: auto (io_uring when the kernel allows it, else epoll), uring or epoll [default: auto].
    #[arg(long = "io-driver", value_name = "DRIVER")]
    io_driver: Option<String>,
    /// Cache budget of the whole node in MiB, split across the shards [default: 256].
    #[arg(long = "cache-mb", value_name = "MIB")]
    cache_mb: Option<u64>,
    /// How a cache miss reads its file: direct (one copy: O_DIRECT or dropped from the page cache), drop-cache, or
    /// page-cache (the kernel's page cache stays a second level behind the shard caches) [default: direct].
    #[arg(long = "cache-read", value_name = "MODE")]
    cache_read: Option<String>,
    /// Request distribution across the cores: lard, lard-r, wrr or hash [default: lard].
    #[arg(long, value_name = "POLICY")]
    policy: Option<String>,
    /// TOML file with any setting (README, "Serving"); flags override it. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration (the file and the flags, as serve reads them) and ROOT, print the effective
    /// settings as TOML and exit 0; or print the error and exit 1. Starts nothing.
    #[arg(long = "check-config")]
    check_config: bool,
    /// Do not start the control plane.
    #[arg(long = "no-control")]
    no_control: bool,
    /// Address of the embedded control plane's gRPC endpoint [default: 127.0.0.1:50051; if taken, none runs].
    #[arg(long, value_name = "IP:PORT")]
    control: Option<String>,
    /// Join the control plane at this address (`larder control`; a name is resolved once, at start) instead of
    /// starting one.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["control", "no_control"])]
    join: Option<String>,
    /// The embedded control plane keeps the operator's run-time changes (policy, node weights and drains,
    /// containers) in this file: read at start (they win over this node's configuration; a bad file stops the
    /// start), rewritten atomically after every change, created at the first one.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["join", "no_control"])]
    state: Option<PathBuf>,
    /// Distributed mode: forward each request to the node the control plane assigns its target.
    #[arg(long, conflicts_with = "no_control")]
    cluster: bool,
    /// Offer this process's listening sockets (HTTP and the embedded control plane's) on this Unix socket
    /// path, for a new `larder serve --take-over PATH` to take over; this process then drains and exits 0.
    /// Off by default.
    #[arg(long = "handover-socket", value_name = "PATH")]
    handover_socket: Option<PathBuf>,
    /// Take the listening sockets over from the running `larder serve` started with `--handover-socket PATH`,
    /// serve on them, then tell it to drain and exit (binary upgrade without a refused connection). --listen
    /// must name its address (port 0 adopts any port). If anything fails, the running process keeps serving
    /// and this one exits 2.
    #[arg(long = "take-over", value_name = "PATH")]
    take_over: Option<PathBuf>,
    /// Address of the operations listener (`/metrics`, the status page `/`, `/healthz`, `/readyz`) [default: 127.0.0.1:9180; if taken, none
    /// runs].
    #[arg(long, value_name = "IP:PORT", conflicts_with = "no_metrics")]
    metrics: Option<String>,
    /// Do not start the health and metrics listener.
    #[arg(long = "no-metrics")]
    no_metrics: bool,
    /// Directory to serve [default: .].
    root: Option<PathBuf>,
}

fn config_from(args: &ServeArgs) -> anyhow::Result<ServeConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            ServeConfig::from_toml_str(&text)
                .with_context(|| format!("config file {}", path.display()))?
        }
        None => ServeConfig::default(),
    };
    if let Some(listen) = &args.listen {
        config.listen = listen
            .parse::<SocketAddr>()
            .with_context(|| format!("--listen {listen}: expected IP:PORT"))?;
    }
    if let Some(selection) = args.cores.selection()? {
        config.cores = selection;
    }
    if let Some(driver) = &args.io_driver {
        config.io_driver = parse_io_driver(driver).context("--io-driver")?;
    }
    if let Some(cache_mb) = args.cache_mb {
        config.cache_mb = cache_mb;
    }
    if let Some(read) = &args.cache_read {
        config.cache_read = parse_cache_read(read).context("--cache-read")?;
    }
    if let Some(policy) = &args.policy {
        config.policy = parse_policy(policy).context("--policy")?;
    }
    if let Some(root) = &args.root {
        config.root = root.clone();
    }
    config.cluster = args.cluster;
    config.validate()?;
    Ok(config)
}

fn control_mode_from(args: &ServeArgs) -> anyhow::Result<ControlMode> {
    node_link::control_mode(
        args.no_control,
        args.control.as_deref(),
        args.join.as_deref(),
        args.state.clone(),
    )
}

/// `--check-config`: every check `serve` makes before it binds anything.
fn check_config(args: &ServeArgs) -> anyhow::Result<String> {
    let config = config_from(args)?;
    let control = control_mode_from(args)?;
    // The error names the setting (or ROOT) and the cause already (its source would repeat the cause).
    larder_server::node::preflight(&config).map_err(|error| anyhow::anyhow!("{error}"))?;
    let source = match &args.config {
        Some(path) => format!("{} and the flags", path.display()),
        None => "the defaults and the flags".to_string(),
    };
    let control = match control {
        ControlMode::Off => "none (--no-control)".to_string(),
        ControlMode::Embedded { listen, .. } => format!("embedded on {listen}"),
        ControlMode::Join(addr) => format!("join {addr}"),
    };
    Ok(format!(
        "# larder serve: the configuration is valid (from {source})\n# control plane: {control}; cluster mode: {}\n{}",
        config.cluster,
        config.to_toml()
    ))
}

/// Re-reads the configuration as `serve` read it at start (the file, then the flags) and puts it in force on
/// the running node. Shared by SIGHUP (the main thread) and `larder ctl reload-node` (the node agent's thread).
#[derive(Clone)]
pub struct Reloader {
    args: Arc<ServeArgs>,
    steer: NodeSteer,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadRefused {
    #[error("no --config file: nothing to reload")]
    NoConfigFile,
    /// The file could not be read or is invalid, or the node refused it (the message names the file and the
    /// setting), or a shard's queue did not take it (the message names the shard: reload again).
    #[error("{0}")]
    Invalid(String),
}

impl Reloader {
    /// `ReloadNode`'s reload, for the node agent (`node_link`): the same reload, in the agent's terms.
    fn for_agent(&self) -> node_link::ReloadFn {
        let reloader = self.clone();
        Box::new(move || {
            let report = reloader
                .reload()
                .map_err(|refused| AgentReloadRefused(refused.to_string()))?;
            Ok(ReloadOutcome {
                applied: report.applied,
                kept: report.kept.iter().map(ToString::to_string).collect(),
            })
        })
    }

    /// Reloads and logs the outcome: each kept setting as a warning, a refusal as an error.
    pub fn reload(&self) -> Result<ReloadReport, ReloadRefused> {
        let Some(path) = &self.args.config else {
            tracing::info!("reload: no --config file; nothing to reload");
            return Err(ReloadRefused::NoConfigFile);
        };
        let refused = |error: anyhow::Error| {
            let error = format!("{error:#}");
            tracing::error!(file = %path.display(), %error, "reload refused; the running configuration is unchanged");
            ReloadRefused::Invalid(error)
        };
        let file = config_from(&self.args).map_err(refused)?;
        let report = match self.steer.reload(&file) {
            Ok(report) => report,
            Err(ReloadError::Steer(SteerError::Delivery { shard, reason })) => {
                // Not a bad file: a shard's queue stayed full. Those before it have the new configuration;
                // a reload sends it to every shard again (it is idempotent).
                let error =
                    format!("shard {shard} did not take the reload ({reason}); reload again");
                tracing::error!(file = %path.display(), %error, "reload reached only some shards");
                return Err(ReloadRefused::Invalid(error));
            }
            Err(error) => {
                return Err(refused(
                    anyhow::Error::new(error).context(format!("config file {}", path.display())),
                ))
            }
        };
        for kept in &report.kept {
            tracing::warn!(file = %path.display(), %kept, "reload: setting cannot change on a running node");
        }
        tracing::info!(file = %path.display(), applied = ?report.applied, kept = report.kept.len(), "reload done");
        Ok(report)
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.check_config {
        return Ok(crate::print_check(check_config(&args)));
    }
    crate::init_logging();
    let config = config_from(&args)?;
    let control = control_mode_from(&args)?;
    // Taking over, the old process's listener is adopted below (its port is taken until then).
    let metrics = match args.take_over {
        Some(_) => None,
        None => metrics::bind(
            args.no_metrics,
            args.metrics.as_deref(),
            metrics::SERVE_METRICS_DEFAULT,
        )?,
    };
    // Block SIGINT/SIGTERM/SIGHUP before the shard threads start so that they inherit the mask and only this
    // thread receives them (in sigwait below).
    let signals = Signals::block()?;
    let mut handover = Handover::begin(
        args.take_over.as_deref(),
        args.handover_socket.as_deref(),
        &config,
        control.clone(),
    )?;
    let metrics = match args.take_over {
        Some(_) => match metrics::bind_or_adopt(
            args.no_metrics,
            args.metrics.as_deref(),
            metrics::SERVE_METRICS_DEFAULT,
            handover.metrics_listener(),
        ) {
            Ok(metrics) => metrics,
            Err(error) => {
                handover.abort(&error);
                return Err(error);
            }
        },
        None => metrics,
    };
    let node = match Node::start_on(config.clone(), handover.http_listeners()) {
        Ok(node) => node,
        Err(error) => {
            let error = anyhow::Error::new(error).context("starting the node");
            handover.abort(&error);
            return Err(error);
        }
    };
    println!(
        "larder: serving on http://{} with {} shards",
        node.local_addr(),
        node.shard_count()
    );
    let reloader = Reloader {
        args: Arc::new(args.clone()),
        steer: node.steer(),
    };
    let link = match NodeLink::start(
        control.clone(),
        &node,
        &config,
        handover.control_listener(),
        Some(reloader.for_agent()),
    ) {
        Ok(link) => link,
        Err(error) => {
            let error = error.context("starting the control link");
            handover.abort(&error);
            return Err(drain_after(error, node, None));
        }
    };
    if let Some(addr) = link.control_addr() {
        println!("larder: control plane on {addr}");
    }
    let cluster = match args
        .cluster
        .then(|| crate::cluster_link::ClusterLink::start(control.clone(), &link, &node))
        .transpose()
    {
        Ok(cluster) => cluster,
        Err(error) => {
            handover.abort(&error);
            return Err(drain_after(error, node, Some(link)));
        }
    };
    let metrics_copy = metrics
        .as_ref()
        .and_then(|bound| bound.try_clone_listener().ok());
    let offer = match handover.complete(link.control_listener(), metrics_copy) {
        Ok(offer) => offer,
        Err(error) => {
            if let Some(cluster) = cluster {
                cluster.shutdown();
            }
            return Err(drain_after(error, node, Some(link)));
        }
    };
    let stopping = Stopping::default();
    let probe = ServeProbe {
        shards: node.runtime_stats_handles(),
        node: node.stats_reader(),
        title: format!("larder serve {}", node.local_addr()),
        stopping: stopping.clone(),
        joined: match (&control, link.agent_stats_reader()) {
            (ControlMode::Join(addr), Some(agent)) => Some((agent, *addr)),
            _ => None,
        },
    };
    let metrics = metrics::start(metrics, probe)?;
    let signal = signals.run_until_stopped(|| {
        let _ = reloader.reload();
    });
    // Stop offering first: the offer's duplicates would keep the sockets open behind the drain.
    drop(offer);
    tracing::info!(signal, "shutting down: finishing in-flight responses");
    // /readyz says 503 from here on, while the node drains.
    stopping.set();
    node.shutdown();
    let report = node.join().context("stopping the node")?;
    if !report.fully_drained() {
        tracing::warn!("some connections were still busy at the drain deadline and were closed");
    }
    if let Some(cluster) = cluster {
        cluster.shutdown();
    }
    link.shutdown()?;
    if let Some(metrics) = metrics {
        metrics.shutdown();
    }
    Ok(ExitCode::SUCCESS)
}

/// A start that failed after the node began accepting (on sockets shared with the process taken over from):
/// finish what it accepted before reporting `error`.
fn drain_after(error: anyhow::Error, node: Node, link: Option<NodeLink>) -> anyhow::Error {
    tracing::warn!("start-up failed; finishing the connections already accepted");
    node.shutdown();
    if let Err(join_error) = node.join() {
        tracing::warn!(error = %join_error, "stopping the node");
    }
    if let Some(link) = link {
        let _ = link.shutdown();
    }
    error
}
