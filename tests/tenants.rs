//! Tenant processes on demand: spawn with the right environment, one
//! shared start for concurrent requests, idle reaping, restarts, backoff,
//! shutdown and orphan protection. Tenants are navigator's built-in demo
//! tenant, a real child process with an HTTP server.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{Showcase, event_scope, eventually, process_alive, start_showcase};

fn json_get(navigator: &support::Navigator, path: &str) -> serde_json::Value {
    let response = navigator.request("GET", path, &[("Accept", "application/json")], b"");
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json()
}

#[test]
fn showcase_of_300_events_starts_each_event_separately() {
    let navigator = start_showcase(&Showcase {
        events: 320,
        ..Showcase::default()
    });
    let dir = navigator.dir.path().to_path_buf();
    let mut pids = Vec::new();
    for i in [0, 77, 319] {
        let scope = event_scope(i);
        let database = scope.replace('/', "-");
        let body = json_get(&navigator, &format!("/showcase/{scope}/heats"));
        assert_eq!(body["path"], format!("/showcase/{scope}/heats"));
        assert_eq!(body["scope"], scope);
        assert_eq!(
            body["database_url"],
            format!("sqlite3://{}/db/{database}.sqlite3", dir.display())
        );
        assert_eq!(body["env"]["PORT"], body["port"].to_string());
        assert_eq!(body["env"]["RAILS_APP_DB"], database);
        let cwd = std::fs::canonicalize(body["cwd"].as_str().unwrap()).unwrap();
        assert_eq!(cwd, std::fs::canonicalize(&dir).unwrap());
        pids.push(body["pid"].as_u64().unwrap());
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "each event has its own process");
    assert_eq!(navigator.logs.count("tenant process started"), 3);
}

#[test]
fn upstream_receives_forwarded_headers() {
    let navigator = start_showcase(&Showcase::default());
    let scope = event_scope(1);
    let response = navigator.request(
        "GET",
        &format!("/showcase/{scope}/?q=1"),
        &[
            ("Accept", "application/json"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Host", "spoofed.test"),
            ("Connection", "close, X-Drop-Me"),
            ("X-Drop-Me", "1"),
            ("X-Request-Id", "req-42"),
        ],
        b"",
    );
    let body = response.json();
    let headers = &body["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "localhost");
    assert_eq!(headers["host"], "localhost");
    assert_eq!(headers["x-request-id"], "req-42");
    assert!(headers.get("x-drop-me").is_none());
    assert_eq!(body["query"], "q=1");
}

#[test]
fn concurrent_first_requests_share_one_process() {
    let navigator = start_showcase(&Showcase {
        tenant_env: vec![("DEMO_BOOT_DELAY_MS".into(), "300".into())],
        ..Showcase::default()
    });
    let scope = event_scope(2);
    let pids: Vec<u64> = std::thread::scope(|threads| {
        let handles: Vec<_> = (0..10)
            .map(|_| {
                threads.spawn(|| {
                    json_get(&navigator, &format!("/showcase/{scope}/"))["pid"]
                        .as_u64()
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(pids.iter().all(|pid| *pid == pids[0]), "{pids:?}");
    assert_eq!(navigator.logs.count("tenant process started"), 1);
}

#[test]
fn idle_tenant_stopped_and_port_reused() {
    let navigator = start_showcase(&Showcase {
        pools: "timeout = \"1s\"".into(),
        ..Showcase::default()
    });
    let scope = event_scope(3);
    let first = json_get(&navigator, &format!("/showcase/{scope}/"));
    let pid = first["pid"].as_u64().unwrap() as i32;
    assert!(process_alive(pid));
    assert!(
        eventually(Duration::from_secs(15), || !process_alive(pid)),
        "idle tenant still running; log:\n{}",
        navigator.logs.text()
    );
    assert!(
        navigator
            .logs
            .wait_for("stopping idle tenant", Duration::from_secs(5))
            .is_some()
    );
    let pidfile = navigator.path(&format!("pids/{}.pid", scope.replace('/', "-")));
    assert!(
        eventually(Duration::from_secs(5), || !pidfile.exists()),
        "PIDFILE removed"
    );

    let second = json_get(&navigator, &format!("/showcase/{scope}/"));
    assert_ne!(second["pid"], first["pid"]);
    assert_eq!(
        second["port"], first["port"],
        "the lowest free port is reused"
    );
}

#[test]
fn exited_tenant_restarts_on_next_request() {
    let navigator = start_showcase(&Showcase::default());
    let scope = event_scope(4);
    let first = json_get(&navigator, &format!("/showcase/{scope}/"));
    let pid = first["pid"].as_u64().unwrap() as i32;
    let crash = navigator.get(&format!("/showcase/{scope}/crash"));
    assert_eq!(crash.status, 200);
    assert!(eventually(Duration::from_secs(10), || !process_alive(pid)));
    assert!(
        navigator
            .logs
            .wait_for("exited unexpectedly", Duration::from_secs(5))
            .is_some()
    );
    let second = json_get(&navigator, &format!("/showcase/{scope}/"));
    assert_ne!(second["pid"], first["pid"]);
}

#[test]
fn never_ready_tenant_gets_maintenance_then_backoff() {
    let navigator = start_showcase(&Showcase {
        tenant_env: vec![("DEMO_NEVER_LISTEN".into(), "1".into())],
        startup_timeout: "300ms",
        applications: "ready_timeout = \"1s\"".into(),
        ..Showcase::default()
    });
    let path = format!("/showcase/{}/", event_scope(5));
    let first = navigator.get(&path);
    assert_eq!(first.status, 503, "{}", first.text());
    assert!(first.header("retry-after").is_some());

    // Keep asking for a few seconds. Each start fails after the 1 s
    // readiness deadline and the next waits 1 s, 2 s, 4 s...: a tight loop
    // would start dozens of processes, backoff allows only a handful.
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_secs(6) {
        statuses.push(navigator.get(&path).status);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        statuses.iter().all(|s| *s == 502 || *s == 503),
        "{statuses:?}"
    );
    let spawns = navigator.logs.count("tenant process started");
    assert!(
        (2..=5).contains(&spawns),
        "{spawns} starts in 6 s; log:\n{}",
        navigator.logs.text()
    );
    assert!(navigator.logs.count("delaying restart after failures") >= 1);
}

#[test]
fn slow_start_gets_maintenance_page_within_startup_timeout() {
    let navigator = start_showcase(&Showcase {
        tenant_env: vec![("DEMO_BOOT_DELAY_MS".into(), "3000".into())],
        startup_timeout: "500ms",
        ..Showcase::default()
    });
    let path = format!("/showcase/{}/", event_scope(6));
    let first = navigator.get(&path);
    assert_eq!(first.status, 503);
    assert!(first.header("retry-after").is_some());
    assert!(first.text().contains("maintenance page"));
    assert!(eventually(Duration::from_secs(15), || navigator
        .get(&path)
        .status
        == 200));
    assert_eq!(navigator.logs.count("tenant process started"), 1);
}

#[test]
fn sigterm_stops_every_tenant_and_exits_zero() {
    let mut navigator = start_showcase(&Showcase::default());
    let pids: Vec<i32> = (0..3)
        .map(|i| {
            json_get(&navigator, &format!("/showcase/{}/", event_scope(i)))["pid"]
                .as_u64()
                .unwrap() as i32
        })
        .collect();
    assert!(pids.iter().all(|pid| process_alive(*pid)));
    assert_eq!(navigator.stop(), Some(0));
    for pid in pids {
        assert!(!process_alive(pid), "tenant {pid} survived shutdown");
    }
    assert!(!navigator.path("navigator.pid").exists());
}

#[test]
fn sigkill_of_navigator_leaves_no_tenant() {
    let navigator = start_showcase(&Showcase::default());
    let pids: Vec<i32> = (0..2)
        .map(|i| {
            json_get(&navigator, &format!("/showcase/{}/", event_scope(i)))["pid"]
                .as_u64()
                .unwrap() as i32
        })
        .collect();
    navigator.signal(Signal::SIGKILL);
    for pid in pids {
        assert!(
            eventually(Duration::from_secs(10), || !process_alive(pid)),
            "tenant {pid} outlived a killed navigator"
        );
    }
}

#[test]
fn pool_limit_evicts_least_recently_used() {
    let navigator = start_showcase(&Showcase {
        pools: "max_size = 2".into(),
        ..Showcase::default()
    });
    let a = json_get(&navigator, &format!("/showcase/{}/", event_scope(0)));
    let b = json_get(&navigator, &format!("/showcase/{}/", event_scope(1)));
    json_get(&navigator, &format!("/showcase/{}/", event_scope(1)));
    let c = json_get(&navigator, &format!("/showcase/{}/", event_scope(2)));
    let (a, b, c) = (
        a["pid"].as_u64().unwrap() as i32,
        b["pid"].as_u64().unwrap() as i32,
        c["pid"].as_u64().unwrap() as i32,
    );
    assert!(
        eventually(Duration::from_secs(10), || !process_alive(a)),
        "LRU tenant stopped"
    );
    assert!(process_alive(b));
    assert!(process_alive(c));
}

#[test]
fn websocket_upgrade_tunnels_to_tenant() {
    use std::io::{Read, Write};
    let navigator = start_showcase(&Showcase::default());
    let scope = event_scope(7);
    // Start the tenant first so the upgrade does not wait for a spawn.
    json_get(&navigator, &format!("/showcase/{scope}/"));
    let mut stream = std::net::TcpStream::connect(navigator.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /showcase/{scope}/cable HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping through the tunnel").unwrap();
    let mut echoed = [0u8; 23];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");
}

#[test]
fn client_gone_while_waiting_logged_499() {
    use std::io::Write;
    let navigator = start_showcase(&Showcase {
        tenant_env: vec![("DEMO_BOOT_DELAY_MS".into(), "2000".into())],
        ..Showcase::default()
    });
    let path = format!("/showcase/{}/gone", event_scope(8));
    let mut stream = std::net::TcpStream::connect(navigator.address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: impatient\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    let line = navigator
        .logs
        .wait_for("impatient", Duration::from_secs(10))
        .expect("access log line for the abandoned request");
    assert!(line.contains("status=499"), "{line}");
}

#[test]
fn stale_pidfile_removed_before_spawn() {
    let dir = tempfile::tempdir().unwrap();
    support::write_public_tree(dir.path());
    let scope = event_scope(9);
    let database = scope.replace('/', "-");
    std::fs::create_dir_all(dir.path().join("pids")).unwrap();
    // A pid that cannot belong to a live process: the exited child below.
    let mut exited = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = exited.id();
    exited.wait().unwrap();
    let pidfile = dir.path().join(format!("pids/{database}.pid"));
    std::fs::write(&pidfile, format!("{dead_pid}\n")).unwrap();

    let navigator = support::Navigator::start_in(dir, &Showcase::default().toml(), &[]);
    let body = json_get(&navigator, &format!("/showcase/{scope}/"));
    let pid = body["pid"].as_u64().unwrap();
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string()
    );
}

#[test]
fn foreign_live_pidfile_not_signalled() {
    let dir = tempfile::tempdir().unwrap();
    support::write_public_tree(dir.path());
    let scope = event_scope(10);
    let database = scope.replace('/', "-");
    std::fs::create_dir_all(dir.path().join("pids")).unwrap();
    let mut foreign = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(
        dir.path().join(format!("pids/{database}.pid")),
        format!("{}\n", foreign.id()),
    )
    .unwrap();

    let navigator = support::Navigator::start_in(dir, &Showcase::default().toml(), &[]);
    let response = navigator.get(&format!("/showcase/{scope}/"));
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(
        process_alive(foreign.id() as i32),
        "a process that is not the tenant's was signalled"
    );
    foreign.kill().unwrap();
    foreign.wait().unwrap();
}

#[test]
fn shutdown_lets_requests_in_flight_finish() {
    use std::io::{Read, Write};
    let mut navigator = start_showcase(&Showcase::default());
    let scope = event_scope(11);
    json_get(&navigator, &format!("/showcase/{scope}/"));
    // A keep-alive request. Its response is the last on the connection,
    // so it must carry `connection: close`.
    let mut stream = std::net::TcpStream::connect(navigator.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET /showcase/{scope}/slow?ms=1500 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(navigator.stop(), Some(0));
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).to_lowercase();
    assert!(response.starts_with("http/1.1 200 "), "{response}");
    assert!(response.contains("\r\nconnection: close\r\n"), "{response}");
}

#[test]
fn json_log_format_has_fields() {
    let navigator = start_showcase(&Showcase {
        extra: "\n[logging]\nformat = \"json\"\n".into(),
        ..Showcase::default()
    });
    json_get(&navigator, &format!("/showcase/{}/", event_scope(0)));
    let access = navigator
        .logs
        .wait_for("\"answer\":\"proxy\"", Duration::from_secs(5))
        .expect("JSON access record");
    let record: serde_json::Value = serde_json::from_str(&access).unwrap();
    assert_eq!(record["status"], 200);
    assert_eq!(record["method"], "GET");
    assert!(
        record["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let output = navigator
        .logs
        .wait_for("\"stream\":\"stdout\"", Duration::from_secs(5))
        .expect("JSON tenant output record");
    let record: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(record["tenant"], event_scope(0));
}
