//! The HTTPS listener (`server.tls`): HTTP/1.1 and HTTP/2 chosen by ALPN,
//! `X-Forwarded-Proto: https` upstream, and certificates read again on
//! reload. Certificates are self-signed ones made with rcgen for each test.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::{Navigator, Showcase, write_public_tree};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `localhost` with the given serial.
struct Issued {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn issue(serial: u64) -> Issued {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Issued {
        der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn install(issued: &Issued, dir: &Path) {
    std::fs::write(dir.join("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &issued.key_pem).unwrap();
}

fn start_with_tls(issued: &Issued) -> (Navigator, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    install(issued, dir.path());
    let showcase = Showcase {
        events: 1,
        extra: "\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"@DIR@/cert.pem\"\nkey = \"@DIR@/key.pem\"\n"
            .into(),
        ..Showcase::default()
    };
    let navigator = Navigator::start_in(dir, &showcase.toml(), &[]);
    let line = navigator
        .logs
        .wait_for_line(
            |line| line.contains("listening") && line.contains("tls=true"),
            Duration::from_secs(20),
        )
        .expect("TLS listener");
    let address = support::parse_field(&line, "address").unwrap();
    (navigator, address.parse().unwrap())
}

/// What one request over TLS saw.
struct Exchange {
    alpn: Option<Vec<u8>>,
    served: CertificateDer<'static>,
    version: http::Version,
    status: u16,
    body: Bytes,
}

/// Connects with ALPN `protocol`, trusting `trusted`, and sends one GET.
async fn get(
    address: SocketAddr,
    protocol: &[u8],
    trusted: &[&Issued],
    path: &str,
    headers: &[(&str, &str)],
) -> Exchange {
    let mut roots = rustls::RootCertStore::empty();
    for issued in trusted {
        roots.add(issued.der.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![protocol.to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let served = session.peer_certificates().unwrap()[0].clone().into_owned();

    let mut request = http::Request::get(format!("https://localhost{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if protocol == b"http/1.1" {
        request = request.header("host", "localhost");
    }
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    let io = TokioIo::new(stream);
    let response = if protocol == b"h2" {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    };
    let version = response.version();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Exchange {
        alpn,
        served,
        version,
        status,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_and_h2_over_tls() {
    let issued = issue(1);
    let (navigator, address) = start_with_tls(&issued);

    let h1 = get(address, b"http/1.1", &[&issued], "/showcase/studios/", &[]).await;
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.version, http::Version::HTTP_11);
    assert_eq!(h1.status, 200);
    assert_eq!(&h1.body[..], b"<h1>studios</h1>\n");

    let h2 = get(address, b"h2", &[&issued], "/showcase/studios/", &[]).await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.version, http::Version::HTTP_2);
    assert_eq!(h2.status, 200);
    assert_eq!(&h2.body[..], b"<h1>studios</h1>\n");
    assert_eq!(h2.served, issued.der);

    // The tenant learns that the client used HTTPS; the plain listener
    // still sends http.
    let json = [("accept", "application/json")];
    let tenant = get(
        address,
        b"h2",
        &[&issued],
        "/showcase/2025/boston/april/",
        &json,
    )
    .await;
    assert_eq!(tenant.status, 200);
    let report: serde_json::Value = serde_json::from_slice(&tenant.body).unwrap();
    assert_eq!(report["headers"]["x-forwarded-proto"], "https");
    let plain = navigator.request("GET", "/showcase/2025/boston/april/", &json, b"");
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_served_after_reload() {
    let first = issue(1001);
    let second = issue(2002);
    let (navigator, address) = start_with_tls(&first);
    let trusted = [&first, &second];

    let before = get(address, b"http/1.1", &trusted, "/showcase/studios/", &[]).await;
    assert_eq!(before.served, first.der);

    // An unusable key is rejected and the running certificate stays.
    std::fs::write(navigator.path("key.pem"), "not a key\n").unwrap();
    navigator.signal(nix::sys::signal::Signal::SIGHUP);
    let rejected = navigator
        .logs
        .wait_for("reload rejected", Duration::from_secs(20));
    assert!(rejected.is_some_and(|line| line.contains("server.tls.key")));
    let still = get(address, b"h2", &trusted, "/showcase/studios/", &[]).await;
    assert_eq!(still.served, first.der);

    install(&second, navigator.dir.path());
    navigator.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        navigator
            .logs
            .wait_for("TLS certificate and key reloaded", Duration::from_secs(20))
            .is_some(),
        "{}",
        navigator.logs.text()
    );
    let after = get(address, b"h2", &trusted, "/showcase/studios/", &[]).await;
    assert_eq!(after.served, second.der);
    assert_eq!(after.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tls_address_bound_on_reload() {
    let issued = issue(7);
    let (navigator, old_address) = start_with_tls(&issued);
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&navigator.config).unwrap().replace(
        "[server.tls]\nlisten = \"127.0.0.1:0\"",
        &format!("[server.tls]\nlisten = \"127.0.0.1:{free_port}\""),
    );
    std::fs::write(&navigator.config, text).unwrap();
    navigator.signal(nix::sys::signal::Signal::SIGHUP);
    let needle = format!("address=127.0.0.1:{free_port}");
    assert!(
        navigator
            .logs
            .wait_for(&needle, Duration::from_secs(20))
            .is_some(),
        "{}",
        navigator.logs.text()
    );
    let new_address: SocketAddr = format!("127.0.0.1:{free_port}").parse().unwrap();
    let moved = get(new_address, b"h2", &[&issued], "/showcase/studios/", &[]).await;
    assert_eq!(moved.status, 200);
    let closed = support::eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(old_address).is_err()
    });
    assert!(closed, "the old TLS address still accepts connections");
}

#[test]
fn missing_certificate_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("navigator.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npid_file = \"{dir}/pid\"\n\
             [server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{dir}/none.pem\"\nkey = \"{dir}/none.key\"\n",
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(support::NAVIGATOR)
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.tls.cert") && stderr.contains("none.pem"),
        "{stderr}"
    );
}
