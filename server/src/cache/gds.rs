//! GreedyDual-Size replacement (Cao & Irani, USITS '97), as a byte-budgeted map.
//!
//! Owns: the values it holds, their charged sizes and their priorities `H`.
//!
//! The algorithm, as implemented here:
//! 1. Every value `p` has a priority `H(p) = L + cost(p) / size(p)`, set when `p` is inserted and again on every hit.
//! 2. `L` (the inflation value) starts at 0. To make room, the value with the smallest `H` is evicted and `L` becomes
//!    that `H`. So `L` never decreases, and a value that is not hit sinks below newly inserted or hit ones: an object
//!    survives in proportion to `cost/size`, aged by how long ago it was last hit.
//! 3. Ties on `H` are broken by age: the value whose `H` was set first is evicted first (an LRU among equals).
//!
//! Lazy re-queueing keeps a hit to one hash probe: every value sits in the ordered queue under the `(H, seq)` it had
//! when it was last queued, and a hit only raises the value's own `(H, seq)`. Because `L` never decreases, a queued
//! key is never above the value's current one. Eviction pops the queue's first key: if it is current, that value
//! has the smallest `(H, seq)` of all (every other queued key is a lower bound of its value's) and is evicted;
//! if it is out of date, the value is queued again under its current key and the pop repeats. Decisions are
//! exactly those of a scan for the minimum (the model test checks this).
//!
//! Invariants (checked by `check_invariants`, and by the model test against a linear-scan implementation):
//! - `bytes_used() <= bytes_budget` and `len() <= entries_max` after every call.
//! - `L <= H(p)` for every held `p`; `queue` and `slots` hold the same keys, one queue entry per slot, at a key no
//!   greater than the slot's current `(H, seq)`.
//!
//! Arithmetic is fixed-point and exact, so two implementations make the same decisions: `cost/size` is stored as
//! `cost * PRIORITY_SCALE / size` in a `u128` (`PRIORITY_SCALE` = 2^40; 1/size keeps 40 bits of resolution down to
//! 1 byte and about 16 bits at 16 MiB). `L` grows by at most `cost * 2^40` per eviction, so with costs below 2^32 it
//! needs more than 2^56 evictions to overflow `u128`.
//!
//! Cost: a hit is one `HashMap` probe and two stores; an insert is a probe and one `BTreeMap` insert (O(log n)); an
//! eviction is one `BTreeMap` pop plus one re-queue (O(log n)) per value hit since it was last queued whose queued
//! key is below the true minimum — amortised at most one re-queue per hit, but a single eviction after a phase that
//! hit every value (a warm-up with no evictions) may re-queue all n values (estimated 0.1–0.3 µs each: a few ms at
//! 64k entries). The alternative, re-ordering on every hit, costs about 3× a plain hash probe per hit.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A GreedyDual-Size priority in fixed point: `PRIORITY_SCALE` is 1.0.
pub type Priority = u128;

/// Fixed-point scale of [`Priority`]: 2^40.
pub const PRIORITY_SCALE: Priority = 1 << 40;

/// What it costs to bring an object back after it was evicted — the `cost` in `H = L + cost/size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostModel {
    /// `cost = 1` for every object ("GDS(1)"). `H = L + 1/size` keeps many small objects before a few large ones,
    /// which maximises the object (request) hit ratio — what a static web server is judged by. The default.
    Uniform,
    /// `cost` = the estimated time in µs to read the object from disk: `seek_us + size / bytes_per_us`.
    /// `cost/size = seek_us/size + 1/bytes_per_us`: small objects still win, but large ones are no longer
    /// almost free to evict, which trades some object hit ratio for byte hit ratio (disk bandwidth).
    DiskTime {
        /// Fixed cost of one read (seek or queueing), in µs; e.g. 100 for an SSD.
        seek_us: u64,
        /// Sequential read bandwidth in bytes per µs (= MB/s); e.g. 500; must be at least 1.
        bytes_per_us: u64,
    },
}

impl CostModel {
    /// The cost of an object of `size_bytes`, in the model's unit (1, or µs). At least 1.
    pub fn cost(&self, size_bytes: u64) -> u64 {
        match *self {
            CostModel::Uniform => 1,
            CostModel::DiskTime {
                seek_us,
                bytes_per_us,
            } => seek_us
                .saturating_add(size_bytes / bytes_per_us.max(1))
                .max(1),
        }
    }

    /// `cost / size` in fixed point: what a hit or an insert adds to `L`. `size_bytes` 0 counts as 1.
    pub fn priority_increment(&self, size_bytes: u64) -> Priority {
        Priority::from(self.cost(size_bytes)) * PRIORITY_SCALE / Priority::from(size_bytes.max(1))
    }
}

/// Why [`GdsMap::insert`] refused a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GdsRejected {
    /// The value alone is larger than the whole budget.
    #[error(
        "object of {size_bytes} bytes is larger than the cache budget of {bytes_budget} bytes"
    )]
    LargerThanBudget {
        /// Charged size of the refused value.
        size_bytes: u64,
        /// The map's budget.
        bytes_budget: u64,
    },
}

struct Slot<V> {
    value: V,
    size_bytes: u64,
    increment: Priority,
    /// Current `H`.
    priority: Priority,
    /// When `priority` was last set (tie-break: lower goes first).
    seq: u64,
    /// The key this slot sits under in `queue` (≤ `(priority, seq)`).
    queued: (Priority, u64),
}

/// A map whose values are evicted by GreedyDual-Size when the sum of their sizes would exceed `bytes_budget` or
/// their number would exceed `entries_max`. Single-threaded; no locks.
pub struct GdsMap<K, V> {
    slots: HashMap<K, Slot<V>>,
    queue: BTreeMap<(Priority, u64), K>,
    inflation: Priority,
    seq_next: u64,
    bytes_used: u64,
    bytes_budget: u64,
    entries_max: usize,
}

impl<K: Hash + Eq + Clone, V> GdsMap<K, V> {
    /// An empty map. `entries_max` 0 is treated as 1.
    pub fn new(bytes_budget: u64, entries_max: usize) -> Self {
        GdsMap {
            slots: HashMap::new(),
            queue: BTreeMap::new(),
            inflation: 0,
            seq_next: 0,
            bytes_used: 0,
            bytes_budget,
            entries_max: entries_max.max(1),
        }
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no value is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Sum of the charged sizes of the values held; never above `bytes_budget()`.
    pub fn bytes_used(&self) -> u64 {
        self.bytes_used
    }

    /// The byte budget.
    pub fn bytes_budget(&self) -> u64 {
        self.bytes_budget
    }

    /// The current inflation value `L` (the priority of the last evicted value; 0 before any eviction).
    pub fn inflation(&self) -> Priority {
        self.inflation
    }

    /// The priority `H` of `key`, if held.
    pub fn priority<Q>(&self, key: &Q) -> Option<Priority>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.slots.get(key).map(|slot| slot.priority)
    }

    /// The value of `key` without counting a hit (its priority is unchanged).
    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.slots.get(key).map(|slot| &slot.value)
    }

    /// A hit: `H(key) = L + cost/size`, and the value.
    pub fn touch<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.slots.get_mut(key)?;
        slot.priority = self.inflation + slot.increment;
        slot.seq = self.seq_next;
        self.seq_next += 1;
        Some(&mut slot.value)
    }

    /// Removes `key` (not an eviction: `L` is unchanged).
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.slots.remove(key)?;
        self.queue.remove(&slot.queued);
        self.bytes_used -= slot.size_bytes;
        Some(slot.value)
    }

    /// Inserts `value` under `key` with a charged size and `increment = cost/size` (see
    /// [`CostModel::priority_increment`]). A value already under `key` is replaced (returned, not counted as an
    /// eviction). Evicts min-`H` values, passing each to `on_evict` in eviction order, until the new value fits.
    pub fn insert(
        &mut self,
        key: K,
        value: V,
        size_bytes: u64,
        increment: Priority,
        mut on_evict: impl FnMut(K, V),
    ) -> Result<Option<V>, GdsRejected> {
        if size_bytes > self.bytes_budget {
            return Err(GdsRejected::LargerThanBudget {
                size_bytes,
                bytes_budget: self.bytes_budget,
            });
        }
        let replaced = self.remove(&key);
        while self.bytes_used + size_bytes > self.bytes_budget
            || self.slots.len() >= self.entries_max
        {
            let (queued, victim) = self
                .queue
                .pop_first()
                .expect("budget exceeded with no value held: size was checked against the budget");
            let slot = self
                .slots
                .get_mut(&victim)
                .expect("every queue entry has a slot");
            let current = (slot.priority, slot.seq);
            if queued != current {
                // Hit since it was queued: queue it again under its current key.
                slot.queued = current;
                self.queue.insert(current, victim);
                continue;
            }
            let slot = self.slots.remove(&victim).expect("just found");
            self.bytes_used -= slot.size_bytes;
            self.inflation = slot.priority;
            on_evict(victim, slot.value);
        }
        let priority = self.inflation + increment;
        let seq = self.seq_next;
        self.seq_next += 1;
        self.queue.insert((priority, seq), key.clone());
        self.slots.insert(
            key,
            Slot {
                value,
                size_bytes,
                increment,
                priority,
                seq,
                queued: (priority, seq),
            },
        );
        self.bytes_used += size_bytes;
        Ok(replaced)
    }

    /// Keys in eviction order (first = next to go). O(n log n); for tests and diagnostics.
    pub fn keys_in_eviction_order(&self) -> Vec<&K> {
        let mut keys: Vec<((Priority, u64), &K)> = self
            .slots
            .iter()
            .map(|(key, slot)| ((slot.priority, slot.seq), key))
            .collect();
        keys.sort_unstable_by_key(|(current, _)| *current);
        keys.into_iter().map(|(_, key)| key).collect()
    }

    /// Panics (a bug) if an invariant of the module docs does not hold. O(n); for tests.
    pub fn check_invariants(&self) {
        assert!(
            self.bytes_used <= self.bytes_budget,
            "bytes_used {} above bytes_budget {}",
            self.bytes_used,
            self.bytes_budget
        );
        assert!(
            self.slots.len() <= self.entries_max,
            "{} entries above entries_max {}",
            self.slots.len(),
            self.entries_max
        );
        assert_eq!(
            self.queue.len(),
            self.slots.len(),
            "queue and slots differ in size"
        );
        let mut bytes_sum = 0;
        for (queued, key) in &self.queue {
            let slot = self.slots.get(key).expect("queue entry without slot");
            assert_eq!(slot.queued, *queued, "queue entry disagrees with slot");
            assert!(
                *queued <= (slot.priority, slot.seq),
                "queued key {queued:?} above current {:?}",
                (slot.priority, slot.seq)
            );
            assert!(
                slot.priority >= self.inflation,
                "priority {} below inflation {}",
                slot.priority,
                self.inflation
            );
            bytes_sum += slot.size_bytes;
        }
        assert_eq!(
            bytes_sum, self.bytes_used,
            "bytes_used is not the sum of sizes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_cost_prefers_small_objects_and_inflates_on_eviction() {
        let model = CostModel::Uniform;
        let mut map: GdsMap<&str, ()> = GdsMap::new(100, 10);
        map.insert("big", (), 60, model.priority_increment(60), |_, _| {
            panic!("no eviction yet")
        })
        .unwrap();
        map.insert("small", (), 20, model.priority_increment(20), |_, _| {
            panic!("no eviction yet")
        })
        .unwrap();
        let mut evicted = Vec::new();
        map.insert("mid", (), 40, model.priority_increment(40), |key, _| {
            evicted.push(key)
        })
        .unwrap();
        assert_eq!(evicted, vec!["big"]);
        assert_eq!(map.inflation(), PRIORITY_SCALE / 60);
        assert_eq!(
            map.priority("mid"),
            Some(PRIORITY_SCALE / 60 + PRIORITY_SCALE / 40)
        );
        map.check_invariants();
    }

    #[test]
    fn disk_time_cost_adds_seek_and_transfer() {
        let model = CostModel::DiskTime {
            seek_us: 100,
            bytes_per_us: 500,
        };
        assert_eq!(model.cost(0), 100);
        assert_eq!(model.cost(1_000_000), 100 + 2_000);
        assert_eq!(
            model.priority_increment(1_000_000),
            2_100 * PRIORITY_SCALE / 1_000_000
        );
    }

    #[test]
    fn larger_than_budget_is_rejected_and_nothing_is_evicted() {
        let mut map: GdsMap<u32, ()> = GdsMap::new(10, 4);
        map.insert(1, (), 10, 1, |_, _| panic!("no eviction"))
            .unwrap();
        let rejected = map.insert(2, (), 11, 1, |_, _| panic!("no eviction"));
        assert_eq!(
            rejected,
            Err(GdsRejected::LargerThanBudget {
                size_bytes: 11,
                bytes_budget: 10
            })
        );
        assert_eq!(map.len(), 1);
    }
}
