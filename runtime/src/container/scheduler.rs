//! The [`ContainerScheduler`] handle: construction, polling, the monoio run loop and statistics.
//!
//! # What this file owns
//! The shared part of a scheduler (clock, settings, inbox, `RefCell<State>`) behind a cheap `Rc` handle, the poll
//! loop that times each poll with the injected [`Clock`], and the accounting snapshots ([`ContainerStats`],
//! [`SchedulerStats`]).
//!
//! [`ContainerScheduler::run`] is one monoio task per shard: it polls ready tasks for a *turn* of at most
//! `polls_per_turn` polls (default 64) or `turn_ns` (default 1 ms), then yields to monoio so that I/O completions
//! are processed, and sleeps (without spinning) when no task is ready. Tests drive the same machinery without monoio
//! through [`ContainerScheduler::poll_once`] and [`ContainerScheduler::run_until_idle`].
//!
//! # Invariants
//! - A task is polled only on the scheduler's thread (the handle is `!Send`), and never while `State` is
//!   borrowed: the future is taken out of its slot for the poll and put back (or dropped) after it.
//! - A panic in a task is a bug: it propagates out of the poll (the shard pool reports it and stops the node).
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | `polls_per_turn`, `turn_ns` | 64 polls, 1 ms (`POLLS_PER_TURN_DEFAULT`, `TURN_NS_DEFAULT`) | bounds how long I/O completions wait for the scheduler |
//!
//! # Cost
//! - `poll_once`: one clock read (the end of a poll is the start of the next), one pick (O(awake containers)),
//!   a queue pop, the task's own poll. Target ≤ 100 ns scheduler overhead per poll (bench `scheduler` in
//!   `bench/micro`).
//! - `stats`: O(containers), allocates the snapshot.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::clock::{Clock, MonotonicClock};
use super::queue::{Container, State};
use super::spec::{
    check_range, ContainerError, ContainerId, LatencyClass, SchedulerConfig, CONTAINERS_MAX_LIMIT,
};
use super::task::Inbox;

/// Accounting of one container at the time of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStats {
    pub id: ContainerId,
    pub name: String,
    pub shares: u32,
    pub latency_class: LatencyClass,
    pub tasks_max: u32,
    pub queued_max: u32,
    /// CPU time charged to the container's polls (ns, by the scheduler's clock).
    pub cpu_ns: u64,
    pub polls: u64,
    pub tasks_spawned: u64,
    pub tasks_completed: u64,
    /// Tasks spawned and not completed.
    pub tasks_active: u32,
    /// Tasks in the ready queue.
    pub tasks_queued: u32,
    /// Spawns refused by a limit.
    pub rejections: u64,
}

/// Snapshot of a scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerStats {
    pub containers: Vec<ContainerStats>,
    /// Polls over all containers.
    pub polls: u64,
    /// Live tasks over all containers.
    pub tasks_active: usize,
}

pub(super) struct Shared<C> {
    pub(super) clock: C,
    pub(super) config: SchedulerConfig,
    pub(super) inbox: Arc<Inbox>,
    pub(super) state: RefCell<State>,
}

/// The per-shard container scheduler; a cheap `Rc` handle (clone it into tasks that spawn).
/// See the module docs for the scheduling rule, invariants, limits and costs.
pub struct ContainerScheduler<C: Clock = MonotonicClock> {
    pub(super) shared: Rc<Shared<C>>,
}

impl<C: Clock> Clone for ContainerScheduler<C> {
    fn clone(&self) -> Self {
        ContainerScheduler {
            shared: self.shared.clone(),
        }
    }
}

impl<C: Clock> ContainerScheduler<C> {
    /// An empty scheduler timing polls with `clock`.
    pub fn new(config: SchedulerConfig, clock: C) -> Result<Self, ContainerError> {
        check_range(
            "containers_max",
            config.containers_max as u64,
            1,
            CONTAINERS_MAX_LIMIT as u64,
        )?;
        check_range(
            "polls_per_turn",
            config.polls_per_turn as u64,
            1,
            u32::MAX as u64,
        )?;
        check_range("turn_ns", config.turn_ns, 1, u64::MAX)?;
        Ok(ContainerScheduler {
            shared: Rc::new(Shared {
                clock,
                config,
                inbox: Arc::new(Inbox::default()),
                state: RefCell::new(State {
                    containers: Vec::new(),
                    awake: Vec::new(),
                    floor_vruntime: 0,
                    tasks: Vec::new(),
                    free_tasks: Vec::new(),
                    tasks_active: 0,
                    polls: 0,
                    stop: false,
                    woken: Vec::new(),
                }),
            }),
        })
    }

    /// The scheduler's clock.
    pub fn clock(&self) -> &C {
        &self.shared.clock
    }

    /// Polls one ready task (of the container with the least vruntime). Returns false if no task was ready.
    pub fn poll_once(&self) -> bool {
        let start_ns = self.shared.clock.now_ns();
        self.poll_next(start_ns).is_some()
    }

    /// Polls ready tasks until none is ready or `polls_max` polls were made; returns the number of polls.
    pub fn run_until_idle(&self, polls_max: usize) -> usize {
        self.run_polls(polls_max, u64::MAX)
    }

    /// Polls up to `polls_max` tasks or until `budget_ns` of clock time passed; returns the number of polls.
    fn run_polls(&self, polls_max: usize, budget_ns: u64) -> usize {
        let start_ns = self.shared.clock.now_ns();
        let mut now_ns = start_ns;
        let mut polls = 0;
        while polls < polls_max {
            match self.poll_next(now_ns) {
                Some(end_ns) => now_ns = end_ns,
                None => break,
            }
            polls += 1;
            if now_ns.saturating_sub(start_ns) >= budget_ns {
                break;
            }
        }
        polls
    }

    /// Polls the next task; `start_ns` is the clock reading taken when the previous poll ended. Returns the clock
    /// reading after this poll.
    fn poll_next(&self, start_ns: u64) -> Option<u64> {
        let shared = &*self.shared;
        let (key, mut future, waker) = shared.state.borrow_mut().next_task(&shared.inbox)?;
        let poll = future.as_mut().poll(&mut Context::from_waker(&waker));
        let end_ns = shared.clock.now_ns();
        let cpu_ns = end_ns.saturating_sub(start_ns);
        let finished = shared
            .state
            .borrow_mut()
            .finish_poll(key, future, waker, poll, cpu_ns);
        drop(finished);
        Some(end_ns)
    }

    /// True if some task is ready (including wakes not yet drained).
    pub fn has_ready(&self) -> bool {
        let mut state = self.shared.state.borrow_mut();
        state.drain_inbox(&self.shared.inbox);
        state
            .awake
            .iter()
            .any(|&index| !state.containers[index as usize].ready.is_empty())
    }

    /// Live tasks over all containers.
    pub fn tasks_active(&self) -> usize {
        self.shared.state.borrow().tasks_active
    }

    /// Asks [`run`](Self::run) to return after its current turn; tasks stay in place.
    pub fn stop(&self) {
        self.shared.state.borrow_mut().stop = true;
        self.shared.inbox.wake_outer();
    }

    /// Runs the scheduler as one task of the shard's monoio runtime until [`stop`](Self::stop): turns of at most
    /// `polls_per_turn` polls or `turn_ns`, a yield to monoio after each turn, a sleep (no spinning) when idle.
    pub async fn run(&self) {
        loop {
            if self.shared.state.borrow().stop {
                return;
            }
            let polls = self.run_polls(
                self.shared.config.polls_per_turn as usize,
                self.shared.config.turn_ns,
            );
            if polls == 0 {
                WaitForWork { scheduler: self }.await;
            } else {
                YieldNow { yielded: false }.await;
            }
        }
    }

    /// Accounting of one container.
    pub fn container_stats(&self, id: ContainerId) -> Option<ContainerStats> {
        let state = self.shared.state.borrow();
        state.containers.get(id.index()).map(|c| stats_of(id, c))
    }

    /// Accounting of every container.
    pub fn stats(&self) -> SchedulerStats {
        let state = self.shared.state.borrow();
        SchedulerStats {
            containers: state
                .containers
                .iter()
                .enumerate()
                .map(|(index, c)| stats_of(ContainerId(index as u32), c))
                .collect(),
            polls: state.polls,
            tasks_active: state.tasks_active,
        }
    }
}

fn stats_of(id: ContainerId, c: &Container) -> ContainerStats {
    ContainerStats {
        id,
        name: c.spec.name.clone(),
        shares: c.spec.shares,
        latency_class: c.spec.latency_class,
        tasks_max: c.spec.tasks_max,
        queued_max: c.spec.queued_max,
        cpu_ns: c.cpu_ns,
        polls: c.polls,
        tasks_spawned: c.tasks_spawned,
        tasks_completed: c.tasks_completed,
        tasks_active: c.tasks_active,
        tasks_queued: c.ready.len() as u32,
        rejections: c.rejections,
    }
}

impl<C: Clock> std::fmt::Debug for ContainerScheduler<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state.borrow();
        f.debug_struct("ContainerScheduler")
            .field("containers", &state.containers.len())
            .field("tasks_active", &state.tasks_active)
            .field("polls", &state.polls)
            .finish()
    }
}

/// Resolves once a task is ready or `stop` was called; registers the outer waker otherwise.
struct WaitForWork<'a, C: Clock> {
    scheduler: &'a ContainerScheduler<C>,
}

impl<C: Clock> Future for WaitForWork<'_, C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = &*self.scheduler.shared;
        if shared.state.borrow().stop || self.scheduler.has_ready() {
            return Poll::Ready(());
        }
        let mut inner = shared.inbox.lock();
        if !inner.keys.is_empty() {
            return Poll::Ready(());
        }
        inner.outer = Some(cx.waker().clone());
        shared.inbox.outer_set.store(true, Ordering::Release);
        Poll::Pending
    }
}

/// Returns `Pending` once (waking itself), so the outer runtime gets to run its I/O.
struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
