//! The choice of a back-end for each request: the policy's decision and its fallbacks, the pending cap with
//! slow start, and the accounting of a request from [`Balancer::begin`] to [`Balancer::finish`].
//!
//! # Order of candidates
//! 1. The policy's choice, then its fallbacks (at most lard's `FALLBACKS_MAX`, 2).
//! 2. Then any other live back-end, least in flight first (a LARD target with a one-member set has no fallback,
//!    and a retry or an overflow must still find another node). Only on this rare path, so its O(n) scan and
//!    sort over at most 256 back-ends do not matter.
//!
//! A candidate equal to `exclude` (the back-end a retry failed on) is skipped; the first one under its pending
//! cap gets the request. When none does, the [`Refusal`] says why (the proxy logs it and answers 503 +
//! `Retry-After`, or a retry's first failure): no live back-end, no back-end other than the excluded one, or
//! every candidate full.
//!
//! # Invariants
//! - A back-end's `in_flight` never exceeds its pending cap at the time of the `begin` that raised it.
//! - Every [`Ticket`] is given back to `finish` exactly once; `finish` asserts `in_flight > 0`.
//! - A request started on a replaced policy is finished against the external load, not the new policy's
//!   `on_finish` (the `balancer` module docs, policy swap).
//!
//! # Limits
//! | limit | default | why |
//! |---|---|---|
//! | pending per back-end (all shards) | 1,024 (`PENDING_PER_BACKEND_MAX_DEFAULT`) | overflow is an answer, not a queue |
//! | slow start | 5 s (`SLOW_START_MS_DEFAULT`): the cap ramps linearly 1 → full | a returning node with a cold cache is not flooded |

use std::net::SocketAddr;

use larder_lard::{ServerId, TargetId};

use super::{BackendState, Balancer};
use crate::config::BackendId;

/// Why no back-end was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every back-end is drained or down.
    NoLiveBackend,
    /// The only candidates are the ones excluded (a retry found no other back-end).
    NoOtherBackend,
    /// Every candidate is at its pending cap.
    Full,
}

/// A request counted on a back-end by [`Balancer::begin`]; give it back to [`Balancer::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) backend: BackendId,
    pub(crate) addr: SocketAddr,
    /// The policy generation the request was started on.
    pub(super) generation: u64,
}

impl Balancer {
    /// The pending cap of a back-end at `now_ms`: `pending_per_backend_max`, except during slow start after
    /// it came back up, when it grows linearly from 1 to the full cap over `slow_start_ms` (as HAProxy's
    /// `slowstart` ramps `maxconn`). Policy-agnostic: LARD ranks by raw load, so a weight ramp would not act.
    fn pending_cap(&self, state: &BackendState, now_ms: u64) -> u32 {
        let full = self.pending_per_backend_max;
        match state.up_since_ms {
            Some(since) if now_ms.saturating_sub(since) < self.slow_start_ms => {
                let elapsed = now_ms.saturating_sub(since);
                let ramp = u64::from(full) * elapsed / self.slow_start_ms;
                (ramp as u32).clamp(1, full)
            }
            _ => full,
        }
    }

    /// Chooses a back-end for `target` other than `exclude`, under its pending cap, and counts the request as
    /// started on it. Also earns the retry budget its share of this request (first attempts only).
    pub(crate) fn begin(
        &mut self,
        target: TargetId,
        exclude: Option<BackendId>,
        now_ms: u64,
        random: u64,
    ) -> Result<Ticket, Refusal> {
        if exclude.is_none() {
            self.budget.on_request();
        }
        let decision = self
            .policy
            .select(target, now_ms, random)
            .map_err(|_| Refusal::NoLiveBackend)?;
        let choices = std::iter::once(Some(decision.server))
            .chain(decision.fallbacks)
            .flatten()
            .map(|server| BackendId(server.0));
        let mut any_candidate = false;
        if let Some(ticket) = self.start_first(choices, exclude, target, now_ms, &mut any_candidate)
        {
            return Ok(ticket);
        }
        // Then any other live back-end, least in flight first (a LARD target with a one-member set has no
        // fallback, and a retry or an overflow must still find another node). Only on this rare path.
        let mut others: Vec<BackendId> = (0..self.backends.len() as u32)
            .map(BackendId)
            .filter(|backend| self.backends[backend.0 as usize].live())
            .collect();
        others.sort_by_key(|backend| self.backends[backend.0 as usize].in_flight);
        if let Some(ticket) = self.start_first(
            others.into_iter(),
            exclude,
            target,
            now_ms,
            &mut any_candidate,
        ) {
            return Ok(ticket);
        }
        Err(if any_candidate {
            Refusal::Full
        } else {
            Refusal::NoOtherBackend
        })
    }

    /// Starts the request on the first of `backends` (other than `exclude`) under its pending cap.
    fn start_first(
        &mut self,
        backends: impl Iterator<Item = BackendId>,
        exclude: Option<BackendId>,
        target: TargetId,
        now_ms: u64,
        any_candidate: &mut bool,
    ) -> Option<Ticket> {
        for backend in backends.filter(|backend| exclude != Some(*backend)) {
            *any_candidate = true;
            let cap = self.pending_cap(&self.backends[backend.0 as usize], now_ms);
            let state = &mut self.backends[backend.0 as usize];
            if state.in_flight < cap {
                state.in_flight += 1;
                state.requests += 1;
                self.policy.on_start(ServerId(backend.0), target, now_ms);
                return Some(Ticket {
                    backend,
                    addr: state.addr,
                    generation: self.generation,
                });
            }
        }
        None
    }

    /// The request `begin` counted with `ticket` has finished (successfully or not).
    pub(crate) fn finish(&mut self, ticket: Ticket, target: TargetId, now_ms: u64) {
        let backend = ticket.backend;
        let state = &mut self.backends[backend.0 as usize];
        assert!(
            state.in_flight > 0,
            "finish without begin on {backend}: in_flight {}",
            state.in_flight
        );
        state.in_flight -= 1;
        if ticket.generation == self.generation {
            self.policy.on_finish(ServerId(backend.0), target, now_ms);
        } else {
            // Started on a replaced policy: it is part of the external load (`balancer` module docs, policy swap).
            state.carried = state.carried.saturating_sub(1);
            if !state.removed {
                let external = state.external_load.saturating_add(state.carried);
                let result = self.policy.set_external_load(ServerId(backend.0), external);
                assert!(result.is_ok(), "{backend} is a member: {result:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::{balancer, begin, finish, set_down};

    #[test]
    fn pending_cap_refuses_with_full_and_frees_on_finish() {
        let mut balancer = balancer(1, 2);
        let target = TargetId::from_path("/a");
        assert_eq!(begin(&mut balancer, target, None, 0, 1), Ok(BackendId(0)));
        assert_eq!(begin(&mut balancer, target, None, 0, 2), Ok(BackendId(0)));
        assert_eq!(begin(&mut balancer, target, None, 0, 3), Err(Refusal::Full));
        finish(&mut balancer, BackendId(0), target, 1);
        assert_eq!(begin(&mut balancer, target, None, 1, 4), Ok(BackendId(0)));
    }

    /// Starts requests for `target` at `now_ms` on back-end 0, which has `in_flight` of them, until it holds
    /// `cap`; then the next one must be refused as full.
    fn fill_to_cap(
        balancer: &mut Balancer,
        target: TargetId,
        now_ms: u64,
        in_flight: u32,
        cap: u32,
    ) {
        for started in in_flight..cap {
            assert_eq!(
                begin(balancer, target, None, now_ms, 0),
                Ok(BackendId(0)),
                "{started} started at {now_ms} ms, cap {cap}"
            );
        }
        assert_eq!(
            begin(balancer, target, None, now_ms, 0),
            Err(Refusal::Full),
            "cap {cap} at {now_ms} ms"
        );
    }

    #[test]
    fn a_returning_backend_ramps_its_pending_cap_over_slow_start() {
        let mut balancer = balancer(1, 100);
        let target = TargetId::from_path("/a");
        set_down(&mut balancer, BackendId(0), true, 0);
        set_down(&mut balancer, BackendId(0), false, 10_000);
        // Cap 1 at the start of 1 000 ms of slow start.
        fill_to_cap(&mut balancer, target, 10_000, 0, 1);
        // Half-way through: cap 50.
        fill_to_cap(&mut balancer, target, 10_500, 1, 50);
        // After slow start: the full cap of 100.
        fill_to_cap(&mut balancer, target, 11_000, 50, 100);
    }

    #[test]
    fn a_retry_finds_another_backend_even_without_fallbacks() {
        let mut balancer = balancer(3, 100);
        let target = TargetId::from_path("/a");
        let first = begin(&mut balancer, target, None, 0, 1).expect("first");
        let second = begin(&mut balancer, target, Some(first), 0, 1).expect("another");
        assert_ne!(first, second);
    }

    #[test]
    fn a_full_choice_overflows_to_another_live_backend() {
        let mut balancer = balancer(2, 1);
        let target = TargetId::from_path("/a");
        let first = begin(&mut balancer, target, None, 0, 1).expect("first");
        let second = begin(&mut balancer, target, None, 0, 1).expect("overflow");
        assert_ne!(first, second);
        assert_eq!(begin(&mut balancer, target, None, 0, 1), Err(Refusal::Full));
    }

    #[test]
    fn retry_excluding_the_only_backend_is_refused() {
        let mut balancer = balancer(1, 100);
        let target = TargetId::from_path("/a");
        assert_eq!(
            begin(&mut balancer, target, Some(BackendId(0)), 0, 0),
            Err(Refusal::NoOtherBackend)
        );
        balancer.set_drained(BackendId(0), true).expect("member");
        assert_eq!(
            begin(&mut balancer, target, None, 0, 0),
            Err(Refusal::NoLiveBackend)
        );
    }
}
