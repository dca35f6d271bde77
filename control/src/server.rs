//! The tonic server: `larder.v1.Control`, `larder.v1.NodeService`, reflection
//! (v1 and v1alpha) and `grpc.health.v1.Health`, on one thread with its own
//! current-thread tokio runtime, so tokio never runs on a data-plane shard and the
//! control plane uses at most one core.
//!
//! # Start-up ([`ControlPlane::spawn`])
//! 1. Read the state file, if one is configured, and validate it with the
//!    configuration into a [`ClusterState`] (fails before any thread).
//! 2. Start the thread `larder-control`, build the runtime, bind the listener there
//!    (tokio sets SO_REUSEADDR, so a restarted control plane can take the same port)
//!    — or adopt the one given to [`ControlPlane::spawn_on`] (binary handover) — and
//!    send the bound address back; the caller's `spawn` returns only then.
//! 3. Serve until shutdown. A task marks silent nodes down every report interval
//!    and pushes the new steering.
//!
//! # Shutdown ([`ControlHandle::shutdown`])
//! 1. Raise the shutdown flag: every server stream (WatchSteering,
//!    WatchClusterLoad) and every ReportLoad handler ends.
//! 2. tonic stops accepting and finishes in-flight calls, for at most
//!    [`SHUTDOWN_GRACE`]; then the runtime is dropped with whatever is left.
//! 3. The thread ends; `shutdown` joins it.
//!
//! # Steering
//! State mutations run under one `std::sync::Mutex` (held for microseconds, never
//! across an `.await`). After a mutation that changed the version, the new
//! [`Steering`] is published on a `tokio::sync::watch` channel; every WatchSteering
//! stream sends the latest one (intermediate versions may be skipped: nodes apply
//! the latest).
//!
//! # State file ([`ControlConfig::state_file`], format in [`crate::persist`])
//! 1. At start the file's settings are read and validated before any thread starts;
//!    they win over the configured policy and over configured containers of the same
//!    name (a run-time change outlives the start-up default it replaced), and node
//!    ids' weights and drain flags wait for their nodes to register. A bad file stops
//!    the start with an error naming the file and the field; a missing one means
//!    "start from the configuration".
//! 2. An operator's change (SetPolicy, Drain, Undrain, SetContainer) is applied, then
//!    the whole settings are saved, still under the state lock, before the answer
//!    and before nodes see the new steering. If the save fails, the change is rolled
//!    back to the checkpoint taken before it and refused with `UNAVAILABLE` naming
//!    the file (logged too): an answered change is a durable one, and a refused one
//!    changed nothing. The save costs two fsyncs (file, directory), a few ms during
//!    which this thread answers nothing else; operator changes are rare.
//! 3. A registration that adds a node's own containers is saved too, but a failure
//!    there is only logged: the node brings the same containers at every
//!    registration, so refusing the node would cost more than it protects.
//! 4. Nodes need no extra step to get the restored settings: every control-plane
//!    instance has its own steering epoch, and agents apply any steering of a new
//!    epoch, whatever its version (see [`crate::agent`], step 3).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use larder_lard::PolicyConfig;
use larder_proto::v1 as pb;
use larder_proto::v1::control_server::{Control, ControlServer};
use larder_proto::v1::node_service_server::{NodeService, NodeServiceServer};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{IntervalStream, ReceiverStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::assign::{AssignError, ASSIGN_TTL_DEFAULT};
use crate::auth::{Authorizer, CallClass};
use crate::convert;
use crate::persist::{StateFile, StateFileError};
use crate::profile::{ProfileDesk, ProfileRequest, PROFILE_ANSWER_GRACE};
use crate::state::{
    validate_node_id, ClusterLoad, ClusterState, Container, NodeId, NodeState, ShardId,
    StateConfig, StateError, Steering, NODES_MAX,
};

/// Default interval of node load reports.
pub const REPORT_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
/// Default number of silent report intervals after which a node is down.
pub const DOWN_AFTER_INTERVALS_DEFAULT: u32 = 5;
/// How long in-flight calls may run after shutdown begins. tonic's graceful
/// shutdown also waits for idle client connections to close (it has no forced
/// shutdown), so an open operator connection holds shutdown for this long.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Messages buffered per server stream before the sender waits.
pub const STREAM_BUFFER_MAX: usize = 16;
/// WatchClusterLoad interval bounds (and the default for 0).
pub const WATCH_INTERVAL_MIN: Duration = Duration::from_millis(50);
pub const WATCH_INTERVAL_MAX: Duration = Duration::from_secs(60);
pub const WATCH_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Most concurrent HTTP/2 streams per connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;

/// Where time comes from. Tests inject [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The monotonic system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (for tests of down detection).
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    pub fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How to run a control plane.
#[derive(Clone)]
pub struct ControlConfig {
    /// Address to listen on; port 0 picks a free port (see [`ControlHandle::local_addr`]).
    pub listen: SocketAddr,
    /// Bearer token required for mutations (see [`crate::auth`]).
    pub token: Option<String>,
    pub report_interval: Duration,
    pub down_after_intervals: u32,
    pub policy: PolicyConfig,
    pub containers: Vec<Container>,
    /// Names this instance in steering; default: nanoseconds since the Unix epoch at start.
    /// Also seeds the cluster policy's RNG (fix it for repeatable assignments).
    pub epoch: Option<u64>,
    pub clock: Arc<dyn Clock>,
    /// How long nodes may use an Assign answer (1 ms..=1 h; default 1000 ms).
    pub assign_ttl: Duration,
    /// Where the operator's run-time settings are kept across restarts (module docs, "State file");
    /// `None`: they last as long as the process.
    pub state_file: Option<PathBuf>,
}

impl std::fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("report_interval", &self.report_interval)
            .field("down_after_intervals", &self.down_after_intervals)
            .field("policy", &self.policy)
            .field("containers", &self.containers)
            .field("epoch", &self.epoch)
            .field("assign_ttl", &self.assign_ttl)
            .field("state_file", &self.state_file)
            .finish_non_exhaustive()
    }
}

impl ControlConfig {
    /// Defaults: 100 ms reports, down after 5, lard's default policy, one container "default".
    pub fn new(listen: SocketAddr) -> ControlConfig {
        ControlConfig {
            listen,
            token: None,
            report_interval: REPORT_INTERVAL_DEFAULT,
            down_after_intervals: DOWN_AFTER_INTERVALS_DEFAULT,
            policy: PolicyConfig::default(),
            containers: vec![Container::default_container()],
            epoch: None,
            clock: Arc::new(SystemClock),
            assign_ttl: ASSIGN_TTL_DEFAULT,
            state_file: None,
        }
    }
}

/// Why a control plane did not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid configuration: {0}")]
    Config(#[from] StateError),
    #[error("{0}")]
    StateFile(#[from] StateFileError),
    #[error("cannot start the control-plane thread or runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("the control-plane thread panicked")]
    Panicked,
}

/// State shared by all handlers of one control plane.
struct Shared {
    state: Mutex<ClusterState>,
    steering: watch::Sender<Arc<Steering>>,
    clock: Arc<dyn Clock>,
    auth: Authorizer,
    shutdown: watch::Receiver<bool>,
    assign_ttl_ms: u64,
    store: Option<StateFile>,
    reloads: crate::reload::ReloadRelay,
    /// `Assign` calls answered (a node's batch of targets each), for the metrics.
    assignment_batches: std::sync::atomic::AtomicU64,
    profiles: ProfileDesk,
}

/// What happens to a settings change when the state file cannot be written (module docs, "State file").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// An operator's change: rolled back and refused.
    Required,
    /// A node's own call: kept, the failure logged.
    BestEffort,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        // A panic while holding the lock is a bug elsewhere; the state itself is
        // never left half-written (validation precedes every write).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a query after down detection.
    fn read<T>(&self, query: impl FnOnce(&ClusterState, Instant) -> T) -> T {
        let now = self.clock.now();
        let mut state = self.lock();
        if state.refresh(now) {
            self.publish(&state);
        }
        query(&state, now)
    }

    /// Runs a mutation, saves the settings if they changed (module docs, "State file")
    /// and pushes the steering if its version moved.
    fn mutate<T>(
        &self,
        durability: Durability,
        mutation: impl FnOnce(&mut ClusterState, Instant) -> Result<T, StateError>,
    ) -> Result<T, Status> {
        let now = self.clock.now();
        let mut state = self.lock();
        let before = state.version();
        let revision = state.settings_revision();
        // Only operator changes pay for a checkpoint (a copy of the settings); they are rare.
        let checkpoint = (durability == Durability::Required && self.store.is_some())
            .then(|| state.checkpoint());
        // No down detection here: it is O(nodes) and this is the report hot path;
        // the sweeper and every read run it.
        let outcome = mutation(&mut state, now);
        if state.settings_revision() != revision {
            if let Some(Err(error)) = self
                .store
                .as_ref()
                .map(|store| store.save(&state.settings()))
            {
                match checkpoint {
                    Some(checkpoint) => {
                        state.rollback(checkpoint);
                        tracing::error!(%error, "change refused: the state file cannot be written");
                        return Err(Status::unavailable(format!(
                            "{error}; the change was not applied"
                        )));
                    }
                    None => tracing::error!(
                        %error,
                        "the state file cannot be written; the change applies until the control plane restarts"
                    ),
                }
            }
        }
        if state.version() != before {
            self.publish(&state);
        }
        outcome.map_err(convert::status)
    }

    fn publish(&self, state: &ClusterState) {
        // `send_replace` stores the value even when no node watches yet.
        self.steering.send_replace(Arc::new(state.steering()));
    }
}

/// Resolves once the shutdown flag is raised (or its sender is gone).
pub(crate) async fn stop_requested(flag: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, never held across an await.
    let _ = flag.wait_for(|stop| *stop).await;
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Forwards `stream` to a client until it ends, the client goes away or the
/// control plane shuts down (so graceful shutdown is never held up by a stream).
fn until_shutdown<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    mut shutdown: watch::Receiver<bool>,
) -> BoxStream<T> {
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER_MAX);
    tokio::spawn(async move {
        tokio::pin!(stream);
        loop {
            tokio::select! {
                item = stream.next() => {
                    let Some(item) = item else { break };
                    if sender.send(item).await.is_err() {
                        break;
                    }
                }
                () = stop_requested(&mut shutdown) => break,
                () = sender.closed() => break,
            }
        }
    });
    Box::pin(ReceiverStream::new(receiver))
}

struct ControlService(Arc<Shared>);
struct NodeServiceImpl(Arc<Shared>);

/// A node id from the wire, by the name rule: a malformed one is INVALID_ARGUMENT naming `field`, before any
/// lookup (a well-formed id that is not registered is NOT_FOUND later).
fn node_id(field: &str, id: String) -> Result<NodeId, Status> {
    let id = NodeId(id);
    validate_node_id(field, &id).map_err(convert::status)?;
    Ok(id)
}

impl ControlService {
    /// Drain and Undrain: authorize, then set the flag.
    fn set_drained<T>(
        &self,
        request: Request<T>,
        node_id_of: impl FnOnce(T) -> String,
        drained: bool,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.0
            .auth
            .check_request(CallClass::OperatorMutation, &request)?;
        let id = node_id("node_id", node_id_of(request.into_inner()))?;
        let version = self.0.mutate(Durability::Required, |state, _| {
            state.set_drained(&id, drained)
        })?;
        tracing::info!(node = %id, drained, steering_version = version, "drain changed");
        Ok(Response::new(pb::DrainResponse {
            steering_version: version,
        }))
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self.0.read(|state, now| state.nodes(now));
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.iter().map(convert::node_view_to_pb).collect(),
        }))
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::GetNodeResponse>, Status> {
        let id = node_id("node_id", request.into_inner().node_id)?;
        let (view, shards) = self
            .0
            .read(|state, now| state.node(now, &id))
            .map_err(convert::status)?;
        Ok(Response::new(pb::GetNodeResponse {
            node: Some(convert::node_view_to_pb(&view)),
            shards: shards.iter().map(convert::shard_load_to_pb).collect(),
        }))
    }

    async fn get_cluster_load(
        &self,
        _request: Request<pb::GetClusterLoadRequest>,
    ) -> Result<Response<pb::ClusterLoad>, Status> {
        let load = self.0.read(|state, now| state.cluster_load(now));
        Ok(Response::new(convert::cluster_load_to_pb(&load)))
    }

    type WatchClusterLoadStream = BoxStream<pb::ClusterLoad>;

    async fn watch_cluster_load(
        &self,
        request: Request<pb::WatchClusterLoadRequest>,
    ) -> Result<Response<Self::WatchClusterLoadStream>, Status> {
        let request = request.into_inner();
        let interval = match request.interval_ms {
            0 => WATCH_INTERVAL_DEFAULT,
            ms => Duration::from_millis(ms),
        };
        if !(WATCH_INTERVAL_MIN..=WATCH_INTERVAL_MAX).contains(&interval) {
            return Err(Status::invalid_argument(format!(
                "invalid interval_ms: {} is outside {}..={}",
                request.interval_ms,
                WATCH_INTERVAL_MIN.as_millis(),
                WATCH_INTERVAL_MAX.as_millis()
            )));
        }
        let count = usize::try_from(request.count).unwrap_or(usize::MAX);
        let count = if count == 0 { usize::MAX } else { count };
        let shared = Arc::clone(&self.0);
        let ticks = IntervalStream::new(tokio::time::interval(interval));
        let loads = ticks.take(count).map(move |_| {
            let load = shared.read(|state, now| state.cluster_load(now));
            Ok(convert::cluster_load_to_pb(&load))
        });
        Ok(Response::new(until_shutdown(
            loads,
            self.0.shutdown.clone(),
        )))
    }

    async fn get_policy(
        &self,
        _request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let view = self.0.read(|state, _| state.policy());
        Ok(Response::new(convert::policy_view_to_pb(&view)))
    }

    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        self.0
            .auth
            .check_request(CallClass::OperatorMutation, &request)?;
        let request = request.into_inner();
        let update = convert::policy_update(request.policy)?;
        if request.node_weights.len() > NODES_MAX {
            return Err(Status::invalid_argument(format!(
                "invalid node_weights: {} entries, at most {NODES_MAX}",
                request.node_weights.len()
            )));
        }
        let mut weights = Vec::with_capacity(request.node_weights.len());
        for (index, weight) in request.node_weights.into_iter().enumerate() {
            let id = node_id(&format!("node_weights[{index}].node_id"), weight.node_id)?;
            weights.push((id, weight.weight));
        }
        let version = self.0.mutate(Durability::Required, |state, _| {
            state.set_policy(update, weights)
        })?;
        tracing::info!(steering_version = version, "policy changed");
        Ok(Response::new(pb::SetPolicyResponse {
            steering_version: version,
        }))
    }

    async fn list_targets(
        &self,
        request: Request<pb::ListTargetsRequest>,
    ) -> Result<Response<pb::ListTargetsResponse>, Status> {
        let limit = request.into_inner().limit as usize;
        let targets = self
            .0
            .read(|state, _| state.targets(limit))
            .map_err(convert::status)?;
        Ok(Response::new(pb::ListTargetsResponse {
            targets: targets.iter().map(convert::target_view_to_pb).collect(),
        }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.set_drained(request, |request| request.node_id, true)
    }

    async fn undrain(
        &self,
        request: Request<pb::UndrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.set_drained(request, |request| request.node_id, false)
    }

    async fn list_containers(
        &self,
        _request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let views = self.0.read(|state, _| state.containers());
        Ok(Response::new(pb::ListContainersResponse {
            containers: views.iter().map(convert::container_view_to_pb).collect(),
        }))
    }

    async fn set_container(
        &self,
        request: Request<pb::SetContainerRequest>,
    ) -> Result<Response<pb::SetContainerResponse>, Status> {
        self.0
            .auth
            .check_request(CallClass::OperatorMutation, &request)?;
        let request = request.into_inner();
        let container = convert::container("container", request.container)?;
        let name = container.name.0.clone();
        let version = self.0.mutate(Durability::Required, |state, _| {
            state.set_container(container, request.create)
        })?;
        tracing::info!(container = %name, steering_version = version, "container changed");
        Ok(Response::new(pb::SetContainerResponse {
            steering_version: version,
        }))
    }

    async fn reload_node(
        &self,
        request: Request<pb::ReloadNodeRequest>,
    ) -> Result<Response<pb::ReloadNodeResponse>, Status> {
        self.0
            .auth
            .check_request(CallClass::OperatorMutation, &request)?;
        let id = node_id("node_id", request.into_inner().node_id)?;
        if !self.0.read(|state, _| state.contains_node(&id)) {
            return Err(convert::status(StateError::NodeNotFound(id.0)));
        }
        let result = self.0.reloads.reload(&id).await?;
        if !result.ok {
            tracing::warn!(node = %id, error = %result.error, "node reload refused");
            return Err(Status::failed_precondition(result.error));
        }
        tracing::info!(node = %id, applied = ?result.applied, kept = ?result.kept, "node reloaded");
        Ok(Response::new(pb::ReloadNodeResponse {
            applied: result.applied,
            kept: result.kept,
        }))
    }

    async fn profile_node(
        &self,
        request: Request<pb::ProfileNodeRequest>,
    ) -> Result<Response<pb::ProfileNodeResponse>, Status> {
        // It costs the node CPU and shows its code: the same rule as a change.
        self.0
            .auth
            .check_request(CallClass::OperatorMutation, &request)?;
        let request = request.into_inner();
        let duration = larder_profile::validate_seconds(request.seconds)
            .map_err(|error| Status::invalid_argument(format!("invalid seconds: {error}")))?;
        let id = node_id("node_id", request.node_id)?;
        let (view, _) = self
            .0
            .read(|state, now| state.node(now, &id))
            .map_err(convert::status)?;
        if let Some(shard) = request.shard {
            if shard >= view.info.cores {
                return Err(Status::invalid_argument(format!(
                    "invalid shard: {shard} is outside 0..{} (node {id} has {} cores)",
                    view.info.cores, view.info.cores
                )));
            }
        }
        if view.state != NodeState::Up {
            return Err(Status::unavailable(format!("node {id} is down")));
        }
        let pending = self.0.profiles.order(
            &id,
            ProfileRequest {
                shard: request.shard.map(ShardId),
                seconds: request.seconds,
            },
        )?;
        tracing::info!(node = %id, shard = ?request.shard, seconds = request.seconds, "profile ordered");
        let mut shutdown = self.0.shutdown.clone();
        let profile = tokio::select! {
            answer = pending.answer(duration + PROFILE_ANSWER_GRACE) => answer?,
            () = stop_requested(&mut shutdown) => {
                return Err(Status::unavailable("the control plane is shutting down"));
            }
        };
        Ok(Response::new(pb::ProfileNodeResponse {
            profile: Some(convert::profile_to_pb(&profile)),
        }))
    }
}

#[tonic::async_trait]
impl NodeService for NodeServiceImpl {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.0.auth.check_request(CallClass::Node, &request)?;
        let request = request.into_inner();
        let info = convert::node_info(request.node)?;
        let (node, http_address, cores) =
            (info.node_id.clone(), info.http_address.clone(), info.cores);
        let mut containers = Vec::with_capacity(request.containers.len());
        for item in request.containers {
            containers.push(convert::container("containers", Some(item))?);
        }
        let (steering, interval) = self.0.mutate(Durability::BestEffort, |state, now| {
            let steering = state.register(now, info, containers)?;
            Ok((steering, state.report_interval()))
        })?;
        tracing::info!(%node, %http_address, cores, "node registered");
        Ok(Response::new(pb::RegisterResponse {
            report_interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            steering: Some(convert::steering_to_pb(&steering)),
        }))
    }

    async fn report_load(
        &self,
        request: Request<Streaming<pb::LoadReport>>,
    ) -> Result<Response<pb::ReportLoadResponse>, Status> {
        self.0.auth.check_request(CallClass::Node, &request)?;
        let mut reports = request.into_inner();
        let mut shutdown = self.0.shutdown.clone();
        let mut accepted = 0;
        loop {
            let report = tokio::select! {
                report = reports.message() => report?,
                () = stop_requested(&mut shutdown) => {
                    return Err(Status::unavailable("the control plane is shutting down"));
                }
            };
            let Some(report) = report else { break };
            let report = convert::load_report(report);
            self.0.mutate(Durability::BestEffort, |state, now| {
                state.report(now, report)
            })?;
            accepted += 1;
        }
        Ok(Response::new(pb::ReportLoadResponse {
            reports_accepted: accepted,
        }))
    }

    async fn assign(
        &self,
        request: Request<pb::AssignRequest>,
    ) -> Result<Response<pb::AssignResponse>, Status> {
        self.0.auth.check_request(CallClass::Node, &request)?;
        let request = request.into_inner();
        let id = node_id("node_id", request.node_id)?;
        let now = self.0.clock.now();
        // Assign never changes the steering version: no publish, no down detection
        // (the sweeper runs it every report interval).
        let outcome = self.0.lock().assign(now, &id, request.targets);
        self.0
            .assignment_batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let assignments = outcome.map_err(|error| match error {
            AssignError::State(error) => convert::status(error),
            AssignError::NoLiveNode => Status::unavailable(error.to_string()),
        })?;
        Ok(Response::new(pb::AssignResponse {
            assignments: assignments
                .into_iter()
                .map(|assignment| pb::Assignment {
                    target: assignment.target,
                    node_ids: assignment.node_ids.into_iter().map(|id| id.0).collect(),
                })
                .collect(),
            ttl_ms: self.0.assign_ttl_ms,
        }))
    }

    type WatchReloadsStream = BoxStream<pb::ReloadCommand>;

    async fn watch_reloads(
        &self,
        request: Request<pb::WatchReloadsRequest>,
    ) -> Result<Response<Self::WatchReloadsStream>, Status> {
        self.0.auth.check_request(CallClass::Node, &request)?;
        let id = node_id("node_id", request.into_inner().node_id)?;
        if !self.0.read(|state, _| state.contains_node(&id)) {
            return Err(convert::status(StateError::NodeNotFound(id.0)));
        }
        let commands = ReceiverStream::new(self.0.reloads.watch(id)).map(Ok);
        Ok(Response::new(until_shutdown(
            commands,
            self.0.shutdown.clone(),
        )))
    }

    async fn reload_done(
        &self,
        request: Request<pb::ReloadResult>,
    ) -> Result<Response<pb::ReloadDoneResponse>, Status> {
        self.0.auth.check_request(CallClass::Node, &request)?;
        self.0.reloads.done(request.into_inner())?;
        Ok(Response::new(pb::ReloadDoneResponse {}))
    }

    type WatchProfileOrdersStream = BoxStream<pb::ProfileOrder>;

    async fn watch_profile_orders(
        &self,
        request: Request<pb::WatchProfileOrdersRequest>,
    ) -> Result<Response<Self::WatchProfileOrdersStream>, Status> {
        self.0.auth.check_request(CallClass::Node, &request)?;
        let id = node_id("node_id", request.into_inner().node_id)?;
        if !self.0.read(|state, _| state.contains_node(&id)) {
            return Err(convert::status(StateError::NodeNotFound(id.0)));
        }
        let orders = ReceiverStream::new(self.0.profiles.open_stream(id))
            .map(|order| Ok(convert::profile_order_to_pb(&order)));
        Ok(Response::new(until_shutdown(
            orders,
            self.0.shutdown.clone(),
        )))
    }

    async fn submit_profile(
        &self,
        request: Request<pb::SubmitProfileRequest>,
    ) -> Result<Response<pb::SubmitProfileResponse>, Status> {
        self.0.auth.check_request(CallClass::Node, &request)?;
        let request = request.into_inner();
        let id = node_id("node_id", request.node_id)?;
        let outcome = convert::profile_outcome(request.outcome)?;
        self.0.profiles.submit(&id, request.order_id, outcome)?;
        Ok(Response::new(pb::SubmitProfileResponse {}))
    }

    type WatchSteeringStream = BoxStream<pb::Steering>;

    async fn watch_steering(
        &self,
        request: Request<pb::WatchSteeringRequest>,
    ) -> Result<Response<Self::WatchSteeringStream>, Status> {
        self.0.auth.check_request(CallClass::Node, &request)?;
        let id = node_id("node_id", request.into_inner().node_id)?;
        if !self.0.read(|state, _| state.contains_node(&id)) {
            return Err(convert::status(StateError::NodeNotFound(id.0)));
        }
        let steering = WatchStream::new(self.0.steering.subscribe())
            .map(|steering| Ok(convert::steering_to_pb(&steering)));
        Ok(Response::new(until_shutdown(
            steering,
            self.0.shutdown.clone(),
        )))
    }
}

/// What the control plane's metrics show: the cluster as `GetCluster` sees it, the steering version, and the
/// `Assign` batches answered.
#[derive(Clone, Debug)]
pub struct ControlStats {
    pub load: ClusterLoad,
    pub steering_version: u64,
    pub assignment_batches: u64,
}

/// Reads [`ControlStats`] from any thread. Each read takes the cluster state's lock once (as a gRPC query does):
/// the control plane's handlers take it, no data-plane shard does.
#[derive(Clone)]
pub struct ControlStatsReader(Arc<Shared>);

impl std::fmt::Debug for ControlStatsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlStatsReader")
    }
}

impl ControlStatsReader {
    pub fn stats(&self) -> ControlStats {
        let (load, steering_version) = self
            .0
            .read(|state, now| (state.cluster_load(now), state.version()));
        ControlStats {
            load,
            steering_version,
            assignment_batches: self
                .0
                .assignment_batches
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Entry point: runs a control plane on its own thread.
#[derive(Debug)]
pub struct ControlPlane;

/// A running control plane. Dropping it without [`ControlHandle::shutdown`] also
/// stops it, without waiting.
pub struct ControlHandle {
    local_addr: SocketAddr,
    /// A duplicate of the serving socket, for a process that hands it to its successor.
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), ControlError>>>,
}

impl std::fmt::Debug for ControlHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ControlHandle {
    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listening socket the server accepts on (a duplicate: `try_clone` it to pass it on).
    pub fn listener(&self) -> &std::net::TcpListener {
        &self.listener
    }

    /// Sets the policy's kind (its parameters keep their values), as SetPolicy would; returns the steering
    /// version. `larder control` calls it when a reload of its file changed `policy`.
    pub fn set_policy_kind(&self, kind: larder_lard::PolicyKind) -> Result<u64, StateError> {
        let update = crate::state::PolicyUpdate {
            kind: Some(kind),
            ..crate::state::PolicyUpdate::default()
        };
        self.shared
            .mutate(Durability::Required, |state, _| {
                state.set_policy(update, Vec::new())
            })
            .map_err(|status| StateError::Invalid {
                field: "policy".to_string(),
                reason: status.message().to_string(),
            })
    }

    /// The bearer token the next call is checked against (see [`crate::auth`]).
    pub fn set_token(&self, token: Option<String>) {
        self.shared.auth.set_token(token);
    }

    /// A reader of the control plane's figures for its metrics listener (any thread).
    pub fn stats_reader(&self) -> ControlStatsReader {
        ControlStatsReader(Arc::clone(&self.shared))
    }

    /// Stops gracefully (see the module docs) and waits for the thread.
    pub fn shutdown(mut self) -> Result<(), ControlError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ControlError> {
        if let Some(stop) = self.stop.take() {
            // The thread may already have ended (a serve error); then there is no one to tell.
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| ControlError::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn default_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or(1)
}

impl ControlPlane {
    /// Starts a control plane on a new thread; returns once it listens.
    pub fn spawn(config: ControlConfig) -> Result<ControlHandle, ControlError> {
        ControlPlane::start(config, None)
    }

    /// Starts a control plane serving on `listener`, bound already (by the process this one took over from);
    /// `config.listen` is not bound.
    pub fn spawn_on(
        config: ControlConfig,
        listener: std::net::TcpListener,
    ) -> Result<ControlHandle, ControlError> {
        ControlPlane::start(config, Some(listener))
    }

    fn start(
        config: ControlConfig,
        listener: Option<std::net::TcpListener>,
    ) -> Result<ControlHandle, ControlError> {
        if !(Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&config.assign_ttl) {
            return Err(ControlError::Config(StateError::Invalid {
                field: "assign_ttl".to_string(),
                reason: format!("{:?} is outside 1 ms..=1 h", config.assign_ttl),
            }));
        }
        let store = config.state_file.clone().map(StateFile::new);
        let saved = match &store {
            Some(store) => store.load()?,
            None => None,
        };
        if let (Some(store), Some(saved)) = (&store, &saved) {
            if saved.policy != config.policy {
                tracing::warn!(
                    state_file = %store.path().display(),
                    configured = %config.policy.kind,
                    saved = %saved.policy.kind,
                    "the policy saved in the state file (a run-time change) replaces the configured one"
                );
            }
            tracing::info!(
                state_file = %store.path().display(),
                policy = %saved.policy.kind,
                containers = saved.containers.len(),
                node_settings = saved.nodes.len(),
                "restored the operator's settings"
            );
        }
        let state = ClusterState::new(StateConfig {
            epoch: config.epoch.unwrap_or_else(default_epoch),
            report_interval: config.report_interval,
            down_after_intervals: config.down_after_intervals,
            policy: config.policy.clone(),
            containers: config.containers.clone(),
            saved,
        })?;
        let (bound_sender, bound_receiver) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("larder-control".to_string())
            .spawn(move || {
                serve_on_this_thread(config, listener, state, store, bound_sender, stopped)
            })
            .map_err(ControlError::Runtime)?;
        match bound_receiver.recv() {
            Ok((local_addr, listener, shared)) => Ok(ControlHandle {
                local_addr,
                listener,
                shared,
                stop: Some(stop),
                thread: Some(thread),
            }),
            // The thread ended before binding: its result says why.
            Err(_) => match thread.join() {
                Ok(Err(error)) => Err(error),
                Ok(Ok(())) | Err(_) => Err(ControlError::Panicked),
            },
        }
    }
}

/// The bound address, a duplicate of the listening socket and the shared state, sent back to `spawn`.
type Bound = (SocketAddr, std::net::TcpListener, Arc<Shared>);

fn serve_on_this_thread(
    config: ControlConfig,
    listener: Option<std::net::TcpListener>,
    state: ClusterState,
    store: Option<StateFile>,
    bound: std::sync::mpsc::Sender<Bound>,
    stopped: oneshot::Receiver<()>,
) -> Result<(), ControlError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("larder-control")
        .build()
        .map_err(ControlError::Runtime)?;
    let outcome = runtime.block_on(serve(config, listener, state, store, bound, stopped));
    // Step 2 of shutdown: tasks still alive (streams past the grace) die with the runtime.
    runtime.shutdown_background();
    outcome
}

async fn serve(
    config: ControlConfig,
    listener: Option<std::net::TcpListener>,
    state: ClusterState,
    store: Option<StateFile>,
    bound: std::sync::mpsc::Sender<Bound>,
    stopped: oneshot::Receiver<()>,
) -> Result<(), ControlError> {
    let bind_error = |source| ControlError::Bind {
        address: config.listen,
        source,
    };
    let listener = match listener {
        Some(listener) => {
            listener.set_nonblocking(true).map_err(bind_error)?;
            tokio::net::TcpListener::from_std(listener).map_err(bind_error)?
        }
        None => tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(bind_error)?,
    };
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let duplicate = std::os::fd::AsFd::as_fd(&listener)
        .try_clone_to_owned()
        .map(std::net::TcpListener::from)
        .map_err(bind_error)?;

    let (steering, _) = watch::channel(Arc::new(state.steering()));
    let (shutdown_sender, shutdown) = watch::channel(false);
    let report_interval = state.report_interval();
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        steering,
        clock: Arc::clone(&config.clock),
        auth: Authorizer::new(config.token.clone()),
        shutdown,
        assign_ttl_ms: u64::try_from(config.assign_ttl.as_millis()).unwrap_or(u64::MAX),
        store,
        reloads: crate::reload::ReloadRelay::default(),
        assignment_batches: std::sync::atomic::AtomicU64::new(0),
        profiles: ProfileDesk::default(),
    });

    let reflection_v1 = reflection_builder()
        .build_v1()
        .map_err(|error| ControlError::Reflection(error.to_string()))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|error| ControlError::Reflection(error.to_string()))?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ControlServer<ControlService>>()
        .await;
    health_reporter
        .set_serving::<NodeServiceServer<NodeServiceImpl>>()
        .await;

    // Down detection runs even when nobody queries.
    let sweeper_shared = Arc::clone(&shared);
    let mut sweeper_shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(report_interval);
        loop {
            tokio::select! {
                _ = ticks.tick() => sweeper_shared.read(|_, _| ()),
                () = stop_requested(&mut sweeper_shutdown) => break,
            }
        }
    });

    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ControlServer::new(ControlService(Arc::clone(&shared))))
        .add_service(NodeServiceServer::new(NodeServiceImpl(Arc::clone(&shared))));
    if bound
        .send((local_addr, duplicate, Arc::clone(&shared)))
        .is_err()
    {
        return Ok(()); // The spawner is gone: nobody can stop us, so do not start.
    }
    let (graceful_sender, graceful) = oneshot::channel::<()>();
    let server = router.serve_with_incoming_shutdown(incoming, async {
        let _ = graceful.await;
    });
    tokio::pin!(server);
    tokio::select! {
        outcome = &mut server => return outcome.map_err(ControlError::from),
        _ = stopped => {}
    }
    // Shutdown steps 1 and 2.
    let _ = shutdown_sender.send(true);
    let _ = graceful_sender.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(outcome) => outcome.map_err(ControlError::from),
        Err(_) => Ok(()),
    }
}

/// Both reflection versions describe the same files: larder.v1, grpc.health.v1 and
/// both reflection protocols (so either one lists every service).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(larder_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}
