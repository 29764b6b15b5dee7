//! Parsers for the request headers that shape a static file response:
//! `Range`, entity-tag lists (`If-Match`, `If-None-Match`, `If-Range`),
//! HTTP dates and `Accept-Encoding`. They work on borrowed header text and
//! never allocate.

use std::time::{SystemTime, UNIX_EPOCH};

/// The part of a representation that a `Range` header selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ByteRange {
    /// The whole representation: no usable range, a syntactically invalid
    /// one, or several ranges (which would need a `multipart/byteranges`
    /// body that this server does not produce).
    Whole,
    /// Bytes `start..=end`, with `end` already clamped to the length.
    Partial { start: u64, end: u64 },
    /// A single range that lies outside the representation.
    Unsatisfiable,
}

/// Parses a `Range` header value against a representation of `len` bytes.
///
/// Follows RFC 9110 section 14.1: `first-last` with `last` clamped to the
/// length, `first-` and `-suffix`. A suffix longer than the representation
/// selects all of it, and every range of an empty representation is
/// unsatisfiable because `Content-Range` cannot express zero bytes.
pub(super) fn parse_range(value: &[u8], len: u64) -> ByteRange {
    let Ok(value) = std::str::from_utf8(value) else {
        return ByteRange::Whole;
    };
    let Some((unit, ranges)) = value.trim().split_once('=') else {
        return ByteRange::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return ByteRange::Whole;
    }

    // Empty list elements (`bytes=0-1,,`) are allowed by the list syntax.
    let mut specs = ranges.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return ByteRange::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return ByteRange::Whole;
    };

    match (parse_digits(first), parse_digits(last)) {
        (Some(first), Some(last)) if first <= last => partial(first, last, len),
        (Some(first), None) if last.is_empty() => partial(first, u64::MAX, len),
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || len == 0 {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Partial {
                    start: len.saturating_sub(suffix),
                    end: len - 1,
                }
            }
        }
        _ => ByteRange::Whole,
    }
}

fn partial(first: u64, last: u64, len: u64) -> ByteRange {
    if first >= len {
        ByteRange::Unsatisfiable
    } else {
        ByteRange::Partial {
            start: first,
            end: last.min(len - 1),
        }
    }
}

/// Parses a non-empty run of ASCII digits, saturating at `u64::MAX` so that
/// an absurdly large position still counts as a position.
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |total, digit| {
        total
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    }))
}

/// The entity-tag comparison functions of RFC 9110 section 8.8.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Comparison {
    /// Both tags must be strong and equal, as `If-Match` and `If-Range`
    /// require.
    Strong,
    /// The opaque tags must be equal whatever their `W/` prefix, as
    /// `If-None-Match` requires.
    Weak,
}

/// Returns whether an `If-Match` or `If-None-Match` value (`*` or a list of
/// entity tags) matches `current`, a strong tag with its quotes.
pub(super) fn etag_list_matches(list: &[u8], current: &[u8], comparison: Comparison) -> bool {
    if list.trim_ascii() == b"*" {
        return true;
    }
    EntityTags { rest: list }.any(|tag| tag_matches(tag, current, comparison))
}

/// Returns whether a single entity tag (`"x"` or `W/"x"`) matches
/// `current`, a strong tag with its quotes.
pub(super) fn etag_matches(tag: &[u8], current: &[u8], comparison: Comparison) -> bool {
    let mut tags = EntityTags { rest: tag };
    match (tags.next(), tags.next()) {
        (Some(tag), None) => tag_matches(tag, current, comparison),
        _ => false,
    }
}

fn tag_matches(tag: EntityTag<'_>, current: &[u8], comparison: Comparison) -> bool {
    if comparison == Comparison::Strong && tag.weak {
        return false;
    }
    tag.quoted == current
}

struct EntityTag<'a> {
    weak: bool,
    /// The opaque tag including its double quotes.
    quoted: &'a [u8],
}

/// Iterates over the entity tags of a comma-separated list. The opaque part
/// of a tag may itself contain commas, so the list cannot be split on them.
/// Iteration stops at the first malformed element.
struct EntityTags<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for EntityTags<'a> {
    type Item = EntityTag<'a>;

    fn next(&mut self) -> Option<EntityTag<'a>> {
        let start = self
            .rest
            .iter()
            .position(|&b| !matches!(b, b' ' | b'\t' | b','))?;
        let mut rest = &self.rest[start..];
        let weak = rest.starts_with(b"W/");
        if weak {
            rest = &rest[2..];
        }
        if rest.first() != Some(&b'"') {
            self.rest = &[];
            return None;
        }
        let Some(close) = rest[1..].iter().position(|&b| b == b'"') else {
            self.rest = &[];
            return None;
        };
        let (quoted, remaining) = rest.split_at(close + 2);
        self.rest = remaining;
        Some(EntityTag { weak, quoted })
    }
}

/// Parses an HTTP date and returns it as whole seconds since the Unix epoch.
pub(super) fn parse_date_secs(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    httpdate::parse_http_date(text.trim()).ok().map(unix_secs)
}

/// Returns `time` in whole seconds since the Unix epoch, the precision of
/// HTTP dates; times before the epoch count as the epoch.
pub(super) fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// A content coding that a precompressed sibling file may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    Brotli,
    Gzip,
}

impl Encoding {
    /// Returns the suffix of the sibling file (`app.css` -> `app.css.br`).
    pub(super) fn file_suffix(self) -> &'static str {
        match self {
            Encoding::Brotli => ".br",
            Encoding::Gzip => ".gz",
        }
    }

    /// Returns the `Content-Encoding` token.
    pub(super) fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// The quality values, in thousandths, that an `Accept-Encoding` header
/// gives the codings of precompressed files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct AcceptedEncodings {
    brotli: u16,
    gzip: u16,
}

impl AcceptedEncodings {
    /// Parses an `Accept-Encoding` value. A coding not listed gets the
    /// weight of `*` when that is present and 0 otherwise, and a missing
    /// header accepts neither coding, because a client that sends none may
    /// not be able to decode one. An invalid `q` counts as 0.
    pub(super) fn parse(value: Option<&[u8]>) -> AcceptedEncodings {
        let Some(value) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
            return AcceptedEncodings::default();
        };
        let (mut brotli, mut gzip, mut any) = (None, None, None);
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let weight = parts
                .find_map(|param| {
                    let (name, value) = param.split_once('=')?;
                    name.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| parse_weight(value.trim()))
                })
                .unwrap_or(Some(1000))
                .unwrap_or(0);
            if coding.eq_ignore_ascii_case("br") {
                brotli = Some(weight);
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(weight);
            } else if coding == "*" {
                any = Some(weight);
            }
        }
        let fallback = any.unwrap_or(0);
        AcceptedEncodings {
            brotli: brotli.unwrap_or(fallback),
            gzip: gzip.unwrap_or(fallback),
        }
    }

    /// Returns whether the client accepts `encoding` (its weight is above 0).
    pub(super) fn accepts(self, encoding: Encoding) -> bool {
        self.weight(encoding) > 0
    }

    /// Returns both codings, the preferred first: higher weight wins and
    /// Brotli wins a tie because its files are smaller.
    pub(super) fn by_preference(self) -> [Encoding; 2] {
        if self.gzip > self.brotli {
            [Encoding::Gzip, Encoding::Brotli]
        } else {
            [Encoding::Brotli, Encoding::Gzip]
        }
    }

    fn weight(self, encoding: Encoding) -> u16 {
        match encoding {
            Encoding::Brotli => self.brotli,
            Encoding::Gzip => self.gzip,
        }
    }
}

/// Parses a `qvalue` (`0`, `0.5`, `1`, `1.000`) into thousandths.
fn parse_weight(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |total, digit| total * 10 + u16::from(digit - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_forms_against_length() {
        use ByteRange::*;
        let cases: &[(&str, u64, ByteRange)] = &[
            ("bytes=0-9", 100, Partial { start: 0, end: 9 }),
            ("bytes=10-", 100, Partial { start: 10, end: 99 }),
            ("bytes=-10", 100, Partial { start: 90, end: 99 }),
            ("bytes=-1000", 100, Partial { start: 0, end: 99 }),
            ("bytes=50-5000", 100, Partial { start: 50, end: 99 }),
            ("bytes=99-99", 100, Partial { start: 99, end: 99 }),
            ("Bytes = 0-0", 100, Partial { start: 0, end: 0 }),
            ("bytes= 0-1 ,", 100, Partial { start: 0, end: 1 }),
            (
                "bytes=0-99999999999999999999999",
                100,
                Partial { start: 0, end: 99 },
            ),
            ("bytes=100-", 100, Unsatisfiable),
            ("bytes=100-200", 100, Unsatisfiable),
            ("bytes=99999999999999999999999-", 100, Unsatisfiable),
            ("bytes=-0", 100, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=-5", 0, Unsatisfiable),
            ("bytes=0-1,5-6", 100, Whole),
            ("bytes=0-1, 200-300", 100, Whole),
            ("bytes=5-1", 100, Whole),
            ("bytes=-", 100, Whole),
            ("bytes=", 100, Whole),
            ("bytes=a-b", 100, Whole),
            ("bytes=1-2-3", 100, Whole),
            ("bytes=+1-2", 100, Whole),
            ("items=0-1", 100, Whole),
            ("0-1", 100, Whole),
        ];
        for &(header, len, expected) in cases {
            assert_eq!(
                parse_range(header.as_bytes(), len),
                expected,
                "{header} / {len}"
            );
        }
    }

    #[test]
    fn etag_list_weak_comparison() {
        let current = br#""abc""#;
        let cases: &[(&str, bool)] = &[
            (r#""abc""#, true),
            (r#"W/"abc""#, true),
            (r#""x", "abc""#, true),
            (r#""x",W/"abc""#, true),
            (r#""a,b", "abc""#, true),
            ("*", true),
            (" * ", true),
            (r#""abcd""#, false),
            (r#""ab""#, false),
            ("abc", false),
            (r#""x", abc"#, false),
            ("", false),
        ];
        for &(list, expected) in cases {
            let matched = etag_list_matches(list.as_bytes(), current, Comparison::Weak);
            assert_eq!(matched, expected, "{list}");
        }
    }

    #[test]
    fn etag_list_strong_comparison() {
        let current = br#""abc""#;
        assert!(etag_list_matches(br#""abc""#, current, Comparison::Strong));
        assert!(etag_list_matches(
            br#""x", "abc""#,
            current,
            Comparison::Strong
        ));
        assert!(!etag_list_matches(
            br#"W/"abc""#,
            current,
            Comparison::Strong
        ));
        assert!(etag_list_matches(b"*", current, Comparison::Strong));
    }

    #[test]
    fn etag_single_tag_for_if_range() {
        let current = br#""abc""#;
        assert!(etag_matches(br#""abc""#, current, Comparison::Strong));
        assert!(!etag_matches(br#"W/"abc""#, current, Comparison::Strong));
        assert!(!etag_matches(
            br#""abc", "abc""#,
            current,
            Comparison::Strong
        ));
        assert!(!etag_matches(b"*", current, Comparison::Strong));
    }

    #[test]
    fn http_date_parsing() {
        let secs = parse_date_secs(b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(secs, Some(784_111_777));
        assert_eq!(parse_date_secs(b"yesterday"), None);
    }

    #[test]
    fn accept_encoding_weights() {
        use Encoding::*;
        let cases: &[(Option<&str>, bool, bool, [Encoding; 2])] = &[
            (None, false, false, [Brotli, Gzip]),
            (Some(""), false, false, [Brotli, Gzip]),
            (Some("gzip, deflate, br"), true, true, [Brotli, Gzip]),
            (Some("gzip"), false, true, [Gzip, Brotli]),
            (Some("br;q=0, gzip"), false, true, [Gzip, Brotli]),
            (Some("br;q=0.0, gzip;q=0.000"), false, false, [Brotli, Gzip]),
            (Some("br;q=0.5, gzip;q=0.8"), true, true, [Gzip, Brotli]),
            (Some("BR;Q=1.0, GZIP"), true, true, [Brotli, Gzip]),
            (Some("*"), true, true, [Brotli, Gzip]),
            (Some("*;q=0"), false, false, [Brotli, Gzip]),
            (Some("*, br;q=0"), false, true, [Gzip, Brotli]),
            (Some("x-gzip"), false, true, [Gzip, Brotli]),
            (Some("identity"), false, false, [Brotli, Gzip]),
            (Some("br;q=2"), false, false, [Brotli, Gzip]),
            (Some("br;q=0.1234"), false, false, [Brotli, Gzip]),
            (Some("br;level=5;q=0.3"), true, false, [Brotli, Gzip]),
        ];
        for &(header, brotli, gzip, order) in cases {
            let accepted = AcceptedEncodings::parse(header.map(str::as_bytes));
            assert_eq!(accepted.accepts(Brotli), brotli, "br in {header:?}");
            assert_eq!(accepted.accepts(Gzip), gzip, "gzip in {header:?}");
            assert_eq!(accepted.by_preference(), order, "order for {header:?}");
        }
    }
}
