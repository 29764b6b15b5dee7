//! Prewarming: tenants marked `prewarm` (by their own key, by a
//! `pools.prewarm` glob, or by an operator through the control API) are
//! started without waiting for a request, at boot and after each reload,
//! started again when their process exits on its own, and exempt from idle
//! stops and LRU eviction.
//!
//! Prewarmed processes hold pool places like any other. At most
//! `pools.max_size` tenants are prewarmed; beyond that the first ones in
//! config order win and a warning names the others.

use std::collections::HashSet;
use std::sync::Arc;

use tracing::{info, warn};

use super::{AcquireError, Instance, Supervisor, lock};
use crate::compile::{Snapshot, TenantSpec};

/// The tenants that are prewarmed now.
#[derive(Debug, Default)]
pub(super) struct PrewarmMarks {
    /// Marked by the config, in config order, at most `max_size`.
    configured: Vec<String>,
    /// Marked through the control API. Kept across reloads while the
    /// tenant stays configured; removed by a stop through the control API.
    operator: HashSet<String>,
}

impl PrewarmMarks {
    fn contains(&self, name: &str) -> bool {
        self.operator.contains(name) || self.configured.iter().any(|n| n == name)
    }

    fn count(&self) -> usize {
        self.configured.len()
            + self
                .operator
                .iter()
                .filter(|name| !self.configured.contains(name))
                .count()
    }

    fn names(&self) -> Vec<String> {
        let mut names = self.configured.clone();
        names.extend(
            self.operator
                .iter()
                .filter(|name| !self.configured.contains(name))
                .cloned(),
        );
        names
    }
}

/// Why a tenant could not be prewarmed through the control API.
#[derive(Debug, Clone)]
pub enum PrewarmError {
    /// `pools.max_size` tenants are prewarmed already.
    PoolFull { max_size: usize },
    /// The process did not become ready.
    Start(AcquireError),
}

impl Supervisor {
    /// Returns whether tenant `name` is prewarmed.
    pub fn is_prewarmed(&self, name: &str) -> bool {
        lock(&self.prewarmed).contains(name)
    }

    /// Recomputes the prewarm marks for `snapshot`.
    pub(super) fn mark_prewarmed(&self, snapshot: &Snapshot) {
        let max_size = snapshot.pools.max_size;
        let marked: Vec<&Arc<TenantSpec>> = snapshot
            .tenants
            .iter()
            .filter(|spec| spec.supervision.prewarm)
            .collect();
        if marked.len() > max_size {
            let skipped: Vec<&str> = marked[max_size..]
                .iter()
                .map(|spec| spec.name.as_str())
                .collect();
            warn!(
                marked = marked.len(),
                max_size,
                skipped = ?skipped,
                "more tenants are marked prewarm than pools.max_size allows; prewarming the first ones in config order"
            );
        }
        for pattern in &snapshot.pools.prewarm_unmatched {
            warn!(pattern = %pattern, "applications.pools.prewarm pattern matches no tenant");
        }

        let mut marks = lock(&self.prewarmed);
        marks.configured = marked
            .iter()
            .take(max_size)
            .map(|spec| spec.name.clone())
            .collect();
        let configured = &marks.configured;
        let mut operator: Vec<String> = marks
            .operator
            .iter()
            .filter(|name| snapshot.tenants.by_name(name).is_some())
            .filter(|name| !configured.contains(name))
            .cloned()
            .collect();
        operator.sort();
        let room = max_size.saturating_sub(configured.len());
        if operator.len() > room {
            warn!(
                dropped = ?&operator[room..],
                max_size,
                "tenants prewarmed through the control API exceed pools.max_size after the reload; no longer prewarmed"
            );
            operator.truncate(room);
        }
        marks.operator = operator.into_iter().collect();
    }

    /// Starts every prewarmed tenant that is not running, in the
    /// background, and replaces one whose launch spec changed. Called once
    /// navigator listens and after each reload.
    pub fn prewarm(&self) {
        let names = lock(&self.prewarmed).names();
        for name in names {
            let Some(spec) = self.configured_spec(&name) else {
                continue;
            };
            let supervisor = self.this();
            tokio::spawn(async move {
                let slot = supervisor.slot(&spec.name);
                let deadline = tokio::time::Instant::now() + spec.ready_timeout;
                // A failed start is logged where it happens, and a
                // prewarmed tenant is retried after the backoff.
                if let Ok(instance) = supervisor.ensure_running(&slot, &spec, deadline).await {
                    info!(tenant = %spec.name, pid = instance.pid, port = instance.port, "tenant prewarmed");
                }
            });
        }
    }

    /// Marks tenant `spec` prewarmed until the next stop through the
    /// control API, and waits until its process is ready (at most its
    /// `ready_timeout`).
    pub async fn prewarm_tenant(
        &self,
        spec: &Arc<TenantSpec>,
    ) -> Result<Arc<Instance>, PrewarmError> {
        {
            let max_size = lock(&self.settings).max_size;
            let mut marks = lock(&self.prewarmed);
            if !marks.contains(&spec.name) {
                if marks.count() >= max_size {
                    return Err(PrewarmError::PoolFull { max_size });
                }
                marks.operator.insert(spec.name.clone());
            }
        }
        info!(tenant = %spec.name, "tenant marked prewarm through the control API");
        let slot = self.slot(&spec.name);
        let deadline = tokio::time::Instant::now() + spec.ready_timeout;
        self.ensure_running(&slot, spec, deadline)
            .await
            .map_err(PrewarmError::Start)
    }

    /// Removes an operator's prewarm mark; the config's marks stay.
    pub(super) fn unmark_operator_prewarm(&self, name: &str) {
        lock(&self.prewarmed).operator.remove(name);
    }
}
