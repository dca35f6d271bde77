//! The per-shard object cache: IO-Lite's single copy, GreedyDual-Size replacement under a byte budget.
//!
//! Owns: for one shard, the cached files (path → [`CachedObject`]), their replacement order and the counters.
//! One [`ShardCache`] per shard, used from that shard's thread only: no locks, no atomics of its own.
//!
//! Model:
//! - A cached file is one immutable `Bytes` buffer plus its metadata, shared by `Arc`. A response sends the header
//!   and `object.body.slice(range)`: the body is never copied in user space and serving it allocates nothing
//!   (`server/tests/zero_copy.rs` and `node_zero_copy.rs` count: < 4 KiB per response for a 1 MiB object). Bodies
//!   under `SPLICE_BYTES_MIN` (64 KiB) go out with the header in one vectored write; larger ones live in their own
//!   read-only anonymous mapping ([`read`]'s `Mapping`) and go out with `vmsplice` + `splice`, so the kernel does
//!   not copy them into the socket either ([`MappedSlice`], `node::splice`).
//!   `Arc` rather than `Rc` so another shard may borrow an object (cross-shard fetch) without copying it.
//! - A miss reads the file once into the buffer that becomes the `Bytes` (`O_DIRECT`, or a buffered read followed
//!   by `posix_fadvise(DONTNEED)`; see [`read`]), so the cache holds the only copy in memory. The read is
//!   synchronous: a miss blocks the shard for one file read.
//! - Replacement is GreedyDual-Size ([`gds`]): `H = L + cost/size`, evict min-`H`, `L` = evicted `H`; the cost
//!   model defaults to `cost = 1` (maximises the request hit ratio).
//! - Revalidation: an entry validated more than `revalidate_interval_ms` ago is re-`stat`ed; a different device,
//!   inode, size or mtime reloads it, a missing file removes it (`NotFound`). So a changed file is served stale
//!   for less than `revalidate_interval_ms` (default 1000 ms) after the change, never longer.
//!
//! Invariants: charged bytes ≤ `bytes_budget` and entries ≤ `entries_max` after every call; every cached body is at
//! most `object_bytes_max` bytes. An entry is charged `body length + path length + ENTRY_OVERHEAD_BYTES` (512) so
//! that the budget bounds metadata too. Objects still referenced by in-flight responses after eviction or reload
//! live on until those responses finish; they are no longer charged (memory can briefly exceed the budget by the
//! bodies of responses in flight).
//!
//! Cost: a hit is one hash probe of the path plus an `Arc` clone (`cargo bench -p larder-micro --bench cache`:
//! `ShardCache::lookup` within 5% of a plain `HashMap` get with 10k objects); a miss is one synchronous file read
//! (measured costs and the single-copy vs page-cache trade-off in [`read`]).
//!
//! Limits (defaults): `bytes_budget` given by the caller (`--cache-mb`); `object_bytes_max` = min(budget/8, 16 MiB);
//! `entries_max` = 1,048,576; `revalidate_interval_ms` = 1000; `stream_chunk_bytes` = 256 KiB; `O_DIRECT` from
//! 64 KiB up.

pub mod gds;
pub mod object;
pub mod read;

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

pub use gds::{CostModel, GdsMap, Priority};
pub use object::{CachedObject, FileMeta, MappedSlice};
pub use read::{
    FileStream, LargeFile, Loaded, ReadMode, ReadPath, SPLICE_BYTES_MIN, STREAM_CHUNK_BYTES_DEFAULT,
};

/// Bytes charged per entry on top of its body and path: the metadata memory of one entry, from the type sizes
/// (`size_of`, x86-64): hash-table slot 112 B at load ≤ 7/8 and power-of-two growth (130–260 B), queue entry 48 B in
/// half-to-full B-tree nodes (~70 B), the `Arc`'d `CachedObject` 160 B, ETag and Last-Modified strings 2 × 32 B,
/// the `Bytes` owner header ~32 B, the path's `Arc` header 16 B: about 500 B.
pub const ENTRY_OVERHEAD_BYTES: u64 = 512;

/// Largest default `object_bytes_max`: 16 MiB (larger files stream).
pub const OBJECT_BYTES_MAX_DEFAULT_CAP: u64 = 16 * 1024 * 1024;

/// Default `revalidate_interval_ms`.
pub const REVALIDATE_INTERVAL_MS_DEFAULT: u64 = 1000;

/// Reads of one miss before giving up on a file whose length keeps differing from its `fstat` size.
pub const LOAD_ATTEMPTS_MAX: u32 = 2;

/// Default `entries_max`.
pub const ENTRIES_MAX_DEFAULT: usize = 1 << 20;

/// Settings of one shard's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes this shard's cache may hold (bodies + per-entry charge).
    pub bytes_budget: u64,
    /// Files larger than this are streamed, not cached. At most `bytes_budget - ENTRY_OVERHEAD_BYTES`.
    pub object_bytes_max: u64,
    /// An entry older than this is re-`stat`ed before it is served.
    pub revalidate_interval_ms: u64,
    /// Most entries held (bounds the hash table; memory is bounded by `bytes_budget`).
    pub entries_max: usize,
    /// The `cost` of GreedyDual-Size.
    pub cost_model: CostModel,
    /// How misses read files.
    pub read_mode: ReadMode,
    /// Chunk size for streamed (too large) files.
    pub stream_chunk_bytes: usize,
}

impl CacheConfig {
    /// Defaults for a budget: `object_bytes_max` = min(budget/8, 16 MiB), 1 s revalidation, 2^20 entries, cost 1,
    /// `O_DIRECT` or drop-cache reads, 256 KiB stream chunks.
    pub fn with_budget(bytes_budget: u64) -> CacheConfig {
        CacheConfig {
            bytes_budget,
            object_bytes_max: (bytes_budget / 8).min(OBJECT_BYTES_MAX_DEFAULT_CAP),
            revalidate_interval_ms: REVALIDATE_INTERVAL_MS_DEFAULT,
            entries_max: ENTRIES_MAX_DEFAULT,
            cost_model: CostModel::Uniform,
            read_mode: ReadMode::default(),
            stream_chunk_bytes: STREAM_CHUNK_BYTES_DEFAULT,
        }
    }

    /// Checks the settings against each other; the error names the setting.
    pub fn validate(&self) -> Result<(), CacheConfigError> {
        if self.object_bytes_max.saturating_add(ENTRY_OVERHEAD_BYTES) > self.bytes_budget {
            return Err(CacheConfigError::ObjectLargerThanBudget {
                object_bytes_max: self.object_bytes_max,
                bytes_budget: self.bytes_budget,
            });
        }
        if self.entries_max == 0 {
            return Err(CacheConfigError::NoEntries);
        }
        if self.stream_chunk_bytes == 0 {
            return Err(CacheConfigError::NoStreamChunk);
        }
        if let CostModel::DiskTime {
            bytes_per_us: 0, ..
        } = self.cost_model
        {
            return Err(CacheConfigError::ZeroBandwidth);
        }
        Ok(())
    }
}

/// A [`CacheConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheConfigError {
    /// `object_bytes_max` + 512 bytes of entry overhead must fit in `bytes_budget`.
    #[error("cache object_bytes_max ({object_bytes_max}) plus {ENTRY_OVERHEAD_BYTES} bytes must not exceed bytes_budget ({bytes_budget})")]
    ObjectLargerThanBudget {
        /// Configured threshold.
        object_bytes_max: u64,
        /// Configured budget.
        bytes_budget: u64,
    },
    /// `entries_max` is 0.
    #[error("cache entries_max must be at least 1")]
    NoEntries,
    /// `stream_chunk_bytes` is 0.
    #[error("cache stream_chunk_bytes must be at least 1")]
    NoStreamChunk,
    /// `CostModel::DiskTime` with `bytes_per_us` 0.
    #[error("cache cost model bytes_per_us must be at least 1")]
    ZeroBandwidth,
}

/// Why a file could not be served; the connection layer maps these to 404, 403, (301 or index) and 500.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No such file (also: a path component is not a directory).
    #[error("file not found")]
    NotFound,
    /// The server may not read it.
    #[error("permission denied")]
    PermissionDenied,
    /// The path names a directory.
    #[error("is a directory")]
    IsDirectory,
    /// Any other I/O failure.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for CacheError {
    fn from(error: io::Error) -> CacheError {
        match error.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => CacheError::NotFound,
            io::ErrorKind::PermissionDenied => CacheError::PermissionDenied,
            io::ErrorKind::IsADirectory => CacheError::IsDirectory,
            _ => CacheError::Io(error),
        }
    }
}

/// Answer of [`ShardCache::lookup`]: a probe that never touches the file system.
#[derive(Debug)]
pub enum Lookup {
    /// Cached and validated less than `revalidate_interval_ms` ago: serve it.
    Hit(Arc<CachedObject>),
    /// Not cached.
    Miss,
    /// Cached but due for revalidation: call [`ShardCache::get_or_load`].
    Stale,
}

/// Answer of [`ShardCache::get_or_load`].
#[derive(Debug)]
pub enum Fetched {
    /// The file, from the cache (possibly just loaded).
    Cached(Arc<CachedObject>),
    /// Larger than `object_bytes_max`: stream it from the open file.
    TooLarge(LargeFile),
}

/// Counters of one shard's cache (monotonic except `bytes_cached` and `objects`, which are current values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Requests answered from the cache (fresh, or unchanged after revalidation).
    pub hits: u64,
    /// Loads of files that were not cached.
    pub misses: u64,
    /// Entries evicted by GreedyDual-Size to make room.
    pub evictions: u64,
    /// Bytes charged now (bodies + per-entry charge).
    pub bytes_cached: u64,
    /// Entries held now.
    pub objects: u64,
    /// Re-`stat`s of stale entries.
    pub revalidations: u64,
    /// Reloads of entries whose file had changed.
    pub stale_reloads: u64,
    /// Requests for files above `object_bytes_max` (streamed).
    pub too_large: u64,
    /// Loads that used `O_DIRECT`.
    pub direct_reads: u64,
    /// Loads that used a buffered read.
    pub buffered_reads: u64,
}

struct Entry {
    object: Arc<CachedObject>,
    validated_ms: u64,
}

/// One shard's cache. See the module docs for the model and its limits.
pub struct ShardCache {
    config: CacheConfig,
    entries: GdsMap<Arc<Path>, Entry>,
    counters: CacheCounters,
}

impl ShardCache {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Result<ShardCache, CacheConfigError> {
        config.validate()?;
        Ok(ShardCache {
            config,
            entries: GdsMap::new(config.bytes_budget, config.entries_max),
            counters: CacheCounters::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Counters, with the current `bytes_cached` and `objects`.
    pub fn counters(&self) -> CacheCounters {
        CacheCounters {
            bytes_cached: self.entries.bytes_used(),
            objects: self.entries.len() as u64,
            ..self.counters
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when `path` is cached (fresh or stale); counts nothing and changes no priority.
    pub fn contains(&self, path: &Path) -> bool {
        self.entries.peek(path).is_some()
    }

    /// What `charge` an entry of this path and body length costs against the budget.
    pub fn charged_bytes(path: &Path, body_bytes: u64) -> u64 {
        body_bytes + path.as_os_str().len() as u64 + ENTRY_OVERHEAD_BYTES
    }

    /// Probes without touching the file system (one hash probe). A `Hit` counts as a hit; `Miss` and `Stale`
    /// count nothing (the following [`ShardCache::get_or_load`] does). `Hit` and `Stale` both refresh the entry's
    /// priority: the object was asked for either way.
    pub fn lookup(&mut self, path: &Path, now_ms: u64) -> Lookup {
        let interval_ms = self.config.revalidate_interval_ms;
        let Some(entry) = self.entries.touch(path) else {
            return Lookup::Miss;
        };
        if now_ms.saturating_sub(entry.validated_ms) >= interval_ms {
            return Lookup::Stale;
        }
        self.counters.hits += 1;
        Lookup::Hit(Arc::clone(&entry.object))
    }

    /// The file at `path`: from the cache when fresh; revalidated when stale (`stat`; reloaded if changed, removed
    /// and `NotFound` if gone); otherwise opened, and loaded (one read) or returned for streaming when larger than
    /// `object_bytes_max`. Blocks the shard for the `stat`/read on those paths.
    pub fn get_or_load(&mut self, path: &Path, now_ms: u64) -> Result<Fetched, CacheError> {
        self.get_or_load_with(path, now_ms, |path| Ok(std::fs::File::open(path)?))
    }

    /// [`ShardCache::get_or_load`] where `open` opens the file whenever it must be (re)loaded; a server passes one
    /// that confines the open to its ROOT, so the file checked is the file read. A stale entry whose `stat` is
    /// unchanged is the same file it loaded before and is served without calling `open`.
    pub fn get_or_load_with(
        &mut self,
        path: &Path,
        now_ms: u64,
        open: impl FnOnce(&Path) -> Result<std::fs::File, CacheError>,
    ) -> Result<Fetched, CacheError> {
        match self.lookup(path, now_ms) {
            Lookup::Hit(object) => return Ok(Fetched::Cached(object)),
            Lookup::Miss => self.counters.misses += 1,
            Lookup::Stale => {
                self.counters.revalidations += 1;
                let unchanged = match std::fs::metadata(path) {
                    Ok(stat) => {
                        let entry = self.entries.peek(path).expect("stale entry is held");
                        !stat.is_dir() && entry.object.meta.is_same_version(&stat)
                    }
                    Err(error) => {
                        self.entries.remove(path);
                        return Err(error.into());
                    }
                };
                if unchanged {
                    let entry = self.entries.touch(path).expect("stale entry is held");
                    entry.validated_ms = now_ms;
                    self.counters.hits += 1;
                    return Ok(Fetched::Cached(Arc::clone(&entry.object)));
                }
                self.entries.remove(path);
                self.counters.stale_reloads += 1;
            }
        }
        let file = open(path)?;
        self.load(path, file, now_ms)
    }

    /// Drops `path` from the cache (e.g. on an operator's purge); true if it was held.
    pub fn invalidate(&mut self, path: &Path) -> bool {
        self.entries.remove(path).is_some()
    }

    fn load(
        &mut self,
        path: &Path,
        file: std::fs::File,
        now_ms: u64,
    ) -> Result<Fetched, CacheError> {
        let mut attempt = 1;
        let (meta, loaded) = loop {
            let stat = file.metadata()?;
            if stat.is_dir() {
                return Err(CacheError::IsDirectory);
            }
            let meta = FileMeta::from_metadata(path, &stat);
            if meta.size_bytes > self.config.object_bytes_max {
                self.counters.too_large += 1;
                return Ok(Fetched::TooLarge(LargeFile { meta, file }));
            }
            let loaded = read::read_whole(&file, meta.size_bytes, self.config.read_mode)?;
            match loaded.path {
                ReadPath::Direct => self.counters.direct_reads += 1,
                ReadPath::Buffered => self.counters.buffered_reads += 1,
            }
            // A body shorter than its stat size would contradict the Content-Length and ETag built from `meta`:
            // the file shrank while being read (or is a sysfs-like file whose size is not its length).
            if loaded.body.len() as u64 == meta.size_bytes {
                break (meta, loaded);
            }
            if attempt == LOAD_ATTEMPTS_MAX {
                return Err(CacheError::Io(io::Error::other(format!(
                    "file length changed while reading: stat said {} bytes, read {}",
                    meta.size_bytes,
                    loaded.body.len()
                ))));
            }
            attempt += 1;
        };
        let charged_bytes = Self::charged_bytes(path, loaded.body.len() as u64);
        let increment = self.config.cost_model.priority_increment(charged_bytes);
        let object = Arc::new(CachedObject {
            body: loaded.body,
            body_mapped: loaded.mapped,
            meta,
        });
        let entry = Entry {
            object: Arc::clone(&object),
            validated_ms: now_ms,
        };
        let evictions = &mut self.counters.evictions;
        let inserted =
            self.entries
                .insert(Arc::from(path), entry, charged_bytes, increment, |_, _| {
                    *evictions += 1
                });
        if inserted.is_err() {
            // Only a path longer than the budget's headroom gets here; serve the object uncached.
            tracing::debug!(path = %path.display(), charged_bytes, "object not cached: larger than the budget");
        }
        Ok(Fetched::Cached(object))
    }
}

/// The body of a response, as the connection layer sends it.
#[derive(Debug)]
pub enum ResponseBody {
    /// A slice of a cached object's buffer (shares it; sent with a vectored write after the header).
    Cached(Bytes),
    /// A file range read in chunks (see [`FileStream`]).
    Stream(FileStream),
    /// No body (HEAD, 304, errors without text).
    Empty,
}

impl ResponseBody {
    /// Body bytes still to send (the Content-Length for a fresh body).
    pub fn len_bytes(&self) -> u64 {
        match self {
            ResponseBody::Cached(bytes) => bytes.len() as u64,
            ResponseBody::Stream(stream) => stream.remaining_bytes(),
            ResponseBody::Empty => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_typed_errors() {
        let cases = [
            (io::ErrorKind::NotFound, "NotFound"),
            (io::ErrorKind::NotADirectory, "NotFound"),
            (io::ErrorKind::PermissionDenied, "PermissionDenied"),
            (io::ErrorKind::IsADirectory, "IsDirectory"),
            (io::ErrorKind::TimedOut, "Io"),
        ];
        for (kind, expected) in cases {
            let mapped = CacheError::from(io::Error::from(kind));
            let name = format!("{mapped:?}");
            assert!(
                name.starts_with(expected),
                "{kind:?} mapped to {name}, expected {expected}"
            );
        }
    }

    #[test]
    fn default_config_is_valid_and_caps_object_size() {
        let config = CacheConfig::with_budget(1 << 30);
        assert_eq!(config.object_bytes_max, OBJECT_BYTES_MAX_DEFAULT_CAP);
        assert_eq!(CacheConfig::with_budget(8 << 20).object_bytes_max, 1 << 20);
        config.validate().unwrap();
    }

    #[test]
    fn config_errors_name_the_setting() {
        let mut config = CacheConfig::with_budget(1000);
        config.object_bytes_max = 1000;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("object_bytes_max"), "{message}");
        config.object_bytes_max = 100;
        config.entries_max = 0;
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("entries_max"));
    }
}
