//! `larder-bench`: parses flags into a [`RunConfig`], runs, prints. See the library docs for the model.
//!
//! ```text
//! larder-bench http://127.0.0.1:8080/index.html -c 64 --cpus 1 -d 10s [--json]
//! larder-bench http://127.0.0.1:8080/ --files site/files.txt --zipf 0.8 --rate 20000 -d 30s
//! larder-bench http://127.0.0.1:8080/ --replay access.log --speed 10
//! larder-bench http://127.0.0.1:8080/ -d 10s --class gold:host=gold.example:url=/a.html:connections=8 \
//!                                          --class bronze:host=bronze.example:url=/b.html:connections=32
//! larder-bench gen-site DIR --files 10000 --sizes surge --seed 1
//! larder-bench compare --a http://127.0.0.1:8080 --b http://127.0.0.1:8081 --rounds 3 -c 64 -d 10s /4k.html
//! ```

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use larder_loadgen::compare::{compare, Side};
use larder_loadgen::config::{parse_duration, parse_url, ClassSpec, HttpUrl};
use larder_loadgen::cores::CoreList;
use larder_loadgen::inputs::{load_trace, read_file_list};
use larder_loadgen::report::ProgressLine;
use larder_loadgen::{run, ClassConfig, DriverChoice, ProgressSnapshot, RunConfig, WorkloadSpec};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "larder-bench",
    version,
    about = "Thread-per-core HTTP/1.1 load generator",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Write a reproducible test site (files, MANIFEST.tsv and files.txt for --files).
    GenSite(GenSiteArgs),
    /// Measure two servers in alternating rounds (A B B A …) and print medians and the ratio b/a.
    Compare(Box<CompareArgs>),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// URLs (http://host:port/path, one authority); with --files or --replay, one URL giving the server.
    /// Under `compare`: paths such as /index.html (default: the --a/--b URL's path).
    urls: Vec<String>,
    /// Connections (per class unless a class sets its own).
    #[arg(short = 'c', long, default_value_t = 16)]
    connections: usize,
    /// How many generator threads, one per core: `all` (one per physical core) or a count (spread over cores
    /// before hyperthreads) [default: all].
    #[arg(long, value_name = "all|N", conflicts_with = "cpus")]
    cores: Option<String>,
    /// Which CPUs run the generator threads, one each: a CPU list like `1`, `0,2` or `0-3` (instead of --cores).
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    #[arg(long, value_enum, default_value_t = DriverChoice::Auto)]
    driver: DriverChoice,
    /// Measured time, after the warm-up (e.g. 10s, 500ms, 2m).
    #[arg(short = 'd', long)]
    duration: Option<String>,
    /// Stop each class after this many requests.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Time before measuring (requests sent, not recorded).
    #[arg(long, default_value = "0s")]
    warmup: String,
    /// Per response and per connection attempt; 0 disables.
    #[arg(long, default_value = "2s")]
    timeout: String,
    /// Requests in flight per connection (closed loop only).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// One request per connection (sends `Connection: close`).
    #[arg(long)]
    no_keepalive: bool,
    /// Open loop: requests per second (per class), latency measured from each request's intended start.
    #[arg(long)]
    rate: Option<f64>,
    /// File list (one path a line, most popular first), chosen with Zipf popularity.
    #[arg(long)]
    files: Option<PathBuf>,
    /// Zipf exponent for --files.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Seed of the random choices (e.g. the Zipf draws of --files); one seed repeats a run's sequence of requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Replay an access log (Common, Combined, NASA, EPA): its successful GETs in order.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Replay at this multiple of the log's pace (open loop).
    #[arg(long, conflicts_with = "as_fast_as_possible")]
    speed: Option<f64>,
    /// Replay as fast as the connections allow (closed loop; the default for --replay).
    #[arg(long)]
    as_fast_as_possible: bool,
    /// Host header (default: the URL's host:port).
    #[arg(long)]
    host: Option<String>,
    /// Path prefix prepended to every path.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Extra header line, e.g. -H 'Accept: */*' (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// A client class NAME:key=value:… (repeatable); keys host, prefix, url, files, zipf, replay, speed,
    /// connections, pipeline, rate, requests, seed. Unset keys inherit the flags above.
    #[arg(long = "class")]
    classes: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct GenSiteArgs {
    /// Directory to write (created if missing).
    dir: PathBuf,
    /// Number of files.
    #[arg(long, default_value_t = 1000)]
    files: u32,
    /// Size distribution, e.g. `fixed:4096`, `surge`, `lognormal:mu=9.357,sigma=1.318` (see larder-workload).
    #[arg(long, default_value = "surge")]
    sizes: String,
    /// Seed of the sizes and names; the same seed writes the same site.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct CompareArgs {
    /// Server A (http://host:port[/path]).
    #[arg(long)]
    a: String,
    /// Server B.
    #[arg(long)]
    b: String,
    /// Rounds per server.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[command(flatten)]
    run: RunArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::GenSite(args)) => gen_site(&args),
        Some(Command::Compare(args)) => compare_command(&args),
        None => run_command(&cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("larder-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(args: &RunArgs) -> Result<()> {
    let Some(first) = args.urls.first() else {
        bail!("give at least one URL (http://host:port/path)")
    };
    let base = parse_url(first)?;
    let mut paths = Vec::with_capacity(args.urls.len());
    for url in &args.urls {
        let url = parse_url(url)?;
        if url.authority != base.authority {
            bail!(
                "all URLs must name one server: {} and {}",
                base.authority,
                url.authority
            );
        }
        paths.push(url.path);
    }
    let config = build_config(args, &base, paths)?;
    let report = run(&config, progress_printer(args.quiet))?;
    if args.json {
        emit(&format!("{}\n", report.to_json()))
    } else {
        emit(&report.to_text())
    }
}

/// Writes the report to stdout. A reader that went away (`larder-bench … | head`) is not an error worth a panic
/// (what `print!` does on EPIPE): the run is over, so the rest is dropped quietly.
fn emit(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(error).context("writing the report to stdout"))
        }
        _ => Ok(()),
    }
}

fn compare_command(args: &CompareArgs) -> Result<()> {
    let (url_a, url_b) = (parse_url(&args.a)?, parse_url(&args.b)?);
    for path in &args.run.urls {
        if !path.starts_with('/') {
            bail!("under compare, give paths such as /index.html, not {path:?}");
        }
    }
    let paths = |url: &HttpUrl| {
        if args.run.urls.is_empty() {
            vec![url.path.clone()]
        } else {
            args.run.urls.clone()
        }
    };
    let config_a = build_config(&args.run, &url_a, paths(&url_a))?;
    let config_b = build_config(&args.run, &url_b, paths(&url_b))?;
    let quiet = args.run.quiet;
    let comparison = compare(
        &config_a,
        &config_b,
        args.rounds,
        progress_printer(true),
        |side, round, report| {
            if !quiet {
                let name = if side == Side::A { &args.a } else { &args.b };
                let total = &report.total;
                eprintln!(
                    "round {} {side:?} {name}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {}",
                    round + 1,
                    total.requests_per_sec,
                    total.latency_ms.p50,
                    total.latency_ms.p99,
                    total.errors
                );
            }
        },
    )?;
    if args.run.json {
        emit(&format!("{}\n", comparison.to_json()))?;
    } else {
        emit(&comparison.to_text(&url_a.authority, &url_b.authority))?;
    }
    Ok(())
}

fn progress_printer(quiet: bool) -> impl FnMut(ProgressSnapshot) {
    let mut line = ProgressLine::default();
    move |snapshot: ProgressSnapshot| {
        let text = line.next(snapshot);
        if !quiet {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
    }
}

/// The top-level workload from the flags; `paths` are the URLs' paths.
fn base_workload(args: &RunArgs, paths: Vec<String>) -> Result<WorkloadSpec> {
    if let Some(list) = &args.files {
        let paths = read_file_list(list)?;
        return Ok(WorkloadSpec::Files {
            paths,
            alpha: args.zipf,
        });
    }
    if let Some(log) = &args.replay {
        return load_replay(log, args.speed);
    }
    Ok(WorkloadSpec::Urls(paths))
}

fn load_replay(log: &std::path::Path, speed: Option<f64>) -> Result<WorkloadSpec> {
    let file =
        std::fs::File::open(log).with_context(|| format!("cannot open {}", log.display()))?;
    let trace = load_trace(log, std::io::BufReader::new(file), speed)?;
    eprintln!(
        "replay {}: {} lines, {} parsed, {} malformed, {} left out (not a successful GET)",
        log.display(),
        trace.stats.lines,
        trace.stats.parsed,
        trace.stats.malformed,
        trace.dropped
    );
    Ok(trace.workload)
}

fn build_config(args: &RunArgs, base: &HttpUrl, paths: Vec<String>) -> Result<RunConfig> {
    let cores = CoreList::select(args.cores.as_deref(), args.cpus.as_deref())?;
    let workload = base_workload(args, paths)?;
    let default_class = ClassConfig {
        name: "default".into(),
        workload,
        connections: args.connections,
        pipeline: args.pipeline,
        rate_per_sec: args.rate,
        requests_max: args.requests,
        seed: args.seed,
        host: args.host.clone().unwrap_or_else(|| base.authority.clone()),
        prefix: args.prefix.clone(),
    };
    let classes = if args.classes.is_empty() {
        vec![default_class]
    } else {
        let mut classes = Vec::with_capacity(args.classes.len());
        for spec in &args.classes {
            classes.push(class_from_spec(
                &ClassSpec::parse(spec)?,
                &default_class,
                args,
            )?);
        }
        classes
    };
    let config = RunConfig {
        address: base.address,
        cores,
        driver: args.driver,
        classes,
        duration: args.duration.as_deref().map(parse_duration).transpose()?,
        warmup: parse_duration(&args.warmup)?,
        timeout: parse_duration(&args.timeout)?,
        keepalive: !args.no_keepalive,
        headers: args.headers.clone(),
    };
    config.validate()?;
    Ok(config)
}

fn class_from_spec(
    spec: &ClassSpec,
    defaults: &ClassConfig,
    args: &RunArgs,
) -> Result<ClassConfig> {
    let workload = if !spec.urls.is_empty() {
        WorkloadSpec::Urls(spec.urls.clone())
    } else if let Some(list) = &spec.files {
        WorkloadSpec::Files {
            paths: read_file_list(list.as_ref())?,
            alpha: spec.zipf.unwrap_or(args.zipf),
        }
    } else if let Some(log) = &spec.replay {
        load_replay(log.as_ref(), spec.speed.or(args.speed))?
    } else {
        match (&defaults.workload, spec.zipf) {
            (WorkloadSpec::Files { paths, .. }, Some(alpha)) => WorkloadSpec::Files {
                paths: paths.clone(),
                alpha,
            },
            (workload, _) => workload.clone(),
        }
    };
    Ok(ClassConfig {
        name: spec.name.clone(),
        workload,
        connections: spec.connections.unwrap_or(defaults.connections),
        pipeline: spec.pipeline.unwrap_or(defaults.pipeline),
        rate_per_sec: spec.rate.or(defaults.rate_per_sec),
        requests_max: spec.requests.or(defaults.requests_max),
        seed: spec.seed.unwrap_or(defaults.seed),
        host: spec.host.clone().unwrap_or_else(|| defaults.host.clone()),
        prefix: spec
            .prefix
            .clone()
            .unwrap_or_else(|| defaults.prefix.clone()),
    })
}

fn gen_site(args: &GenSiteArgs) -> Result<()> {
    let sizes: larder_workload::SizeDist = args
        .sizes
        .parse()
        .map_err(|e| anyhow::anyhow!("--sizes: {e}"))?;
    let manifest = larder_workload::site::generate(&args.dir, args.files, &sizes, args.seed)?;
    let list = args.dir.join("files.txt");
    let mut text = String::with_capacity(manifest.files.len() * 20);
    for file in &manifest.files {
        text.push('/');
        text.push_str(file.path.trim_start_matches('/'));
        text.push('\n');
    }
    std::fs::write(&list, text).with_context(|| format!("cannot write {}", list.display()))?;
    let mut sizes: Vec<u64> = manifest.files.iter().map(|f| f.size_bytes).collect();
    sizes.sort_unstable();
    let at = |q: f64| {
        sizes
            .get(((sizes.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}: {} files, {} bytes; sizes min {} p50 {} p90 {} max {}; seed {}",
        args.dir.display(),
        sizes.len(),
        manifest.total_bytes(),
        at(0.0),
        at(0.5),
        at(0.9),
        at(1.0),
        args.seed
    );
    println!(
        "file list (popularity order, for --files): {}",
        list.display()
    );
    Ok(())
}
