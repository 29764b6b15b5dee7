//! The status page: one self-contained HTML document (inline style, no
//! script, no external assets) rendered from a [`Report`].

use std::fmt::Write as _;

use super::{Report, format_duration, format_time};

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.5em 0 .4em}\
table{border-collapse:collapse}th,td{padding:.25em .7em;text-align:left;border-bottom:1px solid #ddd}\
th{background:#f3f3f3}td.number{text-align:right;font-variant-numeric:tabular-nums}\
.state{font-weight:600}.running{color:#17702a}.starting,.restarting,.waiting{color:#a05a00}\
.stopping,.exited{color:#8a1c1c}.stopped{color:#777}.error{color:#8a1c1c}.warn{color:#a05a00}\
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}dt{color:#555}dd{margin:0}\
code{font-size:.95em}";

/// Renders the report as an HTML page.
pub fn render(report: &Report) -> String {
    let mut html = String::with_capacity(8192 + report.tenants.len() * 256);
    let navigator = &report.navigator;
    let config = &report.config;
    let running = report
        .tenants
        .iter()
        .filter(|tenant| tenant.state == "running")
        .count();

    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>navigator status</title><style>{STYLE}</style></head>\n<body>\n\
         <h1>navigator {version}</h1>\n<p id=\"summary\">{running} of {total} tenants running</p>\n",
        version = escape(navigator.version),
        total = config.tenants,
    );

    html.push_str("<h2>Server</h2>\n<dl id=\"server\">\n");
    let rows = [
        ("pid", navigator.pid.to_string()),
        (
            "started",
            format!(
                "{} (up {})",
                format_time(navigator.started_at),
                format_duration(navigator.uptime_seconds)
            ),
        ),
        ("config file", config.file.clone()),
        ("config loaded", format_time(config.loaded_at)),
        (
            "reloads",
            format!(
                "{} applied, {} rejected",
                navigator.reloads, navigator.reload_failures
            ),
        ),
        ("listen", config.listen.clone()),
        (
            "TLS listen",
            config.tls_listen.clone().unwrap_or_else(|| "off".into()),
        ),
        (
            "maintenance",
            if config.maintenance { "on" } else { "off" }.into(),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(html, "<dt>{name}</dt><dd>{}</dd>", escape(&value));
    }
    html.push_str("</dl>\n");

    html.push_str(
        "<h2>Tenants</h2>\n<table id=\"tenants\">\n<tr><th>name</th><th>state</th><th>port</th>\
         <th>pid</th><th>uptime</th><th>requests</th><th>in flight</th><th>queued</th><th>last activity</th>\
         <th>memory</th></tr>\n",
    );
    for tenant in &report.tenants {
        let _ = writeln!(
            html,
            "<tr data-tenant=\"{name}\"><td>{name}{prewarm}</td><td class=\"state {state}\">{state}</td>\
             <td class=\"number\">{port}</td><td class=\"number\">{pid}</td><td>{uptime}</td>\
             <td class=\"number\">{requests}</td><td class=\"number\">{in_flight}</td>\
             <td class=\"number\">{queued}</td>\
             <td>{idle}</td><td class=\"number\">{memory}</td></tr>",
            name = escape(&tenant.name),
            prewarm = if tenant.prewarm {
                " <small>(prewarmed)</small>"
            } else {
                ""
            },
            state = tenant.state,
            port = optional(tenant.port),
            pid = optional(tenant.pid),
            uptime = tenant.uptime_seconds.map_or("-".into(), format_duration),
            requests = tenant.requests,
            in_flight = tenant.in_flight,
            queued = tenant.queued,
            idle = tenant
                .idle_seconds
                .map_or("-".into(), |idle| format!("{} ago", format_duration(idle))),
            memory = tenant.memory_rss_bytes.map_or("-".into(), format_bytes),
        );
    }
    html.push_str("</table>\n");

    html.push_str("<h2>Managed processes</h2>\n");
    if report.managed_processes.is_empty() {
        html.push_str("<p>none configured</p>\n");
    } else {
        html.push_str(
            "<table id=\"processes\">\n<tr><th>name</th><th>state</th><th>pid</th>\
             <th>restarts</th><th>for</th></tr>\n",
        );
        for process in &report.managed_processes {
            let state = serde_json::to_value(process.state)
                .ok()
                .and_then(|value| value.as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = writeln!(
                html,
                "<tr data-process=\"{name}\"><td>{name}</td><td class=\"state {state}\">{state}</td>\
                 <td class=\"number\">{pid}</td><td class=\"number\">{restarts}</td><td>{since}</td></tr>",
                name = escape(&process.name),
                pid = optional(process.pid),
                restarts = process.restarts,
                since = format_duration(process.state_seconds),
            );
        }
        html.push_str("</table>\n");
    }

    html.push_str("<h2>Recent warnings and errors</h2>\n");
    if report.recent_errors.is_empty() {
        html.push_str("<p id=\"errors\">none</p>\n");
    } else {
        html.push_str(
            "<table id=\"errors\">\n<tr><th>time</th><th>level</th><th>module</th><th>message</th></tr>\n",
        );
        for record in report.recent_errors.iter().rev() {
            let _ = writeln!(
                html,
                "<tr><td>{time}</td><td class=\"{level}\">{level}</td><td><code>{target}</code></td>\
                 <td><code>{message}</code></td></tr>",
                time = format_time(record.time),
                level = record.level,
                target = escape(&record.target),
                message = escape(&record.message),
            );
        }
        html.push_str("</table>\n");
    }

    html.push_str("</body></html>\n");
    html
}

fn optional(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

/// Formats a byte count in MiB with one decimal, e.g. `183.4 MiB`.
fn format_bytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Escapes text for HTML content and double-quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::super::{ConfigReport, NavigatorReport, TenantReport, recent::RecentRecord};
    use super::*;

    #[test]
    fn page_lists_tenants_and_escapes_text() {
        let report = Report {
            navigator: NavigatorReport {
                version: "0.1.0",
                pid: 7,
                started_at: UNIX_EPOCH,
                uptime_seconds: 65,
                reloads: 2,
                reload_failures: 1,
            },
            config: ConfigReport {
                file: "config/<x>.toml".into(),
                loaded_at: UNIX_EPOCH,
                listen: "127.0.0.1:3000".into(),
                tls_listen: None,
                maintenance: false,
                tenants: 1,
            },
            tenants: vec![TenantReport {
                name: "2025/boston".into(),
                path: Some("/showcase/2025/boston/".into()),
                state: "running",
                port: Some(4001),
                pid: Some(99),
                uptime_seconds: Some(61),
                requests: 12,
                in_flight: 1,
                queued: 0,
                prewarm: false,
                idle_seconds: Some(3),
                memory_rss_bytes: Some(50 * 1024 * 1024),
            }],
            managed_processes: Vec::new(),
            recent_errors: vec![RecentRecord {
                time: UNIX_EPOCH,
                level: "error",
                target: "navigator::x".into(),
                message: "failed <script>".into(),
            }],
        };
        let html = render(&report);
        assert!(html.contains("<p id=\"summary\">1 of 1 tenants running</p>"));
        assert!(html.contains("data-tenant=\"2025/boston\""));
        assert!(html.contains("<td class=\"state running\">running</td>"));
        assert!(html.contains("50.0 MiB"));
        assert!(html.contains("config/&lt;x&gt;.toml"));
        assert!(html.contains("failed &lt;script&gt;"));
        assert!(html.contains("2 applied, 1 rejected"));
        assert!(!html.contains("<script"));
    }
}
