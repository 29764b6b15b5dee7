//! A minimal HTTP/1.1 backend for load runs: answers every request with a
//! small fixed body, so a benchmark measures the proxy in front of it and
//! not the backend. Usage: `backend -p PORT` (or PORT in the environment).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn port_from_args() -> Option<u16> {
    let args: Vec<String> = std::env::args().collect();
    let position = args.iter().position(|arg| arg == "-p")?;
    args.get(position + 1)?.parse().ok()
}

fn main() -> std::io::Result<()> {
    let port = port_from_args()
        .or_else(|| std::env::var("PORT").ok().and_then(|p| p.parse().ok()))
        .unwrap_or(8000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_request: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"hello, world\n",
                    ))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
