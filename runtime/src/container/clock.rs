//! The clock container polls are timed with.
//!
//! # What this file owns
//! The [`Clock`] trait and its two implementations: [`MonotonicClock`] (shards) and [`ManualClock`] (tests and
//! simulations, where the test moves time by hand so that share accounting is deterministic).
//!
//! # Invariants
//! - `now_ns` never decreases; the scheduler charges `end - start` of each poll with a saturating subtraction, so a
//!   clock that broke this would charge 0 ns, not wrap.
//! - Clones of a [`ManualClock`] share one time (`Rc<Cell<u64>>`, `!Send`, like the scheduler).
//!
//! # Limits
//! None of its own: time is a `u64` of nanoseconds since the clock's origin.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

/// Source of time for poll accounting: nanoseconds since an origin of the clock's choosing, never decreasing.
pub trait Clock {
    fn now_ns(&self) -> u64;
}

/// The real clock: monotonic time (`std::time::Instant`, `CLOCK_MONOTONIC` through libc's vDSO call) since
/// construction. Not rustix's `clock_gettime`: its vDSO set-up crashes under valgrind, which we profile with.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

/// A clock moved by hand (tests, simulations); clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now_ns: Rc<Cell<u64>>,
}

impl ManualClock {
    pub fn new(start_ns: u64) -> Self {
        ManualClock {
            now_ns: Rc::new(Cell::new(start_ns)),
        }
    }

    pub fn advance_ns(&self, delta_ns: u64) {
        self.now_ns.set(self.now_ns.get() + delta_ns);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now_ns.get()
    }
}
