//! Machine idle: counts requests in flight; after `server.idle.timeout`
//! with none, runs the server idle hooks and asks the Fly Machines API to
//! suspend or stop this machine. The first request afterwards runs the
//! resume hooks before it is served.
//!
//! Health-check requests neither count nor reset the idle timer: Fly checks
//! `/up` every 30 s or so, and if that counted a machine would never
//! suspend. An open WebSocket tunnel counts as a request in flight as long
//! as whoever owns the tunnel holds an [`Activity`] (tenant tunnels with
//! `track_websockets`, private-network tunnels).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use std::time::{Duration, Instant};

use http::Request;
use tokio::sync::{Mutex, Notify};
use tracing::{debug, info, warn};

use super::machines;
use crate::app::App;
use crate::compile::Snapshot;
use crate::config::schema::MachineIdle as IdleSettings;
use crate::hooks::{self, ServerEvent};

/// The idle state of this machine, shared by every request.
pub struct MachineIdle {
    in_flight: AtomicUsize,
    /// Start of the clock that `last_activity_ms` counts from.
    epoch: Instant,
    /// Milliseconds after `epoch` when a counted request last started or
    /// ended.
    last_activity_ms: AtomicU64,
    /// Signalled when the last request in flight ends while the monitor
    /// waits for that, when the machine wakes and when a reload installs
    /// new settings, so the monitor re-checks without polling. Other ends
    /// of requests signal nothing: a monitor asleep until the idle
    /// deadline reads the newer activity time when it wakes, and one
    /// without idle settings has nothing to check. On a busy server a
    /// signal per request would wake another thread per request.
    changed: Notify,
    /// Set by the monitor while it waits for the requests in flight to
    /// end; the request that ends last clears it and signals.
    awaiting_last: AtomicBool,
    /// Set when the idle hooks start; cleared once the resume hooks ran.
    asleep: AtomicBool,
    /// Held while idle hooks, the API call or resume hooks run, so a
    /// request arriving meanwhile waits and then resumes the machine.
    transition: Mutex<()>,
    outside_fly_logged: AtomicBool,
}

/// One counted request or tunnel; dropping it ends the count.
pub struct Activity(Arc<MachineIdle>);

impl Drop for Activity {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.awaiting_last.swap(false, Ordering::SeqCst)
        {
            self.0.changed.notify_one();
        }
    }
}

impl MachineIdle {
    pub fn new() -> Arc<MachineIdle> {
        Arc::new(MachineIdle {
            in_flight: AtomicUsize::new(0),
            epoch: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            changed: Notify::new(),
            awaiting_last: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
            transition: Mutex::new(()),
            outside_fly_logged: AtomicBool::new(false),
        })
    }

    /// Counts one request or tunnel until the returned guard is dropped.
    pub fn track(self: &Arc<Self>) -> Activity {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Activity(self.clone())
    }

    /// Tells the monitor that a reload may have changed `server.idle`.
    pub fn settings_changed(&self) {
        self.changed.notify_one();
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Returns whether the idle hooks ran and the resume hooks are still due.
    pub fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::Acquire)
    }

    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_activity_ms.fetch_max(now, Ordering::AcqRel);
    }

    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_activity_ms.load(Ordering::Acquire))
    }
}

/// Returns whether `request` is for the configured health-check path, compared
/// with the raw path (health paths such as `/up` need no decoding).
pub fn is_health_check<B>(snapshot: &Snapshot, request: &Request<B>) -> bool {
    snapshot
        .health
        .as_ref()
        .is_some_and(|health| health.path == request.uri().path())
}

/// Counts `request` (except health checks) and, if the machine went idle
/// since the last request, runs the resume hooks before returning.
pub async fn track_request<B>(app: &App, request: &Request<B>) -> Option<Activity> {
    if is_health_check(&app.current(), request) {
        return None;
    }
    let activity = app.fly.idle.track();
    wake(app).await;
    Some(activity)
}

/// Runs the resume hooks once after an idle action; concurrent callers
/// wait for the same run.
pub async fn wake(app: &App) {
    let idle = &app.fly.idle;
    if !idle.is_asleep() {
        return;
    }
    let _transition = idle.transition.lock().await;
    if !idle.is_asleep() {
        return;
    }
    let started = Instant::now();
    let resume = app.snapshot().config.hooks.server.resume.len();
    // A failed hook is logged inside; the machine is awake either way. A
    // resume hook's `reload_config` is in place when this returns.
    let _ = hooks::run_server_hooks(app, ServerEvent::Resume).await;
    idle.asleep.store(false, Ordering::Release);
    idle.changed.notify_one();
    info!(
        hooks = resume,
        duration_ms = started.elapsed().as_millis() as u64,
        "machine resumed"
    );
}

/// Watches for idleness for as long as navigator runs. Reads
/// `server.idle` from the current snapshot on every round; a reload that
/// adds, changes or removes it wakes the monitor.
pub async fn run_monitor(app: Arc<App>) {
    let idle = app.fly.idle.clone();
    // When the last API call failed: when to try it again.
    let mut retry_at: Option<Instant> = None;
    loop {
        let settings = app
            .snapshot()
            .config
            .server
            .idle
            .clone()
            .filter(|settings| !settings.timeout.is_zero());
        let Some(settings) = settings else {
            idle.changed.notified().await;
            continue;
        };
        let timeout = settings.timeout.get();

        if idle.in_flight() > 0 {
            // Set the flag first, then check again: a request that ends in
            // between is either counted here or finds the flag set and
            // signals.
            idle.awaiting_last.store(true, Ordering::SeqCst);
            if idle.in_flight.load(Ordering::SeqCst) > 0 {
                idle.changed.notified().await;
            }
            continue;
        }
        let due = if idle.is_asleep() {
            match retry_at {
                Some(at) => at,
                // Suspended and not yet woken by a request: nothing to do.
                None => {
                    idle.changed.notified().await;
                    continue;
                }
            }
        } else {
            retry_at = None;
            idle.idle_since() + timeout
        };
        if Instant::now() < due {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = idle.changed.notified() => {}
            }
            continue;
        }

        let retry = go_idle(&app, &settings).await;
        retry_at = retry.then(|| Instant::now() + timeout);
    }
}

/// Runs the idle hooks (unless they already ran) and asks the Machines API
/// for the idle action. Returns true when the API call failed and should be
/// tried again later.
async fn go_idle(app: &App, settings: &IdleSettings) -> bool {
    let idle = &app.fly.idle;
    let environment = &app.fly.environment;
    let action = machines::action_name(settings.action);
    let (Some(app_name), Some(machine_id)) = (&environment.app_name, &environment.machine_id)
    else {
        if !idle.outside_fly_logged.swap(true, Ordering::AcqRel) {
            info!(
                action,
                "machine idle, but FLY_APP_NAME or FLY_MACHINE_ID is not set: not running on Fly, so no idle hooks and no {action}"
            );
        } else {
            debug!(action, "machine idle outside Fly; nothing to do");
        }
        // Look again after another full timeout.
        idle.touch();
        return false;
    };

    let _transition = idle.transition.lock().await;
    if idle.in_flight() > 0 {
        return false;
    }
    if !idle.asleep.swap(true, Ordering::AcqRel) {
        info!(
            action,
            timeout_secs = settings.timeout.get().as_secs(),
            hooks = app.snapshot().config.hooks.server.idle.len(),
            "machine idle; running idle hooks"
        );
        // A failed idle hook is logged inside and does not keep the
        // machine awake.
        let _ = hooks::run_server_hooks(app, ServerEvent::Idle).await;
    }
    if idle.in_flight() > 0 {
        info!(
            action,
            "a request arrived during the idle hooks; staying awake"
        );
        return false;
    }

    match machines::request_action(
        &settings.fly_api_socket,
        app_name,
        machine_id,
        settings.action,
    )
    .await
    {
        Ok(()) => {
            info!(
                action,
                app = %app_name,
                machine = %machine_id,
                "asked the Fly Machines API to {action} this machine"
            );
            false
        }
        Err(error) => {
            warn!(
                action,
                socket = %settings.fly_api_socket.display(),
                error = %error,
                "Machines API call failed; trying again after the idle timeout"
            );
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_counts_until_dropped() {
        let idle = MachineIdle::new();
        let first = idle.track();
        let second = idle.track();
        assert_eq!(idle.in_flight(), 2);
        drop(first);
        assert_eq!(idle.in_flight(), 1);
        drop(second);
        assert_eq!(idle.in_flight(), 0);
    }

    #[test]
    fn ended_request_resets_idle_clock() {
        let idle = MachineIdle::new();
        let before = idle.idle_since();
        std::thread::sleep(Duration::from_millis(5));
        drop(idle.track());
        assert!(idle.idle_since() > before);
    }
}
