//! The `larder-bench` binary: gen-site writes a usable file list, `--json` keeps the fields scripts read,
//! classes are reported by name, and replay sends every successful GET of a log once.

mod common;

use common::{Action, TestServer};
use std::process::Command;
use std::sync::atomic::Ordering;

const BINARY: &str = env!("CARGO_BIN_EXE_larder-bench");

/// Runs the binary, asserts it succeeded, and returns its stdout (parsed as JSON when `json`) and stderr.
fn larder_bench(args: &[&str], json: bool) -> (serde_json::Value, String) {
    let output = Command::new(BINARY).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{args:?}: {stderr}");
    let stdout = match json {
        true => serde_json::from_slice(&output.stdout).unwrap(),
        false => serde_json::Value::String(String::from_utf8_lossy(&output.stdout).into()),
    };
    (stdout, stderr)
}

#[test]
fn gen_site_then_zipf_run_prints_the_json_fields_scripts_depend_on() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let site = site.to_str().unwrap();
    larder_bench(
        &[
            "gen-site",
            site,
            "--files",
            "20",
            "--sizes",
            "fixed:1000",
            "--seed",
            "9",
        ],
        false,
    );
    let list_path = format!("{site}/files.txt");
    let list = std::fs::read_to_string(&list_path).unwrap();
    assert_eq!(list.lines().count(), 20);
    assert!(
        list.lines().all(|line| line.starts_with("/d00/f")),
        "{list}"
    );

    let server = TestServer::start(|_| Action::Ok);
    let url = format!("http://{}/", server.address);
    let common = [
        "--driver", "epoll", "-c", "4", "-n", "300", "--json", "--quiet",
    ];
    let (report, _) = larder_bench(
        &[&common[..], &["--zipf", "1.2", "--files", &list_path, &url]].concat(),
        true,
    );
    assert!(
        report["requests_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
    let (p50, p99) = (
        report["latency_ms"]["p50"].as_f64().unwrap(),
        report["latency_ms"]["p99"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{report}");
    assert_eq!(
        report["classes"]["default"]["ok"].as_u64(),
        Some(300),
        "{report}"
    );
}

#[test]
fn classes_from_the_command_line_are_reported_by_name() {
    let server = TestServer::start(|_| Action::Ok);
    let url = format!("http://{}/x", server.address);
    let gold = "gold:host=gold.test:url=/a.html:connections=2:requests=40";
    let bronze = "bronze:host=bronze.test:prefix=/bronze:connections=3:requests=60";
    let args = [
        "--driver", "epoll", "--json", "--quiet", &url, "--class", gold, "--class", bronze,
    ];
    let (report, _) = larder_bench(&args, true);
    assert_eq!(
        report["classes"]["gold"]["ok"].as_u64(),
        Some(40),
        "{report}"
    );
    assert_eq!(
        report["classes"]["bronze"]["ok"].as_u64(),
        Some(60),
        "{report}"
    );
    let by_host = server.by_host.lock().unwrap().clone();
    assert_eq!(by_host.get("gold.test"), Some(&40));
    assert_eq!(by_host.get("bronze.test"), Some(&60));
}

#[test]
fn replay_sends_every_successful_get_of_the_log_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut text = String::new();
    for i in 0..30 {
        let (second, page, bytes) = (10 + i / 4, i % 7, 100 + i);
        text.push_str(&format!(
            "10.0.0.1 - - [01/Jul/1995:00:00:{second:02} -0400] \"GET /p{page}.html HTTP/1.0\" 200 {bytes}\n"
        ));
    }
    text.push_str("10.0.0.1 - - [01/Jul/1995:00:00:20 -0400] \"POST /form HTTP/1.0\" 200 5\n");
    text.push_str("garbage line\n");
    std::fs::write(&log, text).unwrap();
    for pace in [&["--as-fast-as-possible"][..], &["--speed", "100"][..]] {
        let server = TestServer::start(|_| Action::Ok);
        let url = format!("http://{}/", server.address);
        let args = [
            "--driver",
            "epoll",
            "-c",
            "3",
            "--json",
            "--quiet",
            "--replay",
            log.to_str().unwrap(),
            &url,
        ];
        let (report, stderr) = larder_bench(&[&args[..], pace].concat(), true);
        assert!(stderr.contains("1 malformed"), "{stderr}");
        assert_eq!(report["ok"].as_u64(), Some(30), "{pace:?}: {report}");
        assert_eq!(server.requests.load(Ordering::SeqCst), 30, "{pace:?}");
    }
}
