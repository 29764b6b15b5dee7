//! The state shared by every connection: the current config snapshot, the
//! tenant supervisor and the upstream client.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::compile::Snapshot;
use crate::fly::Fly;
use crate::proxy;
use crate::supervisor::tenants::Supervisor;

pub struct App {
    /// The config file reloads read.
    pub config_path: PathBuf,
    snapshot: ArcSwap<Snapshot>,
    pub supervisor: Arc<Supervisor>,
    pub client: proxy::Client,
    /// The Fly environment, read once at startup, and the machine idle state.
    pub fly: Fly,
}

impl App {
    pub fn new(config_path: PathBuf, snapshot: Arc<Snapshot>) -> Arc<App> {
        let supervisor = Supervisor::new(&snapshot.pools);
        Arc::new(App {
            config_path,
            snapshot: ArcSwap::new(snapshot),
            supervisor,
            client: proxy::new_client(),
            fly: Fly::from_process(),
        })
    }

    /// The snapshot a new request runs under; it keeps it to the end even
    /// if a reload swaps in another meanwhile.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `snapshot` current for new requests and reconciles tenants.
    pub fn install(&self, snapshot: Arc<Snapshot>) {
        self.supervisor.apply(&snapshot);
        self.snapshot.store(snapshot);
    }
}
