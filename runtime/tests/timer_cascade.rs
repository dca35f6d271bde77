//! Exact small tests of the timer wheel: cascade boundaries, overflow, past deadlines, rounding, limits.
//! Times are written in ticks of 10 µs (the finest resolution) so the level boundaries (64, 4096, …) are visible.

use larder_runtime::timer::{
    TimerConfig, TimerError, TimerWheel, TIMERS_MAX_LIMIT, WHEEL_RANGE_TICKS,
};

const RESOLUTION_NS: u64 = 10_000;

fn ns(ticks: u64) -> u64 {
    ticks * RESOLUTION_NS
}

fn wheel() -> TimerWheel<u64> {
    TimerWheel::new(TimerConfig {
        resolution_ns: RESOLUTION_NS,
        timers_max: 1_000,
    })
    .expect("valid config")
}

fn advance(wheel: &mut TimerWheel<u64>, now_ticks: u64) -> Vec<u64> {
    let mut fired = Vec::new();
    wheel.advance(ns(now_ticks), &mut fired);
    fired.sort_unstable();
    fired
}

#[test]
fn level_boundaries_fire_exactly_at_their_tick() {
    let mut wheel = wheel();
    let ticks = [
        1,
        63,
        64,
        65,
        4_095,
        4_096,
        4_097,
        262_143,
        262_144,
        1 << 30,
        WHEEL_RANGE_TICKS - 1,
    ];
    for &tick in &ticks {
        wheel.insert(ns(tick), tick).expect("room");
    }
    assert_eq!(wheel.len(), ticks.len());
    for &tick in &ticks {
        assert_eq!(
            advance(&mut wheel, tick - 1),
            Vec::<u64>::new(),
            "nothing due before tick {tick}"
        );
        assert_eq!(
            advance(&mut wheel, tick),
            vec![tick],
            "exactly the timer of tick {tick}"
        );
    }
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_deadline_ns(), None);
}

#[test]
fn next_deadline_is_the_cascade_point_then_the_deadline() {
    let mut wheel = wheel();
    wheel.insert(ns(100), 100).expect("room");
    // 100 = 0b1_100100: level 1, slot 1, which starts at tick 64.
    assert_eq!(wheel.next_deadline_ns(), Some(ns(64)));
    assert_eq!(
        advance(&mut wheel, 64),
        Vec::<u64>::new(),
        "tick 64 only cascades"
    );
    assert_eq!(wheel.next_deadline_ns(), Some(ns(100)));
    assert_eq!(advance(&mut wheel, 100), vec![100]);
}

#[test]
fn one_big_jump_fires_every_level_at_once() {
    let mut wheel = wheel();
    for tick in [5, 70, 5_000, 300_000, 20_000_000, 2_000_000_000] {
        wheel.insert(ns(tick), tick).expect("room");
    }
    assert_eq!(
        advance(&mut wheel, 2_000_000_000),
        vec![5, 70, 5_000, 300_000, 20_000_000, 2_000_000_000]
    );
    assert!(wheel.is_empty());
}

#[test]
fn overflow_timers_wait_for_the_wheel_boundary() {
    let mut wheel = wheel();
    let far = WHEEL_RANGE_TICKS + 5;
    let farther = 3 * WHEEL_RANGE_TICKS + 7;
    wheel.insert(ns(far), far).expect("room");
    wheel.insert(ns(farther), farther).expect("room");
    assert_eq!(
        wheel.next_deadline_ns(),
        Some(ns(WHEEL_RANGE_TICKS)),
        "re-sort at the first boundary"
    );
    assert_eq!(advance(&mut wheel, WHEEL_RANGE_TICKS), Vec::<u64>::new());
    assert_eq!(wheel.next_deadline_ns(), Some(ns(far)), "now on level 0");
    assert_eq!(advance(&mut wheel, far), vec![far]);
    assert_eq!(advance(&mut wheel, farther - 1), Vec::<u64>::new());
    assert_eq!(advance(&mut wheel, farther), vec![farther]);
}

#[test]
fn past_deadlines_fire_on_the_next_advance() {
    let mut wheel = wheel();
    assert!(advance(&mut wheel, 10).is_empty());
    wheel.insert(ns(3), 3).expect("room");
    wheel.insert(0, 0).expect("room");
    wheel.insert(ns(10), 10).expect("room");
    assert_eq!(wheel.next_deadline_ns(), Some(ns(10)), "due now");
    assert_eq!(
        advance(&mut wheel, 10),
        vec![0, 3, 10],
        "same now_ns still fires them"
    );
}

#[test]
fn deadlines_round_up_to_the_tick_so_nothing_fires_early() {
    let mut wheel = wheel();
    wheel.insert(ns(1) + 1, 1).expect("room");
    let mut fired = Vec::new();
    assert_eq!(
        wheel.advance(ns(2) - 1, &mut fired),
        0,
        "one ns before the rounded deadline"
    );
    assert_eq!(wheel.advance(ns(2), &mut fired), 1);
    assert_eq!(fired, vec![1]);
}

#[test]
fn time_going_backwards_processes_nothing() {
    let mut wheel = wheel();
    wheel.insert(ns(50), 50).expect("room");
    assert!(advance(&mut wheel, 40).is_empty());
    assert!(advance(&mut wheel, 10).is_empty());
    assert_eq!(wheel.elapsed_ns(), ns(40));
    assert_eq!(advance(&mut wheel, 50), vec![50]);
}

#[test]
fn cancel_and_reset_are_generation_checked() {
    let mut wheel = wheel();
    let fired_id = wheel.insert(ns(5), 5).expect("room");
    let cancelled_id = wheel.insert(ns(6), 6).expect("room");
    assert_eq!(wheel.cancel(cancelled_id), Some(6));
    assert_eq!(wheel.cancel(cancelled_id), None, "second cancel");
    assert_eq!(advance(&mut wheel, 10), vec![5]);
    assert_eq!(wheel.cancel(fired_id), None, "cancel after fire");
    // Both slab entries are reused now; the old ids must not reach the new timers.
    let a = wheel.insert(ns(20), 20).expect("room");
    let b = wheel.insert(ns(30), 30).expect("room");
    assert_eq!(wheel.cancel(fired_id), None);
    assert!(!wheel.reset(cancelled_id, ns(40)));
    assert_eq!(wheel.deadline_ns(a), Some(ns(20)));
    assert!(wheel.reset(a, ns(35)));
    assert_eq!(wheel.deadline_ns(a), Some(ns(35)));
    assert_eq!(advance(&mut wheel, 34), vec![30]);
    assert_eq!(wheel.cancel(b), None);
    assert_eq!(advance(&mut wheel, 35), vec![20]);
}

#[test]
fn cancel_in_the_middle_of_a_slot_list_keeps_the_rest() {
    let mut wheel = wheel();
    let ids: Vec<_> = (0..5)
        .map(|value| wheel.insert(ns(7), value).expect("room"))
        .collect();
    assert_eq!(wheel.cancel(ids[2]), Some(2));
    assert_eq!(wheel.cancel(ids[4]), Some(4), "head of the list");
    assert_eq!(wheel.cancel(ids[0]), Some(0), "tail of the list");
    assert_eq!(advance(&mut wheel, 7), vec![1, 3]);
}

#[test]
fn full_wheel_is_a_typed_error_until_a_timer_goes() {
    let mut wheel = TimerWheel::new(TimerConfig {
        resolution_ns: RESOLUTION_NS,
        timers_max: 2,
    })
    .expect("valid");
    let first = wheel.insert(ns(1), 1).expect("room");
    wheel.insert(ns(2), 2).expect("room");
    assert_eq!(
        wheel.insert(ns(3), 3),
        Err(TimerError::Full { timers_max: 2 })
    );
    assert_eq!(wheel.cancel(first), Some(1));
    wheel.insert(ns(3), 3).expect("room after cancel");
    assert_eq!(wheel.len(), 2);
}

#[test]
fn config_is_validated() {
    let bad_resolution = TimerWheel::<u64>::new(TimerConfig {
        resolution_ns: 9_999,
        ..TimerConfig::default()
    });
    assert!(matches!(
        bad_resolution,
        Err(TimerError::ResolutionOutOfRange {
            resolution_ns: 9_999,
            ..
        })
    ));
    let too_coarse = TimerWheel::<u64>::new(TimerConfig {
        resolution_ns: 2_000_000_000,
        ..TimerConfig::default()
    });
    assert!(matches!(
        too_coarse,
        Err(TimerError::ResolutionOutOfRange { .. })
    ));
    let zero = TimerWheel::<u64>::new(TimerConfig {
        timers_max: 0,
        ..TimerConfig::default()
    });
    assert!(matches!(
        zero,
        Err(TimerError::TimersMaxOutOfRange { timers_max: 0, .. })
    ));
    let huge = TimerWheel::<u64>::new(TimerConfig {
        timers_max: TIMERS_MAX_LIMIT + 1,
        ..TimerConfig::default()
    });
    assert!(matches!(huge, Err(TimerError::TimersMaxOutOfRange { .. })));
    let default = TimerWheel::<u64>::new(TimerConfig::default()).expect("default is valid");
    assert_eq!(default.resolution_ns(), 1_000_000);
    assert_eq!(default.timers_max(), 4 << 20);
}
