//! Limits, accounting, wakers and validation of the container scheduler (manual clock, no monoio except the last
//! test, which runs the scheduler as a monoio task).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};

use larder_runtime::container::{
    ContainerError, ContainerId, ContainerLimit, ContainerScheduler, ContainerSpec, ManualClock,
    SchedulerConfig, SHARES_MAX,
};

fn scheduler() -> ContainerScheduler<ManualClock> {
    ContainerScheduler::new(SchedulerConfig::default(), ManualClock::new(0)).expect("valid config")
}

fn limited(name: &str, tasks_max: u32, queued_max: u32) -> ContainerSpec {
    ContainerSpec {
        tasks_max,
        queued_max,
        ..ContainerSpec::new(name, 1)
    }
}

/// A task that waits until its waker slot is woken once, then completes. Returns the slot holding its waker.
fn parked(
    scheduler: &ContainerScheduler<ManualClock>,
    id: ContainerId,
) -> Result<Rc<RefCell<Option<Waker>>>, ContainerError> {
    let slot: Rc<RefCell<Option<Waker>>> = Rc::default();
    let task_slot = slot.clone();
    let mut polled = false;
    scheduler.spawn(
        id,
        std::future::poll_fn(move |cx| {
            if polled {
                return Poll::Ready(());
            }
            polled = true;
            *task_slot.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }),
    )?;
    Ok(slot)
}

#[test]
fn container_over_tasks_max_is_refused_while_the_other_is_unaffected() {
    let scheduler = scheduler();
    let full = scheduler
        .add_container(limited("full", 2, 10))
        .expect("new container");
    let other = scheduler
        .add_container(limited("other", 2, 10))
        .expect("new container");
    let first = parked(&scheduler, full).expect("1 of 2");
    parked(&scheduler, full).expect("2 of 2");
    let refused = parked(&scheduler, full).expect_err("3 of 2");
    assert_eq!(
        refused,
        ContainerError::OverLimit {
            container: full,
            limit: ContainerLimit::TasksMax,
            max: 2,
            value: 3
        }
    );
    assert_eq!(refused.to_string(), "container#0 over tasks_max: 3 > 2");
    parked(&scheduler, other).expect("other container has its own limit");
    parked(&scheduler, other).expect("other container has its own limit");

    let stats = scheduler.container_stats(full).expect("exists");
    assert_eq!(
        (stats.tasks_spawned, stats.tasks_active, stats.rejections),
        (2, 2, 1)
    );
    let stats = scheduler.container_stats(other).expect("exists");
    assert_eq!(
        (stats.tasks_spawned, stats.tasks_active, stats.rejections),
        (2, 2, 0)
    );

    // A task that completes frees its slot.
    assert_eq!(
        scheduler.run_until_idle(100),
        4,
        "every task polled once, then all wait"
    );
    first.borrow_mut().take().expect("waker registered").wake();
    assert_eq!(scheduler.run_until_idle(100), 1);
    let stats = scheduler.container_stats(full).expect("exists");
    assert_eq!((stats.tasks_completed, stats.tasks_active), (1, 1));
    parked(&scheduler, full).expect("slot freed by the completed task");
    assert_eq!(scheduler.tasks_active(), 4);
}

#[test]
fn queued_max_bounds_ready_tasks_at_spawn() {
    let scheduler = scheduler();
    let id = scheduler
        .add_container(limited("q", 10, 2))
        .expect("new container");
    parked(&scheduler, id).expect("1 queued");
    parked(&scheduler, id).expect("2 queued");
    let refused = parked(&scheduler, id).expect_err("3 queued of 2");
    assert_eq!(
        refused,
        ContainerError::OverLimit {
            container: id,
            limit: ContainerLimit::QueuedMax,
            max: 2,
            value: 3
        }
    );
    assert_eq!(
        scheduler.container_stats(id).expect("exists").tasks_queued,
        2
    );
    assert_eq!(scheduler.run_until_idle(100), 2);
    assert_eq!(
        scheduler.container_stats(id).expect("exists").tasks_queued,
        0
    );
    parked(&scheduler, id).expect("queue drained");
}

#[test]
fn set_limits_applies_to_later_spawns() {
    let scheduler = scheduler();
    let id = scheduler
        .add_container(limited("l", 1, 1))
        .expect("new container");
    parked(&scheduler, id).expect("1 of 1");
    assert!(parked(&scheduler, id).is_err());
    scheduler.set_limits(id, 2, 2).expect("valid limits");
    parked(&scheduler, id).expect("2 of 2");
    assert!(matches!(
        scheduler.set_limits(id, 0, 1),
        Err(ContainerError::LimitOutOfRange { value: 0, .. })
    ));
}

#[test]
fn shares_and_names_are_validated() {
    let scheduler = scheduler();
    let zero = scheduler.add_container(ContainerSpec::new("zero", 0));
    assert_eq!(
        zero,
        Err(ContainerError::SharesOutOfRange {
            name: "zero".into(),
            shares: 0,
            max: SHARES_MAX
        })
    );
    let id = scheduler
        .add_container(ContainerSpec::new("web", 5))
        .expect("new container");
    assert!(matches!(
        scheduler.set_shares(id, 0),
        Err(ContainerError::SharesOutOfRange { shares: 0, .. })
    ));
    assert!(scheduler.set_shares(id, SHARES_MAX + 1).is_err());
    assert_eq!(
        scheduler.container_stats(id).expect("exists").shares,
        5,
        "a refused change changes nothing"
    );
    scheduler.set_shares(id, 7).expect("valid");
    assert_eq!(scheduler.container_stats(id).expect("exists").shares, 7);
    assert_eq!(
        scheduler.add_container(ContainerSpec::new("web", 1)),
        Err(ContainerError::DuplicateName { name: "web".into() })
    );
    assert_eq!(scheduler.lookup("web"), Some(id));
    assert_eq!(scheduler.lookup("nope"), None);
}

#[test]
fn containers_max_is_enforced() {
    let config = SchedulerConfig {
        containers_max: 2,
        ..SchedulerConfig::default()
    };
    let scheduler = ContainerScheduler::new(config, ManualClock::new(0)).expect("valid config");
    scheduler
        .add_container(ContainerSpec::new("a", 1))
        .expect("1 of 2");
    let b = scheduler
        .add_container(ContainerSpec::new("b", 1))
        .expect("2 of 2");
    assert_eq!(
        scheduler.add_container(ContainerSpec::new("c", 1)),
        Err(ContainerError::TooManyContainers { containers_max: 2 })
    );
    let config = SchedulerConfig {
        containers_max: 0,
        ..SchedulerConfig::default()
    };
    assert!(matches!(
        ContainerScheduler::new(config, ManualClock::new(0)),
        Err(ContainerError::ConfigOutOfRange {
            field: "containers_max",
            ..
        })
    ));
    scheduler.spawn(b, async {}).expect("known container");
    // An id from a scheduler with more containers is unknown here.
    let bigger = self::scheduler();
    let third = ["x", "y", "z"].map(|name| {
        bigger
            .add_container(ContainerSpec::new(name, 1))
            .expect("new")
    })[2];
    assert_eq!(
        scheduler.spawn(third, async {}),
        Err(ContainerError::UnknownContainer { container: third })
    );
    assert!(scheduler.set_shares(third, 1).is_err());
}

#[test]
fn wakes_from_another_thread_requeue_the_task() {
    let scheduler = scheduler();
    let id = scheduler
        .add_container(ContainerSpec::new("x", 1))
        .expect("new container");
    let slot = parked(&scheduler, id).expect("spawned");
    assert_eq!(scheduler.run_until_idle(10), 1);
    assert!(!scheduler.has_ready());
    let waker = slot.borrow_mut().take().expect("registered");
    std::thread::spawn(move || {
        waker.wake_by_ref();
        waker.wake(); // a second wake before the poll queues nothing more
    })
    .join()
    .expect("waker thread");
    assert!(scheduler.has_ready());
    assert_eq!(scheduler.run_until_idle(10), 1, "polled once, completed");
    assert_eq!(scheduler.tasks_active(), 0);
}

#[test]
fn stray_wake_after_completion_is_ignored() {
    let scheduler = scheduler();
    let id = scheduler
        .add_container(ContainerSpec::new("x", 1))
        .expect("new container");
    let kept: Rc<RefCell<Option<Waker>>> = Rc::default();
    let task_kept = kept.clone();
    scheduler
        .spawn(
            id,
            std::future::poll_fn(move |cx| {
                *task_kept.borrow_mut() = Some(cx.waker().clone());
                Poll::Ready(())
            }),
        )
        .expect("spawned");
    assert_eq!(scheduler.run_until_idle(10), 1);
    // The slot is reused by a new task; the old waker must not poll it.
    let polls = Rc::new(Cell::new(0));
    let counted = polls.clone();
    scheduler
        .spawn(
            id,
            std::future::poll_fn(move |_| {
                counted.set(counted.get() + 1);
                Poll::<()>::Pending
            }),
        )
        .expect("spawned");
    assert_eq!(scheduler.run_until_idle(10), 1);
    kept.borrow_mut().take().expect("kept").wake();
    assert_eq!(scheduler.run_until_idle(10), 0, "stale wake polls nothing");
    assert_eq!(polls.get(), 1);
}

#[test]
fn tasks_spawn_tasks_from_inside_a_poll() {
    let scheduler = scheduler();
    let id = scheduler
        .add_container(ContainerSpec::new("x", 1))
        .expect("new container");
    let inner = scheduler.clone();
    let done = Rc::new(Cell::new(false));
    let child_done = done.clone();
    scheduler
        .spawn(id, async move {
            inner
                .spawn(id, async move { child_done.set(true) })
                .expect("spawn from a task");
        })
        .expect("spawned");
    assert_eq!(scheduler.run_until_idle(10), 2);
    assert!(done.get());
    let stats = scheduler.container_stats(id).expect("exists");
    assert_eq!(
        (
            stats.tasks_spawned,
            stats.tasks_completed,
            stats.tasks_active
        ),
        (2, 2, 0)
    );
}

#[test]
fn run_inside_monoio_sleeps_until_woken_and_stops() {
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("legacy runtime");
    let scheduler = scheduler();
    let id = scheduler
        .add_container(ContainerSpec::new("x", 1))
        .expect("new container");
    let finished = Rc::new(Cell::new(0u32));
    runtime.block_on(async {
        let runner = scheduler.clone();
        let handle = monoio::spawn(async move { runner.run(None).await });
        for round in 0..3u32 {
            let task_finished = finished.clone();
            scheduler
                .spawn(id, async move {
                    // A real yield through monoio's own machinery, then done.
                    monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                    task_finished.set(task_finished.get() + 1);
                })
                .expect("spawned");
            // Bounded wait: each round needs a few scheduler turns.
            for _ in 0..10_000 {
                if finished.get() > round {
                    break;
                }
                monoio::time::sleep(std::time::Duration::from_micros(100)).await;
            }
            assert_eq!(
                finished.get(),
                round + 1,
                "task of round {round} ran to completion"
            );
        }
        scheduler.stop();
        handle.await;
    });
    assert_eq!(scheduler.tasks_active(), 0);
}
