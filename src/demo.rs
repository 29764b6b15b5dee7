//! A stub tenant that replaces a Rails app where none is available: the
//! demo config runs it on machines without Ruby, and integration tests use
//! it as a controllable upstream whose JSON pages report what navigator
//! sent.
//!
//! Routes (the action routes match the end of the path, since a tenant
//! sees the full URL such as `/showcase/2025/boston/crash`):
//! - the health path (`DEMO_HEALTH_PATH`, default `/up`): 200 `OK`;
//! - `.../slow?ms=N`: the page after a pause of N ms;
//! - `.../status/NNN`: the page with status NNN;
//! - `.../allocate?mb=N`: the page, after allocating N MiB (at most
//!   [`MAX_ALLOCATE_MIB`]) and writing every byte, so the memory is
//!   resident; it is kept until the process exits;
//! - `.../crash`: the page, then the process exits with code 3 and leaves its
//!   pid file behind, as a crashed server would;
//! - `.../broadcast?stream=S`: publishes the request body (as a JSON string)
//!   to stream S with a POST to `TURBO_CABLE_BROADCAST_URL`, as TurboCable
//!   does from Rails, and answers with the broadcast's status and body;
//! - `.../hang`: never answers; the connection stays open until the peer
//!   closes it;
//! - `.../truncate`: a 200 head promising [`TRUNCATE_PROMISED_BYTES`], then
//!   [`TRUNCATE_SENT_BYTES`] of them, then the connection is cut;
//! - `.../stall`: like `/truncate`, but the connection stays open and
//!   silent after the first bytes;
//! - `.../flood?lines=N`: prints N lines to stdout, then answers with the
//!   page;
//! - `.../ignore-body`: answers 200 `ignored` at once without reading the
//!   request body, as an app that rejects an upload early does;
//! - a request with an `Upgrade` header: 101, then every byte received is
//!   echoed back until end of file (no WebSocket framing);
//! - anything else: an HTML page with the path and a visit counter, or JSON
//!   (see [`wants_json`]) describing the request and the process (pid, uid,
//!   gid and supplementary groups as `/proc/self/status` lists them).
//!
//! `DEMO_REQUEST_LOG=FILE` appends one line per request to FILE before the
//! response goes out: `SCOPE METHOD URI STATUS` (scope from
//! `RAILS_APP_SCOPE`, `-` without), so tests can prove which requests
//! reached which tenant.
//!
//! Boot knobs from the environment: `DEMO_BOOT_DELAY_MS`,
//! `DEMO_EXIT_AT_BOOT=CODE`, `DEMO_NEVER_LISTEN=1`, `DEMO_NO_ANSWER=1` and
//! `DEMO_STDOUT_FLOOD=N`. `DEMO_LISTEN_STAMP=FILE` writes the wall-clock
//! time at which the listener was bound (nanoseconds since the Unix epoch)
//! to FILE, for the cold-start benchmark. Like `rails server`, it exits with 1 when
//! `PIDFILE` names a process that is still alive, writes its pid there,
//! logs one stdout line per request, and exits with 0 on SIGTERM.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Mutex, mpsc};

/// Exit code after `/crash`.
pub const CRASH_EXIT_CODE: i32 = 3;

/// Largest allocation one `.../allocate` request makes.
pub const MAX_ALLOCATE_MIB: usize = 4096;

/// Port when neither `--port` nor `PORT` names one, as for `rails server`.
const DEFAULT_PORT: u16 = 3000;

/// Prefixes of the environment variables reported in JSON pages.
const REPORTED_ENV_PREFIXES: [&str; 8] = [
    "RAILS_",
    "DATABASE_",
    "PIDFILE",
    "PORT",
    "TEST_",
    "HOME",
    "USER",
    "LOGNAME",
];

/// Largest `/flood` request, in lines.
const MAX_FLOOD_LINES: u64 = 10_000_000;

/// `Content-Length` of a `/truncate` response.
pub const TRUNCATE_PROMISED_BYTES: usize = 64 * 1024;

/// Body bytes a `/truncate` response sends before the connection is cut.
pub const TRUNCATE_SENT_BYTES: usize = 4096;

/// A response body: a whole page, or a stream that may fail on purpose.
type DemoBody = BoxBody<Bytes, io::Error>;

/// The demo tenant's settings, read from argv and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub port: u16,
    pub health_path: String,
    pub boot_delay: Duration,
    pub exit_at_boot: Option<i32>,
    pub never_listen: bool,
    pub no_answer: bool,
    /// Lines printed to stdout at boot.
    pub stdout_flood: u64,
    pub pidfile: Option<PathBuf>,
    pub database_url: Option<String>,
    pub owner: Option<String>,
    pub scope: Option<String>,
    /// Where `.../broadcast` publishes (`TURBO_CABLE_BROADCAST_URL`).
    pub broadcast_url: Option<String>,
    pub request_log: Option<PathBuf>,
    /// File that receives the time of the first listen (`DEMO_LISTEN_STAMP`).
    pub listen_stamp: Option<PathBuf>,
}

impl Settings {
    /// Reads the settings of this process: `--port N`, `--port=N` or `-p N`
    /// from argv, which wins over `PORT`, and the knobs from the environment.
    pub fn from_process() -> Result<Self, String> {
        Self::parse(std::env::args().skip(1), |name| std::env::var(name).ok())
    }

    /// Parses `args` (without the program name) and the variables that
    /// `env` returns. The error names the invalid value.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let port = match port_from_args(args)? {
            Some(port) => port,
            None => match env("PORT") {
                Some(text) => parse_port(&text)?,
                None => DEFAULT_PORT,
            },
        };
        let non_empty = |name: &str| env(name).filter(|value| !value.is_empty());

        Ok(Settings {
            port,
            health_path: non_empty("DEMO_HEALTH_PATH").unwrap_or_else(|| "/up".into()),
            boot_delay: Duration::from_millis(
                parse_number("DEMO_BOOT_DELAY_MS", non_empty("DEMO_BOOT_DELAY_MS"))?.unwrap_or(0),
            ),
            exit_at_boot: parse_number("DEMO_EXIT_AT_BOOT", non_empty("DEMO_EXIT_AT_BOOT"))?,
            never_listen: is_enabled(non_empty("DEMO_NEVER_LISTEN")),
            no_answer: is_enabled(non_empty("DEMO_NO_ANSWER")),
            stdout_flood: parse_number("DEMO_STDOUT_FLOOD", non_empty("DEMO_STDOUT_FLOOD"))?
                .unwrap_or(0),
            pidfile: non_empty("PIDFILE").map(PathBuf::from),
            database_url: non_empty("DATABASE_URL"),
            owner: non_empty("RAILS_APP_OWNER"),
            scope: non_empty("RAILS_APP_SCOPE"),
            broadcast_url: non_empty("TURBO_CABLE_BROADCAST_URL"),
            request_log: non_empty("DEMO_REQUEST_LOG").map(PathBuf::from),
            listen_stamp: non_empty("DEMO_LISTEN_STAMP").map(PathBuf::from),
        })
    }
}

fn port_from_args(args: impl IntoIterator<Item = String>) -> Result<Option<u16>, String> {
    let mut port = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--port" || arg == "-p" {
            let value = args
                .next()
                .ok_or_else(|| format!("missing port number after {arg}"))?;
            port = Some(parse_port(&value)?);
        } else if let Some(value) = arg.strip_prefix("--port=") {
            port = Some(parse_port(value)?);
        }
    }
    Ok(port)
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("invalid port {text:?}: expected a number from 0 to 65535"))
}

fn parse_number<T: std::str::FromStr>(
    name: &str,
    value: Option<String>,
) -> Result<Option<T>, String> {
    value
        .map(|text| {
            text.trim()
                .parse()
                .map_err(|_| format!("invalid {name} {text:?}: expected a whole number"))
        })
        .transpose()
}

fn is_enabled(value: Option<String>) -> bool {
    matches!(value.as_deref(), Some("1" | "true" | "yes"))
}

/// Maps a `DATABASE_URL` to the file that stores the visit counter:
/// `sqlite3:///abs/path` is absolute, `sqlite3://rel/path` and
/// `sqlite3:rel/path` are relative to the working directory. Other schemes
/// keep the counter in memory.
pub fn counter_path(database_url: &str) -> Option<PathBuf> {
    let rest = database_url.strip_prefix("sqlite3:")?;
    let path = rest.strip_prefix("//").unwrap_or(rest);
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Runs the demo tenant until SIGTERM or SIGINT, then removes its pid file.
///
/// Exits the process itself, without returning, for `DEMO_EXIT_AT_BOOT`,
/// for a live pid in `PIDFILE` (code 1) and after `/crash` (code 3).
pub async fn run() -> io::Result<()> {
    let settings = Settings::from_process()
        .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    let boot = async {
        if let Some(pidfile) = &settings.pidfile {
            claim_pidfile(pidfile)?;
        }
        flood_stdout(settings.stdout_flood)?;
        tokio::time::sleep(settings.boot_delay).await;
        if let Some(code) = settings.exit_at_boot {
            eprintln!("demo-tenant: boot failed on purpose (DEMO_EXIT_AT_BOOT={code})");
            remove_pidfile(&settings);
            exit_now(code);
        }
        if settings.never_listen {
            std::future::pending::<()>().await;
        }

        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, settings.port));
        let listener = TcpListener::bind(address).await.map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("failed to listen on {address}: {error}"),
            )
        })?;
        if let Some(file) = &settings.listen_stamp {
            write_listen_stamp(file)?;
        }
        println!("* Listening on http://{address}");
        serve(listener, settings.clone()).await
    };

    tokio::select! {
        result = boot => {
            let code = result?;
            exit_now(code)
        }
        _ = terminate.recv() => println!("- Received SIGTERM, exiting"),
        _ = interrupt.recv() => println!("- Received SIGINT, exiting"),
    }
    remove_pidfile(&settings);
    Ok(())
}

/// Runs [`run`] on its own current-thread runtime and returns the process
/// exit code.
pub fn run_blocking() -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("demo-tenant: failed to start the tokio runtime: {error}");
            return 1;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("demo-tenant: {error}");
            1
        }
    }
}

/// Writes the current wall-clock time, in nanoseconds since the Unix
/// epoch, to `file`.
fn write_listen_stamp(file: &std::path::Path) -> io::Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or(0);
    std::fs::write(file, format!("{nanos}\n")).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("failed to write {}: {error}", file.display()),
        )
    })
}

fn exit_now(code: i32) -> ! {
    let _ = io::stdout().flush();
    std::process::exit(code)
}

/// Exits with 1 when `pidfile` names a process that `kill(pid, 0)` reaches,
/// as `rails server` does, and otherwise writes this process's pid there.
fn claim_pidfile(pidfile: &std::path::Path) -> io::Result<()> {
    if let Ok(text) = std::fs::read_to_string(pidfile) {
        let pid = text.trim().parse::<i32>().unwrap_or(0);
        // Zero and negative pids would address process groups.
        let alive = pid > 0
            && matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Ok(()) | Err(nix::errno::Errno::EPERM)
            );
        if alive {
            eprintln!(
                "A server is already running (pid: {pid}, file: {}).",
                pidfile.display()
            );
            exit_now(1);
        }
    }
    if let Some(parent) = pidfile.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(pidfile, format!("{}\n", std::process::id())).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("failed to write pid file {}: {error}", pidfile.display()),
        )
    })
}

fn remove_pidfile(settings: &Settings) {
    if let Some(pidfile) = &settings.pidfile {
        let _ = std::fs::remove_file(pidfile);
    }
}

fn flood_stdout(lines: u64) -> io::Result<()> {
    if lines == 0 {
        return Ok(());
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    for index in 1..=lines {
        writeln!(out, "flood line {index} of {lines}")?;
    }
    out.flush()
}

/// State shared by all connections.
struct Demo {
    settings: Settings,
    port: u16,
    counter_path: Option<PathBuf>,
    visits: Mutex<u64>,
    /// Memory taken by `.../allocate`, held to the end of the process.
    allocations: Mutex<Vec<Vec<u8>>>,
}

/// Serves HTTP/1.1 on `listener` and returns the exit code the process
/// should end with: [`CRASH_EXIT_CODE`] after `/crash`. Otherwise it runs
/// until accepting fails.
pub async fn serve(listener: TcpListener, settings: Settings) -> io::Result<i32> {
    let port = listener.local_addr()?.port();
    let demo = Arc::new(Demo {
        counter_path: settings.database_url.as_deref().and_then(counter_path),
        settings,
        port,
        visits: Mutex::new(0),
        allocations: Mutex::new(Vec::new()),
    });
    let (crashed, mut crash_requests) = mpsc::channel::<()>(1);

    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted?.0,
            _ = crash_requests.recv() => return Ok(CRASH_EXIT_CODE),
        };
        if demo.settings.no_answer {
            tokio::spawn(swallow(stream));
            continue;
        }
        tokio::spawn(serve_connection(stream, Arc::clone(&demo), crashed.clone()));
    }
}

/// Reads and discards everything until the peer closes, never responding.
async fn swallow(mut stream: TcpStream) {
    let mut buffer = [0u8; 4096];
    while matches!(stream.read(&mut buffer).await, Ok(read) if read > 0) {}
}

/// The address of the client on the connection that carried a request:
/// navigator's end of an upstream connection, so a report shows which
/// requests shared a connection.
#[derive(Clone, Copy)]
struct Peer(std::net::SocketAddr);

async fn serve_connection(stream: TcpStream, demo: Arc<Demo>, crashed: mpsc::Sender<()>) {
    let crash_requested = Arc::new(AtomicBool::new(false));
    let peer = stream.peer_addr().ok().map(Peer);
    let service = {
        let crash_requested = Arc::clone(&crash_requested);
        service_fn(move |mut request: Request<Incoming>| {
            if let Some(peer) = peer {
                request.extensions_mut().insert(peer);
            }
            handle(request, Arc::clone(&demo), Arc::clone(&crash_requested))
        })
    };
    let connection = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(error) = connection.await {
        eprintln!("demo-tenant: connection error: {error}");
    }
    // The /crash response carries `Connection: close`, so the connection
    // ends only after the response was written.
    if crash_requested.load(Ordering::Acquire) {
        let _ = crashed.send(()).await;
    }
}

async fn handle(
    request: Request<Incoming>,
    demo: Arc<Demo>,
    crash_requested: Arc<AtomicBool>,
) -> Result<Response<DemoBody>, Infallible> {
    let path = request.uri().path();
    if path.ends_with("/hang") {
        println!("{} {path} hanging", request.method());
        // Keeps the request, and with it the connection, open for good.
        let never: Infallible = std::future::pending().await;
        match never {}
    }
    if path.ends_with("/truncate") {
        println!("{} {path} 200 truncated", request.method());
        return Ok(truncated_response(true));
    }
    if path.ends_with("/stall") {
        println!("{} {path} 200 stalled", request.method());
        return Ok(truncated_response(false));
    }
    let response = answer(request, &demo, &crash_requested).await;
    Ok(response.map(|body| body.map_err(|never| match never {}).boxed()))
}

/// Returns a 200 response whose body stops after [`TRUNCATE_SENT_BYTES`] of
/// the [`TRUNCATE_PROMISED_BYTES`] its `Content-Length` announced. With
/// `cut`, the stream then fails, which makes hyper abort the connection;
/// the pause before lets hyper flush the head and the first bytes, which
/// it would otherwise drop along with the connection. Without `cut`, the
/// body never continues.
fn truncated_response(cut: bool) -> Response<DemoBody> {
    let frames = futures_util::stream::unfold(0u8, move |step| async move {
        let frame = match step {
            0 => Ok(Frame::data(Bytes::from(vec![b'x'; TRUNCATE_SENT_BYTES]))),
            1 if cut => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(io::Error::other("response cut off on purpose (/truncate)"))
            }
            1 => std::future::pending().await,
            _ => return None,
        };
        Some((frame, step + 1))
    });
    let body = StreamBody::new(frames);
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(TRUNCATE_PROMISED_BYTES),
    );
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Builds the response to every request that gets a whole response.
async fn answer(
    mut request: Request<Incoming>,
    demo: &Demo,
    crash_requested: &AtomicBool,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let uri = request.uri().to_string();

    let response = if let Some(protocol) = request.headers().get(header::UPGRADE).cloned() {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(echo_upgraded(upgrade));
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, protocol)
            .body(Full::default())
    } else if path == demo.settings.health_path {
        plain(StatusCode::OK, "OK")
    } else if path.ends_with("/broadcast") {
        broadcast(request, demo).await
    } else if path.ends_with("/ignore-body") {
        // The body stays unread, so an upload stalls in the socket buffers.
        plain(StatusCode::OK, "ignored")
    } else {
        page(request, demo, crash_requested).await
    };

    let response = response.unwrap_or_else(|error| {
        eprintln!("demo-tenant: failed to build a response: {error}");
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    });
    println!("{method} {path} {}", response.status().as_u16());
    if let Some(file) = &demo.settings.request_log {
        let scope = demo.settings.scope.as_deref().unwrap_or("-");
        let line = format!("{scope} {method} {uri} {}\n", response.status().as_u16());
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(error) = appended {
            eprintln!(
                "demo-tenant: failed to append to {}: {error}",
                file.display()
            );
        }
    }
    response
}

async fn echo_upgraded(upgrade: hyper::upgrade::OnUpgrade) {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            eprintln!("demo-tenant: upgrade failed: {error}");
            return;
        }
    };
    let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
    if let Err(error) = tokio::io::copy(&mut reader, &mut writer).await {
        eprintln!("demo-tenant: echo failed: {error}");
    }
    let _ = writer.shutdown().await;
}

fn plain(status: StatusCode, text: &str) -> http::Result<Response<Full<Bytes>>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text.to_string())))
}

/// Builds the response to a page request: reads the body, applies `/slow`, `/status/NNN`
/// and `/crash`, counts the visit and renders HTML or JSON.
async fn page(
    request: Request<Incoming>,
    demo: &Demo,
    crash_requested: &AtomicBool,
) -> http::Result<Response<Full<Bytes>>> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query();

    let body_length = match body_length(body).await {
        Ok(length) => length,
        Err(error) => {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("failed to read the request body: {error}\n"),
            );
        }
    };

    // Tenants see the full request path (`/showcase/2025/boston/crash`),
    // so the test actions match on the last segments.
    let mut status = StatusCode::OK;
    if path.ends_with("/slow") {
        let millis = query_value(query, "ms")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(millis)).await;
    } else if let Some(code) = path
        .rfind("/status/")
        .map(|at| &path[at + "/status/".len()..])
    {
        match code
            .parse::<u16>()
            .ok()
            .and_then(|code| StatusCode::from_u16(code).ok())
        {
            Some(code) => status = code,
            None => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid status code {code:?}\n"),
                );
            }
        }
    }
    if path.ends_with("/allocate") {
        let mib = query_value(query, "mb")
            .and_then(|mb| mb.parse::<usize>().ok())
            .filter(|mb| *mb <= MAX_ALLOCATE_MIB);
        let Some(mib) = mib else {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("expected allocate?mb=N with N from 0 to {MAX_ALLOCATE_MIB}\n"),
            );
        };
        // A non-zero fill writes every page; zeroed memory from the
        // allocator would stay virtual and not count as resident.
        demo.allocations.lock().await.push(vec![0x5a; mib << 20]);
        println!("demo-tenant: allocated and kept {mib} MiB");
    }
    if path.ends_with("/flood") {
        let Some(lines) = query_value(query, "lines")
            .and_then(|lines| lines.parse::<u64>().ok())
            .filter(|lines| *lines <= MAX_FLOOD_LINES)
        else {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("flood needs lines=N with N from 0 to {MAX_FLOOD_LINES}\n"),
            );
        };
        if let Err(error) = flood_stdout(lines) {
            eprintln!("demo-tenant: failed to write to stdout: {error}");
        }
    }
    let crash = path.ends_with("/crash");
    if crash {
        crash_requested.store(true, Ordering::Release);
    }

    let visits = match count_visit(demo).await {
        Ok(visits) => visits,
        Err(error) => {
            eprintln!("demo-tenant: failed to store the visit counter: {error}");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("failed to store the visit counter: {error}\n"),
            );
        }
    };

    let mut response = if wants_json(&parts.headers, path, query) {
        let report = json_report(demo, &parts, body_length, visits);
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(report.to_string())))?
    } else {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Full::new(Bytes::from(html_page(demo, path, visits))))?
    };
    *response.status_mut() = status;
    if crash {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

/// Publishes the request body to the stream named by `stream=` with a POST
/// to `TURBO_CABLE_BROADCAST_URL`, and relays the answer.
async fn broadcast(request: Request<Incoming>, demo: &Demo) -> http::Result<Response<Full<Bytes>>> {
    let Some(url) = demo.settings.broadcast_url.as_deref() else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "TURBO_CABLE_BROADCAST_URL is not set\n",
        );
    };
    let stream = query_value(request.uri().query(), "stream").map(|raw| {
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned()
    });
    let Some(stream) = stream.filter(|stream| !stream.is_empty()) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "missing stream=NAME in the query\n",
        );
    };
    let data = match request.into_body().collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(error) => {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("failed to read the request body: {error}\n"),
            );
        }
    };
    let payload = serde_json::json!({ "stream": stream, "data": data }).to_string();
    match post_json(url, payload).await {
        Ok((status, body)) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body)),
        Err(error) => {
            eprintln!("demo-tenant: broadcast to {url} failed: {error}");
            plain(
                StatusCode::BAD_GATEWAY,
                &format!("broadcast to {url} failed: {error}\n"),
            )
        }
    }
}

/// Sends one HTTP/1.1 POST with a JSON body to an `http://` URL and returns
/// the status and body of the answer.
async fn post_json(url: &str, payload: String) -> Result<(StatusCode, Bytes), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|error| format!("invalid URL: {error}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// broadcast URLs are supported".to_string());
    }
    let authority = uri
        .authority()
        .ok_or_else(|| "the URL has no host".to_string())?
        .clone();
    let address = match authority.port_u16() {
        Some(_) => authority.to_string(),
        None => format!("{}:80", authority.host()),
    };
    let stream = TcpStream::connect(&address)
        .await
        .map_err(|error| format!("connect to {address}: {error}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let request = Request::post(path)
        .header(header::HOST, authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|error| error.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| error.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Returns the real uid, the real gid and the supplementary groups of this
/// process from the `Uid:`, `Gid:` and `Groups:` lines of
/// `/proc/self/status`.
pub fn process_ids(status: &str) -> (Option<u32>, Option<u32>, Vec<u32>) {
    let first_number = |prefix: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
    };
    let groups = status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|number| number.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    (first_number("Uid:"), first_number("Gid:"), groups)
}

async fn body_length(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut length = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            length += data.len() as u64;
        }
    }
    Ok(length)
}

/// Increments the visit counter, stored in the file named by
/// `DATABASE_URL` when there is one, and returns the new count.
async fn count_visit(demo: &Demo) -> io::Result<u64> {
    let mut visits = demo.visits.lock().await;
    let Some(path) = &demo.counter_path else {
        *visits += 1;
        return Ok(*visits);
    };
    let stored = match tokio::fs::read_to_string(path).await {
        Ok(text) => text.trim().parse::<u64>().unwrap_or(0),
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(error),
    };
    let count = stored + 1;
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        tokio::fs::create_dir_all(parent).await?;
    }
    tokio::fs::write(path, format!("{count}\n")).await?;
    *visits = count;
    Ok(count)
}

/// Tests whether a request expects JSON: an `Accept` header naming
/// `application/json`, a path ending in `.json`, or `format=json` in the
/// query.
pub fn wants_json(headers: &HeaderMap, path: &str, query: Option<&str>) -> bool {
    let accepts_json = headers.get_all(header::ACCEPT).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|text| text.contains("application/json"))
    });
    accepts_json || path.ends_with(".json") || query_value(query, "format") == Some("json")
}

fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn json_report(
    demo: &Demo,
    parts: &http::request::Parts,
    body_length: u64,
    visits: u64,
) -> serde_json::Value {
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(name, _)| {
            REPORTED_ENV_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
        .collect();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let cwd = std::env::current_dir()
        .map(|cwd| cwd.display().to_string())
        .unwrap_or_default();

    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let (uid, gid, groups) = process_ids(&status);

    serde_json::json!({
        "pid": std::process::id(),
        "uid": uid,
        "gid": gid,
        "groups": groups,
        "port": demo.port,
        "cwd": cwd,
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "method": parts.method.as_str(),
        "database_url": demo.settings.database_url,
        "scope": demo.settings.scope,
        "owner": demo.settings.owner,
        "env": env,
        "headers": headers,
        "visits": visits,
        "body_length": body_length,
        "peer": parts.extensions.get::<Peer>().map(|peer| peer.0.to_string()),
    })
}

fn html_page(demo: &Demo, path: &str, visits: u64) -> String {
    let title = match (&demo.settings.owner, &demo.settings.scope) {
        (Some(owner), Some(scope)) => format!("{owner} ({scope})"),
        (Some(name), None) | (None, Some(name)) => name.clone(),
        (None, None) => "Demo tenant".to_string(),
    };
    let title = escape_html(&title);
    let path = escape_html(path);
    let pid = std::process::id();
    let port = demo.port;
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n<p>Path: <code>{path}</code></p>\n<p>Visits: {visits}</p>\n\
         <p>Demo tenant, pid {pid}, port {port}.</p></body></html>\n"
    )
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_with(env: &[(&str, &str)]) -> Settings {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Settings::parse(Vec::<String>::new(), |name| env.get(name).cloned()).unwrap()
    }

    async fn start(settings: Settings) -> (u16, tokio::task::JoinHandle<io::Result<i32>>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (port, tokio::spawn(serve(listener, settings)))
    }

    /// Sends a raw HTTP/1.1 request and returns the status, the head and
    /// the body of the response.
    async fn fetch(port: u16, request: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn demo_answers_health_path() {
        let (port, _server) = start(settings_with(&[("DEMO_HEALTH_PATH", "/health")])).await;
        let (status, _, body) = fetch(port, &get("/health")).await;
        assert_eq!(status, 200);
        assert_eq!(body, "OK");
    }

    #[tokio::test]
    async fn demo_json_reports_request() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("db/2025-boston.sqlite3");
        let database_url = format!("sqlite3://{}", database.display());
        let settings = settings_with(&[
            ("DATABASE_URL", &database_url),
            ("RAILS_APP_OWNER", "Boston"),
            ("RAILS_APP_SCOPE", "2025/boston"),
        ]);
        let (port, _server) = start(settings).await;

        let request = "GET /2025/boston/heats.json?sort=1 HTTP/1.1\r\nHost: localhost\r\n\
                       X-Forwarded-For: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let (status, head, body) = fetch(port, request).await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["path"], "/2025/boston/heats.json");
        assert_eq!(report["query"], "sort=1");
        assert_eq!(report["method"], "GET");
        assert_eq!(report["port"], port);
        assert_eq!(report["pid"], std::process::id());
        assert_eq!(report["owner"], "Boston");
        assert_eq!(report["scope"], "2025/boston");
        assert_eq!(report["database_url"], database_url.as_str());
        assert_eq!(report["headers"]["x-forwarded-for"], "127.0.0.1");
        assert_eq!(report["visits"], 1);
        assert_eq!(report["body_length"], 0);
        assert!(report["env"].is_object());

        let (_, _, body) = fetch(port, &get("/?format=json")).await;
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["visits"], 2);
        assert_eq!(std::fs::read_to_string(&database).unwrap(), "2\n");
    }

    #[tokio::test]
    async fn demo_reports_post_body_length() {
        let (port, _server) = start(settings_with(&[])).await;
        let request = "POST /entries HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
                       Content-Length: 5\r\nConnection: close\r\n\r\nhello";
        let (status, _, body) = fetch(port, request).await;
        assert_eq!(status, 200);
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["method"], "POST");
        assert_eq!(report["body_length"], 5);
    }

    #[tokio::test]
    async fn demo_html_page_escapes_path() {
        let settings = settings_with(&[
            ("RAILS_APP_OWNER", "Boston"),
            ("RAILS_APP_SCOPE", "2025/boston"),
        ]);
        let (port, _server) = start(settings).await;
        let (status, head, body) = fetch(port, &get("/a%3Cb")).await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(
            body.contains("<title>Boston (2025/boston)</title>"),
            "{body}"
        );
        assert!(body.contains("<code>/a%3Cb</code>"), "{body}");
        assert!(body.contains("Visits: 1"), "{body}");
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[tokio::test]
    async fn demo_answers_requested_status() {
        let (port, _server) = start(settings_with(&[])).await;
        assert_eq!(fetch(port, &get("/status/418")).await.0, 418);
        assert_eq!(fetch(port, &get("/status/abc")).await.0, 400);
        assert_eq!(fetch(port, &get("/slow?ms=1")).await.0, 200);
    }

    fn resident_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    #[tokio::test]
    async fn demo_allocate_keeps_memory_resident() {
        let (port, _server) = start(settings_with(&[])).await;
        assert_eq!(fetch(port, &get("/allocate?mb=x")).await.0, 400);
        assert_eq!(fetch(port, &get("/allocate?mb=999999")).await.0, 400);

        let before = resident_bytes();
        assert_eq!(fetch(port, &get("/allocate?mb=64")).await.0, 200);
        let after = resident_bytes();
        assert!(
            after >= before + (60 << 20),
            "resident memory grew from {before} to {after} bytes"
        );
    }

    #[tokio::test]
    async fn demo_upgrade_echoes_bytes() {
        let (port, _server) = start(settings_with(&[])).await;
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let request = "GET /cable HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
                       Upgrade: websocket\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();

        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{head}"
        );
        assert!(head.contains("upgrade: websocket"), "{head}");

        stream.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");

        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn demo_crash_ends_serve() {
        let (port, server) = start(settings_with(&[])).await;
        let (status, head, _) = fetch(port, &get("/crash")).await;
        assert_eq!(status, 200);
        assert!(head.contains("connection: close"), "{head}");
        assert_eq!(server.await.unwrap().unwrap(), CRASH_EXIT_CODE);
    }

    #[tokio::test]
    async fn demo_no_answer_keeps_silent() {
        let (port, _server) = start(settings_with(&[("DEMO_NO_ANSWER", "1")])).await;
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        stream.write_all(get("/up").as_bytes()).await.unwrap();
        let mut buffer = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await;
        assert!(read.is_err(), "the server answered: {read:?}");
    }

    #[tokio::test]
    async fn demo_hang_never_answers() {
        let (port, _server) = start(settings_with(&[])).await;
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        stream
            .write_all(get("/2025/boston/hang").as_bytes())
            .await
            .unwrap();
        let mut buffer = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buffer)).await;
        assert!(read.is_err(), "the server answered: {read:?}");
    }

    #[tokio::test]
    async fn demo_truncate_cuts_body() {
        let (port, _server) = start(settings_with(&[])).await;
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        stream
            .write_all(get("/2025/boston/truncate").as_bytes())
            .await
            .unwrap();
        let mut received = Vec::new();
        let mut buffer = [0u8; 8192];
        // The cut may arrive as end of file or as a reset.
        while let Ok(read) = stream.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..read]);
        }
        let split = received
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&received[..split]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains(&format!("content-length: {TRUNCATE_PROMISED_BYTES}")),
            "{head}"
        );
        assert_eq!(received.len() - split - 4, TRUNCATE_SENT_BYTES);
    }

    #[tokio::test]
    async fn demo_stall_keeps_body_open() {
        let (port, _server) = start(settings_with(&[])).await;
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        stream
            .write_all(get("/2025/boston/stall").as_bytes())
            .await
            .unwrap();
        let mut received = Vec::new();
        let mut buffer = [0u8; 8192];
        while let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await
        {
            assert!(read > 0, "the connection closed");
            received.extend_from_slice(&buffer[..read]);
        }
        let split = received
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .expect("a response head");
        assert_eq!(received.len() - split - 4, TRUNCATE_SENT_BYTES);
    }

    #[tokio::test]
    async fn demo_flood_answers_after_printing() {
        let (port, _server) = start(settings_with(&[])).await;
        assert_eq!(fetch(port, &get("/2025/boston/flood?lines=3")).await.0, 200);
        assert_eq!(fetch(port, &get("/flood?lines=many")).await.0, 400);
        assert_eq!(fetch(port, &get("/flood")).await.0, 400);
    }

    #[tokio::test]
    async fn demo_ignore_body_answers_unread() {
        let (port, _server) = start(settings_with(&[])).await;
        // The head announces 10 MB that are never sent: only a server that
        // answers without reading the body responds.
        let request = "POST /2025/boston/ignore-body HTTP/1.1\r\nHost: localhost\r\n\
                       Content-Length: 10000000\r\nConnection: close\r\n\r\n";
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), fetch(port, request))
            .await
            .expect("an answer without the body");
        assert_eq!(status, 200);
        assert_eq!(body, "ignored");
    }

    #[test]
    fn settings_port_sources() {
        let env = |name: &str| (name == "PORT").then(|| "4001".to_string());
        let args = |list: &[&str]| list.iter().map(|arg| arg.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Settings::parse(args(&["demo-tenant"]), env).unwrap().port,
            4001
        );
        assert_eq!(
            Settings::parse(args(&["demo-tenant", "-p", "4002"]), env)
                .unwrap()
                .port,
            4002
        );
        assert_eq!(
            Settings::parse(args(&["demo-tenant", "--port", "4003"]), env)
                .unwrap()
                .port,
            4003
        );
        assert_eq!(
            Settings::parse(args(&["demo-tenant", "--port=4004"]), env)
                .unwrap()
                .port,
            4004
        );
        assert_eq!(
            Settings::parse(args(&[]), |_| None).unwrap().port,
            DEFAULT_PORT
        );
        let error = Settings::parse(args(&["-p", "http"]), env).unwrap_err();
        assert!(error.contains("invalid port \"http\""), "{error}");
    }

    #[test]
    fn settings_reads_knobs() {
        let settings = settings_with(&[
            ("DEMO_BOOT_DELAY_MS", "250"),
            ("DEMO_EXIT_AT_BOOT", "2"),
            ("DEMO_NEVER_LISTEN", "1"),
            ("DEMO_STDOUT_FLOOD", "10"),
            ("PIDFILE", "/tmp/x.pid"),
        ]);
        assert_eq!(settings.boot_delay, Duration::from_millis(250));
        assert_eq!(settings.exit_at_boot, Some(2));
        assert!(settings.never_listen);
        assert!(!settings.no_answer);
        assert_eq!(settings.stdout_flood, 10);
        assert_eq!(settings.pidfile, Some(PathBuf::from("/tmp/x.pid")));
        assert_eq!(settings.health_path, "/up");

        let env = |name: &str| (name == "DEMO_BOOT_DELAY_MS").then(|| "soon".to_string());
        let error = Settings::parse(Vec::new(), env).unwrap_err();
        assert!(
            error.contains("invalid DEMO_BOOT_DELAY_MS \"soon\""),
            "{error}"
        );
    }

    #[test]
    fn process_ids_from_status() {
        let status = "Name:\tdemo\nUid:\t999\t999\t999\t999\nGid:\t998\t998\t998\t998\n\
                      FDSize:\t64\nGroups:\t\nNSpid:\t1\n";
        assert_eq!(process_ids(status), (Some(999), Some(998), vec![]));
        let status = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t0 4 27 \n";
        assert_eq!(process_ids(status), (Some(0), Some(0), vec![0, 4, 27]));
    }

    #[tokio::test]
    async fn demo_allocate_reports_and_rejects() {
        let (port, _server) = start(settings_with(&[])).await;
        let (status, _, body) = fetch(port, &get("/2025/kobe/allocate?mb=2&format=json")).await;
        assert_eq!(status, 200);
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["uid"], nix::unistd::getuid().as_raw());
        assert!(report["groups"].is_array());
        assert_eq!(fetch(port, &get("/allocate?mb=lots")).await.0, 400);
        assert_eq!(fetch(port, &get("/allocate")).await.0, 400);
        assert_eq!(fetch(port, &get("/allocate?mb=3")).await.0, 200);
    }

    #[test]
    fn counter_path_forms() {
        assert_eq!(
            counter_path("sqlite3:///data/db/2025-boston.sqlite3"),
            Some(PathBuf::from("/data/db/2025-boston.sqlite3"))
        );
        assert_eq!(
            counter_path("sqlite3://db/test.sqlite3"),
            Some(PathBuf::from("db/test.sqlite3"))
        );
        assert_eq!(
            counter_path("sqlite3:db/test.sqlite3"),
            Some(PathBuf::from("db/test.sqlite3"))
        );
        assert_eq!(counter_path("postgres://localhost/db"), None);
        assert_eq!(counter_path("sqlite3://"), None);
    }

    #[test]
    fn wants_json_cases() {
        let mut headers = HeaderMap::new();
        assert!(!wants_json(&headers, "/heats", None));
        assert!(wants_json(&headers, "/heats.json", None));
        assert!(wants_json(&headers, "/heats", Some("a=1&format=json")));
        assert!(!wants_json(&headers, "/heats", Some("format=jsonp")));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, */*"),
        );
        assert!(wants_json(&headers, "/heats", None));
    }
}
