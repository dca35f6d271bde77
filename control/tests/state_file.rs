//! The state file through the control plane's own API: a plane restarted on the same file lists the operator's
//! settings again and its agents apply them; a file that cannot be written refuses the change and leaves the
//! state as it was; a bad file stops the start with an error naming the file and the field.

mod common;

use std::path::Path;
use std::time::Duration;

use larder_control::{AgentConfig, ControlConfig, ControlError, ControlPlane, NodeAgent};
use larder_lard::PolicyKind;
use larder_proto::v1 as pb;
use larder_proto::v1::control_client::ControlClient;
use tonic::transport::Channel;
use tonic::Code;

use common::*;

fn with_state_file(address: std::net::SocketAddr, path: &Path) -> ControlConfig {
    let mut config = ControlConfig::new(address);
    config.state_file = Some(path.to_path_buf());
    config
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn gold(shares: u32) -> Option<pb::Container> {
    Some(pb::Container {
        name: "gold".to_string(),
        shares,
        limits: Some(pb::ContainerLimits::default()),
    })
}

async fn shares_of(control: &mut ControlClient<Channel>, name: &str) -> Option<u32> {
    let listed = control
        .list_containers(pb::ListContainersRequest {})
        .await
        .expect("ListContainers")
        .into_inner();
    listed
        .containers
        .iter()
        .filter_map(|status| status.container.as_ref())
        .find(|container| container.name == name)
        .map(|container| container.shares)
}

#[test]
fn a_restarted_plane_restores_policy_weights_drains_and_containers_and_its_agent_applies_them() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("state.json");
    let first = start(with_state_file(loopback_any_port(), &path));
    let address = first.local_addr();
    let hooks = RecordingHooks::new(1);
    let mut agent_config = AgentConfig::new(address, node_info("node-a", 1));
    agent_config.backoff_max = Duration::from_millis(200);
    let agent = NodeAgent::spawn_with(agent_config, hooks.clone()).expect("agent");
    wait_until("agent registers", || agent.stats().registrations == 1);
    assert!(!path.exists(), "no change yet, no file");

    let runtime = runtime();
    runtime.block_on(async {
        let mut control = control_client(address).await;
        control
            .set_policy(pb::SetPolicyRequest {
                policy: Some(pb::Policy {
                    kind: pb::PolicyKind::Wrr as i32,
                    ..pb::Policy::default()
                }),
                node_weights: vec![pb::NodeWeight {
                    node_id: "node-a".into(),
                    weight: 3,
                }],
            })
            .await
            .expect("SetPolicy");
        control
            .drain(pb::DrainRequest {
                node_id: "node-a".into(),
            })
            .await
            .expect("Drain");
        control
            .set_container(pb::SetContainerRequest {
                container: gold(4),
                create: true,
            })
            .await
            .expect("SetContainer");
    });
    assert!(path.exists(), "the first change created the file");

    first.shutdown().expect("clean shutdown");
    wait_until("agent notices the control plane is gone", || {
        !agent.stats().connected
    });
    let epoch_before = hooks.last_applied().expect("applied").epoch;

    // The configured policy (lard, the default) loses to the saved run-time change.
    let second = start(with_state_file(address, &path));
    wait_until("agent re-registers with the restarted plane", || {
        agent.stats().registrations == 2
    });
    runtime.block_on(async {
        let mut control = control_client(address).await;
        let policy = control
            .get_policy(pb::GetPolicyRequest {})
            .await
            .expect("GetPolicy")
            .into_inner();
        assert_eq!(
            policy.policy.as_ref().map(|policy| policy.kind),
            Some(pb::PolicyKind::Wrr as i32)
        );
        assert_eq!(
            policy.node_weights,
            [pb::NodeWeight {
                node_id: "node-a".into(),
                weight: 3
            }]
        );
        let nodes = control
            .list_nodes(pb::ListNodesRequest {})
            .await
            .expect("ListNodes")
            .into_inner();
        let node = &nodes.nodes[0];
        assert_eq!((node.drained, node.weight), (true, 3), "{node:?}");
        assert_eq!(shares_of(&mut control, "gold").await, Some(4));
    });
    let last = hooks.last_applied().expect("applied");
    assert_ne!(last.epoch, epoch_before, "the restarted plane's steering");
    assert_eq!(last.policy.kind, PolicyKind::Wrr);
    let gold_applied = last
        .containers
        .iter()
        .find(|container| container.name.0 == "gold")
        .map(|container| container.shares);
    assert_eq!(gold_applied, Some(4));
    let steered = &last.nodes[0];
    assert_eq!((steered.weight, steered.drained), (3, true));
    agent.shutdown();
    second.shutdown().expect("clean shutdown");
}

#[test]
fn a_change_the_state_file_cannot_keep_is_refused_and_changes_nothing() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("state.json");
    let plane = start(with_state_file(loopback_any_port(), &path));
    let address = plane.local_addr();
    runtime().block_on(async {
        let mut control = control_client(address).await;
        control
            .set_container(pb::SetContainerRequest {
                container: gold(2),
                create: true,
            })
            .await
            .expect("SetContainer");
        let saved = std::fs::read_to_string(&path).expect("saved");
        let version = |policy: pb::GetPolicyResponse| policy.steering_version;
        let before = version(
            control
                .get_policy(pb::GetPolicyRequest {})
                .await
                .expect("GetPolicy")
                .into_inner(),
        );

        // The temporary file's path is taken by a directory: the save fails at its first step.
        let obstacle = directory.path().join(".state.json.tmp");
        std::fs::create_dir(&obstacle).expect("mkdir");
        let status = control
            .set_container(pb::SetContainerRequest {
                container: gold(9),
                create: false,
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains(&path.display().to_string())
                && status.message().contains("not applied"),
            "{status:?}"
        );
        assert_eq!(
            shares_of(&mut control, "gold").await,
            Some(2),
            "rolled back"
        );
        let after = version(
            control
                .get_policy(pb::GetPolicyRequest {})
                .await
                .expect("GetPolicy")
                .into_inner(),
        );
        assert_eq!(after, before, "no steering version was used up");
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), saved);

        std::fs::remove_dir(&obstacle).expect("rmdir");
        control
            .set_container(pb::SetContainerRequest {
                container: gold(9),
                create: false,
            })
            .await
            .expect("SetContainer once the file can be written");
        assert_eq!(shares_of(&mut control, "gold").await, Some(9));
    });
    plane.shutdown().expect("clean shutdown");
}

#[test]
fn a_bad_state_file_stops_the_start_naming_the_file_and_the_field() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("state.json");
    let plane = start(with_state_file(loopback_any_port(), &path));
    let address = plane.local_addr();
    runtime().block_on(async {
        control_client(address)
            .await
            .set_container(pb::SetContainerRequest {
                container: gold(2),
                create: true,
            })
            .await
            .expect("SetContainer");
    });
    plane.shutdown().expect("clean shutdown");
    let text = std::fs::read_to_string(&path).expect("saved");
    std::fs::write(&path, text.replace("\"shares\": 2", "\"shares\": 0")).expect("write");

    let error =
        ControlPlane::spawn(with_state_file(loopback_any_port(), &path)).expect_err("refused");
    assert!(matches!(error, ControlError::StateFile(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("containers[1].shares"),
        "{message}"
    );
}
