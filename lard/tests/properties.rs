//! Property tests (proptest) of the policies' invariants. Each case prints its inputs (and seed) on failure.

mod common;

use std::collections::HashSet;

use common::{lard_policy, policy_with};
use larder_lard::{Policy, PolicyConfig, PolicyKind, ServerId, TargetId};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

/// One step of a scripted run.
#[derive(Clone, Debug)]
enum Op {
    /// Select target `target` and start the request.
    Select {
        target: u8,
        random: u64,
    },
    /// Finish the in-flight request at `pick` modulo their number.
    Finish {
        pick: usize,
    },
    Advance {
        ms: u16,
    },
    Drain {
        server: u8,
        draining: bool,
    },
    Add {
        server: u8,
    },
    Remove {
        server: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..12, any::<u64>()).prop_map(|(target, random)| Op::Select { target, random }),
        4 => any::<usize>().prop_map(|pick| Op::Finish { pick }),
        2 => (0u16..40).prop_map(|ms| Op::Advance { ms }),
        1 => (0u8..6, any::<bool>()).prop_map(|(server, draining)| Op::Drain { server, draining }),
        1 => (0u8..6).prop_map(|server| Op::Add { server }),
        1 => (0u8..6).prop_map(|server| Op::Remove { server }),
    ]
}

fn live_members(policy: &dyn Policy) -> HashSet<ServerId> {
    policy
        .members()
        .iter()
        .filter(|m| !m.draining)
        .map(|m| m.server)
        .collect()
}

/// Run `ops` against `policy`; after each successful select call `check(policy, target, server)`.
fn run(
    policy: &mut dyn Policy,
    ops: &[Op],
    mut check: impl FnMut(&dyn Policy, TargetId, ServerId),
) {
    let mut now_ms = 0u64;
    let mut in_flight: Vec<(ServerId, TargetId)> = Vec::new();
    for op in ops {
        match *op {
            Op::Select { target, random } => {
                let target = TargetId(u64::from(target));
                let Ok(decision) = policy.select(target, now_ms, random) else {
                    assert!(
                        live_members(policy).is_empty(),
                        "NoLiveServer with live members"
                    );
                    continue;
                };
                policy.on_start(decision.server, target, now_ms);
                in_flight.push((decision.server, target));
                check(policy, target, decision.server);
            }
            Op::Finish { pick } if !in_flight.is_empty() => {
                let (server, target) = in_flight.swap_remove(pick % in_flight.len());
                policy.on_finish(server, target, now_ms);
            }
            Op::Finish { .. } => {}
            Op::Advance { ms } => now_ms += u64::from(ms),
            Op::Drain { server, draining } => {
                let _ = policy.set_draining(ServerId(u32::from(server)), draining);
            }
            Op::Add { server } => {
                let _ = policy.add_server(ServerId(u32::from(server)), 1);
            }
            Op::Remove { server } => {
                let _ = policy.remove_server(ServerId(u32::from(server)));
            }
        }
    }
}

/// LARD/R with small thresholds, so that sets grow and shrink within a few dozen requests.
fn small_lard_r(servers: usize) -> Box<dyn Policy> {
    lard_policy(PolicyKind::LardR, (1, 3, 50), &vec![1; servers])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn lard_r_sets_are_never_empty_nor_larger_than_the_membership(
        servers in 1usize..6,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let mut policy = small_lard_r(servers);
        run(policy.as_mut(), &ops, |policy, target, server| {
            let live = live_members(policy);
            let members = policy.members().len();
            for view in policy.targets(usize::MAX) {
                let distinct: HashSet<ServerId> = view.servers.iter().copied().collect();
                assert_eq!(distinct.len(), view.servers.len(), "duplicate in {view:?}");
                assert!(view.servers.len() <= members, "{view:?} larger than {members} members");
                if view.target == target {
                    assert!(!view.servers.is_empty(), "empty set after select: {view:?}");
                    assert!(view.servers.contains(&server), "{server} not in {view:?}");
                    assert!(distinct.is_subset(&live), "{view:?} holds a non-live member");
                }
            }
        });
    }

    #[test]
    fn every_policy_chooses_a_live_member(
        kind in prop::sample::select(PolicyKind::ALL.to_vec()),
        servers in 1usize..6,
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let mut policy = common::policy(kind, &vec![1; servers]);
        run(policy.as_mut(), &ops, |policy, _target, server| {
            assert!(live_members(policy).contains(&server), "{kind} chose {server}");
        });
    }

    #[test]
    fn bounded_load_hashing_never_exceeds_c_times_the_average(
        servers in 1usize..10,
        balance_factor in 1.0f64..3.0,
        ops in prop::collection::vec(op(), 1..400),
    ) {
        let mut config = PolicyConfig::new(PolicyKind::ConsistentHashBoundedLoad);
        config.balance_factor = balance_factor;
        let mut policy = policy_with(&config, &vec![1; servers]);
        // Membership changes are left out: the bound is about placement among a fixed set of members.
        let ops: Vec<Op> = ops
            .into_iter()
            .filter(|op| matches!(op, Op::Select { .. } | Op::Finish { .. } | Op::Advance { .. }))
            .collect();
        run(policy.as_mut(), &ops, |policy, _target, server| {
            let loads: Vec<u32> = policy.members().iter().map(|m| m.load).collect();
            let total: u32 = loads.iter().sum();
            let bound = (balance_factor * f64::from(total) / servers as f64).ceil() as u32;
            let load = policy.load(server).expect("member");
            assert!(load <= bound, "{server} has {load} > ⌈{balance_factor}·{total}/{servers}⌉ = {bound}");
        });
    }

    #[test]
    fn adding_a_member_moves_about_one_nth_of_the_targets(servers in 2u32..24, salt in any::<u64>()) {
        const TARGETS: usize = 4_000;
        let mut policy = common::policy(PolicyKind::ConsistentHash, &vec![1; servers as usize]);
        let targets: Vec<TargetId> = (0..TARGETS as u64)
            .map(|i| TargetId::from_path(&format!("/{salt:x}/{i}")))
            .collect();
        let place = |policy: &mut Box<dyn Policy>| -> Vec<ServerId> {
            targets.iter().map(|t| policy.select(*t, 0, 0).expect("live").server).collect()
        };
        let before = place(&mut policy);
        policy.add_server(ServerId(servers), 1).expect("add");
        let after = place(&mut policy);
        let mut moved = 0usize;
        for (old, new) in before.iter().zip(&after) {
            if old != new {
                prop_assert_eq!(*new, ServerId(servers), "a target moved between old members");
                moved += 1;
            }
        }
        let expected = TARGETS as f64 / f64::from(servers + 1);
        let ratio = moved as f64 / expected;
        prop_assert!((0.5..=1.6).contains(&ratio), "moved {} targets, expected about {:.0}", moved, expected);
    }

    #[test]
    fn same_seed_same_decisions(kind in prop::sample::select(PolicyKind::ALL.to_vec()), seed in any::<u64>()) {
        let script = |seed: u64| -> Vec<Option<ServerId>> {
            let mut rng = Pcg64::seed_from_u64(seed);
            let mut policy = small_policy(kind);
            let mut in_flight = Vec::new();
            let mut decisions = Vec::new();
            for step in 0..500u64 {
                match rng.random_range(0..10) {
                    0 => {
                        let server = ServerId(rng.random_range(0..6));
                        let _ = policy.set_draining(server, rng.random());
                    }
                    1..=3 if !in_flight.is_empty() => {
                        let (server, target) = in_flight.swap_remove(rng.random_range(0..in_flight.len()));
                        policy.on_finish(server, target, step);
                    }
                    _ => {
                        let target = TargetId(rng.random_range(0..50));
                        let decision = policy.select(target, step, rng.random()).ok();
                        if let Some(decision) = decision {
                            policy.on_start(decision.server, target, step);
                            in_flight.push((decision.server, target));
                        }
                        decisions.push(decision.map(|d| d.server));
                    }
                }
            }
            decisions
        };
        prop_assert_eq!(script(seed), script(seed));
    }
}

fn small_policy(kind: PolicyKind) -> Box<dyn Policy> {
    lard_policy(kind, (2, 5, 30), &[1, 2, 1, 3, 1, 1])
}
