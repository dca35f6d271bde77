//! Response heads: status lines, the cached Date, and per-object fields
//! rendered once.
//!
//! Owns: the bytes of every response head. Heads are written into a
//! caller-owned `Vec<u8>` that is reused across requests, so the steady state
//! allocates nothing. The per-object fields (Content-Type, Last-Modified,
//! ETag) are formatted once per object version by the cache and copied here.
//!
//! Invariants: every head ends with an empty line; Date is the IMF-fixdate of
//! the second the [`DateCache`] was last refreshed (29 bytes).

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT").
pub const HTTP_DATE_BYTES: usize = 29;

/// The statuses the node sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    PartialContent,
    MovedPermanently,
    NotModified,
    BadRequest,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    UriTooLong,
    RangeNotSatisfiable,
    HeaderFieldsTooLarge,
    InternalServerError,
    NotImplemented,
    ServiceUnavailable,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::PartialContent => 206,
            Status::MovedPermanently => 301,
            Status::NotModified => 304,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::UriTooLong => 414,
            Status::RangeNotSatisfiable => 416,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::NotImplemented => 501,
            Status::ServiceUnavailable => 503,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::PartialContent => "Partial Content",
            Status::MovedPermanently => "Moved Permanently",
            Status::NotModified => "Not Modified",
            Status::BadRequest => "Bad Request",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::UriTooLong => "URI Too Long",
            Status::RangeNotSatisfiable => "Range Not Satisfiable",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::NotImplemented => "Not Implemented",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }

    /// Whether the connection must close after this status (the request
    /// could not be framed, or the client is misbehaving).
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Status::BadRequest
                | Status::RequestTimeout
                | Status::UriTooLong
                | Status::HeaderFieldsTooLarge
                | Status::NotImplemented
                | Status::InternalServerError
        )
    }
}

/// The formatted Date, refreshed at most once per second (per shard).
#[derive(Clone, Debug)]
pub struct DateCache {
    unix_secs: u64,
    text: [u8; HTTP_DATE_BYTES],
}

impl DateCache {
    pub fn new(now: SystemTime) -> Self {
        let mut cache = DateCache {
            unix_secs: u64::MAX,
            text: [b' '; HTTP_DATE_BYTES],
        };
        cache.refresh(now);
        cache
    }

    /// Re-renders the date if `now` is in a later second than the cached one.
    pub fn refresh(&mut self, now: SystemTime) {
        let unix_secs = unix_secs(now);
        if unix_secs != self.unix_secs {
            self.unix_secs = unix_secs;
            self.text = format_http_date(unix_secs);
        }
    }

    pub fn text(&self) -> &[u8; HTTP_DATE_BYTES] {
        &self.text
    }
}

pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Renders an IMF-fixdate; `httpdate` does the calendar arithmetic.
pub fn format_http_date(unix_secs: u64) -> [u8; HTTP_DATE_BYTES] {
    let mut text = [b' '; HTTP_DATE_BYTES];
    let mut cursor = &mut text[..];
    let date = httpdate::HttpDate::from(UNIX_EPOCH + Duration::from_secs(unix_secs));
    // An HttpDate always renders as exactly 29 bytes.
    let written = write!(cursor, "{date}");
    debug_assert!(written.is_ok(), "http date longer than {HTTP_DATE_BYTES}");
    text
}

/// Parses an HTTP date into Unix seconds (any of the three RFC 9110 forms).
pub fn parse_http_date(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    httpdate::parse_http_date(text).ok().map(unix_secs)
}

/// Writes the per-object fields of a 200/206/304 head.
pub fn object_fields(buf: &mut Vec<u8>, content_type: &str, last_modified: &[u8], etag: &[u8]) {
    buf.extend_from_slice(b"Content-Type: ");
    buf.extend_from_slice(content_type.as_bytes());
    buf.extend_from_slice(b"\r\nLast-Modified: ");
    buf.extend_from_slice(last_modified);
    buf.extend_from_slice(b"\r\nETag: ");
    buf.extend_from_slice(etag);
    buf.extend_from_slice(b"\r\nAccept-Ranges: bytes\r\n");
}

/// Writes the status line, Server and Date.
pub fn start_head(buf: &mut Vec<u8>, status: Status, date: &[u8; HTTP_DATE_BYTES]) {
    buf.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(buf, u64::from(status.code()));
    buf.push(b' ');
    buf.extend_from_slice(status.reason().as_bytes());
    buf.extend_from_slice(b"\r\nServer: larder\r\nDate: ");
    buf.extend_from_slice(date);
    buf.extend_from_slice(b"\r\n");
}

/// Writes one field line.
pub fn field(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

pub fn content_length(buf: &mut Vec<u8>, len: u64) {
    buf.extend_from_slice(b"Content-Length: ");
    push_decimal(buf, len);
    buf.extend_from_slice(b"\r\n");
}

/// Writes Connection and the empty line that ends the head.
pub fn end_head(buf: &mut Vec<u8>, keep_alive: bool) {
    if keep_alive {
        buf.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
    } else {
        buf.extend_from_slice(b"Connection: close\r\n\r\n");
    }
}

/// Digits of `value` in decimal.
pub fn decimal_len(value: u64) -> usize {
    value.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Appends `value` in decimal without allocating.
pub fn push_decimal(buf: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// A complete error or redirect response with a short text body
/// (`extra` holds whole field lines, e.g. "Allow: GET, HEAD\r\n").
pub fn write_simple(
    buf: &mut Vec<u8>,
    status: Status,
    date: &[u8; HTTP_DATE_BYTES],
    extra: &[&[u8]],
    keep_alive: bool,
    send_body: bool,
) {
    start_head(buf, status, date);
    for fields in extra {
        buf.extend_from_slice(fields);
    }
    buf.extend_from_slice(b"Content-Type: text/plain\r\n");
    // "404 Not Found\n"
    let body_len = 3 + 1 + status.reason().len() + 1;
    content_length(buf, body_len as u64);
    end_head(buf, keep_alive);
    if send_body {
        push_decimal(buf, u64::from(status.code()));
        buf.push(b' ');
        buf.extend_from_slice(status.reason().as_bytes());
        buf.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_renders_imf_fixdate_and_refreshes_per_second() {
        let at = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let mut cache = DateCache::new(at);
        assert_eq!(cache.text(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        cache.refresh(at + Duration::from_millis(999));
        assert_eq!(cache.text(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        cache.refresh(at + Duration::from_secs(1));
        assert_eq!(cache.text(), b"Sun, 06 Nov 1994 08:49:38 GMT");
        assert_eq!(parse_http_date(cache.text()), Some(784_111_778));
    }

    #[test]
    fn object_fields_render_in_order() {
        let mut buf = Vec::new();
        object_fields(
            &mut buf,
            "text/html",
            b"Thu, 01 Jan 1970 00:00:00 GMT",
            b"\"0-10\"",
        );
        assert_eq!(
            buf,
            b"Content-Type: text/html\r\nLast-Modified: Thu, 01 Jan 1970 00:00:00 GMT\r\nETag: \"0-10\"\r\nAccept-Ranges: bytes\r\n"
        );
    }

    #[test]
    fn simple_response_is_well_formed() {
        let date = format_http_date(0);
        let mut buf = Vec::new();
        write_simple(
            &mut buf,
            Status::MethodNotAllowed,
            &date,
            &[b"Allow: GET, HEAD\r\n"],
            true,
            true,
        );
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\nServer: larder\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"), "{text}");
        assert!(text.contains("Allow: GET, HEAD\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{text}"
        );
        assert_eq!(body, "405 Method Not Allowed\n");
    }

    #[test]
    fn decimal_digits() {
        for value in [0u64, 7, 10, 4096, u64::MAX] {
            let mut buf = Vec::new();
            push_decimal(&mut buf, value);
            assert_eq!(buf, value.to_string().into_bytes());
            assert_eq!(decimal_len(value), buf.len());
        }
    }
}
