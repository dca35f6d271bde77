//! Tasks, their wakers, and the inbox that wakes from any thread land in.
//!
//! # What this file owns
//! The task table's slot ([`TaskSlot`]: the boxed future, its waker, its header), the task key (index and
//! generation), the atomic task state, and the [`Inbox`].
//!
//! Wakers are `Arc`-based and sound from any thread. Each task has an atomic state (idle, queued, running,
//! notified, done). A wake of an idle task marks it queued and appends its key to the scheduler's inbox (a
//! mutex-protected vector, drained before each pick), then wakes the outer monoio task if it is asleep. A wake of a
//! running task (a yield, or a wake from inside its own poll) only marks it notified, and the scheduler puts it back
//! in its ready queue after the poll without touching the inbox. A task is polled only on the scheduler's thread.
//!
//! # Invariants
//! - A live task is in at most one ready queue or the inbox, at most once (its state); a completed task is never
//!   polled again, stray wakes of it do nothing, and its `TaskId` is generation-checked.
//! - Only the scheduler moves a task out of `QUEUED`, `RUNNING` and `NOTIFIED`.
//!
//! # Limits
//! The inbox holds at most one key per live task (a wake of a queued task does nothing), so it is bounded by the
//! containers' `tasks_max` (at most 1,048,576 each, `TASKS_MAX_LIMIT`); wakes of existing tasks are never refused.
//!
//! # Cost
//! A wake during the task's own poll costs one compare-and-swap; a wake from elsewhere (I/O completion, another
//! task, another thread) a compare-and-swap plus an uncontended mutex push.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TaskKey {
    pub(super) index: u32,
    pub(super) generation: u32,
}

/// Wakes from any thread land here; drained by the scheduler before each pick.
#[derive(Default)]
pub(super) struct Inbox {
    pub(super) nonempty: AtomicBool,
    pub(super) outer_set: AtomicBool,
    pub(super) inner: Mutex<InboxInner>,
}

#[derive(Default)]
pub(super) struct InboxInner {
    pub(super) keys: Vec<TaskKey>,
    pub(super) outer: Option<Waker>,
}

impl Inbox {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, InboxInner> {
        // A poisoned inbox only means a waker panicked mid-push; the vector is still valid.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn push(&self, key: TaskKey) {
        let outer = {
            let mut inner = self.lock();
            inner.keys.push(key);
            self.nonempty.store(true, Ordering::Release);
            self.take_outer(&mut inner)
        };
        if let Some(outer) = outer {
            outer.wake();
        }
    }

    fn take_outer(&self, inner: &mut InboxInner) -> Option<Waker> {
        self.outer_set.store(false, Ordering::Relaxed);
        inner.outer.take()
    }

    /// Wakes the outer (monoio) task if it sleeps.
    pub(super) fn wake_outer(&self) {
        if self.outer_set.load(Ordering::Acquire) {
            let outer = self.take_outer(&mut self.lock());
            if let Some(outer) = outer {
                outer.wake();
            }
        }
    }

    /// Moves the woken keys into `out` (emptied first).
    pub(super) fn drain_into(&self, out: &mut Vec<TaskKey>) {
        out.clear();
        if self.nonempty.load(Ordering::Acquire) {
            let mut inner = self.lock();
            std::mem::swap(&mut inner.keys, out);
            self.nonempty.store(false, Ordering::Release);
        }
    }
}

/// Task states (`TaskHeader::state`). Only the scheduler moves a task out of `QUEUED`, `RUNNING` and `NOTIFIED`.
/// Not queued, not running: a wake moves it to `QUEUED` and pushes it to the inbox.
pub(super) const TASK_IDLE: u8 = 0;
/// In a ready queue or the inbox: wakes do nothing.
pub(super) const TASK_QUEUED: u8 = 1;
/// Being polled: a wake moves it to `NOTIFIED`, and the scheduler requeues it after the poll without the inbox.
pub(super) const TASK_RUNNING: u8 = 2;
/// Being polled and woken meanwhile.
pub(super) const TASK_NOTIFIED: u8 = 3;
/// Completed: wakes through stray wakers do nothing.
pub(super) const TASK_DONE: u8 = 4;

pub(super) struct TaskHeader {
    pub(super) key: TaskKey,
    pub(super) state: AtomicU8,
    pub(super) inbox: Arc<Inbox>,
}

impl Wake for TaskHeader {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let next = match state {
                TASK_IDLE => TASK_QUEUED,
                TASK_RUNNING => TASK_NOTIFIED,
                _ => return,
            };
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if next == TASK_QUEUED => return self.inbox.push(self.key),
                Ok(_) => return,
                Err(actual) => state = actual,
            }
        }
    }
}

pub(super) type TaskFuture = Pin<Box<dyn Future<Output = ()>>>;

pub(super) struct TaskSlot {
    pub(super) generation: u32,
    pub(super) container: u32,
    pub(super) live: bool,
    /// Spawned with `spawn_unlimited`: not counted against the container's `tasks_max`.
    pub(super) exempt: bool,
    pub(super) future: Option<TaskFuture>,
    pub(super) waker: Option<Waker>,
    pub(super) header: Option<Arc<TaskHeader>>,
}
