//! The one policy of a dispatcher and the health of its back-ends, shared by every shard behind one mutex.
//!
//! # Why one shared policy
//! LARD decides from the number of requests in flight on each back-end. With one policy per shard each shard
//! would see only its own share of that load and assign the same target to different back-ends on different
//! shards (the cluster cache would hold it twice). A shared `Mutex<Box<dyn Policy>>` keeps one global view; the
//! critical section is a `select` plus `on_start` (and later one `on_finish`), well under a microsecond at
//! 10^5 targets (lard's decision-cost bench), so on the 2 to 8 shards of a front-end the lock is not the
//! bottleneck — the socket work per request is tens of microseconds.
//!
//! # Health model
//! A back-end is *live* for the policy when it is neither `drained` (operator, [`crate::DispatchHandle`]) nor
//! `down` (health): the policy's drain flag is `drained || down`. Passive detection marks a back-end down on a
//! connect error, a timeout or a connection closed before a response; the active checker
//! (`health.rs`) marks it up again when a probe succeeds, and down when a probe fails. In-flight requests on a
//! down or drained back-end finish normally; their targets move at their next `select`.
//!
//! # Retry budget
//! Milli-retries: each request adds `retry_ratio_permille`, each millisecond adds `retries_per_second`, the
//! balance is capped at `retry_burst × 1000`; a retry costs 1000. Defaults: 20% of requests + 10/s, burst 100.

use std::sync::atomic::{AtomicU64, Ordering};

use larder_lard::{Policy, ServerId, TargetId};

use crate::config::{BackendId, RetryBudgetConfig};

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

#[derive(Clone, Copy, Debug, Default)]
struct BackendState {
    in_flight: u32,
    drained: bool,
    down: bool,
    /// When the back-end last came back up (slow start runs from here).
    up_since_ms: Option<u64>,
}

/// What a [`crate::DispatchHandle`] reports about one back-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    pub backend: BackendId,
    pub in_flight: u32,
    pub drained: bool,
    pub down: bool,
}

#[derive(Clone, Copy, Debug)]
struct RetryBudget {
    config: RetryBudgetConfig,
    balance_milli: u64,
    refilled_ms: u64,
}

impl RetryBudget {
    fn new(config: RetryBudgetConfig) -> Self {
        RetryBudget {
            config,
            balance_milli: u64::from(config.retry_burst) * 1000,
            refilled_ms: 0,
        }
    }

    fn cap_milli(&self) -> u64 {
        u64::from(self.config.retry_burst) * 1000
    }

    fn on_request(&mut self) {
        self.balance_milli = (self.balance_milli + u64::from(self.config.retry_ratio_permille))
            .min(self.cap_milli());
    }

    fn try_take(&mut self, now_ms: u64) -> bool {
        let elapsed_ms = now_ms.saturating_sub(self.refilled_ms);
        self.refilled_ms = self.refilled_ms.max(now_ms);
        self.balance_milli = self
            .balance_milli
            .saturating_add(elapsed_ms.saturating_mul(u64::from(self.config.retries_per_second)))
            .min(self.cap_milli());
        if self.balance_milli >= 1000 {
            self.balance_milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// The policy, per-back-end state and retry budget (always used under the dispatcher's mutex).
pub(crate) struct Balancer {
    policy: Box<dyn Policy>,
    backends: Vec<BackendState>,
    budget: RetryBudget,
    pending_per_backend_max: u32,
    slow_start_ms: u64,
}

impl Balancer {
    pub(crate) fn new(
        mut policy: Box<dyn Policy>,
        backends: usize,
        budget: RetryBudgetConfig,
        pending_per_backend_max: u32,
        slow_start_ms: u64,
    ) -> Result<Self, larder_lard::MembershipError> {
        for index in 0..backends {
            policy.add_server(ServerId(index as u32), 1)?;
        }
        Ok(Balancer {
            policy,
            backends: vec![BackendState::default(); backends],
            budget: RetryBudget::new(budget),
            pending_per_backend_max,
            slow_start_ms,
        })
    }

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
    ) -> Result<BackendId, Refusal> {
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
        if let Some(backend) =
            self.start_first(choices, exclude, target, now_ms, &mut any_candidate)
        {
            return Ok(backend);
        }
        // Then any other live back-end, least in flight first (a LARD target with a one-member set has no
        // fallback, and a retry or an overflow must still find another node). Only on this rare path.
        let mut others: Vec<BackendId> = (0..self.backends.len() as u32)
            .map(BackendId)
            .filter(|backend| {
                let state = &self.backends[backend.0 as usize];
                !state.down && !state.drained
            })
            .collect();
        others.sort_by_key(|backend| self.backends[backend.0 as usize].in_flight);
        if let Some(backend) = self.start_first(
            others.into_iter(),
            exclude,
            target,
            now_ms,
            &mut any_candidate,
        ) {
            return Ok(backend);
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
    ) -> Option<BackendId> {
        for backend in backends.filter(|backend| exclude != Some(*backend)) {
            *any_candidate = true;
            let cap = self.pending_cap(&self.backends[backend.0 as usize], now_ms);
            let state = &mut self.backends[backend.0 as usize];
            if state.in_flight < cap {
                state.in_flight += 1;
                self.policy.on_start(ServerId(backend.0), target, now_ms);
                return Some(backend);
            }
        }
        None
    }

    /// The request `begin` counted on `backend` has finished (successfully or not).
    pub(crate) fn finish(&mut self, backend: BackendId, target: TargetId, now_ms: u64) {
        let state = &mut self.backends[backend.0 as usize];
        assert!(
            state.in_flight > 0,
            "finish without begin on {backend}: in_flight {}",
            state.in_flight
        );
        state.in_flight -= 1;
        self.policy.on_finish(ServerId(backend.0), target, now_ms);
    }

    /// Spends one retry from the budget; false when it is exhausted.
    pub(crate) fn try_retry(&mut self, now_ms: u64) -> bool {
        self.budget.try_take(now_ms)
    }

    fn apply(&mut self, backend: BackendId) {
        let state = self.backends[backend.0 as usize];
        let result = self
            .policy
            .set_draining(ServerId(backend.0), state.drained || state.down);
        assert!(result.is_ok(), "{backend} is a member: {result:?}");
    }

    /// Health verdict at `now_ms`; returns true when it changed. Coming up starts slow start.
    pub(crate) fn set_down(&mut self, backend: BackendId, down: bool, now_ms: u64) -> bool {
        let state = &mut self.backends[backend.0 as usize];
        if state.down == down {
            return false;
        }
        state.down = down;
        state.up_since_ms = (!down).then_some(now_ms);
        self.apply(backend);
        true
    }

    pub(crate) fn set_drained(&mut self, backend: BackendId, drained: bool) {
        self.backends[backend.0 as usize].drained = drained;
        self.apply(backend);
    }

    pub(crate) fn backend_count(&self) -> usize {
        self.backends.len()
    }

    pub(crate) fn status(&self) -> Vec<BackendStatus> {
        self.backends
            .iter()
            .enumerate()
            .map(|(index, state)| BackendStatus {
                backend: BackendId(index as u32),
                in_flight: state.in_flight,
                drained: state.drained,
                down: state.down,
            })
            .collect()
    }
}

/// Counters of a running dispatcher (all shards), readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) responses_502: AtomicU64,
    pub(crate) responses_503: AtomicU64,
    pub(crate) responses_504: AtomicU64,
    pub(crate) backends_marked_down: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub requests: u64,
    pub retries: u64,
    pub responses_502: u64,
    pub responses_503: u64,
    pub responses_504: u64,
    pub backends_marked_down: u64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CountersSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CountersSnapshot {
            requests: load(&self.requests),
            retries: load(&self.retries),
            responses_502: load(&self.responses_502),
            responses_503: load(&self.responses_503),
            responses_504: load(&self.responses_504),
            backends_marked_down: load(&self.backends_marked_down),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_lard::{PolicyConfig, PolicyKind};

    fn balancer(backends: usize, pending_max: u32) -> Balancer {
        let policy = larder_lard::build(&PolicyConfig::new(PolicyKind::Lard)).expect("policy");
        Balancer::new(
            policy,
            backends,
            RetryBudgetConfig::default(),
            pending_max,
            1_000,
        )
        .expect("members")
    }

    #[test]
    fn pending_cap_refuses_with_full_and_frees_on_finish() {
        let mut balancer = balancer(1, 2);
        let target = TargetId::from_path("/a");
        assert_eq!(balancer.begin(target, None, 0, 1), Ok(BackendId(0)));
        assert_eq!(balancer.begin(target, None, 0, 2), Ok(BackendId(0)));
        assert_eq!(balancer.begin(target, None, 0, 3), Err(Refusal::Full));
        balancer.finish(BackendId(0), target, 1);
        assert_eq!(balancer.begin(target, None, 1, 4), Ok(BackendId(0)));
    }

    #[test]
    fn a_down_backend_gets_no_new_requests_and_comes_back() {
        let mut balancer = balancer(2, 100);
        let target = TargetId::from_path("/a");
        let first = balancer.begin(target, None, 0, 1).expect("first");
        balancer.finish(first, target, 0);
        assert!(balancer.set_down(first, true, 0));
        assert!(
            !balancer.set_down(first, true, 0),
            "second verdict is no change"
        );
        for step in 0..10 {
            let chosen = balancer.begin(target, None, step, step).expect("live");
            assert_ne!(chosen, first, "step {step}");
            balancer.finish(chosen, target, step);
        }
        balancer.set_down(first, false, 0);
        balancer.set_down(BackendId(1 - first.0), true, 0);
        assert_eq!(balancer.begin(target, None, 2_000, 0), Ok(first));
    }

    #[test]
    fn a_returning_backend_ramps_its_pending_cap_over_slow_start() {
        let mut balancer = balancer(1, 100);
        let target = TargetId::from_path("/a");
        balancer.set_down(BackendId(0), true, 0);
        balancer.set_down(BackendId(0), false, 10_000);
        assert_eq!(balancer.begin(target, None, 10_000, 0), Ok(BackendId(0)));
        assert_eq!(
            balancer.begin(target, None, 10_000, 0),
            Err(Refusal::Full),
            "cap 1 at the start"
        );
        // Half-way through 1 000 ms of slow start: cap 50.
        for started in 1..50 {
            assert_eq!(
                balancer.begin(target, None, 10_500, 0),
                Ok(BackendId(0)),
                "{started}"
            );
        }
        assert_eq!(
            balancer.begin(target, None, 10_500, 0),
            Err(Refusal::Full),
            "cap 50"
        );
        // After slow start: the full cap of 100.
        for started in 50..100 {
            assert_eq!(
                balancer.begin(target, None, 11_000, 0),
                Ok(BackendId(0)),
                "{started}"
            );
        }
        assert_eq!(
            balancer.begin(target, None, 11_000, 0),
            Err(Refusal::Full),
            "cap 100"
        );
    }

    #[test]
    fn a_retry_finds_another_backend_even_without_fallbacks() {
        let mut balancer = balancer(3, 100);
        let target = TargetId::from_path("/a");
        let first = balancer.begin(target, None, 0, 1).expect("first");
        let second = balancer.begin(target, Some(first), 0, 1).expect("another");
        assert_ne!(first, second);
    }

    #[test]
    fn a_full_choice_overflows_to_another_live_backend() {
        let mut balancer = balancer(2, 1);
        let target = TargetId::from_path("/a");
        let first = balancer.begin(target, None, 0, 1).expect("first");
        let second = balancer.begin(target, None, 0, 1).expect("overflow");
        assert_ne!(first, second);
        assert_eq!(balancer.begin(target, None, 0, 1), Err(Refusal::Full));
    }

    #[test]
    fn retry_excluding_the_only_backend_is_refused() {
        let mut balancer = balancer(1, 100);
        let target = TargetId::from_path("/a");
        assert_eq!(
            balancer.begin(target, Some(BackendId(0)), 0, 0),
            Err(Refusal::NoOtherBackend)
        );
        balancer.set_drained(BackendId(0), true);
        assert_eq!(
            balancer.begin(target, None, 0, 0),
            Err(Refusal::NoLiveBackend)
        );
    }

    #[test]
    fn retry_budget_is_twenty_percent_plus_ten_per_second() {
        let config = RetryBudgetConfig {
            retry_ratio_permille: 200,
            retries_per_second: 10,
            retry_burst: 2,
        };
        let mut budget = RetryBudget::new(config);
        assert!(budget.try_take(0));
        assert!(budget.try_take(0));
        assert!(!budget.try_take(0), "burst of 2 spent");
        for _ in 0..5 {
            budget.on_request();
        }
        assert!(budget.try_take(0), "5 requests earn one retry");
        assert!(!budget.try_take(0));
        assert!(budget.try_take(100), "100 ms at 10/s earn one retry");
        assert!(!budget.try_take(100));
    }
}
