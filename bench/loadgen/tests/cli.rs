//! The `larder-bench` binary: gen-site writes a usable file list, and `--json` keeps the fields scripts read.

mod common;

use common::{Action, TestServer};
use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_larder-bench");

#[test]
fn gen_site_then_zipf_run_prints_the_json_fields_scripts_depend_on() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let output = Command::new(BINARY)
        .args([
            "gen-site",
            site.to_str().unwrap(),
            "--files",
            "20",
            "--sizes",
            "fixed:1000",
            "--seed",
            "9",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let list = std::fs::read_to_string(site.join("files.txt")).unwrap();
    assert_eq!(list.lines().count(), 20);
    assert!(
        list.lines().all(|line| line.starts_with("/d00/f")),
        "{list}"
    );

    let server = TestServer::start(|_| Action::Ok);
    let url = format!("http://{}/", server.address);
    let output = Command::new(BINARY)
        .args([
            "--driver", "epoll", "-c", "4", "-n", "300", "--json", "--quiet", "--zipf", "1.2",
        ])
        .args(["--files", site.join("files.txt").to_str().unwrap(), &url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        report["requests_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
    assert!(
        report["latency_ms"]["p50"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["latency_ms"]["p99"].as_f64().unwrap()
            >= report["latency_ms"]["p50"].as_f64().unwrap()
    );
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
    let output = Command::new(BINARY)
        .args(["--driver", "epoll", "--json", "--quiet", &url])
        .args([
            "--class",
            "gold:host=gold.test:url=/a.html:connections=2:requests=40",
        ])
        .args([
            "--class",
            "bronze:host=bronze.test:prefix=/bronze:connections=3:requests=60",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
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
        let second = 10 + i / 4;
        text.push_str(&format!(
            "10.0.0.1 - - [01/Jul/1995:00:00:{second:02} -0400] \"GET /p{}.html HTTP/1.0\" 200 {}\n",
            i % 7,
            100 + i
        ));
    }
    text.push_str("10.0.0.1 - - [01/Jul/1995:00:00:20 -0400] \"POST /form HTTP/1.0\" 200 5\n");
    text.push_str("garbage line\n");
    std::fs::write(&log, text).unwrap();
    for pace in [vec!["--as-fast-as-possible"], vec!["--speed", "100"]] {
        let server = TestServer::start(|_| Action::Ok);
        let url = format!("http://{}/", server.address);
        let output = Command::new(BINARY)
            .args([
                "--driver",
                "epoll",
                "-c",
                "3",
                "--json",
                "--quiet",
                "--replay",
                log.to_str().unwrap(),
            ])
            .args(&pace)
            .arg(&url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{pace:?}: {stderr}");
        assert!(stderr.contains("1 malformed"), "{stderr}");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["ok"].as_u64(), Some(30), "{pace:?}: {report}");
        assert_eq!(
            server.requests.load(std::sync::atomic::Ordering::SeqCst),
            30,
            "{pace:?}"
        );
    }
}
