//! Issue 18's acceptance test for the state file, with real processes: `larder control --state FILE` and a
//! node (`larder serve --join`, a config with the container "gold"). A policy, a node weight, a drain and
//! gold's shares and connection limit are set over gRPC; the control plane is killed with SIGKILL and started
//! again on the same file and address. GetPolicy, ListNodes and ListContainers show the same settings, the node
//! registers again and is listed drained with its weight, and its gold container still turns a second
//! connection away (the restarted plane did not steer it back to its configured values). Then the node itself
//! restarts on the same address: the fresh process gets the limit from the control plane, and its node id's
//! weight and drain apply to it.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::TcpStream;
use std::path::Path;

use larder_control::proto::v1 as pb;
use larder_control::CtlClient;
use process::{wait_for, Process};

const GOLD_SHARES_CONFIGURED: u32 = 100;
const GOLD_SHARES_SET: u32 = 4;
const WEIGHT_SET: u32 = 3;

/// gold takes every loopback connection at accept (network rule) and has no connection limit of its own.
const NODE_CONFIG: &str = r#"
[[containers]]
name = "gold"
shares = 100

[[classify]]
container = "gold"
network = "127.0.0.0/8"
"#;

/// The served directory (with /a.txt), the state file's path (no file yet) and the node's configuration.
struct Files {
    root: tempfile::TempDir,
    state: std::path::PathBuf,
    config: std::path::PathBuf,
    _settings: tempfile::TempDir,
}

fn files() -> Files {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("a.txt"), "a").expect("write");
    let settings = tempfile::tempdir().expect("tempdir");
    let config = settings.path().join("node.toml");
    std::fs::write(&config, NODE_CONFIG).expect("write config");
    Files {
        root,
        state: settings.path().join("state.json"),
        config,
        _settings: settings,
    }
}

fn node(control: &str, listen: &str, config: &Path, root: &Path) -> (Process, String) {
    let args = [
        "serve",
        "--listen",
        listen,
        "--cores",
        "1",
        "--join",
        control,
        "--config",
        config.to_str().expect("utf-8 path"),
        root.to_str().expect("utf-8 path"),
    ];
    let mut node = Process::spawn_with_log_level(&args, "info");
    let http = node.word_after("serving on http://");
    (node, http)
}

fn control_plane(listen: &str, state: &Path) -> (Process, String) {
    let state = state.to_str().expect("utf-8 path");
    let mut plane = Process::spawn(&["control", "--listen", listen, "--state", state]);
    let address = plane.word_after("listening on ");
    (plane, address)
}

fn ctl(control: &str) -> CtlClient {
    CtlClient::connect(control, None).expect("ctl connects")
}

/// The node's entry in ListNodes, once it is registered and up.
fn listed_up(control: &str, http: &str) -> Option<pb::NodeSummary> {
    let nodes = CtlClient::connect(control, None)
        .and_then(|mut ctl| ctl.list_nodes())
        .ok()?;
    nodes.nodes.into_iter().find(|node| {
        node.state == pb::NodeState::Up as i32
            && node
                .info
                .as_ref()
                .is_some_and(|info| info.http_address == http)
    })
}

fn gold(control: &str) -> pb::Container {
    let listed = ctl(control).list_containers().expect("ListContainers");
    listed
        .containers
        .into_iter()
        .filter_map(|status| status.container)
        .find(|container| container.name == "gold")
        .expect("gold is listed")
}

/// With one gold connection open, whether a second one is turned away (gold's `connections_max` of 1 in force).
fn second_connection_refused(http: &str) -> bool {
    let mut first = None;
    wait_for(
        "a first connection is served (earlier ones are closed)",
        || {
            let mut stream = TcpStream::connect(http).expect("connect");
            let head = common::get_keep_alive(&mut stream, "/a.txt");
            first = head.starts_with("HTTP/1.1 200").then_some(stream);
            first.is_some()
        },
    );
    let (answer, _) = common::get(http, "/a.txt");
    let refused = answer.starts_with("HTTP/1.1 503");
    assert!(
        refused || answer.starts_with("HTTP/1.1 200"),
        "200 or 503 only: {answer}"
    );
    refused
}

/// Drains the node and sets gold's shares and a `connections_max` of 1, then waits until the node applies them.
fn drain_and_limit_gold(control: &str, http: &str) {
    let mut operator = ctl(control);
    operator.drain(http).expect("Drain");
    operator
        .set_container(pb::SetContainerRequest {
            container: Some(pb::Container {
                name: "gold".to_string(),
                shares: GOLD_SHARES_SET,
                limits: Some(pb::ContainerLimits {
                    connections_max: 1,
                    ..pb::ContainerLimits::default()
                }),
            }),
            create: false,
        })
        .expect("SetContainer");
    wait_for("the node applies gold's limit", || {
        second_connection_refused(http)
    });
}

fn assert_settings(control: &str, http: &str) {
    let policy = ctl(control).get_policy().expect("GetPolicy");
    assert_eq!(
        policy.policy.as_ref().map(|policy| policy.kind),
        Some(pb::PolicyKind::Wrr as i32),
        "{policy:?}"
    );
    assert_eq!(
        policy.node_weights,
        [pb::NodeWeight {
            node_id: http.to_string(),
            weight: WEIGHT_SET
        }]
    );
    let node = listed_up(control, http).expect("listed");
    assert_eq!((node.drained, node.weight), (true, WEIGHT_SET), "{node:?}");
    let gold = gold(control);
    assert_eq!(gold.shares, GOLD_SHARES_SET);
    assert_eq!(gold.limits.map(|limits| limits.connections_max), Some(1));
}

#[test]
fn settings_survive_a_sigkill_of_the_control_plane_and_reach_the_nodes_again() {
    let Files {
        root,
        state,
        config,
        _settings,
    } = files();

    let (plane, control) = control_plane("127.0.0.1:0", &state);
    let (mut serving, http) = node(&control, "127.0.0.1:0", &config, root.path());
    serving.wait_for_log_line("registered with the control plane");
    wait_for("ListNodes shows the node up", || {
        listed_up(&control, &http).is_some()
    });
    assert_eq!(
        gold(&control).shares,
        GOLD_SHARES_CONFIGURED,
        "gold came with the node"
    );
    assert!(!second_connection_refused(&http), "no limit configured");

    ctl(&control)
        .set_policy(pb::SetPolicyRequest {
            policy: Some(pb::Policy {
                kind: pb::PolicyKind::Wrr as i32,
                ..pb::Policy::default()
            }),
            node_weights: vec![pb::NodeWeight {
                node_id: http.clone(),
                weight: WEIGHT_SET,
            }],
        })
        .expect("SetPolicy");
    drain_and_limit_gold(&control, &http);
    assert_settings(&control, &http);

    // 1. The control plane dies without a chance to write anything more.
    plane.kill();
    serving.wait_for_log_line("lost the control plane");
    let (plane, restarted) = control_plane(&control, &state);
    assert_eq!(restarted, control, "same address");
    serving.wait_for_log_line("registered with the control plane");
    wait_for("ListNodes shows the node up again", || {
        listed_up(&control, &http).is_some()
    });
    assert_settings(&control, &http);
    // The restarted plane's steering was applied before the node logged its registration: had it carried the
    // node's configured gold (no limit), the limit would be gone.
    assert!(
        second_connection_refused(&http),
        "gold's limit is still in force"
    );

    // 2. The node restarts on the same address (same node id) with its configuration's gold (no limit).
    assert_eq!(serving.terminate(), 0);
    let (mut serving, again) = node(&control, &http, &config, root.path());
    assert_eq!(again, http, "same address, same node id");
    serving.wait_for_log_line("registered with the control plane");
    wait_for(
        "the fresh node gets gold's limit from the control plane",
        || second_connection_refused(&http),
    );
    assert_settings(&control, &http);

    assert_eq!(serving.terminate(), 0);
    assert_eq!(plane.terminate(), 0);
}

#[test]
fn serve_state_keeps_the_embedded_planes_settings_across_a_sigkill_of_the_node() {
    let Files {
        root,
        state,
        config,
        _settings,
    } = files();
    let embedded = |listen: &str| {
        let args = [
            "serve",
            "--listen",
            listen,
            "--cores",
            "1",
            "--control",
            "127.0.0.1:0",
            "--state",
            state.to_str().expect("utf-8 path"),
            "--config",
            config.to_str().expect("utf-8 path"),
            root.path().to_str().expect("utf-8 path"),
        ];
        let mut node = Process::spawn(&args);
        let http = node.word_after("serving on http://");
        let control = node.word_after("control plane on ");
        wait_for("ListNodes shows the node up", || {
            listed_up(&control, &http).is_some()
        });
        (node, http, control)
    };

    let (serving, http, control) = embedded("127.0.0.1:0");
    drain_and_limit_gold(&control, &http);
    serving.kill();

    // The same address (node id), configuration and state file: the file wins over the configured gold.
    let (serving, again, control) = embedded(&http);
    assert_eq!(again, http);
    let gold = gold(&control);
    assert_eq!(
        gold.shares, GOLD_SHARES_SET,
        "not the configured {GOLD_SHARES_CONFIGURED}"
    );
    assert_eq!(gold.limits.map(|limits| limits.connections_max), Some(1));
    let node = listed_up(&control, &http).expect("listed");
    assert!(node.drained, "{node:?}");
    wait_for("the node applies the restored limit", || {
        second_connection_refused(&http)
    });
    assert_eq!(serving.terminate(), 0);
}

/// Runs `larder ARGS` to its end: the exit code and stderr.
fn run_to_end(args: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("larder runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_state_file_stops_control_and_serve_naming_the_file_and_the_field() {
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("state.json");
    let path = state.to_str().expect("utf-8 path");
    let policy = r#"{"kind": "lard", "lard": {"t_low": 25, "t_high": 65, "k_ms": 20000}, "balance_factor": 1.25,
        "vnodes_per_server": 160, "targets_max": 1000000, "target_idle_ms": 600000}"#;
    let zero_weight = format!(
        r#"{{"version": 1, "policy": {policy}, "containers": [],
            "nodes": [{{"node_id": "127.0.0.1:8080", "weight": 0, "drained": false}}]}}"#
    );
    std::fs::write(&state, &zero_weight).expect("write");
    let control = ["control", "--listen", "127.0.0.1:0", "--state", path];
    let (code, stderr) = run_to_end(&control);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(path) && stderr.contains("nodes[0].weight"),
        "{stderr}"
    );
    let served = root.path().to_str().expect("utf-8 path");
    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--control",
        "127.0.0.1:0",
        "--state",
        path,
        served,
    ];
    let (code, stderr) = run_to_end(&serve);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(path) && stderr.contains("nodes[0].weight"),
        "{stderr}"
    );

    std::fs::write(&state, &zero_weight[..zero_weight.len() / 2]).expect("write");
    let (code, stderr) = run_to_end(&control);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(path) && stderr.contains("EOF"), "{stderr}");

    let (code, stderr) = run_to_end(&[
        "serve",
        "--join",
        "127.0.0.1:50051",
        "--state",
        path,
        served,
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--state") && stderr.contains("--join"),
        "{stderr}"
    );
}
