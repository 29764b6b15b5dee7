//! End to end with real Puma: three events of a Showcase-shaped config
//! run side by side as Puma processes of the Rack app in examples/rack,
//! each writing to its own SQLite database.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Navigator, eventually, process_alive, skip_without, tenant_port_base};

const EVENTS: [(&str, &str); 3] = [
    ("2025/boston/april", "2025-boston-april"),
    ("2025/raleigh/disney", "2025-raleigh-disney"),
    ("2024/raleigh", "2024-raleigh"),
];

fn puma_config() -> String {
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rack");
    let mut config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
root_path = "/showcase"
pid_file = "@DIR@/navigator.pid"

[applications]
health_check = "/up"
startup_timeout = "60s"

[applications.framework]
command = "bin/server"
args = ["-p", "${{port}}"]
app_directory = "{app}"

[applications.env]
RAILS_ENV = "test"
RAILS_MAX_THREADS = "2"
RAILS_RELATIVE_URL_ROOT = "/showcase"
RAILS_APP_SCOPE = "${{scope}}"
DATABASE_URL = "sqlite3://@DIR@/db/${{database}}.sqlite3"
PIDFILE = "@DIR@/pids/${{database}}.pid"

[applications.pools]
max_size = 4
start_port = {port}
"#,
        port = tenant_port_base()
    );
    for (scope, database) in EVENTS {
        config.push_str(&format!(
            "\n[[applications.tenants]]\npath = \"/showcase/{scope}/\"\nvar = {{ database = \"{database}\", scope = \"{scope}\" }}\nenv = {{ RAILS_APP_OWNER = \"{scope}\" }}\n"
        ));
    }
    config
}

fn sqlite_count(database: &std::path::Path) -> u64 {
    let output = Command::new("sqlite3")
        .arg(database)
        .arg("SELECT count(*) FROM visits")
        .output()
        .expect("run sqlite3");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn three_puma_events_each_with_own_database() {
    if skip_without("ruby") || skip_without("puma") || skip_without("sqlite3") {
        return;
    }
    let mut navigator = Navigator::start(&puma_config());

    // First requests to all three events at once: three cold starts.
    let first: Vec<serde_json::Value> = std::thread::scope(|threads| {
        let handles: Vec<_> = EVENTS
            .iter()
            .map(|(scope, _)| {
                let navigator = &navigator;
                threads.spawn(move || {
                    let response = navigator.request(
                        "GET",
                        &format!("/showcase/{scope}/heats"),
                        &[("Accept", "application/json")],
                        b"",
                    );
                    assert_eq!(
                        response.status,
                        200,
                        "{scope}: {}\n{}",
                        response.text(),
                        navigator.logs.text()
                    );
                    response.json()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut pids = Vec::new();
    for ((scope, database), body) in EVENTS.iter().zip(&first) {
        assert_eq!(body["scope"], *scope);
        let expected = navigator.path(&format!("db/{database}.sqlite3"));
        assert_eq!(body["database"], expected.display().to_string());
        pids.push(body["pid"].as_u64().unwrap() as i32);
    }
    let mut distinct = pids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "one Puma process per event: {pids:?}");

    // More visits to one event only; the other databases stay as they were.
    for _ in 0..4 {
        let response = navigator.request(
            "POST",
            "/showcase/2025/boston/april/entries",
            &[],
            b"dancer=ann",
        );
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert_eq!(
        sqlite_count(&navigator.path("db/2025-boston-april.sqlite3")),
        5
    );
    assert_eq!(
        sqlite_count(&navigator.path("db/2025-raleigh-disney.sqlite3")),
        1
    );
    assert_eq!(sqlite_count(&navigator.path("db/2024-raleigh.sqlite3")), 1);
    assert!(
        navigator.logs.count("[2025/boston/april.stdout]") > 0,
        "Puma output is captured"
    );

    assert_eq!(navigator.stop(), Some(0));
    for pid in pids {
        assert!(
            eventually(Duration::from_secs(10), || !process_alive(pid)),
            "Puma {pid} left running"
        );
    }
    for (_, database) in EVENTS {
        assert!(
            !navigator.path(&format!("pids/{database}.pid")).exists(),
            "{database} pid file removed"
        );
    }
}
