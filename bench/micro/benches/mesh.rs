//! Mesh round-trip latency between two pinned shards, with the epoll and the io_uring driver, side by side.
//!
//! Run: `cargo bench -p larder-micro --bench mesh` (optional args: `--rounds N` measured round trips per row,
//! default 100,000; `--warmup N`, default 10,000; `--driver epoll|uring` to run one driver only; `--spin-us N` to
//! run one `spin_before_park_us` only — by default each driver runs with 0 (park at once) and the default 50).
//!
//! Shard 0 sends `Ping(i)` to shard 1 with `ShardMesh::send` and awaits the `Pong(i)` with `ShardMesh::recv`;
//! shard 1 answers each ping. Each round trip is timed on shard 0 with `Instant`; the table shows median, p90,
//! p99 and max in microseconds. Both shards park in their driver between messages (eventfd doorbell, no spinning),
//! so this measures the full wake-up path: queue push, eventfd write, driver completion, task wake, queue pop —
//! twice per round trip. Target: median ≤ 20 µs on the 2-core test machines.

use std::time::{Duration, Instant};

use larder_runtime::mesh::SPIN_BEFORE_PARK_US_DEFAULT;
use larder_runtime::{IoDriver, PoolConfig, ShardId, ShardPool, ShardSelection};

#[derive(Debug)]
enum Msg {
    Ping(u64),
    Pong(u64),
}

struct Args {
    rounds: u64,
    warmup: u64,
    drivers: Vec<IoDriver>,
    spin_before_park_us: Vec<u64>,
}

fn parse_args() -> Args {
    let mut args = Args {
        rounds: 100_000,
        warmup: 10_000,
        drivers: vec![IoDriver::Epoll, IoDriver::Uring],
        spin_before_park_us: vec![0, SPIN_BEFORE_PARK_US_DEFAULT],
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| {
            iter.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match arg.as_str() {
            "--rounds" => args.rounds = value("--rounds").parse().expect("--rounds N"),
            "--warmup" => args.warmup = value("--warmup").parse().expect("--warmup N"),
            "--driver" => {
                args.drivers = vec![value("--driver").parse().expect("--driver epoll|uring")]
            }
            "--spin-us" => {
                args.spin_before_park_us = vec![value("--spin-us").parse().expect("--spin-us N")]
            }
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index] as f64 / 1_000.0
}

fn run(driver: IoDriver, spin_before_park_us: u64, warmup: u64, rounds: u64) -> Vec<u64> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut config = PoolConfig {
        shards: ShardSelection::Count(2),
        driver,
        ..PoolConfig::default()
    };
    config.mesh.spin_before_park_us = spin_before_park_us;
    let total = warmup + rounds;
    let pool = ShardPool::<Msg>::start(config, move |ctx| {
        let tx = tx.clone();
        async move {
            let mesh = ctx.mesh();
            if ctx.shard() == ShardId(0) {
                let mut samples_ns = Vec::with_capacity(rounds as usize);
                for i in 0..total {
                    let start = Instant::now();
                    mesh.send(ShardId(1), Msg::Ping(i))
                        .await
                        .expect("shard 1 alive");
                    let reply = mesh.recv().await;
                    let elapsed = start.elapsed();
                    assert!(matches!(reply.message, Msg::Pong(j) if j == i));
                    if i >= warmup {
                        samples_ns.push(elapsed.as_nanos() as u64);
                    }
                }
                tx.send(samples_ns).expect("bench main thread waits");
            } else {
                for _ in 0..total {
                    let Msg::Ping(i) = mesh.recv().await.message else {
                        panic!("shard 1 expects pings")
                    };
                    mesh.send(ShardId(0), Msg::Pong(i))
                        .await
                        .expect("shard 0 alive");
                }
            }
        }
    })
    .expect("pool starts");
    let samples = rx
        .recv_timeout(Duration::from_secs(600))
        .expect("round trips finish");
    pool.shutdown();
    pool.join().expect("pool stops cleanly");
    samples
}

fn main() {
    let args = parse_args();
    println!(
        "mesh round trip, 2 pinned shards, {} rounds after {} warm-up",
        args.rounds, args.warmup
    );
    println!(
        "{:<8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "driver", "spin_us", "median_us", "p90_us", "p99_us", "max_us", "round_trips/s"
    );
    for &driver in &args.drivers {
        for &spin_us in &args.spin_before_park_us {
            let mut samples = run(driver, spin_us, args.warmup, args.rounds);
            samples.sort_unstable();
            let total_ns: u64 = samples.iter().sum();
            println!(
                "{:<8} {:>8} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>14.0}",
                driver.to_string(),
                spin_us,
                percentile(&samples, 0.5),
                percentile(&samples, 0.9),
                percentile(&samples, 0.99),
                percentile(&samples, 1.0),
                samples.len() as f64 / (total_ns as f64 / 1e9),
            );
        }
    }
}
