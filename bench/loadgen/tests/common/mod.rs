//! A tiny threaded std::net HTTP/1.1 server for the integration tests (loopback only).
//!
//! It numbers requests in arrival order over all connections and lets a `Behaviour` pick each response, so a test
//! with pipeline depth 1 knows exactly how many of each outcome to expect.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Ok,
    Chunked,
    Status500,
    /// Close the connection without answering.
    Close,
    /// Promise 100 body bytes, send 10, close.
    ShortBody,
    /// Send garbage.
    Garbage,
    /// Never answer; keep the connection open until the client goes away.
    Hang,
}

pub type Behaviour = fn(u64) -> Action;

pub struct TestServer {
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
    pub requests: Arc<AtomicU64>,
    pub by_host: Arc<Mutex<HashMap<String, u64>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

/// Most connections a test server accepts (bounds its accept loop).
const SERVER_CONNECTIONS_MAX: usize = 10_000;

impl TestServer {
    pub fn start(behaviour: Behaviour) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let by_host = Arc::new(Mutex::new(HashMap::new()));
        let (stop2, requests2, by_host2) = (stop.clone(), requests.clone(), by_host.clone());
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming().take(SERVER_CONNECTIONS_MAX) {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (requests, by_host) = (requests2.clone(), by_host2.clone());
                std::thread::spawn(move || serve(stream, behaviour, &requests, &by_host));
            }
        });
        TestServer {
            address,
            stop,
            requests,
            by_host,
            accept: Some(accept),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn serve(
    mut stream: TcpStream,
    behaviour: Behaviour,
    requests: &AtomicU64,
    by_host: &Mutex<HashMap<String, u64>>,
) {
    let mut buffer = Vec::with_capacity(8192);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_string();
            buffer.drain(..end + 4);
            let host = head
                .lines()
                .find_map(|line| line.strip_prefix("Host: "))
                .unwrap_or_default()
                .to_string();
            *by_host.lock().unwrap().entry(host).or_insert(0) += 1;
            let number = requests.fetch_add(1, Ordering::SeqCst);
            let body = b"hello, larder";
            let written = match behaviour(number) {
                Action::Ok => stream.write_all(
                    &[format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(), body].concat(),
                ),
                Action::Chunked => stream.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n8\r\n, larder\r\n0\r\n\r\n",
                ),
                Action::Status500 => stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"),
                Action::Close => return,
                Action::ShortBody => {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b");
                    return;
                }
                Action::Garbage => stream.write_all(b"SMTP is not HTTP\r\n\r\n"),
                Action::Hang => {
                    // Wait for the client to give up (EOF or reset), bounded by the read timeout.
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = stream.read(&mut chunk);
                    return;
                }
            };
            if written.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}
