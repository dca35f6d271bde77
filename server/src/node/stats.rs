//! Node statistics: per-shard counters written by the shard (relaxed atomics,
//! one writer each) and read from any thread (the control plane polls them),
//! and the shard's last hot-target window ([`super::hot`]), which the shard
//! replaces every 100 ms under a mutex that no request takes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::hot::HotWindow;
use crate::cache::CacheCounters;

/// One shard's counters. Monotonic except the `*_active` gauges and the cache's current sizes.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub requests: AtomicU64,
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
