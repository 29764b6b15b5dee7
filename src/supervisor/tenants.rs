//! The tenant supervisor: one slot per tenant, holding its phase
//! (stopped, starting, running, stopping). Requests obtain leases on a
//! running instance; a lease counts the request in flight and releases on
//! drop, which makes idle reaping and LRU eviction exact.
//!
//! Ownership: each running process is owned by one monitor task, which
//! alone waits on it and stops it. Slots only hold `Arc<Instance>` handles
//! and ask the monitor to stop through a channel. Slot mutexes are never
//! held across an `.await`.
//!
//! Pool controls live in child modules: `prewarm` (tenants started ahead
//! of their first request and kept running) and `recycle` (replacing a
//! process after `max_requests`, above `recycle_memory`, or on request of
//! an operator). The request queue of each process is `super::queue`.

mod prewarm;
mod recycle;

pub use prewarm::PrewarmError;
pub use recycle::{Replacement, Restarted};

use std::collections::HashMap;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tracing::{error, info, warn};

use super::cgroup::{self, TenantCgroup};
use super::output::OutputSink;
use super::pidfile;
use super::ports::{PortLease, PortPool};
use super::process::{self, ChildProcess, SpawnSpec};
use super::queue::{QueueError, RequestQueue};
use super::readiness::{self, ReadyError};
use crate::compile::supervision::RecycleSettings;
use crate::compile::{PoolSettings, Snapshot, TenantSpec};
use crate::config::expand::fill_port;
use crate::hooks::{self, TenantEvent};
use crate::log_shipping;
use crate::lookup::LookupMap;
use crate::reload::Reloader;

/// Longest wait between restarts of a tenant that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A process that ran at least this long before exiting on its own resets
/// the failure count: it was not crash-looping.
const STABLE_UPTIME: Duration = Duration::from_secs(60);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a request could not get a lease.
#[derive(Debug, Clone)]
pub enum AcquireError {
    /// Not ready within the tenant's `startup_timeout`; the start goes on.
    StartupTimeout,
    /// The start failed; the message says why (exit status, stderr tail).
    StartFailed(Arc<str>),
    /// Navigator is shutting down.
    ShuttingDown,
    /// The tenant's request queue was full (`max_queue`).
    QueueFull,
    /// No place in the tenant's request queue within `queue_timeout`.
    QueueTimeout,
}

#[derive(Debug, Clone)]
enum StartStatus {
    Pending,
    Ready,
    Failed(Arc<str>),
}

/// One running tenant process.
#[derive(Debug)]
pub struct Instance {
    id: u64,
    pub spec: Arc<TenantSpec>,
    pub port: u16,
    pub pid: u32,
    pub started_at: Instant,
    in_flight: AtomicUsize,
    websockets: AtomicUsize,
    /// Milliseconds since the supervisor's epoch.
    last_activity: AtomicU64,
    requests: AtomicU64,
    /// Stop as soon as no request is in flight (replaced or removed tenant).
    draining: AtomicBool,
    /// Set once the process passed its readiness probe. Only then do its
    /// stop hooks run, to pair with the start hooks.
    ready: AtomicBool,
    stop_requested: watch::Sender<bool>,
    /// The value of `stop_requested`, which every request checks. Reading
    /// the channel would take its lock.
    stopping: AtomicBool,
    /// Becomes true once the process has exited and been cleaned up.
    exited: watch::Sender<bool>,
    /// The last stderr lines, filled in when the process exits.
    stderr_tail: Arc<Mutex<Vec<String>>>,
    epoch: Instant,
    tuning: ArcSwap<Tuning>,
}

/// The settings of a running process that a reload may change without
/// restarting it.
#[derive(Debug)]
struct Tuning {
    /// `None`: no bound on concurrent requests.
    queue: Option<Arc<RequestQueue>>,
    recycle: RecycleSettings,
}

impl Tuning {
    fn for_spec(spec: &TenantSpec) -> Tuning {
        Tuning {
            queue: spec.supervision.queue.map(RequestQueue::new),
            recycle: spec.supervision.recycle,
        }
    }
}

impl Instance {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_activity.store(self.now_ms(), Ordering::Relaxed);
    }

    fn is_idle(&self) -> bool {
        let websockets_hold =
            self.spec.track_websockets && self.websockets.load(Ordering::Relaxed) > 0;
        self.in_flight.load(Ordering::Acquire) == 0 && !websockets_hold
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_activity.load(Ordering::Relaxed)),
        )
    }

    fn request_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop_requested.send_replace(true);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn drain(&self) {
        // SeqCst here and in `Lease::drop`: each side stores, then loads
        // what the other stores, and at least one of them must see the
        // other's store, or the instance would never be asked to stop.
        self.draining.store(true, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            self.request_stop();
        }
    }

    async fn wait_exited(&self) {
        let mut exited = self.exited.subscribe();
        let _ = exited.wait_for(|done| *done).await;
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests being served, without those waiting in the queue.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .load(Ordering::Relaxed)
            .saturating_sub(self.queued())
    }

    /// Requests waiting for a place in the request queue.
    pub fn queued(&self) -> usize {
        self.tuning
            .load()
            .queue
            .as_ref()
            .map_or(0, |queue| queue.waiting())
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Counts a new request in flight. Called with the slot locked, so
    /// that a stop decided under the same lock takes it into account.
    /// The process counts as busy while the lease lives and as active
    /// until it ends, so only the end reads the clock.
    fn lease(self: &Arc<Self>) -> Lease {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Lease {
            instance: self.clone(),
            permit: None,
        }
    }

    /// Takes up settings of a reloaded config that need no restart. The
    /// queue is kept when its settings are unchanged, with the requests
    /// that hold or wait for its places.
    // NOTE: a replaced queue starts with all places free while requests
    // admitted by the old one finish, so for that moment the process may
    // serve up to the old and the new max_concurrency together.
    fn retune(&self, spec: &TenantSpec) {
        let tuning = self.tuning.load();
        let queue_settings = tuning.queue.as_ref().map(|queue| queue.settings());
        let same_queue = queue_settings == spec.supervision.queue;
        if same_queue && tuning.recycle == spec.supervision.recycle {
            return;
        }
        let queue = if same_queue {
            tuning.queue.clone()
        } else {
            spec.supervision.queue.map(RequestQueue::new)
        };
        self.tuning.store(Arc::new(Tuning {
            queue,
            recycle: spec.supervision.recycle,
        }));
    }
}

/// A request's hold on a running instance.
#[derive(Debug)]
pub struct Lease {
    instance: Arc<Instance>,
    /// The request's place in the process's request queue, freed with the
    /// lease, which lives inside the response body or WebSocket tunnel.
    permit: Option<OwnedSemaphorePermit>,
}

impl Lease {
    pub fn port(&self) -> u16 {
        self.instance.port
    }

    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// Marks an open WebSocket tunnel; while the returned guard lives the
    /// tenant counts as active (when `track_websockets` is on).
    pub fn websocket(&self) -> WebSocketGuard {
        self.instance.websockets.fetch_add(1, Ordering::Relaxed);
        WebSocketGuard {
            instance: self.instance.clone(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.instance.touch();
        let before = self.instance.in_flight.fetch_sub(1, Ordering::SeqCst);
        if before == 1 && self.instance.draining.load(Ordering::SeqCst) {
            self.instance.request_stop();
        }
    }
}

#[derive(Debug)]
pub struct WebSocketGuard {
    instance: Arc<Instance>,
}

impl Drop for WebSocketGuard {
    fn drop(&mut self) {
        self.instance.touch();
        self.instance.websockets.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Phase {
    Stopped,
    Starting(watch::Receiver<StartStatus>),
    Running(Arc<Instance>),
    Stopping(Arc<Instance>),
}

struct SlotState {
    phase: Phase,
    /// Consecutive failed starts or early exits.
    failures: u32,
    last_failure: Option<Instant>,
    /// The id of a process whose exit starts its replacement, set while a
    /// replacement waits for a shared PIDFILE. A stop through the control
    /// API clears it, so the tenant stays stopped.
    replaces: Option<u64>,
}

struct Slot {
    name: String,
    state: Mutex<SlotState>,
}

/// Counts tenant processes against `pools.max_size`.
struct PoolGate {
    used: Mutex<usize>,
    max: AtomicUsize,
    freed: Notify,
}

impl PoolGate {
    fn try_take(&self) -> bool {
        let mut used = lock(&self.used);
        if *used < self.max.load(Ordering::Relaxed) {
            *used += 1;
            true
        } else {
            false
        }
    }

    fn release(&self) {
        let mut used = lock(&self.used);
        *used = used.saturating_sub(1);
        drop(used);
        self.freed.notify_waiters();
    }
}

/// Frees a pool place when the process that held it is gone.
struct GatePermit(Weak<Supervisor>);

impl Drop for GatePermit {
    fn drop(&mut self) {
        if let Some(supervisor) = self.0.upgrade() {
            supervisor.gate.release();
        }
    }
}

/// A tenant as the status page and metrics see it.
#[derive(Debug, Clone)]
pub struct TenantStatus {
    pub name: String,
    pub state: &'static str,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub uptime: Option<Duration>,
    pub idle_for: Option<Duration>,
    /// Requests being served, without those waiting in the queue.
    pub in_flight: usize,
    /// Requests waiting for a place in the request queue.
    pub queued: usize,
    /// Requests admitted by the current process.
    pub requests: u64,
    /// Started ahead of requests and exempt from idle stops and eviction.
    pub prewarm: bool,
}

pub struct Supervisor {
    slots: Mutex<LookupMap<String, Arc<Slot>>>,
    /// Every live instance, including draining ones, by id.
    instances: Mutex<HashMap<u64, Arc<Instance>>>,
    gate: PoolGate,
    ports: Mutex<Arc<PortPool>>,
    settings: Mutex<PoolSettings>,
    /// Wakes the idle reaper when settings change or shutdown begins.
    reaper_wake: Notify,
    shutting_down: AtomicBool,
    epoch: Instant,
    next_id: AtomicU64,
    /// Counters for the status page and metrics.
    pub starts: AtomicU64,
    pub start_failures: AtomicU64,
    pub stops: AtomicU64,
    /// Requests turned away with 503 because a request queue was full.
    pub queue_rejections: AtomicU64,
    /// Requests turned away with 503 after waiting `queue_timeout`.
    pub queue_timeouts: AtomicU64,
    /// Processes replaced after `max_requests`, above `recycle_memory` or
    /// on an operator's restart; replacements after a reload not counted.
    pub recycles: AtomicU64,
    prewarmed: Mutex<prewarm::PrewarmMarks>,
    /// The snapshot of the last `apply`: its tenant specs are the ones
    /// processes are started from, whatever snapshot a request runs under.
    /// Read by every request: a lock or a reference count here would be
    /// written by all workers.
    current: ArcSwapOption<Snapshot>,
    /// Queues the reloads that tenant hooks ask for.
    reloader: OnceLock<Reloader>,
    weak_self: Weak<Supervisor>,
}

impl Supervisor {
    pub fn new(settings: &PoolSettings) -> Arc<Supervisor> {
        Arc::new_cyclic(|weak_self| Supervisor {
            slots: Mutex::new(LookupMap::default()),
            instances: Mutex::new(HashMap::new()),
            gate: PoolGate {
                used: Mutex::new(0),
                max: AtomicUsize::new(settings.max_size),
                freed: Notify::new(),
            },
            ports: Mutex::new(Arc::new(PortPool::new(
                settings.start_port,
                settings.end_port,
            ))),
            settings: Mutex::new(settings.clone()),
            reaper_wake: Notify::new(),
            shutting_down: AtomicBool::new(false),
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
            starts: AtomicU64::new(0),
            start_failures: AtomicU64::new(0),
            stops: AtomicU64::new(0),
            queue_rejections: AtomicU64::new(0),
            queue_timeouts: AtomicU64::new(0),
            recycles: AtomicU64::new(0),
            prewarmed: Mutex::new(prewarm::PrewarmMarks::default()),
            current: ArcSwapOption::empty(),
            reloader: OnceLock::new(),
            weak_self: weak_self.clone(),
        })
    }

    /// Sets where tenant hooks with `reload_config` send their reloads.
    pub fn set_reloader(&self, reloader: Reloader) {
        let _ = self.reloader.set(reloader);
    }

    /// Returns the spec of `requested`'s tenant in the current config. A
    /// request that began before a reload carries the old spec, and
    /// starting or keeping processes by it would undo the reload. So the
    /// current spec wins while the tenant keeps its name and path.
    /// Returns `None` when that is `requested` itself, as it is for all
    /// but requests that began before a reload.
    fn current_spec(&self, requested: &Arc<TenantSpec>) -> Option<Arc<TenantSpec>> {
        let current = self.current.load();
        let spec = current.as_ref()?.tenants.by_name(&requested.name)?;
        (spec.path == requested.path && !Arc::ptr_eq(spec, requested)).then(|| spec.clone())
    }

    fn this(&self) -> Arc<Supervisor> {
        self.weak_self
            .upgrade()
            .expect("supervisor used after drop")
    }

    fn slot(&self, name: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get(name) {
            return slot.clone();
        }
        let slot = Arc::new(Slot {
            name: name.to_string(),
            state: Mutex::new(SlotState {
                phase: Phase::Stopped,
                failures: 0,
                last_failure: None,
                replaces: None,
            }),
        });
        slots.insert(name.to_string(), slot.clone());
        slot
    }

    /// Returns the spec of tenant `name` in the current config.
    fn configured_spec(&self, name: &str) -> Option<Arc<TenantSpec>> {
        self.current
            .load()
            .as_ref()
            .and_then(|snapshot| snapshot.tenants.by_name(name))
            .cloned()
    }

    /// Returns a lease on a running process of `spec`, starting one if
    /// needed. Waits at most the tenant's `startup_timeout` for a start,
    /// then at most its `queue_timeout` for a place in the process's
    /// request queue, if it has one.
    pub async fn acquire(&self, spec: &Arc<TenantSpec>) -> Result<Lease, AcquireError> {
        // Read the clock only for a request that has to wait: a running
        // tenant admits at the first step.
        let mut deadline = None;
        let slot = self.slot(&spec.name);
        loop {
            let newer = self.current_spec(spec);
            let spec = newer.as_ref().unwrap_or(spec);
            if self.shutting_down.load(Ordering::Acquire) {
                return Err(AcquireError::ShuttingDown);
            }
            match self.advance(&slot, spec, true) {
                Wait::Admit(lease) => {
                    // Only a request that waits in a queue needs the
                    // queue's state, so it is boxed and stays out of every
                    // other request's.
                    let queue = lease.instance.tuning.load().queue.clone();
                    let lease = match queue {
                        None => lease,
                        Some(queue) => Box::pin(self.queue(lease, &queue)).await?,
                    };
                    return Ok(self.count(lease));
                }
                Wait::Ready(_) => continue,
                wait => {
                    let deadline = *deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + spec.startup_timeout);
                    // Boxed like the queue wait, because requests to a
                    // running tenant do not reach this branch.
                    Box::pin(self.wait(wait, deadline)).await?;
                }
            }
        }
    }

    /// Returns the running process of `spec`, starting it if needed, and
    /// waits at most until `deadline`. Takes no lease: it serves prewarming
    /// and the control API.
    async fn ensure_running(
        &self,
        slot: &Arc<Slot>,
        spec: &Arc<TenantSpec>,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Instance>, AcquireError> {
        loop {
            if self.shutting_down.load(Ordering::Acquire) {
                return Err(AcquireError::ShuttingDown);
            }
            match self.advance(slot, spec, false) {
                Wait::Ready(instance) => return Ok(instance),
                Wait::Admit(_) => continue,
                wait => self.wait(wait, deadline).await?,
            }
        }
    }

    /// Moves `slot` one step toward a running process of `spec`: returns
    /// the running process (with a lease when `lease` is set), or starts
    /// or replaces one and returns what to wait for.
    fn advance(&self, slot: &Arc<Slot>, spec: &Arc<TenantSpec>, lease: bool) -> Wait {
        let mut state = lock(&slot.state);
        match &state.phase {
            Phase::Running(instance)
                if (Arc::ptr_eq(&instance.spec, spec) || instance.spec.launch == spec.launch)
                    && !instance.stopping() =>
            {
                if lease {
                    Wait::Admit(instance.lease())
                } else {
                    Wait::Ready(instance.clone())
                }
            }
            Phase::Running(instance) => {
                let old = instance.clone();
                self.replace(slot, &mut state, &old, spec, Replacement::SpecChanged)
            }
            Phase::Starting(status) => Wait::Start(status.clone()),
            Phase::Stopping(instance) => Wait::Exit(instance.clone()),
            Phase::Stopped => Wait::Start(self.begin_start(slot, &mut state, spec)),
        }
    }

    /// Waits until a start finished or a process exited, at most until
    /// `deadline`. A failed start is an error.
    async fn wait(&self, wait: Wait, deadline: tokio::time::Instant) -> Result<(), AcquireError> {
        match wait {
            Wait::Start(mut status) => {
                let outcome = tokio::time::timeout_at(
                    deadline,
                    status.wait_for(|s| !matches!(s, StartStatus::Pending)),
                )
                .await;
                match outcome {
                    Err(_) => Err(AcquireError::StartupTimeout),
                    // The start task ended without a verdict: look again.
                    Ok(Err(_)) => Ok(()),
                    Ok(Ok(status)) => match &*status {
                        StartStatus::Failed(message) => {
                            Err(AcquireError::StartFailed(message.clone()))
                        }
                        _ => Ok(()),
                    },
                }
            }
            Wait::Exit(instance) => tokio::time::timeout_at(deadline, instance.wait_exited())
                .await
                .map_err(|_| AcquireError::StartupTimeout),
            Wait::Admit(_) | Wait::Ready(_) => Ok(()),
        }
    }

    /// Takes a place in the process's request queue.
    async fn queue(&self, mut lease: Lease, queue: &RequestQueue) -> Result<Lease, AcquireError> {
        match queue.admit().await {
            Ok(permit) => {
                lease.permit = Some(permit);
                Ok(lease)
            }
            Err(error) => Err(self.reject(&lease.instance, queue, error)),
        }
    }

    /// Counts the request toward `max_requests`. The request that reaches
    /// `max_requests` is still served by this process; the next ones go
    /// to its replacement.
    fn count(&self, lease: Lease) -> Lease {
        let served = lease.instance.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let max_requests = lease.instance.tuning.load().recycle.max_requests;
        if max_requests.is_some_and(|max| served >= max) {
            self.recycle(&lease.instance, Replacement::MaxRequests(served));
        }
        lease
    }

    /// Counts a request the queue turned away and returns its error.
    fn reject(&self, instance: &Instance, queue: &RequestQueue, error: QueueError) -> AcquireError {
        let (counter, outcome, reason) = match error {
            QueueError::Full => (
                &self.queue_rejections,
                AcquireError::QueueFull,
                "request queue full",
            ),
            QueueError::TimedOut => (
                &self.queue_timeouts,
                AcquireError::QueueTimeout,
                "timed out in the request queue",
            ),
        };
        let count = counter.fetch_add(1, Ordering::Relaxed) + 1;
        // The first one and then every 100th are logged, so an overload
        // cannot flood the log; the counters have the exact numbers.
        if count == 1 || count % 100 == 0 {
            let settings = queue.settings();
            warn!(
                tenant = %instance.spec.name,
                pid = instance.pid,
                max_concurrency = settings.max_concurrency,
                max_queue = settings.max_queue,
                total = count,
                "{reason}; request answered with 503"
            );
        }
        outcome
    }

    /// Replaces the running `old` by a new process of `spec`. `old` stops
    /// taking requests and finishes those it has while the new process
    /// starts. New requests wait for the new one, each up to its
    /// `startup_timeout`. When both would share a PIDFILE they cannot
    /// overlap, because Rails refuses to boot beside a live pid, so the
    /// new one starts once the old one has exited. Every replacement goes
    /// through here: a reload that changed the launch spec,
    /// `max_requests`, `recycle_memory` and an operator's restart.
    fn replace(
        &self,
        slot: &Arc<Slot>,
        state: &mut SlotState,
        old: &Arc<Instance>,
        spec: &Arc<TenantSpec>,
        cause: Replacement,
    ) -> Wait {
        info!(tenant = %spec.name, pid = old.pid, cause = %cause, "replacing the tenant process");
        if cause.is_recycle() {
            self.recycles.fetch_add(1, Ordering::Relaxed);
        }
        let shared_pidfile = old.spec.pidfile.is_some() && old.spec.pidfile == spec.pidfile;
        if shared_pidfile {
            // NOTE: an open WebSocket tunnel holds a lease too, so with a
            // shared PIDFILE it delays the replacement until it closes.
            state.phase = Phase::Stopping(old.clone());
            old.drain();
            self.start_after_exit(slot, state, old);
            Wait::Exit(old.clone())
        } else {
            old.drain();
            Wait::Start(self.begin_start(slot, state, spec))
        }
    }

    /// Starts the tenant of `slot` once `old` has exited, unless a request
    /// did so first, so a replacement is running without waiting for the
    /// next request.
    fn start_after_exit(&self, slot: &Arc<Slot>, state: &mut SlotState, old: &Arc<Instance>) {
        state.replaces = Some(old.id);
        let supervisor = self.this();
        let slot = slot.clone();
        let old = old.clone();
        tokio::spawn(async move {
            old.wait_exited().await;
            supervisor.start_replacement(&slot, old.id);
        });
    }

    /// Starts the replacement of process `old_id` from the current config,
    /// if the tenant is stopped, still configured, and the replacement was
    /// not called off.
    fn start_replacement(&self, slot: &Arc<Slot>, old_id: u64) {
        if self.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let spec = self.configured_spec(&slot.name);
        let mut state = lock(&slot.state);
        if state.replaces != Some(old_id) {
            return;
        }
        state.replaces = None;
        if let (Some(spec), Phase::Stopped) = (spec, &state.phase) {
            self.begin_start(slot, &mut state, &spec);
        }
    }

    /// Puts `slot` into the starting phase and starts `spec` in the
    /// background; the receiver reports the outcome.
    fn begin_start(
        &self,
        slot: &Arc<Slot>,
        state: &mut SlotState,
        spec: &Arc<TenantSpec>,
    ) -> watch::Receiver<StartStatus> {
        let (sender, receiver) = watch::channel(StartStatus::Pending);
        state.phase = Phase::Starting(receiver.clone());
        let supervisor = self.this();
        let slot = slot.clone();
        let spec = spec.clone();
        tokio::spawn(async move { supervisor.start(slot, spec, sender).await });
        receiver
    }

    /// Starts one process for `slot` and reports the outcome to every
    /// request waiting on `status`.
    async fn start(
        self: Arc<Self>,
        slot: Arc<Slot>,
        spec: Arc<TenantSpec>,
        status: watch::Sender<StartStatus>,
    ) {
        let backoff = {
            let state = lock(&slot.state);
            backoff_remaining(state.failures, state.last_failure)
        };
        if !backoff.is_zero() {
            info!(tenant = %spec.name, delay_ms = backoff.as_millis() as u64, "delaying restart after failures");
            tokio::time::sleep(backoff).await;
        }

        let result = self.launch(&spec).await;
        let mut state = lock(&slot.state);
        match result {
            Ok(instance) => {
                if self.shutting_down.load(Ordering::Acquire) {
                    instance.request_stop();
                    state.phase = Phase::Stopping(instance);
                    status.send_replace(StartStatus::Failed("navigator is shutting down".into()));
                    return;
                }
                state.phase = Phase::Running(instance);
                status.send_replace(StartStatus::Ready);
                // The reaper sleeps until the earliest idle deadline it
                // knows of; a new instance brings a new deadline.
                self.reaper_wake.notify_one();
            }
            Err(message) => {
                self.start_failures.fetch_add(1, Ordering::Relaxed);
                state.failures = state.failures.saturating_add(1);
                state.last_failure = Some(Instant::now());
                state.phase = Phase::Stopped;
                let next = backoff_for(state.failures);
                error!(
                    tenant = %spec.name,
                    failures = state.failures,
                    retry_after_ms = next.as_millis() as u64,
                    error = %message,
                    "tenant failed to start"
                );
                status.send_replace(StartStatus::Failed(message.into()));
                // A prewarmed tenant is tried again at once; the new start
                // first waits out the backoff.
                if self.is_prewarmed(&spec.name) && !self.shutting_down.load(Ordering::Acquire) {
                    if let Some(spec) = self.configured_spec(&spec.name) {
                        self.begin_start(&slot, &mut state, &spec);
                    }
                }
            }
        }
    }

    /// Takes a pool place, a port and the PIDFILE, spawns the process and
    /// waits until it answers.
    async fn launch(&self, spec: &Arc<TenantSpec>) -> Result<Arc<Instance>, String> {
        let permit = self.take_pool_place(spec).await?;
        let ports = lock(&self.ports).clone();
        let port_lease = ports
            .acquire()
            .map_err(|e| format!("no port for tenant {}: {e}", spec.name))?;
        let port = port_lease.port();

        if let Some(path) = &spec.pidfile {
            let cwd = spec.launch.cwd.as_deref();
            pidfile::prepare(path, &spec.launch.program, cwd).await?;
        }

        let cgroup = spec
            .launch
            .memory_limit
            .and_then(|limit| cgroup::for_tenant(&spec.name, limit));
        let spawn_spec = SpawnSpec {
            label: spec.name.clone(),
            program: fill_port(&spec.launch.program, port),
            args: spec
                .launch
                .args
                .iter()
                .map(|arg| fill_port(arg, port))
                .collect(),
            cwd: spec.launch.cwd.clone(),
            env: spec
                .launch
                .env
                .iter()
                .map(|(name, value)| (name.clone(), fill_port(value, port)))
                .collect(),
            user: spec.launch.user.clone(),
            group: spec.launch.group.clone(),
            cgroup: cgroup.as_ref().map(|cgroup| cgroup.path().to_path_buf()),
        };
        let output = OutputSink::new(spec.name.clone())
            .with_hook(log_shipping::tenant_output_hook(&spec.name));
        let child = process::spawn(&spawn_spec, output).map_err(|e| e.to_string())?;
        self.starts.fetch_add(1, Ordering::Relaxed);
        let started_at = Instant::now();
        let (stop_requested, _) = watch::channel(false);
        let (exited, _) = watch::channel(false);
        let instance = Arc::new(Instance {
            tuning: ArcSwap::from_pointee(Tuning::for_spec(spec)),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            spec: spec.clone(),
            port,
            pid: child.pid(),
            started_at,
            in_flight: AtomicUsize::new(0),
            websockets: AtomicUsize::new(0),
            last_activity: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            requests: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            stop_requested,
            stopping: AtomicBool::new(false),
            exited,
            stderr_tail: Arc::new(Mutex::new(Vec::new())),
            epoch: self.epoch,
        });
        info!(
            tenant = %spec.name,
            pid = instance.pid,
            port,
            user = spec.launch.user.as_deref().unwrap_or("-"),
            memory_limit = %cgroup.as_ref().map_or("-".to_string(), |c| cgroup::format_bytes(c.limit())),
            cgroup = %cgroup.as_ref().map_or("-".to_string(), |c| c.path().display().to_string()),
            "tenant process started"
        );
        lock(&self.instances).insert(instance.id, instance.clone());

        let (exit_report, mut exit_status) = watch::channel(None::<Result<ExitStatus, String>>);
        let monitor = Monitor {
            supervisor: self.this(),
            instance: instance.clone(),
            child,
            _port: port_lease,
            _permit: permit,
            exit_report,
            stderr_tail: instance.stderr_tail.clone(),
            cgroup,
        };
        tokio::spawn(monitor.run());

        let exited = async move {
            if exit_status.wait_for(|s| s.is_some()).await.is_err() {
                return Err(std::io::Error::other("the process monitor ended"));
            }
            let report = exit_status.borrow().clone();
            match report {
                Some(Ok(status)) => Ok(status),
                Some(Err(error)) => Err(std::io::Error::other(error)),
                None => Err(std::io::Error::other("no exit status")),
            }
        };
        tokio::pin!(exited);

        if !spec.start_delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(spec.start_delay) => {}
                report = &mut exited => {
                    let report = match report {
                        Ok(status) => process::describe_status(status),
                        Err(error) => error.to_string(),
                    };
                    return Err(format!("exited during start_delay: {report}{}", self.stderr_note(&instance)));
                }
            }
        }

        let deadline = spec.ready_timeout.saturating_sub(started_at.elapsed());
        match readiness::wait_ready(port, &spec.health_check, deadline, exited).await {
            Ok(elapsed) => {
                info!(
                    tenant = %spec.name,
                    pid = instance.pid,
                    port,
                    ready_ms = started_at.elapsed().as_millis() as u64,
                    probe_ms = elapsed.as_millis() as u64,
                    "tenant ready"
                );
                instance.ready.store(true, Ordering::Release);
                crate::metrics::TENANT_START_SECONDS.observe(started_at.elapsed());
                // A failed start hook is logged in run_tenant_hooks. The
                // tenant passed its probe, so it is served anyway.
                let _ =
                    hooks::run_tenant_hooks(spec, port, TenantEvent::Start, self.reloader.get())
                        .await;
                Ok(instance)
            }
            Err(error) => {
                instance.request_stop();
                let message = match error {
                    ReadyError::Exited(status) => format!(
                        "exited before it was ready: {}{}",
                        process::describe_status(status),
                        self.stderr_note(&instance)
                    ),
                    ReadyError::WaitFailed(error) => {
                        format!("waiting for the process failed: {error}")
                    }
                    ReadyError::Timeout(after) => format!(
                        "not ready within {} ms (no HTTP answer on port {port} at {})",
                        after.as_millis(),
                        spec.health_check
                    ),
                };
                Err(message)
            }
        }
    }

    /// The last stderr lines of an exited instance, for failure messages.
    fn stderr_note(&self, instance: &Instance) -> String {
        let tail = lock(&instance.stderr_tail);
        match tail.len() {
            0 => String::new(),
            n => format!("; last stderr: {}", tail[n.saturating_sub(5)..].join(" | ")),
        }
    }

    /// Takes a place in the pool, first stopping the least recently used
    /// idle tenant when the pool is full.
    async fn take_pool_place(&self, spec: &TenantSpec) -> Result<GatePermit, String> {
        let deadline = tokio::time::Instant::now() + spec.ready_timeout;
        loop {
            let freed = self.gate.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.gate.try_take() {
                return Ok(GatePermit(self.weak_self.clone()));
            }
            match self.least_recently_used_idle(&spec.name) {
                Some(victim) => {
                    if self.stop_idle_instance(&victim) {
                        info!(
                            tenant = %victim.spec.name,
                            pid = victim.pid,
                            for_tenant = %spec.name,
                            "stopping least recently used tenant to make room"
                        );
                        victim.wait_exited().await;
                    }
                }
                None => {
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        let max = self.gate.max.load(Ordering::Relaxed);
                        return Err(format!("all {max} pool places are busy (pools.max_size)"));
                    }
                }
            }
        }
    }

    /// Finds the idle process to evict: not of tenant `except`, not
    /// prewarmed, idle the longest.
    fn least_recently_used_idle(&self, except: &str) -> Option<Arc<Instance>> {
        let candidates: Vec<Arc<Instance>> = lock(&self.instances)
            .values()
            .filter(|i| i.spec.name != except && i.is_idle() && !i.stopping())
            .cloned()
            .collect();
        candidates
            .into_iter()
            .filter(|i| !self.is_prewarmed(&i.spec.name))
            .max_by_key(|i| i.idle_for())
    }

    /// Stops `instance` if it is still idle. Leases are taken with the
    /// slot locked, and the check is made under the same lock, so a
    /// request that arrives in between is never cut off. Returns whether
    /// the stop was requested.
    fn stop_idle_instance(&self, instance: &Arc<Instance>) -> bool {
        let slot = self.slot(&instance.spec.name);
        let mut state = lock(&slot.state);
        if !instance.is_idle() || instance.stopping() {
            return false;
        }
        if let Phase::Running(current) = &state.phase {
            if current.id == instance.id {
                state.phase = Phase::Stopping(instance.clone());
            }
        }
        drop(state);
        instance.request_stop();
        true
    }

    /// Asks `instance` to stop; requests for its tenant wait for the exit.
    fn stop_instance(&self, instance: &Arc<Instance>) {
        let slot = self.slot(&instance.spec.name);
        let mut state = lock(&slot.state);
        if let Phase::Running(current) = &state.phase {
            if current.id == instance.id {
                state.phase = Phase::Stopping(instance.clone());
            }
        }
        drop(state);
        instance.request_stop();
    }

    /// Called by a monitor when its process is gone. A prewarmed tenant
    /// whose process exited on its own is started again (after the
    /// backoff, when it keeps failing).
    fn on_exit(&self, instance: &Arc<Instance>, unexpected: bool) {
        lock(&self.instances).remove(&instance.id);
        self.stops.fetch_add(1, Ordering::Relaxed);
        let restart = unexpected
            && self.is_prewarmed(&instance.spec.name)
            && !self.shutting_down.load(Ordering::Acquire);
        let restart_spec = restart
            .then(|| self.configured_spec(&instance.spec.name))
            .flatten();
        let slot = self.slot(&instance.spec.name);
        let mut state = lock(&slot.state);
        let current = match &state.phase {
            Phase::Running(current) | Phase::Stopping(current) => current.id == instance.id,
            _ => false,
        };
        // An instance that never became current (a failed start) leaves
        // the failure count to the start task.
        if !current {
            return;
        }
        state.phase = Phase::Stopped;
        if unexpected && instance.started_at.elapsed() < STABLE_UPTIME {
            state.failures = state.failures.saturating_add(1);
            state.last_failure = Some(Instant::now());
        } else {
            state.failures = 0;
        }
        if let Some(spec) = restart_spec {
            info!(tenant = %spec.name, "starting the prewarmed tenant again");
            self.begin_start(&slot, &mut state, &spec);
        }
    }

    /// Stops idle tenants after `pools.timeout`; runs until shutdown.
    pub async fn run_idle_reaper(self: Arc<Self>) {
        loop {
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            let timeout = lock(&self.settings).idle_timeout;
            let mut next_check = Duration::from_secs(3600);
            if !timeout.is_zero() {
                let candidates: Vec<Arc<Instance>> =
                    lock(&self.instances).values().cloned().collect();
                for instance in candidates {
                    if instance.stopping() || self.is_prewarmed(&instance.spec.name) {
                        continue;
                    }
                    if !instance.is_idle() {
                        next_check = next_check.min(timeout);
                        continue;
                    }
                    let idle = instance.idle_for();
                    if idle >= timeout {
                        if self.stop_idle_instance(&instance) {
                            info!(
                                tenant = %instance.spec.name,
                                pid = instance.pid,
                                idle_secs = idle.as_secs(),
                                "stopping idle tenant"
                            );
                        }
                    } else {
                        next_check = next_check.min(timeout - idle);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(next_check + Duration::from_millis(5)) => {}
                _ = self.reaper_wake.notified() => {}
            }
        }
    }

    /// Applies a new config: pool settings and prewarm marks now, queue
    /// and recycling settings of running processes now, and tenants that
    /// are gone from it drain and stop. Changed tenants are replaced on
    /// their next request, or at once by [`Supervisor::prewarm`] when
    /// prewarmed.
    pub fn apply(&self, snapshot: &Arc<Snapshot>) {
        self.current.store(Some(snapshot.clone()));
        let settings = snapshot.pools.clone();
        self.gate.max.store(settings.max_size, Ordering::Relaxed);
        {
            let mut ports = lock(&self.ports);
            if (ports.start(), ports.end()) != (settings.start_port, settings.end_port) {
                *ports = Arc::new(PortPool::new(settings.start_port, settings.end_port));
            }
        }
        *lock(&self.settings) = settings;
        self.gate.freed.notify_waiters();
        self.reaper_wake.notify_one();
        self.mark_prewarmed(snapshot);

        let instances: Vec<Arc<Instance>> = lock(&self.instances).values().cloned().collect();
        for instance in instances {
            let configured = snapshot
                .tenants
                .by_name(&instance.spec.name)
                .filter(|spec| spec.path == instance.spec.path);
            if let Some(spec) = configured {
                instance.retune(spec);
            } else {
                info!(tenant = %instance.spec.name, pid = instance.pid, "tenant removed from config; stopping once idle");
                let slot = self.slot(&instance.spec.name);
                let mut state = lock(&slot.state);
                if let Phase::Running(current) = &state.phase {
                    if current.id == instance.id {
                        state.phase = Phase::Stopped;
                    }
                }
                drop(state);
                instance.drain();
            }
        }
    }

    /// Stops every tenant process in parallel and waits for them.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.reaper_wake.notify_one();
        let instances: Vec<Arc<Instance>> = lock(&self.instances).values().cloned().collect();
        for instance in &instances {
            self.stop_instance(instance);
        }
        for instance in &instances {
            instance.wait_exited().await;
        }
    }

    /// The state of every tenant that has a slot.
    pub fn status(&self) -> Vec<TenantStatus> {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        let mut list: Vec<TenantStatus> = slots
            .iter()
            .map(|slot| {
                let state = lock(&slot.state);
                let (name, instance) = match &state.phase {
                    Phase::Stopped => ("stopped", None),
                    Phase::Starting(_) => ("starting", None),
                    Phase::Running(i) => ("running", Some(i.clone())),
                    Phase::Stopping(i) => ("stopping", Some(i.clone())),
                };
                TenantStatus {
                    name: slot.name.clone(),
                    state: name,
                    port: instance.as_ref().map(|i| i.port),
                    pid: instance.as_ref().map(|i| i.pid),
                    uptime: instance.as_ref().map(|i| i.started_at.elapsed()),
                    idle_for: instance.as_ref().map(|i| i.idle_for()),
                    in_flight: instance.as_ref().map_or(0, |i| i.in_flight()),
                    queued: instance.as_ref().map_or(0, |i| i.queued()),
                    requests: instance.as_ref().map_or(0, |i| i.requests()),
                    prewarm: self.is_prewarmed(&slot.name),
                }
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Live instances, including ones draining after a reload.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        lock(&self.instances).values().cloned().collect()
    }
}

/// The outcome of `advance`: a running process, or what to wait for.
enum Wait {
    /// The running process, with a lease for a request.
    Admit(Lease),
    /// The running process, without a lease.
    Ready(Arc<Instance>),
    Start(watch::Receiver<StartStatus>),
    Exit(Arc<Instance>),
}

fn backoff_for(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exponent = (failures - 1).min(6);
    (Duration::from_secs(1) * 2u32.pow(exponent)).min(MAX_BACKOFF)
}

fn backoff_remaining(failures: u32, last_failure: Option<Instant>) -> Duration {
    match last_failure {
        Some(at) => backoff_for(failures).saturating_sub(at.elapsed()),
        None => Duration::ZERO,
    }
}

/// Owns one child process: waits for it, stops it on request, and cleans
/// up (pool place, port, PIDFILE) once it is gone.
struct Monitor {
    supervisor: Arc<Supervisor>,
    instance: Arc<Instance>,
    child: ChildProcess,
    _port: PortLease,
    _permit: GatePermit,
    exit_report: watch::Sender<Option<Result<ExitStatus, String>>>,
    stderr_tail: Arc<Mutex<Vec<String>>>,
    /// The memory-limited cgroup the process runs in, removed after it exits.
    cgroup: Option<TenantCgroup>,
}

impl Monitor {
    async fn run(mut self) {
        let mut stop = self.instance.stop_requested.subscribe();
        let name = self.instance.spec.name.clone();
        let pid = self.instance.pid;
        let grace = lock(&self.supervisor.settings).grace_period;

        let (status, unexpected) = tokio::select! {
            status = self.child.wait_exit() => (status, true),
            _ = async { let _ = stop.wait_for(|requested| *requested).await; } => {
                // A failed stop hook is logged in run_tenant_hooks and does
                // not keep the tenant running.
                if self.instance.ready.load(Ordering::Acquire) {
                    let _ = hooks::run_tenant_hooks(
                        &self.instance.spec,
                        self.instance.port,
                        TenantEvent::Stop,
                        self.supervisor.reloader.get(),
                    )
                    .await;
                }
                (self.child.stop(grace).await, false)
            }
        };

        // The counters are read before the cgroup is removed; removing an
        // empty one before the slot is freed lets a replacement reuse its
        // name.
        let memory = self
            .cgroup
            .as_mut()
            .map(|cgroup| cgroup.finish(status.as_ref().ok().copied()));

        // Cleanup comes before anything slow, so requests stop being
        // routed to a dead process at once. The PIDFILE goes first: once
        // the slot is stopped a replacement may start and write its own.
        if let Some(path) = &self.instance.spec.pidfile {
            pidfile::remove(path);
        }
        self.supervisor.on_exit(&self.instance, unexpected);

        if let Some(memory) = memory.as_ref().filter(|memory| memory.oom_killed) {
            error!(
                tenant = %name,
                pid,
                limit = %cgroup::format_bytes(memory.limit),
                limit_bytes = memory.limit,
                oom_kills = memory.usage.oom_kills.unwrap_or(1),
                cgroup = %memory.path.display(),
                "tenant killed by the kernel OOM killer: memory limit reached"
            );
        }

        self.child.drain_output().await;
        let report = match &status {
            Ok(status) => process::describe_status(*status),
            Err(error) => format!("wait failed: {error}"),
        };
        let tail = self.child.stderr_tail();
        let memory_peak = memory
            .and_then(|memory| memory.usage.peak)
            .map_or("-".to_string(), cgroup::format_bytes);
        if unexpected {
            warn!(tenant = %name, pid, status = %report, %memory_peak, stderr = ?tail, "tenant process exited unexpectedly");
        } else {
            info!(tenant = %name, pid, status = %report, %memory_peak, "tenant process stopped");
        }
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove().await;
        }
        *lock(&self.stderr_tail) = tail;
        self.exit_report
            .send_replace(Some(status.map_err(|e| e.to_string())));
        drop(self._port);
        drop(self._permit);
        self.instance.exited.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute() {
        let delays: Vec<u64> = (0..9).map(|n| backoff_for(n).as_secs()).collect();
        assert_eq!(delays, vec![0, 1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
