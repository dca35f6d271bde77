//! Distributed mode with real processes on loopback: one `larder control` and three `larder serve --cluster
//! --join` nodes. Every node accepts; a target another node owns is forwarded there (`X-Larder-Node` names the
//! node that served), bodies arrive byte-identical, one keep-alive client connection is distributed per
//! request, and a node killed with SIGKILL during a load run over the other two costs no failed GET.
//!
//! The control plane runs consistent hashing (`--policy ch`) so the spread of 40 targets over three idle nodes
//! is fixed by the targets' hashes; LARD on idle nodes may legitimately put every target on one node.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_control::proto::v1 as pb;
use larder_control::CtlClient;
use process::{wait_for, Process};

#[path = "common/process.rs"]
mod process;

/// Files of the test site.
const FILES: usize = 40;
/// Socket timeouts of the test client: a hung node fails the test instead of hanging it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The control plane, three cluster nodes (addresses = node ids) and the site they serve.
struct Cluster {
    nodes: Vec<Option<Process>>,
    addrs: Vec<String>,
    control: Process,
    site: tempfile::TempDir,
}

fn file_body(index: usize) -> Vec<u8> {
    // Distinct sizes and contents; file 0 is larger than a relay buffer (32 KiB), so it takes several reads.
    let bytes = if index == 0 {
        100_000
    } else {
        500 + 97 * index
    };
    (0..bytes)
        .map(|at| (at * 31 + index * 7) as u8 ^ b'x')
        .collect()
}

fn path(index: usize) -> String {
    format!("/f{index}.bin")
}

impl Cluster {
    fn start() -> Cluster {
        let site = tempfile::tempdir().expect("tempdir");
        for index in 0..FILES {
            std::fs::write(site.path().join(&path(index)[1..]), file_body(index)).expect("write");
        }
        let mut control = Process::spawn(&["control", "--listen", "127.0.0.1:0", "--policy", "ch"]);
        let control_addr = control.word_after("listening on ");
        let root = site.path().to_str().expect("utf-8 path").to_string();
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let mut node = Process::spawn(&[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--cores",
                "1",
                "--cluster",
                "--join",
                &control_addr,
                &root,
            ]);
            addrs.push(node.word_after("serving on http://"));
            nodes.push(Some(node));
        }
        let cluster = Cluster {
            nodes,
            addrs,
            control,
            site,
        };
        wait_for("ListNodes shows the 3 nodes up", || {
            cluster.nodes_up(&control_addr) == 3
        });
        cluster
    }

    fn nodes_up(&self, control: &str) -> usize {
        let Ok(nodes) = CtlClient::connect(control, None).and_then(|mut ctl| ctl.list_nodes())
        else {
            return 0;
        };
        nodes
            .nodes
            .iter()
            .filter(|node| node.state == pb::NodeState::Up as i32)
            .filter(|node| {
                node.info
                    .as_ref()
                    .is_some_and(|info| self.addrs.contains(&info.http_address))
            })
            .count()
    }

    /// Requests every target at every node until all three agree on the node serving it (the assignments
    /// arrived everywhere); returns target index → serving node.
    fn owners(&self) -> Vec<String> {
        (0..FILES)
            .map(|index| {
                let mut owner = String::new();
                wait_for(
                    &format!("the nodes agree where {} is served", path(index)),
                    || {
                        let served: HashSet<String> = self
                            .addrs
                            .iter()
                            .map(|addr| get_once(addr, &path(index)).node)
                            .collect();
                        owner = served.iter().next().cloned().unwrap_or_default();
                        served.len() == 1
                    },
                );
                owner
            })
            .collect()
    }
}

/// One parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    node: String,
    body: Vec<u8>,
    keep_alive: bool,
}

/// Reads one response (Content-Length framing) from a keep-alive connection.
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let (mut length, mut node, mut keep_alive) = (0usize, String::new(), true);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("closed inside a head"));
        }
        let field = line.trim_end();
        if field.is_empty() {
            break;
        }
        let (name, value) = field.split_once(':').unwrap_or((field, ""));
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().map_err(std::io::Error::other)?,
            "x-larder-node" => node = value.to_string(),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Response {
        status,
        node,
        body,
        keep_alive,
    })
}

fn connect(addr: &str) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .expect("timeout");
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .expect("timeout");
    BufReader::new(stream)
}

fn get_on(reader: &mut BufReader<TcpStream>, target: &str) -> std::io::Result<Response> {
    let request = format!("GET {target} HTTP/1.1\r\nHost: cluster\r\n\r\n");
    reader.get_mut().write_all(request.as_bytes())?;
    read_response(reader)
}

/// One GET on a fresh connection; panics on anything but a whole 200 with the file's bytes.
fn get_once(addr: &str, target: &str) -> Response {
    let response = get_on(&mut connect(addr), target).expect("GET");
    assert_eq!(response.status, 200, "GET {target} at {addr}");
    response
}

/// A 200 with the file's exact bytes, served by `owner`.
fn assert_served_by_owner(response: &Response, index: usize, owner: &str) {
    assert_eq!(response.status, 200, "{}", path(index));
    assert!(
        response.body == file_body(index),
        "{} byte-identical",
        path(index)
    );
    assert_eq!(response.node, owner, "{} served by its owner", path(index));
}

fn index_of(target: &str) -> usize {
    target[2..target.len() - 4].parse().expect("test path")
}

#[test]
fn forwarded_responses_are_byte_identical_and_served_by_the_assigned_node() {
    let cluster = Cluster::start();
    let owners = cluster.owners();
    let a = &cluster.addrs[0];
    let distinct: HashSet<&String> = owners.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "consistent hashing spreads 40 targets over all 3 nodes: {owners:?}"
    );
    for (index, owner) in owners.iter().enumerate() {
        assert!(cluster.addrs.contains(owner), "{owner} is one of the nodes");
        assert_served_by_owner(&get_once(a, &path(index)), index, owner);
    }
    let forwarded = owners.iter().filter(|owner| *owner != a).count();
    assert!(
        forwarded > 0,
        "some targets requested at A were served elsewhere"
    );
    // HEAD is forwarded too, and its head has no body.
    let mut connection = connect(a);
    let far = owners
        .iter()
        .position(|owner| owner != a)
        .expect("a forwarded target");
    write!(
        connection.get_mut(),
        "HEAD {} HTTP/1.1\r\nHost: x\r\n\r\n",
        path(far)
    )
    .expect("send");
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(connection.read_line(&mut head).expect("read") > 0, "closed");
    }
    assert!(
        head.contains(&format!("X-Larder-Node: {}", owners[far])),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", file_body(far).len())),
        "{head}"
    );
    let next = get_on(&mut connection, &path(1)).expect("the connection survives a HEAD");
    assert!(next.body == file_body(1));
    drop(cluster.site);
}

#[test]
fn one_keep_alive_connection_is_distributed_per_request() {
    let cluster = Cluster::start();
    let owners = cluster.owners();
    let mut connection = connect(&cluster.addrs[1]);
    let mut served_by = HashSet::new();
    for round in 0..3 {
        for (index, owner) in owners.iter().enumerate() {
            let response = get_on(&mut connection, &path(index)).expect("keep-alive GET");
            assert_served_by_owner(&response, index, owner);
            assert!(
                response.keep_alive,
                "round {round}: {} kept the connection",
                path(index)
            );
            served_by.insert(response.node);
        }
    }
    assert_eq!(
        served_by.len(),
        3,
        "one client connection reached all 3 nodes"
    );
}

#[test]
fn a_node_killed_during_a_load_run_costs_no_failed_get() {
    let mut cluster = Cluster::start();
    let owners = cluster.owners();
    let victim = cluster.addrs[2].clone();
    let victim_targets: Vec<String> = (0..FILES)
        .filter(|&index| owners[index] == victim)
        .map(path)
        .collect();
    assert!(
        !victim_targets.is_empty(),
        "the victim owns targets: {owners:?}"
    );
    let survivors = cluster.addrs[..2].to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let addr = survivors[client % 2].clone();
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut connection = connect(&addr);
                let (mut failures, mut requests) = (Vec::new(), 0u64);
                let mut served: HashMap<String, u64> = HashMap::new();
                // Bounded: at most 200,000 requests a client.
                for n in 0..200_000usize {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let target = path((n * 7 + client) % FILES);
                    match get_on(&mut connection, &target) {
                        Ok(response)
                            if response.status == 200
                                && response.body == file_body(index_of(&target)) =>
                        {
                            *served.entry(response.node).or_default() += 1;
                        }
                        Ok(response) => failures.push(format!(
                            "{target}: {} from {}",
                            response.status, response.node
                        )),
                        Err(error) => {
                            failures.push(format!("{target}: {error}"));
                            connection = connect(&addr);
                        }
                    }
                    requests += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                (requests, failures, served)
            })
        })
        .collect();
    // Let the load run reach the victim, then kill it and keep the load running over the survivors.
    wait_for("200 requests before the kill", || {
        done.load(Ordering::Relaxed) >= 200
    });
    // Dropping a child process kills it with SIGKILL (and reaps it).
    drop(cluster.nodes[2].take().expect("victim"));
    let at_kill = done.load(Ordering::Relaxed);
    wait_for("400 requests after the kill", || {
        done.load(Ordering::Relaxed) >= at_kill + 400
    });
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut served: HashMap<String, u64> = HashMap::new();
    for client in clients {
        let (requests, failures, by_node) = client.join().expect("client thread");
        assert!(failures.is_empty(), "failed GETs: {failures:?}");
        total += requests;
        for (node, count) in by_node {
            *served.entry(node).or_default() += count;
        }
    }
    assert!(total >= at_kill + 400, "the load run made {total} requests");
    assert!(
        served.get(&victim).is_some_and(|&n| n > 0),
        "the victim served before it died: {served:?}"
    );
    // After the kill the victim's targets are served by the survivors.
    for target in &victim_targets {
        let response = get_once(&survivors[0], target);
        assert!(
            survivors.contains(&response.node),
            "{target} served by {}",
            response.node
        );
        assert!(response.body == file_body(index_of(target)));
    }
    for node in cluster.nodes.iter_mut().filter_map(Option::take) {
        assert_eq!(node.terminate(), 0, "a surviving node exits 0 on SIGTERM");
    }
    assert_eq!(cluster.control.terminate(), 0);
}

#[test]
fn cluster_without_a_control_plane_is_a_cli_error_naming_both_flags() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_larder"))
        .args([
            "serve",
            "--cluster",
            "--no-control",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("larder runs");
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--cluster") && stderr.contains("--no-control"),
        "{stderr}"
    );
}

/// Regression (first cluster-bench run: "closed" errors under dist-lard-r): the 1,000th request of a client
/// connection (`keepalive_requests_max`) was forwarded, the peer's keep-alive response relayed, and the
/// connection closed behind it; the peer's own limit on a pooled connection closed client connections too.
#[test]
fn r1_a_forwarded_response_says_close_exactly_when_the_client_connection_closes() {
    let cluster = Cluster::start();
    let owners = cluster.owners();
    let a = &cluster.addrs[0];
    let far = owners
        .iter()
        .position(|owner| owner != a)
        .expect("a target owned elsewhere");
    let mut connection = connect(a);
    let mut closes = Vec::new();
    for request in 1..=2_100 {
        let response = get_on(&mut connection, &path(far)).expect("every request is answered");
        assert_served_by_owner(&response, far, &owners[far]);
        if !response.keep_alive {
            closes.push(request);
            connection = connect(a);
        }
    }
    assert_eq!(
        closes,
        [1_000, 2_000],
        "only the client connection's own limit closes it"
    );
}
