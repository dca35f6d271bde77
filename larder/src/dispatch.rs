//! `larder dispatch`: flags → `DispatchConfig` → a running front-end (and, with `--control`, its control-plane
//! link, `dispatch_link.rs`) → exit 0 after SIGINT/SIGTERM once the exchanges in flight are finished.
//!
//! Back-ends come from `--backend` flags, from the control plane (`--control` without `--backend`), or both
//! (`--backend` with `--control`: only those back-ends, steered by the control plane). With neither flag the
//! command fails naming both. `--no-control` ignores the control plane.
//!
//! `--config FILE` holds the same settings as the flags (not the control-plane link's); flags override it.
//! SIGHUP re-reads both ([`reload`]); `--check-config` prints the effective settings as TOML (exit 0) or the
//! error (exit 1).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use larder_dispatch::{DispatchConfig, DispatchHandle, Dispatcher};
use larder_lard::{PolicyConfig, PolicyKind};
use larder_runtime::ShardSelection;
use serde::{Deserialize, Serialize};

use crate::cores::CoreFlags;
use crate::dispatch_link::{self, BackendSource, DispatchLink, LinkConfig};
use crate::metrics::{self, DispatchProbe, Stopping};
use crate::signals::Signals;

#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// Address to listen on (not `larder serve`'s 8080, so both run on one machine) [default: 127.0.0.1:8000].
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<String>,
    /// A back-end HTTP/1.1 server, IP:PORT (repeat the flag for each back-end; the flags replace the file's
    /// list). Optional with --control: the control plane's nodes are then the back-ends.
    #[arg(long = "backend", value_name = "IP:PORT")]
    backends: Vec<String>,
    /// Distribution policy: lard-r, lard, wrr, lc, ch or ch-bl [default: lard-r].
    #[arg(long)]
    policy: Option<String>,
    #[command(flatten)]
    cores: CoreFlags,
    /// I/O driver: auto (io_uring when the kernel allows it, else epoll), uring or epoll [default: auto].
    #[arg(long = "io-driver", value_name = "DRIVER")]
    io_driver: Option<String>,
    /// Path of the active health check of each back-end (`GET <path>`; any status below 500 is alive)
    /// [default: /].
    #[arg(long = "health-path", value_name = "PATH")]
    health_path: Option<String>,
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
    /// TOML file with the settings above (`listen`, `backends = ["IP:PORT", ...]`, `policy`, `cores` or `cpus`,
    /// `io_driver`, `health_path`, `pending_max`); flags override it. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the settings (the file and the flags, as dispatch reads them), print them as TOML and exit 0; or
    /// print the error and exit 1. Starts nothing.
    #[arg(long = "check-config")]
    check_config: bool,
    /// Do not contact a control plane (back-ends only from --backend or the file).
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

/// The settings `--config` may hold (and `--check-config` prints), each optional; the flags' names with `_`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct DispatchFile {
    listen: Option<String>,
    backends: Option<Vec<String>>,
    policy: Option<String>,
    cores: Option<String>,
    cpus: Option<String>,
    io_driver: Option<String>,
    health_path: Option<String>,
    pending_max: Option<u32>,
}

impl DispatchFile {
    /// The flags, in the file's terms.
    fn from_flags(args: &DispatchArgs) -> DispatchFile {
        DispatchFile {
            listen: args.listen.clone(),
            backends: (!args.backends.is_empty()).then(|| args.backends.clone()),
            policy: args.policy.clone(),
            cores: args.cores.cores().map(str::to_string),
            cpus: args.cores.cpus().map(str::to_string),
            io_driver: args.io_driver.clone(),
            health_path: args.health_path.clone(),
            pending_max: args.pending_max,
        }
    }

    /// Every setting of `config` (what `--check-config` prints; it reads back to the same settings).
    fn from_config(config: &DispatchConfig) -> DispatchFile {
        let (cores, cpus) = config.cores.to_settings();
        DispatchFile {
            listen: Some(config.listen.to_string()),
            backends: Some(config.backends.iter().map(ToString::to_string).collect()),
            policy: Some(config.policy.kind.as_str().to_string()),
            cores,
            cpus,
            io_driver: Some(config.io_driver.to_string()),
            health_path: Some(config.health_path.clone()),
            pending_max: Some(config.pending_per_backend_max),
        }
    }

    /// Writes the settings present over `config`; `source` names them in errors: "--" for the flags, the
    /// file's "NAME =" otherwise.
    fn apply(self, config: &mut DispatchConfig, flags: bool) -> anyhow::Result<()> {
        let name = |setting: &str| {
            if flags {
                format!("--{}", setting.replace('_', "-"))
            } else {
                format!("{setting} =")
            }
        };
        if let Some(listen) = self.listen {
            config.listen = listen
                .parse()
                .with_context(|| format!("{} {listen}: expected IP:PORT", name("listen")))?;
        }
        if let Some(backends) = self.backends {
            config.backends = backends
                .iter()
                .map(|backend| {
                    backend.parse().with_context(|| {
                        format!(
                            "{} {backend}: expected IP:PORT",
                            name(if flags { "backend" } else { "backends" })
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(policy) = self.policy {
            config.policy = PolicyConfig::new(
                policy
                    .parse::<PolicyKind>()
                    .with_context(|| format!("{} {policy}", name("policy")))?,
            );
        }
        let setting = if self.cpus.is_some() { "cpus" } else { "cores" };
        if let Some(selection) =
            ShardSelection::from_settings(self.cores.as_deref(), self.cpus.as_deref())
                .with_context(|| name(setting))?
        {
            config.cores = selection;
        }
        if let Some(driver) = self.io_driver {
            config.io_driver = driver.parse().with_context(|| name("io_driver"))?;
        }
        if let Some(path) = self.health_path {
            config.health_path = path;
        }
        if let Some(pending_max) = self.pending_max {
            config.pending_per_backend_max = pending_max;
        }
        Ok(())
    }
}

/// The control-plane link the flags ask for, if any; `backends`: the back-ends the file and flags give.
fn link_config(args: &DispatchArgs, backends: &[SocketAddr]) -> anyhow::Result<Option<LinkConfig>> {
    let control = match (&args.control, args.no_control) {
        (Some(control), false) => control,
        _ if backends.is_empty() => anyhow::bail!(
            "no back-ends: give --backend IP:PORT (one or more), backends in --config, or --control HOST:PORT (the control plane's nodes)"
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
    let source = if backends.is_empty() {
        BackendSource::Discover
    } else {
        BackendSource::Explicit
    };
    let mut config = LinkConfig::new(control.clone(), source);
    config.token = args.token.clone();
    config.interval_ms = args.control_interval_ms;
    Ok(Some(config))
}

/// The defaults, then the file, then the flags; validated.
fn config_from(args: &DispatchArgs) -> anyhow::Result<DispatchConfig> {
    let mut config = DispatchConfig::default();
    if let Some(path) = &args.config {
        let file: DispatchFile = crate::read_toml_file(path)?;
        file.apply(&mut config, false)
            .with_context(|| format!("config file {}", path.display()))?;
    }
    DispatchFile::from_flags(args).apply(&mut config, true)?;
    config.validate()?;
    Ok(config)
}

/// `--check-config`: every check `dispatch` makes before it binds anything.
fn check_config(args: &DispatchArgs) -> anyhow::Result<String> {
    let config = config_from(args)?;
    let link = link_config(args, &config.backends)?;
    let source = match &args.config {
        Some(path) => format!("{} and the flags", path.display()),
        None => "the defaults and the flags".to_string(),
    };
    let control = match &link {
        Some(link) => format!("{} ({:?} back-ends)", link.control, link.source),
        None => "none".to_string(),
    };
    let text =
        toml::to_string(&DispatchFile::from_config(&config)).context("printing the settings")?;
    Ok(format!(
        "# larder dispatch: the configuration is valid (from {source})\n# control plane: {control}\n{text}"
    ))
}

/// SIGHUP: re-reads the file and the flags and applies what changed. Without a control-plane link the policy
/// (its kind) and the back-ends are live: the policy first (only it can be refused), then removed back-ends
/// (their requests in flight finish), then added ones (in slow start). With a link the control plane steers
/// both, so they are kept; `listen`, `cores`, `io_driver`, `health_path` and `pending_max` are always kept.
fn reload(
    args: &DispatchArgs,
    running: &mut DispatchConfig,
    handle: &DispatchHandle,
    linked: bool,
) {
    let Some(path) = &args.config else {
        tracing::info!("reload: no --config file; nothing to reload");
        return;
    };
    let file = match config_from(args) {
        Ok(file) => file,
        Err(error) => {
            tracing::error!(file = %path.display(), error = %format!("{error:#}"), "reload refused; the running settings are unchanged");
            return;
        }
    };
    let mut kept = vec![
        ("listen", file.listen != running.listen),
        ("cores", file.cores != running.cores),
        ("io_driver", file.io_driver != running.io_driver),
        ("health_path", file.health_path != running.health_path),
        (
            "pending_max",
            file.pending_per_backend_max != running.pending_per_backend_max,
        ),
    ];
    let mut applied = Vec::new();
    let policy_changed = file.policy.kind != running.policy.kind;
    let backends_changed = file.backends != running.backends;
    if linked {
        kept.push(("policy (steered by the control plane)", policy_changed));
        kept.push(("backends (steered by the control plane)", backends_changed));
    } else {
        if policy_changed {
            if let Err(error) = handle.set_policy(file.policy.clone()) {
                tracing::error!(file = %path.display(), %error, "reload refused; the running settings are unchanged");
                return;
            }
            running.policy = file.policy.clone();
            applied.push("policy".to_string());
        }
        for addr in running
            .backends
            .iter()
            .filter(|addr| !file.backends.contains(addr))
        {
            let removed = handle
                .backend_by_addr(*addr)
                .map(|backend| handle.remove_backend(backend));
            match removed {
                Some(Ok(())) | None => applied.push(format!("backends: removed {addr}")),
                Some(Err(error)) => {
                    tracing::error!(file = %path.display(), %addr, %error, "reload: back-end not removed")
                }
            }
        }
        for addr in file
            .backends
            .iter()
            .filter(|addr| !running.backends.contains(addr))
        {
            match handle.add_backend(*addr, 1) {
                Ok(_) => applied.push(format!("backends: added {addr}")),
                Err(error) => {
                    tracing::error!(file = %path.display(), %addr, %error, "reload: back-end not added")
                }
            }
        }
        running.backends = file.backends.clone();
    }
    for (setting, _) in kept.iter().filter(|(_, changed)| *changed) {
        tracing::warn!(file = %path.display(), setting, "reload: setting cannot change on a running dispatcher; kept");
    }
    tracing::info!(file = %path.display(), ?applied, "reload done");
}

pub fn run(args: DispatchArgs) -> anyhow::Result<ExitCode> {
    if args.check_config {
        return Ok(crate::print_check(check_config(&args)));
    }
    crate::init_logging();
    let config = config_from(&args)?;
    let link_config = link_config(&args, &config.backends)?;
    let mut running = config.clone();
    let linked = link_config.is_some();
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
    let signals = Signals::block()?;
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
    let handle = dispatcher.handle();
    let signal = signals.run_until_stopped(|| reload(&args, &mut running, &handle, linked));
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
