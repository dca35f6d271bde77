//! Consistent hashing on a ring of virtual nodes, plain (`ch`, static partitioning of targets) or with bounded
//! loads (`ch-bl`, Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA 2018 —
//! HAProxy's `hash-balance-factor`, Envoy's `hash_balance_factor`).
//!
//! Model: member `s` of weight `w` owns `vnodes_per_server · w` points at `mix64(s << 32 | replica)`; a target
//! sits at `mix64(target)` and belongs to the first point at or after it (wrapping). Draining members' points
//! are skipped, so draining or removing a member moves only the targets it owned; adding one moves about
//! `1/N` of them. With bounded loads, the walk continues past members whose load is not below their capacity
//! `⌈c · (L + 1) · w / W⌉` (L: load of the live members, W: their weight total; with equal weights
//! `⌈c · (L + 1) / n⌉`), so after the caller's `on_start` no member is above `⌈c · average⌉`.
//!
//! Limits: at most [`RING_POINTS_MAX`] points (12 bytes each); the ring is rebuilt at the first pick after an
//! add, remove or weight change (so a burst of changes costs one rebuild), O(P log P) for P points
//! (160 vnodes × 1024 members: 164k points, about 10 ms). A pick is a binary
//! search (≤ 20 steps) plus a walk: plain hashing stops at the first live point, bounded loads walk an
//! expected O(1/(c−1)²) members, at most the whole ring. Fallbacks come from at most
//! [`FALLBACK_WALK_MAX`] further points.

use crate::members::{Change, Members, Rank};
use crate::pool::Strategy;
use crate::{Decision, TargetId, FALLBACKS_MAX, RING_POINTS_MAX};

/// Most ring points visited after the chosen one to find distinct fallbacks.
pub const FALLBACK_WALK_MAX: usize = 32;

/// splitmix64's finaliser: a fixed bijective mixer (no per-process seed, so every node builds the same ring).
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub(crate) struct Ring {
    name: &'static str,
    vnodes_per_server: u32,
    /// `Some(c)` for bounded loads.
    balance_factor: Option<f64>,
    /// Sorted point hashes, and the member index owning each (parallel to `points`).
    points: Vec<u64>,
    owners: Vec<u32>,
    /// The membership changed since the last rebuild: rebuild before the next pick.
    stale: bool,
}

impl Ring {
    pub(crate) fn new(vnodes_per_server: u32, balance_factor: Option<f64>) -> Ring {
        let name = if balance_factor.is_some() {
            "ch-bl"
        } else {
            "ch"
        };
        Ring {
            name,
            vnodes_per_server,
            balance_factor,
            points: Vec::new(),
            owners: Vec::new(),
            stale: false,
        }
    }

    fn rebuild(&mut self, members: &Members) {
        let mut pairs: Vec<(u64, u32)> = Vec::with_capacity(
            usize::try_from(members.weight_total() * u64::from(self.vnodes_per_server))
                .unwrap_or(0),
        );
        for (index, member) in members.list().iter().enumerate() {
            let replicas = member.weight * self.vnodes_per_server;
            for replica in 0..replicas {
                let point = mix64((u64::from(member.id.0) << 32) | u64::from(replica));
                pairs.push((point, index as u32));
            }
        }
        pairs.sort_unstable();
        assert!(
            pairs.len() <= RING_POINTS_MAX,
            "ring has {} points, limit {RING_POINTS_MAX}",
            pairs.len()
        );
        self.points = pairs.iter().map(|pair| pair.0).collect();
        self.owners = pairs.iter().map(|pair| pair.1).collect();
    }

    /// Capacity of a member of `weight` under bounded loads.
    #[inline]
    fn capacity(
        balance_factor: f64,
        members: &Members,
        live_weight_total: u64,
        weight: u32,
    ) -> u64 {
        bounded_load_capacity(
            balance_factor,
            members.live_load_total(),
            u64::from(weight),
            live_weight_total,
        )
    }
}

/// `⌈c · (load_total + 1) · weight / weight_total⌉`: the most a member of `weight` may carry after one more
/// request is placed, under bounded-load hashing with balance factor `c`.
pub fn bounded_load_capacity(c: f64, load_total: u64, weight: u64, weight_total: u64) -> u64 {
    (c * (load_total + 1) as f64 * weight as f64 / weight_total as f64).ceil() as u64
}

impl Strategy for Ring {
    fn name(&self) -> &'static str {
        self.name
    }

    fn weight_total_max(&self) -> u64 {
        RING_POINTS_MAX as u64 / u64::from(self.vnodes_per_server)
    }

    fn select(
        &mut self,
        members: &Members,
        target: TargetId,
        _now_ms: u64,
        random: u64,
    ) -> Decision {
        if self.stale {
            self.rebuild(members);
            self.stale = false;
        }
        let list = members.list();
        let len = self.points.len();
        let hash = mix64(target.0);
        let start = self.points.partition_point(|point| *point < hash);
        let live_weight_total = members.live_weight_total();
        let mut chosen: Option<(u32, usize)> = None;
        for step in 0..len {
            let owner = self.owners[(start + step) % len];
            let member = &list[owner as usize];
            if !member.live() {
                continue;
            }
            let fits = match self.balance_factor {
                None => true,
                Some(c) => {
                    u64::from(member.load())
                        < Ring::capacity(c, members, live_weight_total, member.weight)
                }
            };
            if fits {
                chosen = Some((owner, step));
                break;
            }
        }
        let Some((owner, step)) = chosen else {
            // Unreachable by the capacity argument (the capacities sum to at least L + 1 > L, so some live
            // member is below its own); kept for f64 rounding at extreme loads: the least loaded.
            return members
                .least_loaded(Rank::LoadPerWeight, random)
                .decision(members)
                .expect("a live member");
        };
        let mut fallbacks = [None; FALLBACKS_MAX];
        let mut found = 0;
        for further in 1..=FALLBACK_WALK_MAX.min(len) {
            if found == FALLBACKS_MAX {
                break;
            }
            let other = self.owners[(start + step + further) % len];
            let member = &list[other as usize];
            if other != owner && member.live() && !fallbacks.contains(&Some(member.id)) {
                fallbacks[found] = Some(member.id);
                found += 1;
            }
        }
        Decision {
            server: list[owner as usize].id,
            fallbacks,
        }
    }

    fn on_change(&mut self, _members: &Members, change: Change) {
        match change {
            Change::Added(_) | Change::Removed(_) | Change::Weight(_) => self.stale = true,
            Change::Draining(_) | Change::Unchanged => {}
        }
    }
}
