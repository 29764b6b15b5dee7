//! Soak driver: runs navigator with demo tenants under mixed traffic for a
//! long time and samples its memory, open file descriptors and threads into
//! a CSV file. `scripts/soak.sh` builds it, runs it and judges the CSV.
//!
//! Traffic, all on loopback: static files; JSON pages and form posts on
//! three busy tenants; occasional requests to five more, so they go idle,
//! get reaped (`pools.timeout = "5s"`) or evicted (`max_size = 6`) and
//! start again; WebSocket tunnels; every 3 s one fault (crash, hang,
//! truncated body, stdout flood, slow answer); every 30 s a reload with
//! SIGHUP that changes one tenant's environment.
//!
//! Usage: soak --navigator BIN --dir DIR --duration SECS --sample SECS --csv FILE

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a client waits for a response head; past it the request
/// counts as unanswered.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

const TENANTS: usize = 8;
const BUSY_TENANTS: usize = 3;

struct Options {
    navigator: PathBuf,
    dir: PathBuf,
    duration: Duration,
    sample: Duration,
    csv: PathBuf,
}

fn options() -> Result<Options, String> {
    let mut values = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(name) = args.next() {
        let value = args.next().ok_or(format!("missing value after {name}"))?;
        values.insert(name, value);
    }
    let take = |name: &str| {
        values
            .get(name)
            .cloned()
            .ok_or(format!("missing {name}; usage: soak --navigator BIN --dir DIR --duration SECS --sample SECS --csv FILE"))
    };
    let seconds = |name: &str| -> Result<Duration, String> {
        let text = take(name)?;
        text.parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("invalid {name} {text:?}: expected whole seconds"))
    };
    Ok(Options {
        navigator: take("--navigator")?.into(),
        dir: take("--dir")?.into(),
        duration: seconds("--duration")?,
        sample: seconds("--sample")?,
        csv: take("--csv")?.into(),
    })
}

fn config(dir: &Path, navigator: &Path, generation: u64) -> String {
    let dir = dir.display();
    let navigator = navigator.display();
    let mut text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_dir = "{dir}/public"

[server.health_check]
path = "/up"
response = {{ status = 200, body = "OK" }}

[applications]
health_check = "/up"
startup_timeout = "5s"
response_timeout = "2s"

[applications.framework]
command = "{navigator}"
args = ["demo-tenant", "-p", "${{port}}"]
app_directory = "{dir}"

[applications.env]
DATABASE_URL = "sqlite3://{dir}/db/${{database}}.sqlite3"

[applications.pools]
max_size = 6
timeout = "5s"
start_port = 24000
end_port = 24099
grace_period = "2s"

[[routes.redirects]]
from = "^/old/(.*)$"
to = "/soak/t0/$1"
"#
    );
    for index in 0..TENANTS {
        let _ = write!(
            text,
            "\n[[applications.tenants]]\npath = \"/soak/t{index}/\"\nvar = {{ database = \"t{index}\" }}\n"
        );
        if index == TENANTS - 1 {
            // The reloads change this tenant's process environment, so
            // each one replaces its process.
            let _ = writeln!(text, "env = {{ SOAK_GENERATION = \"{generation}\" }}");
        }
    }
    text
}

/// Counts of how requests ended, by status (0: no response head).
#[derive(Default)]
struct Tally {
    statuses: Mutex<BTreeMap<u16, u64>>,
    requests: AtomicU64,
    unanswered: AtomicU64,
}

impl Tally {
    fn record(&self, status: Option<u16>, what: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_none() {
            self.unanswered.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: no response to {what}");
        }
        let mut statuses = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        *statuses.entry(status.unwrap_or(0)).or_default() += 1;
    }
}

/// Sends one request on a new connection and returns the response status,
/// after reading the response to its end; `None` when no head arrived
/// within the client timeout.
fn request(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&address, CLIENT_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => raw.extend_from_slice(&buffer[..read]),
        }
    }
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// Opens a WebSocket-style tunnel to a tenant (the demo tenant echoes raw
/// bytes after 101), sends 1 KiB, reads it back and holds the tunnel open
/// for `hold`. Returns the status of the upgrade answer.
fn tunnel(address: SocketAddr, path: &str, hold: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&address, CLIENT_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).ok()?;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c29hay10dW5uZWwtMDAwMA==\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).ok()?;
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        raw.push(byte[0]);
    }
    let status: u16 = String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    if status == 101 {
        let message = [b'w'; 1024];
        let mut echoed = [0u8; 1024];
        if stream.write_all(&message).is_ok() && stream.read_exact(&mut echoed).is_ok() {
            std::thread::sleep(hold);
        }
    }
    Some(status)
}

/// Reads a field of /proc/PID/status such as `VmRSS` (in kB) or `Threads`.
fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count() as u64)
        .unwrap_or(0)
}

fn child_count(pid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .count() as u64
}

fn start_navigator(options: &Options, config_path: &Path) -> Result<(Child, SocketAddr), String> {
    let log_path = options.dir.join("navigator.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let child = Command::new(&options.navigator)
        .arg("--config")
        .arg(config_path)
        .current_dir(&options.dir)
        .env("LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", options.navigator.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(address) = text
            .lines()
            .find(|line| line.contains("listening"))
            .and_then(|line| line.split("address=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|address| address.parse().ok())
        {
            return Ok((child, address));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "navigator did not start listening; see {}",
        log_path.display()
    ))
}

fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("soak: {message}");
            std::process::exit(2);
        }
    };
    if let Err(message) = run(&options) {
        eprintln!("soak: {message}");
        std::process::exit(1);
    }
}

fn run(options: &Options) -> Result<(), String> {
    let public = options.dir.join("public/assets");
    std::fs::create_dir_all(&public).map_err(|e| e.to_string())?;
    std::fs::write(
        public.join("app.css"),
        "body { color: black }\n".repeat(100),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(options.dir.join("public/index.html"), "<h1>soak</h1>\n")
        .map_err(|e| e.to_string())?;
    let config_path = options.dir.join("navigator.toml");
    std::fs::write(&config_path, config(&options.dir, &options.navigator, 0))
        .map_err(|e| e.to_string())?;

    let (mut child, address) = start_navigator(options, &config_path)?;
    let pid = child.id();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut threads = Vec::new();

    let spawn = |threads: &mut Vec<std::thread::JoinHandle<()>>, work: Box<dyn Fn(u64) + Send>| {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut turn = 0u64;
            while !stop.load(Ordering::Relaxed) {
                work(turn);
                turn += 1;
            }
        }));
    };

    let t = tally.clone();
    spawn(
        &mut threads,
        Box::new(move |turn| {
            let path = if turn % 2 == 0 {
                "/assets/app.css"
            } else {
                "/index.html"
            };
            t.record(request(address, "GET", path, b""), path);
            std::thread::sleep(Duration::from_millis(20));
        }),
    );
    for worker in 0..2u64 {
        let t = tally.clone();
        spawn(
            &mut threads,
            Box::new(move |turn| {
                let busy = (turn + worker) as usize % BUSY_TENANTS;
                let path = format!("/soak/t{busy}/heats?format=json");
                t.record(request(address, "GET", &path, b""), &path);
                if turn % 5 == 0 {
                    let path = format!("/soak/t{busy}/entries");
                    t.record(request(address, "POST", &path, b"name=soak&heat=1"), &path);
                }
                // Now and then one of the idle tenants, which the reaper
                // stopped in between.
                if turn % 97 == worker * 40 {
                    let idle = BUSY_TENANTS + (turn / 97) as usize % (TENANTS - BUSY_TENANTS);
                    let path = format!("/soak/t{idle}/");
                    t.record(request(address, "GET", &path, b""), &path);
                }
                std::thread::sleep(Duration::from_millis(10));
            }),
        );
    }
    let t = tally.clone();
    spawn(
        &mut threads,
        Box::new(move |turn| {
            let path = format!("/soak/t{}/cable", turn as usize % BUSY_TENANTS);
            t.record(tunnel(address, &path, Duration::from_millis(500)), &path);
        }),
    );
    let t = tally.clone();
    spawn(
        &mut threads,
        Box::new(move |turn| {
            let path = match turn % 5 {
                0 => "/soak/t2/crash",
                1 => "/soak/t0/hang",
                2 => "/soak/t1/truncate",
                3 => "/soak/t1/flood?lines=1000",
                _ => "/soak/t0/slow?ms=500",
            };
            t.record(request(address, "GET", path, b""), path);
            std::thread::sleep(Duration::from_secs(3));
        }),
    );
    {
        let stop = stop.clone();
        let config_path = config_path.clone();
        let dir = options.dir.clone();
        let navigator = options.navigator.clone();
        threads.push(std::thread::spawn(move || {
            let mut generation = 0;
            let mut next = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if Instant::now() < next {
                    continue;
                }
                next += Duration::from_secs(30);
                generation += 1;
                let _ = std::fs::write(&config_path, config(&dir, &navigator, generation));
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGHUP,
                );
            }
        }));
    }

    let mut csv = String::from("seconds,rss_kib,fds,threads,children,requests,unanswered\n");
    let mut next_sample = Instant::now();
    while started.elapsed() < options.duration {
        if let Ok(Some(status)) = child.try_wait() {
            stop.store(true, Ordering::Relaxed);
            return Err(format!("navigator exited during the soak: {status}"));
        }
        if Instant::now() >= next_sample {
            next_sample += options.sample;
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{}",
                started.elapsed().as_secs(),
                proc_status(pid, "VmRSS"),
                open_fds(pid),
                proc_status(pid, "Threads"),
                child_count(pid),
                tally.requests.load(Ordering::Relaxed),
                tally.unanswered.load(Ordering::Relaxed),
            );
            std::fs::write(&options.csv, &csv)
                .map_err(|e| format!("cannot write {}: {e}", options.csv.display()))?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait().map_err(|e| e.to_string())?;

    let statuses = tally.statuses.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "requests: {}, unanswered: {}, statuses: {:?}, navigator exit: {status}",
        tally.requests.load(Ordering::Relaxed),
        tally.unanswered.load(Ordering::Relaxed),
        *statuses
    );
    if tally.unanswered.load(Ordering::Relaxed) > 0 {
        return Err("some requests got no response".into());
    }
    if !status.success() {
        return Err(format!("navigator exited with {status}"));
    }
    Ok(())
}
