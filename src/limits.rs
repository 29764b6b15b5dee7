//! Request checks against malformed or abusive input that hyper's parser
//! lets through, and the request body size limit.
//!
//! hyper already responds with 400 to malformed request lines and headers
//! (control characters and bare CR in values, obs-fold continuation
//! lines, differing duplicate `Content-Length`, a `Transfer-Encoding`
//! other than chunked, `Transfer-Encoding` on HTTP/1.0), 431 to heads over
//! `max_header_bytes`, and processes a request that has both
//! `Transfer-Encoding: chunked` and `Content-Length` by the chunked framing
//! alone, dropping the `Content-Length` and closing the connection after
//! the response. The checks here cover the rest: the `Host` header rules
//! and the body size.

use std::net::Ipv6Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{Extensions, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{Body, BoxError, RequestBody};

/// Reasons to reject a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// HTTP/1.1 requires a `Host` header (RFC 9112, section 3.2).
    MissingHost,
    DuplicateHost,
    /// The `Host` value is empty, has user info, a path, or is no valid
    /// `host[:port]`.
    InvalidHost,
    /// `Content-Length` is larger than `server.limits.max_body_bytes`.
    BodyTooLarge,
}

impl HeadError {
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HeadError::MissingHost => "an HTTP/1.1 request needs a Host header",
            HeadError::DuplicateHost => "the request has more than one Host header",
            HeadError::InvalidHost => "the Host header is not a valid host name and port",
            HeadError::BodyTooLarge => "the request body is larger than this server accepts",
        }
    }
}

/// Checks the `Host` header and the declared body size. HTTP/1.0 without
/// `Host` is accepted, as nginx does; HTTP/2 carries the host in the URI.
pub fn check_head(
    version: Version,
    headers: &http::HeaderMap,
    max_body_bytes: Option<u64>,
) -> Result<(), HeadError> {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => return Err(HeadError::MissingHost),
        (None, _) => {}
        (Some(_), Some(_)) => return Err(HeadError::DuplicateHost),
        (Some(host), None) => {
            if !is_valid_host(host.as_bytes()) {
                return Err(HeadError::InvalidHost);
            }
        }
    }

    if let Some(max) = max_body_bytes {
        // hyper has already refused unparsable or conflicting values.
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok());
        if declared.is_some_and(|length| length > max) {
            return Err(HeadError::BodyTooLarge);
        }
    }
    Ok(())
}

/// Checks that `host` is `uri-host [":" port]` (RFC 9110 §7.2): a
/// bracketed IPv6 address or a registered name (which covers IPv4), and
/// an optional port that fits 16 bits. It runs on every request, so it
/// reads the bytes in place rather than building an `Authority`.
///
/// Stricter than the RFC where clients never need more: no percent
/// escapes (an encoded NUL, `/` or `@` would reach tenants as `Host`),
/// no zone identifier and no `IPvFuture` literal.
fn is_valid_host(host: &[u8]) -> bool {
    if let Some(rest) = host.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&byte| byte == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..end]).ok();
        if literal
            .and_then(|text| text.parse::<Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        return match &rest[end + 1..] {
            [] => true,
            [b':', port @ ..] => is_port(port),
            _ => false,
        };
    }
    let (name, port) = match host.iter().position(|&byte| byte == b':') {
        Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
        None => (host, None),
    };
    !name.is_empty() && name.iter().all(|&byte| is_name_byte(byte)) && port.is_none_or(is_port)
}

/// Returns whether `byte` may appear in a registered name: an unreserved
/// character or a sub-delimiter of RFC 3986.
fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&byte)
}

/// Returns whether `port` is one to five digits with a value below 65536.
fn is_port(port: &[u8]) -> bool {
    (1..=5).contains(&port.len())
        && port.iter().all(u8::is_ascii_digit)
        && port
            .iter()
            .fold(0u32, |value, digit| value * 10 + u32::from(digit - b'0'))
            <= 65535
}

/// The body size limit of one request, and the outcome of reading its
/// body. It is kept in the request's extensions, so whichever step streams
/// the body applies the limit. When forwarding fails, that step can then
/// tell a client's fault (413, 400) from an upstream's (502).
#[derive(Debug, Clone)]
pub struct BodyLimit {
    max: Option<u64>,
    outcome: Arc<AtomicU8>,
}

const BODY_OK: u8 = 0;
const BODY_TOO_LARGE: u8 = 1;
const BODY_CLIENT_ERROR: u8 = 2;

impl BodyLimit {
    /// Creates a limit of `max` bytes. `None` only records client errors.
    pub fn new(max: Option<u64>) -> BodyLimit {
        BodyLimit {
            max,
            outcome: Arc::new(AtomicU8::new(BODY_OK)),
        }
    }

    /// Returns whether the body was cut off at the limit.
    pub fn exceeded(&self) -> bool {
        self.outcome.load(Ordering::Acquire) == BODY_TOO_LARGE
    }

    /// Returns whether reading the body from the client failed: broken chunked
    /// framing, a body shorter than its `Content-Length`, a reset.
    pub fn client_failed(&self) -> bool {
        self.outcome.load(Ordering::Acquire) == BODY_CLIENT_ERROR
    }

    /// Returns the status to send when forwarding failed because of the body.
    pub fn failure_status(&self) -> Option<StatusCode> {
        match self.outcome.load(Ordering::Acquire) {
            BODY_TOO_LARGE => Some(StatusCode::PAYLOAD_TOO_LARGE),
            BODY_CLIENT_ERROR => Some(StatusCode::BAD_REQUEST),
            _ => None,
        }
    }
}

/// The error a body ends with when it grows past its limit.
#[derive(Debug)]
pub struct BodyTooLarge {
    pub max: u64,
}

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body exceeds the limit of {} bytes", self.max)
    }
}

impl std::error::Error for BodyTooLarge {}

/// Returns `body` as a streaming [`Body`] that fails with [`BodyTooLarge`]
/// once more than the limit in `extensions` has arrived, and records
/// client errors there. Chunked bodies declare no length, so they are cut
/// off here.
pub fn limit_request_body(body: RequestBody, extensions: &Extensions) -> Body {
    match extensions.get::<BodyLimit>() {
        Some(limit) => LimitedBody {
            inner: body,
            limit: limit.clone(),
            received: 0,
        }
        .boxed(),
        None => body.map_err(|error| Box::new(error) as BoxError).boxed(),
    }
}

struct LimitedBody {
    inner: RequestBody,
    limit: BodyLimit,
    received: u64,
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                    if let Some(max) = self.limit.max.filter(|max| self.received > *max) {
                        self.limit.outcome.store(BODY_TOO_LARGE, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { max }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                self.limit
                    .outcome
                    .store(BODY_CLIENT_ERROR, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(error))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn host_rules() {
        let ok = [
            "localhost",
            "example.test:8080",
            "127.0.0.1",
            "[::1]:3000",
            "smooth.fly.dev",
            "[2001:db8::7]",
            "example.test:65535",
            "under_score.test",
        ];
        for host in ok {
            assert_eq!(
                check_head(Version::HTTP_11, &headers(&[("host", host)]), None),
                Ok(()),
                "{host}"
            );
        }
        let invalid = [
            "",
            "user@example.test",
            "example.test/path",
            "exa mple.test",
            "example.test:port",
            ":8080",
            "[::1",
            "[::1]x",
            "[zz::1]",
            "example.test:",
            "example.test:65536",
            "example.test:123456",
            "a:b:c",
            "bad%2",
            "bad%zz.test",
            "caf%C3%A9.test",
            "a%00b",
            "a%2Fb",
            "[fe80::1%25eth0]",
            "[v1.x]",
        ];
        for host in invalid {
            assert_eq!(
                check_head(Version::HTTP_11, &headers(&[("host", host)]), None),
                Err(HeadError::InvalidHost),
                "{host:?}"
            );
        }
        assert_eq!(
            check_head(Version::HTTP_11, &HeaderMap::new(), None),
            Err(HeadError::MissingHost)
        );
        assert_eq!(
            check_head(Version::HTTP_10, &HeaderMap::new(), None),
            Ok(())
        );
        assert_eq!(check_head(Version::HTTP_2, &HeaderMap::new(), None), Ok(()));
        assert_eq!(
            check_head(
                Version::HTTP_11,
                &headers(&[("host", "a.test"), ("host", "b.test")]),
                None
            ),
            Err(HeadError::DuplicateHost)
        );
    }

    #[test]
    fn declared_body_size_checked() {
        let head = headers(&[("host", "a.test"), ("content-length", "1025")]);
        assert_eq!(
            check_head(Version::HTTP_11, &head, Some(1024)),
            Err(HeadError::BodyTooLarge)
        );
        assert_eq!(check_head(Version::HTTP_11, &head, Some(1025)), Ok(()));
        assert_eq!(check_head(Version::HTTP_11, &head, None), Ok(()));
        assert_eq!(
            HeadError::BodyTooLarge.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
