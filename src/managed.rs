//! Managed processes (`managed_processes[]`): helpers such as Redis, job
//! workers or Vector that live as long as navigator.
//!
//! Each process is owned by one supervising task that starts it after its
//! `start_delay`, restarts it with exponential backoff when `auto_restart`
//! is set, and stops it on request. A reload stops removed processes,
//! restarts changed ones and leaves unchanged ones running. Shutdown stops
//! them in the reverse order of their first start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::schema::ManagedProcess;
use crate::log_shipping;
use crate::supervisor::output::OutputSink;
use crate::supervisor::process::{self, SpawnSpec};

/// First restart delay; it doubles with each quick failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Maximum wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A process that ran at least this long before exiting restarts after the
/// first delay again: it was not crash-looping.
const STABLE_UPTIME: Duration = Duration::from_secs(60);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One configured process and the task that supervises it.
struct Entry {
    config: ManagedProcess,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Order of the first successful spawn (1, 2, ...); 0 while it never
    /// started. Shutdown stops the highest first.
    start_order: Arc<AtomicU64>,
}

/// Every managed process of the running config.
pub struct ManagedProcesses {
    entries: tokio::sync::Mutex<Vec<Entry>>,
    next_start_order: Arc<AtomicU64>,
    /// Time between SIGTERM and SIGKILL when a process is stopped.
    grace: Mutex<Duration>,
}

impl Default for ManagedProcesses {
    fn default() -> Self {
        ManagedProcesses {
            entries: tokio::sync::Mutex::new(Vec::new()),
            next_start_order: Arc::new(AtomicU64::new(1)),
            grace: Mutex::new(Duration::from_secs(10)),
        }
    }
}

impl ManagedProcesses {
    pub fn new() -> Arc<ManagedProcesses> {
        Arc::new(ManagedProcesses::default())
    }

    /// Makes the running processes match `wanted`: stops those no longer
    /// listed or whose settings changed, then starts new and changed ones.
    /// Returns once those without a `start_delay` have been spawned, so a
    /// start hook can rely on them; delayed ones start in the background.
    /// `grace` is the stop grace period from now on.
    pub async fn apply(&self, wanted: &[ManagedProcess], grace: Duration) {
        *lock(&self.grace) = grace;
        let mut entries = self.entries.lock().await;

        let (keep, retire): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut *entries)
            .into_iter()
            .partition(|entry| wanted.contains(&entry.config));
        for entry in retire {
            let reason = if wanted.iter().any(|w| w.name == entry.config.name) {
                "settings changed; restarting managed process"
            } else {
                "removed from config; stopping managed process"
            };
            info!(process = %entry.config.name, "{reason}");
            stop_entry(entry).await;
        }

        let mut keep: Vec<Option<Entry>> = keep.into_iter().map(Some).collect();
        let mut spawned = Vec::new();
        for config in wanted {
            let kept = keep
                .iter_mut()
                .find(|slot| slot.as_ref().is_some_and(|e| &e.config == config))
                .and_then(Option::take);
            match kept {
                Some(entry) => entries.push(entry),
                None => {
                    let (entry, first_attempt) = self.start(config.clone());
                    if config.start_delay.is_zero() {
                        spawned.push(first_attempt);
                    }
                    entries.push(entry);
                }
            }
        }
        drop(entries);
        for first_attempt in spawned {
            // An error means the task ended without trying, which only a
            // panic can cause; it is logged by `stop_entry` later.
            let _ = first_attempt.await;
        }
    }

    /// Stops every process in the reverse order of their first start and
    /// waits for each before the next.
    pub async fn stop_all(&self) {
        let mut entries = std::mem::take(&mut *self.entries.lock().await);
        // Never-started ones (still in their start_delay) have order 0 and
        // go last; they only need their task ended.
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.start_order.load(Ordering::Acquire)));
        for entry in entries {
            stop_entry(entry).await;
        }
    }

    /// Names of the configured processes, in config order.
    pub async fn names(&self) -> Vec<String> {
        let entries = self.entries.lock().await;
        entries.iter().map(|e| e.config.name.clone()).collect()
    }

    /// Starts the supervising task of `config`. The receiver resolves
    /// after its first spawn attempt.
    fn start(&self, config: ManagedProcess) -> (Entry, oneshot::Receiver<()>) {
        let (stop, stop_requested) = watch::channel(false);
        let (first_attempt, attempted) = oneshot::channel();
        let start_order = Arc::new(AtomicU64::new(0));
        let supervisor = Supervision {
            config: config.clone(),
            stop_requested,
            start_order: start_order.clone(),
            next_start_order: self.next_start_order.clone(),
            grace: *lock(&self.grace),
            first_attempt: Some(first_attempt),
        };
        let entry = Entry {
            config,
            stop,
            task: tokio::spawn(supervisor.run()),
            start_order,
        };
        (entry, attempted)
    }
}

async fn stop_entry(entry: Entry) {
    entry.stop.send_replace(true);
    if let Err(error) = entry.task.await {
        error!(process = %entry.config.name, error = %error, "managed process task failed");
    }
}

/// The state of one supervising task.
struct Supervision {
    config: ManagedProcess,
    stop_requested: watch::Receiver<bool>,
    start_order: Arc<AtomicU64>,
    next_start_order: Arc<AtomicU64>,
    grace: Duration,
    /// Told after the first spawn attempt.
    first_attempt: Option<oneshot::Sender<()>>,
}

impl Supervision {
    async fn run(mut self) {
        let name = self.config.name.clone();
        let delay = self.config.start_delay.get();
        if !delay.is_zero() {
            info!(process = %name, delay_ms = delay.as_millis() as u64, "managed process starts after its start_delay");
            if self.sleep_unless_stopped(delay).await {
                return;
            }
        }

        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            if self.run_once().await == Ended::Stopped {
                return;
            }
            if !self.config.auto_restart {
                info!(process = %name, "managed process will not be restarted (auto_restart is off)");
                return;
            }
            if started.elapsed() >= STABLE_UPTIME {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            let delay = backoff(failures);
            info!(process = %name, restarts = failures, delay_ms = delay.as_millis() as u64, "restarting managed process");
            if self.sleep_unless_stopped(delay).await {
                return;
            }
        }
    }

    /// Spawns the process once and waits until it exits or a stop is
    /// requested.
    async fn run_once(&mut self) -> Ended {
        let name = self.config.name.clone();
        let spec = SpawnSpec {
            label: name.clone(),
            program: self.config.command.clone(),
            args: self.config.args.clone(),
            cwd: self.config.working_dir.clone(),
            env: self
                .config
                .env
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            ..SpawnSpec::default()
        };
        let spawned = process::spawn(
            &spec,
            OutputSink::new(name.clone()).with_hook(log_shipping::process_output_hook(&name)),
        );
        if let Some(first_attempt) = self.first_attempt.take() {
            let _ = first_attempt.send(());
        }
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                error!(process = %name, error = %error, "managed process failed to start");
                return Ended::Exited;
            }
        };
        if self.start_order.load(Ordering::Acquire) == 0 {
            let order = self.next_start_order.fetch_add(1, Ordering::AcqRel);
            self.start_order.store(order, Ordering::Release);
        }
        info!(process = %name, pid = child.pid(), "managed process started");

        let mut stop = self.stop_requested.clone();
        tokio::select! {
            status = child.wait() => {
                let status = match status {
                    Ok(status) => process::describe_status(status),
                    Err(error) => format!("wait failed: {error}"),
                };
                warn!(process = %name, pid = child.pid(), status = %status, stderr = ?child.stderr_tail(), "managed process exited");
                Ended::Exited
            }
            _ = stopped(&mut stop) => {
                info!(process = %name, pid = child.pid(), "stopping managed process");
                match child.stop(self.grace).await {
                    Ok(status) => info!(process = %name, pid = child.pid(), status = %process::describe_status(status), "managed process stopped"),
                    Err(error) => warn!(process = %name, pid = child.pid(), error = %error, "waiting for the managed process failed"),
                }
                Ended::Stopped
            }
        }
    }

    /// Sleeps for `delay`; returns true if a stop was requested meanwhile.
    async fn sleep_unless_stopped(&mut self, delay: Duration) -> bool {
        let mut stop = self.stop_requested.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = stopped(&mut stop) => true,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Exited,
    Stopped,
}

/// Resolves once a stop is requested or the owner is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|requested| *requested).await;
}

/// Returns the delay before restart number `failures` (counted from 1):
/// 1 s, 2 s, 4 s ... at most 60 s.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    (FIRST_BACKOFF * 2u32.pow(exponent)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::config::units;

    fn sh(name: &str, script: &str) -> ManagedProcess {
        ManagedProcess {
            name: name.into(),
            command: "sh".into(),
            args: vec!["-c".into(), script.into()],
            working_dir: None,
            env: BTreeMap::new(),
            auto_restart: false,
            start_delay: units::Duration::default(),
        }
    }

    fn read_pid(path: &std::path::Path) -> Option<i32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    async fn wait_for_pid(path: &std::path::Path) -> i32 {
        for _ in 0..500 {
            if let Some(pid) = read_pid(path) {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} never written", path.display());
    }

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[tokio::test]
    async fn reload_keeps_unchanged_and_restarts_changed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_of = |name: &str| dir.path().join(format!("{name}.pid"));
        let script = |name: &str, tag: &str| {
            format!(
                "echo $$ > {}; exec sleep 100 # {tag}",
                pid_of(name).display()
            )
        };
        let managed = ManagedProcesses::new();
        let grace = Duration::from_secs(5);

        let first = vec![
            sh("keep", &script("keep", "a")),
            sh("change", &script("change", "a")),
            sh("drop", &script("drop", "a")),
        ];
        managed.apply(&first, grace).await;
        let keep = wait_for_pid(&pid_of("keep")).await;
        let change = wait_for_pid(&pid_of("change")).await;
        let dropped = wait_for_pid(&pid_of("drop")).await;
        std::fs::remove_file(pid_of("change")).unwrap();

        let second = vec![
            sh("keep", &script("keep", "a")),
            sh("change", &script("change", "b")),
            sh("new", &script("new", "a")),
        ];
        managed.apply(&second, grace).await;
        let changed = wait_for_pid(&pid_of("change")).await;
        wait_for_pid(&pid_of("new")).await;

        assert!(alive(keep), "unchanged process was stopped");
        assert_eq!(read_pid(&pid_of("keep")), Some(keep));
        assert_ne!(changed, change);
        assert!(!alive(change), "changed process kept its old instance");
        assert!(!alive(dropped), "removed process still runs");
        assert_eq!(managed.names().await, vec!["keep", "change", "new"]);

        managed.stop_all().await;
        assert!(!alive(keep));
        assert!(!alive(changed));
    }

    #[tokio::test]
    async fn stop_all_ends_delayed_start() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("started");
        let mut process = sh("late", &format!("touch {}", marker.display()));
        process.start_delay = units::Duration::from_secs(100);
        let managed = ManagedProcesses::new();
        managed.apply(&[process], Duration::from_secs(1)).await;
        managed.stop_all().await;
        assert!(!marker.exists());
    }
}
