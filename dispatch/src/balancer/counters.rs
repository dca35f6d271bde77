//! The counters of a running dispatcher, bumped by every shard and read by a [`crate::DispatchHandle`].
//!
//! # Invariants
//! Each counter only grows (relaxed atomic adds); a [`CountersSnapshot`] reads each one on its own, so two
//! counters in one snapshot may be a few events apart.
//!
//! # Limits
//! Six `u64` counters; at 10^6 events a second one wraps after about 585,000 years.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a running dispatcher (all shards), readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) responses_502: AtomicU64,
    pub(crate) responses_503: AtomicU64,
    pub(crate) responses_504: AtomicU64,
    pub(crate) backends_marked_down: AtomicU64,
}

/// A snapshot of the dispatcher's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub requests: u64,
    pub retries: u64,
    pub responses_502: u64,
    pub responses_503: u64,
    pub responses_504: u64,
    pub backends_marked_down: u64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CountersSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CountersSnapshot {
            requests: load(&self.requests),
            retries: load(&self.retries),
            responses_502: load(&self.responses_502),
            responses_503: load(&self.responses_503),
            responses_504: load(&self.responses_504),
            backends_marked_down: load(&self.backends_marked_down),
        }
    }
}
