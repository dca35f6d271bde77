//! Differential test of the timer wheel against an ordered-map model.
//!
//! Random programs of insert / cancel / reset / advance, with deadlines and jumps spread over every level of the
//! wheel and past its range (the overflow list). The model fires, at `advance(now_ns)`, exactly the live timers
//! whose deadline rounded up to the resolution is at or before `now_ns`. Checked after every step: the fired set
//! equals the model's (so every live timer fires exactly once and cancelled timers never fire), no timer fired
//! before its deadline, no live timer is more than one tick late, cancel of a fired or cancelled id returns None,
//! `len()` matches and `next_deadline_ns()` is a lower bound of the earliest deadline.
//! proptest prints the failing program (and persists its seed) on failure.

use std::collections::{BTreeMap, HashMap};

use larder_runtime::timer::{TimerConfig, TimerId, TimerWheel};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Deadline `now + offset`; `offset` may be negative (a past deadline).
    Insert {
        offset_ns: i128,
    },
    /// Cancel the `pick`-th id ever issued (live, fired or cancelled).
    Cancel {
        pick: usize,
    },
    Reset {
        pick: usize,
        offset_ns: i128,
    },
    Advance {
        delta_ns: u64,
    },
    /// Advance to one ns before `next_deadline_ns()`, which must fire nothing, then to it.
    AdvanceToNextDeadline,
}

/// A span of `ticks` ticks chosen at a random scale: up to 2^40 ticks, past the wheel's 2^36.
fn span(resolution_ns: u64) -> impl Strategy<Value = u64> + Clone {
    (0u32..=40, any::<u64>()).prop_map(move |(bits, raw)| {
        let ticks = raw % (1u64 << bits).max(1);
        ticks
            .saturating_mul(resolution_ns)
            .saturating_add(raw % resolution_ns)
    })
}

fn op(resolution_ns: u64) -> impl Strategy<Value = Op> {
    let offset = (span(resolution_ns), any::<bool>())
        .prop_map(|(span, negative)| {
            if negative {
                -(span as i128 / 1024)
            } else {
                span as i128
            }
        })
        .boxed();
    prop_oneof![
        4 => offset.clone().prop_map(|offset_ns| Op::Insert { offset_ns }),
        2 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => (any::<usize>(), offset).prop_map(|(pick, offset_ns)| Op::Reset { pick, offset_ns }),
        2 => span(resolution_ns).prop_map(|delta_ns| Op::Advance { delta_ns: delta_ns / 8 }),
        1 => Just(Op::AdvanceToNextDeadline),
    ]
}

fn program() -> impl Strategy<Value = (u64, Vec<Op>)> {
    prop_oneof![Just(10_000u64), Just(333_333), Just(1_000_000)].prop_flat_map(|resolution_ns| {
        (
            Just(resolution_ns),
            prop::collection::vec(op(resolution_ns), 1..300),
        )
    })
}

/// Stop advancing before `now_ns` could overflow u64 over a whole program.
const NOW_NS_MAX: u64 = u64::MAX / 4;

struct Model {
    resolution_ns: u64,
    now_ns: u64,
    /// model id → deadline (ns) of live timers.
    live: BTreeMap<u64, u64>,
    ids: Vec<(TimerId, u64)>,
}

impl Model {
    fn due_ns(&self, deadline_ns: u64) -> u128 {
        deadline_ns.div_ceil(self.resolution_ns) as u128 * self.resolution_ns as u128
    }

    fn deadline(&self, offset_ns: i128) -> u64 {
        (self.now_ns as i128 + offset_ns).clamp(0, u64::MAX as i128) as u64
    }
}

fn check_advance(
    wheel: &mut TimerWheel<u64>,
    model: &mut Model,
    now_ns: u64,
) -> Result<(), TestCaseError> {
    model.now_ns = model.now_ns.max(now_ns);
    let mut fired = Vec::new();
    let count = wheel.advance(now_ns, &mut fired);
    prop_assert_eq!(count, fired.len());
    fired.sort_unstable();
    let expected: Vec<u64> = model
        .live
        .iter()
        .filter(|(_, &deadline)| model.due_ns(deadline) <= model.now_ns as u128)
        .map(|(&id, _)| id)
        .collect();
    prop_assert_eq!(&fired, &expected, "fired set at now_ns {}", model.now_ns);
    for id in &fired {
        let deadline = model.live.remove(id).expect("expected ids are live");
        prop_assert!(
            deadline <= model.now_ns,
            "timer {} fired early: deadline {} > now {}",
            id,
            deadline,
            now_ns
        );
    }
    for (id, &deadline) in &model.live {
        prop_assert!(
            (model.now_ns as u128) < deadline as u128 + model.resolution_ns as u128,
            "timer {} more than a tick late: deadline {} now {}",
            id,
            deadline,
            model.now_ns
        );
    }
    Ok(())
}

fn run(resolution_ns: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut wheel = TimerWheel::new(TimerConfig {
        resolution_ns,
        timers_max: 1 << 16,
    })
    .expect("valid config");
    let mut model = Model {
        resolution_ns,
        now_ns: 0,
        live: BTreeMap::new(),
        ids: Vec::new(),
    };
    let mut values_seen: HashMap<u64, usize> = HashMap::new();
    for op in ops {
        match *op {
            Op::Insert { offset_ns } => {
                let deadline = model.deadline(offset_ns);
                let value = model.ids.len() as u64;
                let id = wheel.insert(deadline, value).expect("below timers_max");
                model.ids.push((id, value));
                model.live.insert(value, deadline);
            }
            Op::Cancel { pick } if !model.ids.is_empty() => {
                let (id, value) = model.ids[pick % model.ids.len()];
                let expected = model.live.remove(&value).map(|_| value);
                prop_assert_eq!(
                    wheel.cancel(id),
                    expected,
                    "cancel of model timer {}",
                    value
                );
            }
            Op::Reset { pick, offset_ns } if !model.ids.is_empty() => {
                let (id, value) = model.ids[pick % model.ids.len()];
                let deadline = model.deadline(offset_ns);
                let live = model.live.contains_key(&value);
                prop_assert_eq!(
                    wheel.reset(id, deadline),
                    live,
                    "reset of model timer {}",
                    value
                );
                if live {
                    model.live.insert(value, deadline);
                }
            }
            Op::Advance { delta_ns } => {
                if model.now_ns < NOW_NS_MAX {
                    let now_ns = model.now_ns.saturating_add(delta_ns).min(NOW_NS_MAX);
                    check_advance(&mut wheel, &mut model, now_ns)?;
                }
            }
            Op::AdvanceToNextDeadline => {
                if let Some(next_ns) = wheel.next_deadline_ns() {
                    if next_ns < NOW_NS_MAX {
                        if next_ns > model.now_ns {
                            let before = wheel.len();
                            check_advance(&mut wheel, &mut model, next_ns - 1)?;
                            prop_assert_eq!(
                                wheel.len(),
                                before,
                                "fired before next_deadline_ns {}",
                                next_ns
                            );
                        }
                        check_advance(&mut wheel, &mut model, next_ns)?;
                    }
                }
            }
            Op::Cancel { .. } | Op::Reset { .. } => {}
        }
        prop_assert_eq!(wheel.len(), model.live.len());
        match (
            wheel.next_deadline_ns(),
            model.live.values().map(|&d| model.due_ns(d)).min(),
        ) {
            (None, None) => {}
            (Some(next_ns), Some(earliest_ns)) => {
                // A past deadline is due now, at the last processed tick.
                let due_ns = earliest_ns.max(wheel.elapsed_ns() as u128);
                prop_assert!(
                    next_ns as u128 <= due_ns,
                    "next {} after earliest due {}",
                    next_ns,
                    due_ns
                )
            }
            (next, earliest) => prop_assert!(
                false,
                "next_deadline_ns {:?} but earliest due {:?}",
                next,
                earliest
            ),
        }
    }
    // Drain: every live timer fires exactly once by the end of time.
    let mut fired = Vec::new();
    wheel.advance(u64::MAX, &mut fired);
    for value in fired {
        *values_seen.entry(value).or_default() += 1;
    }
    for (value, _) in std::mem::take(&mut model.live) {
        let fired_at_end = values_seen.get(&value).copied().unwrap_or(0);
        // Deadlines stay below u64::MAX / 2 (NOW_NS_MAX plus a 2^40-tick span), so all are due at u64::MAX.
        prop_assert_eq!(
            fired_at_end,
            1,
            "live timer {} fired {} times at the end",
            value,
            fired_at_end
        );
    }
    prop_assert!(
        values_seen.values().all(|&times| times == 1),
        "a value fired twice at the end: {:?}",
        values_seen
    );
    prop_assert!(wheel.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn wheel_matches_ordered_map_model((resolution_ns, ops) in program()) {
        run(resolution_ns, &ops)?;
    }
}
