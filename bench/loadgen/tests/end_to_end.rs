//! End-to-end runs against a tiny threaded std::net HTTP/1.1 server on loopback.
//!
//! The server decides each response from the global arrival number of the request, so with pipeline depth 1
//! (every request reaches the server exactly once) the expected count of every outcome is known exactly.
//! Every run asserts `sent == ok + bad_status + timeout + short_body + parse + closed`.

mod common;

use common::{Action, TestServer};
use larder_loadgen::compare::compare;
use larder_loadgen::cores::CoreList;
use larder_loadgen::{
    run, ClassConfig, ClassReport, DriverChoice, RunConfig, RunReport, WorkloadSpec,
};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn class(name: &str, host: &str, connections: usize, requests: u64) -> ClassConfig {
    ClassConfig {
        name: name.into(),
        workload: WorkloadSpec::Urls(vec!["/a.html".into(), "/b.html".into()]),
        connections,
        pipeline: 1,
        rate_per_sec: None,
        requests_max: Some(requests),
        seed: 1,
        host: host.into(),
        prefix: String::new(),
    }
}

fn config(address: SocketAddr, driver: DriverChoice, classes: Vec<ClassConfig>) -> RunConfig {
    RunConfig {
        address,
        cores: CoreList::select(Some("1"), None).unwrap(),
        driver,
        classes,
        duration: None,
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(10),
        keepalive: true,
        headers: Vec::new(),
    }
}

fn assert_accounted(name: &str, report: &ClassReport) {
    let e = &report.errors_by_kind;
    let outcomes = report.ok + e.bad_status + e.timeout + e.short_body + e.parse + e.closed;
    assert_eq!(
        report.sent, outcomes,
        "{name}: sent != ok + request errors ({report:?})"
    );
    assert_eq!(report.responses, report.ok + e.bad_status, "{name}");
    assert_eq!(
        report.latency_ms.count, report.ok,
        "{name}: one latency per ok response"
    );
}

fn run_quiet(config: &RunConfig) -> RunReport {
    run(config, |_| {}).unwrap_or_else(|e| panic!("run failed: {e}"))
}

fn mixed(n: u64) -> Action {
    match n {
        n if n % 17 == 5 => Action::Close,
        n if n % 23 == 7 => Action::ShortBody,
        n if n % 29 == 11 => Action::Garbage,
        n if n % 10 == 3 => Action::Status500,
        n if n % 2 == 0 => Action::Chunked,
        _ => Action::Ok,
    }
}

#[test]
fn every_request_is_accounted_for_with_closes_errors_and_chunked_bodies() {
    for driver in [DriverChoice::Epoll, DriverChoice::Auto] {
        let server = TestServer::start(mixed);
        let requests = 600;
        let report = run_quiet(&config(
            server.address,
            driver,
            vec![class("default", "t.test", 8, requests)],
        ));
        let expected =
            |action: Action| (0..requests).filter(|&n| mixed(n) == action).count() as u64;
        let e = &report.total.errors_by_kind;
        assert_eq!(report.total.sent, requests, "{driver:?}");
        assert_eq!(
            server.requests.load(Ordering::SeqCst),
            requests,
            "{driver:?}: server saw every request once"
        );
        assert_eq!(
            report.total.ok,
            expected(Action::Ok) + expected(Action::Chunked),
            "{driver:?}"
        );
        assert_eq!(e.bad_status, expected(Action::Status500), "{driver:?}");
        assert_eq!(e.closed, expected(Action::Close), "{driver:?}");
        assert_eq!(e.short_body, expected(Action::ShortBody), "{driver:?}");
        assert_eq!(e.parse, expected(Action::Garbage), "{driver:?}");
        assert_eq!(e.timeout + e.connect, 0, "{driver:?}");
        assert_accounted("total", &report.total);
    }
}

#[test]
fn pipelined_keepalive_and_no_keepalive_runs_account_for_everything() {
    let server = TestServer::start(|n| {
        if n % 3 == 0 {
            Action::Chunked
        } else {
            Action::Ok
        }
    });
    let mut pipelined = config(
        server.address,
        DriverChoice::Epoll,
        vec![class("default", "t.test", 4, 1000)],
    );
    pipelined.classes[0].pipeline = 8;
    let report = run_quiet(&pipelined);
    assert_eq!(report.total.ok, 1000);
    assert_accounted("pipelined", &report.total);

    let mut one_shot = config(
        server.address,
        DriverChoice::Epoll,
        vec![class("default", "t.test", 4, 200)],
    );
    one_shot.keepalive = false;
    let report = run_quiet(&one_shot);
    assert_eq!(report.total.ok, 200);
    assert_accounted("no-keepalive", &report.total);
}

#[test]
fn a_server_that_never_answers_is_counted_as_timeouts() {
    let server = TestServer::start(|n| if n % 5 == 0 { Action::Hang } else { Action::Ok });
    let mut hanging = config(
        server.address,
        DriverChoice::Epoll,
        vec![class("default", "t.test", 2, 20)],
    );
    hanging.timeout = Duration::from_millis(200);
    let report = run_quiet(&hanging);
    assert_eq!(report.total.sent, 20);
    assert_eq!(
        report.total.errors_by_kind.timeout, 4,
        "requests 0, 5, 10, 15 hang"
    );
    assert_eq!(report.total.ok, 16);
    assert_accounted("timeouts", &report.total);
}

#[test]
fn classes_are_tagged_by_host_and_reported_separately() {
    let server = TestServer::start(|_| Action::Ok);
    let classes = vec![
        class("gold", "gold.test", 2, 300),
        class("bronze", "bronze.test", 6, 500),
    ];
    let report = run_quiet(&config(server.address, DriverChoice::Epoll, classes));
    let by_host = server.by_host.lock().unwrap().clone();
    assert_eq!(report.classes["gold"].ok, 300);
    assert_eq!(report.classes["bronze"].ok, 500);
    assert_eq!(by_host.get("gold.test"), Some(&300), "{by_host:?}");
    assert_eq!(by_host.get("bronze.test"), Some(&500), "{by_host:?}");
    assert_eq!(report.total.ok, 800);
    for (name, class) in &report.classes {
        assert_accounted(name, class);
    }
}

#[test]
fn open_loop_sends_its_budget_on_schedule() {
    let server = TestServer::start(|_| Action::Ok);
    let mut open = config(
        server.address,
        DriverChoice::Epoll,
        vec![class("default", "t.test", 4, 200)],
    );
    open.classes[0].rate_per_sec = Some(4000.0);
    let report = run_quiet(&open);
    assert_eq!(report.total.sent, 200);
    assert_eq!(report.total.ok, 200);
    assert_accounted("open loop", &report.total);
}

#[test]
fn refused_connections_are_connect_errors_not_requests() {
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = unused.local_addr().unwrap();
    drop(unused);
    let mut refused = config(
        address,
        DriverChoice::Epoll,
        vec![class("default", "t.test", 2, 10)],
    );
    refused.duration = Some(Duration::from_millis(100));
    let report = run_quiet(&refused);
    assert!(
        report.total.errors_by_kind.connect > 0,
        "{:?}",
        report.total
    );
    assert_eq!(report.total.sent, 0);
    assert_accounted("refused", &report.total);
}

#[test]
fn a_run_bounded_only_by_requests_ends_when_the_server_is_gone() {
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = unused.local_addr().unwrap();
    drop(unused);
    let gone = config(
        address,
        DriverChoice::Epoll,
        vec![class("default", "t.test", 2, 10)],
    );
    let report = run_quiet(&gone);
    let failures = u64::from(larder_loadgen::engine::CONNECT_FAILURES_MAX);
    assert_eq!(
        report.total.errors_by_kind.connect,
        2 * failures,
        "each connection gives up"
    );
    assert_eq!(report.total.sent, 0);
}

#[test]
fn compare_alternates_servers_and_takes_medians() {
    let good = TestServer::start(|_| Action::Ok);
    let failing = TestServer::start(|_| Action::Status500);
    let a = config(
        good.address,
        DriverChoice::Epoll,
        vec![class("default", "t.test", 2, 50)],
    );
    let b = config(
        failing.address,
        DriverChoice::Epoll,
        vec![class("default", "t.test", 2, 50)],
    );
    let mut order = Vec::new();
    let comparison = compare(
        &a,
        &b,
        2,
        |_| {},
        |side, round, _| order.push((side, round)),
    )
    .unwrap();
    use larder_loadgen::compare::Side::{A, B};
    assert_eq!(order, vec![(A, 0), (B, 0), (B, 1), (A, 1)]);
    assert_eq!(good.requests.load(Ordering::SeqCst), 100);
    assert_eq!(failing.requests.load(Ordering::SeqCst), 100);
    assert_eq!(comparison.median_a.errors, 0.0);
    assert_eq!(comparison.median_b.errors, 50.0);
    assert!(comparison.median_a.requests_per_sec > 0.0);
}
