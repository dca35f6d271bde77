//! Latency histograms: HDR histograms in nanoseconds, one per (thread, class), merged exactly after the run.
//!
//! Owns: the histogram configuration (every histogram in a run has the same bounds and precision, so merging is
//! exact: counts add bucket by bucket) and the summary (p50/p90/p99/p99.9/max/mean in milliseconds).
//!
//! Limits: values from [`LATENCY_NS_MIN`] (1 ns) to [`LATENCY_NS_MAX`] (60 s) at [`SIGNIFICANT_DIGITS`] (3)
//! significant digits, so a reported percentile is within 0.1% of the true value. Larger values are clamped to
//! 60 s (a request that slow has long since been counted as a timeout). One histogram is about 200 KiB.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Smallest latency the histogram resolves, in nanoseconds.
pub const LATENCY_NS_MIN: u64 = 1;
/// Largest latency recorded, in nanoseconds (60 s); larger values are clamped.
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// HDR precision: three significant digits.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// One latency histogram; see the module docs.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(Histogram<u64>);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

/// Latency percentiles in milliseconds; `count` is the number of recorded values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        let histogram =
            Histogram::new_with_bounds(LATENCY_NS_MIN, LATENCY_NS_MAX, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid");
        LatencyHistogram(histogram)
    }

    #[inline]
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.record_ns(nanos);
    }

    #[inline]
    pub fn record_ns(&mut self, latency_ns: u64) {
        self.0
            .saturating_record(latency_ns.clamp(LATENCY_NS_MIN, LATENCY_NS_MAX));
    }

    /// Adds every count of `other` into `self`. Exact: both have the same configuration.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        self.0
            .add(&other.0)
            .expect("histograms share one configuration, so adding cannot fail");
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at `quantile` (0.0..=1.0), in nanoseconds (the highest value equivalent to the bucket).
    pub fn quantile_ns(&self, quantile: f64) -> u64 {
        self.0.value_at_quantile(quantile)
    }

    pub fn summary(&self) -> LatencySummary {
        if self.0.is_empty() {
            return LatencySummary::default();
        }
        let ms = |nanos: u64| nanos as f64 / 1e6;
        LatencySummary {
            count: self.0.len(),
            p50: ms(self.0.value_at_quantile(0.50)),
            p90: ms(self.0.value_at_quantile(0.90)),
            p99: ms(self.0.value_at_quantile(0.99)),
            p999: ms(self.0.value_at_quantile(0.999)),
            max: ms(self.0.max()),
            mean: self.0.mean() / 1e6,
        }
    }

    /// Bucket-level equality (same counts at the same values); used by the merge tests.
    pub fn same_counts(&self, other: &LatencyHistogram) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter_recorded()
                .zip(other.0.iter_recorded())
                .all(|(a, b)| {
                    a.value_iterated_to() == b.value_iterated_to()
                        && a.count_at_value() == b.count_at_value()
                })
            && self.0.iter_recorded().count() == other.0.iter_recorded().count()
    }
}
