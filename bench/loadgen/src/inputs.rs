//! Reading workload inputs from disk: file lists (for `--files`) and access logs (for `--replay`).
//!
//! Owns: the file-list format — one target a line, the first whitespace-separated field is the path (so a
//! `gen-site` list and a `MANIFEST.tsv` both work); blank lines and lines starting with `#` are skipped; line
//! order is popularity order — and the conversion of an access log (parsed by `larder_workload::log`) into a
//! replay: the successful GETs in log order, each with its offset from the first one.
//!
//! Logs have one-second timestamps, so the requests logged in one second are spread evenly over that second;
//! a timestamp earlier than the one before it (logs are not always sorted) is treated as equal to it, so offsets
//! never decrease. Limits: [`crate::source::REQUESTS_TABLE_MAX`] (10 million) distinct paths and
//! [`TRACE_REQUESTS_MAX`] (50 million) requests in a replay.

use crate::config::WorkloadSpec;
use larder_workload::log::{parse_log, LogError, LogStats};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

/// Most requests one replay holds (about 12 bytes each in memory).
pub const TRACE_REQUESTS_MAX: usize = 50_000_000;

/// Errors reading a file list or a trace.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{path}: more than {max} requests")]
    TooMany { path: String, max: usize },
}

/// Reads a file list; see the module docs for the format.
pub fn read_file_list(path: &Path) -> Result<Vec<String>, InputError> {
    let io = |source| InputError::Io {
        path: path.display().to_string(),
        source,
    };
    let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut paths = Vec::new();
    for line in reader.lines() {
        let line = line.map_err(io)?;
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        if first.starts_with('#') {
            continue;
        }
        if paths.len() >= crate::source::REQUESTS_TABLE_MAX {
            return Err(InputError::TooMany {
                path: path.display().to_string(),
                max: crate::source::REQUESTS_TABLE_MAX,
            });
        }
        paths.push(first.to_string());
    }
    Ok(paths)
}

/// A replay read from an access log, with the log's line counts.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedTrace {
    pub workload: WorkloadSpec,
    pub stats: LogStats,
    /// Well-formed lines left out: not a GET, or a status outside 200–299.
    pub dropped: u64,
}

/// Reads an access log into a replay workload at `speed` (`None`: as fast as possible).
pub fn load_trace(
    path: &Path,
    reader: impl BufRead,
    speed: Option<f64>,
) -> Result<LoadedTrace, InputError> {
    let mut paths = Vec::new();
    let mut index_of: HashMap<String, u32> = HashMap::new();
    let mut order = Vec::new();
    let mut times_s: Vec<i64> = Vec::new();
    let mut dropped = 0;
    let too_many = |max| InputError::TooMany {
        path: path.display().to_string(),
        max,
    };
    let stats = parse_log(reader, path, |record| {
        if record.method != "GET" || !(200..=299).contains(&record.status) {
            dropped += 1;
            return Ok(());
        }
        if order.len() >= TRACE_REQUESTS_MAX {
            return Err(LogError::TooManyRequests {
                max: TRACE_REQUESTS_MAX,
            });
        }
        let next = paths.len() as u32;
        let index = *index_of.entry(record.path.clone()).or_insert(next);
        if index == next {
            if paths.len() >= crate::source::REQUESTS_TABLE_MAX {
                return Err(LogError::TooManyTargets {
                    max: crate::source::REQUESTS_TABLE_MAX,
                });
            }
            paths.push(record.path);
        }
        order.push(index);
        let previous = times_s.last().copied().unwrap_or(record.time_s);
        times_s.push(record.time_s.max(previous));
        Ok(())
    })
    .map_err(|e| match e {
        LogError::TooManyRequests { max } | LogError::TooManyTargets { max } => too_many(max),
        other => InputError::Log(other),
    })?;
    let offsets = spread_over_seconds(&times_s);
    Ok(LoadedTrace {
        workload: WorkloadSpec::Replay {
            paths,
            order,
            offsets,
            speed,
        },
        stats,
        dropped,
    })
}

/// Offsets from the first timestamp, with the `k` requests of one second at `j / k` of that second.
pub fn spread_over_seconds(times_s: &[i64]) -> Vec<Duration> {
    let mut offsets = Vec::with_capacity(times_s.len());
    let Some(&first) = times_s.first() else {
        return offsets;
    };
    let mut group_start = 0;
    while group_start < times_s.len() {
        let second = times_s[group_start];
        let group_end = times_s[group_start..]
            .iter()
            .position(|&t| t != second)
            .map_or(times_s.len(), |n| group_start + n);
        let count = (group_end - group_start) as f64;
        let base = Duration::from_secs(u64::try_from(second - first).unwrap_or(0));
        for j in 0..group_end - group_start {
            offsets.push(base + Duration::from_secs_f64(j as f64 / count));
        }
        group_start = group_end;
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_second_groups_are_spread_evenly() {
        let offsets = spread_over_seconds(&[10, 10, 10, 10, 11, 13]);
        let ms: Vec<u128> = offsets.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 250, 500, 750, 1000, 3000]);
    }

    #[test]
    fn trace_keeps_successful_gets_in_order_with_monotonic_offsets() {
        let log = "\
127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] \"GET /a.html HTTP/1.0\" 200 2326
127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] \"GET /b.html HTTP/1.0\" 200 10 \"-\" \"curl\"
127.0.0.1 - - [10/Oct/2000:13:55:35 -0700] \"POST /form HTTP/1.0\" 200 1
this line is not a log line
127.0.0.1 - - [10/Oct/2000:13:55:34 -0700] \"GET /a.html HTTP/1.0\" 200 2326
127.0.0.1 - - [10/Oct/2000:13:55:38 -0700] \"GET /c.html HTTP/1.0\" 404 0
127.0.0.1 - - [10/Oct/2000:13:55:39 -0700] \"GET /b.html HTTP/1.0\" 200 10
";
        let trace = load_trace(Path::new("test.log"), log.as_bytes(), Some(2.0)).unwrap();
        assert_eq!(trace.stats.malformed, 1);
        assert_eq!(trace.dropped, 2, "POST and 404");
        let WorkloadSpec::Replay {
            paths,
            order,
            offsets,
            speed,
        } = trace.workload
        else {
            panic!("not a replay")
        };
        assert_eq!(paths, vec!["/a.html", "/b.html"]);
        assert_eq!(order, vec![0, 1, 0, 1]);
        let ms: Vec<u128> = offsets.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            vec![0, 333, 666, 3000],
            "the out-of-order 13:55:34 line is held at 13:55:36"
        );
        assert_eq!(speed, Some(2.0));
    }
}
