//! Seeded workload choice is deterministic; histograms merge exactly; trace splitting covers a trace once.

use larder_loadgen::histogram::LatencyHistogram;
use larder_loadgen::source::{derive_seed, Chooser, ClassSource, Schedule};
use larder_workload::{seeded_rng, Zipf};
use proptest::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sequence(chooser: Chooser, seed: u64, count: usize) -> Vec<u32> {
    let mut source = ClassSource::new(chooser, Schedule::Closed, seeded_rng(seed), None, None);
    let now = Instant::now();
    (0..count)
        .map_while(|_| source.next(now))
        .map(|item| item.request.0)
        .collect()
}

#[test]
fn uniform_and_zipf_choices_repeat_for_a_seed_and_differ_across_seeds() {
    let zipf = Arc::new(Zipf::new(1000, 0.9).unwrap());
    for chooser in [Chooser::Uniform { count: 1000 }, Chooser::Zipf(zipf)] {
        for seed in [1, 2, 0xdead_beef] {
            let first = sequence(chooser.clone(), seed, 500);
            let again = sequence(chooser.clone(), seed, 500);
            assert_eq!(first, again, "seed {seed}: same seed, different choices");
            assert_eq!(first.len(), 500);
            assert!(
                first.iter().all(|&i| i < 1000),
                "seed {seed}: index out of range"
            );
            let other = sequence(chooser.clone(), seed + 1, 500);
            assert_ne!(
                first,
                other,
                "seeds {seed} and {} gave the same choices",
                seed + 1
            );
        }
    }
}

#[test]
fn zipf_choice_favours_rank_one() {
    let zipf = Arc::new(Zipf::new(100, 1.0).unwrap());
    let choices = sequence(Chooser::Zipf(zipf.clone()), 7, 100_000);
    let top = choices.iter().filter(|&&i| i == 0).count() as f64 / choices.len() as f64;
    let expected = zipf.probability(1);
    assert!(
        (top - expected).abs() < 0.01,
        "rank 1 share {top:.4}, law says {expected:.4} (seed 7)"
    );
}

#[test]
fn derived_seeds_differ_per_class_and_thread() {
    let seeds: Vec<u64> = (0..4)
        .flat_map(|class| (0..8).map(move |thread| derive_seed(42, class, thread)))
        .collect();
    let mut unique = seeds.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        seeds.len(),
        "derived seeds collide: {seeds:?}"
    );
}

#[test]
fn trace_split_over_threads_covers_each_position_once() {
    let order: Arc<[u32]> = (0..103u32).map(|i| i % 10).collect();
    let threads = 3;
    let mut seen = Vec::new();
    for thread in 0..threads {
        let chooser = Chooser::Sequence {
            order: order.clone(),
            next: thread,
            stride: threads,
        };
        let got = sequence(chooser, 1, 1000);
        let expected: Vec<u32> = (thread..order.len())
            .step_by(threads)
            .map(|p| order[p])
            .collect();
        assert_eq!(got, expected, "thread {thread}");
        seen.extend(got);
    }
    assert_eq!(seen.len(), order.len());
}

#[test]
fn open_loop_schedule_is_fixed_and_respects_deadline_and_budget() {
    let first = Instant::now();
    let deadline = first + Duration::from_millis(10);
    let schedule = Schedule::Rate {
        first,
        interval_ns: 1e6,
        sent: 0,
    };
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(8));
    let mut source = ClassSource::new(
        Chooser::Uniform { count: 3 },
        schedule,
        seeded_rng(3),
        Some(deadline),
        Some(budget),
    );
    // Ask long after the due times: due times stay on the schedule (no coordinated omission).
    let late = first + Duration::from_secs(5);
    let dues: Vec<Duration> = std::iter::from_fn(|| source.next(late))
        .map(|item| item.due.unwrap() - first)
        .collect();
    let expected: Vec<Duration> = (0..8).map(Duration::from_millis).collect();
    assert_eq!(
        dues, expected,
        "budget of 8 stops the schedule before the 10 ms deadline"
    );
    assert_eq!(source.next(late), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn histograms_merge_exactly(values in prop::collection::vec(1u64..120_000_000_000, 1..2000), parts in 1usize..6) {
        let mut single = LatencyHistogram::new();
        let mut pieces: Vec<LatencyHistogram> = (0..parts).map(|_| LatencyHistogram::new()).collect();
        for (i, &value) in values.iter().enumerate() {
            single.record_ns(value);
            pieces[i % parts].record_ns(value);
        }
        let mut merged = LatencyHistogram::new();
        for piece in &pieces {
            merged.merge(piece);
        }
        prop_assert_eq!(merged.count(), values.len() as u64);
        prop_assert!(merged.same_counts(&single));
        for quantile in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            prop_assert_eq!(merged.quantile_ns(quantile), single.quantile_ns(quantile));
        }
        prop_assert_eq!(merged.summary(), single.summary());
    }
}
