//! `larder serve` as a real process with its control plane: the embedded one lists its node, `--join` registers
//! with a standalone `larder control`, SIGTERM stops the node and its control link with exit 0, ListTargets shows
//! the paths a node serves with the shards serving them, and SetContainer's `connections_max` turns a second
//! concurrent connection away with 503 + Retry-After.

mod common;
#[path = "common/process.rs"]
mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;

use larder_control::proto::v1 as pb;
use larder_control::CtlClient;
use process::{wait_for, Process};

/// A bounded wait: `condition` is tried every 20 ms for at most 30 s.
fn serve(root: &std::path::Path, control_args: &[&str]) -> (Process, String) {
    let root = root.to_str().expect("utf-8 path");
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--cores", "2"];
    args.extend_from_slice(control_args);
    args.push(root);
    let mut node = Process::spawn(&args);
    let http = node.word_after("serving on http://");
    (node, http)
}

#[test]
fn a_clean_shutdown_is_not_reported_as_a_lost_control_plane() {
    let root = root_with_a_file();
    let served = root.path().to_str().expect("utf-8 path");
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--control",
        "127.0.0.1:0",
        served,
    ];
    let mut node = Process::spawn_with_log_level(&args, "info");
    let http = node.word_after("serving on http://");
    node.wait_for_log_line("registered with the control plane");
    get_ok(&http, "/a.txt");
    let (code, log) = node.terminate_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("left the control plane (shutting down)"),
        "the shutdown names itself: {log}"
    );
    assert!(
        !log.contains("lost the control plane"),
        "a deliberate shutdown is not a lost control plane: {log}"
    );
}

fn get_ok(http: &str, path: &str) {
    let (answer, _) = common::get(http, path);
    assert!(answer.starts_with("HTTP/1.1 200"), "GET {path}: {answer}");
}

fn lists(control: &str, http: &str) -> bool {
    CtlClient::connect(control, None)
        .and_then(|mut ctl| ctl.list_nodes())
        .map(|nodes| {
            nodes.nodes.iter().any(|node| {
                node.info
                    .as_ref()
                    .is_some_and(|info| info.http_address == http && info.cores == 2)
            })
        })
        .unwrap_or(false)
}

fn root_with_files(names: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    for name in names {
        std::fs::write(root.path().join(name), name).expect("write");
    }
    root
}

fn root_with_a_file() -> tempfile::TempDir {
    root_with_files(&["a.txt"])
}

#[test]
fn embedded_control_plane_lists_its_node_and_stops_with_it() {
    let root = root_with_a_file();
    let (mut node, http) = serve(root.path(), &["--control", "127.0.0.1:0"]);
    let control = node.word_after("control plane on ");
    wait_for("ListNodes shows the node with its HTTP address", || {
        lists(&control, &http)
    });
    get_ok(&http, "/a.txt");
    assert_eq!(node.terminate(), 0);
    assert!(
        CtlClient::connect(&control, None).is_err(),
        "the embedded control plane stopped with the node"
    );
}

#[test]
fn join_registers_with_a_standalone_control_plane() {
    let root = root_with_a_file();
    let mut plane = Process::spawn(&["control", "--listen", "127.0.0.1:0"]);
    let control = plane.word_after("listening on ");
    let (node, http) = serve(root.path(), &["--join", &control]);
    wait_for("the joined node is listed", || lists(&control, &http));
    get_ok(&http, "/a.txt");
    assert_eq!(node.terminate(), 0);
    assert_eq!(plane.terminate(), 0);
}

#[test]
fn the_control_plane_logs_a_node_joining_and_going_silent() {
    let root = root_with_a_file();
    let mut plane = Process::spawn_with_log_level(&["control", "--listen", "127.0.0.1:0"], "info");
    let control = plane.word_after("listening on ");
    let (node, http) = serve(root.path(), &["--join", &control]);
    plane.wait_for_log_line(&format!("node registered node={http}"));
    // SIGKILL: no goodbye; the control plane notices the missing load reports (5 intervals of 100 ms).
    node.kill();
    plane.wait_for_log_line(&format!("node marked down: no load report node={http}"));
    let (code, _) = plane.terminate_with_log();
    assert_eq!(code, 0);
}

#[test]
fn list_targets_shows_the_hot_paths_and_the_shards_serving_them() {
    const PATHS: [&str; 2] = ["/a.txt", "/b.txt"];
    let root = root_with_files(&["a.txt", "b.txt", "c.txt"]);
    let settings = tempfile::tempdir().expect("tempdir");
    let config = settings.path().join("larder.toml");
    std::fs::write(&config, "shard_header = true\n").expect("write config");
    let config = config.to_str().expect("utf-8 path");
    let (mut node, http) = serve(
        root.path(),
        &["--control", "127.0.0.1:0", "--config", config],
    );
    let control = node.word_after("control plane on ");
    let mut ctl = CtlClient::connect(&control, None).expect("ctl connects");
    // The shards each path was served by, from the X-Larder-Shard header.
    let mut served: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    let mut listed = Vec::new();
    wait_for(
        "ListTargets shows both paths with the shards that served them",
        || {
            // Keep the paths hot: the node reports the last 100 ms of traffic.
            for _ in 0..10 {
                for path in PATHS {
                    let (answer, shard) = common::get(&http, path);
                    assert!(answer.starts_with("HTTP/1.1 200"), "GET {path}: {answer}");
                    assert!(shard < 2, "X-Larder-Shard names shard 0 or 1: {answer}");
                    served.entry(path).or_default().insert(shard);
                }
            }
            let Ok(targets) = ctl.list_targets(10) else {
                return false;
            };
            listed = targets.targets;
            PATHS.iter().all(|path| {
                listed.iter().any(|target| {
                    target.target == *path
                        && target.requests_per_second > 0.0
                        && !target.servers.is_empty()
                        && target.servers.iter().all(|server| {
                            server.node_id == http && served[path].contains(&server.shard)
                        })
                })
            })
        },
    );
    assert!(
        listed
            .iter()
            .all(|target| PATHS.contains(&target.target.as_str())),
        "only served paths are hot (/c.txt was never asked for): {listed:?}"
    );
    assert_eq!(node.terminate(), 0);
}

#[test]
fn set_container_connections_max_1_answers_a_second_connection_503_with_retry_after() {
    let root = root_with_a_file();
    // Consistent hashing keeps /a.txt on one shard: every connection asking for it ends up in that shard's
    // "default" container, so its limit of 1 (per shard) is reached by the first.
    let (mut node, http) = serve(
        root.path(),
        &["--control", "127.0.0.1:0", "--policy", "hash"],
    );
    let control = node.word_after("control plane on ");
    wait_for("ListNodes shows the node", || lists(&control, &http));
    let mut ctl = CtlClient::connect(&control, None).expect("ctl connects");
    let mut first = TcpStream::connect(&http).expect("connect");
    let head = common::get_keep_alive(&mut first, "/a.txt");
    assert!(head.starts_with("HTTP/1.1 200"), "before the limit: {head}");

    let limits = pb::ContainerLimits {
        connections_max: 1,
        queued_work_max: 0,
        cpu_percent_max: 0,
        send_rate_bytes_per_second: 0,
    };
    ctl.set_container(pb::SetContainerRequest {
        container: Some(pb::Container {
            name: "default".to_string(),
            shares: 1,
            limits: Some(limits),
        }),
        create: false,
    })
    .expect("SetContainer");
    let containers = ctl.list_containers().expect("ListContainers");
    assert!(
        containers
            .containers
            .iter()
            .any(|status| status
                .container
                .as_ref()
                .is_some_and(
                    |container| container.name == "default" && container.limits == Some(limits)
                )),
        "ListContainers shows the limits: {containers:?}"
    );

    let mut rejected = String::new();
    wait_for(
        "a second connection is refused while the first is open",
        || {
            let (answer, _) = common::get(&http, "/a.txt");
            if answer.starts_with("HTTP/1.1 200") {
                return false; // the node has not applied the limit yet
            }
            rejected = answer;
            true
        },
    );
    assert!(rejected.starts_with("HTTP/1.1 503"), "{rejected}");
    assert!(rejected.contains("Retry-After: "), "{rejected}");
    let head = common::get_keep_alive(&mut first, "/a.txt");
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "the first connection is still served: {head}"
    );

    drop(first);
    wait_for(
        "with the first connection closed, a new one is served",
        || common::get(&http, "/a.txt").0.starts_with("HTTP/1.1 200"),
    );
    assert_eq!(node.terminate(), 0);
}
