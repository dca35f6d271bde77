//! Integration tests of the shard pool, mesh, handoff, drain and panic containment — every scenario runs once with
//! the io_uring driver and once with the epoll driver (`<scenario>::uring`, `<scenario>::epoll`).
//!
//! No wall-clock assertions: tests wait on channels with generous bounds (a bound only turns a hang into a
//! failure) and assert on values the shards report.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError};
use larder_runtime::container::ContainerSpec;
use larder_runtime::mesh::MeshError;
use larder_runtime::pool::uring_available;
use larder_runtime::stats::thread_cpu_us;
use larder_runtime::{
    CpuId, DriverKind, Handoff, IoDriver, PoolConfig, PoolError, ShardContext, ShardId, ShardPool,
    ShardSelection, Source, TimeoutError,
};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

#[derive(Debug)]
enum Msg {
    Ping(u64),
    Pong(u64),
    Conn(Handoff),
}

/// Bound on any single wait in these tests; reaching it means a hang, not slowness.
const WAIT_MAX: Duration = Duration::from_secs(20);

fn config(driver: IoDriver) -> PoolConfig {
    PoolConfig {
        shards: ShardSelection::Count(2),
        driver,
        drain_timeout_ms: 5_000,
        ..PoolConfig::default()
    }
}

fn expected_kind(driver: IoDriver) -> DriverKind {
    match driver {
        IoDriver::Uring => DriverKind::Uring,
        IoDriver::Epoll => DriverKind::Epoll,
        IoDriver::Auto if uring_available() => DriverKind::Uring,
        IoDriver::Auto => DriverKind::Epoll,
    }
}

/// Receives one value; if the pool stops first (a shard panicked) or nothing arrives within WAIT_MAX, joins the
/// pool and fails with its result, so the real cause is in the failure message.
fn expect<T>(rx: &Receiver<T>, pool: ShardPool<Msg>) -> (T, ShardPool<Msg>) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(value) => return (value, pool),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
        if pool.shutdown_handle().is_requested() || Instant::now() > deadline {
            pool.shutdown();
            panic!("pool stopped before the expected report: {:?}", pool.join());
        }
    }
}

/// Starts a pool of `config(driver)` whose shard 0 runs `body` (the other shards do nothing) and returns the value
/// `body` resolves to, received through [`expect`], with the still-running pool.
fn on_shard_zero<T, F, Fut>(driver: IoDriver, body: F) -> (T, ShardPool<Msg>)
where
    T: Send + 'static,
    F: Fn(ShardContext<Msg>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let (tx, rx) = unbounded();
    let pool = ShardPool::<Msg>::start(config(driver), move |ctx| {
        let tx = tx.clone();
        let work = (ctx.shard() == ShardId(0)).then(|| body(ctx));
        async move {
            if let Some(work) = work {
                tx.send(work.await).unwrap();
            }
        }
    })
    .unwrap();
    expect(&rx, pool)
}

macro_rules! with_both_drivers {
    ($($scenario:ident),* $(,)?) => {
        $(mod $scenario {
            #[test]
            fn uring() {
                assert!(super::uring_available(), "io_uring is expected on this machine");
                super::$scenario(super::IoDriver::Uring);
            }
            #[test]
            fn epoll() {
                super::$scenario(super::IoDriver::Epoll);
            }
        })*
    };
}

with_both_drivers!(
    pinned_to_distinct_cpus,
    message_round_trip,
    control_messages_reach_each_shard,
    full_queue_refuses_then_back_pressure_waits,
    tcp_handoff_is_served_by_the_owner,
    shutdown_drains_in_flight_work,
    drain_deadline_abandons_stuck_tasks,
    panicking_shard_stops_the_pool,
    panicking_task_stops_the_pool,
    non_yielding_shard_is_detached_not_awaited,
    liveness_shows_a_stuck_loop_and_an_ended_thread,
    timers_never_fire_early,
    stats_count_work,
    busy_container_does_not_starve_the_shard,
    throttled_container_resumes_when_its_budget_refills,
    both_ways_under_back_pressure_keep_order,
);

fn pinned_to_distinct_cpus(driver: IoDriver) {
    let (tx, rx) = unbounded();
    let pool = ShardPool::<Msg>::start(config(driver), move |ctx| {
        let tx = tx.clone();
        async move {
            // Check before and after yielding to the driver: the pin must hold across awaits.
            let before = CpuId(unsafe { libc::sched_getcpu() } as u32);
            ctx.timers().sleep(Duration::from_millis(1)).await.unwrap();
            let after = CpuId(unsafe { libc::sched_getcpu() } as u32);
            tx.send((ctx.shard(), ctx.cpu(), before, after, ctx.driver()))
                .unwrap();
        }
    })
    .unwrap();
    let mut seen = Vec::new();
    let mut pool = pool;
    for _ in 0..2 {
        let (report, p) = expect(&rx, pool);
        pool = p;
        seen.push(report);
    }
    seen.sort_by_key(|r| r.0);
    for (shard, cpu, before, after, kind) in &seen {
        assert_eq!(before, cpu, "{shard} ran on {before} instead of {cpu}");
        assert_eq!(after, cpu, "{shard} moved to {after} from {cpu}");
        assert_eq!(*kind, expected_kind(driver));
        assert_eq!(pool.cpus()[shard.index()], *cpu);
    }
    assert_ne!(seen[0].1, seen[1].1, "two shards on one CPU");
    pool.shutdown();
    let report = pool.join().unwrap();
    assert!(report.fully_drained());
}

const ROUNDS: u64 = 1_000;

fn message_round_trip(driver: IoDriver) {
    let (tx, rx) = unbounded();
    let pool = ShardPool::<Msg>::start(config(driver), move |ctx| {
        let tx = tx.clone();
        async move {
            let mesh = ctx.mesh();
            if ctx.shard() == ShardId(0) {
                for i in 0..ROUNDS {
                    mesh.send(ShardId(1), Msg::Ping(i)).await.unwrap();
                    let reply = mesh.recv().await;
                    assert_eq!(reply.from, Source::Shard(ShardId(1)));
                    match reply.message {
                        Msg::Pong(j) => assert_eq!(j, i, "round {i} answered with {j}"),
                        other => panic!("round {i}: unexpected {other:?}"),
                    }
                }
                tx.send(ctx.stats().snapshot()).unwrap();
            } else {
                for _ in 0..ROUNDS {
                    let ping = mesh.recv().await;
                    let Msg::Ping(i) = ping.message else {
                        panic!("unexpected {:?}", ping.message)
                    };
                    mesh.send(ShardId(0), Msg::Pong(i)).await.unwrap();
                }
            }
        }
    })
    .unwrap();
    let (stats, pool) = expect(&rx, pool);
    assert_eq!(stats.mesh_sent, ROUNDS);
    assert_eq!(stats.mesh_received, ROUNDS);
    pool.shutdown();
    let report = pool.join().unwrap();
    assert_eq!(report.exits[1].stats.mesh_received, ROUNDS);
    assert_eq!(report.exits[1].stats.mesh_sent, ROUNDS);
}

fn control_messages_reach_each_shard(driver: IoDriver) {
    let (tx, rx) = unbounded();
    let pool = ShardPool::<Msg>::start(config(driver), move |ctx| {
        let tx = tx.clone();
        async move {
            let envelope = ctx.mesh().recv().await;
            assert_eq!(envelope.from, Source::Control);
            let Msg::Ping(value) = envelope.message else {
                panic!("unexpected {:?}", envelope.message)
            };
            tx.send((ctx.shard(), value)).unwrap();
        }
    })
    .unwrap();
    for shard in 0..2u32 {
        pool.control(ShardId(shard))
            .unwrap()
            .try_send(Msg::Ping(100 + shard as u64))
            .unwrap();
    }
    let mut pool = pool;
    let mut got = Vec::new();
    for _ in 0..2 {
        let (value, p) = expect(&rx, pool);
        pool = p;
        got.push(value);
    }
    got.sort();
    assert_eq!(got, vec![(ShardId(0), 100), (ShardId(1), 101)]);
    pool.shutdown();
    pool.join().unwrap();
}

const SMALL_QUEUE: usize = 4;

fn full_queue_refuses_then_back_pressure_waits(driver: IoDriver) {
    let (tx, rx) = unbounded();
    let go = Arc::new(AtomicBool::new(false));
    let mut config = config(driver);
    config.mesh.shard_queue_capacity = SMALL_QUEUE;
    let go_flag = go.clone();
    let pool = ShardPool::<Msg>::start(config, move |ctx| {
        let (tx, go) = (tx.clone(), go_flag.clone());
        async move {
            let mesh = ctx.mesh();
            if ctx.shard() == ShardId(0) {
                for i in 0..SMALL_QUEUE as u64 {
                    mesh.try_send(ShardId(1), Msg::Ping(i)).unwrap();
                }
                let refused = mesh
                    .try_send(ShardId(1), Msg::Ping(SMALL_QUEUE as u64))
                    .unwrap_err();
                let Msg::Ping(returned) = refused.message else {
                    panic!("wrong message handed back")
                };
                tx.send(format!("{} / returned {returned}", refused.error))
                    .unwrap();
                assert_eq!(
                    refused.error,
                    MeshError::Full {
                        to: ShardId(1),
                        capacity: SMALL_QUEUE
                    }
                );
                // Waits until shard 1 starts draining its queue.
                mesh.send(ShardId(1), Msg::Ping(SMALL_QUEUE as u64))
                    .await
                    .unwrap();
                tx.send("sent".to_string()).unwrap();
            } else {
                // Receive nothing until the test says go (checked every millisecond, bounded).
                for _ in 0..WAIT_MAX.as_millis() {
                    if go.load(Ordering::SeqCst) {
                        break;
                    }
                    ctx.timers().sleep(Duration::from_millis(1)).await.unwrap();
                }
                assert!(go.load(Ordering::SeqCst), "never told to go");
                let mut values = Vec::new();
                for _ in 0..=SMALL_QUEUE {
                    match mesh.recv().await.message {
                        Msg::Ping(i) => values.push(i),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                tx.send(format!("{values:?}")).unwrap();
            }
        }
    })
    .unwrap();
    let (refused, pool) = expect(&rx, pool);
    assert_eq!(
        refused,
        "queue to shard 1 is full (4 messages) / returned 4"
    );
    // Shard 1 receives nothing before Go, so its queue from shard 0 holds exactly the 4 accepted messages.
    let depths = pool.stats()[1].queue_depths.clone();
    assert_eq!(depths, vec![0, SMALL_QUEUE, 0], "control, from 0, from 1");
    assert_eq!(pool.stats()[0].mesh_refused_full, 1);
    go.store(true, Ordering::SeqCst);
    let (first, pool) = expect(&rx, pool);
    let (second, pool) = expect(&rx, pool);
    let mut reports = [first, second];
    reports.sort();
    assert_eq!(reports, ["[0, 1, 2, 3, 4]".to_string(), "sent".to_string()]);
    pool.shutdown();
    pool.join().unwrap();
}

fn tcp_handoff_is_served_by_the_owner(driver: IoDriver) {
    let (addr_tx, addr_rx) = unbounded::<SocketAddr>();
    let pool = ShardPool::<Msg>::start(config(driver), move |ctx| {
        let addr_tx = addr_tx.clone();
        async move {
            if ctx.shard() == ShardId(0) {
                let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let (mut stream, peer) = listener.accept().await.unwrap();
                // Read exactly the first 5 bytes (the "request line" that decides the owner).
                let mut already = Vec::new();
                while already.len() < 5 {
                    let (result, buffer) = stream.read(Vec::with_capacity(5 - already.len())).await;
                    let n = result.unwrap();
                    assert!(n > 0, "client closed early");
                    already.extend_from_slice(&buffer[..n]);
                }
                let handoff = Handoff::from_monoio(stream, already, peer).unwrap();
                ctx.mesh()
                    .send(ShardId(1), Msg::Conn(handoff))
                    .await
                    .unwrap();
            } else {
                let envelope = ctx.mesh().recv().await;
                let Msg::Conn(handoff) = envelope.message else {
                    panic!("unexpected {:?}", envelope.message)
                };
                assert_eq!(handoff.already_read(), b"hello");
                let (mut stream, already, _peer) = ctx.adopt(handoff).unwrap();
                let served_on = unsafe { libc::sched_getcpu() };
                let mut reply =
                    format!("served-by={} cpu={}\n", ctx.shard().0, served_on).into_bytes();
                reply.extend_from_slice(&already);
                let (result, _) = stream.write_all(reply).await;
                result.unwrap();
                // Echo the rest until the client closes (bounded by the client's finite input).
                loop {
                    let (result, buffer) = stream.read(Vec::with_capacity(1024)).await;
                    if result.unwrap() == 0 {
                        break;
                    }
                    let (result, _) = stream.write_all(buffer).await;
                    result.unwrap();
                }
            }
        }
    })
    .unwrap();
    let (addr, pool) = expect(&addr_rx, pool);
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(WAIT_MAX)).unwrap();
    client.write_all(b"hello world, from the client").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    let expected = format!(
        "served-by=1 cpu={}\nhello world, from the client",
        pool.cpus()[1].0
    );
    assert_eq!(reply, expected);
    pool.shutdown();
    let report = pool.join().unwrap();
    assert!(report.fully_drained());
}

fn shutdown_drains_in_flight_work(driver: IoDriver) {
    let (started_tx, started_rx) = unbounded();
    let tracked_done = Arc::new(AtomicBool::new(false));
    let container_done = Arc::new(AtomicBool::new(false));
    let (tracked, contained) = (tracked_done.clone(), container_done.clone());
    let pool = ShardPool::<Msg>::start(config(driver), move |ctx| {
        let (started_tx, tracked, contained) =
            (started_tx.clone(), tracked.clone(), contained.clone());
        async move {
            if ctx.shard() != ShardId(0) {
                return;
            }
            // Work that only finishes after shutdown was requested: one tracked task, one in a container.
            let late_work = |ctx: ShardContext<Msg>, done: Arc<AtomicBool>| async move {
                ctx.shutdown_requested().await;
                ctx.timers().sleep(Duration::from_millis(30)).await.unwrap();
                done.store(true, Ordering::SeqCst);
            };
            ctx.spawn(late_work(ctx.clone(), tracked));
            let containers = ctx.containers();
            let id = containers
                .add_container(ContainerSpec::new("drain", 1))
                .unwrap();
            containers
                .spawn(id, late_work(ctx.clone(), contained))
                .unwrap();
            started_tx.send(()).unwrap();
        }
    })
    .unwrap();
    let ((), pool) = expect(&started_rx, pool);
    assert!(!tracked_done.load(Ordering::SeqCst));
    pool.shutdown();
    let report = pool.join().unwrap();
    assert!(
        tracked_done.load(Ordering::SeqCst),
        "tracked task cut short"
    );
    assert!(
        container_done.load(Ordering::SeqCst),
        "container task cut short"
    );
    assert!(report.fully_drained(), "{:?}", report.exits);
    assert_eq!(report.exits[0].stats.containers[0].tasks_completed, 1);
}

fn drain_deadline_abandons_stuck_tasks(driver: IoDriver) {
    let (started_tx, started_rx) = unbounded();
    let mut config = config(driver);
    config.drain_timeout_ms = 20;
    let pool = ShardPool::<Msg>::start(config, move |ctx| {
        let started_tx = started_tx.clone();
        async move {
            if ctx.shard() == ShardId(1) {
                // Stuck but alive (its timer holds its waker): a task nobody can wake is freed, not stuck.
                let sleeper = ctx.clone();
                ctx.spawn(async move {
                    let _ = sleeper.timers().sleep(Duration::from_secs(3_600)).await;
                });
                started_tx.send(()).unwrap();
            }
        }
    })
    .unwrap();
    let ((), pool) = expect(&started_rx, pool);
    pool.shutdown();
    let report = pool.join().unwrap();
    assert_eq!(report.exits[0].tasks_abandoned, 0);
    assert_eq!(report.exits[1].tasks_abandoned, 1);
    assert!(!report.fully_drained());
}

/// Joins the pool (without requesting shutdown) and checks it reports exactly this panic.
fn expect_panic(pool: ShardPool<Msg>, expected_shard: ShardId, expected_message: &str) {
    match pool.join() {
        Err(PoolError::ShardPanicked { shard, message }) => {
            assert_eq!(shard, expected_shard);
            assert_eq!(message, expected_message);
        }
        other => panic!("expected a panic of {expected_shard}, got {other:?}"),
    }
}

fn panicking_shard_stops_the_pool(driver: IoDriver) {
    let pool = ShardPool::<Msg>::start(config(driver), |ctx| async move {
        if ctx.shard() == ShardId(1) {
            panic!("shard one fails on purpose");
        }
        ctx.shutdown_requested().await;
    })
    .unwrap();
    // Nobody calls shutdown: the panic must stop the pool by itself.
    expect_panic(pool, ShardId(1), "shard one fails on purpose");
}

fn panicking_task_stops_the_pool(driver: IoDriver) {
    let pool = ShardPool::<Msg>::start(config(driver), |ctx| async move {
        if ctx.shard() == ShardId(0) {
            // An untracked monoio task, woken by the mesh: the panic still reaches the pool.
            let inner = ctx.clone();
            monoio::spawn(async move {
                let envelope = inner.mesh().recv().await;
                panic!("task got {:?} and fails on purpose", envelope.message);
            });
        } else {
            ctx.mesh().send(ShardId(0), Msg::Ping(7)).await.unwrap();
        }
    })
    .unwrap();
    expect_panic(pool, ShardId(0), "task got Ping(7) and fails on purpose");
}

fn non_yielding_shard_is_detached_not_awaited(driver: IoDriver) {
    let spinning = Arc::new(AtomicBool::new(true));
    let (started_tx, started_rx) = unbounded();
    let mut config = config(driver);
    config.drain_timeout_ms = 20;
    config.join_grace_ms = 20;
    let flag = spinning.clone();
    let pool = ShardPool::<Msg>::start(config, move |ctx| {
        let (flag, started_tx) = (flag.clone(), started_tx.clone());
        async move {
            if ctx.shard() == ShardId(1) {
                started_tx.send(()).unwrap();
                // A bug: a loop that never yields to the runtime (ended by the test afterwards).
                while flag.load(Ordering::SeqCst) {
                    std::hint::spin_loop();
                }
            }
        }
    })
    .unwrap();
    let ((), pool) = expect(&started_rx, pool);
    pool.shutdown();
    let result = pool.join();
    spinning.store(false, Ordering::SeqCst);
    match result {
        Err(PoolError::ShardsStuck { shards, .. }) => assert_eq!(shards, vec![ShardId(1)]),
        other => panic!("expected shard 1 reported stuck, got {other:?}"),
    }
}

/// What a health check reads (`StatsHandle::liveness`): a shard whose loop is stuck in one task stops sampling,
/// so its heartbeat ages while the other shard's stays fresh; a shard whose thread has ended is not running.
fn liveness_shows_a_stuck_loop_and_an_ended_thread(driver: IoDriver) {
    let spinning = Arc::new(AtomicBool::new(true));
    let (started_tx, started_rx) = unbounded();
    let mut config = config(driver);
    config.drain_timeout_ms = 20;
    config.join_grace_ms = 5_000;
    let flag = spinning.clone();
    let pool = ShardPool::<Msg>::start(config, move |ctx| {
        let (flag, started_tx) = (flag.clone(), started_tx.clone());
        async move {
            if ctx.shard() == ShardId(1) {
                started_tx.send(()).unwrap();
                while flag.load(Ordering::SeqCst) {
                    std::hint::spin_loop();
                }
            }
        }
    })
    .unwrap();
    let handles = pool.stats_handles().to_vec();
    let ((), pool) = expect(&started_rx, pool);
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let (live, stuck) = (handles[0].liveness(), handles[1].liveness());
        assert!(live.running && stuck.running, "{live:?} {stuck:?}");
        if stuck.since_sample_ms >= 500 && live.since_sample_ms < 500 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "heartbeats never parted: {live:?} {stuck:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    spinning.store(false, Ordering::SeqCst);
    pool.shutdown();
    pool.join().expect("both shards stop once the spin ends");
    for handle in &handles {
        assert!(!handle.liveness().running, "{:?} ended", handle.shard());
    }
}

fn timers_never_fire_early(driver: IoDriver) {
    let ((slept, timed_out, finished, armed), pool) = on_shard_zero(driver, |ctx| async move {
        let timers = ctx.timers();
        let mut slept = Vec::new();
        for duration_ms in [0u64, 1, 3, 12] {
            let start = Instant::now();
            timers
                .sleep(Duration::from_millis(duration_ms))
                .await
                .unwrap();
            slept.push((duration_ms, start.elapsed()));
        }
        let timed_out = timers
            .timeout(Duration::from_millis(2), std::future::pending::<()>())
            .await;
        let finished = timers.timeout(Duration::from_secs(60), async { 42 }).await;
        (slept, timed_out, finished, timers.armed())
    });
    for (duration_ms, elapsed) in slept {
        assert!(
            elapsed >= Duration::from_millis(duration_ms),
            "a {duration_ms} ms sleep ended after {elapsed:?}"
        );
    }
    assert_eq!(timed_out, Err(TimeoutError::Elapsed));
    assert_eq!(finished, Ok(42));
    // Only the stats sampler's timer may be armed; the two timeouts were cancelled or fired.
    assert!(armed <= 1, "{armed} timers left armed");
    pool.shutdown();
    pool.join().unwrap();
}

fn stats_count_work(driver: IoDriver) {
    let pool = ShardPool::<Msg>::start(config(driver), |ctx| async move {
        if ctx.shard() != ShardId(0) {
            return;
        }
        // Burn CPU until this thread's CPU clock has visibly moved (bounded).
        let (user, system) = thread_cpu_us().unwrap();
        let mut x = 0u64;
        for round in 0..50_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(round);
            if round % 100_000 == 0 {
                let (u, s) = thread_cpu_us().unwrap();
                if u + s > user + system {
                    break;
                }
            }
        }
        std::hint::black_box(x);
        for _ in 0..3 {
            ctx.spawn(async {});
        }
    })
    .unwrap();
    pool.shutdown();
    let report = pool.join().unwrap();
    let shard0 = &report.exits[0].stats;
    assert!(shard0.busy_us > 0, "{shard0:?}");
    assert_eq!(shard0.driver, Some(expected_kind(driver)));
    assert_eq!(shard0.tasks_spawned, 4, "init + 3");
    assert_eq!(shard0.tasks_completed, 4);
    assert!(shard0.tasks_polled >= 4);
    assert_eq!(report.exits[1].stats.tasks_spawned, 1);
}

#[test]
fn auto_driver_prefers_io_uring() {
    let (tx, rx) = unbounded();
    let pool = ShardPool::<Msg>::start(config(IoDriver::Auto), move |ctx| {
        let tx = tx.clone();
        async move {
            tx.send(ctx.driver()).unwrap();
        }
    })
    .unwrap();
    let (kind, pool) = expect(&rx, pool);
    assert_eq!(kind, expected_kind(IoDriver::Auto));
    pool.shutdown();
    pool.join().unwrap();
}

#[test]
fn bad_selection_fails_before_any_thread_starts() {
    let config = PoolConfig {
        shards: ShardSelection::List(vec![CpuId(1_000)]),
        ..PoolConfig::default()
    };
    let error = ShardPool::<Msg>::start(config, |_ctx| async {}).unwrap_err();
    assert!(
        matches!(error, PoolError::Topology(_)),
        "unexpected error {error}"
    );
}

#[test]
fn driver_names_parse() {
    assert_eq!("auto".parse(), Ok(IoDriver::Auto));
    assert_eq!("io_uring".parse(), Ok(IoDriver::Uring));
    assert_eq!("uring".parse(), Ok(IoDriver::Uring));
    assert_eq!("EPOLL".parse(), Ok(IoDriver::Epoll));
    assert!("kqueue".parse::<IoDriver>().is_err());
}

/// Regression: monoio re-queues a self-woken task at the front of its run queue, so a scheduler that yields with
/// `wake_by_ref(); Pending` starved every other task of its shard while a container had ready work.
fn busy_container_does_not_starve_the_shard(driver: IoDriver) {
    const CONTAINER_POLLS: u64 = 200_000;
    let (polls_when_done, pool) = on_shard_zero(driver, |ctx| async move {
        let polls = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let containers = ctx.containers();
        let id = containers
            .add_container(ContainerSpec::new("busy", 1))
            .unwrap();
        let counter = polls.clone();
        containers
            .spawn(id, async move {
                // Always ready: wakes itself on every poll until done.
                std::future::poll_fn(|cx| {
                    counter.set(counter.get() + 1);
                    if counter.get() >= CONTAINER_POLLS {
                        return std::task::Poll::Ready(());
                    }
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                })
                .await
            })
            .unwrap();
        // Outside the container: three timer sleeps must complete while the container is still busy.
        for _ in 0..3 {
            ctx.timers().sleep(Duration::from_millis(1)).await.unwrap();
        }
        polls.get()
    });
    assert!(
        polls_when_done < CONTAINER_POLLS,
        "the shard's other tasks only ran after the container finished ({polls_when_done} polls)"
    );
    pool.shutdown();
    pool.join().unwrap();
}

/// Both shards stream to each other through 2-slot queues, in seeded random bursts with yields in between: every
/// message arrives exactly once and in order per sender, and no shard waits forever (the Space and Message wake-ups
/// race constantly here).
fn both_ways_under_back_pressure_keep_order(driver: IoDriver) {
    // Spinning shards see most messages while awake; parking ones go through the eventfd every time.
    for spin_before_park_us in [0, larder_runtime::mesh::SPIN_BEFORE_PARK_US_DEFAULT] {
        both_ways_with_spin(driver, spin_before_park_us);
    }
}

fn both_ways_with_spin(driver: IoDriver, spin_before_park_us: u64) {
    const MESSAGES: u64 = 20_000;
    const SEED: u64 = 0x1a2d_e401;
    let (tx, rx) = unbounded();
    let mut config = config(driver);
    config.mesh.shard_queue_capacity = 2;
    config.mesh.spin_before_park_us = spin_before_park_us;
    let pool = ShardPool::<Msg>::start(config, move |ctx| {
        let tx = tx.clone();
        async move {
            let me = ctx.shard();
            let peer = ShardId(1 - me.0);
            let receiver = ctx.clone();
            let received = ctx.spawn(async move {
                let mut expected = 0;
                while expected < MESSAGES {
                    let envelope = receiver.mesh().recv().await;
                    assert_eq!(envelope.from, Source::Shard(peer));
                    match envelope.message {
                        Msg::Ping(i) => {
                            assert_eq!(i, expected, "{me}: out of order (seed {SEED:#x})")
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                    expected += 1;
                }
                expected
            });
            let mut rng =
                rand_pcg::Pcg64::new(u128::from(SEED + u64::from(me.0)), 0xa02b_dbf7_bb3c_0a7a);
            let mut sent = 0;
            while sent < MESSAGES {
                let burst = rand::Rng::random_range(&mut rng, 1..=8u64).min(MESSAGES - sent);
                for _ in 0..burst {
                    ctx.mesh().send(peer, Msg::Ping(sent)).await.unwrap();
                    sent += 1;
                }
                ctx.yielder().yield_now().await;
            }
            tx.send((me, received.await)).unwrap();
        }
    })
    .unwrap();
    let (first, pool) = expect(&rx, pool);
    let (second, pool) = expect(&rx, pool);
    let mut got = [first, second];
    got.sort();
    assert_eq!(got, [(ShardId(0), MESSAGES), (ShardId(1), MESSAGES)]);
    pool.shutdown();
    pool.join().unwrap();
}

/// A container whose `cpu_percent_max` budget ran out sleeps on the shard's timer wheel until its refill, and
/// that timer alone wakes the shard (nothing else runs here): it finishes, throttled many times on the way.
fn throttled_container_resumes_when_its_budget_refills(driver: IoDriver) {
    const POLLS: u32 = 40;
    const SPIN_PER_POLL: Duration = Duration::from_micros(500);
    let (throttles, pool) = on_shard_zero(driver, |ctx| async move {
        let containers = ctx.containers().clone();
        let id = containers
            .add_container(ContainerSpec {
                cpu_percent_max: 5,
                ..ContainerSpec::new("capped", 100)
            })
            .unwrap();
        // (done, the waiting body's waker): set by the container task, awaited by the body below.
        let done: std::rc::Rc<std::cell::RefCell<(bool, Option<std::task::Waker>)>> =
            Default::default();
        let finished = done.clone();
        let mut polls = 0;
        containers
            .spawn(
                id,
                std::future::poll_fn(move |cx| {
                    // 40 polls of 0.5 ms = 20 ms of CPU: at 5% of 10 ms periods (0.5 ms each) that takes ~40
                    // budget refills; each must wake the shard by itself (nothing else runs here).
                    let spin_start = Instant::now();
                    while spin_start.elapsed() < SPIN_PER_POLL {}
                    polls += 1;
                    if polls == POLLS {
                        let mut finished = finished.borrow_mut();
                        finished.0 = true;
                        if let Some(waker) = finished.1.take() {
                            waker.wake();
                        }
                        return std::task::Poll::Ready(());
                    }
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }),
            )
            .unwrap();
        std::future::poll_fn(|cx| {
            let mut done = done.borrow_mut();
            if done.0 {
                return std::task::Poll::Ready(());
            }
            done.1 = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
        containers.container_stats(id).unwrap().throttles
    });
    assert!(
        throttles >= 10,
        "the container was throttled {throttles} times"
    );
    pool.shutdown();
    pool.join().unwrap();
}

/// A per-thread profiler finds each shard's thread by the id its statistics publish: the kernel names that
/// thread `larder-shard-<i>`.
#[test]
fn stats_name_each_shard_thread_by_its_kernel_id() {
    let pool = ShardPool::<Msg>::start(config(IoDriver::Auto), |_ctx| async {}).unwrap();
    let tids: Vec<Option<u32>> = pool.stats_handles().iter().map(|h| h.thread_id()).collect();
    for (shard, tid) in tids.iter().enumerate() {
        let tid = tid.unwrap_or_else(|| panic!("shard {shard} has no thread id after start"));
        let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap();
        assert_eq!(comm.trim(), format!("larder-shard-{shard}"), "thread {tid}");
    }
    pool.shutdown();
    pool.join().unwrap();
}
