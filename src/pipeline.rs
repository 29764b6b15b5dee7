//! The request pipeline. [`route`] lists every step in the order they run;
//! the first step that answers ends the request. The order is a security
//! property (authentication before every routing decision, static files
//! before maintenance, bots after static files), so it lives in this one
//! function and nowhere else.

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HOST, REFERER, USER_AGENT};
use http::uri::{InvalidUri, PathAndQuery};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tracing::{debug, warn};

use crate::access_log::{self, AccessRecord, Answer, Target};
use crate::app::App;
use crate::auth::{self, Decision};
use crate::body::{self, Body, RequestBody, WholeFile};
use crate::bots;
use crate::canonical;
use crate::cgi;
use crate::compile::{Snapshot, TenantSpec};
use crate::control;
use crate::fly;
use crate::limits;
use crate::proxy::{self, Forward, Forwarding, ProxyError, Upstream, headers::X_REQUEST_ID};
use crate::responses;
use crate::reverse_proxy;
use crate::status::{self, Stage};
use crate::supervisor::tenants::AcquireError;

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Per-request state shared by the steps. The snapshot is borrowed from
/// [`handle`], which holds the request's one reference to it: every
/// clone would touch a count that all workers share.
pub struct RequestContext<'a> {
    pub snapshot: &'a Arc<Snapshot>,
    pub connection: Connection,
    pub request_id: HeaderValue,
    pub record: AccessRecord,
    /// The user whose credentials step 4 verified; never taken from any
    /// other header. CGI scripts get it as `REMOTE_USER`.
    pub user: Option<String>,
}

/// Serves one request: runs the pipeline and attaches the access-log
/// record to the response body.
///
/// Like the other functions that every proxied request awaits, it returns
/// an `async move` block rather than being an `async fn`. An `async fn`
/// keeps its arguments twice in its state, as received and as locals,
/// and copies them from one to the other when first polled. The block
/// uses them where they were received. The state of each level contains the
/// next, so this made the whole pipeline's state smaller as well
/// (6,152 bytes before, 3,952 after). Each such function is inlined into
/// its one caller, which then builds the state in place: returned from a
/// call, the state would be copied whole into the caller's.
#[inline(always)]
#[allow(clippy::manual_async_fn)]
pub fn handle(
    app: &App,
    connection: Connection,
    request: Request<RequestBody>,
    in_flight: crate::connection::InFlight,
) -> impl Future<Output = Response<Body>> {
    async move {
        let started = Instant::now();

        // Machine idle: count the request (health checks excepted) until its
        // response body ends; after an idle action, resume first.
        let activity = fly::idle::track_request(app, &request).await;

        let snapshot = app.snapshot();
        let request_id = request_id(&request);
        let record = AccessRecord {
            started,
            client: client_address(&snapshot, &connection, &request),
            user: None,
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            request_id: request_id.clone(),
            user_agent: request.headers().get(USER_AGENT).cloned(),
            referer: request.headers().get(REFERER).cloned(),
            tenant: None,
            answer: Answer::Error,
            target: None,
            status: None,
            bytes: 0,
        };
        let mut context = RequestContext {
            snapshot: &snapshot,
            connection,
            request_id,
            record,
            user: None,
        };

        let mut response = route(app, &mut context, request).await;

        response
            .headers_mut()
            .insert(X_REQUEST_ID, context.request_id.clone());
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let sent_elsewhere = parts
            .extensions
            .get::<WholeFile>()
            .map(|whole_file| whole_file.sent.clone());
        let body = access_log::log_on_completion(
            body,
            context.record,
            status,
            sent_elsewhere,
            (activity, in_flight),
        );
        Response::from_parts(parts, body)
    }
}

/// The pipeline, step by step.
#[inline(always)]
fn route<'a>(
    app: &'a App,
    context: &'a mut RequestContext<'_>,
    request: Request<RequestBody>,
) -> impl Future<Output = Response<Body>> + 'a {
    let (mut head, body) = request.into_parts();
    async move {
        let snapshot = context.snapshot;

        // Before step 0: the head checks that hyper leaves to us (Host rules,
        // declared body size), and the body limit for the step that streams
        // the body.
        let max_body_bytes = snapshot
            .config
            .server
            .limits
            .max_body_bytes
            .map(|size| size.0);
        if let Err(error) = limits::check_head(head.version, &head.headers, max_body_bytes) {
            context.record.answer = Answer::Error;
            return responses::text(
                error.status(),
                &format!("{} {}", error.status(), error.message()),
            );
        }
        // A request without a body (most are GETs) has nothing to limit.
        if !body.is_end_stream() {
            head.extensions
                .insert(limits::BodyLimit::new(max_body_bytes));
        }

        // 0. Canonical path: every later step matches this one decoded path.
        // The path is usually borrowed from the URI, unchanged. It borrows a
        // clone (which shares the URI's bytes), so the request can still move.
        let uri = head.uri.clone();
        let path = match canonical::canonicalize(uri.path()) {
            Ok(path) => path,
            Err(error) => {
                context.record.answer = Answer::Error;
                return responses::bad_request(&error.to_string());
            }
        };

        // 1. Request id: assigned in `handle`, sent upstream and logged.

        // 2. Health check.
        if let Some(response) = health_check(snapshot, context, &path) {
            return response;
        }

        // 2b. Control API under `server.status.path` (loopback peers only).
        // It comes before authentication because it is judged by the socket
        // peer alone: credentials neither open it to other hosts nor are
        // needed on loopback, and it must work in maintenance mode.
        let control = control::serve(app, context, &path, &head.method, &head.headers).await;
        if let Some(response) = control {
            return response;
        }

        // 2c. Status pages under the same prefix, for loopback peers without
        // credentials; other peers get them after step 4.
        if let Some(response) =
            status::serve(app, context, &path, &head, Stage::BeforeAuthentication)
        {
            return response;
        }

        // 3. Broadcast endpoint (loopback peers only).
        let cable = &snapshot.config.cable;
        if cable.enabled && path == cable.broadcast_path {
            context.record.answer = Answer::Broadcast;
            if control::from_web_page(&head.headers) {
                warn!(peer = %context.connection.peer, "broadcast from a web page rejected");
                return responses::text(
                    StatusCode::FORBIDDEN,
                    "403 Forbidden: broadcasts are not accepted from web pages",
                );
            }
            // Rare branches are boxed, so that the state of every request's
            // future stays the size of the common path's.
            return Box::pin(app.cable.broadcast_endpoint(
                &head.method,
                body,
                context.connection.peer,
            ))
            .await;
        }

        // 4. Authentication, before every routing decision. A path that a glob
        // (such as `*.css`) made public for static files only, requested
        // without valid credentials, leaves the pipeline here. It may get a
        // static file, and nothing else but a 401.
        match snapshot
            .access
            .authorize(&path, head.uri.path(), &head.headers)
            .await
        {
            Decision::Allow { user } => {
                context.record.user.clone_from(&user);
                context.user = user;
            }
            Decision::Challenge { realm } => {
                context.record.answer = Answer::AuthFailure;
                return auth::challenge(&realm);
            }
            Decision::StaticOnly { realm } => {
                return static_or_challenge(snapshot, context, &path, &head, &realm).await;
            }
        }

        // 4b. Status pages for authenticated users on other peers.
        if let Some(response) =
            status::serve(app, context, &path, &head, Stage::AfterAuthentication)
        {
            return response;
        }

        // 5. Cable endpoint.
        if cable.enabled && path == cable.path {
            context.record.answer = Answer::WebSocket;
            context.record.target = Some(Target::Text("cable".to_string()));
            let activity = app.fly.idle.track();
            return app
                .cable
                .accept(&mut head, context.connection.peer, activity);
        }

        // 6. Redirects, rewrites, Fly-Replay, trailing-slash redirects.
        if let Some(response) = redirect(snapshot, context, &path, &head) {
            return response;
        }
        let rewritten = snapshot.path_rules.rewrite(&path, &head.method);
        if let Some(target) = &rewritten {
            if !is_clean_path(target) {
                context.record.answer = Answer::Rewrite;
                return responses::bad_request("the rewritten path is not a clean absolute path");
            }
        }
        let path = rewritten.clone().map_or(path, Cow::Owned);
        if let Some(rule) = snapshot.replay.find(&path, &head.method) {
            let request = Request::from_parts(head, body);
            return Box::pin(fly::replay::answer(app, context, rule, request)).await;
        }
        if let Some(response) = trailing_slash_redirect(snapshot, context, &path, &head) {
            return response;
        }

        // 7. CGI scripts.
        if let Some(script) = cgi::find(snapshot, &path, &head.method) {
            return Box::pin(cgi::serve(app, context, script, head, body)).await;
        }

        // 8. Reverse proxy routes.
        if let Some(matched) = reverse_proxy::find(&snapshot.reverse_proxies, &path) {
            let original = upstream_path_and_query(&head, rewritten.as_deref());
            let request = Request::from_parts(head, body);
            let client = &snapshot.reverse_proxy_client;
            return Box::pin(reverse_proxy::serve(
                client, matched, context, request, &original,
            ))
            .await;
        }

        // 9. Static files, also during maintenance.
        if let Some(response) = static_file(snapshot, context, &path, &head).await {
            return response;
        }

        // 10. Maintenance mode.
        if snapshot.maintenance_enabled {
            context.record.answer = Answer::Maintenance;
            return maintenance_page(snapshot, 30).await;
        }

        // 11. Bot detection, by the setting of the tenant that step 12 picks.
        let tenant = snapshot.tenants.find(&path);
        if let Some(response) = bot_detection(snapshot, context, tenant, &head) {
            return response;
        }

        // 12. Tenant by longest path prefix.
        if let Some(tenant) = tenant {
            let request = Request::from_parts(head, body);
            return proxy_to_tenant(app, context, tenant, request, rewritten.as_deref()).await;
        }

        // 13. Nothing matched.
        context.record.answer = Answer::NotFound;
        responses::not_found()
    }
}

/// Keeps a sane incoming `X-Request-Id`, else makes a new one.
fn request_id(request: &Request<RequestBody>) -> HeaderValue {
    let incoming = request.headers().get(X_REQUEST_ID).filter(|value| {
        let bytes = value.as_bytes();
        !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
    });
    if let Some(value) = incoming {
        return value.clone();
    }
    let mut id = [0u8; 32];
    let random = (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..));
    for (index, digit) in id.iter_mut().enumerate() {
        let nibble = (random >> (124 - 4 * index)) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    // Owned bytes, so the clones (record, upstream request, response)
    // share one allocation. A copied slice would be copied again by its
    // first clone.
    HeaderValue::from_maybe_shared(Bytes::from_owner(id)).unwrap_or(HeaderValue::from_static("-"))
}

/// Returns the client address for logs and `$remote_addr`: the socket
/// peer, or with `trust_proxy` the last `X-Forwarded-For` entry, which the
/// trusted proxy in front appended. Earlier entries come from the client
/// and can be forged, so they are never used.
fn client_address(
    snapshot: &Snapshot,
    connection: &Connection,
    request: &Request<RequestBody>,
) -> std::net::IpAddr {
    if snapshot.config.server.trust_proxy {
        let forwarded = request
            .headers()
            .get_all(proxy::headers::X_FORWARDED_FOR)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok());
        if let Some(address) = forwarded {
            return address;
        }
    }
    connection.peer.ip()
}

/// Returns the synthetic health check response configured for exactly
/// `path`. A health path without one is routed like any other path.
pub(crate) fn health_response<'a>(
    snapshot: &'a Snapshot,
    path: &str,
) -> Option<&'a crate::compile::HealthResponse> {
    let health = snapshot.health.as_ref()?;
    if health.path != path {
        return None;
    }
    health.response.as_ref()
}

fn health_check(
    snapshot: &Snapshot,
    context: &mut RequestContext<'_>,
    path: &str,
) -> Option<Response<Body>> {
    let synthetic = health_response(snapshot, path)?;
    context.record.answer = Answer::Health;
    let mut response = Response::new(body::full(synthetic.body.clone()));
    *response.status_mut() = synthetic.status;
    *response.headers_mut() = synthetic.headers.clone();
    Some(response)
}

/// Serves a request that a glob made public for static files only. The
/// rewrites apply, because they change the path without responding. Then
/// the static-file step runs, and anything else gets the 401 challenge.
async fn static_or_challenge(
    snapshot: &Snapshot,
    context: &mut RequestContext<'_>,
    path: &str,
    request: &http::request::Parts,
    realm: &str,
) -> Response<Body> {
    let rewritten = snapshot.path_rules.rewrite(path, &request.method);
    let path = rewritten
        .as_deref()
        .filter(|target| is_clean_path(target))
        .unwrap_or(path);
    if let Some(response) = static_file(snapshot, context, path, request).await {
        return response;
    }
    context.record.answer = Answer::AuthFailure;
    auth::challenge(realm)
}

/// Answers 403 to bots when the tenant's setting, or else the server-wide
/// one, says so.
fn bot_detection(
    snapshot: &Snapshot,
    context: &mut RequestContext<'_>,
    tenant: Option<&Arc<TenantSpec>>,
    request: &http::request::Parts,
) -> Option<Response<Body>> {
    let setting = bots::effective(&snapshot.bot_detection, tenant.map(|t| t.as_ref()));
    if !bots::blocks(setting, &request.headers) {
        return None;
    }
    context.record.answer = Answer::BotBlocked;
    context.record.tenant = tenant.map(|t| t.name.clone());
    Some(responses::error_page(
        StatusCode::FORBIDDEN,
        "Forbidden: automated clients may not use this page.",
    ))
}

fn redirect(
    snapshot: &Snapshot,
    context: &mut RequestContext<'_>,
    path: &str,
    request: &http::request::Parts,
) -> Option<Response<Body>> {
    let (rule, location) = snapshot.path_rules.redirect(path, &request.method)?;
    context.record.answer = Answer::Redirect;
    context.record.target = Some(Target::Text(location.clone()));
    let location = with_query(location, request.uri.query());
    Some(responses::redirect(rule.status, &location))
}

/// Redirects `root_path` and tenant paths requested without their final
/// `/`: 301 for GET and HEAD, 308 otherwise so the method and body stay.
fn trailing_slash_redirect(
    snapshot: &Snapshot,
    context: &mut RequestContext<'_>,
    path: &str,
    request: &http::request::Parts,
) -> Option<Response<Body>> {
    if !snapshot.needs_trailing_slash(path) {
        return None;
    }
    let status = trailing_slash_status(&request.method);
    context.record.answer = Answer::Redirect;
    let location = with_query(format!("{}/", encode_path(path)), request.uri.query());
    context.record.target = Some(Target::Text(location.clone()));
    Some(responses::redirect(status, &location))
}

/// Returns the status of a trailing-slash redirect: 301 for GET and HEAD,
/// 308 otherwise so the method and body stay.
pub(crate) fn trailing_slash_status(method: &Method) -> StatusCode {
    if matches!(*method, Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    }
}

pub(crate) fn with_query(location: String, query: Option<&str>) -> String {
    match query {
        Some(query) if !location.contains('?') => format!("{location}?{query}"),
        _ => location,
    }
}

async fn static_file(
    snapshot: &Snapshot,
    context: &mut RequestContext<'_>,
    path: &str,
    request: &http::request::Parts,
) -> Option<Response<Body>> {
    let files = snapshot.static_files.as_ref()?;
    let response = files.serve(path, request).await?;
    context.record.answer = Answer::Static;
    context.record.target = Some(Target::Text(path.to_string()));
    Some(response)
}

/// The maintenance page from `public_dir`, else the built-in one.
pub async fn maintenance_page(snapshot: &Snapshot, retry_after_secs: u64) -> Response<Body> {
    let page = match &snapshot.static_files {
        Some(files) => files.read_page(&snapshot.maintenance_page).await,
        None => None,
    };
    responses::maintenance(page, retry_after_secs)
}

/// Characters escaped when a decoded path is sent upstream again.
const PATH_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'%');

pub(crate) fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, PATH_ESCAPES).to_string()
}

/// Whether a rewritten path is absolute with no empty, `.` or `..` segment.
pub(crate) fn is_clean_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("//")
        && !path.contains('\\')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|segment| segment != "." && segment != "..")
}

/// The path and query sent upstream: the original ones unchanged, or the
/// rewritten path with the original query.
pub(crate) fn upstream_path_and_query(
    request: &http::request::Parts,
    rewritten: Option<&str>,
) -> String {
    match rewritten {
        Some(path) => with_query(encode_path(path), request.uri.query()),
        None => request
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| "/".to_string()),
    }
}

/// Returns the path and query to send upstream: the request's own (shared,
/// not copied), or the rewritten path with the request's query.
fn upstream_target(uri: &Uri, rewritten: Option<&str>) -> Result<PathAndQuery, InvalidUri> {
    match rewritten {
        None => Ok(uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))),
        Some(path) => {
            let target = with_query(encode_path(path), uri.query());
            PathAndQuery::from_maybe_shared(Bytes::from(target))
        }
    }
}

#[inline(always)]
#[allow(clippy::manual_async_fn)]
fn proxy_to_tenant<'a>(
    app: &'a App,
    context: &'a mut RequestContext<'_>,
    tenant: &'a Arc<TenantSpec>,
    request: Request<RequestBody>,
    rewritten: Option<&'a str>,
) -> impl Future<Output = Response<Body>> + 'a {
    async move {
        context.record.tenant = Some(tenant.name.clone());
        context.record.answer = Answer::Proxy;

        let path_and_query = match upstream_target(request.uri(), rewritten) {
            Ok(path_and_query) => path_and_query,
            Err(error) => {
                warn!(
                    tenant = %tenant.name,
                    request_id = ?context.request_id,
                    rewritten = rewritten.unwrap_or("-"),
                    error = %error,
                    "invalid upstream request target"
                );
                context.record.answer = Answer::Error;
                return responses::error_page(
                    StatusCode::BAD_REQUEST,
                    "The application did not answer this request.",
                );
            }
        };

        let lease = match app.supervisor.acquire(tenant).await {
            Ok(lease) => lease,
            Err(AcquireError::StartupTimeout) => {
                context.record.answer = Answer::Maintenance;
                return maintenance_page(context.snapshot, 5).await;
            }
            Err(AcquireError::ShuttingDown) => {
                context.record.answer = Answer::Maintenance;
                return maintenance_page(context.snapshot, 5).await;
            }
            Err(AcquireError::QueueFull | AcquireError::QueueTimeout) => {
                // Counted and logged (rate-limited) by the supervisor.
                context.record.answer = Answer::Maintenance;
                return maintenance_page(context.snapshot, 5).await;
            }
            Err(AcquireError::StartFailed(reason)) => {
                warn!(tenant = %tenant.name, request_id = ?context.request_id, error = %reason, "tenant unavailable");
                context.record.answer = Answer::Error;
                return responses::error_page(
                    StatusCode::BAD_GATEWAY,
                    "The application for this page failed to start. It will be retried shortly.",
                );
            }
        };

        let port = lease.port();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let websocket = proxy::headers::is_websocket_upgrade(request.headers());
        if websocket {
            context.record.answer = Answer::WebSocket;
        }
        let guard: proxy::Guard = if websocket && tenant.track_websockets {
            Box::new((lease.websocket(), lease, app.fly.idle.track()))
        } else {
            Box::new(lease)
        };
        context.record.target = Some(Target::Upstream(address));
        let forwarding = Forwarding {
            peer: context.connection.peer.ip(),
            tls: context.connection.tls,
            trust_proxy: context.snapshot.config.server.trust_proxy,
        };
        let host = request.headers().get(HOST).cloned();
        let body_limit = request.extensions().get::<limits::BodyLimit>().cloned();
        let target = Forward {
            upstream: Upstream::Address(address),
            path_and_query,
            forwarding,
            request_id: &context.request_id,
            websocket,
            guard,
            response_timeout: tenant.response_timeout,
        };
        match proxy::forward(&app.client, request, target).await {
            Ok(response) => response,
            Err(error) => {
                if let Some(status) = body_limit.and_then(|limit| limit.failure_status()) {
                    // The client's body failed, not the tenant.
                    debug!(tenant = %tenant.name, request_id = ?context.request_id, error = %error, "request body failed while proxying");
                    context.record.answer = Answer::Error;
                    return responses::body_failed(status);
                }
                let (status, message) = match error {
                    ProxyError::InvalidTarget(_) => (
                        StatusCode::BAD_REQUEST,
                        "The application did not answer this request.",
                    ),
                    ProxyError::Timeout(_) => (
                        StatusCode::GATEWAY_TIMEOUT,
                        "The application did not answer this request in time.",
                    ),
                    _ => (
                        StatusCode::BAD_GATEWAY,
                        "The application did not answer this request.",
                    ),
                };
                warn!(
                    tenant = %tenant.name,
                    port,
                    host = ?host,
                    request_id = ?context.request_id,
                    error = %error,
                    "proxying to tenant failed"
                );
                context.record.answer = Answer::Error;
                responses::error_page(status, message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_rules() {
        assert!(is_clean_path("/showcase/assets/a.js"));
        assert!(!is_clean_path("showcase"));
        assert!(!is_clean_path("/a//b"));
        assert!(!is_clean_path("/a/../b"));
        assert!(!is_clean_path("/a/."));
    }

    #[test]
    fn query_appended_only_once() {
        assert_eq!(with_query("/a".into(), Some("x=1")), "/a?x=1");
        assert_eq!(with_query("/a?y=2".into(), Some("x=1")), "/a?y=2");
        assert_eq!(with_query("/a".into(), None), "/a");
    }

    #[test]
    fn decoded_paths_reencoded_for_upstream() {
        assert_eq!(encode_path("/café/a b"), "/caf%C3%A9/a%20b");
        assert_eq!(encode_path("/100%"), "/100%25");
    }
}
