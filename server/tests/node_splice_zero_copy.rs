//! Large cached bodies leave through `vmsplice` + `splice` (issue 4: 1 MiB at nginx's speed), on both drivers, over
//! a real loopback connection to a real node: full bodies, a 206 range of a large object, a pipelined batch that
//! mixes spliced, `writev` and HEAD responses (answered in order), and one pipe per connection — opened on its
//! first large response, reused afterwards (counted as `pipe:` entries of /proc/self/fd; this file holds one test so
//! nothing else in the process opens pipes meanwhile).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use larder_server::config::IoDriver;
use larder_server::{Node, ServeConfig};

/// Not a multiple of the page size, so the last page of the mapping is partly slack.
const BIG_BYTES: usize = (1 << 20) + 123;
const MID_BYTES: usize = 200 * 1024;
const SMALL_BYTES: usize = 1000;
/// Bound on the bytes of one response head (a limit for the test's reader loop).
const HEAD_BYTES_MAX: usize = 4096;

struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn content(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|index| ((index * 7 + seed) % 251) as u8)
        .collect()
}

fn pipes_open() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count()
}

/// Reads one response; `head_only` for HEAD requests (Content-Length without a body).
fn read_response(stream: &mut TcpStream, head_only: bool) -> Response {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(
            head.len() < HEAD_BYTES_MAX,
            "no end of head in {HEAD_BYTES_MAX} bytes"
        );
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .map_or(0, |value| value.trim().parse().unwrap());
    let mut body = vec![0u8; if head_only { 0 } else { length }];
    stream.read_exact(&mut body).unwrap();
    Response { status, head, body }
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n")
}

fn check_driver(io_driver: IoDriver) {
    let root = tempfile::tempdir().unwrap();
    let big = content(BIG_BYTES, 1);
    let mid = content(MID_BYTES, 2);
    let small = content(SMALL_BYTES, 3);
    std::fs::write(root.path().join("big.bin"), &big).unwrap();
    std::fs::write(root.path().join("mid.bin"), &mid).unwrap();
    std::fs::write(root.path().join("small.bin"), &small).unwrap();
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: "1".parse().unwrap(),
        io_driver,
        root: root.path().to_path_buf(),
        cache_mb: 64,
        revalidate_interval_ms: 3_600_000,
        ..ServeConfig::default()
    };
    let node = Node::start(config).unwrap();
    let connect = || {
        let stream = TcpStream::connect(node.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    };
    let mut first = connect();
    let pipes_before = pipes_open();

    // A miss, then a hit: both are the mapped object, spliced.
    for round in 0..2 {
        first.write_all(get("/big.bin", "").as_bytes()).unwrap();
        let response = read_response(&mut first, false);
        assert_eq!(
            response.status, 200,
            "{io_driver:?} round {round}: {}",
            response.head
        );
        assert!(
            response.body == big,
            "{io_driver:?} round {round}: body differs"
        );
    }
    assert_eq!(
        pipes_open(),
        pipes_before + 2,
        "{io_driver:?}: one pipe (two descriptors) for the connection's large responses"
    );

    // A range of the large object: the sub-slice is spliced.
    first
        .write_all(get("/big.bin", "Range: bytes=1000-300999\r\n").as_bytes())
        .unwrap();
    let response = read_response(&mut first, false);
    assert_eq!(response.status, 206, "{io_driver:?}: {}", response.head);
    assert!(
        response.body == big[1000..301_000],
        "{io_driver:?}: range body differs"
    );

    // Pipelined in one write: spliced, writev (small), writev (short range of a mapped object), HEAD, spliced.
    let batch = [
        get("/big.bin", ""),
        get("/small.bin", ""),
        get("/mid.bin", "Range: bytes=5-104\r\n"),
        "HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\n".to_string(),
        get("/mid.bin", ""),
    ]
    .concat();
    first.write_all(batch.as_bytes()).unwrap();
    let expected: [(u16, bool, &[u8]); 5] = [
        (200, false, &big),
        (200, false, &small),
        (206, false, &mid[5..105]),
        (200, true, b""),
        (200, false, &mid),
    ];
    for (index, (status, head_only, body)) in expected.into_iter().enumerate() {
        let response = read_response(&mut first, head_only);
        assert_eq!(
            response.status, status,
            "{io_driver:?} pipelined #{index}: {}",
            response.head
        );
        assert!(
            response.body == body,
            "{io_driver:?} pipelined #{index}: body differs"
        );
    }
    let head = read_after_head(&mut first);
    assert_eq!(
        expected_length(&head),
        Some(BIG_BYTES),
        "{io_driver:?}: HEAD after the batch: {head}"
    );
    assert_eq!(
        pipes_open(),
        pipes_before + 2,
        "{io_driver:?}: the pipe is reused"
    );

    // A second connection gets its own pipe.
    let mut second = connect();
    second.write_all(get("/big.bin", "").as_bytes()).unwrap();
    let response = read_response(&mut second, false);
    assert!(
        response.body == big,
        "{io_driver:?}: second connection body differs"
    );
    assert_eq!(
        pipes_open(),
        pipes_before + 4,
        "{io_driver:?}: a pipe per connection"
    );

    drop(first);
    drop(second);
    node.shutdown();
    node.join().unwrap();
    assert_eq!(
        pipes_open(),
        pipes_before,
        "{io_driver:?}: pipes close with their connections"
    );
}

/// One more HEAD on the same connection: it still works after the batch.
fn read_after_head(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    read_response(stream, true).head
}

fn expected_length(head: &str) -> Option<usize> {
    head.lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .map(|value| value.trim().parse().unwrap())
}

#[test]
fn large_cached_bodies_are_spliced_in_order_on_both_drivers() {
    check_driver(IoDriver::Epoll);
    if monoio::utils::detect_uring() {
        check_driver(IoDriver::Uring);
    } else {
        panic!("io_uring is unavailable here: the uring half of this test cannot run");
    }
}
