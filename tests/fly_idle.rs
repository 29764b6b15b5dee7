//! Machine idle on Fly: after `server.idle.timeout` without requests,
//! navigator runs the idle hooks and asks a mock Machines API on a unix
//! socket to suspend or stop the machine; the next request runs the
//! resume hooks (which may reload the config) before it is served.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::fly::MachinesApi;
use support::{Navigator, Showcase, event_scope, http_request, write_config, write_public_tree};

const WAIT: Duration = Duration::from_secs(30);

/// Builds a Showcase config with one event and `server.idle` at one second,
/// with the given action, API socket and hooks TOML.
fn idle_config(action: &str, socket: &Path, hooks: &str, more: &str) -> String {
    Showcase {
        events: 1,
        extra: format!(
            r#"
[server.idle]
action = "{action}"
timeout = "1s"
fly_api_socket = "{socket}"
{hooks}
{more}
"#,
            socket = socket.display()
        ),
        ..Showcase::default()
    }
    .toml()
}

const ON_FLY: [(&str, &str); 3] = [
    ("FLY_APP_NAME", "smooth"),
    ("FLY_MACHINE_ID", "48e3a1"),
    ("FLY_REGION", "iad"),
];

/// Starts the mock API, then navigator in a fresh temp dir on the config
/// that `config` builds from the API socket. The API checks for
/// `idle-marker` in navigator's dir.
fn start(
    env: &[(&str, &str)],
    config: impl FnOnce(&Path, &Path) -> String,
) -> (MachinesApi, Navigator) {
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let api = MachinesApi::start(Some(dir.path().join("idle-marker")));
    let config = config(dir.path(), &api.socket);
    let navigator = Navigator::start_in(dir, &config, env);
    (api, navigator)
}

const IDLE_HOOK: &str = r#"
[hooks.server]
idle = [{ command = "sh", args = ["-c", "touch @DIR@/idle-marker"] }]
"#;

#[test]
fn idle_machine_suspends_after_idle_hooks() {
    let (api, navigator) = start(&ON_FLY, |_, socket| {
        idle_config("suspend", socket, IDLE_HOOK, "")
    });

    let calls = api.wait_for_calls(1, WAIT);
    assert!(
        !calls.is_empty(),
        "no API call; log:\n{}",
        navigator.logs.text()
    );
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].path, "/v1/apps/smooth/machines/48e3a1/suspend");
    assert!(
        calls[0].marker_existed,
        "the idle hook ran before the API call"
    );
    assert!(
        navigator
            .logs
            .wait_for("asked the Fly Machines API to suspend", WAIT)
            .is_some()
    );
}

#[test]
fn first_request_after_idle_resumes_and_reloads() {
    // The resume hook installs a config with one more redirect; requests
    // answered by that redirect show the reload happened before serving.
    let redirect =
        "[[routes.redirects]]\nfrom = \"^/showcase/studios/$\"\nto = \"/showcase/resumed/\"\n";
    let hooks = r#"
[hooks.server]
idle = [{ command = "sh", args = ["-c", "touch @DIR@/idle-marker"] }]
resume = [{ command = "sh", args = ["-c", "echo resumed >> @DIR@/resume-log; cp @DIR@/resumed.toml @DIR@/navigator.toml; sleep 0.3"], reload_config = "@DIR@/navigator.toml" }]
"#;
    let (api, navigator) = start(&ON_FLY, |dir, socket| {
        let resumed = idle_config("suspend", socket, "", redirect);
        write_config(&dir.join("resumed.toml"), &resumed, dir);
        idle_config("suspend", socket, hooks, "")
    });

    let before = navigator.get("/showcase/studios/");
    assert_eq!(before.status, 200, "the original config serves the page");
    let calls = api.wait_for_calls(1, WAIT);
    assert!(
        !calls.is_empty(),
        "no API call; log:\n{}",
        navigator.logs.text()
    );

    let address = navigator.address;
    let requests: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || http_request(address, "GET", "/showcase/studios/", &[], b""))
        })
        .collect();
    for request in requests {
        let response = request.join().unwrap();
        assert_eq!(response.status, 302, "{}", response.text());
        assert_eq!(response.header("location"), Some("/showcase/resumed/"));
    }
    let log = std::fs::read_to_string(navigator.path("resume-log")).unwrap();
    assert_eq!(log.lines().count(), 1, "one resume for concurrent requests");
    // The line is in navigator's output before the first response, but
    // the thread that reads that output may not have taken it in yet.
    assert!(
        navigator
            .logs
            .wait_for("machine resumed", Duration::from_secs(10))
            .is_some()
    );
}

#[test]
fn stop_action_ignores_health_checks() {
    let (api, navigator) = start(&ON_FLY, |_, socket| {
        idle_config("stop", socket, IDLE_HOOK, "")
    });

    // Fly's health checks keep coming; they must not keep the machine up.
    let deadline = Instant::now() + WAIT;
    while api.calls().is_empty() && Instant::now() < deadline {
        assert_eq!(navigator.get("/up").status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    let calls = api.calls();
    assert!(
        !calls.is_empty(),
        "no API call; log:\n{}",
        navigator.logs.text()
    );
    assert_eq!(calls[0].path, "/v1/apps/smooth/machines/48e3a1/stop");
    assert!(calls[0].marker_existed);
}

#[test]
fn request_in_flight_delays_idle_action() {
    let (api, navigator) = start(&ON_FLY, |_, socket| idle_config("suspend", socket, "", ""));
    let path = format!("/showcase/{}/slow?ms=2500", event_scope(0));

    let started = Instant::now();
    let response = navigator.get(&path);
    let finished = Instant::now();
    assert_eq!(response.status, 200, "{}", response.text());

    // A call made before the request arrived (a slow start) does not
    // count; every later one must come after the response.
    assert!(
        support::eventually(WAIT, || api.calls().iter().any(|c| c.at > started)),
        "no API call after the request; log:\n{}",
        navigator.logs.text()
    );
    for call in api.calls().iter().filter(|c| c.at > started) {
        assert!(
            call.at >= finished,
            "API called while a request was in flight"
        );
    }
}

#[test]
fn idle_outside_fly_does_nothing() {
    let env = [
        ("FLY_APP_NAME", ""),
        ("FLY_MACHINE_ID", ""),
        ("FLY_REGION", ""),
    ];
    let (api, navigator) = start(&env, |_, socket| {
        idle_config("suspend", socket, IDLE_HOOK, "")
    });

    assert!(
        navigator
            .logs
            .wait_for("not running on Fly", WAIT)
            .is_some(),
        "log:\n{}",
        navigator.logs.text()
    );
    // A second idle period passes with a debug line only.
    assert!(
        navigator
            .logs
            .wait_for("machine idle outside Fly; nothing to do", WAIT)
            .is_some()
    );
    assert_eq!(navigator.logs.count("not running on Fly"), 1);
    assert!(api.calls().is_empty());
    assert!(
        !navigator.path("idle-marker").exists(),
        "no idle hooks outside Fly"
    );
}

#[test]
fn open_cable_keeps_machine_awake() {
    use std::io::{Read, Write};

    let (api, navigator) = start(&ON_FLY, |_, socket| idle_config("suspend", socket, "", ""));
    let mut cable = std::net::TcpStream::connect(navigator.address).unwrap();
    write!(
        cable,
        "GET /cable HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        cable.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));

    // Three idle timeouts pass with only the cable open: no idle action.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        api.calls().is_empty(),
        "machine suspended with a cable open"
    );

    let closed = Instant::now();
    drop(cable);
    assert!(
        support::eventually(WAIT, || api.calls().iter().any(|c| c.at > closed)),
        "no idle action after the cable closed; log:\n{}",
        navigator.logs.text()
    );
}
