//! [`ShardContext`]: everything one shard owns, as handed to the init closure on the shard's thread.
//!
//! # What this file owns
//! The per-shard handle (`Rc`, `!Send`) over the shard's id and CPU, its I/O driver, its end of the mesh, its
//! statistics, its timers, its container scheduler, its yielder and the shutdown flag; and the *tracked task*
//! machinery behind [`ShardContext::spawn`]: an in-flight counter with a drop guard, and a wrapper that counts
//! polls and completions in the shard's statistics.
//!
//! # Invariants
//! - The in-flight count equals the tracked tasks spawned and not yet finished or dropped: the guard decrements it
//!   when the task completes or is cancelled, so the drain (shutdown step 2) cannot wait for a task that is gone.
//! - A context never leaves its shard's thread (`Rc` inside).
//!
//! # Limits
//! None of its own: [`ShardContext::spawn`] is never refused, so callers bound what they spawn (accept loops by
//! their connection limit, container tasks by their container's `tasks_max`). Shutdown drains tracked tasks for at
//! most `drain_timeout_ms` (default 5,000 ms).

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::shutdown::{ShutdownHandle, ShutdownState};
use crate::bell::{LocalBell, Reason};
use crate::container::ContainerScheduler;
use crate::handoff::{Handoff, HandoffError};
use crate::mesh::ShardMesh;
use crate::sleep::ShardTimers;
use crate::stats::{DriverKind, StatsCell, StatsHandle};
use crate::topology::CpuId;
use crate::yielder::Yielder;
use crate::ShardId;

/// Everything a shard owns, handed to the init closure on the shard's thread. A cheap `Rc` handle (`!Send`):
/// clone it into the shard's tasks.
pub struct ShardContext<M> {
    pub(super) inner: Rc<ContextInner<M>>,
}

impl<M> Clone for ShardContext<M> {
    fn clone(&self) -> Self {
        ShardContext {
            inner: self.inner.clone(),
        }
    }
}

pub(super) struct ContextInner<M> {
    pub(super) shard: ShardId,
    pub(super) cpu: CpuId,
    pub(super) driver: DriverKind,
    pub(super) mesh: ShardMesh<M>,
    pub(super) stats: StatsHandle,
    pub(super) shutdown: Arc<ShutdownState>,
    pub(super) local: Rc<LocalBell>,
    pub(super) timers: ShardTimers,
    pub(super) containers: ContainerScheduler,
    pub(super) yielder: Yielder,
    pub(super) in_flight: Rc<Cell<usize>>,
}

impl<M: Send + 'static> ShardContext<M> {
    /// This shard.
    pub fn shard(&self) -> ShardId {
        self.inner.shard
    }

    /// The CPU this shard is pinned to.
    pub fn cpu(&self) -> CpuId {
        self.inner.cpu
    }

    /// Shards in the pool.
    pub fn shard_count(&self) -> usize {
        self.inner.mesh.shard_count()
    }

    /// The I/O driver this shard runs.
    pub fn driver(&self) -> DriverKind {
        self.inner.driver
    }

    /// This shard's end of the mesh: `send`/`try_send` to other shards, `recv` from shards and the control plane.
    pub fn mesh(&self) -> &ShardMesh<M> {
        &self.inner.mesh
    }

    /// This shard's statistics (also readable from other threads through the pool).
    pub fn stats(&self) -> &StatsHandle {
        &self.inner.stats
    }

    /// The shard's timer facility (sleeps and timeouts on its timer wheel). Prefer it to `monoio::time`: monoio's
    /// timers are only processed when the shard parks, so they stall on a shard that is never idle.
    pub fn timers(&self) -> &ShardTimers {
        &self.inner.timers
    }

    /// The shard's resource-container scheduler.
    pub fn containers(&self) -> &ContainerScheduler {
        &self.inner.containers
    }

    /// The shard's yield service: `ctx.yielder().yield_now().await` lets every other ready task run first
    /// (monoio's self-wake yield does not; see `yielder.rs`).
    pub fn yielder(&self) -> &Yielder {
        &self.inner.yielder
    }

    /// True once shutdown was requested (shutdown step 1): stop accepting new work.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_requested()
    }

    /// Resolves once shutdown is requested (shutdown step 1), without polling.
    pub async fn shutdown_requested(&self) {
        let shutdown = &self.inner.shutdown;
        self.inner
            .local
            .wait_for(Reason::Shutdown, || shutdown.is_requested().then_some(()))
            .await
    }

    /// A handle that stops the whole pool (e.g. from a task that decides the node must stop).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            state: self.inner.shutdown.clone(),
        }
    }

    /// Spawns a task on this shard as tracked in-flight work: shutdown waits for it (up to the drain deadline),
    /// and its polls are counted in the statistics.
    pub fn spawn<F>(&self, future: F) -> monoio::task::JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let cell = self.inner.stats.cell().clone();
        StatsCell::bump(&cell.tasks_spawned);
        let in_flight = self.inner.in_flight.clone();
        in_flight.set(in_flight.get() + 1);
        monoio::spawn(Tracked {
            future: Box::pin(future),
            _guard: InFlightGuard(in_flight),
            stats: cell,
        })
    }

    /// Tracked tasks still running on this shard.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.get()
    }

    /// Takes over a connection handed off by another shard (handoff protocol step 4).
    pub fn adopt(
        &self,
        handoff: Handoff,
    ) -> Result<(monoio::net::TcpStream, Vec<u8>, SocketAddr), HandoffError> {
        handoff.into_monoio(self.inner.driver)
    }
}

impl<M> std::fmt::Debug for ShardContext<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardContext")
            .field("shard", &self.inner.shard)
            .field("cpu", &self.inner.cpu)
            .field("driver", &self.inner.driver)
            .finish()
    }
}

pub(super) struct InFlightGuard(Rc<Cell<usize>>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A tracked task: counts polls and completion; its guard decrements the in-flight count when it ends or is dropped.
struct Tracked<F: Future> {
    pub(super) future: Pin<Box<F>>,
    pub(super) _guard: InFlightGuard,
    pub(super) stats: Arc<StatsCell>,
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        StatsCell::bump(&self.stats.tasks_polled);
        let poll = self.future.as_mut().poll(cx);
        if poll.is_ready() {
            StatsCell::bump(&self.stats.tasks_completed);
        }
        poll
    }
}
