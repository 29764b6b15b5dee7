//! The cost of pipeline step 4: deciding a request with no auth
//! configured, against the same decision for a user whose bcrypt (cost 10)
//! check is cached, and for an anonymous request to a public prefix.

use std::path::Path;

use base64::Engine as _;
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use navigator::auth::{AccessControl, Decision};
use navigator::compile::AuthRules;
use navigator::config::load_str;
use navigator::config::source::Format;

const PATH: &str = "/showcase/2025/raleigh/disney/heats";

fn access_control(toml: &str) -> AccessControl {
    let loaded = load_str(toml, Format::Toml, Path::new("bench.toml"), &|_| None)
        .expect("valid bench config");
    let mut errors = Vec::new();
    let rules = AuthRules::compile(&loaded, &mut errors);
    let access = AccessControl::compile(&loaded, &rules, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    access
}

fn bench_authorize(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("bcrypt-secret", 10).expect("bcrypt hash");
    std::fs::write(&htpasswd, format!("judge:{hash}\n")).expect("write htpasswd");

    let public_paths = r#"public_paths = ["/showcase/assets/", "/showcase/studios/", "/favicon.ico", "*.css", "*.js"]
auth_patterns = [{ pattern = "^/showcase/2025/(?:boston|raleigh)/[^/]+/public/", action = "off" }]"#;
    let disabled = access_control("");
    let enabled = access_control(&format!(
        "[auth]\nenabled = true\nrealm = \"Showcase\"\nhtpasswd = \"{}\"\n{public_paths}\n",
        htpasswd.display()
    ));

    let mut with_credentials = HeaderMap::new();
    let token = base64::engine::general_purpose::STANDARD.encode("judge:bcrypt-secret");
    with_credentials.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Basic {token}")).expect("header value"),
    );
    let anonymous = HeaderMap::new();

    // Fill the cache once, as the first request of a session does.
    let first = runtime.block_on(enabled.authorize(PATH, PATH, &with_credentials));
    assert_eq!(
        first,
        Decision::Allow {
            user: Some("judge".into())
        }
    );

    let mut group = c.benchmark_group("authorize");
    group.bench_function("no auth configured", |b| {
        b.iter(|| runtime.block_on(disabled.authorize(black_box(PATH), PATH, &anonymous)))
    });
    group.bench_function("cached bcrypt cost 10", |b| {
        b.iter(|| runtime.block_on(enabled.authorize(black_box(PATH), PATH, &with_credentials)))
    });
    group.bench_function("anonymous public prefix", |b| {
        b.iter(|| {
            runtime.block_on(enabled.authorize(
                black_box("/showcase/studios/millbrae"),
                "/showcase/studios/millbrae",
                &anonymous,
            ))
        })
    });
    group.finish();

    let mut uncached = c.benchmark_group("authorize uncached");
    uncached.sample_size(10);
    uncached.bench_function("bcrypt cost 10 verification", |b| {
        let hash = navigator::auth::hash::PasswordHash::parse(&hash).expect("bcrypt hash");
        b.iter(|| hash.verify(black_box(b"bcrypt-secret")))
    });
    uncached.finish();
}

criterion_group!(benches, bench_authorize);
criterion_main!(benches);
