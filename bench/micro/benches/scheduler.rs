//! Container scheduler overhead per poll, with the real monotonic clock (criterion; one iteration = one poll).
//!
//! Run: `cargo bench -p larder-micro --bench scheduler` (quick check: add `-- --quick`).
//! Trivial tasks (each poll bumps a counter, wakes itself and returns `Pending`) are spread over 1, 2 or 8
//! containers and driven by `run_until_idle`. The baseline `plain_round_robin` polls the same kind of task
//! round-robin from a `VecDeque` with a no-op waker: no wake handling, no clock, no accounting. Scheduler overhead
//! per poll = `scheduler/N` − `plain_round_robin`.

use std::collections::VecDeque;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use larder_runtime::container::{
    ContainerScheduler, ContainerSpec, MonotonicClock, SchedulerConfig,
};

const TASKS: usize = 64;

struct Trivial {
    polls: u64,
}

impl Future for Trivial {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polls = black_box(self.polls + 1);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A scheduler with `TASKS` always-ready trivial tasks over `containers` containers (shares 1, 2, …).
fn busy_scheduler(containers: usize) -> ContainerScheduler<MonotonicClock> {
    let scheduler = ContainerScheduler::new(SchedulerConfig::default(), MonotonicClock::new())
        .expect("valid config");
    let ids: Vec<_> = (0..containers)
        .map(|i| {
            let spec = ContainerSpec::new(format!("c{i}"), 1 + i as u32);
            scheduler.add_container(spec).expect("new container")
        })
        .collect();
    for task in 0..TASKS {
        scheduler
            .spawn(ids[task % containers], Trivial { polls: 0 })
            .expect("below limits");
    }
    scheduler
}

fn per_poll(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("poll");
    for containers in [1usize, 2, 8] {
        let scheduler = busy_scheduler(containers);
        group.bench_function(format!("scheduler/{containers}"), |bencher| {
            bencher.iter_custom(|polls| {
                let start = Instant::now();
                let done = scheduler.run_until_idle(polls as usize);
                let elapsed = start.elapsed();
                assert_eq!(done as u64, polls, "tasks stay ready");
                elapsed
            })
        });
    }
    let mut queue: VecDeque<Pin<Box<dyn Future<Output = ()>>>> = (0..TASKS)
        .map(|_| Box::pin(Trivial { polls: 0 }) as _)
        .collect();
    group.bench_function("plain_round_robin", |bencher| {
        let mut cx = Context::from_waker(Waker::noop());
        bencher.iter(|| {
            let mut task = queue.pop_front().expect("tasks");
            if task.as_mut().poll(&mut cx).is_pending() {
                queue.push_back(task);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, per_poll);
criterion_main!(benches);
