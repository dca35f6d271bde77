//! `larder control`: a standalone control plane for a cluster. Nodes join it with
//! `larder serve --join ADDR`; operators use `larder ctl` or grpcurl.
//!
//! Settings come from the defaults, then `--config FILE` (TOML, the same names as the flags: `listen`, `token`,
//! `report_interval_ms`, `down_after_intervals`, `policy`), then the flags. SIGHUP re-reads the file and the
//! flags the same way ([`reload`]): a changed `policy` (its kind) and `token` apply live; `listen`,
//! `report_interval_ms` and `down_after_intervals` are kept and named in the log. A bad file changes nothing.
//!
//! With `--state FILE` the operator's run-time changes survive a restart (`larder_control::persist`); the file's
//! policy wins over `--policy` and the config file's, which are only the policy of a cluster with no saved one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use larder_control::{ControlConfig, ControlHandle, ControlPlane};
use larder_lard::{PolicyConfig, PolicyKind};
use serde::Deserialize;

use crate::metrics::{self, ControlProbe, Stopping};
use crate::signals::Signals;

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Address to serve gRPC on (larder.v1.Control, larder.v1.NodeService, reflection, health)
    /// [default: 127.0.0.1:50051].
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<String>,
    /// Bearer token required for changes; without one, changes are accepted only from loopback.
    #[arg(long)]
    token: Option<String>,
    /// How often nodes report their load, in milliseconds [default: 100].
    #[arg(long)]
    report_interval_ms: Option<u64>,
    /// A node silent for this many report intervals is marked down [default: 5].
    #[arg(long)]
    down_after_intervals: Option<u32>,
    /// Initial policy: wrr, lc (least connections), ch (consistent hashing), ch-bl (with bounded loads), lard,
    /// lard-r [default: lard]. A policy saved in the --state file (a run-time change) wins over it.
    #[arg(long)]
    policy: Option<String>,
    /// TOML file with any of the settings above (same names, `_` for `-`); flags override it. SIGHUP re-reads
    /// it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
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

/// The settings of `larder control`: defaults, then the file, then the flags.
#[derive(Clone, Debug, PartialEq)]
struct ControlSettings {
    listen: SocketAddr,
    token: Option<String>,
    report_interval_ms: u64,
    down_after_intervals: u32,
    policy: PolicyKind,
}

impl Default for ControlSettings {
    fn default() -> ControlSettings {
        ControlSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            token: None,
            report_interval_ms: 100,
            down_after_intervals: 5,
            policy: PolicyKind::Lard,
        }
    }
}

/// The file's settings, each optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlFile {
    listen: Option<String>,
    token: Option<String>,
    report_interval_ms: Option<u64>,
    down_after_intervals: Option<u32>,
    policy: Option<String>,
}

fn parse_listen(text: &str, setting: &str) -> anyhow::Result<SocketAddr> {
    text.parse()
        .with_context(|| format!("{setting} {text}: expected IP:PORT"))
}

fn parse_policy(text: &str, setting: &str) -> anyhow::Result<PolicyKind> {
    PolicyKind::from_str(text).with_context(|| format!("{setting} {text}"))
}

fn settings_from(args: &ControlArgs) -> anyhow::Result<ControlSettings> {
    let mut settings = ControlSettings::default();
    let mut apply = |file: ControlFile, listen: &str, policy: &str| -> anyhow::Result<()> {
        if let Some(text) = file.listen {
            settings.listen = parse_listen(&text, listen)?;
        }
        if let Some(text) = file.policy {
            settings.policy = parse_policy(&text, policy)?;
        }
        settings.token = file.token.or(settings.token.take());
        settings.report_interval_ms = file
            .report_interval_ms
            .unwrap_or(settings.report_interval_ms);
        settings.down_after_intervals = file
            .down_after_intervals
            .unwrap_or(settings.down_after_intervals);
        Ok(())
    };
    if let Some(path) = &args.config {
        let file: ControlFile = crate::read_toml_file(path)?;
        apply(file, "listen =", "policy =")
            .with_context(|| format!("config file {}", path.display()))?;
    }
    let flags = ControlFile {
        listen: args.listen.clone(),
        token: args.token.clone(),
        report_interval_ms: args.report_interval_ms,
        down_after_intervals: args.down_after_intervals,
        policy: args.policy.clone(),
    };
    apply(flags, "--listen", "--policy")?;
    Ok(settings)
}

/// SIGHUP: re-reads the settings and applies what changed and can change live (module docs). The policy goes
/// first, since only it can be refused; then nothing is half-applied.
fn reload(args: &ControlArgs, running: &mut ControlSettings, plane: &ControlHandle) {
    let Some(path) = &args.config else {
        tracing::info!("reload: no --config file; nothing to reload");
        return;
    };
    let file = match settings_from(args) {
        Ok(file) => file,
        Err(error) => {
            tracing::error!(file = %path.display(), error = %format!("{error:#}"), "reload refused; the running settings are unchanged");
            return;
        }
    };
    let kept = [
        ("listen", file.listen != running.listen),
        (
            "report_interval_ms",
            file.report_interval_ms != running.report_interval_ms,
        ),
        (
            "down_after_intervals",
            file.down_after_intervals != running.down_after_intervals,
        ),
    ];
    let mut applied = Vec::new();
    if file.policy != running.policy {
        if let Err(error) = plane.set_policy_kind(file.policy) {
            tracing::error!(file = %path.display(), %error, "reload refused; the running settings are unchanged");
            return;
        }
        running.policy = file.policy;
        applied.push("policy");
    }
    if file.token != running.token {
        plane.set_token(file.token.clone());
        running.token = file.token;
        applied.push("token");
    }
    for (setting, _) in kept.iter().filter(|(_, changed)| *changed) {
        tracing::warn!(file = %path.display(), setting, "reload: setting cannot change on a running control plane; kept");
    }
    tracing::info!(file = %path.display(), ?applied, "reload done");
}

pub fn run(args: ControlArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging();
    let mut running = settings_from(&args)?;
    let mut config = ControlConfig::new(running.listen);
    config.token = running.token.clone();
    config.report_interval = Duration::from_millis(running.report_interval_ms);
    config.down_after_intervals = running.down_after_intervals;
    config.policy = PolicyConfig::new(running.policy);
    config.state_file = args.state.clone();
    let metrics = metrics::bind(
        args.no_metrics,
        args.metrics.as_deref(),
        metrics::CONTROL_METRICS_DEFAULT,
    )?;
    let signals = Signals::block()?;
    let plane = ControlPlane::spawn(config).context("starting the control plane")?;
    println!("larder control: listening on {}", plane.local_addr());
    let stopping = Stopping::default();
    let probe = ControlProbe {
        stats: plane.stats_reader(),
        stopping: stopping.clone(),
        title: format!("larder control {}", plane.local_addr()),
    };
    let metrics = metrics::start(metrics, probe)?;
    let signal = signals.run_until_stopped(|| reload(&args, &mut running, &plane));
    tracing::info!(signal, "stopping the control plane");
    stopping.set();
    plane.shutdown().context("stopping the control plane")?;
    if let Some(metrics) = metrics {
        metrics.shutdown();
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>) -> ControlArgs {
        ControlArgs {
            listen: None,
            token: None,
            report_interval_ms: None,
            down_after_intervals: None,
            policy: None,
            config,
            state: None,
            metrics: None,
            no_metrics: false,
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:6000\"\npolicy = \"wrr\"\ntoken = \"file\"\nreport_interval_ms = 50\n",
        )
        .expect("write");
        assert_eq!(
            settings_from(&args(None)).expect("defaults"),
            ControlSettings::default()
        );
        let mut with_flags = args(Some(path.clone()));
        with_flags.policy = Some("ch".to_string());
        with_flags.token = Some("flag".to_string());
        let settings = settings_from(&with_flags).expect("valid");
        assert_eq!(
            settings,
            ControlSettings {
                listen: "127.0.0.1:6000".parse().expect("address"),
                token: Some("flag".to_string()),
                report_interval_ms: 50,
                down_after_intervals: 5,
                policy: PolicyKind::ConsistentHash,
            }
        );
        std::fs::write(&path, "policy = \"fastest\"\n").expect("write");
        let error = format!(
            "{:#}",
            settings_from(&args(Some(path.clone()))).expect_err("bad policy")
        );
        assert!(
            error.contains("control.toml") && error.contains("policy = fastest"),
            "{error}"
        );
        std::fs::write(&path, "polcy = \"wrr\"\n").expect("write");
        let error = format!(
            "{:#}",
            settings_from(&args(Some(path))).expect_err("unknown key")
        );
        assert!(error.contains("polcy"), "{error}");
    }
}
