//! Helpers for fault and exhaustion tests: requests that always end
//! (answered or timed out), and process facts from /proc (memory, CPU
//! time, children, process groups).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How one request ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The status of the response head; `None` when none arrived.
    pub status: Option<u16>,
    /// Time from connecting to the end of the response (or the failure).
    pub latency: Duration,
    /// Body bytes received.
    pub body_bytes: usize,
    /// Whether the body had the length its head announced (always true
    /// for bodies delimited by the end of the connection).
    pub complete: bool,
    /// Why no response head arrived: timeout, refused, reset...
    pub failure: Option<String>,
}

impl Outcome {
    pub fn answered(&self) -> bool {
        self.status.is_some()
    }
}

/// Sends one request on a fresh connection (`Connection: close`) and reads
/// until the server closes it or `timeout` passes, whichever comes first.
/// A request that is still unanswered at the deadline has `status: None`.
pub fn timed_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let failed = |failure: String| Outcome {
        status: None,
        latency: started.elapsed(),
        body_bytes: 0,
        complete: false,
        failure: Some(failure),
    };
    let mut stream = match TcpStream::connect_timeout(&address, timeout) {
        Ok(stream) => stream,
        Err(error) => return failed(format!("connect: {error}")),
    };
    let _ = stream.set_write_timeout(Some(timeout));
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    if let Err(error) = stream.write_all(head.as_bytes()) {
        return failed(format!("write: {error}"));
    }
    // A server may answer before it has read the body, so a failed body
    // write is not yet a failure: the response may be waiting.
    let _ = stream.write_all(body);

    let deadline = started + timeout;
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let mut end = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            end = Some("timed out".to_string());
            break;
        }
        let _ = stream.set_read_timeout(Some(deadline - now));
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => raw.extend_from_slice(&buffer[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                end = Some("timed out".to_string());
                break;
            }
            Err(error) => {
                end = Some(format!("read: {error}"));
                break;
            }
        }
    }
    let latency = started.elapsed();

    let Some(split) = raw.windows(4).position(|window| window == b"\r\n\r\n") else {
        return Outcome {
            latency,
            ..failed(end.unwrap_or_else(|| "closed without a response head".into()))
        };
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok());
    let body_bytes = raw.len() - split - 4;
    let declared = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    let complete = match declared {
        Some(length) => body_bytes == length,
        None if chunked => raw.ends_with(b"0\r\n\r\n"),
        None => end.is_none(),
    };
    Outcome {
        status,
        latency,
        body_bytes,
        complete,
        failure: if status.is_some() { None } else { end },
    }
}

/// Reads the value of `field` (in kB) from /proc/PID/status, e.g. `VmRSS`.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// Returns the resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Returns the fields of /proc/PID/stat after the command name: index 0
/// is the state, 1 the parent pid, 2 the process group, 11 utime, 12 stime.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User plus system CPU time of `pid` in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// Clock ticks per second in which `/proc/PID/stat` counts CPU time:
/// Linux reports USER_HZ, which is 100 on every architecture it runs
/// tests on here.
pub const TICKS_PER_SECOND: u64 = 100;

/// A process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub parent: u32,
    pub group: u32,
    pub state: String,
    pub command_line: String,
}

/// Lists every process visible in /proc.
pub fn processes() -> Vec<ProcessInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let fields = stat_fields(pid)?;
            let command_line = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
                .unwrap_or_default();
            Some(ProcessInfo {
                pid,
                state: fields.first()?.clone(),
                parent: fields.get(1)?.parse().ok()?,
                group: fields.get(2)?.parse().ok()?,
                command_line,
            })
        })
        .collect()
}

/// Lists the direct children of `parent`.
pub fn children_of(parent: u32) -> Vec<ProcessInfo> {
    processes()
        .into_iter()
        .filter(|process| process.parent == parent)
        .collect()
}

/// Processes left over from `known` children: still alive under one of
/// those pids, or in one of their process groups (each child leads its
/// own group). `marker` must appear in the command line, so a pid that
/// the kernel reused for an unrelated process does not count.
pub fn leftovers(known: &BTreeSet<u32>, marker: &str) -> Vec<ProcessInfo> {
    processes()
        .into_iter()
        .filter(|process| known.contains(&process.pid) || known.contains(&process.group))
        .filter(|process| process.command_line.contains(marker))
        .collect()
}

/// Returns the value at `quantile` (0.0 to 1.0) of `values` by the
/// nearest-rank method, or `None` for no values.
pub fn quantile(values: &[Duration], quantile: f64) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}
