//! Steering latency: from an operator's SetPolicy call (client side, before the
//! request is sent) to `NodeHooks::apply` running with that version on a
//! `NodeAgent`, over loopback. Median of `ROUNDS` (default 100) changes.
//!
//! Run: `cargo bench -p larder-control --bench control_steering [-- ROUNDS]`
//! Target: median <= 200 ms.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use larder_control::{
    ControlConfig, ControlPlane, NodeAgent, NodeHooks, NodeId, NodeInfo, NodeLoad, Steering,
};
use larder_proto::v1 as pb;
use larder_proto::v1::control_client::ControlClient;

/// Longest wait for one change to arrive before the run is declared failed.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

struct TimingHooks(mpsc::Sender<(u64, Instant)>);

impl NodeHooks for TimingHooks {
    fn load_report(&mut self) -> NodeLoad {
        NodeLoad::default()
    }

    fn apply(&mut self, steering: &Steering) {
        let _ = self.0.send((steering.version, Instant::now()));
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(100);
    let plane = ControlPlane::spawn(ControlConfig::new("127.0.0.1:0".parse().expect("address")))
        .expect("control plane");
    let (applied_sender, applied) = mpsc::channel();
    let node = NodeInfo {
        node_id: NodeId("bench-node".into()),
        http_address: "127.0.0.1:8080".into(),
        cores: 1,
        cache_bytes_budget: 1,
    };
    let agent =
        NodeAgent::spawn(plane.local_addr(), node, TimingHooks(applied_sender)).expect("agent");
    // The first steering arrives with registration.
    applied
        .recv_timeout(ROUND_TIMEOUT)
        .expect("agent registers");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let mut control = runtime
        .block_on(ControlClient::connect(format!(
            "http://{}",
            plane.local_addr()
        )))
        .expect("connect");
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let t_high = 65 + (round as u32 % 2);
        let start = Instant::now();
        let version = runtime
            .block_on(control.set_policy(pb::SetPolicyRequest {
                policy: Some(pb::Policy {
                    lard: Some(pb::LardParams {
                        t_high: Some(t_high),
                        ..pb::LardParams::default()
                    }),
                    ..pb::Policy::default()
                }),
                node_weights: vec![],
            }))
            .expect("SetPolicy")
            .into_inner()
            .steering_version;
        loop {
            let (applied_version, at) = applied
                .recv_timeout(ROUND_TIMEOUT)
                .expect("the change reaches the node");
            if applied_version >= version {
                latencies.push(at.duration_since(start));
                break;
            }
        }
    }
    agent.shutdown();
    plane.shutdown().expect("shutdown");
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "control_steering: {rounds} rounds, SetPolicy -> NodeHooks::apply: median {:?}, p90 {:?}, max {:?} (target median <= 200 ms)",
        at(0.5),
        at(0.9),
        latencies[latencies.len() - 1]
    );
}
