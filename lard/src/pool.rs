//! `Pool<S>`: the one implementation of [`Policy`] — membership and load accounting in [`Members`], the
//! decision in a [`Strategy`]. Every policy thus shares the same membership rules (the contract suite tests
//! them once for all).

use crate::members::{Change, Members};
use crate::{
    Decision, MemberView, MembershipError, Policy, SelectError, ServerId, TargetId, TargetView,
};

/// The part of a policy that differs between policies.
pub(crate) trait Strategy: Send {
    fn name(&self) -> &'static str;

    /// Choose among `members`; called only when at least one member is live.
    fn select(&mut self, members: &Members, target: TargetId, now_ms: u64, random: u64)
        -> Decision;

    /// Largest total weight the strategy accepts (the hash ring bounds its points).
    fn weight_total_max(&self) -> u64 {
        u64::MAX
    }

    /// The membership changed; `members` is the state after the change.
    fn on_change(&mut self, members: &Members, change: Change) {
        let _ = (members, change);
    }

    fn targets(&self, limit: usize) -> Vec<TargetView> {
        let _ = limit;
        Vec::new()
    }

    fn targets_len(&self) -> usize {
        0
    }
}

pub(crate) struct Pool<S> {
    members: Members,
    strategy: S,
}

impl<S: Strategy> Pool<S> {
    pub(crate) fn new(strategy: S) -> Pool<S> {
        Pool {
            members: Members::default(),
            strategy,
        }
    }

    fn check_weight_total(&self, weight_total: u64) -> Result<(), MembershipError> {
        if weight_total > self.strategy.weight_total_max() {
            return Err(MembershipError::RingFull);
        }
        Ok(())
    }

    fn changed(&mut self, change: Result<Change, MembershipError>) -> Result<(), MembershipError> {
        self.strategy.on_change(&self.members, change?);
        Ok(())
    }
}

impl<S: Strategy> Policy for Pool<S> {
    fn name(&self) -> &'static str {
        self.strategy.name()
    }

    #[inline]
    fn select(
        &mut self,
        target: TargetId,
        now_ms: u64,
        random: u64,
    ) -> Result<Decision, SelectError> {
        if self.members.live_count() == 0 {
            return Err(SelectError::NoLiveServer);
        }
        let decision = self.strategy.select(&self.members, target, now_ms, random);
        debug_assert!(
            self.members
                .get(decision.server)
                .is_some_and(|member| member.live()),
            "{} chose {} which is not a live member",
            self.strategy.name(),
            decision.server
        );
        Ok(decision)
    }

    #[inline]
    fn on_start(&mut self, server: ServerId, _target: TargetId, _now_ms: u64) {
        self.members.start(server);
    }

    #[inline]
    fn on_finish(&mut self, server: ServerId, _target: TargetId, _now_ms: u64) {
        self.members.finish(server);
    }

    fn add_server(&mut self, server: ServerId, weight: u32) -> Result<(), MembershipError> {
        self.check_weight_total(self.members.check_add(server, weight)?)?;
        let change = self.members.add(server, weight);
        self.changed(change)
    }

    fn remove_server(&mut self, server: ServerId) -> Result<(), MembershipError> {
        let change = self.members.remove(server);
        self.changed(change)
    }

    fn set_draining(&mut self, server: ServerId, draining: bool) -> Result<(), MembershipError> {
        let change = self.members.set_draining(server, draining);
        self.changed(change)
    }

    fn set_weight(&mut self, server: ServerId, weight: u32) -> Result<(), MembershipError> {
        self.check_weight_total(self.members.check_weight_change(server, weight)?)?;
        let change = self.members.set_weight(server, weight);
        self.changed(change)
    }

    fn set_external_load(&mut self, server: ServerId, load: u32) -> Result<(), MembershipError> {
        self.members.set_external_load(server, load)
    }

    fn load(&self, server: ServerId) -> Option<u32> {
        self.members.get(server).map(|member| member.load())
    }

    fn members(&self) -> Vec<MemberView> {
        self.members.views()
    }

    /// Sets are pruned lazily at `select`; views show only current members.
    fn targets(&self, limit: usize) -> Vec<TargetView> {
        let mut views = self.strategy.targets(limit);
        for view in &mut views {
            view.servers
                .retain(|server| self.members.get(*server).is_some());
        }
        views
    }

    fn targets_len(&self) -> usize {
        self.strategy.targets_len()
    }
}
