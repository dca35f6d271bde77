//! CPU split of the container scheduler, measured with a manual clock: every test task advances the clock by a
//! known cost when polled, so the accounting is exact and the runs are deterministic.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use larder_runtime::container::{
    ContainerId, ContainerScheduler, ContainerSpec, ContainerStats, LatencyClass, ManualClock,
    SchedulerConfig,
};

/// A task that costs `cost_ns` of clock time per poll and stays ready (wakes itself) for `polls_left` polls.
struct Busy {
    clock: ManualClock,
    cost_ns: u64,
    polls_left: u64,
}

impl Future for Busy {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.clock.advance_ns(self.cost_ns);
        if self.polls_left == 0 {
            return Poll::Ready(());
        }
        self.polls_left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn scheduler() -> ContainerScheduler<ManualClock> {
    ContainerScheduler::new(SchedulerConfig::default(), ManualClock::new(0)).expect("valid config")
}

/// A scheduler with containers "a" and "b" of the given shares.
fn two_containers(
    a_shares: u32,
    b_shares: u32,
) -> (ContainerScheduler<ManualClock>, ContainerId, ContainerId) {
    let scheduler = scheduler();
    let a = scheduler.add_container(ContainerSpec::new("a", a_shares));
    let b = scheduler.add_container(ContainerSpec::new("b", b_shares));
    (
        scheduler,
        a.expect("new container"),
        b.expect("new container"),
    )
}

fn spawn_busy(
    scheduler: &ContainerScheduler<ManualClock>,
    id: ContainerId,
    tasks: usize,
    cost_ns: u64,
) {
    for _ in 0..tasks {
        let task = Busy {
            clock: scheduler.clock().clone(),
            cost_ns,
            polls_left: u64::MAX,
        };
        scheduler.spawn(id, task).expect("below limits");
    }
}

fn cpu(scheduler: &ContainerScheduler<ManualClock>, id: ContainerId) -> ContainerStats {
    scheduler.container_stats(id).expect("container exists")
}

/// Share of `a` in the CPU both got between two snapshots.
fn fraction(a: (u64, u64), b: (u64, u64)) -> f64 {
    let a_ns = (a.1 - a.0) as f64;
    let b_ns = (b.1 - b.0) as f64;
    a_ns / (a_ns + b_ns)
}

fn assert_split(label: &str, measured: f64, expected: f64) {
    assert!(
        (measured - expected).abs() <= 0.02,
        "{label}: container A got {:.4} of the CPU, expected {expected:.4} ± 0.02",
        measured
    );
}

#[test]
fn shares_three_to_one_split_cpu_75_25() {
    let (scheduler, a, b) = two_containers(3, 1);
    spawn_busy(&scheduler, a, 4, 1_000);
    spawn_busy(&scheduler, b, 4, 1_000);
    assert_eq!(
        scheduler.run_until_idle(10_000),
        10_000,
        "both always ready"
    );
    let (sa, sb) = (cpu(&scheduler, a), cpu(&scheduler, b));
    assert_eq!(sa.polls + sb.polls, 10_000);
    assert_eq!(
        sa.cpu_ns + sb.cpu_ns,
        10_000 * 1_000,
        "every ns of the clock is charged"
    );
    assert_split("3:1", fraction((0, sa.cpu_ns), (0, sb.cpu_ns)), 0.75);
}

#[test]
fn split_follows_cpu_time_not_poll_count() {
    // A's polls cost 1 µs, B's 3 µs; with shares 3:1 A still gets 75% of the time (9 polls of A per poll of B).
    let (scheduler, a, b) = two_containers(3, 1);
    spawn_busy(&scheduler, a, 2, 1_000);
    spawn_busy(&scheduler, b, 2, 3_000);
    scheduler.run_until_idle(10_000);
    let (sa, sb) = (cpu(&scheduler, a), cpu(&scheduler, b));
    assert_split(
        "3:1 unequal costs",
        fraction((0, sa.cpu_ns), (0, sb.cpu_ns)),
        0.75,
    );
    assert!(
        sa.polls > 8 * sb.polls,
        "A polled {} times, B {}",
        sa.polls,
        sb.polls
    );
}

#[test]
fn change_of_shares_mid_run_takes_effect() {
    let (scheduler, a, b) = two_containers(3, 1);
    spawn_busy(&scheduler, a, 3, 1_000);
    spawn_busy(&scheduler, b, 3, 1_000);
    scheduler.run_until_idle(10_000);
    let before = (cpu(&scheduler, a).cpu_ns, cpu(&scheduler, b).cpu_ns);
    assert_split(
        "3:1 before the change",
        fraction((0, before.0), (0, before.1)),
        0.75,
    );

    scheduler.set_shares(a, 1).expect("valid shares");
    scheduler.set_shares(b, 4).expect("valid shares");
    scheduler.run_until_idle(10_000);
    let after = (cpu(&scheduler, a).cpu_ns, cpu(&scheduler, b).cpu_ns);
    assert_split(
        "1:4 after the change",
        fraction((before.0, after.0), (before.1, after.1)),
        0.2,
    );
}

#[test]
fn three_containers_split_two_one_one() {
    let scheduler = scheduler();
    let ids: Vec<_> = [("a", 2), ("b", 1), ("c", 1)]
        .into_iter()
        .map(|(name, shares)| {
            scheduler
                .add_container(ContainerSpec::new(name, shares))
                .expect("new container")
        })
        .collect();
    for &id in &ids {
        spawn_busy(&scheduler, id, 2, 500);
    }
    scheduler.run_until_idle(12_000);
    let cpu_ns: Vec<u64> = ids.iter().map(|&id| cpu(&scheduler, id).cpu_ns).collect();
    let total = cpu_ns.iter().sum::<u64>() as f64;
    for (share, expected) in cpu_ns.iter().zip([0.5, 0.25, 0.25]) {
        let measured = *share as f64 / total;
        assert!(
            (measured - expected).abs() <= 0.02,
            "got {cpu_ns:?}, expected 2:1:1"
        );
    }
}

/// A task that is ready only when the test opens its gate (a stand-in for I/O readiness).
struct Gated {
    clock: ManualClock,
    cost_ns: u64,
    gate: Rc<Cell<bool>>,
    waker: Rc<Cell<Option<std::task::Waker>>>,
}

impl Future for Gated {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.clock.advance_ns(self.cost_ns);
        if self.gate.get() {
            cx.waker().wake_by_ref();
        } else {
            self.waker.set(Some(cx.waker().clone()));
        }
        Poll::Pending
    }
}

#[test]
fn sleeper_does_not_hoard_credit() {
    // B sleeps while A runs alone for 1,000 polls; when B wakes it starts level with A instead of owning the
    // shard until it has caught up, so the next 4,000 polls still split 1:1.
    let (scheduler, a, b) = two_containers(1, 1);
    spawn_busy(&scheduler, a, 1, 1_000);
    let gate = Rc::new(Cell::new(false));
    let waker = Rc::new(Cell::new(None));
    let task = Gated {
        clock: scheduler.clock().clone(),
        cost_ns: 1_000,
        gate: gate.clone(),
        waker: waker.clone(),
    };
    scheduler.spawn(b, task).expect("below limits");
    scheduler.run_until_idle(1_000);
    let asleep = (cpu(&scheduler, a).cpu_ns, cpu(&scheduler, b).cpu_ns);
    assert_eq!(asleep.1, 1_000, "B ran once, then slept");

    gate.set(true);
    waker.take().expect("B registered its waker").wake();
    scheduler.run_until_idle(4_000);
    let awake = (cpu(&scheduler, a).cpu_ns, cpu(&scheduler, b).cpu_ns);
    assert_split(
        "1:1 after B woke",
        fraction((asleep.0, awake.0), (asleep.1, awake.1)),
        0.5,
    );
}

#[test]
fn interactive_wins_ties_against_batch() {
    let scheduler = scheduler();
    let batch = ContainerSpec {
        latency_class: LatencyClass::Batch,
        ..ContainerSpec::new("batch", 1)
    };
    let batch = scheduler.add_container(batch).expect("new container");
    let interactive = scheduler
        .add_container(ContainerSpec::new("interactive", 1))
        .expect("new container");
    spawn_busy(&scheduler, batch, 1, 1_000);
    spawn_busy(&scheduler, interactive, 1, 1_000);
    assert!(scheduler.poll_once());
    assert_eq!(
        cpu(&scheduler, interactive).polls,
        1,
        "equal vruntime: the interactive container goes first"
    );
    assert_eq!(cpu(&scheduler, batch).polls, 0);
}
