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

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::clock::{Clock, MonotonicClock};
use super::queue::{Container, NoPick, State};
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
    /// CPU time charged to the container (ns): its polls plus its part of the loop's work around them (I/O
    /// submission and completion, the kernel's part of its reads and writes), apportioned by its operations (polls
    /// and wakes) at the end of each turn that polled.
    pub cpu_ns: u64,
    /// CPU time of its polls alone (ns, by the scheduler's clock).
    pub poll_cpu_ns: u64,
    pub polls: u64,
    /// Most of a shard's CPU it may use (percent); 0 = no cap.
    pub cpu_percent_max: u32,
    /// Per-connection send rate cap (bytes/s); 0 = none.
    pub send_rate_bytes_per_second: u64,
    /// Times its `cpu_percent_max` budget ran out and it had to wait for the next period.
    pub throttles: u64,
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
    /// CPU of the loop outside polls that was apportioned to the containers (ns).
    pub overhead_ns: u64,
    /// Poll wall time taken back because the thread did not run for it (preempted or in interrupts) (ns).
    pub refunded_ns: u64,
}

/// What one turn of the scheduler did (see [`ContainerScheduler::run_turn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// Tasks polled.
    pub polls: usize,
    /// With no poll: the clock time at which a throttled container's budget refills (`None`: nothing is ready).
    pub refill_at_ns: Option<u64>,
    /// With no poll: the ready work was held back for a container likely to get work from the next reap; the
    /// run loop yields to the I/O driver and turns again.
    pub anticipating: bool,
}

pub(super) struct Shared<C> {
    pub(super) clock: C,
    pub(super) config: SchedulerConfig,
    pub(super) inbox: Arc<Inbox>,
    pub(super) state: RefCell<State>,
    /// Turns of [`ContainerScheduler::run`] (the shard's loop turns), published with the statistics.
    pub(super) loop_turns: Cell<u64>,
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
        check_range(
            "turn_contended_ns",
            config.turn_contended_ns,
            1,
            config.turn_ns,
        )?;
        check_range(
            "cap_period_ns",
            config.cap_period_ns,
            100_000,
            1_000_000_000,
        )?;
        Ok(ContainerScheduler {
            shared: Rc::new(Shared {
                clock,
                config,
                inbox: Arc::new(Inbox::default()),
                loop_turns: Cell::new(0),
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
                    containers_live: 0,
                    wake_credit_ns: config.turn_contended_ns,
                    turn_containers: Vec::new(),
                    turn_poll_ns: 0,
                    last_cpu_ns: None,
                    overhead_ns: 0,
                    refunded_ns: 0,
                    overhead_per_op_ns: 0,
                }),
            }),
        })
    }

    /// The scheduler's clock.
    pub fn clock(&self) -> &C {
        &self.shared.clock
    }

    /// Polls one ready task (of the container with the least vruntime that is not throttled). Returns false if
    /// no task was ready. Charges nothing but the poll (no turn ends; see [`run_turn`](Self::run_turn)).
    pub fn poll_once(&self) -> bool {
        let start_ns = self.shared.clock.now_ns();
        self.poll_next(start_ns).is_ok()
    }

    /// Runs turns until no task is ready or about `polls_max` polls were made; returns the number of polls.
    pub fn run_until_idle(&self, polls_max: usize) -> usize {
        let mut polls = 0;
        while polls < polls_max {
            let turn = self.turn(polls_max - polls, u64::MAX);
            if turn.polls == 0 {
                break;
            }
            polls += turn.polls;
        }
        polls
    }

    /// One turn of [`run`](Self::run): polls up to `polls_per_turn` tasks within the turn's work budget
    /// (`turn_ns`, or `turn_contended_ns` of polls plus their expected loop work while two or more containers have
    /// live tasks), ending early after the first poll of a container that woke behind its share, or after a poll
    /// while an active container behind its share has nothing ready; polls nothing while anticipating (see
    /// `queue.rs`); then charges the thread's CPU outside the polls since the last apportioning to the containers
    /// by their operations (module docs, "Accounting").
    pub fn run_turn(&self) -> Turn {
        let config = &self.shared.config;
        self.turn(config.polls_per_turn as usize, config.turn_ns)
    }

    fn turn(&self, polls_max: usize, turn_ns: u64) -> Turn {
        let shared = &*self.shared;
        let (budget_ns, overhead_per_op_ns) = {
            let state = shared.state.borrow();
            let budget_ns = if state.containers_live > 1 {
                shared.config.turn_contended_ns.min(turn_ns)
            } else {
                turn_ns
            };
            (budget_ns, state.overhead_per_op_ns)
        };
        let start_ns = shared.clock.now_ns();
        let mut now_ns = start_ns;
        let mut polls = 0;
        let mut refill_at_ns = None;
        let mut anticipated = None;
        while polls < polls_max {
            match self.poll_next(now_ns) {
                Ok((end_ns, end_turn)) => {
                    now_ns = end_ns;
                    polls += 1;
                    // The budget counts the work each poll causes after the turn (its I/O's submission and
                    // completion), so a saturated shard leaves ready work in the queues, where shares decide.
                    let work_ns =
                        now_ns.saturating_sub(start_ns) + polls as u64 * overhead_per_op_ns;
                    if end_turn || work_ns >= budget_ns {
                        break;
                    }
                }
                Err(NoPick::Idle) => break,
                Err(NoPick::Throttled { refill_at_ns: at }) => {
                    refill_at_ns = Some(at);
                    break;
                }
                Err(NoPick::Anticipate { behind }) => {
                    anticipated = Some(behind);
                    break;
                }
            }
        }
        if polls > 0 {
            let cpu_ns = shared.clock.cpu_ns();
            shared.state.borrow_mut().charge_overhead(cpu_ns);
        } else if let Some(behind) = anticipated {
            let cpu_ns = shared.clock.cpu_ns();
            shared
                .state
                .borrow_mut()
                .charge_anticipation(cpu_ns, behind);
        }
        Turn {
            polls,
            refill_at_ns: if polls == 0 { refill_at_ns } else { None },
            anticipating: polls == 0 && anticipated.is_some(),
        }
    }

    /// Polls the next task; `start_ns` is the clock reading taken when the previous poll ended. Returns the clock
    /// reading after this poll and whether the turn should end now, or why no task could be polled.
    fn poll_next(&self, start_ns: u64) -> Result<(u64, bool), NoPick> {
        let shared = &*self.shared;
        let (key, mut future, waker) = shared
            .state
            .borrow_mut()
            .next_task(&shared.inbox, start_ns)?;
        let poll = future.as_mut().poll(&mut Context::from_waker(&waker));
        let end_ns = shared.clock.now_ns();
        let cpu_ns = end_ns.saturating_sub(start_ns);
        let (finished, end_turn) = shared
            .state
            .borrow_mut()
            .finish_poll(key, future, waker, poll, cpu_ns, end_ns);
        drop(finished);
        Ok((end_ns, end_turn))
    }

    /// True if some task is ready to be polled now (including wakes not yet drained; a throttled container's
    /// tasks do not count until its budget refills).
    pub fn has_ready(&self) -> bool {
        let now_ns = self.shared.clock.now_ns();
        let mut state = self.shared.state.borrow_mut();
        state.drain_inbox(&self.shared.inbox);
        state.has_eligible(now_ns)
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

    /// Turns [`run`](Self::run) has taken (a counter: only grows).
    pub fn loop_turns(&self) -> u64 {
        self.shared.loop_turns.get()
    }

    /// Runs the scheduler as one task of the shard's monoio runtime until [`stop`](Self::stop): turns
    /// ([`run_turn`](Self::run_turn)), a yield to monoio after each turn, a sleep (no spinning) when idle.
    ///
    /// With `timers` (the shard's), every turn first fires the wheel's due timers (soft timers: a busy shard
    /// checks its deadlines at each loop turn, with no timer interrupt), and a shard whose only ready work is
    /// throttled sleeps on the wheel until the first budget refills. Without `timers` (tests) that sleep is
    /// monoio's own timer; both clocks must then be the same monotonic clock's.
    pub async fn run(&self, timers: Option<&crate::sleep::ShardTimers>) {
        loop {
            if self.shared.state.borrow().stop {
                return;
            }
            if let Some(timers) = timers {
                timers.fire_due();
            }
            self.shared.loop_turns.set(self.shared.loop_turns.get() + 1);
            let turn = self.run_turn();
            if turn.polls > 0 || turn.anticipating {
                YieldNow { yielded: false }.await;
                continue;
            }
            let Some(refill_ns) = turn.refill_at_ns else {
                // Wakes that land between the turn and this wait may be for a throttled container: any ready
                // task ends the wait, so the next turn finds the refill time and sleeps until it.
                WaitForWork {
                    scheduler: self,
                    eligible_only: false,
                }
                .await;
                continue;
            };
            let wait_ns = refill_ns.saturating_sub(self.shared.clock.now_ns());
            // Waiting for a refill: only work that may run now (another container's) ends the wait early.
            let work = WaitForWork {
                scheduler: self,
                eligible_only: true,
            };
            match timers {
                Some(timers) => {
                    let refill = timers.sleep(std::time::Duration::from_nanos(wait_ns));
                    race_unit(work, async {
                        let _ = refill.await;
                    })
                    .await
                }
                None => {
                    let refill = monoio::time::sleep(std::time::Duration::from_nanos(wait_ns));
                    race_unit(work, refill).await
                }
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
            overhead_ns: state.overhead_ns,
            refunded_ns: state.refunded_ns,
        }
    }
}

/// Resolves when either future does.
async fn race_unit(first: impl Future<Output = ()>, second: impl Future<Output = ()>) {
    let mut first = std::pin::pin!(first);
    let mut second = std::pin::pin!(second);
    std::future::poll_fn(|cx| {
        if first.as_mut().poll(cx).is_ready() || second.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
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
        poll_cpu_ns: c.poll_cpu_ns,
        polls: c.polls,
        cpu_percent_max: c.spec.cpu_percent_max,
        send_rate_bytes_per_second: c.spec.send_rate_bytes_per_second,
        throttles: c.cap.throttles,
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

/// Resolves once a task is ready (with `eligible_only`, one of a container that is not throttled) or `stop` was
/// called; registers the outer waker otherwise.
struct WaitForWork<'a, C: Clock> {
    scheduler: &'a ContainerScheduler<C>,
    eligible_only: bool,
}

impl<C: Clock> Future for WaitForWork<'_, C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = &*self.scheduler.shared;
        let ready = if self.eligible_only {
            self.scheduler.has_ready()
        } else {
            let mut state = shared.state.borrow_mut();
            state.drain_inbox(&shared.inbox);
            state.has_any_ready()
        };
        if shared.state.borrow().stop || ready {
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
