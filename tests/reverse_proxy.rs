//! Reverse proxy routes against loopback upstreams over http and https
//! (a CA generated per test): captures, strip_path, header variables,
//! response headers and CORS preflights, retries for a late upstream, and
//! WebSocket tunnels.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use support::Navigator;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A loopback HTTP service standing in for the other end of a route.
/// Each response is JSON describing the request it got; an upgrade
/// request gets 101 and every byte echoed back.
struct Upstream {
    address: SocketAddr,
    /// `METHOD /path?query` of every request, in arrival order.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A test CA and a server certificate for 127.0.0.1 and localhost
/// signed by it.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn make_pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "navigator test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let certificate = params.signed_by(&server_key, &ca).unwrap();
    let chain = vec![CertificateDer::from(certificate.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    // The ring provider, as navigator's client uses (deprecated in rustls
    // 0.23.48 for lacking post-quantum key exchange).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

async fn start_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_upstream(listener, tls)
}

fn serve_upstream(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let acceptor = tls.map(TlsAcceptor::from);
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| describe(request, log.clone()));
                let builder = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    }
                }
            });
        }
    });
    Upstream { address, seen }
}

async fn describe(
    mut request: Request<Incoming>,
    log: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let uri = request.uri().to_string();
    log.lock()
        .unwrap()
        .push(format!("{} {uri}", request.method()));
    if request.headers().contains_key(hyper::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        });
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::default())
            .unwrap();
        return Ok(response);
    }
    let method = request.method().to_string();
    let mut headers = BTreeMap::new();
    for (name, value) in request.headers() {
        headers.insert(
            name.as_str().to_string(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        );
    }
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let report = json!({
        "method": method,
        "uri": uri,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let response = Response::builder()
        .header("content-type", "application/json")
        .header("access-control-allow-origin", "https://upstream.test")
        .body(Full::new(Bytes::from(report.to_string())))
        .unwrap();
    Ok(response)
}

/// Starts navigator with `routes` (TOML) after a minimal server section.
fn start_navigator(routes: &str, server_extra: &str) -> Navigator {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npid_file = \"@DIR@/navigator.pid\"\n{server_extra}\n{routes}"
    );
    Navigator::start(&config)
}

async fn request(
    navigator: &Navigator,
    method: &'static str,
    path: &str,
    headers: &[(&'static str, &'static str)],
    body: &'static [u8],
) -> support::HttpResponse {
    let address = navigator.address;
    let path = path.to_string();
    let headers = headers.to_vec();
    tokio::task::spawn_blocking(move || {
        support::http_request(address, method, &path, &headers, body)
    })
    .await
    .unwrap()
}

async fn get_json(navigator: &Navigator, path: &str) -> Value {
    let response = request(navigator, "GET", path, &[], b"").await;
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_build_target_url() {
    let upstream = start_upstream(None).await;
    let port = upstream.address.port();
    let navigator = start_navigator(
        &format!(
            r#"
[[routes.reverse_proxies]]
name = "ten"
path = "^/ten/(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)/(?P<rest>.*)$"
target = "http://127.0.0.1:{port}/got/$10/$1/$${{rest}}"

[[routes.reverse_proxies]]
path = "^/showcase/password(/.*)"
target = "http://127.0.0.1:{port}/showcase/password$1"
"#
        ),
        "",
    );

    // `$${rest}` because `${...}` is environment expansion at load time.
    let report = get_json(&navigator, "/ten/abcdefghij/x/y?z=1").await;
    assert_eq!(report["uri"], "/got/j/a/x/y?z=1");
    let report = get_json(&navigator, "/showcase/password/reset%20now?t=2").await;
    assert_eq!(report["uri"], "/showcase/password/reset%20now?t=2");
    assert!(
        navigator
            .logs
            .wait_for("answer=\"reverse-proxy\"", Duration::from_secs(10))
            .or_else(|| navigator
                .logs
                .wait_for("answer=reverse-proxy", Duration::from_secs(1)))
            .is_some(),
        "{}",
        navigator.logs.text()
    );
    assert!(
        navigator
            .logs
            .text()
            .contains(&format!("http://127.0.0.1:{port}/got/j/a/x/y"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_path_joins_target_path() {
    let upstream = start_upstream(None).await;
    let port = upstream.address.port();
    let navigator = start_navigator(
        &format!(
            r#"
[[routes.reverse_proxies]]
prefix = "/api"
target = "http://127.0.0.1:{port}/base"
strip_path = true

[[routes.reverse_proxies]]
path = "^/svc(/.*)$"
target = "http://127.0.0.1:{port}/v1/"
strip_path = true

[[routes.reverse_proxies]]
prefix = "/plain/"
target = "http://127.0.0.1:{port}/base"
"#
        ),
        "",
    );

    assert_eq!(
        get_json(&navigator, "/api/cable?x=1").await["uri"],
        "/base/cable?x=1"
    );
    assert_eq!(get_json(&navigator, "/api").await["uri"], "/base");
    assert_eq!(get_json(&navigator, "/svc/a/b").await["uri"], "/v1/a/b");
    assert_eq!(
        get_json(&navigator, "/plain/z").await["uri"],
        "/base/plain/z"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_substitute_variables() {
    let upstream = start_upstream(None).await;
    let port = upstream.address.port();
    let routes = format!(
        r#"
[[routes.reverse_proxies]]
prefix = "/h/"
target = "http://127.0.0.1:{port}/"

[routes.reverse_proxies.headers]
X-Forwarded-Host = "$host"
X-Client = "$remote_addr"
X-Scheme = "$scheme"
X-Both = "$scheme://$host/"
X-Drop = ""
"#
    );
    let navigator = start_navigator(&routes, "");
    let response = request(
        &navigator,
        "GET",
        "/h/x",
        &[
            ("Host", "example.test"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
            ("X-Drop", "secret"),
        ],
        b"",
    )
    .await;
    let headers = &response.json()["headers"];
    assert_eq!(headers["host"], format!("127.0.0.1:{port}"));
    assert_eq!(headers["x-forwarded-host"], "example.test");
    assert_eq!(headers["x-client"], "127.0.0.1", "the peer, not the header");
    assert_eq!(headers["x-scheme"], "http");
    assert_eq!(headers["x-both"], "http://example.test/");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert!(headers.get("x-drop").is_none());
    assert!(headers["x-request-id"].is_string());

    // With trust_proxy the forwarded client address and scheme count.
    let trusting = start_navigator(&routes, "trust_proxy = true");
    let response = request(
        &trusting,
        "GET",
        "/h/x",
        &[
            ("Host", "example.test"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
        ],
        b"",
    )
    .await;
    let headers = &response.json()["headers"];
    assert_eq!(headers["x-client"], "203.0.113.9");
    assert_eq!(headers["x-scheme"], "https");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_and_cors_preflight() {
    let upstream = start_upstream(None).await;
    let port = upstream.address.port();
    let navigator = start_navigator(
        &format!(
            r#"
[[routes.reverse_proxies]]
prefix = "/cors/"
target = "http://127.0.0.1:{port}/"

[routes.reverse_proxies.response_headers]
Access-Control-Allow-Origin = "*"
Access-Control-Allow-Methods = "GET, POST"

[[routes.reverse_proxies]]
prefix = "/bare/"
target = "http://127.0.0.1:{port}/"
"#
        ),
        "",
    );

    let preflight = request(
        &navigator,
        "OPTIONS",
        "/cors/x",
        &[
            ("Access-Control-Request-Method", "POST"),
            ("Origin", "https://a.test"),
        ],
        b"",
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("GET, POST")
    );

    let response = request(&navigator, "GET", "/cors/y", &[], b"").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("*"),
        "the configured value replaces the upstream's"
    );

    // Without response_headers an OPTIONS request is proxied.
    let options = request(&navigator, "OPTIONS", "/bare/z", &[], b"").await;
    assert_eq!(options.status, 200);
    assert_eq!(upstream.seen(), ["GET /cors/y", "OPTIONS /bare/z"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_target_trusts_configured_ca() {
    let pki = make_pki();
    let trusted = start_upstream(Some(pki.server.clone())).await;
    let untrusted = start_upstream(Some(make_pki().server)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
pid_file = "@DIR@/navigator.pid"

[routes]
tls_ca_file = "@DIR@/ca.pem"

[[routes.reverse_proxies]]
prefix = "/secure/"
target = "https://127.0.0.1:{trusted}/base"
strip_path = true

[[routes.reverse_proxies]]
prefix = "/ws/"
target = "https://localhost:{trusted}/"
websocket = true

[[routes.reverse_proxies]]
prefix = "/untrusted/"
target = "https://127.0.0.1:{untrusted}/"
"#,
        trusted = trusted.address.port(),
        untrusted = untrusted.address.port(),
    );
    let navigator = Navigator::start_in(dir, &config, &[]);

    for _ in 0..3 {
        let report = get_json(&navigator, "/secure/page?q=1").await;
        assert_eq!(report["uri"], "/base/page?q=1");
    }
    let response = request(&navigator, "POST", "/secure/form", &[], b"name=x").await;
    assert_eq!(response.json()["body"], "name=x");
    assert_eq!(
        request(&navigator, "GET", "/untrusted/x", &[], b"")
            .await
            .status,
        502
    );
    assert!(untrusted.seen().is_empty());
    assert!(
        navigator
            .logs
            .text()
            .contains("reverse proxy request failed"),
        "{}",
        navigator.logs.text()
    );

    let echoed = websocket_echo(navigator.address, "/ws/socket", b"over tls").await;
    assert_eq!(echoed, b"over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_retried_until_target_starts() {
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    drop(reserved);
    let navigator = start_navigator(
        &format!(
            r#"
[[routes.reverse_proxies]]
prefix = "/late/"
target = "http://127.0.0.1:{port}/"
"#
        ),
        "",
    );

    // POST is not idempotent: no retry, 502 while nothing listens.
    let post = request(&navigator, "POST", "/late/form", &[], b"x=1").await;
    assert_eq!(post.status, 502);

    // GET keeps trying while the upstream comes up a moment later.
    let address = navigator.address;
    let get = tokio::task::spawn_blocking(move || {
        support::http_request(address, "GET", "/late/page", &[], b"")
    });
    assert!(
        navigator
            .logs
            .wait_for("upstream not reachable; retrying", Duration::from_secs(10))
            .is_some(),
        "{}",
        navigator.logs.text()
    );
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let upstream = serve_upstream(listener, None);
    let get = get.await.unwrap();
    assert_eq!(get.status, 200, "{}", get.text());
    assert_eq!(get.json()["uri"], "/late/page");
    assert_eq!(
        upstream.seen(),
        ["GET /late/page"],
        "the failed POST never arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnelled_only_when_enabled() {
    let upstream = start_upstream(None).await;
    let port = upstream.address.port();
    let navigator = start_navigator(
        &format!(
            r#"
[[routes.reverse_proxies]]
prefix = "/live/"
target = "http://127.0.0.1:{port}/"
websocket = true

[[routes.reverse_proxies]]
prefix = "/nows/"
target = "http://127.0.0.1:{port}/"
"#
        ),
        "",
    );

    let echoed = websocket_echo(navigator.address, "/live/cable", b"hello tunnel").await;
    assert_eq!(echoed, b"hello tunnel");

    // Without `websocket = true` the upgrade headers are dropped and the
    // request is proxied as a plain GET.
    let response = request(
        &navigator,
        "GET",
        "/nows/cable",
        &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
        b"",
    )
    .await;
    assert_eq!(response.status, 200);
    assert!(response.json()["headers"].get("upgrade").is_none());
    assert_eq!(upstream.seen(), ["GET /live/cable", "GET /nows/cable"]);
}

/// Sends an upgrade request through navigator, then `payload`, and
/// returns what comes back through the tunnel.
async fn websocket_echo(address: SocketAddr, path: &str, payload: &'static [u8]) -> Vec<u8> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        stream.write_all(payload).unwrap();
        let mut echoed = vec![0u8; payload.len()];
        stream.read_exact(&mut echoed).unwrap();
        echoed
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_limit_gets_413() {
    let upstream = start_upstream(None).await;
    let port = upstream.address.port();
    let navigator = start_navigator(
        &format!(
            r#"
[[routes.reverse_proxies]]
prefix = "/up/"
target = "http://127.0.0.1:{port}/"
"#
        ),
        "[server.limits]\nmax_body_bytes = 1024\n",
    );

    let small = request(&navigator, "POST", "/up/form", &[], b"name=x").await;
    assert_eq!(small.status, 200);

    // A chunked body declares no length, so it is cut off while streaming.
    let chunk = "x".repeat(4096);
    let raw = format!(
        "POST /up/form HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let address = navigator.address;
    let answer = tokio::task::spawn_blocking(move || {
        support::raw_exchange(address, raw.as_bytes(), Duration::from_secs(15))
    })
    .await
    .unwrap();
    let response = support::parse_response(&answer, false).expect("a response");
    assert_eq!(response.status, 413, "{}", response.text());
}
