//! The scheduler's state: per-container ready queues, share accounting and the pick.
//!
//! # What this file owns
//! [`State`], the single-threaded heart of one scheduler: the container table ([`Container`]: spec, virtual
//! runtime, ready queue, counters), the list of awake containers, the task table and its free list. It implements
//! the scheduling rule of the module docs:
//! - a poll of `cpu_ns` is charged as `vruntime += cpu_ns × vruntime_per_ns`, where `vruntime_per_ns =
//!   VRUNTIME_SCALE / shares` (2^40 / shares) is computed when the shares are set;
//! - the pick is the awake container with ready tasks and the least `(vruntime, latency class, index)`;
//! - a container that wakes from sleep starts at `max(own vruntime, least vruntime among the awake containers)`
//!   (or the floor of the last pick when none is awake);
//! - within a container tasks run in FIFO order of readiness.
//!
//! # Invariants
//! - A container is in `awake` exactly when its `awake` flag is set; `pick` removes the ones whose ready queue
//!   emptied. A task that wakes itself during its own poll goes back to its ready queue without the inbox and does
//!   not put its container to sleep.
//! - `floor_vruntime` never decreases.
//! - Only live slots of the right generation are enqueued or polled; stale keys are skipped.
//!
//! # Limits
//! - A pick scans the awake containers: O(containers), at most `containers_max` (default 64, at most 4,096).
//! - A ready queue holds at most `queued_max` tasks at spawn (1..=1,048,576); wakes of existing tasks can add more,
//!   up to the container's `tasks_max` (1..=1,048,576).
//! - Virtual runtime is a `u128` charged at most 2^40 per ns (one share): it wraps only after 2^88 ns of CPU.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};

use super::spec::{ContainerSpec, LatencyClass};
use super::task::{
    Inbox, TaskFuture, TaskHeader, TaskKey, TaskSlot, TASK_DONE, TASK_IDLE, TASK_NOTIFIED,
    TASK_QUEUED, TASK_RUNNING,
};

pub(super) struct Container {
    pub(super) spec: ContainerSpec,
    pub(super) vruntime: u128,
    /// `VRUNTIME_SCALE / shares`.
    pub(super) vruntime_per_ns: u64,
    pub(super) awake: bool,
    pub(super) ready: VecDeque<TaskKey>,
    pub(super) cpu_ns: u64,
    pub(super) polls: u64,
    pub(super) tasks_spawned: u64,
    pub(super) tasks_completed: u64,
    pub(super) tasks_active: u32,
    pub(super) rejections: u64,
}

impl Container {
    fn rank(&self, index: u32) -> (u128, u8, u32) {
        let class = match self.spec.latency_class {
            LatencyClass::Interactive => 0,
            LatencyClass::Batch => 1,
        };
        (self.vruntime, class, index)
    }
}

pub(super) struct State {
    pub(super) containers: Vec<Container>,
    /// Containers that were not asleep at the last pick (some may have emptied since).
    pub(super) awake: Vec<u32>,
    /// Least vruntime seen at the last pick; a sleeper waking with no awake container starts here.
    pub(super) floor_vruntime: u128,
    pub(super) tasks: Vec<TaskSlot>,
    pub(super) free_tasks: Vec<u32>,
    pub(super) tasks_active: usize,
    pub(super) polls: u64,
    pub(super) stop: bool,
    pub(super) woken: Vec<TaskKey>,
}

impl State {
    /// Appends a live task's key to its container's ready queue, waking the container if it slept.
    pub(super) fn enqueue(&mut self, key: TaskKey) {
        let container = self.tasks[key.index as usize].container;
        if !self.containers[container as usize].awake {
            let least_awake = self
                .awake
                .iter()
                .map(|&index| &self.containers[index as usize])
                .filter(|c| !c.ready.is_empty())
                .map(|c| c.vruntime)
                .min()
                .unwrap_or(self.floor_vruntime);
            let c = &mut self.containers[container as usize];
            c.vruntime = c.vruntime.max(least_awake);
            c.awake = true;
            self.awake.push(container);
        }
        self.containers[container as usize].ready.push_back(key);
    }

    #[inline]
    pub(super) fn drain_inbox(&mut self, inbox: &Inbox) {
        if inbox.nonempty.load(Ordering::Acquire) {
            self.drain_inbox_slow(inbox);
        }
    }

    #[inline(never)]
    fn drain_inbox_slow(&mut self, inbox: &Inbox) {
        let mut woken = std::mem::take(&mut self.woken);
        inbox.drain_into(&mut woken);
        for key in woken.drain(..) {
            let slot = &self.tasks[key.index as usize];
            if slot.live && slot.generation == key.generation {
                self.enqueue(key);
            }
        }
        self.woken = woken;
    }

    /// Puts containers without ready tasks to sleep and returns the awake one with the least vruntime.
    pub(super) fn pick(&mut self) -> Option<u32> {
        if let [only] = self.awake[..] {
            // One awake container (the common case on a shard serving one class of work): no ranking.
            let c = &self.containers[only as usize];
            if !c.ready.is_empty() {
                self.floor_vruntime = self.floor_vruntime.max(c.vruntime);
                return Some(only);
            }
        }
        let mut best: Option<(u128, u8, u32)> = None;
        let mut position = 0;
        while position < self.awake.len() {
            let index = self.awake[position];
            let c = &mut self.containers[index as usize];
            if c.ready.is_empty() {
                c.awake = false;
                self.awake.swap_remove(position);
                continue;
            }
            let rank = c.rank(index);
            if best.is_none_or(|b| rank < b) {
                best = Some(rank);
            }
            position += 1;
        }
        let (vruntime, _, index) = best?;
        self.floor_vruntime = self.floor_vruntime.max(vruntime);
        Some(index)
    }

    /// Takes the next task to poll out of its slot: (key, future, waker).
    pub(super) fn next_task(&mut self, inbox: &Inbox) -> Option<(TaskKey, TaskFuture, Waker)> {
        self.drain_inbox(inbox);
        loop {
            let container = self.pick()?;
            let c = &mut self.containers[container as usize];
            let Some(key) = c.ready.pop_front() else {
                continue;
            };
            let slot = &mut self.tasks[key.index as usize];
            if !slot.live || slot.generation != key.generation {
                continue;
            }
            let (Some(future), Some(waker), Some(header)) =
                (slot.future.take(), slot.waker.take(), &slot.header)
            else {
                panic!("task {} in a ready queue while being polled", key.index);
            };
            header.state.store(TASK_RUNNING, Ordering::Release);
            return Some((key, future, waker));
        }
    }

    /// Charges a finished poll to its container; returns the future if the task completed (to be dropped by the
    /// caller outside the borrow).
    pub(super) fn finish_poll(
        &mut self,
        key: TaskKey,
        future: TaskFuture,
        waker: Waker,
        poll: Poll<()>,
        cpu_ns: u64,
    ) -> Option<(TaskFuture, Waker, Arc<TaskHeader>)> {
        self.polls += 1;
        let slot = &mut self.tasks[key.index as usize];
        let c = &mut self.containers[slot.container as usize];
        c.cpu_ns += cpu_ns;
        c.polls += 1;
        c.vruntime += cpu_ns as u128 * c.vruntime_per_ns as u128;
        if poll.is_pending() {
            slot.future = Some(future);
            slot.waker = Some(waker);
            let Some(header) = &slot.header else {
                panic!("live task {} without a header", key.index);
            };
            // Only this thread leaves NOTIFIED, so a plain load suffices to see a self-wake (the common yield);
            // RUNNING needs a compare-and-swap against a concurrent wake from another thread.
            let notified = header.state.load(Ordering::Acquire) == TASK_NOTIFIED
                || header
                    .state
                    .compare_exchange(TASK_RUNNING, TASK_IDLE, Ordering::AcqRel, Ordering::Acquire)
                    .is_err();
            if notified {
                // Woken during its own poll (a yield, or another thread): ready again, container stays awake.
                header.state.store(TASK_QUEUED, Ordering::Release);
                self.containers[self.tasks[key.index as usize].container as usize]
                    .ready
                    .push_back(key);
            }
            return None;
        }
        c.tasks_completed += 1;
        c.tasks_active -= 1;
        self.tasks_active -= 1;
        slot.live = false;
        slot.generation = slot.generation.wrapping_add(1);
        let Some(header) = slot.header.take() else {
            panic!("live task {} without a header", key.index);
        };
        header.state.store(TASK_DONE, Ordering::Release);
        self.free_tasks.push(key.index);
        Some((future, waker, header))
    }
}
