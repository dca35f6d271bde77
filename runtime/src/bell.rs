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
//! Limits: a waiter list holds one slot per pending [`LocalBell::wait_for`] future: the future keeps its slot
//! across polls (replacing the waker only when it changed) and frees it when it is dropped — a connection task
//! that races an idle read against shutdown and then ends leaves nothing behind. A wake of a reason empties its
//! list and starts a new generation, so a slot handle from before the wake is never mistaken for a new one.
//! Registration and removal are O(1); the list's memory is bounded by the number of futures waiting at once.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
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

/// The wakers waiting for one reason. Slots are reused through `free`; `generation` grows with every wake, which
/// empties the list and invalidates every outstanding [`SlotHandle`].
#[derive(Default)]
struct WaiterList {
    generation: u64,
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// A waiting future's place in a [`WaiterList`]: valid while `generation` matches the list's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SlotHandle {
    generation: u64,
    index: usize,
}

impl WaiterList {
    /// Stores `waker` in `handle`'s slot if it is still valid (cloning only when the waker changed), else in a
    /// new slot, and returns the slot's handle.
    fn register(&mut self, handle: Option<SlotHandle>, waker: &Waker) -> SlotHandle {
        if let Some(handle) = handle.filter(|handle| handle.generation == self.generation) {
            let slot = &mut self.slots[handle.index];
            match slot {
                Some(current) if current.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
            return handle;
        }
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(waker.clone());
                index
            }
            None => {
                self.slots.push(Some(waker.clone()));
                self.slots.len() - 1
            }
        };
        SlotHandle {
            generation: self.generation,
            index,
        }
    }

    /// Frees `handle`'s slot; a handle from an earlier generation has nothing left to free.
    fn remove(&mut self, handle: SlotHandle) {
        if handle.generation == self.generation && self.slots[handle.index].take().is_some() {
            self.free.push(handle.index);
        }
    }

    /// Empties the list (starting a new generation) and returns its wakers.
    fn take_all(&mut self) -> Vec<Waker> {
        self.generation += 1;
        self.free.clear();
        std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// The shard-local half: waiter lists and the pump.
pub(crate) struct LocalBell {
    bell: Arc<Doorbell>,
    waiters: [RefCell<WaiterList>; 3],
}

impl LocalBell {
    pub(crate) fn new(bell: Arc<Doorbell>) -> Rc<Self> {
        Rc::new(LocalBell {
            bell,
            waiters: Default::default(),
        })
    }

    /// Resolves with `check()`'s value once it is `Some`, sleeping on `reason` rings in between. The future holds
    /// one waiter slot while it waits and frees it when it completes or is dropped.
    pub(crate) fn wait_for<'a, T: 'a>(
        &'a self,
        reason: Reason,
        check: impl FnMut() -> Option<T> + Unpin + 'a,
    ) -> impl Future<Output = T> + 'a {
        WaitFor {
            bell: self,
            reason,
            check,
            slot: None,
        }
    }

    fn wake(&self, bits: u32) {
        for reason in REASONS {
            if bits & reason as u32 != 0 {
                let wakers = self.waiters[slot(reason)].borrow_mut().take_all();
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

/// The future of [`LocalBell::wait_for`].
struct WaitFor<'a, F> {
    bell: &'a LocalBell,
    reason: Reason,
    check: F,
    slot: Option<SlotHandle>,
}

impl<F> WaitFor<'_, F> {
    fn release(&mut self) {
        if let Some(handle) = self.slot.take() {
            self.bell.waiters[slot(self.reason)]
                .borrow_mut()
                .remove(handle);
        }
    }
}

impl<T, F: FnMut() -> Option<T> + Unpin> Future for WaitFor<'_, F> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        if let Some(value) = (this.check)() {
            this.release();
            return Poll::Ready(value);
        }
        let list = &this.bell.waiters[slot(this.reason)];
        this.slot = Some(list.borrow_mut().register(this.slot, cx.waker()));
        // Re-check after registering: a ring in between has set its pending bit, which the pump will see.
        match (this.check)() {
            Some(value) => {
                this.release();
                Poll::Ready(value)
            }
            None => Poll::Pending,
        }
    }
}

impl<F> Drop for WaitFor<'_, F> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn dropped_waits_leave_no_waker_behind() {
        let bell = LocalBell::new(Doorbell::new().expect("eventfd"));
        let (_counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..1_000 {
            let mut wait = std::pin::pin!(bell.wait_for(Reason::Shutdown, || None::<()>));
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            assert!(
                wait.as_mut().poll(&mut cx).is_pending(),
                "a re-poll keeps its one slot"
            );
            assert_eq!(bell.waiters[slot(Reason::Shutdown)].borrow().len(), 1);
        }
        assert_eq!(bell.waiters[slot(Reason::Shutdown)].borrow().len(), 0);
        assert!(
            bell.waiters[slot(Reason::Shutdown)].borrow().slots.len() <= 1,
            "slots are reused, not appended"
        );
    }

    #[test]
    fn a_wake_reaches_every_waiter_once_and_old_handles_free_nothing() {
        let bell = LocalBell::new(Doorbell::new().expect("eventfd"));
        let (first_count, first) = counting_waker();
        let (second_count, second) = counting_waker();
        let mut first_wait = std::pin::pin!(bell.wait_for(Reason::Message, || None::<()>));
        let mut second_wait = Box::pin(bell.wait_for(Reason::Message, || None::<()>));
        assert!(first_wait
            .as_mut()
            .poll(&mut Context::from_waker(&first))
            .is_pending());
        assert!(second_wait
            .as_mut()
            .poll(&mut Context::from_waker(&second))
            .is_pending());
        bell.wake(Reason::Message as u32);
        assert_eq!(first_count.0.load(Ordering::SeqCst), 1);
        assert_eq!(second_count.0.load(Ordering::SeqCst), 1);
        // After the wake the first waits again (new generation, new slot) while the second is dropped with its
        // stale handle: the drop must not free the first's new slot.
        assert!(first_wait
            .as_mut()
            .poll(&mut Context::from_waker(&first))
            .is_pending());
        drop(second_wait);
        assert_eq!(bell.waiters[slot(Reason::Message)].borrow().len(), 1);
        assert!(
            bell.waiters[slot(Reason::Message)].borrow().slots[0].is_some(),
            "the stale drop left the live slot alone"
        );
        bell.wake(Reason::Message as u32);
        assert_eq!(first_count.0.load(Ordering::SeqCst), 2);
        assert_eq!(second_count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_ready_condition_takes_no_slot() {
        let bell = LocalBell::new(Doorbell::new().expect("eventfd"));
        let (_counter, waker) = counting_waker();
        let mut ready_on_second_check = [false, true].into_iter();
        let mut wait = std::pin::pin!(bell.wait_for(Reason::Space, move || {
            ready_on_second_check.next().unwrap_or(true).then_some(7)
        }));
        assert_eq!(
            wait.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Ready(7)
        );
        assert_eq!(bell.waiters[slot(Reason::Space)].borrow().len(), 0);
    }
}
