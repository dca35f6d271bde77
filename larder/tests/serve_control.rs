//! `larder serve` as a real process with its control plane: the embedded one lists its node, `--join` registers
//! with a standalone `larder control`, and SIGTERM stops the node and its control link with exit 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use larder_control::CtlClient;

/// A bounded wait: `condition` is tried every 20 ms for at most 30 s.
const WAIT_ATTEMPTS_MAX: u32 = 1500;
const WAIT_PAUSE: Duration = Duration::from_millis(20);

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..WAIT_ATTEMPTS_MAX {
        if condition() {
            return;
        }
        std::thread::sleep(WAIT_PAUSE);
    }
    panic!("timed out waiting for: {what}");
}

/// A child process killed (SIGKILL) if the test fails before it is stopped.
struct Process {
    child: Option<Child>,
    stdout: BufReader<ChildStdout>,
}

impl Process {
    fn spawn(args: &[&str]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_larder"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("larder starts");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Process {
            child: Some(child),
            stdout,
        }
    }

    /// The text after `prefix` on the next stdout line that has it (at most 10 lines read).
    fn line_after(&mut self, prefix: &str) -> String {
        for _ in 0..10 {
            let mut line = String::new();
            let read = self.stdout.read_line(&mut line).expect("read stdout");
            assert!(read > 0, "larder exited before printing {prefix:?}");
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_string();
            }
        }
        panic!("no line with {prefix:?}");
    }

    /// SIGTERM, then the exit code.
    fn terminate(mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        let result = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(result, 0, "kill");
        child.wait().expect("wait").code().expect("exit code")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn serve(root: &std::path::Path, control_args: &[&str]) -> (Process, String) {
    let root = root.to_str().expect("utf-8 path");
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--cores", "2"];
    args.extend_from_slice(control_args);
    args.push(root);
    let mut node = Process::spawn(&args);
    let served = node.line_after("serving on http://");
    let http = served
        .split_whitespace()
        .next()
        .expect("address")
        .to_string();
    (node, http)
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

fn root_with_a_file() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("a.txt"), "a").expect("write");
    root
}

#[test]
fn embedded_control_plane_lists_its_node_and_stops_with_it() {
    let root = root_with_a_file();
    let (mut node, http) = serve(root.path(), &["--control", "127.0.0.1:0"]);
    let control = node.line_after("control plane on ");
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
    let control = plane.line_after("listening on ");
    let (node, http) = serve(root.path(), &["--join", &control]);
    wait_for("the joined node is listed", || lists(&control, &http));
    get_ok(&http, "/a.txt");
    assert_eq!(node.terminate(), 0);
    assert_eq!(plane.terminate(), 0);
}
