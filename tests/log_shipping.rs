//! Log files (`logging.file` with `{{app}}`), their reopening on SIGUSR1,
//! and shipping to Vector over a unix socket, against the real binary
//! with demo tenants.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{Navigator, Showcase, event_scope, eventually, start_showcase};

fn logging(extra: &str) -> Showcase {
    Showcase {
        extra: format!("\n[logging]\n{extra}\n"),
        ..Showcase::default()
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(String::from).collect())
        .unwrap_or_default()
}

/// Waits until the file at `path` has a line containing `needle`.
fn wait_for_line(path: &Path, needle: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        read_lines(path).iter().any(|line| line.contains(needle))
    })
}

fn get_ok(navigator: &Navigator, path: &str) {
    let response = navigator.get(path);
    assert_eq!(response.status, 200, "{path}: {}", response.text());
}

#[test]
fn tenant_and_navigator_files_split_by_app() {
    let navigator = start_showcase(&logging("file = \"@DIR@/log/{{app}}.log\""));
    let scopes = [event_scope(0), event_scope(1)];
    for scope in &scopes {
        get_ok(&navigator, &format!("/showcase/{scope}/hello"));
    }

    let navigator_log = navigator.path("log/navigator.log");
    assert!(wait_for_line(
        &navigator_log,
        &format!("uri=/showcase/{}/hello", scopes[0])
    ));
    for scope in &scopes {
        let file = navigator.path(&format!("log/{}.log", scope.replace('/', "-")));
        assert!(
            wait_for_line(&file, &format!("GET /showcase/{scope}/hello 200")),
            "{}: {:?}",
            file.display(),
            read_lines(&file)
        );
        // Only this tenant's output is in its file.
        for line in read_lines(&file) {
            assert!(
                line.starts_with(&format!("[{scope}.stdout] "))
                    || line.starts_with(&format!("[{scope}.stderr] ")),
                "{line}"
            );
        }
    }
    // Tenant output stays out of navigator's file.
    assert!(
        read_lines(&navigator_log)
            .iter()
            .all(|line| !line.contains(".stdout] ")),
        "tenant output in navigator.log"
    );
}

#[test]
fn shared_file_keeps_concurrent_lines_whole() {
    const FLOOD: u64 = 3000;
    let mut showcase = logging("file = \"@DIR@/all.log\"");
    showcase.tenant_env = vec![("DEMO_STDOUT_FLOOD".into(), FLOOD.to_string())];
    let navigator = start_showcase(&showcase);
    let scopes: Vec<String> = (0..4).map(event_scope).collect();

    // Four tenants flood stdout at boot at the same time.
    std::thread::scope(|threads| {
        for scope in &scopes {
            let navigator = &navigator;
            threads.spawn(move || get_ok(navigator, &format!("/showcase/{scope}/")));
        }
    });

    let file = navigator.path("all.log");
    let complete = |lines: &[String]| {
        scopes.iter().all(|scope| {
            let last = format!("[{scope}.stdout] flood line {FLOOD} of {FLOOD}");
            lines.contains(&last)
        })
    };
    assert!(
        eventually(Duration::from_secs(20), || complete(&read_lines(&file))),
        "floods incomplete"
    );

    let mut seen: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut dropped: BTreeMap<&str, u64> = BTreeMap::new();
    for line in read_lines(&file) {
        let Some(rest) = line.strip_prefix('[') else {
            // navigator's own records: `TIME LEVEL target: message ...`
            let (time, rest) = line.split_once(' ').expect("a record");
            assert!(time.ends_with('Z'), "torn line: {line:.100}");
            let level = rest.trim_start().split(' ').next().unwrap();
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
                "torn line: {line:.100}"
            );
            continue;
        };
        let (source, text) = rest.split_once("] ").expect("whole prefix");
        let scope = scopes
            .iter()
            .find(|scope| {
                source == format!("{scope}.stdout") || source == format!("{scope}.stderr")
            })
            .unwrap_or_else(|| panic!("unknown source in {line:.100}"));
        if let Some(count) = text.strip_suffix(" lines dropped because logging fell behind") {
            *dropped.entry(scope).or_default() += count.parse::<u64>().unwrap();
        } else if let Some(flood) = text.strip_prefix("flood line ") {
            let (number, total) = flood.split_once(" of ").expect("whole flood line");
            assert_eq!(total, FLOOD.to_string(), "torn line: {line:.100}");
            let number: u64 = number.parse().unwrap();
            assert!(
                seen.entry(scope).or_default().insert(number),
                "duplicate {line}"
            );
        }
    }
    for scope in &scopes {
        let lines = seen.get(scope.as_str()).map_or(0, |set| set.len() as u64);
        let lost = dropped.get(scope.as_str()).copied().unwrap_or(0);
        assert_eq!(
            lines + lost,
            FLOOD,
            "{scope}: {lines} lines, {lost} dropped"
        );
    }
}

#[test]
fn sigusr1_reopens_renamed_files() {
    let mut navigator = start_showcase(&logging("file = \"@DIR@/log/{{app}}.log\""));
    let scope = event_scope(2);
    let tenant_log = navigator.path(&format!("log/{}.log", scope.replace('/', "-")));
    let navigator_log = navigator.path("log/navigator.log");

    for n in 0..20 {
        get_ok(&navigator, &format!("/showcase/{scope}/item-{n}"));
    }
    assert!(wait_for_line(&tenant_log, "item-19 200"));
    assert!(wait_for_line(&navigator_log, "item-19"));

    // What logrotate does: rename, then signal.
    let rotated = |path: &Path| PathBuf::from(format!("{}.1", path.display()));
    std::fs::rename(&tenant_log, rotated(&tenant_log)).unwrap();
    std::fs::rename(&navigator_log, rotated(&navigator_log)).unwrap();
    // Lines logged between the rename and the signal land in the renamed
    // files.
    for n in 20..30 {
        get_ok(&navigator, &format!("/showcase/{scope}/item-{n}"));
    }
    navigator.signal(Signal::SIGUSR1);
    assert!(
        navigator
            .logs
            .wait_for("reopened log files", Duration::from_secs(10))
            .is_some(),
        "no reopen; log:\n{}",
        navigator.logs.text()
    );
    for n in 30..50 {
        get_ok(&navigator, &format!("/showcase/{scope}/item-{n}"));
    }
    assert!(wait_for_line(&tenant_log, "item-49 200"));
    assert!(wait_for_line(&navigator_log, "item-49"));

    // Every request is in exactly one of the two tenant files, and all
    // after the reopen are in the new one.
    let items = |path: &Path| -> Vec<u32> {
        read_lines(path)
            .iter()
            .filter_map(|line| line.split("/item-").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .collect()
    };
    let old = items(&rotated(&tenant_log));
    let new = items(&tenant_log);
    assert!(new.iter().all(|n| *n >= 20), "{new:?}");
    assert!((30..50).all(|n| new.contains(&n)), "{new:?}");
    let mut all: Vec<u32> = old.into_iter().chain(new).collect();
    all.sort();
    assert_eq!(all, (0..50).collect::<Vec<u32>>());
    assert!(
        navigator.child.try_wait().unwrap().is_none(),
        "SIGUSR1 killed navigator"
    );
}

#[test]
fn unwritable_log_file_does_not_stop_serving() {
    let dir = tempfile::tempdir().unwrap();
    support::write_public_tree(dir.path());
    // A regular file where the log directory should be: even root cannot
    // create files below it.
    std::fs::write(dir.path().join("blocker"), "").unwrap();
    let showcase = logging("file = \"@DIR@/blocker/{{app}}.log\"");
    let navigator = Navigator::start_in(dir, &showcase.toml(), &[]);
    for n in 0..5 {
        get_ok(&navigator, &format!("/showcase/{}/try-{n}", event_scope(3)));
    }
    assert!(
        navigator
            .logs
            .wait_for("failed to open log file", Duration::from_secs(10))
            .is_some(),
        "no error about the log file; log:\n{}",
        navigator.logs.text()
    );
    // The error is rate-limited per file: once for navigator.log and once
    // for the tenant's file, whatever the number of lines.
    assert!(navigator.logs.count("failed to open log file") <= 2);
}

#[test]
fn json_format_file_records() {
    let navigator = start_showcase(&logging(
        "format = \"json\"\nfile = \"@DIR@/log/{{app}}.log\"",
    ));
    let scope = event_scope(4);
    get_ok(&navigator, &format!("/showcase/{scope}/json-check"));
    let tenant_log = navigator.path(&format!("log/{}.log", scope.replace('/', "-")));
    assert!(wait_for_line(&tenant_log, "json-check"));
    for line in read_lines(&tenant_log) {
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(record["tenant"], scope.as_str());
        assert_eq!(record["source"], scope.as_str());
        assert!(record["stream"] == "stdout" || record["stream"] == "stderr");
        assert!(record["@timestamp"].is_string());
    }
    let navigator_log = navigator.path("log/navigator.log");
    assert!(wait_for_line(&navigator_log, "json-check"));
    let access = read_lines(&navigator_log)
        .into_iter()
        .find(|line| line.contains("json-check"))
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(&access).unwrap();
    assert_eq!(record["stream"], "access");
    assert_eq!(record["status"], 200);
    assert_eq!(record["tenant"], scope.as_str());
}

/// A stand-in for Vector's unix socket source: accepts connections and
/// collects every line received.
struct MockVector {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<UnixStream>>>,
}

impl MockVector {
    fn bind(path: &Path, lines: Arc<Mutex<Vec<String>>>) -> MockVector {
        let listener = UnixListener::bind(path).unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accepting = (Arc::clone(&stopping), Arc::clone(&connections));
        std::thread::spawn(move || {
            let (stopping, connections) = accepting;
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else {
                    return;
                };
                connections
                    .lock()
                    .unwrap()
                    .push(stream.try_clone().unwrap());
                let lines = Arc::clone(&lines);
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines() {
                        match line {
                            Ok(line) => lines.lock().unwrap().push(line),
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        MockVector {
            path: path.to_path_buf(),
            stopping,
            connections,
        }
    }

    /// Closes every connection, stops listening and removes the socket,
    /// as a killed Vector would.
    fn kill(self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it drops the listener.
        let _ = UnixStream::connect(&self.path);
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
        std::fs::remove_file(&self.path).unwrap();
    }
}

fn records_with(lines: &Mutex<Vec<String>>, needle: &str) -> Vec<serde_json::Value> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains(needle))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[test]
fn vector_socket_gets_json_records_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    support::write_public_tree(dir.path());
    let socket = dir.path().join("vector.sock");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mock = MockVector::bind(&socket, Arc::clone(&lines));
    let showcase = logging("[logging.vector]\nenabled = true\nsocket = \"@DIR@/vector.sock\"");
    let navigator = Navigator::start_in(dir, &showcase.toml(), &[]);

    let scope = event_scope(5);
    get_ok(&navigator, &format!("/showcase/{scope}/before"));
    assert!(eventually(Duration::from_secs(10), || {
        records_with(&lines, "/before").len() >= 2
    }));
    // Every line is one whole JSON record.
    for line in lines.lock().unwrap().iter() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(record["@timestamp"].is_string(), "{line}");
        assert!(record["source"].is_string(), "{line}");
    }
    let records = records_with(&lines, "/before");
    let access = records
        .iter()
        .find(|record| record["stream"] == "access")
        .expect("access record");
    assert_eq!(access["tenant"], scope.as_str());
    assert_eq!(access["status"], 200);
    assert_eq!(access["source"], "navigator");
    let output = records
        .iter()
        .find(|record| record["stream"] == "stdout")
        .expect("tenant output record");
    assert_eq!(output["tenant"], scope.as_str());
    assert_eq!(output["source"], scope.as_str());
    assert_eq!(
        output["message"],
        format!("GET /showcase/{scope}/before 200")
    );

    // Vector goes down: serving goes on and records are counted as dropped.
    mock.kill();
    for n in 0..5 {
        get_ok(&navigator, &format!("/showcase/{scope}/while-down-{n}"));
    }
    let dropped = navigator
        .logs
        .wait_for("log records for Vector dropped", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no drop count; log:\n{}", navigator.logs.text()));
    let count: u64 = support::parse_field(&dropped, "dropped")
        .unwrap()
        .parse()
        .unwrap();
    assert!(count > 0, "{dropped}");

    // Vector is back: the client reconnects and records flow again.
    let _mock = MockVector::bind(&socket, Arc::clone(&lines));
    assert!(
        eventually(Duration::from_secs(20), || {
            get_ok(&navigator, &format!("/showcase/{scope}/after"));
            !records_with(&lines, "/after").is_empty()
        }),
        "no records after Vector came back; log:\n{}",
        navigator.logs.text()
    );
}

#[test]
fn missing_vector_program_logged_serving_continues() {
    let dir = tempfile::tempdir().unwrap();
    support::write_public_tree(dir.path());
    let empty_bin = dir.path().join("bin");
    std::fs::create_dir(&empty_bin).unwrap();
    let showcase = logging(
        "[logging.vector]\nenabled = true\nsocket = \"@DIR@/vector.sock\"\nconfig = \"@DIR@/vector.toml\"",
    );
    let path = format!("{}:/usr/bin:/bin", empty_bin.display());
    let navigator = Navigator::start_in(dir, &showcase.toml(), &[("PATH", &path)]);
    let line = navigator
        .logs
        .wait_for("failed to start Vector", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no error; log:\n{}", navigator.logs.text()));
    assert!(line.contains("not installed or not in PATH"), "{line}");
    get_ok(&navigator, &format!("/showcase/{}/", event_scope(6)));
}

#[test]
fn vector_process_restarted_after_exit() {
    let dir = tempfile::tempdir().unwrap();
    support::write_public_tree(dir.path());
    // A stand-in `vector` that records its arguments and keeps running.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = dir.path().join("vector-calls");
    let script = format!(
        "#!/bin/sh\necho \"$$ $*\" >> {}\nexec sleep 300\n",
        calls.display()
    );
    let program = bin.join("vector");
    std::fs::write(&program, script).unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let showcase = logging(
        "[logging.vector]\nenabled = true\nsocket = \"@DIR@/vector.sock\"\nconfig = \"@DIR@/vector.toml\"",
    );
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let mut navigator = Navigator::start_in(dir, &showcase.toml(), &[("PATH", &path)]);
    let config = navigator.path("vector.toml");

    assert!(eventually(Duration::from_secs(10), || read_lines(&calls)
        .len()
        == 1));
    let first = read_lines(&calls)[0].clone();
    let (pid, args) = first.split_once(' ').unwrap();
    assert_eq!(args, format!("--config {}", config.display()));
    let pid: i32 = pid.parse().unwrap();

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || read_lines(&calls).len() == 2),
        "Vector not restarted; log:\n{}",
        navigator.logs.text()
    );
    assert!(navigator.logs.count("Vector exited; restarting it") >= 1);

    // Shutdown stops the current Vector too.
    let second: i32 = read_lines(&calls)[1]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(navigator.stop(), Some(0));
    assert!(eventually(Duration::from_secs(5), || {
        !support::process_alive(second)
    }));
}

#[test]
fn reload_switches_log_file_and_format() {
    let navigator = start_showcase(&logging("file = \"@DIR@/text/{{app}}.log\""));
    let scope = event_scope(7);
    get_ok(&navigator, &format!("/showcase/{scope}/first"));
    let text_log = navigator.path("text/navigator.log");
    assert!(wait_for_line(
        &text_log,
        &format!("uri=/showcase/{scope}/first")
    ));

    let reloaded = logging("format = \"json\"\nfile = \"@DIR@/json/{{app}}.log\"");
    support::write_config(&navigator.config, &reloaded.toml(), navigator.dir.path());
    navigator.signal(Signal::SIGHUP);
    assert!(
        navigator
            .logs
            .wait_for("reload applied", Duration::from_secs(10))
            .is_some()
    );
    get_ok(&navigator, &format!("/showcase/{scope}/second"));

    let json_log = navigator.path("json/navigator.log");
    assert!(wait_for_line(&json_log, "/second"));
    let record: serde_json::Value = serde_json::from_str(
        &read_lines(&json_log)
            .into_iter()
            .find(|line| line.contains("/second"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(record["stream"], "access");
    assert!(
        read_lines(&text_log)
            .iter()
            .all(|line| !line.contains("/second")),
        "a line after the reload went to the old file"
    );
}
