//! The contract every policy keeps, run over every `PolicyKind`.

mod common;

use common::{loads, policy};
use larder_lard::{
    build, MembershipError, Policy, PolicyConfig, PolicyKind, SelectError, ServerId, TargetId,
    SERVERS_MAX,
};

/// Run `check` once for every policy kind, naming the kind when it fails.
fn for_every_policy(check: impl Fn(PolicyKind)) {
    for kind in PolicyKind::ALL {
        eprintln!("policy {kind}");
        check(kind);
    }
}

/// A deterministic stream of (target, random) pairs.
fn requests(count: u64) -> impl Iterator<Item = (TargetId, u64)> {
    (0..count).map(|i| {
        (
            TargetId::from_path(&format!("/file{}", i % 37)),
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        )
    })
}

fn is_live_member(policy: &dyn Policy, server: ServerId) -> bool {
    policy
        .members()
        .iter()
        .any(|member| member.server == server && !member.draining)
}

#[test]
fn names_match_kinds() {
    for_every_policy(|kind| {
        assert_eq!(
            build(&PolicyConfig::new(kind)).expect("valid").name(),
            kind.as_str()
        )
    });
}

#[test]
fn no_live_member_is_an_error() {
    for_every_policy(|kind| {
        let mut empty = policy(kind, &[]);
        assert_eq!(
            empty.select(TargetId(1), 0, 0),
            Err(SelectError::NoLiveServer)
        );
        let mut drained = policy(kind, &[1, 2]);
        drained.set_draining(ServerId(0), true).expect("drain");
        drained.set_draining(ServerId(1), true).expect("drain");
        assert_eq!(
            drained.select(TargetId(1), 0, 0),
            Err(SelectError::NoLiveServer)
        );
        drained.set_draining(ServerId(1), false).expect("undrain");
        assert_eq!(
            drained
                .select(TargetId(1), 0, 0)
                .map(|decision| decision.server),
            Ok(ServerId(1))
        );
    });
}

#[test]
fn decisions_are_live_members_with_distinct_live_fallbacks() {
    for_every_policy(|kind| {
        let mut policy = policy(kind, &[1, 2, 3, 1, 1]);
        policy.set_draining(ServerId(3), true).expect("drain");
        for (step, (target, random)) in requests(500).enumerate() {
            let decision = policy.select(target, step as u64, random).expect("live");
            assert!(
                is_live_member(policy.as_ref(), decision.server),
                "{kind} step {step}: {decision:?}"
            );
            for fallback in decision.fallbacks.iter().flatten() {
                assert!(
                    is_live_member(policy.as_ref(), *fallback),
                    "{kind} step {step}: {decision:?}"
                );
                assert_ne!(*fallback, decision.server, "{kind} step {step}");
            }
            assert!(
                decision.fallbacks[0] != decision.fallbacks[1] || decision.fallbacks[0].is_none()
            );
            policy.on_start(decision.server, target, step as u64);
        }
    });
}

#[test]
fn draining_member_takes_nothing_new_but_its_load_drops() {
    for_every_policy(|kind| {
        let mut policy = policy(kind, &[1, 1, 1]);
        let mut started = Vec::new();
        for (target, random) in requests(60) {
            let server = policy.select(target, 0, random).expect("live").server;
            policy.on_start(server, target, 0);
            started.push((server, target));
        }
        let busy = started[0].0;
        let busy_load = policy.load(busy).expect("member");
        policy.set_draining(busy, true).expect("drain");
        for (target, random) in requests(200) {
            assert_ne!(
                policy.select(target, 1, random).expect("live").server,
                busy,
                "{kind}"
            );
        }
        assert_eq!(
            policy.load(busy),
            Some(busy_load),
            "{kind}: draining keeps the in-flight count"
        );
        for (server, target) in &started {
            policy.on_finish(*server, *target, 2);
        }
        assert_eq!(loads(policy.as_ref()), vec![0, 0, 0], "{kind}");
    });
}

#[test]
fn load_accounting_returns_to_zero() {
    for_every_policy(|kind| {
        let mut policy = policy(kind, &[1, 2, 1, 4]);
        let mut in_flight = Vec::new();
        for (step, (target, random)) in requests(400).enumerate() {
            let server = policy
                .select(target, step as u64, random)
                .expect("live")
                .server;
            policy.on_start(server, target, step as u64);
            in_flight.push((server, target));
            if step % 3 == 0 {
                let (server, target) = in_flight.swap_remove(step % in_flight.len());
                policy.on_finish(server, target, step as u64);
            }
            let total: u32 = loads(policy.as_ref()).iter().sum();
            assert_eq!(total as usize, in_flight.len(), "{kind} step {step}");
        }
        for (server, target) in in_flight.drain(..) {
            policy.on_finish(server, target, 1_000);
        }
        assert_eq!(loads(policy.as_ref()), vec![0, 0, 0, 0], "{kind}");
        // Finishing more than started saturates at zero rather than wrapping.
        policy.on_finish(ServerId(0), TargetId(1), 1_000);
        assert_eq!(policy.load(ServerId(0)), Some(0), "{kind}");
    });
}

#[test]
fn external_load_adds_to_the_own_count() {
    for_every_policy(|kind| {
        let mut policy = policy(kind, &[1, 1]);
        policy.on_start(ServerId(1), TargetId(1), 0);
        policy.set_external_load(ServerId(1), 10).expect("member");
        assert_eq!(policy.load(ServerId(1)), Some(11), "{kind}");
        let view = policy.members()[1];
        assert_eq!((view.load, view.external_load), (11, 10), "{kind}");
        assert_eq!(
            policy.set_external_load(ServerId(9), 1),
            Err(MembershipError::UnknownServer(ServerId(9)))
        );
    });
}

#[test]
fn membership_errors_are_typed() {
    for_every_policy(|kind| {
        let mut policy = policy(kind, &[1, 1]);
        assert_eq!(
            policy.add_server(ServerId(1), 1),
            Err(MembershipError::DuplicateServer(ServerId(1)))
        );
        assert_eq!(
            policy.add_server(ServerId(2), 0),
            Err(MembershipError::InvalidWeight {
                server: ServerId(2),
                weight: 0
            })
        );
        assert_eq!(
            policy.remove_server(ServerId(7)),
            Err(MembershipError::UnknownServer(ServerId(7)))
        );
        assert_eq!(
            policy.set_weight(ServerId(7), 1),
            Err(MembershipError::UnknownServer(ServerId(7)))
        );
        assert_eq!(
            policy.set_draining(ServerId(7), true),
            Err(MembershipError::UnknownServer(ServerId(7)))
        );
        assert_eq!(policy.load(ServerId(7)), None);
        assert_eq!(
            policy.members().len(),
            2,
            "{kind}: failed changes change nothing"
        );
    });
}

#[test]
fn membership_is_bounded() {
    for_every_policy(|kind| {
        let mut policy = policy(kind, &vec![1; SERVERS_MAX]);
        assert_eq!(
            policy.add_server(ServerId(SERVERS_MAX as u32), 1),
            Err(MembershipError::TooManyServers)
        );
        assert!(policy.select(TargetId(1), 0, 0).is_ok());
    });
}

#[test]
fn removed_member_is_never_chosen_and_can_come_back() {
    for_every_policy(|kind| {
        let mut policy = policy(kind, &[1, 1, 1, 1]);
        policy.remove_server(ServerId(2)).expect("member");
        for (target, random) in requests(200) {
            let server = policy.select(target, 0, random).expect("live").server;
            assert_ne!(server, ServerId(2), "{kind}");
            policy.on_start(server, target, 0);
        }
        // A finish for a removed member is ignored.
        policy.on_finish(ServerId(2), TargetId(1), 0);
        policy.add_server(ServerId(2), 1).expect("re-add");
        assert_eq!(policy.load(ServerId(2)), Some(0));
        let chosen: Vec<ServerId> = requests(400)
            .map(|(target, random)| {
                let server = policy.select(target, 1, random).expect("live").server;
                policy.on_start(server, target, 1);
                server
            })
            .collect();
        assert!(
            chosen.contains(&ServerId(2)),
            "{kind}: the re-added member takes work again"
        );
    });
}

/// The policies with target affinity: removing a member moves only the targets it held.
#[test]
fn removing_a_member_reassigns_only_its_targets() {
    let affine = [
        PolicyKind::ConsistentHash,
        PolicyKind::ConsistentHashBoundedLoad,
        PolicyKind::Lard,
        PolicyKind::LardR,
    ];
    for kind in affine {
        let mut policy = policy(kind, &[1, 1, 1, 1, 1]);
        let targets: Vec<TargetId> = (0..500)
            .map(|i| TargetId::from_path(&format!("/t{i}")))
            .collect();
        let assign = |policy: &mut Box<dyn Policy>| -> Vec<ServerId> {
            // `random` varies so that LARD's ties (all loads are zero) spread the targets over the members.
            let select = |(i, target): (usize, &TargetId)| {
                policy.select(*target, 0, i as u64).expect("live").server
            };
            targets.iter().enumerate().map(select).collect()
        };
        let before = assign(&mut policy);
        policy.remove_server(ServerId(3)).expect("member");
        let after = assign(&mut policy);
        let mut moved = 0;
        for (old, new) in before.iter().zip(&after) {
            if *old == ServerId(3) {
                moved += 1;
                assert_ne!(*new, ServerId(3), "{kind}");
            } else {
                assert_eq!(old, new, "{kind}: a target of a remaining member moved");
            }
        }
        assert!(moved > 0, "{kind}: member 3 held no target");
    }
}

#[test]
fn weight_changes_apply() {
    for_every_policy(|kind| {
        let mut policy = policy(kind, &[1, 1]);
        policy.set_weight(ServerId(0), 7).expect("member");
        assert_eq!(policy.members()[0].weight, 7, "{kind}");
        assert!(policy.select(TargetId(1), 0, 0).is_ok());
    });
}

#[test]
fn target_table_is_bounded_and_reports_the_hottest() {
    for kind in [PolicyKind::Lard, PolicyKind::LardR] {
        let mut config = PolicyConfig::new(kind);
        config.targets_max = 16;
        let mut policy = common::policy_with(&config, &[1, 1, 1]);
        for i in 0..100u64 {
            policy.select(TargetId(i % 40), i, i).expect("live");
            assert!(policy.targets_len() <= 16, "{kind}");
        }
        policy.select(TargetId(99), 100, 0).expect("live");
        policy.select(TargetId(99), 100, 0).expect("live");
        let hottest = policy.targets(1);
        assert_eq!(hottest[0].target, TargetId(99), "{kind}");
        assert_eq!(hottest[0].requests, 2, "{kind}");
    }
    for kind in [
        PolicyKind::Wrr,
        PolicyKind::LeastConnections,
        PolicyKind::ConsistentHash,
    ] {
        let mut policy = policy(kind, &[1]);
        policy.select(TargetId(1), 0, 0).expect("live");
        assert!(policy.targets(10).is_empty());
        assert_eq!(policy.targets_len(), 0);
    }
}
