//! Per-shard statistics: written by the shard with relaxed atomics, read from any thread as a [`ShardStats`].
//!
//! What a shard publishes, and how:
//! - Counters on the hot path (tasks spawned/polled/completed, mesh messages sent/received/refused) are
//!   `AtomicU64`s incremented with `Relaxed` stores by the owning shard only — no locks, no read-modify-write
//!   contention (one writer per cell, so the add is uncontended).
//! - Thread CPU time (user and system, `getrusage(RUSAGE_THREAD)`) can only be read on the thread itself, so the
//!   shard samples it every `stats_interval_ms` (default [`STATS_INTERVAL_MS_DEFAULT`]) and at exit; a snapshot is
//!   at most that stale. Busy time is the thread's CPU time (user + system); idle time is wall time since the
//!   shard started minus busy time — a shard that is parked in `io_uring_enter`/`epoll_wait` uses no CPU. (The
//!   mesh's `spin_before_park_us` window after each message counts as busy: it is CPU the shard used.)
//! - Per-container accounting (from the shard's container scheduler) is copied into a `Mutex<Vec<_>>` at the same
//!   sampling points; the lock is taken once per interval by the shard and once per snapshot by the reader, never
//!   per task or per message.
//! - Loop turns and timers armed are plain `Cell` counters of the shard's scheduler and timer wheel (not even an
//!   atomic on the hot path), copied into the cell at each sample like the CPU time: as stale as it.
//! - Incoming queue depths are read at snapshot time straight from the mesh's bounded channels (`len()`).
//!
//! Invariants: counters only grow; `tasks_completed <= tasks_spawned`; `busy_us <= wall_us` up to sampling skew
//! (idle saturates at 0).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::container::ContainerStats;
use crate::topology::CpuId;
use crate::ShardId;

/// How often a shard samples its thread CPU time and container accounting, unless configured otherwise.
pub const STATS_INTERVAL_MS_DEFAULT: u64 = 100;

/// Which I/O driver a shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriverKind {
    /// io_uring (`monoio::IoUringDriver`).
    Uring,
    /// epoll (`monoio::LegacyDriver`).
    Epoll,
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriverKind::Uring => "io_uring",
            DriverKind::Epoll => "epoll",
        })
    }
}

/// Reads the depth of every incoming queue of one shard (control first, then shard 0..N); built by the mesh.
pub(crate) type DepthProbe = Box<dyn Fn() -> Vec<usize> + Send + Sync>;

/// The shared statistics cell of one shard. The shard writes; anyone may call [`StatsHandle::snapshot`].
pub(crate) struct StatsCell {
    shard: ShardId,
    cpu: CpuId,
    started: Instant,
    driver: AtomicU8,
    /// The shard thread's kernel thread id (for a per-thread profiler); 0 until the thread has started.
    thread_id: AtomicU32,
    pub(crate) tasks_spawned: AtomicU64,
    pub(crate) tasks_completed: AtomicU64,
    pub(crate) tasks_polled: AtomicU64,
    pub(crate) mesh_sent: AtomicU64,
    pub(crate) mesh_received: AtomicU64,
    pub(crate) mesh_refused_full: AtomicU64,
    pub(crate) control_received: AtomicU64,
    cpu_user_us: AtomicU64,
    cpu_system_us: AtomicU64,
    loop_turns: AtomicU64,
    timers_armed: AtomicU64,
    timers_active: AtomicU64,
    /// Microseconds from `started` to the last sample: the shard's heartbeat (see [`ShardLiveness`]).
    sampled_us: AtomicU64,
    /// Set once by the shard thread as its very last act (after a clean exit, a failed start or a panic).
    exited: AtomicBool,
    containers: Mutex<Vec<ContainerStats>>,
    queue_depths: DepthProbe,
}

/// Whether a shard is alive, for a health check: its thread has not ended, and its loop still turns — the shard
/// samples its statistics every `stats_interval_ms` (100 ms by default) from a task of its own loop, so a loop
/// stuck in one task shows as a growing `since_sample_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLiveness {
    pub running: bool,
    /// Milliseconds since the shard last sampled its statistics (since the thread started, before the first).
    pub since_sample_ms: u64,
}

/// A cloneable, `Send + Sync` reader of one shard's statistics.
#[derive(Clone)]
pub struct StatsHandle {
    cell: Arc<StatsCell>,
}

/// A point-in-time copy of one shard's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardStats {
    pub shard: ShardId,
    pub cpu: CpuId,
    /// `None` until the shard has built its runtime.
    pub driver: Option<DriverKind>,
    /// Wall time since the shard thread started.
    pub wall_us: u64,
    /// Thread CPU time in user mode (`getrusage(RUSAGE_THREAD)`), as of the last sample.
    pub cpu_user_us: u64,
    /// Thread CPU time in kernel mode, as of the last sample.
    pub cpu_system_us: u64,
    /// `cpu_user_us + cpu_system_us`.
    pub busy_us: u64,
    /// `wall_us - busy_us` (saturating).
    pub idle_us: u64,
    /// Tasks spawned through the shard context (tracked, in-flight work).
    pub tasks_spawned: u64,
    pub tasks_completed: u64,
    /// Polls of tracked tasks.
    pub tasks_polled: u64,
    /// Mesh messages this shard sent to other shards.
    pub mesh_sent: u64,
    /// Mesh messages this shard received from other shards.
    pub mesh_received: u64,
    /// `try_send` calls refused because the destination queue was full.
    pub mesh_refused_full: u64,
    /// Messages received from the control plane.
    pub control_received: u64,
    /// Turns of the shard's scheduler loop, as of the last sample.
    pub loop_turns: u64,
    /// Timers armed since the shard started, as of the last sample.
    pub timers_armed: u64,
    /// Timers armed now (in the wheel), as of the last sample.
    pub timers_active: u64,
    /// Messages waiting in this shard's incoming queues: index 0 is the control queue, index 1 + i is from shard i.
    pub queue_depths: Vec<usize>,
    /// Per-container accounting from the shard's container scheduler, as of the last sample.
    pub containers: Vec<ContainerStats>,
}

impl StatsCell {
    pub(crate) fn new(shard: ShardId, cpu: CpuId, queue_depths: DepthProbe) -> Self {
        StatsCell {
            shard,
            cpu,
            started: Instant::now(),
            driver: AtomicU8::new(0),
            thread_id: AtomicU32::new(0),
            tasks_spawned: AtomicU64::new(0),
            tasks_completed: AtomicU64::new(0),
            tasks_polled: AtomicU64::new(0),
            mesh_sent: AtomicU64::new(0),
            mesh_received: AtomicU64::new(0),
            mesh_refused_full: AtomicU64::new(0),
            control_received: AtomicU64::new(0),
            cpu_user_us: AtomicU64::new(0),
            cpu_system_us: AtomicU64::new(0),
            loop_turns: AtomicU64::new(0),
            timers_armed: AtomicU64::new(0),
            timers_active: AtomicU64::new(0),
            sampled_us: AtomicU64::new(0),
            exited: AtomicBool::new(false),
            containers: Mutex::new(Vec::new()),
            queue_depths,
        }
    }

    /// Adds one to a counter. Only the owning shard writes a cell, so load + store is race-free and cheaper than
    /// a locked read-modify-write.
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    pub(crate) fn set_driver(&self, driver: DriverKind) {
        let code = match driver {
            DriverKind::Uring => 1,
            DriverKind::Epoll => 2,
        };
        self.driver.store(code, Ordering::Relaxed);
    }

    /// Records the calling thread as the shard's thread; must be called on the shard's own thread.
    pub(crate) fn set_thread_id(&self) {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        self.thread_id.store(tid as u32, Ordering::Relaxed);
    }

    /// Samples the calling thread's CPU time and beats the heartbeat; must be called on the shard's own thread.
    pub(crate) fn sample_thread_cpu(&self) {
        if let Some((user_us, system_us)) = thread_cpu_us() {
            self.cpu_user_us.store(user_us, Ordering::Relaxed);
            self.cpu_system_us.store(system_us, Ordering::Relaxed);
        }
        let now_us = self.started.elapsed().as_micros() as u64;
        self.sampled_us.store(now_us, Ordering::Relaxed);
    }

    /// Publishes the loop's counters (sampled by the shard with its CPU time).
    pub(crate) fn publish_loop(&self, loop_turns: u64, timers_armed: u64, timers_active: u64) {
        self.loop_turns.store(loop_turns, Ordering::Relaxed);
        self.timers_armed.store(timers_armed, Ordering::Relaxed);
        self.timers_active.store(timers_active, Ordering::Relaxed);
    }

    /// The shard thread has ended (called once, last, by the thread itself).
    pub(crate) fn mark_exited(&self) {
        self.exited.store(true, Ordering::Release);
    }

    pub(crate) fn publish_containers(&self, containers: Vec<ContainerStats>) {
        // A poisoned lock only means a reader panicked mid-copy; the data is still a valid Vec.
        let mut guard = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        *guard = containers;
    }
}

impl StatsHandle {
    pub(crate) fn new(cell: Arc<StatsCell>) -> Self {
        StatsHandle { cell }
    }

    pub(crate) fn cell(&self) -> &Arc<StatsCell> {
        &self.cell
    }

    /// The shard these statistics belong to.
    pub fn shard(&self) -> ShardId {
        self.cell.shard
    }

    /// The shard thread's kernel thread id, once it has started (what `perf_event_open` and `/proc/<pid>/task`
    /// name it by).
    pub fn thread_id(&self) -> Option<u32> {
        match self.cell.thread_id.load(Ordering::Relaxed) {
            0 => None,
            tid => Some(tid),
        }
    }

    /// Whether the shard is alive (see [`ShardLiveness`]); two relaxed loads, never blocks the shard.
    pub fn liveness(&self) -> ShardLiveness {
        let c = &*self.cell;
        let now_us = c.started.elapsed().as_micros() as u64;
        ShardLiveness {
            running: !c.exited.load(Ordering::Acquire),
            since_sample_ms: now_us.saturating_sub(c.sampled_us.load(Ordering::Relaxed)) / 1000,
        }
    }

    /// Copies the current values (see the module docs for how fresh each field is).
    pub fn snapshot(&self) -> ShardStats {
        let c = &*self.cell;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let wall_us = c.started.elapsed().as_micros() as u64;
        let cpu_user_us = load(&c.cpu_user_us);
        let cpu_system_us = load(&c.cpu_system_us);
        let busy_us = cpu_user_us + cpu_system_us;
        ShardStats {
            shard: c.shard,
            cpu: c.cpu,
            driver: match c.driver.load(Ordering::Relaxed) {
                1 => Some(DriverKind::Uring),
                2 => Some(DriverKind::Epoll),
                _ => None,
            },
            wall_us,
            cpu_user_us,
            cpu_system_us,
            busy_us,
            idle_us: wall_us.saturating_sub(busy_us),
            tasks_spawned: load(&c.tasks_spawned),
            tasks_completed: load(&c.tasks_completed),
            tasks_polled: load(&c.tasks_polled),
            mesh_sent: load(&c.mesh_sent),
            mesh_received: load(&c.mesh_received),
            mesh_refused_full: load(&c.mesh_refused_full),
            control_received: load(&c.control_received),
            loop_turns: load(&c.loop_turns),
            timers_armed: load(&c.timers_armed),
            timers_active: load(&c.timers_active),
            queue_depths: (c.queue_depths)(),
            containers: c
                .containers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

impl std::fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsHandle")
            .field("shard", &self.cell.shard)
            .finish()
    }
}

/// The calling thread's (user, system) CPU time in microseconds, via `getrusage(RUSAGE_THREAD)`.
/// (rustix 1 does not wrap getrusage, hence libc.)
pub fn thread_cpu_us() -> Option<(u64, u64)> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_THREAD reads the calling thread only.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: getrusage returned 0, so it filled the struct (and it was zeroed before).
    let usage = unsafe { usage.assume_init() };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Some((micros(usage.ru_utime), micros(usage.ru_stime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_is_readable_and_monotonic() {
        // Growth under load is checked end to end by the pool test `stats_count_work`.
        let (user_before, system_before) = thread_cpu_us().unwrap();
        let (user_after, system_after) = thread_cpu_us().unwrap();
        assert!(user_after >= user_before, "{user_after} < {user_before}");
        assert!(
            system_after >= system_before,
            "{system_after} < {system_before}"
        );
    }

    #[test]
    fn snapshot_reads_counters_and_depths() {
        let cell = Arc::new(StatsCell::new(
            ShardId(3),
            CpuId(1),
            Box::new(|| vec![0, 2, 5]),
        ));
        let handle = StatsHandle::new(cell.clone());
        StatsCell::bump(&cell.mesh_sent);
        StatsCell::bump(&cell.mesh_sent);
        StatsCell::bump(&cell.tasks_spawned);
        cell.set_driver(DriverKind::Epoll);
        let s = handle.snapshot();
        assert_eq!(s.shard, ShardId(3));
        assert_eq!(s.cpu, CpuId(1));
        assert_eq!(s.mesh_sent, 2);
        assert_eq!(s.tasks_spawned, 1);
        assert_eq!(s.driver, Some(DriverKind::Epoll));
        assert_eq!(s.queue_depths, vec![0, 2, 5]);
        assert_eq!(s.busy_us + s.idle_us, s.wall_us.max(s.busy_us));
    }
}
