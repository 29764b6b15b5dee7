//! Process-pool controls on a real navigator with demo tenants:
//! prewarming, the request queue of each process, and recycling after
//! `max_requests`, above `recycle_memory` and on an operator's restart.
//! State is observed through the control API (`/_navigator/tenants.json`)
//! and the log rather than by sleeping.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{
    Navigator, Showcase, event_scope, eventually, http_request, parse_field, process_alive,
    start_showcase, write_config,
};

fn json_get(navigator: &Navigator, path: &str) -> serde_json::Value {
    let response = navigator.request("GET", path, &[("Accept", "application/json")], b"");
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json()
}

fn pid_of(body: &serde_json::Value) -> i32 {
    body["pid"].as_u64().expect("pid in demo JSON") as i32
}

/// Returns the first log line that contains every one of `needles`,
/// waiting up to 20 s for it.
fn wait_for_line(navigator: &Navigator, needles: &[&str]) -> String {
    let mut found = None;
    eventually(Duration::from_secs(20), || {
        found = navigator
            .logs
            .text()
            .lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
            .map(str::to_string);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no log line with {needles:?}; log:\n{}",
            navigator.logs.text()
        )
    })
}

fn count_lines(navigator: &Navigator, needles: &[&str]) -> usize {
    navigator
        .logs
        .text()
        .lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .count()
}

/// Returns the entry of tenant `name` in the control API's tenant list.
fn tenant_status(navigator: &Navigator, name: &str) -> serde_json::Value {
    let list = json_get(navigator, "/_navigator/tenants.json");
    list["tenants"]
        .as_array()
        .expect("tenants array")
        .iter()
        .find(|tenant| tenant["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("tenant {name} not listed: {list}"))
}

fn counter(navigator: &Navigator, name: &str) -> u64 {
    json_get(navigator, "/_navigator/tenants.json")["counters"][name]
        .as_u64()
        .expect("counter")
}

/// Rewrites the config and waits until the reload was applied.
fn reload_with(navigator: &Navigator, config: &str) {
    write_config(&navigator.config, config, navigator.dir.path());
    let before = navigator.logs.count("reload applied");
    navigator.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(20), || navigator
            .logs
            .count("reload applied")
            > before),
        "reload not applied; log:\n{}",
        navigator.logs.text()
    );
}

fn start_log_pid(line: &str) -> i32 {
    parse_field(line, "pid")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"))
}

#[test]
fn prewarmed_tenant_serves_first_request() {
    let scope = event_scope(0);
    let navigator = start_showcase(&Showcase {
        pools: format!("prewarm = [\"{scope}\"]"),
        ..Showcase::default()
    });

    // No request has been sent yet.
    let started = wait_for_line(
        &navigator,
        &["tenant process started", &format!("tenant={scope} ")],
    );
    wait_for_line(
        &navigator,
        &["tenant prewarmed", &format!("tenant={scope} ")],
    );
    let body = json_get(&navigator, &format!("/showcase/{scope}/"));
    assert_eq!(pid_of(&body), start_log_pid(&started));
    assert_eq!(navigator.logs.count("tenant process started"), 1);
    assert_eq!(tenant_status(&navigator, &scope)["prewarm"], true);
}

#[test]
fn prewarmed_tenant_survives_idle_timeout() {
    let warm = event_scope(0);
    let cold = event_scope(1);
    let navigator = start_showcase(&Showcase {
        pools: format!("timeout = \"1s\"\nprewarm = [\"{warm}\"]"),
        ..Showcase::default()
    });
    let started = wait_for_line(
        &navigator,
        &["tenant prewarmed", &format!("tenant={warm} ")],
    );
    let warm_pid = start_log_pid(&started);

    // The cold tenant starts later than the prewarmed one, so it reaches
    // the idle timeout later. Once it is stopped, the prewarmed one would
    // have been stopped already if it were not exempt.
    let cold_pid = pid_of(&json_get(&navigator, &format!("/showcase/{cold}/")));
    wait_for_line(
        &navigator,
        &["stopping idle tenant", &format!("tenant={cold} ")],
    );
    assert!(eventually(Duration::from_secs(15), || !process_alive(
        cold_pid
    )));

    assert!(process_alive(warm_pid), "the prewarmed tenant was stopped");
    assert_eq!(
        count_lines(
            &navigator,
            &["stopping idle tenant", &format!("tenant={warm} ")]
        ),
        0
    );
    assert_eq!(
        pid_of(&json_get(&navigator, &format!("/showcase/{warm}/"))),
        warm_pid
    );
}

#[test]
fn reload_prewarms_newly_marked_tenants() {
    let by_pattern = event_scope(2);
    let base = Showcase {
        events: 4,
        ..Showcase::default()
    };
    let dir = tempfile::tempdir().unwrap();
    support::write_public_tree(dir.path());
    let navigator = Navigator::start_in(dir, &base.toml(), &[]);
    assert_eq!(navigator.logs.count("tenant process started"), 0);

    // One tenant marked by a pools.prewarm glob, one by its own key.
    let marked = Showcase {
        pools: "prewarm = [\"2025/boston/medal-*\"]".into(),
        extra: "\n[[applications.tenants]]\npath = \"/showcase/warm/\"\nvar = { database = \"warm\" }\nprewarm = true\n"
            .into(),
        ..base
    };
    reload_with(&navigator, &marked.toml());

    let by_glob = wait_for_line(
        &navigator,
        &["tenant prewarmed", &format!("tenant={by_pattern} ")],
    );
    let by_key = wait_for_line(&navigator, &["tenant prewarmed", "tenant=warm "]);
    assert_eq!(navigator.logs.count("tenant process started"), 2);
    assert_eq!(
        pid_of(&json_get(&navigator, &format!("/showcase/{by_pattern}/"))),
        start_log_pid(&by_glob)
    );
    assert_eq!(
        pid_of(&json_get(&navigator, "/showcase/warm/")),
        start_log_pid(&by_key)
    );
}

#[test]
fn prewarm_capped_at_max_size() {
    let navigator = start_showcase(&Showcase {
        pools: "max_size = 2\nprewarm = [\"2025/*/*\", \"2052/*\"]".into(),
        ..Showcase::default()
    });
    wait_for_line(
        &navigator,
        &["more tenants are marked prewarm than pools.max_size allows"],
    );
    wait_for_line(&navigator, &["matches no tenant", "2052/*"]);
    let prewarmed = || {
        let list = json_get(&navigator, "/_navigator/tenants.json");
        list["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|tenant| tenant["prewarm"] == true)
            .map(|tenant| {
                (
                    tenant["name"].as_str().unwrap().to_string(),
                    tenant["state"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(20), || prewarmed()
            .iter()
            .all(|(_, state)| state == "running")),
        "{:?}",
        prewarmed()
    );
    let names: Vec<String> = prewarmed().into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        vec![event_scope(0), event_scope(1)],
        "the first two in config order"
    );
    assert_eq!(navigator.logs.count("tenant process started"), 2);
}

#[test]
fn eviction_skips_prewarmed_tenant() {
    let warm = event_scope(0);
    let navigator = start_showcase(&Showcase {
        pools: format!("max_size = 2\nprewarm = [\"{warm}\"]"),
        ..Showcase::default()
    });
    let warm_pid = start_log_pid(&wait_for_line(
        &navigator,
        &["tenant prewarmed", &format!("tenant={warm} ")],
    ));
    let first = pid_of(&json_get(
        &navigator,
        &format!("/showcase/{}/", event_scope(1)),
    ));
    let second = pid_of(&json_get(
        &navigator,
        &format!("/showcase/{}/", event_scope(2)),
    ));

    assert!(
        eventually(Duration::from_secs(10), || !process_alive(first)),
        "the idle tenant that is not prewarmed was evicted"
    );
    assert!(process_alive(warm_pid), "the prewarmed tenant was evicted");
    assert!(process_alive(second));
}

/// Sends `count` slow requests to `path` from threads; returns their
/// handles, each yielding the response status.
fn slow_requests(
    address: SocketAddr,
    path: &str,
    count: usize,
) -> Vec<std::thread::JoinHandle<u16>> {
    (0..count)
        .map(|_| {
            let path = path.to_string();
            std::thread::spawn(move || http_request(address, "GET", &path, &[], b"").status)
        })
        .collect()
}

#[test]
fn queue_full_rejects_fifth_request() {
    let scope = event_scope(3);
    let navigator = start_showcase(&Showcase {
        pools: "max_concurrency = 2\nmax_queue = 2\nqueue_timeout = \"1m\"".into(),
        ..Showcase::default()
    });
    json_get(&navigator, &format!("/showcase/{scope}/"));

    let held = slow_requests(
        navigator.address,
        &format!("/showcase/{scope}/slow?ms=5000"),
        4,
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let status = tenant_status(&navigator, &scope);
            status["in_flight"] == 2 && status["queued"] == 2
        }),
        "not 2 in flight and 2 queued: {}",
        tenant_status(&navigator, &scope)
    );

    let fifth = navigator.get(&format!("/showcase/{scope}/"));
    assert_eq!(fifth.status, 503);
    assert_eq!(fifth.header("retry-after"), Some("5"));
    assert!(
        fifth.text().contains("maintenance page"),
        "{}",
        fifth.text()
    );

    let statuses: Vec<u16> = held.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(statuses, vec![200; 4]);
    assert_eq!(counter(&navigator, "queue_rejections"), 1);
    assert_eq!(counter(&navigator, "queue_timeouts"), 0);
    wait_for_line(
        &navigator,
        &["request queue full", &format!("tenant={scope} ")],
    );
}

#[test]
fn queue_wait_times_out() {
    let scope = event_scope(4);
    let navigator = start_showcase(&Showcase {
        pools: "max_concurrency = 1\nmax_queue = 5\nqueue_timeout = \"300ms\"".into(),
        ..Showcase::default()
    });
    json_get(&navigator, &format!("/showcase/{scope}/"));

    let held = slow_requests(
        navigator.address,
        &format!("/showcase/{scope}/slow?ms=5000"),
        1,
    );
    assert!(eventually(Duration::from_secs(10), || tenant_status(
        &navigator, &scope
    )["in_flight"]
        == 1));

    let waited = navigator.get(&format!("/showcase/{scope}/"));
    assert_eq!(waited.status, 503);
    assert!(waited.header("retry-after").is_some());
    assert_eq!(counter(&navigator, "queue_timeouts"), 1);
    for handle in held {
        assert_eq!(handle.join().unwrap(), 200);
    }
}

/// Requests `path` from `threads` threads until `done` holds for the
/// pids seen so far (or 60 s pass); returns every status and pid.
fn hammer(
    navigator: &Navigator,
    path: &str,
    threads: usize,
    done: impl Fn(&BTreeSet<i32>) -> bool + Sync,
) -> (Vec<u16>, BTreeSet<i32>) {
    let stop = AtomicBool::new(false);
    let statuses = Mutex::new(Vec::new());
    let pids = Mutex::new(BTreeSet::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let response =
                        navigator.request("GET", path, &[("Accept", "application/json")], b"");
                    if response.status == 200 {
                        pids.lock().unwrap().insert(pid_of(&response.json()));
                    }
                    statuses.lock().unwrap().push(response.status);
                }
            });
        }
        eventually(Duration::from_secs(60), || done(&pids.lock().unwrap()));
        stop.store(true, Ordering::Relaxed);
    });
    (statuses.into_inner().unwrap(), pids.into_inner().unwrap())
}

fn assert_all_ok(statuses: &[u16], navigator: &Navigator) {
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}; log:\n{}",
        failed.len(),
        statuses.len(),
        navigator.logs.text()
    );
}

#[test]
fn max_requests_recycles_with_shared_pidfile() {
    let scope = event_scope(5);
    let navigator = start_showcase(&Showcase {
        pools: "max_requests = 25".into(),
        ..Showcase::default()
    });
    let (statuses, pids) = hammer(&navigator, &format!("/showcase/{scope}/"), 4, |pids| {
        pids.len() >= 3
    });
    assert_all_ok(&statuses, &navigator);
    assert!(pids.len() >= 3, "pids {pids:?}");
    assert!(count_lines(&navigator, &["max_requests reached after 25 requests"]) >= 2);
    assert!(counter(&navigator, "recycles") >= 2);
    for old in pids.iter().take(pids.len() - 1) {
        assert!(
            eventually(Duration::from_secs(10), || !process_alive(*old)),
            "recycled process {old} still runs"
        );
    }
}

#[test]
fn max_requests_recycles_without_pidfile() {
    let extra = "\n[[applications.tenants]]\npath = \"/showcase/solo/\"\nvar = { database = \"solo\" }\nenv = { PIDFILE = \"\" }\nmax_requests = 25\n";
    let navigator = start_showcase(&Showcase {
        extra: extra.into(),
        ..Showcase::default()
    });
    let (statuses, pids) = hammer(&navigator, "/showcase/solo/", 4, |pids| pids.len() >= 3);
    assert_all_ok(&statuses, &navigator);
    assert!(pids.len() >= 3, "pids {pids:?}");
    assert!(count_lines(&navigator, &["max_requests reached", "tenant=solo "]) >= 2);
}

#[test]
fn memory_bound_recycles_without_failures() {
    let scope = event_scope(6);
    let navigator = start_showcase(&Showcase {
        pools: "recycle_memory = \"150M\"\nmemory_check_interval = \"100ms\"".into(),
        ..Showcase::default()
    });
    let first = pid_of(&json_get(&navigator, &format!("/showcase/{scope}/")));

    let allocation = {
        let address = navigator.address;
        let scope = scope.clone();
        std::thread::spawn(move || {
            http_request(
                address,
                "GET",
                &format!("/showcase/{scope}/allocate?mb=200"),
                &[],
                b"",
            )
            .status
        })
    };
    let (statuses, pids) = hammer(&navigator, &format!("/showcase/{scope}/"), 3, |pids| {
        pids.iter().any(|pid| *pid != first)
    });
    assert_eq!(
        allocation.join().unwrap(),
        200,
        "the allocation request failed"
    );
    assert_all_ok(&statuses, &navigator);
    assert!(pids.iter().any(|pid| *pid != first), "pids {pids:?}");
    wait_for_line(
        &navigator,
        &["above recycle_memory 150 MiB", &format!("tenant={scope} ")],
    );
    assert!(eventually(Duration::from_secs(10), || !process_alive(
        first
    )));
}

#[test]
fn request_waiting_on_drain_gets_maintenance_page() {
    let scope = event_scope(7);
    let navigator = start_showcase(&Showcase {
        startup_timeout: "500ms",
        ..Showcase::default()
    });
    // The first start may take longer than the short startup_timeout on
    // a busy machine. The start goes on, so repeat until it returns 200.
    let path = format!("/showcase/{scope}/");
    let mut first = None;
    eventually(Duration::from_secs(20), || {
        let response = navigator.request("GET", &path, &[("Accept", "application/json")], b"");
        if response.status == 200 {
            first = Some(pid_of(&response.json()));
        }
        first.is_some()
    });
    let old = first.expect("the tenant never answered");

    let held = slow_requests(
        navigator.address,
        &format!("/showcase/{scope}/slow?ms=4000"),
        1,
    );
    assert!(eventually(Duration::from_secs(10), || tenant_status(
        &navigator, &scope
    )["in_flight"]
        == 1));

    // The old process shares its PIDFILE with the replacement, so the
    // replacement waits until the slow request is done.
    let restart = {
        let address = navigator.address;
        let scope = scope.clone();
        std::thread::spawn(move || {
            http_request(
                address,
                "POST",
                &format!("/_navigator/tenants/{scope}/restart"),
                &[],
                b"",
            )
        })
    };
    assert!(eventually(Duration::from_secs(10), || tenant_status(
        &navigator, &scope
    )["state"]
        == "stopping"));

    let waiting = navigator.get(&format!("/showcase/{scope}/"));
    assert_eq!(waiting.status, 503, "{}", waiting.text());
    assert!(waiting.text().contains("maintenance page"));
    assert!(waiting.header("retry-after").is_some());

    for handle in held {
        assert_eq!(
            handle.join().unwrap(),
            200,
            "the request in flight finished"
        );
    }
    let restarted = restart.join().unwrap();
    assert_eq!(restarted.status, 200, "{}", restarted.text());
    let body = restarted.json();
    assert_eq!(body["old_pid"], old);
    let new = body["pid"].as_i64().unwrap() as i32;
    assert_ne!(new, old);
    assert_eq!(
        pid_of(&json_get(&navigator, &format!("/showcase/{scope}/"))),
        new
    );
    assert!(!process_alive(old));
}

#[test]
fn stop_during_recycle_keeps_tenant_stopped() {
    let scope = event_scope(8);
    let navigator = start_showcase(&Showcase {
        pools: "max_requests = 2".into(),
        ..Showcase::default()
    });
    let old = pid_of(&json_get(&navigator, &format!("/showcase/{scope}/")));

    // The second request reaches max_requests; the replacement waits for
    // the shared PIDFILE until this slow request is done.
    let held = slow_requests(
        navigator.address,
        &format!("/showcase/{scope}/slow?ms=2000"),
        1,
    );
    assert!(eventually(Duration::from_secs(10), || tenant_status(
        &navigator, &scope
    )["state"]
        == "stopping"));
    let stop = navigator.request(
        "POST",
        &format!("/_navigator/tenants/{scope}/stop"),
        &[],
        b"",
    );
    assert_eq!(stop.status, 200, "{}", stop.text());
    assert_eq!(stop.json()["stopped_pid"], old);
    for handle in held {
        assert_eq!(handle.join().unwrap(), 200);
    }

    // A replacement would start within milliseconds of the exit.
    let started_again = eventually(Duration::from_secs(1), || {
        tenant_status(&navigator, &scope)["state"] != "stopped"
    });
    assert!(!started_again, "the stopped tenant was started again");
    assert_eq!(navigator.logs.count("tenant process started"), 1);
}

#[test]
fn check_warns_about_prewarm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("navigator.toml");
    let showcase = Showcase {
        events: 4,
        pools: "max_size = 2\nprewarm = [\"2025/*/*\", \"2052/*/*\"]".into(),
        ..Showcase::default()
    };
    write_config(&config, &showcase.toml(), dir.path());
    let output = std::process::Command::new(support::NAVIGATOR)
        .arg("check")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: applications.pools.prewarm: \"2052/*/*\" matches no tenant"),
        "{stdout}"
    );
    assert!(
        stdout.contains("4 tenants are marked prewarm, but applications.pools.max_size is 2"),
        "{stdout}"
    );
}
