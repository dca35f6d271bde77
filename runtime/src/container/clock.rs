//! The clock container polls are timed with.
//!
//! # What this file owns
//! The [`Clock`] trait (wall time for polls, thread CPU time for the loop around them) and its two implementations: [`MonotonicClock`] (shards) and [`ManualClock`] (tests and
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

    /// CPU time the calling thread has used (ns), never decreasing: what the scheduler apportions between turns
    /// (the loop's work outside polls). Read once per turn that polled, on the scheduler's thread.
    fn cpu_ns(&self) -> u64;
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

    /// `CLOCK_THREAD_CPUTIME_ID` (the kernel's own per-thread CPU time, the figure `/proc/PID/task/TID/stat`
    /// shows; a system call, ~100-300 ns here, made once per turn).
    fn cpu_ns(&self) -> u64 {
        thread_cpu_ns()
    }
}

/// CPU time of the calling thread (ns), from the kernel (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_ns() -> u64 {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `spec`.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut spec) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    spec.tv_sec as u64 * 1_000_000_000 + spec.tv_nsec as u64
}

/// A clock moved by hand (tests, simulations); clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now_ns: Rc<Cell<u64>>,
    /// Time passed with the thread asleep ([`ManualClock::advance_idle_ns`]): not CPU time.
    idle_ns: Rc<Cell<u64>>,
}

impl ManualClock {
    pub fn new(start_ns: u64) -> Self {
        ManualClock {
            now_ns: Rc::new(Cell::new(start_ns)),
            idle_ns: Rc::new(Cell::new(0)),
        }
    }

    /// Time passes with the thread working (CPU time too).
    pub fn advance_ns(&self, delta_ns: u64) {
        self.now_ns.set(self.now_ns.get() + delta_ns);
    }

    /// Time passes with the thread asleep (no CPU time), as while a shard waits for a throttled budget.
    pub fn advance_idle_ns(&self, delta_ns: u64) {
        self.now_ns.set(self.now_ns.get() + delta_ns);
        self.idle_ns.set(self.idle_ns.get() + delta_ns);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now_ns.get()
    }

    /// `now_ns` less the idle time: a test's time advanced inside a poll is that poll's CPU, time advanced with
    /// [`advance_ns`](ManualClock::advance_ns) between turns is the loop's work outside polls.
    fn cpu_ns(&self) -> u64 {
        self.now_ns.get() - self.idle_ns.get()
    }
}
