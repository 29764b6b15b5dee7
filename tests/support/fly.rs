//! Stand-ins for Fly.io on loopback: a proxy emulator that delivers
//! requests to navigator "machines" and carries out their replay answers
//! as Fly's proxy does, and a mock Machines API on a unix socket.
//!
//! The emulator's model of Fly's proxy:
//! - each request goes to the machine of the entry region (the emulator's
//!   default, or the `fly-emulator-region` request header, which is removed);
//! - a response with `Content-Type: application/vnd.fly.replay+json` (its
//!   JSON body) or a `fly-replay` header (`key=value;...`) is a replay
//!   instruction; the body wins when both are present. The original request
//!   (method, path, headers, body) is delivered again to the named region,
//!   app or instance, with `fly-replay-src: instance=..;region=..;t=..` and
//!   the `transform.set_headers` applied;
//! - requests whose body is larger than 1 MiB are not replayed (502), as
//!   Fly refuses them;
//! - when the target has no machine, refuses the connection or exceeds the
//!   instruction's `timeout`, a replay with a `fallback` goes back to the
//!   source machine with a `fly-replay-failed` header; without a fallback
//!   the client gets 502;
//! - a replayed request answered with another replay instruction is an
//!   error (508), so a loop shows up in tests instead of spinning;
//! - WebSocket upgrades are delivered to the entry machine and tunnelled
//!   after its 101; an upgrade answered with a replay instruction is 502.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const REPLAY_CONTENT_TYPE: &str = "application/vnd.fly.replay+json";
pub const ENTRY_REGION_HEADER: &str = "fly-emulator-region";
/// Fly refuses to replay requests with larger bodies.
pub const MAX_REPLAY_BODY: usize = 1024 * 1024;

/// One machine of an app, in a region. `address: None` is a region with
/// no running machine.
#[derive(Debug, Clone)]
pub struct Machine {
    pub app: String,
    pub region: String,
    pub id: String,
    pub address: Option<SocketAddr>,
}

impl Machine {
    pub fn new(app: &str, region: &str, id: &str, address: Option<SocketAddr>) -> Machine {
        Machine {
            app: app.into(),
            region: region.into(),
            id: id.into(),
            address,
        }
    }
}

/// The emulated organization.
#[derive(Debug, Clone)]
pub struct FlyNetwork {
    /// The app whose hostname clients use.
    pub app: String,
    pub entry_region: String,
    pub machines: Vec<Machine>,
    /// Replay timeout when the instruction names none.
    pub default_timeout: Duration,
}

/// One request the emulator delivered to a machine.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `app/region/id` of the machine.
    pub machine: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// `None` when the machine did not answer.
    pub status: Option<u16>,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    network: FlyNetwork,
    deliveries: Mutex<Vec<Delivery>>,
}

/// The running emulator; dropping it stops it.
pub struct FlyProxy {
    pub address: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FlyProxy {
    pub fn start(network: FlyNetwork) -> FlyProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the Fly emulator");
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(State {
            network,
            deliveries: Mutex::new(Vec::new()),
        });
        let (shutdown, stopped) = oneshot::channel();
        let thread = {
            let state = state.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(serve(listener, state, stopped));
            })
        };
        FlyProxy {
            address,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().unwrap().clone()
    }

    pub fn clear_deliveries(&self) {
        self.state.deliveries.lock().unwrap().clear();
    }
}

impl Drop for FlyProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).unwrap();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = &mut stopped => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(request, state).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn error(status: StatusCode, message: &str) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(format!("emulator: {message}\n"))));
    *response.status_mut() = status;
    response
}

/// A request or response held in memory so it can be delivered again.
#[derive(Clone)]
struct Buffered {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

struct Received {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Debug)]
enum DeliveryError {
    NoMachine,
    Connect(String),
    Timeout,
    Other(String),
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::NoMachine => write!(f, "no machine"),
            DeliveryError::Connect(e) => write!(f, "connect failed: {e}"),
            DeliveryError::Timeout => write!(f, "timeout"),
            DeliveryError::Other(e) => write!(f, "{e}"),
        }
    }
}

async fn handle(mut request: Request<Incoming>, state: Arc<State>) -> Answer {
    let network = &state.network;
    let entry_region = request
        .headers_mut()
        .remove(ENTRY_REGION_HEADER)
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| network.entry_region.clone());
    let Some(source) = network
        .machines
        .iter()
        .find(|m| m.app == network.app && m.region == entry_region)
        .cloned()
    else {
        return error(
            StatusCode::BAD_GATEWAY,
            &format!("no machine in {entry_region}"),
        );
    };

    if is_upgrade(request.headers()) {
        return tunnel(request, &source, &state).await;
    }

    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
    };
    let original = Buffered {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };

    let first = match deliver(&state, &source, &original, network.default_timeout).await {
        Ok(received) => received,
        Err(e) => return error(StatusCode::BAD_GATEWAY, &format!("entry machine: {e}")),
    };
    let Some(instruction) = Instruction::from_response(&first) else {
        return answer(first);
    };
    if original.body.len() > MAX_REPLAY_BODY {
        return error(StatusCode::BAD_GATEWAY, "request too large to replay");
    }
    replay(&state, &source, &original, &instruction).await
}

async fn replay(
    state: &State,
    source: &Machine,
    original: &Buffered,
    instruction: &Instruction,
) -> Answer {
    let network = &state.network;
    let mut replayed = original.clone();
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let mut source_header = format!("instance={};region={};t={micros}", source.id, source.region);
    if let Some(value) = &instruction.state {
        source_header.push_str(&format!(";state={value}"));
    }
    replayed.headers.insert(
        "fly-replay-src",
        HeaderValue::from_str(&source_header).unwrap(),
    );
    for name in &instruction.delete_headers {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            replayed.headers.remove(name);
        }
    }
    for (name, value) in &instruction.set_headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            replayed.headers.insert(name, value);
        }
    }

    let timeout = instruction.timeout.unwrap_or(network.default_timeout);
    let result = match instruction.target(network, source) {
        Some(target) => deliver(state, &target, &replayed, timeout).await,
        None => Err(DeliveryError::NoMachine),
    };
    let failure = match result {
        Ok(received) if Instruction::from_response(&received).is_some() => {
            return error(
                StatusCode::LOOP_DETECTED,
                "replayed request answered with another replay",
            );
        }
        Ok(received) => return answer(received),
        Err(failure) => failure,
    };
    if instruction.fallback.is_none() {
        return error(
            StatusCode::BAD_GATEWAY,
            &format!("replay target unreachable: {failure}"),
        );
    }

    let mut returned = original.clone();
    returned.headers.insert(
        "fly-replay-failed",
        HeaderValue::from_str(&format!("error={failure}")).unwrap(),
    );
    match deliver(state, source, &returned, network.default_timeout).await {
        Ok(received) if Instruction::from_response(&received).is_some() => error(
            StatusCode::LOOP_DETECTED,
            "request returned by a failed replay was answered with another replay",
        ),
        Ok(received) => answer(received),
        Err(e) => error(StatusCode::BAD_GATEWAY, &format!("fallback to source: {e}")),
    }
}

fn answer(received: Received) -> Answer {
    let mut response = Response::new(Full::new(received.body));
    *response.status_mut() = received.status;
    for (name, value) in &received.headers {
        if name != TRANSFER_ENCODING && name != CONNECTION && name != CONTENT_LENGTH {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

fn record(state: &State, machine: &Machine, request: &Buffered, status: Option<u16>) {
    let headers = request
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    state.deliveries.lock().unwrap().push(Delivery {
        machine: format!("{}/{}/{}", machine.app, machine.region, machine.id),
        method: request.method.to_string(),
        path: request
            .uri
            .path_and_query()
            .map(|pq| pq.to_string())
            .unwrap_or_default(),
        headers,
        status,
    });
}

async fn deliver(
    state: &State,
    machine: &Machine,
    request: &Buffered,
    timeout: Duration,
) -> Result<Received, DeliveryError> {
    let Some(address) = machine.address else {
        record(state, machine, request, None);
        return Err(DeliveryError::NoMachine);
    };
    let result = match tokio::time::timeout(timeout, send(address, request)).await {
        Ok(result) => result,
        Err(_) => Err(DeliveryError::Timeout),
    };
    record(
        state,
        machine,
        request,
        result.as_ref().ok().map(|r| r.status.as_u16()),
    );
    result
}

async fn send(address: SocketAddr, request: &Buffered) -> Result<Received, DeliveryError> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| DeliveryError::Connect(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| DeliveryError::Other(e.to_string()))?;
    tokio::spawn(connection);
    let mut outgoing = Request::new(Full::new(request.body.clone()));
    *outgoing.method_mut() = request.method.clone();
    *outgoing.uri_mut() = request
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap();
    for (name, value) in &request.headers {
        if name != TRANSFER_ENCODING && name != CONNECTION && name != CONTENT_LENGTH {
            outgoing.headers_mut().append(name, value.clone());
        }
    }
    let response = sender
        .send_request(outgoing)
        .await
        .map_err(|e| DeliveryError::Other(e.to_string()))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| DeliveryError::Other(e.to_string()))?
        .to_bytes();
    Ok(Received {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
}

/// Delivers an upgrade request to `machine` and, after its 101, copies
/// bytes both ways between the client and the machine.
async fn tunnel(mut request: Request<Incoming>, machine: &Machine, state: &State) -> Answer {
    let client_upgrade = hyper::upgrade::on(&mut request);
    let buffered = Buffered {
        method: request.method().clone(),
        uri: request.uri().clone(),
        headers: request.headers().clone(),
        body: Bytes::new(),
    };
    let Some(address) = machine.address else {
        record(state, machine, &buffered, None);
        return error(StatusCode::BAD_GATEWAY, "no machine for the upgrade");
    };
    let stream = match TcpStream::connect(address).await {
        Ok(stream) => stream,
        Err(e) => {
            record(state, machine, &buffered, None);
            return error(StatusCode::BAD_GATEWAY, &format!("connect failed: {e}"));
        }
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => return error(StatusCode::BAD_GATEWAY, &e.to_string()),
        };
    tokio::spawn(connection.with_upgrades());
    let mut outgoing = Request::new(Full::new(Bytes::new()));
    *outgoing.method_mut() = buffered.method.clone();
    *outgoing.uri_mut() = buffered
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap();
    *outgoing.headers_mut() = buffered.headers.clone();
    let mut response = match sender.send_request(outgoing).await {
        Ok(response) => response,
        Err(e) => {
            record(state, machine, &buffered, None);
            return error(StatusCode::BAD_GATEWAY, &e.to_string());
        }
    };
    record(state, machine, &buffered, Some(response.status().as_u16()));

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let received = Received {
            status,
            headers,
            body,
        };
        if Instruction::from_response(&received).is_some() {
            return error(
                StatusCode::BAD_GATEWAY,
                "WebSocket upgrade answered with a replay",
            );
        }
        return answer(received);
    }

    let upstream_upgrade = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        if let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    });
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in response.headers() {
        answer.headers_mut().append(name, value.clone());
    }
    answer
}

/// A replay instruction from a response body or header.
#[derive(Debug, Default)]
struct Instruction {
    regions: Vec<String>,
    app: Option<String>,
    instance: Option<String>,
    state: Option<String>,
    timeout: Option<Duration>,
    fallback: Option<String>,
    set_headers: Vec<(String, String)>,
    delete_headers: Vec<String>,
}

impl Instruction {
    fn from_response(received: &Received) -> Option<Instruction> {
        let json_body = received
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(REPLAY_CONTENT_TYPE));
        if json_body {
            return serde_json::from_slice(&received.body)
                .ok()
                .map(|value| Self::from_json(&value));
        }
        let header = received.headers.get("fly-replay")?.to_str().ok()?;
        Some(Self::from_header(header))
    }

    fn from_json(value: &serde_json::Value) -> Instruction {
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let mut instruction = Instruction {
            regions: text("region")
                .map(|r| r.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default(),
            app: text("app"),
            instance: text("instance").or_else(|| text("prefer_instance")),
            state: text("state"),
            timeout: text("timeout").and_then(|t| parse_duration(&t)),
            fallback: text("fallback"),
            ..Instruction::default()
        };
        if let Some(transform) = value.get("transform") {
            for header in transform
                .get("set_headers")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                if let (Some(name), Some(value)) = (
                    header.get("name").and_then(|v| v.as_str()),
                    header.get("value").and_then(|v| v.as_str()),
                ) {
                    instruction.set_headers.push((name.into(), value.into()));
                }
            }
            for name in transform
                .get("delete_headers")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
            {
                instruction.delete_headers.push(name.into());
            }
        }
        instruction
    }

    fn from_header(header: &str) -> Instruction {
        let mut instruction = Instruction::default();
        for field in header.split(';') {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"').to_string();
            match key.trim() {
                "region" => {
                    instruction.regions = value.split(',').map(|s| s.trim().to_string()).collect()
                }
                "app" => instruction.app = Some(value),
                "instance" | "prefer_instance" => instruction.instance = Some(value),
                "state" => instruction.state = Some(value),
                "timeout" => instruction.timeout = parse_duration(&value),
                "fallback" => instruction.fallback = Some(value),
                _ => {}
            }
        }
        instruction
    }

    /// Returns the machine the instruction names; `None` when no machine matches.
    fn target(&self, network: &FlyNetwork, source: &Machine) -> Option<Machine> {
        let app = self.app.clone().unwrap_or_else(|| source.app.clone());
        let candidates: Vec<&Machine> = network.machines.iter().filter(|m| m.app == app).collect();
        if let Some(instance) = &self.instance {
            return candidates.into_iter().find(|m| &m.id == instance).cloned();
        }
        if !self.regions.is_empty() {
            for region in &self.regions {
                let found = candidates
                    .iter()
                    .find(|m| region == "any" || &m.region == region);
                if let Some(machine) = found {
                    return Some((*machine).clone());
                }
            }
            return None;
        }
        candidates
            .iter()
            .find(|m| m.id != source.id)
            .or_else(|| candidates.first())
            .map(|m| (*m).clone())
    }
}

/// Parses `30s`, `800ms`, `2m`.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = text.strip_suffix('s') {
        return s.parse::<f64>().ok().map(Duration::from_secs_f64);
    }
    if let Some(m) = text.strip_suffix('m') {
        return m.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60));
    }
    None
}

/// One call the mock Machines API received.
#[derive(Debug, Clone)]
pub struct ApiCall {
    pub method: String,
    pub path: String,
    /// Whether the marker file existed when the call arrived.
    pub marker_existed: bool,
    pub at: Instant,
}

/// A mock Fly Machines API on a unix socket in its own temp dir: records
/// each request and answers 200 with `{"ok":true}`.
pub struct MachinesApi {
    pub socket: PathBuf,
    calls: Arc<Mutex<Vec<ApiCall>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Holds the socket; outlives the thread, so `Drop` can wake it.
    _dir: tempfile::TempDir,
}

impl MachinesApi {
    /// Listens on a new socket; `marker` is checked for existence at each
    /// call.
    pub fn start(marker: Option<PathBuf>) -> MachinesApi {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fly-api.sock");
        let listener = UnixListener::bind(&socket).expect("bind the mock Machines API");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let calls = calls.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Some(call) = answer_call(stream, marker.as_ref()) {
                        calls.lock().unwrap().push(call);
                    }
                }
            })
        };
        MachinesApi {
            socket,
            calls,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub fn calls(&self) -> Vec<ApiCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until at least `count` calls arrived; returns them.
    pub fn wait_for_calls(&self, count: usize, timeout: Duration) -> Vec<ApiCall> {
        super::eventually(timeout, || self.calls().len() >= count);
        self.calls()
    }
}

impl Drop for MachinesApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop so that it checks the flag.
        if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn answer_call(
    stream: std::os::unix::net::UnixStream,
    marker: Option<&PathBuf>,
) -> Option<ApiCall> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;

    let marker_existed = marker.is_some_and(|m| m.exists());
    let at = Instant::now();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;

    let mut stream = stream;
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}",
    );
    let mut parts = request_line.split_whitespace();
    Some(ApiCall {
        method: parts.next()?.to_string(),
        path: parts.next()?.to_string(),
        marker_existed,
        at,
    })
}

/// Host of the private-network name of `region` in `app`.
pub fn region_host(region: &str, app: &str) -> String {
    format!("{region}.{app}.internal")
}
