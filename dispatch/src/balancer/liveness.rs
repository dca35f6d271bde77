//! Health and drain state of the back-ends of a [`Balancer`], and the policy's drain flag derived from it.
//!
//! # Health model
//! A back-end is *live* for the policy when it is neither `drained` (operator or control plane), nor `down`
//! (health checks), nor `control_down` (the control plane reports the node down): the policy's drain flag is
//! the OR of the three. Passive detection marks a back-end down on a connect error, a timeout or a connection
//! closed before a response; the active checker (`crate::health`) marks it up again when a probe succeeds, and
//! down when a probe fails. The control plane's verdict is a separate flag so the two checkers never undo each
//! other. In-flight requests on a down or drained back-end finish normally; their targets move at their next
//! `select`.
//!
//! # Invariants
//! - After every change here the policy's drain flag of the back-end is `!live()`.
//! - Coming back up (from `down` or `control_down`) starts slow start at `now_ms` (module `choice`).
//! - A health verdict carries the address it was made for and is ignored when the slot was removed or reused.
//!
//! # Limits
//! None of its own: three flags per back-end slot, at most 256 slots (`BACKENDS_MAX`).

use std::net::SocketAddr;

use larder_lard::ServerId;

use super::{BackendState, Balancer, TableError};
use crate::config::BackendId;

impl BackendState {
    /// Neither removed, drained, down nor control-down: the policy may choose it.
    pub(super) fn live(&self) -> bool {
        !self.removed && !self.drained && !self.down && !self.control_down
    }
}

impl Balancer {
    fn apply(&mut self, backend: BackendId) {
        let state = self.backends[backend.0 as usize];
        let result = self.policy.set_draining(ServerId(backend.0), !state.live());
        assert!(result.is_ok(), "{backend} is a member: {result:?}");
    }

    /// Health verdict at `now_ms` for the back-end at `addr`; returns true when it changed. Coming up starts
    /// slow start. A verdict for a removed or reused slot is ignored.
    pub(crate) fn set_down(
        &mut self,
        backend: BackendId,
        addr: SocketAddr,
        down: bool,
        now_ms: u64,
    ) -> bool {
        let state = match self.member(backend) {
            Ok(state) if state.addr == addr && state.down != down => state,
            _ => return false,
        };
        state.down = down;
        state.up_since_ms = (!down).then_some(now_ms);
        self.apply(backend);
        true
    }

    /// The control plane's verdict; returns true when it changed. Coming up starts slow start.
    pub(crate) fn set_control_down(
        &mut self,
        backend: BackendId,
        down: bool,
        now_ms: u64,
    ) -> Result<bool, TableError> {
        let state = self.member(backend)?;
        if state.control_down == down {
            return Ok(false);
        }
        state.control_down = down;
        if !down {
            state.up_since_ms = Some(now_ms);
        }
        self.apply(backend);
        Ok(true)
    }

    pub(crate) fn set_drained(
        &mut self,
        backend: BackendId,
        drained: bool,
    ) -> Result<(), TableError> {
        self.member(backend)?.drained = drained;
        self.apply(backend);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use larder_lard::TargetId;

    use super::*;
    use crate::balancer::testing::{balancer, begin, finish, set_down};

    #[test]
    fn a_down_backend_gets_no_new_requests_and_comes_back() {
        let mut balancer = balancer(2, 100);
        let target = TargetId::from_path("/a");
        let first = begin(&mut balancer, target, None, 0, 1).expect("first");
        finish(&mut balancer, first, target, 0);
        assert!(set_down(&mut balancer, first, true, 0));
        assert!(
            !set_down(&mut balancer, first, true, 0),
            "second verdict is no change"
        );
        for step in 0..10 {
            let chosen = begin(&mut balancer, target, None, step, step).expect("live");
            assert_ne!(chosen, first, "step {step}");
            finish(&mut balancer, chosen, target, step);
        }
        set_down(&mut balancer, first, false, 0);
        set_down(&mut balancer, BackendId(1 - first.0), true, 0);
        assert_eq!(begin(&mut balancer, target, None, 2_000, 0), Ok(first));
    }

    #[test]
    fn control_down_and_health_down_are_separate_verdicts() {
        let mut balancer = balancer(2, 100);
        let target = TargetId::from_path("/a");
        assert_eq!(balancer.set_control_down(BackendId(0), true, 0), Ok(true));
        assert_eq!(balancer.set_control_down(BackendId(0), true, 0), Ok(false));
        // A successful probe does not undo the control plane's verdict.
        assert!(!set_down(&mut balancer, BackendId(0), false, 0));
        for step in 0..10 {
            let chosen = begin(&mut balancer, target, None, step, step);
            assert_eq!(chosen, Ok(BackendId(1)), "step {step}");
            finish(&mut balancer, BackendId(1), target, step);
        }
        assert_eq!(balancer.set_control_down(BackendId(0), false, 0), Ok(true));
        set_down(&mut balancer, BackendId(1), true, 0);
        assert_eq!(
            begin(&mut balancer, target, None, 2_000, 0),
            Ok(BackendId(0))
        );
    }
}
