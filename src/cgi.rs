//! CGI scripts (RFC 3875) configured under `server.cgi_scripts`.
//!
//! A script runs per request with the request's meta-variables in its
//! environment and the request body on stdin. It writes a header block
//! (`Status:`, `Content-Type:`, `Location:` and other fields), a blank line
//! and the body. navigator turns the header block into the response head
//! and streams the body to the client as the script writes it.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::access_log::{Answer, Target};
use crate::app::App;
use crate::body::{Body, BoxError, RequestBody};
use crate::compile::Snapshot;
use crate::config::schema::CgiScript;
use crate::pipeline::RequestContext;
use crate::reload::Condition;
use crate::responses;
use crate::supervisor::output::OutputSink;
use crate::supervisor::process::{self, ChildProcess, SpawnSpec};

/// Largest header block a script may write before its body.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Size of the reads from the script's stdout while streaming the body.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Chunks queued between the script and a slow client before the script
/// is made to wait.
const BODY_QUEUE_CHUNKS: usize = 8;

/// Time a script gets between SIGTERM and SIGKILL once its timeout passed.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Header fields a script may not set, because they describe the
/// connection that navigator, not the script, manages.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Returns the script configured for exactly `path` if it takes `method`.
/// A script with another `method` lets the request fall through to the
/// later pipeline steps.
pub fn find<'a>(snapshot: &'a Snapshot, path: &str, method: &Method) -> Option<&'a CgiScript> {
    let script = snapshot.cgi.get(path)?;
    match &script.method {
        Some(only) if !only.eq_ignore_ascii_case(method.as_str()) => None,
        _ => Some(script),
    }
}

/// Returns whether `user` may run `script`: anyone when `allowed_users` is
/// empty, else only an authenticated user on the list.
pub fn user_allowed(script: &CgiScript, user: Option<&str>) -> bool {
    if script.allowed_users.is_empty() {
        return true;
    }
    user.is_some_and(|user| script.allowed_users.iter().any(|allowed| allowed == user))
}

/// Runs `script` for the request and returns its response, whose body
/// streams while the script writes it.
pub async fn serve(
    app: &App,
    context: &mut RequestContext<'_>,
    script: &CgiScript,
    head: Parts,
    body: RequestBody,
) -> Response<Body> {
    context.record.answer = Answer::Cgi;
    context.record.target = Some(Target::Text(script.script.display().to_string()));

    if !user_allowed(script, context.user.as_deref()) {
        warn!(
            path = %script.path,
            user = context.user.as_deref().unwrap_or("-"),
            request_id = ?context.request_id,
            "CGI script refused: user not in allowed_users"
        );
        return responses::error_page(
            StatusCode::FORBIDDEN,
            "You are not allowed to run this script.",
        );
    }

    let program = absolute(&script.script);
    let spec = SpawnSpec {
        label: format!("cgi:{}", script.path),
        program: program.display().to_string(),
        args: Vec::new(),
        cwd: program.parent().map(Path::to_path_buf),
        env: environment(script, context, &head),
        user: script.user.clone(),
        group: script.group.clone(),
        cgroup: None,
    };
    let (mut child, pipes) = match process::spawn_piped(
        &spec,
        OutputSink::new(spec.label.clone())
            .with_hook(crate::log_shipping::process_output_hook(&spec.label)),
    ) {
        Ok(started) => started,
        Err(error) => {
            error!(path = %script.path, script = %program.display(), error = %error, "CGI script failed to start");
            return responses::error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The script for this page could not be started.",
            );
        }
    };
    debug!(path = %script.path, pid = child.pid(), "CGI script started");

    tokio::spawn(copy_request_body(body, pipes.stdin));

    let deadline = script
        .timeout
        .map(|timeout| timeout.get())
        .filter(|timeout| !timeout.is_zero())
        .map(|timeout| Instant::now() + timeout);
    let mut stdout = pipes.stdout;
    let head_read = read_head(&mut stdout);
    let head_read = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, head_read).await {
            Ok(result) => result,
            Err(_) => {
                warn!(path = %script.path, pid = child.pid(), "CGI script timed out before sending its headers; stopping it");
                tokio::spawn(stop(child, script.path.clone()));
                return responses::error_page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The script for this page did not answer in time.",
                );
            }
        },
        None => head_read.await,
    };
    let (status, headers, rest) = match head_read.and_then(|(block, rest)| {
        parse_head(&block).map(|(status, headers)| (status, headers, rest))
    }) {
        Ok(head) => head,
        Err(reason) => {
            error!(path = %script.path, pid = child.pid(), error = %reason, "CGI script sent malformed output");
            tokio::spawn(stop(child, script.path.clone()));
            return responses::error_page(
                StatusCode::BAD_GATEWAY,
                "The script for this page sent an invalid response.",
            );
        }
    };

    let (sender, receiver) = mpsc::channel(BODY_QUEUE_CHUNKS);
    let finish = Finish {
        path: script.path.clone(),
        reload_config: script.reload_config.clone(),
        reloader: app.reloader.clone(),
    };
    tokio::spawn(async move {
        let ended = stream_body(&mut child, stdout, rest, sender, deadline).await;
        finish.after_body(child, ended, deadline).await;
    });

    let mut response = Response::new(ChannelBody { receiver }.boxed());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Returns the script's path made absolute, so that it still resolves
/// after the child changes into the script's directory.
fn absolute(script: &Path) -> PathBuf {
    if script.is_absolute() {
        return script.to_path_buf();
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(script),
        Err(_) => script.to_path_buf(),
    }
}

/// Names a script must not inherit from navigator's environment, because
/// they carry request data and a stale value would be trusted as such.
fn is_request_variable(name: &str) -> bool {
    const META: [&str; 22] = [
        "AUTH_TYPE",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "GATEWAY_INTERFACE",
        "HTTPS",
        "PATH_INFO",
        "PATH_TRANSLATED",
        "QUERY_STRING",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "REMOTE_IDENT",
        "REMOTE_PORT",
        "REMOTE_USER",
        "REQUEST_METHOD",
        "REQUEST_URI",
        "SCRIPT_FILENAME",
        "SCRIPT_NAME",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
        "DOCUMENT_ROOT",
    ];
    name.starts_with("HTTP_") || META.contains(&name)
}

/// Builds the script's environment: navigator's own without request
/// variables, then the script's `env`, then the RFC 3875 meta-variables,
/// which win.
fn environment(
    script: &CgiScript,
    context: &RequestContext<'_>,
    head: &Parts,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| !is_request_variable(name))
        .collect();
    env.extend(script.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(meta_variables(script, context, head));
    env
}

/// Builds the RFC 3875 meta-variables of a request, plus the common
/// extensions `REQUEST_URI`, `SCRIPT_FILENAME`, `REMOTE_PORT` and `HTTPS`.
fn meta_variables(
    script: &CgiScript,
    context: &RequestContext<'_>,
    head: &Parts,
) -> Vec<(String, String)> {
    let server = &context.snapshot.config.server;
    let tls = context.connection.tls;
    let host = request_host(head);
    let (host_name, host_port) = match &host {
        Some(host) => split_host_port(host),
        None => (None, None),
    };
    let server_name = server
        .hostname
        .clone()
        .or(host_name)
        .unwrap_or_else(|| "localhost".to_string());
    // The port the client connected to: from Host, else the scheme's
    // default when Host names none, else the listen port.
    let server_port = match (host_port, &host) {
        (Some(port), _) => port,
        (None, Some(_)) => {
            if tls {
                443
            } else {
                80
            }
        }
        (None, None) => server.listen.port,
    };

    let mut vars = vec![
        ("GATEWAY_INTERFACE".to_string(), "CGI/1.1".to_string()),
        (
            "SERVER_SOFTWARE".to_string(),
            format!("navigator/{}", env!("CARGO_PKG_VERSION")),
        ),
        ("SERVER_NAME".to_string(), server_name),
        ("SERVER_PORT".to_string(), server_port.to_string()),
        (
            "SERVER_PROTOCOL".to_string(),
            protocol(head.version).to_string(),
        ),
        (
            "REQUEST_METHOD".to_string(),
            head.method.as_str().to_string(),
        ),
        (
            "QUERY_STRING".to_string(),
            head.uri.query().unwrap_or("").to_string(),
        ),
        (
            "REQUEST_URI".to_string(),
            head.uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_string(),
        ),
        ("SCRIPT_NAME".to_string(), script.path.clone()),
        (
            "SCRIPT_FILENAME".to_string(),
            absolute(&script.script).display().to_string(),
        ),
        // The match is exact, so no path follows the script name.
        ("PATH_INFO".to_string(), String::new()),
        ("REMOTE_ADDR".to_string(), context.record.client.to_string()),
        (
            "REMOTE_PORT".to_string(),
            context.connection.peer.port().to_string(),
        ),
    ];
    if tls {
        vars.push(("HTTPS".to_string(), "on".to_string()));
    }
    if let Some(user) = &context.user {
        vars.push(("AUTH_TYPE".to_string(), "Basic".to_string()));
        vars.push(("REMOTE_USER".to_string(), user.clone()));
    }
    if let Some(length) = header_text(&head.headers, &CONTENT_LENGTH) {
        vars.push(("CONTENT_LENGTH".to_string(), length));
    }
    if let Some(content_type) = header_text(&head.headers, &CONTENT_TYPE) {
        vars.push(("CONTENT_TYPE".to_string(), content_type));
    }
    vars.extend(header_variables(&head.headers));
    vars
}

/// Builds the `HTTP_*` variables for the request headers. The body headers
/// are left out (they are `CONTENT_*`), and so is `Authorization`, because
/// the script gets `REMOTE_USER` and never the password. `Proxy` is left
/// out because as `HTTP_PROXY` it would set the script's outgoing proxy
/// (the "httpoxy" attack). Names that are not plain tokens and values that
/// are not text are skipped too.
fn header_variables(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for name in headers.keys() {
        if name == CONTENT_LENGTH
            || name == CONTENT_TYPE
            || name == AUTHORIZATION
            || name.as_str() == "proxy"
        {
            continue;
        }
        if !name
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            continue;
        }
        let separator = if name == http::header::COOKIE {
            "; "
        } else {
            ", "
        };
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        if values.is_empty() {
            continue;
        }
        let variable = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        vars.push((variable, values.join(separator)));
    }
    vars
}

fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_string)
}

/// Returns the request's host: `Host`, else the URI authority (HTTP/2).
fn request_host(head: &Parts) -> Option<String> {
    if let Some(host) = head.headers.get(HOST).and_then(|v| v.to_str().ok()) {
        return Some(host.to_string());
    }
    head.uri
        .authority()
        .map(|authority| authority.as_str().to_string())
}

/// Splits `example.com:8080` or `[::1]:8080` into name and port.
fn split_host_port(host: &str) -> (Option<String>, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (Some(name.to_string()), port);
    }
    match host.rsplit_once(':') {
        Some((name, port)) => (Some(name.to_string()), port.parse().ok()),
        None => (Some(host.to_string()), None),
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Copies the request body to the script's stdin and closes it at the
/// end. A script that exits or closes stdin early ends the copy.
async fn copy_request_body(mut body: RequestBody, mut stdin: ChildStdin) {
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                debug!(error = %error, "reading the request body for a CGI script failed");
                return;
            }
        };
        if let Ok(data) = frame.into_data() {
            if stdin.write_all(&data).await.is_err() {
                return;
            }
        }
    }
}

/// Reads the script's output up to the blank line after the header block.
/// Returns the header block and the body bytes read past it.
async fn read_head(stdout: &mut ChildStdout) -> Result<(Vec<u8>, Bytes), String> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((head_end, body_start)) = find_head_end(&buffer) {
            let rest = Bytes::copy_from_slice(&buffer[body_start..]);
            buffer.truncate(head_end);
            return Ok((buffer, rest));
        }
        if buffer.len() > MAX_HEADER_BYTES {
            return Err(format!(
                "no blank line after the headers within {MAX_HEADER_BYTES} bytes"
            ));
        }
        let read = stdout
            .read(&mut chunk)
            .await
            .map_err(|error| format!("reading the script's output failed: {error}"))?;
        if read == 0 {
            // Output that ends after its header fields, without the blank
            // line, is a response without a body.
            if buffer.iter().any(|b| !b.is_ascii_whitespace()) {
                return Ok((buffer, Bytes::new()));
            }
            return Err("the script exited without output".to_string());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Finds the blank line that ends a header block: returns where the block
/// ends and where the body starts. Lines end in `\n` or `\r\n`.
pub fn find_head_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    for (i, byte) in buffer.iter().enumerate() {
        if *byte != b'\n' {
            continue;
        }
        let line = &buffer[line_start..i];
        if line.is_empty() || line == b"\r" {
            return Some((line_start, i + 1));
        }
        line_start = i + 1;
    }
    None
}

/// Parses a header block (the script's output before the blank line) into
/// the response status and headers. Hop-by-hop fields are dropped; the
/// error names the first line that is not a valid header field.
pub fn parse_head(block: &[u8]) -> Result<(StatusCode, HeaderMap), String> {
    let text = std::str::from_utf8(block).map_err(|_| "the headers are not UTF-8".to_string())?;
    let mut status = None;
    let mut headers = HeaderMap::new();
    let mut fields = 0;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without a colon: {:?}", truncate(line)))?;
        // Whitespace around the name is dropped before any comparison, so
        // `Status :200` sets the status instead of passing a `status` field.
        let name = name.trim();
        let value = value.trim();
        fields += 1;
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            let code = code
                .parse::<u16>()
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .ok_or_else(|| format!("invalid Status header {:?}", truncate(value)))?;
            status = Some(code);
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", truncate(name)))?;
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
        headers.append(name, value);
    }
    if fields == 0 {
        return Err("the header block is empty".to_string());
    }
    // A Location without a Status is a redirect (RFC 3875 section 6.2.3).
    let status = status.unwrap_or(if headers.contains_key(LOCATION) {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok((status, headers))
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// The way the body stream ended.
#[derive(Debug, PartialEq, Eq)]
enum BodyEnd {
    /// The script closed stdout.
    Complete,
    /// Reading stdout failed.
    ReadFailed,
    /// The timeout passed first; the client got an aborted response.
    TimedOut,
}

/// Sends the script's stdout to the response body, starting with `first`.
/// A client that goes away does not stop the script: its output is then
/// read and discarded, so it never blocks on a full pipe.
async fn stream_body(
    child: &mut ChildProcess,
    mut stdout: ChildStdout,
    first: Bytes,
    sender: mpsc::Sender<Result<Bytes, BoxError>>,
    deadline: Option<Instant>,
) -> BodyEnd {
    let pump = async {
        let mut client_gone = false;
        if !first.is_empty() {
            client_gone = sender.send(Ok(first)).await.is_err();
        }
        let mut buffer = vec![0u8; READ_CHUNK_BYTES];
        loop {
            let read = match stdout.read(&mut buffer).await {
                Ok(0) => return BodyEnd::Complete,
                Ok(read) => read,
                Err(error) => {
                    warn!(pid = child.pid(), error = %error, "reading CGI output failed");
                    return BodyEnd::ReadFailed;
                }
            };
            if !client_gone {
                let chunk = Bytes::copy_from_slice(&buffer[..read]);
                client_gone = sender.send(Ok(chunk)).await.is_err();
            }
        }
    };
    let ended = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, pump)
            .await
            .unwrap_or(BodyEnd::TimedOut),
        None => pump.await,
    };
    if ended != BodyEnd::Complete {
        let _ = sender
            .send(Err("the CGI script's output was cut short".into()))
            .await;
    }
    ended
}

/// The work after the body: reaping the script, logging its status, and
/// the reload it may request.
struct Finish {
    path: String,
    reload_config: Option<PathBuf>,
    reloader: crate::reload::Reloader,
}

impl Finish {
    async fn after_body(self, mut child: ChildProcess, ended: BodyEnd, deadline: Option<Instant>) {
        if ended == BodyEnd::TimedOut {
            warn!(path = %self.path, pid = child.pid(), "CGI script timed out while sending its body; stopping it");
            stop(child, self.path).await;
            return;
        }
        // A script may close stdout and go on working; the timeout still
        // bounds it.
        let waited = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, child.wait()).await,
            None => Ok(child.wait().await),
        };
        let status = match waited {
            Ok(Ok(status)) => status,
            Ok(Err(error)) => {
                warn!(path = %self.path, pid = child.pid(), error = %error, "waiting for the CGI script failed");
                return;
            }
            Err(_) => {
                warn!(path = %self.path, pid = child.pid(), "CGI script timed out after sending its output; stopping it");
                stop(child, self.path).await;
                return;
            }
        };
        if !status.success() {
            warn!(path = %self.path, pid = child.pid(), status = %process::describe_status(status), stderr = ?child.stderr_tail(), "CGI script failed");
            return;
        }
        debug!(path = %self.path, pid = child.pid(), "CGI script finished");
        if let Some(file) = self.reload_config {
            info!(path = %self.path, config = %file.display(), "CGI script finished; reloading its reload_config if it changed");
            self.reloader.request(
                Some(file),
                Condition::IfChanged,
                format!("cgi:{}", self.path),
            );
        }
    }
}

/// Stops a script (SIGTERM, then SIGKILL after a short grace) and reaps it.
async fn stop(mut child: ChildProcess, path: String) {
    if let Err(error) = child.stop(KILL_GRACE).await {
        warn!(path = %path, pid = child.pid(), error = %error, "stopping the CGI script failed");
    }
}

/// A response body fed by a bounded channel, so the script waits while
/// the client is slow instead of navigator buffering its output.
struct ChannelBody {
    receiver: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.receiver
            .poll_recv(cx)
            .map(|chunk| chunk.map(|result| result.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn script(allowed: &[&str]) -> CgiScript {
        CgiScript {
            path: "/update".into(),
            script: "/bin/true".into(),
            method: Some("POST".into()),
            user: None,
            group: None,
            allowed_users: allowed.iter().map(|u| u.to_string()).collect(),
            env: BTreeMap::new(),
            timeout: None,
            reload_config: None,
        }
    }

    #[test]
    fn allowed_users_limit_authenticated_users() {
        let open = script(&[]);
        assert!(user_allowed(&open, None));
        assert!(user_allowed(&open, Some("anyone")));

        let limited = script(&["admin", "ops"]);
        assert!(user_allowed(&limited, Some("admin")));
        assert!(user_allowed(&limited, Some("ops")));
        assert!(!user_allowed(&limited, Some("guest")));
        assert!(!user_allowed(&limited, Some("Admin")));
        assert!(!user_allowed(&limited, None));
    }

    #[test]
    fn head_end_found_with_either_line_ending() {
        assert_eq!(find_head_end(b"A: b\n\nbody"), Some((5, 6)));
        assert_eq!(find_head_end(b"A: b\r\n\r\nbody"), Some((6, 8)));
        assert_eq!(find_head_end(b"A: b\r\nC: d\r\n"), None);
        assert_eq!(find_head_end(b"\nbody"), Some((0, 1)));
    }

    #[test]
    fn status_and_headers_parsed() {
        let (status, headers) =
            parse_head(b"Status: 201 Created\r\nContent-Type: text/plain\r\nX-A: 1\r\nX-A: 2\r\n")
                .unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers[CONTENT_TYPE], "text/plain");
        assert_eq!(headers.get_all("x-a").iter().count(), 2);
    }

    #[test]
    fn location_without_status_redirects() {
        let (status, headers) = parse_head(b"Location: /elsewhere\n").unwrap();
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(headers[LOCATION], "/elsewhere");
    }

    #[test]
    fn hop_by_hop_fields_dropped() {
        let (_, headers) = parse_head(
            b"Content-Type: text/plain\nTransfer-Encoding: chunked\nConnection: close\n",
        )
        .unwrap();
        assert!(headers.get("transfer-encoding").is_none());
        assert!(headers.get("connection").is_none());
    }

    #[test]
    fn status_with_space_before_colon() {
        // Found by fuzzing: the untrimmed name missed the `Status` check,
        // so the status stayed 200 and a `status` field reached the client.
        let (status, headers) =
            parse_head(b"Status :404\nConnection : close\nContent-Type : text/plain\n").unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(headers.get("status").is_none());
        assert!(headers.get("connection").is_none());
        assert_eq!(headers[CONTENT_TYPE], "text/plain");
    }

    #[test]
    fn malformed_heads_rejected() {
        assert!(parse_head(b"hello world\n").is_err());
        assert!(parse_head(b"Status: abc\n").is_err());
        assert!(parse_head(b"Status: 99\n").is_err());
        assert!(parse_head(b"Bad Name: x\n").is_err());
        assert!(parse_head(b"").is_err());
        assert!(parse_head(b"X: \x01\n").is_err());
    }

    #[test]
    fn header_variables_skip_credentials_and_proxy() {
        let mut headers = HeaderMap::new();
        headers.insert("x-custom-thing", HeaderValue::from_static("1"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        headers.insert("proxy", HeaderValue::from_static("http://evil"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.append(http::header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(http::header::COOKIE, HeaderValue::from_static("b=2"));
        headers.append("accept", HeaderValue::from_static("text/html"));
        headers.append("accept", HeaderValue::from_static("*/*"));
        let vars: BTreeMap<String, String> = header_variables(&headers).into_iter().collect();
        assert_eq!(vars["HTTP_X_CUSTOM_THING"], "1");
        assert_eq!(vars["HTTP_COOKIE"], "a=1; b=2");
        assert_eq!(vars["HTTP_ACCEPT"], "text/html, */*");
        assert!(!vars.contains_key("HTTP_AUTHORIZATION"));
        assert!(!vars.contains_key("HTTP_PROXY"));
        assert!(!vars.contains_key("HTTP_CONTENT_TYPE"));
    }

    #[test]
    fn inherited_request_variables_filtered() {
        assert!(is_request_variable("REMOTE_USER"));
        assert!(is_request_variable("HTTP_PROXY"));
        assert!(is_request_variable("QUERY_STRING"));
        assert!(!is_request_variable("PATH"));
        assert!(!is_request_variable("RAILS_ENV"));
    }

    #[test]
    fn host_and_port_split() {
        assert_eq!(
            split_host_port("example.com:8080"),
            (Some("example.com".into()), Some(8080))
        );
        assert_eq!(
            split_host_port("example.com"),
            (Some("example.com".into()), None)
        );
        assert_eq!(
            split_host_port("[::1]:3000"),
            (Some("::1".into()), Some(3000))
        );
        assert_eq!(split_host_port("[::1]"), (Some("::1".into()), None));
    }
}
