//! Reloading `larder serve` as a real process: SIGHUP under load (the project's load generator, larder-bench's
//! library, checking every response's status) applies a changed file with no failed request and GetNode shows
//! the new shares; a broken file changes nothing, fails no request and is logged with the file and the setting;
//! without `--config` SIGHUP only says so; `--check-config` exits 0 with the effective settings or 1 with the
//! error.
//!
//! The load runs in this test's process (a thread of the generator's library): cargo gives an integration test
//! the path of its own package's binaries only, not `larder-bench`'s.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_control::CtlClient;
use larder_loadgen::cores::CoreList;
use larder_loadgen::{ClassConfig, DriverChoice, RunConfig, RunReport, WorkloadSpec};
use process::{run_to_end, wait_for, Process};

/// How long the load runs: long enough for both reloads and their checks on a loaded 2-CPU machine (the test
/// asserts that responses kept arriving after the last check, so a slower machine fails loudly, not silently).
const LOAD_DURATION: Duration = Duration::from_secs(15);

/// The node's file: two shards on epoll, a "gold" container with `gold_shares` for paths under `gold_prefix`.
fn config_text(gold_shares: u32, gold_prefix: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
cores = "2"
io_driver = "epoll"

[[containers]]
name = "gold"
shares = {gold_shares}

[[classify]]
container = "gold"
path_prefix = "{gold_prefix}"
"#
    )
}

/// Replaces the file whole (write, then rename), as an editor or a deploy tool would.
fn write_config(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write config");
    std::fs::rename(&next, path).expect("rename config");
}

fn site() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join("gold")).expect("mkdir");
    std::fs::write(root.path().join("a.txt"), "a".repeat(512)).expect("write");
    std::fs::write(root.path().join("gold").join("b.txt"), "b".repeat(512)).expect("write");
    root
}

/// The shares of `container` on each shard of node `node_id`, as its last load report says.
fn shares(control: &str, node_id: &str, container: &str) -> Vec<u32> {
    let Ok(mut ctl) = CtlClient::connect(control, None) else {
        return Vec::new();
    };
    let Ok(node) = ctl.get_node(node_id) else {
        return Vec::new();
    };
    node.shards
        .iter()
        .flat_map(|shard| shard.containers.iter())
        .filter(|load| load.container == container)
        .map(|load| load.shares)
        .collect()
}

/// Load reports the control plane has received from the node.
fn reports(control: &str, node_id: &str) -> u64 {
    CtlClient::connect(control, None)
        .and_then(|mut ctl| ctl.get_node(node_id))
        .ok()
        .and_then(|node| node.node)
        .map_or(0, |node| node.reports_received)
}

fn class(name: &str, path: &str) -> ClassConfig {
    ClassConfig {
        name: name.to_string(),
        workload: WorkloadSpec::Urls(vec![path.to_string()]),
        connections: 4,
        pipeline: 1,
        rate_per_sec: None,
        requests_max: None,
        seed: 1,
        host: "reload.test".to_string(),
        prefix: String::new(),
    }
}

/// Starts the load on one thread (`--cores 1`: the first core this process may use); `responses` follows its progress (about once a
/// second).
fn start_load(
    address: SocketAddr,
    responses: Arc<AtomicU64>,
) -> std::thread::JoinHandle<RunReport> {
    let config = RunConfig {
        address,
        cores: CoreList::select(Some("1"), None).expect("one load thread"),
        driver: DriverChoice::Epoll,
        classes: vec![class("default", "/a.txt"), class("gold", "/gold/b.txt")],
        duration: Some(LOAD_DURATION),
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(10),
        keepalive: true,
        headers: Vec::new(),
    };
    std::thread::spawn(move || {
        larder_loadgen::run(&config, |progress| {
            responses.store(progress.responses, Ordering::Relaxed)
        })
        .expect("the load runs")
    })
}

/// A node serving [`site`] from the file `config_text(100, "/gold/")`, with its control plane embedded.
struct ConfiguredNode {
    process: Process,
    http: String,
    control: String,
    config: std::path::PathBuf,
    _root: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl ConfiguredNode {
    /// Starts it with its log at `log_level` (kept for `wait_for_log_line`) and waits until GetNode shows
    /// gold's 100 shares on both shards.
    fn start(log_level: &str) -> ConfiguredNode {
        let root = site();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("larder.toml");
        write_config(&config, &config_text(100, "/gold/"));
        let mut process = Process::spawn_with_log_level(
            &[
                "serve",
                "--config",
                config.to_str().expect("utf-8 path"),
                "--control",
                "127.0.0.1:0",
                root.path().to_str().expect("utf-8 path"),
            ],
            log_level,
        );
        let http = process.word_after("serving on http://");
        let control = process.word_after("control plane on ");
        wait_for("GetNode shows gold with 100 shares on both shards", || {
            shares(&control, &http, "gold") == [100, 100]
        });
        ConfiguredNode {
            process,
            http,
            control,
            config,
            _root: root,
            _dir: dir,
        }
    }
}

#[test]
fn sighup_under_load_applies_a_changed_file_and_refuses_a_broken_one_with_no_failed_request() {
    let started = ConfiguredNode::start("info");
    let ConfiguredNode {
        process: mut node,
        ref http,
        ref control,
        ref config,
        ..
    } = started;
    let config_arg = config.to_str().expect("utf-8 path");

    let responses = Arc::new(AtomicU64::new(0));
    let load = start_load(http.parse().expect("address"), Arc::clone(&responses));
    wait_for("the load is being answered", || {
        responses.load(Ordering::Relaxed) > 0
    });

    // A changed file: gold's shares and its classification rule.
    write_config(config, &config_text(300, "/g"));
    node.signal(libc::SIGHUP);
    let done = node.wait_for_log_line("reload done");
    assert!(
        done.contains("containers.gold.shares") && done.contains("classify"),
        "the log names what changed: {done}"
    );
    wait_for("GetNode shows gold with 300 shares on both shards", || {
        shares(control, http, "gold") == [300, 300]
    });

    // A broken file: it would change gold's shares, but one setting is out of range.
    write_config(
        config,
        &format!("keepalive_timeout_ms = 0\n{}", config_text(500, "/g")),
    );
    node.signal(libc::SIGHUP);
    let refused = node.wait_for_log_line("reload refused");
    assert!(
        refused.contains(config_arg) && refused.contains("keepalive_timeout_ms = 0"),
        "the error names the file and the setting: {refused}"
    );
    // A refused reload sends nothing; two load reports later the node still runs the previous file.
    let seen = reports(control, http);
    wait_for("two more load reports", || {
        reports(control, http) >= seen + 2
    });
    assert_eq!(
        shares(control, http, "gold"),
        [300, 300],
        "the broken file changed nothing"
    );
    let answered_by_then = responses.load(Ordering::Relaxed);

    let report = load.join().expect("the load thread");
    assert_eq!(
        report.total.errors, 0,
        "no request failed or got an error status: {:?}",
        report.total.errors_by_kind
    );
    assert!(
        report.total.ok > answered_by_then,
        "the load outlasted both reloads ({} responses in all, {answered_by_then} by the last check): \
         raise LOAD_DURATION if this machine is slower",
        report.total.ok
    );
    for class in ["default", "gold"] {
        assert!(report.classes[class].ok > 0, "{class} was served");
    }
    let (code, _) = node.terminate_with_log();
    assert_eq!(code, 0);
}

#[test]
fn sighup_without_a_config_file_says_there_is_nothing_to_reload() {
    let root = site();
    let root_arg = root.path().to_str().expect("utf-8 path");
    let mut node = Process::spawn_with_log_level(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--no-control",
            root_arg,
        ],
        "info",
    );
    let http = node.word_after("serving on http://");
    node.signal(libc::SIGHUP);
    node.wait_for_log_line("no --config file; nothing to reload");
    let (answer, _) = common::get(&http, "/a.txt");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "still serving: {answer}"
    );
    let (code, _) = node.terminate_with_log();
    assert_eq!(code, 0);
}

/// `larder serve --check-config ARGS`.
fn check_config(args: &[&str]) -> (i32, String, String) {
    run_to_end(&[&["serve", "--check-config"], args].concat())
}

#[test]
fn check_config_prints_the_effective_settings_or_the_error() {
    let root = site();
    let root_arg = root.path().to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    write_config(&good, &config_text(300, "/gold/"));
    let good_arg = good.to_str().expect("utf-8 path");

    let (code, out, err) = check_config(&["--config", good_arg, "--policy", "wrr", root_arg]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "policy = \"wrr\"",
        "io_driver = \"epoll\"",
        "keepalive_timeout_ms = 75000",
        "name = \"gold\"",
        "shares = 300",
        "path_prefix = \"/gold/\"",
    ] {
        assert!(
            out.contains(line),
            "{line:?} (the flag over the file, the defaults, the file) in:\n{out}"
        );
    }
    // What it prints is itself a valid file with the same settings.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &out).expect("write");
    let (again, out_again, err) =
        check_config(&["--config", printed.to_str().expect("utf-8"), root_arg]);
    assert_eq!(again, 0, "{err}");
    assert_eq!(
        out_again.lines().skip(1).collect::<Vec<_>>(),
        out.lines().skip(1).collect::<Vec<_>>(),
        "the same settings read back (the first line names the file)"
    );

    let bad = dir.path().join("bad.toml");
    write_config(
        &bad,
        "[[containers]]\nname = \"gold\"\ncpu_percent_max = 101\n",
    );
    let (code, out, err) = check_config(&["--config", bad.to_str().expect("utf-8"), root_arg]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "nothing on stdout: {out}");
    assert!(
        err.contains("bad.toml") && err.contains("containers.cpu_percent_max = 101"),
        "the error names the file and the setting: {err}"
    );

    let (code, _, err) = check_config(&["--config", good_arg, "--io-driver", "kqueue", root_arg]);
    assert_eq!(code, 1);
    assert!(err.contains("--io-driver"), "a bad flag is named: {err}");

    let (code, _, err) = check_config(&["--config", good_arg, "/no/such/root"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/no/such/root"),
        "a missing ROOT is named: {err}"
    );

    // What only the machine can say, checked as `serve` checks it before binding.
    let (code, _, err) = check_config(&["--config", good_arg, "--cores", "4096", root_arg]);
    assert_eq!(code, 1);
    assert!(err.contains("cores"), "more shards than CPUs: {err}");
    write_config(&bad, "cores = \"1\"\naccept_shards = [1]\n");
    let (code, _, err) = check_config(&["--config", bad.to_str().expect("utf-8"), root_arg]);
    assert_eq!(code, 1);
    assert!(err.contains("accept_shards names shard 1"), "{err}");
}

/// `larder ctl --control CONTROL ARGS`.
fn ctl(control: &str, args: &[&str]) -> (i32, String, String) {
    run_to_end(&[&["ctl", "--control", control], args].concat())
}

#[test]
fn ctl_reload_node_applies_a_changed_file_and_answers_what_changed() {
    let node = ConfiguredNode::start("warn");
    let (http, control, config) = (&node.http, &node.control, &node.config);
    let config_arg = config.to_str().expect("utf-8 path");

    let (code, _, err) = ctl(control, &["reload-node", "127.0.0.1:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND"), "an unknown node: {err}");

    // A changed file, with a setting that cannot change live.
    write_config(
        config,
        &format!("cache_mb = 64\n{}", config_text(250, "/gold/")),
    );
    let (code, out, err) = ctl(control, &["--json", "reload-node", http]);
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        answer["applied"],
        serde_json::json!(["containers.gold.shares"]),
        "{out}"
    );
    assert_eq!(
        answer["kept"],
        serde_json::json!(["cache_mb: kept 256 (the file says 64)"]),
        "{out}"
    );
    wait_for("GetNode shows gold with 250 shares on both shards", || {
        shares(control, http, "gold") == [250, 250]
    });

    // A broken file: FAILED_PRECONDITION with the node's message; nothing changes.
    write_config(config, "[[containers]]\nname = \"gold\"\nshares = 0\n");
    let (code, _, err) = ctl(control, &["reload-node", http]);
    assert_eq!(code, 1);
    assert!(
        err.contains("FAILED_PRECONDITION")
            && err.contains(config_arg)
            && err.contains("containers.shares = 0"),
        "the node's refusal names the file and the setting: {err}"
    );
    assert_eq!(shares(control, http, "gold"), [250, 250]);
    assert_eq!(node.process.terminate(), 0);
}

#[test]
fn sighup_reloads_the_control_planes_policy_and_token_and_keeps_its_listen_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("control.toml");
    write_config(&config, "listen = \"127.0.0.1:0\"\npolicy = \"lard\"\n");
    let config_arg = config.to_str().expect("utf-8 path");
    let mut plane = Process::spawn_with_log_level(&["control", "--config", config_arg], "info");
    let control = plane.word_after("listening on ");
    let policy_kind = || {
        CtlClient::connect(&control, None)
            .and_then(|mut ctl| ctl.get_policy())
            .ok()
            .and_then(|answer| answer.policy)
            .map(|policy| policy.kind)
    };
    let lard = larder_control::proto::v1::PolicyKind::Lard as i32;
    let wrr = larder_control::proto::v1::PolicyKind::Wrr as i32;
    assert_eq!(policy_kind(), Some(lard));

    write_config(
        &config,
        "listen = \"127.0.0.1:1\"\npolicy = \"wrr\"\ntoken = \"s3cret\"\n",
    );
    plane.signal(libc::SIGHUP);
    plane.wait_for_log_line("setting cannot change on a running control plane; kept");
    let done = plane.wait_for_log_line("reload done");
    assert!(done.contains("policy") && done.contains("token"), "{done}");
    assert_eq!(policy_kind(), Some(wrr), "the file's policy is in force");
    let (code, _, err) = ctl(&control, &["drain", "node-a"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("UNAUTHENTICATED"),
        "the new token is required: {err}"
    );
    let (code, _, err) = ctl(&control, &["--token", "s3cret", "drain", "node-a"]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND"), "the token is accepted: {err}");

    write_config(&config, "policy = \"fastest\"\n");
    plane.signal(libc::SIGHUP);
    let refused = plane.wait_for_log_line("reload refused");
    assert!(
        refused.contains(config_arg) && refused.contains("policy = fastest"),
        "{refused}"
    );
    assert_eq!(policy_kind(), Some(wrr), "a broken file changed nothing");
    let (code, _) = plane.terminate_with_log();
    assert_eq!(code, 0);
}

/// A `larder serve` back-end (one shard, no control plane) whose `/who.txt` says `name`.
fn named_backend(name: &str) -> (Process, String, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("who.txt"), name).expect("write");
    let root_arg = root.path().to_str().expect("utf-8 path").to_string();
    let mut node = Process::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--no-control",
        &root_arg,
    ]);
    let http = node.word_after("serving on http://");
    (node, http, root)
}

/// The body of `/who.txt` through `http`.
fn who(http: &str) -> String {
    let (answer, _) = common::get(http, "/who.txt");
    answer.rsplit("\r\n\r\n").next().unwrap_or("").to_string()
}

fn dispatch_config_text(backend: &str) -> String {
    format!("listen = \"127.0.0.1:0\"\ncores = \"1\"\nbackends = [\"{backend}\"]\n")
}

#[test]
fn sighup_replaces_the_dispatchers_back_ends_from_its_file() {
    let (_a, a, _a_root) = named_backend("A");
    let (_b, b, _b_root) = named_backend("B");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("dispatch.toml");
    write_config(&config, &dispatch_config_text(&a));
    let config_arg = config.to_str().expect("utf-8 path");

    let (code, out, err) = run_to_end(&["dispatch", "--check-config", "--config", config_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("backends = [\"{a}\"]")), "{out}");

    let mut dispatcher = Process::spawn_with_log_level(
        &["dispatch", "--config", config_arg, "--no-control"],
        "info",
    );
    let http = dispatcher.word_after("dispatching on http://");
    assert_eq!(who(&http), "A");

    write_config(&config, &dispatch_config_text(&b));
    dispatcher.signal(libc::SIGHUP);
    let done = dispatcher.wait_for_log_line("reload done");
    assert!(
        done.contains(&format!("removed {a}")) && done.contains(&format!("added {b}")),
        "{done}"
    );
    assert_eq!(who(&http), "B", "the file's back-end serves");

    write_config(&config, "backends = [\"nowhere\"]\n");
    let (code, _, err) = run_to_end(&["dispatch", "--check-config", "--config", config_arg]);
    assert_eq!(code, 1);
    assert!(err.contains("backends = nowhere"), "{err}");
    dispatcher.signal(libc::SIGHUP);
    let refused = dispatcher.wait_for_log_line("reload refused");
    assert!(refused.contains("backends = nowhere"), "{refused}");
    assert_eq!(who(&http), "B", "a broken file changed nothing");
    let (code, _) = dispatcher.terminate_with_log();
    assert_eq!(code, 0);
}
