//! Reload requests. SIGHUP, `navigator -s reload`, hooks and CGI scripts
//! all ask for a reload through a [`Reloader`]; the lifecycle loop in
//! `run.rs` is the only place that performs one, so reloads never overlap.

use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};

/// When a reload request takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Reload the file even if nothing changed (SIGHUP, `navigator reload`).
    Always,
    /// Reload only if the file is not the running config file, or if its
    /// text differs from the text the running config was loaded from. This
    /// is the rule for `reload_config` of hooks and CGI scripts. Comparing
    /// text instead of modification times also catches a change made while
    /// the machine was suspended, and it cannot loop: a ready hook that
    /// names the running, unchanged file does not trigger another reload.
    IfChanged,
}

/// A request to load a config file and make it current.
#[derive(Debug)]
pub struct ReloadRequest {
    /// The file to load; `None` reloads the current config file. A file
    /// other than the current one becomes the current config file, and
    /// later SIGHUPs reload it, even if loading it fails.
    pub file: Option<PathBuf>,
    pub condition: Condition,
    /// The requester, for the log: `SIGHUP`, `hook:ready`, `cgi:/path`.
    pub cause: String,
    /// Receives the outcome once the reload is done or rejected.
    pub reply: Option<oneshot::Sender<ReloadOutcome>>,
}

/// The outcome of a reload request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new config is current.
    Applied,
    /// Skipped under [`Condition::IfChanged`]: same file, same text.
    Unchanged,
    /// The config is invalid or could not be put in place (for example its
    /// new listen address is taken), so the running config stays. The text
    /// is the reason.
    Rejected(String),
    /// navigator is shutting down and no longer reloads.
    Unavailable,
}

/// The sending side of the reload queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reloader {
    sender: mpsc::UnboundedSender<ReloadRequest>,
}

/// The receiving side of the reload queue, owned by the lifecycle loop.
pub type ReloadQueue = mpsc::UnboundedReceiver<ReloadRequest>;

impl Reloader {
    /// Creates a reload queue.
    pub fn channel() -> (Reloader, ReloadQueue) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Reloader { sender }, receiver)
    }

    /// Queues a reload and waits for its outcome.
    pub async fn reload(
        &self,
        file: Option<PathBuf>,
        condition: Condition,
        cause: impl Into<String>,
    ) -> ReloadOutcome {
        let (reply, outcome) = oneshot::channel();
        let request = ReloadRequest {
            file,
            condition,
            cause: cause.into(),
            reply: Some(reply),
        };
        if self.sender.send(request).is_err() {
            return ReloadOutcome::Unavailable;
        }
        outcome.await.unwrap_or(ReloadOutcome::Unavailable)
    }

    /// Queues a reload without waiting for it.
    pub fn request(&self, file: Option<PathBuf>, condition: Condition, cause: impl Into<String>) {
        let request = ReloadRequest {
            file,
            condition,
            cause: cause.into(),
            reply: None,
        };
        // The queue is gone only while navigator shuts down, when a reload
        // has no use.
        let _ = self.sender.send(request);
    }
}

/// Returns whether `target` names the same file as `current`. Paths are compared
/// after resolving symlinks and `..` where both exist, so
/// `config/navigator.yml` and `./config/navigator.yml` are one file.
pub fn same_file(target: &Path, current: &Path) -> bool {
    match (target.canonicalize(), current.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => target == current,
    }
}

/// Decides a [`Condition::IfChanged`] request: `Ok(true)` when `target` is
/// another file than `current` or its text differs from `loaded_text`.
/// An unreadable target is an error, so a typo in `reload_config` shows up
/// in the log.
pub fn changed(target: &Path, current: &Path, loaded_text: &str) -> std::io::Result<bool> {
    let text = std::fs::read_to_string(target)?;
    Ok(!same_file(target, current) || text != loaded_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_when_other_file_or_new_text() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("navigator.toml");
        let other = dir.path().join("other.toml");
        std::fs::write(&current, "a = 1\n").unwrap();
        std::fs::write(&other, "a = 1\n").unwrap();

        assert!(!changed(&current, &current, "a = 1\n").unwrap());
        assert!(changed(&current, &current, "a = 2\n").unwrap());
        assert!(changed(&other, &current, "a = 1\n").unwrap());

        let dotted = dir.path().join(".").join("navigator.toml");
        assert!(!changed(&dotted, &current, "a = 1\n").unwrap());
    }

    #[test]
    fn changed_fails_for_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("navigator.toml");
        let missing = dir.path().join("missing.toml");
        assert!(changed(&missing, &current, "").is_err());
    }

    #[tokio::test]
    async fn reload_unavailable_without_loop() {
        let (reloader, queue) = Reloader::channel();
        drop(queue);
        let outcome = reloader.reload(None, Condition::Always, "test").await;
        assert_eq!(outcome, ReloadOutcome::Unavailable);
    }

    #[tokio::test]
    async fn reload_returns_loop_reply() {
        let (reloader, mut queue) = Reloader::channel();
        let answer = tokio::spawn(async move {
            let request = queue.recv().await.unwrap();
            assert_eq!(request.cause, "hook:ready");
            assert_eq!(request.condition, Condition::IfChanged);
            let _ = request.reply.unwrap().send(ReloadOutcome::Unchanged);
        });
        let outcome = reloader
            .reload(Some("x.toml".into()), Condition::IfChanged, "hook:ready")
            .await;
        assert_eq!(outcome, ReloadOutcome::Unchanged);
        answer.await.unwrap();
    }
}
