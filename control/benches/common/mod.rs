//! Setup shared by the control-plane benches (`control_assign`, `control_ingest`);
//! each bench is its own target and includes this file with `mod common;`.
//!
//! Both measure the same two columns side by side: the state alone
//! ([`state_with_nodes`]) and a real control plane on loopback with clients on a
//! current-thread runtime of their own ([`control_plane`]). Nodes report every
//! 60 s ([`REPORT_INTERVAL`]), so no node goes down mid-run, however slow the run.

use std::future::Future;
use std::ops::AddAssign;
use std::time::{Duration, Instant};

use larder_control::state::{ClusterState, StateConfig};
use larder_control::{convert, Container, ControlConfig, ControlHandle, ControlPlane, NodeInfo};
use larder_proto::v1 as pb;
use larder_proto::v1::node_service_client::NodeServiceClient;
use tonic::transport::Channel;

/// Report interval of every bench setup: long enough that no node goes down mid-run.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// A state with the default policy and container, `nodes` registered at `now`.
pub fn state_with_nodes(
    epoch: u64,
    now: Instant,
    nodes: impl IntoIterator<Item = NodeInfo>,
) -> ClusterState {
    let mut state = ClusterState::new(StateConfig {
        epoch,
        report_interval: REPORT_INTERVAL,
        down_after_intervals: 5,
        policy: Default::default(),
        containers: vec![Container::default_container()],
        saved: None,
    })
    .expect("state");
    for node in nodes {
        state.register(now, node, vec![]).expect("register");
    }
    state
}

/// A control plane on 127.0.0.1 (any port) and a current-thread runtime for its clients.
/// `epoch: None` lets the plane pick its own.
pub fn control_plane(epoch: Option<u64>) -> (ControlHandle, tokio::runtime::Runtime) {
    let mut config = ControlConfig::new("127.0.0.1:0".parse().expect("address"));
    config.report_interval = REPORT_INTERVAL;
    config.epoch = epoch;
    let plane = ControlPlane::spawn(config).expect("control plane");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    (plane, runtime)
}

/// Registers `node` over `NodeService.Register`, with no containers of its own.
pub async fn register(client: &mut NodeServiceClient<Channel>, node: &NodeInfo) {
    client
        .register(pb::RegisterRequest {
            node: Some(convert::node_info_to_pb(node)),
            containers: vec![],
        })
        .await
        .expect("register");
}

/// Runs `clients` as concurrent tasks on `runtime` (all spawned before any is
/// awaited) and adds up what they return.
pub fn run_clients<F>(
    runtime: &tokio::runtime::Runtime,
    clients: impl IntoIterator<Item = F>,
) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: AddAssign + Default + Send + 'static,
{
    runtime.block_on(async {
        let tasks: Vec<_> = clients.into_iter().map(tokio::spawn).collect();
        let mut total = F::Output::default();
        for task in tasks {
            total += task.await.expect("client task");
        }
        total
    })
}
