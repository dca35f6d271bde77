//! The shard doorbell: one eventfd per shard that other threads ring, and one local pump task that turns a ring
//! into wake-ups of the shard's waiting tasks — the only way a shard is woken from outside, so it never busy-polls.
//!
//! Ring protocol (any thread, [`Doorbell::ring`]):
//! 1. make the condition true (push the message, set the shutdown flag, free a queue slot);
//! 2. `pending |= reason` (SeqCst);
//! 3. if `parked.swap(false)` was true — the pump is (about to be) asleep — write 1 to the eventfd. While the pump
//!    is awake or spinning no system call is made.
//!
//! Pump protocol (the shard's own thread, [`LocalBell::pump`]):
//! 1. `bits = pending.swap(0)`; if `bits != 0`: wake the local waiters registered for those reasons, note the
//!    time, yield once (to the back of the run queue, see `yielder.rs`), go to 1;
//! 2. if less than `spin` (the mesh's `spin_before_park_us`) has passed since the last activity: yield once (the
//!    shard's other tasks and its driver run in between) and go to 1 — the shard stays awake briefly instead of
//!    paying two thread wake-ups per round trip;
//! 3. park: `parked = true`, full fence, re-check `pending` (non-zero: `parked = false`, go to 1); else await the
//!    eventfd becoming readable (an async `readv` of its 8-byte counter through the shard's driver: io_uring
//!    `IORING_OP_READV`, or epoll readiness + `readv`), then `parked = false` and go to 1.
//!
//! Why no wake-up is lost: step 3 of the ring and step 3 of the pump are a Dekker pair (each side writes its flag,
//! fences, reads the other's), so either the ringer sees `parked` and writes the eventfd, or the pump sees the
//! pending bit before it sleeps. Waiters live on the pump's thread, register before re-checking their condition, and
//! are woken by reason, so a message never wakes tasks that wait only for shutdown. A stale eventfd count only
//! causes one spurious turn of the pump.
//!
//! Limits: waiter lists hold at most one waker per distinct waiting task (deduplicated with `will_wake`) and are
//! emptied on every wake of their reason.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags};

use crate::fdwait::{check_read, CounterFd};
use crate::yielder::Yielder;

/// Why a doorbell was rung; one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A message arrived in one of the shard's incoming queues.
    Message = 1,
    /// A queue this shard is blocked sending into has a free slot.
    Space = 2,
    /// The pool asked every shard to stop.
    Shutdown = 4,
}

const REASONS: [Reason; 3] = [Reason::Message, Reason::Space, Reason::Shutdown];

fn slot(reason: Reason) -> usize {
    match reason {
        Reason::Message => 0,
        Reason::Space => 1,
        Reason::Shutdown => 2,
    }
}

/// The cross-thread half: shared (`Arc`) by everyone who may wake the shard.
#[derive(Debug)]
pub(crate) struct Doorbell {
    eventfd: OwnedFd,
    parked: AtomicBool,
    pending: AtomicU32,
}

impl Doorbell {
    pub(crate) fn new() -> std::io::Result<Arc<Self>> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC)?;
        Ok(Arc::new(Doorbell {
            eventfd: fd,
            parked: AtomicBool::new(false),
            pending: AtomicU32::new(0),
        }))
    }

    /// Wakes the shard's waiters for `reason` (ring protocol, steps 2–3). Call after making the condition true.
    #[inline]
    pub(crate) fn ring(&self, reason: Reason) {
        self.pending.fetch_or(reason as u32, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            // The count can only saturate after 2^64-2 unread rings; the pump reads it to zero on every turn.
            let _ = rustix::io::write(&self.eventfd, &1u64.to_ne_bytes());
        }
    }
}

/// The shard-local half: waiter lists and the pump.
pub(crate) struct LocalBell {
    bell: Arc<Doorbell>,
    waiters: [RefCell<Vec<Waker>>; 3],
}

impl LocalBell {
    pub(crate) fn new(bell: Arc<Doorbell>) -> Rc<Self> {
        Rc::new(LocalBell {
            bell,
            waiters: Default::default(),
        })
    }

    /// Registers the current task to be woken on the next ring for `reason`.
    pub(crate) fn register(&self, reason: Reason, waker: &Waker) {
        let mut list = self.waiters[slot(reason)].borrow_mut();
        if !list.iter().any(|w| w.will_wake(waker)) {
            list.push(waker.clone());
        }
    }

    /// Resolves with `check()`'s value once it is `Some`, sleeping on `reason` rings in between.
    pub(crate) fn wait_for<'a, T: 'a>(
        &'a self,
        reason: Reason,
        mut check: impl FnMut() -> Option<T> + 'a,
    ) -> impl Future<Output = T> + 'a {
        std::future::poll_fn(move |cx| {
            if let Some(value) = check() {
                return Poll::Ready(value);
            }
            self.register(reason, cx.waker());
            // Re-check after registering: a ring in between has set its pending bit, which the pump will see.
            match check() {
                Some(value) => Poll::Ready(value),
                None => Poll::Pending,
            }
        })
    }

    fn wake(&self, bits: u32) {
        for reason in REASONS {
            if bits & reason as u32 != 0 {
                let wakers = std::mem::take(&mut *self.waiters[slot(reason)].borrow_mut());
                wakers.into_iter().for_each(Waker::wake);
            }
        }
    }

    /// The pump task (see the module docs). `nonblocking` must be true for the epoll driver (readiness-based
    /// reads) and false for io_uring (which then waits inside the kernel instead of returning EAGAIN).
    pub(crate) async fn pump(self: Rc<Self>, nonblocking: bool, spin: Duration, yielder: Yielder) {
        let fd = rustix::io::dup(self.bell.eventfd.as_fd()).expect("dup of the shard eventfd");
        let mut reader =
            Some(CounterFd::new(fd, nonblocking).expect("registering the shard eventfd"));
        let mut last_activity = Instant::now();
        loop {
            // Step 1 (awake): take the pending reasons; ringers do not write the eventfd while we are not parked.
            let bits = self.bell.pending.swap(0, Ordering::SeqCst);
            if bits != 0 {
                self.wake(bits);
                last_activity = Instant::now();
                yielder.yield_now().await;
                continue;
            }
            // Step 2: shortly after activity, stay awake (yielding to the shard's other tasks and its driver) —
            // a reply usually comes within microseconds, and parking costs two thread wake-ups per round trip.
            if last_activity.elapsed() < spin {
                yielder.yield_now().await;
                continue;
            }
            // Step 3: park. Dekker pair with `ring`: announce, fence, re-check.
            self.bell.parked.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.bell.pending.load(Ordering::SeqCst) != 0 {
                self.bell.parked.store(false, Ordering::SeqCst);
                continue;
            }
            let (returned, result) = reader
                .take()
                .expect("reader is back after each read")
                .read()
                .await;
            reader = Some(returned);
            self.bell.parked.store(false, Ordering::SeqCst);
            check_read("eventfd", result);
        }
    }
}
