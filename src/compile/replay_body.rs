//! The outcome of a request that matches a Fly-Replay rule: the JSON body
//! of the `Fly-Replay` response, or, for requests Fly cannot replay, the
//! private-network address to proxy to instead. Pure functions, shared by
//! the pipeline and `navigator routes`.

use http::header::{AUTHORIZATION, CONTENT_LENGTH, UPGRADE};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

use super::rules::{ReplayRule, ReplayTarget};

/// Bodies of this size or more are proxied, not replayed: Fly replays a
/// request by buffering its body, up to 1 MiB.
pub const MAX_REPLAY_BODY_BYTES: u64 = 1024 * 1024;

/// How long Fly waits for the target of a replay within the same app.
const REPLAY_TIMEOUT: &str = "30s";

/// Header set on replayed requests, and honoured as "already replayed" on
/// arrival.
pub const RETRY_HEADER: &str = "x-navigator-retry";

/// Header Fly's proxy adds when it gave up on a replay and sent the
/// request back.
pub const REPLAY_FAILED_HEADER: &str = "fly-replay-failed";

/// The outcome for a request that matched a replay rule.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayPlan {
    /// Respond with the rule's status, `Content-Type:
    /// application/vnd.fly.replay+json` and this body.
    Replay { status: StatusCode, body: Value },
    /// Fly cannot replay this request; proxy it over the private network
    /// to `url` (scheme, host and port) instead.
    PrivateNetwork { reason: &'static str, url: String },
    /// The request was replayed before or came back from a failed replay:
    /// the maintenance page, never a second replay.
    Maintenance,
}

/// Returns the JSON body of the `Fly-Replay` response for `rule`. A region
/// or a machine of this app gets a timeout, `force_self` as fallback and
/// headers that mark the replayed request (plus the client's
/// `Authorization`, which the target needs again). Another app gets only
/// its name, because a cold start of the appliance must not be cut off by
/// a timeout.
pub fn replay_body(rule: &ReplayRule, headers: &HeaderMap) -> Value {
    match &rule.target {
        ReplayTarget::App(app) => json!({ "app": app }),
        ReplayTarget::Region(region) => json!({
            "region": region,
            "timeout": REPLAY_TIMEOUT,
            "fallback": "force_self",
            "transform": transform(headers),
        }),
        ReplayTarget::Machine { app, machine } => json!({
            "app": app,
            "instance": machine,
            "timeout": REPLAY_TIMEOUT,
            "fallback": "force_self",
            "transform": transform(headers),
        }),
    }
}

fn transform(headers: &HeaderMap) -> Value {
    let mut set_headers = vec![json!({ "name": "X-Navigator-Retry", "value": "true" })];
    if let Some(value) = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    {
        set_headers.push(json!({ "name": "Authorization", "value": value }));
    }
    json!({ "set_headers": set_headers })
}

/// Decides how a request matching `rule` is answered. `fly_app` is
/// `FLY_APP_NAME` and `port` the port other navigators listen on
/// (`routes.fly.internal_port`, else the listen port).
pub fn plan(
    rule: &ReplayRule,
    method: &Method,
    headers: &HeaderMap,
    fly_app: &str,
    port: u16,
) -> ReplayPlan {
    let retried = headers.contains_key(REPLAY_FAILED_HEADER)
        || headers
            .get(RETRY_HEADER)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
    if retried {
        return ReplayPlan::Maintenance;
    }

    let reason = if headers.contains_key(UPGRADE) {
        Some("WebSocket upgrades are never replayed")
    } else {
        match content_length(headers) {
            Some(length) if length >= MAX_REPLAY_BODY_BYTES => {
                Some("the body is 1 MiB or more, too large to replay")
            }
            None if matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
                Some("a body without Content-Length cannot be replayed")
            }
            _ => None,
        }
    };
    match reason {
        Some(reason) => ReplayPlan::PrivateNetwork {
            reason,
            url: private_network_url(&rule.target, fly_app, port),
        },
        None => ReplayPlan::Replay {
            status: rule.status,
            body: replay_body(rule, headers),
        },
    }
}

/// Returns the private-network origin of a replay target:
/// `http://REGION.APP.internal:PORT`, `http://APP.internal:PORT` or
/// `http://MACHINE.vm.APP.internal:PORT`.
pub fn private_network_url(target: &ReplayTarget, fly_app: &str, port: u16) -> String {
    match target {
        ReplayTarget::Region(region) => format!("http://{region}.{fly_app}.internal:{port}"),
        ReplayTarget::App(app) => format!("http://{app}.internal:{port}"),
        ReplayTarget::Machine { app, machine } => {
            format!("http://{machine}.vm.{app}.internal:{port}")
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use regex::Regex;

    fn rule(target: ReplayTarget) -> ReplayRule {
        ReplayRule {
            path: Regex::new("^/showcase/2025/adelaide/.+$").unwrap(),
            target,
            status: StatusCode::TEMPORARY_REDIRECT,
            methods: Vec::new(),
        }
    }

    #[test]
    fn region_body_carries_retry_and_authorization() {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic anVkZ2U6eA=="),
        );
        let body = replay_body(&rule(ReplayTarget::Region("syd".into())), &headers);
        assert_eq!(
            body.to_string(),
            r#"{"region":"syd","timeout":"30s","fallback":"force_self","transform":{"set_headers":[{"name":"X-Navigator-Retry","value":"true"},{"name":"Authorization","value":"Basic anVkZ2U6eA=="}]}}"#
        );
    }

    #[test]
    fn other_app_body_has_only_the_app() {
        let body = replay_body(
            &rule(ReplayTarget::App("smooth-pdf".into())),
            &HeaderMap::new(),
        );
        assert_eq!(body.to_string(), r#"{"app":"smooth-pdf"}"#);
    }

    #[test]
    fn machine_body_names_the_instance() {
        let target = ReplayTarget::Machine {
            app: "smooth".into(),
            machine: "e784".into(),
        };
        let body = replay_body(&rule(target), &HeaderMap::new());
        assert_eq!(body["app"], "smooth");
        assert_eq!(body["instance"], "e784");
        assert_eq!(body["timeout"], "30s");
        assert_eq!(
            body["transform"]["set_headers"].as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn large_bodies_use_private_network() {
        let region = rule(ReplayTarget::Region("syd".into()));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(MAX_REPLAY_BODY_BYTES));
        let expected = ReplayPlan::PrivateNetwork {
            reason: "the body is 1 MiB or more, too large to replay",
            url: "http://syd.smooth.internal:9999".into(),
        };
        assert_eq!(
            plan(&region, &Method::POST, &headers, "smooth", 9999),
            expected
        );

        let without_length = plan(&region, &Method::POST, &HeaderMap::new(), "smooth", 9999);
        assert!(matches!(without_length, ReplayPlan::PrivateNetwork { .. }));

        headers.insert(CONTENT_LENGTH, HeaderValue::from(MAX_REPLAY_BODY_BYTES - 1));
        let small = plan(&region, &Method::POST, &headers, "smooth", 9999);
        assert!(matches!(small, ReplayPlan::Replay { .. }));
        let get = plan(&region, &Method::GET, &HeaderMap::new(), "smooth", 9999);
        assert!(matches!(get, ReplayPlan::Replay { .. }));
    }

    #[test]
    fn websocket_upgrades_are_not_replayed() {
        let mut headers = HeaderMap::new();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let app = rule(ReplayTarget::App("smooth-pdf".into()));
        assert_eq!(
            plan(&app, &Method::GET, &headers, "smooth", 3000),
            ReplayPlan::PrivateNetwork {
                reason: "WebSocket upgrades are never replayed",
                url: "http://smooth-pdf.internal:3000".into(),
            }
        );
    }

    #[test]
    fn replayed_requests_get_maintenance() {
        let region = rule(ReplayTarget::Region("syd".into()));
        for (name, value) in [(REPLAY_FAILED_HEADER, "timeout"), (RETRY_HEADER, "true")] {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            assert_eq!(
                plan(&region, &Method::GET, &headers, "smooth", 9999),
                ReplayPlan::Maintenance
            );
        }
    }

    #[test]
    fn machine_address_on_the_private_network() {
        let target = ReplayTarget::Machine {
            app: "smooth".into(),
            machine: "e784".into(),
        };
        assert_eq!(
            private_network_url(&target, "ignored", 9999),
            "http://e784.vm.smooth.internal:9999"
        );
    }
}
