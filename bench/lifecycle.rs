//! Tenant lifecycle benchmarks against a release navigator on loopback.
//!
//! `cold`: starts a fresh navigator whose tenants are the built-in demo
//! tenant with a boot delay, and sends the first request to each of N
//! tenants at the same moment. Per tenant it reports the time from the
//! tenant's first listen (`DEMO_LISTEN_STAMP`) to the first response byte
//! at the client, which is navigator's overhead of probing and proxying. The
//! wall time of all N first requests shows whether the starts ran side by
//! side (about one boot delay) or one after another (N boot delays).
//!
//! `reload`: starts navigator with a Showcase-shaped config of N tenants,
//! keeps clients requesting a tenant and a static file, and reloads the
//! config with SIGHUP again and again. It reports the reload times that
//! navigator logs (`reload applied ... elapsed_ms=`) and every request
//! that did not get a 200.
//!
//! Usage:
//!   lifecycle cold --navigator PATH [--tenants 8] [--boot-ms 300] [--rounds 5]
//!   lifecycle reload --navigator PATH [--tenants 10000] [--reloads 20] [--clients 4]
//!
//! Everything listens on 127.0.0.1 only.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const YEARS: [&str; 5] = ["2022", "2023", "2024", "2025", "2026"];

struct Options {
    mode: String,
    navigator: PathBuf,
    tenants: usize,
    boot_ms: u64,
    rounds: usize,
    reloads: usize,
    /// Client threads that keep requesting during the reloads.
    clients: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("expected a mode: cold or reload")?;
    if mode != "cold" && mode != "reload" {
        return Err(format!("unknown mode {mode:?}: expected cold or reload"));
    }
    let mut options = Options {
        navigator: PathBuf::new(),
        tenants: if mode == "cold" { 8 } else { 10_000 },
        mode,
        boot_ms: 300,
        rounds: 5,
        reloads: 20,
        clients: 4,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("missing value after {flag}"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag} expects a whole number, not {value:?}"))
        };
        match flag.as_str() {
            "--navigator" => options.navigator = PathBuf::from(&value),
            "--tenants" => options.tenants = number()?.max(1),
            "--boot-ms" => options.boot_ms = number()? as u64,
            "--rounds" => options.rounds = number()?.max(1),
            "--reloads" => options.reloads = number()?.max(1),
            "--clients" => options.clients = number()?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if options.navigator.as_os_str().is_empty() {
        return Err("--navigator PATH is required".into());
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("lifecycle: {message}");
            return ExitCode::from(2);
        }
    };
    let result = if options.mode == "cold" {
        cold(&options)
    } else {
        reload(&options)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lifecycle: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Returns a port that nothing listened on a moment ago.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A navigator process, stopped with SIGTERM and reaped on drop.
struct Navigator {
    child: Child,
    log: PathBuf,
}

impl Navigator {
    fn start(binary: &Path, config: &Path, dir: &Path, port: u16) -> Result<Navigator, String> {
        let log = dir.join("navigator.log");
        let file = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let errors = file.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(errors)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let navigator = Navigator { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok((200, _)) = get(port, "/up") {
                return Ok(navigator);
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "navigator did not respond to /up within 60 s; log:\n{}",
            navigator.log_tail()
        ))
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Returns the last lines of the log, for error messages.
    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn signal(&self, name: &str) -> Result<(), String> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{name} failed: {status}"))
        }
    }
}

impl Drop for Navigator {
    fn drop(&mut self) {
        let _ = self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `GET path` with `Connection: close`; returns the status and the
/// wall-clock time at which the first response byte arrived.
fn get(port: u16, path: &str) -> io::Result<(u16, SystemTime)> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut first = [0u8; 1];
    stream.read_exact(&mut first)?;
    let first_byte = SystemTime::now();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    let head = String::from_utf8_lossy(&rest[..rest.len().min(32)]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status line"))?;
    Ok((status, first_byte))
}

fn micros_since_epoch(time: SystemTime) -> i128 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_micros() as i128)
        .unwrap_or(0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn work_dir(name: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(&format!("navigator-{name}."))
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))
}

fn cold(options: &Options) -> Result<(), String> {
    let tenants = options.tenants;
    println!(
        "cold start: {tenants} tenant(s) requested at once, boot delay {} ms, {} round(s)",
        options.boot_ms, options.rounds
    );
    println!("round  overhead_ms(median  max)  wall_ms  serial_ms");
    let mut all_overheads = Vec::new();
    let mut walls = Vec::new();
    for round in 1..=options.rounds {
        let dir = work_dir("cold")?;
        let port = free_port().map_err(|e| e.to_string())?;
        let mut config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [server.health_check]\npath = \"/up\"\n\n[server.health_check.response]\nstatus = 200\nbody = \"OK\"\n\n\
             [applications]\nhealth_check = \"/up\"\nstartup_timeout = \"60s\"\n\n\
             [applications.framework]\ncommand = {:?}\nargs = [\"demo-tenant\", \"-p\", \"${{port}}\"]\n\n\
             [applications.pools]\nmax_size = {}\ntimeout = \"5m\"\n\n",
            options.navigator.display().to_string(),
            tenants + 2
        );
        for index in 0..tenants {
            let stamp = dir.path().join(format!("t{index}.stamp"));
            config.push_str(&format!(
                "[[applications.tenants]]\npath = \"/t{index}/\"\n\
                 env = {{ DEMO_BOOT_DELAY_MS = \"{}\", DEMO_LISTEN_STAMP = {:?} }}\n\n",
                options.boot_ms,
                stamp.display().to_string()
            ));
        }
        let config_path = dir.path().join("navigator.toml");
        fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let navigator = Navigator::start(&options.navigator, &config_path, dir.path(), port)?;

        let barrier = Arc::new(Barrier::new(tenants));
        let clients: Vec<_> = (0..tenants)
            .map(|index| {
                let barrier = barrier.clone();
                thread::spawn(move || {
                    barrier.wait();
                    let sent = SystemTime::now();
                    get(port, &format!("/t{index}/")).map(|(status, first)| (status, sent, first))
                })
            })
            .collect();
        let mut results = Vec::new();
        for client in clients {
            let result = client
                .join()
                .map_err(|_| "a client thread panicked".to_string())?
                .map_err(|e| format!("request failed: {e}"))?;
            results.push(result);
        }
        let mut overheads = Vec::new();
        for (index, (status, _, first)) in results.iter().enumerate() {
            if *status != 200 {
                return Err(format!(
                    "tenant {index} responded with {status}; log:\n{}",
                    navigator.log_tail()
                ));
            }
            let stamp = dir.path().join(format!("t{index}.stamp"));
            let listened: i128 = fs::read_to_string(&stamp)
                .map_err(|e| format!("{}: {e}", stamp.display()))?
                .trim()
                .parse::<i128>()
                .map_err(|e| format!("{}: {e}", stamp.display()))?
                / 1000;
            overheads.push((micros_since_epoch(*first) - listened) as f64 / 1000.0);
        }
        let sent = results
            .iter()
            .map(|(_, sent, _)| micros_since_epoch(*sent))
            .min()
            .unwrap_or(0);
        let done = results
            .iter()
            .map(|(_, _, first)| micros_since_epoch(*first))
            .max()
            .unwrap_or(0);
        let wall = (done - sent) as f64 / 1000.0;
        let max = overheads.iter().copied().fold(f64::MIN, f64::max);
        let med = median(&mut overheads.clone());
        println!(
            "{round:>5}  {med:>12.2} {max:>7.2}  {wall:>8.1}  {:>8}",
            tenants as u64 * options.boot_ms
        );
        all_overheads.extend(overheads);
        walls.push(wall);
        drop(navigator);
    }
    let max = all_overheads.iter().copied().fold(f64::MIN, f64::max);
    let min = all_overheads.iter().copied().fold(f64::MAX, f64::min);
    println!(
        "overhead from first listen to first byte: median {:.2} ms, min {min:.2}, max {max:.2} ({} starts)",
        median(&mut all_overheads),
        all_overheads.len()
    );
    println!(
        "wall time of the {tenants} first requests: median {:.1} ms; one after another would take at least {} ms",
        median(&mut walls),
        tenants as u64 * options.boot_ms
    );
    Ok(())
}

/// Builds a Showcase-shaped config: events spread over years and studios,
/// a static directory, and every tenant running the demo tenant.
fn showcase_config(options: &Options, port: u16, generation: usize) -> String {
    let mut config = format!(
        "# generation {generation}\n\
         [server]\nlisten = \"127.0.0.1:{port}\"\nroot_path = \"/showcase\"\n\n\
         [server.health_check]\npath = \"/up\"\n\n[server.health_check.response]\nstatus = 200\nbody = \"OK\"\n\n\
         [server.static]\npublic_dir = \"public\"\nallowed_extensions = [\"html\", \"css\"]\n\
         try_files = [\"index.html\", \".html\"]\n\n\
         [[routes.redirects]]\nfrom = \"^/$\"\nto = \"/showcase/\"\n\n\
         [[routes.rewrites]]\nfrom = \"^/assets/(.*)\"\nto = \"/showcase/assets/$1\"\n\n\
         [applications]\nhealth_check = \"/up\"\nstartup_timeout = \"60s\"\n\n\
         [applications.framework]\ncommand = {:?}\nargs = [\"demo-tenant\", \"-p\", \"${{port}}\"]\n\n\
         [applications.env]\nRAILS_APP_DB = \"${{database}}\"\n\n\
         [applications.pools]\nmax_size = 4\ntimeout = \"5m\"\n\n",
        options.navigator.display().to_string()
    );
    for index in 0..options.tenants {
        let year = YEARS[index % YEARS.len()];
        let event = index / YEARS.len() % 5;
        let studio = index / YEARS.len() / 5;
        config.push_str(&format!(
            "[[applications.tenants]]\npath = \"/showcase/{year}/studio{studio}/event{event}/\"\n\
             var = {{ database = \"{year}-studio{studio}-event{event}\" }}\n\n"
        ));
    }
    config
}

fn reload(options: &Options) -> Result<(), String> {
    let dir = work_dir("reload")?;
    let public = dir.path().join("public/showcase");
    fs::create_dir_all(&public).map_err(|e| e.to_string())?;
    // Where `/showcase/` lands depends on how root_path maps to the
    // public directory; both places hold the page.
    for place in [dir.path().join("public"), public] {
        fs::write(place.join("index.html"), "<h1>Showcase</h1>\n".repeat(40))
            .map_err(|e| e.to_string())?;
    }
    let port = free_port().map_err(|e| e.to_string())?;
    let config_path = dir.path().join("navigator.toml");
    fs::write(&config_path, showcase_config(options, port, 0)).map_err(|e| e.to_string())?;
    let navigator = Navigator::start(&options.navigator, &config_path, dir.path(), port)?;
    let tenant = "/showcase/2022/studio0/event0/";
    match get(port, tenant) {
        Ok((200, _)) => {}
        other => return Err(format!("warming {tenant} failed: {other:?}")),
    }
    println!(
        "reload: {} tenants, {} reloads, {} client thread(s) requesting meanwhile",
        options.tenants, options.reloads, options.clients
    );

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..options.clients)
        .map(|index| {
            let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
            let path = if index % 2 == 0 { tenant } else { "/showcase/" };
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get(port, path) {
                        Ok((200, _)) => answered.fetch_add(1, Ordering::Relaxed),
                        Ok((status, _)) => {
                            eprintln!("lifecycle: {path} responded with {status}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(error) => {
                            eprintln!("lifecycle: {path} failed: {error}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    let mut times = Vec::new();
    for generation in 1..=options.reloads {
        fs::write(&config_path, showcase_config(options, port, generation))
            .map_err(|e| e.to_string())?;
        navigator.signal("HUP")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = navigator.log_text();
            let elapsed = reload_times(&log);
            if elapsed.len() >= generation {
                times.push(elapsed[generation - 1]);
                break;
            }
            if log.contains("reload rejected") {
                return Err(format!("a reload was rejected:\n{}", navigator.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "reload {generation} not applied within 30 s:\n{}",
                    navigator.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    let max = times.iter().copied().fold(f64::MIN, f64::max);
    let min = times.iter().copied().fold(f64::MAX, f64::min);
    println!(
        "reload time (navigator's elapsed_ms): median {:.1} ms, min {min:.1}, max {max:.1}",
        median(&mut times)
    );
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "requests during the reloads: {} answered 200, {failed} failed",
        answered.load(Ordering::Relaxed)
    );
    drop(navigator);
    if failed > 0 {
        return Err(format!("{failed} request(s) failed during the reloads"));
    }
    Ok(())
}

/// Collects the `elapsed_ms` of every `reload applied` line, in order.
fn reload_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|line| line.contains("reload applied"))
        .filter_map(|line| {
            let value = line.split("elapsed_ms=").nth(1)?;
            let number: String = value
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            number.parse().ok()
        })
        .collect()
}
