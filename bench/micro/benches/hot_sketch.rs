//! Cost of counting hot targets on a shard: `HotSketch::record` (Misra-Gries, 64 counters) per request, beside
//! exact counting in a `HashMap<Vec<u8>, u64>` (what the sketch avoids: a table that grows with the distinct
//! paths of a window and allocates a key for each new one) and a floor that only reads the path's bytes.
//!
//! Run: `cargo bench -p larder-micro --bench hot_sketch` (optional args: `--rounds N`, `--ops N`).
//! Model: paths like `/files/dir12/file1234.html` (about 30 bytes) drawn by a seeded PCG from a population of
//! 1,000 and of 100,000 paths, Zipf(1.0) (web-like: a few hot paths, then a long tail — many decrement rounds
//! of the sketch) and uniform over 1,000 (every counter busy); draws are precomputed so the RNG is not timed.
//! As on a shard, the window ends (sketch or map emptied, the window built) every 10,000 requests (100 ms at
//! 100,000 requests/s). Each subject runs `rounds` rounds of `ops` requests; the table shows medians, ns per
//! request, of the thread's CPU time (robust on a shared machine) and of wall time.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use larder_server::node::HotSketch;
use larder_workload::{seeded_rng, Zipf};
use rand::Rng;

const SEED: u64 = 0x407_2026;
const DRAWS: usize = 1 << 16;
/// Requests per window (100 ms at 100,000 requests/s).
const WINDOW_REQUESTS: usize = 10_000;

fn path(index: u32) -> Vec<u8> {
    format!("/files/dir{}/file{index}.html", index % 97).into_bytes()
}

/// The precomputed draws of one workload.
struct Stream {
    name: String,
    paths: Vec<Vec<u8>>,
    draws: Vec<u32>,
}

fn stream(population: u32, zipf: bool) -> Stream {
    let mut rng = seeded_rng(SEED ^ u64::from(population) ^ u64::from(zipf));
    let draws = if zipf {
        let law = Zipf::new(u64::from(population), 1.0).expect("valid Zipf");
        (0..DRAWS).map(|_| law.sample(&mut rng) - 1).collect()
    } else {
        (0..DRAWS)
            .map(|_| rng.random_range(0..population))
            .collect()
    };
    Stream {
        name: format!("{}{population}", if zipf { "zipf1.0/" } else { "uniform/" }),
        paths: (0..population).map(path).collect(),
        draws,
    }
}

/// What is timed: one request's path, and the end of a window.
trait Counter {
    fn record(&mut self, path: &[u8]);
    fn end_window(&mut self) -> usize;
}

impl Counter for HotSketch {
    #[inline]
    fn record(&mut self, path: &[u8]) {
        HotSketch::record(self, path);
    }
    fn end_window(&mut self) -> usize {
        self.take_window(100).targets.len()
    }
}

/// Exact counting: the baseline.
#[derive(Default)]
struct Exact(HashMap<Vec<u8>, u64>);

impl Counter for Exact {
    #[inline]
    fn record(&mut self, path: &[u8]) {
        match self.0.get_mut(path) {
            Some(count) => *count += 1,
            None => {
                self.0.insert(path.to_vec(), 1);
            }
        }
    }
    fn end_window(&mut self) -> usize {
        let len = self.0.len();
        self.0.clear();
        len
    }
}

/// The floor: the loop and one read of the path's bytes, nothing counted.
struct Floor;

impl Counter for Floor {
    #[inline]
    fn record(&mut self, path: &[u8]) {
        black_box(path.iter().fold(0u8, |sum, &byte| sum ^ byte));
    }
    fn end_window(&mut self) -> usize {
        0
    }
}

fn thread_cpu_ns() -> u64 {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// One round of `ops` requests: (CPU ns, wall ns) per request.
fn round(counter: &mut dyn Counter, stream: &Stream, ops: usize) -> (f64, f64) {
    let cpu_start = thread_cpu_ns();
    let wall_start = Instant::now();
    for request in 0..ops {
        let draw = stream.draws[request % DRAWS];
        counter.record(&stream.paths[draw as usize]);
        if request % WINDOW_REQUESTS == WINDOW_REQUESTS - 1 {
            black_box(counter.end_window());
        }
    }
    let cpu_ns = (thread_cpu_ns() - cpu_start) as f64 / ops as f64;
    let wall_ns = wall_start.elapsed().as_nanos() as f64 / ops as f64;
    (cpu_ns, wall_ns)
}

/// The middle value (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    let middle = values.len() / 2;
    *values.select_nth_unstable_by(middle, f64::total_cmp).1
}

/// `--rounds N` (default 7) and `--ops N` (default 2^20).
fn options() -> (usize, usize) {
    let (mut rounds, mut ops) = (7, 1 << 20);
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.windows(2) {
        let value = || pair[1].parse().expect("numeric argument");
        match pair[0].as_str() {
            "--rounds" => rounds = value(),
            "--ops" => ops = value(),
            _ => {}
        }
    }
    (rounds, ops)
}

fn main() {
    let (rounds, ops) = options();
    println!("hot_sketch: {rounds} rounds of {ops} requests, window {WINDOW_REQUESTS} requests, seed {SEED:#x}");
    println!(
        "{:<20} {:<10} {:>10} {:>10}",
        "stream", "subject", "cpu ns/req", "wall ns/req"
    );
    for stream in [
        stream(1_000, true),
        stream(100_000, true),
        stream(1_000, false),
    ] {
        let subjects: [(&str, Box<dyn Counter>); 3] = [
            ("sketch", Box::new(HotSketch::new())),
            ("exact-map", Box::<Exact>::default()),
            ("floor", Box::new(Floor)),
        ];
        for (name, mut counter) in subjects {
            let (cpu, wall): (Vec<f64>, Vec<f64>) = (0..rounds)
                .map(|_| round(counter.as_mut(), &stream, ops))
                .unzip();
            println!(
                "{:<20} {:<10} {:>10.1} {:>10.1}",
                stream.name,
                name,
                median(cpu),
                median(wall)
            );
        }
    }
}
