//! The cost of a request's routing decisions (canonical path, the auth
//! classification, redirects, rewrites, the Fly-Replay rules, the
//! trailing-slash check, the tenant lookup) with 10, 370 and 10,000
//! tenants, in a config shaped like a region config: 21 public paths,
//! 13 auth patterns and 44 replay rules of studio-name alternations. The
//! tenant lookup probes one hash map per path segment and the rules do not
//! depend on the tenants, so the cost should not grow with the tenant
//! count.

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{HeaderMap, Method};
use navigator::auth::Decision;
use navigator::canonical;
use navigator::compile::Snapshot;
use navigator::config::{load_str, source::Format};

mod support;

const STUDIOS: [&str; 25] = [
    "boston",
    "raleigh",
    "annapolis",
    "livermore",
    "millbrae",
    "adelaide",
    "barcelona",
    "montreal",
    "kobe",
    "salem",
    "clearwater",
    "richmond",
    "sydney",
    "perth",
    "milano",
    "torino",
    "vicenza",
    "warsaw",
    "kyiv",
    "chicago",
    "dayton",
    "everett",
    "fremont",
    "stockton",
    "vabeach",
];

/// A Showcase-shaped config with `tenants` events spread over years,
/// studios and event names, plus the redirects and rewrites the real
/// region configs use.
fn showcase(tenants: usize, htpasswd: &Path) -> Snapshot {
    let mut text = String::from(
        r#"
[server]
root_path = "/showcase"
[applications.framework]
command = "bin/rails"
args = ["server", "-p", "${port}"]
[applications.env]
DATABASE_URL = "sqlite3:///data/db/${database}.sqlite3"
[routes]
redirects = [
    { from = "^/$", to = "/showcase/studios/" },
    { from = "^/showcase/demo/?$", to = "/showcase/regions/iad/demo/" },
]
rewrites = [
    { from = "^/assets/(.*)", to = "/showcase/assets/$1" },
    { from = "^/([^/]+\\.(gif|png|jpg|jpeg|ico|pdf|svg|webp|txt))$", to = "/showcase/$1" },
]
[[applications.tenants]]
path = "/showcase/"
var = { database = "index" }
"#,
    );
    for i in 0..tenants {
        let year = 2025 - (i / 1000);
        let studio = STUDIOS[(i / 40) % STUDIOS.len()];
        let event = format!("event-{}", i % 40);
        let extra = i / (1000 * 25);
        text.push_str(&format!(
            "[[applications.tenants]]\npath = \"/showcase/{year}/{studio}{extra}/{event}/\"\nvar = {{ database = \"{year}-{studio}{extra}-{event}\" }}\n"
        ));
    }
    text.push_str(&support::auth_toml(&htpasswd.display().to_string()));
    text.push_str(&support::replay_rules_toml());
    let loaded =
        load_str(&text, Format::Toml, Path::new("bench.toml"), &|_| None).expect("config loads");
    Snapshot::compile(loaded, &|_| None).expect("config compiles")
}

/// The decisions `pipeline::route` makes before any I/O. The auth step
/// classifies the path of a request without credentials (reading no
/// password file); the decisions after it run whatever it answered, as
/// they would for a user whose credentials are cached.
fn route(snapshot: &Snapshot, method: &Method, raw_path: &str) -> Option<usize> {
    let path = canonical::canonicalize(raw_path).ok()?;
    let decision = snapshot
        .access
        .authorize(&path, raw_path, &HeaderMap::new())
        .now_or_never()?;
    black_box(matches!(decision, Decision::Challenge { .. }));
    if snapshot.path_rules.redirect(&path, method).is_some() {
        return Some(0);
    }
    let path = snapshot
        .path_rules
        .rewrite(&path, method)
        .map_or(path, std::borrow::Cow::Owned);
    if snapshot.replay.find(&path, method).is_some() {
        return Some(3);
    }
    if snapshot.needs_trailing_slash(&path) {
        return Some(1);
    }
    snapshot.tenants.find(&path).map(|tenant| tenant.path.len())
}

fn routing(c: &mut Criterion) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let htpasswd = directory.path().join("htpasswd");
    // An MD5-crypt entry; no bench request carries credentials.
    std::fs::write(&htpasswd, "judge:$apr1$x8mAhN4u$6Fj3b3oRe9wUK0uKDB7MT1\n")
        .expect("htpasswd written");
    let mut group = c.benchmark_group("routing");
    for tenants in [10usize, 370, 10_000] {
        let snapshot = showcase(tenants, &htpasswd);
        let last = tenants - 1;
        let hit = format!(
            "/showcase/{}/{}{}/event-{}/heats/12",
            2025 - (last / 1000),
            STUDIOS[(last / 40) % STUDIOS.len()],
            last / (1000 * 25),
            last % 40
        );
        let method = Method::GET;
        group.bench_with_input(BenchmarkId::new("tenant_hit", tenants), &hit, |b, path| {
            b.iter(|| route(&snapshot, &method, black_box(path)))
        });
        group.bench_with_input(
            BenchmarkId::new("index_fallback", tenants),
            &"/showcase/2019/nowhere/event/page".to_string(),
            |b, path| b.iter(|| route(&snapshot, &method, black_box(path))),
        );
        group.bench_with_input(
            BenchmarkId::new("public_event_page", tenants),
            &"/showcase/2025/springfield/spring-showcase/public/heats".to_string(),
            |b, path| b.iter(|| route(&snapshot, &method, black_box(path))),
        );
        group.bench_with_input(
            BenchmarkId::new("replayed_to_region", tenants),
            &"/showcase/2024/summitton/spring-showcase/heats".to_string(),
            |b, path| b.iter(|| route(&snapshot, &method, black_box(path))),
        );
        group.bench_with_input(
            BenchmarkId::new("rewrite_asset", tenants),
            &"/assets/application-4f2a9c.css".to_string(),
            |b, path| b.iter(|| route(&snapshot, &method, black_box(path))),
        );
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
