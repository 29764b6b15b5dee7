//! The status page, `status.json` and the Prometheus metrics under
//! `server.status.path`, read over real loopback connections from a
//! navigator serving a Showcase-shaped config with demo tenants.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{Navigator, Showcase, start_showcase, write_public_tree};

/// One parsed sample: metric name and sorted labels.
type SampleKey = (String, BTreeMap<String, String>);

/// Parses the Prometheus text exposition format strictly: every sample
/// belongs to a family declared by `# TYPE` before it, names and labels
/// are well formed, values are numbers, and histogram buckets are
/// cumulative and end with `+Inf` equal to `_count`.
fn parse_metrics(text: &str) -> BTreeMap<SampleKey, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for (number, line) in text.lines().enumerate() {
        let context = format!("line {}: {line:?}", number + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap();
            let name = parts.next().expect(&context).to_string();
            let value = parts.next().expect(&context).to_string();
            assert!(valid_name(&name), "{context}");
            match keyword {
                "HELP" => assert!(helps.insert(name, value).is_none(), "{context}: HELP twice"),
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"]
                            .contains(&value.as_str()),
                        "{context}"
                    );
                    assert!(types.insert(name, value).is_none(), "{context}: TYPE twice");
                }
                _ => panic!("{context}: unknown comment keyword"),
            }
            continue;
        }
        assert!(!line.is_empty(), "{context}: empty line");
        let (series, value) = line.rsplit_once(' ').expect(&context);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().expect(&context),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect(&context);
                (name.to_string(), parse_labels(inner, &context))
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        assert!(valid_name(&name), "{context}");
        let family = family_of(&name, &types);
        let kind = types.get(&family).unwrap_or_else(|| {
            panic!("{context}: sample before its # TYPE line");
        });
        if kind == "counter" {
            assert!(value >= 0.0, "{context}: negative counter");
        }
        assert!(
            samples.insert((name, labels), value).is_none(),
            "{context}: duplicate sample"
        );
    }
    check_histograms(&samples, &types);
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_labels(inner: &str, context: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").expect(context);
        assert!(valid_name(name), "{context}");
        assert!(!name.contains(':'), "{context}: colon in a label name");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (index, c) = chars.next().expect(context);
            match c {
                '\\' => match chars.next().expect(context).1 {
                    'n' => value.push('\n'),
                    '"' => value.push('"'),
                    '\\' => value.push('\\'),
                    other => panic!("{context}: invalid escape \\{other}"),
                },
                '"' => break index,
                c => value.push(c),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "{context}: label twice"
        );
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|kind| kind == "histogram") {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

fn check_histograms(samples: &BTreeMap<SampleKey, f64>, types: &BTreeMap<String, String>) {
    for (family, _) in types.iter().filter(|(_, kind)| *kind == "histogram") {
        let bucket_name = format!("{family}_bucket");
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for ((name, labels), value) in samples {
            if *name != bucket_name {
                continue;
            }
            let mut labels = labels.clone();
            let le = labels.remove("le").expect("bucket without le");
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            series.entry(labels).or_default().push((bound, *value));
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            assert!(
                buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
                "{family} {labels:?}: buckets not cumulative"
            );
            let (last_bound, last_count) = *buckets.last().unwrap();
            assert_eq!(last_bound, f64::INFINITY, "{family}: no +Inf bucket");
            let count = samples[&(format!("{family}_count"), labels.clone())];
            assert_eq!(last_count, count, "{family} {labels:?}: +Inf != _count");
            assert!(samples.contains_key(&(format!("{family}_sum"), labels)));
        }
    }
}

fn value(samples: &BTreeMap<SampleKey, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .get(&(name.to_string(), labels))
        .copied()
        .unwrap_or(0.0)
}

fn scrape(navigator: &Navigator) -> BTreeMap<SampleKey, f64> {
    let response = navigator.get("/_navigator/metrics");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_metrics(&response.text())
}

#[test]
fn metrics_parse_and_counters_move() {
    let navigator = start_showcase(&Showcase {
        events: 3,
        pools: "timeout = \"1s\"".into(),
        ..Showcase::default()
    });
    let before = scrape(&navigator);
    let build = before
        .iter()
        .find(|((name, _), _)| name == "navigator_build_info")
        .expect("build info");
    assert_eq!(build.0.1["version"], env!("CARGO_PKG_VERSION"));

    for _ in 0..3 {
        assert_eq!(navigator.get("/showcase/studios/").status, 200);
    }
    assert_eq!(navigator.get("/nothing/here").status, 404);
    assert_eq!(navigator.get("/showcase/2025/boston/april/").status, 200);

    let static_ok = [("answer", "static"), ("status", "2xx")];
    let mut after = BTreeMap::new();
    let settled = support::eventually(Duration::from_secs(10), || {
        after = scrape(&navigator);
        value(&after, "navigator_requests_total", &static_ok)
            == value(&before, "navigator_requests_total", &static_ok) + 3.0
            && value(
                &after,
                "navigator_requests_total",
                &[("answer", "proxy"), ("status", "2xx")],
            ) >= 1.0
    });
    assert!(settled, "request counters did not move: {after:?}");
    assert_eq!(
        value(
            &after,
            "navigator_requests_total",
            &[("answer", "not-found"), ("status", "4xx")]
        ),
        value(
            &before,
            "navigator_requests_total",
            &[("answer", "not-found"), ("status", "4xx")]
        ) + 1.0
    );
    assert!(value(&after, "navigator_responses_total", &[("code", "404")]) >= 1.0);
    assert_eq!(
        value(
            &after,
            "navigator_request_duration_seconds_count",
            &[("answer", "static")]
        ),
        value(&after, "navigator_requests_total", &static_ok)
    );
    assert_eq!(value(&after, "navigator_tenant_starts_total", &[]), 1.0);
    assert_eq!(
        value(&after, "navigator_tenant_start_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(value(&after, "navigator_tenants_configured", &[]), 4.0);

    // pools.timeout is 1 s: the tenant stops once idle.
    let stopped = support::eventually(Duration::from_secs(20), || {
        after = scrape(&navigator);
        value(&after, "navigator_tenant_stops_total", &[]) == 1.0
    });
    assert!(stopped, "tenant stop not counted: {after:?}");
    assert_eq!(value(&after, "navigator_tenants_running", &[]), 0.0);
}

#[test]
fn auth_failures_counted() {
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    std::fs::write(dir.path().join("htpasswd"), "judge:plain-secret\n").unwrap();
    let showcase = Showcase {
        events: 1,
        extra: "\n[auth]\nenabled = true\nhtpasswd = \"@DIR@/htpasswd\"\n".into(),
        ..Showcase::default()
    };
    let navigator = Navigator::start_in(dir, &showcase.toml(), &[]);
    for _ in 0..2 {
        assert_eq!(navigator.get("/showcase/2025/boston/april/").status, 401);
    }
    // Loopback peers read the metrics without credentials.
    let mut samples = BTreeMap::new();
    let counted = support::eventually(Duration::from_secs(10), || {
        samples = scrape(&navigator);
        value(&samples, "navigator_auth_failures_total", &[]) == 2.0
    });
    assert!(counted, "{samples:?}");
    assert_eq!(
        value(
            &samples,
            "navigator_requests_total",
            &[("answer", "auth-failure"), ("status", "4xx")]
        ),
        2.0
    );
}

#[test]
fn status_json_reports_tenants_and_processes() {
    let showcase = Showcase {
        events: 2,
        extra:
            "\n[[managed_processes]]\nname = \"sleeper\"\ncommand = \"sleep\"\nargs = [\"300\"]\n"
                .into(),
        ..Showcase::default()
    };
    let navigator = start_showcase(&showcase);
    assert_eq!(navigator.get("/showcase/2025/boston/april/").status, 200);

    let response = navigator.get("/_navigator/status.json");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let report = response.json();
    assert_eq!(report["navigator"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["navigator"]["reloads"], 0);
    assert_eq!(report["config"]["tenants"], 3);
    assert!(
        report["config"]["file"]
            .as_str()
            .unwrap()
            .ends_with("navigator.toml")
    );
    let tenants = report["tenants"].as_array().unwrap();
    let names: Vec<&str> = tenants
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["2025/boston/april", "2025/boston/october", "showcase"]
    );
    let april = &tenants[0];
    assert_eq!(april["state"], "running");
    assert_eq!(april["path"], "/showcase/2025/boston/april/");
    assert_eq!(april["requests"], 1);
    let pid = april["pid"].as_u64().unwrap();
    assert!(support::process_alive(pid as i32));
    assert!(april["port"].as_u64().is_some());
    assert!(april["memory_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(tenants[1]["state"], "stopped");
    assert!(tenants[1]["pid"].is_null());

    let processes = report["managed_processes"].as_array().unwrap();
    assert_eq!(processes.len(), 1);
    assert_eq!(processes[0]["name"], "sleeper");
    assert_eq!(processes[0]["state"], "running");
    assert!(processes[0]["pid"].as_u64().is_some());

    // A reload is counted.
    navigator.signal(nix::sys::signal::Signal::SIGHUP);
    let reloaded = support::eventually(Duration::from_secs(20), || {
        navigator.get("/_navigator/status.json").json()["navigator"]["reloads"] == 1
    });
    assert!(reloaded, "reload not counted");
}

#[test]
fn status_page_lists_running_tenants() {
    let navigator = start_showcase(&Showcase {
        events: 1,
        ..Showcase::default()
    });
    assert_eq!(navigator.get("/showcase/2025/boston/april/").status, 200);
    assert_eq!(navigator.get("/showcase/").status, 200);
    let page = navigator.get("/_navigator/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.contains("<tr data-tenant=\"showcase\">"), "{html}");
    assert!(
        html.contains("<td class=\"state running\">running</td>"),
        "{html}"
    );
    assert!(html.contains("2 of 2 tenants running"), "{html}");
    assert!(
        !html.contains("src=") && !html.contains("href="),
        "external asset: {html}"
    );

    let head = navigator.request("HEAD", "/_navigator/", &[], b"");
    assert_eq!(head.status, 200);
    let post = navigator.request("POST", "/_navigator/status.json", &[], b"");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

#[test]
fn recent_errors_listed() {
    let navigator = start_showcase(&Showcase {
        events: 1,
        tenant_env: vec![("DEMO_EXIT_AT_BOOT".into(), "4".into())],
        ..Showcase::default()
    });
    assert_eq!(navigator.get("/showcase/2025/boston/april/").status, 502);
    let report = navigator.get("/_navigator/status.json").json();
    let errors = report["recent_errors"].as_array().unwrap();
    let failure = errors
        .iter()
        .find(|record| {
            record["message"]
                .as_str()
                .unwrap()
                .contains("tenant unavailable")
        })
        .unwrap_or_else(|| panic!("no start failure in {errors:?}"));
    assert_eq!(failure["level"], "warn");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("tenant=2025/boston/april")
    );
    let page = navigator.get("/_navigator/").text();
    assert!(page.contains("tenant unavailable"), "{page}");
}

#[test]
fn status_disabled_or_moved() {
    let showcase = Showcase {
        events: 1,
        extra: "\n[server.status]\nenabled = false\n".into(),
        ..Showcase::default()
    };
    let navigator = start_showcase(&showcase);
    assert_eq!(navigator.get("/_navigator/status.json").status, 404);

    // Showcase writes `[server]`; its `[server.status]` table may follow
    // at the end of the file.
    let moved = Showcase {
        events: 1,
        extra: "\n[server.status]\npath = \"/internal/nav/\"\n".into(),
        ..Showcase::default()
    };
    let navigator = start_showcase(&moved);
    assert_eq!(navigator.get("/_navigator/status.json").status, 404);
    assert_eq!(navigator.get("/internal/nav/status.json").status, 200);
    // The control API moves along with the status pages.
    assert_eq!(navigator.get("/internal/nav/tenants.json").status, 200);
    assert_eq!(navigator.get("/internal/nav/nothing").status, 404);
}

#[test]
fn replays_and_cable_counted() {
    let showcase = Showcase {
        events: 2,
        extra: "\n[[routes.fly.replay]]\npath = \"^/showcase/2025/boston/october/.+$\"\nregion = \"syd\"\n"
            .into(),
        ..Showcase::default()
    };
    let navigator = start_showcase(&showcase);
    let replayed = navigator.get("/showcase/2025/boston/october/heats");
    assert_eq!(replayed.status, 307);

    let mut cable = std::net::TcpStream::connect(navigator.address).unwrap();
    cable
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::io::Write::write_all(
        &mut cable,
        b"GET /cable HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(&mut cable, &mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    let mut samples = BTreeMap::new();
    let counted = support::eventually(Duration::from_secs(10), || {
        samples = scrape(&navigator);
        value(&samples, "navigator_cable_connections", &[]) == 1.0
    });
    assert!(counted, "{samples:?}");
    assert_eq!(
        value(&samples, "navigator_cable_connections_total", &[]),
        1.0
    );
    assert_eq!(value(&samples, "navigator_fly_replays_total", &[]), 1.0);
    assert_eq!(
        value(
            &samples,
            "navigator_requests_total",
            &[("answer", "fly-replay"), ("status", "3xx")]
        ),
        1.0
    );

    drop(cable);
    let closed = support::eventually(Duration::from_secs(10), || {
        samples = scrape(&navigator);
        value(&samples, "navigator_cable_connections", &[]) == 0.0
    });
    assert!(closed, "{samples:?}");
}
