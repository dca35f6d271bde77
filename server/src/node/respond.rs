//! From a parsed request to the bytes of its response: file lookup through the shard's cache, the symlink check,
//! directories (index.html, 301), conditional and range selection, and the head written into the connection's
//! reused [`ResponseBufs`]. Synchronous: the cache is borrowed only inside these functions, never across an await.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::iov::ResponseBufs;
use super::shard::Shard;
use crate::cache::{
    CacheError, CachedObject, Fetched, FileMeta, FileStream, LargeFile, Lookup, MappedSlice,
};
use crate::http::range::{select, ByteRange, Selection, Validators};
use crate::http::response::{
    self, content_length, decimal_len, end_head, object_fields, push_decimal, start_head,
    unix_secs, write_simple, HTTP_DATE_BYTES,
};
use crate::http::{Method, RequestHead, Status};

/// What was sent (or is about to be streamed) for one request.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: Status,
    /// Body bytes (the Content-Length sent, 0 for HEAD and bodiless statuses).
    pub body_bytes: u64,
    /// A large file's body, streamed after the head.
    pub stream: Option<FileStream>,
    /// A large cached body, sent with `vmsplice` + `splice` after the head (not in the `ResponseBufs`).
    pub spliced: Option<MappedSlice>,
    /// Whether the connection stays open after this response.
    pub keep_alive: bool,
}

/// The request after parsing and path normalisation.
pub(crate) struct Request<'a, 'b> {
    pub head: &'a RequestHead<'b>,
    /// Normalised path (starts with '/').
    pub path: &'a [u8],
    pub trailing_slash: bool,
    pub query: Option<&'a [u8]>,
    pub keep_alive: bool,
}

const MULTIPART_BOUNDARY_PREFIX: &[u8] = b"larder";
/// Digits of the per-shard counter in a multipart boundary.
const MULTIPART_BOUNDARY_DIGITS: usize = 20;

enum Source {
    Cached(Arc<CachedObject>),
    Large(LargeFile),
}

impl Source {
    fn meta(&self) -> &FileMeta {
        match self {
            Source::Cached(object) => &object.meta,
            Source::Large(large) => &large.meta,
        }
    }
}

/// A complete short response (errors, 405, 408, 503); `extra` are whole field lines.
pub(crate) fn simple(
    shard: &Shard,
    out: &mut ResponseBufs,
    status: Status,
    extra: &[u8],
    keep_alive: bool,
    send_body: bool,
) -> Answer {
    let date = shard.date();
    let keep_alive = keep_alive && !status.closes_connection();
    let before = out.head_mut().len();
    write_simple(
        out.head_mut(),
        status,
        &date,
        &[extra, &shard.shard_field],
        keep_alive,
        send_body,
    );
    let written = out.head_mut().len() - before;
    let body_bytes = if send_body {
        (3 + 1 + status.reason().len() + 1) as u64
    } else {
        0
    };
    debug_assert!(
        written as u64 >= body_bytes,
        "response shorter than its body"
    );
    Answer {
        status,
        body_bytes,
        stream: None,
        spliced: None,
        keep_alive,
    }
}

/// Answers a GET or HEAD for a normalised path.
pub(crate) fn respond(
    shard: &Shard,
    request: &Request<'_, '_>,
    fs_path: &mut Vec<u8>,
    out: &mut ResponseBufs,
    ranges: &mut Vec<ByteRange>,
) -> Answer {
    let send_body = request.head.method == Method::Get;
    fs_path.clear();
    fs_path.extend_from_slice(shard.root.as_os_str().as_bytes());
    if request.path.len() > 1 {
        fs_path.extend_from_slice(request.path);
    }
    if request.trailing_slash {
        fs_path.extend_from_slice(b"/index.html");
    }
    let path = Path::new(OsStr::from_bytes(fs_path));
    let now_ms = shard.now_ms();
    let fetched = {
        let mut cache = shard.cache.borrow_mut();
        let fetched = match cache.lookup(path, now_ms) {
            Lookup::Hit(object) => Ok(Fetched::Cached(object)),
            Lookup::Miss | Lookup::Stale => {
                cache.get_or_load_with(path, now_ms, |path| open_inside_root(shard, path))
            }
        };
        shard.counters.set_cache(&cache.counters());
        fetched
    };
    match fetched {
        Ok(Fetched::Cached(object)) => {
            send_file(shard, request, Source::Cached(object), out, ranges)
        }
        Ok(Fetched::TooLarge(large)) => {
            send_file(shard, request, Source::Large(large), out, ranges)
        }
        Err(CacheError::IsDirectory) if !request.trailing_slash => {
            redirect_to_directory(shard, request, out)
        }
        Err(CacheError::NotFound) if request.trailing_slash => {
            // A directory without index.html is 403, as nginx answers without autoindex.
            let mut directory = shard.root.clone();
            directory.push(OsStr::from_bytes(
                request.path.strip_prefix(b"/").unwrap_or(request.path),
            ));
            let status = if directory.is_dir() {
                Status::Forbidden
            } else {
                Status::NotFound
            };
            simple(shard, out, status, b"", request.keep_alive, send_body)
        }
        Err(CacheError::NotFound) | Err(CacheError::IsDirectory) => simple(
            shard,
            out,
            Status::NotFound,
            b"",
            request.keep_alive,
            send_body,
        ),
        Err(CacheError::PermissionDenied) => simple(
            shard,
            out,
            Status::Forbidden,
            b"",
            request.keep_alive,
            send_body,
        ),
        Err(CacheError::Io(error)) => {
            tracing::warn!(shard = shard.index, path = %path.display(), %error, "file read failed");
            simple(
                shard,
                out,
                Status::InternalServerError,
                b"",
                false,
                send_body,
            )
        }
    }
}

/// Opens `path` for the cache, never outside ROOT: symlinks may point anywhere inside ROOT, never outside it.
///
/// Fast path, one system call: `openat2(ROOT, path, O_RDONLY, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, which the
/// kernel resolves without ever stepping outside ROOT, so the file checked is the file read. It refuses (`EXDEV`) a
/// path whose resolution would leave ROOT and also one that meets an absolute symlink, even an absolute symlink
/// into ROOT. Those, a race the kernel reports (`EAGAIN`), kernels without `openat2` (before 5.6, `ENOSYS`) and
/// sandboxes that refuse it (`EPERM`) take the slow path: `canonicalize` (a `readlink` per path component, 5.5% of
/// a shard's CPU on a Zipf mix with 9% misses), a prefix test, then an open by name.
fn open_inside_root(shard: &Shard, path: &Path) -> Result<File, CacheError> {
    let relative = match path.strip_prefix(&shard.root) {
        Ok(relative) if relative.as_os_str().is_empty() => Path::new("."),
        Ok(relative) => relative,
        Err(_) => return open_by_canonical_path(shard, path),
    };
    match rustix::fs::openat2(
        &shard.root_dir,
        relative,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok(File::from(fd)),
        // EPERM: a seccomp filter that refuses openat2 (older container runtimes); the slow path reports a real
        // permission error from its own open.
        Err(Errno::XDEV | Errno::AGAIN | Errno::NOSYS | Errno::PERM | Errno::LOOP) => {
            open_by_canonical_path(shard, path)
        }
        Err(errno) => Err(CacheError::from(std::io::Error::from(errno))),
    }
}

fn open_by_canonical_path(shard: &Shard, path: &Path) -> Result<File, CacheError> {
    let real = std::fs::canonicalize(path)?;
    if real.starts_with(&shard.root) {
        Ok(File::open(real)?)
    } else {
        Err(CacheError::NotFound)
    }
}

fn redirect_to_directory(
    shard: &Shard,
    request: &Request<'_, '_>,
    out: &mut ResponseBufs,
) -> Answer {
    let mut location = Vec::with_capacity(request.path.len() + 32);
    location.extend_from_slice(b"Location: ");
    percent_encode_path(&mut location, request.path);
    location.push(b'/');
    if let Some(query) = request.query {
        location.push(b'?');
        location.extend_from_slice(query);
    }
    location.extend_from_slice(b"\r\n");
    let send_body = request.head.method == Method::Get;
    simple(
        shard,
        out,
        Status::MovedPermanently,
        &location,
        request.keep_alive,
        send_body,
    )
}

/// Encodes every byte outside RFC 3986's unreserved, sub-delims, ':', '@' and '/' as %XX (so a decoded CR/LF
/// can never reach a header).
pub(crate) fn percent_encode_path(out: &mut Vec<u8>, path: &[u8]) {
    for &byte in path {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte) {
            out.push(byte);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

fn begin(shard: &Shard, buf: &mut Vec<u8>, status: Status, date: &[u8; HTTP_DATE_BYTES]) {
    start_head(buf, status, date);
    buf.extend_from_slice(&shard.shard_field);
}

/// Status line, Date, Server, the shard field and the object's Content-Type, Last-Modified, ETag, Accept-Ranges.
fn begin_object(
    shard: &Shard,
    buf: &mut Vec<u8>,
    status: Status,
    date: &[u8; HTTP_DATE_BYTES],
    meta: &FileMeta,
) {
    begin(shard, buf, status, date);
    object_fields(
        buf,
        meta.content_type,
        meta.last_modified.as_bytes(),
        meta.etag.as_bytes(),
    );
}

fn send_file(
    shard: &Shard,
    request: &Request<'_, '_>,
    source: Source,
    out: &mut ResponseBufs,
    ranges: &mut Vec<ByteRange>,
) -> Answer {
    let meta = source.meta();
    let len = meta.size_bytes;
    let validators = Validators {
        len,
        mtime_secs: unix_secs(meta.mtime),
        etag: meta.etag.as_bytes(),
    };
    let mut selection = select(
        request.head,
        &validators,
        shard.live().config.ranges_max,
        ranges,
    );
    if selection == Selection::Partial && ranges.len() > 1 && matches!(source, Source::Large(_)) {
        // Multipart ranges of streamed files are answered with the whole file (allowed by RFC 9110).
        selection = Selection::Full;
    }
    let send_body = request.head.method == Method::Get;
    let date = shard.date();
    let keep_alive = request.keep_alive;
    let mut answer = Answer {
        status: Status::Ok,
        body_bytes: 0,
        stream: None,
        spliced: None,
        keep_alive,
    };
    match selection {
        Selection::NotModified => {
            let buf = out.head_mut();
            begin(shard, buf, Status::NotModified, &date);
            response::field(buf, b"Last-Modified", meta.last_modified.as_bytes());
            response::field(buf, b"ETag", meta.etag.as_bytes());
            end_head(buf, keep_alive);
            answer.status = Status::NotModified;
        }
        Selection::NotSatisfiable => {
            let mut field = Vec::with_capacity(48);
            field.extend_from_slice(b"Content-Range: bytes */");
            push_decimal(&mut field, len);
            field.extend_from_slice(b"\r\n");
            return simple(
                shard,
                out,
                Status::RangeNotSatisfiable,
                &field,
                keep_alive,
                send_body,
            );
        }
        Selection::Full => {
            let buf = out.head_mut();
            begin_object(shard, buf, Status::Ok, &date, meta);
            content_length(buf, len);
            end_head(buf, keep_alive);
            answer.body_bytes = len;
            if send_body {
                attach_body(shard, source, 0..len, out, &mut answer);
            }
        }
        Selection::Partial if ranges.len() == 1 => {
            let range = ranges[0];
            let buf = out.head_mut();
            begin_object(shard, buf, Status::PartialContent, &date, meta);
            push_content_range(buf, &range, len);
            buf.extend_from_slice(b"\r\n");
            content_length(buf, range.len());
            end_head(buf, keep_alive);
            answer.status = Status::PartialContent;
            answer.body_bytes = range.len();
            if send_body {
                attach_body(shard, source, range.first..range.last + 1, out, &mut answer);
            }
        }
        Selection::Partial => {
            let Source::Cached(object) = source else {
                unreachable!("multipart ranges of streamed files were turned into Full above");
            };
            answer.status = Status::PartialContent;
            answer.body_bytes =
                multipart(shard, &object, ranges, send_body, keep_alive, &date, out);
        }
    }
    answer
}

fn attach_body(
    shard: &Shard,
    source: Source,
    range: std::ops::Range<u64>,
    out: &mut ResponseBufs,
    answer: &mut Answer,
) {
    match source {
        Source::Cached(object) => {
            let range = range.start as usize..range.end as usize;
            match object.mapped_slice(range.clone()) {
                Some(mapped) => answer.spliced = Some(mapped),
                None => out.push_body(object.slice(range)),
            }
        }
        Source::Large(large) => {
            let chunk_bytes = shard.cache.borrow().config().stream_chunk_bytes;
            answer.stream = Some(large.into_stream(range, chunk_bytes));
        }
    }
}

/// A multipart/byteranges 206 (RFC 9110 §14.6); returns the body length.
fn multipart(
    shard: &Shard,
    object: &CachedObject,
    ranges: &[ByteRange],
    send_body: bool,
    keep_alive: bool,
    date: &[u8; HTTP_DATE_BYTES],
    out: &mut ResponseBufs,
) -> u64 {
    let meta = &object.meta;
    let len = meta.size_bytes;
    let boundary_number = shard.boundaries.get() + 1;
    shard.boundaries.set(boundary_number);
    let boundary_len = MULTIPART_BOUNDARY_PREFIX.len() + MULTIPART_BOUNDARY_DIGITS;
    // Part head: "\r\n--B\r\nContent-Type: T\r\nContent-Range: bytes a-b/len\r\n\r\n"; closing "\r\n--B--\r\n".
    let part_fixed = 4 + boundary_len + 2 + 14 + meta.content_type.len() + 2 + 21 + 1 + 1 + 4;
    let body_bytes: u64 = ranges
        .iter()
        .map(|range| {
            (part_fixed + decimal_len(range.first) + decimal_len(range.last) + decimal_len(len))
                as u64
                + range.len()
        })
        .sum::<u64>()
        + (4 + boundary_len + 4) as u64;
    let buf = out.head_mut();
    begin(shard, buf, Status::PartialContent, date);
    buf.extend_from_slice(b"Content-Type: multipart/byteranges; boundary=");
    push_boundary(buf, boundary_number);
    buf.extend_from_slice(b"\r\nLast-Modified: ");
    buf.extend_from_slice(meta.last_modified.as_bytes());
    buf.extend_from_slice(b"\r\nETag: ");
    buf.extend_from_slice(meta.etag.as_bytes());
    buf.extend_from_slice(b"\r\n");
    content_length(buf, body_bytes);
    end_head(buf, keep_alive);
    if !send_body {
        return body_bytes;
    }
    for range in ranges {
        let buf = out.head_mut();
        buf.extend_from_slice(b"\r\n--");
        push_boundary(buf, boundary_number);
        buf.extend_from_slice(b"\r\nContent-Type: ");
        buf.extend_from_slice(meta.content_type.as_bytes());
        buf.extend_from_slice(b"\r\n");
        push_content_range(buf, range, len);
        buf.extend_from_slice(b"\r\n\r\n");
        let slice: Bytes = object.slice(range.first as usize..range.last as usize + 1);
        out.push_body(slice);
    }
    let buf = out.head_mut();
    buf.extend_from_slice(b"\r\n--");
    push_boundary(buf, boundary_number);
    buf.extend_from_slice(b"--\r\n");
    body_bytes
}

/// `Content-Range: bytes first-last/len` without the line end.
fn push_content_range(buf: &mut Vec<u8>, range: &ByteRange, len: u64) {
    buf.extend_from_slice(b"Content-Range: bytes ");
    push_decimal(buf, range.first);
    buf.push(b'-');
    push_decimal(buf, range.last);
    buf.push(b'/');
    push_decimal(buf, len);
}

fn push_boundary(buf: &mut Vec<u8>, number: u64) {
    buf.extend_from_slice(MULTIPART_BOUNDARY_PREFIX);
    let _ = write!(buf, "{number:0width$}", width = MULTIPART_BOUNDARY_DIGITS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_never_carry_control_bytes() {
        let mut out = Vec::new();
        percent_encode_path(&mut out, b"/a b/\r\nSet-Cookie:x/%");
        assert_eq!(out, b"/a%20b/%0D%0ASet-Cookie:x/%25");
    }
}
