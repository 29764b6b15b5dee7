//! Process-wide counters and histograms, rendered in the Prometheus text
//! exposition format (version 0.0.4) at `{server.status.path}metrics`.
//!
//! Recording is cheap enough for every request: each metric is a fixed
//! array of atomics indexed by small enums (answer, status class, bucket),
//! so the hot path neither allocates nor locks. Labels are a closed set
//! known at compile time; nothing a client sends becomes a label value.
//!
//! Other modules count their events with one call on a static here, for
//! example `metrics::REPLAYS.inc()`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::access_log::Answer;

/// The `Content-Type` of the rendered metrics.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing count.
#[derive(Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, amount: u64) {
        self.0.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

/// Upper bounds (seconds) of the request latency buckets: from a static
/// file served from the page cache to a tenant that had to boot first.
pub const REQUEST_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds (seconds) of the tenant start buckets: a Rails boot takes
/// a few seconds; the default ready deadline is 60 s.
pub const START_BUCKETS: [f64; 11] = [0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0];

/// A histogram with `N` fixed buckets plus the implicit `+Inf` one.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    /// Observations per bucket, not cumulative: `counts[i]` counts values
    /// in `(bounds[i-1], bounds[i]]`, and `overflow` values above every
    /// bound.
    counts: [AtomicU64; N],
    overflow: AtomicU64,
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub const fn new(bounds: [f64; N]) -> Histogram<N> {
        Histogram {
            bounds,
            counts: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        match self.bounds.iter().position(|bound| seconds <= *bound) {
            Some(index) => self.counts[index].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Returns the number of observations.
    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.overflow.load(Ordering::Relaxed)
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines; `labels` is empty
    /// or a list such as `answer="static"` without braces.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.overflow.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Status classes counted per answer: `1xx` to `5xx`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Lowest and highest status code counted by code.
const FIRST_CODE: u16 = 100;
const LAST_CODE: u16 = 599;
const CODES: usize = (LAST_CODE - FIRST_CODE + 1) as usize;

/// Requests by answer and status class.
static REQUESTS: [[AtomicU64; STATUS_CLASSES.len()]; Answer::ALL.len()] =
    [const { [const { AtomicU64::new(0) }; STATUS_CLASSES.len()] }; Answer::ALL.len()];

/// Responses by status code, `100` to `599`.
static RESPONSES_BY_CODE: [AtomicU64; CODES] = [const { AtomicU64::new(0) }; CODES];

/// Request latency by answer, from the first byte of the request head to
/// the end of the response body (or the client leaving).
static REQUEST_SECONDS: [Histogram<{ REQUEST_BUCKETS.len() }>; Answer::ALL.len()] =
    [const { Histogram::new(REQUEST_BUCKETS) }; Answer::ALL.len()];

/// Time from spawning a tenant process to its first successful readiness
/// probe.
pub static TENANT_START_SECONDS: Histogram<{ START_BUCKETS.len() }> = Histogram::new(START_BUCKETS);

/// Requests answered with `Fly-Replay`.
pub static REPLAYS: Counter = Counter::new();

/// Connections the built-in cable accepted since startup; the open ones
/// are counted by the cable's hub.
pub static CABLE_CONNECTIONS_OPENED: Counter = Counter::new();

/// Config reloads that were rejected (invalid file, unusable address or
/// certificate); the running config stayed.
pub static RELOAD_FAILURES: Counter = Counter::new();

/// Records one finished request: its answer, final status (499 when the
/// client left first) and duration.
pub fn record_request(answer: Answer, status: u16, duration: Duration) {
    let class = usize::from(status / 100)
        .saturating_sub(1)
        .min(STATUS_CLASSES.len() - 1);
    REQUESTS[answer as usize][class].fetch_add(1, Ordering::Relaxed);
    if (FIRST_CODE..=LAST_CODE).contains(&status) {
        RESPONSES_BY_CODE[usize::from(status - FIRST_CODE)].fetch_add(1, Ordering::Relaxed);
    }
    REQUEST_SECONDS[answer as usize].observe(duration);
}

/// Returns the number of requests recorded with `answer`.
pub fn requests_answered(answer: Answer) -> u64 {
    REQUESTS[answer as usize]
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .sum()
}

/// Values that live elsewhere (the supervisor, the App) and are read at
/// scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub uptime: Duration,
    pub reloads: u64,
    pub tenants_configured: usize,
    pub tenants_running: usize,
    pub tenants_starting: usize,
    pub tenant_starts: u64,
    pub tenant_start_failures: u64,
    pub tenant_stops: u64,
    pub recent_errors: u64,
    pub cable_connections: usize,
    pub cable_dropped_messages: u64,
}

/// Renders every metric in the Prometheus text format.
pub fn render(gauges: &Gauges) -> String {
    let mut out = String::with_capacity(16 * 1024);

    header(
        &mut out,
        "navigator_build_info",
        "gauge",
        "Version of the running navigator; the value is always 1.",
    );
    let _ = writeln!(
        out,
        "navigator_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    single(
        &mut out,
        "navigator_uptime_seconds",
        "gauge",
        "Seconds since navigator started.",
        gauges.uptime.as_secs_f64(),
    );
    single(
        &mut out,
        "navigator_reloads_total",
        "counter",
        "Config reloads applied.",
        gauges.reloads,
    );
    single(
        &mut out,
        "navigator_reload_failures_total",
        "counter",
        "Config reloads rejected; the running config stayed.",
        RELOAD_FAILURES.get(),
    );

    header(
        &mut out,
        "navigator_requests_total",
        "counter",
        "Requests by how they were answered and by status class.",
    );
    for answer in Answer::ALL {
        for (class, name) in STATUS_CLASSES.iter().enumerate() {
            let count = REQUESTS[answer as usize][class].load(Ordering::Relaxed);
            if count > 0 {
                let _ = writeln!(
                    out,
                    "navigator_requests_total{{answer=\"{}\",status=\"{name}\"}} {count}",
                    answer.as_str()
                );
            }
        }
    }
    header(
        &mut out,
        "navigator_responses_total",
        "counter",
        "Responses by status code; 499 means the client left first.",
    );
    for (index, count) in RESPONSES_BY_CODE.iter().enumerate() {
        let count = count.load(Ordering::Relaxed);
        if count > 0 {
            let code = FIRST_CODE as usize + index;
            let _ = writeln!(out, "navigator_responses_total{{code=\"{code}\"}} {count}");
        }
    }
    header(
        &mut out,
        "navigator_request_duration_seconds",
        "histogram",
        "Time from the request head to the end of the response body.",
    );
    for answer in Answer::ALL {
        let histogram = &REQUEST_SECONDS[answer as usize];
        if histogram.count() > 0 {
            let labels = format!("answer=\"{}\"", answer.as_str());
            histogram.render(&mut out, "navigator_request_duration_seconds", &labels);
        }
    }
    single(
        &mut out,
        "navigator_auth_failures_total",
        "counter",
        "Requests answered with 401 because credentials were missing or wrong.",
        requests_answered(Answer::AuthFailure),
    );

    single(
        &mut out,
        "navigator_tenants_configured",
        "gauge",
        "Tenants in the running config.",
        gauges.tenants_configured,
    );
    single(
        &mut out,
        "navigator_tenants_running",
        "gauge",
        "Tenant processes running and ready.",
        gauges.tenants_running,
    );
    single(
        &mut out,
        "navigator_tenants_starting",
        "gauge",
        "Tenant processes starting, not yet ready.",
        gauges.tenants_starting,
    );
    single(
        &mut out,
        "navigator_tenant_starts_total",
        "counter",
        "Tenant processes spawned.",
        gauges.tenant_starts,
    );
    single(
        &mut out,
        "navigator_tenant_start_failures_total",
        "counter",
        "Tenant starts that failed (exit during startup, not ready in time, spawn error).",
        gauges.tenant_start_failures,
    );
    single(
        &mut out,
        "navigator_tenant_stops_total",
        "counter",
        "Tenant processes that exited, stopped or crashed.",
        gauges.tenant_stops,
    );
    header(
        &mut out,
        "navigator_tenant_start_duration_seconds",
        "histogram",
        "Time from spawning a tenant process until it answered its readiness probe.",
    );
    TENANT_START_SECONDS.render(&mut out, "navigator_tenant_start_duration_seconds", "");

    single(
        &mut out,
        "navigator_fly_replays_total",
        "counter",
        "Requests answered with Fly-Replay.",
        REPLAYS.get(),
    );
    single(
        &mut out,
        "navigator_cable_connections",
        "gauge",
        "Open connections to the built-in cable.",
        gauges.cable_connections,
    );
    single(
        &mut out,
        "navigator_cable_connections_total",
        "counter",
        "Connections the built-in cable accepted.",
        CABLE_CONNECTIONS_OPENED.get(),
    );
    single(
        &mut out,
        "navigator_cable_dropped_messages_total",
        "counter",
        "Cable messages dropped because a slow client's queue was full.",
        gauges.cable_dropped_messages,
    );
    single(
        &mut out,
        "navigator_log_errors_total",
        "counter",
        "Log records at warn or error level.",
        gauges.recent_errors,
    );
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let histogram = Histogram::new([0.1, 1.0]);
        histogram.observe(Duration::from_millis(50));
        histogram.observe(Duration::from_millis(100));
        histogram.observe(Duration::from_millis(500));
        histogram.observe(Duration::from_secs(3));
        let mut out = String::new();
        histogram.render(&mut out, "x", "a=\"b\"");
        let expected = "x_bucket{a=\"b\",le=\"0.1\"} 2\n\
                        x_bucket{a=\"b\",le=\"1\"} 3\n\
                        x_bucket{a=\"b\",le=\"+Inf\"} 4\n\
                        x_sum{a=\"b\"} 3.65\n\
                        x_count{a=\"b\"} 4\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn status_classes_cover_every_code() {
        let before = requests_answered(Answer::Rewrite);
        record_request(Answer::Rewrite, 101, Duration::ZERO);
        record_request(Answer::Rewrite, 599, Duration::ZERO);
        assert_eq!(requests_answered(Answer::Rewrite), before + 2);
        let text = render(&Gauges::default());
        assert!(text.contains("navigator_requests_total{answer=\"rewrite\",status=\"1xx\"}"));
        assert!(text.contains("navigator_requests_total{answer=\"rewrite\",status=\"5xx\"}"));
        assert!(text.contains("navigator_responses_total{code=\"599\"}"));
    }
}
