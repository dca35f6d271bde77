//! Per-request distribution on keep-alive connections, measured: HANDOFF (move the connection to the shard that
//! owns the target, as `larder serve` does) against FETCH (ask the owner for the object over the mesh and answer
//! from the shard that holds the connection), side by side in one run, on the real runtime.
//!
//! Run: `cargo bench -p larder-micro --bench distribute` (options after `--`: `--rounds N` measured rounds,
//! default 7; `--requests N` per client per run, default 1,500; `--clients N`, default 4; `--driver epoll|uring`
//! to run one driver only, default both, epoll first; `--spin-us N` to run one `spin_before_park_us` only, default
//! both the runtime's 50 and 0; `--seed N`). Each driver × spin setting is one pool; the designs alternate in it.
//!
//! Why two spin settings: after mesh activity a shard stays awake (yielding) for `spin_before_park_us` of wall
//! time, and that CPU time is counted. HANDOFF sends one message per move, FETCH two per remote request, so the
//! spin can decide the comparison; with 0 the figures show the designs' own cost (every message then pays an
//! eventfd wake-up instead).
//!
//! # Set-up
//! - Two shards of a real `ShardPool`, pinned to CPUs 0 and 1, with the driver under test. Each owns a "cache":
//!   target `t` (0..128) is owned by shard `t % 2`; targets 0..64 are 4 KiB and 64..128 are 64 KiB immutable
//!   `Bytes`, every byte equal to `t as u8`, so a client can check it got the right object.
//! - Each shard has its own loopback listener; client `c` connects to shard `c % 2` (its *landing* shard), so the
//!   landing shard is known and balanced, not left to the `SO_REUSEPORT` hash.
//! - Clients are blocking threads (unpinned), one keep-alive connection each, sending
//!   `GET /t HTTP/1.1\r\nHost: x\r\n\r\n` and reading `Content-Length` bytes of body, one request at a time.
//! - A shard that reads a request for a target it owns answers with one `writev` of a head and a `Bytes` slice
//!   (the server's own `ResponseBufs`). For a target of the other shard it does, by design:
//!   - HANDOFF: detach the connection (`Handoff::from_monoio`: fd + the unparsed request bytes), `try_send` it to
//!     the owner, which adopts it (`ShardContext::adopt`), spawns a connection task and answers — exactly the
//!     server's protocol (`server/src/node/conn.rs` `hand_off`). The connection then lives on the owner.
//!   - FETCH: `try_send` a `Fetch { target, ticket }` to the owner, whose mesh task replies
//!     `Object { ticket, body }` (an `Arc` clone of the cached `Bytes`); the connection task waits for its ticket
//!     and writes the body itself. The connection never moves.
//!
//! # Access patterns (the sequence of target owners a client asks for; landing shard L, other shard O)
//! - `alternate`: O, L, O, L, … Every request is for the shard the connection is *not* on under HANDOFF (each
//!   request moves it: HANDOFF's worst case); under FETCH half the requests are remote.
//! - `runs-8`: 8 × O, 8 × L, … (a page and its embedded objects): HANDOFF moves once per 8 requests, FETCH
//!   fetches for half the requests.
//! - `local`: L only: no distribution at all; the baseline both designs share.
//!   Within an owner, the target is drawn uniformly from its 32 targets of the size under test (seeded PCG).
//!
//! # Metrics (per driver × pattern × size × design; medians over the rounds)
//! - requests/s: wall clock, clients included; noisy on a shared 2-core machine (clients share the cores).
//! - CPU per request: the sum over both shard threads of `CLOCK_THREAD_CPUTIME_ID` (read from this thread with
//!   `pthread_getcpuclockid`) over the run, divided by the requests served. Client threads are not counted; this
//!   is the robust figure.
//! - mesh messages per request: the shards' `mesh_sent` counters over the run.
//! - FETCH/HANDOFF ratios: median over rounds of the per-round ratio (the two designs run back to back in each
//!   round, their order alternating round by round).
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`CLIENTS_MAX`] | 256 | at most one request in flight per connection, so a mesh queue (256) never fills |
//! | [`REQUEST_BYTES_MAX`] | 1 KiB read buffer | the requests are ~30 bytes; a longer one is a bench bug |
//! | [`FETCHES_IN_FLIGHT_MAX`] | 256 per shard | one per connection |
//! | [`RUN_TIMEOUT`] | 60 s per run | turns a hang into a failure |
//!
//! What it leaves out (equal for both designs or absent from both): the server's HTTP parsing, policy lock,
//! containers, timeouts and Date header; cache misses (an owner that must read the file would make FETCH wait on
//! the owner's disk read, and HANDOFF would move the wait with the connection).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder_runtime::mesh::{SHARD_QUEUE_CAPACITY_DEFAULT, SPIN_BEFORE_PARK_US_DEFAULT};
use larder_runtime::{
    Handoff, IoDriver, PoolConfig, ShardContext, ShardId, ShardPool, ShardSelection, Source,
};
use larder_server::node::iov::ResponseBufs;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

/// Most client connections (one request in flight each, so no mesh queue of 256 can fill).
const CLIENTS_MAX: usize = SHARD_QUEUE_CAPACITY_DEFAULT;
/// Most fetches one shard waits for at once (one per connection).
const FETCHES_IN_FLIGHT_MAX: usize = CLIENTS_MAX;
/// Read buffer of a connection; a request longer than this is a bug in the bench's client.
const REQUEST_BYTES_MAX: usize = 1024;
/// Longest a single run may take before the bench gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Shards in the benchmark (target `t` is owned by shard `t % SHARDS`).
const SHARDS: u32 = 2;
/// Targets per size class (half owned by each shard).
const TARGETS_PER_SIZE: u32 = 64;
/// Object sizes under test: targets `class * 64 .. class * 64 + 64` have size `SIZES_BYTES[class]`.
const SIZES_BYTES: [usize; 2] = [4 * 1024, 64 * 1024];
const SEED_DEFAULT: u64 = 0x1a2d_e512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Design {
    Handoff,
    Fetch,
}

impl Design {
    fn name(self) -> &'static str {
        match self {
            Design::Handoff => "handoff",
            Design::Fetch => "fetch",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Alternate,
    Runs8,
    Local,
}

impl Pattern {
    const ALL: [Pattern; 3] = [Pattern::Alternate, Pattern::Runs8, Pattern::Local];

    fn name(self) -> &'static str {
        match self {
            Pattern::Alternate => "alternate",
            Pattern::Runs8 => "runs-8",
            Pattern::Local => "local",
        }
    }

    /// Owner of the `index`-th request of a client that landed on `landing`.
    fn owner(self, index: u64, landing: u32) -> u32 {
        let other = (landing + 1) % SHARDS;
        match self {
            Pattern::Alternate if index % 2 == 0 => other,
            Pattern::Runs8 if (index / 8) % 2 == 0 => other,
            Pattern::Alternate | Pattern::Runs8 | Pattern::Local => landing,
        }
    }
}

/// A mesh message between the two shards.
#[derive(Debug)]
enum Msg {
    /// HANDOFF: a connection (fd + its unanswered request bytes) for the owner to serve.
    Connection(Handoff),
    /// FETCH request: send me `target`, quoting `ticket`.
    Fetch { target: u32, ticket: u64 },
    /// FETCH reply: the object (an `Arc` clone of the owner's buffer).
    Object { ticket: u64, body: Bytes },
    /// From the bench thread (control queue): the runs are over, leave the mesh loop.
    Stop,
}

/// Waiting fetches of one shard, by ticket.
#[derive(Default)]
struct FetchTable {
    slots: RefCell<HashMap<u64, FetchSlot>>,
    next_ticket: Cell<u64>,
}

enum FetchSlot {
    Waiting(Option<Waker>),
    Arrived(Bytes),
}

impl FetchTable {
    fn begin(&self) -> u64 {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        let mut slots = self.slots.borrow_mut();
        assert!(
            slots.len() < FETCHES_IN_FLIGHT_MAX,
            "{} fetches in flight, limit {FETCHES_IN_FLIGHT_MAX}",
            slots.len()
        );
        slots.insert(ticket, FetchSlot::Waiting(None));
        ticket
    }

    fn complete(&self, ticket: u64, body: Bytes) {
        let mut slots = self.slots.borrow_mut();
        let slot = slots
            .get_mut(&ticket)
            .unwrap_or_else(|| panic!("reply for unknown ticket {ticket}"));
        if let FetchSlot::Waiting(Some(waker)) = std::mem::replace(slot, FetchSlot::Arrived(body)) {
            waker.wake();
        }
    }

    fn wait(self: &Rc<Self>, ticket: u64) -> FetchWait {
        FetchWait {
            table: Rc::clone(self),
            ticket,
        }
    }
}

struct FetchWait {
    table: Rc<FetchTable>,
    ticket: u64,
}

impl Future for FetchWait {
    type Output = Bytes;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Bytes> {
        let mut slots = self.table.slots.borrow_mut();
        match slots.remove(&self.ticket) {
            Some(FetchSlot::Arrived(body)) => Poll::Ready(body),
            Some(FetchSlot::Waiting(_)) | None => {
                slots.insert(self.ticket, FetchSlot::Waiting(Some(cx.waker().clone())));
                Poll::Pending
            }
        }
    }
}

/// One shard's state, shared by its tasks.
struct Shard {
    ctx: ShardContext<Msg>,
    /// `cache[t]` is `Some` exactly for the targets this shard owns.
    cache: Vec<Option<Bytes>>,
    design: Arc<AtomicU8>,
    fetches: Rc<FetchTable>,
}

impl Shard {
    fn me(&self) -> u32 {
        self.ctx.shard().0
    }

    fn object(&self, target: u32) -> Bytes {
        self.cache[target as usize].clone().unwrap_or_else(|| {
            panic!(
                "shard {} asked for target {target} it does not own",
                self.me()
            )
        })
    }

    fn design(&self) -> Design {
        match self.design.load(Ordering::Relaxed) {
            0 => Design::Handoff,
            _ => Design::Fetch,
        }
    }

    fn send(&self, to: u32, message: Msg) {
        // Never full: at most one message per connection is in flight (CLIENTS_MAX ≤ queue capacity).
        if let Err(refused) = self.ctx.mesh().try_send(ShardId(to), message) {
            panic!("mesh send to shard {to} refused: {}", refused.error);
        }
    }
}

fn target_count() -> u32 {
    TARGETS_PER_SIZE * SIZES_BYTES.len() as u32
}

fn object_bytes(target: u32) -> usize {
    SIZES_BYTES[(target / TARGETS_PER_SIZE) as usize]
}

/// Position just past the blank line that ends the request head, if the head is complete.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// The target of `GET /<t> HTTP/1.1`.
fn parse_target(head: &[u8]) -> u32 {
    let rest = head
        .strip_prefix(b"GET /")
        .unwrap_or_else(|| panic!("not a GET: {:?}", String::from_utf8_lossy(head)));
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let text = std::str::from_utf8(&rest[..digits]).expect("ASCII digits");
    let target: u32 = text
        .parse()
        .unwrap_or_else(|_| panic!("bad target {text:?}"));
    assert!(target < target_count(), "target {target} out of range");
    target
}

/// Serves one connection on this shard until the client closes it or it is handed to the owner.
async fn serve(
    shard: Rc<Shard>,
    mut stream: monoio::net::TcpStream,
    peer: SocketAddr,
    mut read: Vec<u8>,
) {
    let mut out = ResponseBufs::new();
    loop {
        let end = loop {
            if let Some(end) = head_end(&read) {
                break end;
            }
            assert!(
                read.len() < REQUEST_BYTES_MAX,
                "request over {REQUEST_BYTES_MAX} bytes"
            );
            let filled = read.len();
            let (result, buffer) = stream.read(read.slice_mut(filled..)).await;
            read = buffer.into_inner();
            match result {
                Ok(0) | Err(_) => return, // the client closed: the run is over
                Ok(_) => {}
            }
        };
        let target = parse_target(&read[..end]);
        let owner = target % SHARDS;
        let body = if owner == shard.me() {
            shard.object(target)
        } else {
            match shard.design() {
                Design::Handoff => {
                    // Handoff steps 1-3: the unanswered request travels with the fd.
                    let handoff = Handoff::from_monoio(stream, read, peer).expect("1 KiB fits");
                    shard.send(owner, Msg::Connection(handoff));
                    return;
                }
                Design::Fetch => {
                    let ticket = shard.fetches.begin();
                    shard.send(owner, Msg::Fetch { target, ticket });
                    shard.fetches.wait(ticket).await
                }
            }
        };
        read.drain(..end);
        out.clear();
        let head = out.head_mut();
        head.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: ");
        head.extend_from_slice(body.len().to_string().as_bytes());
        head.extend_from_slice(b"\r\n\r\n");
        out.push_body(body);
        out.seal();
        loop {
            let (result, returned) = stream.writev(out).await;
            out = returned;
            match result {
                Ok(written) if written > 0 => {
                    if out.advance(written) {
                        break;
                    }
                }
                _ => return,
            }
        }
    }
}

/// Receives handed-off connections, fetch requests and fetch replies until shutdown.
///
/// It stops on [`Msg::Stop`] rather than racing `recv` against `shutdown_requested` on every message: the shard
/// doorbell keeps one waker per `shutdown_requested` poll when `Waker::will_wake` fails to recognise the task's
/// own waker (monoio's per-instantiation vtables), so that race grows the shutdown waiter list by one entry per
/// message and each later registration scans it — a cost that grows with the run and would be charged mostly
/// to FETCH, which receives 8× more messages in `runs-8` (seen with `perf`: `LocalBell::register` went from 8%
/// to 23% of shard time between a 1-round and a 4-round run).
async fn mesh_loop(shard: Rc<Shard>) {
    loop {
        let envelope = shard.ctx.mesh().recv().await;
        match envelope.message {
            Msg::Stop => return,
            Msg::Connection(handoff) => {
                // Handoff step 4.
                let (stream, read, peer) = shard.ctx.adopt(handoff).expect("adopt connection");
                shard
                    .ctx
                    .spawn(serve(Rc::clone(&shard), stream, peer, read));
            }
            Msg::Fetch { target, ticket } => {
                let Source::Shard(from) = envelope.from else {
                    panic!("fetch from the control plane")
                };
                shard.send(
                    from.0,
                    Msg::Object {
                        ticket,
                        body: shard.object(target),
                    },
                );
            }
            Msg::Object { ticket, body } => shard.fetches.complete(ticket, body),
        }
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let epoll = shard.ctx.driver() == larder_runtime::DriverKind::Epoll;
    listener.set_nonblocking(epoll).expect("listener mode");
    let listener = monoio::net::TcpListener::from_std(listener).expect("register listener");
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = shard.ctx.shutdown_requested() => return,
        };
        let (stream, peer) = accepted.expect("accept");
        stream.set_nodelay(true).expect("nodelay");
        shard.ctx.spawn(serve(
            Rc::clone(&shard),
            stream,
            peer,
            Vec::with_capacity(REQUEST_BYTES_MAX),
        ));
    }
}

/// Reads a thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID` of another thread, via its clock id), in ns.
fn cpu_ns(clock: libc::clockid_t) -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is writable; `clock` came from pthread_getcpuclockid of a shard thread that is still alive.
    let rc = unsafe { libc::clock_gettime(clock, &mut time) };
    assert_eq!(rc, 0, "clock_gettime on a shard's CPU clock");
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// The calling thread's CPU clock id.
fn own_cpu_clock() -> libc::clockid_t {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is the calling thread; `clock` is writable.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    assert_eq!(rc, 0, "pthread_getcpuclockid");
    clock
}

/// A running two-shard server.
struct Bench {
    pool: ShardPool<Msg>,
    addrs: Vec<SocketAddr>,
    clocks: Vec<libc::clockid_t>,
    design: Arc<AtomicU8>,
}

fn start(driver: IoDriver, spin_before_park_us: u64) -> Bench {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..SHARDS {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        addrs.push(listener.local_addr().expect("bound address"));
        listeners.push(Some(listener));
    }
    let listeners = Arc::new(Mutex::new(listeners));
    let design = Arc::new(AtomicU8::new(0));
    let (clock_tx, clock_rx) = std::sync::mpsc::channel();
    let mut config = PoolConfig {
        shards: ShardSelection::List(vec![larder_runtime::CpuId(0), larder_runtime::CpuId(1)]),
        driver,
        ..PoolConfig::default()
    };
    config.mesh.spin_before_park_us = spin_before_park_us;
    let shared_design = Arc::clone(&design);
    let pool = ShardPool::<Msg>::start(config, move |ctx| {
        let me = ctx.shard().0;
        let listener = listeners.lock().expect("listeners")[me as usize]
            .take()
            .expect("one listener per shard");
        let cache = (0..target_count())
            .map(|t| (t % SHARDS == me).then(|| Bytes::from(vec![t as u8; object_bytes(t)])))
            .collect();
        clock_tx
            .send((me, own_cpu_clock()))
            .expect("bench thread waits");
        let shard = Rc::new(Shard {
            ctx: ctx.clone(),
            cache,
            design: Arc::clone(&shared_design),
            fetches: Rc::new(FetchTable::default()),
        });
        async move {
            ctx.spawn(mesh_loop(Rc::clone(&shard)));
            accept_loop(shard, listener).await;
        }
    })
    .expect("pool starts");
    let mut clocks = vec![0; SHARDS as usize];
    for _ in 0..SHARDS {
        let (shard, clock) = clock_rx
            .recv_timeout(RUN_TIMEOUT)
            .expect("every shard reports its clock");
        clocks[shard as usize] = clock;
    }
    Bench {
        pool,
        addrs,
        clocks,
        design,
    }
}

/// One client connection: `requests` GETs following `pattern`; checks every response's length and content.
fn client(
    addr: SocketAddr,
    landing: u32,
    pattern: Pattern,
    size_class: u32,
    requests: u64,
    seed: u64,
) {
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(RUN_TIMEOUT))
        .expect("read timeout");
    let mut buffer = vec![0u8; SIZES_BYTES[size_class as usize] + REQUEST_BYTES_MAX];
    let mut request = Vec::with_capacity(64);
    for index in 0..requests {
        let owner = pattern.owner(index, landing);
        let pick = rng.random_range(0..TARGETS_PER_SIZE / SHARDS);
        let target = size_class * TARGETS_PER_SIZE + pick * SHARDS + owner;
        request.clear();
        write!(request, "GET /{target} HTTP/1.1\r\nHost: x\r\n\r\n").expect("format");
        stream.write_all(&request).expect("send request");
        let mut filled = 0;
        let (body_start, body_bytes) = loop {
            let n = stream.read(&mut buffer[filled..]).expect("read response");
            assert!(n > 0, "server closed during request {index} (seed {seed})");
            filled += n;
            if let Some(end) = head_end(&buffer[..filled]) {
                let head = std::str::from_utf8(&buffer[..end]).expect("ASCII head");
                assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
                let length = head
                    .split("\r\n")
                    .find_map(|line| line.strip_prefix("Content-Length: "))
                    .and_then(|value| value.parse::<usize>().ok())
                    .expect("Content-Length");
                break (end, length);
            }
        };
        assert_eq!(
            body_bytes,
            object_bytes(target),
            "target {target} (seed {seed})"
        );
        let total = body_start + body_bytes;
        assert!(
            filled <= total,
            "response longer than announced (seed {seed})"
        );
        stream
            .read_exact(&mut buffer[filled..total])
            .expect("read body");
        let body = &buffer[body_start..total];
        assert!(
            body[0] == target as u8 && body[body_bytes - 1] == target as u8,
            "target {target} answered with another object (seed {seed})"
        );
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Sample {
    requests_per_s: f64,
    cpu_ns_per_request: f64,
    mesh_per_request: f64,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    design: Design,
    pattern: Pattern,
    size_class: u32,
    clients: usize,
    requests: u64,
    seed: u64,
}

impl Bench {
    fn mesh_sent(&self) -> u64 {
        self.pool.stats().iter().map(|s| s.mesh_sent).sum()
    }

    fn cpu_ns(&self) -> u64 {
        self.clocks.iter().map(|&clock| cpu_ns(clock)).sum()
    }

    fn run(&self, run: Run) -> Sample {
        let code = match run.design {
            Design::Handoff => 0,
            Design::Fetch => 1,
        };
        self.design.store(code, Ordering::SeqCst);
        let mesh_before = self.mesh_sent();
        let cpu_before = self.cpu_ns();
        let started = Instant::now();
        std::thread::scope(|scope| {
            for c in 0..run.clients {
                let landing = c as u32 % SHARDS;
                let addr = self.addrs[landing as usize];
                let seed = run.seed.wrapping_add(c as u64);
                scope.spawn(move || {
                    client(
                        addr,
                        landing,
                        run.pattern,
                        run.size_class,
                        run.requests,
                        seed,
                    )
                });
            }
        });
        let elapsed = started.elapsed();
        let cpu = self.cpu_ns() - cpu_before;
        let mesh = self.mesh_sent() - mesh_before;
        assert!(
            elapsed < RUN_TIMEOUT,
            "run took {elapsed:?} (seed {})",
            run.seed
        );
        let served = (run.clients as u64 * run.requests) as f64;
        Sample {
            requests_per_s: served / elapsed.as_secs_f64(),
            cpu_ns_per_request: cpu as f64 / served,
            mesh_per_request: mesh as f64 / served,
        }
    }

    fn stop(self) {
        // Every client closed its connection, so the connection tasks have ended.
        for shard in 0..SHARDS {
            let control = self.pool.control(ShardId(shard)).expect("shard exists");
            if let Err(refused) = control.send_timeout(Msg::Stop, RUN_TIMEOUT) {
                panic!("stopping shard {shard}: {}", refused.error);
            }
        }
        self.pool.shutdown();
        let report = self.pool.join().expect("pool stops cleanly");
        assert!(report.fully_drained(), "a task outlived the run");
    }
}

struct Args {
    rounds: usize,
    requests: u64,
    clients: usize,
    drivers: Vec<IoDriver>,
    seed: u64,
    spins_before_park_us: Vec<u64>,
}

/// The value after `name` on the command line, parsed; `None` if the flag is absent.
fn flag<T: std::str::FromStr>(argv: &[String], name: &str) -> Option<T> {
    let at = argv.iter().position(|arg| arg == name)?;
    let value = argv
        .get(at + 1)
        .unwrap_or_else(|| panic!("{name} needs a value"));
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}: cannot parse {value:?}")),
    )
}

fn parse_args() -> Args {
    // Unknown arguments (cargo bench passes --bench) are ignored.
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = Args {
        rounds: flag(&argv, "--rounds").unwrap_or(7),
        requests: flag(&argv, "--requests").unwrap_or(1_500),
        clients: flag(&argv, "--clients").unwrap_or(4),
        drivers: flag(&argv, "--driver")
            .map_or(vec![IoDriver::Epoll, IoDriver::Uring], |d| vec![d]),
        seed: flag(&argv, "--seed").unwrap_or(SEED_DEFAULT),
        spins_before_park_us: flag(&argv, "--spin-us")
            .map_or(vec![SPIN_BEFORE_PARK_US_DEFAULT, 0], |spin| vec![spin]),
    };
    assert!(
        (SHARDS as usize..=CLIENTS_MAX).contains(&args.clients),
        "--clients must be in {SHARDS}..={CLIENTS_MAX}"
    );
    assert!(args.rounds > 0, "--rounds must be at least 1");
    assert!(args.requests > 0, "--requests must be at least 1");
    args
}

/// Median (the mean of the two middle values for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (values[(n - 1) / 2] + values[n / 2]) / 2.0
}

fn size_name(size_class: u32) -> String {
    format!("{}KiB", SIZES_BYTES[size_class as usize] / 1024)
}

/// Samples of one driver: `[pattern][size][design]` → one sample per round.
type Cells = Vec<Vec<[Vec<Sample>; 2]>>;

/// One pool's settings: the I/O driver and the mesh's `spin_before_park_us`.
#[derive(Debug, Clone, Copy)]
struct Setting {
    driver: IoDriver,
    spin_before_park_us: u64,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.driver, self.spin_before_park_us)
    }
}

fn measure(args: &Args, setting: Setting) -> Cells {
    let bench = start(setting.driver, setting.spin_before_park_us);
    let mut cells: Cells = Pattern::ALL
        .iter()
        .map(|_| {
            (0..SIZES_BYTES.len())
                .map(|_| [Vec::new(), Vec::new()])
                .collect()
        })
        .collect();
    // Warm-up: every design and size once, short, not recorded (connections, page faults, allocator).
    for design in [Design::Handoff, Design::Fetch] {
        for size_class in 0..SIZES_BYTES.len() as u32 {
            bench.run(Run {
                design,
                pattern: Pattern::Alternate,
                size_class,
                clients: args.clients,
                requests: (args.requests / 5).max(1),
                seed: args.seed,
            });
        }
    }
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [Design::Handoff, Design::Fetch]
        } else {
            [Design::Fetch, Design::Handoff]
        };
        for (p, &pattern) in Pattern::ALL.iter().enumerate() {
            for size_class in 0..SIZES_BYTES.len() as u32 {
                for design in order {
                    // Both designs of a cell see the same request sequence.
                    let seed = args.seed
                        ^ ((round as u64) << 32 | (p as u64) << 16 | u64::from(size_class) << 8);
                    let sample = bench.run(Run {
                        design,
                        pattern,
                        size_class,
                        clients: args.clients,
                        requests: args.requests,
                        seed,
                    });
                    cells[p][size_class as usize][design as usize].push(sample);
                }
            }
        }
    }
    bench.stop();
    cells
}

fn print_medians(setting: Setting, cells: &Cells) {
    println!(
        "{:<8} {:<9} {:>5} {:<8} {:>9} {:>11} {:>9}",
        "drv/spin", "pattern", "size", "design", "req/s", "cpu_ns/req", "mesh/req"
    );
    for (p, pattern) in Pattern::ALL.iter().enumerate() {
        for (size_class, designs) in cells[p].iter().enumerate() {
            for design in [Design::Handoff, Design::Fetch] {
                let samples = &designs[design as usize];
                println!(
                    "{:<8} {:<9} {:>5} {:<8} {:>9.0} {:>11.0} {:>9.3}",
                    setting.to_string(),
                    pattern.name(),
                    size_name(size_class as u32),
                    design.name(),
                    median(samples.iter().map(|s| s.requests_per_s).collect()),
                    median(samples.iter().map(|s| s.cpu_ns_per_request).collect()),
                    median(samples.iter().map(|s| s.mesh_per_request).collect()),
                );
            }
        }
    }
}

fn print_ratios(setting: Setting, cells: &Cells) {
    println!(
        "{:<8} {:<9} {:>5} {:>18} {:>18}",
        "drv/spin", "pattern", "size", "fetch/handoff req/s", "fetch/handoff cpu"
    );
    for (p, pattern) in Pattern::ALL.iter().enumerate() {
        for (size_class, designs) in cells[p].iter().enumerate() {
            let [handoff, fetch] = designs;
            let paired = |metric: fn(&Sample) -> f64| {
                median(
                    fetch
                        .iter()
                        .zip(handoff)
                        .map(|(f, h)| metric(f) / metric(h))
                        .collect(),
                )
            };
            println!(
                "{:<8} {:<9} {:>5} {:>18.3} {:>18.3}",
                setting.to_string(),
                pattern.name(),
                size_name(size_class as u32),
                paired(|s| s.requests_per_s),
                paired(|s| s.cpu_ns_per_request),
            );
        }
    }
}

/// Extra shard CPU of one HANDOFF move and of one FETCH round trip, from the alternate and local medians.
fn print_step_costs(setting: Setting, cells: &Cells) {
    let alternate = Pattern::ALL
        .iter()
        .position(|&p| p == Pattern::Alternate)
        .expect("alternate is measured");
    let local = Pattern::ALL
        .iter()
        .position(|&p| p == Pattern::Local)
        .expect("local is measured");
    let cpu = |pattern: usize, size_class: usize, design: Design| {
        median(
            cells[pattern][size_class][design as usize]
                .iter()
                .map(|s| s.cpu_ns_per_request)
                .collect(),
        )
    };
    for size_class in 0..SIZES_BYTES.len() {
        let step = |design: Design, steps_per_request: f64| {
            (cpu(alternate, size_class, design) - cpu(local, size_class, design))
                / steps_per_request
        };
        let move_ns = step(Design::Handoff, 1.0);
        let fetch_ns = step(Design::Fetch, 0.5);
        println!(
            "{:<8} {:>5} handoff {:>7.0} ns/move  fetch {:>7.0} ns/round trip  fetch/move {:.2}",
            setting.to_string(),
            size_name(size_class as u32),
            move_ns,
            fetch_ns,
            fetch_ns / move_ns,
        );
    }
}

fn main() {
    let args = parse_args();
    println!(
        "distribute: HANDOFF vs FETCH, 2 shards on CPUs 0-1, {} clients x {} requests per run, {} rounds, seed {}",
        args.clients, args.requests, args.rounds, args.seed
    );
    let started = Instant::now();
    let mut results: Vec<(Setting, Cells)> = Vec::new();
    for &driver in &args.drivers {
        for &spin_before_park_us in &args.spins_before_park_us {
            let setting = Setting {
                driver,
                spin_before_park_us,
            };
            results.push((setting, measure(&args, setting)));
        }
    }
    println!(
        "\nmedians over {} rounds (drv/spin: I/O driver / spin_before_park_us)",
        args.rounds
    );
    for (setting, cells) in &results {
        print_medians(*setting, cells);
    }
    println!("\nFETCH/HANDOFF, median of per-round ratios (cpu < 1: fetch cheaper)");
    for (setting, cells) in &results {
        print_ratios(*setting, cells);
    }
    println!(
        "\nshard CPU of one distribution step: (cpu/req(alternate) - cpu/req(local)) / steps per request \
         (handoff: 1 move per request; fetch: 1 round trip per 2 requests)"
    );
    for (setting, cells) in &results {
        print_step_costs(*setting, cells);
    }
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
}
