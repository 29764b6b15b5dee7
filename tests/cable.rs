//! The built-in cable over real WebSocket connections on loopback:
//! subscribe, broadcast, unsubscribe, pings, idle and size limits, slow
//! consumers, broadcasts from a tenant process, reloads and shutdown.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Navigator, Showcase, event_scope, write_public_tree};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

type Ws = WebSocketStream<TcpStream>;

/// Generous bound for anything that should happen promptly; tests wait
/// for events, never assert how long they took.
const PATIENCE: Duration = Duration::from_secs(15);

/// Starts navigator on a Showcase config with the cable at its defaults
/// (`/cable`, `/_broadcast`) and `env` in its environment.
fn start(env: &[(&str, &str)]) -> Navigator {
    start_with(&Showcase::default(), env)
}

fn start_with(showcase: &Showcase, env: &[(&str, &str)]) -> Navigator {
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    Navigator::start_in(dir, &showcase.toml(), env)
}

async fn connect(address: SocketAddr, path: &str) -> Ws {
    let stream = TcpStream::connect(address).await.unwrap();
    let url = format!("ws://{address}{path}");
    let (ws, response) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(response.status(), 101);
    ws
}

async fn send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// Reads the next frame; `None` when the connection ended.
async fn next_frame(ws: &mut Ws) -> Option<Message> {
    match tokio::time::timeout(PATIENCE, ws.next()).await {
        Ok(Some(Ok(message))) => Some(message),
        Ok(Some(Err(error))) => {
            eprintln!("connection ended with an error: {error}");
            None
        }
        Ok(None) => None,
        Err(_) => panic!("no frame within {PATIENCE:?}"),
    }
}

/// Reads the next text frame as JSON, skipping pings.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match next_frame(ws).await {
            Some(Message::Text(text)) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] != "ping" {
                    return value;
                }
            }
            Some(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads up to the close frame that ends the connection and returns its
/// code and reason.
async fn close_code(ws: &mut Ws) -> Option<(CloseCode, String)> {
    loop {
        match next_frame(ws).await {
            Some(Message::Close(frame)) => {
                return frame.map(|frame| (frame.code, frame.reason.to_string()));
            }
            Some(_) => {}
            None => return None,
        }
    }
}

async fn subscribe(ws: &mut Ws, stream: &str) {
    send_json(ws, json!({"type": "subscribe", "stream": stream})).await;
    assert_eq!(
        next_json(ws).await,
        json!({"type": "subscribed", "stream": stream})
    );
}

/// POSTs a broadcast and returns the status and the JSON response body.
async fn broadcast(address: SocketAddr, body: Value) -> (u16, Value) {
    let response = tokio::task::spawn_blocking(move || {
        support::http_request(
            address,
            "POST",
            "/_broadcast",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    })
    .await
    .unwrap();
    let value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_subscriber() {
    let navigator = start(&[]);
    let address = navigator.address;
    let mut scores = Vec::new();
    for _ in 0..60 {
        let mut ws = connect(address, "/cable").await;
        subscribe(&mut ws, "live-scores").await;
        scores.push(ws);
    }
    let mut others = Vec::new();
    for _ in 0..10 {
        let mut ws = connect(address, "/cable").await;
        subscribe(&mut ws, "other").await;
        others.push(ws);
    }

    let data = json!({"html": "<turbo-stream action=\"replace\"></turbo-stream>", "n": [1, 2]});
    let (status, answer) = broadcast(address, json!({"stream": "live-scores", "data": data})).await;
    assert_eq!(status, 200);
    assert_eq!(answer, json!({"delivered": 60, "dropped": 0}));
    for ws in &mut scores {
        assert_eq!(
            next_json(ws).await,
            json!({"type": "message", "stream": "live-scores", "data": data})
        );
    }

    let (_, answer) = broadcast(address, json!({"stream": "other", "data": "second"})).await;
    assert_eq!(answer["delivered"], 10);
    for ws in &mut others {
        let message = next_json(ws).await;
        assert_eq!(message["data"], "second", "no live-scores message first");
    }
    // The access record is written once the response body is sent, which
    // may be just after the client has read it.
    let logged = support::eventually(PATIENCE, || {
        navigator.logs.count("answer=\"broadcast\"") >= 2
    });
    assert!(logged, "{}", navigator.logs.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let navigator = start(&[]);
    let mut ws = connect(navigator.address, "/cable").await;
    subscribe(&mut ws, "a").await;
    subscribe(&mut ws, "b").await;
    send_json(&mut ws, json!({"type": "unsubscribe", "stream": "a"})).await;

    // The unsubscribe is handled before any later frame of the same
    // connection, so a subscribe after it acknowledges its completion.
    subscribe(&mut ws, "c").await;
    let (_, answer) = broadcast(navigator.address, json!({"stream": "a", "data": 1})).await;
    assert_eq!(answer["delivered"], 0);
    let (_, answer) = broadcast(navigator.address, json!({"stream": "b", "data": 2})).await;
    assert_eq!(answer["delivered"], 1);
    assert_eq!(next_json(&mut ws).await["data"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_sent_and_pongs_keep_alive() {
    let navigator = start(&[
        ("NAVIGATOR_CABLE_PING_INTERVAL", "200ms"),
        ("NAVIGATOR_CABLE_IDLE_TIMEOUT", "700ms"),
    ]);
    let mut ws = connect(navigator.address, "/cable").await;
    subscribe(&mut ws, "s").await;

    // Replying to every ping keeps the connection open across several idle
    // timeouts.
    for _ in 0..12 {
        match next_frame(&mut ws).await {
            Some(Message::Text(text)) => {
                assert_eq!(text.as_str(), r#"{"type":"ping"}"#);
                send_json(&mut ws, json!({"type": "pong"})).await;
            }
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    let (_, answer) = broadcast(navigator.address, json!({"stream": "s", "data": "alive"})).await;
    assert_eq!(answer["delivered"], 1);
    assert_eq!(next_json(&mut ws).await["data"], "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_closed_when_idle() {
    let navigator = start(&[
        ("NAVIGATOR_CABLE_PING_INTERVAL", "100ms"),
        ("NAVIGATOR_CABLE_IDLE_TIMEOUT", "500ms"),
    ]);
    let mut ws = connect(navigator.address, "/cable").await;
    subscribe(&mut ws, "s").await;

    // Reading pings is not activity: only frames from the client are.
    let (code, reason) = close_code(&mut ws)
        .await
        .unwrap_or_else(|| panic!("no close frame; log:\n{}", navigator.logs.text()));
    assert_eq!(code, CloseCode::Normal);
    assert_eq!(reason, "idle timeout");
    let (_, answer) = broadcast(navigator.address, json!({"stream": "s", "data": 1})).await;
    assert_eq!(answer["delivered"], 0, "the closed connection unsubscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009() {
    let navigator = start(&[]);
    let mut ws = connect(navigator.address, "/cable").await;

    // Just under the 128 KiB limit is accepted.
    let padding = "x".repeat(120 * 1024);
    send_json(&mut ws, json!({"type": "pong", "padding": padding})).await;
    subscribe(&mut ws, "s").await;

    let padding = "x".repeat(130 * 1024);
    send_json(&mut ws, json!({"type": "pong", "padding": padding})).await;
    let (code, _) = close_code(&mut ws).await.expect("a close frame");
    assert_eq!(code, CloseCode::Size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_connection() {
    let navigator = start(&[]);
    let address = navigator.address;

    let mut ws = connect(address, "/cable").await;
    ws.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await.unwrap().0, CloseCode::Policy);

    let mut ws = connect(address, "/cable").await;
    send_json(&mut ws, json!({"type": "subscribe"})).await;
    assert_eq!(close_code(&mut ws).await.unwrap().0, CloseCode::Policy);

    let mut ws = connect(address, "/cable").await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await.unwrap().0, CloseCode::Unsupported);

    // A text frame that is not UTF-8 fails the connection with 1007.
    let mut ws = connect(address, "/cable").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(close_code(&mut ws).await.unwrap().0, CloseCode::Invalid);

    // An unknown command type is ignored.
    let mut ws = connect(address, "/cable").await;
    send_json(&mut ws, json!({"type": "hello"})).await;
    subscribe(&mut ws, "s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_request_to_cable_gets_426() {
    let navigator = start(&[]);
    let response = navigator.get("/cable");
    assert_eq!(response.status, 426);
    assert_eq!(response.header("upgrade"), Some("websocket"));
    let response = navigator.request(
        "GET",
        "/cable",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "8"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    );
    assert_eq!(response.status, 426);
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_endpoint_rejects_bad_requests() {
    let navigator = start(&[]);
    let response = navigator.get("/_broadcast");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("POST"));
    let response = navigator.request("POST", "/_broadcast", &[], b"{\"stream\":");
    assert_eq!(response.status, 400);
    let response = navigator.request("POST", "/_broadcast", &[], b"{\"data\":\"x\"}");
    assert_eq!(response.status, 400);
    assert!(response.text().contains("stream"), "{}", response.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_accepted_from_other_loopback_address() {
    let navigator = start(&[]);
    let mut ws = connect(navigator.address, "/cable").await;
    subscribe(&mut ws, "s").await;

    // 127.0.0.2 is loopback too (127.0.0.0/8): the peer check must accept
    // it. Binding the client there makes it the socket's peer address.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(navigator.address).await.unwrap();
    let body = r#"{"stream":"s","data":"from 127.0.0.2"}"#;
    let request = format!(
        "POST /_broadcast HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let response = support::parse_response(&raw, false).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(next_json(&mut ws).await["data"], "from 127.0.0.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_slow_others() {
    let navigator = start(&[("NAVIGATOR_CABLE_SEND_QUEUE", "8")]);
    let address = navigator.address;

    // The slow client has a tiny receive buffer and never reads after its
    // subscription is confirmed.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(address).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(format!("ws://{address}/cable"), stream)
        .await
        .unwrap();
    subscribe(&mut slow, "feed").await;

    let mut fast = Vec::new();
    for _ in 0..5 {
        let mut ws = connect(address, "/cable").await;
        subscribe(&mut ws, "feed").await;
        fast.push(ws);
    }

    // Readers drain their sockets concurrently with the broadcasts.
    let messages = 150;
    let mut readers = Vec::new();
    for mut ws in fast {
        readers.push(tokio::spawn(async move {
            let mut received = Vec::new();
            while received.len() < messages {
                let message = next_json(&mut ws).await;
                received.push(message["data"]["n"].as_u64().unwrap());
            }
            received
        }));
    }

    let padding = "p".repeat(64 * 1024);
    let mut dropped = 0;
    for n in 0..messages {
        let body = json!({"stream": "feed", "data": {"n": n, "padding": padding}});
        let (status, answer) = broadcast(address, body).await;
        assert_eq!(status, 200);
        dropped += answer["dropped"].as_u64().unwrap();
    }

    let expected: Vec<u64> = (0..messages as u64).collect();
    for reader in readers {
        assert_eq!(
            reader.await.unwrap(),
            expected,
            "fast clients get every message in order"
        );
    }
    assert!(dropped > 0, "the slow client's queue overflowed");
    let warning = navigator
        .logs
        .wait_for("messages dropped", PATIENCE)
        .expect("a slow-consumer warning");
    assert!(warning.contains("dropped="), "{warning}");
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_broadcasts_through_env_url() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let showcase = Showcase {
        events: 2,
        tenant_env: vec![(
            "TURBO_CABLE_BROADCAST_URL".into(),
            format!("http://127.0.0.1:{port}/_broadcast"),
        )],
        ..Showcase::default()
    };
    let config = showcase.toml().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let navigator = Navigator::start_in(dir, &config, &[]);

    let mut ws = connect(navigator.address, "/cable").await;
    subscribe(&mut ws, "heat 42").await;

    let scope = event_scope(1);
    let html = "<turbo-stream action=\"replace\" target=\"heat\"></turbo-stream>";
    let address = navigator.address;
    let response = tokio::task::spawn_blocking(move || {
        support::http_request(
            address,
            "POST",
            &format!("/showcase/{scope}/broadcast?stream=heat%2042"),
            &[],
            html.as_bytes(),
        )
    })
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["delivered"], 1);
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "message", "stream": "heat 42", "data": html})
    );
}

/// Whether the process has installed a handler for `signal`, read from
/// the `SigCgt` mask in /proc (bit N-1 stands for signal N). A signal sent
/// before that would kill it instead.
fn catches(pid: u32, signal: nix::sys::signal::Signal) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal as u64 - 1)) != 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_survive_reload() {
    let navigator = start(&[]);
    let mut ws = connect(navigator.address, "/cable").await;
    subscribe(&mut ws, "s").await;

    let config = std::fs::read_to_string(&navigator.config).unwrap();
    std::fs::write(
        &navigator.config,
        format!("{config}\n[cable]\npath = \"/showcase/regions/iad/cable\"\n"),
    )
    .unwrap();
    let pid = navigator.child.id();
    assert!(support::eventually(PATIENCE, || catches(
        pid,
        nix::sys::signal::Signal::SIGHUP
    )));
    navigator.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        navigator
            .logs
            .wait_for("reload applied", PATIENCE)
            .is_some(),
        "{}",
        navigator.logs.text()
    );

    let mut moved = connect(navigator.address, "/showcase/regions/iad/cable").await;
    subscribe(&mut moved, "s").await;
    let (_, answer) = broadcast(navigator.address, json!({"stream": "s", "data": "after"})).await;
    assert_eq!(answer["delivered"], 2);
    assert_eq!(next_json(&mut ws).await["data"], "after");
    assert_eq!(next_json(&mut moved).await["data"], "after");
    assert_ne!(
        navigator.get("/cable").status,
        426,
        "the old path is no cable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_cable_falls_through() {
    let showcase = Showcase {
        extra: "\n[cable]\nenabled = false\n".into(),
        ..Showcase::default()
    };
    let navigator = start_with(&showcase, &[]);
    assert_eq!(navigator.get("/cable").status, 404);
    let response = navigator.request("POST", "/_broadcast", &[], b"{\"stream\":\"s\"}");
    assert_eq!(response.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_with_1001() {
    let mut navigator = start(&[]);
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(navigator.address, "/cable").await;
        subscribe(&mut ws, "s").await;
        sockets.push(ws);
    }
    let pid = navigator.child.id();
    assert!(support::eventually(PATIENCE, || catches(
        pid,
        nix::sys::signal::Signal::SIGTERM
    )));
    navigator.signal(nix::sys::signal::Signal::SIGTERM);
    for ws in &mut sockets {
        let (code, reason) = close_code(ws).await.expect("a close frame");
        assert_eq!(code, CloseCode::Away);
        assert_eq!(reason, "server shutting down");
    }
    let code = tokio::task::spawn_blocking(move || {
        support::wait_with_timeout(&mut navigator.child, PATIENCE)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
}
