//! Zipf popularity: rank `r` in `1..=n` is drawn with probability `r^-alpha / H(n, alpha)`.
//!
//! Sampling is exact inverse-CDF: [`Zipf::new`] precomputes the cumulative table and a guide table (Chen & Asau's
//! cutpoint method: `guide[k]` = first rank whose CDF exceeds `k / n`), 12 bytes a rank, so 120 MB at the limit
//! [`Zipf::RANKS_MAX`] of 10 million ranks. [`Zipf::sample`] takes one uniform draw `u`, jumps to
//! `guide[floor(u * n)]` and binary-searches only up to the next cutpoint: the same rank a full binary search
//! gives, in expected `O(1)` probes, deterministic given the RNG.

use rand::Rng;

/// Errors from building a [`Zipf`] law.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ZipfError {
    #[error("zipf needs at least one rank (n = 0)")]
    NoRanks,
    #[error("zipf rank count {n} exceeds the limit {max}")]
    TooManyRanks { n: u64, max: u32 },
    #[error("zipf exponent alpha must be finite and >= 0, got {alpha}")]
    BadAlpha { alpha: f64 },
}

/// A Zipf law over ranks `1..=n` with exponent `alpha` (0 = uniform).
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u32,
    alpha: f64,
    /// `cdf[i]` = P(rank <= i + 1); the last entry is exactly 1.0.
    cdf: Vec<f64>,
    /// `guide[k]` = number of CDF entries `<= k / n`, for `k` in `0..=n`.
    guide: Vec<u32>,
}

impl Zipf {
    /// The largest number of ranks a law may have (bounds the table at 80 MB).
    pub const RANKS_MAX: u32 = 10_000_000;

    /// Builds the law and its cumulative table.
    pub fn new(n: u64, alpha: f64) -> Result<Self, ZipfError> {
        if n == 0 {
            return Err(ZipfError::NoRanks);
        }
        if n > u64::from(Self::RANKS_MAX) {
            return Err(ZipfError::TooManyRanks {
                n,
                max: Self::RANKS_MAX,
            });
        }
        if !alpha.is_finite() || alpha < 0.0 {
            return Err(ZipfError::BadAlpha { alpha });
        }
        let n = n as u32;
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0f64;
        for rank in 1..=n {
            sum += f64::from(rank).powf(-alpha);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        *cdf.last_mut().expect("n >= 1") = 1.0;
        let mut guide = Vec::with_capacity(n as usize + 1);
        let mut index = 0usize;
        for k in 0..=n {
            let cut = f64::from(k) / f64::from(n);
            while index < cdf.len() && cdf[index] <= cut {
                index += 1;
            }
            guide.push(index as u32);
        }
        Ok(Self {
            n,
            alpha,
            cdf,
            guide,
        })
    }

    /// Number of ranks.
    pub fn n(&self) -> u32 {
        self.n
    }

    /// The exponent.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Probability of `rank` (1-based); 0 outside `1..=n`.
    pub fn probability(&self, rank: u32) -> f64 {
        match rank {
            0 => 0.0,
            1 => self.cdf[0],
            r if r <= self.n => self.cdf[r as usize - 1] - self.cdf[r as usize - 2],
            _ => 0.0,
        }
    }

    /// Draws a rank in `1..=n`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        self.rank_for_uniform(rng.random::<f64>())
    }

    /// The rank whose CDF interval holds `u` in `[0, 1)`: the inverse CDF.
    pub fn rank_for_uniform(&self, u: f64) -> u32 {
        let n = self.n as usize;
        // The answer lies in [guide[k], guide[k + 1]]: every CDF entry <= k/n <= u comes before it, and
        // cdf[guide[k + 1]] > (k + 1)/n > u.
        let k = ((u * n as f64) as usize).min(n - 1);
        // cdf[n-1] = 1 > k/n, so low <= n - 1; guide is non-decreasing, so low <= high.
        let low = self.guide[k] as usize;
        let high = (self.guide[k + 1] as usize).min(n - 1);
        let index = low + self.cdf[low..=high].partition_point(|&c| c <= u);
        // u < 1.0 = cdf[n-1], so index <= n - 1; min() guards a caller passing u >= 1.
        index.min(n - 1) as u32 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_parameters() {
        assert_eq!(Zipf::new(0, 1.0).unwrap_err(), ZipfError::NoRanks);
        assert!(matches!(
            Zipf::new(u64::from(Zipf::RANKS_MAX) + 1, 1.0),
            Err(ZipfError::TooManyRanks { .. })
        ));
        assert!(matches!(
            Zipf::new(10, -1.0),
            Err(ZipfError::BadAlpha { .. })
        ));
        assert!(matches!(
            Zipf::new(10, f64::NAN),
            Err(ZipfError::BadAlpha { .. })
        ));
    }

    #[test]
    fn probabilities_follow_the_law_and_sum_to_one() {
        let zipf = Zipf::new(100, 1.0).unwrap();
        let total: f64 = (1..=100).map(|r| zipf.probability(r)).sum();
        assert!((total - 1.0).abs() < 1e-12, "total {total}");
        let ratio = zipf.probability(1) / zipf.probability(4);
        assert!((ratio - 4.0).abs() < 1e-9, "p1/p4 = {ratio}");
        assert_eq!(zipf.probability(0), 0.0);
        assert_eq!(zipf.probability(101), 0.0);
    }

    #[test]
    fn guided_search_equals_full_binary_search() {
        for (n, alpha) in [
            (1u64, 1.0),
            (7, 0.0),
            (1000, 1.0),
            (31_000, 1.02),
            (500, 2.5),
        ] {
            let zipf = Zipf::new(n, alpha).unwrap();
            for step in 0..20_000u32 {
                let u = f64::from(step) / 20_000.0;
                let full = zipf.cdf.partition_point(|&c| c <= u).min(n as usize - 1) as u32 + 1;
                assert_eq!(zipf.rank_for_uniform(u), full, "n {n} alpha {alpha} u {u}");
            }
        }
    }

    #[test]
    fn inverse_cdf_edges() {
        let zipf = Zipf::new(3, 0.0).unwrap();
        assert_eq!(zipf.rank_for_uniform(0.0), 1);
        assert_eq!(zipf.rank_for_uniform(0.34), 2);
        assert_eq!(zipf.rank_for_uniform(0.999_999), 3);
        assert_eq!(zipf.rank_for_uniform(1.0), 3);
    }
}
