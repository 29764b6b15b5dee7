//! The control API: a small JSON interface under `server.status.path`
//! (default `/_navigator/`) through which `navigator tenants` and
//! `navigator tenant stop|restart|prewarm NAME` act on a running server.
//!
//! Routes, relative to the prefix:
//! - `GET tenants.json`: every configured tenant in config order with its
//!   state, and the supervisor's counters;
//! - `POST tenants/{name}/stop`, `POST tenants/{name}/restart`,
//!   `POST tenants/{name}/prewarm`, where `{name}` is the tenant name and
//!   may contain `/` (`tenants/2025/boston/april/restart`).
//!
//! Only loopback peers get a response from these paths. They are judged by
//! the socket address, never by headers, and other peers get 403. The
//! status pages under the same prefix (`{prefix}`, `status.json`,
//! `metrics`) are left to `crate::status`, which also serves
//! authenticated users.

pub mod client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, ORIGIN};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::access_log::Answer;
use crate::app::App;
use crate::body::{self, Body};
use crate::compile::{Snapshot, TenantSpec};
use crate::pipeline::RequestContext;
use crate::supervisor::tenants::{AcquireError, Instance, PrewarmError};

/// An action on one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stop,
    Restart,
    Prewarm,
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "stop" => Some(Action::Stop),
            "restart" => Some(Action::Restart),
            "prewarm" => Some(Action::Prewarm),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Prewarm => "prewarm",
        }
    }
}

/// Responds to a request under the control prefix. Returns `None` when
/// `path` is outside it or the endpoint is disabled.
pub async fn serve(
    app: &App,
    context: &mut RequestContext<'_>,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    let snapshot = context.snapshot;
    let route = route_of(snapshot, path)?;
    context.record.answer = Answer::Control;

    let peer = context.connection.peer;
    if !is_loopback(peer) {
        warn!(peer = %peer, path, "control API request from a non-loopback peer rejected");
        return Some(error(
            StatusCode::FORBIDDEN,
            "the control API answers loopback clients only",
        ));
    }
    if method != Method::GET && method != Method::HEAD && from_web_page(headers) {
        warn!(peer = %peer, path, "control API request from a web page rejected");
        return Some(error(
            StatusCode::FORBIDDEN,
            "the control API does not answer requests from web pages",
        ));
    }
    Some(self::route(app, snapshot, route, method).await)
}

/// Returns whether a browser sent the request for a web page. Browsers add
/// `Origin` to every POST, while `navigator tenant ...` and tenants that
/// publish broadcasts send none.
pub fn from_web_page(headers: &HeaderMap) -> bool {
    headers.contains_key(ORIGIN)
}

/// Returns whether the control API answers `path` (for a loopback peer,
/// else with 403).
pub fn handles(snapshot: &Snapshot, path: &str) -> bool {
    route_of(snapshot, path).is_some()
}

/// Returns the part of `path` after the control prefix, or `None` outside
/// it and for the status pages.
fn route_of<'a>(snapshot: &Snapshot, path: &'a str) -> Option<&'a str> {
    let status = &snapshot.config.server.status;
    if !status.enabled || crate::status::is_status_page(snapshot, path) {
        return None;
    }
    let base = status.path.trim_end_matches('/');
    if base.is_empty() {
        return None;
    }
    let rest = path.strip_prefix(base)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    Some(rest.trim_start_matches('/'))
}

/// Returns whether `peer` is a loopback address, IPv4-mapped IPv6
/// (`::ffff:127.0.0.1`, from a dual-stack listener) included.
pub fn is_loopback(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

async fn route(app: &App, snapshot: &Snapshot, route: &str, method: &Method) -> Response<Body> {
    if route == "tenants.json" {
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        return ok(tenants_json(app, snapshot));
    }

    let Some(rest) = route.strip_prefix("tenants/") else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no control route {route:?}"),
        );
    };
    let Some((name, action)) = rest.rsplit_once('/') else {
        return error(
            StatusCode::NOT_FOUND,
            "expected tenants/NAME/stop, tenants/NAME/restart or tenants/NAME/prewarm",
        );
    };
    let Some(action) = Action::parse(action) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("unknown action {action:?}; expected stop, restart or prewarm"),
        );
    };
    if method != Method::POST {
        return method_not_allowed("POST");
    }
    let Some(spec) = snapshot.tenants.by_name(name) else {
        return error(StatusCode::NOT_FOUND, &format!("no tenant named {name:?}"));
    };
    info!(tenant = %spec.name, action = action.as_str(), "control API request");
    act(app, snapshot, spec, action).await
}

/// Builds the body of `tenants.json`.
pub fn tenants_json(app: &App, snapshot: &Snapshot) -> Value {
    let supervisor = &app.supervisor;
    let statuses: std::collections::HashMap<String, _> = supervisor
        .status()
        .into_iter()
        .map(|status| (status.name.clone(), status))
        .collect();

    let tenants: Vec<Value> = snapshot
        .tenants
        .iter()
        .map(|spec| {
            let status = statuses.get(&spec.name);
            let supervision = &spec.supervision;
            json!({
                "name": spec.name,
                "path": spec.path,
                "state": status.map_or("stopped", |s| s.state),
                "pid": status.and_then(|s| s.pid),
                "port": status.and_then(|s| s.port),
                "uptime_secs": status.and_then(|s| s.uptime).map(|d| d.as_secs()),
                "idle_secs": status.and_then(|s| s.idle_for).map(|d| d.as_secs()),
                "in_flight": status.map_or(0, |s| s.in_flight),
                "queued": status.map_or(0, |s| s.queued),
                "requests": status.map_or(0, |s| s.requests),
                "prewarm": supervisor.is_prewarmed(&spec.name),
                "max_concurrency": supervision.queue.map(|q| q.max_concurrency),
                "max_queue": supervision.queue.map(|q| q.max_queue),
                "max_requests": supervision.recycle.max_requests,
                "recycle_memory": supervision.recycle.memory,
            })
        })
        .collect();

    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    json!({
        "tenants": tenants,
        "pool": {
            "max_size": snapshot.pools.max_size,
            "processes": supervisor.instances().len(),
        },
        "counters": {
            "starts": count(&supervisor.starts),
            "start_failures": count(&supervisor.start_failures),
            "stops": count(&supervisor.stops),
            "recycles": count(&supervisor.recycles),
            "queue_rejections": count(&supervisor.queue_rejections),
            "queue_timeouts": count(&supervisor.queue_timeouts),
        },
    })
}

/// Performs `action` on tenant `spec` and waits for its outcome. After
/// the tenant's `ready_timeout` plus the grace period the response is 202
/// and the action goes on in the background.
async fn act(
    app: &App,
    snapshot: &Snapshot,
    spec: &Arc<TenantSpec>,
    action: Action,
) -> Response<Body> {
    let supervisor = &app.supervisor;
    let base = json!({ "tenant": spec.name, "action": action.as_str() });
    match action {
        Action::Stop => {
            let limit = spec.ready_timeout + snapshot.pools.grace_period;
            match tokio::time::timeout(limit, supervisor.stop_tenant(&spec.name)).await {
                Ok(stopped) => ok(with(base, json!({ "stopped_pid": stopped }))),
                Err(_) => in_progress(base, "the stop goes on in the background"),
            }
        }
        Action::Restart => match supervisor.restart_tenant(spec).await {
            Ok(restarted) => ok(with(
                base,
                with(
                    json!({ "old_pid": restarted.old_pid }),
                    process(&restarted.new),
                ),
            )),
            Err(failure) => acquire_failed(base, failure, "the restart"),
        },
        Action::Prewarm => match supervisor.prewarm_tenant(spec).await {
            Ok(instance) => ok(with(base, process(&instance))),
            Err(PrewarmError::PoolFull { max_size }) => error(
                StatusCode::CONFLICT,
                &format!(
                    "{max_size} tenants are prewarmed already, as many as pools.max_size allows"
                ),
            ),
            Err(PrewarmError::Start(failure)) => acquire_failed(base, failure, "the start"),
        },
    }
}

fn process(instance: &Instance) -> Value {
    json!({ "pid": instance.pid, "port": instance.port })
}

/// Merges the fields of `extra` into the object `base`.
fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

fn acquire_failed(base: Value, failure: AcquireError, what: &str) -> Response<Body> {
    match failure {
        AcquireError::StartFailed(message) => error(
            StatusCode::BAD_GATEWAY,
            &format!("{what} failed: {message}"),
        ),
        AcquireError::ShuttingDown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "navigator is shutting down",
        ),
        AcquireError::StartupTimeout | AcquireError::QueueFull | AcquireError::QueueTimeout => {
            in_progress(base, &format!("{what} goes on in the background"))
        }
    }
}

fn ok(value: Value) -> Response<Body> {
    json_response(StatusCode::OK, &value)
}

fn in_progress(base: Value, message: &str) -> Response<Body> {
    json_response(
        StatusCode::ACCEPTED,
        &with(base, json!({ "message": message })),
    )
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": message }))
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("this control route takes {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut text = value.to_string();
    text.push('\n');
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::source::Format;
    use std::path::Path;

    fn snapshot(text: &str) -> Snapshot {
        let loaded = crate::config::load_str(text, Format::Toml, Path::new("test.toml"), &|_| None)
            .expect("valid config");
        Snapshot::compile(loaded, &|_| None).expect("compiles")
    }

    #[test]
    fn loopback_peers_only() {
        let peer = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(is_loopback(peer("127.0.0.1:5000")));
        assert!(is_loopback(peer("127.8.9.10:5000")));
        assert!(is_loopback(peer("[::1]:5000")));
        assert!(is_loopback(peer("[::ffff:127.0.0.1]:5000")));
        assert!(!is_loopback(peer("10.0.0.5:5000")));
        assert!(!is_loopback(peer("[fdaa::3]:5000")));
        assert!(!is_loopback(peer("[::ffff:10.0.0.5]:5000")));
    }

    #[test]
    fn routes_under_prefix() {
        let snapshot = snapshot("");
        assert_eq!(
            route_of(&snapshot, "/_navigator/tenants.json"),
            Some("tenants.json")
        );
        assert_eq!(route_of(&snapshot, "/_navigator"), Some(""));
        // The status pages belong to `crate::status`.
        for page in [
            "/_navigator/",
            "/_navigator/status.json",
            "/_navigator/metrics",
        ] {
            assert_eq!(route_of(&snapshot, page), None, "{page}");
        }
        assert_eq!(route_of(&snapshot, "/_navigatorx/tenants.json"), None);
        assert_eq!(route_of(&snapshot, "/showcase/"), None);
    }

    #[test]
    fn routes_follow_configured_prefix() {
        let snapshot = snapshot("[server.status]\npath = \"/ops\"\n");
        assert_eq!(
            route_of(&snapshot, "/ops/tenants/a/b/stop"),
            Some("tenants/a/b/stop")
        );
        assert_eq!(route_of(&snapshot, "/_navigator/tenants.json"), None);

        let disabled = self::snapshot("[server.status]\nenabled = false\n");
        assert_eq!(route_of(&disabled, "/_navigator/tenants.json"), None);
    }

    fn context<'a>(snapshot: &'a Arc<Snapshot>, peer: &str) -> RequestContext<'a> {
        use crate::access_log::AccessRecord;
        use crate::pipeline::Connection;
        let peer: SocketAddr = peer.parse().unwrap();
        RequestContext {
            snapshot,
            connection: Connection { peer, tls: false },
            request_id: HeaderValue::from_static("test"),
            record: AccessRecord {
                started: std::time::Instant::now(),
                client: peer.ip(),
                user: None,
                method: Method::GET,
                uri: http::Uri::from_static("/_navigator/tenants.json"),
                version: http::Version::HTTP_11,
                request_id: HeaderValue::from_static("test"),
                user_agent: None,
                referer: None,
                tenant: None,
                answer: Answer::Error,
                target: None,
                status: Some(200),
                bytes: 0,
            },
            user: None,
        }
    }

    #[tokio::test]
    async fn only_loopback_peers_served() {
        let snapshot = Arc::new(self::snapshot(
            "[[applications.tenants]]\npath = \"/a/\"\ncommand = \"true\"\n",
        ));
        let app = App::new("test.toml".into(), snapshot.clone());
        let path = "/_navigator/tenants.json";
        let none = HeaderMap::new();

        let mut remote = context(&snapshot, "10.0.0.5:40000");
        let response = serve(&app, &mut remote, path, &Method::GET, &none)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(remote.record.answer, Answer::Control);

        let mut mapped = context(&snapshot, "[::ffff:10.0.0.5]:40000");
        let response = serve(&app, &mut mapped, path, &Method::POST, &none)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);

        let mut local = context(&snapshot, "[::ffff:127.0.0.1]:40000");
        let response = serve(&app, &mut local, path, &Method::GET, &none)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);

        let mut web_page = HeaderMap::new();
        web_page.insert(ORIGIN, HeaderValue::from_static("http://attacker.example"));
        let mut browser = context(&snapshot, "127.0.0.1:40000");
        let response = serve(&app, &mut browser, path, &Method::POST, &web_page)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);

        let mut outside = context(&snapshot, "10.0.0.5:40000");
        assert!(
            serve(&app, &mut outside, "/a/", &Method::GET, &none)
                .await
                .is_none()
        );
    }

    #[test]
    fn actions_parse() {
        for action in [Action::Stop, Action::Restart, Action::Prewarm] {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        assert_eq!(Action::parse("kill"), None);
    }
}
