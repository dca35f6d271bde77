//! The bounded target table of LARD and LARD/R: target → server set, in least-recently-used order.
//!
//! Model: a hash map from target to a slot of `entries`, and an intrusive doubly linked list through the
//! slots, most recently used first. Every `touch` first drops up to [`EXPIRE_PER_TOUCH`] targets idle for
//! `idle_ms` or more from the cold end, then finds or inserts the target and moves it to the hot end; when the
//! table is full the coldest target is evicted. Every operation is O(1) (amortised over the map's growth).
//!
//! Invariants: `map.len()` ≤ `capacity`; the list holds exactly the slots in `map`, and the free list the
//! others; a slot's `servers` keeps its allocation when the slot is reused, so a full table stops allocating.
//! Limits: `capacity` ≤ [`crate::TARGETS_MAX_LIMIT`]; about 100 bytes a target (a 64-byte entry, the map's
//! 16-byte bucket at 87.5 % load, a small heap block for the set).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::{ServerId, TargetId, TargetView};

/// Most idle targets dropped by one `touch`: more than one, so the table drains faster than it fills.
pub const EXPIRE_PER_TOUCH: usize = 2;

const NIL: u32 = u32::MAX;

/// Hasher for ids that already are hashes: one 64×64→128-bit multiply, folded (as foldhash does), so both the
/// low bits (bucket) and the high bits (hashbrown's tag) depend on every input bit.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        let product = u128::from(value ^ self.0) * 0x9e37_79b9_7f4a_7c15_u128;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) target: TargetId,
    /// LARD: exactly one server once assigned; LARD/R: the server set. Empty only when just inserted.
    pub(crate) servers: Vec<ServerId>,
    pub(crate) last_change_ms: u64,
    pub(crate) last_use_ms: u64,
    pub(crate) requests: u64,
    prev: u32,
    next: u32,
}

pub(crate) struct TargetTable {
    map: HashMap<TargetId, u32, BuildHasherDefault<IdHasher>>,
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// Most recently used slot, or NIL.
    head: u32,
    /// Least recently used slot, or NIL.
    tail: u32,
    capacity: usize,
    idle_ms: u64,
}

impl TargetTable {
    pub(crate) fn new(capacity: usize, idle_ms: u64) -> TargetTable {
        assert!(
            capacity >= 1,
            "target table capacity {capacity} must be at least 1"
        );
        assert!(
            capacity < NIL as usize,
            "target table capacity {capacity} must fit a u32 slot"
        );
        TargetTable {
            map: HashMap::default(),
            entries: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity,
            idle_ms,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = (
            self.entries[slot as usize].prev,
            self.entries[slot as usize].next,
        );
        match prev {
            NIL => self.head = next,
            prev => self.entries[prev as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.entries[next as usize].prev = prev,
        }
    }

    fn push_front(&mut self, slot: u32) {
        let old_head = self.head;
        let entry = &mut self.entries[slot as usize];
        entry.prev = NIL;
        entry.next = old_head;
        match old_head {
            NIL => self.tail = slot,
            old_head => self.entries[old_head as usize].prev = slot,
        }
        self.head = slot;
    }

    fn evict(&mut self, slot: u32) {
        self.unlink(slot);
        let target = self.entries[slot as usize].target;
        self.map.remove(&target);
        self.free.push(slot);
    }

    fn expire(&mut self, now_ms: u64) {
        for _ in 0..EXPIRE_PER_TOUCH {
            let tail = self.tail;
            if tail == NIL
                || now_ms.saturating_sub(self.entries[tail as usize].last_use_ms) < self.idle_ms
            {
                return;
            }
            self.evict(tail);
        }
    }

    /// Find or insert `target`, make it the most recently used and count one request; returns its slot.
    /// A new target has an empty server set.
    pub(crate) fn touch(&mut self, target: TargetId, now_ms: u64) -> usize {
        self.expire(now_ms);
        if let Some(&slot) = self.map.get(&target) {
            if self.head != slot {
                self.unlink(slot);
                self.push_front(slot);
            }
            let entry = &mut self.entries[slot as usize];
            entry.last_use_ms = now_ms;
            entry.requests += 1;
            return slot as usize;
        }
        if self.map.len() >= self.capacity {
            self.evict(self.tail);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.entries.push(Entry {
                    target,
                    servers: Vec::new(),
                    last_change_ms: now_ms,
                    last_use_ms: now_ms,
                    requests: 0,
                    prev: NIL,
                    next: NIL,
                });
                (self.entries.len() - 1) as u32
            }
        };
        let entry = &mut self.entries[slot as usize];
        entry.target = target;
        entry.servers.clear();
        entry.last_change_ms = now_ms;
        entry.last_use_ms = now_ms;
        entry.requests = 1;
        self.map.insert(target, slot);
        self.push_front(slot);
        slot as usize
    }

    pub(crate) fn entry_mut(&mut self, slot: usize) -> &mut Entry {
        &mut self.entries[slot]
    }

    /// Targets from the most to the least recently used.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        let mut slot = self.head;
        std::iter::from_fn(move || {
            let entry = self.entries.get(slot as usize)?;
            slot = entry.next;
            Some(entry)
        })
    }

    /// The `limit` targets with the most requests, most first (ties: most recently used first).
    pub(crate) fn hottest(&self, limit: usize) -> Vec<TargetView> {
        let mut entries: Vec<&Entry> = self.iter().collect();
        if limit < entries.len() {
            entries.select_nth_unstable_by(limit, |a, b| b.requests.cmp(&a.requests));
            entries.truncate(limit);
        }
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.requests));
        entries
            .into_iter()
            .map(|entry| TargetView {
                target: entry.target,
                servers: entry.servers.clone(),
                last_change_ms: entry.last_change_ms,
                last_use_ms: entry.last_use_ms,
                requests: entry.requests,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(table: &TargetTable) -> Vec<u64> {
        table.iter().map(|entry| entry.target.0).collect()
    }

    #[test]
    fn full_table_evicts_the_least_recently_used() {
        let mut table = TargetTable::new(3, 1_000);
        for target in [1, 2, 3, 1, 4] {
            table.touch(TargetId(target), 0);
        }
        assert_eq!(order(&table), vec![4, 1, 3]);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn idle_targets_age_out_two_per_touch() {
        let mut table = TargetTable::new(10, 100);
        for target in 1..=5 {
            table.touch(TargetId(target), target);
        }
        // At 104, targets used at 1..=4 are idle for >= 100 ms; one touch drops the two coldest.
        table.touch(TargetId(9), 104);
        assert_eq!(order(&table), vec![9, 5, 4, 3]);
        table.touch(TargetId(9), 104);
        assert_eq!(order(&table), vec![9, 5]);
    }

    /// Differential test against a naive model: a Vec in LRU order.
    #[test]
    fn matches_a_naive_lru_model() {
        let mut table = TargetTable::new(8, u64::MAX);
        let mut model: Vec<u64> = Vec::new();
        let mut state = 7u64;
        for step in 0..5_000u64 {
            state = crate::ring::mix64(state + step);
            let target = state % 20;
            table.touch(TargetId(target), step);
            model.retain(|held| *held != target);
            model.insert(0, target);
            model.truncate(8);
            assert_eq!(order(&table), model, "step {step}");
        }
    }

    #[test]
    fn hottest_orders_by_requests() {
        let mut table = TargetTable::new(10, 1_000);
        for target in [1, 2, 2, 3, 3, 3, 4] {
            table.touch(TargetId(target), 0);
        }
        let hottest: Vec<(u64, u64)> = table
            .hottest(2)
            .iter()
            .map(|view| (view.target.0, view.requests))
            .collect();
        assert_eq!(hottest, vec![(3, 3), (2, 2)]);
    }
}
