//! A client for the one Fly Machines API call navigator makes: suspend or
//! stop this machine, over the unix socket Fly provides inside each machine
//! (`server.idle.fly_api_socket`, default `/.fly/api`). That socket needs no
//! token.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tracing::debug;

use crate::config::schema::IdleAction;

/// Bound on the whole call. After a successful suspend the answer may only
/// arrive once the machine runs again.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest error body quoted in an error message.
const MAX_QUOTED_BODY: usize = 200;

pub fn action_name(action: IdleAction) -> &'static str {
    match action {
        IdleAction::Suspend => "suspend",
        IdleAction::Stop => "stop",
    }
}

/// The API path for `action` on machine `machine` of app `app`.
pub fn action_path(app: &str, machine: &str, action: IdleAction) -> Result<String, String> {
    for (what, value) in [("app name", app), ("machine id", machine)] {
        let valid = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(format!("invalid Fly {what} {value:?}"));
        }
    }
    Ok(format!(
        "/v1/apps/{app}/machines/{machine}/{}",
        action_name(action)
    ))
}

/// Sends `POST /v1/apps/{app}/machines/{machine}/{action}` over `socket`;
/// any 2xx answer is success.
pub async fn request_action(
    socket: &Path,
    app: &str,
    machine: &str,
    action: IdleAction,
) -> Result<(), String> {
    let path = action_path(app, machine, action)?;
    match tokio::time::timeout(CALL_TIMEOUT, post(socket, &path)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "the Machines API did not answer within {}s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

async fn post(socket: &Path, path: &str) -> Result<(), String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|error| format!("cannot connect to {}: {error}", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP handshake on {} failed: {error}", socket.display()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(error = %error, "Machines API connection ended with an error");
        }
    });

    // Fly's examples address the socket's server as `flaps`.
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(HOST, "flaps")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|error| format!("cannot build the request for {path}: {error}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("POST {path} failed: {error}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    if status.is_success() {
        return Ok(());
    }
    let quoted: String = String::from_utf8_lossy(&body)
        .chars()
        .take(MAX_QUOTED_BODY)
        .collect();
    Err(format!("POST {path} answered {status}: {}", quoted.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    #[test]
    fn path_names_app_machine_and_action() {
        assert_eq!(
            action_path("smooth", "48e3", IdleAction::Suspend).unwrap(),
            "/v1/apps/smooth/machines/48e3/suspend"
        );
        assert_eq!(
            action_path("smooth", "48e3", IdleAction::Stop).unwrap(),
            "/v1/apps/smooth/machines/48e3/stop"
        );
        assert!(action_path("smooth", "../x", IdleAction::Stop).is_err());
        assert!(action_path("", "48e3", IdleAction::Stop).is_err());
    }

    /// Serves one connection on `listener` with `answer` and returns the
    /// request head it received.
    async fn answer_once(listener: UnixListener, answer: &'static str) -> String {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        let mut buffer = [0u8; 1024];
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "connection closed before the request head ended");
            received.extend_from_slice(&buffer[..read]);
        }
        stream.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8(received).unwrap()
    }

    #[tokio::test]
    async fn suspend_posts_to_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(answer_once(
            listener,
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
        ));
        request_action(&socket, "smooth", "48e3", IdleAction::Suspend)
            .await
            .unwrap();
        let head = server.await.unwrap();
        assert!(
            head.starts_with("POST /v1/apps/smooth/machines/48e3/suspend HTTP/1.1\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn error_status_is_reported_with_body() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(answer_once(
            listener,
            "HTTP/1.1 412 Precondition Failed\r\ncontent-length: 16\r\n\r\nmachine is busy\n",
        ));
        let error = request_action(&socket, "smooth", "48e3", IdleAction::Stop)
            .await
            .unwrap_err();
        assert!(error.contains("412"), "{error}");
        assert!(error.contains("machine is busy"), "{error}");
    }

    #[tokio::test]
    async fn missing_socket_is_error() {
        let error = request_action(
            Path::new("/nonexistent/fly/api"),
            "smooth",
            "48e3",
            IdleAction::Suspend,
        )
        .await
        .unwrap_err();
        assert!(error.contains("cannot connect"), "{error}");
    }
}
