//! HTTP/1.x heads as the dispatcher sees them: what to forward, how long a body is, whether a connection
//! survives. Pure functions over byte slices (no I/O), so every rule here has a unit test.
//!
//! The dispatcher forwards request and response heads verbatim (no header is added, removed or rewritten), so
//! the only facts it needs are the ones below: method, path, version, `Content-Length`, `Transfer-Encoding` and
//! `Connection`.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`HEADERS_MAX`] | 64 header fields per head | httparse needs a fixed array; browsers send ~20 |
//! | [`CHUNK_SIZE_DIGITS_MAX`] | 16 hex digits | a chunk size fits in u64 |
//! | [`CHUNK_LINE_BYTES_MAX`] | 4,096 bytes of chunk extension or trailer line | bounded scan of framing text |

/// Most header fields in one request or response head.
pub const HEADERS_MAX: usize = 64;
/// Most hex digits in a chunk-size line.
pub const CHUNK_SIZE_DIGITS_MAX: u32 = 16;
/// Longest chunk extension or trailer line.
pub const CHUNK_LINE_BYTES_MAX: u32 = 4_096;

/// Why a head cannot be forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed head")]
    Malformed,
    #[error("more than {HEADERS_MAX} header fields")]
    TooManyHeaders,
    #[error("conflicting or invalid Content-Length")]
    BadContentLength,
    #[error("request bodies with Transfer-Encoding are not supported")]
    ChunkedRequestBody,
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (HEAD responses, 1xx, 204, 304, requests without Content-Length).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, ended by the zero chunk and the trailer.
    Chunked,
    /// Until the back-end closes the connection (HTTP/1.0 style); the client connection closes after it.
    UntilClose,
}

/// The parts of a request head the dispatcher uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head including the blank line.
    pub head_bytes: usize,
    /// GET or HEAD: safe to retry on another back-end.
    pub idempotent: bool,
    pub is_head: bool,
    /// The path without query or fragment, dot segments removed (the LARD target key).
    pub target_path: String,
    pub body_bytes: u64,
    /// The client keeps the connection open after this exchange (1.1 without `close`, 1.0 with `keep-alive`).
    pub keep_alive: bool,
}

/// The parts of a response head the dispatcher uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_bytes: usize,
    pub status: u16,
    pub framing: BodyFraming,
    /// Both sides may reuse the connection after this response (framing permitting).
    pub keep_alive: bool,
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|byte| *byte == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Connection semantics of RFC 9112 §9.3: 1.1 persists unless `close`; 1.0 only with `keep-alive`.
fn keep_alive(version: u8, headers: &[httparse::Header<'_>]) -> bool {
    let mut close = false;
    let mut keep = false;
    for header in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
    {
        close |= has_token(header.value, "close");
        keep |= has_token(header.value, "keep-alive");
    }
    if version >= 1 {
        !close
    } else {
        keep && !close
    }
}

/// The one Content-Length of a head (repeated equal values are allowed), or `None`.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, HeadError> {
    let mut length = None;
    for header in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let text = std::str::from_utf8(header.value).map_err(|_| HeadError::BadContentLength)?;
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HeadError::BadContentLength);
        }
        let value: u64 = text.parse().map_err(|_| HeadError::BadContentLength)?;
        if length.is_some_and(|previous| previous != value) {
            return Err(HeadError::BadContentLength);
        }
        length = Some(value);
    }
    Ok(length)
}

fn is_chunked(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .any(|h| has_token(h.value, "chunked"))
}

fn map_parse_error(error: httparse::Error) -> HeadError {
    match error {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        _ => HeadError::Malformed,
    }
}

/// Parses a request head from the start of `buf`; `Ok(None)` while it is incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head_bytes = match request.parse(buf).map_err(map_parse_error)? {
        httparse::Status::Complete(bytes) => bytes,
        httparse::Status::Partial => return Ok(None),
    };
    let method = request.method.ok_or(HeadError::Malformed)?;
    let path = request.path.ok_or(HeadError::Malformed)?;
    let version = request.version.ok_or(HeadError::Malformed)?;
    if is_chunked(request.headers) {
        return Err(HeadError::ChunkedRequestBody);
    }
    let body_bytes = content_length(request.headers)?.unwrap_or(0);
    Ok(Some(RequestHead {
        head_bytes,
        idempotent: method == "GET" || method == "HEAD",
        is_head: method == "HEAD",
        target_path: normalise_path(path),
        body_bytes,
        keep_alive: keep_alive(version, request.headers),
    }))
}

/// Parses a response head from the start of `buf`; `Ok(None)` while it is incomplete. `request_is_head`:
/// the response to HEAD has no body whatever its headers say.
pub fn parse_response(
    buf: &[u8],
    request_is_head: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let head_bytes = match response.parse(buf).map_err(map_parse_error)? {
        httparse::Status::Complete(bytes) => bytes,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.ok_or(HeadError::Malformed)?;
    let version = response.version.ok_or(HeadError::Malformed)?;
    let no_body = request_is_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        BodyFraming::Empty
    } else if is_chunked(response.headers) {
        BodyFraming::Chunked
    } else {
        match content_length(response.headers)? {
            Some(0) => BodyFraming::Empty,
            Some(length) => BodyFraming::Length(length),
            None => BodyFraming::UntilClose,
        }
    };
    Ok(Some(ResponseHead {
        head_bytes,
        status,
        framing,
        // After 101 the connection speaks another protocol, which the dispatcher does not relay: both
        // connections close after the head.
        keep_alive: keep_alive(version, response.headers)
            && framing != BodyFraming::UntilClose
            && status != 101,
    }))
}

/// The LARD key of a request target: the path without query and fragment, `.`/`..` segments resolved,
/// repeated slashes kept (they name different files on some servers). An absolute-form target
/// (`http://host/path`) is reduced to its path. Percent-escapes are not decoded.
pub fn normalise_path(target: &str) -> String {
    let mut path = target;
    if let Some(rest) = path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"))
    {
        path = rest.find('/').map_or("/", |slash| &rest[slash..]);
    }
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let path = &path[..end];
    if !path.contains("/.") {
        return path.to_string();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/').skip(1) {
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normalised = String::with_capacity(path.len());
    for segment in &segments {
        normalised.push('/');
        normalised.push_str(segment);
    }
    if normalised.is_empty() || path.ends_with("/.") || path.ends_with("/..") {
        normalised.push('/');
    }
    normalised
}

/// Where a chunked body scan stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Size { value: u64, digits: u32 },
    Extension { value: u64, bytes: u32 },
    SizeLf { value: u64 },
    Data { remaining: u64 },
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine { bytes: u32 },
    TrailerLineLf,
    FinalLf,
    Done,
}

/// Finds the end of a chunked body as its bytes pass by, without buffering them (the relay writes the same
/// bytes on unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkedScanner {
    state: ChunkState,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
            },
        }
    }
}

impl ChunkedScanner {
    /// Scans `bytes`; `Ok(Some(n))` when the body ends after the first `n` of them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, HeadError> {
        let mut index = 0;
        while index < bytes.len() {
            if let ChunkState::Data { remaining } = self.state {
                let take = remaining.min((bytes.len() - index) as u64);
                index += take as usize;
                self.state = if take == remaining {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data {
                        remaining: remaining - take,
                    }
                };
                continue;
            }
            let byte = bytes[index];
            index += 1;
            self.state = match (self.state, byte) {
                (ChunkState::Size { value, digits }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    if digits >= CHUNK_SIZE_DIGITS_MAX {
                        return Err(HeadError::Malformed);
                    }
                    let digit = (byte as char).to_digit(16).unwrap_or(0);
                    ChunkState::Size {
                        value: value << 4 | u64::from(digit),
                        digits: digits + 1,
                    }
                }
                (ChunkState::Size { value, digits }, b';' | b' ' | b'\t') if digits > 0 => {
                    ChunkState::Extension { value, bytes: 0 }
                }
                (ChunkState::Size { value, digits }, b'\r') if digits > 0 => {
                    ChunkState::SizeLf { value }
                }
                (ChunkState::Extension { value, .. }, b'\r') => ChunkState::SizeLf { value },
                (ChunkState::Extension { value, bytes }, _) if bytes < CHUNK_LINE_BYTES_MAX => {
                    ChunkState::Extension {
                        value,
                        bytes: bytes + 1,
                    }
                }
                (ChunkState::SizeLf { value: 0 }, b'\n') => ChunkState::TrailerStart,
                (ChunkState::SizeLf { value }, b'\n') => ChunkState::Data { remaining: value },
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => ChunkState::Size {
                    value: 0,
                    digits: 0,
                },
                (ChunkState::TrailerStart, b'\r') => ChunkState::FinalLf,
                (ChunkState::TrailerStart, _) => ChunkState::TrailerLine { bytes: 1 },
                (ChunkState::TrailerLine { .. }, b'\r') => ChunkState::TrailerLineLf,
                (ChunkState::TrailerLine { bytes }, _) if bytes < CHUNK_LINE_BYTES_MAX => {
                    ChunkState::TrailerLine { bytes: bytes + 1 }
                }
                (ChunkState::TrailerLineLf, b'\n') => ChunkState::TrailerStart,
                (ChunkState::FinalLf, b'\n') => {
                    self.state = ChunkState::Done;
                    return Ok(Some(index));
                }
                _ => return Err(HeadError::Malformed),
            };
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_keys_drop_query_and_dot_segments() {
        assert_eq!(normalise_path("/a/b.html?x=1#f"), "/a/b.html");
        assert_eq!(normalise_path("/a/./b/../c"), "/a/c");
        assert_eq!(normalise_path("/.."), "/");
        assert_eq!(normalise_path("/a/.."), "/");
        assert_eq!(normalise_path("http://host:80/x?y"), "/x");
        assert_eq!(normalise_path("//double"), "//double");
    }

    #[test]
    fn connection_semantics_follow_the_version() {
        let head = |text: &str| parse_request(text.as_bytes()).unwrap().unwrap();
        assert!(head("GET / HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert_eq!(
            head("POST /p HTTP/1.1\r\nContent-Length: 12\r\n\r\n").body_bytes,
            12
        );
        assert!(!head("POST /p HTTP/1.1\r\n\r\n").idempotent);
        assert!(head("HEAD /p HTTP/1.1\r\n\r\n").is_head);
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n"), Ok(None));
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HeadError::BadContentLength)
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::ChunkedRequestBody)
        );
    }

    #[test]
    fn response_framing() {
        let framing =
            |text: &str, head: bool| parse_response(text.as_bytes(), head).unwrap().unwrap();
        let length = framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false);
        assert_eq!(
            (length.framing, length.keep_alive),
            (BodyFraming::Length(5), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).framing,
            BodyFraming::Empty
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            )
            .framing,
            BodyFraming::Chunked
        );
        let until_close = framing("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(until_close.framing, BodyFraming::UntilClose);
        assert!(
            !until_close.keep_alive,
            "a close-delimited body ends the connection"
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            )
            .framing,
            BodyFraming::Empty
        );
        assert!(!framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).keep_alive);
        assert!(parse_response(b"NOT HTTP\r\n\r\n", false).is_err());
        assert!(
            !framing(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                false
            )
            .keep_alive
        );
    }

    #[test]
    fn chunked_scanner_finds_the_end_after_trailers() {
        let body = b"5;name=v\r\nhello\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.feed(body), Ok(Some(body.len() - 4)));
        let mut scanner = ChunkedScanner::default();
        assert!(scanner.feed(b"zz\r\n").is_err());
        let mut scanner = ChunkedScanner::default();
        assert!(
            scanner.feed(b"1\r\nab\r\n").is_err(),
            "data longer than its size"
        );
    }

    fn chunked(pieces: &[Vec<u8>]) -> Vec<u8> {
        let mut body = Vec::new();
        for piece in pieces.iter().filter(|p| !p.is_empty()) {
            body.extend_from_slice(format!("{:X}\r\n", piece.len()).as_bytes());
            body.extend_from_slice(piece);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        body
    }

    proptest! {
        /// However the bytes are split into reads, the scanner ends exactly at the body's end.
        #[test]
        fn chunked_scanner_is_split_invariant(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
            cuts in proptest::collection::vec(1usize..16, 1..64),
        ) {
            let body = chunked(&pieces);
            let mut scanner = ChunkedScanner::default();
            let mut offset = 0;
            let mut end = None;
            for cut in cuts.iter().cycle() {
                let next = (offset + cut).min(body.len());
                if let Some(used) = scanner.feed(&body[offset..next]).unwrap() {
                    end = Some(offset + used);
                    break;
                }
                offset = next;
                if offset == body.len() {
                    break;
                }
            }
            prop_assert_eq!(end, Some(body.len()));
        }
    }
}
