//! `navigator routes CONFIG PATH...`: explains how the pipeline would
//! answer each path: which step, which rule, tenant or file, and what a
//! replay would send.
//!
//! The explanation walks the steps of `pipeline::route` in the same order
//! and calls the same decision functions on the same compiled snapshot
//! (`canonical::canonicalize`, `control::handles`, `status::answers`,
//! `AccessControl::authorize`, `PathRules::redirect` and `rewrite`,
//! `ReplayRules::find` with `fly::replay::decide` and `instruction`,
//! `cgi::find`, `reverse_proxy::find`, `StaticFiles::serve`,
//! `bots::blocks`, `TenantIndex::find`). Only the side effects are left
//! out: nothing is proxied, no script or tenant runs. Static files are
//! looked up on this machine's disk.

use std::borrow::Cow;
use std::path::PathBuf;

use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use serde::Serialize;
use serde_json::Value;

use crate::access_log::Answer;
use crate::auth::Decision;
use crate::bots;
use crate::canonical;
use crate::cgi;
use crate::compile::{self, Snapshot};
use crate::control;
use crate::fly::FlyEnvironment;
use crate::fly::replay;
use crate::limits;
use crate::pipeline::{
    encode_path, health_response, is_clean_path, trailing_slash_status, upstream_path_and_query,
    with_query,
};
use crate::proxy::headers;
use crate::reverse_proxy;
use crate::status::{self, Stage};

/// The request to explain, besides its path.
#[derive(Debug, Clone)]
pub struct Simulated {
    pub method: Method,
    /// Treat the request as authenticated as this user, without a
    /// password.
    pub user: Option<String>,
    pub headers: HeaderMap,
    /// Whether the client is a loopback peer (for the status pages and
    /// the broadcast endpoint).
    pub loopback: bool,
}

/// The outcome of one path.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub method: String,
    /// The path as given, with its query.
    pub path: String,
    /// The pipeline step that answers (0 to 13).
    pub step: u8,
    pub step_name: &'static str,
    /// The access log's name for the answer.
    pub answer: &'static str,
    /// The status navigator answers with itself; `None` when an upstream
    /// (tenant, reverse proxy, CGI script, private network) decides.
    pub status: Option<u16>,
    /// One line saying what happens.
    pub outcome: String,
    /// The rule that decided (a regex, a realm, a route name).
    pub rule: Option<String>,
    /// The redirect location, file, tenant, script or upstream URL.
    pub target: Option<String>,
    /// The `Fly-Replay` body, for a replay.
    pub replay: Option<Value>,
    /// Changes that earlier steps made to the request (canonical path,
    /// rewrites, authentication).
    pub details: Vec<String>,
}

impl Explanation {
    fn new(method: &Method, path: &str) -> Explanation {
        Explanation {
            method: method.to_string(),
            path: path.to_string(),
            step: 13,
            step_name: "not found",
            answer: Answer::NotFound.as_str(),
            status: Some(404),
            outcome: "nothing matched".into(),
            rule: None,
            target: None,
            replay: None,
            details: Vec::new(),
        }
    }

    fn answered(
        mut self,
        step: u8,
        step_name: &'static str,
        answer: Answer,
        status: Option<StatusCode>,
        outcome: impl Into<String>,
    ) -> Explanation {
        self.step = step;
        self.step_name = step_name;
        self.answer = answer.as_str();
        self.status = status.map(|status| status.as_u16());
        self.outcome = outcome.into();
        self
    }

    fn rule(mut self, rule: impl Into<String>) -> Explanation {
        self.rule = Some(rule.into());
        self
    }

    fn target(mut self, target: impl Into<String>) -> Explanation {
        self.target = Some(target.into());
        self
    }

    /// Formats the explanation as one summary line and indented details.
    pub fn to_text(&self) -> String {
        let status = self
            .status
            .map_or_else(|| "-".to_string(), |status| status.to_string());
        let mut text = format!(
            "{} {} => {status} {} (step {}): {}\n",
            self.method, self.path, self.step_name, self.step, self.outcome
        );
        for detail in &self.details {
            text.push_str(&format!("    {detail}\n"));
        }
        if let Some(rule) = &self.rule {
            text.push_str(&format!("    rule: {rule}\n"));
        }
        if let Some(target) = &self.target {
            text.push_str(&format!("    target: {target}\n"));
        }
        if let Some(replay) = &self.replay {
            text.push_str(&format!("    Fly-Replay body: {replay}\n"));
        }
        text
    }
}

/// Explains how `snapshot` answers `request` for `path_and_query`.
pub async fn explain(
    snapshot: &Snapshot,
    request: &Simulated,
    path_and_query: &str,
) -> Explanation {
    let out = Explanation::new(&request.method, path_and_query);
    let (raw_path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let parts = match request_parts(request, path_and_query) {
        Ok(parts) => parts,
        Err(message) => {
            return out.answered(
                0,
                "canonical path",
                Answer::Error,
                Some(StatusCode::BAD_REQUEST),
                message,
            );
        }
    };

    // Before step 0: the head checks.
    let max_body = snapshot
        .config
        .server
        .limits
        .max_body_bytes
        .map(|size| size.0);
    if let Err(error) = limits::check_head(Version::HTTP_11, &parts.headers, max_body) {
        return out.answered(
            0,
            "request limits",
            Answer::Error,
            Some(error.status()),
            error.message(),
        );
    }

    // 0. Canonical path.
    let path = match canonical::canonicalize(raw_path) {
        Ok(path) => path,
        Err(error) => {
            return out.answered(
                0,
                "canonical path",
                Answer::Error,
                Some(StatusCode::BAD_REQUEST),
                error.to_string(),
            );
        }
    };
    let mut out = out;
    if path != raw_path {
        out.details.push(format!("canonical path: {path}"));
    }

    // 2. Health check.
    if let Some(health) = health_response(snapshot, &path) {
        return out.answered(
            2,
            "health check",
            Answer::Health,
            Some(health.status),
            "the configured health response",
        );
    }

    // 2b. Control API.
    if control::handles(snapshot, &path) {
        if !request.loopback {
            return out.answered(
                2,
                "control API",
                Answer::Control,
                Some(StatusCode::FORBIDDEN),
                "the control API answers loopback clients only",
            );
        }
        return out.answered(2, "control API", Answer::Control, None, "the control API");
    }

    // 2c. Status pages for loopback peers.
    if status::answers(
        snapshot,
        &path,
        request.loopback,
        None,
        Stage::BeforeAuthentication,
    ) {
        return status_page(out, 2);
    }

    // 3. Broadcast endpoint; the same test as the pipeline's.
    let cable = &snapshot.config.cable;
    if cable.enabled && path == cable.broadcast_path {
        let (status, outcome) = if !request.loopback {
            (StatusCode::FORBIDDEN, "only loopback peers may broadcast")
        } else if request.method != Method::POST {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "broadcasts are POST requests",
            )
        } else {
            (StatusCode::OK, "delivered to the stream's subscribers")
        };
        return out
            .answered(
                3,
                "broadcast endpoint",
                Answer::Broadcast,
                Some(status),
                outcome,
            )
            .target(cable.broadcast_path.clone());
    }

    // 4. Authentication.
    let user = match &request.user {
        Some(user) => {
            out.details
                .push(format!("authenticated as {user} (simulated)"));
            Some(user.clone())
        }
        None => match snapshot
            .access
            .authorize(&path, raw_path, &parts.headers)
            .await
        {
            Decision::Allow { user } => {
                if snapshot.access.is_enabled() && user.is_none() {
                    out.details.push("public: no credentials needed".into());
                }
                user
            }
            Decision::Challenge { realm } => {
                return out
                    .answered(
                        4,
                        "authentication",
                        Answer::AuthFailure,
                        Some(StatusCode::UNAUTHORIZED),
                        "credentials required",
                    )
                    .rule(format!("realm \"{realm}\""));
            }
            Decision::StaticOnly { realm } => {
                out.details
                    .push("public for static files only (a glob in public_paths)".into());
                return static_or_challenge(snapshot, out, &path, &parts, &realm).await;
            }
        },
    };

    // 4b. Status pages for authenticated users on other peers.
    if status::answers(
        snapshot,
        &path,
        request.loopback,
        user.as_deref(),
        Stage::AfterAuthentication,
    ) {
        return status_page(out, 4);
    }

    // 5. Cable endpoint.
    if cable.enabled && path == cable.path {
        return out
            .answered(
                5,
                "cable endpoint",
                Answer::WebSocket,
                None,
                "the built-in WebSocket pub/sub",
            )
            .target(cable.path.clone());
    }

    // 6. Redirects, rewrites, Fly-Replay, trailing-slash redirects.
    if let Some((rule, location)) = snapshot.path_rules.redirect(&path, &request.method) {
        let location = with_query(location, query);
        return out
            .answered(
                6,
                "redirect",
                Answer::Redirect,
                Some(rule.status),
                format!("to {location}"),
            )
            .rule(rule.from.as_str())
            .target(location);
    }
    let rewritten = snapshot.path_rules.rewrite(&path, &request.method);
    if let Some(target) = &rewritten {
        if !is_clean_path(target) {
            return out
                .answered(
                    6,
                    "rewrite",
                    Answer::Rewrite,
                    Some(StatusCode::BAD_REQUEST),
                    "the rewritten path is not a clean absolute path",
                )
                .target(target.clone());
        }
        out.details.push(format!("rewritten to {target}"));
    }
    let path = rewritten.clone().map_or(path, Cow::Owned);
    if let Some(rule) = snapshot.replay.find(&path, &request.method) {
        return replay(snapshot, out, rule, &parts.headers, request);
    }
    if snapshot.needs_trailing_slash(&path) {
        let location = with_query(format!("{}/", encode_path(&path)), query);
        let status = trailing_slash_status(&request.method);
        return out
            .answered(
                6,
                "trailing slash",
                Answer::Redirect,
                Some(status),
                format!("to {location}"),
            )
            .target(location);
    }

    // 7. CGI scripts.
    if let Some(script) = cgi::find(snapshot, &path, &request.method) {
        let out = out
            .rule(script.path.clone())
            .target(script.script.display().to_string());
        if !cgi::user_allowed(script, user.as_deref()) {
            return out.answered(
                7,
                "CGI script",
                Answer::Cgi,
                Some(StatusCode::FORBIDDEN),
                "the user is not in allowed_users",
            );
        }
        return out.answered(7, "CGI script", Answer::Cgi, None, "runs the script");
    }

    // 8. Reverse proxy routes.
    if let Some(matched) = reverse_proxy::find(&snapshot.reverse_proxies, &path) {
        let route = matched.route;
        let out = out.rule(format!("{} ({})", route.name, route.target));
        if request.method == Method::OPTIONS && !route.response_headers.is_empty() {
            return out.answered(
                8,
                "reverse proxy",
                Answer::ReverseProxy,
                Some(StatusCode::NO_CONTENT),
                "CORS preflight answered with the route's response_headers",
            );
        }
        let original = upstream_path_and_query(&parts, rewritten.as_deref());
        return match matched.upstream_uri(&original) {
            Ok(uri) => out
                .answered(
                    8,
                    "reverse proxy",
                    Answer::ReverseProxy,
                    None,
                    format!("proxied to {uri}"),
                )
                .target(uri.to_string()),
            Err(_) => out.answered(
                8,
                "reverse proxy",
                Answer::ReverseProxy,
                Some(StatusCode::BAD_REQUEST),
                "the request cannot be mapped to the upstream URL",
            ),
        };
    }

    // 9. Static files.
    if let Some(out) = static_file(snapshot, out.clone(), &path, &parts).await {
        return out;
    }

    // 10. Maintenance mode.
    if snapshot.maintenance_enabled {
        return out.answered(
            10,
            "maintenance",
            Answer::Maintenance,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "maintenance mode is on",
        );
    }

    // 11. Bot detection.
    let tenant = snapshot.tenants.find(&path);
    let setting = bots::effective(&snapshot.bot_detection, tenant.map(|t| t.as_ref()));
    if bots::blocks(setting, &parts.headers) {
        return out.answered(
            11,
            "bot detection",
            Answer::BotBlocked,
            Some(StatusCode::FORBIDDEN),
            "the User-Agent is a bot",
        );
    }

    // 12. Tenant.
    if let Some(tenant) = tenant {
        let upstream = upstream_path_and_query(&parts, rewritten.as_deref());
        let mut out = out
            .answered(
                12,
                "tenant",
                Answer::Proxy,
                None,
                format!("tenant {}", tenant.name),
            )
            .rule(tenant.path.clone())
            .target(tenant.name.clone());
        out.details.push(format!("upstream path: {upstream}"));
        return out;
    }

    // 13. Nothing matched.
    out
}

/// Builds the request head: the method, the URI, the given headers, a
/// `Host` unless one is given.
fn request_parts(
    request: &Simulated,
    path_and_query: &str,
) -> Result<http::request::Parts, String> {
    let mut builder = http::Request::builder()
        .method(request.method.clone())
        .uri(path_and_query);
    if let Some(headers) = builder.headers_mut() {
        headers.extend(request.headers.clone());
        if !headers.contains_key(HOST) {
            headers.insert(HOST, HeaderValue::from_static("localhost"));
        }
    }
    builder
        .body(())
        .map(|request| request.into_parts().0)
        .map_err(|error| format!("invalid request target {path_and_query:?}: {error}"))
}

fn status_page(out: Explanation, step: u8) -> Explanation {
    out.answered(
        step,
        "status page",
        Answer::Status,
        Some(StatusCode::OK),
        "navigator's own status page",
    )
}

/// Step 4 for a path a glob made public for static files only: the
/// rewrites apply, then a static file may answer, and anything else is a
/// 401.
async fn static_or_challenge(
    snapshot: &Snapshot,
    mut out: Explanation,
    path: &str,
    parts: &http::request::Parts,
    realm: &str,
) -> Explanation {
    let rewritten = snapshot.path_rules.rewrite(path, &parts.method);
    let path = match rewritten.as_deref().filter(|target| is_clean_path(target)) {
        Some(target) => {
            out.details.push(format!("rewritten to {target}"));
            target
        }
        None => path,
    };
    match static_file(snapshot, out.clone(), path, parts).await {
        Some(out) => out,
        None => out
            .answered(
                4,
                "authentication",
                Answer::AuthFailure,
                Some(StatusCode::UNAUTHORIZED),
                "credentials required: no static file answers",
            )
            .rule(format!("realm \"{realm}\"")),
    }
}

async fn static_file(
    snapshot: &Snapshot,
    out: Explanation,
    path: &str,
    parts: &http::request::Parts,
) -> Option<Explanation> {
    let files = snapshot.static_files.as_ref()?;
    let response = files.serve(path, parts).await?;
    let status = response.status();
    let file = files
        .locate(path)
        .map(|file| file.display().to_string())
        .unwrap_or_else(|| path.to_string());
    let outcome = match response.headers().get(http::header::LOCATION) {
        Some(location) => format!(
            "redirect to {} (a directory with an index file)",
            location.to_str().unwrap_or("?")
        ),
        None => {
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("?");
            format!("file, {content_type}")
        }
    };
    Some(
        out.answered(9, "static file", Answer::Static, Some(status), outcome)
            .target(file),
    )
}

fn replay(
    snapshot: &Snapshot,
    out: Explanation,
    rule: &compile::rules::ReplayRule,
    headers: &HeaderMap,
    request: &Simulated,
) -> Explanation {
    let method = &request.method;
    let environment = FlyEnvironment::from_process();
    let out = out.rule(format!(
        "{} ({})",
        rule.path.as_str(),
        replay::describe(&rule.target)
    ));
    // What the body reports when the request has no `Content-Length`: a
    // chunked body has no known length, no body has length zero.
    let body_length = match headers.get(CONTENT_LENGTH) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse().ok()),
        None if headers.contains_key(TRANSFER_ENCODING) => None,
        None => Some(0),
    };
    match replay::decide(method, headers, body_length) {
        replay::Decision::Replay => {
            let instruction =
                replay::instruction(&rule.target, &environment, headers.get(AUTHORIZATION));
            let mut out = out.answered(
                6,
                "fly-replay",
                Answer::FlyReplay,
                Some(rule.status),
                "answered with Fly-Replay",
            );
            if request.user.is_some() && !headers.contains_key(AUTHORIZATION) {
                out.details.push(
                    "a real request's Authorization header is passed on in set_headers".into(),
                );
            }
            out.replay = Some(instruction);
            out
        }
        replay::Decision::PrivateNetwork(reason) => {
            match replay::private_target(&rule.target, &environment, &snapshot.fly) {
                Ok(destination) => {
                    let answer = if headers::is_websocket_upgrade(headers) {
                        Answer::WebSocket
                    } else {
                        Answer::FlyReplay
                    };
                    let mut out = out.answered(
                        6,
                        "fly-replay",
                        answer,
                        None,
                        format!("proxied over the private network ({reason})"),
                    );
                    if destination.connect.as_str() != destination.host_port {
                        out.details.push(format!(
                            "routes.fly.resolve connects to {}",
                            destination.connect
                        ));
                    }
                    out.target(format!("http://{}", destination.host_port))
                }
                Err(error) => out.answered(
                    6,
                    "fly-replay",
                    Answer::Error,
                    Some(StatusCode::BAD_GATEWAY),
                    error,
                ),
            }
        }
        replay::Decision::Loop(header) => out.answered(
            6,
            "fly-replay",
            Answer::Maintenance,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            format!("already replayed ({header}): the maintenance page, never a second replay"),
        ),
    }
}

/// The command line options of `navigator routes`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: PathBuf,
    pub paths: Vec<String>,
    pub method: String,
    pub user: Option<String>,
    /// `Name: value` pairs.
    pub headers: Vec<String>,
    pub content_length: Option<u64>,
    pub loopback: bool,
    pub json: bool,
}

/// Runs `navigator routes`: prints one explanation per path. Returns the
/// exit code: 0, or 2 for an invalid config or option.
pub fn run(options: &Options) -> i32 {
    let request = match simulated(options) {
        Ok(request) => request,
        Err(message) => {
            eprintln!("navigator routes: {message}");
            return crate::cli::EXIT_CONFIG;
        }
    };
    let snapshot = match compile::load_snapshot(&options.config) {
        Ok(snapshot) => snapshot,
        Err(errors) => {
            eprintln!("{errors}");
            return crate::cli::EXIT_CONFIG;
        }
    };
    if let Some(path) = snapshot.access.missing_htpasswd() {
        eprintln!(
            "warning: auth.htpasswd {} does not exist; the server would not start",
            path.display()
        );
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return 1;
        }
    };
    let explanations: Vec<Explanation> = runtime.block_on(async {
        let mut list = Vec::with_capacity(options.paths.len());
        for path in &options.paths {
            list.push(explain(&snapshot, &request, path).await);
        }
        list
    });
    if options.json {
        match serde_json::to_string_pretty(&explanations) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("cannot write JSON: {error}");
                return 1;
            }
        }
    } else {
        for explanation in &explanations {
            print!("{}", explanation.to_text());
        }
    }
    0
}

/// Builds the simulated request from the options.
fn simulated(options: &Options) -> Result<Simulated, String> {
    let method = Method::from_bytes(options.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid method {:?}", options.method))?;
    let mut headers = HeaderMap::new();
    for header in &options.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("invalid header {header:?}; write it as \"Name: value\""))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid header name in {header:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("invalid header value in {header:?}"))?;
        headers.append(name, value);
    }
    if let Some(length) = options.content_length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    for path in &options.paths {
        if !path.starts_with('/') {
            return Err(format!("path {path:?} must start with /"));
        }
    }
    Ok(Simulated {
        method,
        user: options.user.clone(),
        headers,
        loopback: options.loopback,
    })
}
