//! `navigator routes`: explanations for a generated region config shaped
//! like a Showcase Fly region. It has the root path `/showcase`, about 30
//! tenants, replay rules whose regexes are alternations of studio names,
//! auth patterns and public paths, rewrites, redirects, reverse proxies
//! and a CGI script. Where the running server implements the step, the same
//! request is also sent to a real navigator on that config, and its status
//! and access-log answer must match the explanation.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{NAVIGATOR, Navigator, write_public_tree};

/// Studios served by this region, with their events.
const LOCAL: [(&str, &[&str]); 9] = [
    ("raleigh", &["disney", "team-match", "shimmer-shine"]),
    ("boston", &["april", "mini-comp", "october"]),
    (
        "annapolis",
        &["medal-ball", "chesapeake-classic", "movie-madness"],
    ),
    ("richmond", &["medal-ball", "team-match", "nouveau-duo"]),
    ("montreal", &["graduation-ball", "november-showcase"]),
    (
        "westchester",
        &["cinderella-medal-ball", "spring", "fall", "winter"],
    ),
    ("salem", &["spring", "fall"]),
    ("wildwood", &["jubilee-2025", "summer"]),
    ("nashville", &["fall-ball", "spring-ball", "winter-ball"]),
];

/// Studios served by other regions: (region, studios).
const REMOTE: [(&str, &[&str]); 3] = [
    (
        "dfw",
        &["abq", "candc", "clearwater", "fortworth", "sugarland"],
    ),
    (
        "sjc",
        &[
            "bellevue",
            "coquitlam",
            "everett",
            "fremont",
            "livermore",
            "millbrae",
        ],
    ),
    ("syd", &["adelaide", "hornsby", "perth", "sydney"]),
];

const REGIONS: [&str; 8] = ["ams", "dfw", "ewr", "iad", "nrt", "ord", "sjc", "syd"];

/// Returns the region config as TOML, with `@DIR@` for the temp dir.
fn region_config(maintenance: bool) -> String {
    let all_studios: Vec<&str> = LOCAL
        .iter()
        .map(|(studio, _)| *studio)
        .chain(
            REMOTE
                .iter()
                .flat_map(|(_, studios)| studios.iter().copied()),
        )
        .collect();
    let local_events: Vec<String> = LOCAL
        .iter()
        .flat_map(|(studio, events)| events.iter().map(move |event| format!("{studio}/{event}")))
        .collect();

    let mut out = format!(
        r#"
[server]
listen = "127.0.0.1:0"
hostname = "smooth.example"
root_path = "/showcase"
pid_file = "@DIR@/navigator.pid"

[server.static]
public_dir = "@DIR@/public"
allowed_extensions = ["html", "htm", "txt", "json", "css", "js", "png", "ico", "pdf"]
try_files = ["index.html", ".html", ".htm"]
normalize_trailing_slashes = true

[server.health_check]
path = "/up"
response = {{ status = 200, body = "OK", headers = {{ "Content-Type" = "text/plain" }} }}

[server.bot_detection]
enabled = true
action = "reject"

[server.limits]
max_body_bytes = "10M"

[[server.cgi_scripts]]
path = "/showcase/update_config"
script = "@DIR@/update_config.sh"
method = "POST"
timeout = "30s"

[cable]
path = "/showcase/regions/iad/cable"
broadcast_path = "/_broadcast"

[maintenance]
enabled = {maintenance}

[applications]
health_check = "/up"
startup_timeout = "20s"

[applications.framework]
command = "@NAVIGATOR@"
args = ["demo-tenant", "-p", "${{port}}"]
app_directory = "@DIR@"

[applications.env]
RAILS_APP_DB = "${{database}}"
DATABASE_URL = "sqlite3://@DIR@/db/${{database}}.sqlite3"

[applications.pools]
start_port = {port}

[[applications.tenants]]
path = "/showcase/"
var = {{ database = "index" }}

[[applications.tenants]]
path = "/showcase/regions/iad/demo/"
var = {{ database = "demo" }}
bot_detection = {{ enabled = true, action = "ignore" }}
"#,
        port = support::tenant_port_base(),
    );
    for (studio, events) in LOCAL {
        for event in events {
            out.push_str(&format!(
                "\n[[applications.tenants]]\npath = \"/showcase/2025/{studio}/{event}/\"\nvar = {{ database = \"2025-{studio}-{event}\" }}\n"
            ));
        }
    }

    out.push_str(
        r#"
[routes]
redirects = [
    { from = "^/$", to = "/showcase/studios/" },
    { from = "^/showcase/demo/?$", to = "/showcase/regions/iad/demo/" },
]
rewrites = [
    { from = "^/assets/(.*)", to = "/showcase/assets/$1" },
    { from = "^/([^/]+\\.(gif|png|jpg|ico|pdf|svg|txt))$", to = "/showcase/$1" },
]

[routes.fly]
internal_port = 9999

[[routes.reverse_proxies]]
name = "password"
path = "^/showcase/password(/.*)"
target = "http://127.0.0.1:9/showcase/password$1"
headers = { X-Forwarded-Host = "$host" }

[[routes.reverse_proxies]]
name = "studio-request"
path = "^/showcase/studios/([a-z]*)/request$"
target = "http://127.0.0.1:9/showcase/studios/$1/request"

[[routes.fly.replay]]
path = "^/showcase/.+\\.pdf$"
app = "smooth-pdf"

[[routes.fly.replay]]
path = "^/showcase/.+\\.xlsx$"
app = "smooth-pdf"
"#,
    );
    for region in REGIONS.iter().filter(|region| **region != "iad") {
        out.push_str(&format!(
            "\n[[routes.fly.replay]]\npath = \"^/showcase/regions/{region}/.+$\"\nregion = \"{region}\"\n"
        ));
    }
    for (region, studios) in REMOTE {
        out.push_str(&format!(
            "\n[[routes.fly.replay]]\npath = \"^/showcase/(?:2025)/(?:{})/.+$\"\nregion = \"{region}\"\n",
            studios.join("|")
        ));
    }
    out.push_str(
        "\n[[routes.fly.replay]]\npath = \"^/showcase/2025/boston/special/.+$\"\napp = \"smooth\"\nmachine = \"e784079b449e86\"\n",
    );

    out.push_str(&format!(
        r#"
[auth]
enabled = true
realm = "Showcase"
htpasswd = "@DIR@/htpasswd"
public_paths = [
    "/showcase/assets/",
    "/showcase/docs/",
    "/showcase/password/",
    "/showcase/regions/",
    "/showcase/studios/",
    "/showcase/update_config",
    "/favicon.ico",
    "/up",
    "*.css",
    "*.js",
    "*.png",
]
auth_patterns = [
    {{ pattern = "^/$", action = "off" }},
    {{ pattern = "^/showcase/regions/(?:{regions})/cable$", action = "off" }},
    {{ pattern = "^/showcase/2025/(?:{studios})/?$", action = "off" }},
    {{ pattern = "^/showcase/2025/(?:{events})/public/", action = "off" }},
]
"#,
        regions = REGIONS.join("|"),
        studios = all_studios.join("|"),
        events = local_events
            .iter()
            .map(|event| event.replace('-', "\\\\-"))
            .collect::<Vec<_>>()
            .join("|"),
    ));
    out
}

/// Writes the config, the public tree, the htpasswd file and the CGI
/// script into `dir`; returns the config path.
fn write_region(dir: &Path, maintenance: bool) -> std::path::PathBuf {
    write_public_tree(dir);
    std::fs::write(dir.join("public/favicon.ico"), [0u8, 0, 1, 0]).unwrap();
    std::fs::write(dir.join("htpasswd"), "judge:plain-secret\n").unwrap();
    let script = dir.join("update_config.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nupdated\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = dir.join("navigator.toml");
    support::write_config(&config, &region_config(maintenance), dir);
    config
}

/// One request of the table and how it must be answered.
struct Row {
    method: &'static str,
    path: &'static str,
    /// Simulate an authenticated user (and send real credentials to the
    /// server).
    user: bool,
    headers: &'static [(&'static str, &'static str)],
    content_length: Option<u64>,
    loopback: bool,
    step: u64,
    answer: &'static str,
    /// `None` when an upstream decides.
    status: Option<u64>,
    /// Expected `target`, or a part of it for files.
    target: Option<&'static str>,
    /// Whether the same request can be sent to the running server: it
    /// implements the answering step, and the request needs no other
    /// peer than loopback. Then the real response must match.
    served: bool,
}

const fn row(method: &'static str, path: &'static str) -> Row {
    Row {
        method,
        path,
        user: false,
        headers: &[],
        content_length: None,
        loopback: false,
        step: 13,
        answer: "not-found",
        status: Some(404),
        target: None,
        served: true,
    }
}

impl Row {
    const fn user(mut self) -> Row {
        self.user = true;
        self
    }
    const fn headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Row {
        self.headers = headers;
        self
    }
    const fn length(mut self, length: u64) -> Row {
        self.content_length = Some(length);
        self
    }
    const fn loopback(mut self) -> Row {
        self.loopback = true;
        self
    }
    const fn expect(mut self, step: u64, answer: &'static str, status: Option<u64>) -> Row {
        self.step = step;
        self.answer = answer;
        self.status = status;
        self
    }
    const fn target(mut self, target: &'static str) -> Row {
        self.target = Some(target);
        self
    }
    /// The request cannot be sent to the running server: it needs a peer
    /// other than loopback, or the answer would contact a host that is not
    /// on this machine (a private-network address, a stopped upstream).
    const fn not_served(mut self) -> Row {
        self.served = false;
        self
    }
}

/// `judge:plain-secret` in Basic form.
const CREDENTIALS: &str = "Basic anVkZ2U6cGxhaW4tc2VjcmV0";
const BOT: &[(&str, &str)] = &[(
    "User-Agent",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
)];

fn table() -> Vec<Row> {
    vec![
        row("GET", "/up").expect(2, "health", Some(200)),
        row("GET", "/")
            .expect(6, "redirect", Some(302))
            .target("/showcase/studios/"),
        row("GET", "/showcase").expect(4, "auth-failure", Some(401)),
        row("GET", "/showcase")
            .user()
            .expect(6, "redirect", Some(301))
            .target("/showcase/"),
        row("POST", "/showcase/2025/raleigh/disney")
            .user()
            .length(0)
            .expect(6, "redirect", Some(308))
            .target("/showcase/2025/raleigh/disney/"),
        row("GET", "/showcase/studios/")
            .expect(9, "static", Some(200))
            .target("public/studios/index.html"),
        row("GET", "/showcase/studios/millbrae")
            .expect(9, "static", Some(200))
            .target("public/studios/millbrae.html"),
        row("GET", "/showcase/2025/boston")
            .expect(9, "static", Some(301))
            .target("public/2025/boston"),
        row("GET", "/showcase/assets/app-1234.css")
            .expect(9, "static", Some(200))
            .target("public/assets/app-1234.css"),
        row("GET", "/assets/app-1234.js")
            .expect(9, "static", Some(200))
            .target("public/assets/app-1234.js"),
        row("GET", "/favicon.ico")
            .expect(9, "static", Some(200))
            .target("public/favicon.ico"),
        row("GET", "/showcase/2025/raleigh/disney/")
            .user()
            .expect(12, "proxy", None)
            .target("2025/raleigh/disney"),
        row("GET", "/showcase/2025/raleigh/disney/").expect(4, "auth-failure", Some(401)),
        row("GET", "/showcase/2025/raleigh/disney/public/heats")
            .expect(12, "proxy", None)
            .target("2025/raleigh/disney"),
        row("GET", "/showcase/2025/raleigh/disney/heats.css").expect(4, "auth-failure", Some(401)),
        row("GET", "/showcase/2025/adelaide/adelaide-combined/")
            .user()
            .headers(&[("Authorization", CREDENTIALS)])
            .expect(6, "fly-replay", Some(307)),
        row("GET", "/showcase/2025/adelaide/adelaide-combined/").expect(
            4,
            "auth-failure",
            Some(401),
        ),
        row("GET", "/showcase/2025/adelaide/")
            .expect(12, "proxy", None)
            .target("showcase"),
        row("GET", "/showcase/2025/raleigh/disney/heat-sheets.pdf")
            .user()
            .expect(6, "fly-replay", Some(307)),
        row("GET", "/showcase/2025/raleigh/disney/heat-sheets.pdf")
            .user()
            .headers(&[("Fly-Replay-Failed", "timeout")])
            .expect(6, "maintenance", Some(503)),
        row("POST", "/showcase/2025/adelaide/adelaide-combined/entries")
            .user()
            .length(2 * 1024 * 1024)
            .expect(6, "fly-replay", None)
            .target("http://syd.smooth.internal:9999")
            .not_served(),
        row("GET", "/showcase/2025/boston/special/heats")
            .user()
            .expect(6, "fly-replay", Some(307)),
        row("GET", "/showcase/regions/syd/demo/").expect(6, "fly-replay", Some(307)),
        row("GET", "/showcase/regions/iad/demo/")
            .headers(BOT)
            .expect(12, "proxy", None)
            .target("regions/iad/demo"),
        row("GET", "/showcase/2025/raleigh/disney/")
            .user()
            .headers(BOT)
            .expect(11, "bot-blocked", Some(403)),
        row("GET", "/showcase/demo")
            .user()
            .expect(6, "redirect", Some(302))
            .target("/showcase/regions/iad/demo/"),
        row("GET", "/showcase/regions/iad/cable")
            .expect(5, "websocket", None)
            .not_served(),
        row("POST", "/_broadcast")
            .loopback()
            .length(2)
            .expect(3, "broadcast", Some(200))
            .not_served(),
        row("POST", "/showcase/update_config")
            .length(0)
            .expect(7, "cgi", None)
            .target("update_config.sh"),
        row("GET", "/showcase/password/reset")
            .expect(8, "reverse-proxy", None)
            .target("http://127.0.0.1:9/showcase/password/reset")
            .not_served(),
        row("GET", "/showcase/studios/%2e%2e/2025/raleigh/disney/").expect(0, "error", Some(400)),
        row("POST", "/showcase/2025/raleigh/disney/entries")
            .user()
            .length(20 * 1024 * 1024)
            .expect(0, "error", Some(413)),
        row("GET", "/_navigator/status.json")
            .loopback()
            .expect(2, "status", Some(200)),
        row("GET", "/_navigator/status.json")
            .user()
            .expect(4, "status", Some(200))
            .not_served(),
        row("GET", "/_navigator/tenants.json")
            .loopback()
            .expect(2, "control", None),
        row("GET", "/_navigator/tenants.json")
            .expect(2, "control", Some(403))
            .not_served(),
        row("GET", "/_navigator/status.json")
            .expect(4, "auth-failure", Some(401))
            .not_served(),
        row("GET", "/elsewhere").user(),
    ]
}

/// Runs `navigator routes` with the options of `row`; returns the one
/// explanation.
fn explain(config: &Path, row: &Row) -> Value {
    let mut command = Command::new(NAVIGATOR);
    command
        .arg("routes")
        .arg(config)
        .arg(row.path)
        .arg("--json")
        .args(["-X", row.method])
        .env("FLY_APP_NAME", "smooth")
        .current_dir(config.parent().unwrap());
    let has_credentials = row
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
    if row.user {
        command.args(["--user", "judge"]);
        // A real authenticated request carries them, and a replay body
        // passes them on.
        if !has_credentials {
            command.args(["--header", &format!("Authorization: {CREDENTIALS}")]);
        }
    }
    for (name, value) in row.headers {
        command.args(["--header", &format!("{name}: {value}")]);
    }
    if let Some(length) = row.content_length {
        command.args(["--content-length", &length.to_string()]);
    }
    if row.loopback {
        command.arg("--loopback");
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}: {}",
        row.path,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut list: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list.len(), 1);
    list.remove(0)
}

#[test]
fn region_table_explained() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_region(dir.path(), false);
    for row in table() {
        let explained = explain(&config, &row);
        let label = format!("{} {}: {explained:#}", row.method, row.path);
        assert_eq!(explained["step"], row.step, "{label}");
        assert_eq!(explained["answer"], row.answer, "{label}");
        assert_eq!(explained["status"], json!(row.status), "{label}");
        if let Some(target) = row.target {
            let actual = explained["target"].as_str().unwrap_or("");
            assert!(actual.contains(target), "target {target:?}: {label}");
        }
    }
}

#[test]
fn replay_bodies_explained() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_region(dir.path(), false);
    let rows = table();
    let find = |path: &str, headers: usize| {
        rows.iter()
            .find(|row| row.path == path && row.headers.len() == headers && row.user)
            .unwrap()
    };

    let region = explain(
        &config,
        find("/showcase/2025/adelaide/adelaide-combined/", 1),
    );
    assert_eq!(
        region["replay"],
        json!({
            "region": "syd",
            "timeout": "30s",
            "fallback": "force_self",
            "transform": {"set_headers": [
                {"name": "X-Navigator-Retry", "value": "true"},
                {"name": "Authorization", "value": CREDENTIALS},
            ]},
        })
    );
    assert_eq!(
        region["rule"],
        "^/showcase/(?:2025)/(?:adelaide|hornsby|perth|sydney)/.+$ (region=syd)"
    );

    let pdf = explain(
        &config,
        find("/showcase/2025/raleigh/disney/heat-sheets.pdf", 0),
    );
    assert_eq!(pdf["replay"], json!({"app": "smooth-pdf"}));

    let machine = explain(&config, find("/showcase/2025/boston/special/heats", 0));
    assert_eq!(machine["replay"]["app"], "smooth");
    assert_eq!(machine["replay"]["instance"], "e784079b449e86");

    let public = rows
        .iter()
        .find(|row| row.path == "/showcase/regions/syd/demo/")
        .unwrap();
    let demo = explain(&config, public);
    assert_eq!(demo["replay"]["region"], "syd");
    assert!(
        demo["details"]
            .as_array()
            .unwrap()
            .contains(&json!("public: no credentials needed"))
    );
}

#[test]
fn text_output_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_region(dir.path(), false);
    let output = Command::new(NAVIGATOR)
        .arg("routes")
        .arg(&config)
        .args(["/", "/showcase/2025/raleigh/disney/", "/assets/app-1234.js"])
        .args(["--user", "judge"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let expected = format!(
        "GET / => 302 redirect (step 6): to /showcase/studios/\n\
         \x20   authenticated as judge (simulated)\n\
         \x20   rule: ^/$\n\
         \x20   target: /showcase/studios/\n\
         GET /showcase/2025/raleigh/disney/ => - tenant (step 12): tenant 2025/raleigh/disney\n\
         \x20   authenticated as judge (simulated)\n\
         \x20   upstream path: /showcase/2025/raleigh/disney/\n\
         \x20   rule: /showcase/2025/raleigh/disney/\n\
         \x20   target: 2025/raleigh/disney\n\
         GET /assets/app-1234.js => 200 static file (step 9): file, text/javascript; charset=utf-8\n\
         \x20   authenticated as judge (simulated)\n\
         \x20   rewritten to /showcase/assets/app-1234.js\n\
         \x20   target: {}/public/assets/app-1234.js\n",
        dir.path().display()
    );
    assert_eq!(text, expected);
}

#[test]
fn maintenance_explained() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_region(dir.path(), true);
    let dynamic = explain(
        &config,
        &row("GET", "/showcase/2025/raleigh/disney/").user(),
    );
    assert_eq!(dynamic["step"], 10);
    assert_eq!(dynamic["status"], 503);
    let file = explain(&config, &row("GET", "/showcase/studios/"));
    assert_eq!(file["step"], 9);
    assert_eq!(file["status"], 200);
}

#[test]
fn bad_options_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_region(dir.path(), false);
    let run = |args: &[&str]| {
        Command::new(NAVIGATOR)
            .arg("routes")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let header = run(&["/", "--header", "no colon"]);
    assert_eq!(header.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&header.stderr).contains("invalid header"));
    let relative = run(&["showcase"]);
    assert_eq!(relative.status.code(), Some(2));
    let missing = Command::new(NAVIGATOR)
        .args(["routes", "/nonexistent/navigator.toml", "/"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

/// Sends each served row to a real navigator on the same config and
/// compares the status and the access log's answer with the explanation.
#[test]
fn explanations_match_the_server() {
    let dir = tempfile::tempdir().unwrap();
    write_region(dir.path(), false);
    let text = std::fs::read_to_string(dir.path().join("navigator.toml")).unwrap();
    let navigator = Navigator::start_in(dir, &text, &[("FLY_APP_NAME", "smooth")]);
    let config = navigator.config.clone();

    for (index, row) in table().iter().enumerate().filter(|(_, row)| row.served) {
        let explained = explain(&config, row);
        let request_id = format!("row-{index}");
        let mut headers: Vec<(&str, &str)> = row.headers.to_vec();
        headers.push(("X-Request-Id", &request_id));
        let has_credentials = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
        if row.user && !has_credentials {
            headers.push(("Authorization", CREDENTIALS));
        }
        let body = vec![b'x'; row.content_length.unwrap_or(0).min(64 * 1024) as usize];
        let length = row.content_length.map(|length| length.to_string());
        if let Some(length) = &length {
            if *length != body.len().to_string() {
                headers.push(("Content-Length", length));
            }
        }
        let response = if length
            .as_ref()
            .is_some_and(|l| *l != body.len().to_string())
        {
            // A declared size larger than what is sent: the limit check
            // answers from the head alone.
            let mut head = format!(
                "{} {} HTTP/1.1\r\nHost: localhost\r\n",
                row.method, row.path
            );
            for (name, value) in &headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("Connection: close\r\n\r\n");
            let raw =
                support::raw_exchange(navigator.address, head.as_bytes(), Duration::from_secs(20));
            support::parse_response(&raw, false).expect("response")
        } else {
            navigator.request(row.method, row.path, &headers, &body)
        };

        let label = format!("{} {}: {explained:#}", row.method, row.path);
        match explained["status"].as_u64() {
            Some(status) => assert_eq!(u64::from(response.status), status, "{label}"),
            None => assert_eq!(response.status, 200, "{label}"),
        }
        if explained["replay"].is_object() {
            assert_eq!(response.json(), explained["replay"], "{label}");
        }
        let line = navigator
            .logs
            .wait_for_line(
                |line| {
                    line.contains("navigator::access")
                        && support::parse_field(line, "request_id").as_deref()
                            == Some(request_id.as_str())
                },
                Duration::from_secs(20),
            )
            .unwrap_or_else(|| panic!("no access record for {label}"));
        let answer = support::parse_field(&line, "answer").unwrap();
        assert_eq!(
            answer,
            explained["answer"].as_str().unwrap(),
            "{label}\n{line}"
        );
    }
}
