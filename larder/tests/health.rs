//! The health listener (`--metrics ADDR`) of `larder serve` and `larder dispatch`, as Kubernetes probes it: real
//! processes, real sockets. `/healthz` is 200 while the shards live; `/readyz` follows what the process can do —
//! a `--join`ed node is ready only while registered with its control plane, a dispatcher only while a back-end
//! takes requests; anything else is 404, a method other than GET/HEAD 405, a head that does not parse 400.

#[path = "common/process.rs"]
mod process;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use process::{wait_for, Process};

/// The status code and body of one raw request on a fresh connection.
fn exchange(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the health listener");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `GET path` on a fresh connection: the status code and body.
fn probe(addr: &str, path: &str) -> (u16, String) {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

/// A loopback port free right now (for a control plane started later in the test).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

fn site() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("a.txt"), "a").expect("write");
    root
}

#[test]
fn a_joined_node_is_ready_only_while_registered() {
    let root = site();
    let control_addr = format!("127.0.0.1:{}", free_port());
    let mut node = Process::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--join",
        &control_addr,
        "--metrics",
        "127.0.0.1:0",
        root.path().to_str().expect("utf-8 path"),
    ]);
    let http = node.word_after("serving on http://");
    let metrics = node.word_after("metrics on http://");

    // Before: no control plane yet — alive and serving, but not ready.
    assert_eq!(probe(&metrics, "/healthz"), (200, "ok\n".to_string()));
    let (status, body) = probe(&metrics, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not registered") && body.contains(&control_addr),
        "{body}"
    );
    assert_eq!(
        probe(&http, "/a.txt"),
        (200, "a".to_string()),
        "the node serves"
    );

    // After: the control plane comes up and the node registers.
    let mut control = Process::spawn(&["control", "--listen", &control_addr]);
    control.word_after("listening on ");
    wait_for("/readyz 200 once registered", || {
        probe(&metrics, "/readyz").0 == 200
    });

    // The control plane goes away: not ready again, still alive.
    control.kill();
    wait_for("/readyz 503 once the control plane is lost", || {
        probe(&metrics, "/readyz").0 == 503
    });
    assert_eq!(probe(&metrics, "/healthz").0, 200);

    // Anything else.
    assert_eq!(probe(&metrics, "/metricz").0, 404);
    let head = exchange(&metrics, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(head, (200, String::new()), "HEAD: headers only");
    assert_eq!(
        exchange(
            &metrics,
            "POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        .0,
        405
    );
    assert_eq!(exchange(&metrics, "NOT HTTP AT ALL\r\n\r\n").0, 400);
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "x".repeat(8192)
    );
    assert_eq!(exchange(&metrics, &huge).0, 431);
    assert_eq!(node.terminate(), 0);
}

#[test]
fn a_dispatcher_is_ready_while_a_backend_takes_requests() {
    let root = site();
    let mut backend = Process::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--no-control",
        "--no-metrics",
        root.path().to_str().expect("utf-8 path"),
    ]);
    let backend_http = backend.word_after("serving on http://");
    let mut front = Process::spawn(&[
        "dispatch",
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--backend",
        &backend_http,
        "--no-control",
        "--metrics",
        "127.0.0.1:0",
    ]);
    front.word_after("dispatching on http://");
    let metrics = front.word_after("metrics on http://");
    wait_for("/readyz 200 with a live back-end", || {
        probe(&metrics, "/readyz").0 == 200
    });
    assert_eq!(probe(&metrics, "/healthz").0, 200);

    // The only back-end dies: the health checks take it out, and the dispatcher with it.
    backend.kill();
    wait_for("/readyz 503 without a back-end", || {
        probe(&metrics, "/readyz").0 == 503
    });
    let (_, body) = probe(&metrics, "/readyz");
    assert!(body.contains("no back-end"), "{body}");
    assert_eq!(
        probe(&metrics, "/healthz").0,
        200,
        "alive without back-ends"
    );
    assert_eq!(front.terminate(), 0);
}

#[test]
fn an_explicit_metrics_address_that_is_taken_is_an_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_larder"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--no-control",
        ])
        .args(["--metrics", &addr, "."])
        .output()
        .expect("larder runs");
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("--metrics") && message.contains(&addr),
        "{message}"
    );
}
