//! The behaviour the LARD paper describes (Pai et al., ASPLOS '98, section 2), with its default thresholds
//! T_low 25, T_high 65, K 20 s, and loads driven by `on_start` plus external load.

mod common;

use common::policy;
use larder_lard::{Policy, PolicyKind, ServerId, TargetId};

const T_HIGH: u32 = 65;

/// Start `count` requests of `target`; returns the members chosen, in order, without repeats.
fn push(policy: &mut dyn Policy, target: TargetId, now_ms: u64, count: u32) -> Vec<ServerId> {
    let mut chosen: Vec<ServerId> = Vec::new();
    for _ in 0..count {
        let server = policy.select(target, now_ms, 0).expect("live").server;
        policy.on_start(server, target, now_ms);
        if chosen.last() != Some(&server) {
            chosen.push(server);
        }
    }
    chosen
}

/// Four members; member 0 will hold the hot target; the others carry `background` external load each.
fn skewed(kind: PolicyKind, background: [u32; 3]) -> Box<dyn Policy> {
    let mut policy = policy(kind, &[1, 1, 1, 1]);
    for (i, load) in background.iter().enumerate() {
        policy
            .set_external_load(ServerId(i as u32 + 1), *load)
            .expect("member");
    }
    policy
}

#[test]
fn lard_moves_a_hot_target_when_its_server_passes_t_high_and_another_is_below_t_low() {
    let mut lard = skewed(PolicyKind::Lard, [10, 40, 40]);
    let hot = TargetId::from_path("/hot.html");
    // Up to load 65 (= T_high) the hot target stays on member 0.
    assert_eq!(push(lard.as_mut(), hot, 0, T_HIGH), vec![ServerId(0)]);
    assert_eq!(lard.load(ServerId(0)), Some(T_HIGH));
    // A load of 65 is not above T_high: one more request goes to 0 and takes it to 66 ...
    assert_eq!(push(lard.as_mut(), hot, 0, 1), vec![ServerId(0)]);
    // ... and now 66 > T_high while member 1 (10) is below T_low: the target moves to member 1.
    assert_eq!(push(lard.as_mut(), hot, 0, 1), vec![ServerId(1)]);
    assert_eq!(lard.targets(1)[0].servers, vec![ServerId(1)]);
}

#[test]
fn lard_keeps_a_hot_target_until_two_t_high_when_no_member_is_below_t_low() {
    let mut lard = skewed(PolicyKind::Lard, [30, 40, 50]);
    let hot = TargetId::from_path("/hot.html");
    // Every other member is at or above T_low: locality wins until the load reaches 2·T_high = 130.
    assert_eq!(push(lard.as_mut(), hot, 0, 2 * T_HIGH), vec![ServerId(0)]);
    assert_eq!(
        push(lard.as_mut(), hot, 0, 1),
        vec![ServerId(1)],
        "moved to the least loaded"
    );
}

#[test]
fn lard_r_adds_a_member_under_load_and_shrinks_after_k() {
    const K_MS: u64 = 20_000;
    let mut lard_r = skewed(PolicyKind::LardR, [10, 40, 40]);
    let hot = TargetId::from_path("/hot.html");
    assert_eq!(push(lard_r.as_mut(), hot, 0, T_HIGH + 1), vec![ServerId(0)]);
    // Member 0 at 66 > T_high, member 1 at 10 < T_low: member 1 joins the set and takes the request.
    assert_eq!(push(lard_r.as_mut(), hot, 1_000, 1), vec![ServerId(1)]);
    let view = lard_r.targets(1)[0].clone();
    assert_eq!(
        (view.servers, view.last_change_ms),
        (vec![ServerId(0), ServerId(1)], 1_000)
    );
    // The set's least-loaded member takes the next requests: member 1, until it passes member 0.
    assert_eq!(push(lard_r.as_mut(), hot, 2_000, 30), vec![ServerId(1)]);
    // Exactly K after the change the set is kept ...
    push(lard_r.as_mut(), hot, 1_000 + K_MS, 1);
    assert_eq!(lard_r.targets(1)[0].servers.len(), 2);
    // ... and 1 ms later its most loaded member (0, at 66) leaves.
    push(lard_r.as_mut(), hot, 1_001 + K_MS, 1);
    let view = lard_r.targets(1)[0].clone();
    assert_eq!(
        (view.servers, view.last_change_ms),
        (vec![ServerId(1)], 1_001 + K_MS)
    );
}

#[test]
fn lard_r_grows_to_the_whole_membership_under_sustained_overload_but_no_further() {
    let mut lard_r = policy(PolicyKind::LardR, &[1, 1, 1]);
    let hot = TargetId::from_path("/hot.html");
    // No request finishes: every member in turn passes 2·T_high and the set grows to all three.
    push(lard_r.as_mut(), hot, 0, 3 * 2 * T_HIGH + 10);
    let view = lard_r.targets(1)[0].clone();
    assert_eq!(view.servers.len(), 3, "{view:?}");
}
