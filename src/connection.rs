//! Per-connection guards against clients that hold connections without
//! using them: a deadline for the first byte, and the idle timeout.
//!
//! hyper bounds the time to read an HTTP/1 request head
//! (`header_read_timeout`) once it has started waiting for one. But its
//! auto builder first waits without a deadline for the bytes that
//! distinguish HTTP/1 from HTTP/2, and HTTP/2 connections have no idle
//! limit. The
//! [`Activity`] of a connection records when bytes last moved and how many
//! requests are in flight; [`watch_idle`] ends a connection that had no
//! request in flight and no traffic for the idle timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};

/// Waits up to `timeout` for the client's first byte and returns it,
/// left unread. `None` when none came (or the peer closed), and the
/// connection should be dropped.
pub async fn first_byte(stream: &TcpStream, timeout: Duration) -> Option<u8> {
    let mut probe = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut probe)).await {
        Ok(Ok(read)) if read > 0 => Some(probe[0]),
        _ => None,
    }
}

/// Traffic and request counters of one connection.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    /// Milliseconds since `started` at the last read or write of data.
    last_traffic_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Whether a request has started on this connection.
    served: AtomicBool,
    /// Response bodies whose last frame the connection took and that it
    /// has not yet asked for the next one.
    bodies_waiting: AtomicUsize,
    /// Frames asked of response bodies so far, compared between the wakes
    /// of [`watch_stalled_bodies`].
    body_polls: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            last_traffic_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            bodies_waiting: AtomicUsize::new(0),
            body_polls: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_traffic_ms.store(now, Ordering::Relaxed);
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        InFlight(Some(self.clone()))
    }

    /// Time since the last traffic, or `None` while a request is in flight.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_traffic_ms.load(Ordering::Relaxed));
        Some(self.started.elapsed().saturating_sub(last))
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Option<Arc<Activity>>);

impl InFlight {
    /// Returns a guard for a request on a connection whose server bounds
    /// idleness itself, so no [`watch_idle`] reads it.
    pub fn untracked() -> InFlight {
        InFlight(None)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(activity) = &self.0 {
            activity.touch();
            activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Resolves when the connection has had no request in flight and no
/// traffic for `timeout`. A zero timeout never resolves.
pub async fn watch_idle(activity: Arc<Activity>, timeout: Duration) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    let mut wait = timeout;
    loop {
        tokio::time::sleep(wait).await;
        wait = match activity.idle_for() {
            Some(idle) if idle >= timeout => return,
            Some(idle) => timeout - idle,
            None => timeout,
        };
    }
}

/// Resolves when no request has started within `timeout` of the call; a
/// connection that has served one, or no timeout, never resolves.
pub async fn watch_first_request(activity: Arc<Activity>, timeout: Option<Duration>) {
    if let Some(timeout) = timeout {
        tokio::time::sleep(timeout).await;
        if !activity.served.load(Ordering::Acquire) {
            return;
        }
    }
    std::future::pending().await
}

/// Resolves when a response body of the connection has waited for the
/// connection to take its next frame for at least `timeout` (and less
/// than twice that), with no frame taken from any body meanwhile. On
/// HTTP/2 that is a client that stopped granting flow-control window: the
/// connection then writes nothing, so the send timeout of its writes does
/// not see it. A zero timeout never resolves.
pub async fn watch_stalled_bodies(activity: Arc<Activity>, timeout: Duration) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    let mut polls = activity.body_polls.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(timeout).await;
        let now = activity.body_polls.load(Ordering::Relaxed);
        if now == polls && activity.bodies_waiting.load(Ordering::Relaxed) > 0 {
            return;
        }
        polls = now;
    }
}

/// A response body of a connection served by hyper, counted in the
/// connection's [`Activity`] for [`watch_stalled_bodies`]. Counting needs
/// no clock: the watch compares the number of polls between its wakes.
pub struct WatchedBody {
    inner: Body,
    activity: Arc<Activity>,
    /// Whether the last poll yielded a frame, so the body waits for the
    /// connection to ask for the next.
    waiting: bool,
}

impl WatchedBody {
    pub fn new(inner: Body, activity: Arc<Activity>) -> WatchedBody {
        WatchedBody {
            inner,
            activity,
            waiting: false,
        }
    }

    fn stop_waiting(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.activity.bodies_waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.activity.body_polls.fetch_add(1, Ordering::Relaxed);
        this.stop_waiting();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.waiting = true;
            this.activity.bodies_waiting.fetch_add(1, Ordering::Relaxed);
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

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

/// A future polled only when its own waker fired, beside a busier one in
/// the same task. A connection's task is polled a few times per request;
/// its watchers (shutdown signal, idle timer) need a poll only when their
/// event comes.
pub struct OnWake<F> {
    future: F,
    flag: Arc<WakeFlag>,
    waker: Waker,
}

struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> OnWake<F> {
    pub fn new(future: F) -> OnWake<F> {
        let flag = Arc::new(WakeFlag {
            // The first poll registers the future's wakers.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        OnWake {
            future,
            flag,
            waker,
        }
    }
}

impl<F: Future + Unpin> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut own = Context::from_waker(&this.waker);
        Pin::new(&mut this.future).poll(&mut own)
    }
}

/// The send timeout of a connection: a write that waits for the client
/// to take bytes fails once the timeout has passed since the wait began.
/// Each write that makes progress ends the wait, as with nginx's
/// `send_timeout`, so a slow client that keeps reading is not cut off.
/// Only a write that has to wait reads the clock.
///
/// An HTTP/2 stream that waits for the client to grant flow-control
/// window makes no write, so this timeout does not see it;
/// [`watch_stalled_bodies`] does.
#[derive(Debug)]
pub struct SendTimeout {
    limit: Duration,
    /// Whether `timer` runs for the current wait.
    waiting: bool,
}

impl SendTimeout {
    /// Returns a timeout of `limit`; zero waits without end.
    pub fn new(limit: Duration) -> SendTimeout {
        SendTimeout {
            limit,
            waiting: false,
        }
    }

    /// Passes on the result of a write. A write that has to wait starts
    /// the timer, kept in `timer`, unless it runs already; once it fires
    /// the write fails with [`io::ErrorKind::TimedOut`].
    pub fn check<T>(
        &mut self,
        timer: &mut Option<Pin<Box<Sleep>>>,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.waiting = false;
            return polled;
        }
        if self.limit.is_zero() {
            return Poll::Pending;
        }
        if !self.waiting {
            let deadline = Instant::now() + self.limit;
            match timer {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.waiting = true;
        }
        match timer.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "sending the response timed out: the client took no bytes for {} s \
                     (server.limits.send_timeout)",
                    self.limit.as_secs_f64()
                ),
            ))),
            _ => Poll::Pending,
        }
    }
}

/// Returns the write that ran out of the send timeout when it is `error`
/// or an error that caused it.
pub fn send_timeout_cause<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a io::Error> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(io_error) = error.downcast_ref::<io::Error>() {
            if io_error.kind() == io::ErrorKind::TimedOut {
                return Some(io_error);
            }
        }
        cause = error.source();
    }
    None
}

/// The connection's socket, recording traffic in its [`Activity`] and
/// bounding writes with the send timeout.
pub struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    send_timeout: SendTimeout,
    /// Made on the first write that has to wait, then reused.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>, send_timeout: Duration) -> Self {
        TrackedIo {
            inner,
            activity,
            send_timeout: SendTimeout::new(send_timeout),
            timer: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            this.activity.touch();
        }
        this.send_timeout.check(&mut this.timer, cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A TLS stream's flush writes what it has buffered.
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.send_timeout.check(&mut this.timer, cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.send_timeout.check(&mut this.timer, cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            this.activity.touch();
        }
        this.send_timeout.check(&mut this.timer, cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn on_wake_polls_the_inner_future_when_it_is_woken() {
        let (sender, receiver) = tokio::sync::oneshot::channel::<u8>();
        let task = tokio::spawn(OnWake::new(receiver));
        tokio::task::yield_now().await;
        sender.send(7).unwrap();
        // The inner future's waker must reach the task, or it never ends.
        let value = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert_eq!(value.unwrap().unwrap().unwrap(), 7);
    }

    #[tokio::test]
    async fn on_wake_skips_the_inner_future_until_woken() {
        let inner_polls = Arc::new(AtomicUsize::new(0));
        let counted = {
            let inner_polls = inner_polls.clone();
            std::future::poll_fn(move |cx| {
                inner_polls.fetch_add(1, Ordering::SeqCst);
                // Registers nothing: only the first poll may reach here.
                let _ = cx;
                Poll::<()>::Pending
            })
        };
        let mut watched = OnWake::new(Box::pin(counted));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..5 {
            assert!(Pin::new(&mut watched).poll(&mut cx).is_pending());
        }
        assert_eq!(inner_polls.load(Ordering::SeqCst), 1);
        watched.waker.wake_by_ref();
        assert!(Pin::new(&mut watched).poll(&mut cx).is_pending());
        assert_eq!(inner_polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_watch_waits_for_requests_to_end() {
        let activity = Activity::new();
        let guard = activity.request_started();
        let watch = tokio::spawn(watch_idle(activity.clone(), Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!watch.is_finished(), "closed with a request in flight");
        drop(guard);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!watch.is_finished(), "closed before the idle timeout");
        tokio::time::sleep(Duration::from_secs(16)).await;
        assert!(watch.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn unread_write_times_out() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let mut io = TrackedIo::new(ours, Activity::new(), Duration::from_secs(60));
        let error = tokio::io::AsyncWriteExt::write_all(&mut io, &[b'x'; 1 << 20])
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_reader_write_finishes() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut received = 0;
            let mut chunk = [0; 1024];
            loop {
                // Every pause is shorter than the send timeout; together
                // they are far longer.
                tokio::time::sleep(Duration::from_secs(30)).await;
                match tokio::io::AsyncReadExt::read(&mut theirs, &mut chunk).await {
                    Ok(0) | Err(_) => return received,
                    Ok(read) => received += read,
                }
            }
        });
        let mut io = TrackedIo::new(ours, Activity::new(), Duration::from_secs(60));
        tokio::io::AsyncWriteExt::write_all(&mut io, &[b'x'; 16 * 1024])
            .await
            .unwrap();
        drop(io);
        assert_eq!(reader.await.unwrap(), 16 * 1024);
    }

    #[test]
    fn watched_body_waits_until_asked_again() {
        let activity = Activity::new();
        let mut body = WatchedBody::new(crate::body::full("abc"), activity.clone());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert_eq!(activity.bodies_waiting.load(Ordering::Relaxed), 1);
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(None)
        ));
        assert_eq!(activity.bodies_waiting.load(Ordering::Relaxed), 0);
        assert_eq!(activity.body_polls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn dropped_body_stops_waiting() {
        let activity = Activity::new();
        let mut body = WatchedBody::new(crate::body::full("abc"), activity.clone());
        let mut cx = Context::from_waker(Waker::noop());
        let _ = Pin::new(&mut body).poll_frame(&mut cx);
        drop(body);
        assert_eq!(activity.bodies_waiting.load(Ordering::Relaxed), 0);
    }
}
