//! `larder top`: a live, per-core view of the cluster from the control plane's gRPC API (`larder.v1.Control`:
//! `ListNodes`, `GetNode`, `ListTargets`), or one snapshot for scripts (`--once` as text, `--json`).
//!
//! # Layout
//! | module | owns | I/O |
//! |---|---|---|
//! | [`model`] | samples → rows: rates from counter deltas, counter resets, sorting, node selection | none |
//! | [`view`] | the screen drawn from a snapshot (ratatui widgets), the `--once` text | none |
//! | [`fetch`] | one refresh: the gRPC calls, report times on top's clock | gRPC |
//! | [`live`] | the terminal, the keys, the refresh thread | terminal, thread |
//!
//! # Figures
//! Every figure but p99 comes from the nodes' cumulative counters (requests, busy time, cache hits and misses,
//! handoffs, each container's CPU time), divided over the time between two of a node's reports; so a snapshot
//! needs two samples, and `--once`/`--json` take them [`live::REFRESH_INTERVAL`] apart. p99 is the node's own
//! figure (`ShardLoad.latency_p99_us`, a histogram bucket bound) and shows "-" (JSON `null`) for a core that answered
//! nothing in the node's last report interval.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

mod fetch;
mod live;
mod model;
mod view;

use fetch::Fetcher;
use model::{Model, NodeRow, Snapshot, TargetRow, ViewState};
use view::Screen;

/// Width of the `--once` table when stdout is not a terminal (every column fits in it).
const ONCE_WIDTH_DEFAULT: u16 = 120;

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The control plane's gRPC address (`larder control --listen`, or `larder serve --control`).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50051")]
    control: String,
    /// Show only this node's cores (its id, as `larder ctl list-nodes` shows it); Tab switches to the others.
    #[arg(long, value_name = "ID")]
    node: Option<String>,
    /// Print one snapshot as a table and exit (two samples 1 s apart, for the rates).
    #[arg(long)]
    once: bool,
    /// Print one snapshot as JSON and exit (two samples 1 s apart; unknown figures are null).
    #[arg(long)]
    json: bool,
}

/// The `--json` document.
#[derive(Debug, Serialize)]
struct JsonSnapshot<'a> {
    control: &'a str,
    interval_ms: u128,
    nodes: Vec<&'a NodeRow>,
    targets: &'a [TargetRow],
}

pub fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let mut fetcher =
        Fetcher::connect(&args.control).with_context(|| format!("--control {}", args.control))?;
    let first = fetcher
        .sample()
        .with_context(|| format!("--control {}", args.control))?;
    if let Some(node) = &args.node {
        if !first.nodes.iter().any(|known| known.node_id == *node) {
            let known: Vec<&str> = first
                .nodes
                .iter()
                .map(|known| known.node_id.as_str())
                .collect();
            anyhow::bail!(
                "--node {node:?}: the control plane has no such node (its nodes: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    let view = ViewState {
        node: args.node.clone(),
        ..ViewState::default()
    };
    let mut model = Model::default();
    let snapshot = model.update(&first);
    if !args.once && !args.json {
        live::run(&args.control, fetcher, model, snapshot, view)?;
        return Ok(ExitCode::SUCCESS);
    }
    std::thread::sleep(live::REFRESH_INTERVAL);
    let second = fetcher
        .sample()
        .with_context(|| format!("--control {}", args.control))?;
    let snapshot = model.update(&second);
    if args.json {
        let document = JsonSnapshot {
            control: &args.control,
            interval_ms: live::REFRESH_INTERVAL.as_millis(),
            nodes: snapshot
                .nodes
                .iter()
                .filter(|node| view.node.as_ref().is_none_or(|id| *id == node.node_id))
                .collect(),
            targets: &snapshot.targets,
        };
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        print!("{}", once_text(&args.control, &snapshot, &view));
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--once` table: as wide as the terminal, or [`ONCE_WIDTH_DEFAULT`] into a pipe or file.
fn once_text(control: &str, snapshot: &Snapshot, view: &ViewState) -> String {
    let width = if std::io::stdout().is_terminal() {
        ratatui::crossterm::terminal::size().map_or(ONCE_WIDTH_DEFAULT, |(width, _)| width)
    } else {
        ONCE_WIDTH_DEFAULT
    };
    let screen = Screen {
        control,
        snapshot,
        view,
        status: None,
        keys: false,
    };
    view::text(&screen, width)
}
