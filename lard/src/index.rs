//! `SlotIndex`: the target table's map from target to slot — open addressing with linear probing in one
//! array of 16-byte cells (key and slot side by side), so a lookup costs one cache miss where a
//! `HashMap<TargetId, u32>` costs two (its control bytes and its buckets live in different cache lines).
//!
//! Invariants: the cell count is a power of two ≥ 16; at most 3/4 of the cells are occupied (the array
//! doubles, rehashing every key, when an insert would pass that); every key sits in the probe run from its
//! home cell without an empty cell in between (deletion shifts later cells back instead of leaving
//! tombstones). Keys are already hashes (FNV-1a of the path); they are mixed once more, with a folded
//! 64×64→128-bit multiply, so that clustered ids still spread.

use crate::TargetId;

const EMPTY: u32 = u32::MAX;
const CELLS_MIN: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Cell {
    key: u64,
    slot: u32,
}

const EMPTY_CELL: Cell = Cell {
    key: 0,
    slot: EMPTY,
};

pub(crate) struct SlotIndex {
    cells: Vec<Cell>,
    len: usize,
}

#[inline]
fn mix(key: u64) -> u64 {
    let product = u128::from(key) * 0x9e37_79b9_7f4a_7c15_u128;
    (product as u64) ^ ((product >> 64) as u64)
}

impl SlotIndex {
    pub(crate) fn new() -> SlotIndex {
        SlotIndex {
            cells: vec![EMPTY_CELL; CELLS_MIN],
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn mask(&self) -> usize {
        self.cells.len() - 1
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        mix(key) as usize & self.mask()
    }

    /// The cell holding `key`, or the empty cell where its probe run ends.
    #[inline]
    fn find(&self, key: u64) -> (usize, bool) {
        let mask = self.mask();
        let mut index = self.home(key);
        loop {
            let cell = self.cells[index];
            if cell.slot == EMPTY {
                return (index, false);
            }
            if cell.key == key {
                return (index, true);
            }
            index = (index + 1) & mask;
        }
    }

    #[inline]
    pub(crate) fn get(&self, target: TargetId) -> Option<u32> {
        match self.find(target.0) {
            (index, true) => Some(self.cells[index].slot),
            (_, false) => None,
        }
    }

    /// Insert `target`, which must be absent.
    pub(crate) fn insert(&mut self, target: TargetId, slot: u32) {
        assert!(slot != EMPTY, "slot {slot} is the empty marker");
        if (self.len + 1) * 4 > self.cells.len() * 3 {
            self.grow();
        }
        let (index, found) = self.find(target.0);
        assert!(!found, "{target:?} is already indexed");
        self.cells[index] = Cell {
            key: target.0,
            slot,
        };
        self.len += 1;
    }

    fn grow(&mut self) {
        let doubled = vec![EMPTY_CELL; self.cells.len() * 2];
        let old = std::mem::replace(&mut self.cells, doubled);
        for cell in old.into_iter().filter(|cell| cell.slot != EMPTY) {
            let (index, _) = self.find(cell.key);
            self.cells[index] = cell;
        }
    }

    /// Remove `target`; returns whether it was present.
    pub(crate) fn remove(&mut self, target: TargetId) -> bool {
        let (mut hole, found) = self.find(target.0);
        if !found {
            return false;
        }
        let mask = self.mask();
        let mut next = (hole + 1) & mask;
        // Backward shift: move each later cell of the run into the hole when the hole lies between its
        // home and its cell, so that no key is separated from its home by an empty cell.
        while self.cells[next].slot != EMPTY {
            let home = self.home(self.cells[next].key);
            if (next.wrapping_sub(home) & mask) >= (next.wrapping_sub(hole) & mask) {
                self.cells[hole] = self.cells[next];
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.cells[hole] = EMPTY_CELL;
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Differential test against `HashMap`, with keys that collide in the low bits to force long runs.
    #[test]
    fn matches_a_hash_map() {
        let mut index = SlotIndex::new();
        let mut model: HashMap<u64, u32> = HashMap::new();
        let mut state = 11u64;
        for step in 0..50_000u32 {
            state = crate::ring::mix64(state.wrapping_add(u64::from(step)));
            let key = (state % 300) << 40;
            let target = TargetId(key);
            if state % 3 == 0 {
                assert_eq!(
                    index.remove(target),
                    model.remove(&key).is_some(),
                    "step {step}"
                );
            } else if let std::collections::hash_map::Entry::Vacant(vacant) = model.entry(key) {
                index.insert(target, step);
                vacant.insert(step);
            }
            assert_eq!(index.len(), model.len(), "step {step}");
            if step % 97 == 0 {
                for probe in 0..300u64 {
                    let probe_key = probe << 40;
                    assert_eq!(
                        index.get(TargetId(probe_key)),
                        model.get(&probe_key).copied(),
                        "step {step}"
                    );
                }
            }
        }
        assert!(index.cells.len() >= 16 && index.len * 4 <= index.cells.len() * 3);
    }
}
