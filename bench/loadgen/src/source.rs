//! Request sources: which request a connection sends next, and when.
//!
//! Owns: the precomputed request bytes of a class ([`RequestTable`]), the choice of the next request
//! ([`Chooser`]: uniform over URLs, Zipf over a file list, or a trace's order) and the schedule ([`Schedule`]:
//! closed loop, a fixed rate, or a trace's timestamps). One [`ClassSource`] exists per (thread, class); all
//! connections of that class on that thread pull from it in turn, so in open loop a free connection always takes
//! the earliest unsent request (a fixed pool of connections in front of a queue, as a browser farm would be).
//!
//! Invariants: a source is deterministic given its seed; start times handed out are non-decreasing; nothing is
//! handed out at or after the deadline, nor beyond the request budget.
//! Limits: a table holds at most [`REQUESTS_TABLE_MAX`] (10 million) requests of at most [`REQUEST_BYTES_MAX`]
//! (8 KiB) each; `--requests` budgets are shared by a class's threads through one atomic counter.

use larder_workload::Zipf;
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most distinct requests (URLs, files or trace entries) in one class.
pub const REQUESTS_TABLE_MAX: usize = 10_000_000;
/// Longest request (request line and headers) in bytes.
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Index of a request in its class's [`RequestTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestIndex(pub u32);

/// Errors building a request table.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("no requests to send (empty URL list, file list or trace)")]
    Empty,
    #[error("{count} requests exceed the table limit of {REQUESTS_TABLE_MAX}")]
    TooMany { count: usize },
    #[error("request for {path:?} is {bytes} bytes, above the limit of {REQUEST_BYTES_MAX}")]
    TooLong { path: String, bytes: usize },
    #[error("path {path:?} contains a space, CR or LF")]
    BadPath { path: String },
}

/// How requests are written: the Host header, a path prefix, extra header lines and keep-alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTemplate {
    pub host: String,
    pub prefix: String,
    /// Complete header lines without CRLF, e.g. `Accept: */*`.
    pub headers: Vec<String>,
    pub keepalive: bool,
}

/// The bytes of every request a class can send, stored back to back.
#[derive(Clone, Debug)]
pub struct RequestTable {
    bytes: Vec<u8>,
    /// `offsets[i]..offsets[i + 1]` are the bytes of request `i`.
    offsets: Vec<usize>,
}

impl RequestTable {
    /// Builds `GET {prefix}{path} HTTP/1.1` requests for `paths` (a missing leading `/` is added).
    pub fn build<'a>(
        template: &RequestTemplate,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> Result<RequestTable, SourceError> {
        let mut table = RequestTable {
            bytes: Vec::new(),
            offsets: vec![0],
        };
        let mut tail = format!("Host: {}\r\n", template.host);
        for header in &template.headers {
            tail.push_str(header);
            tail.push_str("\r\n");
        }
        if !template.keepalive {
            tail.push_str("Connection: close\r\n");
        }
        tail.push_str("\r\n");
        for path in paths {
            if path.bytes().any(|b| b == b' ' || b == b'\r' || b == b'\n') {
                return Err(SourceError::BadPath {
                    path: path.to_string(),
                });
            }
            if table.len() >= REQUESTS_TABLE_MAX {
                return Err(SourceError::TooMany {
                    count: table.len() + 1,
                });
            }
            let start = table.bytes.len();
            let slash = if path.starts_with('/') || template.prefix.ends_with('/') {
                ""
            } else {
                "/"
            };
            let path = if template.prefix.ends_with('/') {
                path.trim_start_matches('/')
            } else {
                path
            };
            table.bytes.extend_from_slice(b"GET ");
            table.bytes.extend_from_slice(template.prefix.as_bytes());
            table.bytes.extend_from_slice(slash.as_bytes());
            table.bytes.extend_from_slice(path.as_bytes());
            table.bytes.extend_from_slice(b" HTTP/1.1\r\n");
            table.bytes.extend_from_slice(tail.as_bytes());
            let bytes = table.bytes.len() - start;
            if bytes > REQUEST_BYTES_MAX {
                return Err(SourceError::TooLong {
                    path: path.to_string(),
                    bytes,
                });
            }
            table.offsets.push(table.bytes.len());
        }
        if table.is_empty() {
            return Err(SourceError::Empty);
        }
        Ok(table)
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn get(&self, index: RequestIndex) -> &[u8] {
        let i = index.0 as usize;
        &self.bytes[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// Picks the next request.
#[derive(Clone, Debug)]
pub enum Chooser {
    /// Uniformly among `count` requests.
    Uniform { count: u32 },
    /// Zipf popularity: rank 1 (the first line of the file list) is the most popular.
    Zipf(Arc<Zipf>),
    /// A trace in order: positions `next`, `next + stride`, … of `order` (a trace split over threads).
    Sequence {
        order: Arc<[u32]>,
        next: usize,
        stride: usize,
    },
}

impl Chooser {
    /// The next request and its trace position (0 outside traces), or `None` when a trace has run out.
    #[inline]
    pub fn pick<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<(RequestIndex, usize)> {
        match self {
            Chooser::Uniform { count } => Some((RequestIndex(rng.random_range(0..*count)), 0)),
            Chooser::Zipf(zipf) => Some((RequestIndex(zipf.sample(rng) - 1), 0)),
            Chooser::Sequence {
                order,
                next,
                stride,
            } => {
                let position = *next;
                let request = *order.get(position)?;
                *next += *stride;
                Some((RequestIndex(request), position))
            }
        }
    }
}

/// When requests start.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// As fast as the connections allow: a request starts when it is sent.
    Closed,
    /// Open loop: request `k` of this source is due at `first + k * interval_ns`.
    Rate {
        first: Instant,
        interval_ns: f64,
        sent: u64,
    },
    /// Open loop over a trace: the request at trace position `i` is due at `start + offsets[i]`.
    Trace {
        start: Instant,
        offsets: Arc<[Duration]>,
    },
}

/// One request handed to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    pub request: RequestIndex,
    /// Intended start (open loop); `None` in closed loop, where the start is the send time.
    pub due: Option<Instant>,
}

/// The request stream of one class on one thread; see the module docs.
pub struct ClassSource<R> {
    pub chooser: Chooser,
    pub schedule: Schedule,
    pub rng: R,
    /// Nothing starts at or after this instant.
    pub deadline: Option<Instant>,
    /// Requests the class may still send, shared by its threads (`None`: no budget).
    pub budget: Option<Arc<AtomicU64>>,
    finished: bool,
}

impl<R: Rng> ClassSource<R> {
    pub fn new(
        chooser: Chooser,
        schedule: Schedule,
        rng: R,
        deadline: Option<Instant>,
        budget: Option<Arc<AtomicU64>>,
    ) -> Self {
        ClassSource {
            chooser,
            schedule,
            rng,
            deadline,
            budget,
            finished: false,
        }
    }

    /// The next request to send at `now` (closed loop) or at its due time (open loop); `None` when done.
    pub fn next(&mut self, now: Instant) -> Option<Item> {
        if self.finished {
            return None;
        }
        let item = self.next_unchecked(now);
        if item.is_none() {
            self.finished = true;
        }
        item
    }

    fn next_unchecked(&mut self, now: Instant) -> Option<Item> {
        let due = match &mut self.schedule {
            Schedule::Closed => None,
            Schedule::Rate {
                first,
                interval_ns,
                sent,
            } => {
                let due = *first + Duration::from_nanos((*sent as f64 * *interval_ns) as u64);
                *sent += 1;
                Some(due)
            }
            Schedule::Trace { .. } => None,
        };
        let (request, position) = self.chooser.pick(&mut self.rng)?;
        let due = match &self.schedule {
            Schedule::Trace { start, offsets } => Some(*start + offsets[position]),
            _ => due,
        };
        if self
            .deadline
            .is_some_and(|deadline| due.unwrap_or(now) >= deadline)
        {
            return None;
        }
        if let Some(budget) = &self.budget {
            let taken = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            });
            taken.ok()?;
        }
        Some(Item { request, due })
    }
}

/// Derives independent per-(class, thread) seeds from one run seed (SplitMix64 finaliser).
pub fn derive_seed(seed: u64, class: usize, thread: usize) -> u64 {
    let mut z = seed ^ ((class as u64) << 32) ^ (thread as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
