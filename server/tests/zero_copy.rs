//! The zero-copy property (issue 4, acceptance): serving a cached 1 MiB object 100 times allocates less than 4 KiB
//! per response, and loading it puts the body in one page-aligned mapping (one copy, no heap buffer).
//!
//! A counting global allocator wraps `System` and counts per thread (the test harness runs other tests on other
//! threads at the same time; only the serving thread's allocations are the server's). Each response is built the way the connection layer builds it: the
//! head formatted into one reused `Vec<u8>`, the body a `Bytes` slice of the cached buffer (a `ResponseBody::Cached`),
//! both sent with vectored writes (`writev`) into a real socket whose peer drains into a fixed buffer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{IoSlice, Read, Write};
use std::os::unix::net::UnixStream;

use larder_server::cache::{CacheConfig, Fetched, ResponseBody, ShardCache};

struct CountingAllocator;

thread_local! {
    // `const` and without destructor: no allocation and no registration when first used inside the allocator.
    static ALLOCATED_BYTES: Cell<u64> = const { Cell::new(0) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: during thread teardown the counters may be gone; those allocations are not the test's.
    let _ = ALLOCATED_BYTES.try_with(|total| total.set(total.get() + bytes as u64));
    let _ = ALLOCATIONS.try_with(|total| total.set(total.get() + 1));
}

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const OBJECT_BYTES: usize = 1 << 20;
const RESPONSES: u64 = 100;
const RESPONSE_ALLOCATED_BYTES_MAX: u64 = 4096;

fn allocated() -> (u64, u64) {
    (ALLOCATED_BYTES.with(Cell::get), ALLOCATIONS.with(Cell::get))
}

/// Writes `head` then `body` with `writev`, resuming after partial writes; allocates nothing.
fn write_response(
    socket: &mut UnixStream,
    head: &[u8],
    body: &ResponseBody,
) -> std::io::Result<u64> {
    let ResponseBody::Cached(body) = body else {
        unreachable!("this test serves cached bodies only");
    };
    let mut slices = [IoSlice::new(head), IoSlice::new(body)];
    let mut pending: &mut [IoSlice<'_>] = &mut slices;
    let mut written_total = 0u64;
    while !pending.is_empty() {
        let written = socket.write_vectored(pending)?;
        assert!(written > 0, "writev wrote nothing");
        written_total += written as u64;
        IoSlice::advance_slices(&mut pending, written);
    }
    Ok(written_total)
}

/// Appends a response head the way the connection layer does: no allocation once `head` has capacity.
fn build_head(head: &mut Vec<u8>, object: &larder_server::cache::CachedObject, body_bytes: usize) {
    head.clear();
    head.extend_from_slice(b"HTTP/1.1 200 OK\r\nServer: larder\r\nContent-Type: ");
    head.extend_from_slice(object.meta.content_type.as_bytes());
    head.extend_from_slice(b"\r\nContent-Length: ");
    write!(head, "{body_bytes}").unwrap();
    head.extend_from_slice(b"\r\nLast-Modified: ");
    head.extend_from_slice(object.meta.last_modified.as_bytes());
    head.extend_from_slice(b"\r\nETag: ");
    head.extend_from_slice(object.meta.etag.as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
}

#[test]
fn serving_a_cached_1_mib_object_allocates_under_4_kib_per_response() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one-mebibyte.bin");
    let content: Vec<u8> = (0..OBJECT_BYTES).map(|index| (index % 239) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let mut cache = ShardCache::new(CacheConfig::with_budget(64 << 20)).unwrap();

    // The load: the body goes into its own page-aligned anonymous mapping (the single copy, which the allocator
    // never sees: it is `mmap`ed, so that `vmsplice` may hand its pages to the socket), plus small metadata.
    let (bytes_before_load, _) = allocated();
    let Ok(Fetched::Cached(object)) = cache.get_or_load(&path, 0) else {
        panic!("a 1 MiB file fits a 64 MiB cache (object_bytes_max 8 MiB)");
    };
    let load_bytes = allocated().0 - bytes_before_load;
    assert_eq!(object.body[..], content[..]);
    assert!(object.body_mapped, "a 1 MiB body lives in its own mapping");
    assert_eq!(
        object.body.as_ptr() as usize % 4096,
        0,
        "the mapping is page-aligned"
    );
    assert!(
        load_bytes < 64 * 1024,
        "loading 1 MiB allocated {load_bytes} heap bytes: the body was copied to the heap"
    );

    let (mut socket, mut peer) = UnixStream::pair().unwrap();
    let drain = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 256 * 1024];
        let mut received = 0u64;
        loop {
            match peer.read(&mut buffer).unwrap() {
                0 => return received,
                count => received += count as u64,
            }
        }
    });
    let mut head = Vec::with_capacity(512);
    let mut sent_bytes = 0u64;
    let mut worst_response_bytes = 0u64;
    let (bytes_before, allocations_before) = allocated();
    for index in 0..RESPONSES {
        let (response_before, _) = allocated();
        let Ok(Fetched::Cached(hit)) = cache.get_or_load(&path, index) else {
            panic!("response {index}: expected a cache hit");
        };
        let body = ResponseBody::Cached(hit.body.slice(..));
        if let ResponseBody::Cached(bytes) = &body {
            assert_eq!(
                bytes.as_ptr(),
                object.body.as_ptr(),
                "response {index}: the body must share the buffer"
            );
        }
        build_head(&mut head, &hit, OBJECT_BYTES);
        sent_bytes += write_response(&mut socket, &head, &body).unwrap();
        drop(body);
        worst_response_bytes = worst_response_bytes.max(allocated().0 - response_before);
    }
    let (bytes_after, allocations_after) = allocated();
    drop(socket);
    let received = drain.join().unwrap();

    let per_response = (bytes_after - bytes_before) / RESPONSES;
    println!(
        "load {load_bytes} B; serving: {} B in {} allocations over {RESPONSES} responses ({per_response} B each, worst {worst_response_bytes} B)",
        bytes_after - bytes_before,
        allocations_after - allocations_before
    );
    assert_eq!(received, sent_bytes, "the peer got every byte");
    assert!(
        sent_bytes > RESPONSES * OBJECT_BYTES as u64,
        "bodies were sent"
    );
    assert!(
        worst_response_bytes < RESPONSE_ALLOCATED_BYTES_MAX,
        "a response allocated {worst_response_bytes} bytes (limit {RESPONSE_ALLOCATED_BYTES_MAX})"
    );
    assert_eq!(cache.counters().hits, RESPONSES);
}

#[test]
fn a_range_response_is_a_slice_of_the_same_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ranged.bin");
    std::fs::write(&path, vec![9u8; 100_000]).unwrap();
    let mut cache = ShardCache::new(CacheConfig::with_budget(8 << 20)).unwrap();
    let Ok(Fetched::Cached(object)) = cache.get_or_load(&path, 0) else {
        panic!("expected a cached object");
    };
    let body = ResponseBody::Cached(object.slice(1000..2000));
    assert_eq!(body.len_bytes(), 1000);
    let ResponseBody::Cached(bytes) = &body else {
        unreachable!()
    };
    assert_eq!(bytes.as_ptr(), object.body[1000..].as_ptr());
}
