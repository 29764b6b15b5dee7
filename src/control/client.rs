//! The command-line side of the control API: `navigator tenants` and
//! `navigator tenant stop|restart|prewarm NAME`. The server is found by
//! `--url`, else by the listen address and `server.status.path` of the
//! config file (default `config/navigator.toml`, then
//! `config/navigator.yml`), reached on loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::Value;

use super::Action;
use crate::cli::EXIT_CONFIG;
use crate::config;
use crate::config::units::format_duration;

/// How long to wait for a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for the response. A restart waits for the old process
/// to drain and the new one to become ready, which the server bounds by
/// the tenant's `ready_timeout` plus the grace period.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

/// The path prefix used when `--url` names only a host and port.
const DEFAULT_PREFIX: &str = "/_navigator/";

/// Characters escaped in a tenant name put into a URL path; `/` stays.
const NAME_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// The location of the running server: `--url`, or the config to read it from.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub url: Option<String>,
    pub config: Option<PathBuf>,
}

/// The control API of one server: `host:port` on loopback and the path
/// prefix, ending in `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub authority: String,
    pub prefix: String,
}

impl Endpoint {
    fn url(&self, route: &str) -> String {
        format!("http://{}{}{route}", self.authority, self.prefix)
    }
}

/// `navigator tenants`: prints every tenant with its state, or the raw
/// JSON with `json`. Returns the exit code.
pub fn list_tenants(target: &Target, json: bool) -> i32 {
    let endpoint = match resolve(target) {
        Ok(endpoint) => endpoint,
        Err(message) => {
            eprintln!("{message}");
            return EXIT_CONFIG;
        }
    };
    let body = match call(&endpoint, Method::GET, "tenants.json") {
        Ok((StatusCode::OK, body)) => body,
        Ok((status, body)) => return report_failure(status, &body),
        Err(message) => {
            eprintln!("{message}");
            return 1;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_else(|_| body.to_string())
        );
    } else {
        print!("{}", tenants_table(&body));
    }
    0
}

/// `navigator tenant ACTION NAME`: stops, restarts or prewarms one tenant
/// and prints the outcome. Returns the exit code.
pub fn tenant_action(target: &Target, action: Action, name: &str) -> i32 {
    let endpoint = match resolve(target) {
        Ok(endpoint) => endpoint,
        Err(message) => {
            eprintln!("{message}");
            return EXIT_CONFIG;
        }
    };
    let route = format!(
        "tenants/{}/{}",
        utf8_percent_encode(name.trim_matches('/'), NAME_ESCAPES),
        action.as_str()
    );
    match call(&endpoint, Method::POST, &route) {
        Ok((StatusCode::OK, body)) => {
            println!("{}", describe_outcome(action, name, &body));
            0
        }
        Ok((StatusCode::ACCEPTED, body)) => {
            let message = body["message"].as_str().unwrap_or("still in progress");
            println!("{name}: {}: {message}", action.as_str());
            0
        }
        Ok((status, body)) => report_failure(status, &body),
        Err(message) => {
            eprintln!("{message}");
            1
        }
    }
}

/// Finds the control API from `--url` or the config.
pub fn resolve(target: &Target) -> Result<Endpoint, String> {
    if let Some(url) = &target.url {
        return endpoint_from_url(url);
    }
    let path = target.config.clone().unwrap_or_else(config::default_path);
    endpoint_from_config(&path)
}

fn endpoint_from_url(url: &str) -> Result<Endpoint, String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("invalid --url {url:?}: {error}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "invalid --url {url:?}: expected an http:// URL such as http://127.0.0.1:3000/_navigator/"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("invalid --url {url:?}: no host"))?;
    let authority = match authority.port_u16() {
        Some(_) => authority.to_string(),
        None => format!("{}:80", authority.host()),
    };
    let path = uri.path();
    let prefix = if path.is_empty() || path == "/" {
        DEFAULT_PREFIX.to_string()
    } else if path.ends_with('/') {
        path.to_string()
    } else {
        format!("{path}/")
    };
    Ok(Endpoint { authority, prefix })
}

fn endpoint_from_config(path: &Path) -> Result<Endpoint, String> {
    let loaded = config::load(path).map_err(|errors| {
        format!(
            "{errors}\ncannot find the running server from {}; pass --url",
            path.display()
        )
    })?;
    let server = &loaded.config.server;
    if !server.status.enabled {
        return Err(format!(
            "{}: the control API is disabled (server.status.enabled = false)",
            path.display()
        ));
    }
    if server.listen.port == 0 {
        return Err(format!(
            "{}: server.listen has port 0, so the port is only known to the server; pass --url",
            path.display()
        ));
    }
    let host = match server.listen.host {
        None | Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Some(host) => host,
    };
    let authority = match host {
        IpAddr::V4(ip) => format!("{ip}:{}", server.listen.port),
        IpAddr::V6(ip) => format!("[{ip}]:{}", server.listen.port),
    };
    let base = server.status.path.trim_end_matches('/');
    Ok(Endpoint {
        authority,
        prefix: format!("{base}/"),
    })
}

/// Sends one request and returns the status and the JSON body.
fn call(endpoint: &Endpoint, method: Method, route: &str) -> Result<(StatusCode, Value), String> {
    let url = endpoint.url(route);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    runtime.block_on(async {
        match tokio::time::timeout(RESPONSE_TIMEOUT, send(endpoint, method, route)).await {
            Ok(result) => result.map_err(|error| format!("{url}: {error}")),
            Err(_) => Err(format!(
                "{url}: no response within {}",
                format_duration(RESPONSE_TIMEOUT)
            )),
        }
    })
}

async fn send(
    endpoint: &Endpoint,
    method: Method,
    route: &str,
) -> Result<(StatusCode, Value), String> {
    let connect = tokio::net::TcpStream::connect(&endpoint.authority);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| "connect timed out; is navigator running?".to_string())?
        .map_err(|error| format!("cannot connect ({error}); is navigator running?"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP handshake failed: {error}"))?;
    tokio::spawn(connection);

    let request = Request::builder()
        .method(method)
        .uri(format!("{}{route}", endpoint.prefix))
        .header(http::header::HOST, &endpoint.authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|error| format!("invalid request: {error}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("request failed: {error}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| format!("reading the response failed: {error}"))?
        .to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or_else(
        |_| serde_json::json!({ "error": String::from_utf8_lossy(&body).trim().to_string() }),
    );
    Ok((status, value))
}

fn report_failure(status: StatusCode, body: &Value) -> i32 {
    let message = body["error"].as_str().unwrap_or("no details");
    eprintln!("navigator returned {status}: {message}");
    1
}

fn describe_outcome(action: Action, name: &str, body: &Value) -> String {
    let pid = |key: &str| body[key].as_u64().map(|pid| pid.to_string());
    match action {
        Action::Stop => match pid("stopped_pid") {
            Some(pid) => format!("{name}: stopped (pid {pid})"),
            None => format!("{name}: was not running"),
        },
        Action::Restart => {
            let new = pid("pid").unwrap_or_else(|| "?".into());
            match pid("old_pid") {
                Some(old) => format!("{name}: restarted (pid {old} -> {new})"),
                None => format!("{name}: started (pid {new})"),
            }
        }
        Action::Prewarm => {
            let new = pid("pid").unwrap_or_else(|| "?".into());
            format!("{name}: prewarmed, running (pid {new})")
        }
    }
}

/// Column titles of the tenant table.
const COLUMNS: [&str; 9] = [
    "NAME",
    "STATE",
    "PID",
    "PORT",
    "IN FLIGHT",
    "QUEUED",
    "REQUESTS",
    "UPTIME",
    "PREWARM",
];

/// Formats a JSON number, or `-` for null.
fn number(value: &Value) -> String {
    value.as_u64().map_or("-".to_string(), |n| n.to_string())
}

/// Returns the cells of one tenant's row, in the order of [`COLUMNS`].
fn tenant_row(tenant: &Value) -> Vec<String> {
    let uptime = match tenant["uptime_secs"].as_u64() {
        None => "-".to_string(),
        Some(0) => "0s".to_string(),
        Some(secs) => format_duration(Duration::from_secs(secs)),
    };
    let prewarm = if tenant["prewarm"].as_bool() == Some(true) {
        "yes"
    } else {
        "-"
    };
    vec![
        tenant["name"].as_str().unwrap_or("?").to_string(),
        tenant["state"].as_str().unwrap_or("?").to_string(),
        number(&tenant["pid"]),
        number(&tenant["port"]),
        number(&tenant["in_flight"]),
        number(&tenant["queued"]),
        number(&tenant["requests"]),
        uptime,
        prewarm.to_string(),
    ]
}

/// Renders the tenants of a `tenants.json` body as a table with aligned
/// columns, followed by the pool's counters.
fn tenants_table(body: &Value) -> String {
    let mut rows: Vec<Vec<String>> = vec![COLUMNS.iter().map(|title| title.to_string()).collect()];
    if let Some(tenants) = body["tenants"].as_array() {
        rows.extend(tenants.iter().map(tenant_row));
    }

    let mut widths = vec![0; COLUMNS.len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }

    let mut out = String::new();
    for row in &rows {
        let last = row.len() - 1;
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push('\n');
    }

    let counters = &body["counters"];
    out.push_str(&format!(
        "\nprocesses {} of max {}; starts {}, stops {}, recycles {}, queue rejections {}, queue timeouts {}\n",
        number(&body["pool"]["processes"]),
        number(&body["pool"]["max_size"]),
        number(&counters["starts"]),
        number(&counters["stops"]),
        number(&counters["recycles"]),
        number(&counters["queue_rejections"]),
        number(&counters["queue_timeouts"]),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let endpoint = endpoint_from_url("http://127.0.0.1:3000").unwrap();
        assert_eq!(endpoint.authority, "127.0.0.1:3000");
        assert_eq!(endpoint.prefix, "/_navigator/");
        let endpoint = endpoint_from_url("http://[::1]:9999/ops").unwrap();
        assert_eq!(endpoint.authority, "[::1]:9999");
        assert_eq!(endpoint.prefix, "/ops/");
        assert_eq!(
            endpoint_from_url("http://localhost/_navigator/")
                .unwrap()
                .authority,
            "localhost:80"
        );
        assert!(endpoint_from_url("https://127.0.0.1:3000/").is_err());
        assert!(endpoint_from_url("not a url").is_err());
    }

    #[test]
    fn config_listen_reached_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("navigator.toml");
        let cases = [
            ("listen = 9999", "127.0.0.1:9999"),
            ("listen = \"0.0.0.0:8080\"", "127.0.0.1:8080"),
            ("listen = \"[::]:8080\"", "[::1]:8080"),
            ("listen = \"127.0.0.2:7000\"", "127.0.0.2:7000"),
        ];
        for (listen, authority) in cases {
            std::fs::write(&file, format!("[server]\n{listen}\n")).unwrap();
            let endpoint = endpoint_from_config(&file).unwrap();
            assert_eq!(endpoint.authority, authority, "{listen}");
            assert_eq!(endpoint.prefix, "/_navigator/");
        }

        std::fs::write(&file, "[server]\nlisten = 0\n").unwrap();
        let error = endpoint_from_config(&file).unwrap_err();
        assert!(error.contains("--url"), "{error}");

        std::fs::write(
            &file,
            "[server]\nlisten = 9999\n[server.status]\nenabled = false\n",
        )
        .unwrap();
        let error = endpoint_from_config(&file).unwrap_err();
        assert!(error.contains("disabled"), "{error}");
    }

    #[test]
    fn table_lists_tenants_and_counters() {
        let body = serde_json::json!({
            "tenants": [
                {"name": "2025/boston/april", "state": "running", "pid": 42, "port": 4000,
                 "in_flight": 1, "queued": 0, "requests": 17, "uptime_secs": 90, "prewarm": true},
                {"name": "index", "state": "stopped", "pid": null, "port": null,
                 "in_flight": 0, "queued": 0, "requests": 0, "uptime_secs": null, "prewarm": false}
            ],
            "pool": {"max_size": 8, "processes": 1},
            "counters": {"starts": 1, "stops": 0, "recycles": 0, "queue_rejections": 2, "queue_timeouts": 0}
        });
        let table = tenants_table(&body);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{table}");
        assert!(
            lines[1].starts_with("2025/boston/april  running  42"),
            "{table}"
        );
        assert!(lines[1].contains("1m30s"), "{table}");
        assert!(lines[1].ends_with("yes"), "{table}");
        assert!(lines[2].starts_with("index"), "{table}");
        assert!(table.contains("queue rejections 2"), "{table}");
    }
}
