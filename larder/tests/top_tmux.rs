//! `larder top` against real processes: one `larder control` and two `larder serve --join` nodes of two shards
//! each, on a temporary site, under a small load (a client thread GETting files from both nodes).
//!
//! - In a real terminal (tmux, 160x50, on a private socket): every core of both nodes appears, the figures
//!   change between two captures, and `q` ends the process (the pane closes, its process is gone).
//! - `--once` prints the table and `--json` one JSON snapshot, both with both nodes' cores and rates taken from
//!   the load; `--node` narrows them; an unknown `--node` is refused naming the flag.
//!
//! tmux must be installed (the test installs it with apt-get when it can, else fails saying so).

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use larder_control::proto::v1 as pb;
use larder_control::CtlClient;
use process::{wait_for, Process};

#[path = "common/mod.rs"]
mod common;
#[path = "common/process.rs"]
mod process;

/// Files of the test site (4 KiB each).
const FILES: usize = 8;

/// The control plane, two nodes (their ids are their HTTP addresses) and a client loop over both.
struct Cluster {
    control_addr: String,
    node_addrs: Vec<String>,
    load: Option<Load>,
    _nodes: Vec<Process>,
    _control: Process,
    _site: tempfile::TempDir,
}

/// A client thread GETting the site's files from both nodes in turn until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Load {
    fn start(addrs: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, requests) = (stop.clone(), requests.clone());
            std::thread::spawn(move || {
                let mut turn = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let addr = &addrs[turn % addrs.len()];
                    let (answer, _) =
                        common::get(addr.as_str(), &format!("/f{}.bin", turn % FILES));
                    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.80}");
                    requests.fetch_add(1, Ordering::Relaxed);
                    turn += 1;
                }
            })
        };
        Load {
            stop,
            requests,
            thread,
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the load thread ends cleanly");
        self.requests.load(Ordering::Relaxed)
    }
}

impl Cluster {
    fn start() -> Cluster {
        let site = tempfile::tempdir().expect("tempdir");
        for index in 0..FILES {
            // ASCII: the test client reads answers as text.
            let body: Vec<u8> = (0..4096)
                .map(|at| b'a' + ((at * 7 + index) % 26) as u8)
                .collect();
            std::fs::write(site.path().join(format!("f{index}.bin")), body).expect("write");
        }
        let root = site.path().to_str().expect("utf-8 path").to_string();
        let mut control = Process::spawn(&["control", "--listen", "127.0.0.1:0"]);
        let control_addr = control.word_after("listening on ");
        let mut nodes = Vec::new();
        let mut node_addrs = Vec::new();
        for _ in 0..2 {
            let mut node = Process::spawn(&[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--cores",
                "2",
                "--no-metrics",
                "--join",
                &control_addr,
                &root,
            ]);
            node_addrs.push(node.word_after("serving on http://"));
            nodes.push(node);
        }
        wait_for("ListNodes shows both nodes up with 2 shards each", || {
            nodes_reporting(&control_addr, &node_addrs)
        });
        let load = Some(Load::start(node_addrs.clone()));
        Cluster {
            control_addr,
            node_addrs,
            load,
            _nodes: nodes,
            _control: control,
            _site: site,
        }
    }

    /// Stops the load; the requests it made (each answered 200).
    fn stop_load(&mut self) -> u64 {
        self.load.take().expect("load running").stop()
    }

    fn top(&self, flags: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_larder"))
            .args(["top", "--control", &self.control_addr])
            .args(flags)
            .output()
            .expect("larder top runs")
    }
}

/// Every node in `addrs` is up and has reported its 2 shards.
fn nodes_reporting(control: &str, addrs: &[String]) -> bool {
    let Ok(mut ctl) = CtlClient::connect(control, None) else {
        return false;
    };
    addrs.iter().all(|addr| {
        ctl.get_node(addr).is_ok_and(|answer| {
            answer
                .node
                .is_some_and(|node| node.state == pb::NodeState::Up as i32)
                && answer.shards.len() == 2
        })
    })
}

/// The screen's core rows: lines whose first two words are a node's address and a shard number.
fn core_rows<'a>(screen: &'a str, addrs: &[String]) -> Vec<&'a str> {
    screen
        .lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            let node = words.next().unwrap_or("");
            let core = words.next().unwrap_or("");
            addrs.iter().any(|addr| addr == node) && core.parse::<u32>().is_ok()
        })
        .collect()
}

/// Both nodes' cores 0 and 1 each have a row with a utilisation and a request rate (not "-").
fn every_core_has_figures(screen: &str, addrs: &[String]) -> bool {
    let rows = core_rows(screen, addrs);
    addrs.iter().all(|addr| {
        ["0", "1"].iter().all(|core| {
            rows.iter().any(|row| {
                let words: Vec<&str> = row.split_whitespace().collect();
                // NODE CORE [bar] UTIL% REQ/S ...: the word after the percentage is the request rate.
                // The bar is one word when partly filled, none when empty.
                let percent = words
                    .iter()
                    .position(|word| word.ends_with('%'))
                    .filter(|at| (2..=3).contains(at));
                words[0] == addr
                    && words[1] == *core
                    && percent.is_some_and(|at| words.get(at + 1).is_some_and(|rate| *rate != "-"))
            })
        })
    })
}

/// A private tmux server (`tmux -L NAME`), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        ensure_tmux();
        Tmux {
            socket: format!("larder-top-test-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn capture(&self) -> String {
        let output = self.run(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn session_alive(&self) -> bool {
        self.run(&["has-session", "-t", "top"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// tmux is there, or installed with apt-get, or the test fails saying what is missing.
fn ensure_tmux() {
    let present = || {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if present() {
        return;
    }
    let installed = Command::new("apt-get")
        .arg("update")
        .status()
        .is_ok_and(|status| status.success())
        && Command::new("apt-get")
            .args(["install", "-y", "tmux"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|status| status.success());
    assert!(
        installed && present(),
        "tmux is not installed and `apt-get install -y tmux` failed: install tmux to run this test"
    );
}

/// Whether a process with this pid exists.
fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the pid exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn live_view_in_tmux_shows_both_nodes_cores_refreshes_and_quits_on_q() {
    let mut cluster = Cluster::start();
    let tmux = Tmux::new();
    let command = format!(
        "exec {} top --control {}",
        env!("CARGO_BIN_EXE_larder"),
        cluster.control_addr
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "50",
        &command,
    ]);
    assert!(started.status.success(), "tmux new-session: {started:?}");
    let pid_output = tmux.run(&["list-panes", "-t", "top", "-F", "#{pane_pid}"]);
    let pid: libc::pid_t = String::from_utf8_lossy(&pid_output.stdout)
        .trim()
        .parse()
        .expect("the pane's pid");

    let mut first = String::new();
    wait_for(
        "every core of both nodes on the screen with figures",
        || {
            first = tmux.capture();
            every_core_has_figures(&first, &cluster.node_addrs)
        },
    );
    assert!(
        first.contains("UTIL▼"),
        "sorted by utilisation at start:\n{first}"
    );
    assert!(first.contains("HOTTEST TARGETS"), "{first}");
    let first_rows: Vec<String> = core_rows(&first, &cluster.node_addrs)
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(first_rows.len(), 4, "2 nodes x 2 cores:\n{first}");
    let mut second = String::new();
    wait_for("the figures to change after a refresh", || {
        second = tmux.capture();
        core_rows(&second, &cluster.node_addrs) != first_rows
            && every_core_has_figures(&second, &cluster.node_addrs)
    });

    // A key changes the sort column; the screen shows it.
    let sent = tmux.run(&["send-keys", "-t", "top", "r"]);
    assert!(sent.status.success());
    wait_for("the sort indicator on REQ/S", || {
        tmux.capture().contains("REQ/S▼")
    });

    let sent = tmux.run(&["send-keys", "-t", "top", "q"]);
    assert!(sent.status.success());
    wait_for("q to end larder top and close its pane", || {
        !tmux.session_alive() && !process_exists(pid)
    });
    assert!(cluster.stop_load() > 0);
}

#[test]
fn once_and_json_print_one_snapshot_of_both_nodes_and_node_narrows_it() {
    let mut cluster = Cluster::start();
    let addrs = cluster.node_addrs.clone();

    let once = cluster.top(&["--once"]);
    let text = String::from_utf8_lossy(&once.stdout).into_owned();
    assert!(once.status.success(), "{once:?}");
    assert!(
        text.contains("UTIL▼") && text.contains("HOTTEST TARGETS"),
        "{text}"
    );
    assert!(!text.contains("q quit"), "no key line in --once:\n{text}");
    assert_eq!(core_rows(&text, &addrs).len(), 4, "{text}");
    assert!(
        every_core_has_figures(&text, &addrs),
        "two samples: every rate known\n{text}"
    );

    let json = cluster.top(&["--json"]);
    assert!(json.status.success(), "{json:?}");
    let document: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("--json prints JSON");
    let nodes = document["nodes"].as_array().expect("nodes");
    let ids: Vec<&str> = nodes
        .iter()
        .filter_map(|node| node["node_id"].as_str())
        .collect();
    let mut expected: Vec<&str> = addrs.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(ids, expected, "nodes by id");
    let mut requests_per_second = 0.0;
    let mut p99s = 0;
    for node in nodes {
        let cores = node["cores"].as_array().expect("cores");
        assert_eq!(cores.len(), 2, "{node}");
        for (shard, core) in cores.iter().enumerate() {
            assert_eq!(core["shard"], shard, "by shard: {core}");
            let utilisation = core["utilisation"].as_f64().expect("a known utilisation");
            assert!((0.0..=1.0).contains(&utilisation), "{core}");
            requests_per_second += core["requests_per_second"].as_f64().expect("a known rate");
            // Null for a core that answered nothing in its node's last interval.
            if let Some(p99_us) = core["latency_p99_us"].as_u64() {
                assert!(
                    (1..=10_000_000).contains(&p99_us),
                    "a histogram bound: {core}"
                );
                p99s += 1;
            } else {
                assert!(core["latency_p99_us"].is_null(), "{core}");
            }
        }
    }
    assert!(requests_per_second > 0.0, "the load shows: {document}");
    assert!(p99s > 0, "a loaded core reports its p99: {document}");

    let one = cluster.top(&["--json", "--node", &addrs[1]]);
    let document: serde_json::Value = serde_json::from_slice(&one.stdout).expect("JSON");
    let nodes = document["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["node_id"], addrs[1].as_str());
    let once_one = cluster.top(&["--once", "--node", &addrs[0]]);
    let text = String::from_utf8_lossy(&once_one.stdout).into_owned();
    let rows = core_rows(&text, &addrs);
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows.iter().all(|row| row.starts_with(&addrs[0])), "{text}");

    let unknown = cluster.top(&["--once", "--node", "no-such-node"]);
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("--node \"no-such-node\"") && stderr.contains(&addrs[0]),
        "{stderr}"
    );
    assert!(cluster.stop_load() > 0);
}

#[test]
fn an_unreachable_control_plane_is_an_error_naming_the_flag() {
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let address = format!("127.0.0.1:{port}");
    let output = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["top", "--once", "--control", &address])
        .output()
        .expect("larder top runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("--control {address}")), "{stderr}");
}
