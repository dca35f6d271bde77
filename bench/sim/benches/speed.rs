//! Simulator speed: simulated requests per wall second for LARD (and WRR as the baseline beside it) on 8 nodes
//! over the rice preset, 32 MiB caches, 1M requests a run; median of 5 runs.
//! Run: `cargo bench -p larder-sim --bench speed` (target: >= 1M simulated requests/s for LARD).
//! Two request sources: a pre-drawn sequence (what a `larder-sim` sweep uses) and sampling during the run.

use std::time::Instant;

use larder_lard::{PolicyConfig, PolicyKind};
use larder_sim::{draw_sequence, run, CostModel, Outstanding, RequestSource, SimConfig};
use larder_workload::{Preset, Workload};

const REQUESTS: u64 = 1_000_000;
const RUNS: usize = 5;
const SEED: u64 = 1;

fn median_rate(config: &SimConfig, source: RequestSource<'_>) -> f64 {
    let mut rates: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let result = run(config, source).expect("valid configuration");
            let rate = REQUESTS as f64 / started.elapsed().as_secs_f64();
            assert!(result.requests_measured > 0);
            rate
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[RUNS / 2]
}

fn main() {
    let workload = Workload::preset(Preset::Rice);
    let requests = draw_sequence(&workload, REQUESTS, SEED).expect("within the limit");
    for kind in [PolicyKind::Lard, PolicyKind::Wrr] {
        let config = SimConfig {
            nodes: 8,
            policy: PolicyConfig::new(kind),
            cost: CostModel::default(),
            cache_bytes: 32 << 20,
            requests: REQUESTS,
            warmup_requests: REQUESTS / 5,
            outstanding: Outstanding::AdmissionBound,
            seed: SEED,
        };
        let sequence = RequestSource::Sequence {
            targets: workload.targets(),
            requests: &requests,
        };
        let drawn = median_rate(&config, sequence);
        let sampled = median_rate(&config, RequestSource::Workload(&workload));
        println!(
            "sim-speed {kind:<6} nodes=8 rice: {:.2} M simulated requests/s (pre-drawn sequence), {:.2} M/s (sampled during the run); median of {RUNS}",
            drawn / 1e6,
            sampled / 1e6
        );
    }
}
