//! The state shared by every connection: the current config snapshot, the
//! tenant supervisor and the upstream client.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::cable;
use crate::compile::Snapshot;
use crate::fly::Fly;
use crate::managed::ManagedProcesses;
use crate::proxy;
use crate::reload::{ReloadQueue, Reloader};
use crate::supervisor::tenants::Supervisor;

pub struct App {
    /// The config file SIGHUP reloads. A `reload_config` naming another
    /// file switches it.
    config_path: Mutex<PathBuf>,
    snapshot: ArcSwap<Snapshot>,
    pub supervisor: Arc<Supervisor>,
    pub client: proxy::Client,
    /// The built-in WebSocket pub/sub; it outlives reloads, so open
    /// connections survive them.
    pub cable: Arc<cable::Hub>,
    /// Queues reloads for the lifecycle loop (hooks, CGI scripts).
    pub reloader: Reloader,
    /// The other end of `reloader`, until the lifecycle loop takes it.
    reload_queue: Mutex<Option<ReloadQueue>>,
    /// The helper processes of `managed_processes`.
    pub managed: Arc<ManagedProcesses>,
    /// When navigator started, for uptimes.
    pub started: Instant,
    pub started_at: SystemTime,
    /// Reloads applied since startup.
    reloads: AtomicU64,
    /// The Fly environment, read once at startup, and the machine idle state.
    pub fly: Fly,
}

impl App {
    pub fn new(config_path: PathBuf, snapshot: Arc<Snapshot>) -> Arc<App> {
        let supervisor = Supervisor::new(&snapshot.pools);
        let (reloader, reload_queue) = Reloader::channel();
        supervisor.set_reloader(reloader.clone());
        supervisor.apply(&snapshot);
        Arc::new(App {
            config_path: Mutex::new(config_path),
            snapshot: ArcSwap::new(snapshot),
            supervisor,
            client: proxy::new_client(),
            cable: cable::Hub::new(cable::Settings::from_env()),
            reloader,
            reload_queue: Mutex::new(Some(reload_queue)),
            managed: ManagedProcesses::new(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            reloads: AtomicU64::new(0),
            fly: Fly::from_process(),
        })
    }

    /// The snapshot a new request runs under; it keeps it to the end even
    /// if a reload swaps in another meanwhile.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Returns the current snapshot for a look that ends before the next
    /// await. Unlike `snapshot`, it adds no reference count.
    pub fn current(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Makes `snapshot` current for new requests and reconciles tenants.
    pub fn install(&self, snapshot: Arc<Snapshot>) {
        self.supervisor.apply(&snapshot);
        self.snapshot.store(snapshot);
        self.fly.idle.settings_changed();
    }

    /// Counts an applied reload.
    pub fn count_reload(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns the number of reloads applied since startup.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Returns the config file that a reload without a named file loads.
    pub fn config_path(&self) -> PathBuf {
        self.config_path
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn set_config_path(&self, path: PathBuf) {
        *self
            .config_path
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = path;
    }

    /// Hands the reload queue to the lifecycle loop; `None` after the
    /// first call.
    pub fn take_reload_queue(&self) -> Option<ReloadQueue> {
        self.reload_queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}
