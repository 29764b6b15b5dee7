//! The upstream response timeout (`applications.response_timeout`).
//!
//! An upstream that accepts a request and then goes silent must not hold
//! the client, and the tenant lease, forever. The timeout bounds every wait
//! on the upstream: from the last request-body byte navigator forwarded to
//! the response head, and between two chunks of the response body. Time
//! the upstream spends reading a slow upload does not count, because each
//! forwarded request-body chunk restarts the wait. WebSocket tunnels are
//! not covered: once the upstream answered 101, silence is normal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tracing::warn;

use crate::body::{Body, BoxError};

/// When the request body last moved towards the upstream.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    /// Milliseconds after `started` of the last forwarded chunk.
    last_ms: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let elapsed = self.started.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(elapsed, Ordering::Relaxed);
    }

    /// Returns when the wait for the upstream ends if nothing moves before.
    fn deadline(&self, limit: Duration) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limit
    }
}

/// The error of a wait that outlasted the response timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut(pub Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the upstream sent nothing for {} ms (response_timeout)",
            self.0.as_millis()
        )
    }
}

impl std::error::Error for TimedOut {}

/// Wraps a request body so that every chunk handed to the upstream
/// connection counts as progress.
pub fn track_request_body(body: Body, progress: Arc<Progress>) -> Body {
    http_body_util::BodyExt::boxed(RequestBody {
        inner: body,
        progress,
    })
}

struct RequestBody {
    inner: Body,
    progress: Arc<Progress>,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_ready() {
            self.progress.touch();
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

/// Waits for `response` until it resolves, or until `limit` passed since
/// the request body last made `progress` (or since the wait began, for a
/// request without a body to track). The response future is borrowed
/// pinned, so that this wrapper does not hold a second copy of it.
pub async fn wait_for_response<F: Future>(
    mut response: Pin<&mut F>,
    limit: Duration,
    progress: Option<&Progress>,
) -> Result<F::Output, TimedOut> {
    let began = Instant::now();
    let deadline = || progress.map_or(began + limit, |progress| progress.deadline(limit));
    loop {
        tokio::select! {
            output = response.as_mut() => return Ok(output),
            _ = tokio::time::sleep_until(deadline()) => {
                // A chunk forwarded meanwhile moved the deadline.
                if deadline() <= Instant::now() {
                    return Err(TimedOut(limit));
                }
            }
        }
    }
}

/// Names the upstream of a response in the timeout warning.
#[derive(Debug, Clone)]
pub enum UpstreamName {
    Address(std::net::SocketAddr),
    Authority(String),
}

impl std::fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamName::Address(address) => address.fmt(f),
            UpstreamName::Authority(authority) => f.write_str(authority),
        }
    }
}

/// Wraps a response body so that a gap of more than `limit` between two
/// chunks ends it with an error, which makes hyper abort the response to
/// the client. `upstream` and `request_id` name the request in the log.
///
/// It counts a gap from the first poll that finds no chunk ready, so time
/// spent writing a chunk to a slow client is not charged to the upstream.
/// It makes the timer on that first empty poll, so a small body that is
/// ready whenever it is polled never needs one.
pub fn limit_response_gaps<B>(
    body: B,
    limit: Duration,
    upstream: UpstreamName,
    request_id: http::HeaderValue,
) -> Body
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Send + Sync + Unpin + 'static,
{
    http_body_util::BodyExt::boxed(ResponseBody {
        inner: body,
        limit,
        timer: None,
        armed: false,
        timed_out: false,
        upstream,
        request_id,
    })
}

struct ResponseBody<B> {
    inner: B,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer counts the current gap.
    armed: bool,
    timed_out: bool,
    upstream: UpstreamName,
    request_id: http::HeaderValue,
}

impl<B> HttpBody for ResponseBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame);
        }
        if !this.armed {
            let deadline = Instant::now() + this.limit;
            match &mut this.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            this.armed = true;
        }
        let expired = this
            .timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        this.timed_out = true;
        warn!(
            upstream = %this.upstream,
            request_id = %String::from_utf8_lossy(this.request_id.as_bytes()),
            timeout_ms = this.limit.as_millis() as u64,
            "upstream stopped sending the response body; aborting the response"
        );
        Poll::Ready(Some(Err(Box::new(TimedOut(this.limit)))))
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that yields one chunk and then never another.
    fn one_chunk_then_silence() -> Body {
        let frames = futures_util::stream::unfold(0u8, |step| async move {
            if step == 0 {
                return Some((Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a"))), 1));
            }
            std::future::pending::<()>().await;
            None
        });
        http_body_util::StreamBody::new(frames).boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn wait_times_out_without_progress() {
        let never = std::pin::pin!(std::future::pending::<()>());
        let result = wait_for_response(never, Duration::from_secs(5), None).await;
        assert_eq!(result, Err(TimedOut(Duration::from_secs(5))));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_returns_the_response() {
        let progress = Progress::new();
        let answer = std::pin::pin!(async { 7 });
        let result = wait_for_response(answer, Duration::from_secs(5), Some(&progress)).await;
        assert_eq!(result, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn request_progress_moves_deadline() {
        let progress = Progress::new();
        let started = Instant::now();
        let uploads = {
            let progress = progress.clone();
            async move {
                // Six chunks, 4 s apart: 24 s in all, never 5 s of silence.
                for _ in 0..6 {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    progress.touch();
                }
                std::future::pending::<()>().await
            }
        };
        let uploads = std::pin::pin!(uploads);
        let result = wait_for_response(uploads, Duration::from_secs(5), Some(&progress)).await;
        assert_eq!(result, Err(TimedOut(Duration::from_secs(5))));
        assert_eq!(started.elapsed(), Duration::from_secs(29));
    }

    #[tokio::test(start_paused = true)]
    async fn response_gap_ends_body() {
        let body = limit_response_gaps(
            one_chunk_then_silence(),
            Duration::from_secs(3),
            UpstreamName::Authority("127.0.0.1:4000".into()),
            http::HeaderValue::from_static("id"),
        );
        tokio::pin!(body);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"a"));
        let started = Instant::now();
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(error.to_string().contains("3000 ms"), "{error}");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_client_time_is_not_a_gap() {
        // The second chunk comes 2 s after it is asked for; the client asks
        // only 2.5 s after the first. Neither wait reaches the 3 s limit.
        let frames = futures_util::stream::unfold(0u8, |step| async move {
            match step {
                0 => Some((Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a"))), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Some((Ok(Frame::data(Bytes::from_static(b"b"))), 2))
                }
                _ => None,
            }
        });
        let body = limit_response_gaps(
            http_body_util::StreamBody::new(frames).boxed(),
            Duration::from_secs(3),
            UpstreamName::Authority("127.0.0.1:4000".into()),
            http::HeaderValue::from_static("id"),
        );
        tokio::pin!(body);
        body.frame().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let second = body.frame().await.unwrap().unwrap();
        assert_eq!(second.into_data().unwrap(), Bytes::from_static(b"b"));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn request_body_chunks_count_as_progress() {
        let progress = Progress::new();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let body = track_request_body(crate::body::full("upload"), progress.clone());
        tokio::pin!(body);
        body.frame().await.unwrap().unwrap();
        assert_eq!(
            progress.deadline(Duration::from_secs(1)),
            progress.started + Duration::from_secs(11)
        );
    }
}
