//! `larder serve`: flags → `ServeConfig` (flags over the TOML file over the defaults) → a running node, its
//! control link and its health listener (`metrics.rs`) → exit 0 after SIGINT/SIGTERM once in-flight responses
//! are finished (`/readyz` answers 503 from the signal on). With `--take-over` it starts on the sockets of a
//! running process instead of binding them, and with `--handover-socket` it offers its own (see `handover`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use larder_server::config::{parse_cache_read, parse_io_driver, parse_policy};
use larder_server::{Node, ServeConfig};

use crate::cores::CoreFlags;
use crate::handover::Handover;
use crate::metrics::{self, ServeProbe, Stopping};
use crate::node_link::{self, ControlMode, NodeLink};
use crate::signals::TerminationSignals;

#[derive(Debug, clap::Args)]
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
    /// TOML file with any setting (README, "Serving"); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
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

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging();
    let config = config_from(&args)?;
    let control = node_link::control_mode(
        args.no_control,
        args.control.as_deref(),
        args.join.as_deref(),
        args.state.clone(),
    )?;
    // Taking over, the old process's listener is adopted below (its port is taken until then).
    let metrics = match args.take_over {
        Some(_) => None,
        None => metrics::bind(
            args.no_metrics,
            args.metrics.as_deref(),
            metrics::SERVE_METRICS_DEFAULT,
        )?,
    };
    // Block SIGINT/SIGTERM before the shard threads start so that they inherit the mask and only this
    // thread receives them (in sigwait below).
    let signals = TerminationSignals::block()?;
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
    let link = match NodeLink::start(control.clone(), &node, &config, handover.control_listener()) {
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
    let signal = signals.wait();
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
