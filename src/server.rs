//! The listeners: accept connections, serve HTTP/1.1 and HTTP/2 on each
//! (by prior knowledge on the plain listener, by ALPN on the TLS one),
//! and shut down gracefully. Connections outlive the listener that
//! accepted them, so a reload can rebind without dropping any.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::body::{Body, RequestBody};
use crate::config::units::Listen;
use crate::connection;
use crate::http1 as lean;
use crate::pipeline::{self, Connection};
use crate::tls;
use crate::workers;

/// Binds `listen`. A port without a host binds every IPv6 and IPv4
/// address; where IPv6 is unavailable, IPv4 alone.
pub async fn bind(listen: &Listen) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for address in listen.socket_addrs() {
        match TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(error) => {
                debug!(%address, error = %error, "bind failed; trying the next address");
                last_error = Some(error);
            }
        }
    }
    Err(last_error
        .unwrap_or_else(|| std::io::Error::other(format!("no address to bind for {listen}"))))
}

/// The open connections of every listener. Listeners come and go (a
/// reload may rebind), but connections outlive the listener that accepted
/// them, so shutdown closes and waits for them here.
pub struct Connections {
    /// Turns true when every connection should finish its request in
    /// flight and close.
    closing: watch::Sender<bool>,
    /// Number of open connections.
    open: watch::Sender<usize>,
}

impl Connections {
    pub fn new() -> Arc<Connections> {
        Arc::new(Connections {
            closing: watch::Sender::new(false),
            open: watch::Sender::new(0),
        })
    }

    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// Asks every connection to close once its response in flight is sent
    /// (hyper's graceful shutdown), and waits until all are closed or
    /// `grace` passed. Returns the number still open.
    pub async fn close_all(&self, grace: Duration) -> usize {
        self.closing.send_replace(true);
        let mut open = self.open.subscribe();
        let all_closed = open.wait_for(|count| *count == 0);
        if tokio::time::timeout(grace, all_closed).await.is_err() {
            let left = self.open();
            warn!(
                grace_ms = grace.as_millis() as u64,
                open = left,
                "connections still open after the shutdown timeout"
            );
            return left;
        }
        debug!("all connections closed");
        0
    }

    fn track(self: &Arc<Self>) -> ConnectionGuard {
        self.open.send_modify(|count| *count += 1);
        ConnectionGuard(self.clone())
    }
}

/// Counts one open connection until dropped.
struct ConnectionGuard(Arc<Connections>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open.send_modify(|count| *count -= 1);
    }
}

/// Accepts connections on `listener` until `stop_accepting` turns true,
/// then closes the listener and returns. The connections it accepted go
/// on under `connections`. With `tls`, each connection starts with a TLS
/// handshake under the settings current at that moment.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<tls::SharedConfig>,
    mut stop_accepting: watch::Receiver<bool>,
    connections: Arc<Connections>,
) {
    let limits = app.snapshot().config.server.limits.clone();
    // NOTE: the limit is per listener and read when it opens; a reload
    // changes it only together with a new listen address.
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1) as usize));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1_only = http1::Builder::new();
    let header_read_timeout = limits.header_read_timeout.get();
    let idle_timeout = limits.idle_connection_timeout.get();
    let send_timeout = limits.send_timeout.get();
    // hyper answers 431 to a head larger than its read buffer, which has
    // a floor of 8 KiB. Its header timer also runs while an idle
    // keep-alive connection waits for the next request, so HTTP/1.1
    // connections idle for `header_read_timeout` close too.
    let max_header_bytes = (limits.max_header_bytes.0 as usize).max(8192);
    // Both builders serve HTTP/1 and must do it alike. Their types differ
    // but their setters share names, so one list sets both.
    macro_rules! http1_settings {
        ($builder:expr) => {
            $builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_buf_size(max_header_bytes)
                .keep_alive(true)
        };
    }
    http1_settings!(builder.http1());
    http1_settings!(http1_only);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(60)));
    let builders = Arc::new(Builders {
        auto: builder,
        http1: http1_only,
    });
    // hyper's header timer also bounds the wait for the next request on a
    // keep-alive connection, and the idle timeout applies besides.
    let lean = lean::Limits {
        header_read_timeout,
        keep_alive: if idle_timeout.is_zero() {
            header_read_timeout
        } else {
            header_read_timeout.min(idle_timeout)
        },
        max_header_bytes,
        send_timeout,
    };

    let address = listener.local_addr().ok();
    if let Some(address) = address {
        info!(%address, tls = tls.is_some(), "listening");
    }
    let mut accept_failures = AcceptFailures::default();

    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stopped(&mut stop_accepting) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: the pending connection stays in
                    // the backlog, so back off instead of spinning.
                    accept_failures.failed(&error, address, Instant::now());
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            },
            _ = stopped(&mut stop_accepting) => break,
        };
        accept_failures.recovered(address);
        let _ = stream.set_nodelay(true);
        // Responses wait in the socket's buffer only up to this many bytes
        // not yet sent; beyond that a write waits. The buffer would
        // otherwise grow to megabytes, and the kernel reports room in it
        // only once a third of it is free, so a client reading slowly but
        // steadily would look stalled to the send timeout.
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_LIMIT);
        let connection = Connection {
            peer: normalize(peer),
            tls: tls.is_some(),
        };
        let accepted = Accepted {
            app: app.clone(),
            builders: builders.clone(),
            connection,
            permit,
            guard: connections.track(),
            idle_timeout,
            lean,
        };
        let tls = tls
            .as_ref()
            .map(|config| TlsAcceptor::from(config.load_full()));
        workers::spawn_connection(stream, move |stream| async move {
            // A client that never sends a byte would otherwise hold its
            // connection slot: the protocol detection has no deadline.
            let Some(first) = connection::first_byte(&stream, header_read_timeout).await else {
                debug!(peer = %connection.peer, "no request within the header read timeout; closing");
                return;
            };
            match tls {
                // HTTP/2 with prior knowledge starts with `PRI`. Any other
                // first byte is HTTP/1, served by the lean server as far
                // as it goes, then by hyper without the detection layer.
                None if first != b'P' => accepted.serve_plain(stream).await,
                // hyper-util waits for the rest of a `PRI` preface without
                // a deadline, so a client that stops after `P` or `PR`
                // would hold its slot until the idle timeout.
                None => accepted.serve(stream, Some(header_read_timeout)).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await;
                    match handshake {
                        // Boxed: a TLS session is large, and inline it
                        // would enlarge the task of every plain
                        // connection too.
                        Ok(Ok(stream)) => Box::pin(accepted.serve(stream, None)).await,
                        Ok(Err(error)) => {
                            debug!(peer = %connection.peer, error = %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            debug!(peer = %connection.peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }

    drop(listener);
    if let Some(address) = address {
        info!(%address, "stopped accepting connections");
    }
}

/// The connection builders of one listener, set up alike.
struct Builders {
    /// HTTP/1.1 or HTTP/2, by prior knowledge or ALPN.
    auto: auto::Builder<TokioExecutor>,
    /// HTTP/1.1 alone, for plain connections that cannot be HTTP/2.
    http1: http1::Builder,
}

/// An accepted connection and what serving it needs. The permit and the
/// guard are released when it is dropped, whichever way the connection
/// ends.
struct Accepted {
    app: Arc<App>,
    builders: Arc<Builders>,
    connection: Connection,
    permit: OwnedSemaphorePermit,
    guard: ConnectionGuard,
    idle_timeout: Duration,
    lean: lean::Limits,
}

/// A connection future that can be asked to finish its current request
/// and stop.
trait GracefulConnection: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

type ServedIo<S> = TokioIo<connection::TrackedIo<S>>;

impl<S> GracefulConnection
    for auto::UpgradeableConnection<'_, ServedIo<S>, RequestService, TokioExecutor>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<S> GracefulConnection for http1::UpgradeableConnection<ServedIo<S>, RequestService>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// Runs the pipeline for each request of one connection.
struct RequestService {
    app: Arc<App>,
    connection: Connection,
    activity: Arc<connection::Activity>,
    /// Whether response bodies are watched for a client that stopped
    /// taking them (the send timeout is set).
    watch_bodies: bool,
}

impl Service<Request<Incoming>> for RequestService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let app = self.app.clone();
        let connection = self.connection;
        let in_flight = self.activity.request_started();
        // hyper keeps room for one request's future for as long as the
        // connection is open. Boxed, an idle keep-alive connection keeps
        // a pointer instead of the whole pipeline's state.
        let request = request.map(RequestBody::Streamed);
        let watched = self.watch_bodies.then(|| self.activity.clone());
        Box::pin(async move {
            let response = pipeline::handle(&app, connection, request, in_flight).await;
            Ok(match watched {
                Some(activity) => response.map(|body| {
                    http_body_util::BodyExt::boxed(connection::WatchedBody::new(body, activity))
                }),
                None => response,
            })
        })
    }
}

impl Accepted {
    /// Serves HTTP/1.1 or HTTP/2 on `stream` (plain TCP or TLS) until the
    /// client closes, the connection idles out, or shutdown requests that
    /// it finish. With `first_request`, a connection on which no request
    /// has started that long after it opened is closed.
    async fn serve<S>(self, stream: S, first_request: Option<Duration>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let builders = self.builders.clone();
        self.drive(stream, first_request, |io, service| {
            builders.auto.serve_connection_with_upgrades(io, service)
        })
        .await;
    }

    /// Serves plain HTTP/1.1 on `stream`: the lean server takes the
    /// requests it can, and hyper the rest of the connection after the
    /// first one it cannot.
    async fn serve_plain(self, mut stream: TcpStream) {
        let closing = self.guard.0.closing.subscribe();
        let ending =
            lean::serve(&mut stream, &self.app, self.connection, self.lean, &closing).await;
        if let lean::Ending::HandOver(read) = ending {
            self.serve_http1(lean::Rewind::new(read, stream)).await;
        }
    }

    /// Serves HTTP/1.1 alone on `stream`, as [`Accepted::serve`] does.
    async fn serve_http1<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let builders = self.builders.clone();
        self.drive(stream, None, |io, service| {
            builders.http1.serve_connection(io, service).with_upgrades()
        })
        .await;
    }

    /// Runs the connection that `open` makes from the stream and the
    /// service, beside the watchers that end it: shutdown, idleness and,
    /// with `first_request`, no request in that time.
    async fn drive<S, O, C, R>(self, stream: S, first_request: Option<Duration>, open: O)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        O: FnOnce(ServedIo<S>, RequestService) -> C,
        C: GracefulConnection<Output = Result<(), R>>,
        R: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Accepted {
            app,
            builders: _,
            connection,
            permit,
            guard,
            idle_timeout,
            lean,
        } = self;
        let mut closing = guard.0.closing.subscribe();
        let activity = connection::Activity::new();
        let service = RequestService {
            app,
            connection,
            activity: activity.clone(),
            watch_bodies: !lean.send_timeout.is_zero(),
        };
        let io = TokioIo::new(connection::TrackedIo::new(
            stream,
            activity.clone(),
            lean.send_timeout,
        ));
        let conn = open(io, service);
        tokio::pin!(conn);
        // The watchers are polled only when their own event wakes them,
        // not on every poll of the connection.
        let watchers = std::pin::pin!(async {
            tokio::select! {
                _ = stopped(&mut closing) => Watched::Shutdown,
                _ = connection::watch_idle(activity.clone(), idle_timeout) => {
                    debug!(peer = %connection.peer, idle_secs = idle_timeout.as_secs(), "closing an idle connection");
                    Watched::Idle
                }
                _ = connection::watch_first_request(activity.clone(), first_request) => {
                    debug!(peer = %connection.peer, "no request within the header read timeout; closing");
                    Watched::Idle
                }
                _ = connection::watch_stalled_bodies(activity, lean.send_timeout) => {
                    info!(
                        peer = %connection.peer,
                        send_timeout_secs = lean.send_timeout.as_secs_f64(),
                        "closing a connection whose client stopped reading: a response waited for it to take data (HTTP/2 flow control)"
                    );
                    Watched::Stalled
                }
            }
        });
        let finished = tokio::select! {
            biased;
            result = conn.as_mut() => Ok(result),
            watched = connection::OnWake::new(watchers) => Err(watched),
        };
        let result = match finished {
            Ok(result) => result,
            Err(Watched::Shutdown) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            // No request is in flight, but an HTTP/2 stream whose client
            // grants no window keeps its response's last data in hyper's
            // buffers, and a graceful shutdown waits for it to go out.
            Err(Watched::Idle) => {
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(IDLE_CLOSE_GRACE, conn.as_mut()).await {
                    Ok(result) => result,
                    Err(_) => {
                        info!(peer = %connection.peer, "closing an idle connection whose client did not take its last response");
                        Ok(())
                    }
                }
            }
            // The stalled response would never finish, so a graceful
            // shutdown would wait for good. Dropping the connection
            // closes the socket.
            Err(Watched::Stalled) => Ok(()),
        };
        if let Err(error) = result.map_err(Into::into) {
            match connection::send_timeout_cause(&*error) {
                Some(cause) => {
                    info!(peer = %connection.peer, error = %cause, "closing a connection whose client stopped reading");
                }
                None => {
                    debug!(peer = %connection.peer, error = %error, "connection ended with an error");
                }
            }
        }
        drop(permit);
        drop(guard);
    }
}

/// Bytes of response a client socket keeps queued before they go out
/// (`TCP_NOTSENT_LOWAT`).
const UNSENT_LIMIT: u32 = 128 * 1024;

/// Why a watcher ends a connection, which decides how.
enum Watched {
    /// navigator shuts down: the requests in flight finish first.
    Shutdown,
    /// No request in flight: the connection ends gracefully, for at most
    /// [`IDLE_CLOSE_GRACE`].
    Idle,
    /// A response waits for a client that takes nothing: the connection
    /// closes at once.
    Stalled,
}

/// How long an idle connection may take to end gracefully.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Wait before accepting again after a failed accept.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Shortest time between two reports of failing accepts.
const ACCEPT_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Reports failed accepts without flooding the log: the first failure at
/// once, then at most one line per [`ACCEPT_REPORT_INTERVAL`] with the
/// number of failures since the last line, and one line when an accept
/// succeeds again. A full file-descriptor table fails every retry, 20 a
/// second.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// Failures since the last successful accept.
    failures: u64,
    /// Failures not yet counted in a log line.
    unreported: u64,
    last_report: Option<Instant>,
}

impl AcceptFailures {
    /// Counts a failure; returns whether it was logged.
    fn failed(
        &mut self,
        error: &std::io::Error,
        address: Option<SocketAddr>,
        now: Instant,
    ) -> bool {
        self.failures += 1;
        self.unreported += 1;
        let due = self
            .last_report
            .is_none_or(|last| now.duration_since(last) >= ACCEPT_REPORT_INTERVAL);
        if !due {
            return false;
        }
        warn!(
            address = ?address,
            error = %error,
            failures = self.unreported,
            retry_ms = ACCEPT_RETRY_DELAY.as_millis() as u64,
            "accept failed; new connections wait in the backlog"
        );
        self.unreported = 0;
        self.last_report = Some(now);
        true
    }

    /// Notes a successful accept; returns whether that ended failures.
    fn recovered(&mut self, address: Option<SocketAddr>) -> bool {
        if self.failures == 0 {
            return false;
        }
        info!(
            address = ?address,
            failures = self.failures,
            "accepting connections again"
        );
        *self = AcceptFailures::default();
        true
    }
}

/// Resolves once `signal` turns true (or its sender is gone).
async fn stopped(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}

/// Maps IPv4-mapped IPv6 peers (`::ffff:1.2.3.4`) on a dual-stack socket
/// back to IPv4, so logs and forwarded headers show the usual form.
fn normalize(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => peer,
        },
        SocketAddr::V4(_) => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_rate_limited() {
        let error = std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut failures = AcceptFailures::default();
        let start = Instant::now();

        assert!(failures.failed(&error, None, start));
        for step in 1..200 {
            let now = start + ACCEPT_RETRY_DELAY * step;
            assert!(!failures.failed(&error, None, now), "logged at step {step}");
        }
        assert_eq!(failures.unreported, 199);
        assert!(failures.failed(&error, None, start + ACCEPT_REPORT_INTERVAL));
        assert_eq!(failures.unreported, 0);
        assert_eq!(failures.failures, 201);
    }

    #[test]
    fn accept_recovery_reported_once() {
        let error = std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut failures = AcceptFailures::default();
        assert!(!failures.recovered(None));
        failures.failed(&error, None, Instant::now());
        assert!(failures.recovered(None));
        assert!(!failures.recovered(None));
        // After recovery the next failure is reported at once again.
        assert!(failures.failed(&error, None, Instant::now()));
    }
}
