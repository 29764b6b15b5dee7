//! navigator's own pages under `server.status.path` (default
//! `/_navigator/`): the status page (`{prefix}`), the same data as JSON
//! (`{prefix}status.json`) and Prometheus metrics (`{prefix}metrics`).
//!
//! Who may read them:
//! - a loopback peer (127.0.0.0/8 or ::1, judged by the socket address,
//!   never by a header): before authentication, [`Stage::BeforeAuthentication`];
//! - any other client only with valid credentials: right after
//!   authentication, [`Stage::AfterAuthentication`].
//!
//! For every other client the prefix is an ordinary path. With auth on and
//! the prefix not public, they get the same 401 as any protected path.
//! Otherwise the request goes on down the pipeline as if the endpoint did
//! not exist. Paths under the prefix other than these three are left to
//! the later steps as well (`serve` returns `None`), so another module
//! may answer them.

pub mod page;
pub mod recent;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use serde::{Serialize, Serializer};

use crate::access_log::{Answer, Target};
use crate::app::App;
use crate::body::{self, Body};
use crate::compile::Snapshot;
use crate::managed::ManagedState;
use crate::metrics;
use crate::pipeline::RequestContext;
use crate::supervisor::memory;

/// The pipeline position of a `serve` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before step 4: serves loopback peers only.
    BeforeAuthentication,
    /// Right after step 4: serves authenticated users on other peers.
    AfterAuthentication,
}

/// The resources under the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Page,
    Json,
    Metrics,
}

/// Returns the prefix of the status pages as configured (with or without
/// its final `/`), or `None` when they are disabled.
pub fn prefix(snapshot: &Snapshot) -> Option<&str> {
    let status = &snapshot.config.server.status;
    (status.enabled && !status.path.is_empty()).then_some(status.path.as_str())
}

/// Checks `server.status.path`: an absolute path below `/`, such as
/// `/_navigator/` (the final `/` is optional).
pub fn validate_path(path: &str) -> Result<(), String> {
    let valid =
        path.starts_with('/') && !path.trim_end_matches('/').is_empty() && !path.contains("//");
    if !valid {
        return Err(format!(
            "status path {path:?} must be an absolute path below /, e.g. \"/_navigator/\""
        ));
    }
    Ok(())
}

/// Returns the resource `path` names under `prefix`: the page is the
/// prefix with its final `/`.
fn resource(prefix: &str, path: &str) -> Option<Resource> {
    let base = prefix.trim_end_matches('/');
    match path.strip_prefix(base)?.strip_prefix('/')? {
        "" => Some(Resource::Page),
        "status.json" => Some(Resource::Json),
        "metrics" => Some(Resource::Metrics),
        _ => None,
    }
}

/// Returns whether `path` names one of the status pages (whoever asks).
pub fn is_status_page(snapshot: &Snapshot, path: &str) -> bool {
    prefix(snapshot).is_some_and(|prefix| resource(prefix, path).is_some())
}

/// Returns whether the status pages serve `path` to this client at
/// `stage`. `user` is the authenticated user, if any.
pub fn answers(
    snapshot: &Snapshot,
    path: &str,
    peer_is_loopback: bool,
    user: Option<&str>,
    stage: Stage,
) -> bool {
    let Some(prefix) = prefix(snapshot) else {
        return false;
    };
    if resource(prefix, path).is_none() {
        return false;
    }
    match stage {
        Stage::BeforeAuthentication => peer_is_loopback,
        Stage::AfterAuthentication => !peer_is_loopback && user.is_some(),
    }
}

/// Serves the status page, `status.json` or the metrics when `path` names
/// one of them and the client may read them at `stage`; else `None`.
pub fn serve(
    app: &App,
    context: &mut RequestContext<'_>,
    path: &str,
    request: &Parts,
    stage: Stage,
) -> Option<Response<Body>> {
    let snapshot = context.snapshot;
    let loopback = context.connection.peer.ip().is_loopback();
    if !answers(snapshot, path, loopback, context.user.as_deref(), stage) {
        return None;
    }
    let resource = resource(prefix(snapshot)?, path)?;
    context.record.answer = Answer::Status;
    context.record.target = Some(Target::Text(path.to_string()));

    if request.method != Method::GET && request.method != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "405 the status pages accept GET and HEAD\n".to_string(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(response);
    }

    let response = match resource {
        Resource::Page => plain(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::render(&report(app, snapshot)),
        ),
        Resource::Json => {
            let text =
                serde_json::to_string_pretty(&report(app, snapshot)).unwrap_or_else(|error| {
                    serde_json::json!({ "error": error.to_string() }).to_string()
                });
            plain(StatusCode::OK, "application/json", text)
        }
        Resource::Metrics => plain(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            metrics::render(&gauges(app, snapshot)),
        ),
    };
    Some(response)
}

fn plain(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Everything the status page and `status.json` show.
#[derive(Debug, Serialize)]
pub struct Report {
    pub navigator: NavigatorReport,
    pub config: ConfigReport,
    pub tenants: Vec<TenantReport>,
    pub managed_processes: Vec<ProcessReport>,
    /// The last warn and error log records, oldest first.
    pub recent_errors: Vec<recent::RecentRecord>,
}

#[derive(Debug, Serialize)]
pub struct NavigatorReport {
    pub version: &'static str,
    pub pid: u32,
    #[serde(serialize_with = "serialize_time")]
    pub started_at: SystemTime,
    pub uptime_seconds: u64,
    /// Config reloads applied since startup.
    pub reloads: u64,
    pub reload_failures: u64,
}

#[derive(Debug, Serialize)]
pub struct ConfigReport {
    pub file: String,
    #[serde(serialize_with = "serialize_time")]
    pub loaded_at: SystemTime,
    pub listen: String,
    pub tls_listen: Option<String>,
    pub maintenance: bool,
    pub tenants: usize,
}

#[derive(Debug, Serialize)]
pub struct TenantReport {
    pub name: String,
    /// `None` for a tenant removed from the config whose process still
    /// drains.
    pub path: Option<String>,
    /// `stopped`, `starting`, `running` or `stopping`.
    pub state: &'static str,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub uptime_seconds: Option<u64>,
    /// Requests served by the current process.
    pub requests: u64,
    pub in_flight: usize,
    /// Requests waiting in the tenant's request queue.
    pub queued: usize,
    /// Started ahead of requests and kept running.
    pub prewarm: bool,
    /// Seconds since the last request ended, or since the start.
    pub idle_seconds: Option<u64>,
    /// Resident memory (`VmRSS`) summed over the tenant's process group,
    /// so Puma's workers count too.
    pub memory_rss_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub name: String,
    pub state: ManagedState,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Seconds in the current state.
    pub state_seconds: u64,
}

/// Collects the report from the supervisor, the managed processes, the
/// snapshot and the recent log records.
pub fn report(app: &App, snapshot: &Snapshot) -> Report {
    let config = &snapshot.config;
    Report {
        navigator: NavigatorReport {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            started_at: app.started_at,
            uptime_seconds: app.started.elapsed().as_secs(),
            reloads: app.reloads(),
            reload_failures: metrics::RELOAD_FAILURES.get(),
        },
        config: ConfigReport {
            file: snapshot.loaded.file.display().to_string(),
            loaded_at: snapshot.loaded_at,
            listen: config.server.listen.to_string(),
            tls_listen: config.server.tls.as_ref().map(|tls| tls.listen.to_string()),
            maintenance: snapshot.maintenance_enabled,
            tenants: snapshot.tenants.len(),
        },
        tenants: tenants(app, snapshot),
        managed_processes: app
            .managed
            .status()
            .into_iter()
            .map(|process| ProcessReport {
                name: process.name,
                state: process.state,
                pid: process.pid,
                restarts: process.restarts,
                state_seconds: process.for_duration.as_secs(),
            })
            .collect(),
        recent_errors: recent::records(),
    }
}

/// Lists every configured tenant, sorted by name, with its process if it
/// has one, and after them the processes of tenants no longer configured.
fn tenants(app: &App, snapshot: &Snapshot) -> Vec<TenantReport> {
    let statuses = app.supervisor.status();
    // Each tenant process leads its own process group.
    let groups: HashSet<u32> = statuses.iter().filter_map(|status| status.pid).collect();
    let memory = memory::group_rss(Path::new("/proc"), &groups);
    let mut states: HashMap<String, _> = statuses
        .into_iter()
        .map(|status| (status.name.clone(), status))
        .collect();
    let mut configured: Vec<&Arc<crate::compile::TenantSpec>> = snapshot.tenants.iter().collect();
    configured.sort_by(|a, b| a.name.cmp(&b.name));

    let mut list = Vec::with_capacity(configured.len());
    for spec in configured {
        let report = match states.remove(&spec.name) {
            Some(status) => tenant_report(status, Some(spec.path.clone()), &memory),
            None => TenantReport {
                name: spec.name.clone(),
                path: Some(spec.path.clone()),
                state: "stopped",
                port: None,
                pid: None,
                uptime_seconds: None,
                requests: 0,
                in_flight: 0,
                queued: 0,
                prewarm: app.supervisor.is_prewarmed(&spec.name),
                idle_seconds: None,
                memory_rss_bytes: None,
            },
        };
        list.push(report);
    }
    let mut removed: Vec<TenantReport> = states
        .into_values()
        .filter(|status| status.state != "stopped")
        .map(|status| tenant_report(status, None, &memory))
        .collect();
    removed.sort_by(|a, b| a.name.cmp(&b.name));
    list.extend(removed);
    list
}

fn tenant_report(
    status: crate::supervisor::tenants::TenantStatus,
    path: Option<String>,
    memory: &HashMap<u32, u64>,
) -> TenantReport {
    TenantReport {
        memory_rss_bytes: status.pid.and_then(|pid| memory.get(&pid).copied()),
        name: status.name,
        path,
        state: status.state,
        port: status.port,
        pid: status.pid,
        uptime_seconds: status.uptime.map(|uptime| uptime.as_secs()),
        requests: status.requests,
        in_flight: status.in_flight,
        queued: status.queued,
        prewarm: status.prewarm,
        idle_seconds: status.idle_for.map(|idle| idle.as_secs()),
    }
}

/// Reads the values the metrics take from elsewhere.
fn gauges(app: &App, snapshot: &Snapshot) -> metrics::Gauges {
    use std::sync::atomic::Ordering;

    let states = app.supervisor.status();
    let count = |state: &str| states.iter().filter(|s| s.state == state).count();
    metrics::Gauges {
        uptime: app.started.elapsed(),
        reloads: app.reloads(),
        tenants_configured: snapshot.tenants.len(),
        tenants_running: count("running"),
        tenants_starting: count("starting"),
        tenant_starts: app.supervisor.starts.load(Ordering::Relaxed),
        tenant_start_failures: app.supervisor.start_failures.load(Ordering::Relaxed),
        tenant_stops: app.supervisor.stops.load(Ordering::Relaxed),
        recent_errors: recent::seen(),
        cable_connections: app.cable.open_connections(),
        cable_dropped_messages: app.cable.dropped_messages(),
    }
}

/// Serializes a time as RFC 3339 in UTC, e.g. `2025-04-12T18:30:05Z`.
pub fn serialize_time<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_time(*time))
}

/// Formats a time as RFC 3339 in UTC with whole seconds.
pub fn format_time(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date, counting
/// in 400-year eras of 146097 days that start on March 1.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats a duration as `3d4h`, `2h05m`, `4m07s` or `9s`.
pub fn format_duration(seconds: u64) -> String {
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_formatted_as_rfc3339() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(1_709_164_805);
        assert_eq!(format_time(leap_day), "2024-02-29T00:00:05Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_767_225_599);
        assert_eq!(format_time(later), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn durations_formatted_compactly() {
        assert_eq!(format_duration(9), "9s");
        assert_eq!(format_duration(247), "4m07s");
        assert_eq!(format_duration(7500), "2h05m");
        assert_eq!(format_duration(273_600), "3d4h");
    }

    #[test]
    fn resources_under_prefix() {
        assert_eq!(
            resource("/_navigator/", "/_navigator/"),
            Some(Resource::Page)
        );
        assert_eq!(
            resource("/_navigator/", "/_navigator/status.json"),
            Some(Resource::Json)
        );
        assert_eq!(
            resource("/_navigator/", "/_navigator/metrics"),
            Some(Resource::Metrics)
        );
        assert_eq!(resource("/_navigator/", "/_navigator/tenants.json"), None);
        assert_eq!(resource("/_navigator/", "/_navigator"), None);
        assert_eq!(resource("/_navigator/", "/showcase/"), None);
    }

    fn compiled(text: &str) -> Snapshot {
        let loaded = crate::config::load_str(
            text,
            crate::config::source::Format::Toml,
            std::path::Path::new("t.toml"),
            &|_| None,
        )
        .unwrap();
        Snapshot::compile(loaded, &|_| None).unwrap()
    }

    #[test]
    fn loopback_or_authenticated_clients_only() {
        let snapshot = compiled("[server]\nlisten = 3000\n");
        let page = "/_navigator/";
        use Stage::{AfterAuthentication as After, BeforeAuthentication as Before};
        let cases = [
            (page, true, None, Before, true),
            (page, true, Some("judge"), After, false),
            (page, false, None, Before, false),
            (page, false, None, After, false),
            (page, false, Some("judge"), Before, false),
            (page, false, Some("judge"), After, true),
            ("/_navigator/metrics", false, Some("judge"), After, true),
            ("/_navigator/tenants.json", true, None, Before, false),
            ("/showcase/", true, None, Before, false),
        ];
        for (path, loopback, user, stage, expected) in cases {
            assert_eq!(
                answers(&snapshot, path, loopback, user, stage),
                expected,
                "{path} loopback={loopback} user={user:?} {stage:?}"
            );
        }

        let disabled = compiled("[server.status]\nenabled = false\n");
        assert!(!answers(&disabled, page, true, None, Before));
    }

    #[test]
    fn status_path_must_be_below_root() {
        assert!(validate_path("/_navigator/").is_ok());
        assert!(validate_path("/ops").is_ok());
        assert!(validate_path("/").is_err());
        assert!(validate_path("_navigator/").is_err());
        assert!(validate_path("//x/").is_err());
        assert_eq!(resource("/ops", "/ops/metrics"), Some(Resource::Metrics));
        assert_eq!(resource("/ops", "/ops/"), Some(Resource::Page));
        assert_eq!(resource("/ops", "/opsx/"), None);
    }
}
