//! Helpers shared by the integration tests and `node_link`'s unit tests (included there with `#[path]`).

use std::io::{Read, Write};
use std::net::TcpStream;

/// One GET of `path` on a fresh connection (`Connection: close`): the whole answer, and the shard named by its
/// `X-Larder-Shard` header (`u32::MAX` without one).
pub fn get(addr: impl std::net::ToSocketAddrs, path: &str) -> (String, u32) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let shard = answer
        .lines()
        .find_map(|line| line.strip_prefix("X-Larder-Shard: "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(u32::MAX);
    (answer, shard)
}

/// One GET of `path` on `stream`, left open (keep-alive): the status line and headers of the answer.
#[allow(dead_code)] // Not every user of these helpers keeps a connection open.
pub fn get_keep_alive(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "head too long");
        stream.read_exact(&mut byte).expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("utf-8 head");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .and_then(|value| value.trim().parse().ok())
        .expect("Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read body");
    head
}
