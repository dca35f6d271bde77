//! `larder`: the one binary. It parses flags, hands each subcommand its own
//! module, and turns the outcome into an exit code. All real work lives in the
//! library crates (`larder-server`, `larder-control`, `larder-runtime`, `larder-lard`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cluster_link;
mod control;
mod cores;
mod ctl;
mod ctl_profile;
mod dispatch;
mod dispatch_link;
mod handover;
mod metrics;
mod node_link;
mod serve;
mod signals;
mod top;

#[derive(Debug, Parser)]
#[command(
    name = "larder",
    version,
    about = "Thread-per-core cluster web server (LARD, resource containers, single-copy caching)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a directory over HTTP/1.1 on the selected cores.
    Serve(serve::ServeArgs),
    /// Run a standalone control plane for a cluster.
    Control(control::ControlArgs),
    /// Query and steer a control plane.
    Ctl(ctl::CtlArgs),
    /// Run a content-aware front-end dispatcher.
    Dispatch(dispatch::DispatchArgs),
    /// A live per-core view of the cluster (or one snapshot with --once / --json).
    Top(top::TopArgs),
}

/// The log of the long-running commands (`serve`, `control`, `dispatch`): to stderr, so stdout keeps only what
/// the command prints on purpose (its addresses); level from `RUST_LOG`, `info` by default; colours only on a
/// terminal (a file or journald gets plain text). `ctl` logs nothing.
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Reads a TOML settings file (`--config` of `control` and `dispatch`) into `T`; errors name the file (and,
/// from the parser, the line and the key).
pub(crate) fn read_toml_file<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> anyhow::Result<T> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// The end of `--check-config` (`serve`, `dispatch`): the effective settings on stdout and exit 0, or the
/// error on stderr and exit 1.
pub(crate) fn print_check(checked: anyhow::Result<String>) -> ExitCode {
    match checked {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("larder: configuration error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Control(args) => control::run(args),
        Command::Ctl(args) => ctl::run(args),
        Command::Dispatch(args) => dispatch::run(args),
        Command::Top(args) => top::run(args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("larder: error: {error:#}");
            ExitCode::from(2)
        }
    }
}
