//! Helpers shared by the integration tests: a control plane on loopback, node
//! hooks that record what they were told, and bounded waits on conditions.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder_control::{
    ContainerLoad, ContainerName, ControlConfig, ControlHandle, ControlPlane, NodeHooks, NodeId,
    NodeInfo, NodeLoad, ShardId, ShardLoad, Steering, TargetLoad,
};
use larder_proto::v1 as pb;
use larder_proto::v1::control_client::ControlClient;
use tonic::transport::Channel;
use tonic_reflection::pb::v1 as reflection_v1;

/// Longest wait for any asynchronous condition in these tests.
pub const WAIT_MAX: Duration = Duration::from_secs(20);
/// Poll period of [`wait_until`].
const POLL: Duration = Duration::from_millis(5);

/// Polls `condition` until it holds; panics naming `what` after [`WAIT_MAX`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT_MAX:?} waiting for: {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Async twin of [`wait_until`] for conditions that need a gRPC call.
pub async fn wait_until_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT_MAX;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT_MAX:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `probe` until it yields a value; panics naming `what` after [`WAIT_MAX`].
pub async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT_MAX:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

pub fn loopback_any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

pub fn start(config: ControlConfig) -> ControlHandle {
    ControlPlane::spawn(config).expect("control plane starts")
}

pub fn start_default() -> ControlHandle {
    start(ControlConfig::new(loopback_any_port()))
}

pub async fn channel(address: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connects to the control plane")
}

pub async fn control_client(address: SocketAddr) -> ControlClient<Channel> {
    ControlClient::new(channel(address).await)
}

pub fn node_info(id: &str, cores: u32) -> NodeInfo {
    NodeInfo {
        node_id: NodeId(id.to_string()),
        http_address: "127.0.0.1:8080".to_string(),
        cores,
        cache_bytes_budget: 64 << 20,
    }
}

/// The load every [`RecordingHooks`] reports: shard `s` has `10 + s` connections.
pub fn fixed_load(cores: u32) -> NodeLoad {
    NodeLoad {
        shards: (0..cores)
            .map(|shard| ShardLoad {
                shard: ShardId(shard),
                active_connections: 10 + u64::from(shard),
                requests_per_second: 100.0,
                cache_hits: 7,
                cpu_time_us: 1_000,
                containers: vec![ContainerLoad {
                    container: ContainerName("default".into()),
                    cpu_time_us: 500,
                    rejections: 2,
                    poll_cpu_time_us: 400,
                    throttles: 1,
                    ..ContainerLoad::default()
                }],
                ..ShardLoad::default()
            })
            .collect(),
        hot_targets: vec![TargetLoad {
            target: "/index.html".into(),
            requests_per_second: 50.0,
            shards: vec![ShardId(0)],
        }],
    }
}

/// What a node was told, shared with the test.
#[derive(Debug, Default)]
pub struct Record {
    pub applied: Vec<Steering>,
    pub connection_changes: Vec<bool>,
    /// Reloads asked for (`ReloadNode`); each answers [`reload_outcome`].
    pub reloads: u32,
}

/// What every [`RecordingHooks`] reload answers.
pub fn reload_outcome() -> larder_control::ReloadOutcome {
    larder_control::ReloadOutcome {
        applied: vec!["containers.default.shares".to_string()],
        kept: vec!["listen: kept 127.0.0.1:8080 (the file says 127.0.0.1:9090)".to_string()],
    }
}

/// Hooks that report [`fixed_load`], record every steering and count reloads.
#[derive(Clone, Debug)]
pub struct RecordingHooks {
    pub cores: u32,
    pub record: Arc<Mutex<Record>>,
}

impl RecordingHooks {
    pub fn new(cores: u32) -> RecordingHooks {
        RecordingHooks {
            cores,
            record: Arc::default(),
        }
    }

    pub fn applied(&self) -> Vec<Steering> {
        self.record.lock().unwrap().applied.clone()
    }

    pub fn last_applied(&self) -> Option<Steering> {
        self.record.lock().unwrap().applied.last().cloned()
    }

    pub fn connection_changes(&self) -> Vec<bool> {
        self.record.lock().unwrap().connection_changes.clone()
    }
}

impl NodeHooks for RecordingHooks {
    fn load_report(&mut self) -> NodeLoad {
        fixed_load(self.cores)
    }

    fn apply(&mut self, steering: &Steering) {
        self.record.lock().unwrap().applied.push(steering.clone());
    }

    fn reload(&mut self) -> Result<larder_control::ReloadOutcome, larder_control::ReloadRefused> {
        self.record.lock().unwrap().reloads += 1;
        Ok(reload_outcome())
    }

    /// A node whose kernel refuses sampling, as `kernel.perf_event_paranoid = 4` does.
    fn profile(&mut self, request: larder_control::ProfileRequest) -> larder_control::ProfileJob {
        let _ = request;
        Box::new(|| {
            Err(larder_control::ProfileFailure::new(
                larder_control::ProfileFailureKind::PermissionDenied,
                "kernel.perf_event_paranoid = 4; user-space samples need <= 2, or CAP_PERFMON",
            ))
        })
    }

    fn connection_changed(&mut self, connected: bool) {
        self.record
            .lock()
            .unwrap()
            .connection_changes
            .push(connected);
    }
}

/// One reflection exchange over v1.
pub async fn reflect(
    client: &mut reflection_v1::server_reflection_client::ServerReflectionClient<Channel>,
    request: reflection_v1::server_reflection_request::MessageRequest,
) -> reflection_v1::server_reflection_response::MessageResponse {
    let request = reflection_v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner();
    answers
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer")
        .message_response
        .expect("answer has a body")
}

/// What an operator sees of the state: the policy (with weights and the steering version), the containers and
/// the nodes; compared before and after a rejected call.
pub type Snapshot = (
    pb::GetPolicyResponse,
    pb::ListContainersResponse,
    pb::ListNodesResponse,
);

/// The state as GetPolicy, ListContainers and ListNodes show it (report ages, which move with time, zeroed).
pub async fn snapshot(control: &mut ControlClient<Channel>) -> Snapshot {
    let policy = control
        .get_policy(pb::GetPolicyRequest {})
        .await
        .expect("GetPolicy");
    let containers = control
        .list_containers(pb::ListContainersRequest {})
        .await
        .expect("ListContainers");
    let mut nodes = control
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("ListNodes")
        .into_inner();
    for node in &mut nodes.nodes {
        node.last_report_age_ms = 0; // Moves with time; not state.
    }
    (policy.into_inner(), containers.into_inner(), nodes)
}

/// One call of every `larder.v1.Control` method, for table-driven tests.
#[derive(Clone, Debug)]
pub enum Call {
    ListNodes,
    GetNode(String),
    GetClusterLoad,
    WatchClusterLoad(pb::WatchClusterLoadRequest),
    GetPolicy,
    SetPolicy(pb::SetPolicyRequest),
    ListTargets(u32),
    Drain(String),
    Undrain(String),
    ListContainers,
    SetContainer(pb::SetContainerRequest),
    ReloadNode(String),
}

impl Call {
    /// Makes the call; a stream (WatchClusterLoad) is accepted once its response starts.
    pub async fn invoke(self, control: &mut ControlClient<Channel>) -> Result<(), tonic::Status> {
        match self {
            Call::ListNodes => control.list_nodes(pb::ListNodesRequest {}).await.map(drop),
            Call::GetNode(node_id) => control
                .get_node(pb::GetNodeRequest { node_id })
                .await
                .map(drop),
            Call::GetClusterLoad => control
                .get_cluster_load(pb::GetClusterLoadRequest {})
                .await
                .map(drop),
            Call::WatchClusterLoad(request) => control.watch_cluster_load(request).await.map(drop),
            Call::GetPolicy => control.get_policy(pb::GetPolicyRequest {}).await.map(drop),
            Call::SetPolicy(request) => control.set_policy(request).await.map(drop),
            Call::ListTargets(limit) => control
                .list_targets(pb::ListTargetsRequest { limit })
                .await
                .map(drop),
            Call::Drain(node_id) => control.drain(pb::DrainRequest { node_id }).await.map(drop),
            Call::ReloadNode(node_id) => control
                .reload_node(pb::ReloadNodeRequest { node_id })
                .await
                .map(drop),
            Call::Undrain(node_id) => control
                .undrain(pb::UndrainRequest { node_id })
                .await
                .map(drop),
            Call::ListContainers => control
                .list_containers(pb::ListContainersRequest {})
                .await
                .map(drop),
            Call::SetContainer(request) => control.set_container(request).await.map(drop),
        }
    }
}
