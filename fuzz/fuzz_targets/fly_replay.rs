//! The Fly-Replay step: matching replay rules on arbitrary paths, the
//! replay-or-proxy decision on arbitrary methods and headers, and the
//! replay instruction, header and private-network address for arbitrary
//! target names never panic. The instruction is JSON naming its target.

#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use navigator::canonical::canonicalize;
use navigator::compile::{ReplayTarget, Snapshot};
use navigator::config::source::Format;
use navigator::fly::replay::{
    self, Decision, REPLAY_FAILED_HEADER, describe, header_value, instruction, private_target,
};
use navigator::fly::{FlyEnvironment, FlyRoutes};

/// Replay rules shaped like a Showcase region config.
const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[[routes.fly.replay]]
path = "^/showcase/.+\\.pdf$"
app = "smooth-pdf"
status = 307

[[routes.fly.replay]]
path = "^/showcase/regions/dfw/.+$"
region = "dfw"
status = 307

[[routes.fly.replay]]
path = "^/showcase/(?:2025)/(?:abq|clearwater)/.+$"
region = "dfw"
methods = ["GET", "POST"]

[[routes.fly.replay]]
path = "^/showcase/machines/.+$"
app = "smooth"
machine = "e784079b449483"
"#;

#[derive(Debug, Arbitrary)]
struct Input {
    path: String,
    method: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body_length: Option<u64>,
    target_kind: u8,
    first_name: String,
    second_name: String,
    app_name: Option<String>,
    authorization: Option<Vec<u8>>,
}

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        navigator_fuzz::load_and_compile(CONFIG, Format::Toml).expect("the replay config compiles")
    })
}

fuzz_target!(|input: Input| {
    let Ok(method) = Method::from_bytes(&input.method) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }

    if let Ok(path) = canonicalize(&input.path) {
        let _ = snapshot().replay.find(&path, &method);
    }

    let decision = replay::decide(&method, &headers, input.body_length);
    if headers.contains_key(REPLAY_FAILED_HEADER) {
        assert_eq!(decision, Decision::Loop("fly-replay-failed"));
    }

    let target = match input.target_kind % 3 {
        0 => ReplayTarget::Region(input.first_name.clone()),
        1 => ReplayTarget::App(input.first_name.clone()),
        _ => ReplayTarget::Machine {
            app: input.first_name.clone(),
            machine: input.second_name.clone(),
        },
    };
    let environment = FlyEnvironment {
        app_name: input.app_name.clone(),
        machine_id: None,
        region: None,
    };
    let authorization = input
        .authorization
        .as_deref()
        .and_then(|bytes| HeaderValue::from_bytes(bytes).ok());

    let json = instruction(&target, &environment, authorization.as_ref()).to_string();
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("the instruction is JSON");
    let named = match &target {
        ReplayTarget::Region(_) => &parsed["region"],
        ReplayTarget::App(_) | ReplayTarget::Machine { .. } => &parsed["app"],
    };
    assert_eq!(named.as_str(), Some(input.first_name.as_str()));

    let _ = header_value(&target, &environment);
    let _ = describe(&target);
    let _ = private_target(&target, &environment, &FlyRoutes::default());
});
