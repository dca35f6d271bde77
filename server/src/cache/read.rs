//! Reading files: whole-file single-copy loads for the cache, and bounded-chunk streams for files too large to cache.
//!
//! A load reads the file exactly once, into the buffer that becomes the cached `Bytes` (no second user-space copy):
//! 1. Files of at least `DIRECT_READ_BYTES_MIN` (64 KiB) under [`ReadMode::DirectOrDropCache`] get `O_DIRECT`
//!    (set on the open descriptor with `fcntl(F_SETFL)`) and are read by DMA into a 4 KiB-aligned buffer whose length
//!    is the file size rounded up to 4 KiB (at most 4 KiB − 1 bytes of slack, < 6.25% at 64 KiB). The page cache
//!    never holds the data. The buffer is its own anonymous mapping ([`Mapping`]), read-only once filled.
//! 2. Otherwise — smaller files, a file system without `O_DIRECT` (`EINVAL`, e.g. older tmpfs), or
//!    [`ReadMode::DropCache`] — a buffered read into a `Vec` of exactly the file size (which `Bytes::from` adopts
//!    without copying), or into a [`Mapping`] for files of at least [`SPLICE_BYTES_MIN`] (64 KiB), then
//!    `posix_fadvise(DONTNEED)` over the file so the page cache drops its copy. Dropping is advisory: dirty or
//!    mapped pages stay.
//! 3. [`ReadMode::PageCache`] skips both (the double-buffering baseline, for benchmarks).
//!
//! Every body of at least [`SPLICE_BYTES_MIN`] bytes ends up in a [`Mapping`] (flagged in [`Loaded::mapped`]), so the
//! connection layer may send it with `vmsplice` + `splice`; [`Mapping`] states why that is safe.
//!
//! Cost: the read is synchronous, so a miss blocks the shard for one file read (open + fstat + read + close).
//! Measured here (`cargo bench -p larder-micro --bench cache -- cache_miss`, ext4 on a virtual disk, on a machine
//! loaded by other builds, so upper bounds): 4 KiB from the page cache 34 µs, 4 KiB from the device 180–210 µs;
//! 256 KiB from the page cache 108 µs, with `O_DIRECT` 0.96 ms, buffered from the device 1.8 ms.
//! Files above `object_bytes_max` are not loaded: the connection layer streams them with [`FileStream`], one chunk
//! (`stream_chunk_bytes`, default 256 KiB) per synchronous `pread`, into one reused buffer.
//!
//! Trade-off: keeping one copy means every miss goes to the device. That is IO-Lite's bet when the cache budget is
//! most of the memory; when the budget is far below the free memory, [`ReadMode::PageCache`] lets the kernel's
//! page cache act as a second level behind the shard caches (at the price of double buffering). `larder serve`
//! chooses with its `cache_read` setting (`--cache-read direct|drop-cache|page-cache`).

use std::fs::File;
use std::io;
use std::num::NonZeroU64;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use bytes::Bytes;
use rustix::fs::{Advice, OFlags};

use super::object::FileMeta;

/// Alignment of `O_DIRECT` buffers, offsets and lengths: 4 KiB covers every common logical block size.
pub const DIRECT_ALIGN_BYTES: usize = 4096;

/// Files smaller than this are read buffered (then dropped from the page cache): below 64 KiB the rounding slack of
/// an aligned buffer and an uncached device read cost more than the kernel's copy.
pub const DIRECT_READ_BYTES_MIN: u64 = 64 * 1024;

/// Bodies of at least this many bytes are read into their own anonymous mapping ([`Mapping`]) and sent with
/// `vmsplice` + `splice` instead of `writev` (one copy fewer: the socket references the cached pages). Below it the
/// two extra system calls and the pipe cost more than the copy they save. Measured here (sender thread CPU per
/// response over loopback TCP, head + body, `writev` vs `write` + `vmsplice` + `splice`, two runs on a loaded 2-core
/// machine): 16 KiB 7.7–8.0 vs 10.6–11.4 µs, 32 KiB 13.7–14.3 vs 13.3–15.8 µs, 64 KiB 24–26 vs 18–21 µs,
/// 256 KiB 82–102 vs 55–57 µs, 1 MiB 317–326 vs 181–229 µs: 64 KiB is the first size where splicing wins
/// clearly (16 KiB loses, 256 KiB would leave the 64–256 KiB gain unused).
pub const SPLICE_BYTES_MIN: u64 = 64 * 1024;

/// Default chunk size of [`FileStream`]: 256 KiB per `pread`, one reused buffer per stream.
pub const STREAM_CHUNK_BYTES_DEFAULT: usize = 256 * 1024;

/// How the cache reads a file it loads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// `O_DIRECT` for files of at least 64 KiB where the file system allows it, else buffered + `DONTNEED`.
    #[default]
    DirectOrDropCache,
    /// Buffered read, then `posix_fadvise(DONTNEED)`.
    DropCache,
    /// Buffered read; the page cache keeps its copy (double buffering; a baseline to measure against).
    PageCache,
}

/// Which path a load took (counted by the cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// `O_DIRECT` into an aligned buffer.
    Direct,
    /// Buffered read into an exact-size `Vec`.
    Buffered,
}

/// What [`read_whole`] read.
#[derive(Debug)]
pub struct Loaded {
    /// The file's bytes.
    pub body: Bytes,
    /// How they were read.
    pub path: ReadPath,
    /// True when `body` lives in its own read-only anonymous mapping ([`Mapping`]): always for `O_DIRECT` reads and
    /// for files of at least [`SPLICE_BYTES_MIN`]; only such bodies may be handed to `vmsplice`.
    pub mapped: bool,
}

/// Reads the whole of `file` (whose `fstat` said `size_bytes`) once, per `mode`. A file that shrank meanwhile gives
/// fewer bytes; one that grew is cut at `size_bytes` (revalidation then sees the new size or mtime and reloads).
pub fn read_whole(file: &File, size_bytes: u64, mode: ReadMode) -> io::Result<Loaded> {
    let size =
        usize::try_from(size_bytes).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
    if mode == ReadMode::DirectOrDropCache
        && size_bytes >= DIRECT_READ_BYTES_MIN
        && enable_direct(file)
    {
        match read_direct(file, size) {
            Ok(body) => {
                return Ok(Loaded {
                    body,
                    path: ReadPath::Direct,
                    mapped: true,
                })
            }
            // Some file systems accept the flag and refuse the read; fall back to the buffered path.
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => disable_direct(file)?,
            Err(error) => return Err(error),
        }
    }
    let mapped = size_bytes >= SPLICE_BYTES_MIN;
    let body = if mapped {
        read_buffered_mapped(file, size)?
    } else {
        // Read into the spare capacity: no zeroing of a buffer the read overwrites (memset was 1% of a shard's CPU
        // on a 16 KiB Zipf mix). A Vec whose length equals its capacity becomes a Bytes without copying (a shorter
        // one keeps its buffer).
        let mut buffer = Vec::with_capacity(size);
        while buffer.len() < size {
            let offset = buffer.len() as u64;
            match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buffer), offset) {
                Ok(0) => break,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        Bytes::from(buffer)
    };
    if mode != ReadMode::PageCache {
        // Advisory; a failure leaves a second copy in the page cache but the body is correct.
        let _ = rustix::fs::fadvise(file, 0, None::<NonZeroU64>, Advice::DontNeed);
    }
    Ok(Loaded {
        body,
        path: ReadPath::Buffered,
        mapped,
    })
}

fn enable_direct(file: &File) -> bool {
    match rustix::fs::fcntl_getfl(file) {
        Ok(flags) => rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT).is_ok(),
        Err(_) => false,
    }
}

fn disable_direct(file: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
    Ok(())
}

fn read_direct(file: &File, size: usize) -> io::Result<Bytes> {
    let mut mapping = Mapping::anonymous(size)?;
    // Offsets and lengths stay multiples of 4 KiB: every read but the last (at end of file) returns whole blocks.
    let length = read_at_most(file, mapping.as_mut_slice(), 0, size)?;
    mapping.freeze(length.min(size))
}

fn read_buffered_mapped(file: &File, size: usize) -> io::Result<Bytes> {
    let mut mapping = Mapping::anonymous(size)?;
    let length = read_at_most(file, &mut mapping.as_mut_slice()[..size], 0, size)?;
    mapping.freeze(length)
}

/// Reads from `offset` until `wanted` bytes (at most `buffer.len()`) are in or the file ends; returns the bytes
/// read, which may exceed `wanted` up to `buffer.len()` (an `O_DIRECT` read returns whole blocks).
fn read_at_most(file: &File, buffer: &mut [u8], offset: u64, wanted: usize) -> io::Result<usize> {
    let mut filled = 0;
    while filled < wanted.min(buffer.len()) {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// A body in its own anonymous mapping (`mmap(MAP_PRIVATE | MAP_ANONYMOUS)`), owned by the `Bytes` it becomes and
/// unmapped when that `Bytes` (and every slice of it) is dropped.
///
/// Why a mapping and not the heap: a body of at least [`SPLICE_BYTES_MIN`] is sent with `vmsplice` + `splice`
/// (`node::splice`), which hands the mapping's *pages* to a pipe and then to the socket; they are read by the kernel
/// after the `Bytes` may be gone. Safety argument, in three steps:
/// 1. The mapping is filled by the miss read, then made read-only (`mprotect(PROT_READ)`); nothing writes to it
///    afterwards (a write would fault), so the bytes a pipe or socket buffer references never change while the
///    mapping lives.
/// 2. `munmap` on drop does not free a page that a pipe or socket buffer still references: the kernel holds a page
///    reference per pipe buffer and per socket fragment, and the page returns to the allocator only when the last
///    one drops. So the bytes in flight stay what they were, even if the cache evicts or reloads the object meanwhile.
/// 3. The pages are never handed back to `malloc`: a heap buffer would be reused for another object and written
///    while the kernel still sends its old pages — the one way this design could send wrong bytes. Fresh `mmap`s
///    get fresh zeroed pages from the kernel.
///
/// Also used for `O_DIRECT` reads of any size: a mapping is page-aligned (4 KiB), as `O_DIRECT` needs.
pub(crate) struct Mapping {
    pointer: NonNull<u8>,
    capacity: usize,
    length: usize,
}

// SAFETY: the mapping is owned exclusively by this value; once shared (inside a `Bytes`) it is only read
// (through `AsRef`), so sharing and sending it between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`: no interior mutability.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A zeroed, writable anonymous mapping of `capacity` bytes rounded up to whole pages.
    pub(crate) fn anonymous(capacity: usize) -> io::Result<Mapping> {
        let capacity = capacity.max(1).div_ceil(DIRECT_ALIGN_BYTES) * DIRECT_ALIGN_BYTES;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                capacity,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let pointer = NonNull::new(raw.cast::<u8>()).expect("mmap succeeded with a null address");
        Ok(Mapping {
            pointer,
            capacity,
            length: 0,
        })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `pointer` is valid for `capacity` zero-initialised bytes, exclusively borrowed here, and still
        // writable (`freeze` consumes the value).
        unsafe { std::slice::from_raw_parts_mut(self.pointer.as_ptr(), self.capacity) }
    }

    /// Sets the body length and makes the pages read-only (step 1 of the safety argument).
    fn freeze(mut self, length: usize) -> io::Result<Bytes> {
        assert!(
            length <= self.capacity,
            "length {length} above capacity {}",
            self.capacity
        );
        self.length = length;
        // SAFETY: the whole range is this value's own mapping.
        let status = unsafe {
            libc::mprotect(
                self.pointer.as_ptr().cast::<libc::c_void>(),
                self.capacity,
                libc::PROT_READ,
            )
        };
        if status != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Bytes::from_owner(self))
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `length <= capacity` (checked in `freeze`) and the bytes are initialised.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.length) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `anonymous` with this length, unmapped once; pages still referenced by pipes or socket
        // buffers outlive this call (step 2 of the safety argument).
        unsafe { libc::munmap(self.pointer.as_ptr().cast::<libc::c_void>(), self.capacity) };
    }
}

/// A file over `object_bytes_max`: opened and `fstat`ed once, not cached. Stream it with [`LargeFile::into_stream`]
/// so the body sent matches the metadata in the header.
#[derive(Debug)]
pub struct LargeFile {
    /// The version that was opened.
    pub meta: FileMeta,
    /// The open file.
    pub file: File,
}

impl LargeFile {
    /// A stream of `range` (clamped to the file size) in chunks of `chunk_bytes`.
    pub fn into_stream(self, range: Range<u64>, chunk_bytes: usize) -> FileStream {
        let end = range.end.min(self.meta.size_bytes);
        FileStream::new(self.file, range.start.min(end)..end, chunk_bytes)
    }
}

/// Reads a byte range of a file in bounded chunks into one reused buffer. Built for owned-buffer writers (io_uring):
///
/// ```ignore
/// while let Some(chunk) = stream.next_chunk()? {   // Vec<u8>, at most chunk_bytes long
///     let (result, chunk) = connection.write_all(chunk).await;
///     result?;
///     stream.recycle(chunk);                          // the next chunk reuses the allocation
/// }
/// ```
///
/// Each chunk is one synchronous `pread` (blocks the shard for one chunk). A file that shrinks while streaming ends
/// the stream with `UnexpectedEof` (the promised Content-Length cannot be met: close the connection).
#[derive(Debug)]
pub struct FileStream {
    file: File,
    offset: u64,
    end: u64,
    chunk_bytes: usize,
    buffer: Option<Vec<u8>>,
}

impl FileStream {
    /// A stream of `range` of `file`; `chunk_bytes` 0 is treated as 1.
    pub fn new(file: File, range: Range<u64>, chunk_bytes: usize) -> FileStream {
        // Sequential read-ahead helps the next chunk; advisory only.
        let _ = rustix::fs::fadvise(&file, 0, None::<NonZeroU64>, Advice::Sequential);
        FileStream {
            file,
            offset: range.start,
            end: range.end.max(range.start),
            chunk_bytes: chunk_bytes.max(1),
            buffer: None,
        }
    }

    /// Bytes not yet returned.
    pub fn remaining_bytes(&self) -> u64 {
        self.end - self.offset
    }

    /// The file offset of the next chunk (for callers that prefer `sendfile`/`splice` on [`FileStream::file`]).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The next chunk (at most `chunk_bytes`), or `None` at the end of the range. Hand the buffer back with
    /// [`FileStream::recycle`] to avoid allocating the next one.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let remaining = self.remaining_bytes();
        if remaining == 0 {
            return Ok(None);
        }
        let length =
            usize::try_from(remaining).map_or(self.chunk_bytes, |left| left.min(self.chunk_bytes));
        let mut buffer = self
            .buffer
            .take()
            .unwrap_or_else(|| Vec::with_capacity(self.chunk_bytes));
        // Only growth is zero-filled: a recycled buffer keeps its length and is truncated, not cleared.
        buffer.resize(length, 0);
        let filled = read_at_most(&self.file, &mut buffer, self.offset, length)?;
        if filled < length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "file shrank while streaming: {filled} of {length} bytes at offset {}",
                    self.offset
                ),
            ));
        }
        self.offset += length as u64;
        Ok(Some(buffer))
    }

    /// Returns a chunk's buffer for reuse.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        if buffer.capacity() >= self.chunk_bytes {
            self.buffer = Some(buffer);
        }
    }
}
