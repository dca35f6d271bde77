//! Timer wheel insert+cancel cost against a `BTreeMap<(deadline, seq), T>` baseline, side by side in one run.
//!
//! Run: `cargo bench -p larder-micro --bench timer` (optional args: `--rounds N`, `--ops N`).
//! For each armed population (1k and 1M timers, random deadlines over 60 s at 1 ms resolution) and each access
//! pattern, the subject and the baseline alternate for `rounds` rounds of `ops` operations; the table shows the
//! median ns per insert+cancel pair and the baseline/wheel ratio. Patterns:
//! - `same`: insert a timer and cancel it at once (a timeout disarmed by a fast response);
//! - `fifo`: insert a timer and cancel the oldest armed one (connection timeouts disarmed in arrival order; every
//!   cancel touches memory last used `armed` operations ago, so at 1M this is the cache-miss case).
//!
//! Deadlines come from a seeded PCG, precomputed so the RNG is not timed.

use std::collections::{BTreeMap, VecDeque};
use std::hint::black_box;
use std::time::Instant;

use larder_runtime::timer::{TimerConfig, TimerId, TimerWheel};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

const SEED: u64 = 0x7133_2026;
const SPREAD_NS: u64 = 60_000_000_000;
const DEADLINES: usize = 1 << 16;

#[derive(Clone, Copy, PartialEq)]
enum Pattern {
    Same,
    Fifo,
}

trait Timers {
    type Id: Copy;
    fn insert(&mut self, deadline_ns: u64, value: u64) -> Self::Id;
    fn cancel(&mut self, id: Self::Id) -> Option<u64>;
}

impl Timers for TimerWheel<u64> {
    type Id = TimerId;
    fn insert(&mut self, deadline_ns: u64, value: u64) -> TimerId {
        TimerWheel::insert(self, deadline_ns, value).expect("below timers_max")
    }
    fn cancel(&mut self, id: TimerId) -> Option<u64> {
        TimerWheel::cancel(self, id)
    }
}

#[derive(Default)]
struct BTreeTimers {
    map: BTreeMap<(u64, u64), u64>,
    seq: u64,
}

impl Timers for BTreeTimers {
    type Id = (u64, u64);
    fn insert(&mut self, deadline_ns: u64, value: u64) -> (u64, u64) {
        self.seq += 1;
        let key = (deadline_ns, self.seq);
        self.map.insert(key, value);
        key
    }
    fn cancel(&mut self, id: (u64, u64)) -> Option<u64> {
        self.map.remove(&id)
    }
}

struct Case<T: Timers> {
    timers: T,
    armed: VecDeque<T::Id>,
    cursor: usize,
}

impl<T: Timers> Case<T> {
    fn new(mut timers: T, armed_count: usize, deadlines: &[u64]) -> Self {
        let armed = (0..armed_count)
            .map(|i| timers.insert(deadlines[i % deadlines.len()], i as u64))
            .collect();
        Case {
            timers,
            armed,
            cursor: 0,
        }
    }

    /// ns per insert+cancel pair over `ops` pairs.
    fn run(&mut self, pattern: Pattern, ops: usize, deadlines: &[u64]) -> f64 {
        let start = Instant::now();
        for i in 0..ops {
            self.cursor = (self.cursor + 1) % deadlines.len();
            let id = self.timers.insert(deadlines[self.cursor], i as u64);
            let victim = match pattern {
                Pattern::Same => id,
                Pattern::Fifo => {
                    self.armed.push_back(id);
                    self.armed.pop_front().expect("armed is never empty")
                }
            };
            black_box(self.timers.cancel(victim));
        }
        start.elapsed().as_nanos() as f64 / ops as f64
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("numeric argument"))
        .unwrap_or(default)
}

fn main() {
    let rounds = arg("--rounds", 7);
    let ops = arg("--ops", 1_000_000);
    let mut rng = Pcg64::seed_from_u64(SEED);
    let deadlines: Vec<u64> = (0..DEADLINES)
        .map(|_| rng.random_range(1_000_000..SPREAD_NS))
        .collect();
    println!("timer insert+cancel, median of {rounds} rounds x {ops} ops, seed {SEED:#x}, deadlines over 60 s");
    println!(
        "{:>9} {:>6} {:>12} {:>12} {:>8}",
        "armed", "pattern", "wheel ns/op", "btree ns/op", "ratio"
    );
    for armed in [1_000usize, 1_000_000] {
        for (pattern, label) in [(Pattern::Same, "same"), (Pattern::Fifo, "fifo")] {
            let config = TimerConfig {
                timers_max: 2 * armed + 16,
                ..TimerConfig::default()
            };
            let wheel = TimerWheel::new(config).expect("valid config");
            let mut wheel = Case::new(wheel, armed, &deadlines);
            let mut btree = Case::new(BTreeTimers::default(), armed, &deadlines);
            let (mut wheel_ns, mut btree_ns) = (Vec::new(), Vec::new());
            wheel.run(pattern, ops / 10, &deadlines);
            btree.run(pattern, ops / 10, &deadlines);
            for _ in 0..rounds {
                wheel_ns.push(wheel.run(pattern, ops, &deadlines));
                btree_ns.push(btree.run(pattern, ops, &deadlines));
            }
            let (wheel_ns, btree_ns) = (median(&mut wheel_ns), median(&mut btree_ns));
            println!(
                "{armed:>9} {label:>6} {wheel_ns:>12.1} {btree_ns:>12.1} {:>7.1}x",
                btree_ns / wheel_ns
            );
        }
    }
}
