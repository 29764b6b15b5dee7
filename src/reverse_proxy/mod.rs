//! Reverse proxy routes: requests whose canonical path matches a route's
//! regex or prefix go to another HTTP service, over `http://` or
//! `https://` (rustls with the public web roots, plus an optional CA file).
//!
//! Unlike tenant upstreams, these services are neither on loopback nor
//! started by navigator. So the upstream `Host` is the target's own host,
//! and the client's host travels in `X-Forwarded-Host` and `$host`. An
//! idempotent request that cannot connect is retried for a short while.

pub mod template;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use regex::Captures;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tracing::{debug, warn};

use crate::access_log::{Answer, Target};
use crate::body::{self, Body, BoxError, RequestBody};
use crate::compile::rules::{ProxyMatch, ProxyRoute};
use crate::limits;
use crate::pipeline::{RequestContext, encode_path};
use crate::proxy::{self, headers};
use crate::responses;
use template::HeaderVariables;

/// The pooled client for every reverse proxy target; the pool keeps
/// connections per scheme, host and port.
pub type Client = LegacyClient<HttpsConnector<HttpConnector>, Body>;

/// First pause before retrying an idempotent request that could not
/// connect; each later pause doubles, up to [`RETRY_MAX_DELAY`].
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(100);
const RETRY_MAX_DELAY: Duration = Duration::from_millis(500);
/// No retry starts later than this after the first attempt.
const RETRY_BUDGET: Duration = Duration::from_secs(3);

/// Builds the client: HTTP/1.1 over TCP or TLS, trusting the public web
/// roots and the certificates in `ca_file`.
pub fn new_client(ca_file: Option<&Path>) -> Result<Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|error| {
                format!(
                    "cannot read CA certificates from {}: {error}",
                    path.display()
                )
            })?;
        if certificates.is_empty() {
            return Err(format!("no PEM certificate in {}", path.display()));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|error| {
                format!("invalid CA certificate in {}: {error}", path.display())
            })?;
        }
    }
    // NOTE: rustls 0.23.48 deprecates the ring provider because it lacks
    // post-quantum key exchange. It is kept so that the build needs no C
    // toolchain for aws-lc; upstream TLS uses classical X25519 or ECDHE.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("cannot configure TLS: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(LegacyClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(16)
        .set_host(false)
        .build(connector))
}

/// A route that matched a path, with what the match captured.
pub struct Matched<'a> {
    pub route: &'a ProxyRoute,
    captures: Option<Captures<'a>>,
    /// The part of the path after a prefix, or after a regex match that
    /// has no capture group; used by `strip_path`.
    rest: &'a str,
}

/// Returns the first route, in config order, that matches `path`.
pub fn find<'a>(routes: &'a [ProxyRoute], path: &'a str) -> Option<Matched<'a>> {
    routes.iter().find_map(|route| match &route.matcher {
        ProxyMatch::Prefix(prefix) => path.strip_prefix(prefix.as_str()).map(|rest| Matched {
            route,
            captures: None,
            rest,
        }),
        ProxyMatch::Regex(regex) => regex.captures(path).map(|captures| {
            let rest = match captures.get(1) {
                Some(first) => first.as_str(),
                None => captures.get(0).map_or("", |whole| &path[whole.end()..]),
            };
            Matched {
                route,
                captures: Some(captures),
                rest,
            }
        }),
    })
}

impl Matched<'_> {
    /// Builds the upstream URL. `original` is the path and query the
    /// client sent (or the rewritten path with the query), used unchanged
    /// when the route neither strips the path nor builds it from captures.
    pub fn upstream_uri(&self, original: &str) -> Result<Uri, String> {
        let route = self.route;
        let expanded = route
            .target_template
            .expand(self.captures.as_ref(), encode_path);
        let target: Uri = expanded
            .parse()
            .map_err(|error| format!("invalid upstream URL {expanded:?}: {error}"))?;
        let (Some(scheme), Some(authority)) = (target.scheme(), target.authority()) else {
            return Err(format!("upstream URL {expanded:?} lacks a scheme or host"));
        };

        let (original_path, original_query) = match original.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (original, None),
        };
        let path = if route.strip_path {
            join_paths(target.path(), &encode_path(self.rest))
        } else if route.target_template.uses_captures() {
            target.path().to_string()
        } else {
            join_paths(target.path(), original_path)
        };
        let query = match (target.query(), original_query) {
            (Some(a), Some(b)) => Some(format!("{a}&{b}")),
            (Some(q), None) | (None, Some(q)) => Some(q.to_string()),
            (None, None) => None,
        };
        let path_and_query = match query {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|error| format!("invalid upstream URL from {expanded:?}: {error}"))
    }
}

/// Joins a target's own path and a request path with one `/` between
/// them: `/base` + `/cable` is `/base/cable`; two empty paths give `/`.
pub fn join_paths(base: &str, rest: &str) -> String {
    let base = base.trim_end_matches('/');
    let rest = rest.trim_start_matches('/');
    match (base.is_empty(), rest.is_empty()) {
        (true, true) => "/".to_string(),
        (false, true) => base.to_string(),
        (true, false) => format!("/{rest}"),
        (false, false) => format!("{base}/{rest}"),
    }
}

/// Serves one request through `matched`'s route. A CORS preflight gets
/// its 204 from navigator; anything else is forwarded upstream and the
/// upstream's response returned.
pub async fn serve(
    client: &Client,
    matched: Matched<'_>,
    context: &mut RequestContext<'_>,
    mut request: Request<RequestBody>,
    original_path: &str,
) -> Response<Body> {
    let route = matched.route;
    context.record.answer = Answer::ReverseProxy;

    if request.method() == Method::OPTIONS && !route.response_headers.is_empty() {
        context.record.target = Some(Target::Text(format!("{} (preflight)", route.name)));
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        apply_headers(response.headers_mut(), &route.response_headers);
        return response;
    }

    let uri = match matched.upstream_uri(original_path) {
        Ok(uri) => uri,
        Err(reason) => {
            warn!(route = %route.name, request_id = ?context.request_id, error = %reason, "cannot form the reverse proxy URL");
            return responses::bad_request("the request cannot be mapped to the upstream URL");
        }
    };
    context.record.target = Some(Target::Text(uri.to_string()));

    let websocket = route.websocket && headers::is_websocket_upgrade(request.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    prepare_headers(
        &mut parts.headers,
        &parts.uri,
        route,
        context,
        &uri,
        websocket,
    );

    let replayable = matches!(parts.method, Method::GET | Method::HEAD) && body.is_end_stream();
    let body_limit = parts.extensions.get::<limits::BodyLimit>().cloned();
    let result = if replayable || websocket {
        send_with_retry(client, &parts.method, &uri, &parts.headers).await
    } else {
        let body = limits::limit_request_body(body, &parts.extensions);
        send(
            client,
            parts.method.clone(),
            uri.clone(),
            parts.headers.clone(),
            body,
        )
        .await
    };

    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            if let Some(status) = body_limit.and_then(|limit| limit.failure_status()) {
                // The client's body failed, not the upstream.
                debug!(route = %route.name, request_id = ?context.request_id, error = %proxy::error_chain(&error), "request body failed while proxying");
                context.record.answer = Answer::Error;
                return responses::body_failed(status);
            }
            warn!(
                route = %route.name,
                target = %uri,
                method = %parts.method,
                request_id = ?context.request_id,
                error = %proxy::error_chain(&error),
                "reverse proxy request failed"
            );
            context.record.answer = Answer::Error;
            return responses::error_page(
                StatusCode::BAD_GATEWAY,
                "The service behind this path did not answer.",
            );
        }
    };

    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(proxy::run_tunnel(client_upgrade, upstream_upgrade));
        let (mut parts, _) = response.into_parts();
        headers::prepare_response(&mut parts.headers, true);
        apply_headers(&mut parts.headers, &route.response_headers);
        return Response::from_parts(parts, body::empty());
    }

    let (mut parts, body) = response.into_parts();
    headers::prepare_response(&mut parts.headers, false);
    apply_headers(&mut parts.headers, &route.response_headers);
    Response::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed())
}

/// Sets the upstream request headers: the usual forwarding rules, `Host`
/// of the target, then the route's own headers (an empty value removes
/// the header).
fn prepare_headers(
    headers_out: &mut HeaderMap,
    request_uri: &Uri,
    route: &ProxyRoute,
    context: &RequestContext<'_>,
    upstream: &Uri,
    websocket: bool,
) {
    let host = headers_out.get(HOST).cloned().or_else(|| {
        request_uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let forwarding = proxy::Forwarding {
        peer: context.connection.peer.ip(),
        tls: context.connection.tls,
        trust_proxy: context.snapshot.config.server.trust_proxy,
    };
    let scheme = client_scheme(headers_out, &forwarding);
    headers::prepare_request(
        headers_out,
        host.as_ref(),
        forwarding,
        &context.request_id,
        websocket,
    );
    if let Some(authority) = upstream.authority().map(Authority::as_str) {
        if let Ok(value) = HeaderValue::from_str(authority) {
            headers_out.insert(HOST, value);
        }
    }

    let host_text = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
    let remote_addr = client_ip(context).to_string();
    let variables = HeaderVariables {
        host: host_text,
        remote_addr: &remote_addr,
        scheme,
    };
    for (name, template) in &route.headers {
        let value = template.expand(&variables);
        if value.is_empty() {
            headers_out.remove(name);
            continue;
        }
        match HeaderValue::from_str(&value) {
            Ok(value) => {
                headers_out.insert(name.clone(), value);
            }
            Err(_) => {
                debug!(route = %route.name, header = %name, "skipping a header value that is not valid")
            }
        }
    }
}

/// `$remote_addr`: the peer, or with `trust_proxy` the first
/// `X-Forwarded-For` entry, as the access log records it.
fn client_ip(context: &RequestContext) -> IpAddr {
    context.record.client
}

/// `$scheme`: `https` on the TLS listener, else `http`. With `trust_proxy`
/// an incoming `X-Forwarded-Proto` of `http` or `https` wins, because a
/// TLS-terminating proxy such as Fly's talks plain HTTP to navigator.
fn client_scheme(request_headers: &HeaderMap, forwarding: &proxy::Forwarding) -> &'static str {
    if forwarding.trust_proxy {
        let forwarded = request_headers
            .get(headers::X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        match forwarded.as_deref() {
            Some("https") => return "https",
            Some("http") => return "http",
            _ => {}
        }
    }
    if forwarding.tls { "https" } else { "http" }
}

fn apply_headers(target: &mut HeaderMap, configured: &HeaderMap) {
    for (name, value) in configured {
        target.insert(name.clone(), value.clone());
    }
}

/// Sends a request without a body, retrying connect failures with
/// exponential backoff while the retry budget lasts.
async fn send_with_retry(
    client: &Client,
    method: &Method,
    uri: &Uri,
    request_headers: &HeaderMap,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    let started = Instant::now();
    let mut delay = RETRY_FIRST_DELAY;
    let mut attempt = 1u32;
    loop {
        let result = send(
            client,
            method.clone(),
            uri.clone(),
            request_headers.clone(),
            body::empty(),
        )
        .await;
        match result {
            Err(error) if error.is_connect() && started.elapsed() + delay <= RETRY_BUDGET => {
                debug!(target = %uri, attempt, delay_ms = delay.as_millis() as u64, error = %proxy::error_chain(&error), "upstream not reachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX_DELAY);
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn send(
    client: &Client,
    method: Method,
    uri: Uri,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = request_headers;
    client.request(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::config::source::Format;

    fn routes(text: &str) -> Vec<ProxyRoute> {
        let loaded = load_str(text, Format::Toml, Path::new("t.toml"), &|_| None).unwrap();
        let mut errors = Vec::new();
        let routes = crate::compile::rules::compile_reverse_proxies(&loaded, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        routes
    }

    fn upstream(routes: &[ProxyRoute], path: &str, original: &str) -> String {
        find(routes, path)
            .unwrap_or_else(|| panic!("no route for {path}"))
            .upstream_uri(original)
            .unwrap()
            .to_string()
    }

    #[test]
    fn paths_join_with_one_slash() {
        assert_eq!(join_paths("/base", "/cable"), "/base/cable");
        assert_eq!(join_paths("/base/", "cable"), "/base/cable");
        assert_eq!(join_paths("", "/x"), "/x");
        assert_eq!(join_paths("/", ""), "/");
        assert_eq!(join_paths("/base", ""), "/base");
    }

    #[test]
    fn upstream_url_forms() {
        let routes = routes(
            r#"
[[routes.reverse_proxies]]
path = "^/showcase/password(/.*)"
target = "https://auth.test/showcase/password$1"

[[routes.reverse_proxies]]
prefix = "/api"
target = "http://127.0.0.1:9000/base"
strip_path = true

[[routes.reverse_proxies]]
path = "^/svc(/.*)$"
target = "http://127.0.0.1:9000/v1?key=k"
strip_path = true

[[routes.reverse_proxies]]
prefix = "/plain"
target = "http://127.0.0.1:9000/base"
"#,
        );
        assert_eq!(
            upstream(
                &routes,
                "/showcase/password/reset",
                "/showcase/password/reset?t=1"
            ),
            "https://auth.test/showcase/password/reset?t=1"
        );
        assert_eq!(
            upstream(&routes, "/api/cable", "/api/cable?x=1"),
            "http://127.0.0.1:9000/base/cable?x=1"
        );
        assert_eq!(
            upstream(&routes, "/api", "/api"),
            "http://127.0.0.1:9000/base"
        );
        assert_eq!(
            upstream(&routes, "/svc/a b/c", "/svc/a%20b/c?q=2"),
            "http://127.0.0.1:9000/v1/a%20b/c?key=k&q=2"
        );
        assert_eq!(
            upstream(&routes, "/plain/z", "/plain/z"),
            "http://127.0.0.1:9000/base/plain/z"
        );
        assert!(find(&routes, "/other").is_none());
    }

    #[test]
    fn first_matching_route_wins() {
        let routes = routes(
            r#"
[[routes.reverse_proxies]]
name = "first"
prefix = "/a/"
target = "http://127.0.0.1:1/"

[[routes.reverse_proxies]]
name = "second"
path = "^/a/b"
target = "http://127.0.0.1:2/"
"#,
        );
        assert_eq!(find(&routes, "/a/b").unwrap().route.name, "first");
    }

    #[test]
    fn scheme_from_forwarded_proto_when_trusted() {
        let mut request_headers = HeaderMap::new();
        request_headers.insert(
            headers::X_FORWARDED_PROTO,
            HeaderValue::from_static("https"),
        );
        let forwarding = |trust_proxy, tls| proxy::Forwarding {
            peer: "127.0.0.1".parse().unwrap(),
            tls,
            trust_proxy,
        };
        assert_eq!(
            client_scheme(&request_headers, &forwarding(true, false)),
            "https"
        );
        assert_eq!(
            client_scheme(&request_headers, &forwarding(false, false)),
            "http"
        );
        assert_eq!(
            client_scheme(&HeaderMap::new(), &forwarding(true, true)),
            "https"
        );
    }

    #[test]
    fn client_reads_extra_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(
            new_client(Some(&missing))
                .unwrap_err()
                .contains("missing.pem")
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        assert!(
            new_client(Some(&empty))
                .unwrap_err()
                .contains("no PEM certificate")
        );
        assert!(new_client(None).is_ok());
    }
}
