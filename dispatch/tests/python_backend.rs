//! The dispatcher in front of a server that is not larder: `python3 -m http.server` serving a temp dir
//! (HTTP/1.0 responses, connection closed after each).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use common::{config, start, Client};
use larder_lard::PolicyKind;

/// The Python server; killed when dropped (also when the test fails).
struct PythonServer {
    child: Child,
    addr: SocketAddr,
}

impl PythonServer {
    fn start(root: &std::path::Path) -> PythonServer {
        let mut child = Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .current_dir(root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let line = BufReader::new(stdout)
            .lines()
            .next()
            .expect("python prints its port")
            .expect("readable line");
        let port: u16 = line
            .split(" port ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        PythonServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The raw response without its `Date` line (the only field that differs between two fetches).
fn without_date(raw: &[u8]) -> Vec<u8> {
    let text = raw.to_vec();
    let head_end = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&text[..head_end])
        .lines()
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&text[head_end..]);
    out
}

#[test]
fn python_http_server_behind_the_dispatcher_is_relayed_byte_for_byte() {
    let root = tempfile::tempdir().expect("temp dir");
    let small = b"hello from python\n".to_vec();
    let big: Vec<u8> = (0..300_001u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(root.path().join("small.txt"), &small).unwrap();
    std::fs::write(root.path().join("big.bin"), &big).unwrap();
    let python = PythonServer::start(root.path());
    let dispatcher = start(config(&[python.addr], PolicyKind::LardR));
    for (path, status, body) in [
        ("/small.txt", 200, Some(&small)),
        ("/big.bin", 200, Some(&big)),
        ("/missing", 404, None),
    ] {
        let through = Client::connect(dispatcher.local_addr())
            .get(path)
            .expect("through the dispatcher");
        let direct = Client::connect(python.addr).get(path).expect("direct");
        assert_eq!(through.status, status, "{path}");
        if let Some(body) = body {
            assert!(through.body == *body, "{path}: body differs from the file");
        }
        assert!(
            without_date(&through.raw) == without_date(&direct.raw),
            "{path}: relayed response differs from python's own"
        );
    }
    // Python closes after each HTTP/1.0 response; the dispatcher closes the client connection too.
    let mut client = Client::connect(dispatcher.local_addr());
    assert_eq!(client.get("/small.txt").expect("response").status, 200);
    assert!(
        client.is_closed(),
        "HTTP/1.0 response without keep-alive ends the connection"
    );
    dispatcher.join().expect("join");
}
