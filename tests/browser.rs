//! A real browser on the cable. Headless Chromium, driven by chromedriver
//! over the WebDriver HTTP API, loads a static page from navigator whose
//! script subscribes to a stream. A broadcast must then change the page.

mod support;

use serde_json::json;
use support::browser::{Driver, Session};
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
