//! CGI scripts: the RFC 3875 environment, the request body on stdin, the
//! script's header block, streaming, timeouts, allowed users, malformed
//! output and the reload after a successful run.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use support::{Navigator, eventually, process_alive, write_config};

/// Writes an executable shell script.
fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
pid_file = "@DIR@/navigator.pid"

[server.health_check]
path = "/up"
response = { status = 200, body = "OK" }
"#;

fn start(scripts: &str) -> Navigator {
    start_with_env(scripts, &[])
}

fn start_with_env(scripts: &str, env: &[(&str, &str)]) -> Navigator {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("cgi-bin");
    std::fs::create_dir_all(&bin).unwrap();
    script(
        &bin,
        "env.sh",
        "printf 'Content-Type: text/plain\\r\\n\\r\\n'\nenv | sort\necho \"cwd=$(pwd)\"\n",
    );
    script(
        &bin,
        "echo.sh",
        "printf 'Content-Type: application/octet-stream\\n\\n'\nexec cat\n",
    );
    script(
        &bin,
        "created.sh",
        "printf 'Status: 201 Created\\nContent-Type: text/plain\\nX-Script: yes\\n\\ncreated\\n'\n",
    );
    script(
        &bin,
        "stream.sh",
        "printf 'Content-Type: text/plain\\n\\nfirst\\n'\ni=0; while [ ! -e \"$GATE\" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\necho second\n",
    );
    script(&bin, "slow.sh", "echo $$ > \"$PID_FILE\"\nexec sleep 100\n");
    script(&bin, "garbage.sh", "echo this is not a header block\n");
    script(
        &bin,
        "reload.sh",
        "cp \"$NEXT_CONFIG\" \"$CONFIG\"\nprintf 'Content-Type: text/plain\\n\\ninstalled\\n'\n",
    );
    script(
        &bin,
        "fail.sh",
        "cp \"$NEXT_CONFIG\" \"$CONFIG\"\nprintf 'Content-Type: text/plain\\n\\nfailed\\n'\nexit 1\n",
    );
    Navigator::start_in(dir, &format!("{BASE}{scripts}"), env)
}

fn env_lines(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn environment_follows_rfc_3875() {
    let navigator = start_with_env(
        r#"
[[server.cgi_scripts]]
path = "/cgi/env"
script = "cgi-bin/env.sh"
env = { RAILS_ENV = "production", GATEWAY_INTERFACE = "overridden" }
"#,
        &[("REMOTE_USER", "intruder"), ("HTTP_X_STALE", "stale")],
    );
    let response = navigator.request(
        "POST",
        "/cgi/env?x=1&y=two",
        &[
            ("Host", "events.example:8080"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Custom-Header", "abc"),
            ("Authorization", "Basic dXNlcjpwYXNz"),
            ("Proxy", "http://evil.example"),
        ],
        b"hello",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("text/plain"));
    let env = env_lines(&response.text());
    let expected = [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REQUEST_METHOD", "POST"),
        ("QUERY_STRING", "x=1&y=two"),
        ("CONTENT_LENGTH", "5"),
        ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
        ("SCRIPT_NAME", "/cgi/env"),
        ("PATH_INFO", ""),
        ("SERVER_NAME", "events.example"),
        ("SERVER_PORT", "8080"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REQUEST_URI", "/cgi/env?x=1&y=two"),
        ("HTTP_X_CUSTOM_HEADER", "abc"),
        ("HTTP_HOST", "events.example:8080"),
        ("RAILS_ENV", "production"),
    ];
    for (name, value) in expected {
        assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
    }
    for name in [
        "REMOTE_USER",
        "HTTP_AUTHORIZATION",
        "HTTP_PROXY",
        "HTTP_X_STALE",
    ] {
        assert!(!env.contains_key(name), "{name} must not reach the script");
    }
    let script_dir = navigator.path("cgi-bin").canonicalize().unwrap();
    assert_eq!(env["cwd"], script_dir.display().to_string());
    assert!(
        env.contains_key("PATH"),
        "navigator's own environment is inherited"
    );
    let access = navigator
        .logs
        .wait_for("uri=/cgi/env", Duration::from_secs(5))
        .unwrap();
    assert!(access.contains("answer=\"cgi\""), "{access}");
}

#[test]
fn request_body_reaches_stdin() {
    let navigator = start(
        r#"
[[server.cgi_scripts]]
path = "/cgi/echo"
script = "cgi-bin/echo.sh"
method = "POST"
"#,
    );
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let response = navigator.request("POST", "/cgi/echo", &[], &body);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), body.len());
    assert!(response.body == body, "the echoed body differs");

    let get = navigator.get("/cgi/echo");
    assert_eq!(get.status, 404, "another method falls through the pipeline");
}

#[test]
fn status_header_sets_response_status() {
    let navigator = start(
        r#"
[[server.cgi_scripts]]
path = "/cgi/created"
script = "cgi-bin/created.sh"
"#,
    );
    let response = navigator.get("/cgi/created");
    assert_eq!(response.status, 201);
    assert_eq!(response.header("x-script"), Some("yes"));
    assert_eq!(response.text(), "created\n");
}

#[test]
fn output_streams_before_script_ends() {
    let navigator = start(
        r#"
[[server.cgi_scripts]]
path = "/cgi/stream"
script = "cgi-bin/stream.sh"
env = { GATE = "@DIR@/gate" }
"#,
    );
    let mut stream = TcpStream::connect(navigator.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /cgi/stream HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&received).contains("first") {
        let read = stream.read(&mut buffer).unwrap();
        assert!(
            read > 0,
            "closed before the first line: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..read]);
    }
    assert!(!String::from_utf8_lossy(&received).contains("second"));

    std::fs::write(navigator.path("gate"), "").unwrap();
    stream.read_to_end(&mut received).unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("second"), "{text}");
}

#[test]
fn timeout_answers_504_and_kills_script() {
    let navigator = start(
        r#"
[[server.cgi_scripts]]
path = "/cgi/slow"
script = "cgi-bin/slow.sh"
timeout = "500ms"
env = { PID_FILE = "@DIR@/slow.pid" }
"#,
    );
    let response = navigator.get("/cgi/slow");
    assert_eq!(response.status, 504);
    let pid: i32 = std::fs::read_to_string(navigator.path("slow.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !process_alive(pid)),
        "script {pid} survived its timeout"
    );
}

#[test]
fn allowed_users_refuse_anonymous_request() {
    let navigator = start(
        r#"
[[server.cgi_scripts]]
path = "/cgi/admin"
script = "cgi-bin/created.sh"
allowed_users = ["admin"]
"#,
    );
    let response = navigator.get("/cgi/admin");
    assert_eq!(response.status, 403);
    assert!(
        navigator
            .logs
            .wait_for("user not in allowed_users", Duration::from_secs(5))
            .is_some()
    );
}

#[test]
fn malformed_output_answers_502() {
    let navigator = start(
        r#"
[[server.cgi_scripts]]
path = "/cgi/garbage"
script = "cgi-bin/garbage.sh"

[[server.cgi_scripts]]
path = "/cgi/missing"
script = "cgi-bin/no-such-script.sh"
"#,
    );
    assert_eq!(navigator.get("/cgi/garbage").status, 502);
    assert!(
        navigator
            .logs
            .wait_for("CGI script sent malformed output", Duration::from_secs(5))
            .is_some()
    );
    assert_eq!(navigator.get("/cgi/missing").status, 500);
    assert!(
        navigator
            .logs
            .wait_for("CGI script failed to start", Duration::from_secs(5))
            .is_some()
    );
}

#[test]
fn successful_script_reloads_changed_config() {
    let scripts = r#"
[[server.cgi_scripts]]
path = "/cgi/update"
script = "cgi-bin/reload.sh"
method = "POST"
reload_config = "@DIR@/navigator.toml"
env = { NEXT_CONFIG = "@DIR@/next.toml", CONFIG = "@DIR@/navigator.toml" }

[[server.cgi_scripts]]
path = "/cgi/fail"
script = "cgi-bin/fail.sh"
method = "POST"
reload_config = "@DIR@/navigator.toml"
env = { NEXT_CONFIG = "@DIR@/failed.toml", CONFIG = "@DIR@/navigator.toml" }
"#;
    let navigator = start(scripts);
    let dir = navigator.dir.path();
    let config = |body: &str| {
        format!("{BASE}{scripts}").replace("body = \"OK\"", &format!("body = \"{body}\""))
    };

    // Unchanged file: the script succeeds and no reload follows.
    write_config(&dir.join("next.toml"), &config("OK"), dir);
    assert_eq!(
        navigator.request("POST", "/cgi/update", &[], b"").status,
        200
    );
    assert!(
        navigator
            .logs
            .wait_for("config unchanged; no reload", Duration::from_secs(10))
            .is_some(),
        "log:\n{}",
        navigator.logs.text()
    );

    // A failing script changes the file, but no reload follows.
    write_config(
        &dir.join("failed.toml"),
        &config("from a failed script"),
        dir,
    );
    assert_eq!(navigator.request("POST", "/cgi/fail", &[], b"").status, 200);
    assert!(
        navigator
            .logs
            .wait_for("CGI script failed", Duration::from_secs(10))
            .is_some()
    );
    assert_eq!(navigator.get("/up").text(), "OK");

    // A successful script that changes the file reloads it.
    write_config(&dir.join("next.toml"), &config("updated"), dir);
    let response = navigator.request("POST", "/cgi/update", &[], b"");
    assert_eq!(response.text(), "installed\n");
    assert!(
        eventually(Duration::from_secs(10), || navigator.get("/up").text()
            == "updated"),
        "log:\n{}",
        navigator.logs.text()
    );
    assert!(
        navigator
            .logs
            .wait_for("cause=cgi:/cgi/update", Duration::from_secs(10))
            .is_some()
    );
}
