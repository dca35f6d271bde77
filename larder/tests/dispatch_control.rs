//! `larder dispatch --control` as a real process, steered by a control plane running in this test process
//! (`ControlPlane::spawn`), in front of small HTTP back-ends registered as nodes by real node agents: back-ends
//! are discovered, Drain and Undrain take effect with the in-flight request finishing, SetPolicy changes which
//! back-end serves a repeated target, reported load steers least-connections, and a stopped control plane
//! leaves the dispatcher serving. Every wait is bounded and waits for a condition.

mod common;
#[path = "common/process.rs"]
mod process;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use larder_control::proto::v1 as pb;
use larder_control::{
    ControlConfig, ControlPlane, CtlClient, NodeAgent, NodeHooks, NodeId, NodeInfo, NodeLoad,
    ShardId, ShardLoad, Steering,
};
use larder_lard::{PolicyConfig, PolicyKind};
use process::{wait_for, Process};

/// Longest a back-end's socket read and its gate wait.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Holds requests for `/slow…` until opened.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
    arrived: AtomicUsize,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }

    fn pass(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            let (guard, timeout) = self.changed.wait_timeout(open, IO_TIMEOUT).unwrap();
            open = guard;
            assert!(!timeout.timed_out(), "gate never opened");
        }
    }
}

/// A keep-alive HTTP/1.1 back-end answering every GET with `X-Backend: <id>`.
struct Backend {
    id: u32,
    addr: SocketAddr,
    gate: Arc<Gate>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start(id: u32) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind back-end");
        let addr = listener.local_addr().unwrap();
        let gate = Arc::new(Gate::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (accept_gate, accept_stop) = (Arc::clone(&gate), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let gate = Arc::clone(&accept_gate);
                std::thread::spawn(move || serve_connection(id, stream, &gate));
            }
        });
        Backend {
            id,
            addr,
            gate,
            stop,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.gate.open();
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_connection(id: u32, mut stream: TcpStream, gate: &Gate) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        if path.starts_with("/slow") {
            gate.pass();
        }
        let body = format!("backend {id} path {path}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nX-Backend: {id}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
        if head.to_ascii_lowercase().contains("connection: close") {
            return;
        }
    }
}

/// A node agent for a back-end: registers `node-<id>` with the back-end's HTTP address and reports `load`
/// requests in progress.
struct Hooks {
    load: Arc<AtomicU64>,
}

impl NodeHooks for Hooks {
    fn load_report(&mut self) -> NodeLoad {
        NodeLoad {
            shards: vec![ShardLoad {
                shard: ShardId(0),
                queued_work: self.load.load(Ordering::SeqCst),
                ..ShardLoad::default()
            }],
            hot_targets: Vec::new(),
        }
    }

    fn apply(&mut self, _steering: &Steering) {}
}

fn join(control: SocketAddr, backend: &Backend, load: &Arc<AtomicU64>) -> NodeAgent {
    let info = NodeInfo {
        node_id: NodeId(format!("node-{}", backend.id)),
        http_address: backend.addr.to_string(),
        cores: 1,
        cache_bytes_budget: 0,
    };
    let hooks = Hooks {
        load: Arc::clone(load),
    };
    NodeAgent::spawn(control, info, hooks).expect("agent starts")
}

/// Starts `larder dispatch` with `args` after the listen flags; returns it and its HTTP address.
fn dispatch(args: &[&str]) -> (Process, String) {
    let mut all = vec!["dispatch", "--listen", "127.0.0.1:0", "--cores", "1"];
    all.extend_from_slice(args);
    let mut process = Process::spawn(&all);
    let http = process.word_after("dispatching on http://");
    (process, http)
}

/// One GET on a fresh connection: the status and the `X-Backend` tag.
fn get(http: &str, path: &str) -> (u16, Option<u32>) {
    let (answer, _shard) = common::get(http, path);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let tag = answer
        .lines()
        .find_map(|line| line.strip_prefix("X-Backend: "))
        .and_then(|value| value.trim().parse().ok());
    (status, tag)
}

/// The tags of `count` GETs of `path` (a `{}` in it is replaced by the request's index).
fn tags(http: &str, path: &str, count: usize) -> Vec<Option<u32>> {
    (0..count)
        .map(|index| get(http, &path.replace("{}", &index.to_string())).1)
        .collect()
}

fn ctl(control: SocketAddr) -> CtlClient {
    CtlClient::connect(&control.to_string(), None).expect("connect to the control plane")
}

fn set_policy(control: SocketAddr, kind: pb::PolicyKind) {
    let request = pb::SetPolicyRequest {
        policy: Some(pb::Policy {
            kind: kind as i32,
            ..pb::Policy::default()
        }),
        node_weights: Vec::new(),
    };
    ctl(control).set_policy(request).expect("SetPolicy");
}

fn control_plane(kind: PolicyKind) -> larder_control::ControlHandle {
    let mut config = ControlConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.policy = PolicyConfig::new(kind);
    ControlPlane::spawn(config).expect("control plane starts")
}

#[test]
fn backends_drain_policy_and_load_come_from_the_control_plane_and_survive_its_loss() {
    let plane = control_plane(PolicyKind::Wrr);
    let control = plane.local_addr();
    let backends = [Backend::start(0), Backend::start(1)];
    let loads = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let _agents: Vec<NodeAgent> = backends
        .iter()
        .zip(&loads)
        .map(|(backend, load)| join(control, backend, load))
        .collect();
    let (dispatcher, http) = dispatch(&["--control", &control.to_string()]);

    // 1. No --backend: the control plane's two nodes are discovered and serve.
    let mut seen = [false; 2];
    let mut index = 0;
    wait_for("both discovered back-ends serve", || {
        index += 1;
        if let (200, Some(tag)) = get(&http, &format!("/d{index}")) {
            seen[tag as usize] = true;
        }
        seen == [true, true]
    });

    // 2. Drain through the control plane: a request held on one back-end finishes there, nothing new goes there.
    let slow_http = http.clone();
    let slow = std::thread::spawn(move || get(&slow_http, "/slow"));
    let mut held = None;
    wait_for("the held request reached a back-end", || {
        held = backends
            .iter()
            .find(|backend| backend.gate.arrived.load(Ordering::SeqCst) > 0)
            .map(|backend| backend.id);
        held.is_some()
    });
    let held = held.unwrap();
    let other = 1 - held;
    ctl(control).drain(&format!("node-{held}")).expect("Drain");
    // WRR alternates while both are live: six in a row on one back-end means the drain is applied.
    wait_for("the drain reaches the dispatcher", || {
        tags(&http, "/n{}", 6) == vec![Some(other); 6]
    });
    assert_eq!(
        tags(&http, "/m{}", 20),
        vec![Some(other); 20],
        "a drained back-end gets no new request"
    );
    assert!(!slow.is_finished(), "the held request is still in flight");
    backends[held as usize].gate.open();
    assert_eq!(
        slow.join().expect("slow client"),
        (200, Some(held)),
        "the in-flight request finished on the drained back-end"
    );

    // 3. Undrain: it takes requests again.
    ctl(control)
        .undrain(&format!("node-{held}"))
        .expect("Undrain");
    wait_for("the undrained back-end serves again", || {
        get(&http, "/u").1 == Some(held)
    });

    // 4. SetPolicy: WRR spreads a repeated target over both, consistent hashing pins it to one.
    let spread = tags(&http, "/same", 4);
    assert!(
        spread.contains(&Some(0)) && spread.contains(&Some(1)),
        "wrr: {spread:?}"
    );
    set_policy(control, pb::PolicyKind::ConsistentHash);
    wait_for("consistent hashing pins /same", || {
        let run = tags(&http, "/same", 8);
        run.iter().all(|tag| tag.is_some() && *tag == run[0])
    });
    let pinned = get(&http, "/same").1;
    assert_eq!(tags(&http, "/same", 20), vec![pinned; 20]);

    // 5. Load reported to the control plane steers least connections away from the loaded node.
    set_policy(control, pb::PolicyKind::LeastConnections);
    loads[held as usize].store(1_000, Ordering::SeqCst);
    wait_for("the loaded node gets no request", || {
        tags(&http, "/l{}", 8) == vec![Some(other); 8]
    });
    loads[held as usize].store(0, Ordering::SeqCst);
    wait_for("the unloaded node serves again", || {
        tags(&http, "/k{}", 4).contains(&Some(held))
    });

    // 6. The control plane stops: the dispatcher keeps serving with its last settings.
    plane.shutdown().expect("control plane stops");
    for (status, tag) in (0..20).map(|index| get(&http, &format!("/after{index}"))) {
        assert_eq!(status, 200, "served after the control plane stopped");
        assert!(tag.is_some());
    }
    assert_eq!(dispatcher.terminate(), 0, "exit 0 after SIGTERM");
}

#[test]
fn explicit_backends_are_the_only_ones_and_the_control_plane_steers_them() {
    let plane = control_plane(PolicyKind::Wrr);
    let control = plane.local_addr();
    let backends = [Backend::start(0), Backend::start(1)];
    let load = Arc::new(AtomicU64::new(0));
    let _agents: Vec<NodeAgent> = backends
        .iter()
        .map(|backend| join(control, backend, &load))
        .collect();
    let only = backends[0].addr.to_string();
    let (dispatcher, http) = dispatch(&["--control", &control.to_string(), "--backend", &only]);
    for (status, tag) in tags(&http, "/e{}", 20).into_iter().map(|tag| (200, tag)) {
        assert_eq!((status, tag), (200, Some(0)), "only the --backend serves");
    }
    // Draining its node through the control plane leaves no live back-end: 503.
    ctl(control).drain("node-0").expect("Drain");
    wait_for("the drain reaches the dispatcher", || {
        get(&http, "/x").0 == 503
    });
    assert_eq!(dispatcher.terminate(), 0);
}

#[test]
fn without_backend_or_control_the_error_names_both_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["dispatch", "--listen", "127.0.0.1:0"])
        .output()
        .expect("larder runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--backend") && stderr.contains("--control"),
        "{stderr}"
    );
}
