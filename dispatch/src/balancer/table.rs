//! The run-time back-end table of a [`Balancer`]: adding and removing back-ends, their weights and external
//! load, and the status a [`crate::DispatchHandle`] reports.
//!
//! # The back-end table
//! A slot per back-end, at most [`BACKENDS_MAX`] (256); a [`BackendId`] is a slot index and the back-end's
//! `ServerId` in the policy. Slots are added at run time ([`Balancer::add`]); a removed back-end leaves the
//! policy at once but keeps its slot until its last request in flight finished, then the slot may be reused
//! (by the same or another address). Every [`super::Ticket`] carries the address it was issued for, so a
//! shard's idle connection stack and a health verdict never apply to the wrong back-end after a reuse.
//!
//! # Invariants
//! - At most one slot that is not removed holds a given address ([`TableError::DuplicateBackend`]).
//! - A change is made in the policy first; when the policy refuses it ([`TableError::Membership`]) the table
//!   is left as it was.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | back-ends | 256 ([`BACKENDS_MAX`]), slots of removed back-ends included until free | front-end of one cluster; the scans here are O(n) |
//! | weight | 1..=256 (lard's `WEIGHT_MAX`), checked by the policy | ring points = vnodes × weight |

use std::net::SocketAddr;

use larder_lard::{MembershipError, ServerId};

use super::Balancer;
use crate::config::{BackendId, BACKENDS_MAX};

/// Why a change of the back-end table was refused; nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("{0} is not a back-end of this dispatcher")]
    UnknownBackend(BackendId),
    #[error("{addr} is already {backend}")]
    DuplicateBackend {
        addr: SocketAddr,
        backend: BackendId,
    },
    #[error("the back-end table is full: at most {BACKENDS_MAX} back-ends")]
    TooManyBackends,
    #[error("policy membership: {0}")]
    Membership(#[from] MembershipError),
}

#[derive(Clone, Copy, Debug)]
pub(super) struct BackendState {
    pub(super) addr: SocketAddr,
    pub(super) weight: u32,
    pub(super) in_flight: u32,
    /// Requests started on it since it was added (a counter for the metrics).
    pub(super) requests: u64,
    /// Tries that failed on it (connect, send or read error, timeout, malformed response): a counter.
    pub(super) failures: u64,
    /// Of those failures, the ones retried on another back-end: a counter.
    pub(super) retries: u64,
    /// Requests in flight that were started on a policy replaced since (`balancer` module docs, policy swap).
    pub(super) carried: u32,
    /// Load last reported from elsewhere (the control plane).
    pub(super) external_load: u32,
    pub(super) drained: bool,
    pub(super) down: bool,
    pub(super) control_down: bool,
    /// Left the policy; the slot is free once `in_flight` is 0.
    pub(super) removed: bool,
    /// When the back-end last came back up or was added (slow start runs from here).
    pub(super) up_since_ms: Option<u64>,
}

impl BackendState {
    pub(super) fn new(addr: SocketAddr, weight: u32, up_since_ms: Option<u64>) -> Self {
        BackendState {
            addr,
            weight,
            in_flight: 0,
            requests: 0,
            failures: 0,
            retries: 0,
            carried: 0,
            external_load: 0,
            drained: false,
            down: false,
            control_down: false,
            removed: false,
            up_since_ms,
        }
    }
}

/// What a [`crate::DispatchHandle`] reports about one back-end (removed back-ends are not listed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    pub backend: BackendId,
    pub addr: SocketAddr,
    pub weight: u32,
    pub in_flight: u32,
    /// Requests started on it since it was added (tries, retries included).
    pub requests: u64,
    /// Tries that failed on it (connect, send or read error, timeout, malformed response).
    pub failures: u64,
    /// Of those failures, the ones retried on another back-end.
    pub retries: u64,
    /// Load last set with [`crate::DispatchHandle::set_external_load`].
    pub external_load: u32,
    pub drained: bool,
    /// Health checks (active or passive) found it down.
    pub down: bool,
    /// The control plane reports it down.
    pub control_down: bool,
}

impl Balancer {
    /// Adds a back-end with `weight`; `up_since_ms` starts its slow start (`None`: full cap at once). Reuses a
    /// free slot (the one of the same address first).
    pub(crate) fn add(
        &mut self,
        addr: SocketAddr,
        weight: u32,
        up_since_ms: Option<u64>,
    ) -> Result<BackendId, TableError> {
        if let Some(backend) = self.lookup(addr) {
            return Err(TableError::DuplicateBackend { addr, backend });
        }
        let free = |state: &BackendState| state.removed && state.in_flight == 0;
        let slot = self
            .backends
            .iter()
            .position(|state| free(state) && state.addr == addr)
            .or_else(|| self.backends.iter().position(free));
        let index = match slot {
            Some(index) => index,
            None if self.backends.len() < BACKENDS_MAX => self.backends.len(),
            None => return Err(TableError::TooManyBackends),
        };
        self.policy.add_server(ServerId(index as u32), weight)?;
        let state = BackendState::new(addr, weight, up_since_ms);
        if index == self.backends.len() {
            self.backends.push(state);
        } else {
            self.backends[index] = state;
        }
        Ok(BackendId(index as u32))
    }

    /// Takes a back-end out of the policy; its requests in flight finish, then its slot is free.
    pub(crate) fn remove(&mut self, backend: BackendId) -> Result<(), TableError> {
        self.member(backend)?;
        self.policy.remove_server(ServerId(backend.0))?;
        self.backends[backend.0 as usize].removed = true;
        Ok(())
    }

    /// The back-end (not removed) at `addr`.
    pub(crate) fn lookup(&self, addr: SocketAddr) -> Option<BackendId> {
        self.backends
            .iter()
            .position(|state| !state.removed && state.addr == addr)
            .map(|index| BackendId(index as u32))
    }

    /// Every back-end that is not removed, with its address (the health checker's round).
    pub(crate) fn addresses(&self) -> Vec<(BackendId, SocketAddr)> {
        self.backends
            .iter()
            .enumerate()
            .filter(|(_, state)| !state.removed)
            .map(|(index, state)| (BackendId(index as u32), state.addr))
            .collect()
    }

    /// The state of a back-end that is not removed.
    pub(super) fn member(&mut self, backend: BackendId) -> Result<&mut BackendState, TableError> {
        match self.backends.get_mut(backend.0 as usize) {
            Some(state) if !state.removed => Ok(state),
            _ => Err(TableError::UnknownBackend(backend)),
        }
    }

    pub(crate) fn set_weight(&mut self, backend: BackendId, weight: u32) -> Result<(), TableError> {
        self.member(backend)?;
        self.policy.set_weight(ServerId(backend.0), weight)?;
        self.backends[backend.0 as usize].weight = weight;
        Ok(())
    }

    pub(crate) fn set_external_load(
        &mut self,
        backend: BackendId,
        load: u32,
    ) -> Result<(), TableError> {
        let state = *self.member(backend)?;
        self.policy
            .set_external_load(ServerId(backend.0), load.saturating_add(state.carried))?;
        self.backends[backend.0 as usize].external_load = load;
        Ok(())
    }

    pub(crate) fn status(&self) -> Vec<BackendStatus> {
        self.backends
            .iter()
            .enumerate()
            .filter(|(_, state)| !state.removed)
            .map(|(index, state)| BackendStatus {
                backend: BackendId(index as u32),
                addr: state.addr,
                weight: state.weight,
                in_flight: state.in_flight,
                requests: state.requests,
                failures: state.failures,
                retries: state.retries,
                external_load: state.external_load,
                drained: state.drained,
                down: state.down,
                control_down: state.control_down,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use larder_lard::{PolicyKind, TargetId};

    use super::*;
    use crate::balancer::choice::Refusal;
    use crate::balancer::testing::{addr, balancer, balancer_with, begin, finish};

    #[test]
    fn added_backends_take_requests_and_duplicates_are_refused() {
        let mut balancer = balancer(0, 100);
        let target = TargetId::from_path("/a");
        assert_eq!(
            begin(&mut balancer, target, None, 0, 0),
            Err(Refusal::NoLiveBackend),
            "an empty table serves nothing"
        );
        let added = balancer.add(addr(7), 3, None).expect("add");
        assert_eq!(added, BackendId(0));
        assert_eq!(balancer.lookup(addr(7)), Some(added));
        assert_eq!(
            balancer.add(addr(7), 1, None),
            Err(TableError::DuplicateBackend {
                addr: addr(7),
                backend: added
            })
        );
        let ticket = balancer.begin(target, None, 0, 0).expect("live");
        assert_eq!((ticket.backend, ticket.addr), (added, addr(7)));
        assert_eq!(balancer.status()[0].weight, 3);
    }

    #[test]
    fn the_table_holds_at_most_256_backends_and_a_refused_add_changes_nothing() {
        let mut balancer = balancer(BACKENDS_MAX, 100);
        assert_eq!(
            balancer.add(addr(BACKENDS_MAX), 1, None),
            Err(TableError::TooManyBackends)
        );
        assert_eq!(balancer.status().len(), BACKENDS_MAX);
        let mut small = balancer_with(PolicyKind::Wrr, 1, 100);
        let refused = small.add(addr(5), 0, None);
        assert!(
            matches!(refused, Err(TableError::Membership(_))),
            "{refused:?}"
        );
        assert_eq!(small.status().len(), 1, "weight 0 added nothing");
        assert_eq!(small.lookup(addr(5)), None);
    }

    #[test]
    fn a_removed_backend_finishes_its_request_and_then_its_slot_is_reused() {
        let mut balancer = balancer(2, 100);
        let target = TargetId::from_path("/a");
        balancer.set_drained(BackendId(1), true).expect("member");
        let ticket = balancer.begin(target, None, 0, 0).expect("live");
        assert_eq!(ticket.backend, BackendId(0));
        balancer.set_drained(BackendId(1), false).expect("member");
        balancer.remove(BackendId(0)).expect("remove");
        assert_eq!(
            balancer.remove(BackendId(0)),
            Err(TableError::UnknownBackend(BackendId(0)))
        );
        assert_eq!(balancer.lookup(addr(0)), None);
        assert_eq!(balancer.status().len(), 1);
        for step in 0..10 {
            assert_eq!(
                begin(&mut balancer, target, None, step, step),
                Ok(BackendId(1)),
                "step {step}"
            );
            finish(&mut balancer, BackendId(1), target, step);
        }
        // Its request in flight keeps the slot: a new back-end gets a new one.
        let newcomer = balancer.add(addr(9), 1, None).expect("add");
        assert_eq!(newcomer, BackendId(2));
        balancer.finish(ticket, target, 0);
        // Now the slot is free and reused.
        assert_eq!(balancer.add(addr(8), 1, None), Ok(BackendId(0)));
        assert_eq!(balancer.status()[0].addr, addr(8));
        assert!(
            !balancer.set_down(BackendId(0), addr(0), true, 0),
            "a verdict for the old address is ignored"
        );
        assert!(!balancer.status()[0].down);
    }

    #[test]
    fn weights_and_external_load_reach_the_policy_and_bad_values_change_nothing() {
        let mut balancer = balancer_with(PolicyKind::LeastConnections, 2, 100);
        balancer
            .set_external_load(BackendId(0), 40)
            .expect("member");
        assert_eq!(balancer.policy_load(BackendId(0)), Some(40));
        let target = TargetId::from_path("/a");
        assert_eq!(begin(&mut balancer, target, None, 0, 0), Ok(BackendId(1)));
        balancer.set_weight(BackendId(1), 4).expect("weight");
        assert_eq!(balancer.status()[1].weight, 4);
        assert!(balancer.set_weight(BackendId(1), 0).is_err());
        assert!(balancer.set_weight(BackendId(1), 257).is_err());
        assert_eq!(
            balancer.status()[1].weight,
            4,
            "refused weights changed nothing"
        );
        assert_eq!(
            balancer.set_external_load(BackendId(5), 1),
            Err(TableError::UnknownBackend(BackendId(5)))
        );
    }
}
