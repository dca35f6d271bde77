//! Steering latency against a real node: from an operator's SetPolicy call (client side, before the request is
//! sent) to the new policy in force on a running 2-shard node, through the whole `larder serve` wiring: the
//! embedded control plane, the node agent and the node's hooks (`larder/src/node_link.rs`, compiled in here so
//! the bench runs the very code `larder serve` runs) swapping the policy with `NodeSteer::set_policy`.
//!
//! Run: `cargo bench -p larder-micro --bench steering [-- ROUNDS]` (default 100 rounds, alternating wrr and ch).
//! Target: median ≤ 200 ms (issue 5). Baseline beside it: `cargo bench -p larder-control --bench
//! control_steering` stops at `NodeHooks::apply` with hooks that do nothing.
//!
//! "In force" is observed by polling `NodeSteer::policy_name` every 20 µs from this thread, so the figure
//! includes up to 20 µs of polling delay.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use larder_control::proto::v1 as pb;
use larder_control::{convert, CtlClient};
use larder_lard::{PolicyConfig, PolicyKind};
use larder_runtime::ShardSelection;
use larder_server::{Node, ServeConfig};

#[allow(dead_code, unused_imports)] // the bench uses the link, not the flag parsing (nor the tests' imports)
#[path = "../../../larder/src/node_link.rs"]
mod node_link;

/// Longest wait for one change before the run is declared failed.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two looks at the node's policy.
const POLL_PAUSE: Duration = Duration::from_micros(20);

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(100);
    let root = tempfile::tempdir().expect("tempdir");
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = ServeConfig {
        listen: loopback,
        cores: ShardSelection::Count(2),
        policy: PolicyKind::Wrr,
        root: root.path().to_path_buf(),
        cache_mb: 4,
        ..ServeConfig::default()
    };
    let node = Node::start(config.clone()).expect("node starts");
    let mode = node_link::ControlMode::Embedded {
        listen: loopback,
        required: true,
        state_file: None,
    };
    let link = node_link::NodeLink::start(mode, &node, &config, None, None).expect("control link");
    let control = link.control_addr().expect("embedded control plane");
    let mut ctl = CtlClient::connect(&control.to_string(), None).expect("ctl connects");
    let steer = node.steer();
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let kind = if round % 2 == 0 {
            PolicyKind::ConsistentHash
        } else {
            PolicyKind::Wrr
        };
        let start = Instant::now();
        ctl.set_policy(pb::SetPolicyRequest {
            policy: Some(convert::policy_to_pb(&PolicyConfig::new(kind))),
            node_weights: Vec::new(),
        })
        .expect("SetPolicy");
        while steer.policy_name() != kind.as_str() {
            assert!(
                start.elapsed() < ROUND_TIMEOUT,
                "round {round}: {kind} not in force after {ROUND_TIMEOUT:?}"
            );
            std::thread::sleep(POLL_PAUSE);
        }
        latencies.push(start.elapsed());
    }
    drop(ctl);
    node.shutdown();
    node.join().expect("node stops");
    link.shutdown().expect("link stops");
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "steering: {rounds} rounds on a 2-shard node, SetPolicy -> policy in force: median {:?}, p90 {:?}, max {:?} (target median <= 200 ms)",
        at(0.5),
        at(0.9),
        latencies[latencies.len() - 1]
    );
}
