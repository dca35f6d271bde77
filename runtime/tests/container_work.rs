//! The scheduler's hold on all of a container's work, with a manual clock: the loop's work around the polls
//! (time the test advances between turns) is charged to the containers polled, a turn's work budget shrinks
//! while containers contend, a container that wakes from sleep is picked next and its poll ends the turn, and
//! `cpu_percent_max` holds a container to its budget with the I/O it would start (a task not polled starts none).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use larder_runtime::container::{
    Clock, ContainerError, ContainerId, ContainerScheduler, ContainerSpec, ManualClock,
    SchedulerConfig, Turn, TURN_CONTENDED_NS_DEFAULT,
};

/// A connection-like task: each poll costs `cost_ns` and "starts one I/O" (counted in `started`); it stays ready.
struct Busy {
    clock: ManualClock,
    cost_ns: u64,
    started: Rc<Cell<u64>>,
}

impl Future for Busy {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.clock.advance_ns(self.cost_ns);
        self.started.set(self.started.get() + 1);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A task that parks after each poll until the test wakes it through `waker`.
struct Parked {
    clock: ManualClock,
    cost_ns: u64,
    waker: Rc<Cell<Option<Waker>>>,
    polls: Rc<Cell<u64>>,
}

impl Future for Parked {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.clock.advance_ns(self.cost_ns);
        self.polls.set(self.polls.get() + 1);
        self.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

fn scheduler() -> ContainerScheduler<ManualClock> {
    ContainerScheduler::new(SchedulerConfig::default(), ManualClock::new(1_000))
        .expect("valid config")
}

fn busy(
    scheduler: &ContainerScheduler<ManualClock>,
    id: ContainerId,
    tasks: usize,
    cost_ns: u64,
) -> Rc<Cell<u64>> {
    let started = Rc::new(Cell::new(0));
    for _ in 0..tasks {
        let task = Busy {
            clock: scheduler.clock().clone(),
            cost_ns,
            started: started.clone(),
        };
        scheduler.spawn(id, task).expect("below limits");
    }
    started
}

fn add(scheduler: &ContainerScheduler<ManualClock>, name: &str, shares: u32) -> ContainerId {
    scheduler
        .add_container(ContainerSpec::new(name, shares))
        .expect("new container")
}

/// Runs turns like `ContainerScheduler::run`, advancing the clock by `loop_ns_per_poll` × polls between turns
/// (the loop's own work: submissions, completions, the kernel), and by the refill wait when only throttled work
/// is ready. Stops after `duration_ns` of clock time.
fn drive(scheduler: &ContainerScheduler<ManualClock>, duration_ns: u64, loop_ns_per_poll: u64) {
    let clock = scheduler.clock().clone();
    let end_ns = clock.now_ns() + duration_ns;
    while clock.now_ns() < end_ns {
        let Turn {
            polls,
            refill_at_ns,
            anticipating,
        } = scheduler.run_turn();
        if polls > 0 {
            clock.advance_ns(loop_ns_per_poll * polls as u64);
        } else if anticipating {
            // The loop reaps (here: nothing arrives) and turns again.
            clock.advance_ns(loop_ns_per_poll.max(1_000));
        } else if let Some(refill_ns) = refill_at_ns {
            clock.advance_idle_ns(refill_ns.saturating_sub(clock.now_ns()).max(1));
        } else {
            break;
        }
    }
}

#[test]
fn the_loops_work_is_charged_to_the_containers_polled_and_adds_up_to_the_threads_cpu() {
    let scheduler = scheduler();
    let gold = add(&scheduler, "gold", 300);
    let best_effort = add(&scheduler, "best-effort", 100);
    busy(&scheduler, gold, 8, 1_000);
    busy(&scheduler, best_effort, 64, 1_000);
    let start_ns = scheduler.clock().now_ns();
    // Polls are a quarter of the work, as measured on a real shard: 3 µs of loop work per 1 µs poll.
    drive(&scheduler, 200_000_000, 3_000);
    let elapsed_ns = scheduler.clock().now_ns() - start_ns;
    let stats = scheduler.stats();
    let charged_ns: u64 = stats.containers.iter().map(|c| c.cpu_ns).sum();
    let polls_ns: u64 = stats.containers.iter().map(|c| c.poll_cpu_ns).sum();
    // Everything but the loop work after the last turn (one turn's worth) is charged to someone.
    assert!(
        elapsed_ns - charged_ns <= 64 * 3_000,
        "charged {charged_ns} of {elapsed_ns} ns"
    );
    assert!(
        stats.overhead_ns >= 2 * polls_ns,
        "loop work {} ns against polls {polls_ns} ns",
        stats.overhead_ns
    );
    // With all the work charged, the split of the whole CPU follows the shares: 300 / (300 + 100) = 75%.
    let gold_ns = stats.containers[gold.index()].cpu_ns as f64;
    let fraction = gold_ns / charged_ns as f64;
    assert!(
        (fraction - 0.75).abs() <= 0.02,
        "gold got {fraction:.4} of the charged CPU, expected 0.75 ± 0.02"
    );
}

#[test]
fn a_container_over_its_share_starts_no_io_until_picked() {
    // I/O gating: a task that is not polled starts nothing, so a container's I/O follows its share.
    let scheduler = scheduler();
    let gold = add(&scheduler, "gold", 1_000);
    let best_effort = add(&scheduler, "best-effort", 100);
    let gold_io = busy(&scheduler, gold, 64, 2_000);
    let best_effort_io = busy(&scheduler, best_effort, 64, 2_000);
    drive(&scheduler, 500_000_000, 2_000);
    let ratio = gold_io.get() as f64 / best_effort_io.get() as f64;
    assert!(
        (ratio - 10.0).abs() <= 0.5,
        "gold started {} I/Os and best-effort {}: ratio {ratio:.2}, expected 10 ± 0.5",
        gold_io.get(),
        best_effort_io.get()
    );
}

#[test]
fn a_turn_is_short_while_containers_contend() {
    let scheduler = scheduler();
    let a = add(&scheduler, "a", 100);
    busy(&scheduler, a, 100, 10_000);
    // One live container: the long turn (64 polls, or 1 ms = 100 polls of 10 µs).
    assert_eq!(scheduler.run_turn().polls, 64);
    let b = add(&scheduler, "b", 100);
    busy(&scheduler, b, 1, 10_000);
    // b woke from sleep behind a (it has not run): it is picked first and its first poll ends the turn.
    assert_eq!(scheduler.run_turn().polls, 1);
    // Two live containers: the turn ends once 25 µs of polls ran (the poll that crosses it included).
    assert_eq!(
        scheduler.run_turn().polls as u64,
        TURN_CONTENDED_NS_DEFAULT.div_ceil(10_000)
    );
}

#[test]
fn a_container_that_wakes_is_picked_next_and_its_poll_ends_the_turn() {
    let scheduler = scheduler();
    let flood = add(&scheduler, "flood", 100);
    let premium = add(&scheduler, "premium", 300);
    let flood_io = busy(&scheduler, flood, 64, 5_000);
    let waker = Rc::new(Cell::new(None));
    let premium_polls = Rc::new(Cell::new(0));
    scheduler
        .spawn(
            premium,
            Parked {
                clock: scheduler.clock().clone(),
                cost_ns: 5_000,
                waker: waker.clone(),
                polls: premium_polls.clone(),
            },
        )
        .expect("below limits");
    drive(&scheduler, 10_000_000, 5_000);
    for round in 0..100 {
        // The premium request arrives while the flood keeps the shard busy.
        let polls_before = premium_polls.get();
        let flood_before = flood_io.get();
        waker.take().expect("premium parked").wake();
        let turn = scheduler.run_turn();
        assert_eq!(
            (
                turn.polls,
                premium_polls.get() - polls_before,
                flood_io.get() - flood_before
            ),
            (1, 1, 0),
            "round {round}: the woken premium task is polled first and alone in its turn"
        );
        drive(&scheduler, 200_000, 5_000);
    }
}

#[test]
fn cpu_percent_max_holds_a_container_alone_on_an_idle_shard() {
    let scheduler = scheduler();
    let capped = scheduler
        .add_container(ContainerSpec {
            cpu_percent_max: 25,
            ..ContainerSpec::new("capped", 100)
        })
        .expect("new container");
    busy(&scheduler, capped, 16, 30_000);
    let start_ns = scheduler.clock().now_ns();
    drive(&scheduler, 1_000_000_000, 10_000);
    let elapsed_ns = scheduler.clock().now_ns() - start_ns;
    let stats = scheduler.container_stats(capped).expect("exists");
    let percent = 100.0 * stats.cpu_ns as f64 / elapsed_ns as f64;
    assert!(
        (percent - 25.0).abs() <= 1.0,
        "capped container used {percent:.2}% of the shard, expected 25 ± 1"
    );
    assert!(
        stats.throttles >= 90,
        "throttled {} times in 100 periods",
        stats.throttles
    );
    // The time it was throttled the shard had nothing else to do: it slept (the test advanced to each refill).
}

#[test]
fn a_capped_container_does_not_hold_back_the_others() {
    let scheduler = scheduler();
    let capped = scheduler
        .add_container(ContainerSpec {
            cpu_percent_max: 10,
            ..ContainerSpec::new("capped", 1_000)
        })
        .expect("new container");
    let other = add(&scheduler, "other", 1);
    busy(&scheduler, capped, 8, 20_000);
    busy(&scheduler, other, 8, 20_000);
    let start_ns = scheduler.clock().now_ns();
    drive(&scheduler, 1_000_000_000, 0);
    let elapsed_ns = (scheduler.clock().now_ns() - start_ns) as f64;
    let capped_percent =
        100.0 * scheduler.container_stats(capped).unwrap().cpu_ns as f64 / elapsed_ns;
    let other_percent =
        100.0 * scheduler.container_stats(other).unwrap().cpu_ns as f64 / elapsed_ns;
    // 1,000 shares against 1 would take 99.9%; the cap leaves it 10%, and the rest goes to the other container.
    assert!(
        (capped_percent - 10.0).abs() <= 1.0,
        "capped {capped_percent:.2}%"
    );
    assert!(other_percent >= 88.0, "other {other_percent:.2}%");
}

#[test]
fn cap_and_send_rate_settings_are_checked_and_change_live() {
    let scheduler = scheduler();
    let id = add(&scheduler, "web", 100);
    assert!(matches!(
        scheduler.set_cpu_percent_max(id, 101),
        Err(ContainerError::SettingOutOfRange {
            setting: "cpu_percent_max",
            ..
        })
    ));
    assert!(matches!(
        scheduler.set_send_rate(id, 10_000_000_001),
        Err(ContainerError::SettingOutOfRange {
            setting: "send_rate_bytes_per_second",
            ..
        })
    ));
    let unchanged = scheduler.container_stats(id).unwrap();
    assert_eq!(
        (
            unchanged.cpu_percent_max,
            unchanged.send_rate_bytes_per_second
        ),
        (0, 0)
    );
    scheduler.set_cpu_percent_max(id, 50).expect("in range");
    scheduler.set_send_rate(id, 1 << 20).expect("in range");
    assert_eq!(scheduler.send_rate(id), 1 << 20);
    let changed = scheduler.container_stats(id).unwrap();
    assert_eq!(
        (changed.cpu_percent_max, changed.send_rate_bytes_per_second),
        (50, 1 << 20)
    );
    assert!(matches!(
        scheduler.add_container(ContainerSpec {
            cpu_percent_max: 200,
            ..ContainerSpec::new("bad", 1)
        }),
        Err(ContainerError::SettingOutOfRange { .. })
    ));
}

/// A task whose every poll takes `wall_ns` of clock time of which only `cpu_ns` is the thread's CPU.
struct Preempted {
    clock: ManualClock,
    cpu_ns: u64,
    idle_ns: u64,
}

impl Future for Preempted {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.clock.advance_ns(self.cpu_ns);
        self.clock.advance_idle_ns(self.idle_ns);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn poll_time_the_thread_did_not_run_is_refunded() {
    let scheduler = scheduler();
    let id = add(&scheduler, "web", 100);
    scheduler
        .spawn(
            id,
            Preempted {
                clock: scheduler.clock().clone(),
                cpu_ns: 6_000,
                idle_ns: 4_000,
            },
        )
        .expect("below limits");
    scheduler.run_turn(); // the first turn only starts the thread-CPU reading
    let before = scheduler.container_stats(id).unwrap();
    for _ in 0..100 {
        scheduler.run_turn();
    }
    let after = scheduler.container_stats(id).unwrap();
    let polls = after.polls - before.polls;
    // Each poll took 10 µs of wall time but 6 µs of the thread's CPU: 6 µs a poll is charged.
    assert_eq!(after.cpu_ns - before.cpu_ns, polls * 6_000);
    assert_eq!(after.poll_cpu_ns - before.poll_cpu_ns, polls * 6_000);
    assert!(scheduler.stats().refunded_ns >= polls * 4_000);
}

#[test]
fn the_loop_turns_spent_anticipating_a_container_are_charged_to_it() {
    // Gold (1000 shares) serves one closed-loop request at a time; the flood (100) always has work. When gold runs
    // out of ready tasks while behind, the scheduler waits for it (anticipation) instead of running the flood: the
    // loop's reaping meanwhile is gold's cost. Charged to the flood, it would push the flood below its share.
    let scheduler = scheduler();
    let clock = scheduler.clock().clone();
    let flood = add(&scheduler, "flood", 100);
    let gold = add(&scheduler, "gold", 1_000);
    busy(&scheduler, flood, 64, 5_000);
    let waker = Rc::new(Cell::new(None));
    scheduler
        .spawn(
            gold,
            Parked {
                clock: clock.clone(),
                cost_ns: 5_000,
                waker: waker.clone(),
                polls: Rc::new(Cell::new(0)),
            },
        )
        .expect("below limits");
    drive(&scheduler, 1_000_000, 5_000);
    let mut anticipations = 0;
    for round in 0..50 {
        if let Some(waker) = waker.take() {
            waker.wake();
        }
        // Turns (the loop's work between them: 5 µs per poll) until the scheduler anticipates gold.
        let mut turns = 0;
        while !scheduler.run_turn().anticipating {
            clock.advance_ns(5_000);
            turns += 1;
            assert!(
                turns < 1_000,
                "round {round}: no anticipation in 1,000 turns"
            );
        }
        // The loop reaps for 2 µs and nothing arrives: the next turn anticipates again and charges those 2 µs.
        let before = scheduler.stats();
        clock.advance_ns(2_000);
        assert!(
            scheduler.run_turn().anticipating,
            "round {round}: still within the anticipation window"
        );
        let after = scheduler.stats();
        let charged = |stats: &larder_runtime::container::SchedulerStats, id: ContainerId| {
            stats.containers[id.index()].cpu_ns
        };
        assert_eq!(
            (
                charged(&after, gold) - charged(&before, gold),
                charged(&after, flood) - charged(&before, flood)
            ),
            (2_000, 0),
            "round {round}: the reaping while anticipating gold is charged to gold alone"
        );
        anticipations += 1;
        drive(&scheduler, 100_000, 5_000);
    }
    assert_eq!(anticipations, 50);
}
