//! Headless Chromium for the browser tests, driven by chromedriver over
//! the WebDriver HTTP protocol with a small client on `std::net`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// chromedriver and the browsers it starts, in their own process group,
/// which is killed when this is dropped.
pub struct Driver {
    child: Child,
    address: SocketAddr,
}

impl Driver {
    pub fn start() -> Driver {
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
        let ready = super::eventually(Duration::from_secs(20), || {
            TcpStream::connect(driver.address).is_ok()
                && driver.call("GET", "/status", None)["value"]["ready"] == true
        });
        assert!(ready, "chromedriver did not become ready");
        driver
    }

    /// Sends one WebDriver command and returns its JSON response. The body
    /// is read by its `Content-Length`, because chromedriver may keep the
    /// connection open despite `Connection: close`.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
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
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A browser session; deleted (which quits the browser) when dropped.
pub struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl<'a> Session<'a> {
    /// Opens a headless Chromium with a fresh profile in `profile`.
    pub fn new(driver: &'a Driver, profile: &Path) -> Session<'a> {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,900",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
                }
            }
        });
        let answer = driver.call("POST", "/session", Some(capabilities));
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        Session { driver, id }
    }

    /// Navigates to `url` and waits until the page has loaded.
    pub fn open(&self, url: &str) {
        let answer = self.driver.call(
            "POST",
            &format!("/session/{}/url", self.id),
            Some(json!({ "url": url })),
        );
        assert!(answer["value"].is_null(), "navigation failed: {answer}");
    }

    /// Runs `script` in the page and returns its result.
    pub fn execute(&self, script: &str) -> Value {
        let answer = self.driver.call(
            "POST",
            &format!("/session/{}/execute/sync", self.id),
            Some(json!({ "script": script, "args": [] })),
        );
        answer["value"].clone()
    }

    /// Returns the text of the element with `element_id`.
    pub fn text_of(&self, element_id: &str) -> String {
        let script = format!("return document.getElementById('{element_id}').textContent;");
        self.execute(&script)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Polls the element until its text is `expected`.
    pub fn wait_for_text(&self, element_id: &str, expected: &str) {
        let mut last = String::new();
        let found = super::eventually(Duration::from_secs(20), || {
            last = self.text_of(element_id);
            last == expected
        });
        assert!(found, "#{element_id} is {last:?}, expected {expected:?}");
    }

    /// Returns a PNG screenshot of the window.
    pub fn screenshot(&self) -> Vec<u8> {
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
