//! The bounded target table of LARD and LARD/R: target → server set, with CLOCK (second-chance) eviction.
//!
//! Model: an index ([`SlotIndex`]) from target to a slot of `entries`. A hit sets the slot's `referenced` bit
//! and touches nothing else (two cache misses at most: the index cell and the entry; an LRU list would also
//! touch both neighbours). When the table is full, the eviction hand sweeps the slots, clearing `referenced` bits, and
//! evicts the first unreferenced target: an approximation of least-recently-used that gives every target
//! used since the hand last passed a second chance. A separate age hand visits [`EXPIRE_PER_TOUCH`] slots per
//! `touch` and drops targets idle for `idle_ms` or more, so a cold target leaves within `capacity / 2`
//! touches of turning cold. Both hands are amortised O(1): each eviction sweep step clears a bit that one
//! `touch` set.
//!
//! Invariants: `map.len()` ≤ `capacity`; a slot is occupied iff the map points at it; free slots are on the
//! free list; an occupied slot's set is non-empty except between insertion and the caller's first
//! assignment. Limits: `capacity` ≤ [`crate::TARGETS_MAX_LIMIT`]; 85 to 128 bytes a target: a 64-byte entry
//! (never more than `capacity` slots: the vector grows by doubling, capped) and 16-byte index cells at 3/8 to
//! 3/4 load; sets of more than one member spill to a heap block that the slot keeps when it is reused, so a
//! full table stops allocating. Growing the index rehashes every key once per doubling (about 10 ms at 1M).

use crate::index::SlotIndex;
use crate::{ServerId, TargetId, TargetView};

/// Slots the age hand visits per `touch`: more than one, so the table drains faster than it fills.
pub const EXPIRE_PER_TOUCH: usize = 2;

/// A target's server set in insertion order: the first member inline, the others in a spill vector that
/// stays unallocated (and untouched) for single-member sets, i.e. always for LARD.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServerSet {
    first: Option<ServerId>,
    rest: Vec<ServerId>,
}

impl ServerSet {
    #[inline]
    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    #[inline]
    pub(crate) fn iter(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.first.into_iter().chain(self.rest.iter().copied())
    }

    pub(crate) fn contains(&self, server: ServerId) -> bool {
        self.iter().any(|held| held == server)
    }

    pub(crate) fn push(&mut self, server: ServerId) {
        match self.first {
            None => self.first = Some(server),
            Some(_) => self.rest.push(server),
        }
    }

    /// Make `server` the only member.
    pub(crate) fn replace_all(&mut self, server: ServerId) {
        self.first = Some(server);
        self.rest.clear();
    }

    fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }

    /// Keep the members for which `keep` is true, in order.
    #[inline]
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(ServerId) -> bool) {
        let first_kept = self.first.filter(|first| keep(*first));
        if !self.rest.is_empty() {
            self.rest.retain(|server| keep(*server));
        }
        self.first = first_kept;
        if self.first.is_none() && !self.rest.is_empty() {
            self.first = Some(self.rest.remove(0));
        }
    }

    pub(crate) fn to_vec(&self) -> Vec<ServerId> {
        self.iter().collect()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) target: TargetId,
    pub(crate) last_change_ms: u64,
    pub(crate) last_use_ms: u64,
    /// Saturates at u32::MAX.
    pub(crate) requests: u32,
    /// LARD: exactly one server once assigned; LARD/R: the server set. Empty only when just inserted.
    pub(crate) servers: ServerSet,
    referenced: bool,
    occupied: bool,
}

pub(crate) struct TargetTable {
    map: SlotIndex,
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// Next slot the eviction sweep looks at.
    evict_hand: usize,
    /// Next slot the idle check looks at.
    age_hand: usize,
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
            capacity <= u32::MAX as usize,
            "target table capacity {capacity} must fit a u32 slot"
        );
        TargetTable {
            map: SlotIndex::new(),
            entries: Vec::new(),
            free: Vec::new(),
            evict_hand: 0,
            age_hand: 0,
            capacity,
            idle_ms,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    fn evict(&mut self, slot: usize) {
        let entry = &mut self.entries[slot];
        debug_assert!(entry.occupied, "evicting free slot {slot}");
        entry.occupied = false;
        let removed = self.map.remove(entry.target);
        debug_assert!(removed, "slot {slot} was not indexed");
        self.free.push(slot as u32);
    }

    fn expire(&mut self, now_ms: u64) {
        let len = self.entries.len();
        if len == 0 {
            return;
        }
        for _ in 0..EXPIRE_PER_TOUCH {
            self.age_hand = if self.age_hand + 1 >= len {
                0
            } else {
                self.age_hand + 1
            };
            let entry = &self.entries[self.age_hand];
            if entry.occupied && now_ms.saturating_sub(entry.last_use_ms) >= self.idle_ms {
                self.evict(self.age_hand);
            }
        }
    }

    /// Sweep to the first unreferenced occupied slot, clearing bits on the way, and evict it. Terminates
    /// within two turns: the first turn clears every bit it passes.
    fn evict_one(&mut self) {
        let len = self.entries.len();
        loop {
            let hand = self.evict_hand;
            self.evict_hand = if hand + 1 >= len { 0 } else { hand + 1 };
            let entry = &mut self.entries[hand];
            if !entry.occupied {
                continue;
            }
            if entry.referenced {
                entry.referenced = false;
            } else {
                self.evict(hand);
                return;
            }
        }
    }

    /// Find or insert `target`, mark it used and count one request; returns its slot.
    /// A new target has an empty server set.
    #[inline]
    pub(crate) fn touch(&mut self, target: TargetId, now_ms: u64) -> usize {
        self.expire(now_ms);
        if let Some(slot) = self.map.get(target) {
            let entry = &mut self.entries[slot as usize];
            entry.referenced = true;
            entry.last_use_ms = now_ms;
            entry.requests = entry.requests.saturating_add(1);
            return slot as usize;
        }
        if self.map.len() >= self.capacity {
            self.evict_one();
        }
        let slot = match self.free.pop() {
            Some(slot) => slot as usize,
            None => {
                if self.entries.len() == self.entries.capacity() {
                    // Grow by doubling, but never past `capacity` slots.
                    let room = self.capacity - self.entries.len();
                    let more = self.entries.len().max(16).min(room);
                    self.entries.reserve_exact(more);
                }
                self.entries.push(Entry {
                    target,
                    last_change_ms: now_ms,
                    last_use_ms: now_ms,
                    requests: 0,
                    servers: ServerSet::default(),
                    referenced: false,
                    occupied: false,
                });
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[slot];
        entry.target = target;
        entry.servers.clear();
        entry.last_change_ms = now_ms;
        entry.last_use_ms = now_ms;
        entry.requests = 1;
        // New targets start unreferenced: a scan of one-hit targets cannot flush the hot ones.
        entry.referenced = false;
        entry.occupied = true;
        self.map.insert(target, slot as u32);
        slot
    }

    pub(crate) fn entry_mut(&mut self, slot: usize) -> &mut Entry {
        &mut self.entries[slot]
    }

    /// Occupied entries in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.iter().filter(|entry| entry.occupied)
    }

    /// The `limit` targets with the most requests, most first.
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
                servers: entry.servers.to_vec(),
                last_change_ms: entry.last_change_ms,
                last_use_ms: entry.last_use_ms,
                requests: u64::from(entry.requests),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(table: &TargetTable) -> Vec<u64> {
        let mut targets: Vec<u64> = table.iter().map(|entry| entry.target.0).collect();
        targets.sort_unstable();
        targets
    }

    #[test]
    fn full_table_evicts_an_unreferenced_target_first() {
        let mut table = TargetTable::new(3, 1_000);
        for target in [1, 2, 3, 1] {
            table.touch(TargetId(target), 0);
        }
        // 1 was used again (referenced): the hand skips it and evicts 2.
        table.touch(TargetId(4), 0);
        assert_eq!(held(&table), vec![1, 3, 4]);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn idle_targets_age_out_as_the_hand_passes() {
        let mut table = TargetTable::new(10, 100);
        for target in 1..=5 {
            table.touch(TargetId(target), target);
        }
        // At 104, targets used at 1..=4 are idle for >= 100 ms. Each touch checks two slots.
        table.touch(TargetId(5), 104);
        table.touch(TargetId(5), 104);
        table.touch(TargetId(5), 104);
        assert_eq!(held(&table), vec![5]);
    }

    /// Differential test against a naive CLOCK model: a Vec of (target, referenced) and a hand.
    #[test]
    fn matches_a_naive_clock_model() {
        const CAPACITY: usize = 8;
        let mut table = TargetTable::new(CAPACITY, u64::MAX);
        let mut model: Vec<(u64, bool)> = Vec::new();
        let mut hand = 0usize;
        let mut state = 7u64;
        for step in 0..5_000u64 {
            state = crate::ring::mix64(state + step);
            let target = state % 20;
            table.touch(TargetId(target), step);
            if let Some(held) = model.iter_mut().find(|(held, _)| *held == target) {
                held.1 = true;
            } else if model.len() < CAPACITY {
                model.push((target, false));
            } else {
                while model[hand].1 {
                    model[hand].1 = false;
                    hand = (hand + 1) % CAPACITY;
                }
                model[hand] = (target, false);
                hand = (hand + 1) % CAPACITY;
            }
            let mut expected: Vec<u64> = model.iter().map(|(target, _)| *target).collect();
            expected.sort_unstable();
            assert_eq!(held(&table), expected, "step {step}");
        }
    }

    #[test]
    fn entry_fits_a_cache_line() {
        assert!(
            std::mem::size_of::<Entry>() <= 64,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn slots_never_exceed_capacity() {
        let mut table = TargetTable::new(100, 1_000);
        for target in 0..1_000 {
            table.touch(TargetId(target), 0);
        }
        assert!(
            table.entries.capacity() <= 100,
            "{}",
            table.entries.capacity()
        );
        assert_eq!(table.len(), 100);
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

    #[test]
    fn server_set_keeps_order_and_promotes_the_second_member() {
        let mut set = ServerSet::default();
        for id in [4, 2, 9] {
            set.push(ServerId(id));
        }
        set.retain(|server| server != ServerId(4));
        assert_eq!(set.to_vec(), vec![ServerId(2), ServerId(9)]);
        assert!(set.contains(ServerId(9)));
        set.replace_all(ServerId(1));
        assert_eq!((set.to_vec(), set.len()), (vec![ServerId(1)], 1));
    }
}
