//! Helpers shared by the integration tests.
#![allow(dead_code)]

use larder_lard::{build, LardParams, Policy, PolicyConfig, PolicyKind, ServerId, TargetId};

/// A policy of `config` with members 0..weights.len() of the given weights.
pub fn policy_with(config: &PolicyConfig, weights: &[u32]) -> Box<dyn Policy> {
    let mut policy = build(config).expect("valid config");
    for (id, weight) in weights.iter().enumerate() {
        policy
            .add_server(ServerId(id as u32), *weight)
            .expect("add member");
    }
    policy
}

pub fn policy(kind: PolicyKind, weights: &[u32]) -> Box<dyn Policy> {
    policy_with(&PolicyConfig::new(kind), weights)
}

/// A LARD-family (or any) policy with small thresholds `(t_low, t_high, k_ms)`.
pub fn lard_policy(
    kind: PolicyKind,
    (t_low, t_high, k_ms): (u32, u32, u64),
    weights: &[u32],
) -> Box<dyn Policy> {
    let mut config = PolicyConfig::new(kind);
    config.lard = LardParams {
        t_low,
        t_high,
        k_ms,
    };
    policy_with(&config, weights)
}

/// Member 0 is 'a', 1 is 'b', ...
pub fn letter(server: ServerId) -> char {
    char::from(b'a' + u8::try_from(server.0).expect("small id"))
}

/// Select `target` `count` times at `now_ms` with `random` = 0, starting each request; the chosen members as
/// letters.
pub fn draw(policy: &mut dyn Policy, target: TargetId, now_ms: u64, count: usize) -> String {
    (0..count)
        .map(|_| {
            let decision = policy.select(target, now_ms, 0).expect("a live member");
            policy.on_start(decision.server, target, now_ms);
            letter(decision.server)
        })
        .collect()
}

/// Loads of members 0..n.
pub fn loads(policy: &dyn Policy) -> Vec<u32> {
    policy.members().iter().map(|member| member.load).collect()
}
