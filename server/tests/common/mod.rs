//! Helpers shared by the server's integration tests: a node on an ephemeral port over a temporary ROOT
//! ([`Served`]), a blocking HTTP/1.1 response reader, and page-cache residency.
#![allow(dead_code)] // each test file uses its own subset

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use larder_server::{Node, ServeConfig};

pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Served {
    pub node: Option<Node>,
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
}

impl Served {
    pub fn start(configure: impl FnOnce(&mut ServeConfig)) -> Served {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        std::fs::write(dir.join("hello.txt"), b"hello world\n").unwrap();
        std::fs::write(dir.join("page.html"), b"<p>page</p>\n").unwrap();
        let digits: Vec<u8> = (0..1000u32).map(|i| b'0' + (i % 10) as u8).collect();
        std::fs::write(dir.join("digits.bin"), &digits).unwrap();
        std::fs::create_dir(dir.join("dir")).unwrap();
        std::fs::write(dir.join("dir/index.html"), b"<p>index</p>\n").unwrap();
        std::fs::create_dir(dir.join("empty")).unwrap();
        std::fs::write(dir.join(".secret"), b"hidden").unwrap();
        let mut config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cores: "1".parse().unwrap(),
            root: dir.to_path_buf(),
            shard_header: true,
            ..ServeConfig::default()
        };
        configure(&mut config);
        let node = Node::start(config).expect("node starts");
        let addr = node.local_addr();
        Served {
            node: Some(node),
            addr,
            root,
        }
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().unwrap()
    }

    /// One request on a fresh connection.
    pub fn get(&self, request: &str) -> Response {
        let mut stream = self.connect();
        stream.write_all(request.as_bytes()).unwrap();
        read_response(&mut stream, request.starts_with("HEAD"))
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.root.path().join(name)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown();
            let _ = node.join();
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Reads one response: the head, then Content-Length bytes (none for HEAD, 304).
pub fn read_response(stream: &mut TcpStream, head_only: bool) -> Response {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = stream
            .read(&mut byte)
            .expect("response head within the read timeout");
        assert_eq!(
            read,
            1,
            "connection closed inside a response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).unwrap();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_string(), value.to_string())
        })
        .collect();
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let length: usize = response
        .header("Content-Length")
        .map_or(0, |value| value.parse().unwrap());
    if !head_only && status != 304 {
        response.body = vec![0; length];
        stream.read_exact(&mut response.body).unwrap();
    }
    response
}

/// True if the server closed the connection (EOF) within the read timeout.
pub fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 64];
    matches!(stream.read(&mut buffer), Ok(0) | Err(_))
}

pub fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// Pages of `path` resident in the page cache (mincore over a mapping of the file).
pub fn resident_pages(path: &Path) -> usize {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).unwrap();
    let length = file.metadata().unwrap().len() as usize;
    let page = 4096;
    let pages = length.div_ceil(page);
    // SAFETY: a private read-only mapping of an open file, unmapped below; mincore writes `pages` bytes.
    unsafe {
        let address = libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(address, libc::MAP_FAILED, "mmap failed");
        let mut residency = vec![0u8; pages];
        assert_eq!(
            libc::mincore(address, length, residency.as_mut_ptr()),
            0,
            "mincore failed"
        );
        libc::munmap(address, length);
        residency.iter().filter(|byte| **byte & 1 == 1).count()
    }
}
