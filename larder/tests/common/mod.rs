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
