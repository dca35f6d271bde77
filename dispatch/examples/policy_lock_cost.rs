//! How much the shared policy mutex costs per request: `select` + `on_start` under the lock, then `on_finish`
//! under it again (what every exchange does), from 1 and from 2 threads at once, LARD/R over 4 back-ends and a
//! Zipf-like stream of 100,000 targets. Prints nanoseconds per request-decision pair.
//!
//! `cargo run --release -p larder-dispatch --example policy_lock_cost`

use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use larder_lard::{PolicyConfig, PolicyKind, ServerId, TargetId};

const DECISIONS_PER_THREAD: u64 = 2_000_000;
const TARGETS: u64 = 100_000;

fn main() {
    for threads in [1usize, 2] {
        let mut policy = larder_lard::build(&PolicyConfig::new(PolicyKind::LardR)).expect("policy");
        for server in 0..4 {
            policy.add_server(ServerId(server), 1).expect("member");
        }
        let policy = Arc::new(Mutex::new(policy));
        let barrier = Arc::new(Barrier::new(threads));
        let origin = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let policy = Arc::clone(&policy);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (thread as u64 + 1);
                    barrier.wait();
                    let start = Instant::now();
                    for step in 0..DECISIONS_PER_THREAD {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        // Roughly Zipf: squaring a uniform draw favours small ranks.
                        let uniform = (state >> 11) as f64 / (1u64 << 53) as f64;
                        let rank = (uniform * uniform * TARGETS as f64) as u64;
                        let target = TargetId::from_path(&format!("/f{rank}"));
                        let now_ms = step / 1000;
                        let server = {
                            let mut policy = policy.lock().unwrap();
                            let server = policy.select(target, now_ms, state).expect("live").server;
                            policy.on_start(server, target, now_ms);
                            server
                        };
                        policy.lock().unwrap().on_finish(server, target, now_ms);
                    }
                    start.elapsed()
                })
            })
            .collect();
        let slowest = workers
            .into_iter()
            .map(|worker| worker.join().expect("worker"))
            .max()
            .unwrap();
        let total = DECISIONS_PER_THREAD * threads as u64;
        println!(
            "{threads} thread(s): {:.0} ns per request (wall / all requests), {:.0} ns per request per thread, {:.2} s",
            slowest.as_nanos() as f64 / total as f64,
            slowest.as_nanos() as f64 / DECISIONS_PER_THREAD as f64,
            origin.elapsed().as_secs_f64()
        );
    }
}
