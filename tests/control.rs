//! The control API and the `navigator tenants` / `navigator tenant ...`
//! commands against a running navigator.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{
    NAVIGATOR, Navigator, Showcase, event_scope, eventually, process_alive, start_showcase,
    write_public_tree,
};

/// Runs navigator with `args` in `dir`; returns exit code, stdout, stderr.
fn run(args: &[&str], dir: &Path) -> (i32, String, String) {
    let output = Command::new(NAVIGATOR)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn url(navigator: &Navigator) -> String {
    format!("http://{}/_navigator/", navigator.address)
}

/// Returns the pid in `... (pid N)` or `... -> N)` at the end of `line`.
fn last_pid(line: &str) -> i32 {
    let digits: String = line
        .trim_end()
        .trim_end_matches(')')
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no pid at the end of {line:?}"))
}

fn demo_pid(navigator: &Navigator, path: &str) -> i32 {
    let response = navigator.request("GET", path, &[("Accept", "application/json")], b"");
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["pid"].as_u64().unwrap() as i32
}

#[test]
fn cli_prewarms_restarts_and_stops_tenant() {
    let navigator = start_showcase(&Showcase {
        events: 3,
        ..Showcase::default()
    });
    let dir = navigator.dir.path().to_path_buf();
    let url = url(&navigator);
    let name = event_scope(1);

    let (code, stdout, stderr) = run(&["tenants", "--url", &url], &dir);
    assert_eq!(code, 0, "{stderr}");
    let header = stdout.lines().next().unwrap_or("");
    assert!(header.starts_with("NAME"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with(&name))
        .expect("tenant row");
    assert!(row.contains("stopped"), "{row}");

    let (code, stdout, stderr) = run(&["tenant", "prewarm", &name, "--url", &url], &dir);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("prewarmed, running"), "{stdout}");
    let prewarmed = last_pid(stdout.trim());
    assert!(process_alive(prewarmed));
    let (_, listing, _) = run(&["tenants", "--url", &url], &dir);
    let row = listing.lines().find(|l| l.starts_with(&name)).unwrap();
    assert!(row.contains("running"), "{row}");
    assert!(row.ends_with("yes"), "{row}");

    let (code, stdout, stderr) = run(&["tenant", "restart", &name, "--url", &url], &dir);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("restarted (pid {prewarmed} -> ")),
        "{stdout}"
    );
    let restarted = last_pid(stdout.trim());
    assert_ne!(restarted, prewarmed);
    assert!(eventually(Duration::from_secs(10), || !process_alive(
        prewarmed
    )));
    assert_eq!(
        demo_pid(&navigator, &format!("/showcase/{name}/")),
        restarted
    );

    let (code, stdout, stderr) = run(&["tenant", "stop", &name, "--url", &url], &dir);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), format!("{name}: stopped (pid {restarted})"));
    assert!(
        !process_alive(restarted),
        "stop returns once the process exited"
    );

    let (code, stdout, _) = run(&["tenant", "stop", &name, "--url", &url], &dir);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), format!("{name}: was not running"));

    let (code, stdout, _) = run(&["tenants", "--json", "--url", &url], &dir);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let entry = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name.as_str())
        .unwrap();
    assert_eq!(entry["state"], "stopped");
    assert_eq!(entry["prewarm"], false, "a stop removes the prewarm mark");
    assert!(list["counters"]["recycles"].as_u64() >= Some(1));
}

#[test]
fn cli_unknown_tenant_fails() {
    let navigator = start_showcase(&Showcase {
        events: 1,
        ..Showcase::default()
    });
    let dir = navigator.dir.path().to_path_buf();
    let (code, _, stderr) = run(
        &[
            "tenant",
            "restart",
            "2099/nowhere",
            "--url",
            &url(&navigator),
        ],
        &dir,
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("404"), "{stderr}");
    assert!(
        stderr.contains("no tenant named \"2099/nowhere\""),
        "{stderr}"
    );
}

#[test]
fn cli_without_server_fails() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there.
    let (code, _, stderr) = run(&["tenants", "--url", "http://127.0.0.1:1/"], dir.path());
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot connect"), "{stderr}");

    let (code, _, stderr) = run(&["tenants"], dir.path());
    assert_eq!(code, 2, "no config in the working directory");
    assert!(stderr.contains("config/navigator.toml"), "{stderr}");
}

#[test]
fn cli_finds_server_from_config() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = Showcase {
        events: 2,
        ..Showcase::default()
    }
    .toml()
    .replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let navigator = Navigator::start_in(dir, &config, &[]);
    let dir = navigator.dir.path().to_path_buf();

    // The default config path is config/navigator.toml.
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::copy(&navigator.config, dir.join("config/navigator.toml")).unwrap();
    let (code, stdout, stderr) = run(&["tenants"], &dir);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&event_scope(1)), "{stdout}");

    let config = navigator.config.to_string_lossy().into_owned();
    let (code, stdout, stderr) = run(
        &["tenant", "prewarm", &event_scope(0), "--config", &config],
        &std::env::temp_dir(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("prewarmed"), "{stdout}");
}

#[test]
fn control_api_rejects_wrong_methods_and_routes() {
    let navigator = start_showcase(&Showcase {
        events: 1,
        ..Showcase::default()
    });
    let post_list = navigator.request("POST", "/_navigator/tenants.json", &[], b"");
    assert_eq!(post_list.status, 405);
    assert_eq!(post_list.header("allow"), Some("GET, HEAD"));

    let get_action = navigator.get(&format!("/_navigator/tenants/{}/restart", event_scope(0)));
    assert_eq!(get_action.status, 405);
    assert_eq!(get_action.header("allow"), Some("POST"));

    let unknown_action = navigator.request(
        "POST",
        &format!("/_navigator/tenants/{}/explode", event_scope(0)),
        &[],
        b"",
    );
    assert_eq!(unknown_action.status, 404);
    assert!(
        unknown_action.json()["error"]
            .as_str()
            .unwrap()
            .contains("unknown action")
    );

    assert_eq!(navigator.get("/_navigator/nothing-here").status, 404);
    assert_eq!(
        navigator.logs.count("tenant process started"),
        0,
        "no control request started a tenant"
    );
}

#[test]
fn control_api_works_in_maintenance_mode() {
    let navigator = start_showcase(&Showcase {
        events: 1,
        maintenance: true,
        ..Showcase::default()
    });
    assert_eq!(
        navigator
            .get(&format!("/showcase/{}/", event_scope(0)))
            .status,
        503
    );
    let list = navigator.get("/_navigator/tenants.json");
    assert_eq!(list.status, 200);
    assert_eq!(list.header("content-type"), Some("application/json"));
    assert_eq!(list.json()["tenants"][1]["name"], event_scope(0));
}

#[test]
fn web_page_posts_rejected() {
    // A web page open in a browser on this machine can POST to localhost,
    // and the browser adds `Origin` to that request.
    let navigator = start_showcase(&Showcase {
        events: 1,
        ..Showcase::default()
    });
    let origin = [("Origin", "http://attacker.example")];
    let prewarm = navigator.request(
        "POST",
        &format!("/_navigator/tenants/{}/prewarm", event_scope(0)),
        &origin,
        b"",
    );
    assert_eq!(prewarm.status, 403, "{}", prewarm.text());
    let broadcast = navigator.request(
        "POST",
        "/_broadcast",
        &[
            ("Origin", "http://attacker.example"),
            ("Content-Type", "text/plain"),
        ],
        br#"{"stream":"s","data":"<script>"}"#,
    );
    assert_eq!(broadcast.status, 403, "{}", broadcast.text());
    assert_eq!(
        navigator.logs.count("tenant process started"),
        0,
        "no web page started a tenant"
    );

    let list = navigator.request("GET", "/_navigator/tenants.json", &[], b"");
    assert_eq!(list.status, 200);
    let broadcast = navigator.request("POST", "/_broadcast", &[], br#"{"stream":"s"}"#);
    assert_eq!(broadcast.status, 200, "{}", broadcast.text());
}
