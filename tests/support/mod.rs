//! Shared helpers for integration tests: start the real navigator binary
//! on loopback with a generated config, talk HTTP to it, and clean up.

#![allow(dead_code)]

pub mod browser;
pub mod faults;
pub mod fly;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const NAVIGATOR: &str = env!("CARGO_BIN_EXE_navigator");

/// Whether tests that need an outside program must fail instead of skip.
pub fn tools_required() -> bool {
    std::env::var("NAVIGATOR_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Returns true (and prints why) when `program` is missing and the test
/// should be skipped; panics instead when tools are required.
pub fn skip_without(program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    if found {
        return false;
    }
    if tools_required() {
        panic!("{program} is required (NAVIGATOR_REQUIRE_TOOLS=1) but not installed");
    }
    eprintln!("skipped: {program} is not installed");
    true
}

/// A base port for tenant processes, different per test process and call,
/// so parallel tests rarely probe the same ports.
pub fn tenant_port_base() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
    // Below the kernel's ephemeral range (32768 and up on Linux), where
    // outgoing connections would take ports at random.
    let seed = (std::process::id() * 7919 + slot * 104_729) % 440;
    (10_000 + seed * 50) as u16
}

/// Log lines collected from a running navigator.
#[derive(Default)]
pub struct LogBook {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl LogBook {
    pub fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.changed.notify_all();
    }

    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until a line containing `needle` appears; returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_for_line(|line| line.contains(needle), timeout)
    }

    /// Waits until a line for which `matches` holds appears; returns it.
    pub fn wait_for_line(
        &self,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| matches(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }
}

/// A navigator process serving a config from a temp dir.
pub struct Navigator {
    pub child: Child,
    pub address: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub logs: Arc<LogBook>,
}

impl Navigator {
    /// Writes `config` (TOML; `@DIR@` is replaced by the temp dir) and
    /// starts navigator on it. The config should listen on
    /// `127.0.0.1:0`; the bound address is read from the log.
    pub fn start(config: &str) -> Navigator {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config, &[])
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Navigator {
        Self::start_wrapped(dir, config, env, &[])
    }

    /// Like `start_in`, but runs navigator through `wrapper` (a program
    /// and its arguments that exec the rest of the command line, such as
    /// `setpriv --groups 27 --`), which must keep the pid.
    pub fn start_wrapped(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Navigator {
        let config_path = dir.path().join("navigator.toml");
        write_config(&config_path, config, dir.path());
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(NAVIGATOR);
                command
            }
            None => Command::new(NAVIGATOR),
        };
        command
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("LOG_LEVEL", "debug")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start navigator");
        let logs = Arc::new(LogBook::default());
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    match line {
                        Ok(line) => logs.push(line),
                        Err(_) => break,
                    }
                }
            });
        }
        let line = logs.wait_for_line(
            |line| line.contains("listening") && !line.contains("tls=true"),
            Duration::from_secs(20),
        );
        let Some(line) = line else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("navigator did not start listening; log:\n{}", logs.text());
        };
        let address = parse_field(&line, "address").expect("address in listening line");
        Navigator {
            child,
            address: address.parse().expect("socket address"),
            dir,
            config: config_path,
            logs,
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], b"")
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        http_request(self.address, method, path, headers, body)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        wait_with_timeout(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Navigator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if wait_with_timeout(&mut self.child, Duration::from_secs(20)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

pub fn write_config(path: &Path, config: &str, dir: &Path) {
    let text = config
        .replace("@DIR@", &dir.display().to_string())
        .replace("@NAVIGATOR@", NAVIGATOR);
    std::fs::write(path, text).unwrap();
}

pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.code().unwrap_or(-1));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `name=value` in a log line (text or JSON).
pub fn parse_field(line: &str, name: &str) -> Option<String> {
    let text_key = format!("{name}=");
    if let Some(start) = line.find(&text_key) {
        let rest = &line[start + text_key.len()..];
        let value: String = rest
            .trim_start_matches('"')
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"')
            .collect();
        return Some(value);
    }
    let json_key = format!("\"{name}\":");
    let start = line.find(&json_key)?;
    let rest = line[start + json_key.len()..].trim_start_matches('"');
    Some(
        rest.chars()
            .take_while(|c| *c != '"' && *c != ',' && *c != '}')
            .collect(),
    )
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(address).expect("connect to navigator");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw, method == "HEAD")
        .unwrap_or_else(|| panic!("malformed response: {:?}", String::from_utf8_lossy(&raw)))
}

/// Sends raw bytes and returns whatever comes back until the server closes
/// or `timeout` passes.
pub fn raw_exchange(address: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(timeout)).unwrap();
    let _ = stream.write_all(bytes);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    raw
}

pub fn parse_response(raw: &[u8], head_only: bool) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Whether a process with `pid` exists (zombies count as gone).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Options for a generated Showcase-shaped config.
pub struct Showcase {
    /// Number of event tenants besides the index tenant.
    pub events: usize,
    pub tenant_env: Vec<(String, String)>,
    pub pools: String,
    pub applications: String,
    pub extra: String,
    pub maintenance: bool,
    pub startup_timeout: &'static str,
}

impl Default for Showcase {
    fn default() -> Self {
        Showcase {
            events: 12,
            tenant_env: Vec::new(),
            pools: String::new(),
            applications: String::new(),
            extra: String::new(),
            maintenance: false,
            startup_timeout: "20s",
        }
    }
}

pub const STUDIOS: [&str; 12] = [
    "boston",
    "raleigh",
    "annapolis",
    "livermore",
    "millbrae",
    "adelaide",
    "barcelona",
    "montreal",
    "kobe",
    "salem",
    "clearwater",
    "richmond",
];
pub const EVENTS: [&str; 6] = [
    "april",
    "october",
    "medal-ball",
    "showcase",
    "disney",
    "spring",
];

/// The path segment of event `i`: `YEAR/STUDIO/EVENT`, unique for any i.
pub fn event_scope(i: usize) -> String {
    let year = 2025 - (i / (STUDIOS.len() * EVENTS.len())) as i32;
    let studio = STUDIOS[(i / EVENTS.len()) % STUDIOS.len()];
    let event = EVENTS[i % EVENTS.len()];
    format!("{year}/{studio}/{event}")
}

impl Showcase {
    /// TOML for a deployment under `/showcase` whose tenants are the
    /// built-in demo tenant, with databases and pid files under `@DIR@`.
    pub fn toml(&self) -> String {
        let mut out = format!(
            r#"
[server]
listen = "127.0.0.1:0"
root_path = "/showcase"
pid_file = "@DIR@/navigator.pid"

[server.static]
public_dir = "@DIR@/public"
try_files = ["index.html", ".html", ".htm"]
normalize_trailing_slashes = true

[server.static.cache_control]
default = "0"
overrides = [{{ path = "/showcase/assets/", max_age = "1y", immutable = true }}]

[server.health_check]
path = "/up"
response = {{ status = 200, body = "OK", headers = {{ "Content-Type" = "text/plain" }} }}

[maintenance]
enabled = {maintenance}

[applications]
health_check = "/up"
startup_timeout = "{startup_timeout}"
{applications}

[applications.framework]
command = "@NAVIGATOR@"
args = ["demo-tenant", "-p", "${{port}}"]
app_directory = "@DIR@"

[applications.env]
RAILS_APP_DB = "${{database}}"
DATABASE_URL = "sqlite3://@DIR@/db/${{database}}.sqlite3"
PIDFILE = "@DIR@/pids/${{database}}.pid"
{tenant_env}

[applications.pools]
start_port = {port}
{pools}

[[applications.tenants]]
path = "/showcase/"
var = {{ database = "index" }}
env = {{ RAILS_APP_OWNER = "Index" }}
"#,
            maintenance = self.maintenance,
            applications = self.applications,
            startup_timeout = self.startup_timeout,
            tenant_env = self
                .tenant_env
                .iter()
                .map(|(k, v)| format!("{k} = \"{v}\"\n"))
                .collect::<String>(),
            port = tenant_port_base(),
            pools = self.pools,
        );
        for i in 0..self.events {
            let scope = event_scope(i);
            let database = scope.replace('/', "-");
            let owner = scope.split('/').nth(1).unwrap_or("x");
            out.push_str(&format!(
                "\n[[applications.tenants]]\npath = \"/showcase/{scope}/\"\nvar = {{ database = \"{database}\" }}\nenv = {{ RAILS_APP_OWNER = \"{owner}\", RAILS_APP_SCOPE = \"{scope}\" }}\n"
            ));
        }
        out.push_str(&self.extra);
        out
    }
}

/// Creates the small public tree the Showcase tests use.
pub fn write_public_tree(dir: &Path) {
    let public = dir.join("public");
    for sub in ["assets", "studios", "2025/boston", "docs"] {
        std::fs::create_dir_all(public.join(sub)).unwrap();
    }
    std::fs::write(
        public.join("503.html"),
        "<html><body>maintenance page</body></html>\n",
    )
    .unwrap();
    std::fs::write(
        public.join("assets/app-1234.css"),
        "body { color: black }\n",
    )
    .unwrap();
    std::fs::write(
        public.join("assets/app-1234.js"),
        "console.log('hi');\n".repeat(200),
    )
    .unwrap();
    std::fs::write(public.join("studios/index.html"), "<h1>studios</h1>\n").unwrap();
    std::fs::write(public.join("studios/millbrae.html"), "<h1>millbrae</h1>\n").unwrap();
    std::fs::write(
        public.join("2025/boston/index.html"),
        "<h1>boston 2025</h1>\n",
    )
    .unwrap();
    std::fs::write(public.join("docs/index.html"), "<h1>docs</h1>\n").unwrap();
    std::fs::write(public.join(".secret"), "hidden\n").unwrap();
    std::fs::write(dir.join("outside.txt"), "outside public\n").unwrap();
}

/// Starts navigator on a generated Showcase config with its public tree.
pub fn start_showcase(showcase: &Showcase) -> Navigator {
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    Navigator::start_in(dir, &showcase.toml(), &[])
}
