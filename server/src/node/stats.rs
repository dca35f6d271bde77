//! Node statistics: per-shard counters written by the shard (relaxed atomics,
//! one writer each) and read from any thread (the control plane polls them),
//! and the shard's last hot-target window ([`super::hot`]), which the shard
//! replaces every 100 ms under a mutex that no request takes.
//!
//! # The latency histogram
//! Each shard keeps a fixed-bucket histogram of request latency ([`LatencyHistogram`]): from the moment a whole
//! request head is in the serving shard's buffer to the moment its response is written (a handed-off request is
//! timed on the shard that serves it, from its arrival there). Recording costs one relaxed add to one bucket and
//! one to the sum — no lock, no allocation. Buckets are *not* cumulative in memory (one add per response); the
//! exposition makes them cumulative. [`LATENCY_BUCKETS_US`] has 18 upper bounds from 25 µs to 10 s plus the
//! overflow bucket (`+Inf`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::hot::HotWindow;
use crate::cache::CacheCounters;

/// Upper bounds (µs, inclusive) of the latency histogram's buckets; one more bucket holds the rest (`+Inf`).
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// Buckets of the histogram, `+Inf` included.
pub const LATENCY_CELLS: usize = LATENCY_BUCKETS_US.len() + 1;

/// A fixed-bucket latency histogram of relaxed atomics (module docs).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative): observations in `(bound[i-1], bound[i]]`; the last one, over the last bound.
    buckets: [AtomicU64; LATENCY_CELLS],
    sum_us: AtomicU64,
}

/// A copy of a [`LatencyHistogram`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Per bucket, not cumulative (see [`LatencyHistogram`]).
    pub buckets: [u64; LATENCY_CELLS],
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Records one observation: one relaxed add to its bucket, one to the sum.
    #[inline]
    pub fn record(&self, latency_us: u64) {
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < latency_us);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(latency_us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The bound (µs) of the bucket holding quantile `q` (0..=1); `None` with no observation, `u64::MAX` for the
    /// overflow bucket. An upper bound of the true quantile, as Prometheus' `histogram_quantile` would place it.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        quantile_of(&self.buckets, q)
    }

    /// `self - earlier`, bucket by bucket (the observations between two snapshots).
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }
}

/// The bound of the bucket holding quantile `q` of per-bucket counts `buckets` ([`LatencySnapshot::quantile_us`]).
pub fn quantile_of(buckets: &[u64; LATENCY_CELLS], q: f64) -> Option<u64> {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (index, &n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(LATENCY_BUCKETS_US.get(index).copied().unwrap_or(u64::MAX));
        }
    }
    Some(u64::MAX)
}

/// One shard's counters. Monotonic except the `*_active` gauges and the cache's current sizes.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub requests: AtomicU64,
    /// Responses by status class (1xx..5xx; `responses_4xx`/`responses_5xx` below).
    pub responses_1xx: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_3xx: AtomicU64,
    /// Request latency (module docs).
    pub latency: LatencyHistogram,
    /// Requests answered per container (by the node's container index); empty before [`ShardCounters::new`].
    pub container_requests: Box<[AtomicU64]>,
    pub bytes_sent: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    /// Connections answered 503 + Retry-After at accept because the shard had `connections_max` open.
    pub connections_refused: AtomicU64,
    pub requests_active: AtomicU64,
    pub handoffs_out: AtomicU64,
    pub handoffs_in: AtomicU64,
    /// Handoffs that could not be queued (mesh full): served locally instead.
    pub handoffs_refused: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    /// 503s sent because a container was over its limit.
    pub container_rejections: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_evictions: AtomicU64,
    pub cache_bytes: AtomicU64,
    pub cache_objects: AtomicU64,
    pub cache_revalidations: AtomicU64,
    pub cache_stale_reloads: AtomicU64,
    pub access_log_lines_dropped: AtomicU64,
    /// The last hot-target window the shard published (taken by the shard's tick and the reader only).
    pub hot: Mutex<HotWindow>,
}

/// A copy of one shard's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    pub shard: u32,
    pub requests: u64,
    pub responses_1xx: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub latency: LatencySnapshot,
    pub bytes_sent: u64,
    pub connections_accepted: u64,
    pub connections_active: u64,
    pub connections_refused: u64,
    pub requests_active: u64,
    pub handoffs_out: u64,
    pub handoffs_in: u64,
    pub handoffs_refused: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    pub container_rejections: u64,
    pub header_timeouts: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_evictions: u64,
    pub cache_bytes: u64,
    pub cache_objects: u64,
    pub cache_revalidations: u64,
    pub cache_stale_reloads: u64,
    pub access_log_lines_dropped: u64,
}

/// Every shard's counters, by shard id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub shards: Vec<ShardSnapshot>,
}

impl NodeStats {
    /// Sums a counter over the shards.
    pub fn total(&self, counter: impl Fn(&ShardSnapshot) -> u64) -> u64 {
        self.shards.iter().map(counter).sum()
    }
}

impl ShardCounters {
    /// Counters for a shard of a node with `containers` containers.
    pub fn new(containers: usize) -> ShardCounters {
        ShardCounters {
            container_requests: (0..containers).map(|_| AtomicU64::new(0)).collect(),
            ..ShardCounters::default()
        }
    }

    /// Counts one response of `status` (class and latency): a relaxed add per counter.
    #[inline]
    pub fn record_response(&self, status: u16, latency_us: u64, container: usize) {
        Self::add(&self.requests, 1);
        let class = match status {
            100..=199 => &self.responses_1xx,
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            _ => &self.responses_5xx,
        };
        Self::add(class, 1);
        self.latency.record(latency_us);
        if let Some(counter) = self.container_requests.get(container) {
            Self::add(counter, 1);
        }
    }

    /// Requests answered per container, by container index.
    pub fn container_requests(&self) -> Vec<u64> {
        self.container_requests
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .collect()
    }

    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, value: u64) {
        counter.fetch_sub(value, Ordering::Relaxed);
    }

    /// Mirrors the shard cache's counters (called by the shard after each cache access).
    pub fn set_cache(&self, cache: &CacheCounters) {
        self.cache_hits.store(cache.hits, Ordering::Relaxed);
        self.cache_misses.store(cache.misses, Ordering::Relaxed);
        self.cache_evictions
            .store(cache.evictions, Ordering::Relaxed);
        self.cache_bytes
            .store(cache.bytes_cached, Ordering::Relaxed);
        self.cache_objects.store(cache.objects, Ordering::Relaxed);
        self.cache_revalidations
            .store(cache.revalidations, Ordering::Relaxed);
        self.cache_stale_reloads
            .store(cache.stale_reloads, Ordering::Relaxed);
    }

    /// A copy of the last published hot-target window.
    pub fn hot_window(&self) -> HotWindow {
        self.hot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn snapshot(&self, shard: u32) -> ShardSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ShardSnapshot {
            shard,
            requests: load(&self.requests),
            responses_1xx: load(&self.responses_1xx),
            responses_2xx: load(&self.responses_2xx),
            responses_3xx: load(&self.responses_3xx),
            latency: self.latency.snapshot(),
            bytes_sent: load(&self.bytes_sent),
            connections_accepted: load(&self.connections_accepted),
            connections_active: load(&self.connections_active),
            connections_refused: load(&self.connections_refused),
            requests_active: load(&self.requests_active),
            handoffs_out: load(&self.handoffs_out),
            handoffs_in: load(&self.handoffs_in),
            handoffs_refused: load(&self.handoffs_refused),
            responses_4xx: load(&self.responses_4xx),
            responses_5xx: load(&self.responses_5xx),
            container_rejections: load(&self.container_rejections),
            header_timeouts: load(&self.header_timeouts),
            cache_hits: load(&self.cache_hits),
            cache_misses: load(&self.cache_misses),
            cache_evictions: load(&self.cache_evictions),
            cache_bytes: load(&self.cache_bytes),
            cache_objects: load(&self.cache_objects),
            cache_revalidations: load(&self.cache_revalidations),
            cache_stale_reloads: load(&self.cache_stale_reloads),
            access_log_lines_dropped: load(&self.access_log_lines_dropped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_bucket_of_its_inclusive_bound() {
        let histogram = LatencyHistogram::default();
        for latency_us in [0, 25, 26, 10_000_000, 10_000_001] {
            histogram.record(latency_us);
        }
        let snapshot = histogram.snapshot();
        let mut expected = [0u64; LATENCY_CELLS];
        expected[0] = 2; // 0 and 25 (bounds are inclusive)
        expected[1] = 1; // 26
        expected[LATENCY_CELLS - 2] = 1; // 10 s
        expected[LATENCY_CELLS - 1] = 1; // over the last bound: +Inf
        assert_eq!(snapshot.buckets, expected);
        assert_eq!(snapshot.sum_us, 20_000_052);
        assert_eq!(snapshot.count(), 5);
    }

    #[test]
    fn quantiles_are_bucket_bounds() {
        let histogram = LatencyHistogram::default();
        assert_eq!(histogram.snapshot().quantile_us(0.99), None);
        for _ in 0..99 {
            histogram.record(40);
        }
        let before = histogram.snapshot();
        histogram.record(3_000);
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.quantile_us(0.5), Some(50));
        assert_eq!(snapshot.quantile_us(0.99), Some(50));
        assert_eq!(snapshot.quantile_us(1.0), Some(5_000));
        assert_eq!(snapshot.since(&before).quantile_us(0.5), Some(5_000));
    }

    #[test]
    fn responses_count_by_class_and_container() {
        let counters = ShardCounters::new(2);
        for status in [101, 200, 204, 304, 404, 503] {
            counters.record_response(status, 10, 1);
        }
        counters.record_response(200, 10, 7); // an unknown container is not counted per container
        let snapshot = counters.snapshot(0);
        assert_eq!(snapshot.requests, 7);
        let classes = [
            snapshot.responses_1xx,
            snapshot.responses_2xx,
            snapshot.responses_3xx,
            snapshot.responses_4xx,
            snapshot.responses_5xx,
        ];
        assert_eq!(classes, [1, 3, 1, 1, 1]);
        assert_eq!(counters.container_requests(), vec![0, 6]);
        assert_eq!(snapshot.latency.count(), 7);
    }
}
