//! Recycling: a tenant process is replaced by a fresh one after
//! `max_requests` admitted requests, when its process group's resident
//! memory exceeds `recycle_memory`, or when an operator restarts it. All
//! of these use `Supervisor::replace`, the path a reload takes for a
//! changed launch spec, so no request fails across the switch.
//! Also here: stopping a tenant on an operator's request.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{debug, error, info};

use super::{AcquireError, Instance, Phase, Supervisor, Wait, lock};
use crate::compile::TenantSpec;
use crate::supervisor::memory;

/// The cause of replacing a running process by a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// A reload changed the tenant's launch spec.
    SpecChanged,
    /// The process admitted this many requests, reaching `max_requests`.
    MaxRequests(u64),
    /// The process group's resident memory (`rss`, bytes) exceeded
    /// `recycle_memory` (`limit`, bytes).
    Memory { rss: u64, limit: u64 },
    /// An operator asked for a restart through the control API.
    Operator,
}

impl Replacement {
    /// Returns whether this is a recycle rather than a config change.
    pub fn is_recycle(self) -> bool {
        !matches!(self, Replacement::SpecChanged)
    }
}

impl fmt::Display for Replacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1024 * 1024;
        match self {
            Replacement::SpecChanged => f.write_str("launch spec changed"),
            Replacement::MaxRequests(count) => {
                write!(f, "max_requests reached after {count} requests")
            }
            Replacement::Memory { rss, limit } => write!(
                f,
                "resident memory {} MiB above recycle_memory {} MiB",
                rss / MIB,
                limit / MIB
            ),
            Replacement::Operator => f.write_str("restart requested"),
        }
    }
}

/// The outcome of a restart through the control API.
#[derive(Debug, Clone)]
pub struct Restarted {
    /// The process that was replaced; `None` when none was running.
    pub old_pid: Option<u32>,
    pub new: Arc<Instance>,
}

impl Supervisor {
    /// Replaces `instance` if it is still its tenant's current process and
    /// not stopping. Returns whether a replacement began.
    pub(super) fn recycle(&self, instance: &Arc<Instance>, cause: Replacement) -> bool {
        let spec = self
            .current_spec(&instance.spec)
            .unwrap_or_else(|| instance.spec.clone());
        let slot = self.slot(&instance.spec.name);
        let mut state = lock(&slot.state);
        let current = matches!(
            &state.phase,
            Phase::Running(running) if running.id == instance.id && !running.stopping()
        );
        if current {
            self.replace(&slot, &mut state, instance, &spec, cause);
        }
        current
    }

    /// Reads the resident memory of every process whose tenant has
    /// `recycle_memory`, every `pools.memory_check_interval`, and recycles
    /// those above it. Runs until shutdown.
    pub async fn run_memory_monitor(self: Arc<Self>) {
        loop {
            let interval = lock(&self.settings).memory_check_interval;
            tokio::time::sleep(interval).await;
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }

            let watched: Vec<(Arc<Instance>, u64)> = lock(&self.instances)
                .values()
                .filter(|i| i.ready.load(Ordering::Acquire) && !i.is_draining() && !i.stopping())
                .filter_map(|i| Some((i.clone(), i.tuning.load().recycle.memory?)))
                .collect();
            if watched.is_empty() {
                continue;
            }

            // Each tenant leads its own process group, so its pid is the
            // group id.
            let groups: HashSet<u32> = watched.iter().map(|(i, _)| i.pid).collect();
            let scan =
                tokio::task::spawn_blocking(move || memory::group_rss(Path::new("/proc"), &groups));
            let totals = match scan.await {
                Ok(totals) => totals,
                Err(failure) => {
                    error!(error = %failure, "reading tenant memory from /proc failed");
                    continue;
                }
            };

            for (instance, limit) in watched {
                let Some(&rss) = totals.get(&instance.pid) else {
                    continue;
                };
                debug!(tenant = %instance.spec.name, pid = instance.pid, rss_bytes = rss, limit_bytes = limit, "tenant memory");
                if rss > limit {
                    self.recycle(&instance, Replacement::Memory { rss, limit });
                }
            }
        }
    }

    /// Replaces the running process of `spec` by a new one, or starts one
    /// when none runs, and waits until the new one is ready: at most the
    /// drain of the old one and `ready_timeout`, together bounded by
    /// `ready_timeout + grace_period`.
    pub async fn restart_tenant(&self, spec: &Arc<TenantSpec>) -> Result<Restarted, AcquireError> {
        let slot = self.slot(&spec.name);
        let old_pid = {
            let mut state = lock(&slot.state);
            match &state.phase {
                Phase::Running(instance) if !instance.stopping() => {
                    let old = instance.clone();
                    self.replace(&slot, &mut state, &old, spec, Replacement::Operator);
                    Some(old.pid)
                }
                Phase::Running(instance) | Phase::Stopping(instance) => {
                    let old = instance.clone();
                    self.start_after_exit(&slot, &mut state, &old);
                    Some(old.pid)
                }
                Phase::Starting(_) | Phase::Stopped => None,
            }
        };
        info!(tenant = %spec.name, old_pid = ?old_pid, "tenant restart requested through the control API");
        let grace = lock(&self.settings).grace_period;
        let deadline = tokio::time::Instant::now() + spec.ready_timeout + grace;
        let new = self.ensure_running(&slot, spec, deadline).await?;
        Ok(Restarted { old_pid, new })
    }

    /// Stops the process of tenant `name` once its requests in flight are
    /// done (stop hooks, SIGTERM, grace period, SIGKILL) and waits until
    /// it has exited. A start in progress is awaited first. New requests
    /// wait for the exit and then start a new process. Also removes an
    /// operator's prewarm mark. Returns the stopped pid, or `None` when
    /// nothing ran.
    pub async fn stop_tenant(&self, name: &str) -> Option<u32> {
        self.unmark_operator_prewarm(name);
        let slot = lock(&self.slots).get(name).cloned()?;
        loop {
            let wait = {
                let mut state = lock(&slot.state);
                state.replaces = None;
                match &state.phase {
                    Phase::Running(instance) => {
                        let instance = instance.clone();
                        state.phase = Phase::Stopping(instance.clone());
                        Wait::Exit(instance)
                    }
                    Phase::Stopping(instance) => Wait::Exit(instance.clone()),
                    Phase::Starting(status) => Wait::Start(status.clone()),
                    Phase::Stopped => return None,
                }
            };
            match wait {
                Wait::Exit(instance) => {
                    info!(tenant = %name, pid = instance.pid, "stopping tenant on request once its requests in flight are done");
                    instance.drain();
                    instance.wait_exited().await;
                    return Some(instance.pid);
                }
                Wait::Start(mut status) => {
                    // Whatever the outcome, the loop looks at the phase again.
                    let _ = status
                        .wait_for(|s| !matches!(s, super::StartStatus::Pending))
                        .await;
                }
                Wait::Admit(_) | Wait::Ready(_) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_causes_read_well() {
        assert_eq!(
            Replacement::MaxRequests(1000).to_string(),
            "max_requests reached after 1000 requests"
        );
        assert_eq!(
            Replacement::Memory {
                rss: 650 << 20,
                limit: 600 << 20
            }
            .to_string(),
            "resident memory 650 MiB above recycle_memory 600 MiB"
        );
        assert!(!Replacement::SpecChanged.is_recycle());
        assert!(Replacement::Operator.is_recycle());
    }
}
