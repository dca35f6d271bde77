//! Access-log parsing and trace replay.
//!
//! [`parse_line`] reads one line in any of these formats (detected per line):
//!
//! | format | example |
//! |---|---|
//! | Common Log Format | `host ident user [10/Oct/2000:13:55:36 -0700] "GET /a.html HTTP/1.0" 200 2326` |
//! | Combined | Common followed by `"referer" "user-agent"` (ignored) |
//! | NASA (1995) | Common with `-` for the byte count, sometimes no protocol: `"GET /history/"` |
//! | EPA (1995) | `host [DD:HH:MM:SS] "GET /a.html HTTP/1.0" 200 1497` (no ident/user, day of month only) |
//!
//! Times: Common/Combined/NASA give Unix seconds (the zone offset applied); EPA gives seconds since the start of
//! day 1 of the (unnamed) month. A line that does not fit is *malformed*: [`parse_log`] counts and skips it
//! ([`LogStats`]), it never fails the whole log. Blank lines are ignored and not counted.
//!
//! Replay ([`Trace::from_reader`]) keeps only successful GETs (method `GET`, status 200–299): the other requests
//! (HEAD, POST, redirects, 304 Not Modified, errors) move no file body, or one whose size the log does not tell, so
//! they are counted in [`Trace::dropped`] and left out. A target's size is the largest byte count logged for it (0
//! if the log only has `-`). Targets are numbered in order of first appearance.
//!
//! Limits: [`TRACE_REQUESTS_MAX`] (100 million) requests and [`TRACE_TARGETS_MAX`] (10 million) distinct targets a
//! trace; [`LINE_BYTES_MAX`] (64 KiB) a line (longer lines are malformed).

use std::collections::HashMap;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

use crate::workload::Target;

/// Largest number of requests a [`Trace`] holds.
pub const TRACE_REQUESTS_MAX: usize = 100_000_000;
/// Largest number of distinct targets a [`Trace`] holds.
pub const TRACE_TARGETS_MAX: usize = 10_000_000;
/// Longest line parsed; longer lines are counted as malformed.
pub const LINE_BYTES_MAX: usize = 64 << 10;

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Unix seconds (Common/Combined/NASA) or seconds since the start of the month (EPA).
    pub time_s: i64,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Response bytes; `None` for `-`.
    pub bytes: Option<u64>,
}

/// Line counts of one log: `lines == parsed + malformed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub lines: u64,
    pub parsed: u64,
    pub malformed: u64,
}

/// Why a line is malformed.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("line longer than {LINE_BYTES_MAX} bytes")]
    TooLong,
    #[error("no [time] field")]
    NoTime,
    #[error("bad time")]
    BadTime,
    #[error("no quoted request")]
    NoRequest,
    #[error("request has no method and path")]
    BadRequest,
    #[error("bad status")]
    BadStatus,
    #[error("bad byte count")]
    BadBytes,
}

/// Errors reading a whole log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O on {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("trace has more than {max} requests")]
    TooManyRequests { max: usize },
    #[error("trace has more than {max} distinct targets")]
    TooManyTargets { max: usize },
}

/// Parses one line (see the module docs for the formats).
pub fn parse_line(line: &str) -> Result<LogRecord, LineError> {
    if line.len() > LINE_BYTES_MAX {
        return Err(LineError::TooLong);
    }
    let open = line.find('[').ok_or(LineError::NoTime)?;
    let close = open + line[open..].find(']').ok_or(LineError::NoTime)?;
    let time_s = parse_time(&line[open + 1..close])?;
    let rest = &line[close + 1..];
    let quote = rest.find('"').ok_or(LineError::NoRequest)?;
    if !rest[..quote].trim().is_empty() {
        return Err(LineError::NoRequest);
    }
    let rest = &rest[quote + 1..];
    let end = rest.find('"').ok_or(LineError::NoRequest)?;
    let request = &rest[..end];
    let mut fields = rest[end + 1..].split_ascii_whitespace();
    let status: u16 = fields
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..=999).contains(s))
        .ok_or(LineError::BadStatus)?;
    let bytes = match fields.next().ok_or(LineError::BadBytes)? {
        "-" => None,
        text => Some(text.parse().map_err(|_| LineError::BadBytes)?),
    };
    let (method, path) = split_request(request)?;
    Ok(LogRecord {
        time_s,
        method: method.to_string(),
        path: path.to_string(),
        status,
        bytes,
    })
}

/// `METHOD PATH [PROTOCOL]`; a path with spaces (seen in old logs) is kept whole.
fn split_request(request: &str) -> Result<(&str, &str), LineError> {
    let request = request.trim();
    let (method, rest) = request.split_once(' ').ok_or(LineError::BadRequest)?;
    let rest = rest.trim();
    let path = match rest.rsplit_once(' ') {
        Some((path, protocol)) if protocol.starts_with("HTTP/") => path.trim(),
        _ => rest,
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || path.is_empty() {
        return Err(LineError::BadRequest);
    }
    Ok((method, path))
}

fn number(text: &str, range: std::ops::RangeInclusive<i64>) -> Result<i64, LineError> {
    let value: i64 = text.parse().map_err(|_| LineError::BadTime)?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(LineError::BadTime)
    }
}

/// `DD/Mon/YYYY:HH:MM:SS [+-]HHMM` (Common) or `DD:HH:MM:SS` (EPA).
fn parse_time(text: &str) -> Result<i64, LineError> {
    let (stamp, zone) = text
        .trim()
        .split_once(' ')
        .unwrap_or((text.trim(), "+0000"));
    let parts: Vec<&str> = stamp.split(['/', ':']).collect();
    let clock = |h: &str, m: &str, s: &str| -> Result<i64, LineError> {
        Ok(number(h, 0..=23)? * 3600 + number(m, 0..=59)? * 60 + number(s, 0..=60)?)
    };
    match parts.as_slice() {
        [day, hour, minute, second] => {
            Ok((number(day, 1..=31)? - 1) * 86_400 + clock(hour, minute, second)?)
        }
        [day, month, year, hour, minute, second] => {
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let month = MONTHS
                .iter()
                .position(|m| m == month)
                .ok_or(LineError::BadTime)? as i64
                + 1;
            let days = days_from_civil(number(year, 1970..=9999)?, month, number(day, 1..=31)?);
            let zone_s = parse_zone(zone)?;
            Ok(days * 86_400 + clock(hour, minute, second)? - zone_s)
        }
        _ => Err(LineError::BadTime),
    }
}

fn parse_zone(zone: &str) -> Result<i64, LineError> {
    let zone = zone.trim();
    let (sign, digits) = match zone.as_bytes().first() {
        Some(b'+') => (1, &zone[1..]),
        Some(b'-') => (-1, &zone[1..]),
        _ => return Err(LineError::BadTime),
    };
    if digits.len() != 4 || !digits.is_ascii() {
        return Err(LineError::BadTime);
    }
    Ok(sign * (number(&digits[..2], 0..=23)? * 3600 + number(&digits[2..], 0..=59)? * 60))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Parses every line of `reader`, calling `each` for each well-formed record; malformed lines are counted.
pub fn parse_log<R: BufRead>(
    reader: R,
    source: &Path,
    mut each: impl FnMut(LogRecord) -> Result<(), LogError>,
) -> Result<LogStats, LogError> {
    let mut stats = LogStats::default();
    for line in reader.split(b'\n') {
        let line = line.map_err(|source_error| LogError::Io {
            path: source.to_path_buf(),
            source: source_error,
        })?;
        // Old logs contain stray non-UTF-8 bytes; such a line is malformed, not an I/O error.
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            continue;
        }
        stats.lines += 1;
        match parse_line(text) {
            Ok(record) if !text.contains('\u{FFFD}') => {
                stats.parsed += 1;
                each(record)?;
            }
            _ => stats.malformed += 1,
        }
    }
    Ok(stats)
}

/// The successful GETs of a log, ready for replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// Distinct targets in order of first appearance; `size_bytes` is the largest logged size.
    pub targets: Vec<Target>,
    /// Indices into `targets`, in log order.
    pub requests: Vec<u32>,
    pub stats: LogStats,
    /// Well-formed records left out (not GET, or status outside 200–299).
    pub dropped: u64,
}

impl Trace {
    /// Reads a log file.
    pub fn from_path(path: &Path) -> Result<Self, LogError> {
        let file = std::fs::File::open(path).map_err(|source| LogError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_reader(io::BufReader::new(file), path)
    }

    /// Reads a log from `reader`; `source` names it in errors.
    pub fn from_reader<R: BufRead>(reader: R, source: &Path) -> Result<Self, LogError> {
        let mut trace = Trace::default();
        let mut index_of: HashMap<String, u32> = HashMap::new();
        let stats = parse_log(reader, source, |record| {
            if record.method != "GET" || !(200..=299).contains(&record.status) {
                trace.dropped += 1;
                return Ok(());
            }
            if trace.requests.len() >= TRACE_REQUESTS_MAX {
                return Err(LogError::TooManyRequests {
                    max: TRACE_REQUESTS_MAX,
                });
            }
            let index = match index_of.get(&record.path) {
                Some(&index) => index,
                None => {
                    if trace.targets.len() >= TRACE_TARGETS_MAX {
                        return Err(LogError::TooManyTargets {
                            max: TRACE_TARGETS_MAX,
                        });
                    }
                    let index = trace.targets.len() as u32;
                    index_of.insert(record.path.clone(), index);
                    trace.targets.push(Target {
                        path: record.path,
                        size_bytes: 0,
                    });
                    index
                }
            };
            let target = &mut trace.targets[index as usize];
            target.size_bytes = target.size_bytes.max(record.bytes.unwrap_or(0));
            trace.requests.push(index);
            Ok(())
        })?;
        trace.stats = stats;
        Ok(trace)
    }

    pub fn total_bytes(&self) -> u64 {
        self.targets.iter().map(|t| t.size_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_format_with_zone() {
        let record =
            parse_line(r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#)
                .unwrap();
        assert_eq!(
            record,
            LogRecord {
                time_s: 971_211_336, // 2000-10-10T20:55:36Z
                method: "GET".into(),
                path: "/apache_pb.gif".into(),
                status: 200,
                bytes: Some(2326),
            }
        );
    }

    #[test]
    fn parses_combined_format() {
        let line = r#"1.2.3.4 - - [01/Jan/1970:00:00:10 +0000] "POST /form HTTP/1.1" 302 - "http://x/" "Mozilla/4.0 (compatible)""#;
        let record = parse_line(line).unwrap();
        assert_eq!(record.time_s, 10);
        assert_eq!(record.method, "POST");
        assert_eq!(record.status, 302);
        assert_eq!(record.bytes, None);
    }

    #[test]
    fn parses_nasa_variants() {
        let with_dash = r#"in24.inetnebr.com - - [01/Aug/1995:00:00:01 -0400] "GET /shuttle/missions/sts-68/news/sts-68-mcc-05.txt HTTP/1.0" 304 -"#;
        let record = parse_line(with_dash).unwrap();
        assert_eq!(record.bytes, None);
        assert_eq!(record.time_s, 807_249_601); // 1995-08-01T04:00:01Z
        let no_protocol = r#"a.b - - [01/Jul/1995:00:00:12 -0400] "GET /images/" 200 7280"#;
        assert_eq!(parse_line(no_protocol).unwrap().path, "/images/");
    }

    #[test]
    fn parses_epa_format() {
        let record =
            parse_line(r#"141.243.1.172 [29:23:53:25] "GET /Software.html HTTP/1.0" 200 1497"#)
                .unwrap();
        assert_eq!(record.time_s, 28 * 86_400 + 23 * 3600 + 53 * 60 + 25);
        assert_eq!(record.path, "/Software.html");
        assert_eq!(record.bytes, Some(1497));
    }

    #[test]
    fn rejects_malformed_lines_with_a_reason() {
        let cases = [
            ("garbage", LineError::NoTime),
            (
                r#"h [32:00:00:00] "GET / HTTP/1.0" 200 1"#,
                LineError::BadTime,
            ),
            (
                r#"h - - [01/Foo/1995:00:00:00 -0400] "GET / HTTP/1.0" 200 1"#,
                LineError::BadTime,
            ),
            (r#"h [01:00:00:00] GET / 200 1"#, LineError::NoRequest),
            (r#"h [01:00:00:00] "GET" 200 1"#, LineError::BadRequest),
            (
                r#"h [01:00:00:00] "GET / HTTP/1.0" abc 1"#,
                LineError::BadStatus,
            ),
            (
                r#"h [01:00:00:00] "GET / HTTP/1.0" 200 x"#,
                LineError::BadBytes,
            ),
            (
                r#"h [01:00:00:00] "GET / HTTP/1.0" 200"#,
                LineError::BadBytes,
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_line(line), Err(expected), "{line}");
        }
    }

    #[test]
    fn regression_multibyte_char_in_zone_is_malformed_not_a_panic() {
        // Slicing the zone's digits at byte 2 used to split the 'é' and panic.
        let line = "h - - [01/Jul/1995:00:00:01 +1\u{e9}2] \"GET / HTTP/1.0\" 200 1";
        assert_eq!(parse_line(line), Err(LineError::BadTime));
    }

    #[test]
    fn trace_keeps_successful_gets_and_counts_malformed() {
        let log = concat!(
            "h [01:00:00:01] \"GET /a HTTP/1.0\" 200 100\n",
            "h [01:00:00:02] \"GET /b HTTP/1.0\" 200 50\n",
            "not a log line\n",
            "\n",
            "h [01:00:00:03] \"GET /a HTTP/1.0\" 304 -\n",
            "h [01:00:00:04] \"POST /a HTTP/1.0\" 200 10\n",
            "h - - [01/Jul/1995:00:00:12 -0400] \"GET /a HTTP/1.0\" 200 120\r\n",
            "h [01:00:00:05] \"GET /b HTTP/1.0\n",
        );
        let trace = Trace::from_reader(log.as_bytes(), Path::new("test.log")).unwrap();
        assert_eq!(
            trace.stats,
            LogStats {
                lines: 7,
                parsed: 5,
                malformed: 2
            }
        );
        assert_eq!(trace.dropped, 2);
        assert_eq!(trace.requests, vec![0, 1, 0]);
        assert_eq!(
            trace.targets[0],
            Target {
                path: "/a".into(),
                size_bytes: 120
            }
        );
        assert_eq!(trace.total_bytes(), 170);
    }
}
