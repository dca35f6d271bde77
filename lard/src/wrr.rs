//! Smooth weighted round robin (nginx's `ngx_http_upstream_get_peer`): every pick adds each live member's
//! weight to its current weight, picks the highest current weight (ties to the lowest id) and subtracts the
//! live weight total from the winner. Over any window of W = Σ weights picks, a member of weight w is picked
//! exactly w times, spread out (weights 5,1,1 give a a b a c a a). O(n) a pick; ignores targets and loads.
//!
//! Invariant: `current[i]` belongs to `members.list()[i]` (kept aligned on every membership change).

use crate::members::{Change, Members, Top3};
use crate::pool::Strategy;
use crate::{Decision, TargetId};

#[derive(Debug, Default)]
pub(crate) struct Wrr {
    current: Vec<i64>,
}

impl Strategy for Wrr {
    fn name(&self) -> &'static str {
        "wrr"
    }

    fn select(
        &mut self,
        members: &Members,
        _target: TargetId,
        _now_ms: u64,
        _random: u64,
    ) -> Decision {
        let list = members.list();
        let mut top = Top3::new();
        let mut live_weight_total = 0i64;
        for (index, member) in list.iter().enumerate() {
            if member.live() {
                let weight = i64::from(member.weight);
                self.current[index] += weight;
                live_weight_total += weight;
                let current = &self.current;
                top.offer(index, |a, b| current[a] > current[b]);
            }
        }
        let best = top.best().expect("select is called with a live member");
        self.current[best] -= live_weight_total;
        top.decision(members)
            .expect("select is called with a live member")
    }

    fn on_change(&mut self, _members: &Members, change: Change) {
        match change {
            Change::Added(index) => self.current.insert(index, 0),
            Change::Removed(index) => {
                self.current.remove(index);
            }
            // A drained member restarts from zero when it comes back, as a new one would.
            Change::Draining(index) => self.current[index] = 0,
            Change::Weight(_) | Change::Unchanged => {}
        }
    }
}
