//! Helpers shared by the unit tests of the `balancer` submodules: a balancer over loopback addresses and
//! shortcuts for `begin`, `finish` and health verdicts.

use std::net::SocketAddr;

use larder_lard::{PolicyConfig, PolicyKind, TargetId};

use super::choice::{Refusal, Ticket};
use super::Balancer;
use crate::config::{BackendId, RetryBudgetConfig};

pub(super) fn addr(index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + index as u16))
}

pub(super) fn balancer_with(kind: PolicyKind, backends: usize, pending_max: u32) -> Balancer {
    let config = PolicyConfig::new(kind);
    let policy = larder_lard::build(&config).expect("policy");
    let addrs: Vec<SocketAddr> = (0..backends).map(addr).collect();
    Balancer::new(
        policy,
        config,
        &addrs,
        RetryBudgetConfig::default(),
        pending_max,
        1_000,
    )
    .expect("members")
}

pub(super) fn balancer(backends: usize, pending_max: u32) -> Balancer {
    balancer_with(PolicyKind::Lard, backends, pending_max)
}

/// `Balancer::begin`, keeping only the chosen back-end.
pub(super) fn begin(
    balancer: &mut Balancer,
    target: TargetId,
    exclude: Option<BackendId>,
    now_ms: u64,
    random: u64,
) -> Result<BackendId, Refusal> {
    balancer
        .begin(target, exclude, now_ms, random)
        .map(|ticket| ticket.backend)
}

/// Finishes a request started on the current policy.
pub(super) fn finish(balancer: &mut Balancer, backend: BackendId, target: TargetId, now_ms: u64) {
    let ticket = Ticket {
        backend,
        addr: balancer.backends[backend.0 as usize].addr,
        generation: balancer.generation,
    };
    balancer.finish(ticket, target, now_ms);
}

pub(super) fn set_down(
    balancer: &mut Balancer,
    backend: BackendId,
    down: bool,
    now_ms: u64,
) -> bool {
    let addr = balancer.backends[backend.0 as usize].addr;
    balancer.set_down(backend, addr, down, now_ms)
}
