//! The listener: accepts connections, serves HTTP/1.1 and HTTP/2 (prior
//! knowledge) on each, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::config::units::Listen;
use crate::pipeline::{self, Connection};

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

/// Accepts connections until `shutdown` turns true, then lets open
/// connections finish their requests for up to `grace`.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = app.snapshot().config.server.limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1) as usize));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_buf_size((limits.max_header_bytes.0 as usize).max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .keep_alive_interval(Some(Duration::from_secs(60)));
    let builder = Arc::new(builder);

    if let Ok(address) = listener.local_addr() {
        info!(%address, tls, "listening");
    }

    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            peer: normalize(peer),
            tls,
        };
        let app = app.clone();
        let service = service_fn(move |request| {
            let app = app.clone();
            async move {
                Ok::<_, std::convert::Infallible>(pipeline::handle(app, connection, request).await)
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(peer = %connection.peer, error = %error, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    let grace = limits.shutdown_timeout.get();
    tokio::select! {
        _ = graceful.shutdown() => debug!("all connections closed"),
        _ = tokio::time::sleep(grace) => warn!(grace_secs = grace.as_secs(), "connections still open after the shutdown timeout"),
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
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
