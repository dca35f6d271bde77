//! The `cache_read` setting reaches every shard's cache: a node in the default `direct` mode leaves a missed
//! file's pages out of the kernel's page cache (the shard cache holds the only copy), a node in `page-cache` mode
//! leaves them in (the page cache becomes a second level behind the shard caches). Residency is read with
//! `mincore` after the file was synced and dropped from the page cache, so each node's own read decides it.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::resident_pages;
use larder_server::cache::ReadMode;
use larder_server::{Node, ServeConfig};

const FILE_BYTES: usize = 256 * 1024;
const FILE_PAGES: usize = FILE_BYTES / 4096;

/// Writes `name` under `root`, syncs it and asks the kernel to drop its pages; returns its path.
fn cold_file(root: &Path, name: &str, body: &[u8]) -> PathBuf {
    let path = root.join(name);
    fs::write(&path, body).unwrap();
    let file = fs::File::open(&path).unwrap();
    file.sync_all().unwrap();
    rustix::fs::fadvise(&file, 0, None::<NonZeroU64>, rustix::fs::Advice::DontNeed).unwrap();
    assert_eq!(
        resident_pages(&path),
        0,
        "the file system kept {} in memory after DONTNEED; this test needs one that drops clean pages",
        path.display()
    );
    path
}

/// GETs `target` on a fresh connection with `Connection: close` and returns the body.
fn get_body(node: &Node, target: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(node.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200 "),
        "{:?}",
        String::from_utf8_lossy(&response[..response.len().min(200)])
    );
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    response.split_off(head_end)
}

fn node_with(root: &Path, cache_read: ReadMode) -> Node {
    Node::start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: "1".parse().unwrap(),
        root: root.to_path_buf(),
        cache_mb: 16,
        cache_read,
        ..ServeConfig::default()
    })
    .unwrap()
}

#[test]
fn the_cache_read_setting_decides_whether_the_page_cache_keeps_a_copy() {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let body: Vec<u8> = (0..FILE_BYTES).map(|i| (i % 251) as u8).collect();

    let direct_path = cold_file(root.path(), "direct.bin", &body);
    let direct = node_with(root.path(), ReadMode::DirectOrDropCache);
    assert_eq!(get_body(&direct, "/direct.bin"), body);
    assert_eq!(
        resident_pages(&direct_path),
        0,
        "direct mode: the shard cache must hold the only copy"
    );

    let kept_path = cold_file(root.path(), "kept.bin", &body);
    let keeping = node_with(root.path(), ReadMode::PageCache);
    assert_eq!(get_body(&keeping, "/kept.bin"), body);
    assert_eq!(
        resident_pages(&kept_path),
        FILE_PAGES,
        "page-cache mode: the kernel keeps its copy of every page read"
    );
    drop((direct, keeping));
}
