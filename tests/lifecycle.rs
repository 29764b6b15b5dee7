//! Running for months without a restart: the Showcase boot flow
//! (maintenance config, ready hook, reload into the full config), reloads
//! under load, tenant reconciliation, rebinding, hooks, managed processes
//! and the shutdown order.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{
    HttpResponse, NAVIGATOR, Navigator, Showcase, event_scope, eventually, http_request,
    process_alive, write_config, write_public_tree,
};

fn json_get(navigator: &Navigator, path: &str) -> serde_json::Value {
    let response = navigator.request("GET", path, &[("Accept", "application/json")], b"");
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json()
}

fn pid_of(body: &serde_json::Value) -> i32 {
    body["pid"].as_u64().expect("pid in demo JSON") as i32
}

/// Returns a tenant table to append to a Showcase config, with its own
/// `TEST_VALUE`.
fn extra_tenant(path: &str, database: &str, test_value: &str) -> String {
    format!(
        "\n[[applications.tenants]]\npath = \"{path}\"\nvar = {{ database = \"{database}\" }}\nenv = {{ TEST_VALUE = \"{test_value}\" }}\n"
    )
}

/// Rewrites the config file of `navigator` and waits until a reload of it
/// was applied or rejected, as counted by the log.
fn reload_with(navigator: &Navigator, config: &str) {
    write_config(&navigator.config, config, navigator.dir.path());
    let before = navigator.logs.count("reload applied") + navigator.logs.count("reload rejected");
    navigator.signal(Signal::SIGHUP);
    let done = eventually(Duration::from_secs(20), || {
        navigator.logs.count("reload applied") + navigator.logs.count("reload rejected") > before
    });
    assert!(done, "reload not finished; log:\n{}", navigator.logs.text());
}

/// A minimal HTTP/1.1 client that keeps its connection open.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn connect(address: SocketAddr) -> std::io::Result<KeepAlive> {
        let stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(KeepAlive {
            reader: BufReader::new(stream),
        })
    }

    fn get(&mut self, path: &str, accept: &str) -> std::io::Result<HttpResponse> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;

        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::other(
                "connection closed before the response",
            ));
        }
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let size =
                    usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                        .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = header("content-length") {
            let length: usize = length.parse().map_err(std::io::Error::other)?;
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// Returns a TCP port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn boot_flow_from_maintenance_to_full_config() {
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    std::fs::create_dir_all(dir.path().join("config")).unwrap();

    let full = Showcase {
        events: 3,
        ..Showcase::default()
    };
    write_config(&dir.path().join("staged.toml"), &full.toml(), dir.path());

    // The ready hook waits for the test's go-ahead, so the maintenance
    // state can be observed, then installs the full config the way
    // Showcase's ready script does.
    let ready_hook = r#"
[[hooks.server.ready]]
command = "sh"
args = ["-c", "i=0; while [ ! -e @DIR@/go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo installing the full config; cp @DIR@/staged.toml @DIR@/config/navigator.toml.tmp && mv @DIR@/config/navigator.toml.tmp @DIR@/config/navigator.toml"]
timeout = "1m"
reload_config = "config/navigator.toml"
"#;
    let maintenance = Showcase {
        events: 0,
        maintenance: true,
        extra: ready_hook.to_string(),
        ..Showcase::default()
    };
    let navigator = Navigator::start_in(dir, &maintenance.toml(), &[]);
    let scope = event_scope(1);

    let page = navigator.get("/showcase/studios/");
    assert_eq!(page.status, 200, "static files are served in maintenance");
    assert_eq!(page.text(), "<h1>studios</h1>\n");
    let dynamic = navigator.get(&format!("/showcase/{scope}/"));
    assert_eq!(dynamic.status, 503);
    assert!(dynamic.text().contains("maintenance page"));
    assert_eq!(navigator.get("/up").status, 200);

    std::fs::write(navigator.path("go"), "").unwrap();
    assert!(
        navigator
            .logs
            .wait_for("reload applied", Duration::from_secs(30))
            .is_some(),
        "no reload after the ready hook; log:\n{}",
        navigator.logs.text()
    );
    assert!(navigator.logs.count("switching config file") == 1);
    assert!(
        navigator
            .logs
            .wait_for(
                "[hook:ready.stdout] installing the full config",
                Duration::from_secs(5)
            )
            .is_some()
    );

    let body = json_get(&navigator, &format!("/showcase/{scope}/"));
    assert_eq!(body["scope"], scope);
    assert_eq!(navigator.get("/showcase/studios/").status, 200);

    // The full config has no ready hook with reload_config, and SIGHUP now
    // reloads the file navigator switched to.
    navigator.signal(Signal::SIGHUP);
    let reloaded = navigator
        .logs
        .wait_for("cause=SIGHUP", Duration::from_secs(10));
    let reloaded = reloaded.expect("SIGHUP reload logged");
    assert!(
        reloaded.contains("config/navigator.toml"),
        "SIGHUP reloads the switched-to file: {reloaded}"
    );
}

#[test]
fn reloads_under_load_drop_no_request() {
    let base = Showcase {
        events: 2,
        ..Showcase::default()
    }
    .toml();
    let config = |value: &str| {
        format!(
            "{base}{}",
            extra_tenant("/showcase/reload/", "reload", value)
        )
    };
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let navigator = Navigator::start_in(dir, &config("v0"), &[]);
    let address = navigator.address;

    let first = json_get(&navigator, "/showcase/reload/");
    assert_eq!(first["env"]["TEST_VALUE"], "v0");
    let steady = json_get(&navigator, &format!("/showcase/{}/", event_scope(0)));

    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let paths = [
        "/showcase/reload/".to_string(),
        format!("/showcase/{}/", event_scope(0)),
        "/showcase/studios/".to_string(),
    ];
    let mut clients = Vec::new();
    for client in 0..4 {
        let (stop, requests, failures, paths) = (
            stop.clone(),
            requests.clone(),
            failures.clone(),
            paths.clone(),
        );
        clients.push(std::thread::spawn(move || {
            let keep_alive = client % 2 == 0;
            let mut connection: Option<KeepAlive> = None;
            let mut n = client;
            while !stop.load(Ordering::Relaxed) {
                let path = &paths[n % paths.len()];
                n += 1;
                let result = if keep_alive {
                    if connection.is_none() {
                        connection = KeepAlive::connect(address).ok();
                    }
                    match connection.as_mut() {
                        Some(connection) => connection.get(path, "application/json"),
                        None => Err(std::io::Error::other("connect failed")),
                    }
                } else {
                    Ok(http_request(
                        address,
                        "GET",
                        path,
                        &[("Accept", "application/json")],
                        b"",
                    ))
                };
                requests.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(response) if response.status == 200 => {}
                    Ok(response) => failures.lock().unwrap().push(format!(
                        "{path}: {} {}",
                        response.status,
                        response.text()
                    )),
                    Err(error) => {
                        connection = None;
                        failures.lock().unwrap().push(format!("{path}: {error}"));
                    }
                }
            }
        }));
    }

    let mut value = "v0".to_string();
    let mut pid = pid_of(&first);
    for round in 1..=50 {
        if round % 5 == 0 {
            // An unknown key on line 1: the reload is rejected with the
            // file and line, and the running config stays.
            let rejected_before = navigator.logs.count("reload rejected");
            reload_with(
                &navigator,
                &format!("bogus_setting = 1\n{}", config("broken")),
            );
            assert_eq!(navigator.logs.count("reload rejected"), rejected_before + 1);
            let body = json_get(&navigator, "/showcase/reload/");
            assert_eq!(body["env"]["TEST_VALUE"], value.as_str());
            assert_eq!(
                pid_of(&body),
                pid,
                "a rejected reload left the tenant alone"
            );
            continue;
        }
        if round % 2 == 1 {
            value = format!("v{round}");
        }
        reload_with(&navigator, &config(&value));
        let body = json_get(&navigator, "/showcase/reload/");
        assert_eq!(body["env"]["TEST_VALUE"], value.as_str(), "round {round}");
        if round % 2 == 1 {
            assert_ne!(
                pid_of(&body),
                pid,
                "round {round}: a changed env needs a new process"
            );
        } else {
            assert_eq!(
                pid_of(&body),
                pid,
                "round {round}: an unchanged tenant keeps its process"
            );
        }
        pid = pid_of(&body);
    }

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        requests.load(Ordering::Relaxed),
        &failures[..failures.len().min(10)]
    );
    assert!(requests.load(Ordering::Relaxed) > 200);
    let log = navigator.logs.text();
    assert!(
        log.contains("navigator.toml:1:1"),
        "rejected reloads name file and line; log:\n{log}"
    );
    let steady_now = json_get(&navigator, &format!("/showcase/{}/", event_scope(0)));
    assert_eq!(
        pid_of(&steady_now),
        pid_of(&steady),
        "an unchanged tenant was restarted"
    );
}

#[test]
fn removed_tenant_stops_and_unchanged_keeps_pid() {
    let base = Showcase {
        events: 2,
        ..Showcase::default()
    }
    .toml();
    let with_extra = format!("{base}{}", extra_tenant("/showcase/gone/", "gone", "x"));
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let navigator = Navigator::start_in(dir, &with_extra, &[]);

    let kept = pid_of(&json_get(
        &navigator,
        &format!("/showcase/{}/", event_scope(0)),
    ));
    let removed = pid_of(&json_get(&navigator, "/showcase/gone/"));

    reload_with(&navigator, &base);
    assert!(
        eventually(Duration::from_secs(15), || !process_alive(removed)),
        "removed tenant still runs; log:\n{}",
        navigator.logs.text()
    );
    assert!(
        navigator
            .logs
            .wait_for("tenant removed from config", Duration::from_secs(10))
            .is_some()
    );
    assert_eq!(navigator.logs.count("tenant removed from config"), 1);
    assert_eq!(
        navigator.get("/showcase/gone/").status,
        200,
        "now the index tenant's path"
    );
    let now = pid_of(&json_get(
        &navigator,
        &format!("/showcase/{}/", event_scope(0)),
    ));
    assert_eq!(now, kept);
    assert!(process_alive(kept));
}

#[test]
fn changed_listen_address_rebinds() {
    let base = Showcase {
        events: 0,
        ..Showcase::default()
    }
    .toml();
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let navigator = Navigator::start_in(dir, &base, &[]);
    let old = navigator.address;

    let mut kept = KeepAlive::connect(old).unwrap();
    assert_eq!(kept.get("/showcase/studios/", "*/*").unwrap().status, 200);

    let port = free_port();
    let moved = base.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    assert_ne!(moved, base);
    reload_with(&navigator, &moved);
    let new: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        navigator
            .logs
            .wait_for(&format!("listening address={new}"), Duration::from_secs(10))
            .is_some(),
        "log:\n{}",
        navigator.logs.text()
    );
    assert_eq!(http_request(new, "GET", "/up", &[], b"").status, 200);
    assert!(
        eventually(Duration::from_secs(10), || TcpStream::connect(old).is_err()),
        "the old address still accepts connections"
    );
    let response = kept.get("/showcase/studios/", "*/*").unwrap();
    assert_eq!(
        response.status, 200,
        "a connection from before the rebind stays open"
    );
}

#[test]
fn invalid_listen_address_rejects_reload() {
    let base = Showcase {
        events: 0,
        ..Showcase::default()
    }
    .toml();
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let navigator = Navigator::start_in(dir, &base, &[]);

    // A port held by another socket cannot be bound.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let moved = base
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace("body = \"OK\"", "body = \"moved\"");
    reload_with(&navigator, &moved);
    assert!(navigator.logs.count("cannot listen on the new address") == 1);
    let response = navigator.get("/up");
    assert_eq!(response.text(), "OK", "the running config stays");
}

#[test]
fn hooks_time_out_fail_and_see_tenant_env() {
    let hooks = r#"
[[hooks.server.ready]]
command = "sh"
args = ["-c", "echo $$ > @DIR@/ready.pid; exec sleep 100"]
timeout = "300ms"

[[hooks.tenant.start]]
command = "sh"
args = ["-c", "echo \"$RAILS_APP_DB $PORT ${database}\" > @DIR@/start-${database}.txt"]

[[hooks.tenant.start]]
command = "sh"
args = ["-c", "exit 3"]

[[hooks.tenant.stop]]
command = "sh"
args = ["-c", "if kill -0 $(cat $PIDFILE); then state=running; else state=gone; fi; echo \"$RAILS_APP_DB $state\" > @DIR@/stop-${database}.txt"]
"#;
    let showcase = Showcase {
        events: 2,
        extra: hooks.to_string(),
        ..Showcase::default()
    };
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let mut navigator = Navigator::start_in(dir, &showcase.toml(), &[]);

    assert!(
        navigator
            .logs
            .wait_for("hook timed out", Duration::from_secs(10))
            .is_some(),
        "log:\n{}",
        navigator.logs.text()
    );
    let hook_pid: i32 = std::fs::read_to_string(navigator.path("ready.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !process_alive(hook_pid)),
        "timed-out hook {hook_pid} still runs"
    );

    let scope = event_scope(1);
    let database = scope.replace('/', "-");
    let body = json_get(&navigator, &format!("/showcase/{scope}/"));
    let start = std::fs::read_to_string(navigator.path(&format!("start-{database}.txt"))).unwrap();
    assert_eq!(
        start.trim(),
        format!("{database} {} {database}", body["port"])
    );
    assert!(
        navigator
            .logs
            .wait_for("tenant hook failed", Duration::from_secs(5))
            .is_some(),
        "the failing start hook is logged; the tenant is served anyway"
    );

    assert_eq!(navigator.stop(), Some(0));
    let stop = std::fs::read_to_string(navigator.path(&format!("stop-{database}.txt"))).unwrap();
    assert_eq!(
        stop.trim(),
        format!("{database} running"),
        "stop hooks run before SIGTERM"
    );
}

#[test]
fn failing_start_hook_aborts_startup() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
[server]
listen = "127.0.0.1:0"
pid_file = "@DIR@/navigator.pid"

[[managed_processes]]
name = "helper"
command = "sh"
args = ["-c", "echo $$ > @DIR@/helper.pid; exec sleep 100"]

[[hooks.server.start]]
command = "sh"
args = ["-c", "for i in $(seq 1 100); do test -s @DIR@/helper.pid && break; sleep 0.05; done; test -s @DIR@/helper.pid && echo helper was running > @DIR@/seen; exit 7"]
"#;
    // The helper is spawned before the hook runs. Its shell may not have
    // written its pid yet, so the hook waits up to 5 s for the file. Were
    // the helper started only after the hooks, the file would never come.
    let path = dir.path().join("navigator.toml");
    write_config(&path, config, dir.path());
    let output = Command::new(NAVIGATOR)
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a server start hook failed"), "{stderr}");
    assert!(stderr.contains("exit code 7"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(
        dir.path().join("seen").exists(),
        "managed processes start before start hooks"
    );
    let helper: i32 = std::fs::read_to_string(dir.path().join("helper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!process_alive(helper), "managed process left running");
    assert!(!dir.path().join("navigator.pid").exists());
}

/// Seconds since midnight of an RFC 3339 log line's timestamp.
fn log_seconds(line: &str) -> f64 {
    let time = line
        .split_whitespace()
        .next()
        .and_then(|stamp| stamp.split('T').nth(1))
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let time = time.trim_end_matches('Z');
    let parts: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

#[test]
fn crashing_managed_process_restarts_with_backoff() {
    let config = r#"
[server]
listen = "127.0.0.1:0"
pid_file = "@DIR@/navigator.pid"

[[managed_processes]]
name = "crasher"
command = "sh"
args = ["-c", "echo crashing; exit 1"]
auto_restart = true
"#;
    let navigator = Navigator::start(config);
    assert!(
        eventually(Duration::from_secs(30), || {
            navigator.logs.count("restarting managed process") >= 4
        }),
        "log:\n{}",
        navigator.logs.text()
    );
    let log = navigator.logs.text();
    let delays: Vec<u64> = log
        .lines()
        .filter(|line| line.contains("restarting managed process"))
        .map(|line| {
            support::parse_field(line, "delay_ms")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(delays[..4], [1000, 2000, 4000, 8000]);
    let starts: Vec<f64> = log
        .lines()
        .filter(|line| line.contains("managed process started"))
        .map(log_seconds)
        .collect();
    assert!(starts.len() >= 4, "log:\n{log}");
    for (i, pair) in starts.windows(2).take(3).enumerate() {
        let gap = pair[1] - pair[0];
        let delay = delays[i] as f64 / 1000.0;
        assert!(
            gap + 0.01 >= delay,
            "restart {i}: gap {gap} s < delay {delay} s"
        );
    }
    assert!(eventually(Duration::from_secs(5), || {
        navigator.logs.count("[crasher.stdout] crashing") >= 4
    }));
}

#[test]
fn shutdown_stops_tenants_then_managed_in_reverse() {
    let extra = r#"
[[managed_processes]]
name = "alpha"
command = "sh"
args = ["-c", "echo $$ > @DIR@/alpha.pid; exec sleep 100"]

[[managed_processes]]
name = "beta"
command = "sh"
args = ["-c", "echo $$ > @DIR@/beta.pid; exec sleep 100"]
start_delay = "200ms"

[[hooks.server.stop]]
command = "sh"
args = ["-c", "echo server stop hook"]
"#;
    let showcase = Showcase {
        events: 2,
        extra: extra.to_string(),
        ..Showcase::default()
    };
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let mut navigator = Navigator::start_in(dir, &showcase.toml(), &[]);
    assert!(
        navigator
            .logs
            .wait_for("process=beta pid=", Duration::from_secs(10))
            .is_some()
    );
    let tenant = pid_of(&json_get(
        &navigator,
        &format!("/showcase/{}/", event_scope(0)),
    ));
    let read_pid = |name: &str| -> i32 {
        std::fs::read_to_string(navigator.path(&format!("{name}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (alpha, beta) = (read_pid("alpha"), read_pid("beta"));

    assert_eq!(navigator.stop(), Some(0));
    for pid in [tenant, alpha, beta] {
        assert!(!process_alive(pid), "process {pid} survived shutdown");
    }
    let log = navigator.logs.text();
    let hook = line_index(&log, &["[hook:stop.stdout] server stop hook"]);
    let tenant_stopped = line_index(&log, &["tenant process stopped"]);
    let beta_stopped = line_index(&log, &["managed process stopped", "process=beta"]);
    let alpha_stopped = line_index(&log, &["managed process stopped", "process=alpha"]);
    assert!(
        hook < tenant_stopped,
        "server stop hooks run before tenants stop"
    );
    assert!(
        tenant_stopped < beta_stopped,
        "tenants stop before managed processes"
    );
    assert!(
        beta_stopped < alpha_stopped,
        "managed processes stop in reverse start order"
    );
    assert!(!navigator.path("navigator.pid").exists());
}

#[test]
fn reload_command_signals_running_server() {
    let base = Showcase {
        events: 0,
        ..Showcase::default()
    }
    .toml();
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let navigator = Navigator::start_in(dir, &base, &[]);
    write_config(
        &navigator.config,
        &base.replace("body = \"OK\"", "body = \"reloaded\""),
        navigator.dir.path(),
    );
    let status = Command::new(NAVIGATOR)
        .args(["-s", "reload", "--config"])
        .arg(&navigator.config)
        .current_dir(navigator.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        eventually(Duration::from_secs(10), || navigator.get("/up").text()
            == "reloaded"),
        "log:\n{}",
        navigator.logs.text()
    );
    let pid_file = navigator.path("navigator.pid");
    let status = Command::new(NAVIGATOR)
        .args(["reload", "--pid-file"])
        .arg(&pid_file)
        .current_dir(navigator.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        eventually(Duration::from_secs(10), || navigator
            .logs
            .count("cause=SIGHUP")
            >= 2),
        "log:\n{}",
        navigator.logs.text()
    );
}

#[test]
fn pid_file_directory_is_created() {
    // The demo config names `tmp/navigator.pid`, and a fresh checkout has
    // no `tmp/`. Without the file `navigator -s reload` cannot work.
    let config = r#"
[server]
listen = "127.0.0.1:0"
pid_file = "tmp/pids/navigator.pid"

[server.health_check]
path = "/up"
"#;
    let mut navigator = Navigator::start(config);
    let pid_file = navigator.path("tmp/pids/navigator.pid");
    assert!(
        eventually(Duration::from_secs(5), || pid_file.exists()),
        "log:\n{}",
        navigator.logs.text()
    );
    let text = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(text.trim(), navigator.child.id().to_string());
    let status = Command::new(NAVIGATOR)
        .args(["-s", "reload", "--config"])
        .arg(&navigator.config)
        .current_dir(navigator.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        eventually(Duration::from_secs(10), || navigator
            .logs
            .count("cause=SIGHUP")
            >= 1),
        "log:\n{}",
        navigator.logs.text()
    );
    navigator.stop();
    assert!(!pid_file.exists());
}

/// Returns the number of the first log line that contains every needle.
fn line_index(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .position(|line| needles.iter().all(|needle| line.contains(needle)))
        .unwrap_or_else(|| panic!("no line with {needles:?} in log:\n{log}"))
}

#[test]
fn second_signal_exits_at_once() {
    let config = r#"
[server]
listen = "127.0.0.1:0"
pid_file = "@DIR@/navigator.pid"

[[hooks.server.stop]]
command = "sh"
args = ["-c", "echo $$ > @DIR@/stop-hook.pid; exec sleep 100"]
timeout = "0"
"#;
    let mut navigator = Navigator::start(config);
    navigator.signal(Signal::SIGTERM);
    assert!(
        eventually(Duration::from_secs(10), || navigator
            .path("stop-hook.pid")
            .exists()),
        "log:\n{}",
        navigator.logs.text()
    );
    let hook: i32 = loop {
        let text = std::fs::read_to_string(navigator.path("stop-hook.pid")).unwrap();
        if let Ok(pid) = text.trim().parse() {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    navigator.signal(Signal::SIGINT);
    let code = support::wait_with_timeout(&mut navigator.child, Duration::from_secs(10));
    assert_eq!(code, Some(1), "log:\n{}", navigator.logs.text());
    assert!(
        navigator
            .logs
            .wait_for("second signal; exiting at once", Duration::from_secs(5))
            .is_some()
    );
    assert!(
        eventually(Duration::from_secs(10), || !process_alive(hook)),
        "the stop hook outlived navigator"
    );
    assert!(!navigator.path("navigator.pid").exists());
}

#[test]
fn reload_switches_log_level() {
    let base = Showcase {
        events: 0,
        ..Showcase::default()
    }
    .toml();
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let navigator = Navigator::start_in(dir, &base, &[]);
    let write = |text: &str| write_config(&navigator.config, text, navigator.dir.path());

    let quiet = format!(
        "{}\n[logging]\nlevel = \"warn\"\n",
        base.replace("body = \"OK\"", "body = \"quiet\"")
    );
    write(&quiet);
    navigator.signal(Signal::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || navigator
        .get("/up")
        .text()
        == "quiet"));
    navigator.get("/up?probe=quiet");
    // A rejected reload logs an error, which the warn level still shows,
    // so once it appears the access record before it would have too.
    write(&format!("bogus_setting = 1\n{quiet}"));
    navigator.signal(Signal::SIGHUP);
    assert!(
        navigator
            .logs
            .wait_for("reload rejected", Duration::from_secs(10))
            .is_some()
    );
    assert_eq!(
        navigator.logs.count("probe=quiet"),
        0,
        "info records at level warn"
    );

    write(&base.replace("body = \"OK\"", "body = \"loud\""));
    navigator.signal(Signal::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || navigator
        .get("/up")
        .text()
        == "loud"));
    navigator.get("/up?probe=loud");
    assert!(
        navigator
            .logs
            .wait_for("probe=loud", Duration::from_secs(5))
            .is_some(),
        "without logging.level the environment's level applies again"
    );
}

#[test]
fn reload_switches_log_format() {
    let base = Showcase {
        events: 0,
        ..Showcase::default()
    }
    .toml();
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let navigator = Navigator::start_in(dir, &base, &[]);

    let json = format!(
        "{}\n[logging]\nformat = \"json\"\n",
        base.replace("body = \"OK\"", "body = \"json\"")
    );
    write_config(&navigator.config, &json, navigator.dir.path());
    navigator.signal(Signal::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || navigator
        .get("/up")
        .text()
        == "json"));
    navigator.get("/up?probe=json");
    let line = navigator
        .logs
        .wait_for("probe=json", Duration::from_secs(5))
        .expect("access record");
    let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(record["uri"], "/up?probe=json");
}
