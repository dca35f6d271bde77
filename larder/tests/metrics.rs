//! `/metrics` and the status page of `larder serve`'s operations listener, checked by real outside tools against a
//! real node under load: Prometheus' own Python parser (`prometheus_client`, in a venv the test makes) reads both
//! formats, and headless Chromium runs the status page's script. Each tool missing and not installable makes its
//! test skip with a loud message on stderr (never a silent pass).

#[allow(dead_code)] // `get` is not used here
#[path = "common/mod.rs"]
mod common;
#[path = "common/process.rs"]
mod process;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use process::{wait_for, Process};

/// Keep-alive client threads of the load.
const LOAD_CONNECTIONS: usize = 4;
/// Requests each connection makes before it closes and opens a new one (so the kernel spreads them over shards).
const REQUESTS_PER_CONNECTION: u64 = 50;

/// A node with 2 shards serving one 4 KiB file, with its metrics listener.
struct Node {
    process: Process,
    http: String,
    metrics: String,
    _root: tempfile::TempDir,
}

fn start_node() -> Node {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("four-k.bin"), vec![b'x'; 4096]).expect("write");
    let mut process = Process::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "2",
        "--no-control",
        "--metrics",
        "127.0.0.1:0",
        root.path().to_str().expect("utf-8 path"),
    ]);
    let http = process.word_after("serving on http://");
    let metrics = process.word_after("metrics on http://");
    Node {
        process,
        http,
        metrics,
        _root: root,
    }
}

/// Client threads requesting the 4 KiB file on keep-alive connections until stopped; counts 200 answers.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(http: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let threads = (0..LOAD_CONNECTIONS)
            .map(|_| {
                let (http, stop, answered) = (http.to_string(), stop.clone(), answered.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let mut stream = TcpStream::connect(&http).expect("connect");
                        for _ in 0..REQUESTS_PER_CONNECTION {
                            let head = common::get_keep_alive(&mut stream, "/four-k.bin");
                            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
                            answered.fetch_add(1, Ordering::Relaxed);
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            answered,
            threads,
        }
    }

    /// Stops the clients and returns how many answers they read.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("load thread");
        }
        self.answered.load(Ordering::Relaxed)
    }
}

/// `GET path` with extra header lines: the head and the body.
fn fetch(addr: &str, path: &str, headers: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    (head.to_string(), body.to_string())
}

/// A venv with `prometheus_client`, or `None` (with a loud message) when it cannot be made.
fn prometheus_parser(dir: &Path) -> Option<PathBuf> {
    let venv = dir.join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|status| status.success());
    let python = venv.join("bin/python");
    let installed = made
        && Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "prometheus_client"])
            .status()
            .is_ok_and(|status| status.success());
    if !installed {
        eprintln!(
            "\n*** SKIPPED: cannot make a venv with prometheus_client (python3 -m venv + pip install); \
             /metrics was NOT checked by a real parser ***\n"
        );
        return None;
    }
    Some(python)
}

/// Parses `text` with prometheus_client's parser of `format` ("text" or "openmetrics"), checks every histogram
/// (cumulative buckets, `+Inf` last and equal to `_count`), and returns every sample as (name, labels, value).
fn parse(python: &Path, format: &str, text: &str) -> Vec<(String, serde_json::Value, f64)> {
    const SCRIPT: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
parse = parse_openmetrics if sys.argv[1] == "openmetrics" else parse_text
samples = []
for family in parse(sys.stdin.read()):
    if family.type == "histogram":
        series = {}
        for s in family.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault(key, {"buckets": [], "count": None})
            if s.name.endswith("_bucket"):
                series[key]["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                series[key]["count"] = s.value
        assert series, family.name + ": no series"
        for key, h in series.items():
            bounds = [b for b, _ in h["buckets"]]
            counts = [c for _, c in h["buckets"]]
            assert bounds == sorted(bounds), (family.name, key, "bounds not ascending")
            assert math.isinf(bounds[-1]), (family.name, key, "last bucket is not +Inf")
            assert all(a <= b for a, b in zip(counts, counts[1:])), (family.name, key, "not cumulative", counts)
            assert counts[-1] == h["count"], (family.name, key, "+Inf bucket != _count")
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps(samples))
"#;
    let mut child = Command::new(python)
        .args(["-c", SCRIPT, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to the parser");
    let output = child.wait_with_output().expect("parser output");
    assert!(
        output.status.success(),
        "the {format} parser refused /metrics: {}\n--- text ---\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples: Vec<(String, serde_json::Value, f64)> =
        serde_json::from_slice(&output.stdout).expect("the parser's JSON");
    samples
}

/// The sum of samples named `name`, and how many there were.
fn sum_of(samples: &[(String, serde_json::Value, f64)], name: &str) -> (f64, usize) {
    let values: Vec<f64> = samples
        .iter()
        .filter(|(sample, _, _)| sample == name)
        .map(|(_, _, value)| *value)
        .collect();
    (values.iter().sum(), values.len())
}

#[test]
fn metrics_parse_with_prometheus_client_and_count_every_request() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let Some(python) = prometheus_parser(scratch.path()) else {
        return;
    };
    let node = start_node();
    let load = Load::start(&node.http);
    wait_for("the load to be answered", || {
        load.answered.load(Ordering::Relaxed) >= 400
    });

    // Under load: both formats parse, histograms are well formed (checked in the parser script).
    let (head, text) = fetch(&node.metrics, "/metrics", "");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let samples = parse(&python, "text", &text);
    let (_, shards) = sum_of(&samples, "larder_requests_total");
    assert_eq!(shards, 2, "one requests counter per shard");
    let accept =
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n";
    let (head, openmetrics) = fetch(&node.metrics, "/metrics", accept);
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(
        openmetrics.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF"
    );
    let samples = parse(&python, "openmetrics", &openmetrics);
    let (inf_buckets, _) = samples
        .iter()
        .filter(|(name, labels, _)| {
            name == "larder_request_duration_seconds_bucket" && labels["le"] == "+Inf"
        })
        .fold((0.0, 0), |(sum, n), (_, _, value)| (sum + value, n + 1));
    assert!(inf_buckets > 0.0, "the latency histogram saw the load");

    // After the load: the shards' counters sum to what the clients read, within 1%. Each response is counted
    // right after it is written, so the last few may trail the client's count for a moment: poll.
    let answered = load.stop();
    let mut counted = 0.0;
    wait_for("the requests counters to reach the clients' count", || {
        let (_, text) = fetch(&node.metrics, "/metrics", "");
        counted = sum_of(&parse(&python, "text", &text), "larder_requests_total").0;
        (counted - answered as f64).abs() <= answered as f64 * 0.01
    });
    let (_, text) = fetch(&node.metrics, "/metrics", "");
    let samples = parse(&python, "text", &text);
    let (histogram_count, _) = sum_of(&samples, "larder_request_duration_seconds_count");
    assert_eq!(
        histogram_count,
        sum_of(&samples, "larder_requests_total").0,
        "one latency observation per response"
    );
    let (ok, _) = samples
        .iter()
        .filter(|(name, labels, _)| name == "larder_responses_total" && labels["class"] == "2xx")
        .fold((0.0, 0), |(sum, n), (_, _, value)| (sum + value, n + 1));
    assert!(
        (ok - answered as f64).abs() <= answered as f64 * 0.01,
        "2xx {ok} vs {answered} answered"
    );
    let (sent, _) = sum_of(&samples, "larder_sent_bytes_total");
    assert!(
        sent >= answered as f64 * 4096.0,
        "{sent} bytes sent for {answered} 4 KiB answers"
    );
    let (busy, _) = sum_of(&samples, "larder_shard_busy_seconds_total");
    assert!(busy > 0.0, "the shards used CPU");
    let (container_requests, _) = sum_of(&samples, "larder_container_requests_total");
    assert_eq!(
        container_requests, histogram_count,
        "every request in a container"
    );
    assert_eq!(node.process.terminate(), 0);
}

/// Headless Chromium, installed with apt-get when missing; `None` (with a loud message) when it cannot be.
fn chromium() -> Option<PathBuf> {
    let installed = || {
        ["chromium", "chromium-browser"]
            .into_iter()
            .find_map(|name| {
                let path = Path::new("/usr/bin").join(name);
                path.exists().then_some(path)
            })
    };
    if let Some(path) = installed() {
        return Some(path);
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !(apt(&["update", "-q"]) && apt(&["install", "-y", "-q", "chromium"])) {
        eprintln!(
            "\n*** SKIPPED: no chromium and `apt-get install chromium` failed; the status page was NOT \
             tested in a browser ***\n"
        );
        return None;
    }
    installed()
}

/// Runs Chromium headless on `url` with `mode` (`--dump-dom` or `--screenshot=FILE`), letting the page's script
/// run for 2.5 s of virtual time (two refreshes after the first); the DOM or nothing.
fn run_chromium(chromium: &Path, profile: &Path, mode: &str, url: &str) -> String {
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1280,800",
            "--virtual-time-budget=2500",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("chromium runs");
    assert!(output.status.success(), "chromium {mode} failed");
    String::from_utf8(output.stdout).expect("utf-8 DOM")
}

/// Per shard row of the dumped DOM (`<tr class="shard" id="shard-N">`): the text of its `requests` cell.
fn shard_requests(dom: &str) -> Vec<(u32, u64)> {
    let mut rows = Vec::new();
    for row in dom.split("<tr class=\"shard\" id=\"shard-").skip(1) {
        let shard = row.split('"').next().and_then(|n| n.parse().ok());
        let requests = row
            .split("<td class=\"requests\">")
            .nth(1)
            .and_then(|cell| cell.split('<').next())
            .and_then(|n| n.parse().ok());
        if let (Some(shard), Some(requests)) = (shard, requests) {
            rows.push((shard, requests));
        }
    }
    rows
}

#[test]
fn the_status_page_shows_every_shard_live_in_a_browser() {
    let Some(chromium) = chromium() else {
        return;
    };
    let node = start_node();
    let load = Load::start(&node.http);
    wait_for("the load to be answered", || {
        load.answered.load(Ordering::Relaxed) >= 200
    });
    let scratch = tempfile::tempdir().expect("tempdir");
    let url = format!("http://{}/", node.metrics);

    let screenshot = scratch.path().join("status.png");
    run_chromium(
        &chromium,
        &scratch.path().join("profile-shot"),
        &format!("--screenshot={}", screenshot.display()),
        &url,
    );
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    // Kept for a human to look at when the test runs locally.
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::copy(&screenshot, kept);

    let first = run_chromium(
        &chromium,
        &scratch.path().join("profile-1"),
        "--dump-dom",
        &url,
    );
    let first_rows = shard_requests(&first);
    assert_eq!(
        first_rows
            .iter()
            .map(|(shard, _)| *shard)
            .collect::<Vec<_>>(),
        vec![0, 1],
        "one row per shard, drawn by the page's script:\n{first}"
    );
    assert!(
        first.contains("<svg class=\"spark\""),
        "a sparkline per shard"
    );
    assert!(first.contains("id=\"containers\""), "the containers table");
    let answered_between = load.answered.load(Ordering::Relaxed);
    wait_for("more requests answered between the two loads", || {
        load.answered.load(Ordering::Relaxed) > answered_between + 100
    });
    let second = run_chromium(
        &chromium,
        &scratch.path().join("profile-2"),
        "--dump-dom",
        &url,
    );
    let second_rows = shard_requests(&second);
    assert_eq!(second_rows.len(), 2, "{second}");
    let total = |rows: &[(u32, u64)]| rows.iter().map(|(_, n)| n).sum::<u64>();
    assert!(
        total(&second_rows) > total(&first_rows),
        "the figures change under load: {first_rows:?} then {second_rows:?}"
    );
    load.stop();
    assert_eq!(node.process.terminate(), 0);
}
