//! The node side of the control plane: [`NodeAgent`] registers a node, streams
//! its load and applies steering through [`NodeHooks`], which the server
//! (`larder serve`) implements. It runs on its own thread with a current-thread
//! tokio runtime, so the data-plane shards never run tokio.
//!
//! # One session
//! 1. Connect (at most [`CONNECT_TIMEOUT`]) and `Register` (at most
//!    [`REGISTER_TIMEOUT`]); apply the steering in
//!    the answer if it is new; learn the report interval.
//! 2. Open `WatchSteering`, `WatchReloads` and the `ReportLoad` client stream.
//! 3. Every report interval call [`NodeHooks::load_report`] and queue the report
//!    (at most [`REPORT_QUEUE_MAX`] waiting; when full the report is dropped and
//!    counted, the next one carries fresher numbers anyway). Apply every steering
//!    whose `(epoch, version)` differs from the last applied one: a new epoch (a
//!    restarted control plane) always wins, within an epoch only a higher version.
//!    For every `ReloadCommand` call [`NodeHooks::reload`] and answer with `ReloadDone` (at most
//!    [`REGISTER_TIMEOUT`]; the control plane's `ReloadNode` call waits for it, `crate::reload`).
//! 4. Open `WatchProfileOrders` too (a control plane without it answers UNIMPLEMENTED: the session goes on
//!    without profiles). For each order, [`NodeHooks::profile`] gives a job; it runs on a thread of its own
//!    (`larder-profile`, it takes the order's seconds) and its answer goes back with `SubmitProfile`. A job
//!    still running when the agent stops is left to finish on its own (at most 60 s), so stopping never waits
//!    for a profile.
//! 5. Any error ends the session, including HTTP/2 keepalive pings unanswered for
//!    [`KEEPALIVE_TIMEOUT`] (a control plane that vanished without closing).
//!
//! # Between sessions (fail static)
//! Nothing is applied: the node keeps serving with its last settings. The agent
//! waits `backoff` (starting at [`AgentConfig::backoff_initial`], doubling up to
//! [`AgentConfig::backoff_max`]; reset by every successful registration) and
//! starts a new session, which registers again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_proto::v1 as pb;
use larder_proto::v1::node_service_client::NodeServiceClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::background::Worker;
use crate::convert;
use crate::profile::{ProfileFailure, ProfileFailureKind, ProfileOutcome, ProfileRequest};
use crate::server::stop_requested;
use crate::state::{Container, LoadReport, NodeId, NodeInfo, ShardLoad, Steering, TargetLoad};

/// Reports waiting to be sent before new ones are dropped.
pub const REPORT_QUEUE_MAX: usize = 8;
/// Longest wait for a TCP connection to the control plane.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for the answer to Register.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings detect a control plane that vanished without closing the
/// connection: one every interval, and the session ends after the timeout.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default first reconnect delay.
pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_millis(100);
/// Default longest reconnect delay.
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(5);

/// One node's load at one instant, as the server measures it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeLoad {
    pub shards: Vec<ShardLoad>,
    pub hot_targets: Vec<TargetLoad>,
}

/// A profile to take: run once, on a thread of its own, for the order's seconds.
pub type ProfileJob = Box<dyn FnOnce() -> ProfileOutcome + Send>;

/// What the server implements for the agent. Called on the agent's thread only,
/// never concurrently; implementations hand work to the shards through their own
/// bounded channels and must not block for long.
pub trait NodeHooks: Send + 'static {
    /// The node's current load (called once per report interval).
    fn load_report(&mut self) -> NodeLoad;
    /// Apply new settings (called once per new steering, in order).
    fn apply(&mut self, steering: &Steering);
    /// Re-read the node's configuration and put it in force (`ReloadNode`); the default refuses.
    fn reload(&mut self) -> Result<ReloadOutcome, ReloadRefused> {
        Err(ReloadRefused(
            "this node cannot reload its configuration".to_string(),
        ))
    }
    /// The session with the control plane started (`true`) or was lost (`false`). Not called when the agent's
    /// owner stops it: that end is the owner's own doing.
    fn connection_changed(&mut self, connected: bool) {
        let _ = connected;
    }
    /// A profile order (step 4 of the module docs): check it and return the job that samples. Checks that
    /// need no sampling (a shard out of range, a profile already running) should fail at once, in the job.
    /// By default a node cannot profile.
    fn profile(&mut self, request: ProfileRequest) -> ProfileJob {
        let _ = request;
        Box::new(|| {
            Err(ProfileFailure::new(
                ProfileFailureKind::Unsupported,
                "this node does not take profiles",
            ))
        })
    }
}

/// What a node's reload changed ([`NodeHooks::reload`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Settings changed live.
    pub applied: Vec<String>,
    /// Settings kept at their running value, each with both values.
    pub kept: Vec<String>,
}

/// Why a node's reload changed nothing: the node's message, naming the file and the setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReloadRefused(pub String);

/// How to run an agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub control_addr: SocketAddr,
    pub node: NodeInfo,
    /// Containers configured on the node (added to the cluster's set if unknown).
    pub containers: Vec<Container>,
    /// Bearer token for the control plane, if it has one.
    pub token: Option<String>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl AgentConfig {
    pub fn new(control_addr: SocketAddr, node: NodeInfo) -> AgentConfig {
        AgentConfig {
            control_addr,
            node,
            containers: Vec::new(),
            token: None,
            backoff_initial: BACKOFF_INITIAL_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
        }
    }
}

/// Counters of an agent (read them with [`NodeAgent::stats`]).
#[derive(Debug, Default)]
struct Counters {
    connected: AtomicBool,
    registrations: AtomicU64,
    reports_sent: AtomicU64,
    reports_dropped: AtomicU64,
    steerings_applied: AtomicU64,
    sessions_failed: AtomicU64,
}

/// A snapshot of an agent's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    pub connected: bool,
    pub registrations: u64,
    pub reports_sent: u64,
    pub reports_dropped: u64,
    pub steerings_applied: u64,
    pub sessions_failed: u64,
}

/// Why an agent did not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot start the agent thread or runtime: {0}")]
    Runtime(std::io::Error),
    #[error("invalid token: {0}")]
    Token(String),
}

/// A running agent; [`NodeAgent::shutdown`] stops it (dropping it does too).
#[derive(Debug)]
pub struct NodeAgent {
    counters: Arc<Counters>,
    worker: Worker,
}

impl NodeAgent {
    /// Starts an agent with default backoff and no token.
    pub fn spawn(
        control_addr: SocketAddr,
        node: NodeInfo,
        hooks: impl NodeHooks,
    ) -> Result<NodeAgent, AgentError> {
        NodeAgent::spawn_with(AgentConfig::new(control_addr, node), hooks)
    }

    /// Starts an agent.
    pub fn spawn_with(config: AgentConfig, hooks: impl NodeHooks) -> Result<NodeAgent, AgentError> {
        let authorization =
            authorization_header(config.token.as_deref()).map_err(AgentError::Token)?;
        let counters = Arc::new(Counters::default());
        let agent_counters = Arc::clone(&counters);
        let worker = Worker::spawn("larder-agent", move |stopped| {
            Agent {
                config,
                authorization,
                hooks,
                counters: agent_counters,
                stopped,
                applied: None,
            }
            .run()
        })
        .map_err(AgentError::Runtime)?;
        Ok(NodeAgent { counters, worker })
    }

    pub fn stats(&self) -> AgentStats {
        self.stats_reader().stats()
    }

    /// A `Send + Sync` reader of the counters for another thread (a readiness probe asks `connected`).
    pub fn stats_reader(&self) -> AgentStatsReader {
        AgentStatsReader(Arc::clone(&self.counters))
    }

    /// Stops the agent and waits for its thread. (A panic in the hooks is the
    /// server's bug; it already printed.)
    pub fn shutdown(mut self) {
        self.worker.stop_and_join();
    }
}

/// Reads an agent's counters from any thread; outlives the agent (then `connected` stays false).
#[derive(Clone, Debug)]
pub struct AgentStatsReader(Arc<Counters>);

impl AgentStatsReader {
    pub fn stats(&self) -> AgentStats {
        let c = &self.0;
        AgentStats {
            connected: c.connected.load(Ordering::Relaxed),
            registrations: c.registrations.load(Ordering::Relaxed),
            reports_sent: c.reports_sent.load(Ordering::Relaxed),
            reports_dropped: c.reports_dropped.load(Ordering::Relaxed),
            steerings_applied: c.steerings_applied.load(Ordering::Relaxed),
            sessions_failed: c.sessions_failed.load(Ordering::Relaxed),
        }
    }
}

enum SessionEnd {
    Stopped,
    Failed { registered: bool, error: Status },
}

/// The `authorization` header value `Bearer <token>` for `token`, or why it cannot
/// be a header value.
pub(crate) fn authorization_header(
    token: Option<&str>,
) -> Result<Option<MetadataValue<Ascii>>, String> {
    token
        .map(|token| {
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|error| error.to_string())
        })
        .transpose()
}

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Debug)]
pub(crate) struct Bearer(pub(crate) Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub(crate) type Client = NodeServiceClient<InterceptedService<Channel, Bearer>>;

/// Connects a `NodeService` client to the control plane at `control_addr` (at most
/// [`CONNECT_TIMEOUT`]) with HTTP/2 keepalive pings every [`KEEPALIVE_INTERVAL`]
/// (answer within [`KEEPALIVE_TIMEOUT`]); `ping_while_idle` pings with no call open
/// too (the agent, whose steering stream may stay quiet for long).
pub(crate) async fn connect(
    control_addr: SocketAddr,
    bearer: Bearer,
    ping_while_idle: bool,
) -> Result<Client, Status> {
    let channel = Endpoint::from_shared(format!("http://{control_addr}"))
        .map_err(|error| Status::invalid_argument(error.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(ping_while_idle)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    Ok(NodeServiceClient::with_interceptor(channel, bearer))
}

struct Agent<H> {
    config: AgentConfig,
    authorization: Option<MetadataValue<Ascii>>,
    hooks: H,
    counters: Arc<Counters>,
    stopped: watch::Receiver<bool>,
    /// `(epoch, version)` of the last steering applied.
    applied: Option<(u64, u64)>,
}

impl<H: NodeHooks> Agent<H> {
    async fn run(mut self) {
        let mut backoff = self.config.backoff_initial;
        loop {
            match self.session().await {
                SessionEnd::Stopped => break,
                SessionEnd::Failed { registered, error } => {
                    self.counters
                        .sessions_failed
                        .fetch_add(1, Ordering::Relaxed);
                    if self.counters.connected.swap(false, Ordering::Relaxed) {
                        self.hooks.connection_changed(false);
                    }
                    tracing::debug!(code = ?error.code(), message = error.message(), "control session ended");
                    if registered {
                        backoff = self.config.backoff_initial;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop_requested(&mut self.stopped) => break,
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
        // Stopped by the owner: no loss to report.
        self.counters.connected.store(false, Ordering::Relaxed);
    }

    fn apply(&mut self, steering: pb::Steering) {
        let key = (steering.epoch, steering.version);
        let newer = match self.applied {
            None => true,
            Some((epoch, version)) => epoch != key.0 || version < key.1,
        };
        if newer {
            self.applied = Some(key);
            self.hooks.apply(&convert::steering(steering));
            self.counters
                .steerings_applied
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One `ReloadCommand`: the node reloads; the answer for `ReloadDone`.
    fn reload(&mut self, node_id: &NodeId, reload_id: u64) -> pb::ReloadResult {
        let outcome = self.hooks.reload();
        let (ok, outcome, error) = match outcome {
            Ok(outcome) => (true, outcome, String::new()),
            Err(refused) => (false, ReloadOutcome::default(), refused.0),
        };
        pb::ReloadResult {
            node_id: node_id.0.clone(),
            reload_id,
            ok,
            applied: outcome.applied,
            kept: outcome.kept,
            error,
        }
    }

    /// Step 4 of the module docs: runs the hook's job on its own thread and sends its answer back.
    fn start_profile(&mut self, client: &Client, order: pb::ProfileOrder) {
        let order = convert::profile_order(order);
        let job = self.hooks.profile(order.request);
        let (answer_sender, answer) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("larder-profile".to_string())
            .spawn(move || {
                let _ = answer_sender.send(job());
            });
        let mut client = client.clone();
        let node_id = self.config.node.node_id.0.clone();
        tokio::spawn(async move {
            let outcome = match spawned {
                Ok(_) => answer.await.unwrap_or_else(|_| {
                    Err(ProfileFailure::new(
                        ProfileFailureKind::Internal,
                        "the profile job panicked",
                    ))
                }),
                Err(error) => Err(ProfileFailure::new(
                    ProfileFailureKind::Internal,
                    format!("cannot start the profile thread: {error}"),
                )),
            };
            let submit = pb::SubmitProfileRequest {
                node_id,
                order_id: order.order_id,
                outcome: Some(convert::profile_outcome_to_pb(&outcome)),
            };
            if let Err(error) = client.submit_profile(submit).await {
                tracing::warn!(code = ?error.code(), message = error.message(), "profile answer not delivered");
            }
        });
    }

    async fn session(&mut self) -> SessionEnd {
        let failed = |registered, error| SessionEnd::Failed { registered, error };
        let mut client = tokio::select! {
            client = connect(self.config.control_addr, Bearer(self.authorization.clone()), true) => match client {
                Ok(client) => client,
                Err(error) => return failed(false, error),
            },
            () = stop_requested(&mut self.stopped) => return SessionEnd::Stopped,
        };
        let register = pb::RegisterRequest {
            node: Some(convert::node_info_to_pb(&self.config.node)),
            containers: self
                .config
                .containers
                .iter()
                .map(convert::container_to_pb)
                .collect(),
        };
        let registered =
            match tokio::time::timeout(REGISTER_TIMEOUT, client.register(register)).await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(error)) => return failed(false, error),
                Err(_) => return failed(false, Status::deadline_exceeded("Register timed out")),
            };
        if let Some(steering) = registered.steering {
            self.apply(steering);
        }
        self.counters.registrations.fetch_add(1, Ordering::Relaxed);
        let interval = Duration::from_millis(registered.report_interval_ms.max(1));
        let node_id = self.config.node.node_id.clone();
        let mut steering = match client
            .watch_steering(pb::WatchSteeringRequest {
                node_id: node_id.0.clone(),
            })
            .await
        {
            Ok(stream) => stream.into_inner(),
            Err(error) => return failed(true, error),
        };
        let mut reloads = match client
            .watch_reloads(pb::WatchReloadsRequest {
                node_id: node_id.0.clone(),
            })
            .await
        {
            Ok(stream) => stream.into_inner(),
            Err(error) => return failed(true, error),
        };
        let mut orders = match client
            .watch_profile_orders(pb::WatchProfileOrdersRequest {
                node_id: node_id.0.clone(),
            })
            .await
        {
            Ok(stream) => Some(stream.into_inner()),
            Err(error) if error.code() == tonic::Code::Unimplemented => None,
            Err(error) => return failed(true, error),
        };
        // Connected once every stream is open: a reload or profile ordered after this reaches the node.
        self.hooks.connection_changed(true);
        self.counters.connected.store(true, Ordering::Relaxed);
        let (reports, queue) = mpsc::channel(REPORT_QUEUE_MAX);
        let mut report_client = client.clone();
        let report_call = report_client.report_load(ReceiverStream::new(queue));
        tokio::pin!(report_call);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sequence = 0;
        loop {
            tokio::select! {
                () = stop_requested(&mut self.stopped) => return SessionEnd::Stopped,
                order = next_order(&mut orders) => match order {
                    Ok(Some(order)) => self.start_profile(&client, order),
                    Ok(None) => return failed(true, Status::unavailable("profile order stream ended")),
                    Err(error) => return failed(true, error),
                },
                message = steering.message() => match message {
                    Ok(Some(message)) => self.apply(message),
                    Ok(None) => return failed(true, Status::unavailable("steering stream ended")),
                    Err(error) => return failed(true, error),
                },
                command = reloads.message() => match command {
                    Ok(Some(command)) => {
                        let result = self.reload(&node_id, command.reload_id);
                        let answer = tokio::time::timeout(REGISTER_TIMEOUT, client.reload_done(result)).await;
                        if let Ok(Err(error)) = &answer {
                            // Answered too late (the caller gave up): the reload itself happened.
                            tracing::debug!(code = ?error.code(), message = error.message(), "ReloadDone not taken");
                        }
                    }
                    Ok(None) => return failed(true, Status::unavailable("reload stream ended")),
                    Err(error) => return failed(true, error),
                },
                _ = ticks.tick() => {
                    sequence += 1;
                    let load = self.hooks.load_report();
                    let report = convert::load_report_to_pb(&LoadReport {
                        node_id: NodeId(node_id.0.clone()),
                        sequence,
                        shards: load.shards,
                        hot_targets: load.hot_targets,
                    });
                    match reports.try_send(report) {
                        Ok(()) => {
                            self.counters.reports_sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            self.counters.reports_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return failed(true, Status::unavailable("report stream closed"));
                        }
                    }
                }
                outcome = &mut report_call => {
                    let error = match outcome {
                        Ok(_) => Status::unavailable("report stream ended"),
                        Err(error) => error,
                    };
                    return failed(true, error);
                }
            }
        }
    }
}

/// The next order of an open order stream; never resolves when the control plane has none.
async fn next_order(
    orders: &mut Option<tonic::Streaming<pb::ProfileOrder>>,
) -> Result<Option<pb::ProfileOrder>, Status> {
    match orders {
        Some(orders) => orders.message().await,
        None => std::future::pending().await,
    }
}
