//! Resource containers (Banga, Druschel and Mogul, OSDI '99) and the per-shard container scheduler.
//!
//! # What this module owns
//! A *container* is a named class of work — the resource principal, separate from the thread that happens to run
//! the work. It has CPU `shares`, a [`LatencyClass`] and two limits: `tasks_max` (concurrent tasks) and
//! `queued_max` (tasks waiting in its ready queue). A [`ContainerScheduler`] owns, for one shard, the containers,
//! the tasks (futures) spawned into them, their ready queues, and the per-container accounting. It is
//! single-threaded (`Rc`-based handle, `!Send`): each shard has its own and nothing is shared between shards.
//!
//! | file | owns |
//! |---|---|
//! | `spec.rs` | ids, [`ContainerSpec`], [`SchedulerConfig`], the limit constants, [`ContainerError`], range checks |
//! | `clock.rs` | [`Clock`], [`MonotonicClock`], [`ManualClock`] |
//! | `task.rs` | task slots, atomic task states, `Arc` wakers, the inbox that wakes from any thread land in |
//! | `queue.rs` | per-container ready queues, virtual-runtime (share) accounting, the pick |
//! | `admission.rs` | adding containers, changing shares and limits, [`ContainerScheduler::spawn`] against the limits |
//! | `scheduler.rs` | the [`ContainerScheduler`] handle, the poll loop, [`ContainerScheduler::run`], statistics |
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
//! How it runs (turns, yields to monoio, sleeping when idle) is in `scheduler.rs`; how wakes from any thread reach
//! it is in `task.rs`.
//!
//! # Accounting: all of the work, not only the polls
//! Polls are a quarter of a busy shard's CPU; the rest is the loop around them (I/O submission and completion, the
//! kernel's part of each read and write). At the end of each turn that polled, the thread's CPU from the kernel
//! ([`Clock::cpu_ns`], `CLOCK_THREAD_CPUTIME_ID`) since the last apportioning, less the polls' wall time, is
//! charged to the containers by their operations since then (polls and inbox wakes); poll wall time the thread
//! did not run (preemption) is refunded. The containers' CPU therefore sums to the thread's. Charges move the
//! virtual runtime and the `cpu_percent_max` budget alike.
//!
//! # Control while containers contend
//! While two or more containers have live tasks: a turn's work budget is `turn_contended_ns` (25 µs) counting each
//! poll's expected loop work, so ready work waits in the queues where shares decide; a container that wakes from
//! sleep starts at most one such turn of its own CPU behind the least awake one, and if it woke behind, its first
//! poll ends the turn; containers ahead of a container that is behind its share and ran out of ready tasks less
//! than 25 µs ago wait while the loop reaps (anticipation, as BFQ idles for a synchronous queue; the thread's CPU in
//! those turns is charged to the container waited for), and a poll ends the turn once the polled container is more
//! than 10 µs of its own CPU past such a container active within 1 ms. A container over
//! its `cpu_percent_max` budget is not picked until its 10 ms period refills it, even on an idle shard.
//!
//! # Invariants
//! Each file states its own; the ones a caller sees:
//! - Per container: `tasks_active <= tasks_max` and, at spawn, `tasks_queued <= queued_max`; over either,
//!   [`ContainerScheduler::spawn`] returns [`ContainerError::OverLimit`] and counts a rejection — nothing queues
//!   without bound.
//! - `shares` is in `1..=SHARES_MAX` at all times.
//! - A completed task is never polled again; its [`TaskId`] is generation-checked.
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
//! | `turn_contended_ns` | 25 µs of work while containers contend | bounds a container's wait behind another's polls |
//! | anticipation | 25 µs after a behind-share container's last poll | a closed-loop class keeps its share |
//! | `cpu_percent_max` | 0 (none) or 1..=100, over 10 ms periods | a hard cap, also on an idle shard |

mod admission;
mod clock;
mod queue;
mod scheduler;
mod spec;
mod task;

pub use clock::{thread_cpu_ns, Clock, ManualClock, MonotonicClock};
pub use scheduler::{ContainerScheduler, ContainerStats, SchedulerStats, Turn};
pub use spec::{
    ContainerError, ContainerId, ContainerLimit, ContainerSpec, LatencyClass, SchedulerConfig,
    TaskId, CAP_PERIOD_NS_DEFAULT, CONTAINERS_MAX_DEFAULT, CONTAINERS_MAX_LIMIT,
    CPU_PERCENT_MAX_LIMIT, POLLS_PER_TURN_DEFAULT, SEND_RATE_BYTES_PER_SECOND_LIMIT, SHARES_MAX,
    TASKS_MAX_DEFAULT, TASKS_MAX_LIMIT, TURN_CONTENDED_NS_DEFAULT, TURN_NS_DEFAULT, VRUNTIME_SCALE,
};
