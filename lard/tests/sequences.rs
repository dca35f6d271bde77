//! Exact-sequence tests: each policy's decisions drawn on small cases, one letter per member.

mod common;

use common::{draw, lard_policy, letter, loads, policy, policy_with};
use larder_lard::{Policy, PolicyConfig, PolicyKind, ServerId, TargetId};

#[test]
fn wrr_smooth_weights_5_1_1() {
    let mut wrr = policy(PolicyKind::Wrr, &[5, 1, 1]);
    assert_eq!(draw(wrr.as_mut(), TargetId(1), 0, 14), "aabacaaaabacaa");
}

#[test]
fn wrr_equal_weights_rotate_and_skip_a_drained_member() {
    let mut wrr = policy(PolicyKind::Wrr, &[1, 1, 1]);
    assert_eq!(draw(wrr.as_mut(), TargetId(1), 0, 6), "abcabc");
    wrr.set_draining(ServerId(1), true).expect("drain");
    assert_eq!(draw(wrr.as_mut(), TargetId(1), 0, 4), "acac");
}

#[test]
fn wrr_fallbacks_are_the_next_highest_current_weights() {
    let mut wrr = policy(PolicyKind::Wrr, &[5, 1, 1]);
    let decision = wrr.select(TargetId(1), 0, 0).expect("live");
    // After adding weights: a 5, b 1, c 1.
    assert_eq!(decision.server, ServerId(0));
    assert_eq!(decision.fallbacks, [Some(ServerId(1)), Some(ServerId(2))]);
}

#[test]
fn least_connections_fills_the_emptiest_and_returns_to_a_finished_member() {
    let mut lc = policy(PolicyKind::LeastConnections, &[1, 1, 1]);
    assert_eq!(draw(lc.as_mut(), TargetId(1), 0, 6), "abcabc");
    lc.on_finish(ServerId(1), TargetId(1), 0);
    assert_eq!(draw(lc.as_mut(), TargetId(1), 0, 1), "b");
    assert_eq!(loads(lc.as_ref()), vec![2, 2, 2]);
}

#[test]
fn least_connections_divides_load_by_weight() {
    // a has weight 2: it takes two requests for each of b's.
    let mut lc = policy(PolicyKind::LeastConnections, &[2, 1]);
    assert_eq!(draw(lc.as_mut(), TargetId(1), 0, 6), "abaaba");
}

#[test]
fn least_connections_ties_rotate_with_random() {
    let mut lc = policy(PolicyKind::LeastConnections, &[1, 1, 1, 1]);
    let picks: String = (0..4u64)
        .map(|random| letter(lc.select(TargetId(1), 0, random).expect("live").server))
        .collect();
    assert_eq!(picks, "abcd");
}

/// The member plain consistent hashing gives `target`.
fn home(target: TargetId, weights: &[u32]) -> ServerId {
    policy(PolicyKind::ConsistentHash, weights)
        .select(target, 0, 0)
        .expect("live")
        .server
}

#[test]
fn consistent_hash_sticks_to_the_home_and_moves_only_when_it_drains() {
    let target = TargetId::from_path("/index.html");
    let mut ch = policy(PolicyKind::ConsistentHash, &[1, 1, 1]);
    let first = ch.select(target, 0, 0).expect("live");
    for random in 0..20 {
        assert_eq!(
            ch.select(target, 0, random).expect("live").server,
            first.server
        );
    }
    ch.set_draining(first.server, true).expect("drain");
    let moved = ch.select(target, 0, 0).expect("live").server;
    assert_ne!(moved, first.server);
    assert_eq!(
        Some(moved),
        first.fallbacks[0],
        "the first fallback is where the target moves"
    );
    ch.set_draining(first.server, false).expect("undrain");
    assert_eq!(ch.select(target, 0, 0).expect("live").server, first.server);
}

/// Every node must build the same ring: the placement is a fixed function of ids and paths.
#[test]
fn consistent_hash_placement_is_fixed_across_releases() {
    let mut ch = policy(PolicyKind::ConsistentHash, &[1, 1, 1, 1]);
    let placement: String = [
        "/",
        "/index.html",
        "/a.png",
        "/b.css",
        "/c.js",
        "/d",
        "/e",
        "/f",
    ]
    .iter()
    .map(|path| {
        letter(
            ch.select(TargetId::from_path(path), 0, 0)
                .expect("live")
                .server,
        )
    })
    .collect();
    assert_eq!(placement, GOLDEN_PLACEMENT);
}
const GOLDEN_PLACEMENT: &str = "dbbabbdd";

#[test]
fn bounded_load_hashing_with_c_1_alternates_a_single_hot_target() {
    let target = TargetId::from_path("/hot");
    let home = home(target, &[1, 1]);
    let other = ServerId(1 - home.0);
    let mut config = PolicyConfig::new(PolicyKind::ConsistentHashBoundedLoad);
    config.balance_factor = 1.0;
    let mut chbl = policy_with(&config, &[1, 1]);
    // Capacity ⌈(L + 1) / 2⌉: the home takes a request whenever it is not ahead of the other member.
    let expected: String = (0..6)
        .map(|i| letter(if i % 2 == 0 { home } else { other }))
        .collect();
    assert_eq!(draw(chbl.as_mut(), target, 0, 6), expected);
}

#[test]
fn bounded_load_hashing_with_c_2_lets_the_home_run_ahead() {
    let target = TargetId::from_path("/hot");
    let home = letter(home(target, &[1, 1]));
    let mut config = PolicyConfig::new(PolicyKind::ConsistentHashBoundedLoad);
    config.balance_factor = 2.0;
    let mut chbl = policy_with(&config, &[1, 1]);
    // Capacity ⌈2 (L + 1) / 2⌉ = L + 1, and the home's load is at most L: it always fits.
    let expected: String = std::iter::repeat_n(home, 6).collect();
    assert_eq!(draw(chbl.as_mut(), target, 0, 6), expected);
}

fn small_lard(kind: PolicyKind) -> Box<dyn Policy> {
    lard_policy(kind, (2, 4, 100), &[1, 1])
}

#[test]
fn lard_moves_a_target_past_t_high_and_back_at_two_t_high() {
    let mut lard = small_lard(PolicyKind::Lard);
    let target = TargetId(7);
    // a takes 5 (load 5 > T_high 4 while b is below T_low 2: move); b then takes 8 (8 = 2·T_high: move back to
    // the least loaded, a with 5).
    assert_eq!(draw(lard.as_mut(), target, 0, 14), "aaaaabbbbbbbba");
    let view = &lard.targets(1)[0];
    assert_eq!(
        (view.target, view.servers.clone(), view.requests),
        (target, vec![ServerId(0)], 14)
    );
}

#[test]
fn lard_r_grows_the_set_then_shrinks_it_after_k() {
    let mut lardr = small_lard(PolicyKind::LardR);
    let target = TargetId(7);
    // a takes 5; the 6th finds a above T_high with b below T_low: b joins the set and takes it. Then the set's
    // least loaded member takes each request (ties to the set's first member).
    assert_eq!(draw(lardr.as_mut(), target, 0, 10), "aaaaabbbbb");
    assert_eq!(lardr.targets(1)[0].servers, vec![ServerId(0), ServerId(1)]);
    // Loads a 5, b 5. At K = 100 ms after the change the set is kept; after it, the most loaded leaves.
    assert_eq!(draw(lardr.as_mut(), target, 100, 1), "a");
    assert_eq!(lardr.targets(1)[0].servers.len(), 2);
    // Loads a 6, b 5: the most loaded member (a) leaves, the request goes to b.
    assert_eq!(draw(lardr.as_mut(), target, 101, 1), "b");
    let view = &lardr.targets(1)[0];
    assert_eq!(
        (view.servers.clone(), view.last_change_ms),
        (vec![ServerId(1)], 101)
    );
}
