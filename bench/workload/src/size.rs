//! File-size distributions.
//!
//! A [`SizeDist`] is parsed from a short string (the form every CLI in `bench/` accepts):
//!
//! | string | meaning |
//! |---|---|
//! | `fixed:4096` | every file is 4096 bytes |
//! | `uniform:min=1024,max=65536` | uniform in `[min, max]` bytes |
//! | `lognormal:mu=9.357,sigma=1.318` | `exp(N(mu, sigma))` bytes |
//! | `pareto:alpha=1.1,k=133000` | Pareto with shape `alpha` and minimum `k` bytes |
//! | `surge` | Surge/SPECweb mix (Barford & Crovella 1998): lognormal(9.357, 1.318) body, Pareto(1.1, 133 000) tail for 7% of files |
//!
//! Every sample is clamped to `1..=`[`SIZE_BYTES_MAX`] (16 MiB), so a heavy tail cannot make one generated site
//! file or one simulated transfer unbounded; a fixed or uniform size above the limit is a parse error.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// Largest size any distribution returns (16 MiB).
pub const SIZE_BYTES_MAX: u64 = 16 << 20;

/// Surge body: lognormal mu (of ln bytes).
pub const SURGE_BODY_MU: f64 = 9.357;
/// Surge body: lognormal sigma.
pub const SURGE_BODY_SIGMA: f64 = 1.318;
/// Surge tail: Pareto shape.
pub const SURGE_TAIL_ALPHA: f64 = 1.1;
/// Surge tail: Pareto minimum, bytes.
pub const SURGE_TAIL_K_BYTES: f64 = 133_000.0;
/// Surge: fraction of files drawn from the tail.
pub const SURGE_TAIL_FRACTION: f64 = 0.07;

/// Errors from parsing a [`SizeDist`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SizeDistError {
    #[error("unknown size distribution {kind:?}; expected fixed:N, uniform:min=A,max=B, lognormal:mu=M,sigma=S, pareto:alpha=A,k=K or surge")]
    UnknownKind { kind: String },
    #[error("size distribution {kind}: missing parameter {name:?}")]
    MissingParameter {
        kind: &'static str,
        name: &'static str,
    },
    #[error("size distribution {kind}: unknown parameter {name:?}")]
    UnknownParameter { kind: &'static str, name: String },
    #[error("size distribution {kind}: parameter {name:?} has bad value {value:?}")]
    BadValue {
        kind: &'static str,
        name: String,
        value: String,
    },
    #[error("size distribution {kind}: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

/// A distribution of file sizes in bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeDist {
    Fixed {
        bytes: u64,
    },
    Uniform {
        min_bytes: u64,
        max_bytes: u64,
    },
    Lognormal {
        mu: f64,
        sigma: f64,
    },
    Pareto {
        alpha: f64,
        k_bytes: f64,
    },
    /// Lognormal body ([`SURGE_BODY_MU`], [`SURGE_BODY_SIGMA`]) and Pareto tail ([`SURGE_TAIL_ALPHA`],
    /// [`SURGE_TAIL_K_BYTES`]) for [`SURGE_TAIL_FRACTION`] of files.
    Surge,
}

/// A standard normal draw (Box–Muller; uses two uniforms, deterministic given the RNG).
pub fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // 1 - u maps [0, 1) to (0, 1], so ln() is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn pareto<R: Rng + ?Sized>(rng: &mut R, alpha: f64, k_bytes: f64) -> f64 {
    let u = 1.0 - rng.random::<f64>();
    k_bytes / u.powf(1.0 / alpha)
}

fn clamp_bytes(x: f64) -> u64 {
    if x.is_nan() {
        return 1;
    }
    (x.round() as u64).clamp(1, SIZE_BYTES_MAX)
}

impl SizeDist {
    /// Draws one size in `1..=SIZE_BYTES_MAX` bytes.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match *self {
            SizeDist::Fixed { bytes } => bytes.clamp(1, SIZE_BYTES_MAX),
            SizeDist::Uniform {
                min_bytes,
                max_bytes,
            } => rng
                .random_range(min_bytes..=max_bytes)
                .clamp(1, SIZE_BYTES_MAX),
            SizeDist::Lognormal { mu, sigma } => {
                clamp_bytes((mu + sigma * standard_normal(rng)).exp())
            }
            SizeDist::Pareto { alpha, k_bytes } => clamp_bytes(pareto(rng, alpha, k_bytes)),
            SizeDist::Surge => {
                if rng.random::<f64>() < SURGE_TAIL_FRACTION {
                    clamp_bytes(pareto(rng, SURGE_TAIL_ALPHA, SURGE_TAIL_K_BYTES))
                } else {
                    clamp_bytes((SURGE_BODY_MU + SURGE_BODY_SIGMA * standard_normal(rng)).exp())
                }
            }
        }
    }
}

/// `key=value,key=value` parameters of one distribution; every key must be consumed.
struct Params<'a> {
    kind: &'static str,
    pairs: Vec<(&'a str, &'a str, bool)>,
}

impl<'a> Params<'a> {
    fn parse(kind: &'static str, text: &'a str) -> Result<Self, SizeDistError> {
        let mut pairs = Vec::new();
        for item in text.split(',').filter(|s| !s.trim().is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| SizeDistError::BadValue {
                    kind,
                    name: item.trim().to_string(),
                    value: String::new(),
                })?;
            pairs.push((name.trim(), value.trim(), false));
        }
        Ok(Self { kind, pairs })
    }

    fn take<T: FromStr>(&mut self, name: &'static str) -> Result<T, SizeDistError> {
        let kind = self.kind;
        let pair = self
            .pairs
            .iter_mut()
            .find(|(n, _, _)| *n == name)
            .ok_or(SizeDistError::MissingParameter { kind, name })?;
        pair.2 = true;
        pair.1.parse().map_err(|_| SizeDistError::BadValue {
            kind,
            name: name.to_string(),
            value: pair.1.to_string(),
        })
    }

    fn finish(self) -> Result<(), SizeDistError> {
        match self.pairs.iter().find(|(_, _, used)| !used) {
            Some((name, _, _)) => Err(SizeDistError::UnknownParameter {
                kind: self.kind,
                name: name.to_string(),
            }),
            None => Ok(()),
        }
    }
}

fn check(
    kind: &'static str,
    ok: bool,
    reason: impl FnOnce() -> String,
) -> Result<(), SizeDistError> {
    if ok {
        Ok(())
    } else {
        Err(SizeDistError::Invalid {
            kind,
            reason: reason(),
        })
    }
}

impl FromStr for SizeDist {
    type Err = SizeDistError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
        match kind.trim() {
            "fixed" => {
                let bytes: u64 = rest.trim().parse().map_err(|_| SizeDistError::BadValue {
                    kind: "fixed",
                    name: "bytes".to_string(),
                    value: rest.to_string(),
                })?;
                check("fixed", (1..=SIZE_BYTES_MAX).contains(&bytes), || {
                    format!("{bytes} bytes is outside 1..={SIZE_BYTES_MAX}")
                })?;
                Ok(SizeDist::Fixed { bytes })
            }
            "uniform" => {
                let mut params = Params::parse("uniform", rest)?;
                let min_bytes: u64 = params.take("min")?;
                let max_bytes: u64 = params.take("max")?;
                params.finish()?;
                check("uniform", 1 <= min_bytes && min_bytes <= max_bytes, || {
                    format!("need 1 <= min <= max, got min={min_bytes} max={max_bytes}")
                })?;
                check("uniform", max_bytes <= SIZE_BYTES_MAX, || {
                    format!("max {max_bytes} exceeds the limit {SIZE_BYTES_MAX}")
                })?;
                Ok(SizeDist::Uniform {
                    min_bytes,
                    max_bytes,
                })
            }
            "lognormal" => {
                let mut params = Params::parse("lognormal", rest)?;
                let mu: f64 = params.take("mu")?;
                let sigma: f64 = params.take("sigma")?;
                params.finish()?;
                check(
                    "lognormal",
                    mu.is_finite() && sigma.is_finite() && sigma >= 0.0,
                    || format!("need finite mu and sigma >= 0, got mu={mu} sigma={sigma}"),
                )?;
                Ok(SizeDist::Lognormal { mu, sigma })
            }
            "pareto" => {
                let mut params = Params::parse("pareto", rest)?;
                let alpha: f64 = params.take("alpha")?;
                let k_bytes: f64 = params.take("k")?;
                params.finish()?;
                check(
                    "pareto",
                    alpha > 0.0 && k_bytes >= 1.0 && alpha.is_finite() && k_bytes.is_finite(),
                    || format!("need alpha > 0 and k >= 1, got alpha={alpha} k={k_bytes}"),
                )?;
                Ok(SizeDist::Pareto { alpha, k_bytes })
            }
            "surge" => {
                check("surge", rest.trim().is_empty(), || {
                    "takes no parameters".to_string()
                })?;
                Ok(SizeDist::Surge)
            }
            other => Err(SizeDistError::UnknownKind {
                kind: other.to_string(),
            }),
        }
    }
}

impl fmt::Display for SizeDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeDist::Fixed { bytes } => write!(f, "fixed:{bytes}"),
            SizeDist::Uniform {
                min_bytes,
                max_bytes,
            } => write!(f, "uniform:min={min_bytes},max={max_bytes}"),
            SizeDist::Lognormal { mu, sigma } => write!(f, "lognormal:mu={mu},sigma={sigma}"),
            SizeDist::Pareto { alpha, k_bytes } => write!(f, "pareto:alpha={alpha},k={k_bytes}"),
            SizeDist::Surge => write!(f, "surge"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded_rng;

    #[test]
    fn parses_every_form_and_round_trips() {
        for text in [
            "fixed:4096",
            "uniform:min=1024,max=65536",
            "lognormal:mu=9.357,sigma=1.318",
            "pareto:alpha=1.1,k=133000",
            "surge",
        ] {
            let dist: SizeDist = text.parse().unwrap();
            assert_eq!(dist.to_string(), text);
        }
    }

    #[test]
    fn parse_errors_are_specific() {
        assert!(matches!(
            "zipf:3".parse::<SizeDist>(),
            Err(SizeDistError::UnknownKind { .. })
        ));
        assert!(matches!(
            "fixed:abc".parse::<SizeDist>(),
            Err(SizeDistError::BadValue { .. })
        ));
        assert!(matches!(
            "fixed:0".parse::<SizeDist>(),
            Err(SizeDistError::Invalid { .. })
        ));
        assert!(matches!(
            "lognormal:mu=9".parse::<SizeDist>(),
            Err(SizeDistError::MissingParameter { name: "sigma", .. })
        ));
        assert!(matches!(
            "lognormal:mu=9,sigma=1,x=2".parse::<SizeDist>(),
            Err(SizeDistError::UnknownParameter { .. })
        ));
        assert!(matches!(
            "uniform:min=10,max=5".parse::<SizeDist>(),
            Err(SizeDistError::Invalid { .. })
        ));
        assert!(matches!(
            "surge:1".parse::<SizeDist>(),
            Err(SizeDistError::Invalid { .. })
        ));
    }

    #[test]
    fn samples_stay_in_range_and_lognormal_median_matches() {
        let mut rng = seeded_rng(7);
        let dist: SizeDist = "lognormal:mu=9.357,sigma=1.318".parse().unwrap();
        let mut samples: Vec<u64> = (0..20_001).map(|_| dist.sample(&mut rng)).collect();
        samples.sort_unstable();
        let median = samples[10_000] as f64;
        let expected = 9.357f64.exp(); // about 11.6 kB
        assert!(
            (median / expected - 1.0).abs() < 0.05,
            "median {median}, expected {expected}"
        );
        let surge = SizeDist::Surge;
        for _ in 0..10_000 {
            let bytes = surge.sample(&mut rng);
            assert!((1..=SIZE_BYTES_MAX).contains(&bytes), "{bytes}");
        }
    }
}
