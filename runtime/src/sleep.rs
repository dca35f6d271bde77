//! Async sleeps and timeouts on the shard's own timer wheel ([`crate::timer::TimerWheel`]).
//!
//! What it owns: one `TimerWheel<Waker>` per shard and the *timer driver* task that advances it. Time is
//! nanoseconds since the shard started (`Instant` captured at shard start-up).
//!
//! Driving protocol (the driver task, one per shard):
//! 1. `now = elapsed since shard start`; `wheel.advance(now)`; wake every expired waker;
//! 2. `target = wheel.next_deadline_ns()` (none → disarmed); if it changed, arm the shard's timerfd
//!    (`CLOCK_MONOTONIC`, relative, nanosecond precision) to expire at `target`;
//! 3. wait until the timerfd expires (read through the shard's driver, see `fdwait.rs`) or an insert with an
//!    earlier deadline wakes the driver (the inserting [`Sleep`] compares its deadline with `target`); go to 1.
//!
//! A [`Sleep`] resolves when the shard clock reaches its deadline: it never fires early (it re-reads the clock when
//! polled), and fires within about one wheel tick after it. The timerfd completion is collected on every driver
//! turn, so timers keep firing on a shard that is never idle — unlike monoio's own timers, which are only
//! processed when the runtime parks. Dropping a `Sleep` cancels its timer (O(1)).
//!
//! Limits: the wheel's `timers_max` (default 4M); when full, [`ShardTimers::sleep`] resolves to
//! [`TimerError::Full`] rather than growing.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

use crate::fdwait::{check_read, CounterFd, CounterRead};
use crate::timer::{TimerConfig, TimerError, TimerId, TimerWheel};

struct State {
    wheel: RefCell<TimerWheel<Waker>>,
    origin: Instant,
    /// The deadline the driver currently sleeps until (`u64::MAX`: none).
    target_ns: Cell<u64>,
    driver: RefCell<Option<Waker>>,
    expired: RefCell<Vec<Waker>>,
    /// Timers armed since the shard started (published with the statistics).
    armed_total: Cell<u64>,
}

/// The shard's timer facility: a cheap `Rc` handle; clone it into tasks.
#[derive(Clone)]
pub struct ShardTimers {
    state: Rc<State>,
}

/// A timeout elapsed, or the timer could not be armed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    #[error("deadline elapsed")]
    Elapsed,
    #[error(transparent)]
    Timer(#[from] TimerError),
}

impl ShardTimers {
    /// A timer facility whose clock starts at `origin`.
    pub fn new(config: TimerConfig, origin: Instant) -> Result<Self, TimerError> {
        Ok(ShardTimers {
            state: Rc::new(State {
                wheel: RefCell::new(TimerWheel::new(config)?),
                origin,
                target_ns: Cell::new(u64::MAX),
                driver: RefCell::new(None),
                expired: RefCell::new(Vec::new()),
                armed_total: Cell::new(0),
            }),
        })
    }

    /// Nanoseconds since the shard started.
    pub fn now_ns(&self) -> u64 {
        self.state.origin.elapsed().as_nanos() as u64
    }

    /// The shard clock's origin.
    pub fn origin(&self) -> Instant {
        self.state.origin
    }

    /// Armed timers.
    pub fn armed(&self) -> usize {
        self.state.wheel.borrow().len()
    }

    /// Timers armed since the shard started (a counter: only grows).
    pub fn armed_total(&self) -> u64 {
        self.state.armed_total.get()
    }

    /// Resolves `duration` from now.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        let deadline_ns = self.now_ns().saturating_add(duration.as_nanos() as u64);
        self.sleep_until_ns(deadline_ns)
    }

    /// Resolves at `deadline` (an `Instant`; deadlines before the shard started resolve at once).
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        let deadline_ns = deadline
            .saturating_duration_since(self.state.origin)
            .as_nanos() as u64;
        self.sleep_until_ns(deadline_ns)
    }

    /// Resolves when the shard clock reaches `deadline_ns`.
    pub fn sleep_until_ns(&self, deadline_ns: u64) -> Sleep {
        Sleep {
            timers: self.clone(),
            deadline_ns,
            armed: None,
        }
    }

    /// Runs `future` for at most `duration`.
    pub async fn timeout<F: Future>(
        &self,
        duration: Duration,
        future: F,
    ) -> Result<F::Output, TimeoutError> {
        let mut sleep = std::pin::pin!(self.sleep(duration));
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Err(TimeoutError::Elapsed)),
                Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Fires every due timer now (driving step 1 without the driver): the container scheduler calls it at each
    /// turn, so a busy shard's timers fire within a turn of their deadline (soft timers) without a timerfd
    /// expiry. Cheap when nothing is due: one clock read and one comparison.
    pub fn fire_due(&self) {
        let now_ns = self.now_ns();
        let due = {
            let wheel = self.state.wheel.borrow();
            wheel.next_deadline_ns().is_some_and(|next| next <= now_ns)
        };
        if !due {
            return;
        }
        let mut expired = self.state.expired.take();
        self.state.wheel.borrow_mut().advance(now_ns, &mut expired);
        for waker in expired.drain(..) {
            waker.wake();
        }
        *self.state.expired.borrow_mut() = expired;
    }

    fn arm(&self, deadline_ns: u64, waker: Waker) -> Result<TimerId, TimerError> {
        let id = self.state.wheel.borrow_mut().insert(deadline_ns, waker)?;
        self.state.armed_total.set(self.state.armed_total.get() + 1);
        if deadline_ns < self.state.target_ns.get() {
            // The driver sleeps too long for this timer: make it recompute its target (driving step 3).
            self.state.target_ns.set(deadline_ns);
            if let Some(driver) = self.state.driver.borrow_mut().take() {
                driver.wake();
            }
        }
        Ok(id)
    }

    /// The driver task (see the module docs); spawned once per shard. `nonblocking`: true on epoll, false on
    /// io_uring (see `fdwait.rs`).
    pub(crate) async fn drive(self, nonblocking: bool) {
        let timerfd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC)
            .expect("creating the shard timerfd");
        let timerfd_setter = rustix::io::dup(&timerfd).expect("dup of the shard timerfd");
        let mut reader =
            Some(CounterFd::new(timerfd, nonblocking).expect("registering the shard timerfd"));
        let mut read: Option<CounterRead> = None;
        let mut armed_ns = u64::MAX;
        loop {
            // Step 1: fire what is due.
            let now_ns = self.now_ns();
            let mut expired = self.state.expired.take();
            self.state.wheel.borrow_mut().advance(now_ns, &mut expired);
            for waker in expired.drain(..) {
                waker.wake();
            }
            *self.state.expired.borrow_mut() = expired;
            // Step 2: the next deadline; (re)arm the timerfd only when it changed.
            let target_ns = self
                .state
                .wheel
                .borrow()
                .next_deadline_ns()
                .unwrap_or(u64::MAX);
            self.state.target_ns.set(target_ns);
            if target_ns != armed_ns {
                arm_timerfd(&timerfd_setter, target_ns, self.now_ns());
                armed_ns = target_ns;
            }
            // Step 3: wait for the timerfd, or for an insert with an earlier deadline.
            if read.is_none() {
                read = Some(
                    reader
                        .take()
                        .expect("reader is back after each read")
                        .read(),
                );
            }
            std::future::poll_fn(|cx| {
                if let Some(pending) = read.as_mut() {
                    if let Poll::Ready((returned, result)) = pending.as_mut().poll(cx) {
                        check_read("timerfd", result);
                        reader = Some(returned);
                        read = None;
                        // The expiry was consumed: force a re-arm even if the next target is the same.
                        armed_ns = u64::MAX;
                        return Poll::Ready(());
                    }
                }
                if self.state.target_ns.get() != target_ns {
                    return Poll::Ready(());
                }
                *self.state.driver.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
        }
    }
}

/// Arms `timerfd` to expire `target_ns - now_ns` from now (at least 1 ns), or disarms it for `u64::MAX`.
fn arm_timerfd(timerfd: &OwnedFd, target_ns: u64, now_ns: u64) {
    let value = if target_ns == u64::MAX {
        Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }
    } else {
        let delay_ns = target_ns.saturating_sub(now_ns).max(1);
        Timespec {
            tv_sec: (delay_ns / 1_000_000_000) as _,
            tv_nsec: (delay_ns % 1_000_000_000) as _,
        }
    };
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: value,
    };
    timerfd_settime(timerfd, TimerfdTimerFlags::empty(), &spec).expect("arming the shard timerfd");
}

impl std::fmt::Debug for ShardTimers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardTimers")
            .field("armed", &self.armed())
            .field("target_ns", &self.state.target_ns.get())
            .finish()
    }
}

/// A future that resolves at a deadline on the shard clock; see [`ShardTimers::sleep`].
#[must_use = "a Sleep does nothing unless awaited"]
pub struct Sleep {
    timers: ShardTimers,
    deadline_ns: u64,
    armed: Option<TimerId>,
}

impl Sleep {
    /// The deadline in shard-clock nanoseconds.
    pub fn deadline_ns(&self) -> u64 {
        self.deadline_ns
    }
}

impl Future for Sleep {
    type Output = Result<(), TimerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.timers.now_ns() >= this.deadline_ns {
            if let Some(id) = this.armed.take() {
                this.timers.state.wheel.borrow_mut().cancel(id);
            }
            return Poll::Ready(Ok(()));
        }
        // Not due: (re-)arm with the current waker. Cancel + insert is O(1), and a re-poll is rare (spurious wake
        // or a task moved between wakers).
        if let Some(id) = this.armed.take() {
            this.timers.state.wheel.borrow_mut().cancel(id);
        }
        match this.timers.arm(this.deadline_ns, cx.waker().clone()) {
            Ok(id) => {
                this.armed = Some(id);
                Poll::Pending
            }
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.armed.take() {
            // A drop during a wheel borrow cannot happen: the wheel is never borrowed across a wake or a poll.
            if let Ok(mut wheel) = self.timers.state.wheel.try_borrow_mut() {
                wheel.cancel(id);
            }
        }
    }
}
