//! One access-log record per request, written when the response body has
//! been sent, or when the client goes away first (status 499).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tracing::info;

use crate::body::{Body, BoxError};

/// The tracing target of access-log records.
pub const TARGET: &str = "navigator::access";

/// How a request was answered, as the access log and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Static,
    Proxy,
    FlyReplay,
    Redirect,
    Rewrite,
    Maintenance,
    AuthFailure,
    Cgi,
    WebSocket,
    Health,
    BotBlocked,
    Broadcast,
    ReverseProxy,
    /// navigator's own status page, status JSON or metrics.
    Status,
    Control,
    NotFound,
    Error,
}

impl Answer {
    /// Every answer, in declaration order; `answer as usize` indexes it.
    pub const ALL: [Answer; 17] = [
        Answer::Static,
        Answer::Proxy,
        Answer::FlyReplay,
        Answer::Redirect,
        Answer::Rewrite,
        Answer::Maintenance,
        Answer::AuthFailure,
        Answer::Cgi,
        Answer::WebSocket,
        Answer::Health,
        Answer::BotBlocked,
        Answer::Broadcast,
        Answer::ReverseProxy,
        Answer::Status,
        Answer::Control,
        Answer::NotFound,
        Answer::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Static => "static",
            Answer::Proxy => "proxy",
            Answer::FlyReplay => "fly-replay",
            Answer::Redirect => "redirect",
            Answer::Rewrite => "rewrite",
            Answer::Maintenance => "maintenance",
            Answer::AuthFailure => "auth-failure",
            Answer::Cgi => "cgi",
            Answer::WebSocket => "websocket",
            Answer::Health => "health",
            Answer::BotBlocked => "bot-blocked",
            Answer::Broadcast => "broadcast",
            Answer::ReverseProxy => "reverse-proxy",
            Answer::Status => "status",
            Answer::Control => "control",
            Answer::NotFound => "not-found",
            Answer::Error => "error",
        }
    }
}

/// The fields of one record, filled in as the request moves through the
/// pipeline. Dropping it writes the record.
#[derive(Debug)]
pub struct AccessRecord {
    pub started: Instant,
    pub client: IpAddr,
    pub user: Option<String>,
    pub method: Method,
    /// The request target as received: a cheap clone of hyper's parse,
    /// formatted only if the record is written.
    pub uri: http::Uri,
    pub version: Version,
    pub request_id: HeaderValue,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    /// A copy rather than a shared reference: counting references to a
    /// tenant's spec would touch memory that every worker writes.
    pub tenant: Option<String>,
    pub answer: Answer,
    /// The file, upstream or rule that answered.
    pub target: Option<Target>,
    /// `None` until a response exists; a record dropped without one is a
    /// client that disconnected while waiting (499).
    pub status: Option<u16>,
    pub bytes: u64,
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let status = self.status.unwrap_or(499);
        let duration = self.started.elapsed();
        crate::metrics::record_request(self.answer, status, duration);
        info!(
            target: TARGET,
            client = %self.client,
            user = self.user.as_deref().unwrap_or("-"),
            method = %self.method,
            uri = %self.uri,
            protocol = ?self.version,
            status,
            bytes = self.bytes,
            // Whole microseconds, so the number prints without float noise.
            duration_ms = duration.as_micros() as f64 / 1000.0,
            request_id = self.request_id.to_str().unwrap_or("-"),
            user_agent = header_text(&self.user_agent),
            referer = header_text(&self.referer),
            tenant = self.tenant.as_deref().unwrap_or("-"),
            answer = self.answer.as_str(),
            target = %TargetField(&self.target),
            "request"
        );
    }
}

/// The file, upstream or rule that served a request, for the `target`
/// field of its record.
#[derive(Debug)]
pub enum Target {
    /// A file, a location, a rule or a script, as written.
    Text(String),
    /// An upstream address, formatted only if the record is written.
    Upstream(SocketAddr),
}

/// Formats an optional target, `-` when there is none.
struct TargetField<'a>(&'a Option<Target>);

impl std::fmt::Display for TargetField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(Target::Text(text)) => f.write_str(text),
            Some(Target::Upstream(address)) => address.fmt(f),
            None => f.write_str("-"),
        }
    }
}

fn header_text(value: &Option<HeaderValue>) -> &str {
    value.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-")
}

/// Wraps `body` so the record is written once the body has been sent or
/// dropped, with the number of bytes that went out: those read from the
/// body, plus `sent_elsewhere` for a server that sent the response's file
/// instead of reading the body. `guards` (those that count the request as
/// in flight) are dropped just after the record: one wrapper serves them
/// all, rather than one boxed layer each.
pub fn log_on_completion<G>(
    body: Body,
    mut record: AccessRecord,
    status: u16,
    sent_elsewhere: Option<Arc<AtomicU64>>,
    guards: G,
) -> Body
where
    G: Send + Sync + Unpin + 'static,
{
    record.status = Some(status);
    CountingBody {
        inner: body,
        record,
        sent_elsewhere,
        _guards: guards,
    }
    .boxed()
}

struct CountingBody<G> {
    inner: Body,
    record: AccessRecord,
    sent_elsewhere: Option<Arc<AtomicU64>>,
    _guards: G,
}

impl<G> Drop for CountingBody<G> {
    fn drop(&mut self) {
        if let Some(sent) = &self.sent_elsewhere {
            self.record.bytes += sent.load(Ordering::Relaxed);
        }
    }
}

impl<G: Unpin> HttpBody for CountingBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.record.bytes += data.len() as u64;
            }
        }
        polled
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

    fn record() -> AccessRecord {
        AccessRecord {
            started: Instant::now(),
            client: IpAddr::from([127, 0, 0, 1]),
            user: None,
            method: Method::GET,
            uri: http::Uri::from_static("/showcase/"),
            version: Version::HTTP_11,
            request_id: HeaderValue::from_static("test"),
            user_agent: None,
            referer: None,
            tenant: None,
            answer: Answer::Proxy,
            target: None,
            status: None,
            bytes: 0,
        }
    }

    #[tokio::test]
    async fn guards_dropped_once_the_body_has_ended() {
        let guard = std::sync::Arc::new(());
        let body = log_on_completion(crate::body::full("abc"), record(), 200, None, guard.clone());
        assert_eq!(std::sync::Arc::strong_count(&guard), 2);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"abc");
        assert_eq!(std::sync::Arc::strong_count(&guard), 1);
    }

    #[test]
    fn all_answers_indexed_by_discriminant() {
        for (index, answer) in Answer::ALL.iter().enumerate() {
            assert_eq!(*answer as usize, index, "{}", answer.as_str());
        }
        let names: std::collections::HashSet<&str> =
            Answer::ALL.iter().map(|answer| answer.as_str()).collect();
        assert_eq!(names.len(), Answer::ALL.len());
    }
}
