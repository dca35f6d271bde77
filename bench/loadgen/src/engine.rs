//! The generator: one pinned monoio thread per CPU, each driving its share of every class's connections.
//!
//! Owns: thread start-up and pinning, the per-connection request/response loop, error accounting and the run's
//! clock (start, end of warm-up, deadline).
//!
//! A run, step by step:
//! 1. `run` builds each class's request table once (shared read-only by the threads) and fixes three instants:
//!    `start`, `measure_start = start + warmup` and `deadline = measure_start + duration`.
//! 2. It starts one thread per CPU in `cores`; thread `t` pins itself, builds its monoio runtime (io_uring or
//!    epoll), and opens connection `j` of each class when `j % threads == t`.
//! 3. Each connection loops: take requests from the class's thread-local source until the pipeline is full
//!    (open loop: sleep until the first one is due), write them in one write, read, parse every complete
//!    response, record it, repeat. A response with `Connection: close`, an EOF, a parse error or a timeout ends
//!    the connection: its unanswered requests are counted as errors of the matching kind and it reconnects.
//! 4. Past the deadline (or when the budget or trace is used up) sources hand out nothing; connections drain
//!    their in-flight requests (bounded by the timeout) and end; the thread returns its counters.
//! 5. `run` merges the per-thread counters and histograms exactly and builds the report.
//!
//! Latency is measured from the request's start: its intended time in open loop (so a stalled server is charged
//! for the requests it delayed — no coordinated omission) and its send time in closed loop. It is taken once per
//! read, so responses that arrive in one read share one end time.
//!
//! Limits: [`READ_BUFFER_BYTES`] (32 KiB) per connection, so 10 000 connections hold 320 MB of read buffers (a
//! response head must fit in one); a write buffer of at most `pipeline × 8 KiB`; [`CONNECT_RETRY_MS`] (10 ms)
//! between failed connection attempts and [`CONNECT_FAILURES_MAX`] (500) consecutive failures before a connection
//! gives up; [`URING_ENTRIES`] (4096) io_uring entries per thread.

use crate::config::{DriverChoice, RunConfig, WorkloadSpec};
use crate::cores::{pin_current_thread, CoreId};
use crate::report::RunReport;
use crate::response::{Completed, ResponseParser, HEAD_BYTES_MAX};
use crate::source::{
    derive_seed, Chooser, ClassSource, Item, RequestTable, RequestTemplate, Schedule, SourceError,
};
use crate::stats::{ClassStats, ErrorKind, Progress};
use larder_workload::{seeded_rng, Rng64, Zipf};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Read buffer per connection, in bytes; also the largest response head accepted.
pub const READ_BUFFER_BYTES: usize = HEAD_BYTES_MAX;
/// Pause after a failed connection attempt.
pub const CONNECT_RETRY_MS: u64 = 10;
/// Consecutive failed connection attempts after which a connection gives up (about 5 s of refusals), so a run
/// bounded only by `--requests` ends when the server is gone.
pub const CONNECT_FAILURES_MAX: u32 = 500;
/// io_uring submission queue entries per thread.
pub const URING_ENTRIES: u32 = 4096;

/// Errors that stop a run before it measures anything.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("zipf: {0}")]
    Zipf(String),
    #[error("trace: {0}")]
    Trace(String),
    #[error("generator thread on CPU {core}: {reason}")]
    Thread { core: CoreId, reason: String },
}

/// What the live progress line shows: totals so far over all threads.
#[derive(Clone, Copy, Debug)]
pub struct ProgressSnapshot {
    pub elapsed: Duration,
    pub responses: u64,
    pub errors: u64,
}

/// Everything a thread needs, shared read-only.
struct Shared {
    address: SocketAddr,
    keepalive: bool,
    timeout: Option<Duration>,
    measure_start: Instant,
    deadline: Option<Instant>,
    classes: Vec<SharedClass>,
}

struct SharedClass {
    table: RequestTable,
    chooser: Chooser,
    connections: usize,
    pipeline: usize,
    rate_per_sec: Option<f64>,
    trace: Option<Arc<[Duration]>>,
    budget: Option<Arc<AtomicU64>>,
    seed: u64,
}

/// What a thread hands back.
struct ThreadResult {
    classes: Vec<ClassStats>,
    finished: Instant,
    driver: &'static str,
}

/// Runs one measurement; calls `on_progress` about once a second while it runs.
pub fn run(
    config: &RunConfig,
    mut on_progress: impl FnMut(ProgressSnapshot),
) -> Result<RunReport, RunError> {
    config.validate()?;
    let mut classes = Vec::with_capacity(config.classes.len());
    let start = Instant::now();
    let measure_start = start + config.warmup;
    let deadline = config.duration.map(|duration| measure_start + duration);
    for class in &config.classes {
        let template = RequestTemplate {
            host: class.host.clone(),
            prefix: class.prefix.clone(),
            headers: config.headers.clone(),
            keepalive: config.keepalive,
        };
        let paths = class.workload.paths();
        let table = RequestTable::build(&template, paths.iter().map(String::as_str))?;
        let count = table.len() as u32;
        let (chooser, trace) = match &class.workload {
            WorkloadSpec::Urls(_) => (Chooser::Uniform { count }, None),
            WorkloadSpec::Files { alpha, .. } => {
                let zipf = Zipf::new(u64::from(count), *alpha)
                    .map_err(|e| RunError::Zipf(e.to_string()))?;
                (Chooser::Zipf(Arc::new(zipf)), None)
            }
            WorkloadSpec::Replay {
                order,
                offsets,
                speed,
                ..
            } => {
                if let Some(&bad) = order.iter().find(|&&i| i >= count) {
                    return Err(RunError::Trace(format!(
                        "trace names request {bad} of {count}"
                    )));
                }
                if speed.is_some() && offsets.len() != order.len() {
                    return Err(RunError::Trace(format!(
                        "{} offsets for {} requests",
                        offsets.len(),
                        order.len()
                    )));
                }
                let threads = config.cores.len().min(class.connections);
                let chooser = Chooser::Sequence {
                    order: order.as_slice().into(),
                    next: 0,
                    stride: threads,
                };
                let scaled =
                    speed.map(|speed| offsets.iter().map(|offset| offset.div_f64(speed)).collect());
                (chooser, scaled)
            }
        };
        classes.push(SharedClass {
            table,
            chooser,
            connections: class.connections,
            pipeline: class.pipeline,
            rate_per_sec: class.rate_per_sec,
            trace,
            budget: class.requests_max.map(|n| Arc::new(AtomicU64::new(n))),
            seed: class.seed,
        });
    }
    let shared = Arc::new(Shared {
        address: config.address,
        keepalive: config.keepalive,
        timeout: (!config.timeout.is_zero()).then_some(config.timeout),
        measure_start,
        deadline,
        classes,
    });

    let threads = config.cores.len();
    let (done_tx, done_rx) = mpsc::channel();
    let mut progress = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for (thread_index, &core) in config.cores.ids().iter().enumerate() {
        let thread_progress = Arc::new(Progress::default());
        progress.push(thread_progress.clone());
        let shared = shared.clone();
        let driver = config.driver;
        let done_tx = done_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("larder-bench-{core}"))
            .spawn(move || {
                let result = thread_main(
                    &shared,
                    driver,
                    core,
                    thread_index,
                    threads,
                    thread_progress,
                );
                let _ = done_tx.send(());
                result
            })
            .map_err(|e| RunError::Thread {
                core,
                reason: e.to_string(),
            })?;
        handles.push((core, handle));
    }
    drop(done_tx);

    let mut running = threads;
    while running > 0 {
        match done_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(()) => running -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let (responses, errors) = progress
                    .iter()
                    .map(|p| p.read())
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                on_progress(ProgressSnapshot {
                    elapsed: start.elapsed(),
                    responses,
                    errors,
                });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }

    let mut totals: Vec<ClassStats> = config
        .classes
        .iter()
        .map(|_| ClassStats::default())
        .collect();
    let mut finished = measure_start;
    let mut driver_name = "";
    for (core, handle) in handles {
        let result = handle
            .join()
            .map_err(|_| RunError::Thread {
                core,
                reason: "panicked".into(),
            })?
            .map_err(|reason| RunError::Thread { core, reason })?;
        for (total, stats) in totals.iter_mut().zip(&result.classes) {
            total.merge(stats);
        }
        finished = finished.max(result.finished);
        driver_name = result.driver;
    }
    let elapsed = match config.duration {
        Some(duration) => duration
            .min(finished.saturating_duration_since(measure_start))
            .max(Duration::from_micros(1)),
        None => finished
            .saturating_duration_since(measure_start)
            .max(Duration::from_micros(1)),
    };
    Ok(RunReport::new(config, driver_name, elapsed, &totals))
}

fn thread_main(
    shared: &Arc<Shared>,
    driver: DriverChoice,
    core: CoreId,
    thread_index: usize,
    threads: usize,
    progress: Arc<Progress>,
) -> Result<ThreadResult, String> {
    pin_current_thread(core).map_err(|e| e.to_string())?;
    let work = || thread_body(shared.clone(), thread_index, threads, progress);
    let (classes, driver) =
        block_on(driver, work).map_err(|e| format!("cannot start the monoio runtime: {e}"))?;
    Ok(ThreadResult {
        classes,
        finished: Instant::now(),
        driver,
    })
}

/// Runs `work` on a fresh monoio runtime of the chosen driver; returns its output and the driver's name.
fn block_on<F, W>(driver: DriverChoice, work: W) -> std::io::Result<(F::Output, &'static str)>
where
    W: FnOnce() -> F,
    F: Future,
{
    let uring = || {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(URING_ENTRIES)
            .enable_timer()
    };
    let epoll = || monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer();
    match driver {
        DriverChoice::Uring => Ok((uring().build()?.block_on(work()), "uring")),
        DriverChoice::Epoll => Ok((epoll().build()?.block_on(work()), "epoll")),
        DriverChoice::Auto if monoio::utils::detect_uring() => match uring().build() {
            Ok(mut runtime) => Ok((runtime.block_on(work()), "uring")),
            Err(_) => Ok((epoll().build()?.block_on(work()), "epoll")),
        },
        DriverChoice::Auto => Ok((epoll().build()?.block_on(work()), "epoll")),
    }
}

/// Per (thread, class) state shared by that class's connections on this thread.
struct ClassLocal {
    index: usize,
    source: RefCell<ClassSource<Rng64>>,
    stats: RefCell<ClassStats>,
}

async fn thread_body(
    shared: Arc<Shared>,
    thread_index: usize,
    threads: usize,
    progress: Arc<Progress>,
) -> Vec<ClassStats> {
    let mut tasks = Vec::new();
    let mut locals = Vec::with_capacity(shared.classes.len());
    for (class_index, class) in shared.classes.iter().enumerate() {
        let mine = (thread_index..class.connections).step_by(threads).count();
        let mut chooser = class.chooser.clone();
        if let Chooser::Sequence { next, .. } = &mut chooser {
            *next = thread_index;
        }
        let schedule = match (&class.trace, class.rate_per_sec) {
            (Some(offsets), _) => Schedule::Trace {
                start: shared.measure_start,
                offsets: offsets.clone(),
            },
            (None, Some(rate)) if mine > 0 => {
                let thread_rate = rate * mine as f64 / class.connections as f64;
                let interval_ns = 1e9 / thread_rate;
                let phase = Duration::from_nanos(
                    (interval_ns * thread_index as f64 / threads as f64) as u64,
                );
                Schedule::Rate {
                    first: Instant::now() + phase,
                    interval_ns,
                    sent: 0,
                }
            }
            _ => Schedule::Closed,
        };
        let rng = seeded_rng(derive_seed(class.seed, class_index, thread_index));
        let source = ClassSource::new(
            chooser,
            schedule,
            rng,
            shared.deadline,
            class.budget.clone(),
        );
        let local = Rc::new(ClassLocal {
            index: class_index,
            source: RefCell::new(source),
            stats: RefCell::new(ClassStats::default()),
        });
        for _ in 0..mine {
            let connection = Connection::new(shared.clone(), local.clone(), progress.clone());
            tasks.push(monoio::spawn(connection.run()));
        }
        locals.push(local);
    }
    for task in tasks {
        task.await;
    }
    locals
        .iter()
        .map(|local| local.stats.replace(ClassStats::default()))
        .collect()
}

/// Why a connection ended.
enum Ending {
    /// Nothing more to send and nothing in flight.
    Done,
    /// Reconnect; the in-flight requests were already accounted.
    Reconnect,
}

/// One client connection (reconnecting as needed); see step 3 in the module docs.
struct Connection {
    shared: Arc<Shared>,
    class: Rc<ClassLocal>,
    progress: Arc<Progress>,
    /// Start instants of the requests written and not yet answered, oldest first.
    in_flight: VecDeque<Instant>,
    /// A request taken from the source but not yet due or not yet written.
    pending: Option<Item>,
    read_buffer: Vec<u8>,
    write_buffer: Vec<u8>,
    pipeline: usize,
}

impl Connection {
    fn new(shared: Arc<Shared>, class: Rc<ClassLocal>, progress: Arc<Progress>) -> Connection {
        let pipeline = shared.classes[class.index].pipeline;
        Connection {
            shared,
            class,
            progress,
            in_flight: VecDeque::with_capacity(pipeline),
            pending: None,
            read_buffer: Vec::with_capacity(READ_BUFFER_BYTES),
            write_buffer: Vec::with_capacity(pipeline * 512),
            pipeline,
        }
    }

    async fn run(mut self) {
        let mut failures = 0;
        loop {
            if self.pending.is_none() {
                self.pending = self.class.source.borrow_mut().next(Instant::now());
                if self.pending.is_none() {
                    return;
                }
            }
            if let Some(due) = self.pending.and_then(|item| item.due) {
                sleep_until(due).await;
            }
            let Some(stream) = self.connect().await else {
                failures += 1;
                if failures >= CONNECT_FAILURES_MAX {
                    return;
                }
                monoio::time::sleep(Duration::from_millis(CONNECT_RETRY_MS)).await;
                if self
                    .shared
                    .deadline
                    .is_some_and(|deadline| Instant::now() >= deadline)
                {
                    return;
                }
                continue;
            };
            failures = 0;
            match self.serve(stream).await {
                Ending::Done => return,
                Ending::Reconnect => continue,
            }
        }
    }

    async fn connect(&mut self) -> Option<TcpStream> {
        let attempt = TcpStream::connect_addr(self.shared.address);
        let result = match self.shared.timeout {
            Some(timeout) => monoio::time::timeout(timeout, attempt)
                .await
                .unwrap_or_else(|_| Err(timed_out())),
            None => attempt.await,
        };
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Some(stream)
            }
            Err(_) => {
                if Instant::now() >= self.shared.measure_start {
                    self.class
                        .stats
                        .borrow_mut()
                        .errors
                        .add(ErrorKind::Connect, 1);
                    self.progress.add(0, 1);
                }
                None
            }
        }
    }

    /// Sends and receives on one connection until it ends.
    async fn serve(&mut self, mut stream: TcpStream) -> Ending {
        let mut parser = ResponseParser::new();
        self.read_buffer.clear();
        loop {
            if !self.fill_pipeline().await {
                return Ending::Done;
            }
            if !self.write_buffer.is_empty() {
                let buffer = std::mem::take(&mut self.write_buffer);
                let (result, mut buffer) = stream.write_all(buffer).await;
                buffer.clear();
                self.write_buffer = buffer;
                if result.is_err() {
                    self.fail_in_flight(ErrorKind::Closed);
                    return Ending::Reconnect;
                }
            }
            if self.read_buffer.len() == self.read_buffer.capacity() {
                self.fail_front_then_close(ErrorKind::Parse);
                return Ending::Reconnect;
            }
            let filled = self.read_buffer.len();
            let slice = std::mem::take(&mut self.read_buffer).slice_mut(filled..);
            let read = stream.read(slice);
            let (result, slice) = match self.shared.timeout {
                Some(timeout) => match monoio::time::timeout(timeout, read).await {
                    Ok(done) => done,
                    Err(_) => {
                        self.read_buffer = Vec::with_capacity(READ_BUFFER_BYTES);
                        self.fail_in_flight(ErrorKind::Timeout);
                        return Ending::Reconnect;
                    }
                },
                None => read.await,
            };
            self.read_buffer = slice.into_inner();
            let now = Instant::now();
            match result {
                Ok(0) => {
                    match parser.finish_at_eof() {
                        Some(completed) => self.complete(completed, now),
                        None if !parser.at_response_start() => {
                            self.fail_front(ErrorKind::ShortBody)
                        }
                        None => {}
                    }
                    self.fail_in_flight(ErrorKind::Closed);
                    return Ending::Reconnect;
                }
                Ok(_) => {}
                Err(_) => {
                    let kind = if parser.at_response_start() {
                        ErrorKind::Closed
                    } else {
                        ErrorKind::ShortBody
                    };
                    self.fail_front_then_close(kind);
                    return Ending::Reconnect;
                }
            }
            match self.parse_responses(&mut parser, now) {
                Ok(false) => {}
                Ok(true) => {
                    self.fail_in_flight(ErrorKind::Closed);
                    return Ending::Reconnect;
                }
                Err(()) => {
                    self.fail_front_then_close(ErrorKind::Parse);
                    return Ending::Reconnect;
                }
            }
        }
    }

    /// Takes requests from the source into the write buffer until the pipeline is full.
    /// Returns false when the connection has nothing left to do (no request to send and none in flight).
    async fn fill_pipeline(&mut self) -> bool {
        while self.in_flight.len() < self.pipeline {
            let now = Instant::now();
            let item = match self.pending.take() {
                Some(item) => item,
                None => match self.class.source.borrow_mut().next(now) {
                    Some(item) => item,
                    None => break,
                },
            };
            let start = match item.due {
                Some(due)
                    if due > now
                        && (!self.in_flight.is_empty() || !self.write_buffer.is_empty()) =>
                {
                    self.pending = Some(item);
                    break;
                }
                Some(due) => {
                    sleep_until(due).await;
                    due
                }
                None => now,
            };
            let shared = &self.shared;
            self.write_buffer
                .extend_from_slice(shared.classes[self.class.index].table.get(item.request));
            self.in_flight.push_back(start);
            if start >= shared.measure_start {
                self.class.stats.borrow_mut().sent += 1;
            }
        }
        !self.in_flight.is_empty()
    }

    /// Parses every complete response in the read buffer and keeps the unparsed rest at its front.
    /// Returns Ok(true) when the connection must close after the last response.
    fn parse_responses(&mut self, parser: &mut ResponseParser, now: Instant) -> Result<bool, ()> {
        let mut at = 0;
        let mut close = false;
        let mut answered = 0u64;
        let mut bad = 0u64;
        while at < self.read_buffer.len() {
            let fed = parser.feed(&self.read_buffer[at..]).map_err(|_| ())?;
            at += fed.consumed;
            let Some(completed) = fed.completed else {
                break;
            };
            if self.in_flight.is_empty() {
                return Err(());
            }
            answered += 1;
            bad += u64::from(completed.status >= 400);
            self.complete(completed, now);
            if completed.close || !self.shared.keepalive {
                close = true;
                break;
            }
        }
        let rest = self.read_buffer.len() - at;
        self.read_buffer.copy_within(at.., 0);
        self.read_buffer.truncate(rest);
        self.progress.add(answered, bad);
        Ok(close)
    }

    fn complete(&mut self, completed: Completed, now: Instant) {
        let Some(start) = self.in_flight.pop_front() else {
            return;
        };
        if start < self.shared.measure_start {
            return;
        }
        let mut stats = self.class.stats.borrow_mut();
        stats.bytes += completed.bytes;
        if completed.status >= 400 {
            stats.errors.add(ErrorKind::BadStatus, 1);
        } else {
            stats.ok += 1;
            stats.latency.record(now.saturating_duration_since(start));
        }
    }

    /// Counts the oldest in-flight request as `kind`.
    fn fail_front(&mut self, kind: ErrorKind) {
        if let Some(start) = self.in_flight.pop_front() {
            self.count_failure(start, kind);
        }
    }

    fn fail_front_then_close(&mut self, kind: ErrorKind) {
        self.fail_front(kind);
        self.fail_in_flight(ErrorKind::Closed);
    }

    /// Counts every in-flight request as `kind`.
    fn fail_in_flight(&mut self, kind: ErrorKind) {
        while let Some(start) = self.in_flight.pop_front() {
            self.count_failure(start, kind);
        }
    }

    fn count_failure(&self, start: Instant, kind: ErrorKind) {
        if start >= self.shared.measure_start {
            self.class.stats.borrow_mut().errors.add(kind, 1);
            self.progress.add(0, 1);
        }
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
}

async fn sleep_until(due: Instant) {
    if due > Instant::now() {
        monoio::time::sleep_until(monoio::time::Instant::from_std(due)).await;
    }
}
