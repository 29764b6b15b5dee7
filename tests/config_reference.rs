//! `docs/configuration.md` must describe exactly the keys of the config
//! schema, each with a type, a default and an example, so the reference
//! cannot drift from the code.
//!
//! The schema's keys come from `SAMPLE`, a config that sets every key:
//! it is deserialized into `Config` (which rejects unknown keys) and
//! serialized back, and every struct field shows up in the result. A key
//! added to the schema and missing here fails the test as a `null` or an
//! empty list, or appears as a key the reference lacks.
//!
//! Conventions of the reference that the test relies on:
//! - each key is one table row whose first cell is its full path in
//!   backticks (a path always contains a dot and no space) (`server.limits.max_body_bytes`, lists of tables with `[]`:
//!   `applications.tenants[].path`), followed by type, default and meaning;
//! - a list of hooks is one row, and the fields of a hook are documented
//!   once as `hook.command`, `hook.args`, ...;
//! - the `toml` code blocks are complete config files (each must load),
//!   and together they set every key.

use std::collections::{BTreeMap, BTreeSet};

use navigator::config::schema::Config;
use serde_json::Value;

/// A config that sets every key. Map keys start with `x_` or `X-`, which
/// no schema key does, so the walker can tell maps from structs.
const SAMPLE: &str = r#"
managed_processes = [
    { name = "redis", command = "redis-server", args = ["--port", "6379"], working_dir = "/srv", env = { x_A = "1" }, auto_restart = true, start_delay = "1s" },
]

[server]
listen = "127.0.0.1:3000"
hostname = "example.org"
root_path = "/showcase"
trust_proxy = true
pid_file = "/tmp/n.pid"
public_dir = "public"
allowed_extensions = ["html"]
try_files = [".html"]
authentication = "htpasswd"
auth_exclude = ["/up"]

[server.cache_control]
default = "1m"
default_immutable = true
overrides = [{ path = "/a/", max_age = "1h", immutable = true }]

[server.health_check]
path = "/up"
response = { status = 200, body = "OK", headers = { X-Health = "1" } }

[server.static]
public_dir = "public"
allowed_extensions = ["html"]
try_files = ["index.html"]
normalize_trailing_slashes = true

[server.static.cache_control]
default = "0"
default_immutable = true
overrides = [{ path = "/assets/", max_age = "1y", immutable = true }]

[server.idle]
action = "suspend"
timeout = "15m"
fly_api_socket = "/.fly/api"

[server.bot_detection]
enabled = true
action = "reject"

[[server.cgi_scripts]]
path = "/update"
script = "script/update.rb"
method = "POST"
user = "root"
group = "root"
allowed_users = ["admin"]
env = { x_A = "1" }
timeout = "5m"
reload_config = "config/navigator.toml"

[server.tls]
listen = 443
cert = "cert.pem"
key = "key.pem"

[server.limits]
header_read_timeout = "10s"
max_header_bytes = "64K"
max_body_bytes = "100M"
max_connections = 100
shutdown_timeout = "30s"
idle_connection_timeout = "2m"
send_timeout = "1m"

[server.status]
enabled = true
path = "/_navigator/"

[auth]
enabled = true
realm = "Showcase"
htpasswd = "htpasswd"
public_paths = ["/assets/"]
auth_patterns = [{ pattern = "^/$", action = "off" }]

[cable]
enabled = true
path = "/cable"
broadcast_path = "/_broadcast"

[maintenance]
enabled = true
page = "/503.html"

[applications]
env = { x_A = "1" }
health_check = "/up"
startup_timeout = "5s"
ready_timeout = "60s"
response_timeout = "5m"
track_websockets = true
runtime = { x_rails = "bundle" }
server = { x_rails = "exec" }
args = { x_rails = ["puma"] }

[applications.framework]
command = "bin/rails"
args = ["server"]
app_directory = "/rails"
port_env_var = "PORT"
start_delay = "1s"

[applications.pools]
max_size = 8
timeout = "5m"
start_port = 4000
end_port = 4999
default_memory_limit = "768M"
user = "rails"
group = "rails"
grace_period = "10s"
prewarm = ["2025/*"]
max_concurrency = 4
max_queue = 20
queue_timeout = "20s"
max_requests = 5000
recycle_memory = "600M"
memory_check_interval = "10s"

[[applications.hooks.start]]
command = "a"
[[applications.hooks.stop]]
command = "a"

[[applications.tenants]]
path = "/showcase/2025/boston/"
name = "2025/boston"
var = { x_database = "boston" }
env = { x_A = "1" }
root = "/rails"
command = "bin/rails"
args = ["server"]
health_check = "/up"
startup_timeout = "5s"
response_timeout = "10m"
track_websockets = true
bot_detection = { enabled = true, action = "ignore" }
memory_limit = "1G"
user = "rails"
group = "rails"
framework = "rails"
runtime = "bundle"
server = "exec"
public_dir = "public"
hooks = { start = [{ command = "a" }], stop = [{ command = "a" }] }
prewarm = true
max_concurrency = 8
max_queue = 10
queue_timeout = "10s"
max_requests = 1000
recycle_memory = "700M"

[routes]
tls_ca_file = "ca.pem"
redirects = [{ from = "^/$", to = "/s/", status = 301 }]
rewrites = [{ from = "^/a", to = "/b", pattern = "^/c", replacement = "/d", redirect = true, status = 302, methods = ["GET"] }]
reverse_proxies = [{ name = "api", path = "^/api", prefix = "/api", target = "http://127.0.0.1:9", strip_path = true, headers = { X-A = "1" }, response_headers = { X-B = "2" }, websocket = true }]
fly_replay = [{ path = "^/x", region = "syd", app = "a", machine = "m", status = 307, methods = ["GET"] }]

[routes.fly]
replay = [{ path = "^/x", region = "syd", app = "a", machine = "m", status = 307, methods = ["GET"] }]
resolve = { x_host = "127.0.0.1:9" }
internal_port = 9999

[hooks.server]
start = [{ command = "a", args = ["b"], env = { x_A = "1" }, timeout = "30s", reload_config = "c.toml" }]
ready = [{ command = "a" }]
stop = [{ command = "a" }]
idle = [{ command = "a" }]
resume = [{ command = "a" }]

[hooks.tenant]
start = [{ command = "a" }]
stop = [{ command = "a" }]

[logging]
format = "json"
level = "info"
file = "/data/log/{{app}}.log"

[logging.vector]
enabled = true
socket = "/tmp/v.sock"
config = "vector.toml"
"#;

/// Fields of a hook; a list of such objects is documented as one row.
const HOOK_FIELDS: [&str; 5] = ["args", "command", "env", "reload_config", "timeout"];

/// Schema paths documented as one row because their fields are the same
/// as another key's.
const ALIASES: [&str; 2] = ["server.cache_control", "routes.fly_replay"];

fn is_map(object: &serde_json::Map<String, Value>) -> bool {
    !object.is_empty()
        && object
            .keys()
            .all(|key| key.starts_with("x_") || key.starts_with("X-"))
}

/// Whether `value` is a list whose first element has exactly the fields
/// of a hook, as serialized from `SAMPLE`.
fn is_hook_list(value: &Value) -> bool {
    value
        .as_array()
        .and_then(|list| list.first())
        .is_some_and(|first| {
            first.as_object().is_some_and(|hook| {
                let fields: BTreeSet<&str> = hook.keys().map(String::as_str).collect();
                fields == BTreeSet::from(HOOK_FIELDS)
            })
        })
}

/// The keys of the schema, and which of them are lists of hooks.
struct Schema {
    keys: BTreeSet<String>,
    hook_lists: BTreeSet<String>,
}

/// Collects the key paths of a serialized config, with `hook.*` for the
/// fields of hooks. Panics at a value the sample leaves unset.
fn walk(value: &Value, path: &str, schema: &mut Schema) {
    let keys = &mut schema.keys;
    let incomplete = |what: &str| panic!("SAMPLE leaves {path} {what}; set it so it is checked");
    if ALIASES.contains(&path) {
        keys.insert(path.to_string());
        return;
    }
    if is_hook_list(value) {
        keys.insert(path.to_string());
        schema.hook_lists.insert(path.to_string());
        for field in HOOK_FIELDS {
            keys.insert(format!("hook.{field}"));
        }
        return;
    }
    match value {
        Value::Null => incomplete("unset"),
        Value::Object(object) if object.is_empty() => incomplete("empty"),
        Value::Object(object) if is_map(object) => {
            keys.insert(path.to_string());
        }
        Value::Object(object) => {
            for (key, child) in object {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                walk(child, &child_path, schema);
            }
        }
        Value::Array(list) => match list.first() {
            None => incomplete("empty"),
            Some(Value::Object(first)) if !is_map(first) => {
                walk(&list[0], &format!("{path}[]"), schema)
            }
            Some(_) => {
                keys.insert(path.to_string());
            }
        },
        _ => {
            keys.insert(path.to_string());
        }
    }
}

fn schema() -> Schema {
    let config: Config = toml::from_str(SAMPLE).expect("SAMPLE must load");
    let value = serde_json::to_value(&config).unwrap();
    let mut schema = Schema {
        keys: BTreeSet::new(),
        hook_lists: BTreeSet::new(),
    };
    walk(&value, "", &mut schema);
    schema
}

/// A documented key: its row's cells.
struct Row {
    line: usize,
    cells: Vec<String>,
}

fn reference() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap()
}

/// Rows of the reference whose first cell is a backticked key path.
fn documented(text: &str) -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let Some((key, _)) = rest.split_once('`') else {
            continue;
        };
        // Every key path has a dot and no space; other tables (the fields
        // of a log record, the control API's routes) have other names in
        // their first column.
        if !key.contains('.') || key.contains(' ') {
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().to_string())
            .collect();
        let row = Row {
            line: index + 1,
            cells,
        };
        if let Some(previous) = rows.insert(key.to_string(), row) {
            panic!("{key} documented twice (line {})", previous.line);
        }
    }
    rows
}

fn toml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim() == "```toml" => current = Some((index + 1, String::new())),
            None => {}
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some((_, block)) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

#[test]
fn every_schema_key_documented() {
    let schema = schema().keys;
    let documented = documented(&reference());
    let missing: Vec<&String> = schema
        .iter()
        .filter(|key| !documented.contains_key(*key))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks rows for: {missing:#?}"
    );
    let stale: Vec<&String> = documented
        .keys()
        .filter(|key| !schema.contains(*key))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/configuration.md documents keys the schema lacks: {stale:#?}"
    );
}

#[test]
fn every_row_has_type_default_and_meaning() {
    for (key, row) in documented(&reference()) {
        assert_eq!(
            row.cells.len(),
            4,
            "line {}: `{key}` needs four cells (key, type, default, meaning): {:?}",
            row.line,
            row.cells
        );
        for (name, cell) in ["type", "default", "meaning"].iter().zip(&row.cells[1..]) {
            assert!(!cell.is_empty(), "line {}: `{key}` has no {name}", row.line);
        }
    }
}

/// The default column names the value `Config::default()` has, for every
/// key whose default is a plain value.
#[test]
fn documented_defaults_match_the_code() {
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let documented = documented(&reference());
    let mut checked = 0;
    for (key, row) in &documented {
        let mut value = &defaults;
        for part in key.split('.') {
            value = &value[part];
        }
        let text = match value {
            Value::String(text) if !text.is_empty() => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            _ => continue,
        };
        checked += 1;
        let default = &row.cells[2];
        assert!(
            default.contains(&format!("`{text}`")) || default.contains(&format!("`\"{text}\"`")),
            "line {}: `{key}` defaults to {text} in the code, the reference says {default}",
            row.line
        );
    }
    assert!(checked > 30, "only {checked} defaults checked");
}

#[test]
fn examples_load_and_cover_every_key() {
    let schema = schema();
    let blocks = toml_blocks(&reference());
    assert!(blocks.len() > 10, "too few examples");
    let mut covered = BTreeSet::new();
    for (line, block) in &blocks {
        if let Err(error) = toml::from_str::<Config>(block) {
            panic!("the example at line {line} does not load: {error}\n{block}");
        }
        let value: toml::Value = toml::from_str(block).unwrap();
        let value = serde_json::to_value(value).unwrap();
        cover(&value, "", &schema, &mut covered);
    }
    let uncovered: Vec<&String> = schema.keys.difference(&covered).collect();
    assert!(
        uncovered.is_empty(),
        "no example sets these keys: {uncovered:#?}"
    );
}

/// Marks the schema keys an example sets.
fn cover(value: &Value, path: &str, schema: &Schema, covered: &mut BTreeSet<String>) {
    if schema.keys.contains(path) {
        covered.insert(path.to_string());
        if let Some(list) = value
            .as_array()
            .filter(|_| schema.hook_lists.contains(path))
        {
            for hook in list {
                for field in hook.as_object().into_iter().flat_map(|hook| hook.keys()) {
                    covered.insert(format!("hook.{field}"));
                }
            }
        }
        return;
    }
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                cover(child, &child_path, schema, covered);
            }
        }
        Value::Array(list) => {
            for item in list {
                cover(item, &format!("{path}[]"), schema, covered);
            }
        }
        _ => {}
    }
}

/// Prints every schema key; run with `--ignored --nocapture` when
/// writing the reference.
#[test]
#[ignore]
fn print_schema_keys() {
    for key in schema().keys {
        println!("{key}");
    }
}
