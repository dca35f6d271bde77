//! `larder-sim`: sweep policies × node counts over a preset workload or a replayed log; print a table, write CSV
//! and SVG. See the `larder_sim` crate docs for the model.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use larder_lard::{LardParams, PolicyConfig, PolicyKind};
use larder_sim::{
    chart, draw_sequence, report, run, CostModel, Outstanding, RequestSource, SimConfig, SimResult,
    NODES_MAX, NODE_COUNTS_MAX,
};
use larder_workload::{Preset, Trace, Workload};

/// Trace-driven cluster simulator for LARD and its peers (cost model of Pai et al., ASPLOS '98).
#[derive(Parser, Debug)]
#[command(name = "larder-sim", version)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["preset", "trace"])))]
struct Args {
    /// Synthetic workload matching a published trace: rice or ibm.
    #[arg(long)]
    preset: Option<String>,
    /// Access log to replay (Common, Combined, NASA or EPA format); successful GETs only.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Node counts to simulate.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    nodes: Vec<u32>,
    /// Policies: wrr, lc, ch, ch-bl, lard, lard-r.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "wrr,lc,ch,ch-bl,lard,lard-r"
    )]
    policies: Vec<String>,
    /// Cache per node, MiB.
    #[arg(long, default_value_t = 32)]
    cache_mb: u64,
    /// Seed of the request stream and of the policies' random input.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests per run (a trace is cut to this length).
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Warm-up requests not measured (default: 20% of the requests).
    #[arg(long)]
    warmup: Option<u64>,
    /// Requests in flight; default LARD's admission bound (n-1)·T_high + T_low - 1.
    #[arg(long)]
    outstanding: Option<u32>,
    /// Write the results as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write throughput against nodes as SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
    #[arg(long, default_value_t = 25)]
    t_low: u32,
    #[arg(long, default_value_t = 65)]
    t_high: u32,
    /// LARD/R set-shrink period, ms.
    #[arg(long, default_value_t = 20_000)]
    k_ms: u64,
    #[arg(long, default_value_t = 145)]
    cpu_connection_us: u64,
    /// CPU per 512 bytes sent.
    #[arg(long, default_value_t = 40)]
    cpu_per_512_bytes_us: u64,
    /// Disk access (seeks + rotation) per read.
    #[arg(long, default_value_t = 28_000)]
    disk_access_us: u64,
    /// Disk transfer per 4 KiB.
    #[arg(long, default_value_t = 410)]
    disk_per_4k_us: u64,
    /// Extra seek per 44 KiB beyond the first 44 KiB.
    #[arg(long, default_value_t = 14_000)]
    disk_extra_seek_us: u64,
}

enum Source {
    Workload(Workload),
    Trace(Trace),
}

fn main() -> ExitCode {
    match run_cli(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("larder-sim: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(args: Args) -> Result<()> {
    if args.nodes.is_empty() || args.nodes.len() > NODE_COUNTS_MAX {
        bail!("--nodes takes 1 to {NODE_COUNTS_MAX} node counts");
    }
    if let Some(bad) = args.nodes.iter().find(|&&n| n == 0 || n > NODES_MAX) {
        bail!("--nodes: {bad} is outside 1..={NODES_MAX}");
    }
    let policies: Vec<PolicyKind> = args
        .policies
        .iter()
        .map(|name| name.trim().parse::<PolicyKind>())
        .collect::<Result<_, _>>()?;
    let (source, title) = match (&args.preset, &args.trace) {
        (Some(name), None) => {
            let preset: Preset = name.parse()?;
            (
                Source::Workload(Workload::preset(preset)),
                format!("preset {preset}"),
            )
        }
        (None, Some(path)) => {
            let trace = Trace::from_path(path)?;
            eprintln!(
                "trace {}: {} lines, {} parsed, {} malformed, {} not successful GETs; {} requests to {} targets",
                path.display(),
                trace.stats.lines,
                trace.stats.parsed,
                trace.stats.malformed,
                trace.dropped,
                trace.requests.len(),
                trace.targets.len()
            );
            if trace.requests.is_empty() {
                bail!("trace {} has no successful GET requests", path.display());
            }
            (Source::Trace(trace), format!("trace {}", path.display()))
        }
        _ => bail!("give exactly one of --preset or --trace"),
    };
    // A preset's request stream is drawn once and replayed by every run: all runs see the same requests and the
    // sampling cost is paid once a sweep.
    let drawn;
    let request_source = match &source {
        Source::Workload(workload) => {
            drawn = draw_sequence(workload, args.requests, args.seed)?;
            RequestSource::Sequence {
                targets: workload.targets(),
                requests: &drawn,
            }
        }
        Source::Trace(trace) => RequestSource::Sequence {
            targets: &trace.targets,
            requests: &trace.requests,
        },
    };
    let requests = match &source {
        Source::Workload(_) => args.requests,
        Source::Trace(trace) => args.requests.min(trace.requests.len() as u64),
    };
    let warmup = args.warmup.unwrap_or(requests / 5);
    let cost = CostModel {
        cpu_connection_us: args.cpu_connection_us,
        cpu_per_block_us: args.cpu_per_512_bytes_us,
        disk_access_us: args.disk_access_us,
        disk_per_block_us: args.disk_per_4k_us,
        disk_extra_seek_us: args.disk_extra_seek_us,
        ..CostModel::default()
    };
    let lard = LardParams {
        t_low: args.t_low,
        t_high: args.t_high,
        k_ms: args.k_ms,
    };
    let cache_bytes = args
        .cache_mb
        .checked_mul(1 << 20)
        .context("--cache-mb is too large")?;

    let total = policies.len() * args.nodes.len();
    let mut results: Vec<SimResult> = Vec::with_capacity(total);
    println!(
        "{:<8} {:>5} {:>12} {:>9} {:>9} {:>9} {:>11}",
        "policy", "nodes", "throughput", "hit_ratio", "cpu_mean", "disk_mean", "outstanding"
    );
    for &kind in &policies {
        for &nodes in &args.nodes {
            let config = SimConfig {
                nodes,
                policy: PolicyConfig {
                    lard,
                    ..PolicyConfig::new(kind)
                },
                cost,
                cache_bytes,
                requests,
                warmup_requests: warmup,
                outstanding: args
                    .outstanding
                    .map_or(Outstanding::AdmissionBound, Outstanding::Fixed),
                seed: args.seed,
            };
            let started = Instant::now();
            let result =
                run(&config, request_source).with_context(|| format!("{kind} on {nodes} nodes"))?;
            let wall_s = started.elapsed().as_secs_f64();
            eprintln!(
                "[{}/{}] {kind} nodes={nodes}: {:.0} req/s simulated, hit ratio {:.3}; {:.2} s wall, {:.2} M simulated requests/s",
                results.len() + 1,
                total,
                result.throughput_rps,
                result.hit_ratio,
                wall_s,
                requests as f64 / wall_s / 1e6
            );
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            println!(
                "{:<8} {:>5} {:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>11}",
                result.policy,
                nodes,
                result.throughput_rps,
                result.hit_ratio,
                mean(&result.cpu_util),
                mean(&result.disk_util),
                result.outstanding
            );
            results.push(result);
        }
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, report::to_csv(&results))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let title = format!("larder-sim: {title}, {} MiB cache a node", args.cache_mb);
        chart::write_svg(path, &title, &results)?;
    }
    Ok(())
}
