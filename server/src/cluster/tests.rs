//! The directory: exact sequences for each routing rule, and a model test of routing and the wanted queue.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use proptest::prelude::*;

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

const SELF_PORT: u16 = 1;

fn directory(config: DirectoryConfig) -> Directory {
    Directory::new(addr(SELF_PORT), config)
}

fn assign(target: &str, ports: &[u16]) -> (String, Vec<String>) {
    (
        target.to_string(),
        ports.iter().map(|&port| addr(port).to_string()).collect(),
    )
}

#[test]
fn unknown_target_is_wanted_once_then_routed_by_its_assignment() {
    let dir = directory(DirectoryConfig::default());
    assert_eq!(dir.route("/a", 0), Route::Unknown);
    assert_eq!(dir.route("/a", 1), Route::Unknown, "still unknown");
    assert_eq!(dir.take_wanted(10), vec!["/a".to_string()], "asked once");
    assert!(dir.take_wanted(10).is_empty());
    dir.apply(
        vec![assign("/a", &[2, 3]), assign("/b", &[3, SELF_PORT])],
        1000,
        5,
    );
    assert_eq!(dir.route("/a", 6), Route::Forward(addr(2)));
    assert_eq!(dir.route("/b", 6), Route::Local, "this node is in /b's set");
    assert!(dir.take_wanted(10).is_empty(), "fresh entries ask nothing");
    assert_eq!(dir.snapshot().assignments_applied, 2);
}

#[test]
fn expired_assignment_keeps_routing_during_the_grace_and_is_asked_for_again() {
    let dir = directory(DirectoryConfig::default());
    dir.apply(vec![assign("/a", &[2])], 1000, 0);
    assert_eq!(
        dir.route("/a", 1000),
        Route::Forward(addr(2)),
        "stale route"
    );
    assert_eq!(dir.take_wanted(10), vec!["/a".to_string()]);
    assert_eq!(
        dir.route("/a", 1000 + ASK_AGAIN_MS - 1),
        Route::Forward(addr(2))
    );
    assert!(
        dir.take_wanted(10).is_empty(),
        "asked less than ASK_AGAIN_MS ago"
    );
    assert_eq!(
        dir.route("/a", 1000 + ASK_AGAIN_MS),
        Route::Forward(addr(2))
    );
    assert_eq!(dir.take_wanted(10), vec!["/a".to_string()], "asked again");
    assert_eq!(
        dir.route("/a", 1000 + STALE_GRACE_MS),
        Route::Unknown,
        "grace over"
    );
}

#[test]
fn suspect_peer_is_passed_over_for_suspect_ms() {
    let dir = directory(DirectoryConfig::default());
    dir.apply(vec![assign("/a", &[2, 3]), assign("/b", &[2])], 100_000, 0);
    dir.peer_failed(addr(2), 10);
    assert!(dir.is_suspect(addr(2), 10));
    assert_eq!(
        dir.route("/a", 11),
        Route::Forward(addr(3)),
        "next of the set"
    );
    assert_eq!(
        dir.route("/b", 11),
        Route::Local,
        "no other node: served here"
    );
    assert_eq!(
        dir.route("/b", 10 + SUSPECT_MS),
        Route::Forward(addr(2)),
        "suspicion over"
    );
    assert!(!dir.is_suspect(addr(2), 10 + SUSPECT_MS));
}

#[test]
fn wanted_queue_is_bounded_and_counts_drops() {
    let dir = directory(DirectoryConfig {
        lock_shards: 1,
        wanted_max: 3,
        ..DirectoryConfig::default()
    });
    for path in ["/1", "/2", "/3", "/4", "/5"] {
        assert_eq!(dir.route(path, 0), Route::Unknown);
    }
    let snapshot = dir.snapshot();
    assert_eq!(snapshot.wanted_queued, 3);
    assert_eq!(snapshot.wanted_dropped, 2);
    assert_eq!(
        dir.take_wanted(2),
        vec!["/1".to_string(), "/2".to_string()],
        "oldest first"
    );
    // A dropped path is asked for on a later request (it was never marked asked).
    dir.route("/4", 1);
    assert_eq!(
        dir.take_wanted(10),
        vec!["/3".to_string(), "/4".to_string()]
    );
}

#[test]
fn table_is_bounded_and_evicts_the_earliest_expiry_first() {
    let dir = directory(DirectoryConfig {
        entries_max: 32,
        lock_shards: 1,
        ..DirectoryConfig::default()
    });
    let batch: Vec<_> = (0..32).map(|i| assign(&format!("/{i}"), &[2])).collect();
    dir.apply(batch, 1000, 0);
    dir.apply(vec![assign("/late", &[3])], 5000, 0);
    let snapshot = dir.snapshot();
    assert_eq!(snapshot.entries, 31, "32 - 2 evicted + 1");
    assert_eq!(snapshot.evictions, 2);
    assert_eq!(dir.route("/late", 1), Route::Forward(addr(3)));
    for i in 0..200 {
        dir.route(&format!("/u{i}"), 2);
        assert!(dir.snapshot().entries <= 32);
    }
}

#[test]
fn take_wanted_is_fair_across_lock_shards() {
    let dir = directory(DirectoryConfig {
        lock_shards: 4,
        ..DirectoryConfig::default()
    });
    for i in 0..100 {
        dir.route(&format!("/{i}"), 0);
    }
    let mut seen = HashSet::new();
    let mut batches = 0;
    loop {
        let batch = dir.take_wanted(16);
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 16);
        for path in batch {
            assert!(seen.insert(path.clone()), "{path} taken twice");
        }
        batches += 1;
        assert!(batches <= 100, "bounded");
    }
    assert_eq!(seen.len(), 100, "every wanted path is taken exactly once");
}

/// The routing rules written out plainly, for the model test.
#[derive(Default)]
struct Model {
    /// path → (peers without self, local, expires_ms, asked_ms)
    entries: HashMap<String, (Vec<SocketAddr>, bool, u64, Option<u64>)>,
    queued: Vec<String>,
    suspects: HashMap<SocketAddr, u64>,
}

impl Model {
    fn push(&mut self, path: &str) {
        if !self.queued.iter().any(|queued| queued == path) {
            self.queued.push(path.to_string());
        }
    }

    fn route(&mut self, path: &str, now: u64) -> Route {
        let Some(entry) = self.entries.get(path).cloned() else {
            self.push(path);
            self.entries
                .insert(path.to_string(), (Vec::new(), false, 0, Some(now)));
            return Route::Unknown;
        };
        let (peers, local, expires, asked) = entry;
        let fresh = now < expires;
        if !fresh && asked.is_none_or(|asked| now - asked >= ASK_AGAIN_MS) {
            self.push(path);
            self.entries.get_mut(path).unwrap().3 = Some(now);
        }
        if !(fresh || now < expires + STALE_GRACE_MS) || (!local && peers.is_empty()) {
            return if fresh { Route::Local } else { Route::Unknown };
        }
        if local {
            return Route::Local;
        }
        peers
            .into_iter()
            .find(|peer| self.suspects.get(peer).is_none_or(|&until| until <= now))
            .map_or(Route::Local, Route::Forward)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Route(u8),
    Apply(Vec<(u8, Vec<u16>)>, u64),
    Take(usize),
    Fail(u16),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12).prop_map(Op::Route),
        2 => (prop::collection::vec((0u8..12, prop::collection::vec(1u16..5, 0..4)), 0..6), 0u64..3000)
            .prop_map(|(batch, ttl)| Op::Apply(batch, ttl)),
        1 => (0usize..8).prop_map(Op::Take),
        1 => (2u16..5).prop_map(Op::Fail),
        2 => (0u64..4000).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Routing matches the model; the wanted queue holds each path once and hands out exactly the model's
    /// queue (as a multiset per take: lock shards interleave the order).
    #[test]
    fn directory_matches_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let dir = directory(DirectoryConfig { lock_shards: 3, ..DirectoryConfig::default() });
        let mut model = Model::default();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Route(target) => {
                    let path = format!("/{target}");
                    prop_assert_eq!(dir.route(&path, now), model.route(&path, now), "{} at {}", path, now);
                }
                Op::Apply(batch, ttl) => {
                    let assignments: Vec<_> = batch
                        .iter()
                        .map(|(target, ports)| assign(&format!("/{target}"), ports))
                        .collect();
                    for (target, ports) in &batch {
                        let peers: Vec<_> = ports.iter().filter(|&&p| p != SELF_PORT).map(|&p| addr(p)).collect();
                        let local = ports.contains(&SELF_PORT);
                        model.entries.insert(format!("/{target}"), (peers, local, now + ttl, None));
                    }
                    dir.apply(assignments, ttl, now);
                }
                Op::Take(n) => {
                    let mut taken = dir.take_wanted(n);
                    prop_assert!(taken.len() <= n);
                    prop_assert_eq!(taken.len(), n.min(model.queued.len()));
                    let unique: HashSet<_> = taken.iter().cloned().collect();
                    prop_assert_eq!(unique.len(), taken.len(), "a path twice in one take");
                    for path in &taken {
                        prop_assert!(model.queued.contains(path), "{} was not queued", path);
                    }
                    model.queued.retain(|queued| !unique.contains(queued));
                    taken.clear();
                }
                Op::Fail(port) => {
                    dir.peer_failed(addr(port), now);
                    model.suspects.insert(addr(port), now + SUSPECT_MS);
                }
                Op::Advance(ms) => now += ms,
            }
        }
    }
}
