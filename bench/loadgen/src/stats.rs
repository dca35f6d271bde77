//! Outcome accounting: every request sent in the measured window ends in exactly one outcome.
//!
//! Owns: [`ErrorKind`], per-class counters ([`ClassStats`]) kept by each generator thread without sharing, their
//! exact merge after the run, and the lock-free [`Progress`] counters the live progress line reads.
//!
//! Invariant (checked by the end-to-end tests): `sent == ok + bad_status + timeout + short_body + parse + closed`
//! once the run has drained. `connect` errors are failed connection attempts, not requests, so they are not in
//! that sum. A request is in the measured window when its start time (intended time in open loop, send time in
//! closed loop) is at or after the end of the warm-up.

use crate::histogram::LatencyHistogram;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a request (or a connection attempt) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A connection attempt failed or timed out (not a request).
    Connect,
    /// No response byte for `--timeout` while the request was in flight (each read is bounded, not the whole
    /// response; in open loop the latency still counts from the intended start).
    Timeout,
    /// A response with status 400 or above (the response itself was read completely).
    BadStatus,
    /// The connection ended in the middle of a response.
    ShortBody,
    /// The response could not be parsed.
    Parse,
    /// The connection closed (or failed) before any byte of this request's response arrived.
    Closed,
}

/// Error counts by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    pub bad_status: u64,
    pub short_body: u64,
    pub parse: u64,
    pub closed: u64,
}

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind, count: u64) {
        let slot = match kind {
            ErrorKind::Connect => &mut self.connect,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::BadStatus => &mut self.bad_status,
            ErrorKind::ShortBody => &mut self.short_body,
            ErrorKind::Parse => &mut self.parse,
            ErrorKind::Closed => &mut self.closed,
        };
        *slot += count;
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.bad_status += other.bad_status;
        self.short_body += other.short_body;
        self.parse += other.parse;
        self.closed += other.closed;
    }

    /// All errors, connection attempts included.
    pub fn total(&self) -> u64 {
        self.connect + self.request_errors()
    }

    /// Errors that ended a request (everything but `connect`).
    pub fn request_errors(&self) -> u64 {
        self.timeout + self.bad_status + self.short_body + self.parse + self.closed
    }
}

/// What one thread saw for one class in the measured window.
#[derive(Clone, Debug, Default)]
pub struct ClassStats {
    pub sent: u64,
    /// Responses with status below 400.
    pub ok: u64,
    /// Response bytes read (heads and bodies) for every completed response, good or bad.
    pub bytes: u64,
    pub errors: ErrorCounts,
    /// Latency of `ok` responses only.
    pub latency: LatencyHistogram,
}

impl ClassStats {
    pub fn merge(&mut self, other: &ClassStats) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.bytes += other.bytes;
        self.errors.merge(&other.errors);
        self.latency.merge(&other.latency);
    }
}

/// Counters one thread publishes for the live progress line (relaxed atomics; read approximately).
#[derive(Debug, Default)]
pub struct Progress {
    pub responses: AtomicU64,
    pub errors: AtomicU64,
}

impl Progress {
    #[inline]
    pub fn add(&self, responses: u64, errors: u64) {
        if responses > 0 {
            self.responses.fetch_add(responses, Ordering::Relaxed);
        }
        if errors > 0 {
            self.errors.fetch_add(errors, Ordering::Relaxed);
        }
    }

    pub fn read(&self) -> (u64, u64) {
        (
            self.responses.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}
