//! The connection workers and the pool of upstream connections: which
//! upstream connection each request comes on, as the demo tenant reports
//! it.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use support::{NAVIGATOR, Navigator};

/// Returns a config with one demo tenant, whose JSON report names the
/// upstream connection a request came on (`peer`, navigator's end of it).
fn tenant_config() -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
pid_file = "@DIR@/navigator.pid"

[applications]
health_check = "/up"

[applications.framework]
command = "@NAVIGATOR@"
args = ["demo-tenant", "-p", "${{port}}"]

[applications.pools]
start_port = {}

[[applications.tenants]]
path = "/t/"
"#,
        support::tenant_port_base()
    )
}

/// Returns the upstream connection that carried a request for `/t/page`.
fn peer_of(response: &support::HttpResponse) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["peer"]
        .as_str()
        .expect("peer in the report")
        .to_string()
}

fn start_with_workers(workers: &str) -> Navigator {
    let dir = tempfile::tempdir().unwrap();
    Navigator::start_in(dir, &tenant_config(), &[("NAVIGATOR_WORKERS", workers)])
}

/// Counts navigator's threads that serve connections.
fn worker_threads(navigator: &Navigator) -> usize {
    let tasks = format!("/proc/{}/task", navigator.child.id());
    std::fs::read_dir(tasks)
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("navigator-worke"))
        .count()
}

/// Waits until `expected` worker threads carry their names. A new thread
/// names itself once it runs, which on a busy machine can come after
/// navigator already listens.
fn wait_for_worker_threads(navigator: &Navigator, expected: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let count = worker_threads(navigator);
        if count == expected || std::time::Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

const PAGE: &str = "/t/page?format=json";

#[test]
fn each_worker_keeps_its_own_upstream_connection() {
    let navigator = start_with_workers("2");
    assert_eq!(wait_for_worker_threads(&navigator, 2), 2);
    // Every request comes on a client connection of its own, and client
    // connections go to the two workers in turn. So each worker makes one
    // upstream connection and reuses it.
    let peers: BTreeSet<String> = (0..8).map(|_| peer_of(&navigator.get(PAGE))).collect();
    assert_eq!(peers.len(), 2, "{peers:?}");
}

#[test]
fn zero_workers_serve_on_the_main_runtime() {
    let navigator = start_with_workers("0");
    assert_eq!(worker_threads(&navigator), 0);
    let peers: BTreeSet<String> = (0..4).map(|_| peer_of(&navigator.get(PAGE))).collect();
    assert_eq!(peers.len(), 1, "{peers:?}");
}

#[test]
fn malformed_thread_counts_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("navigator.toml");
    support::write_config(&config, &tenant_config(), dir.path());
    for (variable, value) in [
        ("NAVIGATOR_WORKERS", "many"),
        ("NAVIGATOR_WORKERS", "-1"),
        ("NAVIGATOR_WORKERS", "100000"),
        ("TOKIO_WORKER_THREADS", ""),
        ("TOKIO_WORKER_THREADS", "0"),
    ] {
        let output = Command::new(NAVIGATOR)
            .arg("--config")
            .arg(&config)
            .env(variable, value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{variable}={value}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("{variable}=\"{value}\"")),
            "{variable}={value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
