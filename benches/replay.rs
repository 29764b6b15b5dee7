//! Measures the Fly-Replay decision with a rule set shaped like a real
//! region config. It has 2 appliance rules, 7 region rules and, for each of
//! the 7 other regions, one rule per year (5 years) whose regex is an
//! alternation of that region's studios: 44 rules over 75 studio names.
//!
//! Run: `cargo bench --bench replay`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use navigator::compile::rules::ReplayRules;
use navigator::config::load_str;
use navigator::config::source::Format;
use navigator::fly::FlyEnvironment;
use navigator::fly::replay::{decide, instruction};

mod support;

fn compile() -> ReplayRules {
    let text = support::replay_rules_toml();
    let loaded = load_str(&text, Format::Toml, Path::new("bench.toml"), &|_| None)
        .expect("generated rules parse");
    let mut errors = Vec::new();
    let rules = ReplayRules::compile(&loaded, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    rules
}

fn bench(c: &mut Criterion) {
    let rules = compile();
    let last = rules.rules.last().expect("rules").path.as_str().to_string();
    let late_studio = last
        .split("(?:")
        .nth(2)
        .and_then(|names| names.split('|').next())
        .expect("a studio in the last rule")
        .to_string();
    let late_year = last
        .split("(?:")
        .nth(1)
        .and_then(|year| year.split(')').next())
        .expect("a year in the last rule")
        .to_string();
    eprintln!(
        "{} rules; late-rule path uses {late_year}/{late_studio}",
        rules.rules.len()
    );

    let first_rule = "/showcase/2025/raleigh/disney/heat-sheets.pdf".to_string();
    let late_rule = format!("/showcase/{late_year}/{late_studio}/spring-showcase/heats");
    let own_event = "/showcase/2025/raleigh/disney/heats".to_string();
    let studio_index = format!("/showcase/{late_year}/{late_studio}/");

    let mut group = c.benchmark_group("replay");
    for (name, path, hit) in [
        ("match first rule (pdf)", &first_rule, true),
        ("match late studio rule", &late_rule, true),
        ("no match (own event)", &own_event, false),
        ("no match (studio index)", &studio_index, false),
    ] {
        assert_eq!(rules.find(path, &Method::GET).is_some(), hit, "{path}");
        group.bench_function(name, |b| {
            b.iter(|| rules.find(black_box(path), black_box(&Method::GET)))
        });
    }

    let environment = FlyEnvironment {
        app_name: Some("smooth".into()),
        machine_id: Some("48e3a1".into()),
        region: Some("iad".into()),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Basic anVkZ2U6c2VjcmV0"),
    );
    group.bench_function("full decision and JSON body (late rule)", |b| {
        b.iter(|| {
            let rule = rules
                .find(black_box(&late_rule), &Method::GET)
                .expect("match");
            let decision = decide(&Method::GET, &headers, Some(0));
            let body = instruction(&rule.target, &environment, headers.get("authorization"));
            (decision, body.to_string())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
