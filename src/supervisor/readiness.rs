//! Readiness probing of a started tenant over HTTP.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::process::describe_status;

/// Pause after a probe whose connect was refused: the tenant is still
/// booting and not listening yet. A refused connect on loopback costs a
/// few microseconds, so probing this often for the whole boot is cheap,
/// and it bounds the time between the tenant's first listen and "ready"
/// by this pause plus one probe's round trip.
const REFUSED_INTERVAL: Duration = Duration::from_millis(5);

/// Pause after the first probe that failed in another way (accepted but
/// no HTTP reply, reset); it grows by half after each such failure, as
/// the tenant is listening but busy.
const FIRST_INTERVAL: Duration = Duration::from_millis(10);

/// Maximum pause between probes that failed in another way.
const MAX_INTERVAL: Duration = Duration::from_millis(100);

/// Bound of one probe, so that a tenant that accepts but never responds is
/// retried instead of hanging the wait.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes of the response read to find the status line.
const STATUS_LINE_BYTES: usize = 64;

/// Reason [`wait_ready`] failed.
#[derive(Debug)]
pub enum ReadyError {
    /// The process exited before it responded.
    Exited(ExitStatus),
    /// Waiting for the process to exit failed.
    WaitFailed(io::Error),
    /// No response within the deadline.
    Timeout(Duration),
}

impl fmt::Display for ReadyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyError::Exited(status) => {
                write!(
                    f,
                    "process exited with {} before it became ready",
                    describe_status(*status)
                )
            }
            ReadyError::WaitFailed(error) => {
                write!(
                    f,
                    "failed to wait for the process while it started: {error}"
                )
            }
            ReadyError::Timeout(deadline) => {
                write!(
                    f,
                    "process did not answer HTTP within {} ms",
                    deadline.as_millis()
                )
            }
        }
    }
}

impl std::error::Error for ReadyError {}

/// Probes `GET health_path` on 127.0.0.1:`port` until any HTTP response
/// arrives and returns the time that took.
///
/// Any status counts, even 500: the server is up and further errors belong
/// to the application. Fails with [`ReadyError::Exited`] when `exited`
/// resolves first, e.g. with `child.wait()`, and with
/// [`ReadyError::Timeout`] after `deadline`.
pub async fn wait_ready(
    port: u16,
    health_path: &str,
    deadline: Duration,
    exited: impl Future<Output = io::Result<ExitStatus>>,
) -> Result<Duration, ReadyError> {
    let started = Instant::now();
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let request = format!(
        "GET {health_path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: navigator-readiness\r\n\
         Connection: close\r\n\r\n"
    );

    let probe_loop = async {
        let mut interval = FIRST_INTERVAL;
        loop {
            match tokio::time::timeout(PROBE_TIMEOUT, probe(address, request.as_bytes())).await {
                Ok(Ok(())) => return started.elapsed(),
                Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionRefused => {
                    tokio::time::sleep(REFUSED_INTERVAL).await;
                    continue;
                }
                Ok(Err(error)) => tracing::trace!(port, %error, "readiness probe failed"),
                Err(_) => tracing::debug!(port, "readiness probe timed out"),
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 3 / 2).min(MAX_INTERVAL);
        }
    };

    tokio::select! {
        // Biased towards the exit, because a process that answered once and
        // then died is not ready.
        biased;
        status = exited => match status {
            Ok(status) => Err(ReadyError::Exited(status)),
            Err(error) => Err(ReadyError::WaitFailed(error)),
        },
        ready = tokio::time::timeout(deadline, probe_loop) => {
            ready.map_err(|_| ReadyError::Timeout(deadline))
        }
    }
}

/// Sends `request` and succeeds when the reply starts with an HTTP status
/// line.
async fn probe(address: SocketAddr, request: &[u8]) -> io::Result<()> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;

    let mut reply = [0u8; STATUS_LINE_BYTES];
    let mut filled = 0;
    while filled < reply.len() {
        let read = stream.read(&mut reply[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
        if reply[..filled].contains(&b'\n') {
            break;
        }
    }
    if is_status_line(&reply[..filled]) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the reply is not an HTTP response",
        ))
    }
}

/// Tests for `HTTP/<version> <3 digits>` at the start of `reply`.
fn is_status_line(reply: &[u8]) -> bool {
    let Some(rest) = reply.strip_prefix(b"HTTP/") else {
        return false;
    };
    let Some(space) = rest.iter().position(|&byte| byte == b' ') else {
        return false;
    };
    let code = &rest[space + 1..];
    code.len() >= 3 && code[..3].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    use crate::supervisor::output::OutputSink;
    use crate::supervisor::process::{SpawnSpec, spawn};

    use tokio::net::TcpListener;

    async fn listener() -> (TcpListener, u16) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    /// Returns a port that nothing listens on right now.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    }

    /// Answers every connection with `reply`, after skipping the first
    /// `silent` connections without answering them.
    fn serve(
        listener: TcpListener,
        silent: usize,
        reply: &'static [u8],
    ) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            let mut last_request = Vec::new();
            for index in 0.. {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = vec![0u8; 1024];
                let read = stream.read(&mut request).await.unwrap_or(0);
                request.truncate(read);
                last_request = request;
                if index < silent {
                    unanswered.push(stream);
                    continue;
                }
                stream.write_all(reply).await.unwrap();
                break;
            }
            last_request
        })
    }

    #[tokio::test]
    async fn ready_on_error_status() {
        let (listener, port) = listener().await;
        let server = serve(listener, 0, b"HTTP/1.1 500 Internal Server Error\r\n\r\n");
        let result = wait_ready(port, "/up", Duration::from_secs(10), pending()).await;
        assert!(result.is_ok(), "{result:?}");

        let request = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(request.starts_with("GET /up HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nHost: localhost\r\n"), "{request}");
    }

    #[tokio::test]
    async fn ready_after_late_listen() {
        let port = closed_port();
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .await
                .unwrap();
            serve(listener, 0, b"HTTP/1.1 200 OK\r\n\r\n")
                .await
                .unwrap()
        });
        let result = wait_ready(port, "/", Duration::from_secs(10), pending()).await;
        assert!(result.is_ok(), "{result:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn ready_retries_silent_probe() {
        let (listener, port) = listener().await;
        let _server = serve(listener, 1, b"HTTP/1.0 204 No Content\r\n\r\n");
        let result = wait_ready(port, "/", Duration::from_secs(10), pending()).await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn ready_fails_when_exited() {
        let port = closed_port();
        let spec = SpawnSpec {
            label: "exits".into(),
            program: "sh".into(),
            args: vec!["-c".into(), "exit 3".into()],
            ..SpawnSpec::default()
        };
        let mut child = spawn(&spec, OutputSink::new("exits")).unwrap();
        let result = wait_ready(port, "/", Duration::from_secs(10), child.wait()).await;
        match result {
            Err(ReadyError::Exited(status)) => assert_eq!(status.code(), Some(3)),
            other => panic!("expected Exited, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn ready_times_out_without_answer() {
        let (listener, port) = listener().await;
        let _server = serve(listener, usize::MAX, b"");
        let result = wait_ready(port, "/", Duration::from_millis(300), pending()).await;
        assert!(matches!(result, Err(ReadyError::Timeout(_))), "{result:?}");
    }

    #[tokio::test]
    async fn ready_rejects_non_http_reply() {
        let (listener, port) = listener().await;
        let _server = serve(listener, 0, b"SSH-2.0-OpenSSH\r\n");
        let result = wait_ready(port, "/", Duration::from_millis(300), pending()).await;
        assert!(matches!(result, Err(ReadyError::Timeout(_))), "{result:?}");
    }

    #[test]
    fn status_line_cases() {
        assert!(is_status_line(b"HTTP/1.1 200 OK\r\n"));
        assert!(is_status_line(b"HTTP/2 503"));
        assert!(!is_status_line(b"HTTP/1.1 20"));
        assert!(!is_status_line(b"SSH-2.0"));
        assert!(!is_status_line(b""));
    }
}
