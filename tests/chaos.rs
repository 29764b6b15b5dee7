//! Chaos under steady load: while client threads keep several tenants
//! busy, other tenants crash, hang, answer slowly, cut responses off or
//! stall them, flood stdout or fail at boot. The healthy tenants must keep
//! answering with bounded latency, every request must end with a
//! response, memory must stay bounded, and no child process may outlive
//! navigator.
//!
//! This is the short version that CI runs (about 20 s of load); the soak
//! script runs mixed traffic for an hour.

mod support;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use navigator::demo::TRUNCATE_SENT_BYTES;
use support::faults::{Outcome, children_of, leftovers, quantile, rss_kib, timed_request};
use support::{Showcase, event_scope, eventually, start_showcase};

/// How long the client threads keep up the load.
const LOAD: Duration = Duration::from_secs(20);

/// The longest a client waits for any request. A request without a
/// response head by then counts as unanswered. It exceeds every bound
/// navigator itself applies below (startup_timeout 3 s, response_timeout
/// 2 s) several times over.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// The 99th percentile of healthy requests must stay below this. Healthy
/// requests take a few milliseconds; the bound is generous because CI runs
/// this on 2 shared cores next to other test processes, and a wall-clock
/// assertion must not be flaky. Without isolation between tenants (a
/// blocked accept loop, a tenant start holding a lock, a stdout flood
/// stalling the runtime) requests would wait seconds or time out.
const HEALTHY_P99_BOUND: Duration = Duration::from_secs(2);

/// Growth of navigator's resident memory during the load, over its size
/// after warm-up, beyond which memory counts as unbounded. Each stdout
/// flood pushes 5000 lines through navigator's log pipeline, and each
/// unbounded queue would keep them.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

/// Lines per `/flood` request.
const FLOOD_LINES: u32 = 5000;

/// The event tenants (indexes into `event_scope`) and their roles.
const HEALTHY: [usize; 3] = [0, 1, 2];
const CRASHING: usize = 3;
const MISBEHAVING: usize = 4;
const BROKEN_PATH: &str = "/showcase/2025/broken/";

/// A tenant whose process exits during boot, every time.
const BROKEN_TENANT: &str = r#"
[[applications.tenants]]
path = "/showcase/2025/broken/"
var = { database = "2025-broken" }
env = { DEMO_EXIT_AT_BOOT = "2" }
"#;

/// One finished request of one client thread.
#[derive(Debug)]
struct Sample {
    role: &'static str,
    /// Shown in failure messages, through `Debug`.
    #[allow(dead_code)]
    path: String,
    outcome: Outcome,
}

fn tenant_path(index: usize, action: &str) -> String {
    format!("/showcase/{}/{action}", event_scope(index))
}

#[test]
fn chaos_spares_healthy_tenants() {
    let showcase = Showcase {
        events: 6,
        startup_timeout: "3s",
        applications: "response_timeout = \"2s\"".into(),
        extra: BROKEN_TENANT.into(),
        ..Showcase::default()
    };
    let mut navigator = start_showcase(&showcase);
    let address = navigator.address;
    let pid = navigator.child.id();

    // Every tenant but the broken one runs before the clock starts.
    for index in HEALTHY.into_iter().chain([CRASHING, MISBEHAVING]) {
        let path = tenant_path(index, "");
        assert!(
            eventually(Duration::from_secs(30), || {
                timed_request(address, "GET", &path, b"", CLIENT_TIMEOUT).status == Some(200)
            }),
            "tenant {path} did not start; log:\n{}",
            navigator.logs.text()
        );
    }
    let baseline_rss = rss_kib(pid).expect("navigator's VmRSS");

    let samples = Mutex::new(Vec::<Sample>::new());
    // The children running now are known before the load starts: the
    // first `/crash` may end one before the sampler below first looks.
    let children = Mutex::new(
        children_of(pid)
            .iter()
            .map(|child| child.pid)
            .collect::<BTreeSet<u32>>(),
    );
    let max_rss = AtomicU64::new(baseline_rss);
    let load_over = AtomicBool::new(false);
    let started = Instant::now();

    std::thread::scope(|scope| {
        // Samples memory and records every child navigator starts, so the
        // orphan check below knows whom to look for.
        scope.spawn(|| {
            while !load_over.load(Ordering::Acquire) {
                if let Some(rss) = rss_kib(pid) {
                    max_rss.fetch_max(rss, Ordering::Relaxed);
                }
                let mut known = children.lock().unwrap();
                known.extend(children_of(pid).iter().map(|child| child.pid));
                drop(known);
                std::thread::sleep(Duration::from_millis(100));
            }
        });

        let mut clients = Vec::new();
        let mut client =
            |role: &'static str, paths: Vec<(String, &'static str, Vec<u8>)>, pause: Duration| {
                let samples = &samples;
                clients.push(scope.spawn(move || {
                    let mut turn = 0;
                    while started.elapsed() < LOAD {
                        let (path, method, body) = &paths[turn % paths.len()];
                        turn += 1;
                        let outcome = timed_request(address, method, path, body, CLIENT_TIMEOUT);
                        samples.lock().unwrap().push(Sample {
                            role,
                            path: path.clone(),
                            outcome,
                        });
                        std::thread::sleep(pause);
                    }
                }));
            };

        // Healthy traffic: three tenants, a static file and the health
        // check, from three threads without pauses.
        for (thread, &own) in HEALTHY.iter().enumerate() {
            let mut paths: Vec<(String, &'static str, Vec<u8>)> = HEALTHY
                .iter()
                .map(|&index| (tenant_path(index, "heats?format=json"), "GET", Vec::new()))
                .collect();
            paths.push((tenant_path(own, "entries"), "POST", b"name=x".to_vec()));
            paths.push(("/showcase/assets/app-1234.css".into(), "GET", Vec::new()));
            paths.push(("/up".into(), "GET", Vec::new()));
            paths.rotate_left(thread);
            client("healthy", paths, Duration::ZERO);
        }

        // Faults, each from its own thread.
        let get = |path: String| vec![(path, "GET", Vec::new())];
        let pause = Duration::from_millis(200);
        client(
            "crash",
            get(tenant_path(CRASHING, "crash")),
            Duration::from_millis(500),
        );
        client("hang", get(tenant_path(MISBEHAVING, "hang")), pause);
        client("slow", get(tenant_path(MISBEHAVING, "slow?ms=1500")), pause);
        client("truncate", get(tenant_path(MISBEHAVING, "truncate")), pause);
        client("stall", get(tenant_path(MISBEHAVING, "stall")), pause);
        client(
            "flood",
            get(tenant_path(
                MISBEHAVING,
                &format!("flood?lines={FLOOD_LINES}"),
            )),
            Duration::from_millis(500),
        );
        client("broken", get(BROKEN_PATH.into()), pause);

        for client in clients {
            client.join().unwrap();
        }
        load_over.store(true, Ordering::Release);
    });

    let samples = samples.into_inner().unwrap();
    let by_role =
        |role: &str| -> Vec<&Sample> { samples.iter().filter(|s| s.role == role).collect() };

    // Every request ended with a response head.
    let unanswered: Vec<&Sample> = samples.iter().filter(|s| !s.outcome.answered()).collect();
    assert!(
        unanswered.is_empty(),
        "{} of {} requests got no response: {unanswered:#?}",
        unanswered.len(),
        samples.len()
    );

    // Healthy tenants answered every request, fast.
    let healthy = by_role("healthy");
    assert!(
        healthy.len() >= 100,
        "only {} healthy requests",
        healthy.len()
    );
    let failed: Vec<&&Sample> = healthy
        .iter()
        .filter(|s| s.outcome.status != Some(200) || !s.outcome.complete)
        .collect();
    assert!(failed.is_empty(), "healthy requests failed: {failed:#?}");
    let latencies: Vec<Duration> = healthy.iter().map(|s| s.outcome.latency).collect();
    let p99 = quantile(&latencies, 0.99).unwrap();
    let p50 = quantile(&latencies, 0.50).unwrap();
    eprintln!(
        "healthy requests: {}, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        p50,
        p99,
        latencies.iter().max().unwrap()
    );
    assert!(
        p99 < HEALTHY_P99_BOUND,
        "healthy p99 {p99:?} exceeds {HEALTHY_P99_BOUND:?}"
    );

    // Each fault got the answer that belongs to it.
    let statuses = |role: &str| -> BTreeSet<u16> {
        by_role(role)
            .iter()
            .filter_map(|s| s.outcome.status)
            .collect()
    };
    for role in [
        "crash", "hang", "slow", "truncate", "stall", "flood", "broken",
    ] {
        assert!(!by_role(role).is_empty(), "no {role} requests ran");
    }
    assert_eq!(
        statuses("hang"),
        BTreeSet::from([504]),
        "a hanging request ends with 504"
    );
    assert_eq!(statuses("slow"), BTreeSet::from([200]));
    assert_eq!(statuses("flood"), BTreeSet::from([200]));
    assert!(
        statuses("crash").is_subset(&BTreeSet::from([200, 502, 503])),
        "{:?}",
        statuses("crash")
    );
    assert!(
        statuses("broken").is_subset(&BTreeSet::from([502, 503])),
        "{:?}",
        statuses("broken")
    );
    // A body cut off by the tenant, or stalled past the response timeout,
    // reaches the client as a response that ends early.
    for sample in by_role("truncate").into_iter().chain(by_role("stall")) {
        assert_eq!(sample.outcome.status, Some(200));
        assert!(!sample.outcome.complete, "{sample:?}");
        assert!(
            sample.outcome.body_bytes <= TRUNCATE_SENT_BYTES,
            "{sample:?}"
        );
    }

    // Memory stayed bounded.
    let max_rss = max_rss.load(Ordering::Relaxed);
    eprintln!(
        "navigator VmRSS: {baseline_rss} KiB after warm-up, at most {max_rss} KiB under load"
    );
    assert!(
        max_rss - baseline_rss < RSS_GROWTH_BOUND_KIB,
        "VmRSS grew from {baseline_rss} KiB to {max_rss} KiB"
    );

    // Crashed and failed children were reaped while navigator ran.
    assert!(
        eventually(Duration::from_secs(10), || {
            children_of(pid).iter().all(|child| child.state != "Z")
        }),
        "zombie children: {:?}",
        children_of(pid)
    );

    // After navigator exits, none of its children is left.
    let known = children.into_inner().unwrap();
    assert!(known.len() >= 5, "only saw children {known:?}");
    assert_eq!(navigator.stop(), Some(0), "log:\n{}", navigator.logs.text());
    assert!(
        eventually(Duration::from_secs(10), || leftovers(&known, "demo-tenant")
            .is_empty()),
        "processes outlived navigator: {:?}",
        leftovers(&known, "demo-tenant")
    );
}
