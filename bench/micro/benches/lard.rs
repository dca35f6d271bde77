//! Decision cost of every `lard` policy: one `select` + `on_start` + `on_finish`, in ns, with 1k, 100k and
//! 1M distinct targets, beside a stateless `target % n` baseline (the cost of the loop itself).
//!
//! Run: `cargo bench -p larder-micro --bench lard` (optional args: `--rounds N`, `--ops N`, `--servers N`,
//! `--only POLICY`).
//! Model: `servers` equal members (default 16); targets drawn from the population by a seeded PCG, uniformly
//! (the cache-unfriendly case for a 1M-entry LARD table) and Zipf(1.0) (web-like: hot targets stay in
//! cache), precomputed so the RNG is not timed; every request stays in flight until `8 × servers` newer
//! ones have started, so loads are non-zero and LARD's thresholds (25/65) are reached only by skew, as in
//! steady state; the clock advances 1 ms every 1024 requests. LARD tables are filled with every target before timing. Each policy runs `rounds` rounds of
//! `ops` requests; the table shows medians, ns per request, of the thread's CPU time (robust on a shared
//! machine) and of wall time.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

use larder_lard::{build, Policy, PolicyConfig, PolicyKind, ServerId, TargetId};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

const SEED: u64 = 0x1a7d_2026;
const DRAWS: usize = 1 << 16;

/// The stateless floor: no table, no loads.
struct Modulo {
    servers: u64,
}

trait Chooser {
    fn select(&mut self, target: TargetId, now_ms: u64, random: u64) -> ServerId;
    fn on_start(&mut self, server: ServerId, target: TargetId, now_ms: u64);
    fn on_finish(&mut self, server: ServerId, target: TargetId, now_ms: u64);
}

impl Chooser for Box<dyn Policy> {
    #[inline]
    fn select(&mut self, target: TargetId, now_ms: u64, random: u64) -> ServerId {
        Policy::select(self.as_mut(), target, now_ms, random)
            .expect("live members")
            .server
    }
    #[inline]
    fn on_start(&mut self, server: ServerId, target: TargetId, now_ms: u64) {
        Policy::on_start(self.as_mut(), server, target, now_ms);
    }
    #[inline]
    fn on_finish(&mut self, server: ServerId, target: TargetId, now_ms: u64) {
        Policy::on_finish(self.as_mut(), server, target, now_ms);
    }
}

impl Chooser for Modulo {
    #[inline]
    fn select(&mut self, target: TargetId, _now_ms: u64, _random: u64) -> ServerId {
        ServerId((target.0 % self.servers) as u32)
    }
    #[inline]
    fn on_start(&mut self, server: ServerId, _target: TargetId, _now_ms: u64) {
        black_box(server);
    }
    #[inline]
    fn on_finish(&mut self, server: ServerId, _target: TargetId, _now_ms: u64) {
        black_box(server);
    }
}

/// Precomputed request stream: (target, random) pairs.
struct Draws {
    targets: Vec<TargetId>,
    randoms: Vec<u64>,
}

/// How often each target is requested.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Popularity {
    /// Every target equally often: the cache-unfriendly worst case for the target table.
    Uniform,
    /// The target of rank r (from 1) with probability proportional to 1 / r^alpha, as web traces.
    Zipf(f64),
}

impl Popularity {
    fn label(self) -> String {
        match self {
            Popularity::Uniform => "uniform".to_string(),
            Popularity::Zipf(alpha) => format!("zipf{alpha}"),
        }
    }
}

impl Draws {
    fn new(population: u64, popularity: Popularity) -> Draws {
        let mut rng = Pcg64::seed_from_u64(SEED ^ population);
        let cdf: Vec<f64> = match popularity {
            Popularity::Uniform => Vec::new(),
            Popularity::Zipf(alpha) => {
                let mut sum = 0.0;
                (1..=population)
                    .map(|rank| {
                        sum += 1.0 / (rank as f64).powf(alpha);
                        sum
                    })
                    .collect()
            }
        };
        let rank = |rng: &mut Pcg64| match popularity {
            Popularity::Uniform => rng.random_range(0..population),
            Popularity::Zipf(_) => {
                let total = cdf.last().copied().unwrap_or(0.0);
                let point = rng.random::<f64>() * total;
                (cdf.partition_point(|c| *c < point) as u64).min(population - 1)
            }
        };
        let targets = (0..DRAWS).map(|_| TargetId(mix(rank(&mut rng)))).collect();
        let randoms = (0..DRAWS).map(|_| rng.random()).collect();
        Draws { targets, randoms }
    }
}

/// Target ids are hashes of paths: spread the population's indices the same way.
fn mix(index: u64) -> u64 {
    let product = u128::from(index) * 0x9e37_79b9_7f4a_7c15_u128;
    (product as u64) ^ ((product >> 64) as u64)
}

/// CPU time of this thread in ns: unlike wall time, it excludes the time the thread waits for a core, which on
/// a shared 2-core machine can be most of it.
fn thread_cpu_ns() -> u64 {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// Per-request cost of one round, ns.
#[derive(Clone, Copy)]
struct Cost {
    wall_ns: f64,
    cpu_ns: f64,
}

/// One round: `ops` requests.
fn round(
    chooser: &mut impl Chooser,
    draws: &Draws,
    ops: usize,
    depth: usize,
    step: &mut u64,
) -> Cost {
    let mut in_flight: VecDeque<(ServerId, TargetId)> = VecDeque::with_capacity(depth + 1);
    let started = Instant::now();
    let started_cpu_ns = thread_cpu_ns();
    for _ in 0..ops {
        let i = (*step as usize) % DRAWS;
        let now_ms = *step >> 10;
        *step += 1;
        let target = draws.targets[i];
        let server = chooser.select(target, now_ms, draws.randoms[i]);
        chooser.on_start(server, target, now_ms);
        in_flight.push_back((server, target));
        if in_flight.len() > depth {
            let (server, target) = in_flight.pop_front().expect("non-empty");
            chooser.on_finish(server, target, now_ms);
        }
    }
    let elapsed = started.elapsed();
    let cpu_ns = thread_cpu_ns() - started_cpu_ns;
    for (server, target) in in_flight {
        chooser.on_finish(server, target, *step >> 10);
    }
    Cost {
        wall_ns: elapsed.as_nanos() as f64 / ops as f64,
        cpu_ns: cpu_ns as f64 / ops as f64,
    }
}

/// Median wall and CPU ns per request over `rounds` rounds, after a warm-up round.
fn measure(
    chooser: &mut impl Chooser,
    draws: &Draws,
    rounds: usize,
    ops: usize,
    depth: usize,
) -> Cost {
    let mut step = 0;
    round(chooser, draws, ops / 10, depth, &mut step);
    let costs: Vec<Cost> = (0..rounds)
        .map(|_| round(chooser, draws, ops, depth, &mut step))
        .collect();
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    Cost {
        wall_ns: median(costs.iter().map(|cost| cost.wall_ns).collect()),
        cpu_ns: median(costs.iter().map(|cost| cost.cpu_ns).collect()),
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let rounds = arg("--rounds", 5);
    let ops = arg("--ops", 100_000);
    let servers = arg("--servers", 16);
    let depth = 8 * servers;
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    println!(
        "lard select+on_start+on_finish, {servers} servers, {depth} in flight, median of {rounds} rounds x \
         {ops} ops, seed {SEED:#x}; cpu = thread CPU time, wall = elapsed"
    );
    println!(
        "{:>8} {:>9} {:>8} {:>10} {:>10} {:>10}",
        "policy", "targets", "draws", "cpu ns/op", "wall ns/op", "cpu x mod"
    );
    let cases = [1_000u64, 100_000, 1_000_000]
        .into_iter()
        .flat_map(|population| {
            [
                (population, Popularity::Uniform),
                (population, Popularity::Zipf(1.0)),
            ]
        });
    for (population, popularity) in cases {
        let draws = Draws::new(population, popularity);
        let label = popularity.label();
        let mut modulo = Modulo {
            servers: servers as u64,
        };
        let floor = measure(&mut modulo, &draws, rounds, ops, depth);
        println!(
            "{:>8} {population:>9} {label:>8} {:>10.1} {:>10.1} {:>10}",
            "modulo", floor.cpu_ns, floor.wall_ns, "1.0"
        );
        for kind in PolicyKind::ALL
            .into_iter()
            .filter(|kind| only.is_none_or(|only| only == kind.as_str()))
        {
            let mut policy = build(&PolicyConfig::new(kind)).expect("default config is valid");
            for id in 0..servers {
                policy
                    .add_server(ServerId(id as u32), 1)
                    .expect("within limits");
            }
            for index in 0..population {
                let target = TargetId(mix(index));
                let server = Chooser::select(&mut policy, target, 0, index);
                black_box(server);
            }
            let cost = measure(&mut policy, &draws, rounds, ops, depth);
            println!(
                "{:>8} {population:>9} {label:>8} {:>10.1} {:>10.1} {:>10.1}",
                kind.as_str(),
                cost.cpu_ns,
                cost.wall_ns,
                cost.cpu_ns / floor.cpu_ns
            );
        }
    }
}
