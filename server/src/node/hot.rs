//! Hot targets per shard: which paths a shard serves most, so the control plane can list the hottest targets
//! and the shards that serve them (`ListTargets`).
//!
//! # What it owns
//! - [`HotSketch`]: a Misra-Gries frequent-items summary of the paths one shard served in the current window,
//!   with [`HOT_TARGETS_PER_SHARD_MAX`] (K = 64) counters. It lives in the shard (`RefCell`, no lock) and is
//!   updated once per served request from the connection's `record()`.
//! - [`HotWindow`]: what a shard publishes every [`HOT_WINDOW_MS`] (100 ms, the default load-report interval):
//!   the counters of the window that just ended, sorted by count, then the sketch starts empty. The window sits
//!   in the shard's `ShardCounters::hot` mutex, which only the shard's tick and the statistics reader take (never a
//!   request), so the data path takes no lock.
//! - [`StatsReader::hot_windows`](super::StatsReader::hot_windows): every shard's last window, for the node agent.
//!
//! # What is counted
//! A request whose head parsed and whose answer is 2xx or 3xx (a target that was served), by its normalised
//! path, on the shard that answered it (a handed-off request counts on the owner, not on the shard that
//! accepted it). Errors (400, 404, 405, 408, ...) are not targets. A path longer than [`HOT_PATH_BYTES_MAX`]
//! (256 bytes) is skipped, not truncated: a truncated path would merge distinct targets and name one that does
//! not exist. Skipped requests are counted in [`HotWindow::skipped`].
//!
//! # The sketch (Misra and Gries, 1982)
//! A path already in the sketch gets +1. A new path takes a free counter with count 1. With all K counters taken,
//! every counter drops by 1 and those reaching 0 are freed; the new path is not inserted (it spent its count on
//! the decrement). After N recorded requests each count is at most the path's true frequency f and at least
//! f − N / (K + 1): every path with f > N / (K + 1) is in the sketch. With K = 64 and a window of 10,000
//! requests, any path with more than 153 of them (1.5%) is listed, its count at most 153 low.
//!
//! # Cost
//! - [`HotSketch::record`]: one hash of the path (a multiply per 8 bytes), a probe of a 128-entry
//!   open-addressing index (load at most 1/2), one byte compare of the path. A decrement round costs O(K) and happens at most once per K + 1
//!   recorded requests, so a request costs O(1) amortised. No allocation: the 64 path buffers (256 bytes each,
//!   16 KiB a shard) are allocated with the sketch and reused.
//! - Publishing a window: one sort of at most 64 entries and one `String` per entry, 10 times a second.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`HOT_TARGETS_PER_SHARD_MAX`] | 64 counters | matches the control plane's 64 hot targets per node |
//! | [`HOT_PATH_BYTES_MAX`] | 256 bytes | bounds the sketch to 16 KiB a shard; longer paths are skipped |
//! | [`HOT_WINDOW_MS`] | 100 ms | one load-report interval: rates are over the last window |

use std::rc::Rc;
use std::time::Duration;

use super::shard::{race, Shard};
use super::stats::ShardCounters;
use crate::http::Status;

/// Counters (K) of one shard's sketch.
pub const HOT_TARGETS_PER_SHARD_MAX: usize = 64;
/// Longest path the sketch counts; longer paths are skipped.
pub const HOT_PATH_BYTES_MAX: usize = 256;
/// Length of one window; the shard publishes and resets its sketch this often.
pub const HOT_WINDOW_MS: u64 = 100;

/// Entries of the index: a power of two, at least twice K, so probes stay short.
const INDEX_ENTRIES: usize = 2 * HOT_TARGETS_PER_SHARD_MAX;
const INDEX_MASK: usize = INDEX_ENTRIES - 1;
/// An index entry that points at no counter.
const INDEX_EMPTY: u8 = u8::MAX;

/// One path and its count in a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotCount {
    /// The normalised path (lossy UTF-8).
    pub path: String,
    /// Requests counted in the window (a lower bound: module docs).
    pub requests: u64,
}

/// One shard's hot paths over one window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HotWindow {
    /// Length of the window, ms (0 before the first window ends).
    pub window_ms: u64,
    /// Requests recorded in the window (N).
    pub requests: u64,
    /// Requests not recorded: path longer than [`HOT_PATH_BYTES_MAX`].
    pub skipped: u64,
    /// At most [`HOT_TARGETS_PER_SHARD_MAX`] paths, by count (highest first), then by path.
    pub targets: Vec<HotCount>,
}

impl HotWindow {
    /// Requests per second of `count` over this window (0 for an empty window).
    pub fn rate(&self, count: u64) -> f64 {
        if self.window_ms == 0 {
            0.0
        } else {
            count as f64 * 1000.0 / self.window_ms as f64
        }
    }
}

/// A Misra-Gries summary of the paths of one window (module docs).
pub struct HotSketch {
    /// Counter slots: the path bytes (capacity [`HOT_PATH_BYTES_MAX`], reused), the count (0 = free), the hash.
    paths: Vec<Vec<u8>>,
    counts: [u64; HOT_TARGETS_PER_SHARD_MAX],
    hashes: [u64; HOT_TARGETS_PER_SHARD_MAX],
    /// Free slots (a stack).
    free: Vec<u8>,
    /// Open addressing with linear probing: slot number or [`INDEX_EMPTY`].
    index: [u8; INDEX_ENTRIES],
    requests: u64,
    skipped: u64,
}

impl Default for HotSketch {
    fn default() -> Self {
        HotSketch::new()
    }
}

impl std::fmt::Debug for HotSketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotSketch")
            .field("tracked", &self.tracked())
            .field("requests", &self.requests)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

/// The index position of a hash: its top bits (the multiply in [`hash_path`] mixes upwards).
fn index_of(hash: u64) -> usize {
    (hash >> (64 - INDEX_ENTRIES.trailing_zeros())) as usize
}

/// A multiply-rotate hash over 8-byte words (FxHash's step): a 30-byte path costs 4 multiplies, where a
/// byte-at-a-time hash (FNV-1a) costs 30 in a dependency chain (~40 ns, measured by `bench/micro` `hot_sketch`).
/// No secret seed: crafted paths can only lengthen a probe, and a probe is bounded by the 128 entries.
fn hash_path(bytes: &[u8]) -> u64 {
    const MULTIPLIER: u64 = 0x517c_c1b7_2722_0a95;
    let step = |hash: u64, word: u64| (hash.rotate_left(5) ^ word).wrapping_mul(MULTIPLIER);
    let mut hash = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word: [u8; 8] = word.try_into().expect("chunks_exact(8) gives 8 bytes");
        hash = step(hash, u64::from_le_bytes(word));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        hash = step(hash, u64::from_le_bytes(word));
    }
    hash
}

impl HotSketch {
    /// An empty sketch with its 64 path buffers allocated.
    pub fn new() -> HotSketch {
        HotSketch {
            paths: (0..HOT_TARGETS_PER_SHARD_MAX)
                .map(|_| Vec::with_capacity(HOT_PATH_BYTES_MAX))
                .collect(),
            counts: [0; HOT_TARGETS_PER_SHARD_MAX],
            hashes: [0; HOT_TARGETS_PER_SHARD_MAX],
            free: (0..HOT_TARGETS_PER_SHARD_MAX as u8).rev().collect(),
            index: [INDEX_EMPTY; INDEX_ENTRIES],
            requests: 0,
            skipped: 0,
        }
    }

    /// Counts one request of `path` (module docs: the sketch).
    pub fn record(&mut self, path: &[u8]) {
        if path.len() > HOT_PATH_BYTES_MAX {
            self.skipped += 1;
            return;
        }
        self.requests += 1;
        let hash = hash_path(path);
        let mut at = index_of(hash);
        loop {
            let slot = self.index[at];
            if slot == INDEX_EMPTY {
                break;
            }
            let slot = usize::from(slot);
            if self.hashes[slot] == hash && self.paths[slot] == path {
                self.counts[slot] += 1;
                return;
            }
            at = (at + 1) & INDEX_MASK;
        }
        match self.free.pop() {
            Some(slot) => {
                let index = usize::from(slot);
                self.paths[index].clear();
                self.paths[index].extend_from_slice(path);
                self.counts[index] = 1;
                self.hashes[index] = hash;
                self.index[at] = slot;
            }
            None => self.decrement_all(),
        }
    }

    /// Every counter drops by one; counters reaching 0 are freed and the index is rebuilt.
    fn decrement_all(&mut self) {
        let mut freed = false;
        for slot in 0..HOT_TARGETS_PER_SHARD_MAX {
            debug_assert!(self.counts[slot] > 0, "a full sketch has no free counter");
            self.counts[slot] -= 1;
            if self.counts[slot] == 0 {
                self.free.push(slot as u8);
                freed = true;
            }
        }
        if freed {
            self.index = [INDEX_EMPTY; INDEX_ENTRIES];
            for slot in 0..HOT_TARGETS_PER_SHARD_MAX {
                if self.counts[slot] > 0 {
                    let mut at = index_of(self.hashes[slot]);
                    while self.index[at] != INDEX_EMPTY {
                        at = (at + 1) & INDEX_MASK;
                    }
                    self.index[at] = slot as u8;
                }
            }
        }
    }

    /// The count of `path` (0 when it is not in the sketch).
    pub fn count(&self, path: &[u8]) -> u64 {
        self.entries()
            .find(|(tracked, _)| *tracked == path)
            .map_or(0, |(_, count)| count)
    }

    /// The paths in the sketch and their counts, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        (0..HOT_TARGETS_PER_SHARD_MAX)
            .filter(|&slot| self.counts[slot] > 0)
            .map(|slot| (self.paths[slot].as_slice(), self.counts[slot]))
    }

    /// Paths in the sketch (at most K).
    pub fn tracked(&self) -> usize {
        HOT_TARGETS_PER_SHARD_MAX - self.free.len()
    }

    /// Requests recorded since the last reset (N).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The window that ends now (`window_ms` long), then an empty sketch. Path buffers are kept.
    pub fn take_window(&mut self, window_ms: u64) -> HotWindow {
        let mut targets: Vec<HotCount> = self
            .entries()
            .map(|(path, requests)| HotCount {
                path: String::from_utf8_lossy(path).into_owned(),
                requests,
            })
            .collect();
        targets.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.path.cmp(&b.path))
        });
        let window = HotWindow {
            window_ms,
            requests: self.requests,
            skipped: self.skipped,
            targets,
        };
        self.counts = [0; HOT_TARGETS_PER_SHARD_MAX];
        self.free.clear();
        self.free.extend((0..HOT_TARGETS_PER_SHARD_MAX as u8).rev());
        self.index = [INDEX_EMPTY; INDEX_ENTRIES];
        self.requests = 0;
        self.skipped = 0;
        window
    }
}

/// Counts a request in the shard's sketch if it served a target (module docs: what is counted). Called from
/// the connection's `record()`.
pub(crate) fn record(shard: &Shard, parsed: bool, status: Status, path: &[u8]) {
    if parsed && (200..400).contains(&status.code()) {
        shard.hot.borrow_mut().record(path);
    }
}

/// The shard's tick: every [`HOT_WINDOW_MS`], publish the window that ended into the shard's counters and start
/// a new one. Ends when shutdown starts.
pub(crate) async fn publish_periodically(shard: Rc<Shard>) {
    let mut window_start_ms = shard.now_ms();
    while !shard.context.is_shutting_down() {
        let tick = shard
            .context
            .timers()
            .sleep(Duration::from_millis(HOT_WINDOW_MS));
        let ticked = race(async { Some(tick.await.is_ok()) }, async {
            shard.context.shutdown_requested().await;
            None
        })
        .await;
        match ticked {
            None => return,
            // The timer wheel is full: try again after other tasks ran, rather than spin or stop publishing.
            Some(false) => shard.context.yielder().yield_now().await,
            Some(true) => {}
        }
        let now_ms = shard.now_ms();
        let window = shard
            .hot
            .borrow_mut()
            .take_window(now_ms.saturating_sub(window_start_ms));
        window_start_ms = now_ms;
        publish(&shard.counters, window);
    }
}

fn publish(counters: &ShardCounters, window: HotWindow) {
    // Only this tick and the statistics reader take the lock; a poisoned one still holds a whole window.
    *counters
        .hot
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = window;
}

impl super::StatsReader {
    /// Every shard's last published window, by shard id (module docs).
    pub fn hot_windows(&self) -> Vec<HotWindow> {
        self.shared
            .counters
            .iter()
            .map(|counters| counters.hot_window())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const K: u64 = HOT_TARGETS_PER_SHARD_MAX as u64;

    #[test]
    fn counts_exactly_while_there_are_free_counters() {
        let mut sketch = HotSketch::new();
        for path in ["/a", "/b", "/a", "/c", "/a", "/b"] {
            sketch.record(path.as_bytes());
        }
        assert_eq!(sketch.count(b"/a"), 3);
        assert_eq!(sketch.count(b"/b"), 2);
        assert_eq!(sketch.count(b"/c"), 1);
        assert_eq!(sketch.count(b"/d"), 0);
        assert_eq!(sketch.tracked(), 3);
        let window = sketch.take_window(100);
        assert_eq!(window.requests, 6);
        assert_eq!(
            window
                .targets
                .iter()
                .map(|target| (target.path.as_str(), target.requests))
                .collect::<Vec<_>>(),
            [("/a", 3), ("/b", 2), ("/c", 1)],
            "highest count first"
        );
        assert_eq!(window.rate(3), 30.0, "3 requests in 100 ms");
        assert_eq!(sketch.tracked(), 0, "a new window starts empty");
        assert_eq!(sketch.requests(), 0);
    }

    #[test]
    fn a_full_sketch_decrements_every_counter_for_a_new_path() {
        let mut sketch = HotSketch::new();
        sketch.record(b"/hot");
        sketch.record(b"/hot");
        for other in 0..K - 1 {
            sketch.record(format!("/cold{other}").as_bytes());
        }
        assert_eq!(sketch.tracked(), HOT_TARGETS_PER_SHARD_MAX);
        sketch.record(b"/new");
        assert_eq!(
            sketch.count(b"/new"),
            0,
            "the new path paid for the decrement"
        );
        assert_eq!(sketch.count(b"/hot"), 1);
        assert_eq!(sketch.tracked(), 1, "every count-1 path was freed");
        sketch.record(b"/new");
        assert_eq!(sketch.count(b"/new"), 1, "a freed counter takes it");
        assert_eq!(
            sketch.count(b"/hot"),
            1,
            "the rebuilt index still finds /hot"
        );
    }

    #[test]
    fn paths_over_the_limit_are_skipped_not_truncated() {
        let mut sketch = HotSketch::new();
        let long = vec![b'a'; HOT_PATH_BYTES_MAX + 1];
        let longest = vec![b'a'; HOT_PATH_BYTES_MAX];
        sketch.record(&long);
        sketch.record(&longest);
        assert_eq!(sketch.count(&long), 0);
        assert_eq!(sketch.count(&longest), 1);
        let window = sketch.take_window(100);
        assert_eq!((window.requests, window.skipped), (1, 1));
    }

    #[test]
    fn reuses_its_path_buffers_across_windows() {
        let mut sketch = HotSketch::new();
        let buffers: Vec<*const u8> = sketch.paths.iter().map(|path| path.as_ptr()).collect();
        for round in 0..3 {
            for path in 0..2 * K {
                sketch.record(format!("/round{round}/{path:0>200}").as_bytes());
            }
            sketch.take_window(100);
        }
        let after: Vec<*const u8> = sketch.paths.iter().map(|path| path.as_ptr()).collect();
        assert_eq!(buffers, after, "no path buffer was reallocated");
    }

    /// Paths of the alphabet the streams draw from.
    const ALPHABET: u16 = 400;

    /// Streams with a few heavy paths among many light ones: indexes into the alphabet, where low indexes are
    /// drawn far more often.
    fn stream() -> impl Strategy<Value = Vec<u16>> {
        prop::collection::vec(
            prop_oneof![
                4 => 0u16..8,
                2 => 0u16..80,
                3 => 0u16..ALPHABET,
            ],
            0..3000,
        )
    }

    proptest! {
        // Each case records up to 3,000 requests: 64 cases keep the debug-build run short.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The model: exact counts in a map. Misra-Gries bounds: count ≤ f, count ≥ f − N/(K+1), so every
        /// path with f > N/K is present, and at most K paths are tracked.
        #[test]
        fn agrees_with_exact_counting_within_the_misra_gries_bound(stream in stream()) {
            let paths: Vec<Vec<u8>> = (0..ALPHABET).map(|item| format!("/p/{item}").into_bytes()).collect();
            let mut sketch = HotSketch::new();
            let mut exact: HashMap<&[u8], u64> = HashMap::new();
            for &item in &stream {
                let path = paths[usize::from(item)].as_slice();
                sketch.record(path);
                *exact.entry(path).or_default() += 1;
            }
            let total = stream.len() as u64;
            prop_assert_eq!(sketch.requests(), total);
            prop_assert!(sketch.tracked() <= HOT_TARGETS_PER_SHARD_MAX);
            let counted: HashMap<&[u8], u64> = sketch.entries().collect();
            for (&path, &count) in &counted {
                let truth = exact.get(path).copied().unwrap_or(0);
                prop_assert!(count <= truth, "{:?}: count {} > true {}", path, count, truth);
            }
            for (&path, &truth) in &exact {
                let count = counted.get(path).copied().unwrap_or(0);
                prop_assert!(
                    count + total / (K + 1) >= truth,
                    "{:?}: count {} more than N/(K+1) = {} below true {}", path, count, total / (K + 1), truth
                );
                if truth > total / K {
                    prop_assert!(count > 0, "{:?} with {} of {} requests is missing", path, truth, total);
                }
            }
        }
    }
}
