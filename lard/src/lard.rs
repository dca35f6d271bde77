//! LARD and LARD/R (Pai, Aron, Banga, Svendsen, Druschel, Zwaenepoel, Nahum: "Locality-Aware Request
//! Distribution in Cluster-based Network Servers", ASPLOS '98, figures 3 and 4). Load = requests in flight
//! (own count + external load).
//!
//! LARD, for each request of target t:
//! 1. t has no server (new, aged out, or its server was removed or is draining): send to the least-loaded
//!    live member and record it as t's server.
//! 2. Otherwise, with n = server(t): if load(n) > T_high and some live member is below T_low, or
//!    load(n) ≥ 2·T_high, move t to the least-loaded live member (when that is not n).
//! 3. Send to server(t).
//!
//! LARD/R, for each request of target t with server set S(t):
//! 1. S(t) empty (after dropping members that left or drain): S(t) = {least-loaded live member}.
//! 2. n = least loaded of S(t), m = most loaded (m ≠ n when |S| > 1). Under the condition of LARD step 2 for
//!    n, add the cluster's least-loaded member p to S(t) and send to p.
//! 3. If |S(t)| > 1 and S(t) has not changed for more than K ms, remove m.
//! 4. Any change of S(t) sets its last-change time to now.
//!
//! The least-loaded search ranks by raw load (the paper's back-ends are equal), ties to the higher weight, then
//! to the first member after `random % n`. The hot path — known target, server not overloaded — is one table
//! lookup plus one binary search per set member; an overloaded server adds one O(n) scan.
//! Invariants: a set is non-empty after `select` and holds distinct live members, so |S| ≤ live members.

use crate::members::{Members, Rank};
use crate::pool::Strategy;
use crate::table::TargetTable;
use crate::{Decision, LardParams, ServerId, TargetId, TargetView, FALLBACKS_MAX};

pub(crate) struct Lard {
    params: LardParams,
    /// LARD/R when true.
    replicated: bool,
    table: TargetTable,
}

/// Load of `server` if it is a live member.
#[inline]
fn live_load(members: &Members, server: ServerId) -> Option<u32> {
    members
        .get(server)
        .filter(|member| member.live())
        .map(|member| member.load())
}

impl Lard {
    pub(crate) fn new(
        params: LardParams,
        replicated: bool,
        targets_max: usize,
        target_idle_ms: u64,
    ) -> Lard {
        Lard {
            params,
            replicated,
            table: TargetTable::new(targets_max, target_idle_ms),
        }
    }

    /// LARD's condition for moving (or replicating) a target whose server has `load`: returns the least
    /// loaded member to move to, or None.
    #[inline]
    fn relief(&self, members: &Members, load: u32, random: u64) -> Option<Decision> {
        if load <= self.params.t_high {
            return None;
        }
        let top = members.least_loaded(Rank::RawLoad, random);
        let least = &members.list()[top.best()?];
        let overloaded = load >= 2 * self.params.t_high || least.load() < self.params.t_low;
        if overloaded {
            top.decision(members)
        } else {
            None
        }
    }
}

impl Strategy for Lard {
    fn name(&self) -> &'static str {
        if self.replicated {
            "lard-r"
        } else {
            "lard"
        }
    }

    fn select(
        &mut self,
        members: &Members,
        target: TargetId,
        now_ms: u64,
        random: u64,
    ) -> Decision {
        let slot = self.table.touch(target, now_ms);
        // Find n (least loaded) and m (most loaded) of the set, dropping members that are gone or draining.
        let mut least: Option<(ServerId, u32)> = None;
        let mut most: Option<ServerId> = None;
        let mut most_load = 0;
        let servers = &mut self.table.entry_mut(slot).servers;
        let before = servers.len();
        servers.retain(|server| match live_load(members, server) {
            None => false,
            Some(load) => {
                if least.is_none_or(|(_, least_load)| load < least_load) {
                    least = Some((server, load));
                }
                if most.is_none() || load >= most_load {
                    most = Some(server);
                    most_load = load;
                }
                true
            }
        });
        let pruned = servers.len() != before;
        let Some((n, n_load)) = least else {
            let decision = members
                .least_loaded(Rank::RawLoad, random)
                .decision(members)
                .expect("select is called with a live member");
            let entry = self.table.entry_mut(slot);
            entry.servers.push(decision.server);
            entry.last_change_ms = now_ms;
            return decision;
        };
        let relief = self.relief(members, n_load, random);
        let entry = self.table.entry_mut(slot);
        let mut changed = pruned;
        let mut chosen = n;
        if let Some(relief) = relief {
            if !entry.servers.contains(relief.server) {
                chosen = relief.server;
                changed = true;
                if self.replicated {
                    entry.servers.push(chosen);
                } else {
                    entry.servers.replace_all(chosen);
                }
            }
        }
        if self.replicated
            && entry.servers.len() > 1
            && now_ms.saturating_sub(entry.last_change_ms) > self.params.k_ms
        {
            let m = most.expect("a non-empty set has a most loaded member");
            entry.servers.retain(|server| server != m);
            changed = true;
        }
        if changed {
            entry.last_change_ms = now_ms;
        }
        let mut fallbacks = [None; FALLBACKS_MAX];
        let others = entry.servers.iter().filter(|server| *server != chosen);
        for (fallback, server) in fallbacks.iter_mut().zip(others) {
            *fallback = Some(server);
        }
        if let Some(relief) =
            relief.filter(|relief| relief.server == chosen && fallbacks[0].is_none())
        {
            fallbacks = relief.fallbacks;
        }
        Decision {
            server: chosen,
            fallbacks,
        }
    }

    fn targets(&self, limit: usize) -> Vec<TargetView> {
        self.table.hottest(limit)
    }

    fn targets_len(&self) -> usize {
        self.table.len()
    }
}
