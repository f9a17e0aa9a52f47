//! Path normalisation: one normalised path serves routing, policy and forwarding, so that a
//! path can never be read one way by ucgate and another way by the upstream.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Why a request path was refused (always a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotOriginForm,
    #[error("the path has an invalid percent-escape")]
    BadEscape,
    #[error("the path has an encoded slash")]
    EncodedSlash,
    #[error("the path has a backslash")]
    Backslash,
    #[error("the path has a control character")]
    ControlChar,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path has a dot segment with parameters")]
    DotSegmentParameter,
}

/// Normalises an origin-form path: percent-escapes of unreserved characters are decoded (others
/// are kept, upper-cased, and never decoded), `.` and `..` segments are resolved and empty
/// segments merged. Anything ambiguous is refused rather than guessed.
pub fn normalise_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    // Where each output segment starts, to pop on `..`.
    let mut starts: Vec<usize> = Vec::new();
    let mut segment = String::new();
    let mut segments = raw[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        decode_unreserved(seg, &mut segment)?;
        match segment.as_str() {
            "" => {}
            "." => {}
            ".." => {
                let start = starts.pop().ok_or(PathError::AboveRoot)?;
                out.truncate(start);
            }
            s => {
                if is_dot_with_parameters(s) {
                    return Err(PathError::DotSegmentParameter);
                }
                starts.push(out.len());
                out.push('/');
                out.push_str(s);
                continue;
            }
        }
        // An empty, `.` or `..` last segment leaves the path as a folder: "/a/b/.." is "/a/".
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether a decoded segment is `.` or `..` followed by parameters: `;`, or `;` encoded (an
/// upstream that decodes `%3B` before splitting off path parameters, as Java servlet containers
/// may, would see `..;` and climb). Escapes are upper-cased by then: `%3B` covers `%3b`.
fn is_dot_with_parameters(segment: &str) -> bool {
    segment
        .strip_prefix("..")
        .or_else(|| segment.strip_prefix('.'))
        .is_some_and(|rest| rest.starts_with(';') || rest.starts_with("%3B"))
}

/// True when `path` needs no work: the common case, checked without allocating.
fn is_normal(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        match b {
            b'%' | b'\\' => return false,
            b'/' | b'.' if prev == b'/' => return false,
            0..=0x1f | 0x7f => return false,
            _ => {}
        }
        prev = b;
    }
    true
}

fn decode_unreserved(seg: &str, out: &mut String) -> Result<(), PathError> {
    out.clear();
    let bytes = seg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let v = hex_value(hex[0])
                    .zip(hex_value(hex[1]))
                    .map(|(h, l)| h << 4 | l)
                    .ok_or(PathError::BadEscape)?;
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0..=0x1f | 0x7f => return Err(PathError::ControlChar),
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        out.push(v as char)
                    }
                    _ => {
                        let _ = write!(out, "%{v:02X}");
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlChar),
            _ => {
                // Copy the run up to the next escape in one go (it is valid UTF-8: it came from a &str
                // and stops on ASCII).
                let end = bytes[i..]
                    .iter()
                    .position(|&b| matches!(b, b'%' | b'\\' | 0..=0x1f | 0x7f))
                    .map_or(bytes.len(), |p| i + p);
                out.push_str(&seg[i..end]);
                i = end;
            }
        }
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalise_path(p).map(Cow::into_owned)
    }

    #[test]
    fn clean_paths_are_borrowed() {
        for p in ["/", "/configmgt/api/1.0/users", "/a/b.c/d", "/a/b/"] {
            assert!(
                matches!(normalise_path(p), Ok(Cow::Borrowed(x)) if x == p),
                "{p}"
            );
        }
    }

    #[test]
    fn normalises() {
        let cases = [
            ("//a///b", "/a/b"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/%62", "/a/b"),
            ("/%7euser/%2E%2e/x", "/x"),
            ("/a/%2e/b", "/a/b"),
            ("/a/%3b/%c3%a9", "/a/%3B/%C3%A9"),
            ("/a/%252f", "/a/%252f"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a;v=1/b", "/a;v=1/b"),
            ("/..a/b", "/..a/b"),
            ("/a/...%3b/b", "/a/...%3B/b"),
            ("/a/x%3b/b", "/a/x%3B/b"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_ambiguous_paths() {
        let cases = [
            ("a/b", PathError::NotOriginForm),
            ("/..", PathError::AboveRoot),
            ("/a/../../etc/passwd", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%5cb", PathError::Backslash),
            ("/a\\b", PathError::Backslash),
            ("/a%00", PathError::ControlChar),
            ("/a%0d%0a", PathError::ControlChar),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a/..;/b", PathError::DotSegmentParameter),
            ("/a/.;x/b", PathError::DotSegmentParameter),
            ("/a/..%3b/b", PathError::DotSegmentParameter),
            ("/a/..%3B/b", PathError::DotSegmentParameter),
            ("/a/.%3b/b", PathError::DotSegmentParameter),
            ("/a/%2e%2e%3bx=1/b", PathError::DotSegmentParameter),
            ("/a/..%3B", PathError::DotSegmentParameter),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), Err(want), "{input}");
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in ["//a/./b/../c/", "/a/%41%2e/%7e", "/x/%25%32%66"] {
            let once = norm(p).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{p}");
        }
    }
}
