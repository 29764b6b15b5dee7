//! The request pipeline without tenant processes: health check,
//! redirects, rewrites, trailing slashes, static files and maintenance.

mod support;

use std::time::Duration;

use support::{Navigator, Showcase, start_showcase};

fn showcase_with_routes(maintenance: bool) -> Navigator {
    let showcase = Showcase {
        events: 4,
        maintenance,
        extra: r#"
[routes]
redirects = [
    { from = "^/$", to = "/showcase/studios/" },
    { from = "^/showcase/demo/?$", to = "/showcase/regions/iad/demo/", status = 301 },
]
rewrites = [
    { from = "^/assets/(.*)", to = "/showcase/assets/$1" },
    { from = "^/([^/]+\\.(ico|txt))$", to = "/showcase/$1" },
]
"#
        .to_string(),
        ..Showcase::default()
    };
    start_showcase(&showcase)
}

#[test]
fn health_check_answers_without_tenant() {
    let navigator = showcase_with_routes(false);
    let response = navigator.get("/up");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "OK");
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert!(response.header("x-request-id").is_some());
    assert_eq!(navigator.logs.count("tenant process started"), 0);
}

#[test]
fn request_id_kept_or_generated() {
    let navigator = showcase_with_routes(false);
    let kept = navigator.request("GET", "/up", &[("X-Request-Id", "abc-123")], b"");
    assert_eq!(kept.header("x-request-id"), Some("abc-123"));
    let first = navigator.get("/up");
    let second = navigator.get("/up");
    assert_ne!(first.header("x-request-id"), second.header("x-request-id"));
}

#[test]
fn redirects_first_match_with_query() {
    let navigator = showcase_with_routes(false);
    let root = navigator.get("/");
    assert_eq!(root.status, 302);
    assert_eq!(root.header("location"), Some("/showcase/studios/"));
    let demo = navigator.get("/showcase/demo?x=1");
    assert_eq!(demo.status, 301);
    assert_eq!(
        demo.header("location"),
        Some("/showcase/regions/iad/demo/?x=1")
    );
}

#[test]
fn rewrite_then_static_file() {
    let navigator = showcase_with_routes(false);
    let response = navigator.get("/assets/app-1234.css");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "body { color: black }\n");
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/css")
    );
    assert_eq!(
        response.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
}

#[test]
fn trailing_slash_redirects_root_and_tenants() {
    let navigator = showcase_with_routes(false);
    let root = navigator.get("/showcase");
    assert_eq!(root.status, 301);
    assert_eq!(root.header("location"), Some("/showcase/"));
    let tenant = navigator.get("/showcase/2025/boston/april?a=b");
    assert_eq!(tenant.status, 301);
    assert_eq!(
        tenant.header("location"),
        Some("/showcase/2025/boston/april/?a=b")
    );
    let post = navigator.request("POST", "/showcase/2025/boston/april", &[], b"x=1");
    assert_eq!(post.status, 308);
}

#[test]
fn try_files_index_suffix_and_directory() {
    let navigator = showcase_with_routes(false);
    let index = navigator.get("/showcase/studios/");
    assert_eq!(
        (index.status, index.text().as_str()),
        (200, "<h1>studios</h1>\n")
    );
    let suffix = navigator.get("/showcase/studios/millbrae");
    assert_eq!(
        (suffix.status, suffix.text().as_str()),
        (200, "<h1>millbrae</h1>\n")
    );
    let directory = navigator.get("/showcase/2025/boston");
    assert_eq!(directory.status, 301);
    assert_eq!(directory.header("location"), Some("/showcase/2025/boston/"));
    let prerendered = navigator.get("/showcase/2025/boston/");
    assert_eq!(prerendered.text(), "<h1>boston 2025</h1>\n");
    assert_eq!(navigator.logs.count("tenant process started"), 0);
}

#[test]
fn conditional_range_and_head_requests() {
    let navigator = showcase_with_routes(false);
    let full = navigator.get("/showcase/assets/app-1234.js");
    assert_eq!(full.status, 200);
    let etag = full.header("etag").unwrap().to_string();
    let last_modified = full.header("last-modified").unwrap().to_string();

    let by_etag = navigator.request(
        "GET",
        "/showcase/assets/app-1234.js",
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(by_etag.status, 304);
    assert!(by_etag.body.is_empty());
    let by_date = navigator.request(
        "GET",
        "/showcase/assets/app-1234.js",
        &[("If-Modified-Since", &last_modified)],
        b"",
    );
    assert_eq!(by_date.status, 304);

    let range = navigator.request(
        "GET",
        "/showcase/assets/app-1234.js",
        &[("Range", "bytes=0-6")],
        b"",
    );
    assert_eq!(range.status, 206);
    assert_eq!(range.text(), "console");
    assert_eq!(
        range.header("content-range"),
        Some(format!("bytes 0-6/{}", full.body.len()).as_str())
    );

    let head = navigator.request("HEAD", "/showcase/assets/app-1234.js", &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(full.body.len().to_string().as_str())
    );
}

#[test]
fn traversal_and_dotfiles_refused() {
    let navigator = showcase_with_routes(false);
    for path in [
        "/showcase/../outside.txt",
        "/showcase/%2e%2e/outside.txt",
        "/showcase/studios/%2E%2E/%2E%2E/outside.txt",
        "/showcase/..%2foutside.txt",
        "/showcase/a%5c..%5coutside.txt",
        "/showcase/%00",
    ] {
        let response = navigator.get(path);
        assert_eq!(response.status, 400, "{path}");
    }
    // The dotfile is never served as a file; the request goes on to the
    // index tenant instead.
    let dotfile = navigator.request(
        "GET",
        "/showcase/.secret",
        &[("Accept", "application/json")],
        b"",
    );
    assert!(!dotfile.text().contains("hidden"), "{}", dotfile.text());
}

#[test]
fn unknown_path_is_not_found() {
    let navigator = showcase_with_routes(false);
    assert_eq!(navigator.get("/elsewhere").status, 404);
}

#[test]
fn maintenance_serves_static_and_503() {
    let navigator = showcase_with_routes(true);
    let page = navigator.get("/showcase/studios/");
    assert_eq!(page.status, 200);
    let asset = navigator.get("/assets/app-1234.css");
    assert_eq!(asset.status, 200);
    let dynamic = navigator.get("/showcase/2025/boston/april/");
    assert_eq!(dynamic.status, 503);
    assert_eq!(
        dynamic.text(),
        "<html><body>maintenance page</body></html>\n"
    );
    assert!(dynamic.header("retry-after").is_some());
    assert_eq!(dynamic.header("cache-control"), Some("no-store"));
    assert_eq!(navigator.get("/up").status, 200);
    assert_eq!(navigator.logs.count("tenant process started"), 0);
}

#[test]
fn access_log_records_each_request() {
    let navigator = showcase_with_routes(false);
    navigator.request(
        "GET",
        "/showcase/studios/",
        &[("User-Agent", "test-agent/1")],
        b"",
    );
    let line = navigator
        .logs
        .wait_for("test-agent/1", Duration::from_secs(5))
        .expect("access log line");
    assert!(line.contains("status=200"), "{line}");
    assert!(
        line.contains("answer=\"static\"") || line.contains("answer=static"),
        "{line}"
    );
}

#[test]
fn h2c_prior_knowledge_served() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let navigator = showcase_with_routes(false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, version, body) = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(navigator.address)
            .await
            .unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = http::Request::get(format!("http://{}/showcase/studios/", navigator.address))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let version = response.version();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, version, body)
    });
    assert_eq!(status, 200);
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(&body[..], b"<h1>studios</h1>\n");
}

#[test]
fn h2c_upgrade_header_not_honoured() {
    let navigator = showcase_with_routes(false);
    let response = navigator.request(
        "GET",
        "/showcase/studios/",
        &[
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
        ],
        b"",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "<h1>studios</h1>\n");
}

/// Splits pipelined responses that all carry `Content-Length`.
fn split_responses(mut raw: &[u8]) -> Vec<support::HttpResponse> {
    let mut responses = Vec::new();
    while let Some(end) = raw.windows(4).position(|window| window == b"\r\n\r\n") {
        let head = support::parse_response(&raw[..end + 4], true).expect("response head");
        let length: usize = head
            .header("content-length")
            .and_then(|value| value.parse().ok())
            .expect("content-length");
        let body_end = (end + 4 + length).min(raw.len());
        let mut response = head;
        response.body = raw[end + 4..body_end].to_vec();
        responses.push(response);
        raw = &raw[body_end..];
    }
    responses
}

/// A file large enough to be sent with `sendfile` once it is cached: the
/// first request reads it from disk, the next ones come from the cache.
#[test]
fn large_file_same_from_cache() {
    let navigator = showcase_with_routes(false);
    let contents: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(navigator.path("public/assets/bundle.js"), &contents).unwrap();
    let request = "GET /showcase/assets/bundle.js HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let last =
        "GET /showcase/assets/bundle.js HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let raw = support::raw_exchange(
        navigator.address,
        format!("{request}{request}{last}").as_bytes(),
        Duration::from_secs(30),
    );
    let responses = split_responses(&raw);
    assert_eq!(responses.len(), 3);
    for response in &responses {
        assert_eq!(response.status, 200);
        assert!(response.body == contents, "body differs from the file");
    }
    // Each access record counts the bytes that went out.
    assert!(support::eventually(Duration::from_secs(5), || {
        navigator.logs.count("bytes=300000") == 3
    }));
}

#[test]
fn stalled_client_released() {
    let showcase = Showcase {
        events: 1,
        extra: "\n[server.limits]\nsend_timeout = \"1s\"\n".to_string(),
        ..Showcase::default()
    };
    let navigator = start_showcase(&showcase);
    // Larger than the socket buffers of both ends together.
    let size = 48 << 20;
    std::fs::write(navigator.path("public/large.bin"), vec![b'x'; size]).unwrap();

    let mut stream = std::net::TcpStream::connect(navigator.address).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /showcase/large.bin HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();

    // The client reads nothing. navigator gives up on the response and
    // writes its access record with the bytes that went out.
    let line = navigator
        .logs
        .wait_for("/showcase/large.bin", Duration::from_secs(20))
        .expect("access record of the abandoned response");
    let bytes: usize = support::parse_field(&line, "bytes")
        .and_then(|value| value.parse().ok())
        .expect("bytes field");
    assert!(bytes < size, "{line}");
    assert!(
        navigator
            .logs
            .wait_for("client stopped reading", Duration::from_secs(5))
            .is_some()
    );
    drop(stream);
}

/// Starts navigator with `limits` and a file of `size` bytes at
/// `/showcase/bundle.js`, and requests it over HTTP/2. The client never
/// reads the body, so it grants no more flow-control window. Returns
/// whether navigator closed the connection within 20 s.
fn h2_client_stalls(limits: &str, size: usize) -> (Navigator, bool) {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let showcase = Showcase {
        events: 1,
        extra: format!("\n[server.limits]\n{limits}\n"),
        ..Showcase::default()
    };
    let navigator = start_showcase(&showcase);
    std::fs::write(navigator.path("public/bundle.js"), vec![b'x'; size]).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let closed = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(navigator.address)
            .await
            .unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(65_535)
                .initial_connection_window_size(65_535)
                .handshake(TokioIo::new(stream))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let request =
            http::Request::get(format!("http://{}/showcase/bundle.js", navigator.address))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let closed = tokio::time::timeout(Duration::from_secs(20), connection).await;
        drop(response);
        closed.is_ok()
    });
    (navigator, closed)
}

/// A body streamed in chunks waits for the next window: navigator writes
/// nothing meanwhile, so the stall is seen on the body.
#[test]
fn stalled_h2_stream_released() {
    let (navigator, closed) = h2_client_stalls("send_timeout = \"1s\"", 3 << 20);
    assert!(closed, "the connection stayed open");
    assert!(
        navigator
            .logs
            .wait_for("client stopped reading", Duration::from_secs(5))
            .is_some()
    );
}

/// A body of one frame is handed to hyper whole, and the request ends
/// while its data waits in hyper's buffers. The idle timeout then ends
/// the connection, though the graceful close never completes.
#[test]
fn stalled_h2_buffer_released() {
    let (navigator, closed) = h2_client_stalls("idle_connection_timeout = \"1s\"", 300_000);
    assert!(closed, "the connection stayed open");
    assert!(
        navigator
            .logs
            .wait_for("did not take its last response", Duration::from_secs(5))
            .is_some()
    );
}
