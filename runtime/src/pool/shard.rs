//! One shard thread, from its first instruction to its exit report.
//!
//! # What this file owns
//! The thread body ([`shard_thread`]): pinning and the CPU check, building the monoio runtime with the chosen
//! driver (start-up step 3), the shard's local tasks and the init future (step 5), and the shard's side of
//! shutdown: observe the request, drain, leave the runtime (shutdown steps 1–3). The protocols are written out in
//! `start.rs` and `shutdown.rs`.
//!
//! # Panics
//! Each thread body runs under `catch_unwind`. A panic in a shard — in the init future, a spawned task, a
//! container task or the runtime — is caught on that thread, requests shutdown of the whole pool (step 1 for
//! every other shard) and is returned by `join` as [`PoolError::ShardPanicked`](super::PoolError::ShardPanicked) with the shard and the message.
//!
//! # Invariants
//! - With `pin` set, a shard runs its runtime only after `sched_getcpu` confirmed it is on its CPU.
//! - A shard reports exactly one exit event (exited, start-up failed, or panicked), whatever happens.
//! - `IoDriver::Auto` never fails for lack of io_uring: it falls back to epoll and says so with a `warn!`.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`URING_ENTRIES_DEFAULT`](super::URING_ENTRIES_DEFAULT) | 1,024 submission entries | monoio's default; 8 MiB memlock holds several rings |
//! | [`DRAIN_CHECK_INTERVAL_MS`] | 1 ms | drain progress check, only while shutting down |
//! | `drain_timeout_ms` | default 5,000 ms | how long the shard waits for in-flight work |

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use super::config::{IoDriver, PoolConfig, DRAIN_CHECK_INTERVAL_MS};
use super::context::{ContextInner, ShardContext};
use super::shutdown::{ShardExit, ShutdownState};
use super::start::{Event, Outcome, Seed};
use crate::bell::{Doorbell, LocalBell};
use crate::container::{ContainerScheduler, MonotonicClock};
use crate::mesh::{MeshEndpoint, ShardMesh};
use crate::sleep::ShardTimers;
use crate::stats::{DriverKind, StatsCell, StatsHandle};
use crate::topology::{self, CpuId};
use crate::yielder::Yielder;
use crate::ShardId;

/// The body of one shard thread: everything under `catch_unwind`, the outcome reported as an [`Event::Exit`].
pub(super) fn shard_thread<M, F, Fut>(
    seed: Seed<M>,
    config: &PoolConfig,
    init: &F,
    shutdown: Arc<ShutdownState>,
    events: Sender<Event>,
) where
    M: Send + 'static,
    F: Fn(ShardContext<M>) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let shard = seed.shard;
    let stats = Arc::clone(&seed.stats);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_shard(seed, config, init, shutdown.clone(), &events)
    }));
    let outcome = match result {
        Ok(Ok(exit)) => Outcome::Exited(Box::new(exit)),
        Ok(Err(reason)) => Outcome::StartupFailed(reason),
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            tracing::error!(shard = shard.0, %message, "shard panicked; stopping the pool");
            shutdown.request();
            Outcome::Panicked(message)
        }
    };
    stats.mark_exited();
    let _ = events.send(Event::Exit { shard, outcome });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

enum ShardRuntime {
    Uring(monoio::Runtime<TimeDriver<IoUringDriver>>),
    Epoll(monoio::Runtime<TimeDriver<LegacyDriver>>),
}

fn build_runtime(
    shard: ShardId,
    driver: IoDriver,
    uring_entries: u32,
) -> Result<(DriverKind, ShardRuntime), String> {
    let uring = || {
        RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(uring_entries)
            .enable_timer()
            .build()
            .map(|rt| (DriverKind::Uring, ShardRuntime::Uring(rt)))
    };
    let epoll = || {
        RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|rt| (DriverKind::Epoll, ShardRuntime::Epoll(rt)))
            .map_err(|e| format!("building the epoll driver: {e}"))
    };
    match driver {
        IoDriver::Uring => uring().map_err(|e| format!("building the io_uring driver: {e}")),
        IoDriver::Epoll => epoll(),
        IoDriver::Auto if !monoio::utils::detect_uring() => {
            tracing::warn!(
                shard = shard.0,
                "io_uring is unavailable (probe failed, e.g. blocked by seccomp); falling back to epoll"
            );
            epoll()
        }
        IoDriver::Auto => uring().or_else(|e| {
            tracing::warn!(shard = shard.0, error = %e, "building io_uring failed; falling back to epoll");
            epoll()
        }),
    }
}

/// Start-up steps 3 and 5 on the shard's thread; returns the exit report, or a start-up failure reason.
fn run_shard<M, F, Fut>(
    seed: Seed<M>,
    config: &PoolConfig,
    init: &F,
    shutdown: Arc<ShutdownState>,
    events: &Sender<Event>,
) -> Result<ShardExit, String>
where
    M: Send + 'static,
    F: Fn(ShardContext<M>) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let Seed {
        shard,
        cpu,
        endpoint,
        bell,
        stats,
        go,
    } = seed;
    let started = Instant::now();
    stats.set_thread_id();
    if config.pin {
        topology::pin_current_thread(cpu).map_err(|e| e.to_string())?;
        let running_on = topology::current_cpu();
        if running_on != cpu {
            return Err(format!("pinned to {cpu} but running on {running_on}"));
        }
    }
    let (driver, runtime) = build_runtime(shard, config.driver, config.uring_entries)?;
    stats.set_driver(driver);
    let _ = events.send(Event::Ready { shard });
    if go.recv() != Ok(true) {
        return Err("start-up aborted by the pool".to_string());
    }
    let body = shard_body(
        ShardParts {
            shard,
            cpu,
            driver,
            endpoint,
            bell,
            stats,
            shutdown,
            started,
        },
        config,
        init,
    );
    let exit = match runtime {
        ShardRuntime::Uring(mut rt) => rt.block_on(body),
        ShardRuntime::Epoll(mut rt) => rt.block_on(body),
    };
    Ok(exit)
}

struct ShardParts<M> {
    shard: ShardId,
    cpu: CpuId,
    driver: DriverKind,
    endpoint: MeshEndpoint<M>,
    bell: Arc<Doorbell>,
    stats: Arc<StatsCell>,
    shutdown: Arc<ShutdownState>,
    started: Instant,
}

/// Start-up step 5 and shutdown steps 1–3, inside the shard's runtime.
async fn shard_body<M, F, Fut>(parts: ShardParts<M>, config: &PoolConfig, init: &F) -> ShardExit
where
    M: Send + 'static,
    F: Fn(ShardContext<M>) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let yielder = Yielder::new();
    monoio::spawn(yielder.clone().bounce());
    let local = LocalBell::new(parts.bell);
    monoio::spawn(local.clone().pump(
        parts.driver == DriverKind::Epoll,
        Duration::from_micros(config.mesh.spin_before_park_us),
        yielder.clone(),
    ));
    let timers = ShardTimers::new(config.timer, parts.started).expect("validated by start");
    monoio::spawn(timers.clone().drive(parts.driver == DriverKind::Epoll));
    let containers = ContainerScheduler::new(config.scheduler, MonotonicClock::new())
        .expect("validated by start");
    {
        // `fair`: the scheduler yields between turns with a self-wake, which monoio would re-queue in front of
        // every other task of the shard (starving I/O tasks while a container is busy).
        let (containers, timers) = (containers.clone(), timers.clone());
        monoio::spawn(yielder.fair(async move { containers.run(Some(&timers)).await }));
    }
    {
        let (timers, containers, stats, yielder) = (
            timers.clone(),
            containers.clone(),
            parts.stats.clone(),
            yielder.clone(),
        );
        let interval = Duration::from_millis(config.stats_interval_ms);
        monoio::spawn(async move {
            loop {
                stats.sample_thread_cpu();
                stats.publish_loop(
                    containers.loop_turns(),
                    timers.armed_total(),
                    timers.armed() as u64,
                );
                stats.publish_containers(containers.stats().containers);
                if timers.sleep(interval).await.is_err() {
                    // The wheel is full: sample again after the next poll of this task rather than never.
                    yielder.yield_now().await;
                }
            }
        });
    }
    let stats_handle = StatsHandle::new(parts.stats.clone());
    let context = ShardContext {
        inner: Rc::new(ContextInner {
            shard: parts.shard,
            cpu: parts.cpu,
            driver: parts.driver,
            mesh: ShardMesh::new(parts.endpoint, local.clone(), parts.stats.clone()),
            stats: stats_handle.clone(),
            shutdown: parts.shutdown,
            local,
            timers: timers.clone(),
            containers: containers.clone(),
            yielder,
            in_flight: Rc::new(Cell::new(0)),
        }),
    };
    tracing::debug!(shard = parts.shard.0, cpu = parts.cpu.0, driver = %parts.driver, "shard running");
    context.spawn(init(context.clone()));
    // Shutdown step 1: observe the request.
    context.shutdown_requested().await;
    // Step 2: drain up to the deadline.
    let deadline_ns = timers.now_ns() + config.drain_timeout_ms * 1_000_000;
    let check = Duration::from_millis(DRAIN_CHECK_INTERVAL_MS);
    let tasks_left = || context.in_flight() + containers.tasks_active();
    while tasks_left() > 0 && timers.now_ns() < deadline_ns {
        let _ = timers.sleep(check).await;
    }
    // Step 3: leave the runtime.
    let tasks_abandoned = tasks_left();
    containers.stop();
    parts.stats.sample_thread_cpu();
    parts
        .stats
        .publish_containers(containers.stats().containers);
    if tasks_abandoned > 0 {
        tracing::warn!(
            shard = parts.shard.0,
            tasks_abandoned,
            "drain deadline passed; dropping unfinished tasks"
        );
    }
    ShardExit {
        shard: parts.shard,
        cpu: parts.cpu,
        driver: parts.driver,
        tasks_abandoned,
        stats: stats_handle.snapshot(),
    }
}

/// Used by tests and benches that need the driver a selection resolves to without starting a pool.
pub fn uring_available() -> bool {
    monoio::utils::detect_uring()
}
