//! `larder dispatch` in front of real back-ends on loopback: byte-identical relaying, per-request distribution
//! on one persistent connection, failure without loss, drain, a returning node, bad input and limits.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{config, expected_response, reaches, start, two_backends, Backend, Client, Mode};
use larder_dispatch::BackendId;
use larder_lard::PolicyKind;

#[test]
fn responses_are_byte_identical_and_the_connection_stays_open() {
    let (_backends, dispatcher) = two_backends(PolicyKind::LardR);
    let mut client = Client::connect(dispatcher.local_addr());
    for (method, path) in [
        ("GET", "/small.txt"),
        ("GET", "/big/one.bin"),
        ("GET", "/chunked/a"),
        ("HEAD", "/small.txt"),
        ("HEAD", "/chunked/a"),
        ("GET", "/small.txt?query=ignored-by-the-key"),
        ("GET", "/big/one.bin"),
    ] {
        let response = client.request(method, path).expect("response");
        let backend = response.backend.expect("tagged by a back-end");
        assert_eq!(response.status, 200, "{method} {path}");
        assert!(
            response.raw == expected_response(backend, method, path),
            "{method} {path}: {} bytes relayed differ from back-end {backend}'s response",
            response.raw.len()
        );
    }
    // Seven exchanges on one connection: the client never reconnected.
    dispatcher.shutdown();
    dispatcher.join().expect("join");
}

#[test]
fn distribution_is_per_request_on_one_persistent_connection() {
    let (_backends, dispatcher) = two_backends(PolicyKind::Lard);
    let mut client = Client::connect(dispatcher.local_addr());
    // Assignment: 20 new targets, one at a time (no load), spread by LARD's random tie-break.
    let mut owner = BTreeMap::new();
    for index in 0..20 {
        let path = format!("/t{index}");
        let response = client.get(&path).expect("response");
        owner.insert(path, response.backend.expect("tag"));
    }
    let on = |backend: u32| {
        owner
            .iter()
            .find(|(_, b)| **b == backend)
            .map(|(path, _)| path.clone())
            .unwrap_or_else(|| panic!("no target assigned to back-end {backend}: {owner:?}"))
    };
    let (first, second) = (on(0), on(1));
    // Alternating requests on the same connection go where each target lives.
    for round in 0..10 {
        for (path, backend) in [(&first, 0), (&second, 1)] {
            let response = client.get(path).expect("response");
            assert_eq!(response.backend, Some(backend), "round {round} {path}");
        }
    }
    // And every target stayed with its back-end.
    for (path, backend) in &owner {
        assert_eq!(
            client.get(path).expect("response").backend,
            Some(*backend),
            "{path}"
        );
    }
    dispatcher.join().expect("join");
}

#[test]
fn a_backend_killed_during_a_load_run_costs_no_failed_get_and_comes_back() {
    let mut backends: Vec<Option<Backend>> = (0..3)
        .map(|id| Some(Backend::start(id, Mode::Normal)))
        .collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.as_ref().unwrap().addr).collect();
    let mut settings = config(&addrs, PolicyKind::LardR);
    settings.health_interval_ms = 20;
    let dispatcher = start(settings);
    let handle = dispatcher.handle();
    let address = dispatcher.local_addr();
    const CONNECTIONS: usize = 4;
    const REQUESTS_PER_CONNECTION: usize = 300;
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|connection| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut client = Client::connect(address);
                let mut failures = Vec::new();
                for index in 0..REQUESTS_PER_CONNECTION {
                    let path = format!("/t{}", (index * 7 + connection) % 60);
                    match client.get(&path) {
                        Ok(response) if response.status == 200 => {}
                        Ok(response) => failures.push(format!("{path}: {}", response.status)),
                        Err(error) => {
                            failures.push(format!("{path}: {error}"));
                            client = Client::connect(address);
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                failures
            })
        })
        .collect();
    // Kill back-end 1 a third of the way through.
    for _ in 0..4_000 {
        if done.load(Ordering::SeqCst) >= CONNECTIONS * REQUESTS_PER_CONNECTION / 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let killed_at = done.load(Ordering::SeqCst);
    let killed_addr = backends[1].take().unwrap().kill();
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|client| client.join().expect("client thread"))
        .collect();
    assert!(
        killed_at < CONNECTIONS * REQUESTS_PER_CONNECTION,
        "the kill happened during the run ({killed_at} done)"
    );
    assert!(failures.is_empty(), "failed GETs: {failures:?}");
    assert!(
        handle.backends()[1].down,
        "killed back-end is down: {:?}",
        handle.backends()
    );
    // The node returns on the same port; the active check brings it back and new targets reach it.
    let returned = Backend::start_on(1, Mode::Normal, killed_addr);
    let mut up = false;
    for _ in 0..1_000 {
        if !handle.backends()[1].down {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(up, "returning node not marked up: {:?}", handle.backends());
    let mut client = Client::connect(address);
    assert!(
        reaches(&mut client, "/new", 1),
        "no new target reached the returning node"
    );
    assert!(returned.served.load(Ordering::SeqCst) > 0);
    dispatcher.join().expect("join");
}

#[test]
fn drain_moves_new_targets_away_and_lets_in_flight_requests_finish() {
    let (backends, dispatcher) = two_backends(PolicyKind::Lard);
    let handle = dispatcher.handle();
    let address = dispatcher.local_addr();
    // An in-flight request, held by its back-end.
    let slow = std::thread::spawn(move || Client::connect(address).get("/slow"));
    let held = (0..5_000)
        .find_map(|_| {
            let arrived = backends
                .iter()
                .find(|b| b.gate.arrived.load(Ordering::SeqCst) > 0);
            if arrived.is_none() {
                std::thread::sleep(Duration::from_millis(2));
            }
            arrived.map(|backend| backend.id)
        })
        .expect("the held request reached a back-end");
    handle.set_draining(BackendId(held), true).expect("drain");
    assert!(handle.backends()[held as usize].drained);
    assert_eq!(
        handle.backends()[held as usize].in_flight,
        1,
        "in flight while draining"
    );
    // New targets avoid the drained node.
    let mut client = Client::connect(address);
    for index in 0..20 {
        let response = client.get(&format!("/fresh{index}")).expect("response");
        assert_eq!(response.backend, Some(1 - held), "/fresh{index}");
    }
    // The held request finishes on the drained node.
    backends[held as usize].gate.open();
    let response = slow.join().unwrap().expect("held response");
    assert_eq!((response.status, response.backend), (200, Some(held)));
    assert_eq!(handle.backends()[held as usize].in_flight, 0);
    // Undrained, it takes new targets again.
    handle
        .set_draining(BackendId(held), false)
        .expect("undrain");
    assert!(
        reaches(&mut client, "/again", held),
        "undrained node gets no new target"
    );
    assert!(
        handle.set_draining(BackendId(7), true).is_err(),
        "unknown back-end"
    );
    dispatcher.join().expect("join");
}

#[test]
fn a_malformed_backend_response_is_502_and_the_dispatcher_survives() {
    let backend = Backend::start(0, Mode::Malformed);
    let dispatcher = start(config(&[backend.addr], PolicyKind::LardR));
    let mut client = Client::connect(dispatcher.local_addr());
    let response = client.get("/x").expect("response");
    assert_eq!(response.status, 502);
    let response = client.get("/y").expect("the connection survived");
    assert_eq!(response.status, 502);
    let mut other = Client::connect(dispatcher.local_addr());
    assert_eq!(other.get("/z").expect("new connection").status, 502);
    assert_eq!(dispatcher.handle().counters().responses_502, 3);
    dispatcher.join().expect("join");
}

#[test]
fn the_pending_cap_answers_503_with_retry_after() {
    let backend = Backend::start(0, Mode::Normal);
    let mut settings = config(&[backend.addr], PolicyKind::LardR);
    settings.pending_per_backend_max = 2;
    let dispatcher = start(settings);
    let address = dispatcher.local_addr();
    let held: Vec<_> = (0..2)
        .map(|index| {
            std::thread::spawn(move || Client::connect(address).get(&format!("/slow{index}")))
        })
        .collect();
    backend.gate.wait_arrived(2);
    let mut client = Client::connect(address);
    let response = client.get("/over").expect("response");
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    backend.gate.open();
    for request in held {
        assert_eq!(request.join().unwrap().expect("held response").status, 200);
    }
    // A client can read its whole response before the dispatcher's shard finishes the exchange and frees the
    // pending slot: wait (bounded) for the slots to be freed, then the cap must let the next request through.
    let handle = dispatcher.handle();
    let freed = (0..1_000).any(|_| {
        let idle = handle.backends()[0].in_flight == 0;
        if !idle {
            std::thread::sleep(Duration::from_millis(10));
        }
        idle
    });
    assert!(freed, "pending slots not freed: {:?}", handle.backends());
    assert_eq!(
        client.get("/over").expect("after the cap freed").status,
        200
    );
    dispatcher.join().expect("join");
}

#[test]
fn bad_requests_are_answered_like_a_server() {
    let backend = Backend::start(0, Mode::Normal);
    let dispatcher = start(config(&[backend.addr], PolicyKind::LardR));
    let address = dispatcher.local_addr();
    let mut client = Client::connect(address);
    client.send_raw(b"GET /\x01 HTTP/1.1\r\n\r\n");
    assert_eq!(client.read_response(false).expect("response").status, 400);
    assert!(client.is_closed());
    let mut client = Client::connect(address);
    let huge = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    client.send_raw(huge.as_bytes());
    assert_eq!(client.read_response(false).expect("response").status, 431);
    let mut client = Client::connect(address);
    client.send_raw(b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(client.read_response(false).expect("response").status, 501);
    // A request with a body is forwarded whole.
    let mut client = Client::connect(address);
    client.send_raw(b"POST /post HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    let response = client.read_response(false).expect("response");
    assert_eq!(response.raw, expected_response(0, "POST", "/post"));
    assert_eq!(backend.served.load(Ordering::SeqCst), 1);
    dispatcher.join().expect("join");
}

#[test]
fn shutdown_finishes_the_exchange_in_flight() {
    let backend = Backend::start(0, Mode::Normal);
    let dispatcher = start(config(&[backend.addr], PolicyKind::LardR));
    let address = dispatcher.local_addr();
    let held = std::thread::spawn(move || Client::connect(address).get("/slow"));
    backend.gate.wait_arrived(1);
    dispatcher.shutdown();
    backend.gate.open();
    let response = held.join().unwrap().expect("in-flight response");
    assert_eq!(response.status, 200);
    let report = dispatcher.join().expect("join");
    assert!(report.fully_drained(), "{report:?}");
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "no longer accepting"
    );
}

#[test]
fn a_backend_that_does_not_answer_in_time_is_504_and_marked_down() {
    let backend = Backend::start(0, Mode::Normal);
    let mut settings = config(&[backend.addr], PolicyKind::LardR);
    settings.backend_timeout_ms = 100;
    let dispatcher = start(settings);
    let handle = dispatcher.handle();
    let mut client = Client::connect(dispatcher.local_addr());
    let response = client.get("/slow").expect("response");
    assert_eq!(response.status, 504);
    assert!(handle.backends()[0].down, "{:?}", handle.backends());
    // With its only back-end down the dispatcher answers at once.
    let response = client.get("/other").expect("response");
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    backend.gate.open();
    let counters = handle.counters();
    assert_eq!((counters.responses_504, counters.responses_503), (1, 1));
    dispatcher.join().expect("join");
}
