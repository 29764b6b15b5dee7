//! A real browser on the cable. Headless Chromium, driven by chromedriver
//! over the WebDriver HTTP API, loads a static page from navigator whose
//! script subscribes to a stream. A broadcast must then change the page.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Navigator, Showcase, write_public_tree};

const PAGE: &str = r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>cable</title></head>
<body>
<p id="status">connecting</p>
<p id="out">nothing yet</p>
<script>
  const socket = new WebSocket("ws://" + location.host + "/cable");
  socket.onopen = () => {
    socket.send(JSON.stringify({ type: "subscribe", stream: "scores" }));
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "ping") {
      socket.send(JSON.stringify({ type: "pong" }));
    } else if (message.type === "subscribed") {
      document.getElementById("status").textContent = "subscribed to " + message.stream;
    } else if (message.type === "message") {
      document.getElementById("out").textContent = message.data.heat + ": " + message.data.score;
    }
  };
  socket.onclose = (event) => {
    document.getElementById("status").textContent = "closed " + event.code;
  };
</script>
</body></html>
"#;

/// chromedriver and the browsers it starts, in their own process group,
/// which is killed when this is dropped.
struct Driver {
    child: Child,
    address: SocketAddr,
}

impl Driver {
    fn start() -> Driver {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
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
            std::net::TcpStream::connect(driver.address).is_ok()
                && driver.call("GET", "/status", None)["value"]["ready"] == true
        });
        assert!(ready, "chromedriver did not become ready");
        driver
    }

    /// Sends one WebDriver command and returns the JSON response. chromedriver keeps
    /// connections open despite `Connection: close`, so the body is read
    /// by its `Content-Length`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream =
            std::net::TcpStream::connect(self.address).expect("connect to chromedriver");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
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
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl<'a> Session<'a> {
    fn new(driver: &'a Driver, profile: &std::path::Path) -> Session<'a> {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
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

    fn open(&self, url: &str) {
        let answer = self.driver.call(
            "POST",
            &format!("/session/{}/url", self.id),
            Some(json!({ "url": url })),
        );
        assert!(answer["value"].is_null(), "navigation failed: {answer}");
    }

    fn text_of(&self, element_id: &str) -> String {
        let script = format!("return document.getElementById('{element_id}').textContent;");
        let answer = self.driver.call(
            "POST",
            &format!("/session/{}/execute/sync", self.id),
            Some(json!({ "script": script, "args": [] })),
        );
        answer["value"].as_str().unwrap_or_default().to_string()
    }

    /// Polls the element until its text is `expected`.
    fn wait_for_text(&self, element_id: &str, expected: &str) {
        let mut last = String::new();
        let found = support::eventually(Duration::from_secs(20), || {
            last = self.text_of(element_id);
            last == expected
        });
        assert!(found, "#{element_id} is {last:?}, expected {expected:?}");
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.driver
            .call("DELETE", &format!("/session/{}", self.id), None);
    }
}

#[test]
fn browser_page_updates_on_broadcast() {
    if support::skip_without("chromium") || support::skip_without("chromedriver") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    std::fs::write(dir.path().join("public/live.html"), PAGE).unwrap();
    let profile = dir.path().join("chromium-profile");
    let navigator = Navigator::start_in(dir, &Showcase::default().toml(), &[]);

    let driver = Driver::start();
    let session = Session::new(&driver, &profile);
    session.open(&format!("http://{}/showcase/live.html", navigator.address));
    session.wait_for_text("status", "subscribed to scores");
    assert_eq!(session.text_of("out"), "nothing yet");

    let body = json!({"stream": "scores", "data": {"heat": "Heat 12", "score": 94}});
    let response = navigator.request(
        "POST",
        "/_broadcast",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["delivered"], 1);
    session.wait_for_text("out", "Heat 12: 94");
}
