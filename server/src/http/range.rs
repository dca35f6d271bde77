//! Conditional requests (If-None-Match, If-Modified-Since, If-Range) and
//! byte ranges (Range → 206 single or multipart/byteranges, 416).
//!
//! Owns: the decision between 200, 206, 304 and 416 for a known object.
//! Follows RFC 9110: an unparsable Range is ignored (200); a Range with no
//! satisfiable part is 416 with `Content-Range: bytes */len`; If-None-Match
//! takes precedence over If-Modified-Since; If-Range needs a strong ETag
//! match or an exact Last-Modified date.
//!
//! Limits: at most `ranges_max` (default [`RANGES_MAX`] = 16) ranges; a
//! request with more is answered with the whole object (as nginx's
//! max_ranges does), which bounds the iovec count of a response at 2·16+2.

use crate::http::request::{parse_decimal, trim, RequestHead};
use crate::http::response::parse_http_date;

/// Default cap on ranges in one request.
pub const RANGES_MAX: usize = 16;

/// An inclusive byte range inside an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What conditional requests compare: the object's length, mtime and ETag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validators<'a> {
    pub len: u64,
    pub mtime_secs: u64,
    /// Quoted strong ETag, e.g. `"5f5e1000-1000"`.
    pub etag: &'a [u8],
}

/// What the request's preconditions and Range ask of this object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// 200 with the whole object.
    Full,
    /// 304.
    NotModified,
    /// 206 with the ranges left in the caller's vector (one: single part; more: multipart).
    Partial,
    /// 416.
    NotSatisfiable,
}

/// Decides the response for `object`; fills `ranges` when the answer is 206.
pub fn select(
    head: &RequestHead<'_>,
    object: &Validators<'_>,
    ranges_max: usize,
    ranges: &mut Vec<ByteRange>,
) -> Selection {
    ranges.clear();
    if let Some(tags) = head.if_none_match {
        if etag_list_matches(tags, object.etag) {
            return Selection::NotModified;
        }
    } else if let Some(since) = head.if_modified_since.and_then(parse_http_date) {
        if object.mtime_secs <= since {
            return Selection::NotModified;
        }
    }
    let Some(range) = head.range else {
        return Selection::Full;
    };
    if let Some(validator) = head.if_range {
        if !if_range_holds(validator, object) {
            return Selection::Full;
        }
    }
    parse_ranges(range, object.len, ranges_max, ranges)
}

/// Parses a Range value against an object of `len` bytes.
pub fn parse_ranges(
    value: &[u8],
    len: u64,
    ranges_max: usize,
    ranges: &mut Vec<ByteRange>,
) -> Selection {
    ranges.clear();
    let Some(specs) = value.strip_prefix(b"bytes=") else {
        return Selection::Full;
    };
    let mut specs_seen = 0usize;
    for spec in specs.split(|&byte| byte == b',') {
        let spec = trim(spec);
        if spec.is_empty() {
            continue;
        }
        specs_seen += 1;
        if specs_seen > ranges_max {
            ranges.clear();
            return Selection::Full;
        }
        let Some(dash) = spec.iter().position(|&byte| byte == b'-') else {
            ranges.clear();
            return Selection::Full;
        };
        let (first_text, last_text) = (&spec[..dash], &spec[dash + 1..]);
        let range = if first_text.is_empty() {
            // Suffix: the last N bytes.
            match parse_u64(last_text) {
                Some(0) => None,
                Some(suffix) if len > 0 => Some(ByteRange {
                    first: len.saturating_sub(suffix),
                    last: len - 1,
                }),
                Some(_) => None,
                None => return invalid(ranges),
            }
        } else {
            let Some(first) = parse_u64(first_text) else {
                return invalid(ranges);
            };
            let last = if last_text.is_empty() {
                u64::MAX
            } else {
                match parse_u64(last_text) {
                    Some(last) if last >= first => last,
                    _ => return invalid(ranges),
                }
            };
            (first < len).then(|| ByteRange {
                first,
                last: last.min(len - 1),
            })
        };
        if let Some(range) = range {
            ranges.push(range);
        }
    }
    if specs_seen == 0 {
        return Selection::Full;
    }
    if ranges.is_empty() {
        Selection::NotSatisfiable
    } else {
        Selection::Partial
    }
}

fn invalid(ranges: &mut Vec<ByteRange>) -> Selection {
    ranges.clear();
    Selection::Full
}

fn if_range_holds(validator: &[u8], object: &Validators<'_>) -> bool {
    if validator.starts_with(b"\"") {
        return validator == object.etag;
    }
    if validator.starts_with(b"W/") {
        return false;
    }
    parse_http_date(validator) == Some(object.mtime_secs)
}

/// Weak comparison over a comma-separated entity-tag list or "*".
fn etag_list_matches(list: &[u8], etag: &[u8]) -> bool {
    list.split(|&byte| byte == b',').any(|tag| {
        let tag = trim(tag);
        let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
        tag == b"*" || tag == etag
    })
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    parse_decimal(digits, 19)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{parse_request, ParseLimits};
    use crate::http::response::format_http_date;

    const ETAG: &[u8] = b"\"f4240-3e8\"";
    const OBJECT: Validators<'static> = Validators {
        len: 1000,
        mtime_secs: 1_000_000,
        etag: ETAG,
    };
    use proptest::prelude::*;

    fn ranges(value: &str, len: u64) -> (Selection, Vec<(u64, u64)>) {
        let mut out = Vec::new();
        let selection = parse_ranges(value.as_bytes(), len, RANGES_MAX, &mut out);
        (selection, out.iter().map(|r| (r.first, r.last)).collect())
    }

    #[test]
    fn range_forms() {
        assert_eq!(
            ranges("bytes=0-99", 1000),
            (Selection::Partial, vec![(0, 99)])
        );
        assert_eq!(
            ranges("bytes=900-", 1000),
            (Selection::Partial, vec![(900, 999)])
        );
        assert_eq!(
            ranges("bytes=-100", 1000),
            (Selection::Partial, vec![(900, 999)])
        );
        assert_eq!(
            ranges("bytes=-5000", 1000),
            (Selection::Partial, vec![(0, 999)])
        );
        assert_eq!(
            ranges("bytes=990-5000", 1000),
            (Selection::Partial, vec![(990, 999)])
        );
        assert_eq!(
            ranges("bytes=0-0, 5-9,2000-3000", 1000),
            (Selection::Partial, vec![(0, 0), (5, 9)])
        );
    }

    #[test]
    fn unsatisfiable_and_invalid_ranges() {
        assert_eq!(ranges("bytes=1000-", 1000).0, Selection::NotSatisfiable);
        assert_eq!(ranges("bytes=-0", 1000).0, Selection::NotSatisfiable);
        assert_eq!(ranges("bytes=0-", 0).0, Selection::NotSatisfiable);
        assert_eq!(ranges("bytes=5-1", 1000).0, Selection::Full);
        assert_eq!(ranges("items=0-1", 1000).0, Selection::Full);
        assert_eq!(ranges("bytes=a-b", 1000).0, Selection::Full);
        assert_eq!(ranges("bytes=", 1000).0, Selection::Full);
        let too_many: Vec<String> = (0..17).map(|i| format!("{i}-{i}")).collect();
        assert_eq!(
            ranges(&format!("bytes={}", too_many.join(",")), 1000).0,
            Selection::Full
        );
    }

    fn select_for(fields: &str, object: &Validators<'_>) -> Selection {
        let request = format!("GET /f HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
        let head = parse_request(request.as_bytes(), &ParseLimits::default())
            .unwrap()
            .unwrap();
        select(&head, object, RANGES_MAX, &mut Vec::new())
    }

    #[test]
    fn conditionals() {
        let object = &OBJECT;
        let etag = String::from_utf8(ETAG.to_vec()).unwrap();
        let modified = String::from_utf8(format_http_date(1_000_000).to_vec()).unwrap();
        let later = String::from_utf8(format_http_date(1_000_001).to_vec()).unwrap();
        let earlier = String::from_utf8(format_http_date(999_999).to_vec()).unwrap();
        assert_eq!(
            select_for(&format!("If-None-Match: {etag}\r\n"), object),
            Selection::NotModified
        );
        assert_eq!(
            select_for(&format!("If-None-Match: \"x\", W/{etag}\r\n"), object),
            Selection::NotModified
        );
        assert_eq!(
            select_for("If-None-Match: *\r\n", object),
            Selection::NotModified
        );
        assert_eq!(
            select_for("If-None-Match: \"other\"\r\n", object),
            Selection::Full
        );
        assert_eq!(
            select_for(&format!("If-Modified-Since: {modified}\r\n"), object),
            Selection::NotModified
        );
        assert_eq!(
            select_for(&format!("If-Modified-Since: {later}\r\n"), object),
            Selection::NotModified
        );
        assert_eq!(
            select_for(&format!("If-Modified-Since: {earlier}\r\n"), object),
            Selection::Full
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            select_for(
                &format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {later}\r\n"),
                object
            ),
            Selection::Full
        );
        assert_eq!(
            select_for(&format!("Range: bytes=0-1\r\nIf-Range: {etag}\r\n"), object),
            Selection::Partial
        );
        assert_eq!(
            select_for("Range: bytes=0-1\r\nIf-Range: \"old\"\r\n", object),
            Selection::Full
        );
        assert_eq!(
            select_for(
                &format!("Range: bytes=0-1\r\nIf-Range: W/{etag}\r\n"),
                object
            ),
            Selection::Full
        );
        assert_eq!(
            select_for(
                &format!("Range: bytes=0-1\r\nIf-Range: {modified}\r\n"),
                object
            ),
            Selection::Partial
        );
        assert_eq!(
            select_for(
                &format!("Range: bytes=0-1\r\nIf-Range: {earlier}\r\n"),
                object
            ),
            Selection::Full
        );
        assert_eq!(
            select_for("Range: bytes=5000-\r\n", object),
            Selection::NotSatisfiable
        );
    }

    proptest! {
        /// Every range handed back lies inside the object and there are at most ranges_max.
        #[test]
        fn ranges_stay_inside_the_object(value in "bytes=[0-9,\\- ]{0,40}", len in 0u64..5000) {
            let mut out = Vec::new();
            let selection = parse_ranges(value.as_bytes(), len, 4, &mut out);
            prop_assert!(out.len() <= 4);
            prop_assert_eq!(selection == Selection::Partial, !out.is_empty());
            for range in out {
                prop_assert!(range.first <= range.last && range.last < len);
            }
        }
    }
}
