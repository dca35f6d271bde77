//! Per-shard access log in Common or Combined Log Format, written off the data path.
//!
//! Owns: formatting one line per response into the shard's buffer, and handing full buffers to a writer thread.
//!
//! Protocol:
//! 1. The shard appends a line to its current buffer (no I/O, no lock).
//! 2. When the buffer holds [`FLUSH_BYTES`] (64 KiB), or at the shard's periodic flush (every second), the
//!    buffer is sent to the shard's writer thread over a bounded channel of [`QUEUE_BUFFERS_MAX`] (8) buffers,
//!    and an empty buffer is taken back from the writer's return channel (or a new one allocated).
//! 3. The writer thread appends each buffer to `<path>.<shard>` and returns it for reuse.
//!
//! The data path never blocks: if the queue is full (the disk is slower than the traffic), the buffer is
//! dropped and its lines counted in [`AccessLog::lines_dropped`]. Memory is bounded by
//! (QUEUE_BUFFERS_MAX + 2) × 64 KiB per shard.

use std::fs::File;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use crate::config::LogFormat;
use crate::http::response::push_decimal;
use crate::http::RequestHead;

/// Buffer size that triggers a hand-off to the writer thread.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Buffers queued to the writer at most.
pub const QUEUE_BUFFERS_MAX: usize = 8;

/// One shard's access log.
pub struct AccessLog {
    format: LogFormat,
    buffer: Vec<u8>,
    lines_in_buffer: u64,
    lines_dropped: u64,
    to_writer: Option<SyncSender<Vec<u8>>>,
    from_writer: Receiver<Vec<u8>>,
    writer: Option<JoinHandle<()>>,
}

/// What one log line records beyond the request head.
pub struct LogEntry<'a> {
    pub client: IpAddr,
    /// Local time is not used: CLF time in UTC, `[10/Oct/2000:13:55:36 +0000]`.
    pub unix_secs: u64,
    pub head: Option<&'a RequestHead<'a>>,
    pub status: u16,
    pub body_bytes: u64,
}

impl AccessLog {
    /// Opens (appending) `<path>.<shard>` and starts its writer thread.
    pub fn open(path: &Path, shard: usize, format: LogFormat) -> std::io::Result<AccessLog> {
        let mut file = open_append(path, shard)?;
        let (to_writer, buffers) = sync_channel::<Vec<u8>>(QUEUE_BUFFERS_MAX);
        let (give_back, from_writer) = sync_channel::<Vec<u8>>(QUEUE_BUFFERS_MAX + 2);
        let writer = std::thread::Builder::new()
            .name(format!("larder-log-{shard}"))
            .spawn(move || write_loop(&mut file, buffers, give_back))?;
        Ok(AccessLog {
            format,
            buffer: Vec::with_capacity(FLUSH_BYTES + 1024),
            lines_in_buffer: 0,
            lines_dropped: 0,
            to_writer: Some(to_writer),
            from_writer,
            writer: Some(writer),
        })
    }

    /// Whether `<path>.<shard>` opens for appending (created if absent), without starting a writer: a reload
    /// checks every shard's file before it changes anything.
    pub fn check_writable(path: &Path, shard: usize) -> std::io::Result<()> {
        open_append(path, shard).map(drop)
    }

    /// Lines lost because the writer fell behind.
    pub fn lines_dropped(&self) -> u64 {
        self.lines_dropped
    }

    /// Appends one line (protocol step 1); hands the buffer off when full (step 2).
    pub fn record(&mut self, entry: &LogEntry<'_>) {
        format_line(&mut self.buffer, self.format, entry);
        self.lines_in_buffer += 1;
        if self.buffer.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// Hands the current buffer to the writer thread without blocking (step 2).
    pub fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let fresh = self
            .from_writer
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(FLUSH_BYTES + 1024));
        let full = std::mem::replace(&mut self.buffer, fresh);
        let lines = std::mem::take(&mut self.lines_in_buffer);
        if let Some(sender) = &self.to_writer {
            match sender.try_send(full) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.lines_dropped += lines;
                }
            }
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        // Hand the last buffer over, then wait for the writer to finish the queue.
        if let (Some(sender), false) = (&self.to_writer, self.buffer.is_empty()) {
            let _ = sender.send(std::mem::take(&mut self.buffer));
        }
        self.to_writer = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// `<path>.<shard>`, opened for appending (created if absent).
fn open_append(path: &Path, shard: usize) -> std::io::Result<File> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{shard}"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(name)
}

fn write_loop(file: &mut File, buffers: Receiver<Vec<u8>>, give_back: SyncSender<Vec<u8>>) {
    for mut buffer in buffers {
        if let Err(error) = file.write_all(&buffer) {
            tracing::warn!(%error, "access log write failed");
        }
        buffer.clear();
        let _ = give_back.try_send(buffer);
    }
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `host - - [day/Mon/year:hh:mm:ss +0000] "request" status bytes` (+ `"referer" "agent"` for Combined).
pub fn format_line(out: &mut Vec<u8>, format: LogFormat, entry: &LogEntry<'_>) {
    let _ = write!(out, "{} - - [", entry.client);
    let (year, month, day) = civil_from_days((entry.unix_secs / 86_400) as i64);
    let seconds_of_day = entry.unix_secs % 86_400;
    let _ = write!(
        out,
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000] \"",
        std::str::from_utf8(MONTHS[(month - 1) as usize]).unwrap_or("Jan"),
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    );
    match entry.head {
        Some(head) => {
            push_escaped(out, head.method_bytes);
            out.push(b' ');
            push_escaped(out, head.target);
            out.push(b' ');
            out.extend_from_slice(head.version.as_str().as_bytes());
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b"\" ");
    push_decimal(out, u64::from(entry.status));
    out.push(b' ');
    if entry.body_bytes == 0 {
        out.push(b'-');
    } else {
        push_decimal(out, entry.body_bytes);
    }
    if format == LogFormat::Combined {
        let referer = entry.head.and_then(|head| head.referer);
        let user_agent = entry.head.and_then(|head| head.user_agent);
        for value in [referer, user_agent] {
            out.extend_from_slice(b" \"");
            match value {
                Some(value) => push_escaped(out, value),
                None => out.push(b'-'),
            }
            out.push(b'"');
        }
    }
    out.push(b'\n');
}

/// Copies printable ASCII; escapes quotes, backslashes and everything else as `\xHH` (nginx's escaping).
fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &byte in bytes {
        if (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\' {
            out.push(byte);
        } else {
            let _ = write!(out, "\\x{byte:02X}");
        }
    }
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31) (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, ParseLimits};

    #[test]
    fn clf_and_combined_lines() {
        let request = b"GET /a\"b HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8\r\n\r\n";
        let head = parse_request(request, &ParseLimits::default())
            .unwrap()
            .unwrap();
        let entry = LogEntry {
            client: "127.0.0.1".parse().unwrap(),
            unix_secs: 971_186_136, // 2000-10-10 13:55:36 UTC
            head: Some(&head),
            status: 200,
            body_bytes: 2326,
        };
        let mut out = Vec::new();
        format_line(&mut out, LogFormat::Common, &entry);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /a\\x22b HTTP/1.1\" 200 2326\n"
        );
        out.clear();
        format_line(
            &mut out,
            LogFormat::Combined,
            &LogEntry {
                body_bytes: 0,
                ..entry
            },
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("200 - \"-\" \"curl/8\"\n"));
    }

    #[test]
    fn calendar_matches_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_453), (2025, 12, 31));
    }

    #[test]
    fn lines_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut log = AccessLog::open(&path, 3, LogFormat::Common).unwrap();
        for _ in 0..3 {
            log.record(&LogEntry {
                client: "::1".parse().unwrap(),
                unix_secs: 0,
                head: None,
                status: 400,
                body_bytes: 0,
            });
        }
        drop(log);
        let text = std::fs::read_to_string(dir.path().join("access.log.3")).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            text.starts_with("::1 - - [01/Jan/1970:00:00:00 +0000] \"-\" 400 -\n"),
            "{text}"
        );
    }
}
