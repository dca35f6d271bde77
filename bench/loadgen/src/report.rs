//! The run report: totals and per-class figures, as text or as one JSON object.
//!
//! Owns: the JSON schema scripts depend on. Top level: `requests_per_sec`, `bytes_per_sec`, `errors` (a count of
//! all errors, connection attempts included), `errors_by_kind`, `latency_ms` (`p50`, `p90`, `p99`, `p999`, `max`,
//! `mean`, `count`), `sent`, `responses`, `ok`, `duration_s`, `driver`, `threads`, `connections`, and `classes`:
//! an object keyed by class name whose values have the same per-class fields.
//!
//! `requests_per_sec` counts every complete response (any status) per second of the measured window, as wrk
//! does; latency percentiles cover responses with status below 400.

use crate::config::RunConfig;
use crate::engine::ProgressSnapshot;
use crate::histogram::LatencySummary;
use crate::stats::{ClassStats, ErrorCounts};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Figures for one class, or for all classes together.
#[derive(Clone, Debug, Serialize)]
pub struct ClassReport {
    pub requests_per_sec: f64,
    pub bytes_per_sec: f64,
    pub sent: u64,
    /// Complete responses, any status.
    pub responses: u64,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_kind: ErrorCounts,
    pub latency_ms: LatencySummary,
}

impl ClassReport {
    pub fn new(stats: &ClassStats, elapsed: Duration) -> ClassReport {
        let seconds = elapsed.as_secs_f64();
        let responses = stats.ok + stats.errors.bad_status;
        ClassReport {
            requests_per_sec: responses as f64 / seconds,
            bytes_per_sec: stats.bytes as f64 / seconds,
            sent: stats.sent,
            responses,
            ok: stats.ok,
            errors: stats.errors.total(),
            errors_by_kind: stats.errors,
            latency_ms: stats.latency.summary(),
        }
    }
}

/// The report of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    #[serde(flatten)]
    pub total: ClassReport,
    pub duration_s: f64,
    pub driver: String,
    pub threads: usize,
    pub connections: usize,
    pub classes: BTreeMap<String, ClassReport>,
}

impl RunReport {
    pub fn new(
        config: &RunConfig,
        driver: &str,
        elapsed: Duration,
        classes: &[ClassStats],
    ) -> RunReport {
        let mut total = ClassStats::default();
        for stats in classes {
            total.merge(stats);
        }
        RunReport {
            total: ClassReport::new(&total, elapsed),
            duration_s: elapsed.as_secs_f64(),
            driver: driver.to_string(),
            threads: config.cores.len(),
            connections: config.connections_total(),
            classes: config
                .classes
                .iter()
                .zip(classes)
                .map(|(class, stats)| (class.name.clone(), ClassReport::new(stats, elapsed)))
                .collect(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// A human-readable summary, one block per class when there are several.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} threads ({}), {} connections, {:.2}s measured",
            self.threads, self.driver, self.connections, self.duration_s
        );
        write_class(&mut out, "total", &self.total);
        if self.classes.len() > 1 {
            for (name, class) in &self.classes {
                write_class(&mut out, name, class);
            }
        }
        out
    }
}

fn write_class(out: &mut String, name: &str, class: &ClassReport) {
    let l = &class.latency_ms;
    let e = &class.errors_by_kind;
    let _ = writeln!(
        out,
        "[{name}] {:.0} req/s, {:.2} MB/s, {} sent, {} responses",
        class.requests_per_sec,
        class.bytes_per_sec / 1e6,
        class.sent,
        class.responses
    );
    let _ = writeln!(
        out,
        "[{name}] latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    );
    let _ = writeln!(
        out,
        "[{name}] errors {}: connect {} timeout {} bad_status {} short_body {} parse {} closed {}",
        class.errors, e.connect, e.timeout, e.bad_status, e.short_body, e.parse, e.closed
    );
}

/// The live progress line: the rate since the previous snapshot. One printer may span several runs (compare
/// rounds): a snapshot earlier than the previous one starts a new run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgressLine {
    last_elapsed: Duration,
    last_responses: u64,
}

impl ProgressLine {
    pub fn next(&mut self, snapshot: ProgressSnapshot) -> String {
        if snapshot.elapsed < self.last_elapsed || snapshot.responses < self.last_responses {
            *self = ProgressLine::default();
        }
        let seconds = (snapshot.elapsed - self.last_elapsed)
            .as_secs_f64()
            .max(1e-9);
        let rate = (snapshot.responses - self.last_responses) as f64 / seconds;
        self.last_elapsed = snapshot.elapsed;
        self.last_responses = snapshot.responses;
        format!(
            "[{:6.1}s] {rate:>10.0} req/s  {:>12} responses  {:>8} errors",
            snapshot.elapsed.as_secs_f64(),
            snapshot.responses,
            snapshot.errors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(elapsed_ms: u64, responses: u64) -> ProgressSnapshot {
        ProgressSnapshot {
            elapsed: Duration::from_millis(elapsed_ms),
            responses,
            errors: 0,
        }
    }

    #[test]
    fn progress_rate_is_per_interval() {
        let mut line = ProgressLine::default();
        assert!(line.next(snapshot(1000, 500)).contains(" 500 req/s"));
        assert!(line.next(snapshot(2000, 2500)).contains(" 2000 req/s"));
    }

    /// Regression: `compare` reuses one printer; the second round's first snapshot is earlier than the last one
    /// of the first round, which used to panic with "overflow when subtracting durations".
    #[test]
    fn regression_progress_line_restarts_for_a_new_round() {
        let mut line = ProgressLine::default();
        line.next(snapshot(2000, 9000));
        assert!(line.next(snapshot(1000, 300)).contains(" 300 req/s"));
    }
}
