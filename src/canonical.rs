//! The canonical form of a request path, which every later routing and file
//! decision works on.
//!
//! The path is percent-decoded exactly once. Anything that could mean one
//! thing to navigator and another to a file system or a tenant (dot segments,
//! backslashes, NUL, control characters, invalid UTF-8) is rejected rather
//! than repaired, so the caller can answer 400, and code that receives a
//! canonical path need not decode or check it again.

use std::borrow::Cow;
use std::fmt;

/// A reason a request path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path is empty or does not start with `/` (e.g. `*` or `a/b`).
    NotAbsolute,
    /// A `%` is not followed by two hexadecimal digits.
    InvalidPercentEscape,
    /// The decoded bytes are not valid UTF-8, which includes overlong
    /// encodings such as `%c0%ae`.
    InvalidUtf8,
    /// A NUL byte, raw or written as `%00`.
    NulByte,
    /// A backslash, raw or written as `%5c`, which some systems treat as a
    /// path separator.
    Backslash,
    /// A control character (below 0x20, or 0x7f) other than NUL.
    ControlCharacter,
    /// A `.` or `..` segment, raw or percent-encoded.
    DotSegment,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "request path does not start with '/'",
            PathError::InvalidPercentEscape => {
                "request path has a '%' that is not followed by two hexadecimal digits"
            }
            PathError::InvalidUtf8 => "request path is not valid UTF-8 after percent-decoding",
            PathError::NulByte => "request path contains a NUL byte",
            PathError::Backslash => "request path contains a backslash",
            PathError::ControlCharacter => "request path contains a control character",
            PathError::DotSegment => "request path contains a '.' or '..' segment",
        })
    }
}

impl std::error::Error for PathError {}

/// Decodes `raw_path` (the path of a request URI, without the query) once
/// and returns it with repeated slashes merged.
///
/// A trailing slash is kept. An encoded slash (`%2f`) becomes a real
/// separator, so `/a%2f..%2fb` is rejected as a dot segment. Double-encoded
/// text such as `%252e` decodes to the literal `%2e` and is kept as a file
/// name. Segments starting with `.` (`/.well-known`) are allowed, because
/// only `.` and `..` have a special meaning.
///
/// Returns `raw_path` itself when it is already canonical, as most paths
/// are; otherwise allocates one `String` no longer than `raw_path`.
pub fn canonicalize(raw_path: &str) -> Result<Cow<'_, str>, PathError> {
    let raw = raw_path.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(raw) {
        return Ok(Cow::Borrowed(raw_path));
    }

    // Decoding only ever shortens the text, so this is the one allocation.
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    // Index in `out` where the segment being written starts.
    let mut segment_start = 0;
    let mut i = 0;
    while i < raw.len() {
        let byte = if raw[i] == b'%' {
            let decoded = raw
                .get(i + 1..i + 3)
                .and_then(|hex| Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?))
                .ok_or(PathError::InvalidPercentEscape)?;
            i += 3;
            decoded
        } else {
            i += 1;
            raw[i - 1]
        };

        match byte {
            b'/' => {
                if out.last() == Some(&b'/') {
                    continue;
                }
                check_segment(&out[segment_start..])?;
                out.push(b'/');
                segment_start = out.len();
            }
            0 => return Err(PathError::NulByte),
            b'\\' => return Err(PathError::Backslash),
            0x01..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            _ => out.push(byte),
        }
    }
    check_segment(&out[segment_start..])?;

    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::InvalidUtf8)
}

/// Returns whether decoding `raw` (which starts with `/`) would leave it
/// as it is and find nothing to reject: no escape, no repeated slash, no
/// byte that is refused, no `.` or `..` segment.
fn is_canonical(raw: &[u8]) -> bool {
    let mut previous = 0u8;
    for &byte in raw {
        match byte {
            b'%' | b'\\' | 0x00..=0x1f | 0x7f => return false,
            b'/' if previous == b'/' => return false,
            _ => {}
        }
        previous = byte;
    }
    raw.split(|&byte| byte == b'/')
        .all(|segment| check_segment(segment).is_ok())
}

fn check_segment(segment: &[u8]) -> Result<(), PathError> {
    match segment {
        b"." | b".." => Err(PathError::DotSegment),
        _ => Ok(()),
    }
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

    #[test]
    fn canonical_paths_borrowed() {
        for path in ["/", "/a/b/", "/showcase/2025/raleigh/", "/.well-known/x"] {
            let result = canonicalize(path);
            assert!(
                matches!(result, Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
        for path in ["//a", "/caf%C3%A9", "/a%2fb", "/a/b//"] {
            let result = canonicalize(path);
            assert!(matches!(result, Ok(Cow::Owned(_))), "{path}");
        }
    }

    #[test]
    fn canonicalize_accepted_paths() {
        let cases = [
            ("/", "/"),
            ("/a", "/a"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("//", "/"),
            ("/a//", "/a/"),
            ("/caf%C3%A9", "/café"),
            ("/caf%c3%a9", "/café"),
            ("/café", "/café"),
            ("/.hidden", "/.hidden"),
            ("/.well-known/acme", "/.well-known/acme"),
            ("/a/.b/c", "/a/.b/c"),
            ("/...", "/..."),
            ("/a/..b", "/a/..b"),
            ("/a/b..", "/a/b.."),
            ("/%252e%252e", "/%2e%2e"),
            ("/%252e%252e/x", "/%2e%2e/x"),
            ("/a%2fb", "/a/b"),
            ("/a%2F%2Fb", "/a/b"),
            ("/%2fa", "/a"),
            ("/a%20b", "/a b"),
            ("/100%25", "/100%"),
            ("/a+b", "/a+b"),
            ("/a;b=c", "/a;b=c"),
            ("/index.html", "/index.html"),
            ("/studios/millbrae", "/studios/millbrae"),
            ("/%7Euser", "/~user"),
            ("/%F0%9F%98%80", "/😀"),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonicalize(raw).as_deref(), Ok(expected), "{raw:?}");
        }
    }

    #[test]
    fn canonicalize_rejected_paths() {
        use PathError::*;
        let cases = [
            ("", NotAbsolute),
            ("a/b", NotAbsolute),
            ("*", NotAbsolute),
            ("%2fa", NotAbsolute),
            ("/a%", InvalidPercentEscape),
            ("/a%2", InvalidPercentEscape),
            ("/a%zz", InvalidPercentEscape),
            ("/a%%41", InvalidPercentEscape),
            ("/%c0%ae", InvalidUtf8),
            ("/%c0%ae%c0%ae/etc", InvalidUtf8),
            ("/%ff", InvalidUtf8),
            ("/caf%C3", InvalidUtf8),
            ("/a\0b", NulByte),
            ("/a%00b", NulByte),
            ("/a\\b", Backslash),
            ("/a%5cb", Backslash),
            ("/a%5C..%5Cb", Backslash),
            ("/a%0ab", ControlCharacter),
            ("/a%0Db", ControlCharacter),
            ("/a%1fb", ControlCharacter),
            ("/a%7fb", ControlCharacter),
            ("/a\tb", ControlCharacter),
            ("/.", DotSegment),
            ("/..", DotSegment),
            ("/./", DotSegment),
            ("/../", DotSegment),
            ("/a/.", DotSegment),
            ("/a/..", DotSegment),
            ("/a/./b", DotSegment),
            ("/a/../b", DotSegment),
            ("/a//..//b", DotSegment),
            ("/%2e", DotSegment),
            ("/%2e%2e", DotSegment),
            ("/%2E%2e/", DotSegment),
            ("/.%2e", DotSegment),
            ("/%2e./x", DotSegment),
            ("/..%2f", DotSegment),
            ("/..%2fetc", DotSegment),
            ("/a%2f..%2fb", DotSegment),
            ("/a%2f.", DotSegment),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonicalize(raw), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn canonicalize_output_never_longer() {
        for raw in ["/", "/abc/", "/%41%42", "//x//"] {
            let canonical = canonicalize(raw).unwrap();
            assert!(canonical.len() <= raw.len(), "{raw:?}");
        }
    }

    #[test]
    fn path_error_messages_are_plain() {
        let message = PathError::DotSegment.to_string();
        assert_eq!(message, "request path contains a '.' or '..' segment");
        let message = PathError::InvalidUtf8.to_string();
        assert_eq!(
            message,
            "request path is not valid UTF-8 after percent-decoding"
        );
    }
}
