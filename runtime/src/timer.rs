//! Hierarchical timer wheel: one per shard, carrying every connection timeout.
//!
//! # What this module owns
//! [`TimerWheel<T>`] stores armed timers, each a deadline plus a value `T` (whatever the shard wants back when the
//! timer fires: a waker, a connection id, …). It is a pure data structure with no clock of its own: time comes in as
//! `u64` nanoseconds since an origin the caller chooses (the shard uses its start instant), through
//! [`TimerWheel::insert`] and [`TimerWheel::advance`]. It never allocates per timer beyond its slab, which grows to
//! the peak number of armed timers and is then reused.
//!
//! # Model
//! Time is cut into ticks of `resolution_ns` (default 1 ms, at least 10 µs, at most 1 s). A deadline `d` ns becomes
//! the expiry tick `e = ceil(d / resolution_ns)`, so a timer never fires early. The wheel remembers the last tick it
//! processed, `elapsed`. A timer with `e > elapsed` lives on level `L = msb(e XOR elapsed) / 6` in slot
//! `(e >> 6L) & 63`: level 0 holds the timers of the current 64-tick block, level 1 those of later 64-tick blocks
//! in the current 4096-tick block, and so on over [`LEVELS`] = 6 levels of [`SLOTS`] = 64 slots, a range of
//! 64^6 = 2^36 ticks (about 795 days at 1 ms, 7.9 days at 10 µs). Timers further out than that sit in an
//! *overflow list*, which is re-sorted into the wheel each time `elapsed` crosses a 2^36-tick boundary (at most
//! once per 795 days at 1 ms). Timers whose tick has already been processed (deadline in the past) go to a
//! *pending list* and fire on the next [`TimerWheel::advance`], whatever its `now_ns`.
//!
//! [`TimerWheel::advance`]`(now_ns)` repeatedly takes the earliest occupied slot (found from one 64-bit occupancy
//! bitmap per level, lowest level first: every timer on level L expires before every timer on level L+1), moves
//! `elapsed` to that slot's start and either fires its timers (level 0, or exactly due) or re-inserts them, which
//! cascades them to lower levels. So a large jump in time costs the slots it touches, not the ticks it skips.
//!
//! # Invariants
//! - Every live timer is in exactly one list: pending, overflow, or the slot its tick and `elapsed` select.
//! - On level L every occupied slot index is greater than `elapsed`'s level-L digit (checked by `debug_assert!`).
//! - A timer fires at the first `advance(now_ns)` with `now_ns >= e * resolution_ns`: never before its deadline and
//!   less than one tick after it (measured in the caller's `now_ns`). It fires exactly once; a cancelled timer never
//!   fires; a [`TimerId`] is generation-checked, so cancelling a fired or cancelled timer returns `None` even after
//!   its slab entry was reused.
//! - `now_ns` passed to `advance` is treated as monotonic: a smaller value than before processes nothing.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | `timers_max` | default 4,194,304 (4M) per wheel, at most 2^32 − 2 | one timer per connection timeout; 4M × 48 B ≈ 200 MB bounds the slab; over it → [`TimerError::Full`] |
//! | `resolution_ns` | default 1,000,000 (1 ms); from 10,000 (10 µs) to 1,000,000,000 (1 s) | timeouts need ms; soft timers need tens of µs |
//! | wheel range | 2^36 ticks | beyond it timers wait in the overflow list |
//!
//! # Cost
//! - `insert`, `cancel`, `reset`: O(1): a slab slot from a free list, and a link into or out of an intrusive
//!   doubly linked slot list (32-bit indices).
//! - `advance`: O(levels) per occupied slot visited plus O(1) per timer fired or cascaded; each timer cascades at
//!   most once per level (at most 6 times) in its life, plus once per 2^36 ticks while in overflow.
//! - `next_deadline_ns`: O(levels).

use thiserror::Error;

/// Number of levels in the wheel.
pub const LEVELS: usize = 6;
/// Slots per level (a power of two: one bit per slot in a `u64` occupancy bitmap).
pub const SLOTS: usize = 64;
const SLOT_BITS: u32 = 6;
/// Ticks covered by the wheel; timers further out wait in the overflow list.
pub const WHEEL_RANGE_TICKS: u64 = 1 << (SLOT_BITS * LEVELS as u32);

/// Default tick length: 1 ms.
pub const RESOLUTION_NS_DEFAULT: u64 = 1_000_000;
/// Finest accepted tick length: 10 µs.
pub const RESOLUTION_NS_MIN: u64 = 10_000;
/// Coarsest accepted tick length: 1 s.
pub const RESOLUTION_NS_MAX: u64 = 1_000_000_000;
/// Default limit on armed timers per wheel: 4M.
pub const TIMERS_MAX_DEFAULT: usize = 4 << 20;
/// Largest accepted `timers_max` (slab indices are `u32`, one value is the list terminator).
pub const TIMERS_MAX_LIMIT: usize = u32::MAX as usize - 1;

const NIL: u32 = u32::MAX;
const LIST_PENDING: u16 = (LEVELS * SLOTS) as u16;
const LIST_OVERFLOW: u16 = LIST_PENDING + 1;
const LISTS: usize = LIST_OVERFLOW as usize + 1;
const LIST_FREE: u16 = u16::MAX;

/// Settings of one wheel; validated by [`TimerWheel::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// Tick length in nanoseconds: [`RESOLUTION_NS_MIN`]..=[`RESOLUTION_NS_MAX`].
    pub resolution_ns: u64,
    /// Maximum number of armed timers: 1..=[`TIMERS_MAX_LIMIT`].
    pub timers_max: usize,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            resolution_ns: RESOLUTION_NS_DEFAULT,
            timers_max: TIMERS_MAX_DEFAULT,
        }
    }
}

/// Errors of the timer wheel.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TimerError {
    /// `resolution_ns` outside the accepted range.
    #[error("timer resolution {resolution_ns} ns outside {min_ns}..={max_ns} ns")]
    ResolutionOutOfRange {
        resolution_ns: u64,
        min_ns: u64,
        max_ns: u64,
    },
    /// `timers_max` outside the accepted range.
    #[error("timers_max {timers_max} outside 1..={limit}")]
    TimersMaxOutOfRange { timers_max: usize, limit: usize },
    /// The wheel already holds `timers_max` armed timers.
    #[error("timer wheel full: {timers_max} timers armed")]
    Full { timers_max: usize },
}

/// Handle of an armed timer. Generation-checked: stays invalid after the timer fired or was cancelled, even when
/// its slab entry is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

struct Entry<T> {
    value: Option<T>,
    tick: u64,
    prev: u32,
    next: u32,
    generation: u32,
    list: u16,
}

/// Hierarchical timer wheel; see the module docs for the model, invariants, limits and costs.
pub struct TimerWheel<T> {
    entries: Vec<Entry<T>>,
    heads: [u32; LISTS],
    occupied: [u64; LEVELS],
    free_head: u32,
    len: usize,
    elapsed_tick: u64,
    resolution_ns: u64,
    timers_max: usize,
}

impl<T> TimerWheel<T> {
    /// A wheel whose clock starts at 0 ns (tick 0).
    pub fn new(config: TimerConfig) -> Result<Self, TimerError> {
        if !(RESOLUTION_NS_MIN..=RESOLUTION_NS_MAX).contains(&config.resolution_ns) {
            return Err(TimerError::ResolutionOutOfRange {
                resolution_ns: config.resolution_ns,
                min_ns: RESOLUTION_NS_MIN,
                max_ns: RESOLUTION_NS_MAX,
            });
        }
        if !(1..=TIMERS_MAX_LIMIT).contains(&config.timers_max) {
            return Err(TimerError::TimersMaxOutOfRange {
                timers_max: config.timers_max,
                limit: TIMERS_MAX_LIMIT,
            });
        }
        Ok(TimerWheel {
            entries: Vec::new(),
            heads: [NIL; LISTS],
            occupied: [0; LEVELS],
            free_head: NIL,
            len: 0,
            elapsed_tick: 0,
            resolution_ns: config.resolution_ns,
            timers_max: config.timers_max,
        })
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The configured limit on armed timers.
    pub fn timers_max(&self) -> usize {
        self.timers_max
    }

    /// The tick length.
    pub fn resolution_ns(&self) -> u64 {
        self.resolution_ns
    }

    /// Start of the last processed tick, in ns: timers with deadlines at or before it fire on the next `advance`.
    pub fn elapsed_ns(&self) -> u64 {
        self.elapsed_tick * self.resolution_ns
    }

    /// Arms a timer for `deadline_ns`. A deadline at or before the last processed tick fires on the next
    /// [`advance`](Self::advance). Errors with [`TimerError::Full`] at `timers_max` armed timers.
    pub fn insert(&mut self, deadline_ns: u64, value: T) -> Result<TimerId, TimerError> {
        if self.len >= self.timers_max {
            return Err(TimerError::Full {
                timers_max: self.timers_max,
            });
        }
        let tick = deadline_ns.div_ceil(self.resolution_ns);
        let index = if self.free_head != NIL {
            let index = self.free_head;
            let entry = &mut self.entries[index as usize];
            self.free_head = entry.next;
            entry.value = Some(value);
            entry.tick = tick;
            index
        } else {
            let index = self.entries.len() as u32;
            self.entries.push(Entry {
                value: Some(value),
                tick,
                prev: NIL,
                next: NIL,
                generation: 0,
                list: LIST_FREE,
            });
            index
        };
        self.len += 1;
        self.place(index);
        Ok(TimerId {
            index,
            generation: self.entries[index as usize].generation,
        })
    }

    /// Disarms a timer and returns its value; `None` if it already fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        self.live_entry(id)?;
        self.unlink(id.index);
        Some(self.release(id.index))
    }

    /// Moves an armed timer to a new deadline, keeping its id. Returns false (and does nothing) if the timer
    /// already fired or was cancelled.
    pub fn reset(&mut self, id: TimerId, deadline_ns: u64) -> bool {
        if self.live_entry(id).is_none() {
            return false;
        }
        self.unlink(id.index);
        self.entries[id.index as usize].tick = deadline_ns.div_ceil(self.resolution_ns);
        self.place(id.index);
        true
    }

    /// The deadline tick start (ns) of an armed timer: its deadline rounded up to the resolution.
    pub fn deadline_ns(&self, id: TimerId) -> Option<u64> {
        self.live_entry(id)
            .map(|entry| entry.tick * self.resolution_ns)
    }

    /// Fires every timer whose deadline is at or before `now_ns` (rounded down to a tick) plus every pending timer,
    /// appending their values to `expired` (order unspecified). Returns how many fired.
    pub fn advance(&mut self, now_ns: u64, expired: &mut Vec<T>) -> usize {
        let before = expired.len();
        let mut index = std::mem::replace(&mut self.heads[LIST_PENDING as usize], NIL);
        while index != NIL {
            let next = self.entries[index as usize].next;
            expired.push(self.release(index));
            index = next;
        }
        let now_tick = now_ns / self.resolution_ns;
        while let Some(next) = self.next_expiration() {
            if next.tick > now_tick {
                break;
            }
            self.elapsed_tick = next.tick;
            self.process_list(next.list, expired);
        }
        self.elapsed_tick = self.elapsed_tick.max(now_tick);
        expired.len() - before
    }

    /// The earliest time (ns) at which [`advance`](Self::advance) has work to do, `None` if no timer is armed.
    /// It is a lower bound on the next deadline: it may be a cascade point before the earliest deadline, never
    /// after it. With pending timers it is [`elapsed_ns`](Self::elapsed_ns) (due now). A shard sleeps until then,
    /// calls `advance`, and asks again.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.heads[LIST_PENDING as usize] != NIL {
            return Some(self.elapsed_ns());
        }
        self.next_expiration()
            .map(|next| next.tick.saturating_mul(self.resolution_ns))
    }

    fn live_entry(&self, id: TimerId) -> Option<&Entry<T>> {
        let entry = self.entries.get(id.index as usize)?;
        (entry.generation == id.generation && entry.list != LIST_FREE).then_some(entry)
    }

    /// Earliest occupied list: lowest level first, then the overflow list at the next wheel-range boundary.
    fn next_expiration(&self) -> Option<Expiration> {
        for level in 0..LEVELS {
            let shift = SLOT_BITS * level as u32;
            let digit = (self.elapsed_tick >> shift) & (SLOTS as u64 - 1);
            debug_assert!(
                self.occupied[level] & ((1u64 << digit) | ((1u64 << digit) - 1)) == 0,
                "slot at or before elapsed digit {digit} occupied on level {level}: {:#x}",
                self.occupied[level]
            );
            let later = self.occupied[level] & ((u64::MAX << digit) << 1);
            if later != 0 {
                let slot = later.trailing_zeros() as u64;
                let block_start = self.elapsed_tick & !((1u64 << (shift + SLOT_BITS)) - 1);
                return Some(Expiration {
                    tick: block_start + (slot << shift),
                    list: (level * SLOTS) as u16 + slot as u16,
                });
            }
        }
        if self.heads[LIST_OVERFLOW as usize] != NIL {
            let boundary = (self.elapsed_tick | (WHEEL_RANGE_TICKS - 1)).saturating_add(1);
            return Some(Expiration {
                tick: boundary,
                list: LIST_OVERFLOW,
            });
        }
        None
    }

    /// Fires the due timers of `list` and re-places the others relative to `elapsed_tick`.
    fn process_list(&mut self, list: u16, expired: &mut Vec<T>) {
        let mut index = std::mem::replace(&mut self.heads[list as usize], NIL);
        if (list as usize) < LEVELS * SLOTS {
            self.occupied[list as usize / SLOTS] &= !(1u64 << (list as usize % SLOTS));
        }
        while index != NIL {
            let next = self.entries[index as usize].next;
            if self.entries[index as usize].tick <= self.elapsed_tick {
                expired.push(self.release(index));
            } else {
                self.place(index);
            }
            index = next;
        }
    }

    /// Links an entry (not in any list) into the list its tick selects.
    fn place(&mut self, index: u32) {
        let tick = self.entries[index as usize].tick;
        let list = if tick <= self.elapsed_tick {
            LIST_PENDING
        } else {
            let level = ((63 - (tick ^ self.elapsed_tick).leading_zeros()) / SLOT_BITS) as usize;
            if level >= LEVELS {
                LIST_OVERFLOW
            } else {
                let slot = (tick >> (SLOT_BITS * level as u32)) as usize & (SLOTS - 1);
                self.occupied[level] |= 1u64 << slot;
                (level * SLOTS + slot) as u16
            }
        };
        let head = self.heads[list as usize];
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        let entry = &mut self.entries[index as usize];
        entry.list = list;
        entry.prev = NIL;
        entry.next = head;
        self.heads[list as usize] = index;
    }

    /// Unlinks an entry from its list, clearing the slot's occupancy bit when the list empties.
    fn unlink(&mut self, index: u32) {
        let Entry {
            prev, next, list, ..
        } = self.entries[index as usize];
        if prev != NIL {
            self.entries[prev as usize].next = next;
        } else {
            self.heads[list as usize] = next;
            if next == NIL && (list as usize) < LEVELS * SLOTS {
                self.occupied[list as usize / SLOTS] &= !(1u64 << (list as usize % SLOTS));
            }
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
    }

    /// Frees an entry (already unlinked, or part of a list being drained) and returns its value.
    fn release(&mut self, index: u32) -> T {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take();
        entry.generation = entry.generation.wrapping_add(1);
        entry.list = LIST_FREE;
        entry.prev = NIL;
        entry.next = self.free_head;
        self.free_head = index;
        self.len -= 1;
        match value {
            Some(value) => value,
            None => panic!("timer entry {index} released without a value"),
        }
    }
}

struct Expiration {
    tick: u64,
    list: u16,
}

impl<T> std::fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerWheel")
            .field("len", &self.len)
            .field("timers_max", &self.timers_max)
            .field("resolution_ns", &self.resolution_ns)
            .field("elapsed_tick", &self.elapsed_tick)
            .finish()
    }
}
