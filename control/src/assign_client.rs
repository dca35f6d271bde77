//! The node side of distributed mode: [`AssignFeeder`] asks the control plane
//! which node serves the targets the node has no fresh assignment for, in
//! batches, and hands the answers to the node's directory. Like the agent it runs
//! on its own thread with a current-thread tokio runtime, so shards never run
//! tokio and a request never waits for the control plane.
//!
//! # Contract with the node
//! - `source(n)` returns at most `n` targets the node wants assigned (it is called
//!   once per interval, only while connected; an empty answer skips the call).
//! - `sink(assignments, ttl_ms)` receives `(target, node ids)` pairs, node ids
//!   first = the one to use, for every target of a batch the control plane
//!   answered, and how long they may be used. Both run on the feeder's thread,
//!   never concurrently, and must not block for long.
//! - Fail static: while the control plane is unreachable neither is called; the
//!   node keeps its cached assignments (and serves unknown targets locally).
//!   Targets of a failed call are not retried by the feeder: the node asks again
//!   the next time it sees them.
//!
//! # One session
//! 1. Connect (at most [`CONNECT_TIMEOUT`](crate::agent::CONNECT_TIMEOUT)). On
//!    failure wait `backoff` (from [`BACKOFF_INITIAL_DEFAULT`] doubling to
//!    [`BACKOFF_MAX_DEFAULT`]; reset by every answered call) and try again.
//! 2. Every `interval_ms`: `source(batch_max)`, drop targets the control plane
//!    would reject (empty or over 1024 bytes, counted), `Assign` (at most
//!    [`ASSIGN_CALL_TIMEOUT`]), `sink`.
//! 3. NOT_FOUND (the node's agent has not registered it yet) and INVALID_ARGUMENT
//!    lose that batch and keep the session; any other error ends it (step 1).
//!
//! # Shape change from the brief
//! `spawn` returns `Result<AssignFeederHandle, AssignFeederError>` (not a bare
//! handle): a token that is not a valid header value, a `batch_max` outside
//! 1..=[`ASSIGN_TARGETS_MAX`], `interval_ms` 0, or a failed thread/runtime start
//! are errors the caller must see, and panics are for bugs only.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | `batch_max` | default [`BATCH_MAX_DEFAULT`] = 256, at most [`ASSIGN_TARGETS_MAX`] = 1024 | the RPC's limit |
//! | `interval_ms` | default [`INTERVAL_MS_DEFAULT`] = 5 | 256 targets / 5 ms = 51 200 new targets/s a node; a new target waits ≤ 5 ms + 1 RTT for its owner (served locally meanwhile) |
//! | [`ASSIGN_CALL_TIMEOUT`] | 1 s | a stuck control plane ends the session |

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_proto::v1 as pb;
use tokio::sync::watch;
use tonic::{Code, Status};

use crate::agent::{
    authorization_header, connect, Bearer, BACKOFF_INITIAL_DEFAULT, BACKOFF_MAX_DEFAULT,
};
use crate::assign::ASSIGN_TARGETS_MAX;
use crate::background::Worker;
use crate::server::stop_requested;
use crate::state::{NodeId, TARGET_BYTES_MAX};

/// Default most targets a call.
pub const BATCH_MAX_DEFAULT: usize = 256;
/// Default time between calls.
pub const INTERVAL_MS_DEFAULT: u64 = 5;
/// Longest wait for one Assign answer.
pub const ASSIGN_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// How to run a feeder.
#[derive(Clone)]
pub struct AssignFeederConfig {
    /// The control plane's gRPC address.
    pub control: SocketAddr,
    /// This node's id as registered (in larder: its HTTP address).
    pub node_id: NodeId,
    /// Most targets a call, 1..=1024.
    pub batch_max: usize,
    /// Time between calls, >= 1.
    pub interval_ms: u64,
    /// Bearer token of the control plane, if it has one.
    pub token: Option<String>,
}

impl std::fmt::Debug for AssignFeederConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssignFeederConfig")
            .field("control", &self.control)
            .field("node_id", &self.node_id)
            .field("batch_max", &self.batch_max)
            .field("interval_ms", &self.interval_ms)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl AssignFeederConfig {
    /// Defaults: batches of 256 every 5 ms, no token.
    pub fn new(control: SocketAddr, node_id: NodeId) -> AssignFeederConfig {
        AssignFeederConfig {
            control,
            node_id,
            batch_max: BATCH_MAX_DEFAULT,
            interval_ms: INTERVAL_MS_DEFAULT,
            token: None,
        }
    }
}

/// Why a feeder did not start.
#[derive(Debug, thiserror::Error)]
pub enum AssignFeederError {
    #[error("invalid {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("cannot start the feeder thread or runtime: {0}")]
    Runtime(std::io::Error),
}

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicBool,
    calls_answered: AtomicU64,
    calls_failed: AtomicU64,
    assignments_received: AtomicU64,
    targets_rejected: AtomicU64,
    sessions_failed: AtomicU64,
}

/// A snapshot of a feeder's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssignFeederStats {
    /// A session is open (the control plane answered or the connection stands).
    pub connected: bool,
    pub calls_answered: u64,
    pub calls_failed: u64,
    pub assignments_received: u64,
    /// Targets dropped before a call because the control plane would reject them.
    pub targets_rejected: u64,
    pub sessions_failed: u64,
}

/// Entry point: see the module docs.
#[derive(Debug)]
pub struct AssignFeeder;

/// A running feeder; [`AssignFeederHandle::shutdown`] stops it and joins (dropping it does too).
#[derive(Debug)]
pub struct AssignFeederHandle {
    counters: Arc<Counters>,
    worker: Worker,
}

/// `(target, node ids)` pairs as the sink receives them.
pub type Assignments = Vec<(String, Vec<String>)>;

impl AssignFeeder {
    /// Starts a feeder on its own thread.
    pub fn spawn(
        config: AssignFeederConfig,
        source: impl FnMut(usize) -> Vec<String> + Send + 'static,
        sink: impl FnMut(Assignments, u64) + Send + 'static,
    ) -> Result<AssignFeederHandle, AssignFeederError> {
        if !(1..=ASSIGN_TARGETS_MAX).contains(&config.batch_max) {
            return Err(AssignFeederError::Config {
                field: "batch_max",
                reason: format!("{} is outside 1..={ASSIGN_TARGETS_MAX}", config.batch_max),
            });
        }
        if config.interval_ms == 0 {
            return Err(AssignFeederError::Config {
                field: "interval_ms",
                reason: "must be at least 1".to_string(),
            });
        }
        let authorization = authorization_header(config.token.as_deref()).map_err(|reason| {
            AssignFeederError::Config {
                field: "token",
                reason,
            }
        })?;
        let counters = Arc::new(Counters::default());
        let feeder_counters = Arc::clone(&counters);
        let worker = Worker::spawn("larder-assign", move |stopped| {
            Feeder {
                config,
                bearer: Bearer(authorization),
                source,
                sink,
                counters: feeder_counters,
                stopped,
            }
            .run()
        })
        .map_err(AssignFeederError::Runtime)?;
        Ok(AssignFeederHandle { counters, worker })
    }
}

impl AssignFeederHandle {
    pub fn stats(&self) -> AssignFeederStats {
        let c = &self.counters;
        AssignFeederStats {
            connected: c.connected.load(Ordering::Relaxed),
            calls_answered: c.calls_answered.load(Ordering::Relaxed),
            calls_failed: c.calls_failed.load(Ordering::Relaxed),
            assignments_received: c.assignments_received.load(Ordering::Relaxed),
            targets_rejected: c.targets_rejected.load(Ordering::Relaxed),
            sessions_failed: c.sessions_failed.load(Ordering::Relaxed),
        }
    }

    /// Stops the feeder and waits for its thread (at most one call's timeout). The
    /// thread may have ended already (a panic in source or sink: the node's bug,
    /// printed by then); join reports nothing more.
    pub fn shutdown(mut self) {
        self.worker.stop_and_join();
    }
}

/// How a session ended.
enum SessionEnd {
    Stopped,
    /// `answered`: at least one call was answered (the backoff starts over).
    Failed {
        answered: bool,
        error: Status,
    },
}

struct Feeder<Source, Sink> {
    config: AssignFeederConfig,
    bearer: Bearer,
    source: Source,
    sink: Sink,
    counters: Arc<Counters>,
    stopped: watch::Receiver<bool>,
}

/// A target the control plane accepts (see `NodeService.Assign`).
fn acceptable(target: &str) -> bool {
    !target.is_empty() && target.len() <= TARGET_BYTES_MAX
}

impl<Source, Sink> Feeder<Source, Sink>
where
    Source: FnMut(usize) -> Vec<String>,
    Sink: FnMut(Assignments, u64),
{
    async fn run(mut self) {
        let mut backoff = BACKOFF_INITIAL_DEFAULT;
        loop {
            let (answered, error) = match self.session().await {
                SessionEnd::Stopped => break,
                SessionEnd::Failed { answered, error } => (answered, error),
            };
            self.counters.connected.store(false, Ordering::Relaxed);
            self.counters
                .sessions_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(code = ?error.code(), message = error.message(), "assign session ended");
            if answered {
                backoff = BACKOFF_INITIAL_DEFAULT;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop_requested(&mut self.stopped) => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX_DEFAULT);
        }
        self.counters.connected.store(false, Ordering::Relaxed);
    }

    async fn session(&mut self) -> SessionEnd {
        let connected = tokio::select! {
            client = connect(self.config.control, self.bearer.clone(), false) => client,
            () = stop_requested(&mut self.stopped) => return SessionEnd::Stopped,
        };
        let mut client = match connected {
            Ok(client) => client,
            Err(error) => {
                return SessionEnd::Failed {
                    answered: false,
                    error,
                }
            }
        };
        self.counters.connected.store(true, Ordering::Relaxed);
        let mut ticks = tokio::time::interval(Duration::from_millis(self.config.interval_ms));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut answered = false;
        loop {
            tokio::select! {
                () = stop_requested(&mut self.stopped) => return SessionEnd::Stopped,
                _ = ticks.tick() => {}
            }
            let mut targets = (self.source)(self.config.batch_max);
            targets.truncate(self.config.batch_max);
            let before = targets.len();
            targets.retain(|target| acceptable(target));
            let rejected = (before - targets.len()) as u64;
            self.counters
                .targets_rejected
                .fetch_add(rejected, Ordering::Relaxed);
            if targets.is_empty() {
                continue;
            }
            let request = pb::AssignRequest {
                node_id: self.config.node_id.0.clone(),
                targets,
            };
            let call = tokio::time::timeout(ASSIGN_CALL_TIMEOUT, client.assign(request));
            let outcome = tokio::select! {
                outcome = call => outcome,
                () = stop_requested(&mut self.stopped) => return SessionEnd::Stopped,
            };
            let error = match outcome {
                Ok(Ok(response)) => {
                    answered = true;
                    self.deliver(response.into_inner());
                    continue;
                }
                Ok(Err(error)) => error,
                Err(_) => Status::deadline_exceeded("Assign timed out"),
            };
            self.counters.calls_failed.fetch_add(1, Ordering::Relaxed);
            match error.code() {
                // Not registered yet, or a batch this feeder should not have sent:
                // the session itself is fine.
                Code::NotFound | Code::InvalidArgument => {
                    tracing::debug!(code = ?error.code(), message = error.message(), "Assign refused a batch");
                }
                _ => return SessionEnd::Failed { answered, error },
            }
        }
    }

    fn deliver(&mut self, response: pb::AssignResponse) {
        let assignments: Assignments = response
            .assignments
            .into_iter()
            .filter(|assignment| !assignment.node_ids.is_empty())
            .map(|assignment| (assignment.target, assignment.node_ids))
            .collect();
        self.counters.calls_answered.fetch_add(1, Ordering::Relaxed);
        self.counters
            .assignments_received
            .fetch_add(assignments.len() as u64, Ordering::Relaxed);
        (self.sink)(assignments, response.ttl_ms);
    }
}
