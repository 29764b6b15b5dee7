//! The Fly-Replay step of the pipeline. A request matching a replay rule is
//! answered in one of three ways:
//!
//! - **replay**: a response that asks Fly's proxy to deliver the original
//!   request again elsewhere. The instruction is the JSON body, marked by
//!   `Content-Type: application/vnd.fly.replay+json`;
//! - **private network**: requests Fly cannot replay (bodies of 1 MiB or
//!   more, bodies of unknown length, WebSocket upgrades) are proxied or
//!   tunnelled to the target over Fly's private network, with
//!   `X-Navigator-Retry: true` added so the receiver never sends them on;
//! - **loop stop**: a request that already went through a replay
//!   (`fly-replay-failed` from Fly's fallback, or `X-Navigator-Retry: true`
//!   from another navigator) and matches a rule again gets the maintenance
//!   page instead of a second replay.

use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::{FlyEnvironment, FlyRoutes};
use crate::access_log::{Answer, Target};
use crate::app::App;
use crate::body::{self, Body, RequestBody};
use crate::compile::rules::{ReplayRule, ReplayTarget};
use crate::pipeline::{self, RequestContext};
use crate::proxy::{
    self, Forward, Forwarding, ProxyError, Upstream, headers::is_websocket_upgrade,
};
use crate::responses;

/// Set on replays within this app and on private-network requests; a
/// navigator receiving it never replays or proxies the request again.
pub const RETRY_HEADER: HeaderName = HeaderName::from_static("x-navigator-retry");

/// Set by Fly's proxy when a replay with a fallback failed and the request
/// came back to the machine that asked for it.
pub const REPLAY_FAILED_HEADER: HeaderName = HeaderName::from_static("fly-replay-failed");

/// Fly's header form of a replay instruction.
pub const FLY_REPLAY_HEADER: HeaderName = HeaderName::from_static("fly-replay");

pub const REPLAY_CONTENT_TYPE: &str = "application/vnd.fly.replay+json";

/// Fly's proxy refuses to replay requests this large or larger.
pub const MAX_REPLAY_BODY: u64 = 1024 * 1024;

/// How long Fly's proxy tries to reach a target within this app before it
/// sends the request back here.
pub const REPLAY_TIMEOUT: &str = "30s";

/// How a request matching a replay rule is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The request already went through a replay: maintenance page. The
    /// text names the header that shows it.
    Loop(&'static str),
    /// Proxy or tunnel over the private network, for the reason given.
    PrivateNetwork(&'static str),
    Replay,
}

/// Decides how to answer a matching request. `body_length` is the exact
/// body size when known.
pub fn decide(method: &Method, headers: &HeaderMap, body_length: Option<u64>) -> Decision {
    if headers.contains_key(REPLAY_FAILED_HEADER) {
        return Decision::Loop("fly-replay-failed");
    }
    let retried = headers
        .get(RETRY_HEADER)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
    if retried {
        return Decision::Loop("x-navigator-retry");
    }

    if is_websocket_upgrade(headers) {
        return Decision::PrivateNetwork("WebSocket upgrade");
    }
    let carries_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if carries_body && !headers.contains_key(CONTENT_LENGTH) {
        return Decision::PrivateNetwork("no Content-Length");
    }
    match body_length {
        Some(length) if length >= MAX_REPLAY_BODY => {
            Decision::PrivateNetwork("body of 1 MiB or more")
        }
        Some(_) => Decision::Replay,
        None => Decision::PrivateNetwork("body of unknown length"),
    }
}

/// Returns whether a replay to `app` stays within this machine's own app, where
/// the receiver is another navigator that honours `X-Navigator-Retry`.
fn is_own_app(app: &str, environment: &FlyEnvironment) -> bool {
    environment.app_name.as_deref() == Some(app)
}

/// Builds the JSON replay instruction for `target`.
///
/// Targets within this app get a timeout, a fallback to this machine and
/// the `X-Navigator-Retry` header (plus the request's `Authorization`), so
/// an unreachable region comes back here as a loop stop. Another app gets
/// only its name (and instance): a cold start of that app must not be cut
/// off by a timeout.
pub fn instruction(
    target: &ReplayTarget,
    environment: &FlyEnvironment,
    authorization: Option<&HeaderValue>,
) -> Value {
    let mut instruction = serde_json::Map::new();
    let own_app = match target {
        ReplayTarget::Region(region) => {
            instruction.insert("region".into(), json!(region));
            true
        }
        ReplayTarget::App(app) => {
            instruction.insert("app".into(), json!(app));
            is_own_app(app, environment)
        }
        ReplayTarget::Machine { app, machine } => {
            instruction.insert("app".into(), json!(app));
            instruction.insert("instance".into(), json!(machine));
            is_own_app(app, environment)
        }
    };
    if own_app {
        let mut set_headers = vec![json!({"name": "X-Navigator-Retry", "value": "true"})];
        if let Some(value) = authorization.and_then(|value| value.to_str().ok()) {
            set_headers.push(json!({"name": "Authorization", "value": value}));
        }
        instruction.insert("timeout".into(), json!(REPLAY_TIMEOUT));
        instruction.insert("fallback".into(), json!("force_self"));
        instruction.insert("transform".into(), json!({ "set_headers": set_headers }));
    }
    Value::Object(instruction)
}

/// Returns the `Fly-Replay` header for `target`, set only where the header states
/// the whole instruction: replays to another app, which carry no timeout
/// and no header transform. For targets within this app the header is left
/// out because it cannot carry the transform, and a proxy reading the
/// header in place of the body would drop `X-Navigator-Retry`, which the
/// loop protection relies on.
pub fn header_value(target: &ReplayTarget, environment: &FlyEnvironment) -> Option<HeaderValue> {
    let text = match target {
        ReplayTarget::Region(_) => return None,
        ReplayTarget::App(app) if is_own_app(app, environment) => return None,
        ReplayTarget::Machine { app, .. } if is_own_app(app, environment) => return None,
        ReplayTarget::App(app) => format!("app={app}"),
        ReplayTarget::Machine { app, machine } => format!("app={app};instance={machine}"),
    };
    HeaderValue::from_str(&text).ok()
}

/// `region=syd`, `app=smooth-pdf`, `app=a;instance=m`: the target as logs
/// show it.
pub fn describe(target: &ReplayTarget) -> String {
    match target {
        ReplayTarget::Region(region) => format!("region={region}"),
        ReplayTarget::App(app) => format!("app={app}"),
        ReplayTarget::Machine { app, machine } => format!("app={app};instance={machine}"),
    }
}

/// Private-network destination of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateTarget {
    /// `host:port` on Fly's private network, as logged.
    pub host_port: String,
    /// Address the connection is opened to: the `routes.fly.resolve` entry
    /// for the host, else `host_port` itself.
    pub connect: Authority,
}

/// Returns the private-network address of `target`: `R.<FLY_APP_NAME>.internal`,
/// `A.internal` or `M.vm.A.internal`, on `routes.fly.internal_port`.
pub fn private_target(
    target: &ReplayTarget,
    environment: &FlyEnvironment,
    routes: &FlyRoutes,
) -> Result<PrivateTarget, String> {
    let host = match target {
        ReplayTarget::Region(region) => match &environment.app_name {
            Some(app) => format!("{region}.{app}.internal"),
            None => {
                return Err(format!(
                    "cannot name region {region} on the private network: FLY_APP_NAME is not set"
                ));
            }
        },
        ReplayTarget::App(app) => format!("{app}.internal"),
        ReplayTarget::Machine { app, machine } => format!("{machine}.vm.{app}.internal"),
    };
    let host = host.to_ascii_lowercase();
    let host_port = format!("{host}:{}", routes.internal_port);
    let connect = match routes.resolve.get(&host) {
        Some(address) => address.to_string(),
        None => host_port.clone(),
    };
    let connect = Authority::try_from(connect.as_str())
        .map_err(|error| format!("invalid private-network address {connect:?}: {error}"))?;
    Ok(PrivateTarget { host_port, connect })
}

/// Returns the exact body length: `Content-Length`, else what the body
/// itself reports (zero for a request that ended with its head).
fn body_length(request: &Request<RequestBody>) -> Option<u64> {
    if let Some(value) = request.headers().get(CONTENT_LENGTH) {
        return value.to_str().ok()?.trim().parse().ok();
    }
    request.body().size_hint().exact()
}

/// Answers a request that matched `rule`.
pub async fn answer(
    app: &App,
    context: &mut RequestContext<'_>,
    rule: &ReplayRule,
    request: Request<RequestBody>,
) -> Response<Body> {
    let decision = decide(request.method(), request.headers(), body_length(&request));
    match decision {
        Decision::Loop(header) => stop_loop(context, rule, &request, header).await,
        Decision::PrivateNetwork(reason) => {
            proxy_over_private_network(app, context, &rule.target, request, reason).await
        }
        Decision::Replay => replay(app, context, rule, &request),
    }
}

async fn stop_loop(
    context: &mut RequestContext<'_>,
    rule: &ReplayRule,
    request: &Request<RequestBody>,
    header: &'static str,
) -> Response<Body> {
    let target = describe(&rule.target);
    warn!(
        path = %request.uri().path(),
        target = %target,
        header,
        failure = ?request.headers().get(REPLAY_FAILED_HEADER),
        request_id = ?context.request_id,
        "replayed request matched a replay rule again; answering the maintenance page"
    );
    context.record.answer = Answer::Maintenance;
    context.record.target = Some(Target::Text(format!("replay loop: {target}")));
    pipeline::maintenance_page(context.snapshot, 30).await
}

fn replay(
    app: &App,
    context: &mut RequestContext<'_>,
    rule: &ReplayRule,
    request: &Request<RequestBody>,
) -> Response<Body> {
    let environment = &app.fly.environment;
    let instruction = instruction(
        &rule.target,
        environment,
        request.headers().get(AUTHORIZATION),
    );
    let target = describe(&rule.target);
    debug!(path = %request.uri().path(), target = %target, "responding with a Fly-Replay instruction");
    context.record.answer = Answer::FlyReplay;
    context.record.target = Some(Target::Text(target));
    crate::metrics::REPLAYS.inc();

    let mut response = Response::new(body::full(instruction.to_string()));
    *response.status_mut() = rule.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(REPLAY_CONTENT_TYPE));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(value) = header_value(&rule.target, environment) {
        headers.insert(FLY_REPLAY_HEADER, value);
    }
    response
}

async fn proxy_over_private_network(
    app: &App,
    context: &mut RequestContext<'_>,
    target: &ReplayTarget,
    mut request: Request<RequestBody>,
    reason: &'static str,
) -> Response<Body> {
    let destination = match private_target(target, &app.fly.environment, &context.snapshot.fly) {
        Ok(destination) => destination,
        Err(error) => {
            warn!(target = %describe(target), reason, request_id = ?context.request_id, error = %error, "cannot proxy over the private network");
            context.record.answer = Answer::Error;
            return responses::error_page(
                StatusCode::BAD_GATEWAY,
                "This page is served by another region, which cannot be reached from here.",
            );
        }
    };

    // The receiver serves the request itself: it stops instead of
    // replaying or proxying it once more.
    request
        .headers_mut()
        .insert(RETRY_HEADER, HeaderValue::from_static("true"));
    let websocket = is_websocket_upgrade(request.headers());
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    context.record.answer = if websocket {
        Answer::WebSocket
    } else {
        Answer::FlyReplay
    };
    context.record.target = Some(Target::Text(format!(
        "http://{}{path_and_query}",
        destination.host_port
    )));
    debug!(
        target = %describe(target),
        upstream = %destination.host_port,
        connect = %destination.connect,
        reason,
        "proxying over the private network instead of replaying"
    );

    // An open tunnel keeps the machine awake, as a request in flight does.
    let guard: proxy::Guard = if websocket {
        Box::new(app.fly.idle.track())
    } else {
        Box::new(())
    };
    let forward = Forward {
        upstream: Upstream::Named(Scheme::HTTP, destination.connect.clone()),
        path_and_query,
        forwarding: Forwarding {
            peer: context.connection.peer.ip(),
            tls: context.connection.tls,
            trust_proxy: context.snapshot.config.server.trust_proxy,
        },
        request_id: &context.request_id,
        websocket,
        guard,
        // The receiving navigator bounds its own tenant's silence the same
        // way; this bound covers a silent or unreachable receiver.
        response_timeout: Some(context.snapshot.config.applications.response_timeout.get())
            .filter(|timeout| !timeout.is_zero()),
    };
    match proxy::forward(&app.client, request, forward).await {
        Ok(response) => response,
        Err(error) => {
            warn!(
                target = %describe(target),
                upstream = %destination.host_port,
                connect = %destination.connect,
                request_id = ?context.request_id,
                error = %error,
                "proxying over the private network failed"
            );
            match error {
                ProxyError::Connect(_) => {
                    context.record.answer = Answer::Maintenance;
                    pipeline::maintenance_page(context.snapshot, 30).await
                }
                ProxyError::Timeout(_) => {
                    context.record.answer = Answer::Error;
                    responses::error_page(
                        StatusCode::GATEWAY_TIMEOUT,
                        "The region serving this page did not answer in time.",
                    )
                }
                _ => {
                    context.record.answer = Answer::Error;
                    responses::error_page(
                        StatusCode::BAD_GATEWAY,
                        "The region serving this page did not answer this request.",
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fly(app: &str) -> FlyEnvironment {
        FlyEnvironment {
            app_name: Some(app.into()),
            machine_id: Some("m1".into()),
            region: Some("iad".into()),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn region_instruction_has_timeout_fallback_and_transform() {
        let authorization = HeaderValue::from_static("Basic anVkZ2U6c2VjcmV0");
        let body = instruction(
            &ReplayTarget::Region("syd".into()),
            &fly("smooth"),
            Some(&authorization),
        );
        assert_eq!(
            body.to_string(),
            r#"{"region":"syd","timeout":"30s","fallback":"force_self","transform":{"set_headers":[{"name":"X-Navigator-Retry","value":"true"},{"name":"Authorization","value":"Basic anVkZ2U6c2VjcmV0"}]}}"#
        );
    }

    #[test]
    fn region_instruction_without_authorization() {
        let body = instruction(&ReplayTarget::Region("syd".into()), &fly("smooth"), None);
        assert_eq!(
            body["transform"]["set_headers"],
            json!([{"name": "X-Navigator-Retry", "value": "true"}])
        );
    }

    #[test]
    fn other_app_instruction_is_app_only() {
        let target = ReplayTarget::App("smooth-pdf".into());
        let body = instruction(&target, &fly("smooth"), None);
        assert_eq!(body.to_string(), r#"{"app":"smooth-pdf"}"#);
        assert_eq!(
            header_value(&target, &fly("smooth")).unwrap(),
            "app=smooth-pdf"
        );
    }

    #[test]
    fn machine_in_own_app_has_instance_and_transform() {
        let target = ReplayTarget::Machine {
            app: "smooth".into(),
            machine: "48e3".into(),
        };
        let body = instruction(&target, &fly("smooth"), None);
        assert_eq!(body["app"], "smooth");
        assert_eq!(body["instance"], "48e3");
        assert_eq!(body["timeout"], "30s");
        assert_eq!(body["fallback"], "force_self");
        assert_eq!(
            body["transform"]["set_headers"][0]["name"],
            "X-Navigator-Retry"
        );
        assert!(header_value(&target, &fly("smooth")).is_none());
    }

    #[test]
    fn machine_in_other_app_has_no_timeout() {
        let target = ReplayTarget::Machine {
            app: "worker".into(),
            machine: "48e3".into(),
        };
        let body = instruction(&target, &fly("smooth"), None);
        assert_eq!(body.to_string(), r#"{"app":"worker","instance":"48e3"}"#);
        assert_eq!(
            header_value(&target, &fly("smooth")).unwrap(),
            "app=worker;instance=48e3"
        );
    }

    #[test]
    fn region_has_no_replay_header() {
        assert!(header_value(&ReplayTarget::Region("syd".into()), &fly("smooth")).is_none());
    }

    #[test]
    fn small_requests_are_replayed() {
        let get = headers(&[]);
        assert_eq!(decide(&Method::GET, &get, Some(0)), Decision::Replay);
        let post = headers(&[("content-length", "1048575")]);
        assert_eq!(
            decide(&Method::POST, &post, Some(1_048_575)),
            Decision::Replay
        );
    }

    #[test]
    fn large_or_unknown_bodies_use_private_network() {
        let post = headers(&[("content-length", "1048576")]);
        assert_eq!(
            decide(&Method::POST, &post, Some(MAX_REPLAY_BODY)),
            Decision::PrivateNetwork("body of 1 MiB or more")
        );
        let chunked = headers(&[("transfer-encoding", "chunked")]);
        assert_eq!(
            decide(&Method::PUT, &chunked, None),
            Decision::PrivateNetwork("no Content-Length")
        );
        assert_eq!(
            decide(&Method::PATCH, &headers(&[]), Some(0)),
            Decision::PrivateNetwork("no Content-Length")
        );
        assert_eq!(
            decide(&Method::DELETE, &chunked, None),
            Decision::PrivateNetwork("body of unknown length")
        );
    }

    #[test]
    fn websocket_upgrades_use_private_network() {
        let upgrade = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(
            decide(&Method::GET, &upgrade, Some(0)),
            Decision::PrivateNetwork("WebSocket upgrade")
        );
    }

    #[test]
    fn replayed_requests_stop_before_anything_else() {
        let failed = headers(&[
            ("fly-replay-failed", "timeout"),
            ("content-length", "9999999"),
        ]);
        assert_eq!(
            decide(&Method::POST, &failed, Some(9_999_999)),
            Decision::Loop("fly-replay-failed")
        );
        let retried = headers(&[("x-navigator-retry", "TRUE"), ("upgrade", "websocket")]);
        assert_eq!(
            decide(&Method::GET, &retried, Some(0)),
            Decision::Loop("x-navigator-retry")
        );
        let other_value = headers(&[("x-navigator-retry", "false")]);
        assert_eq!(
            decide(&Method::GET, &other_value, Some(0)),
            Decision::Replay
        );
    }

    #[test]
    fn private_targets_follow_fly_names() {
        let routes = FlyRoutes {
            resolve: [(
                "syd.smooth.internal".to_string(),
                "127.0.0.1:9001".parse().unwrap(),
            )]
            .into_iter()
            .collect(),
            internal_port: 9999,
        };
        let region =
            private_target(&ReplayTarget::Region("SYD".into()), &fly("smooth"), &routes).unwrap();
        assert_eq!(region.host_port, "syd.smooth.internal:9999");
        assert_eq!(region.connect.as_str(), "127.0.0.1:9001");

        let app = private_target(
            &ReplayTarget::App("smooth-pdf".into()),
            &fly("smooth"),
            &routes,
        )
        .unwrap();
        assert_eq!(app.host_port, "smooth-pdf.internal:9999");
        assert_eq!(app.connect.as_str(), "smooth-pdf.internal:9999");

        let machine = ReplayTarget::Machine {
            app: "smooth".into(),
            machine: "48e3".into(),
        };
        let machine = private_target(&machine, &fly("smooth"), &routes).unwrap();
        assert_eq!(machine.host_port, "48e3.vm.smooth.internal:9999");
    }

    #[test]
    fn region_target_needs_app_name() {
        let error = private_target(
            &ReplayTarget::Region("syd".into()),
            &FlyEnvironment::default(),
            &FlyRoutes::default(),
        )
        .unwrap_err();
        assert!(error.contains("FLY_APP_NAME is not set"), "{error}");
    }
}
