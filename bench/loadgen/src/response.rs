//! Incremental HTTP/1.1 response parser for the client side.
//!
//! Owns: finding where each response ends in a byte stream — status line and headers (via `httparse`), then the
//! body framed by `Content-Length`, `Transfer-Encoding: chunked` (parsed chunk by chunk, trailers skipped), or by
//! connection close — and whether the server will close the connection after it.
//!
//! Model: the caller keeps a read buffer and calls [`ResponseParser::feed`] with the unconsumed bytes; `feed`
//! consumes what it can and reports a completed response. The body is never copied or kept: the parser only counts
//! it, so a response of any size needs only the head to fit in the buffer.
//!
//! Invariants: `feed` never consumes bytes beyond the end of the current response; after a completed response the
//! parser is back at the start state. Limits: a head must fit in [`HEAD_BYTES_MAX`] (32 KiB) with at most
//! [`HEADERS_MAX`] (64) headers; a chunk-size or trailer line must fit in [`LINE_BYTES_MAX`] (4 KiB).

/// Largest response head (status line + headers) accepted, in bytes.
pub const HEAD_BYTES_MAX: usize = 32 * 1024;
/// Most headers accepted in one response.
pub const HEADERS_MAX: usize = 64;
/// Longest chunk-size or trailer line accepted, in bytes.
pub const LINE_BYTES_MAX: usize = 4096;

/// Why a response could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed response head: {0}")]
    Head(String),
    #[error("response head larger than {HEAD_BYTES_MAX} bytes")]
    HeadTooLarge,
    #[error("bad Content-Length")]
    ContentLength,
    #[error("bad chunk framing")]
    Chunk,
    #[error("informational (1xx) responses are not supported")]
    Informational,
}

/// One completed response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    pub status: u16,
    /// The server closes the connection after this response (`Connection: close`, HTTP/1.0, or close-delimited).
    pub close: bool,
    /// Bytes of this response on the wire: head plus body (including chunk framing).
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkDataEnd,
    Trailer,
    UntilClose,
}

/// Parser state for one connection; see the module docs.
#[derive(Debug, Clone)]
pub struct ResponseParser {
    state: State,
    status: u16,
    close: bool,
    bytes: u64,
}

impl Default for ResponseParser {
    fn default() -> Self {
        ResponseParser::new()
    }
}

/// Result of one [`ResponseParser::feed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes consumed from the front of the input.
    pub consumed: usize,
    /// A response ended within the consumed bytes.
    pub completed: Option<Completed>,
}

impl ResponseParser {
    pub fn new() -> ResponseParser {
        ResponseParser {
            state: State::Head,
            status: 0,
            close: false,
            bytes: 0,
        }
    }

    /// True when no byte of a response has been consumed since the last completed one.
    pub fn at_response_start(&self) -> bool {
        self.state == State::Head
    }

    /// Consumes bytes from `input` until one response completes or more input is needed
    /// (then `consumed` may be less than `input.len()`: the rest must be offered again with more bytes after it).
    pub fn feed(&mut self, input: &[u8]) -> Result<Fed, ParseError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Head => {
                    let Some(head_bytes) = self.parse_head(rest)? else {
                        return Ok(Fed {
                            consumed: at,
                            completed: None,
                        });
                    };
                    at += head_bytes;
                    self.bytes += head_bytes as u64;
                    if self.state == (State::Body { remaining: 0 }) {
                        return Ok(Fed {
                            consumed: at,
                            completed: Some(self.complete()),
                        });
                    }
                }
                State::Body { remaining } | State::ChunkData { remaining } => {
                    let take = remaining.min(rest.len() as u64);
                    at += take as usize;
                    self.bytes += take;
                    let remaining = remaining - take;
                    self.state = match (self.state, remaining) {
                        (State::Body { .. }, 0) => {
                            return Ok(Fed {
                                consumed: at,
                                completed: Some(self.complete()),
                            });
                        }
                        (State::Body { .. }, _) => State::Body { remaining },
                        (_, 0) => State::ChunkDataEnd,
                        (_, _) => State::ChunkData { remaining },
                    };
                    if remaining > 0 {
                        return Ok(Fed {
                            consumed: at,
                            completed: None,
                        });
                    }
                }
                State::ChunkSize => {
                    let Some(line_end) = line(rest)? else {
                        return Ok(Fed {
                            consumed: at,
                            completed: None,
                        });
                    };
                    let size = chunk_size(&rest[..line_end - 2])?;
                    at += line_end;
                    self.bytes += line_end as u64;
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::ChunkData { remaining: size }
                    };
                }
                State::ChunkDataEnd => {
                    if rest.len() < 2 {
                        return Ok(Fed {
                            consumed: at,
                            completed: None,
                        });
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ParseError::Chunk);
                    }
                    at += 2;
                    self.bytes += 2;
                    self.state = State::ChunkSize;
                }
                State::Trailer => {
                    let Some(line_end) = line(rest)? else {
                        return Ok(Fed {
                            consumed: at,
                            completed: None,
                        });
                    };
                    at += line_end;
                    self.bytes += line_end as u64;
                    if line_end == 2 {
                        return Ok(Fed {
                            consumed: at,
                            completed: Some(self.complete()),
                        });
                    }
                }
                State::UntilClose => {
                    self.bytes += rest.len() as u64;
                    return Ok(Fed {
                        consumed: input.len(),
                        completed: None,
                    });
                }
            }
        }
    }

    /// The peer closed the connection: completes a close-delimited response, or returns `None` when a response
    /// was cut short (or none had started; see [`ResponseParser::at_response_start`]).
    pub fn finish_at_eof(&mut self) -> Option<Completed> {
        if self.state == State::UntilClose {
            Some(self.complete())
        } else {
            None
        }
    }

    fn complete(&mut self) -> Completed {
        let done = Completed {
            status: self.status,
            close: self.close,
            bytes: self.bytes,
        };
        *self = ResponseParser::new();
        done
    }

    /// Parses a complete head at the front of `input`; sets status, close and the body state.
    fn parse_head(&mut self, input: &[u8]) -> Result<Option<usize>, ParseError> {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        let head_bytes = match response.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if input.len() >= HEAD_BYTES_MAX => {
                return Err(ParseError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(ParseError::Head(e.to_string())),
        };
        let status = response.code.unwrap_or(0);
        if status < 200 {
            return Err(ParseError::Informational);
        }
        let mut content_length = None;
        let mut chunked = false;
        let mut close = response.version == Some(0);
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let text =
                    std::str::from_utf8(header.value).map_err(|_| ParseError::ContentLength)?;
                let length: u64 = text.trim().parse().map_err(|_| ParseError::ContentLength)?;
                if content_length.is_some_and(|known| known != length) {
                    return Err(ParseError::ContentLength);
                }
                content_length = Some(length);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = contains_token(header.value, b"chunked");
            } else if header.name.eq_ignore_ascii_case("connection") {
                if contains_token(header.value, b"close") {
                    close = true;
                } else if contains_token(header.value, b"keep-alive") {
                    close = false;
                }
            }
        }
        self.status = status;
        self.close = close;
        self.state = if status == 204 || status == 304 {
            State::Body { remaining: 0 }
        } else if chunked {
            State::ChunkSize
        } else if let Some(length) = content_length {
            State::Body { remaining: length }
        } else {
            self.close = true;
            State::UntilClose
        };
        Ok(Some(head_bytes))
    }
}

/// Length of the first CRLF-terminated line including the CRLF, or `None` if it is not complete yet.
fn line(input: &[u8]) -> Result<Option<usize>, ParseError> {
    match input.windows(2).position(|w| w == b"\r\n") {
        Some(at) if at <= LINE_BYTES_MAX => Ok(Some(at + 2)),
        Some(_) => Err(ParseError::Chunk),
        None if input.len() > LINE_BYTES_MAX => Err(ParseError::Chunk),
        None => Ok(None),
    }
}

/// Hex chunk size, ignoring chunk extensions after `;`.
fn chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(ParseError::Chunk);
    }
    let mut size = 0u64;
    for &digit in digits {
        let value = (digit as char).to_digit(16).ok_or(ParseError::Chunk)?;
        size = size * 16 + u64::from(value);
    }
    Ok(size)
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes the way a connection does and returns the completed responses.
    fn parse_in_steps(
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<Completed>, ResponseParser), ParseError> {
        let mut parser = ResponseParser::new();
        let mut buffer = Vec::new();
        let mut done = Vec::new();
        for piece in wire.chunks(step) {
            buffer.extend_from_slice(piece);
            loop {
                let fed = parser.feed(&buffer)?;
                buffer.drain(..fed.consumed);
                match fed.completed {
                    Some(c) => done.push(c),
                    None => break,
                }
            }
        }
        Ok((done, parser))
    }

    const TWO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 500 Oops\r\ncontent-length: 0\r\nConnection: close\r\n\r\n";
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";

    #[test]
    fn content_length_pipelined_any_split() {
        for step in 1..=TWO.len() {
            let (done, parser) = parse_in_steps(TWO, step).unwrap();
            assert_eq!(done.len(), 2, "step {step}");
            assert_eq!(
                done[0],
                Completed {
                    status: 200,
                    close: false,
                    bytes: 43
                }
            );
            assert_eq!(done[1].status, 500);
            assert!(done[1].close);
            assert_eq!(done[0].bytes + done[1].bytes, TWO.len() as u64);
            assert!(parser.at_response_start());
        }
    }

    #[test]
    fn chunked_any_split() {
        for step in 1..=CHUNKED.len() {
            let (done, _) = parse_in_steps(CHUNKED, step).unwrap();
            assert_eq!(
                done,
                vec![Completed {
                    status: 200,
                    close: false,
                    bytes: CHUNKED.len() as u64
                }],
                "step {step}"
            );
        }
    }

    #[test]
    fn close_delimited_completes_at_eof_only() {
        let wire = b"HTTP/1.0 200 OK\r\n\r\nbody bytes";
        let (done, mut parser) = parse_in_steps(wire, 7).unwrap();
        assert!(done.is_empty());
        let at_eof = parser.finish_at_eof().unwrap();
        assert_eq!(
            at_eof,
            Completed {
                status: 200,
                close: true,
                bytes: wire.len() as u64
            }
        );
    }

    #[test]
    fn short_body_is_not_completed_at_eof() {
        let (done, mut parser) =
            parse_in_steps(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 4).unwrap();
        assert!(done.is_empty());
        assert!(!parser.at_response_start());
        assert_eq!(parser.finish_at_eof(), None);
    }

    #[test]
    fn http10_keep_alive_and_204() {
        let wire = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 204 No Content\r\n\r\n";
        let (done, _) = parse_in_steps(wire, 3).unwrap();
        assert_eq!(done.len(), 2);
        assert!(!done[0].close);
        assert_eq!(done[1].status, 204);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let cases: [&[u8]; 4] = [
            b"HTTX/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ];
        for wire in cases {
            assert!(
                parse_in_steps(wire, wire.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}
