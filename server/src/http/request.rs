//! Request-head parsing: httparse plus the strict checks nginx applies.
//!
//! Owns: turning the bytes read so far into either "need more bytes", a
//! validated [`RequestHead`] borrowing from those bytes, or a typed
//! [`RequestError`] that names the response status.
//!
//! Invariants: nothing here allocates; a returned head only borrows the input;
//! every error maps to exactly one status (400, 414, 431 or 501) and the
//! connection is closed after it (the caller's job).
//!
//! Limits: at most [`HEADERS_COUNT_MAX`] (64) header fields; the request target
//! at most `uri_bytes_max` (default 8 KiB, else 414); the whole head at most
//! `header_bytes_max` (default 16 KiB, else 431).

/// Header fields accepted in one request; more is 431 (nginx allows about 100 with 8 KiB buffers).
pub const HEADERS_COUNT_MAX: usize = 64;

/// Bytes allowed in a request line beyond the target (method, version, spaces).
pub const REQUEST_LINE_SLACK_BYTES: usize = 32;

/// The methods the node tells apart; everything else is answered 405.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

/// HTTP versions httparse accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// Size limits for one request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    /// Longest request target (414 beyond).
    pub uri_bytes_max: usize,
    /// Longest head, request line included (431 beyond).
    pub header_bytes_max: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            uri_bytes_max: 8 * 1024,
            header_bytes_max: 16 * 1024,
        }
    }
}

/// Why a request head was refused; each variant is one status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("400 bad request: {0}")]
    BadRequest(&'static str),
    #[error("414 request target longer than uri_bytes_max")]
    UriTooLong,
    #[error("431 request head larger than header_bytes_max or too many fields")]
    HeaderTooLarge,
    #[error("501 transfer-encoding other than identity")]
    NotImplemented,
}

impl RequestError {
    pub fn status(self) -> crate::http::Status {
        use crate::http::Status;
        match self {
            RequestError::BadRequest(_) => Status::BadRequest,
            RequestError::UriTooLong => Status::UriTooLong,
            RequestError::HeaderTooLarge => Status::HeaderFieldsTooLarge,
            RequestError::NotImplemented => Status::NotImplemented,
        }
    }
}

/// A validated request head; every slice borrows the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead<'b> {
    pub method: Method,
    /// The method as sent (for the access log).
    pub method_bytes: &'b [u8],
    /// The request target as sent (for the access log).
    pub target: &'b [u8],
    /// Path and query in origin form (absolute-form targets are stripped to it).
    pub path: &'b [u8],
    pub version: Version,
    /// Host from an absolute-form target, else the Host field.
    pub host: Option<&'b [u8]>,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// Body bytes following the head (to be skipped; GET/HEAD bodies are ignored).
    pub content_length: u64,
    pub if_none_match: Option<&'b [u8]>,
    pub if_modified_since: Option<&'b [u8]>,
    pub range: Option<&'b [u8]>,
    pub if_range: Option<&'b [u8]>,
    pub user_agent: Option<&'b [u8]>,
    pub referer: Option<&'b [u8]>,
    /// Bytes of the buffer the head occupies.
    pub head_bytes: usize,
}

/// Parses one request head from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (and the limits still allow them).
pub fn parse_request<'b>(
    buf: &'b [u8],
    limits: &ParseLimits,
) -> Result<Option<RequestHead<'b>>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_COUNT_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let status = match request.parse(buf) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeaderTooLarge),
        Err(httparse::Error::Version) => return Err(RequestError::BadRequest("version")),
        Err(httparse::Error::Token) => return Err(RequestError::BadRequest("method")),
        Err(httparse::Error::HeaderName) => return Err(RequestError::BadRequest("header name")),
        Err(httparse::Error::HeaderValue) => return Err(RequestError::BadRequest("header value")),
        Err(_) => return Err(RequestError::BadRequest("request line")),
    };
    let head_bytes = match status {
        httparse::Status::Partial => return partial_verdict(buf, limits),
        httparse::Status::Complete(head_bytes) => head_bytes,
    };
    let target = request.path.unwrap_or("").as_bytes();
    if target.len() > limits.uri_bytes_max {
        return Err(RequestError::UriTooLong);
    }
    if head_bytes > limits.header_bytes_max {
        return Err(RequestError::HeaderTooLarge);
    }
    let version = match request.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(RequestError::BadRequest("version")),
    };
    let method_bytes = request.method.unwrap_or("").as_bytes();
    let method = match method_bytes {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        _ => Method::Other,
    };
    let (path, target_host) = split_target(target)?;

    let mut head = RequestHead {
        method,
        method_bytes,
        target,
        path,
        version,
        host: None,
        keep_alive: version == Version::Http11,
        content_length: 0,
        if_none_match: None,
        if_modified_since: None,
        range: None,
        if_range: None,
        user_agent: None,
        referer: None,
        head_bytes,
    };
    let mut host_field: Option<&'b [u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        let value = trim(header.value);
        if name.eq_ignore_ascii_case(b"host") {
            if host_field.is_some() {
                return Err(RequestError::BadRequest("duplicate Host"));
            }
            if !valid_host(value) {
                return Err(RequestError::BadRequest("invalid Host"));
            }
            host_field = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_content_length(value)?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(RequestError::BadRequest("conflicting Content-Length"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !value.eq_ignore_ascii_case(b"identity") {
                return Err(RequestError::NotImplemented);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&byte| byte == b',') {
                let token = trim(token);
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"if-none-match") {
            head.if_none_match = Some(value);
        } else if name.eq_ignore_ascii_case(b"if-modified-since") {
            head.if_modified_since = Some(value);
        } else if name.eq_ignore_ascii_case(b"range") {
            head.range = Some(value);
        } else if name.eq_ignore_ascii_case(b"if-range") {
            head.if_range = Some(value);
        } else if name.eq_ignore_ascii_case(b"user-agent") {
            head.user_agent = Some(value);
        } else if name.eq_ignore_ascii_case(b"referer") {
            head.referer = Some(value);
        }
    }
    if version == Version::Http11 && host_field.is_none() {
        return Err(RequestError::BadRequest("missing Host"));
    }
    head.host = target_host.or(host_field);
    head.content_length = content_length.unwrap_or(0);
    head.keep_alive = match version {
        Version::Http11 => !connection_close,
        Version::Http10 => connection_keep_alive && !connection_close,
    };
    Ok(Some(head))
}

/// An incomplete head: wait for more bytes unless a limit is already exceeded.
fn partial_verdict<'b>(
    buf: &'b [u8],
    limits: &ParseLimits,
) -> Result<Option<RequestHead<'b>>, RequestError> {
    let line_end = buf.iter().position(|&byte| byte == b'\n');
    match line_end {
        None if buf.len() > limits.uri_bytes_max + REQUEST_LINE_SLACK_BYTES => {
            Err(RequestError::UriTooLong)
        }
        Some(end) if end > limits.uri_bytes_max + REQUEST_LINE_SLACK_BYTES => {
            Err(RequestError::UriTooLong)
        }
        _ if buf.len() > limits.header_bytes_max => Err(RequestError::HeaderTooLarge),
        _ => Ok(None),
    }
}

/// Splits a target into (origin-form path, host from absolute form).
fn split_target(target: &[u8]) -> Result<(&[u8], Option<&[u8]>), RequestError> {
    if target.first() == Some(&b'/') {
        return Ok((target, None));
    }
    let rest = strip_prefix_ignore_case(target, b"http://")
        .or_else(|| strip_prefix_ignore_case(target, b"https://"))
        .ok_or(RequestError::BadRequest("request target"))?;
    let authority_end = rest
        .iter()
        .position(|&byte| byte == b'/' || byte == b'?')
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.is_empty() || authority.contains(&b'@') || !valid_host(authority) {
        return Err(RequestError::BadRequest("absolute-form authority"));
    }
    let path: &[u8] = if path.is_empty() { b"/" } else { path };
    if path[0] != b'/' {
        // "http://host?query": nginx treats the path as "/".
        return Ok((b"/", Some(authority)));
    }
    Ok((path, Some(authority)))
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&bytes[prefix.len()..])
    } else {
        None
    }
}

/// Host names, IPv4/IPv6 literals and a port; anything else (slashes, spaces, backslashes) is 400.
fn valid_host(host: &[u8]) -> bool {
    host.iter()
        .all(|&byte| byte.is_ascii_alphanumeric() || b".-_:[]".contains(&byte))
        && !host.starts_with(b".")
        && !host.windows(2).any(|pair| pair == b"..")
}

fn parse_content_length(value: &[u8]) -> Result<u64, RequestError> {
    // 18 digits stay below u64::MAX.
    parse_decimal(value, 18).ok_or(RequestError::BadRequest("invalid Content-Length"))
}

/// Parses 1 to `digits_max` ASCII digits (at most 19, so no overflow).
pub(crate) fn parse_decimal(digits: &[u8], digits_max: usize) -> Option<u64> {
    debug_assert!(digits_max <= 19, "digits_max {digits_max} may overflow u64");
    if digits.is_empty() || digits.len() > digits_max || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |total, &digit| total * 10 + u64::from(digit - b'0')),
    )
}

/// Strips spaces and tabs at both ends.
pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&byte| byte != b' ' && byte != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&byte| byte != b' ' && byte != b'\t')
        .map_or(start, |last| last + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(bytes: &[u8]) -> Result<Option<RequestHead<'_>>, RequestError> {
        parse_request(bytes, &ParseLimits::default())
    }

    fn complete(bytes: &[u8]) -> RequestHead<'_> {
        parse(bytes).expect("valid").expect("complete")
    }

    #[test]
    fn simple_get_is_keep_alive_on_1_1() {
        let input = b"GET /a.txt?x=1 HTTP/1.1\r\nHost: example\r\n\r\nnext";
        let head = complete(input);
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.path, b"/a.txt?x=1");
        assert_eq!(head.host, Some(&b"example"[..]));
        assert!(head.keep_alive);
        assert_eq!(head.head_bytes, input.len() - 4);
    }

    #[test]
    fn http_1_0_closes_unless_keep_alive_is_asked() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(parse(b"GE"), Ok(None));
    }

    #[test]
    fn bad_inputs_get_their_exact_errors() {
        let cases: &[(&[u8], RequestError)] = &[
            (
                b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                RequestError::BadRequest("header name"),
            ),
            (
                b"GET / HTTP/1.1\r\n\r\n",
                RequestError::BadRequest("missing Host"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                RequestError::BadRequest("duplicate Host"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                RequestError::BadRequest("conflicting Content-Length"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                RequestError::BadRequest("invalid Content-Length"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                RequestError::NotImplemented,
            ),
            (
                b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
                RequestError::BadRequest("version"),
            ),
            (
                b"GET a HTTP/1.1\r\nHost: a\r\n\r\n",
                RequestError::BadRequest("request target"),
            ),
            (
                b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
                RequestError::BadRequest("method"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
                RequestError::BadRequest("invalid Host"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse(input),
                Err(*expected),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn identical_content_lengths_and_identity_encoding_are_accepted() {
        let head = complete(
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\nTransfer-Encoding: identity\r\n\r\n",
        );
        assert_eq!(head.content_length, 3);
    }

    #[test]
    fn other_methods_parse_for_a_405() {
        assert_eq!(
            complete(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n").method,
            Method::Other
        );
        assert_eq!(
            complete(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").method,
            Method::Head
        );
    }

    #[test]
    fn absolute_form_takes_host_and_path() {
        let head = complete(b"GET http://Example:8080/x/y?q HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(head.path, b"/x/y?q");
        assert_eq!(head.host, Some(&b"Example:8080"[..]));
        let bare = complete(b"GET https://example HTTP/1.1\r\nHost: e\r\n\r\n");
        assert_eq!(bare.path, b"/");
    }

    #[test]
    fn long_target_is_414_and_large_head_is_431() {
        let limits = ParseLimits {
            uri_bytes_max: 64,
            header_bytes_max: 256,
        };
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100));
        assert_eq!(
            parse_request(long_target.as_bytes(), &limits),
            Err(RequestError::UriTooLong)
        );
        let unfinished_line = format!("GET /{}", "a".repeat(200));
        assert_eq!(
            parse_request(unfinished_line.as_bytes(), &limits),
            Err(RequestError::UriTooLong)
        );
        let big_head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n",
            "b".repeat(300)
        );
        assert_eq!(
            parse_request(big_head.as_bytes(), &limits),
            Err(RequestError::HeaderTooLarge)
        );
        let many: String = (0..HEADERS_COUNT_MAX + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(parse(many.as_bytes()), Err(RequestError::HeaderTooLarge));
    }

    proptest! {
        /// No input panics; any head that parses is within the limits and
        /// its path starts with '/'.
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let limits = ParseLimits { uri_bytes_max: 128, header_bytes_max: 256 };
            if let Ok(Some(head)) = parse_request(&input, &limits) {
                prop_assert!(head.head_bytes <= 256);
                prop_assert!(head.target.len() <= 128);
                prop_assert_eq!(head.path.first(), Some(&b'/'));
            }
        }

        /// Splitting a valid request anywhere gives "need more" before the end.
        #[test]
        fn every_prefix_of_a_valid_head_is_partial(cut in 0usize..40) {
            let full = b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n";
            let cut = cut.min(full.len() - 1);
            prop_assert_eq!(parse(&full[..cut]), Ok(None));
        }
    }
}
