//! Property tests of size distributions: parse/display round trip, samples in range, determinism per seed.

use larder_workload::size::SIZE_BYTES_MAX;
use larder_workload::{seeded_rng, SizeDist};
use proptest::prelude::*;

fn any_dist() -> impl Strategy<Value = SizeDist> {
    prop_oneof![
        (1..=SIZE_BYTES_MAX).prop_map(|bytes| SizeDist::Fixed { bytes }),
        (1..=SIZE_BYTES_MAX, 0..=SIZE_BYTES_MAX).prop_map(|(a, b)| SizeDist::Uniform {
            min_bytes: a.min(b.max(1)),
            max_bytes: a.max(b),
        }),
        (0.0..20.0f64, 0.0..4.0f64).prop_map(|(mu, sigma)| SizeDist::Lognormal { mu, sigma }),
        (0.1..3.0f64, 1.0..1e6f64).prop_map(|(alpha, k_bytes)| SizeDist::Pareto { alpha, k_bytes }),
        Just(SizeDist::Surge),
    ]
}

proptest! {
    #[test]
    fn display_parses_back_and_samples_stay_in_range(dist in any_dist(), seed in any::<u64>()) {
        let parsed: SizeDist = dist.to_string().parse().unwrap();
        prop_assert_eq!(&parsed, &dist);
        let mut a = seeded_rng(seed);
        let mut b = seeded_rng(seed);
        for _ in 0..200 {
            let bytes = dist.sample(&mut a);
            prop_assert!((1..=SIZE_BYTES_MAX).contains(&bytes), "seed {}: {} from {}", seed, bytes, dist);
            prop_assert_eq!(bytes, parsed.sample(&mut b));
        }
    }

    #[test]
    fn arbitrary_strings_parse_or_fail_without_panicking(text in ".{0,60}") {
        let _ = text.parse::<SizeDist>();
    }
}
