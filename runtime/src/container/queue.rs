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

/// How recently a container must have run to hold back a container ahead of it (`State::active_behind`): 1 ms.
pub(super) const ACTIVE_WINDOW_NS: u64 = 1_000_000;
/// How long the scheduler keeps an emptied container's turn open, reaping I/O instead of running a container
/// ahead of it (`State::anticipated`): 25 µs after the emptied container's last poll.
pub(super) const ANTICIPATION_NS: u64 = 25_000;
/// How far ahead of an active container behind it a polled container may run, in its own CPU, before the turn ends
/// for the behind one (`State::active_behind`): 10 µs. A low-share container picked at last runs a few polls in
/// its turn instead of one, so it does not pay a whole loop turn (a submission and a reap) per request.
pub(super) const ACTIVE_SLICE_NS: u64 = 10_000;

/// Why `pick` chose no container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoPick {
    /// No task is ready.
    Idle,
    /// Only containers over their `cpu_percent_max` budget have ready tasks; the first refills then.
    Throttled { refill_at_ns: u64 },
    /// The ready containers are ahead of one that just ran out of ready tasks and is likely to get one from the
    /// next reap: let the loop reap first. `behind` is that container: the turns spent waiting are its cost.
    Anticipate { behind: u32 },
}

pub(super) struct Container {
    pub(super) spec: ContainerSpec,
    pub(super) vruntime: u128,
    /// `VRUNTIME_SCALE / shares`.
    pub(super) vruntime_per_ns: u64,
    pub(super) awake: bool,
    /// Woke from sleep since its last poll: its next poll ends the turn when containers contend (`scheduler.rs`).
    pub(super) fresh: bool,
    /// Clock time of its last poll (whether it is *active*: see `finish_poll`).
    pub(super) last_poll_ns: u64,
    pub(super) ready: VecDeque<TaskKey>,
    /// CPU charged: its polls plus its part of the loop's other work (`charge_overhead`).
    pub(super) cpu_ns: u64,
    /// CPU of its polls alone (wall time of the polls, less refunds for time the thread did not run).
    pub(super) poll_cpu_ns: u64,
    pub(super) polls: u64,
    /// Operations since the loop's work was last apportioned — its polls (each starts the I/O of one step of a
    /// connection) and its wakes from the inbox (each an I/O completion or a message): the weights that work is
    /// apportioned by.
    pub(super) turn_ops: u32,
    /// Wall time of its polls since then (what a refund is divided by; see `charge_overhead`).
    pub(super) turn_poll_ns: u64,
    pub(super) cap: Cap,
    pub(super) tasks_spawned: u64,
    pub(super) tasks_completed: u64,
    pub(super) tasks_active: u32,
    /// Live tasks spawned with `spawn_unlimited` (counted in `tasks_active`, not against `tasks_max`).
    pub(super) tasks_exempt: u32,
    pub(super) rejections: u64,
}

/// The `cpu_percent_max` budget of one container: `budget_ns` of CPU per `period_ns`, debt carried over.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Cap {
    /// 0: no cap.
    pub(super) budget_ns: u64,
    pub(super) period_ns: u64,
    pub(super) period_start_ns: u64,
    /// CPU charged since `period_start_ns`, less the budgets of the periods that have passed (never below 0).
    pub(super) used_ns: u64,
    /// Picks refused because the budget was spent.
    pub(super) throttles: u64,
    /// Whether the last eligibility check found it throttled (counts one throttle per spent period).
    pub(super) throttled: bool,
}

impl Cap {
    pub(super) fn new(percent: u32, period_ns: u64, now_ns: u64) -> Cap {
        Cap {
            budget_ns: period_ns * u64::from(percent) / 100,
            period_ns,
            period_start_ns: now_ns,
            ..Cap::default()
        }
    }

    /// `None` if the container may run at `now_ns`, else the time its budget refills.
    pub(super) fn throttled_until(&mut self, now_ns: u64) -> Option<u64> {
        if self.budget_ns == 0 {
            return None;
        }
        let elapsed = now_ns.saturating_sub(self.period_start_ns);
        if elapsed >= self.period_ns {
            let periods = elapsed / self.period_ns;
            self.period_start_ns += periods * self.period_ns;
            self.used_ns = self
                .used_ns
                .saturating_sub(periods.saturating_mul(self.budget_ns));
        }
        if self.used_ns < self.budget_ns {
            self.throttled = false;
            return None;
        }
        if !self.throttled {
            self.throttled = true;
            self.throttles += 1;
        }
        // Debt beyond one budget keeps it throttled for more periods.
        let periods = self.used_ns / self.budget_ns;
        Some(self.period_start_ns + periods * self.period_ns)
    }
}

impl Container {
    /// Charges `cpu_ns` of work to the container: accounting, virtual runtime and the cap's budget.
    pub(super) fn charge(&mut self, cpu_ns: u64) {
        self.cpu_ns += cpu_ns;
        self.vruntime += cpu_ns as u128 * self.vruntime_per_ns as u128;
        if self.cap.budget_ns > 0 {
            self.cap.used_ns += cpu_ns;
        }
    }

    /// Takes back `cpu_ns` charged for polls whose wall time the thread did not spend running (preempted, or in
    /// interrupts the kernel accounts elsewhere).
    fn refund(&mut self, cpu_ns: u64) {
        self.cpu_ns = self.cpu_ns.saturating_sub(cpu_ns);
        self.poll_cpu_ns = self.poll_cpu_ns.saturating_sub(cpu_ns);
        self.vruntime = self
            .vruntime
            .saturating_sub(cpu_ns as u128 * self.vruntime_per_ns as u128);
        self.cap.used_ns = self.cap.used_ns.saturating_sub(cpu_ns);
    }

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
    /// Containers with at least one live task; more than one means they contend (short turns, sleeper credit).
    pub(super) containers_live: u32,
    /// Vruntime credit per ns of `turn_contended_ns` a waking container may start behind the least awake one.
    pub(super) wake_credit_ns: u64,
    /// Containers with operations since the loop's work was last apportioned (each once).
    pub(super) turn_containers: Vec<u32>,
    /// Sum of the current turn's poll times.
    pub(super) turn_poll_ns: u64,
    /// Thread CPU at the end of the last turn that apportioned its overhead (`None` until the first).
    pub(super) last_cpu_ns: Option<u64>,
    /// CPU of the loop outside polls (I/O submission and completion, other tasks, the kernel), apportioned.
    pub(super) overhead_ns: u64,
    /// Poll wall time taken back because the thread did not run for it.
    pub(super) refunded_ns: u64,
    /// The loop's work per operation, a moving average (7/8 old, 1/8 new) of each apportioning: what a poll is
    /// expected to cost beyond its own time (the submission and completion of the I/O it starts), counted against
    /// the turn's work budget before that work happens.
    pub(super) overhead_per_op_ns: u64,
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
            let contended = self.containers_live > 1;
            let c = &mut self.containers[container as usize];
            // Sleeper credit: a container that slept may start up to one contended turn of its own CPU behind
            // the least awake one, so it is picked next; never behind its own vruntime (no hoarding).
            let credit = if contended {
                self.wake_credit_ns as u128 * c.vruntime_per_ns as u128
            } else {
                0
            };
            c.vruntime = c.vruntime.max(least_awake.saturating_sub(credit));
            c.awake = true;
            // Only a container behind the others (under its share) has its first poll end the turn: its response
            // goes out at once. One ahead of its share gains nothing by it and would pay a loop turn per wake.
            c.fresh = contended && c.vruntime < least_awake;
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
                let container = slot.container;
                self.note_op(container);
                self.enqueue(key);
            }
        }
        self.woken = woken;
    }

    /// Puts containers without ready tasks to sleep and returns the awake one with the least vruntime whose
    /// `cpu_percent_max` budget is not spent at `now_ns`. `Err(Some(t))`: only throttled containers have ready
    /// tasks, the first refills at `t`; `Err(None)`: nothing is ready.
    pub(super) fn pick(&mut self, now_ns: u64) -> Result<u32, NoPick> {
        if let [only] = self.awake[..] {
            // One awake container (the common case on a shard serving one class of work): no ranking.
            let c = &mut self.containers[only as usize];
            if !c.ready.is_empty() {
                if let Some(until) = c.cap.throttled_until(now_ns) {
                    return Err(NoPick::Throttled {
                        refill_at_ns: until,
                    });
                }
                let vruntime = c.vruntime;
                if self.containers_live > 1 {
                    if let Some(behind) = self.anticipated(only, now_ns) {
                        return Err(NoPick::Anticipate { behind });
                    }
                }
                self.floor_vruntime = self.floor_vruntime.max(vruntime);
                return Ok(only);
            }
        }
        let mut best: Option<(u128, u8, u32)> = None;
        let mut refill: Option<u64> = None;
        let mut position = 0;
        while position < self.awake.len() {
            let index = self.awake[position];
            let c = &mut self.containers[index as usize];
            if c.ready.is_empty() {
                c.awake = false;
                self.awake.swap_remove(position);
                continue;
            }
            position += 1;
            if let Some(until) = c.cap.throttled_until(now_ns) {
                refill = Some(refill.map_or(until, |r| r.min(until)));
                continue;
            }
            let rank = c.rank(index);
            if best.is_none_or(|b| rank < b) {
                best = Some(rank);
            }
        }
        let Some((vruntime, _, index)) = best else {
            return Err(
                refill.map_or(NoPick::Idle, |refill_at_ns| NoPick::Throttled {
                    refill_at_ns,
                }),
            );
        };
        if self.containers_live > 1 {
            if let Some(behind) = self.anticipated(index, now_ns) {
                return Err(NoPick::Anticipate { behind });
            }
        }
        self.floor_vruntime = self.floor_vruntime.max(vruntime);
        Ok(index)
    }

    /// Anticipation: a container behind `picked` by more than a contended turn of its own CPU ran out of
    /// ready tasks less than [`ANTICIPATION_NS`] ago while it still has live tasks: its next request is most
    /// likely a completion the next reap brings, and running the container ahead now would give it the behind
    /// one's time (a closed-loop class whose clients are briefly slower than the shard would never get its
    /// share). Like BFQ's idling for a synchronous queue: a short wait buys the share; it ends at once when the
    /// behind container gets work, and after 25 µs without any. Returns the behind container, which pays for the
    /// turns spent waiting ([`State::charge_anticipation`]).
    fn anticipated(&self, picked: u32, now_ns: u64) -> Option<u32> {
        self.behind_and_waiting(picked, now_ns, ANTICIPATION_NS, 0)
    }

    /// The first other container with live tasks and none ready, polled within the last `window_ns`, that is
    /// behind `ahead` by more than one contended turn of its own CPU (the slack that sleeper credit may give it)
    /// plus `ahead_slice_ns` of `ahead`'s CPU.
    fn behind_and_waiting(
        &self,
        ahead: u32,
        now_ns: u64,
        window_ns: u64,
        ahead_slice_ns: u64,
    ) -> Option<u32> {
        let ahead_container = &self.containers[ahead as usize];
        let vruntime = ahead_container.vruntime;
        let slice = u128::from(ahead_slice_ns) * u128::from(ahead_container.vruntime_per_ns);
        let behind = self.containers.iter().enumerate().position(|(index, c)| {
            let slack = u128::from(self.wake_credit_ns) * u128::from(c.vruntime_per_ns) + slice;
            index as u32 != ahead
                && c.vruntime.saturating_add(slack) < vruntime
                && c.ready.is_empty()
                && c.tasks_active > c.tasks_exempt
                && now_ns.saturating_sub(c.last_poll_ns) <= window_ns
        });
        behind.map(|index| index as u32)
    }

    /// Takes the next task to poll out of its slot: (key, future, waker), or why there is none (see `pick`).
    pub(super) fn next_task(
        &mut self,
        inbox: &Inbox,
        now_ns: u64,
    ) -> Result<(TaskKey, TaskFuture, Waker), NoPick> {
        self.drain_inbox(inbox);
        loop {
            let container = self.pick(now_ns)?;
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
            return Ok((key, future, waker));
        }
    }

    /// Charges a finished poll to its container; returns the future if the task completed (to be dropped by the
    /// caller outside the borrow), and whether the poll was the first of a container that woke from sleep while
    /// containers contend (the scheduler then ends the turn so the I/O that poll started is submitted now).
    pub(super) fn finish_poll(
        &mut self,
        key: TaskKey,
        future: TaskFuture,
        waker: Waker,
        poll: Poll<()>,
        cpu_ns: u64,
        end_ns: u64,
    ) -> (Option<(TaskFuture, Waker, Arc<TaskHeader>)>, bool) {
        self.polls += 1;
        self.turn_poll_ns += cpu_ns;
        let slot = &mut self.tasks[key.index as usize];
        let container = slot.container;
        let c = &mut self.containers[container as usize];
        c.charge(cpu_ns);
        c.poll_cpu_ns += cpu_ns;
        c.polls += 1;
        c.turn_poll_ns += cpu_ns;
        c.last_poll_ns = end_ns;
        let end_turn = std::mem::take(&mut c.fresh)
            || (self.containers_live > 1 && self.active_behind(container, end_ns));
        self.note_op(container);
        let slot = &mut self.tasks[key.index as usize];
        let c = &mut self.containers[container as usize];
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
            return (None, end_turn);
        }
        c.tasks_completed += 1;
        c.tasks_active -= 1;
        if slot.exempt {
            c.tasks_exempt -= 1;
        }
        if c.tasks_active == 0 {
            self.containers_live -= 1;
        }
        self.tasks_active -= 1;
        slot.live = false;
        slot.generation = slot.generation.wrapping_add(1);
        let Some(header) = slot.header.take() else {
            panic!("live task {} without a header", key.index);
        };
        header.state.store(TASK_DONE, Ordering::Release);
        self.free_tasks.push(key.index);
        (Some((future, waker, header)), end_turn)
    }
}

impl State {
    /// True if another *active* container — live tasks, none ready, polled within the last [`ACTIVE_WINDOW_NS`] —
    /// is behind the polled one: its next step is most likely an I/O completion not yet reaped, so the turn ends
    /// (the loop reaps) rather than give its time to the container ahead. A container idle for longer (say, a
    /// class with idle keep-alive connections) holds nobody back.
    fn active_behind(&self, polled: u32, now_ns: u64) -> bool {
        self.behind_and_waiting(polled, now_ns, ACTIVE_WINDOW_NS, ACTIVE_SLICE_NS)
            .is_some()
    }

    /// Counts one operation of `container` (a poll, or a wake from the inbox) for the apportioning.
    fn note_op(&mut self, container: u32) {
        let c = &mut self.containers[container as usize];
        if c.turn_ops == 0 {
            self.turn_containers.push(container);
        }
        c.turn_ops += 1;
    }

    /// Ends a turn that polled: the thread's CPU since the last apportioning (`cpu_now_ns`, from the kernel), less
    /// the wall time of the polls in between, is the loop's own work — I/O submission and completion, the
    /// kernel's part of each read and write, tasks outside containers — and is charged to the containers by
    /// their operations since then (polls and inbox wakes: each poll starts a step's I/O, each wake is a
    /// completion). If the polls' wall time exceeds the thread's CPU (the thread was preempted, or interrupted by
    /// work the kernel accounts elsewhere), the excess is refunded in proportion to each container's poll time,
    /// so what is charged never exceeds what the thread used.
    pub(super) fn charge_overhead(&mut self, cpu_now_ns: u64) {
        let Some(last) = self.last_cpu_ns.replace(cpu_now_ns) else {
            self.clear_turn();
            return;
        };
        let total_ns = cpu_now_ns.saturating_sub(last);
        let polls_ns = self.turn_poll_ns;
        let (amount_ns, weight_total, refund) = if total_ns >= polls_ns {
            let ops: u64 = self
                .turn_containers
                .iter()
                .map(|&index| u64::from(self.containers[index as usize].turn_ops))
                .sum();
            if let Some(sample_ns) = (total_ns - polls_ns).checked_div(ops) {
                self.overhead_per_op_ns = (7 * self.overhead_per_op_ns + sample_ns) / 8;
            }
            (total_ns - polls_ns, ops, false)
        } else {
            (polls_ns - total_ns, polls_ns, true)
        };
        if amount_ns > 0 && weight_total > 0 {
            let mut left_ns = amount_ns;
            let last_position = self.turn_containers.len() - 1;
            for (position, &index) in self.turn_containers.iter().enumerate() {
                let c = &mut self.containers[index as usize];
                let weight = if refund {
                    c.turn_poll_ns
                } else {
                    u64::from(c.turn_ops)
                };
                let part_ns = if position == last_position {
                    left_ns
                } else {
                    (u128::from(amount_ns) * u128::from(weight) / u128::from(weight_total)) as u64
                };
                left_ns -= part_ns;
                if refund {
                    c.refund(part_ns);
                } else {
                    c.charge(part_ns);
                }
            }
            if refund {
                self.refunded_ns += amount_ns;
            } else {
                self.overhead_ns += amount_ns;
            }
        }
        self.clear_turn();
    }

    /// Ends a turn that polled nothing because it anticipated `behind`: the thread's CPU since the last
    /// apportioning (the loop reaping while it waits, and the submission after the last polling turn) is charged to
    /// `behind` alone. The wait was for it, and the container the wait held back must not pay for it.
    /// Operations counted meanwhile (wakes) stay for the next apportioning.
    pub(super) fn charge_anticipation(&mut self, cpu_now_ns: u64, behind: u32) {
        let Some(last) = self.last_cpu_ns.replace(cpu_now_ns) else {
            return;
        };
        let amount_ns = cpu_now_ns.saturating_sub(last);
        self.containers[behind as usize].charge(amount_ns);
        self.overhead_ns += amount_ns;
    }

    fn clear_turn(&mut self) {
        for &index in &self.turn_containers {
            let c = &mut self.containers[index as usize];
            c.turn_ops = 0;
            c.turn_poll_ns = 0;
        }
        self.turn_containers.clear();
        self.turn_poll_ns = 0;
    }

    /// Counts a new live task of `container` (a spawn; `exempt` from its `tasks_max`).
    pub(super) fn task_started(&mut self, container: u32, exempt: bool) {
        let c = &mut self.containers[container as usize];
        if exempt {
            c.tasks_exempt += 1;
        }
        if c.tasks_active == 0 {
            self.containers_live += 1;
        }
        c.tasks_active += 1;
        self.tasks_active += 1;
    }

    /// True if a container has a ready task, throttled or not.
    pub(super) fn has_any_ready(&self) -> bool {
        self.awake
            .iter()
            .any(|&index| !self.containers[index as usize].ready.is_empty())
    }

    /// True if a container has a ready task it may run at `now_ns` (not throttled).
    pub(super) fn has_eligible(&mut self, now_ns: u64) -> bool {
        let State {
            awake, containers, ..
        } = self;
        awake.iter().any(|&index| {
            let c = &mut containers[index as usize];
            !c.ready.is_empty() && c.cap.throttled_until(now_ns).is_none()
        })
    }
}
