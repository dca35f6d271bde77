//! Decision cost of every `lard` policy: one `select` + `on_start` + `on_finish`, in ns, with 1k, 100k and
//! 1M distinct targets, beside a stateless `target % n` baseline (the cost of the loop itself).
//!
//! Run: `cargo bench -p larder-micro --bench lard` (optional args: `--rounds N`, `--ops N`, `--servers N`,
//! `--only POLICY`).
//! Model: `servers` equal members (default 16); targets drawn uniformly from the population by a seeded PCG
//! and precomputed (so the RNG is not timed; uniform is the cache-unfriendly case for the 1M-entry LARD
//! table); every request stays in flight until `8 × servers` newer ones have started, so loads are non-zero
//! and LARD's thresholds (25/65) are reached only by skew, as in steady state; the clock advances 1 ms every
//! 1024 requests. LARD tables are filled with every target before timing. Each policy runs `rounds` rounds of
//! `ops` requests; the table shows the median and the fastest round, ns per request.

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

impl Draws {
    fn new(population: u64) -> Draws {
        let mut rng = Pcg64::seed_from_u64(SEED ^ population);
        let targets = (0..DRAWS)
            .map(|_| TargetId(mix(rng.random_range(0..population))))
            .collect();
        let randoms = (0..DRAWS).map(|_| rng.random()).collect();
        Draws { targets, randoms }
    }
}

/// Target ids are hashes of paths: spread the population's indices the same way.
fn mix(index: u64) -> u64 {
    let product = u128::from(index) * 0x9e37_79b9_7f4a_7c15_u128;
    (product as u64) ^ ((product >> 64) as u64)
}

/// One round: `ops` requests; returns ns per request.
fn round(
    chooser: &mut impl Chooser,
    draws: &Draws,
    ops: usize,
    depth: usize,
    step: &mut u64,
) -> f64 {
    let mut in_flight: VecDeque<(ServerId, TargetId)> = VecDeque::with_capacity(depth + 1);
    let started = Instant::now();
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
    for (server, target) in in_flight {
        chooser.on_finish(server, target, *step >> 10);
    }
    elapsed.as_nanos() as f64 / ops as f64
}

fn measure(
    chooser: &mut impl Chooser,
    draws: &Draws,
    rounds: usize,
    ops: usize,
    depth: usize,
) -> (f64, f64) {
    let mut step = 0;
    round(chooser, draws, ops / 10, depth, &mut step);
    let mut ns: Vec<f64> = (0..rounds)
        .map(|_| round(chooser, draws, ops, depth, &mut step))
        .collect();
    ns.sort_by(f64::total_cmp);
    (ns[ns.len() / 2], ns[0])
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
    let ops = arg("--ops", 200_000);
    let servers = arg("--servers", 16);
    let depth = 8 * servers;
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    println!(
        "lard select+on_start+on_finish, {servers} servers, {depth} in flight, median (min) of {rounds} rounds x \
         {ops} ops, seed {SEED:#x}"
    );
    println!(
        "{:>8} {:>9} {:>10} {:>10} {:>10}",
        "policy", "targets", "ns/op", "min ns/op", "x modulo"
    );
    for population in [1_000u64, 100_000, 1_000_000] {
        let draws = Draws::new(population);
        let mut modulo = Modulo {
            servers: servers as u64,
        };
        let (floor_ns, floor_min_ns) = measure(&mut modulo, &draws, rounds, ops, depth);
        println!(
            "{:>8} {population:>9} {floor_ns:>10.1} {floor_min_ns:>10.1} {:>10}",
            "modulo", "1.0"
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
            let (ns, min_ns) = measure(&mut policy, &draws, rounds, ops, depth);
            println!(
                "{:>8} {population:>9} {ns:>10.1} {min_ns:>10.1} {:>10.1}",
                kind.as_str(),
                ns / floor_ns
            );
        }
    }
}
