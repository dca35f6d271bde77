//! `larder ctl profile` against a real `larder serve` under load (real processes, real sockets): the folded
//! stacks name the shard's connection-serving code, the SVG is well-formed XML, a second profile while one
//! runs is refused, and bad arguments are refused naming the flag or field.

mod common;
#[path = "common/process.rs"]
mod process;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use larder_control::proto::v1 as pb;
use larder_control::{CtlClient, CtlError};
use process::{wait_for, Process};
use tonic::Code;

/// A one-shard node with an embedded control plane on free ports, registered: (node, HTTP, control).
fn registered_node(root: &std::path::Path) -> (Process, String, String) {
    let served = root.to_str().expect("utf-8 path");
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
    let control = node.word_after("control plane on ");
    node.wait_for_log_line("registered with the control plane");
    (node, http, control)
}

/// GETs (a connection each) from `clients` threads until `stop`; counts the answers.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<AtomicU64>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(http: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(AtomicU64::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (http, stop, answers) =
                    (http.to_string(), Arc::clone(&stop), Arc::clone(&answers));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let (answer, _) = common::get(&http, "/a.txt");
                        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                        answers.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            answers,
            clients,
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.join().expect("load client");
        }
        self.answers.load(Ordering::Relaxed)
    }
}

fn ctl(control: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["ctl", "--control", control, "profile"])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("larder ctl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn root_with_a_file() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("a.txt"), "hello\n").expect("write");
    root
}

/// Folded lines as (stack, count); every line must be `stack count`.
fn folded_lines(folded: &str) -> Vec<(String, u64)> {
    folded
        .lines()
        .map(|line| {
            let (stack, count) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no count: {line}"));
            (
                stack.to_string(),
                count
                    .parse()
                    .unwrap_or_else(|_| panic!("bad count: {line}")),
            )
        })
        .collect()
}

#[test]
fn a_loaded_shard_profile_names_its_connection_code_and_draws_well_formed_svg() {
    let root = root_with_a_file();
    let out = tempfile::tempdir().expect("tempdir");
    let (node, http, control) = registered_node(root.path());
    let load = Load::start(&http, 2);
    wait_for("the load is being served", || {
        load.answers.load(Ordering::Relaxed) > 100
    });

    let folded_path = out.path().join("x.folded");
    let folded_out = folded_path.to_str().expect("utf-8");
    let answer = ctl(
        &control,
        &[
            "--node",
            &http,
            "--shard",
            "0",
            "--seconds",
            "2",
            "--out",
            folded_out,
        ],
    );
    assert!(answer.status.success(), "{}", text(&answer.stderr));
    let folded = std::fs::read_to_string(&folded_path).expect("the folded file");
    let lines = folded_lines(&folded);
    let samples: u64 = lines.iter().map(|(_, count)| count).sum();
    assert!(
        samples > 50,
        "{samples} samples of a loaded shard in 2 s at 997 Hz:\n{folded}"
    );
    assert!(
        lines
            .iter()
            .all(|(stack, _)| stack.starts_with("larder-shard-0;")),
        "{folded}"
    );
    // Stacks are short without frame pointers (larder-profile's docs), so look in any frame.
    let serving: u64 = lines
        .iter()
        .filter(|(stack, _)| stack.contains("larder_server::node::conn::"))
        .map(|(_, count)| count)
        .sum();
    assert!(
        serving > 0,
        "no sample in larder_server::node::conn:\n{folded}"
    );

    let svg_path = out.path().join("x.svg");
    let answer = ctl(
        &control,
        &[
            "--node",
            &http,
            "--seconds",
            "1",
            "--out",
            svg_path.to_str().expect("utf-8"),
        ],
    );
    assert!(answer.status.success(), "{}", text(&answer.stderr));
    let parsed = Command::new("python3")
        .args(["-c", "import sys, xml.dom.minidom as m; d = m.parse(sys.argv[1]); print(d.documentElement.tagName)"])
        .arg(&svg_path)
        .output()
        .expect("python3 runs");
    assert!(
        parsed.status.success(),
        "the SVG is not well-formed XML: {}",
        text(&parsed.stderr)
    );
    assert_eq!(text(&parsed.stdout).trim(), "svg");
    assert!(load.stop() > 0);
    assert_eq!(node.terminate(), 0);
}

#[test]
fn a_second_profile_while_one_runs_is_refused() {
    let root = root_with_a_file();
    let out = tempfile::tempdir().expect("tempdir");
    let (mut node, http, control) = registered_node(root.path());
    let first = {
        let (control, http) = (control.clone(), http.clone());
        std::thread::spawn(move || {
            let mut client = CtlClient::connect(&control, None).expect("connect");
            client.profile_node(pb::ProfileNodeRequest {
                node_id: http,
                shard: None,
                seconds: 4,
            })
        })
    };
    node.wait_for_log_line("profiling");
    let second = ctl(
        &control,
        &[
            "--node",
            &http,
            "--seconds",
            "1",
            "--out",
            out.path().join("y.folded").to_str().expect("utf-8"),
        ],
    );
    assert!(!second.status.success());
    assert!(
        text(&second.stderr).contains("RESOURCE_EXHAUSTED"),
        "{}",
        text(&second.stderr)
    );
    assert!(
        !out.path().join("y.folded").exists(),
        "a refused profile writes no file"
    );
    let first = first
        .join()
        .expect("first profile thread")
        .expect("the first profile");
    assert!(first.profile.is_some());
    assert_eq!(node.terminate(), 0);
}

#[test]
fn bad_arguments_are_refused_naming_the_flag_or_field() {
    let root = root_with_a_file();
    let out = tempfile::tempdir().expect("tempdir");
    let (node, http, control) = registered_node(root.path());
    let out_file = out.path().join("z.folded");
    let out_file = out_file.to_str().expect("utf-8");
    for seconds in ["0", "61"] {
        let answer = ctl(
            &control,
            &["--node", &http, "--seconds", seconds, "--out", out_file],
        );
        assert!(!answer.status.success());
        assert!(
            text(&answer.stderr).contains("--seconds"),
            "{}",
            text(&answer.stderr)
        );
    }
    // The control plane checks too, for clients other than ctl.
    let mut client = CtlClient::connect(&control, None).expect("connect");
    let mut refused = |node_id: &str, shard: Option<u32>, seconds: u32| -> (Code, String) {
        let request = pb::ProfileNodeRequest {
            node_id: node_id.to_string(),
            shard,
            seconds,
        };
        match client.profile_node(request) {
            Err(CtlError::Rpc { code, message }) => (code.0, message),
            other => panic!("not refused: {other:?}"),
        }
    };
    let (code, message) = refused(&http, Some(0), 61);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("seconds"), "{message}");
    let (code, message) = refused(&http, Some(1), 1);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("shard"), "{message}");
    let (code, _) = refused("127.0.0.1:1", None, 1);
    assert_eq!(code, Code::NotFound);
    assert!(!std::path::Path::new(out_file).exists());
    assert_eq!(node.terminate(), 0);
}
