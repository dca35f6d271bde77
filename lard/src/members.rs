//! The membership every policy shares: members sorted by id, their weights, drain flags and loads, and the
//! least-loaded search.
//!
//! Invariants: `list` is sorted by strictly ascending id and holds at most [`SERVERS_MAX`] members;
//! `live_count`, `live_load_total`, `weight_total` and `live_weight_total` always equal what a scan of `list` would give.
//! Lookup by id is a binary search (at most 10 steps for 1024 members); the least-loaded search is one pass.

use crate::{
    Decision, MemberView, MembershipError, ServerId, FALLBACKS_MAX, SERVERS_MAX, WEIGHT_MAX,
};

#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) id: ServerId,
    pub(crate) weight: u32,
    pub(crate) draining: bool,
    own_load: u32,
    external_load: u32,
}

impl Member {
    #[inline]
    pub(crate) fn load(&self) -> u32 {
        self.own_load.saturating_add(self.external_load)
    }

    #[inline]
    pub(crate) fn live(&self) -> bool {
        !self.draining
    }
}

/// What changed in the membership, with the member's index after the change (before it, for `Removed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Added(usize),
    Removed(usize),
    Weight(usize),
    Draining(usize),
    /// The call changed nothing (e.g. draining a member that already drains).
    Unchanged,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Members {
    list: Vec<Member>,
    live_count: usize,
    live_load_total: u64,
    weight_total: u64,
    live_weight_total: u64,
}

/// How the least-loaded search ranks members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rank {
    /// Fewest requests in flight; ties to the higher weight (LARD, as in the paper).
    RawLoad,
    /// Smallest load / weight (least-connections, as nginx's `least_conn`); ties to the higher weight.
    LoadPerWeight,
}

/// The best three candidates of a scan, best first.
pub(crate) struct Top3 {
    slots: [Option<usize>; 1 + FALLBACKS_MAX],
}

impl Top3 {
    pub(crate) fn new() -> Top3 {
        Top3 {
            slots: [None; 1 + FALLBACKS_MAX],
        }
    }

    /// Offer candidate `index`; `better(a, b)` says whether `a` ranks strictly before `b`.
    #[inline]
    pub(crate) fn offer(&mut self, index: usize, better: impl Fn(usize, usize) -> bool) {
        // Most candidates of a scan lose to the current third: one comparison.
        if let Some(last) = self.slots[FALLBACKS_MAX] {
            if !better(index, last) {
                return;
            }
        }
        let mut candidate = index;
        for slot in &mut self.slots {
            match *slot {
                None => {
                    *slot = Some(candidate);
                    return;
                }
                Some(held) if better(candidate, held) => {
                    *slot = Some(candidate);
                    candidate = held;
                }
                Some(_) => {}
            }
        }
    }

    pub(crate) fn best(&self) -> Option<usize> {
        self.slots[0]
    }

    pub(crate) fn decision(&self, members: &Members) -> Option<Decision> {
        let server = members.list[self.slots[0]?].id;
        let mut fallbacks = [None; FALLBACKS_MAX];
        for (fallback, slot) in fallbacks.iter_mut().zip(&self.slots[1..]) {
            *fallback = slot.map(|index| members.list[index].id);
        }
        Some(Decision { server, fallbacks })
    }
}

impl Members {
    pub(crate) fn live_count(&self) -> usize {
        self.live_count
    }

    pub(crate) fn live_load_total(&self) -> u64 {
        self.live_load_total
    }

    pub(crate) fn weight_total(&self) -> u64 {
        self.weight_total
    }

    pub(crate) fn live_weight_total(&self) -> u64 {
        self.live_weight_total
    }

    pub(crate) fn list(&self) -> &[Member] {
        &self.list
    }

    #[inline]
    pub(crate) fn index(&self, id: ServerId) -> Option<usize> {
        self.list.binary_search_by_key(&id, |member| member.id).ok()
    }

    #[inline]
    pub(crate) fn get(&self, id: ServerId) -> Option<&Member> {
        self.index(id).map(|index| &self.list[index])
    }

    fn index_or_err(&self, id: ServerId) -> Result<usize, MembershipError> {
        self.index(id).ok_or(MembershipError::UnknownServer(id))
    }

    fn check_weight(id: ServerId, weight: u32) -> Result<(), MembershipError> {
        if weight == 0 || weight > WEIGHT_MAX {
            return Err(MembershipError::InvalidWeight { server: id, weight });
        }
        Ok(())
    }

    /// Would adding `id` with `weight` succeed, and what would the weight total become?
    pub(crate) fn check_add(&self, id: ServerId, weight: u32) -> Result<u64, MembershipError> {
        Self::check_weight(id, weight)?;
        if self.index(id).is_some() {
            return Err(MembershipError::DuplicateServer(id));
        }
        if self.list.len() >= SERVERS_MAX {
            return Err(MembershipError::TooManyServers);
        }
        Ok(self.weight_total + u64::from(weight))
    }

    /// Would setting the weight of `id` succeed, and what would the weight total become?
    pub(crate) fn check_weight_change(
        &self,
        id: ServerId,
        weight: u32,
    ) -> Result<u64, MembershipError> {
        Self::check_weight(id, weight)?;
        let index = self.index_or_err(id)?;
        Ok(self.weight_total - u64::from(self.list[index].weight) + u64::from(weight))
    }

    pub(crate) fn add(&mut self, id: ServerId, weight: u32) -> Result<Change, MembershipError> {
        self.check_add(id, weight)?;
        let index = self.list.partition_point(|member| member.id < id);
        self.list.insert(
            index,
            Member {
                id,
                weight,
                draining: false,
                own_load: 0,
                external_load: 0,
            },
        );
        self.live_count += 1;
        self.weight_total += u64::from(weight);
        self.live_weight_total += u64::from(weight);
        Ok(Change::Added(index))
    }

    pub(crate) fn remove(&mut self, id: ServerId) -> Result<Change, MembershipError> {
        let index = self.index_or_err(id)?;
        let member = self.list.remove(index);
        if member.live() {
            self.live_count -= 1;
            self.live_load_total -= u64::from(member.load());
            self.live_weight_total -= u64::from(member.weight);
        }
        self.weight_total -= u64::from(member.weight);
        Ok(Change::Removed(index))
    }

    pub(crate) fn set_weight(
        &mut self,
        id: ServerId,
        weight: u32,
    ) -> Result<Change, MembershipError> {
        self.weight_total = self.check_weight_change(id, weight)?;
        let index = self.index_or_err(id)?;
        let member = &mut self.list[index];
        if member.live() {
            self.live_weight_total =
                self.live_weight_total - u64::from(member.weight) + u64::from(weight);
        }
        member.weight = weight;
        Ok(Change::Weight(index))
    }

    pub(crate) fn set_draining(
        &mut self,
        id: ServerId,
        draining: bool,
    ) -> Result<Change, MembershipError> {
        let index = self.index_or_err(id)?;
        let member = &mut self.list[index];
        if member.draining == draining {
            return Ok(Change::Unchanged);
        }
        member.draining = draining;
        let (load, weight) = (u64::from(member.load()), u64::from(member.weight));
        if draining {
            self.live_count -= 1;
            self.live_load_total -= load;
            self.live_weight_total -= weight;
        } else {
            self.live_count += 1;
            self.live_load_total += load;
            self.live_weight_total += weight;
        }
        Ok(Change::Draining(index))
    }

    /// Apply `update` to the member's loads, keeping `live_load_total` exact.
    fn update_load(&mut self, index: usize, update: impl FnOnce(&mut Member)) {
        let member = &mut self.list[index];
        let before = u64::from(member.load());
        update(member);
        if member.live() {
            self.live_load_total = self.live_load_total - before + u64::from(member.load());
        }
    }

    pub(crate) fn set_external_load(
        &mut self,
        id: ServerId,
        load: u32,
    ) -> Result<(), MembershipError> {
        let index = self.index_or_err(id)?;
        self.update_load(index, |member| member.external_load = load);
        Ok(())
    }

    /// A request started on `id`; ignored for a non-member (removed while its request was in flight).
    #[inline]
    pub(crate) fn start(&mut self, id: ServerId) {
        self.update_own_load(id, |load| load.saturating_add(1));
    }

    /// A request finished on `id`; saturating at zero, ignored for a non-member.
    #[inline]
    pub(crate) fn finish(&mut self, id: ServerId) {
        self.update_own_load(id, |load| load.saturating_sub(1));
    }

    #[inline]
    fn update_own_load(&mut self, id: ServerId, update: impl FnOnce(u32) -> u32) {
        if let Some(index) = self.index(id) {
            self.update_load(index, |member| member.own_load = update(member.own_load));
        }
    }

    #[inline]
    pub(crate) fn better(&self, rank: Rank, a: usize, b: usize) -> bool {
        let (a, b) = (&self.list[a], &self.list[b]);
        let (load_a, load_b) = match rank {
            Rank::RawLoad => (u64::from(a.load()), u64::from(b.load())),
            Rank::LoadPerWeight => (
                u64::from(a.load()) * u64::from(b.weight),
                u64::from(b.load()) * u64::from(a.weight),
            ),
        };
        load_a < load_b || (load_a == load_b && a.weight > b.weight)
    }

    /// The three least-loaded live members. The scan starts at `random % len` and wraps, and a later member
    /// must rank strictly better to win, so ties go to the first in that rotated order: `random` spreads ties.
    pub(crate) fn least_loaded(&self, rank: Rank, random: u64) -> Top3 {
        let mut top = Top3::new();
        let len = self.list.len();
        if len == 0 {
            return top;
        }
        let start = (random % len as u64) as usize;
        for index in (start..len).chain(0..start) {
            if self.list[index].live() {
                top.offer(index, |a, b| self.better(rank, a, b));
            }
        }
        top
    }

    pub(crate) fn views(&self) -> Vec<MemberView> {
        self.list
            .iter()
            .map(|member| MemberView {
                server: member.id,
                weight: member.weight,
                draining: member.draining,
                load: member.load(),
                external_load: member.external_load,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(top: &Top3, members: &Members) -> Vec<u32> {
        let decision = top.decision(members).expect("a live member");
        std::iter::once(Some(decision.server))
            .chain(decision.fallbacks)
            .flatten()
            .map(|id| id.0)
            .collect()
    }

    #[test]
    fn least_loaded_ranks_and_rotates_ties() {
        let mut members = Members::default();
        for id in 0..4 {
            members.add(ServerId(id), 1).expect("add");
        }
        members.start(ServerId(0));
        members.start(ServerId(0));
        members.start(ServerId(2));
        // loads: 0:2 1:0 2:1 3:0 — ties between 1 and 3 go to the first after the rotation start.
        assert_eq!(
            ids(&members.least_loaded(Rank::RawLoad, 0), &members),
            vec![1, 3, 2]
        );
        assert_eq!(
            ids(&members.least_loaded(Rank::RawLoad, 2), &members),
            vec![3, 1, 2]
        );
        members.set_draining(ServerId(3), true).expect("drain");
        assert_eq!(
            ids(&members.least_loaded(Rank::RawLoad, 2), &members),
            vec![1, 2, 0]
        );
        assert_eq!(members.live_count(), 3);
        assert_eq!(members.live_load_total(), 3);
    }

    #[test]
    fn load_per_weight_prefers_the_heavier_member() {
        let mut members = Members::default();
        members.add(ServerId(1), 1).expect("add");
        members.add(ServerId(2), 4).expect("add");
        for _ in 0..3 {
            members.start(ServerId(2));
        }
        // 3 / 4 < 1 / 1 once server 1 has one request.
        members.start(ServerId(1));
        assert_eq!(members.least_loaded(Rank::LoadPerWeight, 0).best(), Some(1));
        assert_eq!(members.least_loaded(Rank::RawLoad, 0).best(), Some(0));
    }

    #[test]
    fn totals_follow_every_change() {
        let mut members = Members::default();
        members.add(ServerId(5), 2).expect("add");
        members.add(ServerId(1), 3).expect("add");
        assert_eq!(members.list()[0].id, ServerId(1));
        members.start(ServerId(5));
        members.set_external_load(ServerId(1), 7).expect("external");
        assert_eq!(members.live_load_total(), 8);
        members.set_draining(ServerId(1), true).expect("drain");
        assert_eq!(members.live_load_total(), 1);
        members.remove(ServerId(5)).expect("remove");
        assert_eq!(
            (
                members.live_load_total(),
                members.live_count(),
                members.weight_total()
            ),
            (0, 0, 3)
        );
        assert_eq!(
            members.add(ServerId(1), 1),
            Err(MembershipError::DuplicateServer(ServerId(1)))
        );
        assert_eq!(
            members.add(ServerId(2), 0),
            Err(MembershipError::InvalidWeight {
                server: ServerId(2),
                weight: 0
            })
        );
    }
}
