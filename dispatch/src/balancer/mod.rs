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
//! # Policy swap ([`Balancer::set_policy`])
//! The new policy gets every member with its weight, drain flag and external load before it replaces the old
//! one (an error leaves the old one in place). Requests in flight at the swap were started on the old policy:
//! their number per back-end (`carried`) is added to the new policy's external load and taken off again as each
//! finishes, so the new policy's load is exact from the first decision. Target tables start empty.
//!
//! # Layout
//! [`Balancer`] is defined here with the policy swap; each submodule adds the methods of one concern:
//!
//! | module | owns | limits |
//! |---|---|---|
//! | `table` | the run-time back-end table: add, remove, weights, external load, status | 256 back-ends (`BACKENDS_MAX`), weight 1..=256 (lard's `WEIGHT_MAX`) |
//! | `choice` | the back-end per request: policy choice, fallbacks, pending cap, slow start, finish | 1,024 pending per back-end, 5 s slow start (defaults) |
//! | `liveness` | health and drain verdicts and the policy's drain flag | — |
//! | `budget` | the retry budget | 20% of requests + 10/s, burst 100 (default) |
//! | `counters` | the dispatcher's counters, readable from any thread | — |
//! | `testing` | helpers for the unit tests of these modules (tests only) | — |
//!
//! # Invariants (under the mutex)
//! 1. Every slot that is not removed is a member of the policy with the slot's weight, and its drain flag in the
//!    policy is `!live()`.
//! 2. The policy's load of a member is its requests in flight plus its external load, across policy swaps.
//! 3. A slot is reused only when it is removed and has no request in flight.

use std::net::SocketAddr;

use larder_lard::{Policy, PolicyConfig, ServerId};

#[cfg(test)]
use crate::config::BackendId;
use crate::config::RetryBudgetConfig;

mod budget;
mod choice;
mod counters;
mod liveness;
mod table;
#[cfg(test)]
mod testing;

use budget::RetryBudget;
pub(crate) use choice::Ticket;
pub(crate) use counters::Counters;
pub use counters::CountersSnapshot;
use table::BackendState;
pub use table::{BackendStatus, TableError};

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

    /// The policy's own view of each member (tests check the load accounting with it).
    #[cfg(test)]
    fn policy_load(&self, backend: BackendId) -> Option<u32> {
        self.policy.load(ServerId(backend.0))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use larder_lard::{PolicyKind, TargetId};

    use super::testing::{addr, balancer_with, begin, finish, set_down};
    use super::*;
    use crate::config::BackendId;

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
