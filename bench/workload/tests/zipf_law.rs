//! Zipf sampling follows the law: per-rank ratios for the top ranks and a chi-square test over 10^6 samples.

use larder_workload::{seeded_rng, Zipf};

const SAMPLES: usize = 1_000_000;

fn counts(zipf: &Zipf, seed: u64) -> Vec<u64> {
    let mut rng = seeded_rng(seed);
    let mut counts = vec![0u64; zipf.n() as usize + 1];
    for _ in 0..SAMPLES {
        counts[zipf.sample(&mut rng) as usize] += 1;
    }
    counts
}

#[test]
fn top_ranks_follow_the_law() {
    for (seed, alpha) in [(1u64, 1.0), (2, 0.8), (3, 1.3)] {
        let zipf = Zipf::new(1_000, alpha).unwrap();
        let counts = counts(&zipf, seed);
        assert_eq!(counts[0], 0, "rank 0 drawn (seed {seed})");
        for rank in 1..=10u32 {
            let expected = zipf.probability(rank) * SAMPLES as f64;
            let ratio = counts[rank as usize] as f64 / expected;
            assert!(
                (0.95..=1.05).contains(&ratio),
                "seed {seed} alpha {alpha} rank {rank}: observed/expected = {ratio:.4}"
            );
        }
    }
}

#[test]
fn chi_square_over_top_100_ranks_and_tail() {
    let seed = 11;
    let zipf = Zipf::new(10_000, 1.0).unwrap();
    let counts = counts(&zipf, seed);
    let mut chi_square = 0.0;
    let mut tail_observed = 0u64;
    let mut tail_probability = 0.0;
    for rank in 1..=zipf.n() {
        if rank <= 100 {
            let expected = zipf.probability(rank) * SAMPLES as f64;
            chi_square += (counts[rank as usize] as f64 - expected).powi(2) / expected;
        } else {
            tail_observed += counts[rank as usize];
            tail_probability += zipf.probability(rank);
        }
    }
    let tail_expected = tail_probability * SAMPLES as f64;
    chi_square += (tail_observed as f64 - tail_expected).powi(2) / tail_expected;
    // 100 degrees of freedom: the 99.9th percentile of chi-square(100) is about 149.
    assert!(
        chi_square < 149.0,
        "seed {seed}: chi-square {chi_square:.1} over 101 bins"
    );
}

#[test]
fn same_seed_same_samples() {
    let zipf = Zipf::new(31_000, 1.02).unwrap();
    let mut a = seeded_rng(77);
    let mut b = seeded_rng(77);
    let left: Vec<u32> = (0..10_000).map(|_| zipf.sample(&mut a)).collect();
    let right: Vec<u32> = (0..10_000).map(|_| zipf.sample(&mut b)).collect();
    assert_eq!(left, right);
}
