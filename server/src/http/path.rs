//! Request paths: percent-decoding and normalisation into a path under ROOT.
//!
//! Owns: the rule that nothing outside ROOT is ever named. The output is a
//! byte string that starts with '/', has no empty, "." or ".." segments, no
//! NUL and no backslash; joining it to ROOT cannot leave ROOT lexically.
//! Symlinks are checked later, against the file system (see `node::files`).
//!
//! Decisions (nginx is the reference): a ".." that would climb above ROOT is
//! 400; an invalid escape, a NUL or a backslash (raw or encoded) is 400; a
//! segment starting with '.' (a dotfile) is 404 unless dotfiles are allowed.
//! `%2f` decodes to '/' and is normalised like one.
//!
//! Limits: the output is at most as long as the input (at most `uri_bytes_max`).

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// 400: invalid escape, NUL, backslash, or ".." above ROOT.
    #[error("400 bad path: {0}")]
    BadRequest(&'static str),
    /// 404: a dotfile while dotfiles are hidden.
    #[error("404 hidden dotfile")]
    Hidden,
}

/// What normalisation found besides the path itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Normalised<'a> {
    /// The decoded path ended with '/' (a directory request).
    pub trailing_slash: bool,
    /// The raw query string after '?', without the '?'.
    pub query: Option<&'a [u8]>,
}

/// Decodes and normalises `raw` (origin-form path with optional query) into `out`.
///
/// `out` is cleared first and reused across requests, so no allocation
/// happens once it has grown to the longest path seen.
pub fn normalise<'a>(
    raw: &'a [u8],
    allow_dotfiles: bool,
    out: &mut Vec<u8>,
) -> Result<Normalised<'a>, PathError> {
    out.clear();
    let (path, query) = match raw.iter().position(|&byte| byte == b'?') {
        Some(at) => (&raw[..at], Some(&raw[at + 1..])),
        None => (raw, None),
    };
    let path = match path.iter().position(|&byte| byte == b'#') {
        Some(at) => &path[..at],
        None => path,
    };
    out.push(b'/');
    let mut segment_start = out.len();
    let mut index = 0;
    let mut trailing_slash = true;
    while index < path.len() {
        let mut byte = path[index];
        index += 1;
        if byte == b'%' {
            byte = decode_escape(path.get(index..index + 2))?;
            index += 2;
        }
        match byte {
            0 => return Err(PathError::BadRequest("NUL in path")),
            b'\\' => return Err(PathError::BadRequest("backslash in path")),
            b'/' => {
                finish_segment(out, segment_start, allow_dotfiles)?;
                segment_start = out.len();
                trailing_slash = true;
            }
            _ => {
                out.push(byte);
                trailing_slash = false;
            }
        }
    }
    let last_was_dot_segment = matches!(&out[segment_start..], b"." | b"..");
    finish_segment(out, segment_start, allow_dotfiles)?;
    if out.len() > 1 && out.last() == Some(&b'/') {
        out.pop();
    }
    Ok(Normalised {
        trailing_slash: trailing_slash || last_was_dot_segment,
        query,
    })
}

/// Closes the segment that starts at `start` in `out` (after its '/').
fn finish_segment(out: &mut Vec<u8>, start: usize, allow_dotfiles: bool) -> Result<(), PathError> {
    match &out[start..] {
        b"" => {}
        b"." => out.truncate(start),
        b".." => {
            out.truncate(start);
            // out ends with the '/' that opened this segment; drop the segment before it.
            if out.len() <= 1 {
                return Err(PathError::BadRequest("path climbs above ROOT"));
            }
            out.pop();
            let parent = out.iter().rposition(|&byte| byte == b'/').unwrap_or(0);
            out.truncate(parent + 1);
        }
        segment if segment[0] == b'.' && !allow_dotfiles => return Err(PathError::Hidden),
        _ => out.push(b'/'),
    }
    Ok(())
}

fn decode_escape(hex: Option<&[u8]>) -> Result<u8, PathError> {
    let invalid = PathError::BadRequest("invalid percent escape");
    let hex = hex.ok_or(invalid)?;
    let high = hex_value(hex[0]).ok_or(invalid)?;
    let low = hex_value(hex[1]).ok_or(invalid)?;
    Ok(high << 4 | low)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(raw: &str) -> Result<(String, bool), PathError> {
        let mut out = Vec::new();
        let found = normalise(raw.as_bytes(), false, &mut out)?;
        Ok((String::from_utf8(out).unwrap(), found.trailing_slash))
    }

    #[test]
    fn plain_paths_are_kept() {
        assert_eq!(norm("/"), Ok(("/".into(), true)));
        assert_eq!(norm("/a/b.txt"), Ok(("/a/b.txt".into(), false)));
        assert_eq!(norm("/a/b/"), Ok(("/a/b".into(), true)));
        assert_eq!(norm("//a///b"), Ok(("/a/b".into(), false)));
        assert_eq!(norm("/a/./b?x=/../"), Ok(("/a/b".into(), false)));
    }

    #[test]
    fn dot_dot_inside_root_is_merged() {
        assert_eq!(norm("/a/b/../c"), Ok(("/a/c".into(), false)));
        assert_eq!(norm("/a/.."), Ok(("/".into(), true)));
        assert_eq!(norm("/a/%2e%2e/c"), Ok(("/c".into(), false)));
    }

    #[test]
    fn traversal_plain_and_encoded_is_refused() {
        let climbing = PathError::BadRequest("path climbs above ROOT");
        for raw in [
            "/..",
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc%2Fpasswd",
            "/a%2f..%2f..%2fetc",
            "/.%2e/x",
        ] {
            assert_eq!(norm(raw), Err(climbing), "{raw}");
        }
        assert_eq!(
            norm("/a\\..\\b"),
            Err(PathError::BadRequest("backslash in path"))
        );
        assert_eq!(
            norm("/a%5c..%5cb"),
            Err(PathError::BadRequest("backslash in path"))
        );
        assert_eq!(norm("/a%00.txt"), Err(PathError::BadRequest("NUL in path")));
        assert_eq!(
            norm("/a%zz"),
            Err(PathError::BadRequest("invalid percent escape"))
        );
        assert_eq!(
            norm("/a%2"),
            Err(PathError::BadRequest("invalid percent escape"))
        );
    }

    #[test]
    fn dotfiles_are_hidden_unless_allowed() {
        assert_eq!(norm("/.git/config"), Err(PathError::Hidden));
        assert_eq!(norm("/a/.htaccess"), Err(PathError::Hidden));
        assert_eq!(norm("/a/%2ehidden"), Err(PathError::Hidden));
        let mut out = Vec::new();
        assert!(normalise(b"/.well-known/x", true, &mut out).is_ok());
        assert_eq!(out, b"/.well-known/x");
    }

    proptest! {
        /// Whatever the input, an accepted path starts with '/', has no
        /// ".", ".." or empty segment, no NUL or backslash.
        #[test]
        fn accepted_paths_stay_under_root(raw in "[/a.%25e2fE5c\\\\]{0,40}") {
            let mut out = Vec::new();
            if normalise(raw.as_bytes(), true, &mut out).is_ok() {
                prop_assert_eq!(out[0], b'/');
                prop_assert!(!out.contains(&0) && !out.contains(&b'\\'));
                if out.len() > 1 {
                    for segment in out[1..].split(|&byte| byte == b'/') {
                        prop_assert!(!segment.is_empty());
                        prop_assert!(segment != b"." && segment != b"..");
                    }
                }
            }
        }
    }
}
