//! Least connections: the live member with the smallest load / weight (as nginx's `least_conn`), ties to the
//! higher weight, then to the first member at or after `random % n` in id order. One O(n) pass a pick
//! (n ≤ 1024); ignores targets.

use crate::members::{Members, Rank};
use crate::pool::Strategy;
use crate::{Decision, TargetId};

#[derive(Debug, Default)]
pub(crate) struct LeastConnections;

impl Strategy for LeastConnections {
    fn name(&self) -> &'static str {
        "lc"
    }

    fn select(
        &mut self,
        members: &Members,
        _target: TargetId,
        _now_ms: u64,
        random: u64,
    ) -> Decision {
        members
            .least_loaded(Rank::LoadPerWeight, random)
            .decision(members)
            .expect("select is called with a live member")
    }
}
