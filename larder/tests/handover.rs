//! Binary handover with real processes and real sockets: under load (keep-alive clients and clients opening a
//! new connection per request, every response checked), a new `larder serve --take-over PATH` takes the
//! listening sockets of the running one, which drains and exits 0; not one request fails, and the new process
//! serves HTTP and its control plane on the same addresses. A take-over with nobody offering fails clearly, and
//! new processes that fail (bad config file, another --listen address) leave the old one serving, still able to
//! hand over.

mod common;
#[path = "common/process.rs"]
mod process;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use larder_control::CtlClient;
use process::{wait_for, Process};

/// The body every request checks.
const BODY: &str = "handover body\n";
/// Clients keeping one connection alive across requests.
const KEEP_ALIVE_CLIENTS: usize = 4;
/// Clients opening a new connection for every request.
const NEW_CONNECTION_CLIENTS: usize = 2;
/// A load thread stops after this long even if the test never tells it to (the test fails before then).
const LOAD_SECONDS_MAX: u64 = 120;
/// A response slower than this is a failure (a connection lost in a queue would hang until then).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

fn root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("a.txt"), BODY).expect("write");
    root
}

fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `larder serve` with its log kept: (the process, its HTTP address, its control plane's address unless
/// `--no-control`).
fn serve(args: &[&str]) -> (Process, String, Option<String>) {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let mut process = Process::spawn_with_log_level(&all, "info");
    let http = process.word_after("serving on http://");
    let control =
        (!args.contains(&"--no-control")).then(|| process.word_after("control plane on "));
    (process, http, control)
}

/// What the load saw: requests answered 200 with the whole body, and every failure's description.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(http: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = (0..KEEP_ALIVE_CLIENTS + NEW_CONNECTION_CLIENTS)
            .map(|client| {
                let (http, stop, tally) = (http.to_string(), Arc::clone(&stop), Arc::clone(&tally));
                let keep_alive = client < KEEP_ALIVE_CLIENTS;
                std::thread::spawn(move || client_loop(&http, keep_alive, &stop, &tally))
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.tally.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests have succeeded (or a failure happened, which the caller reports).
    fn wait_for_more(&self, more: u64) {
        let target = self.ok() + more;
        wait_for("the load to make progress", || {
            self.ok() >= target || !self.tally.failures.lock().unwrap().is_empty()
        });
    }

    /// Stops the clients; the successes and the failures.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("load thread");
        }
        let failures = std::mem::take(&mut *self.tally.failures.lock().unwrap());
        (self.tally.ok.load(Ordering::Relaxed), failures)
    }
}

/// One client: GET /a.txt in a loop, checking status and body. A keep-alive client reuses its connection until
/// the server says `Connection: close`; any error (connect, reset, EOF before a whole response, timeout) counts.
fn client_loop(http: &str, keep_alive: bool, stop: &AtomicBool, tally: &Tally) {
    let deadline = Instant::now() + Duration::from_secs(LOAD_SECONDS_MAX);
    let mut connection: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let reused = connection.is_some();
        let outcome = connection
            .take()
            .map(Ok)
            .unwrap_or_else(|| connect(http))
            .and_then(|mut stream| request(&mut stream, keep_alive).map(|open| (stream, open)));
        match outcome {
            Ok((stream, server_keeps_it)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if keep_alive && server_keeps_it {
                    connection = Some(stream);
                }
            }
            Err(error) => {
                let what = if reused {
                    "reused connection"
                } else {
                    "new connection"
                };
                tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{what}: {error}"));
            }
        }
    }
}

fn connect(http: &str) -> Result<BufReader<TcpStream>, String> {
    let stream = TcpStream::connect(http).map_err(|error| format!("connect: {error}"))?;
    stream
        .set_read_timeout(Some(RESPONSE_TIMEOUT))
        .map_err(|error| error.to_string())?;
    Ok(BufReader::new(stream))
}

/// One request and its whole response; true if the server keeps the connection open.
fn request(stream: &mut BufReader<TcpStream>, keep_alive: bool) -> Result<bool, String> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(
        stream.get_mut(),
        "GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n"
    )
    .map_err(|error| format!("send: {error}"))?;
    let mut status = String::new();
    let read = stream
        .read_line(&mut status)
        .map_err(|error| format!("read status: {error}"))?;
    if read == 0 {
        return Err("closed before a response".to_string());
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {status:?}"));
    }
    let (mut length, mut closes) = (None, false);
    loop {
        let mut line = String::new();
        stream
            .read_line(&mut line)
            .map_err(|error| format!("read head: {error}"))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("Content-Length: ") {
            length = value.parse::<usize>().ok();
        }
        if line.eq_ignore_ascii_case("Connection: close") {
            closes = true;
        }
    }
    let mut body = vec![0u8; length.ok_or("no Content-Length")?];
    stream
        .read_exact(&mut body)
        .map_err(|error| format!("read body: {error}"))?;
    if body != BODY.as_bytes() {
        return Err(format!("body {:?}", String::from_utf8_lossy(&body)));
    }
    Ok(!closes)
}

fn get_ok(http: &str) {
    let (answer, _) = common::get(http, "/a.txt");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(BODY), "{answer}");
}

/// The acceptance run: start `old_args`, load it, take over with `new_args`, wait for the old one to exit, keep
/// loading the new one; 0 failures. Returns the new process and both processes' control plane addresses.
fn handover_under_load(
    old_args: &[&str],
    new_args: &[&str],
) -> (Process, Option<String>, Option<String>) {
    let (old, http, old_control) = serve(old_args);
    let load = Load::start(&http);
    load.wait_for_more(200);
    let (new, new_http, new_control) = serve(new_args);
    assert_eq!(
        new_http, http,
        "the new process serves on the old one's address"
    );
    let (code, old_log) = old.wait_exit();
    assert_eq!(
        code, 0,
        "the old process exits 0 after draining:\n{old_log}"
    );
    assert!(
        old_log.contains("the new process serves; draining and exiting"),
        "the old process says why it stops:\n{old_log}"
    );
    // Only the new process is left: these requests are all its own.
    load.wait_for_more(200);
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the handover; first ones: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    get_ok(&http);
    (new, old_control, new_control)
}

/// `larder serve ARGS` exits 2 with `needle` (the flag or file at fault) in its error; its log.
fn fails_naming(args: &[&str], needle: &str) -> String {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let (code, log) = Process::spawn_with_log_level(&all, "info").wait_exit();
    assert_eq!(code, 2, "{log}");
    assert!(log.contains(needle), "the error names {needle}: {log}");
    log
}

fn args<'a>(common: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    common.iter().chain(more).copied().collect()
}

#[test]
fn handover_under_load_loses_no_request_and_keeps_the_control_plane_and_health_addresses() {
    let root = root();
    let socket = root.path().join("handover.sock");
    let (root_arg, socket_arg) = (path_str(root.path()), path_str(&socket));
    // The health listener on a port of its own, named by both processes: the new one adopts the old one's socket.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|probe| probe.local_addr())
        .expect("a free port")
        .to_string();
    let common = [
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "2",
        "--control",
        "127.0.0.1:0",
        "--metrics",
        metrics.as_str(),
    ];
    let old_args = args(&common, &["--handover-socket", socket_arg, root_arg]);
    let new_args = args(
        &common,
        &[
            "--take-over",
            socket_arg,
            "--handover-socket",
            socket_arg,
            root_arg,
        ],
    );
    let (mut new, old_control, new_control) = handover_under_load(&old_args, &new_args);
    let control = new_control.expect("a control plane");
    assert_eq!(
        Some(&control),
        old_control.as_ref(),
        "the control plane keeps its address"
    );
    let mut ctl = CtlClient::connect(&control, None).expect("the new control plane answers");
    ctl.get_policy().expect("GetPolicy");
    assert_eq!(
        new.word_after("metrics on http://"),
        metrics,
        "the health listener keeps its address"
    );
    let (health, _) = common::get(metrics.as_str(), "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200"),
        "the new process answers /healthz: {health}"
    );
    // The new process offers its sockets on the same path for the next upgrade.
    new.wait_for_log_line("offering the listening sockets for a handover");
    assert_eq!(new.terminate(), 0);
}

/// With `--no-control`, and a new process with fewer shards than the old one's listeners (it accepts on all
/// of them: a listener nobody accepted on would strand the connections the kernel queues there).
#[test]
fn handover_under_load_without_a_control_plane_and_with_fewer_shards() {
    let root = root();
    let socket = root.path().join("handover.sock");
    let (root_arg, socket_arg) = (path_str(root.path()), path_str(&socket));
    let old_args = [
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "2",
        "--no-control",
        "--handover-socket",
        socket_arg,
        root_arg,
    ];
    let new_args = [
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--no-control",
        "--take-over",
        socket_arg,
        root_arg,
    ];
    let (new, _, _) = handover_under_load(&old_args, &new_args);
    assert_eq!(new.terminate(), 0);
}

#[test]
fn taking_over_from_nobody_fails_clearly() {
    let root = root();
    let socket = root.path().join("nobody.sock");
    let log = fails_naming(
        &[
            "--listen",
            "127.0.0.1:0",
            "--no-control",
            "--take-over",
            path_str(&socket),
            path_str(root.path()),
        ],
        "--take-over",
    );
    assert!(
        log.contains("nobody is listening on the handover socket"),
        "{log}"
    );
}

/// Failed new processes — one with a bad config file (fails before it connects), one with another --listen
/// address (fails after it received the sockets) — leave the old one serving, and it can still hand over.
#[test]
fn a_failed_new_process_leaves_the_old_one_serving() {
    let root = root();
    let socket = root.path().join("handover.sock");
    let bad_config = root.path().join("bad.toml");
    std::fs::write(&bad_config, "cache_mb = \"lots\"\n").expect("write");
    let (root_arg, socket_arg) = (path_str(root.path()), path_str(&socket));
    let (mut old, http, _) = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--no-control",
        "--handover-socket",
        socket_arg,
        root_arg,
    ]);
    let load = Load::start(&http);
    load.wait_for_more(50);

    fails_naming(
        &[
            "--config",
            path_str(&bad_config),
            "--no-control",
            "--take-over",
            socket_arg,
            root_arg,
        ],
        "bad.toml",
    );
    fails_naming(
        &[
            "--listen",
            "127.0.0.2:0",
            "--no-control",
            "--take-over",
            socket_arg,
            root_arg,
        ],
        "--listen 127.0.0.2:0",
    );
    old.wait_for_log_line("handover failed; still serving");

    load.wait_for_more(50);
    get_ok(&http);
    let (new, new_http, _) = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--no-control",
        "--take-over",
        socket_arg,
        root_arg,
    ]);
    assert_eq!(new_http, http);
    let (code, old_log) = old.wait_exit();
    assert_eq!(code, 0, "{old_log}");
    load.wait_for_more(50);
    let (_, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    assert_eq!(new.terminate(), 0);
}
