//! Test peers for the dispatcher: small threaded std::net HTTP/1.1 back-ends that tag every response with
//! their id, and a blocking keep-alive client. Every read has a timeout, every wait a bound.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use larder_dispatch::{DispatchConfig, Dispatcher};
use larder_lard::{PolicyConfig, PolicyKind};

/// Longest a test waits for any socket read.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// What a back-end answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Well-formed responses (see [`expected_response`]).
    Normal,
    /// `NOT HTTP AT ALL\r\n\r\n` for every request.
    Malformed,
}

/// A gate that holds requests for paths starting with `/slow` until opened.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
    /// Requests for `/slow…` that arrived (waiting or not).
    pub arrived: AtomicUsize,
}

impl Gate {
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }

    fn wait(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            let (guard, timeout) = self.changed.wait_timeout(open, IO_TIMEOUT).unwrap();
            open = guard;
            assert!(!timeout.timed_out(), "gate never opened");
        }
    }

    /// Waits (bounded) until `count` requests arrived.
    pub fn wait_arrived(&self, count: usize) {
        for _ in 0..2_000 {
            if self.arrived.load(Ordering::SeqCst) >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "only {} of {count} requests arrived",
            self.arrived.load(Ordering::SeqCst)
        );
    }
}

/// A running test back-end.
pub struct Backend {
    pub id: u32,
    pub addr: SocketAddr,
    pub gate: Arc<Gate>,
    pub served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    pub fn start(id: u32, mode: Mode) -> Backend {
        Self::start_on(id, mode, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts on a given address (a returning node binds its old port again).
    pub fn start_on(id: u32, mode: Mode, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).expect("bind back-end");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Gate::default());
        let served = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let stop = Arc::clone(&stop);
            let connections = Arc::clone(&connections);
            let gate = Arc::clone(&gate);
            let served = Arc::clone(&served);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    connections
                        .lock()
                        .unwrap()
                        .push(stream.try_clone().unwrap());
                    let gate = Arc::clone(&gate);
                    let served = Arc::clone(&served);
                    std::thread::spawn(move || serve(id, mode, stream, &gate, &served));
                }
            })
        };
        Backend {
            id,
            addr,
            gate,
            served,
            stop,
            connections,
            acceptor: Some(acceptor),
        }
    }

    /// Kills the back-end: closes the listener and resets every connection.
    pub fn kill(mut self) -> SocketAddr {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.addr
    }
}

/// The body a normal back-end answers for `path`.
pub fn body_for(id: u32, path: &str) -> Vec<u8> {
    if path.starts_with("/big") {
        (0..1_000_003u32).map(|i| (i * 7 + id) as u8).collect()
    } else {
        format!("backend {id} path {path}\n").into_bytes()
    }
}

/// The exact bytes a normal back-end answers (its responses carry no date: they are reproducible).
pub fn expected_response(id: u32, method: &str, path: &str) -> Vec<u8> {
    let body = body_for(id, path);
    let mut response = Vec::new();
    if path.starts_with("/chunked") {
        response.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\nX-Backend: {id}\r\nTransfer-Encoding: chunked\r\n\r\n")
                .as_bytes(),
        );
        if method != "HEAD" {
            for piece in body.chunks(7) {
                response.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
                response.extend_from_slice(piece);
                response.extend_from_slice(b"\r\n");
            }
            response.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
        }
        return response;
    }
    response.extend_from_slice(
        format!(
            "HTTP/1.1 200 OK\r\nX-Backend: {id}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    if method != "HEAD" {
        response.extend_from_slice(&body);
    }
    response
}

fn serve(id: u32, mode: Mode, mut stream: TcpStream, gate: &Gate, served: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let (method, path, head_bytes, body_bytes, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = request.parse(&buf) {
                let length = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| {
                        std::str::from_utf8(h.value)
                            .unwrap()
                            .parse::<usize>()
                            .unwrap()
                    })
                    .unwrap_or(0);
                let close = request
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("connection") && h.value == b"close");
                break (
                    request.method.unwrap().to_string(),
                    request.path.unwrap().to_string(),
                    head,
                    length,
                    close,
                );
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_bytes + body_bytes {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_bytes + body_bytes);
        if path.starts_with("/slow") {
            gate.wait();
        }
        let response = match mode {
            Mode::Normal => expected_response(id, &method, &path),
            Mode::Malformed => b"NOT HTTP AT ALL\r\n\r\n".to_vec(),
        };
        if stream.write_all(&response).is_err() {
            return;
        }
        served.fetch_add(1, Ordering::SeqCst);
        if close {
            return;
        }
    }
}

/// A keep-alive HTTP/1.1 client on one connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One response as received: the raw bytes, the status and the `X-Backend` tag.
#[derive(Debug)]
pub struct Response {
    pub raw: Vec<u8>,
    pub status: u16,
    pub backend: Option<u32>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the dispatcher");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.request("GET", path)
    }

    pub fn request(&mut self, method: &str, path: &str) -> std::io::Result<Response> {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.stream.write_all(request.as_bytes())?;
        self.read_response(method == "HEAD")
    }

    /// Reads one response (Content-Length or chunked framing; HEAD: no body).
    pub fn read_response(&mut self, head_request: bool) -> std::io::Result<Response> {
        let mut chunk = [0u8; 65536];
        let (status, head_bytes, headers) = loop {
            let mut parsed = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut parsed);
            if let Ok(httparse::Status::Complete(head)) = response.parse(&self.buf) {
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (response.code.unwrap(), head, headers);
            }
            self.fill(&mut chunk)?;
        };
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let chunked = find("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let mut body = Vec::new();
        let end = if head_request {
            head_bytes
        } else if chunked {
            let mut at = head_bytes;
            loop {
                let line_end = loop {
                    if let Some(pos) = self.buf[at..].windows(2).position(|w| w == b"\r\n") {
                        break at + pos;
                    }
                    self.fill(&mut chunk)?;
                };
                let line = std::str::from_utf8(&self.buf[at..line_end]).unwrap();
                let size = usize::from_str_radix(line.split(';').next().unwrap(), 16).unwrap();
                at = line_end + 2;
                if size == 0 {
                    // Trailer lines until the empty line.
                    loop {
                        let line_end = loop {
                            if let Some(pos) = self.buf[at..].windows(2).position(|w| w == b"\r\n")
                            {
                                break at + pos;
                            }
                            self.fill(&mut chunk)?;
                        };
                        let empty = line_end == at;
                        at = line_end + 2;
                        if empty {
                            break;
                        }
                    }
                    break at;
                }
                while self.buf.len() < at + size + 2 {
                    self.fill(&mut chunk)?;
                }
                body.extend_from_slice(&self.buf[at..at + size]);
                at += size + 2;
            }
        } else {
            let length: usize = find("content-length").map_or(0, |v| v.parse().unwrap());
            while self.buf.len() < head_bytes + length {
                self.fill(&mut chunk)?;
            }
            body.extend_from_slice(&self.buf[head_bytes..head_bytes + length]);
            head_bytes + length
        };
        let raw: Vec<u8> = self.buf.drain(..end).collect();
        Ok(Response {
            raw,
            status,
            backend: find("x-backend").map(|v| v.parse().unwrap()),
            headers,
            body,
        })
    }

    fn fill(&mut self, chunk: &mut [u8]) -> std::io::Result<()> {
        let n = self.stream.read(chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// True when the server closed the connection (EOF) within the timeout.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

/// A dispatcher config for tests: 2 unpinned shards, health checks effectively off unless asked for.
pub fn config(backends: &[SocketAddr], kind: PolicyKind) -> DispatchConfig {
    DispatchConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        backends: backends.to_vec(),
        policy: PolicyConfig::new(kind),
        cores: "2".parse().unwrap(),
        pin: false,
        health_interval_ms: 3_600_000,
        ..DispatchConfig::default()
    }
}

pub fn start(config: DispatchConfig) -> Dispatcher {
    Dispatcher::start(config).expect("start the dispatcher")
}

/// Two normal back-ends (ids 0 and 1) behind a dispatcher running `kind`.
pub fn two_backends(kind: PolicyKind) -> ([Backend; 2], Dispatcher) {
    let backends = [
        Backend::start(0, Mode::Normal),
        Backend::start(1, Mode::Normal),
    ];
    let dispatcher = start(config(&[backends[0].addr, backends[1].addr], kind));
    (backends, dispatcher)
}

/// Sends up to 200 requests for new targets `<prefix><i>`; true once one is served by `backend`.
pub fn reaches(client: &mut Client, prefix: &str, backend: u32) -> bool {
    (0..200).any(|index| {
        client
            .get(&format!("{prefix}{index}"))
            .expect("response")
            .backend
            == Some(backend)
    })
}
