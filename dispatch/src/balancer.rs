//! The one policy of a dispatcher, its back-end table and the health of its back-ends, shared by every shard
//! behind one mutex.
//!
//! # Why one shared policy
//! LARD decides from the number of requests in flight on each back-end. With one policy per shard each shard
//! would see only its own share of that load and assign the same target to different back-ends on different
//! shards (the cluster cache would hold it twice). A shared `Mutex<Box<dyn Policy>>` keeps one global view; the
//! critical section is a `select` plus `on_start` (and later one `on_finish`), well under a microsecond at
//! 10^5 targets (lard's decision-cost bench), so on the 2 to 8 shards of a front-end the lock is not the
//! bottleneck — the socket work per request is tens of microseconds.
//!
//! # The back-end table
//! A slot per back-end, at most [`BACKENDS_MAX`]; a [`BackendId`] is a slot index and the back-end's
//! `ServerId` in the policy. Slots are added at run time ([`Balancer::add`]); a removed back-end leaves the
//! policy at once but keeps its slot until its last request in flight finished, then the slot may be reused
//! (by the same or another address). Every [`Ticket`] carries the address it was issued for, so a shard's idle
//! connection stack and a health verdict never apply to the wrong back-end after a reuse.
//!
//! # Health model
//! A back-end is *live* for the policy when it is neither `drained` (operator or control plane), nor `down`
//! (health checks), nor `control_down` (the control plane reports the node down): the policy's drain flag is
//! the OR of the three. Passive detection marks a back-end down on a connect error, a timeout or a connection
//! closed before a response; the active checker (`health.rs`) marks it up again when a probe succeeds, and down
//! when a probe fails. The control plane's verdict is a separate flag so the two checkers never undo each other.
//! In-flight requests on a down or drained back-end finish normally; their targets move at their next `select`.
//!
//! # Policy swap ([`Balancer::set_policy`])
//! The new policy gets every member with its weight, drain flag and external load before it replaces the old
//! one (an error leaves the old one in place). Requests in flight at the swap were started on the old policy:
//! their number per back-end (`carried`) is added to the new policy's external load and taken off again as each
//! finishes, so the new policy's load is exact from the first decision. Target tables start empty.
//!
//! # Retry budget
//! Milli-retries: each request adds `retry_ratio_permille`, each millisecond adds `retries_per_second`, the
//! balance is capped at `retry_burst × 1000`; a retry costs 1000. Defaults: 20% of requests + 10/s, burst 100.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use larder_lard::{MembershipError, Policy, PolicyConfig, ServerId, TargetId};

use crate::config::{BackendId, RetryBudgetConfig, BACKENDS_MAX};

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
struct BackendState {
    addr: SocketAddr,
    weight: u32,
    in_flight: u32,
    /// Requests in flight that were started on a policy replaced since (module docs, policy swap).
    carried: u32,
    /// Load last reported from elsewhere (the control plane).
    external_load: u32,
    drained: bool,
    down: bool,
    control_down: bool,
    /// Left the policy; the slot is free once `in_flight` is 0.
    removed: bool,
    /// When the back-end last came back up or was added (slow start runs from here).
    up_since_ms: Option<u64>,
}

impl BackendState {
    fn new(addr: SocketAddr, weight: u32, up_since_ms: Option<u64>) -> Self {
        BackendState {
            addr,
            weight,
            in_flight: 0,
            carried: 0,
            external_load: 0,
            drained: false,
            down: false,
            control_down: false,
            removed: false,
            up_since_ms,
        }
    }

    fn live(&self) -> bool {
        !self.removed && !self.drained && !self.down && !self.control_down
    }
}

/// What a [`crate::DispatchHandle`] reports about one back-end (removed back-ends are not listed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    pub backend: BackendId,
    pub addr: SocketAddr,
    pub weight: u32,
    pub in_flight: u32,
    /// Load last set with [`crate::DispatchHandle::set_external_load`].
    pub external_load: u32,
    pub drained: bool,
    /// Health checks (active or passive) found it down.
    pub down: bool,
    /// The control plane reports it down.
    pub control_down: bool,
}

/// A request counted on a back-end by [`Balancer::begin`]; give it back to [`Balancer::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) backend: BackendId,
    pub(crate) addr: SocketAddr,
    /// The policy generation the request was started on.
    generation: u64,
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

/// The policy, the back-end table and the retry budget (always used under the dispatcher's mutex).
pub(crate) struct Balancer {
    policy: Box<dyn Policy>,
    policy_config: PolicyConfig,
    /// Grows by one with every policy swap.
    generation: u64,
    backends: Vec<BackendState>,
    budget: RetryBudget,
    pending_per_backend_max: u32,
    slow_start_ms: u64,
}

impl Balancer {
    /// A balancer running `policy` (built from `policy_config`) over `backends`, all weight 1 and up.
    pub(crate) fn new(
        policy: Box<dyn Policy>,
        policy_config: PolicyConfig,
        backends: &[SocketAddr],
        budget: RetryBudgetConfig,
        pending_per_backend_max: u32,
        slow_start_ms: u64,
    ) -> Result<Self, TableError> {
        let mut balancer = Balancer {
            policy,
            policy_config,
            generation: 0,
            backends: Vec::with_capacity(backends.len()),
            budget: RetryBudget::new(budget),
            pending_per_backend_max,
            slow_start_ms,
        };
        for addr in backends {
            balancer.add(*addr, 1, None)?;
        }
        Ok(balancer)
    }

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
    fn member(&mut self, backend: BackendId) -> Result<&mut BackendState, TableError> {
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

    /// The configuration of the policy in force.
    pub(crate) fn policy_config(&self) -> &PolicyConfig {
        &self.policy_config
    }

    /// Swaps in `policy` (built from `config`) with every member (module docs); false when `config` is already
    /// in force. On an error the old policy stays.
    pub(crate) fn set_policy(
        &mut self,
        mut policy: Box<dyn Policy>,
        config: PolicyConfig,
    ) -> Result<bool, TableError> {
        if config == self.policy_config {
            return Ok(false);
        }
        for (index, state) in self.backends.iter().enumerate() {
            if state.removed {
                continue;
            }
            let server = ServerId(index as u32);
            policy.add_server(server, state.weight)?;
            if !state.live() {
                policy.set_draining(server, true)?;
            }
            let external = state.external_load.saturating_add(state.in_flight);
            if external > 0 {
                policy.set_external_load(server, external)?;
            }
        }
        self.policy = policy;
        self.policy_config = config;
        self.generation += 1;
        for state in &mut self.backends {
            state.carried = state.in_flight;
        }
        Ok(true)
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
            // Started on a replaced policy: it is part of the external load (module docs, policy swap).
            state.carried = state.carried.saturating_sub(1);
            if !state.removed {
                let external = state.external_load.saturating_add(state.carried);
                let result = self.policy.set_external_load(ServerId(backend.0), external);
                assert!(result.is_ok(), "{backend} is a member: {result:?}");
            }
        }
    }

    /// Spends one retry from the budget; false when it is exhausted.
    pub(crate) fn try_retry(&mut self, now_ms: u64) -> bool {
        self.budget.try_take(now_ms)
    }

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
                external_load: state.external_load,
                drained: state.drained,
                down: state.down,
                control_down: state.control_down,
            })
            .collect()
    }

    /// The policy's own view of each member (tests check the load accounting with it).
    #[cfg(test)]
    fn policy_load(&self, backend: BackendId) -> Option<u32> {
        self.policy.load(ServerId(backend.0))
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
    use larder_lard::PolicyKind;

    fn addr(index: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 10_000 + index as u16))
    }

    fn balancer_with(kind: PolicyKind, backends: usize, pending_max: u32) -> Balancer {
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

    fn balancer(backends: usize, pending_max: u32) -> Balancer {
        balancer_with(PolicyKind::Lard, backends, pending_max)
    }

    /// `Balancer::begin`, keeping only the chosen back-end.
    fn begin(
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
    fn finish(balancer: &mut Balancer, backend: BackendId, target: TargetId, now_ms: u64) {
        let ticket = Ticket {
            backend,
            addr: balancer.backends[backend.0 as usize].addr,
            generation: balancer.generation,
        };
        balancer.finish(ticket, target, now_ms);
    }

    fn set_down(balancer: &mut Balancer, backend: BackendId, down: bool, now_ms: u64) -> bool {
        let addr = balancer.backends[backend.0 as usize].addr;
        balancer.set_down(backend, addr, down, now_ms)
    }

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
    fn a_returning_backend_ramps_its_pending_cap_over_slow_start() {
        let mut balancer = balancer(1, 100);
        let target = TargetId::from_path("/a");
        set_down(&mut balancer, BackendId(0), true, 0);
        set_down(&mut balancer, BackendId(0), false, 10_000);
        assert_eq!(
            begin(&mut balancer, target, None, 10_000, 0),
            Ok(BackendId(0))
        );
        assert_eq!(
            begin(&mut balancer, target, None, 10_000, 0),
            Err(Refusal::Full),
            "cap 1 at the start"
        );
        // Half-way through 1 000 ms of slow start: cap 50.
        for started in 1..50 {
            assert_eq!(
                begin(&mut balancer, target, None, 10_500, 0),
                Ok(BackendId(0)),
                "{started}"
            );
        }
        assert_eq!(
            begin(&mut balancer, target, None, 10_500, 0),
            Err(Refusal::Full),
            "cap 50"
        );
        // After slow start: the full cap of 100.
        for started in 50..100 {
            assert_eq!(
                begin(&mut balancer, target, None, 11_000, 0),
                Ok(BackendId(0)),
                "{started}"
            );
        }
        assert_eq!(
            begin(&mut balancer, target, None, 11_000, 0),
            Err(Refusal::Full),
            "cap 100"
        );
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

    #[test]
    fn a_policy_swap_keeps_members_flags_and_exact_load() {
        let mut balancer = balancer_with(PolicyKind::Lard, 3, 100);
        balancer.set_weight(BackendId(0), 2).expect("weight");
        balancer.set_drained(BackendId(1), true).expect("drain");
        set_down(&mut balancer, BackendId(2), true, 0);
        balancer.set_external_load(BackendId(0), 5).expect("load");
        let target = TargetId::from_path("/a");
        let old = balancer.begin(target, None, 0, 0).expect("live");
        assert_eq!(old.backend, BackendId(0), "the only live back-end");
        assert_eq!(balancer.policy_load(BackendId(0)), Some(6));

        let config = PolicyConfig::new(PolicyKind::Wrr);
        let wrr = larder_lard::build(&config).expect("policy");
        assert_eq!(balancer.set_policy(wrr, config.clone()), Ok(true));
        assert_eq!(balancer.policy_config(), &config);
        let again = larder_lard::build(&config).expect("policy");
        assert_eq!(balancer.set_policy(again, config), Ok(false), "same config");
        // Weight, drain and down carried over; the request in flight counts as load.
        let status = balancer.status();
        assert_eq!(status[0].weight, 2);
        assert!(status[1].drained && status[2].down);
        assert_eq!(balancer.policy_load(BackendId(0)), Some(6));
        for step in 0..5 {
            assert_eq!(
                begin(&mut balancer, target, None, step, step),
                Ok(BackendId(0))
            );
            finish(&mut balancer, BackendId(0), target, step);
        }
        // The old request finishes: the load drops by one, to the reported 5.
        balancer.finish(old, target, 10);
        assert_eq!(balancer.policy_load(BackendId(0)), Some(5));
        assert_eq!(balancer.status()[0].in_flight, 0);
        balancer.set_external_load(BackendId(0), 0).expect("load");
        assert_eq!(balancer.policy_load(BackendId(0)), Some(0));
    }

    #[test]
    fn a_refused_policy_swap_keeps_the_old_policy() {
        let mut balancer = balancer_with(PolicyKind::Lard, 5, 100);
        for index in 0..5 {
            balancer.set_weight(BackendId(index), 256).expect("weight");
        }
        // 1024 points x weight 256 x 5 back-ends exceeds the ring's 2^20 points.
        let mut config = PolicyConfig::new(PolicyKind::ConsistentHash);
        config.vnodes_per_server = 1024;
        let ring = larder_lard::build(&config).expect("policy");
        let refused = balancer.set_policy(ring, config);
        assert!(
            matches!(refused, Err(TableError::Membership(_))),
            "{refused:?}"
        );
        assert_eq!(balancer.policy_config().kind, PolicyKind::Lard);
        let target = TargetId::from_path("/a");
        assert!(begin(&mut balancer, target, None, 0, 0).is_ok());
    }

    /// One step of the model test.
    #[derive(Clone, Debug)]
    enum Step {
        Add { port: u8, weight: u32 },
        Remove { pick: usize },
        Begin { target: u8, random: u64 },
        Finish { pick: usize },
        Drain { pick: usize, drained: bool },
        Load { pick: usize, load: u32 },
        Swap { kind: usize },
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..12, 1u32..4).prop_map(|(port, weight)| Step::Add { port, weight }),
            any::<usize>().prop_map(|pick| Step::Remove { pick }),
            (any::<u8>(), any::<u64>()).prop_map(|(target, random)| Step::Begin { target, random }),
            (any::<u8>(), any::<u64>()).prop_map(|(target, random)| Step::Begin { target, random }),
            any::<usize>().prop_map(|pick| Step::Finish { pick }),
            any::<usize>().prop_map(|pick| Step::Finish { pick }),
            (any::<usize>(), any::<bool>())
                .prop_map(|(pick, drained)| Step::Drain { pick, drained }),
            (any::<usize>(), 0u32..50).prop_map(|(pick, load)| Step::Load { pick, load }),
            (0usize..PolicyKind::ALL.len()).prop_map(|kind| Step::Swap { kind }),
        ]
    }

    proptest::proptest! {
        /// Against a model of the table (address per slot, requests outstanding): the status lists exactly the
        /// members, one slot per address, in-flight counts match, a request never starts on a drained or removed
        /// back-end, and the policy's load of every member is exactly in-flight + external load across swaps.
        #[test]
        fn the_table_and_its_load_match_a_model(steps in proptest::collection::vec(step(), 1..200)) {
            let mut balancer = balancer_with(PolicyKind::LardR, 0, 1_000);
            // Per slot: (address, removed, drained, external load).
            let mut model: Vec<(SocketAddr, bool, bool, u32)> = Vec::new();
            let mut outstanding: Vec<(Ticket, TargetId)> = Vec::new();
            for (index, step) in steps.into_iter().enumerate() {
                let now_ms = index as u64;
                let members: Vec<usize> = (0..model.len()).filter(|slot| !model[*slot].1).collect();
                match step {
                    Step::Add { port, weight } => {
                        let address = addr(usize::from(port));
                        let present = members.iter().any(|slot| model[*slot].0 == address);
                        match balancer.add(address, weight, None) {
                            Ok(backend) => {
                                proptest::prop_assert!(!present, "{address} added twice");
                                let slot = backend.0 as usize;
                                let entry = (address, false, false, 0);
                                if slot == model.len() {
                                    model.push(entry);
                                } else {
                                    proptest::prop_assert!(model[slot].1, "slot {slot} reused while a member");
                                    proptest::prop_assert!(
                                        outstanding.iter().all(|(ticket, _)| ticket.backend != backend),
                                        "slot {slot} reused with requests in flight"
                                    );
                                    model[slot] = entry;
                                }
                            }
                            Err(error) => proptest::prop_assert!(present, "{error}"),
                        }
                    }
                    Step::Remove { pick } if !members.is_empty() => {
                        let slot = members[pick % members.len()];
                        balancer.remove(BackendId(slot as u32)).expect("member");
                        model[slot].1 = true;
                    }
                    Step::Begin { target, random } => {
                        let target = TargetId::from_path(&format!("/{target}"));
                        if let Ok(ticket) = balancer.begin(target, None, now_ms, random) {
                            let slot = ticket.backend.0 as usize;
                            proptest::prop_assert!(!model[slot].1 && !model[slot].2, "started on {slot}: {:?}", model[slot]);
                            proptest::prop_assert_eq!(ticket.addr, model[slot].0);
                            outstanding.push((ticket, target));
                        } else {
                            proptest::prop_assert!(members.iter().all(|slot| model[*slot].2), "refused with a live member");
                        }
                    }
                    Step::Finish { pick } if !outstanding.is_empty() => {
                        let (ticket, target) = outstanding.swap_remove(pick % outstanding.len());
                        balancer.finish(ticket, target, now_ms);
                    }
                    Step::Drain { pick, drained } if !members.is_empty() => {
                        let slot = members[pick % members.len()];
                        balancer.set_drained(BackendId(slot as u32), drained).expect("member");
                        model[slot].2 = drained;
                    }
                    Step::Load { pick, load } if !members.is_empty() => {
                        let slot = members[pick % members.len()];
                        balancer.set_external_load(BackendId(slot as u32), load).expect("member");
                        model[slot].3 = load;
                    }
                    Step::Swap { kind } => {
                        let config = PolicyConfig::new(PolicyKind::ALL[kind]);
                        let policy = larder_lard::build(&config).expect("policy");
                        balancer.set_policy(policy, config).expect("swap");
                    }
                    _ => {}
                }
                let status = balancer.status();
                let listed: Vec<(u32, SocketAddr)> = status.iter().map(|s| (s.backend.0, s.addr)).collect();
                let expected: Vec<(u32, SocketAddr)> = (0..model.len())
                    .filter(|slot| !model[*slot].1)
                    .map(|slot| (slot as u32, model[slot].0))
                    .collect();
                proptest::prop_assert_eq!(listed, expected, "step {}", index);
                for backend in &status {
                    let in_flight = outstanding.iter().filter(|(ticket, _)| ticket.backend == backend.backend).count() as u32;
                    proptest::prop_assert_eq!(backend.in_flight, in_flight, "{} at step {}", backend.backend, index);
                    let external = model[backend.backend.0 as usize].3;
                    proptest::prop_assert_eq!(
                        balancer.policy_load(backend.backend),
                        Some(in_flight + external),
                        "policy load of {} at step {}", backend.backend, index
                    );
                }
            }
        }
    }
}
