//! Hostile requests sent as raw bytes over TCP: traversal in every
//! encoding, odd request targets and Host headers, header injection,
//! oversized heads and bodies, smuggling shapes, h2c upgrades and slow
//! clients. Each has its expected status or "connection closed", and the
//! demo tenants record every request they receive, which proves that
//! nothing reached a tenant it should not.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{Navigator, Showcase, write_public_tree};

/// `judge:judge-secret`.
const AUTH: &str = "Authorization: Basic anVkZ2U6anVkZ2Utc2VjcmV0\r\n";

/// What a hostile request must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A response with this status.
    Status(u16),
    /// This status, then the server closes the connection.
    StatusThenClose(u16),
    /// No response at all; the server closes the connection.
    Closed,
}

/// One hostile request.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
    /// Whether the request may reach a tenant. Every request carries its
    /// case number as `case=N` in the query (where it can have one), so
    /// the tenants' request log shows which ones arrived.
    may_reach_tenant: bool,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        expect,
        may_reach_tenant: false,
    }
}

fn reaching(mut case: Case) -> Case {
    case.may_reach_tenant = true;
    case
}

/// Builds a GET with `Host: localhost` and `Connection: close`.
fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// How an exchange ended.
struct Outcome {
    response: Vec<u8>,
    /// The server closed the connection (end of file or reset), rather
    /// than the client's read timing out.
    closed: bool,
}

fn exchange(address: SocketAddr, bytes: &[u8], pause: Option<Duration>) -> Outcome {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server may refuse before every byte is written; a failed write
    // shows in the response then.
    let _ = stream.write_all(bytes);
    if let Some(pause) = pause {
        std::thread::sleep(pause);
    }
    let mut response = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => {
                return Outcome {
                    response,
                    closed: true,
                };
            }
            Ok(read) => response.extend_from_slice(&buffer[..read]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Outcome {
                    response,
                    closed: false,
                };
            }
            Err(_) => {
                return Outcome {
                    response,
                    closed: true,
                };
            }
        }
    }
}

fn status_of(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(&response[..response.len().min(64)]).ok()?;
    text.strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()
}

fn start() -> Navigator {
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    std::fs::write(dir.path().join("htpasswd"), "judge:judge-secret\n").unwrap();
    let showcase = Showcase {
        events: 4,
        tenant_env: vec![(
            "DEMO_REQUEST_LOG".to_string(),
            "@DIR@/requests.log".to_string(),
        )],
        extra: r#"
[auth]
enabled = true
realm = "Showcase"
htpasswd = "@DIR@/htpasswd"
public_paths = ["/showcase/studios/", "/showcase/assets/", "*.css", "*.js"]
"#
        .to_string(),
        ..Showcase::default()
    };
    let toml = showcase.toml().replace(
        "pid_file = \"@DIR@/navigator.pid\"",
        "pid_file = \"@DIR@/navigator.pid\"\n\n\
         [server.limits]\n\
         header_read_timeout = \"1s\"\n\
         max_header_bytes = 16384\n\
         max_body_bytes = 65536\n",
    );
    Navigator::start_in(dir, &toml, &[])
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let event = "/showcase/2025/boston/april/";
    let big_header = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_target = format!("/showcase/studios/{}", "a".repeat(70_000));
    let smuggled = "GET /showcase/2025/boston/april/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let big_body = "x".repeat(70_000);
    let big_chunks: String = (0..20)
        .map(|_| format!("1000\r\n{}\r\n", "y".repeat(4096)))
        .collect();

    vec![
        // Traversal, raw and encoded.
        case(
            "raw dot-dot",
            get("/showcase/../outside.txt?case=0"),
            Status(400),
        ),
        case(
            "encoded dot-dot",
            get("/showcase/%2e%2e/outside.txt?case=1"),
            Status(400),
        ),
        case(
            "upper-case encoded dot-dot",
            get("/showcase/%2E%2E/outside.txt?case=2"),
            Status(400),
        ),
        case(
            "mixed dot-dot",
            get("/showcase/.%2e/outside.txt?case=3"),
            Status(400),
        ),
        case(
            "dot-dot encoded slash",
            get("/showcase/assets/..%2f..%2foutside.txt?case=4"),
            Status(400),
        ),
        case(
            "dot-dot upper encoded slash",
            get("/showcase/assets/..%2F..%2Foutside.txt?case=5"),
            Status(400),
        ),
        case(
            "double-encoded dot-dot stays literal and protected",
            get("/showcase/%252e%252e/%252e%252e/outside.txt?case=6"),
            Status(401),
        ),
        case(
            "raw backslash",
            get("/showcase/assets\\..\\..\\outside.txt?case=7"),
            Status(400),
        ),
        case(
            "encoded backslash",
            get("/showcase/assets/..%5c..%5coutside.txt?case=8"),
            Status(400),
        ),
        case(
            "encoded NUL",
            get("/showcase/assets/app-1234.css%00.html?case=9"),
            Status(400),
        ),
        case(
            "raw NUL in request line",
            "GET /showcase/assets/\0/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
            StatusThenClose(400),
        ),
        case(
            "overlong UTF-8 dot",
            get("/showcase/%c0%ae%c0%ae/outside.txt?case=11"),
            Status(400),
        ),
        case(
            "overlong 3-byte dot",
            get("/showcase/%e0%80%ae%e0%80%ae/outside.txt?case=12"),
            Status(400),
        ),
        case(
            "invalid percent escape",
            get("/showcase/%zz?case=13"),
            Status(400),
        ),
        case(
            "dot segment",
            get("/showcase/./studios/?case=14"),
            Status(400),
        ),
        case(
            "trailing dot segment",
            get("/showcase/studios/.?case=15"),
            Status(400),
        ),
        case(
            "double slashes merge to a public path",
            get("//showcase//studios//?case=16"),
            Status(200),
        ),
        case(
            "double slashes stay protected",
            get("//showcase//2025//boston//april//?case=17"),
            Status(401),
        ),
        case(
            "encoded control character",
            get("/showcase/studios/%0d%0aX:%20y?case=18"),
            Status(400),
        ),
        // Request targets.
        case(
            "absolute-form routed by path",
            "GET http://localhost/showcase/studios/?case=19 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            Status(200),
        ),
        case(
            "absolute-form with another host still needs auth",
            format!(
                "GET http://evil.test{event}?case=20 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            ),
            Status(401),
        ),
        case(
            "absolute-form traversal",
            "GET http://localhost/showcase/../outside.txt?case=21 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            Status(400),
        ),
        case(
            "asterisk-form GET",
            "GET * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            Status(400),
        ),
        case(
            "OPTIONS *",
            "OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            Status(400),
        ),
        case(
            "CONNECT authority-form",
            "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
            Status(400),
        ),
        case(
            "space in target",
            "GET /showcase/a b HTTP/1.1\r\nHost: localhost\r\n\r\n",
            StatusThenClose(400),
        ),
        case(
            "fragment is dropped, not routed",
            get("/showcase/2025/boston/april/#/../../studios/"),
            Status(401),
        ),
        // Host headers.
        case(
            "HTTP/1.1 without Host",
            "GET /showcase/studios/?case=27 HTTP/1.1\r\nConnection: close\r\n\r\n",
            Status(400),
        ),
        case(
            "empty Host",
            "GET /showcase/studios/?case=28 HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
            Status(400),
        ),
        case(
            "two Host headers",
            "GET /showcase/studios/?case=29 HTTP/1.1\r\nHost: localhost\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
            Status(400),
        ),
        case(
            "Host with a path",
            "GET /showcase/studios/?case=30 HTTP/1.1\r\nHost: evil.test/../x\r\nConnection: close\r\n\r\n",
            Status(400),
        ),
        case(
            "Host with user info",
            "GET /showcase/studios/?case=31 HTTP/1.1\r\nHost: user@evil.test\r\nConnection: close\r\n\r\n",
            Status(400),
        ),
        case(
            "Host with a bad port",
            "GET /showcase/studios/?case=32 HTTP/1.1\r\nHost: localhost:http\r\nConnection: close\r\n\r\n",
            Status(400),
        ),
        case(
            "HTTP/1.0 without Host, public",
            "GET /showcase/studios/?case=33 HTTP/1.0\r\n\r\n",
            Status(200),
        ),
        case(
            "HTTP/1.0 without Host, protected",
            format!("GET {event}?case=34 HTTP/1.0\r\n\r\n"),
            Status(401),
        ),
        // Header injection and malformed header lines.
        case(
            "bare CR in a header value",
            "GET /showcase/studios/?case=35 HTTP/1.1\r\nHost: localhost\r\nX-A: a\rSet-Cookie: b\r\n\r\n",
            StatusThenClose(400),
        ),
        case(
            "NUL in a header value",
            "GET /showcase/studios/?case=36 HTTP/1.1\r\nHost: localhost\r\nX-A: a\0b\r\n\r\n",
            StatusThenClose(400),
        ),
        case(
            "obs-fold continuation line",
            "GET /showcase/studios/?case=37 HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n  folded\r\n\r\n",
            StatusThenClose(400),
        ),
        case(
            "space before the colon",
            "GET /showcase/studios/?case=38 HTTP/1.1\r\nHost : localhost\r\n\r\n",
            StatusThenClose(400),
        ),
        case(
            "control character in a header name",
            "GET /showcase/studios/?case=39 HTTP/1.1\r\nHost: localhost\r\nX\x01A: b\r\n\r\n",
            StatusThenClose(400),
        ),
        case(
            "invalid method token",
            "G\x01T /showcase/studios/?case=40 HTTP/1.1\r\nHost: localhost\r\n\r\n",
            StatusThenClose(400),
        ),
        case(
            "unknown HTTP version",
            "GET /showcase/studios/?case=41 HTTP/1.7\r\nHost: localhost\r\n\r\n",
            StatusThenClose(400),
        ),
        // Oversized heads.
        case(
            "header larger than max_header_bytes",
            format!(
                "GET /showcase/studios/?case=42 HTTP/1.1\r\nHost: localhost\r\n{big_header}\r\n"
            ),
            StatusThenClose(431),
        ),
        case(
            "more than 100 headers",
            format!(
                "GET /showcase/studios/?case=43 HTTP/1.1\r\nHost: localhost\r\n{many_headers}\r\n"
            ),
            StatusThenClose(431),
        ),
        case(
            "request target larger than max_header_bytes",
            format!("GET {long_target}?case=44 HTTP/1.1\r\nHost: localhost\r\n\r\n"),
            StatusThenClose(431),
        ),
        // Body framing and smuggling shapes.
        reaching(case(
            "Content-Length and Transfer-Encoding: chunked framing wins, then close",
            format!(
                "POST {event}?case=45 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            StatusThenClose(200),
        )),
        reaching(case(
            "Transfer-Encoding before Content-Length",
            format!(
                "POST {event}?case=46 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            StatusThenClose(200),
        )),
        case(
            "conflicting duplicate Content-Length",
            format!(
                "POST {event}?case=47 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
            ),
            StatusThenClose(400),
        ),
        case(
            "Content-Length list",
            format!(
                "POST {event}?case=48 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Content-Length: 5, 6\r\n\r\nhello!"
            ),
            StatusThenClose(400),
        ),
        case(
            "negative Content-Length",
            format!(
                "POST {event}?case=49 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Content-Length: -1\r\n\r\n"
            ),
            StatusThenClose(400),
        ),
        case(
            "Content-Length with a plus sign",
            format!(
                "POST {event}?case=50 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Content-Length: +5\r\n\r\nhello"
            ),
            StatusThenClose(400),
        ),
        case(
            "Transfer-Encoding other than chunked",
            format!(
                "POST {event}?case=51 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Transfer-Encoding: gzip\r\n\r\n"
            ),
            StatusThenClose(400),
        ),
        case(
            "chunked not the final encoding",
            format!(
                "POST {event}?case=52 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
            ),
            StatusThenClose(400),
        ),
        case(
            "Transfer-Encoding on HTTP/1.0",
            format!(
                "POST {event}?case=53 HTTP/1.0\r\nHost: localhost\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            StatusThenClose(400),
        ),
        case(
            "Transfer-Encoding with a space before the colon",
            format!(
                "POST {event}?case=54 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello"
            ),
            StatusThenClose(400),
        ),
        case(
            "Content-Length over max_body_bytes",
            format!(
                "POST {event}?case=55 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Content-Length: 70000\r\n\r\n{big_body}"
            ),
            Status(413),
        ),
        reaching(case(
            "chunked body over max_body_bytes is cut off",
            format!(
                "POST {event}?case=56 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n{big_chunks}0\r\n\r\n"
            ),
            StatusThenClose(413),
        )),
        reaching(case(
            "invalid chunk size",
            format!(
                "POST {event}?case=57 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
            ),
            StatusThenClose(400),
        )),
        case(
            "anonymous body to a protected path",
            format!(
                "POST {event}?case=58 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            ),
            Status(401),
        ),
        // Protocol switches.
        reaching(case(
            "h2c upgrade is not honoured",
            format!(
                "GET {event}?case=59 HTTP/1.1\r\nHost: localhost\r\n{AUTH}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            ),
            Status(200),
        )),
        case(
            "h2c upgrade on a static file",
            "GET /showcase/studios/?case=60 HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            Status(200),
        ),
        case(
            "spoofed user header",
            format!(
                "GET {event}?case=61 HTTP/1.1\r\nHost: localhost\r\nRemote-User: judge\r\nX-Forwarded-User: judge\r\nConnection: close\r\n\r\n"
            ),
            Status(401),
        ),
        // Slow and silent clients.
        case(
            "incomplete head is closed after header_read_timeout",
            "GET /showcase/studios/?case=62 HTTP/1.1\r\nHost: localhost\r\n",
            Closed,
        ),
        case(
            "incomplete POST head is closed after header_read_timeout",
            "POST /showcase/studios/?case=63 HTTP/1.1\r\nHost: localhost\r\n",
            Closed,
        ),
        case("stalled HTTP/2 preface after PR is closed", "PR", Closed),
        case(
            "stalled HTTP/2 preface after its first line is closed",
            "PRI * HTTP/2.0\r\n",
            Closed,
        ),
        case("silent connection is closed", "", Closed),
    ]
}

#[test]
fn hostile_requests_answered_and_contained() {
    let navigator = start();
    let cases = cases();
    assert!(cases.len() >= 40);
    for (number, case) in cases.iter().enumerate() {
        let text = String::from_utf8_lossy(&case.bytes);
        if let Some(start) = text.find("case=") {
            let digits: String = text[start + 5..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            assert_eq!(digits, number.to_string(), "case marker of {:?}", case.name);
        }
    }

    let mut failures = Vec::new();
    for (number, case) in cases.iter().enumerate() {
        let outcome = exchange(navigator.address, &case.bytes, None);
        let status = status_of(&outcome.response);
        let matched = match case.expect {
            Expect::Status(expected) => status == Some(expected),
            Expect::StatusThenClose(expected) => status == Some(expected) && outcome.closed,
            Expect::Closed => outcome.response.is_empty() && outcome.closed,
        };
        if !matched {
            failures.push(format!(
                "case {number} ({}): expected {:?}, got status {status:?}, closed {}: {:?}",
                case.name,
                case.expect,
                outcome.closed,
                String::from_utf8_lossy(&outcome.response[..outcome.response.len().min(200)])
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A tenant appends to the request log before it responds, and every
    // case above got its response, so the log is complete now.
    let log = std::fs::read_to_string(navigator.path("requests.log")).unwrap_or_default();
    let reached: Vec<&str> = log.lines().filter(|l| !l.contains(" GET /up ")).collect();
    for (number, case) in cases.iter().enumerate() {
        let marker = format!("case={number} ");
        let arrived = reached.iter().any(|line| line.contains(&marker));
        if !case.may_reach_tenant {
            assert!(
                !arrived,
                "case {number} ({}) reached a tenant: {reached:?}",
                case.name
            );
        }
    }
    assert!(
        !reached.iter().any(|line| line.contains("smuggled")),
        "a smuggled request reached a tenant: {reached:?}"
    );
    assert!(
        reached
            .iter()
            .any(|line| line.contains("case=59 ") && line.ends_with(" 200")),
        "the h2c request reached the tenant as a plain request: {reached:?}"
    );
}

#[test]
fn connection_limit_queues_extra_clients() {
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let toml = Showcase {
        events: 1,
        ..Showcase::default()
    }
    .toml()
    .replace(
        "pid_file = \"@DIR@/navigator.pid\"",
        "pid_file = \"@DIR@/navigator.pid\"\n\n[server.limits]\nmax_connections = 2\nheader_read_timeout = \"30s\"\n",
    );
    let navigator = Navigator::start_in(dir, &toml, &[]);

    // Two idle connections take both slots.
    let mut holders: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(navigator.address).unwrap();
            stream
                .write_all(b"GET /up HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut buffer = [0u8; 512];
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let read = stream.read(&mut buffer).unwrap();
            assert!(read > 0);
            stream
        })
        .collect();

    // A third client is accepted by the kernel but not served.
    let mut third = TcpStream::connect(navigator.address).unwrap();
    third
        .write_all(b"GET /up HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buffer = [0u8; 512];
    let waiting = third.read(&mut buffer);
    assert!(
        matches!(&waiting, Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the third connection was served while two held the limit: {waiting:?}"
    );

    // Freeing a slot lets it through.
    holders.pop();
    third
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut response = Vec::new();
    let _ = third.read_to_end(&mut response);
    assert_eq!(status_of(&response), Some(200));
}

/// Responses in `bytes`, by status, in order.
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text[at + 9..].get(..3)?.parse().ok())
        .collect()
}

/// One keep-alive connection whose requests the lean HTTP/1 server takes
/// first (pipelined, then a head split across writes), until a request
/// with a body passes the connection to hyper for the rest.
#[test]
fn lean_server_hands_connection_to_hyper() {
    let navigator = start();
    let event = "/showcase/2025/boston/april/";
    let mut stream = TcpStream::connect(navigator.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    // Two pipelined requests, then a head split across two writes.
    let public = "GET /showcase/studios/ HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stream
        .write_all(format!("{public}{public}").as_bytes())
        .unwrap();
    stream
        .write_all(b"GET /showcase/studios/ HTTP/1.1\r\nHo")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(b"st: localhost\r\n\r\n").unwrap();

    // A request with a body passes the connection to hyper, which serves
    // the last request too.
    let post = format!(
        "POST {event}lean-then-hyper HTTP/1.1\r\nHost: localhost\r\n{AUTH}Content-Length: 5\r\n\r\nhello"
    );
    stream.write_all(post.as_bytes()).unwrap();
    stream
        .write_all(
            b"GET /showcase/studios/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .unwrap();

    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("the connection closes after the last request");
    assert_eq!(
        statuses(&response),
        [200, 200, 200, 200, 200],
        "{}",
        String::from_utf8_lossy(&response)
    );

    let log = std::fs::read_to_string(navigator.path("requests.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|line| line.contains("POST ") && line.contains("lean-then-hyper")),
        "the POST did not reach its tenant: {log}"
    );
}
