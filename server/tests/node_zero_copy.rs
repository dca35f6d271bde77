//! Zero-copy over the whole node: a cached 1 MiB object served 100 times on one keep-alive connection allocates
//! less than 4 KiB per response, counted by a global counting allocator (every thread of the process: shard,
//! runtime helpers and this test's client, which reads into one reused buffer). A body copied into a fresh buffer
//! would cost 1 MiB per response.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use larder_server::{Node, ServeConfig};

struct Counting;

static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const OBJECT_BYTES: usize = 1 << 20;
const RESPONSES: u64 = 100;
const BYTES_PER_RESPONSE_MAX: u64 = 4096;

/// Reads one response with a known body length into `buffer` (reused), returns the body.
fn read_one<'a>(stream: &mut TcpStream, buffer: &'a mut [u8], head_bytes: usize) -> &'a [u8] {
    stream
        .read_exact(&mut buffer[..head_bytes + OBJECT_BYTES])
        .unwrap();
    &buffer[head_bytes..head_bytes + OBJECT_BYTES]
}

#[test]
fn serving_a_cached_1_mib_object_allocates_under_4_kib_per_response() {
    let root = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..OBJECT_BYTES).map(|i| (i % 241) as u8).collect();
    std::fs::write(root.path().join("object.bin"), &body).unwrap();
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: "1".parse().unwrap(),
        root: root.path().to_path_buf(),
        cache_mb: 64,
        // No revalidation during the measurement (a stat would be fine, but keep the count about responses).
        revalidate_interval_ms: 3_600_000,
        ..ServeConfig::default()
    };
    let node = Node::start(config).unwrap();
    let mut stream = TcpStream::connect(node.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = b"GET /object.bin HTTP/1.1\r\nHost: t\r\n\r\n";

    // Warm-up: the miss loads the object; learn the head length (fixed for this object and second-sized Date).
    stream.write_all(request).unwrap();
    let mut buffer = vec![0u8; OBJECT_BYTES + 4096];
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    stream.read_exact(&mut buffer[..OBJECT_BYTES]).unwrap();
    assert!(buffer[..OBJECT_BYTES] == body[..]);
    let head_bytes = head.len();
    for _ in 0..3 {
        stream.write_all(request).unwrap();
        read_one(&mut stream, &mut buffer, head_bytes);
    }

    let before = ALLOCATED_BYTES.load(Ordering::Relaxed);
    for _ in 0..RESPONSES {
        stream.write_all(request).unwrap();
        let received = read_one(&mut stream, &mut buffer, head_bytes);
        assert_eq!(received[OBJECT_BYTES - 1], body[OBJECT_BYTES - 1]);
    }
    let allocated = ALLOCATED_BYTES.load(Ordering::Relaxed) - before;
    let per_response = allocated / RESPONSES;
    eprintln!("{per_response} bytes allocated per response ({allocated} for {RESPONSES})");
    assert!(
        per_response < BYTES_PER_RESPONSE_MAX,
        "{per_response} bytes allocated per response ({allocated} for {RESPONSES})"
    );
    assert_eq!(node.stats().shards[0].cache_hits, RESPONSES + 3);
    node.shutdown();
    node.join().unwrap();
}
