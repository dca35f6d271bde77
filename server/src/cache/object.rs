//! What the cache stores for one file: the body as one immutable, reference-counted buffer, and the metadata a
//! response header needs, formatted once at load time so that building a header allocates nothing.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Content type for files whose extension names none.
pub const CONTENT_TYPE_DEFAULT: &str = "application/octet-stream";

/// The version of a file the cache and the response headers describe: identity, size and mtime, taken with one
/// `fstat` of the descriptor the body is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// File size in bytes at open time.
    pub size_bytes: u64,
    /// Last modification time (nanosecond resolution where the file system has it).
    pub mtime: SystemTime,
    /// `mtime` in whole Unix seconds (what `Last-Modified` and `If-Modified-Since` compare; 0 before 1970).
    pub mtime_unix_s: u64,
    /// Device and inode: a file replaced by `rename` (an atomic deploy) is a new version even with equal size/mtime.
    pub device: u64,
    /// See `device`.
    pub inode: u64,
    /// Strong validator in nginx's format: `"<mtime seconds hex>-<size hex>"`, quotes included.
    pub etag: String,
    /// `Last-Modified` value (IMF-fixdate, seconds resolution), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub last_modified: String,
    /// Content type guessed from the file name's extension; the caller may choose another.
    pub content_type: &'static str,
}

impl FileMeta {
    /// Metadata of `path` as described by `stat` (taken from the open descriptor by the loader).
    pub fn from_metadata(path: &Path, stat: &Metadata) -> FileMeta {
        let mtime = mtime_of(stat);
        let mtime_s = mtime
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        FileMeta {
            size_bytes: stat.size(),
            mtime,
            mtime_unix_s: mtime_s,
            device: stat.dev(),
            inode: stat.ino(),
            etag: format!("\"{mtime_s:x}-{:x}\"", stat.size()),
            last_modified: httpdate::fmt_http_date(mtime),
            content_type: mime_guess::from_path(path)
                .first_raw()
                .unwrap_or(CONTENT_TYPE_DEFAULT),
        }
    }

    /// True when `stat` describes the same version of the file: same device, inode, size and mtime (to the
    /// nanosecond). A write that keeps the size within one mtime tick of the file system goes unnoticed — the same
    /// limit nginx's `open_file_cache` has.
    pub fn is_same_version(&self, stat: &Metadata) -> bool {
        self.size_bytes == stat.size()
            && self.mtime == mtime_of(stat)
            && self.device == stat.dev()
            && self.inode == stat.ino()
    }
}

fn mtime_of(stat: &Metadata) -> SystemTime {
    // `Metadata::modified` cannot fail on Linux; the raw fields are used so that pre-1970 times also compare.
    let seconds = stat.mtime();
    let nanos = u32::try_from(stat.mtime_nsec()).unwrap_or(0);
    if seconds >= 0 {
        UNIX_EPOCH + Duration::new(seconds.unsigned_abs(), nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
            + Duration::from_nanos(u64::from(nanos))
    }
}

/// One cached file. Immutable once built and shared by `Arc`: an in-flight response keeps the version it started
/// with even if the cache reloads or evicts the file meanwhile.
#[derive(Debug)]
pub struct CachedObject {
    /// The whole file, read once. Responses send `body.slice(range)`: slices share this one buffer.
    pub body: Bytes,
    /// True when `body` lives in its own read-only anonymous mapping (`read::Mapping`; every body of at least
    /// `SPLICE_BYTES_MIN` bytes does): its pages may be handed to a pipe with `vmsplice` and on to the socket.
    pub body_mapped: bool,
    /// The version `body` was read from.
    pub meta: FileMeta,
}

impl CachedObject {
    /// The bytes of `range` (already validated against `body.len()` by the caller), sharing the buffer:
    /// no copy, no allocation.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Bytes {
        self.body.slice(range)
    }

    /// The bytes of `range` as a [`MappedSlice`] when they should go out with `vmsplice` + `splice` rather than
    /// `writev`: the body is mapped and the slice is at least `SPLICE_BYTES_MIN` bytes long. `None` otherwise.
    pub fn mapped_slice(&self, range: std::ops::Range<usize>) -> Option<MappedSlice> {
        let long_enough = (range.end - range.start) as u64 >= super::read::SPLICE_BYTES_MIN;
        (self.body_mapped && long_enough).then(|| MappedSlice(self.body.slice(range)))
    }
}

/// A slice of a body that lives in its own read-only anonymous mapping: the only bytes the connection layer hands to
/// `vmsplice` (see `read::Mapping` for why heap bytes must never be). Built only by [`CachedObject::mapped_slice`].
#[derive(Clone, Debug)]
pub struct MappedSlice(Bytes);

impl MappedSlice {
    /// The bytes (they share the mapping).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The bytes, for a `writev` fallback.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}
