//! A [`Workload`]: targets ordered by popularity rank plus a Zipf law over the ranks, and the `rice`/`ibm` presets.
//!
//! Model. Target `i` (0-based) has popularity rank `i + 1`, so `targets[0]` is the most requested. Sizes come from a
//! [`SizeDist`]; how sizes line up with ranks is set by `size_rank_correlation` `c` in `[0, 1]`: each size is
//! given the key `c * q + (1 - c) * u`, where `q` is the size's quantile among all sizes and `u` an independent
//! uniform draw, and sizes are handed to ranks in ascending key order. So `c = 0` means size and popularity are
//! independent and `c = 1` means the most popular targets are the smallest (as in real web traces, where small
//! HTML and images dominate requests). It is a mixing weight, not a Pearson coefficient. Sizes are then scaled so
//! the total is exact.
//!
//! Presets. The traces themselves are not public; the presets reproduce their published statistics
//! (Pai et al., ASPLOS '98; Aron et al., USENIX 2000), with 1 MB = 10^6 bytes:
//!
//! | preset | targets | total | cache for 97% / 98% / 99% of requests |
//! |---|---|---|---|
//! | rice | 31,000 | 1.015 GB | 526 / 619 / 745 MB |
//! | ibm | 38,500 | 0.984 GB | 43 / 69 / 165 MB |
//!
//! "Cache for x% of requests" ([`Workload::cache_bytes_for_fraction`]) is the total size of the most popular
//! targets, taken in rank order, whose request probabilities add up to x%. The preset parameters (Zipf alpha,
//! lognormal sigma, correlation, seed) were chosen by a grid search (`fit_presets`, an ignored test in this module)
//! and `preset_figures_match_published_statistics` checks the figures within 15%.
//!
//! Limits: at most [`Zipf::RANKS_MAX`] (10 million) targets.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

use crate::size::{SizeDist, SIZE_BYTES_MAX};
use crate::zipf::{Zipf, ZipfError};
use crate::{seeded_rng, site};

/// One requestable object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// URL path, starting with `/` (the same relative path [`site::generate`] writes, e.g. `/d00/f00000.html`).
    pub path: String,
    pub size_bytes: u64,
}

/// Errors from building a workload.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkloadError {
    #[error(transparent)]
    Zipf(#[from] ZipfError),
    #[error("size_rank_correlation must be within [0, 1], got {value}")]
    BadCorrelation { value: f64 },
    #[error("total_bytes {total_bytes} is smaller than the number of targets {targets}")]
    TotalTooSmall { total_bytes: u64, targets: u32 },
    #[error("unknown preset {name:?}; expected rice or ibm")]
    UnknownPreset { name: String },
}

/// Parameters of a synthetic workload.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    pub targets: u32,
    pub alpha: f64,
    pub sizes: SizeDist,
    /// 0 = independent, 1 = most popular targets are the smallest (see the module docs).
    pub size_rank_correlation: f64,
    /// Scale the sizes so they add up to exactly this many bytes (`None`: keep the drawn sizes).
    pub total_bytes: Option<u64>,
    pub seed: u64,
}

/// A published trace whose statistics a preset reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Rice,
    Ibm,
}

/// Published statistics of a trace (1 MB = 10^6 bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishedStats {
    pub targets: u32,
    pub total_bytes: u64,
    /// Cache needed for 97%, 98% and 99% of requests.
    pub cache_bytes_97_98_99: [u64; 3],
}

impl Preset {
    pub const ALL: [Preset; 2] = [Preset::Rice, Preset::Ibm];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Rice => "rice",
            Preset::Ibm => "ibm",
        }
    }

    /// The statistics the preset is fitted to.
    pub fn published(self) -> PublishedStats {
        const MB: u64 = 1_000_000;
        match self {
            Preset::Rice => PublishedStats {
                targets: 31_000,
                total_bytes: 1_015 * MB,
                cache_bytes_97_98_99: [526 * MB, 619 * MB, 745 * MB],
            },
            Preset::Ibm => PublishedStats {
                targets: 38_500,
                total_bytes: 984 * MB,
                cache_bytes_97_98_99: [43 * MB, 69 * MB, 165 * MB],
            },
        }
    }

    /// The synthetic parameters that reproduce [`Preset::published`].
    pub fn spec(self) -> SyntheticSpec {
        let published = self.published();
        let (alpha, sigma, correlation, seed) = match self {
            Preset::Rice => (PRESET_RICE.0, PRESET_RICE.1, PRESET_RICE.2, PRESET_RICE.3),
            Preset::Ibm => (PRESET_IBM.0, PRESET_IBM.1, PRESET_IBM.2, PRESET_IBM.3),
        };
        SyntheticSpec {
            targets: published.targets,
            alpha,
            // mu only sets the scale, which total_bytes overrides.
            sizes: SizeDist::Lognormal { mu: 10.0, sigma },
            size_rank_correlation: correlation,
            total_bytes: Some(published.total_bytes),
            seed,
        }
    }
}

/// (alpha, lognormal sigma, size_rank_correlation, seed) fitted by `fit_presets`.
const PRESET_RICE: (f64, f64, f64, u64) = (1.02, 1.318, 0.35, 1);
const PRESET_IBM: (f64, f64, f64, u64) = (1.08, 2.0, 1.0, 1);

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = WorkloadError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim().to_ascii_lowercase().as_str() {
            "rice" => Ok(Preset::Rice),
            "ibm" => Ok(Preset::Ibm),
            _ => Err(WorkloadError::UnknownPreset {
                name: name.to_string(),
            }),
        }
    }
}

/// Targets in popularity-rank order and the Zipf law that picks among them.
#[derive(Debug, Clone)]
pub struct Workload {
    name: String,
    targets: Vec<Target>,
    popularity: Zipf,
}

impl Workload {
    /// A workload over the given targets (`targets[0]` most popular) with Zipf exponent `alpha`.
    pub fn new(
        name: impl Into<String>,
        targets: Vec<Target>,
        alpha: f64,
    ) -> Result<Self, WorkloadError> {
        let popularity = Zipf::new(targets.len() as u64, alpha)?;
        Ok(Self {
            name: name.into(),
            targets,
            popularity,
        })
    }

    /// A preset reproducing a published trace (deterministic: same targets every call).
    pub fn preset(preset: Preset) -> Self {
        let mut workload = Self::synthetic(&preset.spec()).expect("preset parameters are valid");
        workload.name = preset.name().to_string();
        workload
    }

    /// A synthetic workload; the same spec (including seed) always gives the same targets.
    pub fn synthetic(spec: &SyntheticSpec) -> Result<Self, WorkloadError> {
        let correlation = spec.size_rank_correlation;
        if !(0.0..=1.0).contains(&correlation) {
            return Err(WorkloadError::BadCorrelation { value: correlation });
        }
        let popularity = Zipf::new(u64::from(spec.targets), spec.alpha)?;
        let n = spec.targets as usize;
        if let Some(total_bytes) = spec.total_bytes {
            if total_bytes < n as u64 {
                return Err(WorkloadError::TotalTooSmall {
                    total_bytes,
                    targets: spec.targets,
                });
            }
        }
        let mut rng = seeded_rng(spec.seed);
        let mut sizes: Vec<u64> = (0..n).map(|_| spec.sizes.sample(&mut rng)).collect();
        sizes.sort_unstable();
        // Key each size by a mix of its quantile and noise; ascending key order = rank order.
        let mut keyed: Vec<(f64, u64)> = sizes
            .iter()
            .enumerate()
            .map(|(j, &size)| {
                let quantile = (j as f64 + 0.5) / n as f64;
                let key = correlation * quantile + (1.0 - correlation) * rng.random::<f64>();
                (key, size)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut by_rank: Vec<u64> = keyed.into_iter().map(|(_, size)| size).collect();
        if let Some(total_bytes) = spec.total_bytes {
            scale_to_total(&mut by_rank, total_bytes);
        }
        let targets = by_rank
            .into_iter()
            .enumerate()
            .map(|(index, size_bytes)| Target {
                path: format!("/{}", site::relative_path(index as u32)),
                size_bytes,
            })
            .collect();
        Ok(Self {
            name: format!("synthetic-{}", spec.seed),
            targets,
            popularity,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Targets in rank order (`targets()[0]` is rank 1).
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn popularity(&self) -> &Zipf {
        &self.popularity
    }

    pub fn total_bytes(&self) -> u64 {
        self.targets.iter().map(|t| t.size_bytes).sum()
    }

    /// Draws the index (into [`Workload::targets`]) of the next requested target.
    pub fn sample_index<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        self.popularity.sample(rng) as usize - 1
    }

    /// Probability that a request asks for `targets()[index]`.
    pub fn probability(&self, index: usize) -> f64 {
        self.popularity.probability(index as u32 + 1)
    }

    /// Bytes of the most popular targets (rank order) needed to serve `fraction` of requests.
    pub fn cache_bytes_for_fraction(&self, fraction: f64) -> u64 {
        let mut covered = 0.0;
        let mut bytes = 0;
        for (index, target) in self.targets.iter().enumerate() {
            if covered >= fraction {
                break;
            }
            covered += self.probability(index);
            bytes += target.size_bytes;
        }
        bytes
    }
}

/// Scales `sizes` proportionally (each at least 1, at most [`SIZE_BYTES_MAX`]) so they sum to `total_bytes`;
/// the rounding remainder goes to the largest entries.
fn scale_to_total(sizes: &mut [u64], total_bytes: u64) {
    let sum: f64 = sizes.iter().map(|&s| s as f64).sum();
    let factor = total_bytes as f64 / sum;
    for size in sizes.iter_mut() {
        *size = ((*size as f64 * factor).round() as u64).clamp(1, SIZE_BYTES_MAX);
    }
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_unstable_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let mut current: u64 = sizes.iter().sum();
    // Each pass moves every adjustable entry by at most the remaining gap, so this ends within a few passes.
    for _ in 0..64 {
        if current == total_bytes {
            break;
        }
        for &i in &order {
            if current < total_bytes {
                let add = (total_bytes - current).min(SIZE_BYTES_MAX - sizes[i]);
                sizes[i] += add;
                current += add;
            } else if current > total_bytes {
                let sub = (current - total_bytes).min(sizes[i] - 1);
                sizes[i] -= sub;
                current -= sub;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(workload: &Workload) -> [u64; 3] {
        [0.97, 0.98, 0.99].map(|f| workload.cache_bytes_for_fraction(f))
    }

    #[test]
    fn preset_figures_match_published_statistics() {
        for preset in Preset::ALL {
            let workload = Workload::preset(preset);
            let published = preset.published();
            assert_eq!(
                workload.targets().len(),
                published.targets as usize,
                "{preset}"
            );
            assert_eq!(workload.total_bytes(), published.total_bytes, "{preset}");
            let got = figures(&workload);
            println!(
                "{preset}: cache for 97/98/99% = {} / {} / {} MB (published {} / {} / {})",
                got[0] / 1_000_000,
                got[1] / 1_000_000,
                got[2] / 1_000_000,
                published.cache_bytes_97_98_99[0] / 1_000_000,
                published.cache_bytes_97_98_99[1] / 1_000_000,
                published.cache_bytes_97_98_99[2] / 1_000_000,
            );
            for (g, p) in got.iter().zip(published.cache_bytes_97_98_99) {
                let ratio = *g as f64 / p as f64;
                assert!(
                    (0.85..=1.15).contains(&ratio),
                    "{preset}: {g} vs {p} (ratio {ratio:.3})"
                );
            }
        }
    }

    #[test]
    fn synthetic_is_deterministic_per_seed() {
        let spec = SyntheticSpec {
            targets: 500,
            alpha: 0.9,
            sizes: SizeDist::Surge,
            size_rank_correlation: 0.3,
            total_bytes: None,
            seed: 42,
        };
        let a = Workload::synthetic(&spec).unwrap();
        let b = Workload::synthetic(&spec).unwrap();
        assert_eq!(a.targets(), b.targets());
        let c = Workload::synthetic(&SyntheticSpec { seed: 43, ..spec }).unwrap();
        assert_ne!(a.targets(), c.targets());
        let mut rng_a = seeded_rng(5);
        let mut rng_b = seeded_rng(5);
        for _ in 0..1000 {
            assert_eq!(a.sample_index(&mut rng_a), a.sample_index(&mut rng_b));
        }
    }

    #[test]
    fn full_correlation_puts_small_targets_first_and_total_is_exact() {
        let spec = SyntheticSpec {
            targets: 1000,
            alpha: 1.0,
            sizes: "lognormal:mu=9,sigma=1".parse().unwrap(),
            size_rank_correlation: 1.0,
            total_bytes: Some(10_000_000),
            seed: 3,
        };
        let workload = Workload::synthetic(&spec).unwrap();
        assert_eq!(workload.total_bytes(), 10_000_000);
        let sizes: Vec<u64> = workload.targets().iter().map(|t| t.size_bytes).collect();
        // Rounding adjustments touch only the largest entries; the first half stays sorted.
        assert!(
            sizes[..500].windows(2).all(|w| w[0] <= w[1]),
            "not ascending"
        );
        assert_eq!(workload.targets()[0].path, "/d00/f00000.html");
    }

    #[test]
    fn rejects_bad_specs() {
        let spec = SyntheticSpec {
            targets: 10,
            alpha: 1.0,
            sizes: SizeDist::Fixed { bytes: 10 },
            size_rank_correlation: 1.5,
            total_bytes: None,
            seed: 0,
        };
        assert!(matches!(
            Workload::synthetic(&spec),
            Err(WorkloadError::BadCorrelation { .. })
        ));
        let spec = SyntheticSpec {
            size_rank_correlation: 0.0,
            total_bytes: Some(5),
            ..spec
        };
        assert!(matches!(
            Workload::synthetic(&spec),
            Err(WorkloadError::TotalTooSmall { .. })
        ));
        assert!("nasa".parse::<Preset>().is_err());
        assert_eq!("RICE".parse::<Preset>().unwrap(), Preset::Rice);
    }

    /// Grid search used to choose the preset constants (about 6 minutes in release on a loaded 2-core machine):
    /// `cargo test -p larder-workload --release -- --ignored fit_presets --nocapture`.
    #[test]
    #[ignore]
    fn fit_presets() {
        for preset in Preset::ALL {
            let published = preset.published();
            let mut best = (f64::MAX, 0.0, 0.0, 0.0);
            for sigma in [1.0, 1.318, 1.6, 2.0] {
                for a in 0..=60 {
                    let alpha = 0.6 + 0.02 * a as f64;
                    for c in 0..=20 {
                        let correlation = c as f64 * 0.05;
                        let spec = SyntheticSpec {
                            alpha,
                            sizes: SizeDist::Lognormal { mu: 10.0, sigma },
                            size_rank_correlation: correlation,
                            ..preset.spec()
                        };
                        let got = figures(&Workload::synthetic(&spec).unwrap());
                        let error: f64 = got
                            .iter()
                            .zip(published.cache_bytes_97_98_99)
                            .map(|(g, p)| (*g as f64 / p as f64).ln().powi(2))
                            .sum();
                        if error < best.0 {
                            best = (error, alpha, sigma, correlation);
                        }
                    }
                }
            }
            // Every figure within 15% means each squared log-ratio is below ln(1.15)^2 = 0.0195.
            assert!(
                best.0 < 3.0 * 0.0195,
                "{preset}: no fit within 15%: {best:?}"
            );
            println!(
                "{preset}: error {:.4} alpha {} sigma {} correlation {}",
                best.0, best.1, best.2, best.3
            );
        }
    }
}
