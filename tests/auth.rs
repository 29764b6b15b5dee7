//! Access control end to end: htpasswd files made by the real `htpasswd`
//! and `openssl passwd` tools, the public-path rules of a Showcase-shaped
//! region config, bypass attempts, bots and forwarded headers.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use support::{Navigator, Showcase, eventually, write_public_tree};

const JUDGE: (&str, &str) = ("judge", "bcrypt-secret");

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// Returns the Showcase region config shape: root path `/showcase`, realm
/// "Showcase", public prefixes, exact paths, globs, `off` patterns, a
/// realm pattern, global bot rejection and a demo tenant that lets bots in.
fn region_extra() -> String {
    r#"
[server.bot_detection]
enabled = true
action = "reject"

[auth]
enabled = true
realm = "Showcase"
htpasswd = "@DIR@/htpasswd"
public_paths = [
  "/showcase/assets/", "/showcase/studios/", "/showcase/regions/", "/showcase/docs/",
  "/showcase/update_config", "/favicon.ico", "/robots.txt", "/up",
  "*.css", "*.js", "*.png", "*.ico", "/showcase/docs/*.pdf",
]
auth_patterns = [
  { pattern = "^/$", action = "off" },
  { pattern = "^/showcase/regions/(?:iad|syd)/demo/", action = "off" },
  { pattern = "^/showcase/2025/(?:boston|raleigh)/?$", action = "off" },
  { pattern = "^/showcase/2025/(?:boston|raleigh)/[^/]+/public/", action = "off" },
  { pattern = "^/showcase/2025/boston/april/admin/", action = "Admins" },
]

[routes]
redirects = [{ from = "^/$", to = "/showcase/studios/" }]
rewrites = [
  { from = "^/assets/(.*)", to = "/showcase/assets/$1" },
  { from = "^/([^/]+\\.(ico|txt))$", to = "/showcase/$1" },
]

[[applications.tenants]]
path = "/showcase/regions/iad/demo/"
var = { database = "regions-iad-demo" }
env = { RAILS_APP_SCOPE = "regions/iad/demo" }
bot_detection = { enabled = true, action = "ignore" }
"#
    .to_string()
}

/// Starts the region config with `htpasswd` as the password file.
fn start_region(htpasswd: &str, extra_env: &[(&str, &str)]) -> Navigator {
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
    std::fs::write(dir.path().join("public/favicon.ico"), b"icon").unwrap();
    let showcase = Showcase {
        events: 12,
        extra: region_extra(),
        tenant_env: vec![(
            "DEMO_REQUEST_LOG".to_string(),
            "@DIR@/requests.log".to_string(),
        )],
        ..Showcase::default()
    };
    Navigator::start_in(dir, &showcase.toml(), extra_env)
}

fn bcrypt_line(user: &str, password: &str) -> String {
    format!("{user}:{}\n", bcrypt::hash(password, 10).unwrap())
}

/// Lines the demo tenants appended, `SCOPE METHOD URI STATUS`, without
/// navigator's readiness probes.
fn tenant_requests(navigator: &Navigator) -> Vec<String> {
    std::fs::read_to_string(navigator.path("requests.log"))
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.contains(" GET /up "))
        .map(str::to_string)
        .collect()
}

fn reached_tenant(navigator: &Navigator, needle: &str) -> bool {
    tenant_requests(navigator)
        .iter()
        .any(|line| line.contains(needle))
}

#[test]
fn region_conformance_rows() {
    let navigator = start_region(&bcrypt_line(JUDGE.0, JUDGE.1), &[]);
    let user = basic(JUDGE.0, JUDGE.1);
    let with_user = [("Authorization", user.as_str())];

    let root_path = navigator.get("/showcase");
    assert_eq!(
        root_path.status, 401,
        "auth precedes the trailing-slash redirect"
    );
    assert_eq!(
        root_path.header("www-authenticate"),
        Some("Basic realm=\"Showcase\"")
    );
    let root_path = navigator.request("GET", "/showcase", &with_user, b"");
    assert_eq!(root_path.status, 301);
    assert_eq!(root_path.header("location"), Some("/showcase/"));

    let studios = navigator.get("/showcase/studios/");
    assert_eq!(
        (studios.status, studios.text().as_str()),
        (200, "<h1>studios</h1>\n")
    );

    let event = navigator.get("/showcase/2025/raleigh/disney/");
    assert_eq!(event.status, 401);
    assert_eq!(
        event.header("www-authenticate"),
        Some("Basic realm=\"Showcase\"")
    );

    let public = navigator.get("/showcase/2025/raleigh/disney/public/heats");
    assert_eq!(public.status, 200, "{}", public.text());
    assert!(reached_tenant(
        &navigator,
        "2025/raleigh/disney GET /showcase/2025/raleigh/disney/public/heats 200"
    ));

    let css = navigator.get("/showcase/2025/raleigh/disney/heats.css");
    assert_eq!(css.status, 401, "a glob exempts only static answers");
    assert!(!reached_tenant(&navigator, "heats.css"));

    let asset = navigator.get("/assets/app-1234.js");
    assert_eq!(asset.status, 200, "*.js is public because a file answers");
    let asset = navigator.get("/showcase/assets/app-1234.css");
    assert_eq!(asset.status, 200);
    let favicon = navigator.get("/favicon.ico");
    assert_eq!((favicon.status, favicon.text().as_str()), (200, "icon"));

    let home = navigator.get("/");
    assert_eq!(home.status, 302);
    assert_eq!(home.header("location"), Some("/showcase/studios/"));

    let event = navigator.request("GET", "/showcase/2025/raleigh/disney/", &with_user, b"");
    assert_eq!(event.status, 200);
    assert!(reached_tenant(
        &navigator,
        "2025/raleigh/disney GET /showcase/2025/raleigh/disney/ 200"
    ));
    assert!(
        eventually(Duration::from_secs(10), || {
            navigator.logs.text().lines().any(|line| {
                line.contains("uri=/showcase/2025/raleigh/disney/ ")
                    && line.contains("status=200")
                    && line.contains("user=\"judge\"")
            })
        }),
        "the access log names the user: {}",
        navigator.logs.text()
    );
}

#[test]
fn bot_detection_global_and_tenant() {
    let navigator = start_region(&bcrypt_line(JUDGE.0, JUDGE.1), &[]);
    let user = basic(JUDGE.0, JUDGE.1);
    let crawler = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    let blocked = navigator.request(
        "GET",
        "/showcase/2025/raleigh/disney/",
        &[("Authorization", &user), ("User-Agent", crawler)],
        b"",
    );
    assert_eq!(blocked.status, 403);
    assert!(!reached_tenant(&navigator, "2025/raleigh/disney"));
    assert!(
        navigator
            .logs
            .wait_for("answer=\"bot-blocked\"", Duration::from_secs(10))
            .is_some()
    );

    let demo = navigator.request(
        "GET",
        "/showcase/regions/iad/demo/",
        &[("User-Agent", crawler)],
        b"",
    );
    assert_eq!(demo.status, 200, "the demo tenant ignores bots");
    assert!(reached_tenant(&navigator, "regions/iad/demo GET"));

    let static_file =
        navigator.request("GET", "/showcase/studios/", &[("User-Agent", crawler)], b"");
    assert_eq!(static_file.status, 200, "bots still get static files");

    let browser = navigator.request(
        "GET",
        "/showcase/2025/raleigh/disney/",
        &[
            ("Authorization", &user),
            (
                "User-Agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
            ),
        ],
        b"",
    );
    assert_eq!(browser.status, 200);
}

/// Requests that try to pass a protected path off as public. Each must
/// get the status shown, and none may reach the `2025/raleigh/disney`
/// tenant or the `admin` area.
#[test]
fn auth_bypass_attempts_refused() {
    let navigator = start_region(&bcrypt_line(JUDGE.0, JUDGE.1), &[]);
    let cases: &[(&str, u16)] = &[
        // glob rules: only static files are public
        ("/showcase/2025/raleigh/disney/people.css", 401),
        ("/showcase/2025/raleigh/disney/people%2ecss", 401),
        ("/showcase/2025/raleigh/disney/people%2Ecss", 401),
        ("/showcase/2025/raleigh/disney/people.js", 401),
        ("/showcase/2025/raleigh/disney/people.css.", 401),
        ("/showcase/2025/raleigh/disney/people.CSS", 401),
        ("/showcase/2025/raleigh/disney/people%2fx.css", 401),
        ("/showcase/2025/raleigh/disney/people.css%00", 400),
        ("/showcase/2025/raleigh/disney/people.css;.js", 401),
        ("/showcase/docs/../2025/raleigh/disney/x.pdf", 400),
        // prefix rules
        ("/showcase/studios/..%2f2025/raleigh/disney/", 400),
        ("/showcase/studios/%2e%2e/2025/raleigh/disney/", 400),
        ("/showcase/studios/%2E%2E/2025/raleigh/disney/", 400),
        ("/showcase/studios/.%2e/2025/raleigh/disney/", 400),
        ("/showcase/studios%2f..%2f2025/raleigh/disney/", 400),
        ("/showcase/studios/..\\2025/raleigh/disney/", 400),
        ("/showcase/studios/%5c..%5c2025/raleigh/disney/", 400),
        ("/showcase/studios", 401),
        ("/showcase/studios./", 401),
        ("/showcase/Studios/", 401),
        ("/showcase/%53tudios/x", 401),
        ("/showcase/regions/../2025/raleigh/disney/", 400),
        ("/showcase/regions/./../2025/raleigh/disney/", 400),
        // exact rules
        ("/showcase/update_config/", 401),
        ("/showcase/update_config.", 401),
        ("/showcase/update_config/../2025/raleigh/disney/", 400),
        ("/showcase/update_config%2f..%2f2025/raleigh/disney/", 400),
        ("/favicon.ico/../showcase/2025/raleigh/disney/", 400),
        // regex off rules
        ("/showcase/2025/raleigh/disney/public", 401),
        ("/showcase/2025/raleigh/disney/public%2fheats", 401),
        ("/showcase/2025/raleigh/disney/public%2Fheats", 401),
        ("/showcase/2025/raleigh/disney/Public/heats", 401),
        ("/showcase/2025/raleigh/disney/public/../people", 400),
        ("/showcase/2025/raleigh/disney/public/%2e%2e/people", 400),
        ("/showcase/2025/raleigh/disney/publicx/heats", 401),
        ("/showcase/2025/raleigh/disney./", 401),
        ("/showcase/2025/raleigh./disney/", 401),
        ("/showcase/2025/raleigh/./disney/", 400),
        // realm pattern inside a public area
        ("/showcase/2025/boston/april/admin/users", 401),
        ("/showcase/2025/boston/april/admin//users", 401),
        ("//showcase//2025//raleigh//disney//", 401),
    ];

    for (path, expected) in cases {
        let response = navigator.get(path);
        assert_eq!(response.status, *expected, "{path}: {}", response.text());
        if response.status == 401 {
            assert!(response.header("www-authenticate").is_some(), "{path}");
        }
    }

    let admin = navigator.get("/showcase/2025/boston/april/admin/users");
    assert_eq!(
        admin.header("www-authenticate"),
        Some("Basic realm=\"Admins\""),
        "a realm pattern names its own realm"
    );

    // A request that did reach a tenant, to be sure the log is written.
    let user = basic(JUDGE.0, JUDGE.1);
    let sentinel = navigator.request(
        "GET",
        "/showcase/2025/raleigh/disney/sentinel",
        &[("Authorization", &user)],
        b"",
    );
    assert_eq!(sentinel.status, 200);
    let requests = tenant_requests(&navigator);
    let disney: Vec<&String> = requests
        .iter()
        .filter(|line| line.starts_with("2025/raleigh/disney "))
        .collect();
    assert_eq!(disney.len(), 1, "{disney:?}");
    assert!(disney[0].contains("/sentinel"));
    assert!(
        !requests.iter().any(|line| line.contains("admin")),
        "{requests:?}"
    );
}

#[test]
fn wrong_credentials_refused_and_not_cached() {
    let navigator = start_region(&bcrypt_line(JUDGE.0, JUDGE.1), &[]);
    let path = "/showcase/2025/raleigh/disney/";
    let cases = [
        basic("judge", "wrong"),
        basic("judge", ""),
        basic("judge", "bcrypt-secret "),
        basic("Judge", "bcrypt-secret"),
        basic("nobody", "bcrypt-secret"),
        "Basic".to_string(),
        "Basic !!!".to_string(),
        format!("Bearer {}", STANDARD.encode("judge:bcrypt-secret")),
    ];
    for round in 0..2 {
        for value in &cases {
            let response = navigator.request("GET", path, &[("Authorization", value)], b"");
            assert_eq!(response.status, 401, "round {round}: {value}");
        }
    }
    let right = navigator.request(
        "GET",
        path,
        &[("Authorization", &basic(JUDGE.0, JUDGE.1))],
        b"",
    );
    assert_eq!(right.status, 200);
    let wrong_after = navigator.request("GET", path, &[("Authorization", &cases[0])], b"");
    assert_eq!(
        wrong_after.status, 401,
        "a right password must not open the cache for a wrong one"
    );

    let spoofed_user = navigator.request(
        "GET",
        "/showcase/2025/raleigh/disney/",
        &[("Remote-User", "judge"), ("X-Remote-User", "judge")],
        b"",
    );
    assert_eq!(
        spoofed_user.status, 401,
        "user names from headers are never trusted"
    );
}

#[test]
fn htpasswd_changes_apply_while_running() {
    let navigator = start_region(&bcrypt_line(JUDGE.0, JUDGE.1), &[]);
    let path = "/showcase/2025/raleigh/disney/";
    let judge = basic(JUDGE.0, JUDGE.1);
    let emcee = basic("emcee", "new-secret");
    let status = |auth: &str| {
        navigator
            .request("GET", path, &[("Authorization", auth)], b"")
            .status
    };
    assert_eq!(status(&judge), 200);
    assert_eq!(status(&emcee), 401);

    // The deployment writes a new file and renames it into place.
    let file = navigator.path("htpasswd");
    let next = navigator.path("htpasswd.next");
    std::fs::write(&next, bcrypt_line("emcee", "new-secret")).unwrap();
    std::fs::rename(&next, &file).unwrap();
    assert_eq!(status(&emcee), 200);
    assert_eq!(
        status(&judge),
        401,
        "a cached check must not outlive its user"
    );

    // Written in place, with a malformed line that is skipped.
    std::fs::write(
        &file,
        format!("broken line\n{}", bcrypt_line("judge", "bcrypt-secret")),
    )
    .unwrap();
    assert_eq!(status(&judge), 200);
    assert!(
        navigator
            .logs
            .wait_for("skipped a malformed htpasswd line", Duration::from_secs(10))
            .is_some_and(|line| line.contains("line=1"))
    );

    std::fs::remove_file(&file).unwrap();
    assert_eq!(status(&judge), 401, "a missing file denies everyone");
    assert!(
        navigator
            .logs
            .wait_for("htpasswd file is missing", Duration::from_secs(10))
            .is_some()
    );
    let public = navigator.get("/showcase/studios/");
    assert_eq!(public.status, 200, "public paths stay public");
}

#[test]
fn missing_htpasswd_at_startup_fails() {
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let showcase = Showcase {
        events: 1,
        extra: region_extra(),
        ..Showcase::default()
    };
    let config = dir.path().join("navigator.toml");
    support::write_config(&config, &showcase.toml(), dir.path());
    let output = Command::new(support::NAVIGATOR)
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("htpasswd"), "{stderr}");
}

/// Writes an htpasswd file with one user per format, each made by the
/// real tools, and returns the user/password pairs.
fn tool_made_htpasswd(file: &Path) -> Vec<(&'static str, &'static str, &'static str)> {
    let run = |program: &str, args: &[&str]| -> String {
        let output = Command::new(program).args(args).output().unwrap();
        assert!(output.status.success(), "{program} {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let path = file.to_str().unwrap();
    run(
        "htpasswd",
        &["-c", "-b", "-B", "-C", "10", path, "bcrypt10", "bcrypt-ten"],
    );
    run(
        "htpasswd",
        &["-b", "-B", "-C", "5", path, "bcrypt5", "bcrypt-five"],
    );
    run("htpasswd", &["-b", "-m", path, "apr1", "apr1-secret"]);
    run("htpasswd", &["-b", "-s", path, "sha1", "sha-secret"]);
    run("htpasswd", &["-b", "-p", path, "plain", "plain-secret"]);
    run(
        "htpasswd",
        &["-b", "-2", path, "sha256tool", "sha256-by-htpasswd"],
    );
    run(
        "htpasswd",
        &["-b", "-5", path, "sha512tool", "sha512-by-htpasswd"],
    );
    let mut lines = String::new();
    for (user, flag, password) in [
        ("md5crypt", "-1", "crypt-secret"),
        ("opensslapr1", "-apr1", "openssl-apr1"),
        ("sha256", "-5", "sha256-secret"),
        ("sha512", "-6", "sha512-secret"),
    ] {
        let hash = run("openssl", &["passwd", flag, password]);
        lines.push_str(&format!("{user}:{hash}\n"));
    }
    let mut text = std::fs::read_to_string(file).unwrap();
    text.push_str(&lines);
    std::fs::write(file, text).unwrap();

    vec![
        ("bcrypt10", "bcrypt-ten", "$2y$10$"),
        ("bcrypt5", "bcrypt-five", "$2y$05$"),
        ("apr1", "apr1-secret", "$apr1$"),
        ("sha1", "sha-secret", "{SHA}"),
        ("plain", "plain-secret", ""),
        ("sha256tool", "sha256-by-htpasswd", "$5$"),
        ("sha512tool", "sha512-by-htpasswd", "$6$"),
        ("md5crypt", "crypt-secret", "$1$"),
        ("opensslapr1", "openssl-apr1", "$apr1$"),
        ("sha256", "sha256-secret", "$5$"),
        ("sha512", "sha512-secret", "$6$"),
    ]
}

#[test]
fn every_format_from_real_tools() {
    if support::skip_without("htpasswd") || support::skip_without("openssl") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("htpasswd");
    let users = tool_made_htpasswd(&file);
    let text = std::fs::read_to_string(&file).unwrap();
    for (user, _, prefix) in &users {
        let line = text
            .lines()
            .find(|line| line.starts_with(&format!("{user}:")))
            .unwrap_or_else(|| panic!("{user} missing from {text}"));
        assert!(line[user.len() + 1..].starts_with(prefix), "{line}");
    }

    let navigator = start_region(&text, &[]);
    let path = "/showcase/2025/raleigh/disney/";
    for (user, password, _) in &users {
        let right = navigator.request(
            "GET",
            path,
            &[("Authorization", &basic(user, password))],
            b"",
        );
        assert_eq!(right.status, 200, "{user}");
        let wrong = navigator.request(
            "GET",
            path,
            &[("Authorization", &basic(user, &format!("{password}x")))],
            b"",
        );
        assert_eq!(wrong.status, 401, "{user} with a wrong password");
    }
}

#[test]
fn forwarded_headers_follow_trust_proxy() {
    for trust_proxy in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_public_tree(dir.path());
        let showcase = Showcase {
            events: 1,
            ..Showcase::default()
        };
        let toml = showcase.toml().replace(
            "root_path = \"/showcase\"",
            &format!("root_path = \"/showcase\"\ntrust_proxy = {trust_proxy}"),
        );
        let navigator = Navigator::start_in(dir, &toml, &[]);
        let response = navigator.request(
            "GET",
            "/showcase/2025/boston/april/?format=json",
            &[
                ("Accept", "application/json"),
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "spoofed.test"),
                ("Forwarded", "for=203.0.113.9;host=spoofed.test;proto=https"),
                ("X-Real-IP", "203.0.113.9"),
            ],
            b"",
        );
        assert_eq!(response.status, 200, "{}", response.text());
        let report = response.json();
        let headers = &report["headers"];
        let header = |name: &str| headers[name].as_str().map(str::to_string);
        if trust_proxy {
            assert_eq!(
                header("x-forwarded-for").as_deref(),
                Some("203.0.113.9, 127.0.0.1")
            );
            assert_eq!(header("x-forwarded-proto").as_deref(), Some("https"));
            assert_eq!(header("x-forwarded-host").as_deref(), Some("spoofed.test"));
            assert!(header("forwarded").is_some());
        } else {
            assert_eq!(header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
            assert_eq!(header("x-forwarded-proto").as_deref(), Some("http"));
            assert_eq!(header("x-forwarded-host").as_deref(), Some("localhost"));
            assert_eq!(header("forwarded"), None);
            assert_eq!(header("x-real-ip"), None);
        }
        let expected_client = if trust_proxy {
            "203.0.113.9"
        } else {
            "127.0.0.1"
        };
        assert!(
            eventually(Duration::from_secs(10), || {
                navigator.logs.text().lines().any(|line| {
                    line.contains("uri=/showcase/2025/boston/april/")
                        && line.contains(&format!("client={expected_client}"))
                })
            }),
            "trust_proxy={trust_proxy}: {}",
            navigator.logs.text()
        );
    }
}
