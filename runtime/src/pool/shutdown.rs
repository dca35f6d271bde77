//! Stopping a pool: the shutdown flag, [`ShutdownHandle`], [`ShardPool::join`] and what it reports.
//!
//! # Shutdown protocol ([`ShardPool::shutdown`], [`ShutdownHandle::request`], or a shard panic)
//! 1. **Stop accepting.** The shutdown flag is set and every shard's doorbell rung; each shard observes it
//!    ([`ShardContext::shutdown_requested`](super::ShardContext::shutdown_requested) resolves, [`ShardContext::is_shutting_down`](super::ShardContext::is_shutting_down) turns true). Accept loops
//!    must stop taking new work when they see it; in-flight work keeps running.
//! 2. **Drain.** Each shard waits until its tracked tasks ([`ShardContext::spawn`](super::ShardContext::spawn), including the init future) and
//!    its container tasks have finished, up to `drain_timeout_ms` (default [`DRAIN_TIMEOUT_MS_DEFAULT`](super::DRAIN_TIMEOUT_MS_DEFAULT)) after it
//!    observed the request. The check runs every [`DRAIN_CHECK_INTERVAL_MS`](super::DRAIN_CHECK_INTERVAL_MS) ms on the shard's timer wheel. Work
//!    still running at the deadline is dropped (cancelled) and counted in [`ShardExit::tasks_abandoned`]
//!    (`shard.rs`).
//! 3. **Join.** The shard stops its scheduler, takes a last statistics sample and leaves its runtime (dropping
//!    its remaining tasks); [`ShardPool::join`] collects every exit. A shard that has not exited within
//!    `drain_timeout_ms + join_grace_ms` of the request (e.g. stuck in a non-yielding loop) is detached and
//!    reported as [`PoolError::ShardsStuck`] — `join` never hangs once shutdown was requested.
//! 4. **Report.** `join` logs one line per shard and returns a [`PoolReport`] (or the first panic/stuck error).
//!
//! # What this file owns
//! The pool-wide flag (`ShutdownState`: requested, when, the doorbells to ring), its cross-thread handle, steps 1,
//! 3 and 4 on the pool's side, and the report types ([`ShardExit`], [`PoolReport`]).
//!
//! # Invariants
//! - Requesting is idempotent: the first request records the time and rings every doorbell once.
//! - `join` joins only threads that reported their exit and detaches the others, so it never blocks on a stuck
//!   shard; dropping a pool without `join` requests shutdown.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`DRAIN_TIMEOUT_MS_DEFAULT`](super::DRAIN_TIMEOUT_MS_DEFAULT) | 5,000 ms | long enough for in-flight responses, short enough for a restart |
//! | [`JOIN_GRACE_MS_DEFAULT`](super::JOIN_GRACE_MS_DEFAULT) | 1,000 ms | time for a shard to leave its runtime after the drain deadline |
//! | `JOIN_POLL_INTERVAL_MS` | 20 ms | how often `join` looks at the flag before shutdown was requested |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use super::config::PoolError;
use super::start::{Event, Outcome, ShardPool};
use crate::bell::{Doorbell, Reason};
use crate::stats::{DriverKind, ShardStats};
use crate::topology::CpuId;
use crate::ShardId;

/// How often `join` looks at the shutdown flag while waiting for it.
const JOIN_POLL_INTERVAL_MS: u64 = 20;

/// How one shard ended (shutdown step 4).
#[derive(Debug, Clone)]
pub struct ShardExit {
    pub shard: ShardId,
    pub cpu: CpuId,
    pub driver: DriverKind,
    /// Tracked and container tasks still running at the drain deadline (dropped).
    pub tasks_abandoned: usize,
    /// Final statistics.
    pub stats: ShardStats,
}

/// What `join` returns when every shard stopped cleanly.
#[derive(Debug, Clone)]
pub struct PoolReport {
    /// One exit per shard, by shard id.
    pub exits: Vec<ShardExit>,
}

impl PoolReport {
    /// True if every shard finished its in-flight work before the drain deadline.
    pub fn fully_drained(&self) -> bool {
        self.exits.iter().all(|e| e.tasks_abandoned == 0)
    }
}

/// The pool-wide shutdown flag (Send + Sync).
pub(super) struct ShutdownState {
    pub(super) requested: AtomicBool,
    pub(super) requested_at: OnceLock<Instant>,
    pub(super) bells: Vec<Arc<Doorbell>>,
}

impl ShutdownState {
    pub(super) fn request(&self) {
        self.requested_at.get_or_init(Instant::now);
        if !self.requested.swap(true, Ordering::SeqCst) {
            for bell in &self.bells {
                bell.ring(Reason::Shutdown);
            }
        }
    }

    pub(super) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// Requests shutdown of a pool from any thread (a signal handler thread, the control plane, a shard).
#[derive(Clone)]
pub struct ShutdownHandle {
    pub(super) state: Arc<ShutdownState>,
}

impl ShutdownHandle {
    /// Starts the shutdown protocol (idempotent).
    pub fn request(&self) {
        self.state.request();
    }

    /// True once shutdown was requested.
    pub fn is_requested(&self) -> bool {
        self.state.is_requested()
    }
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("requested", &self.is_requested())
            .finish()
    }
}

impl<M: Send + 'static> ShardPool<M> {
    /// A handle that starts the shutdown protocol from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            state: self.shutdown.clone(),
        }
    }

    /// Starts the shutdown protocol (step 1); returns at once. Follow with [`join`](Self::join).
    pub fn shutdown(&self) {
        self.shutdown.request();
    }

    /// Waits for every shard to stop (shutdown steps 3–4). Blocks until shutdown is requested by someone (this
    /// pool, a [`ShutdownHandle`], or a panicking shard), then at most `drain_timeout_ms + join_grace_ms`.
    pub fn join(mut self) -> Result<PoolReport, PoolError> {
        let shard_count = self.cpus.len();
        let mut exits: Vec<Option<ShardExit>> = vec![None; shard_count];
        let mut reported = vec![false; shard_count];
        let mut first_panic: Option<(ShardId, String)> = None;
        let mut first_failure: Option<(ShardId, String)> = None;
        let give_up_after = Duration::from_millis(self.drain_timeout_ms + self.join_grace_ms);
        while reported.iter().any(|r| !r) {
            let wait = match self.shutdown.requested_at.get() {
                Some(at) if self.shutdown.is_requested() => {
                    let left = (*at + give_up_after).saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    left
                }
                _ => Duration::from_millis(JOIN_POLL_INTERVAL_MS),
            };
            match self.events.recv_timeout(wait) {
                Ok(Event::Exit { shard, outcome }) => {
                    reported[shard.index()] = true;
                    match outcome {
                        Outcome::Exited(exit) => exits[shard.index()] = Some(*exit),
                        Outcome::Panicked(message) => {
                            first_panic.get_or_insert((shard, message));
                        }
                        Outcome::StartupFailed(reason) => {
                            first_failure.get_or_insert((shard, reason));
                        }
                    }
                }
                Ok(Event::Ready { .. }) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Join the threads that reported (they are leaving or gone); detach the others.
        for (i, handle) in self.threads.iter_mut().enumerate() {
            if let Some(handle) = handle.take() {
                if reported[i] {
                    let _ = handle.join();
                }
            }
        }
        for exit in exits.iter().flatten() {
            tracing::info!(
                shard = exit.shard.0,
                cpu = exit.cpu.0,
                driver = %exit.driver,
                tasks_abandoned = exit.tasks_abandoned,
                busy_us = exit.stats.busy_us,
                mesh_sent = exit.stats.mesh_sent,
                mesh_received = exit.stats.mesh_received,
                "shard stopped"
            );
        }
        if let Some((shard, message)) = first_panic {
            return Err(PoolError::ShardPanicked { shard, message });
        }
        if let Some((shard, reason)) = first_failure {
            return Err(PoolError::Startup {
                shard,
                cpu: self.cpus[shard.index()],
                reason,
            });
        }
        let stuck: Vec<ShardId> = (0..shard_count)
            .filter(|&i| !reported[i])
            .map(|i| ShardId(i as u32))
            .collect();
        if !stuck.is_empty() {
            return Err(PoolError::ShardsStuck {
                shards: stuck,
                waited_ms: give_up_after.as_millis() as u64,
            });
        }
        Ok(PoolReport {
            exits: exits.into_iter().flatten().collect(),
        })
    }
}

impl<M> Drop for ShardPool<M> {
    /// Dropping a pool without `join` requests shutdown; the shards drain and exit on their own (detached).
    fn drop(&mut self) {
        self.shutdown.request();
    }
}
