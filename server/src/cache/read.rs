//! Reading files: whole-file single-copy loads for the cache, and bounded-chunk streams for files too large to cache.
//!
//! A load reads the file exactly once, into the buffer that becomes the cached `Bytes` (no second user-space copy):
//! 1. Files of at least `DIRECT_READ_BYTES_MIN` (64 KiB) under [`ReadMode::DirectOrDropCache`] get `O_DIRECT`
//!    (set on the open descriptor with `fcntl(F_SETFL)`) and are read by DMA into a 4 KiB-aligned buffer whose length
//!    is the file size rounded up to 4 KiB (at most 4 KiB − 1 bytes of slack, < 6.25% at 64 KiB). The page cache
//!    never holds the data.
//! 2. Otherwise — smaller files, a file system without `O_DIRECT` (`EINVAL`, e.g. older tmpfs), or
//!    [`ReadMode::DropCache`] — a buffered read into a `Vec` of exactly the file size (which `Bytes::from` adopts
//!    without copying), then `posix_fadvise(DONTNEED)` over the file so the page cache drops its copy. Dropping
//!    is advisory: dirty or mapped pages stay.
//! 3. [`ReadMode::PageCache`] skips both (the double-buffering baseline, for benchmarks).
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
//! page cache act as a second level behind the shard caches (at the price of double buffering).

use std::alloc::{self, Layout};
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

/// Reads the whole of `file` (whose `fstat` said `size_bytes`) once, per `mode`. A file that shrank meanwhile gives
/// fewer bytes; one that grew is cut at `size_bytes` (revalidation then sees the new size or mtime and reloads).
pub fn read_whole(file: &File, size_bytes: u64, mode: ReadMode) -> io::Result<(Bytes, ReadPath)> {
    let size =
        usize::try_from(size_bytes).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
    if mode == ReadMode::DirectOrDropCache
        && size_bytes >= DIRECT_READ_BYTES_MIN
        && enable_direct(file)
    {
        match read_direct(file, size) {
            Ok(body) => return Ok((body, ReadPath::Direct)),
            // Some file systems accept the flag and refuse the read; fall back to the buffered path.
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => disable_direct(file)?,
            Err(error) => return Err(error),
        }
    }
    let mut buffer = vec![0u8; size];
    let length = read_at_most(file, &mut buffer, 0, size)?;
    buffer.truncate(length);
    if mode != ReadMode::PageCache {
        // Advisory; a failure leaves a second copy in the page cache but the body is correct.
        let _ = rustix::fs::fadvise(file, 0, None::<NonZeroU64>, Advice::DontNeed);
    }
    // A Vec whose length equals its capacity becomes a Bytes without copying (a shorter one also keeps its buffer).
    Ok((Bytes::from(buffer), ReadPath::Buffered))
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
    let capacity = size.div_ceil(DIRECT_ALIGN_BYTES) * DIRECT_ALIGN_BYTES;
    let mut buffer = AlignedBuffer::zeroed(capacity.max(DIRECT_ALIGN_BYTES));
    // Offsets and lengths stay multiples of 4 KiB: every read but the last (at end of file) returns whole blocks.
    let length = read_at_most(file, buffer.as_mut_slice(), 0, size)?;
    buffer.set_len(length.min(size));
    Ok(Bytes::from_owner(buffer))
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

/// A zeroed heap buffer aligned to `DIRECT_ALIGN_BYTES`, owned by the `Bytes` it becomes.
struct AlignedBuffer {
    pointer: NonNull<u8>,
    layout: Layout,
    length: usize,
}

// SAFETY: the buffer is a plain heap allocation owned exclusively by this value; after construction it is only
// read (through `AsRef`), so sharing and sending it between threads is sound.
unsafe impl Send for AlignedBuffer {}
// SAFETY: see `Send`: no interior mutability.
unsafe impl Sync for AlignedBuffer {}

impl AlignedBuffer {
    fn zeroed(capacity: usize) -> AlignedBuffer {
        assert!(capacity > 0, "aligned buffer of 0 bytes");
        let layout = Layout::from_size_align(capacity, DIRECT_ALIGN_BYTES)
            .expect("capacity below isize::MAX");
        // SAFETY: the layout has a non-zero size (asserted above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let pointer = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuffer {
            pointer,
            layout,
            length: 0,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `pointer` is valid for `layout.size()` initialised (zeroed) bytes, exclusively borrowed here.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.as_ptr(), self.layout.size()) }
    }

    fn set_len(&mut self, length: usize) {
        assert!(
            length <= self.layout.size(),
            "length {length} above capacity {}",
            self.layout.size()
        );
        self.length = length;
    }
}

impl AsRef<[u8]> for AlignedBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `length <= layout.size()` (checked in `set_len`) and the bytes are initialised.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.length) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this same layout, freed once.
        unsafe { alloc::dealloc(self.pointer.as_ptr(), self.layout) }
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
