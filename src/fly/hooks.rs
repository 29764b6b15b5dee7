//! Runs the server idle and resume hooks.
//!
//! NOTE: a minimal runner kept apart so that the full hook system (server
//! start, ready and stop hooks, tenant hooks) can replace it: swap the
//! calls to [`run_all`] in `idle.rs` for it.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tracing::{info, warn};

use crate::config::schema::Hook;

/// Time a hook may run when its `timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `hooks` one after another. A failed hook is logged and the next
/// one runs. After each successful hook with `reload_config`, `reload` is
/// called with that file.
pub async fn run_all(kind: &'static str, hooks: &[Hook], reload: &(dyn Fn(&Path) + Sync)) {
    for hook in hooks {
        if run(kind, hook).await.is_ok() {
            if let Some(path) = &hook.reload_config {
                reload(path);
            }
        }
    }
}

/// Runs one hook with its arguments and extra environment, in navigator's
/// working directory, logging each output line. A hook still running at its
/// timeout is killed with its whole process group.
pub async fn run(kind: &'static str, hook: &Hook) -> Result<(), String> {
    let started = Instant::now();
    let timeout = hook.timeout.map(|t| t.get()).unwrap_or(DEFAULT_TIMEOUT);
    let mut command = Command::new(&hook.command);
    command
        .args(&hook.args)
        .envs(&hook.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            warn!(hook = kind, command = %hook.command, error = %error, "hook failed to start");
            return Err(format!("failed to start {}: {error}", hook.command));
        }
    };
    let pid = child.id();

    // The readers end on their own when the last writer closes the pipe,
    // which a background grandchild may delay; nothing waits for them.
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(log_lines(kind, hook.command.clone(), "stdout", stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(log_lines(kind, hook.command.clone(), "stderr", stderr));
    }

    let waited = if timeout.is_zero() {
        Ok(child.wait().await)
    } else {
        tokio::time::timeout(timeout, child.wait()).await
    };
    let status = match waited {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => {
            warn!(hook = kind, command = %hook.command, error = %error, "waiting for the hook failed");
            return Err(error.to_string());
        }
        Err(_) => {
            if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            warn!(
                hook = kind,
                command = %hook.command,
                timeout_ms = timeout.as_millis() as u64,
                "hook timed out and was killed"
            );
            return Err(format!("{} timed out after {timeout:?}", hook.command));
        }
    };

    let duration_ms = started.elapsed().as_millis() as u64;
    if status.success() {
        info!(hook = kind, command = %hook.command, duration_ms, "hook finished");
        Ok(())
    } else {
        warn!(hook = kind, command = %hook.command, status = %status, duration_ms, "hook failed");
        Err(format!("{} exited with {status}", hook.command))
    }
}

async fn log_lines(
    kind: &'static str,
    command: String,
    stream: &'static str,
    output: impl AsyncRead + Unpin,
) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(hook = kind, command = %command, stream, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Mutex;

    fn shell(script: &str) -> Hook {
        Hook {
            command: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
            timeout: None,
            reload_config: None,
        }
    }

    #[tokio::test]
    async fn hook_gets_args_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let mut hook = shell("printf '%s' \"$GREETING\" > \"$0\"");
        hook.args.push(marker.display().to_string());
        hook.env.insert("GREETING".into(), "hello".into());
        run("idle", &hook).await.unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "hello");
    }

    #[tokio::test]
    async fn failing_hook_is_error() {
        let error = run("idle", &shell("exit 4")).await.unwrap_err();
        assert!(error.contains("exit status: 4"), "{error}");
    }

    #[tokio::test]
    async fn missing_command_is_error() {
        let mut hook = shell("");
        hook.command = "/nonexistent/hook".into();
        let error = run("idle", &hook).await.unwrap_err();
        assert!(error.contains("failed to start"), "{error}");
    }

    #[tokio::test]
    async fn hook_past_timeout_is_killed() {
        let mut hook = shell("sleep 30");
        hook.timeout = Some(units::Duration::from_millis(200));
        let error = run("idle", &hook).await.unwrap_err();
        assert!(error.contains("timed out"), "{error}");
    }

    #[tokio::test]
    async fn reload_follows_successful_hooks_only() {
        let mut good = shell("true");
        good.reload_config = Some(PathBuf::from("good.toml"));
        let mut bad = shell("false");
        bad.reload_config = Some(PathBuf::from("bad.toml"));
        let reloaded = Mutex::new(Vec::new());
        run_all("resume", &[bad, good], &|path| {
            reloaded.lock().unwrap().push(path.to_path_buf())
        })
        .await;
        assert_eq!(*reloaded.lock().unwrap(), vec![PathBuf::from("good.toml")]);
    }
}
