//! Keep-alive connections to upstreams at IP addresses (tenant processes
//! on loopback), driven by the task of the request that uses them.
//!
//! A request without a body goes out on a bare connection (see
//! [`super::bare`]): a socket and a small buffer, with no task and no
//! buffers of its own while it waits in the pool. A request with a body
//! goes through hyper's HTTP/1.1 client, which streams it.
//!
//! hyper's pooled client gives each upstream connection a task of its own:
//! every request hands its head to that task through a channel, waits for
//! the response through another, and (for a response with a body) spawns
//! one more task that puts the connection back once the body has been
//! read. On a loopback proxy that bookkeeping costs more than the proxying.
//! Here a request takes an idle connection (its sender and its
//! [`Connection`] future together), polls the connection itself while it
//! waits for the response head, and hands the connection to the response
//! body, which polls it while the body streams and puts it back in the
//! pool when the body has ended. An idle connection is polled by nobody:
//! if the upstream closed it meanwhile, the next request that takes it
//! sees it end and takes another.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::TRANSFER_ENCODING;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::headers::Added;
use super::{Guard, ProxyError, bare, error_chain};
use crate::body::{Body, BoxError};
use crate::lookup::LookupMap;
use crate::workers;

/// Idle hyper connections kept per upstream address and worker.
const MAX_IDLE_PER_ADDRESS: usize = 64;
/// Idle bare connections kept per upstream address and worker. A parked
/// bare connection keeps no buffer, so keeping many is cheap, while each
/// one closed too early costs a connect under load (and a socket in
/// TIME_WAIT).
const MAX_IDLE_BARE_PER_ADDRESS: usize = 512;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle connections of every address are checked for age.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP/1.1 connection to an upstream: the half that sends requests
/// and the future that performs the I/O.
struct Upstream {
    sender: SendRequest<Body>,
    connection: Connection<TokioIo<TcpStream>, Body>,
}

impl Upstream {
    /// Polls the connection's I/O. Returns true once it has ended (the
    /// upstream closed it, or it failed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        match Pin::new(&mut self.connection).poll(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(error)) => {
                debug!(error = %error, "upstream connection ended with an error");
                true
            }
            Poll::Pending => false,
        }
    }
}

struct Idle<C> {
    connection: C,
    since: Instant,
}

struct Idles<C> {
    by_address: LookupMap<SocketAddr, Vec<Idle<C>>>,
    last_sweep: Option<Instant>,
}

impl<C> Default for Idles<C> {
    fn default() -> Self {
        Idles {
            by_address: LookupMap::default(),
            last_sweep: None,
        }
    }
}

/// Idle connections of one kind by address, one shard per connection
/// worker: a connection made on a worker is registered with that worker's
/// I/O driver, so requests on the same worker reuse it.
struct Shards<C> {
    shards: Box<[Mutex<Idles<C>>]>,
    /// Most idle connections kept per address in one shard.
    max_idle: usize,
}

impl<C> Shards<C> {
    fn new(max_idle: usize) -> Shards<C> {
        Shards {
            shards: (0..workers::shard_count())
                .map(|_| Mutex::default())
                .collect(),
            max_idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idles<C>> {
        let shard = &self.shards[workers::current_shard() % self.shards.len()];
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the most recently used idle connection to `address` that is
    /// younger than the idle timeout.
    fn take(&self, address: SocketAddr) -> Option<C> {
        let mut idles = self.lock();
        let list = idles.by_address.get_mut(&address)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.connection);
            }
        }
        None
    }

    fn put(&self, address: SocketAddr, connection: C) {
        let now = Instant::now();
        let mut idles = self.lock();
        let sweep_due = idles
            .last_sweep
            .is_none_or(|last| now.duration_since(last) >= SWEEP_INTERVAL);
        if sweep_due {
            idles.last_sweep = Some(now);
            idles.by_address.retain(|_, list| {
                list.retain(|idle| now.duration_since(idle.since) < IDLE_TIMEOUT);
                !list.is_empty()
            });
        }
        let list = idles.by_address.entry(address).or_default();
        if list.len() < self.max_idle {
            list.push(Idle {
                connection,
                since: now,
            });
        }
    }
}

/// Idle upstream connections: bare ones for requests without a body, and
/// hyper's for requests with one.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Kinds>,
}

struct Kinds {
    hyper: Shards<Box<Upstream>>,
    bare: Shards<bare::Conn>,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::new()
    }
}

impl Pool {
    pub fn new() -> Pool {
        Pool {
            shared: Arc::new(Kinds {
                hyper: Shards::new(MAX_IDLE_PER_ADDRESS),
                bare: Shards::new(MAX_IDLE_BARE_PER_ADDRESS),
            }),
        }
    }

    fn take(&self, address: SocketAddr) -> Option<Box<Upstream>> {
        self.shared.hyper.take(address)
    }

    fn put(&self, address: SocketAddr, upstream: Box<Upstream>) {
        self.shared.hyper.put(address, upstream);
    }

    /// Takes an idle bare connection to `address` that the upstream has
    /// not closed meanwhile.
    fn take_bare(&self, address: SocketAddr) -> Option<bare::Conn> {
        loop {
            let mut connection = self.shared.bare.take(address)?;
            if connection.is_open() {
                return Some(connection);
            }
        }
    }

    fn put_bare(&self, address: SocketAddr, mut connection: bare::Conn) {
        connection.park();
        self.shared.bare.put(address, connection);
    }

    /// Sends a request without a body on a bare connection. When a reused
    /// connection turns out closed, a request that was not written goes
    /// out on another connection. One that was written and got no
    /// response is sent once more, on a new connection, only if its
    /// method is safe (GET, HEAD, OPTIONS, TRACE): the upstream may have
    /// acted on it, or may drop it again.
    #[inline(always)]
    fn send_bare<'a>(
        &'a self,
        address: SocketAddr,
        request: Request<Body>,
        added: Option<&'a Added<'_>>,
        guard: Guard,
    ) -> impl Future<Output = Result<Response<PooledBody>, ProxyError>> + 'a {
        let (parts, _) = request.into_parts();
        async move {
            let repeatable = parts.method.is_safe();
            let mut repeated = false;
            loop {
                let pooled = if repeated {
                    None
                } else {
                    self.take_bare(address)
                };
                let (connection, reused) = match pooled {
                    Some(connection) => (connection, true),
                    None => (bare::Conn::new(open(address).await?), false),
                };
                match connection.exchange(&parts, added).await {
                    Ok((response, mut body)) => {
                        if let Some(connection) = body.reusable() {
                            self.put_bare(address, connection);
                        }
                        // A body that arrived with the head has already let
                        // go of its connection, and needs no pool to return
                        // it to.
                        let pool = body.holds_connection().then(|| self.clone());
                        let body = PooledBody {
                            inner: Inner::Bare(body),
                            pool,
                            address,
                            _guard: guard,
                        };
                        return Ok(response.map(|()| body));
                    }
                    Err(bare::ExchangeError::Stale { unsent: true, .. }) if reused => {
                        debug!(%address, "an idle upstream connection was closed; sending on another");
                    }
                    Err(bare::ExchangeError::Stale { unsent: false, .. })
                        if reused && repeatable && !repeated =>
                    {
                        debug!(%address, "the upstream closed a reused connection without a response; repeating the request once on a new connection");
                        repeated = true;
                    }
                    Err(error) => return Err(ProxyError::Upstream(error.to_string())),
                }
            }
        }
    }

    /// Sends `request` (its URI in origin form, its `Host` header set) to
    /// `address` on an idle connection or a new one. The response body
    /// keeps `guard` until it ends or is dropped.
    ///
    /// Like the bare path under it, it returns an `async move` block
    /// rather than being an `async fn`, for the reason given at
    /// [`crate::pipeline::handle`].
    #[inline(always)]
    #[allow(clippy::manual_async_fn)]
    pub fn send<'a>(
        &'a self,
        address: SocketAddr,
        mut request: Request<Body>,
        added: Option<&'a Added<'_>>,
        guard: Guard,
    ) -> impl Future<Output = Result<Response<PooledBody>, ProxyError>> + 'a {
        async move {
            if request.body().is_end_stream() && !request.headers().contains_key(TRANSFER_ENCODING)
            {
                return self.send_bare(address, request, added, guard).await;
            }
            if let Some(added) = added {
                added.insert_into(request.headers_mut());
            }
            loop {
                let (mut upstream, reused) = match self.take(address) {
                    Some(upstream) => (upstream, true),
                    None => (connect(address).await?, false),
                };
                // A reused connection may have been closed by the upstream
                // while it sat idle; polling it once notices that.
                let ready = std::future::poll_fn(|cx| {
                    if upstream.drive(cx) {
                        return Poll::Ready(false);
                    }
                    upstream.sender.poll_ready(cx).map(|result| result.is_ok())
                })
                .await;
                if !ready {
                    if reused {
                        continue;
                    }
                    return Err(ProxyError::Upstream(
                        "the upstream closed a new connection".to_string(),
                    ));
                }

                let mut connection_ended = false;
                let result = {
                    let mut response = std::pin::pin!(upstream.sender.try_send_request(request));
                    std::future::poll_fn(|cx| {
                        if !connection_ended {
                            connection_ended = upstream.drive(cx);
                        }
                        response.as_mut().poll(cx)
                    })
                    .await
                };
                match result {
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        let keep = (!connection_ended).then_some(upstream);
                        let body = PooledBody {
                            inner: Inner::Hyper {
                                body,
                                upstream: keep,
                            },
                            pool: Some(self.clone()),
                            address,
                            _guard: guard,
                        };
                        return Ok(Response::from_parts(parts, body.start()));
                    }
                    Err(mut error) => {
                        // The request was not written: the connection closed
                        // before it could be. Another connection may take it.
                        match error.take_message() {
                            Some(unsent) if reused => {
                                request = unsent;
                                continue;
                            }
                            _ => {
                                return Err(ProxyError::Upstream(error_chain(&error.into_error())));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Opens a TCP connection to `address`, within the connect timeout.
async fn open(address: SocketAddr) -> Result<TcpStream, ProxyError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(ProxyError::Connect(format!("{address}: {error}"))),
        Err(_) => {
            return Err(ProxyError::Connect(format!(
                "{address}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect(address: SocketAddr) -> Result<Box<Upstream>, ProxyError> {
    let stream = open(address).await?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| ProxyError::Upstream(error_chain(&error)))?;
    // Boxed, as the connection state is large and moves between the
    // pool, the request and the response body.
    Ok(Box::new(Upstream { sender, connection }))
}

/// A response body from a pooled connection. It drives the connection
/// while the body streams, and returns it to the pool once the body has
/// ended and the connection can take the next request.
pub struct PooledBody {
    inner: Inner,
    /// The pool that the connection goes back to, or `None` once it went
    /// back.
    pool: Option<Pool>,
    address: SocketAddr,
    _guard: Guard,
}

enum Inner {
    Hyper {
        body: Incoming,
        upstream: Option<Box<Upstream>>,
    },
    Bare(bare::ResponseBody),
}

impl PooledBody {
    fn start(mut self) -> PooledBody {
        // A response without a body (to HEAD, a 204 or 304) may never be
        // polled; its connection is free now. No task waits on an idle
        // connection, so a waker that does nothing serves.
        if self.is_end_stream() {
            self.release(&mut Context::from_waker(std::task::Waker::noop()));
        }
        self
    }

    /// Returns the connection to the pool when it can take another
    /// request; else closes it (a request body still being written, an
    /// upstream that asked to close).
    fn release(&mut self, cx: &mut Context<'_>) {
        match &mut self.inner {
            Inner::Hyper { upstream, .. } => {
                let Some(mut upstream) = upstream.take() else {
                    return;
                };
                if !upstream.drive(cx) && upstream.sender.is_ready() {
                    if let Some(pool) = &self.pool {
                        pool.put(self.address, upstream);
                    }
                }
            }
            Inner::Bare(body) => {
                if let (Some(connection), Some(pool)) = (body.reusable(), &self.pool) {
                    pool.put_bare(self.address, connection);
                }
            }
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let (body, upstream) = match &mut this.inner {
            Inner::Bare(body) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if polled.is_ready() {
                    this.release(cx);
                }
                return polled;
            }
            Inner::Hyper { body, upstream } => (body, upstream),
        };
        let mut polled = Pin::new(&mut *body).poll_frame(cx);
        if polled.is_pending() {
            if let Some(connection) = upstream.as_mut() {
                if connection.drive(cx) {
                    *upstream = None;
                }
                polled = Pin::new(&mut *body).poll_frame(cx);
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if body.is_end_stream() {
                    this.release(cx);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.release(cx);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                *upstream = None;
                Poll::Ready(Some(Err(Box::new(error) as BoxError)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper { body, .. } => body.is_end_stream(),
            Inner::Bare(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper { body, .. } => body.size_hint(),
            Inner::Bare(body) => body.size_hint(),
        }
    }
}
