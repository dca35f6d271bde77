//! Resource containers (Banga, Druschel and Mogul, OSDI '99) and the per-shard container scheduler.
//!
//! # What this module owns
//! A *container* is a named class of work — the resource principal, separate from the thread that happens to run
//! the work. It has CPU `shares`, a [`LatencyClass`] and two limits: `tasks_max` (concurrent tasks) and
//! `queued_max` (tasks waiting in its ready queue). A [`ContainerScheduler`] owns, for one shard, the containers,
//! the tasks (futures) spawned into them, their ready queues, and the per-container accounting. It is
//! single-threaded (`Rc`-based handle, `!Send`): each shard has its own and nothing is shared between shards.
//!
//! # Scheduling rule
//! Among containers with ready tasks the scheduler polls the one with the least *virtual runtime*; each poll of a
//! task is timed with the injected [`Clock`] and charged to its container as
//! `vruntime += poll_ns × (VRUNTIME_SCALE / shares)` (`VRUNTIME_SCALE` = 2^40; the quotient is computed when the
//! shares are set, so a poll costs a multiply, not a divide). A saturated shard therefore splits its CPU by shares:
//! with containers A (3 shares) and B (1 share) always ready, each nanosecond of A advances A's vruntime by 1/3 of what a
//! nanosecond of B advances B's, so the two stay level when A has run 3 ns for every 1 ns of B: A gets
//! 3 / (3 + 1) = 75% of the CPU and B 1 / (3 + 1) = 25%. Three containers with shares 2, 1, 1 get 50%, 25%, 25%.
//!
//! A container that had no ready task at the moment of a pick is *asleep*; when it gets a ready task again its
//! vruntime becomes `max(own vruntime, least vruntime among the awake containers)`, so a sleeper cannot hoard credit
//! and then monopolise the shard. (A task that wakes itself during its own poll — a yield — does not put its
//! container to sleep.) Ties go to [`LatencyClass::Interactive`] before [`LatencyClass::Batch`], then to the older
//! container. Within a container tasks run in FIFO order of readiness.
//!
//! # Running
//! [`ContainerScheduler::run`] is one monoio task per shard: it polls ready tasks for a *turn* of at most
//! `polls_per_turn` polls (default 64) or `turn_ns` (default 1 ms), then yields to monoio so that I/O completions
//! are processed, and sleeps (without spinning) when no task is ready. Tests drive the same machinery without monoio
//! through [`ContainerScheduler::poll_once`] and [`ContainerScheduler::run_until_idle`].
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
//! - Per container: `tasks_active <= tasks_max` and, at spawn, `tasks_queued <= queued_max`; over either,
//!   [`ContainerScheduler::spawn`] returns [`ContainerError::OverLimit`] and counts a rejection — nothing queues
//!   without bound. (Wakes of existing tasks are never refused; their number is bounded by `tasks_max`.)
//! - `shares` is in `1..=SHARES_MAX` at all times.
//! - A panic in a task is a bug: it propagates out of the poll (the shard pool reports it and stops the node).
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | `containers_max` | default 64, at most 4,096 per scheduler | picks scan the awake containers |
//! | `shares` | 1..=1,000,000 ([`SHARES_MAX`]) | keeps `2^40 / shares` exact to 2^-20 |
//! | `tasks_max` | 1..=1,048,576 per container ([`TASKS_MAX_LIMIT`]) | bounds the task table |
//! | `queued_max` | 1..=1,048,576 per container | bounds a ready queue at spawn |
//! | `polls_per_turn`, `turn_ns` | 64 polls, 1 ms | bounds how long I/O completions wait for the scheduler |
//!
//! # Cost
//! - `poll_once`: one clock read (the end of a poll is the start of the next), one pick (O(awake containers)),
//!   a queue pop, the task's own poll. A wake during the task's own poll costs one compare-and-swap; a wake from
//!   elsewhere (I/O completion, another task, another thread) a compare-and-swap plus an uncontended mutex push.
//!   Target ≤ 100 ns scheduler overhead per poll (bench `scheduler` in `bench/micro`).
//! - `spawn`: one `Box` for the future, one `Arc` for its waker, O(1) otherwise.
//! - `stats`: O(containers), allocates the snapshot.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use thiserror::Error;

/// Largest accepted `shares` value.
pub const SHARES_MAX: u32 = 1_000_000;
/// Largest accepted `tasks_max` and `queued_max` of one container.
pub const TASKS_MAX_LIMIT: u32 = 1 << 20;
/// Default `tasks_max` and `queued_max` of [`ContainerSpec::new`].
pub const TASKS_MAX_DEFAULT: u32 = 65_536;
/// Default limit on containers per scheduler.
pub const CONTAINERS_MAX_DEFAULT: usize = 64;
/// Largest accepted `containers_max`.
pub const CONTAINERS_MAX_LIMIT: usize = 4_096;
/// Default polls per turn before [`ContainerScheduler::run`] yields to monoio.
pub const POLLS_PER_TURN_DEFAULT: u32 = 64;
/// Default time per turn before [`ContainerScheduler::run`] yields to monoio: 1 ms.
pub const TURN_NS_DEFAULT: u64 = 1_000_000;
/// Virtual runtime charged per nanosecond of CPU at one share; a container with `shares` is charged
/// `VRUNTIME_SCALE / shares` per ns (rounded down: relative error below 2^-20 at [`SHARES_MAX`]).
pub const VRUNTIME_SCALE: u64 = 1 << 40;

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

/// Index of a container in its scheduler (containers are never removed, so ids stay valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(u32);

impl ContainerId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "container#{}", self.0)
    }
}

/// Handle of a spawned task; generation-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId {
    index: u32,
    generation: u32,
}

/// How latency-sensitive a container's work is. Interactive containers win vruntime ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LatencyClass {
    Interactive,
    Batch,
}

/// The description of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Unique within a scheduler; [`ContainerScheduler::lookup`] finds it.
    pub name: String,
    /// CPU shares, 1..=[`SHARES_MAX`].
    pub shares: u32,
    pub latency_class: LatencyClass,
    /// Maximum concurrent (spawned, not completed) tasks, 1..=[`TASKS_MAX_LIMIT`].
    pub tasks_max: u32,
    /// Maximum ready-but-not-yet-polled tasks at spawn time, 1..=[`TASKS_MAX_LIMIT`].
    pub queued_max: u32,
}

impl ContainerSpec {
    /// An interactive container with default limits ([`TASKS_MAX_DEFAULT`] for both).
    pub fn new(name: impl Into<String>, shares: u32) -> Self {
        ContainerSpec {
            name: name.into(),
            shares,
            latency_class: LatencyClass::Interactive,
            tasks_max: TASKS_MAX_DEFAULT,
            queued_max: TASKS_MAX_DEFAULT,
        }
    }
}

/// Which limit of a container was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerLimit {
    /// Concurrent tasks.
    TasksMax,
    /// Ready tasks waiting for a poll.
    QueuedMax,
}

impl std::fmt::Display for ContainerLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContainerLimit::TasksMax => "tasks_max",
            ContainerLimit::QueuedMax => "queued_max",
        })
    }
}

/// Settings of one scheduler; validated by [`ContainerScheduler::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Maximum containers, 1..=[`CONTAINERS_MAX_LIMIT`].
    pub containers_max: usize,
    /// Polls per turn of [`ContainerScheduler::run`] before yielding to monoio, at least 1.
    pub polls_per_turn: u32,
    /// Time per turn of [`ContainerScheduler::run`] before yielding to monoio, at least 1 ns.
    pub turn_ns: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            containers_max: CONTAINERS_MAX_DEFAULT,
            polls_per_turn: POLLS_PER_TURN_DEFAULT,
            turn_ns: TURN_NS_DEFAULT,
        }
    }
}

/// Errors of the container scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContainerError {
    /// Spawning would exceed a container's limit; the server answers 503 + Retry-After.
    #[error("{container} over {limit}: {value} > {max}")]
    OverLimit {
        container: ContainerId,
        limit: ContainerLimit,
        max: u32,
        value: u32,
    },
    /// Shares must be 1..=`max` (zero shares would give a container infinite virtual runtime per poll).
    #[error("container {name:?}: shares {shares} outside 1..={max}")]
    SharesOutOfRange { name: String, shares: u32, max: u32 },
    /// A container limit outside 1..=`max`.
    #[error("container {name:?}: {limit} {value} outside 1..={max}")]
    LimitOutOfRange {
        name: String,
        limit: ContainerLimit,
        value: u32,
        max: u32,
    },
    /// The scheduler already has `containers_max` containers.
    #[error("too many containers: {containers_max} already defined")]
    TooManyContainers { containers_max: usize },
    /// A container with this name exists.
    #[error("container {name:?} already exists")]
    DuplicateName { name: String },
    /// No container with this id.
    #[error("unknown {container}")]
    UnknownContainer { container: ContainerId },
    /// A scheduler setting outside its range.
    #[error("scheduler setting {field} = {value} outside {min}..={max}")]
    ConfigOutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TaskKey {
    index: u32,
    generation: u32,
}

/// Wakes from any thread land here; drained by the scheduler before each pick.
#[derive(Default)]
struct Inbox {
    nonempty: AtomicBool,
    outer_set: AtomicBool,
    inner: Mutex<InboxInner>,
}

#[derive(Default)]
struct InboxInner {
    keys: Vec<TaskKey>,
    outer: Option<Waker>,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxInner> {
        // A poisoned inbox only means a waker panicked mid-push; the vector is still valid.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, key: TaskKey) {
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
    fn wake_outer(&self) {
        if self.outer_set.load(Ordering::Acquire) {
            let outer = self.take_outer(&mut self.lock());
            if let Some(outer) = outer {
                outer.wake();
            }
        }
    }

    /// Moves the woken keys into `out` (emptied first).
    fn drain_into(&self, out: &mut Vec<TaskKey>) {
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
const TASK_IDLE: u8 = 0;
/// In a ready queue or the inbox: wakes do nothing.
const TASK_QUEUED: u8 = 1;
/// Being polled: a wake moves it to `NOTIFIED`, and the scheduler requeues it after the poll without the inbox.
const TASK_RUNNING: u8 = 2;
/// Being polled and woken meanwhile.
const TASK_NOTIFIED: u8 = 3;
/// Completed: wakes through stray wakers do nothing.
const TASK_DONE: u8 = 4;

struct TaskHeader {
    key: TaskKey,
    state: AtomicU8,
    inbox: Arc<Inbox>,
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

type TaskFuture = Pin<Box<dyn Future<Output = ()>>>;

struct TaskSlot {
    generation: u32,
    container: u32,
    live: bool,
    future: Option<TaskFuture>,
    waker: Option<Waker>,
    header: Option<Arc<TaskHeader>>,
}

struct Container {
    spec: ContainerSpec,
    vruntime: u128,
    /// `VRUNTIME_SCALE / shares`.
    vruntime_per_ns: u64,
    awake: bool,
    ready: VecDeque<TaskKey>,
    cpu_ns: u64,
    polls: u64,
    tasks_spawned: u64,
    tasks_completed: u64,
    tasks_active: u32,
    rejections: u64,
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

struct State {
    containers: Vec<Container>,
    /// Containers that were not asleep at the last pick (some may have emptied since).
    awake: Vec<u32>,
    /// Least vruntime seen at the last pick; a sleeper waking with no awake container starts here.
    floor_vruntime: u128,
    tasks: Vec<TaskSlot>,
    free_tasks: Vec<u32>,
    tasks_active: usize,
    polls: u64,
    stop: bool,
    woken: Vec<TaskKey>,
}

impl State {
    /// Appends a live task's key to its container's ready queue, waking the container if it slept.
    fn enqueue(&mut self, key: TaskKey) {
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
    fn drain_inbox(&mut self, inbox: &Inbox) {
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
    fn pick(&mut self) -> Option<u32> {
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
    fn next_task(&mut self, inbox: &Inbox) -> Option<(TaskKey, TaskFuture, Waker)> {
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
    fn finish_poll(
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

struct Shared<C> {
    clock: C,
    config: SchedulerConfig,
    inbox: Arc<Inbox>,
    state: RefCell<State>,
}

/// The per-shard container scheduler; a cheap `Rc` handle (clone it into tasks that spawn).
/// See the module docs for the scheduling rule, invariants, limits and costs.
pub struct ContainerScheduler<C: Clock = MonotonicClock> {
    shared: Rc<Shared<C>>,
}

impl<C: Clock> Clone for ContainerScheduler<C> {
    fn clone(&self) -> Self {
        ContainerScheduler {
            shared: self.shared.clone(),
        }
    }
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ContainerError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ContainerError::ConfigOutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

fn check_spec(spec: &ContainerSpec) -> Result<(), ContainerError> {
    check_shares(&spec.name, spec.shares)?;
    for (limit, value) in [
        (ContainerLimit::TasksMax, spec.tasks_max),
        (ContainerLimit::QueuedMax, spec.queued_max),
    ] {
        if !(1..=TASKS_MAX_LIMIT).contains(&value) {
            return Err(ContainerError::LimitOutOfRange {
                name: spec.name.clone(),
                limit,
                value,
                max: TASKS_MAX_LIMIT,
            });
        }
    }
    Ok(())
}

fn check_shares(name: &str, shares: u32) -> Result<(), ContainerError> {
    if (1..=SHARES_MAX).contains(&shares) {
        Ok(())
    } else {
        Err(ContainerError::SharesOutOfRange {
            name: name.to_owned(),
            shares,
            max: SHARES_MAX,
        })
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

    /// Adds a container; names are unique.
    pub fn add_container(&self, spec: ContainerSpec) -> Result<ContainerId, ContainerError> {
        check_spec(&spec)?;
        let mut state = self.shared.state.borrow_mut();
        if state.containers.len() >= self.shared.config.containers_max {
            return Err(ContainerError::TooManyContainers {
                containers_max: self.shared.config.containers_max,
            });
        }
        if state.containers.iter().any(|c| c.spec.name == spec.name) {
            return Err(ContainerError::DuplicateName { name: spec.name });
        }
        let id = ContainerId(state.containers.len() as u32);
        let vruntime = state.floor_vruntime;
        state.containers.push(Container {
            vruntime_per_ns: VRUNTIME_SCALE / spec.shares as u64,
            spec,
            vruntime,
            awake: false,
            ready: VecDeque::new(),
            cpu_ns: 0,
            polls: 0,
            tasks_spawned: 0,
            tasks_completed: 0,
            tasks_active: 0,
            rejections: 0,
        });
        Ok(id)
    }

    /// The container with this name.
    pub fn lookup(&self, name: &str) -> Option<ContainerId> {
        let state = self.shared.state.borrow();
        state
            .containers
            .iter()
            .position(|c| c.spec.name == name)
            .map(|index| ContainerId(index as u32))
    }

    /// Changes a container's shares; applies from the next poll charged to it.
    pub fn set_shares(&self, id: ContainerId, shares: u32) -> Result<(), ContainerError> {
        self.with_container(id, |c| {
            check_shares(&c.spec.name, shares)?;
            c.spec.shares = shares;
            c.vruntime_per_ns = VRUNTIME_SCALE / shares as u64;
            Ok(())
        })
    }

    /// Changes a container's limits; tasks already admitted are not affected.
    pub fn set_limits(
        &self,
        id: ContainerId,
        tasks_max: u32,
        queued_max: u32,
    ) -> Result<(), ContainerError> {
        self.with_container(id, |c| {
            check_spec(&ContainerSpec {
                tasks_max,
                queued_max,
                ..c.spec.clone()
            })?;
            c.spec.tasks_max = tasks_max;
            c.spec.queued_max = queued_max;
            Ok(())
        })
    }

    fn with_container<R>(
        &self,
        id: ContainerId,
        f: impl FnOnce(&mut Container) -> Result<R, ContainerError>,
    ) -> Result<R, ContainerError> {
        let mut state = self.shared.state.borrow_mut();
        match state.containers.get_mut(id.index()) {
            Some(container) => f(container),
            None => Err(ContainerError::UnknownContainer { container: id }),
        }
    }

    /// Spawns a task into a container. Refused with [`ContainerError::OverLimit`] (and counted as a rejection)
    /// when the container already has `tasks_max` tasks or `queued_max` ready tasks.
    pub fn spawn<F>(&self, id: ContainerId, future: F) -> Result<TaskId, ContainerError>
    where
        F: Future<Output = ()> + 'static,
    {
        let key = {
            let mut state = self.shared.state.borrow_mut();
            let Some(c) = state.containers.get_mut(id.index()) else {
                return Err(ContainerError::UnknownContainer { container: id });
            };
            let over = if c.tasks_active >= c.spec.tasks_max {
                Some((ContainerLimit::TasksMax, c.spec.tasks_max, c.tasks_active))
            } else if c.ready.len() as u32 >= c.spec.queued_max {
                Some((
                    ContainerLimit::QueuedMax,
                    c.spec.queued_max,
                    c.ready.len() as u32,
                ))
            } else {
                None
            };
            if let Some((limit, max, current)) = over {
                c.rejections += 1;
                return Err(ContainerError::OverLimit {
                    container: id,
                    limit,
                    max,
                    value: current + 1,
                });
            }
            c.tasks_spawned += 1;
            c.tasks_active += 1;
            state.tasks_active += 1;
            let index = match state.free_tasks.pop() {
                Some(index) => index,
                None => {
                    state.tasks.push(TaskSlot {
                        generation: 0,
                        container: 0,
                        live: false,
                        future: None,
                        waker: None,
                        header: None,
                    });
                    (state.tasks.len() - 1) as u32
                }
            };
            let slot = &mut state.tasks[index as usize];
            let key = TaskKey {
                index,
                generation: slot.generation,
            };
            let header = Arc::new(TaskHeader {
                key,
                state: AtomicU8::new(TASK_QUEUED),
                inbox: self.shared.inbox.clone(),
            });
            slot.container = id.0;
            slot.live = true;
            slot.future = Some(Box::pin(future));
            slot.waker = Some(Waker::from(header.clone()));
            slot.header = Some(header);
            state.enqueue(key);
            key
        };
        self.shared.inbox.wake_outer();
        Ok(TaskId {
            index: key.index,
            generation: key.generation,
        })
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
