//! Pure request-distribution policies: which member serves a request. One library for both levels of
//! Larder: the shards of a node and the nodes of a cluster.
//!
//! # Model
//! A [`Policy`] holds the members ([`ServerId`], weight, drain flag, load) and answers [`Policy::select`] for a
//! target ([`TargetId`], a fixed FNV-1a hash of the path) with a [`Decision`]: one server and up to
//! [`FALLBACKS_MAX`] distinct live alternatives. The caller reports `on_start` / `on_finish` of each request it
//! dispatched; load = own count + [`Policy::set_external_load`]. The crate is pure: no I/O, no clock, no RNG,
//! no global state. Time (`now_ms`) and randomness (`random`, from the caller's seeded RNG) are arguments, so
//! the same call sequence gives the same decisions on every machine.
//!
//! | name | policy | state | decision cost |
//! |---|---|---|---|
//! | `wrr` | smooth weighted round robin (nginx) | current weights | O(n) |
//! | `lc` | least connections, load / weight | — | O(n) |
//! | `ch` | consistent hashing, `vnodes_per_server` × weight points | ring | O(log P) |
//! | `ch-bl` | consistent hashing with bounded loads, factor c | ring | O(log P) + walk |
//! | `lard` | LARD (ASPLOS '98): target → server | target table | O(1) + O(log n); O(n) new/overloaded |
//! | `lard-r` | LARD/R: target → server set, K-ms shrink | target table | O(1) + O(k log n); O(n) same |
//!
//! The target table (LARD, LARD/R) costs two cache misses a decision once it outgrows the caches (the index
//! cell and the entry): `cargo bench -p larder-micro --bench lard` measures every policy at 1k, 100k and 1M
//! targets.
//!
//! # Invariants (tested by the contract suite in `tests/contract.rs` over every policy)
//! - `select` returns a live (non-draining) member, or [`SelectError::NoLiveServer`] when there is none.
//! - A draining member gets no new requests; its load still drops as its requests finish. Removing a member
//!   reassigns only the targets it held (LARD, LARD/R: lazily, at their next `select`; hashing: its points).
//! - Loads return to zero when every `on_start` is matched by an `on_finish`.
//! - LARD/R sets are never empty after `select` and never larger than the live membership.
//! - Bounded-load hashing never places a request on a member above ⌈c · average load⌉ (equal weights).
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`SERVERS_MAX`] | 1024 members | least-loaded scans are O(n); 1024 × ~1 ns fits a µs budget |
//! | [`WEIGHT_MAX`] | 256 | ring points = vnodes × weight |
//! | [`RING_POINTS_MAX`] | 2^20 points (12 MiB) | bounded ring memory and rebuild time |
//! | [`VNODES_PER_SERVER_MAX`] | 1024 | same |
//! | `targets_max` | default 10^6, at most [`TARGETS_MAX_LIMIT`] = 2^24 | 85–128 B a target: ≤ 128 MB at the default |
//! | `target_idle_ms` | default 600 000 | cold targets age out; [`EXPIRE_PER_TOUCH`] = 2 slots checked a select |
//! | [`FALLBACK_WALK_MAX`] | 32 ring points | bounded search for hashing fallbacks |

use std::fmt;
use std::str::FromStr;

mod index;
mod lard;
mod least_connections;
mod members;
mod pool;
mod ring;
mod table;
mod wrr;

pub use ring::{bounded_load_capacity, FALLBACK_WALK_MAX};
pub use table::EXPIRE_PER_TOUCH;

use pool::Pool;

/// A member of the pool a policy distributes over: a shard of a node, or a node of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub u32);

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server-{}", self.0)
    }
}

/// A target (a request path) as a 64-bit hash. See [`TargetId::from_path`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId(pub u64);

impl TargetId {
    /// FNV-1a 64 of the path's bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
    /// Fixed across processes and releases: every node and the control plane compute the same id.
    /// The bytes are hashed exactly as given (no normalisation of case, query or `%`-escapes).
    pub fn from_path(path: &str) -> TargetId {
        const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = OFFSET_BASIS;
        for byte in path.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
        TargetId(hash)
    }
}

/// Number of fallbacks a [`Decision`] carries.
pub const FALLBACKS_MAX: usize = 2;

/// The answer of [`Policy::select`]: the chosen server and, best effort, distinct live alternatives in order,
/// found without extra work: WRR and least-connections give the runners-up of their scan, hashing the next
/// distinct live members on the ring, LARD/R the set's other members, LARD the runners-up of its
/// least-loaded scan when the decision ran one (new or moved target), else none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub server: ServerId,
    pub fallbacks: [Option<ServerId>; FALLBACKS_MAX],
}

/// What [`Policy::members`] reports about one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub server: ServerId,
    pub weight: u32,
    pub draining: bool,
    /// Requests in flight counted by the policy (`on_start` − `on_finish`) plus `external_load`.
    pub load: u32,
    /// Load last reported with [`Policy::set_external_load`].
    pub external_load: u32,
}

/// What [`Policy::targets`] reports about one target of a LARD or LARD/R table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetView {
    pub target: TargetId,
    /// The target's server (LARD) or server set (LARD/R), current members only: empty when they all left
    /// (the target is reassigned at its next `select`).
    pub servers: Vec<ServerId>,
    /// Time of the last change of `servers`.
    pub last_change_ms: u64,
    /// Time of the last `select` of this target.
    pub last_use_ms: u64,
    /// Number of `select` calls for this target since it entered the table.
    pub requests: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("no live server: every member is draining or the membership is empty")]
    NoLiveServer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("{0} is not a member")]
    UnknownServer(ServerId),
    #[error("{0} is already a member")]
    DuplicateServer(ServerId),
    #[error("weight {weight} of {server} is outside 1..={WEIGHT_MAX}")]
    InvalidWeight { server: ServerId, weight: u32 },
    #[error("membership is full: at most {SERVERS_MAX} servers")]
    TooManyServers,
    #[error(
        "the hash ring would exceed {RING_POINTS_MAX} points (vnodes_per_server x weight summed)"
    )]
    RingFull,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {field} = {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("unknown policy {name:?}; valid names: wrr, lc, ch, ch-bl, lard, lard-r")]
    UnknownPolicy { name: String },
}

/// Most members a policy holds (shards of a node or nodes of a cluster).
pub const SERVERS_MAX: usize = 1024;
/// Largest weight of one member.
pub const WEIGHT_MAX: u32 = 256;
/// Most points on a consistent-hash ring (12 bytes each: 12 MiB).
pub const RING_POINTS_MAX: usize = 1 << 20;
/// Largest `vnodes_per_server`.
pub const VNODES_PER_SERVER_MAX: u32 = 1024;
/// Largest `targets_max` a configuration may ask for (85 to 128 bytes a target: at most 2 GiB).
pub const TARGETS_MAX_LIMIT: usize = 1 << 24;

/// One policy instance. Pure: time (`now_ms`) and randomness (`random`) are arguments.
pub trait Policy: Send {
    fn name(&self) -> &'static str;
    /// Choose a server for `target`. `random` is a caller-supplied random u64 (the caller owns the seeded RNG).
    fn select(
        &mut self,
        target: TargetId,
        now_ms: u64,
        random: u64,
    ) -> Result<Decision, SelectError>;
    /// The caller dispatched a request for `target` to `server` (load += 1).
    fn on_start(&mut self, server: ServerId, target: TargetId, now_ms: u64);
    /// A request for `target` on `server` finished (load -= 1, saturating).
    fn on_finish(&mut self, server: ServerId, target: TargetId, now_ms: u64);
    fn add_server(&mut self, server: ServerId, weight: u32) -> Result<(), MembershipError>;
    fn remove_server(&mut self, server: ServerId) -> Result<(), MembershipError>;
    fn set_draining(&mut self, server: ServerId, draining: bool) -> Result<(), MembershipError>;
    fn set_weight(&mut self, server: ServerId, weight: u32) -> Result<(), MembershipError>;
    /// Load reported from elsewhere (e.g. the control plane), added to the policy's own count.
    fn set_external_load(&mut self, server: ServerId, load: u32) -> Result<(), MembershipError>;
    /// Own count + external load, `None` for a non-member.
    fn load(&self, server: ServerId) -> Option<u32>;
    /// Members in ascending id order.
    fn members(&self) -> Vec<MemberView>;
    /// The `limit` hottest targets (most requests first) and their server sets; empty for stateless policies.
    fn targets(&self, limit: usize) -> Vec<TargetView> {
        let _ = limit;
        Vec::new()
    }
    /// Number of targets in the table (LARD, LARD/R); 0 for stateless policies.
    fn targets_len(&self) -> usize {
        0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    Wrr,
    LeastConnections,
    ConsistentHash,
    ConsistentHashBoundedLoad,
    Lard,
    LardR,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::Wrr,
        PolicyKind::LeastConnections,
        PolicyKind::ConsistentHash,
        PolicyKind::ConsistentHashBoundedLoad,
        PolicyKind::Lard,
        PolicyKind::LardR,
    ];

    /// The short name used on command lines: "wrr", "lc", "ch", "ch-bl", "lard", "lard-r".
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Wrr => "wrr",
            PolicyKind::LeastConnections => "lc",
            PolicyKind::ConsistentHash => "ch",
            PolicyKind::ConsistentHashBoundedLoad => "ch-bl",
            PolicyKind::Lard => "lard",
            PolicyKind::LardR => "lard-r",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = ConfigError;
    fn from_str(name: &str) -> Result<PolicyKind, ConfigError> {
        PolicyKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| ConfigError::UnknownPolicy {
                name: name.to_string(),
            })
    }
}

/// LARD thresholds (paper defaults: T_low 25, T_high 65 requests in flight, K 20 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LardParams {
    pub t_low: u32,
    pub t_high: u32,
    pub k_ms: u64,
}

impl Default for LardParams {
    fn default() -> LardParams {
        LardParams {
            t_low: 25,
            t_high: 65,
            k_ms: 20_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    pub kind: PolicyKind,
    pub lard: LardParams,
    /// c of bounded-load hashing: no server above ⌈c·average load⌉; at least 1.
    pub balance_factor: f64,
    pub vnodes_per_server: u32,
    /// Capacity of the LARD / LARD/R target table.
    pub targets_max: usize,
    /// A target not selected for this long is dropped from the table.
    pub target_idle_ms: u64,
}

impl Default for PolicyConfig {
    fn default() -> PolicyConfig {
        PolicyConfig {
            kind: PolicyKind::Lard,
            lard: LardParams::default(),
            balance_factor: 1.25,
            vnodes_per_server: 160,
            targets_max: 1_000_000,
            target_idle_ms: 600_000,
        }
    }
}

impl PolicyConfig {
    pub fn new(kind: PolicyKind) -> PolicyConfig {
        PolicyConfig {
            kind,
            ..PolicyConfig::default()
        }
    }

    /// Check every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(
            field: &'static str,
            value: impl fmt::Display,
            reason: &'static str,
        ) -> ConfigError {
            ConfigError::Invalid {
                field,
                value: value.to_string(),
                reason,
            }
        }
        let lard = &self.lard;
        if lard.t_low == 0 {
            return Err(invalid("lard.t_low", lard.t_low, "must be at least 1"));
        }
        if lard.t_low >= lard.t_high {
            return Err(invalid(
                "lard.t_low",
                lard.t_low,
                "must be below lard.t_high",
            ));
        }
        if lard.t_high > u32::MAX / 2 {
            return Err(invalid(
                "lard.t_high",
                lard.t_high,
                "2 x t_high must fit in u32",
            ));
        }
        if lard.k_ms == 0 {
            return Err(invalid("lard.k_ms", lard.k_ms, "must be at least 1 ms"));
        }
        if !(self.balance_factor.is_finite() && self.balance_factor >= 1.0) {
            return Err(invalid(
                "balance_factor",
                self.balance_factor,
                "must be a finite number >= 1",
            ));
        }
        if self.vnodes_per_server == 0 || self.vnodes_per_server > VNODES_PER_SERVER_MAX {
            return Err(invalid(
                "vnodes_per_server",
                self.vnodes_per_server,
                "must be in 1..=1024",
            ));
        }
        if self.targets_max == 0 || self.targets_max > TARGETS_MAX_LIMIT {
            return Err(invalid(
                "targets_max",
                self.targets_max,
                "must be in 1..=16777216",
            ));
        }
        if self.target_idle_ms == 0 {
            return Err(invalid(
                "target_idle_ms",
                self.target_idle_ms,
                "must be at least 1 ms",
            ));
        }
        Ok(())
    }
}

/// The front-end admission bound of the LARD paper: at most `(n−1)·T_high + T_low − 1` requests outstanding
/// over `servers` back-ends.
pub fn admission_bound(servers: u32, params: &LardParams) -> u32 {
    servers
        .saturating_sub(1)
        .saturating_mul(params.t_high)
        .saturating_add(params.t_low)
        .saturating_sub(1)
}

/// Validate `config` and build its policy with no members.
pub fn build(config: &PolicyConfig) -> Result<Box<dyn Policy>, ConfigError> {
    config.validate()?;
    let policy: Box<dyn Policy> = match config.kind {
        PolicyKind::Wrr => Box::new(Pool::new(wrr::Wrr::default())),
        PolicyKind::LeastConnections => Box::new(Pool::new(least_connections::LeastConnections)),
        PolicyKind::ConsistentHash => {
            Box::new(Pool::new(ring::Ring::new(config.vnodes_per_server, None)))
        }
        PolicyKind::ConsistentHashBoundedLoad => Box::new(Pool::new(ring::Ring::new(
            config.vnodes_per_server,
            Some(config.balance_factor),
        ))),
        PolicyKind::Lard | PolicyKind::LardR => Box::new(Pool::new(lard::Lard::new(
            config.lard,
            config.kind == PolicyKind::LardR,
            config.targets_max,
            config.target_idle_ms,
        ))),
    };
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_id_is_fnv_1a_64() {
        // Reference vectors of the FNV-1a 64 specification.
        assert_eq!(TargetId::from_path(""), TargetId(0xcbf2_9ce4_8422_2325));
        assert_eq!(TargetId::from_path("a"), TargetId(0xaf63_dc4c_8601_ec8c));
        assert_eq!(
            TargetId::from_path("foobar"),
            TargetId(0x8594_4171_f739_67e8)
        );
    }

    #[test]
    fn admission_bound_matches_the_paper() {
        // (n − 1)·T_high + T_low − 1 with T_low 25, T_high 65.
        assert_eq!(admission_bound(8, &LardParams::default()), 7 * 65 + 25 - 1);
        assert_eq!(admission_bound(1, &LardParams::default()), 24);
        assert_eq!(admission_bound(0, &LardParams::default()), 24);
    }

    #[test]
    fn policy_names_parse_and_unknown_names_list_the_valid_ones() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.as_str().parse::<PolicyKind>(), Ok(kind));
        }
        let error = "lrad".parse::<PolicyKind>().expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "unknown policy \"lrad\"; valid names: wrr, lc, ch, ch-bl, lard, lard-r"
        );
    }

    #[test]
    fn validate_names_the_invalid_field() {
        let field_of = |config: PolicyConfig| match config.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        let base = PolicyConfig::default();
        assert_eq!(base.validate(), Ok(()));
        let lard = LardParams {
            t_low: 65,
            ..LardParams::default()
        };
        assert_eq!(
            field_of(PolicyConfig {
                lard,
                ..base.clone()
            }),
            "lard.t_low"
        );
        let lard = LardParams {
            k_ms: 0,
            ..LardParams::default()
        };
        assert_eq!(
            field_of(PolicyConfig {
                lard,
                ..base.clone()
            }),
            "lard.k_ms"
        );
        assert_eq!(
            field_of(PolicyConfig {
                balance_factor: 0.99,
                ..base.clone()
            }),
            "balance_factor"
        );
        assert_eq!(
            field_of(PolicyConfig {
                balance_factor: f64::NAN,
                ..base.clone()
            }),
            "balance_factor"
        );
        assert_eq!(
            field_of(PolicyConfig {
                vnodes_per_server: 0,
                ..base.clone()
            }),
            "vnodes_per_server"
        );
        assert_eq!(
            field_of(PolicyConfig {
                targets_max: 0,
                ..base.clone()
            }),
            "targets_max"
        );
        assert_eq!(
            field_of(PolicyConfig {
                target_idle_ms: 0,
                ..base.clone()
            }),
            "target_idle_ms"
        );
        assert!(build(&PolicyConfig {
            targets_max: 0,
            ..base
        })
        .is_err());
    }
}
