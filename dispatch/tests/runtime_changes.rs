//! Changes to a running dispatcher through its handle, with real back-ends on loopback: back-ends added to an
//! empty dispatcher serve, an added dead back-end is found down by the health check, a removed one gets no new
//! request, a policy swap takes effect on the next request, refused changes change nothing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{config, start, Backend, Client, Mode};
use larder_dispatch::{BackendId, DispatchError, TableError};
use larder_lard::{PolicyConfig, PolicyKind};

/// A bounded wait: `condition` is tried every 10 ms for at most 20 s.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for: {what}");
}

/// An address nothing listens on (a port bound and released).
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

#[test]
fn backends_added_to_an_empty_dispatcher_serve_and_removed_ones_stop() {
    let dispatcher = start(config(&[], PolicyKind::Wrr));
    let handle = dispatcher.handle();
    let mut client = Client::connect(dispatcher.local_addr());
    let response = client.get("/a").expect("response");
    assert_eq!(response.status, 503, "no back-end yet");

    let backends = [
        Backend::start(0, Mode::Normal),
        Backend::start(1, Mode::Normal),
    ];
    let first = handle.add_backend(backends[0].addr, 1).expect("add");
    let second = handle.add_backend(backends[1].addr, 1).expect("add");
    assert_eq!((first, second), (BackendId(0), BackendId(1)));
    assert_eq!(handle.backend_by_addr(backends[1].addr), Some(second));
    // WRR over the two: both serve, several times each on one persistent connection (pooled back-end
    // connections of added back-ends work like the initial ones').
    let mut served = [0u32; 2];
    for index in 0..20 {
        let response = client.get(&format!("/a{index}")).expect("response");
        assert_eq!(response.status, 200, "/a{index}");
        served[response.backend.expect("tag") as usize] += 1;
    }
    assert_eq!(served, [10, 10], "weighted round robin of equal weights");

    handle.remove_backend(first).expect("remove");
    assert_eq!(handle.backend_by_addr(backends[0].addr), None);
    for index in 0..10 {
        let response = client.get(&format!("/b{index}")).expect("response");
        assert_eq!(response.backend, Some(1), "/b{index} after removal");
    }
    // The slot is free again (nothing in flight) and the address may come back.
    assert_eq!(
        handle.add_backend(backends[0].addr, 1).expect("re-add"),
        first
    );
    assert!(matches!(
        handle.add_backend(backends[0].addr, 1),
        Err(DispatchError::Backend(TableError::DuplicateBackend { .. }))
    ));
    assert!(matches!(
        handle.remove_backend(BackendId(9)),
        Err(DispatchError::Backend(TableError::UnknownBackend(_)))
    ));
    dispatcher.join().expect("join");
}

#[test]
fn an_added_backend_is_health_checked_like_the_initial_ones() {
    let live = Backend::start(0, Mode::Normal);
    let mut settings = config(&[live.addr], PolicyKind::Wrr);
    settings.health_interval_ms = 20;
    let dispatcher = start(settings);
    let handle = dispatcher.handle();
    let dead = handle.add_backend(dead_addr(), 1).expect("add");
    wait_for(
        "the active check marks the added dead back-end down",
        || handle.backends()[dead.0 as usize].down,
    );
    assert!(!handle.backends()[0].down, "the live one stays up");
    let mut client = Client::connect(dispatcher.local_addr());
    for index in 0..10 {
        let response = client.get(&format!("/c{index}")).expect("response");
        assert_eq!(
            (response.status, response.backend),
            (200, Some(0)),
            "/c{index}"
        );
    }
    dispatcher.join().expect("join");
}

#[test]
fn a_policy_swap_takes_effect_on_the_next_request_and_keeps_drain() {
    let backends = [
        Backend::start(0, Mode::Normal),
        Backend::start(1, Mode::Normal),
        Backend::start(2, Mode::Normal),
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|backend| backend.addr).collect();
    let dispatcher = start(config(&addrs, PolicyKind::Wrr));
    let handle = dispatcher.handle();
    handle.set_draining(BackendId(2), true).expect("drain");
    let mut client = Client::connect(dispatcher.local_addr());
    let tags = |client: &mut Client| -> Vec<u32> {
        (0..6)
            .map(|_| client.get("/same").expect("response").backend.expect("tag"))
            .collect()
    };
    // WRR spreads one target over both live back-ends.
    let before = tags(&mut client);
    assert!(
        before.contains(&0) && before.contains(&1),
        "wrr: {before:?}"
    );
    assert!(!before.contains(&2), "drained: {before:?}");

    let hashing = PolicyConfig::new(PolicyKind::ConsistentHash);
    assert!(handle.set_policy(hashing.clone()).expect("swap"));
    assert!(!handle.set_policy(hashing).expect("same"), "no change");
    assert_eq!(handle.policy().kind, PolicyKind::ConsistentHash);
    // Consistent hashing pins the target to one back-end, never the drained one.
    let after = tags(&mut client);
    assert!(after.iter().all(|tag| *tag == after[0]), "ch: {after:?}");
    assert_ne!(after[0], 2, "drain kept across the swap");
    assert!(handle.backends()[2].drained);

    // Refused changes change nothing.
    let mut invalid = PolicyConfig::new(PolicyKind::LardR);
    invalid.lard.t_low = 0;
    assert!(handle.set_policy(invalid).is_err());
    assert_eq!(handle.policy().kind, PolicyKind::ConsistentHash);
    assert!(handle.set_weight(BackendId(0), 0).is_err());
    assert_eq!(handle.backends()[0].weight, 1);
    handle.set_weight(BackendId(0), 3).expect("weight");
    handle.set_external_load(BackendId(1), 7).expect("load");
    let status = handle.backends();
    assert_eq!((status[0].weight, status[1].external_load), (3, 7));
    dispatcher.join().expect("join");
}
