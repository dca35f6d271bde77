//! Distributed mode's link (`larder serve --cluster`): the [`AssignFeeder`] that fills the node's
//! [`Directory`](larder_server::cluster::Directory) with target assignments from the control plane.
//!
//! # Start-up ([`ClusterLink::start`], after the node serves and its control link runs)
//! 1. The control plane is the one `--join` names, or the embedded one; with neither (the default embedded
//!    address was taken) the node refuses to start: a cluster node without a control plane would serve every
//!    target locally and split the cluster's cache for nothing. (`--cluster --no-control` is refused by clap.)
//! 2. The node id is the node's HTTP address, as its agent registers it, so peers can connect to it directly
//!    (so `--listen 0.0.0.0:…` is refused in cluster mode: peers could not reach that address).
//! 3. The feeder thread asks, every 5 ms, for at most 256 wanted paths ([`Directory::take_wanted`]) and stores
//!    the answers with their TTL ([`Directory::apply`], on the directory's clock). Until the agent has
//!    registered the node the control plane answers NOT_FOUND and the batch is lost; the directory asks again
//!    for those paths after its `ASK_AGAIN_MS` (500 ms).
//!
//! # Shutdown ([`ClusterLink::shutdown`], after the node has stopped)
//! The feeder stops (at most one Assign call's 1 s timeout), then the node's forwarding counters are logged.
//!
//! [`Directory::take_wanted`]: larder_server::cluster::Directory::take_wanted
//! [`Directory::apply`]: larder_server::cluster::Directory::apply

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use larder_control::{AssignFeeder, AssignFeederConfig, AssignFeederHandle, NodeId};
use larder_server::cluster::Cluster;
use larder_server::Node;

use crate::node_link::{ControlMode, NodeLink};

/// The running feeder of a cluster node.
pub struct ClusterLink {
    feeder: AssignFeederHandle,
    cluster: Arc<Cluster>,
}

impl ClusterLink {
    /// Start-up steps 1-3 (module docs). `node` must have been started with `config.cluster`.
    pub fn start(mode: ControlMode, link: &NodeLink, node: &Node) -> anyhow::Result<ClusterLink> {
        let control: SocketAddr = match mode {
            ControlMode::Join(addr) => addr,
            ControlMode::Embedded { listen, .. } => link.control_addr().with_context(|| {
                format!("--cluster needs a control plane, and none runs on {listen} (pass --join ADDR or --control ADDR)")
            })?,
            ControlMode::Off => anyhow::bail!("--cluster cannot be used with --no-control"),
        };
        let cluster = node
            .cluster()
            .context("the node was started without cluster mode")?;
        anyhow::ensure!(
            !node.local_addr().ip().is_unspecified(),
            "--cluster needs --listen on a specific IP address: it is the node id peers connect to, not {}",
            node.local_addr()
        );
        let node_id = node.local_addr().to_string();
        let config = AssignFeederConfig::new(control, NodeId(node_id.clone()));
        let source_cluster = Arc::clone(&cluster);
        let sink_cluster = Arc::clone(&cluster);
        let feeder = AssignFeeder::spawn(
            config,
            move |n| source_cluster.directory().take_wanted(n),
            move |assignments, ttl_ms| {
                let now_ms = sink_cluster.now_ms();
                sink_cluster.directory().apply(assignments, ttl_ms, now_ms);
            },
        )
        .context("starting the assignment feeder")?;
        println!("larder: cluster node {node_id}, assignments from {control}");
        Ok(ClusterLink { feeder, cluster })
    }

    /// Shutdown (module docs).
    pub fn shutdown(self) {
        let feeder = self.feeder.stats();
        self.feeder.shutdown();
        let stats = self.cluster.stats();
        tracing::info!(
            forwards = stats.forwards,
            forward_failures = stats.forward_failures,
            fallbacks = stats.fallbacks,
            forwarded_in = stats.forwarded_in,
            bad_gateway = stats.bad_gateway,
            directory_entries = stats.directory.entries,
            wanted_dropped = stats.directory.wanted_dropped,
            assign_calls = feeder.calls_answered,
            "cluster link stopped"
        );
    }
}
