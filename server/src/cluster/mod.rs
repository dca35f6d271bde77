//! Distributed mode (`larder serve --cluster`): every node accepts, and a request whose target another node
//! owns is forwarded there over a persistent node-to-node connection ([`forward`]).
//!
//! # What this module owns
//! - [`Cluster`]: the node's cluster state shared by all its shards (`Send + Sync`): its node id (the HTTP
//!   address the control plane knows it by), the [`Directory`] and the per-shard forwarding counters.
//! - [`Directory`]: target path → the node(s) the control plane assigned it to, with an expiry. The control
//!   plane decides (it holds the policy state: Aron et al., USENIX '00); the directory is a cache of its
//!   answers, so the control plane is off the per-request path. Paths the directory cannot answer are queued
//!   as "wanted"; a feeder thread (the `larder` binary's `cluster_link`) takes them in batches
//!   ([`Directory::take_wanted`]), asks the control plane and stores the answers ([`Directory::apply`]).
//!
//! # Routing one request ([`Directory::route`])
//! 1. A fresh entry (now < expiry): if this node is in the target's server set → [`Route::Local`]; else the
//!    first node of the set that is not suspect → [`Route::Forward`]; all suspect → [`Route::Local`].
//! 2. An expired entry: the path is queued as wanted (at most once per [`ASK_AGAIN_MS`]) and the stale
//!    assignment keeps routing for [`STALE_GRACE_MS`] past its expiry (a refresh normally lands within a few
//!    milliseconds; serving every expired target locally meanwhile would scatter it over the cluster's caches).
//!    After the grace: [`Route::Unknown`].
//! 3. No entry: a placeholder is stored (so the path is asked for once, not once per request), the path is
//!    queued as wanted and the answer is [`Route::Unknown`]. The caller serves Unknown locally.
//!
//! # Invariants
//! - A path is in the wanted queue at most once (a set beside each queue); a full queue drops the path and
//!   counts it (`wanted_dropped`): it is asked for again on a later request.
//! - The table never holds more than `entries_max` entries: a full lock shard first evicts 1/16 of its entries,
//!   those with the earliest expiry (placeholders and long-expired entries go first).
//! - A suspect peer ([`Directory::peer_failed`]) gets no forwarded request for [`SUSPECT_MS`]; its targets are
//!   served locally meanwhile, and the control plane moves them once it sees the node down.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`ENTRIES_MAX`] | 100,000 targets per node | ~150 B each: ~15 MB; a working set of 10,000 files fits 10× |
//! | [`LOCK_SHARDS`] | 16 mutexes | two cores contend on one in 16 routes at worst |
//! | [`WANTED_MAX`] | 4,096 paths queued (256 per lock shard) | 16 batches of 256; a feeder down for long drops, not grows |
//! | [`PEERS_PER_TARGET_MAX`] | 4 nodes per target | LARD/R server sets are small; more are ignored |
//! | [`SUSPECTS_MAX`] | 256 suspect peers | a cluster of that size; the oldest suspicion is replaced |
//! | [`SUSPECT_MS`] | 2 s | a few control-plane report intervals: long enough for it to mark the node down |
//! | [`STALE_GRACE_MS`] | 10 s | a control plane that stops answering leaves the routes as they were (fail static) |
//! | [`ASK_AGAIN_MS`] | 500 ms | one refresh round trip is ~1 ms; asking again later covers a lost batch |

pub mod forward;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(crate) use forward::Forwarder;
pub use forward::{ForwardConfig, ForwardCounters, FORWARDED_HEADER, NODE_HEADER};

/// Targets the directory holds at most.
pub const ENTRIES_MAX: usize = 100_000;
/// Mutexes the directory is split into (by a hash of the path).
pub const LOCK_SHARDS: usize = 16;
/// Paths queued for the control plane at most (split evenly over the lock shards).
pub const WANTED_MAX: usize = 4_096;
/// Nodes kept per target (the first ones of the control plane's answer).
pub const PEERS_PER_TARGET_MAX: usize = 4;
/// Peers suspected at once at most.
pub const SUSPECTS_MAX: usize = 256;
/// How long a peer that failed is passed over.
pub const SUSPECT_MS: u64 = 2_000;
/// How long past its expiry an assignment still routes while its refresh is awaited.
pub const STALE_GRACE_MS: u64 = 10_000;
/// A path asked for is not asked for again before this.
pub const ASK_AGAIN_MS: u64 = 500;

/// Where one request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Serve it here (this node is in the target's server set, or every node of the set is suspect).
    Local,
    /// Forward it to this node.
    Forward(SocketAddr),
    /// No usable assignment yet (the path is queued as wanted): the caller serves it here.
    Unknown,
}

/// The directory's settings; [`DirectoryConfig::default`] uses the module's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryConfig {
    pub entries_max: usize,
    pub lock_shards: usize,
    pub wanted_max: usize,
    pub suspect_ms: u64,
    pub stale_grace_ms: u64,
    pub ask_again_ms: u64,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            entries_max: ENTRIES_MAX,
            lock_shards: LOCK_SHARDS,
            wanted_max: WANTED_MAX,
            suspect_ms: SUSPECT_MS,
            stale_grace_ms: STALE_GRACE_MS,
            ask_again_ms: ASK_AGAIN_MS,
        }
    }
}

/// One target's assignment (or a placeholder: no peers, expiry 0).
#[derive(Clone, Debug)]
struct Entry {
    /// The server set in the control plane's order, without this node, at most [`PEERS_PER_TARGET_MAX`].
    peers: Vec<SocketAddr>,
    /// This node is in the server set.
    local: bool,
    expires_ms: u64,
    /// When the path was last queued as wanted (`None` since the last answer).
    asked_ms: Option<u64>,
}

#[derive(Default)]
struct LockShard {
    entries: HashMap<String, Entry>,
    wanted: VecDeque<String>,
    queued: HashSet<String>,
}

/// Counters of the directory (monotonic).
#[derive(Debug, Default)]
struct DirectoryCounters {
    wanted_dropped: AtomicU64,
    evictions: AtomicU64,
    assignments_applied: AtomicU64,
}

/// The directory's counters and size now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectorySnapshot {
    pub entries: u64,
    pub wanted_queued: u64,
    pub wanted_dropped: u64,
    pub evictions: u64,
    pub assignments_applied: u64,
}

/// Target → assigned node(s), shared by the shards of a node (module docs).
pub struct Directory {
    node_id: SocketAddr,
    config: DirectoryConfig,
    shards: Vec<Mutex<LockShard>>,
    entries_per_shard_max: usize,
    wanted_per_shard_max: usize,
    /// (peer, suspect until) — small; `suspect_count` lets routes skip the lock when it is empty.
    suspects: Mutex<Vec<(SocketAddr, u64)>>,
    suspect_count: AtomicUsize,
    /// Where the next `take_wanted` starts (fairness across lock shards).
    take_cursor: AtomicUsize,
    counters: DirectoryCounters,
}

/// FNV-1a of the path: picks the lock shard (the same hash `larder_lard::TargetId` uses).
fn path_hash(path: &str) -> u64 {
    larder_lard::TargetId::from_path(path).0
}

impl Directory {
    /// A directory for the node whose HTTP address (= node id at the control plane) is `node_id`.
    pub fn new(node_id: SocketAddr, config: DirectoryConfig) -> Directory {
        let lock_shards = config.lock_shards.max(1);
        Directory {
            node_id,
            entries_per_shard_max: config.entries_max.div_ceil(lock_shards).max(1),
            wanted_per_shard_max: config.wanted_max.div_ceil(lock_shards).max(1),
            shards: (0..lock_shards)
                .map(|_| Mutex::new(LockShard::default()))
                .collect(),
            suspects: Mutex::new(Vec::new()),
            suspect_count: AtomicUsize::new(0),
            take_cursor: AtomicUsize::new(0),
            counters: DirectoryCounters::default(),
            config,
        }
    }

    pub fn node_id(&self) -> SocketAddr {
        self.node_id
    }

    fn shard(&self, path: &str) -> std::sync::MutexGuard<'_, LockShard> {
        let index = (path_hash(path) % self.shards.len() as u64) as usize;
        lock(&self.shards[index])
    }

    /// Routing steps 1-3 (module docs).
    pub fn route(&self, path: &str, now_ms: u64) -> Route {
        let mut shard = self.shard(path);
        let wanted_max = self.wanted_per_shard_max;
        let Some(entry) = shard.entries.get_mut(path) else {
            // Step 3: a placeholder, so that the path is asked for once.
            let queued = push_wanted(&mut shard, path, wanted_max, &self.counters);
            let placeholder = Entry {
                peers: Vec::new(),
                local: false,
                expires_ms: 0,
                asked_ms: queued.then_some(now_ms),
            };
            self.insert(&mut shard, path.to_string(), placeholder);
            return Route::Unknown;
        };
        let fresh = now_ms < entry.expires_ms;
        if !fresh {
            // Step 2.
            let ask = entry
                .asked_ms
                .is_none_or(|asked| now_ms.saturating_sub(asked) >= self.config.ask_again_ms);
            if ask {
                let queued = push_wanted(&mut shard, path, wanted_max, &self.counters);
                if queued {
                    if let Some(entry) = shard.entries.get_mut(path) {
                        entry.asked_ms = Some(now_ms);
                    }
                }
            }
        }
        let Some(entry) = shard.entries.get(path) else {
            return Route::Unknown;
        };
        let usable = fresh || now_ms < entry.expires_ms.saturating_add(self.config.stale_grace_ms);
        if !usable || (!entry.local && entry.peers.is_empty()) {
            return if fresh { Route::Local } else { Route::Unknown };
        }
        if entry.local {
            return Route::Local;
        }
        let peers = entry.peers.clone();
        drop(shard);
        peers
            .into_iter()
            .find(|peer| !self.is_suspect(*peer, now_ms))
            .map_or(Route::Local, Route::Forward)
    }

    /// Up to `n` wanted paths, oldest first within each lock shard, fairly across lock shards.
    pub fn take_wanted(&self, n: usize) -> Vec<String> {
        let mut taken = Vec::with_capacity(n.min(self.config.wanted_max));
        let shards = self.shards.len();
        let start = self.take_cursor.fetch_add(1, Ordering::Relaxed) % shards;
        let quota = n.div_ceil(shards).max(1);
        // First pass: an equal quota from each; second pass: fill from whoever has more.
        for pass_quota in [quota, n] {
            for offset in 0..shards {
                if taken.len() >= n {
                    return taken;
                }
                let mut shard = lock(&self.shards[(start + offset) % shards]);
                let take = pass_quota.min(n - taken.len()).min(shard.wanted.len());
                for _ in 0..take {
                    if let Some(path) = shard.wanted.pop_front() {
                        shard.queued.remove(&path);
                        taken.push(path);
                    }
                }
            }
        }
        taken
    }

    /// Stores the control plane's answers: each target's server set (node ids = HTTP addresses, first =
    /// preferred), valid for `ttl_ms` from `now_ms`. Ids that are not socket addresses are skipped.
    pub fn apply(&self, assignments: Vec<(String, Vec<String>)>, ttl_ms: u64, now_ms: u64) {
        for (target, node_ids) in assignments {
            let mut local = false;
            let mut peers = Vec::with_capacity(node_ids.len().min(PEERS_PER_TARGET_MAX));
            for id in node_ids.iter().take(PEERS_PER_TARGET_MAX) {
                match id.parse::<SocketAddr>() {
                    Ok(addr) if addr == self.node_id => local = true,
                    Ok(addr) => peers.push(addr),
                    Err(_) => {
                        tracing::debug!(%id, "assignment names a node id that is not IP:PORT")
                    }
                }
            }
            let entry = Entry {
                peers,
                local,
                expires_ms: now_ms.saturating_add(ttl_ms),
                asked_ms: None,
            };
            let mut shard = self.shard(&target);
            if let Some(existing) = shard.entries.get_mut(&target) {
                *existing = entry;
            } else {
                self.insert(&mut shard, target, entry);
            }
            self.counters
                .assignments_applied
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks `peer` suspect for `suspect_ms`: routes pass over it meanwhile.
    pub fn peer_failed(&self, peer: SocketAddr, now_ms: u64) {
        let until_ms = now_ms.saturating_add(self.config.suspect_ms);
        let mut suspects = lock(&self.suspects);
        suspects.retain(|&(_, until)| until > now_ms);
        if let Some(slot) = suspects.iter_mut().find(|(addr, _)| *addr == peer) {
            slot.1 = until_ms;
        } else if suspects.len() < SUSPECTS_MAX {
            suspects.push((peer, until_ms));
        } else if let Some(oldest) = suspects.iter_mut().min_by_key(|(_, until)| *until) {
            *oldest = (peer, until_ms);
        }
        self.suspect_count.store(suspects.len(), Ordering::Relaxed);
    }

    /// Whether `peer` is suspect at `now_ms`.
    pub fn is_suspect(&self, peer: SocketAddr, now_ms: u64) -> bool {
        if self.suspect_count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        lock(&self.suspects)
            .iter()
            .any(|&(addr, until)| addr == peer && until > now_ms)
    }

    /// Size and counters now.
    pub fn snapshot(&self) -> DirectorySnapshot {
        let (mut entries, mut wanted) = (0, 0);
        for shard in &self.shards {
            let shard = lock(shard);
            entries += shard.entries.len() as u64;
            wanted += shard.wanted.len() as u64;
        }
        DirectorySnapshot {
            entries,
            wanted_queued: wanted,
            wanted_dropped: self.counters.wanted_dropped.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            assignments_applied: self.counters.assignments_applied.load(Ordering::Relaxed),
        }
    }

    /// Inserts a new entry, evicting first when the lock shard is full (invariant 2).
    fn insert(&self, shard: &mut LockShard, path: String, entry: Entry) {
        if shard.entries.len() >= self.entries_per_shard_max {
            let evicted = evict(&mut shard.entries, self.entries_per_shard_max);
            self.counters
                .evictions
                .fetch_add(evicted as u64, Ordering::Relaxed);
        }
        shard.entries.insert(path, entry);
        assert!(
            shard.entries.len() <= self.entries_per_shard_max,
            "directory lock shard holds {} entries, limit {}",
            shard.entries.len(),
            self.entries_per_shard_max
        );
    }
}

/// Locks a mutex; a poisoned one (a panicked holder: a bug) still holds consistent data for this cache.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Queues `path` as wanted unless it is queued already or the queue is full (then counts a drop).
fn push_wanted(
    shard: &mut LockShard,
    path: &str,
    wanted_max: usize,
    counters: &DirectoryCounters,
) -> bool {
    if shard.queued.contains(path) {
        return true;
    }
    if shard.wanted.len() >= wanted_max {
        counters.wanted_dropped.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    shard.wanted.push_back(path.to_string());
    shard.queued.insert(path.to_string());
    true
}

/// Evicts 1/16 of `capacity` (at least one entry): those with the earliest expiry. Returns how many.
fn evict(entries: &mut HashMap<String, Entry>, capacity: usize) -> usize {
    let count = (capacity / 16).max(1).min(entries.len());
    if count == 0 {
        return 0;
    }
    let mut expiries: Vec<u64> = entries.values().map(|entry| entry.expires_ms).collect();
    let (_, &mut threshold, _) = expiries.select_nth_unstable(count - 1);
    let below = expiries.iter().filter(|&&e| e < threshold).count();
    let mut at_threshold = count - below;
    entries.retain(|_, entry| {
        if entry.expires_ms < threshold {
            return false;
        }
        if entry.expires_ms == threshold && at_threshold > 0 {
            at_threshold -= 1;
            return false;
        }
        true
    });
    count
}

/// A shard's forwarder and its extra response field line(s): `shard_field` plus `X-Larder-Node` in cluster mode.
pub(crate) fn shard_parts(
    cluster: Option<&Arc<Cluster>>,
    shard: u32,
    mut shard_field: Vec<u8>,
) -> (Option<Forwarder>, Vec<u8>) {
    let Some(cluster) = cluster else {
        return (None, shard_field);
    };
    shard_field.extend_from_slice(cluster.node_field());
    let forwarder = Forwarder::new(Arc::clone(cluster), shard as usize);
    (Some(forwarder), shard_field)
}

/// A node's cluster state, shared by its shards (module docs).
pub struct Cluster {
    directory: Directory,
    forward: ForwardConfig,
    /// One per shard.
    counters: Vec<ForwardCounters>,
    /// `X-Larder-Node: <node id>\r\n`, added to every response this node serves.
    node_field: Vec<u8>,
    origin: Instant,
}

/// Forwarding counters summed over the shards, and the directory's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Requests forwarded to a peer whose response reached the client.
    pub forwards: u64,
    /// Exchanges with a peer that failed (connect, timeout, closed; also after part of a response).
    pub forward_failures: u64,
    /// Requests served here after their peer failed before any byte reached the client.
    pub fallbacks: u64,
    /// Requests that arrived forwarded (`X-Larder-Forwarded`) and were served here.
    pub forwarded_in: u64,
    /// Malformed or oversized peer responses answered 502.
    pub bad_gateway: u64,
    /// Pooled connections found closed and replaced by a fresh one (not peer failures).
    pub stale_reconnects: u64,
    pub directory: DirectorySnapshot,
}

impl Cluster {
    /// Cluster state for a node with `shards` shards whose HTTP address is `node_id`.
    pub fn new(
        node_id: SocketAddr,
        shards: usize,
        directory: DirectoryConfig,
        forward: ForwardConfig,
    ) -> Cluster {
        Cluster {
            directory: Directory::new(node_id, directory),
            forward,
            counters: (0..shards).map(|_| ForwardCounters::default()).collect(),
            node_field: format!("{NODE_HEADER}: {node_id}\r\n").into_bytes(),
            origin: Instant::now(),
        }
    }

    /// The state of a node serving with `config`, if `config.cluster` (forwarding writes to clients with the
    /// node's `write_timeout_ms`).
    pub fn for_node(
        node_id: SocketAddr,
        shards: usize,
        config: &crate::ServeConfig,
    ) -> Option<Arc<Cluster>> {
        let forward = ForwardConfig {
            client_write_timeout_ms: config.write_timeout_ms,
            peer_requests_max: config.keepalive_requests_max,
            ..ForwardConfig::default()
        };
        let cluster = Cluster::new(node_id, shards, DirectoryConfig::default(), forward);
        config.cluster.then(|| Arc::new(cluster))
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn node_id(&self) -> SocketAddr {
        self.directory.node_id
    }

    /// Milliseconds since this state was made: the clock of [`Directory::route`] and [`Directory::apply`].
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The `X-Larder-Node` field line.
    pub fn node_field(&self) -> &[u8] {
        &self.node_field
    }

    pub(crate) fn shard_counters(&self, shard: usize) -> &ForwardCounters {
        &self.counters[shard]
    }

    /// Counters summed over the shards.
    pub fn stats(&self) -> ClusterStats {
        let mut stats = ClusterStats {
            directory: self.directory.snapshot(),
            ..ClusterStats::default()
        };
        for counters in &self.counters {
            let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
            stats.forwards += load(&counters.forwards);
            stats.forward_failures += load(&counters.forward_failures);
            stats.fallbacks += load(&counters.fallbacks);
            stats.forwarded_in += load(&counters.forwarded_in);
            stats.bad_gateway += load(&counters.bad_gateway);
            stats.stale_reconnects += load(&counters.stale_reconnects);
        }
        stats
    }
}

#[cfg(test)]
mod tests;
