//! The shape of the LARD paper's result on a small, fast configuration: with caches much smaller than the working
//! set, LARD's hit ratio rises with the node count (the working set is split) while WRR's stays flat (every node
//! caches the same hot set), and LARD's throughput pulls far ahead of WRR's.

use larder_lard::{PolicyConfig, PolicyKind};
use larder_sim::{draw_sequence, run, CostModel, Outstanding, RequestSource, SimConfig, SimResult};
use larder_workload::workload::SyntheticSpec;
use larder_workload::{SizeDist, Trace, Workload};

const SEED: u64 = 5;
const REQUESTS: u64 = 60_000;

fn workload() -> Workload {
    Workload::synthetic(&SyntheticSpec {
        targets: 4_000,
        alpha: 1.0,
        sizes: SizeDist::Lognormal {
            mu: 10.0,
            sigma: 1.318,
        },
        size_rank_correlation: 0.35,
        total_bytes: Some(100_000_000),
        seed: SEED,
    })
    .unwrap()
}

fn config(kind: PolicyKind, nodes: u32) -> SimConfig {
    SimConfig {
        nodes,
        policy: PolicyConfig::new(kind),
        cost: CostModel::default(),
        cache_bytes: 4 << 20,
        requests: REQUESTS,
        warmup_requests: REQUESTS / 5,
        outstanding: Outstanding::AdmissionBound,
        seed: SEED,
    }
}

fn simulate(workload: &Workload, requests: &[u32], kind: PolicyKind, nodes: u32) -> SimResult {
    let source = RequestSource::Sequence {
        targets: workload.targets(),
        requests,
    };
    let result = run(&config(kind, nodes), source).unwrap();
    for u in result.cpu_util.iter().chain(&result.disk_util) {
        assert!(
            (0.0..=1.0).contains(u),
            "seed {SEED}: utilisation {u} out of range in {result:?}"
        );
    }
    assert!(
        result.requests_measured > REQUESTS / 2,
        "seed {SEED}: {result:?}"
    );
    result
}

#[test]
fn lard_splits_the_working_set_and_beats_wrr() {
    let workload = workload();
    let requests = draw_sequence(&workload, REQUESTS, SEED).unwrap();
    let wrr_1 = simulate(&workload, &requests, PolicyKind::Wrr, 1);
    let wrr_8 = simulate(&workload, &requests, PolicyKind::Wrr, 8);
    let lard_1 = simulate(&workload, &requests, PolicyKind::Lard, 1);
    let lard_8 = simulate(&workload, &requests, PolicyKind::Lard, 8);
    let lard_r_8 = simulate(&workload, &requests, PolicyKind::LardR, 8);
    let summary = format!(
        "seed {SEED}: wrr {:.0}/{:.3} -> {:.0}/{:.3}; lard {:.0}/{:.3} -> {:.0}/{:.3}; lard-r 8: {:.0}/{:.3}",
        wrr_1.throughput_rps,
        wrr_1.hit_ratio,
        wrr_8.throughput_rps,
        wrr_8.hit_ratio,
        lard_1.throughput_rps,
        lard_1.hit_ratio,
        lard_8.throughput_rps,
        lard_8.hit_ratio,
        lard_r_8.throughput_rps,
        lard_r_8.hit_ratio
    );
    println!("{summary}");
    assert!(
        (wrr_8.hit_ratio - wrr_1.hit_ratio).abs() < 0.03,
        "WRR hit ratio not flat: {summary}"
    );
    assert!(
        lard_8.hit_ratio > lard_1.hit_ratio + 0.05,
        "LARD hit ratio does not rise: {summary}"
    );
    assert!(
        lard_8.throughput_rps >= 2.0 * wrr_8.throughput_rps,
        "LARD < 2x WRR: {summary}"
    );
    assert!(
        lard_r_8.throughput_rps >= 2.0 * wrr_8.throughput_rps,
        "LARD/R < 2x WRR: {summary}"
    );
    // One node: every policy sends everything to the same place.
    assert_eq!(wrr_1.throughput_rps, lard_1.throughput_rps, "{summary}");
}

#[test]
fn same_seed_same_result_and_workload_source_equals_its_drawn_sequence() {
    let workload = workload();
    let requests = draw_sequence(&workload, REQUESTS, SEED).unwrap();
    for kind in PolicyKind::ALL {
        let a = simulate(&workload, &requests, kind, 4);
        let b = simulate(&workload, &requests, kind, 4);
        assert_eq!(a, b, "{kind}: not deterministic (seed {SEED})");
        let sampled = run(&config(kind, 4), RequestSource::Workload(&workload)).unwrap();
        assert_eq!(
            a, sampled,
            "{kind}: sampled stream differs from the drawn one (seed {SEED})"
        );
    }
}

#[test]
fn replays_a_parsed_log() {
    let mut log = String::new();
    for i in 0..2_000u32 {
        let path = i * 7 % 50;
        log.push_str(&format!(
            "h - - [01/Jul/1995:00:{:02}:{:02} -0400] \"GET /f{path}.html HTTP/1.0\" 200 {}\n",
            i / 60 % 60,
            i % 60,
            1000 + path * 100
        ));
    }
    log.push_str("garbage line\n");
    let trace = Trace::from_reader(log.as_bytes(), std::path::Path::new("inline.log")).unwrap();
    assert_eq!(trace.stats.malformed, 1);
    assert_eq!(trace.requests.len(), 2_000);
    let source = RequestSource::Sequence {
        targets: &trace.targets,
        requests: &trace.requests,
    };
    let result = run(
        &SimConfig {
            requests: 2_000,
            warmup_requests: 500,
            ..config(PolicyKind::Lard, 2)
        },
        source,
    )
    .unwrap();
    // 50 targets of at most 6 KB fit in 4 MiB: after warm-up everything hits.
    assert_eq!(result.hit_ratio, 1.0, "{result:?}");
    assert!(result.throughput_rps > 0.0);
}

#[test]
fn bad_configs_are_errors() {
    let workload = workload();
    let source = RequestSource::Workload(&workload);
    assert!(run(&config(PolicyKind::Lard, 0), source).is_err());
    let warmup_too_long = SimConfig {
        warmup_requests: REQUESTS,
        ..config(PolicyKind::Lard, 2)
    };
    assert!(run(&warmup_too_long, source).is_err());
    let no_clients = SimConfig {
        outstanding: Outstanding::Fixed(0),
        ..config(PolicyKind::Lard, 2)
    };
    assert!(run(&no_clients, source).is_err());
}
