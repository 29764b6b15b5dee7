//! A real browser on navigator's pages: headless Chromium, driven by
//! chromedriver over the WebDriver HTTP protocol, renders the status page
//! while tenants run, and follows the maintenance page's automatic
//! refresh to a tenant that was still booting.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::{Navigator, Showcase, write_public_tree};

/// chromedriver and the browsers it starts, in their own process group,
/// which is killed when this is dropped.
struct Driver {
    child: Child,
    address: SocketAddr,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let ready = support::eventually(Duration::from_secs(20), || {
            TcpStream::connect(driver.address).is_ok()
                && driver.call("GET", "/status", None)["value"]["ready"] == true
        });
        assert!(ready, "chromedriver did not become ready");
        driver
    }

    /// Sends one WebDriver command and returns its JSON response. The body
    /// is read by its `Content-Length`, because chromedriver may keep the
    /// connection open.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(self.address).expect("connect to chromedriver");
        stream
            .set_read_timeout(Some(Duration::from_secs(90)))
            .unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut answer = vec![0u8; length];
        reader.read_exact(&mut answer).unwrap();
        serde_json::from_slice(&answer).unwrap_or(Value::Null)
    }

    /// Opens a headless Chromium with a fresh profile in `profile`.
    fn session(&self, profile: &Path) -> Session<'_> {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1200,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let answer = self.call("POST", "/session", Some(capabilities));
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        Session { driver: self, id }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// One browser, closed when dropped.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    fn navigate(&self, url: &str) {
        let answer = self.driver.call(
            "POST",
            &format!("/session/{}/url", self.id),
            Some(json!({ "url": url })),
        );
        assert!(answer["value"].is_null(), "navigation failed: {answer}");
    }

    /// Runs `script` in the page and returns its result.
    fn execute(&self, script: &str) -> Value {
        let answer = self.driver.call(
            "POST",
            &format!("/session/{}/execute/sync", self.id),
            Some(json!({ "script": script, "args": [] })),
        );
        answer["value"].clone()
    }

    fn screenshot(&self) -> Vec<u8> {
        let answer = self
            .driver
            .call("GET", &format!("/session/{}/screenshot", self.id), None);
        let encoded = answer["value"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap()
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.driver
            .call("DELETE", &format!("/session/{}", self.id), None);
    }
}

/// Reads the width and height from a PNG's IHDR chunk, after checking the
/// signature.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 33, "PNG too short: {} bytes", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (width, height)
}

#[test]
fn status_page_in_chromium() {
    if support::skip_without("chromium") || support::skip_without("chromedriver") {
        return;
    }
    let showcase = Showcase {
        events: 3,
        extra:
            "\n[[managed_processes]]\nname = \"sleeper\"\ncommand = \"sleep\"\nargs = [\"300\"]\n"
                .into(),
        ..Showcase::default()
    };
    let navigator = support::start_showcase(&showcase);
    for path in [
        "/showcase/2025/boston/april/",
        "/showcase/2025/boston/medal-ball/",
    ] {
        assert_eq!(navigator.get(path).status, 200);
    }

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.session(profile.path());
    browser.navigate(&format!("http://{}/_navigator/", navigator.address));

    let rows = browser.execute(
        "return Array.from(document.querySelectorAll('#tenants tr[data-tenant]'))\
         .map(row => [row.dataset.tenant, row.querySelector('.state').textContent]);",
    );
    assert_eq!(
        rows,
        json!([
            ["2025/boston/april", "running"],
            ["2025/boston/medal-ball", "running"],
            ["2025/boston/october", "stopped"],
            ["showcase", "stopped"],
        ])
    );
    let summary = browser.execute("return document.getElementById('summary').textContent;");
    assert_eq!(summary, "2 of 4 tenants running");
    let process = browser.execute(
        "return document.querySelector('#processes tr[data-process=\"sleeper\"] .state').textContent;",
    );
    assert_eq!(process, "running");
    // The inline style applied: running states are green.
    let color = browser.execute(
        "return getComputedStyle(document.querySelector('#tenants .state.running')).color;",
    );
    assert_eq!(color, "rgb(23, 112, 42)");

    let png = browser.screenshot();
    let path = navigator.path("status-page.png");
    std::fs::write(&path, &png).unwrap();
    let (width, height) = png_size(&std::fs::read(&path).unwrap());
    assert!(width > 0, "{width}x{height}");
    assert!(height > 0, "{width}x{height}");
    assert!(std::fs::metadata(&path).unwrap().len() > 1000);
}

#[test]
fn maintenance_page_refreshes_to_tenant() {
    if support::skip_without("chromium") || support::skip_without("chromedriver") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    // Without a 503.html, the built-in page with its refresh is used.
    std::fs::remove_file(dir.path().join("public/503.html")).unwrap();
    let showcase = Showcase {
        events: 1,
        startup_timeout: "1s",
        tenant_env: vec![("DEMO_BOOT_DELAY_MS".into(), "3000".into())],
        ..Showcase::default()
    };
    let navigator = Navigator::start_in(dir, &showcase.toml(), &[]);

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.session(profile.path());
    browser.navigate(&format!(
        "http://{}/showcase/2025/boston/april/",
        navigator.address
    ));
    let first = browser.execute("return document.documentElement.outerHTML;");
    let first = first.as_str().unwrap();
    assert!(first.contains("http-equiv=\"refresh\""), "{first}");
    assert!(
        first.contains("Starting up or under maintenance"),
        "{first}"
    );

    // The page reloads itself; the test only watches.
    let mut title = Value::Null;
    let arrived = support::eventually(Duration::from_secs(60), || {
        title = browser.execute("return document.title;");
        title == "boston (2025/boston/april)"
    });
    assert!(arrived, "the page never showed the tenant; title {title}");
    let body = browser.execute("return document.body.innerText;");
    assert!(
        body.as_str()
            .unwrap()
            .contains("Path: /showcase/2025/boston/april/"),
        "{body}"
    );
    let served =
        navigator.logs.count("answer=\"maintenance\"") + navigator.logs.count("answer=maintenance");
    assert!(served >= 1, "no maintenance answer logged");
}
