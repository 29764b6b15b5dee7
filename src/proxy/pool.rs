//! Keep-alive connections to upstreams at IP addresses (tenant processes
//! on loopback), driven by the task of the request that uses them.
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

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::{Guard, ProxyError, error_chain};
use crate::body::{Body, BoxError};
use crate::workers;

/// Idle connections kept per upstream address.
const MAX_IDLE_PER_ADDRESS: usize = 64;
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

struct Idle {
    upstream: Box<Upstream>,
    since: Instant,
}

#[derive(Default)]
struct Idles {
    by_address: HashMap<SocketAddr, Vec<Idle>>,
    last_sweep: Option<Instant>,
}

/// Idle upstream connections by address, one shard per connection
/// worker: a connection made on a worker is registered with that worker's
/// I/O driver, so requests on the same worker reuse it.
#[derive(Clone)]
pub struct Pool {
    shards: Arc<[Mutex<Idles>]>,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::new()
    }
}

impl Pool {
    pub fn new() -> Pool {
        Pool {
            shards: (0..workers::shard_count())
                .map(|_| Mutex::default())
                .collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idles> {
        let shard = &self.shards[workers::current_shard() % self.shards.len()];
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the most recently used idle connection to `address` that is
    /// younger than the idle timeout.
    fn take(&self, address: SocketAddr) -> Option<Box<Upstream>> {
        let mut idles = self.lock();
        let list = idles.by_address.get_mut(&address)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.upstream);
            }
        }
        None
    }

    fn put(&self, address: SocketAddr, upstream: Box<Upstream>) {
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
        if list.len() < MAX_IDLE_PER_ADDRESS {
            list.push(Idle {
                upstream,
                since: now,
            });
        }
    }

    /// Sends `request` (its URI in origin form, its `Host` header set) to
    /// `address` on an idle connection or a new one. The response body
    /// keeps `guard` until it ends or is dropped.
    pub async fn send(
        &self,
        address: SocketAddr,
        mut request: Request<Body>,
        guard: Guard,
    ) -> Result<Response<PooledBody>, ProxyError> {
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
                        inner: body,
                        upstream: keep,
                        pool: self.clone(),
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

async fn connect(address: SocketAddr) -> Result<Box<Upstream>, ProxyError> {
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
    inner: Incoming,
    upstream: Option<Box<Upstream>>,
    pool: Pool,
    address: SocketAddr,
    _guard: Guard,
}

impl PooledBody {
    fn start(mut self) -> PooledBody {
        // A response without a body (to HEAD, a 204 or 304) may never be
        // polled; its connection is free now. No task waits on an idle
        // connection, so a waker that does nothing serves.
        if self.inner.is_end_stream() {
            self.release(&mut Context::from_waker(std::task::Waker::noop()));
        }
        self
    }

    /// Returns the connection to the pool when it can take another
    /// request; else closes it (a request body still being written, an
    /// upstream that asked to close).
    fn release(&mut self, cx: &mut Context<'_>) {
        let Some(mut upstream) = self.upstream.take() else {
            return;
        };
        if !upstream.drive(cx) && upstream.sender.is_ready() {
            self.pool.put(self.address, upstream);
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
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            if let Some(upstream) = this.upstream.as_mut() {
                if upstream.drive(cx) {
                    this.upstream = None;
                }
                polled = Pin::new(&mut this.inner).poll_frame(cx);
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.release(cx);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.release(cx);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                this.upstream = None;
                Poll::Ready(Some(Err(Box::new(error) as BoxError)))
            }
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
