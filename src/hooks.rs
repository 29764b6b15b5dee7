//! Lifecycle hooks: commands navigator runs at server events (`start`,
//! `ready`, `stop`, `idle`, `resume`) and tenant events (`start`, `stop`).
//!
//! The hooks of one event run one after another; the first failure ends
//! the list, because later hooks may depend on earlier ones. Each hook runs
//! in its own process group with its output logged under a label such as
//! `hook:ready`, and is killed at its timeout. After a list succeeds, the
//! first `reload_config` it names is reloaded if that file is not the
//! running config file or its text changed.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::app::App;
use crate::compile::TenantSpec;
use crate::compile::tenants::ResolvedHook;
use crate::config::expand::fill_port;
use crate::config::schema::{Config, Hook};
use crate::reload::{Condition, ReloadOutcome, Reloader};
use crate::supervisor::output::OutputSink;
use crate::supervisor::process::{self, SpawnSpec};

/// Timeout of a hook that sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Time a hook gets between SIGTERM and SIGKILL once its timeout passed.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// A server lifecycle event with hooks under `hooks.server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// Before navigator listens; a failure aborts startup. Also before a
    /// reloaded config is put in place, where a failure is only logged.
    Start,
    /// In the background once navigator listens, and after every reload.
    Ready,
    /// At shutdown, after requests finished and before tenants stop.
    Stop,
    /// Before the machine is suspended or stopped for being idle.
    Idle,
    /// Before the first request after an idle suspend or stop is served.
    Resume,
}

impl ServerEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerEvent::Start => "start",
            ServerEvent::Ready => "ready",
            ServerEvent::Stop => "stop",
            ServerEvent::Idle => "idle",
            ServerEvent::Resume => "resume",
        }
    }

    fn configured(self, config: &Config) -> &[Hook] {
        let hooks = &config.hooks.server;
        match self {
            ServerEvent::Start => &hooks.start,
            ServerEvent::Ready => &hooks.ready,
            ServerEvent::Stop => &hooks.stop,
            ServerEvent::Idle => &hooks.idle,
            ServerEvent::Resume => &hooks.resume,
        }
    }
}

/// A tenant lifecycle event; its hooks are resolved per tenant in
/// `TenantSpec::start_hooks` and `stop_hooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantEvent {
    /// After the tenant passed its readiness probe, before the requests
    /// waiting for it are served.
    Start,
    /// When navigator stops the tenant, before SIGTERM.
    Stop,
}

impl TenantEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantEvent::Start => "start",
            TenantEvent::Stop => "stop",
        }
    }
}

/// The reason a hook failed.
#[derive(Debug)]
pub enum HookError {
    /// The command could not be started.
    Spawn { command: String, error: String },
    /// The command exited with a non-zero status or a signal.
    Failed { command: String, status: String },
    /// The command ran past its timeout and was killed.
    TimedOut { command: String, after: Duration },
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookError::Spawn { error, .. } => write!(f, "{error}"),
            HookError::Failed { command, status } => write!(f, "`{command}` failed: {status}"),
            HookError::TimedOut { command, after } => write!(
                f,
                "`{command}` did not finish within {} ms and was killed",
                after.as_millis()
            ),
        }
    }
}

impl std::error::Error for HookError {}

/// Converts config hooks, which need no per-tenant expansion, to the
/// resolved form that [`run_hooks`] takes.
pub fn resolve(hooks: &[Hook]) -> Vec<ResolvedHook> {
    hooks
        .iter()
        .map(|hook| ResolvedHook {
            command: hook.command.clone(),
            args: hook.args.clone(),
            env: hook
                .env
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            timeout: hook.timeout.map(|timeout| timeout.get()),
            reload_config: hook.reload_config.clone(),
        })
        .collect()
}

/// Returns the server hooks `config` lists for `event`.
pub fn server_hooks(config: &Config, event: ServerEvent) -> Vec<ResolvedHook> {
    resolve(event.configured(config))
}

/// Runs `hooks` in order, each with navigator's environment plus `env`
/// plus its own `env`, and stops at the first failure. `label` names the
/// hooks in logs and output lines, e.g. `hook:idle`.
pub async fn run_hooks(
    hooks: &[ResolvedHook],
    env: &[(String, String)],
    label: &str,
) -> Result<(), HookError> {
    for hook in hooks {
        run_hook(hook, env, label).await?;
    }
    Ok(())
}

/// Runs one hook to its end or its timeout.
async fn run_hook(
    hook: &ResolvedHook,
    env: &[(String, String)],
    label: &str,
) -> Result<(), HookError> {
    let spec = SpawnSpec {
        label: label.to_string(),
        program: hook.command.clone(),
        args: hook.args.clone(),
        cwd: None,
        env: env.iter().chain(hook.env.iter()).cloned().collect(),
        ..SpawnSpec::default()
    };
    let timeout = match hook.timeout {
        Some(limit) if limit.is_zero() => None,
        Some(limit) => Some(limit),
        None => Some(DEFAULT_TIMEOUT),
    };
    info!(hook = label, command = %hook.command, args = ?hook.args, timeout_ms = timeout.map(|t| t.as_millis() as u64), "running hook");

    let started = Instant::now();
    let mut child = process::spawn(
        &spec,
        OutputSink::new(label.to_string())
            .with_hook(crate::log_shipping::process_output_hook(label)),
    )
    .map_err(|error| HookError::Spawn {
        command: hook.command.clone(),
        error: error.to_string(),
    })?;
    let waited = match timeout {
        Some(limit) => tokio::time::timeout(limit, child.wait()).await,
        None => Ok(child.wait().await),
    };
    let status = match waited {
        Ok(status) => status,
        Err(_) => {
            let after = started.elapsed();
            warn!(hook = label, command = %hook.command, pid = child.pid(), elapsed_ms = after.as_millis() as u64, "hook timed out; stopping it");
            if let Err(error) = child.stop(KILL_GRACE).await {
                warn!(hook = label, pid = child.pid(), error = %error, "waiting for the timed-out hook failed");
            }
            return Err(HookError::TimedOut {
                command: hook.command.clone(),
                after,
            });
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match status {
        Ok(status) if status.success() => {
            info!(hook = label, command = %hook.command, elapsed_ms, "hook finished");
            Ok(())
        }
        Ok(status) => Err(HookError::Failed {
            command: hook.command.clone(),
            status: process::describe_status(status),
        }),
        Err(error) => Err(HookError::Failed {
            command: hook.command.clone(),
            status: format!("waiting for it failed: {error}"),
        }),
    }
}

/// Runs the running config's server hooks for `event`. A failure is
/// logged and returned. After success, a `reload_config` is reloaded if
/// it changed (see [`crate::reload::Condition::IfChanged`]), and this
/// returns once that reload is done, so a resume hook's new config is in
/// place before the request that woke the machine is served.
pub async fn run_server_hooks(app: &App, event: ServerEvent) -> Result<(), HookError> {
    let snapshot = app.snapshot();
    let hooks = server_hooks(&snapshot.config, event);
    if hooks.is_empty() {
        return Ok(());
    }
    let label = format!("hook:{}", event.as_str());
    if let Err(error) = run_hooks(&hooks, &[], &label).await {
        error!(hook = %label, error = %error, "server hook failed");
        return Err(error);
    }
    if let Some(file) = reload_target(&hooks) {
        reload_after(&app.reloader, file, &label).await;
    }
    Ok(())
}

/// Runs `spec`'s hooks for `event` with the tenant's environment, the port
/// filled in. Failures are logged and returned. A `reload_config` is
/// queued without waiting for it, because tenant hooks run inside tenant
/// starts and stops.
pub async fn run_tenant_hooks(
    spec: &TenantSpec,
    port: u16,
    event: TenantEvent,
    reloader: Option<&Reloader>,
) -> Result<(), HookError> {
    let hooks = match event {
        TenantEvent::Start => &spec.start_hooks,
        TenantEvent::Stop => &spec.stop_hooks,
    };
    if hooks.is_empty() {
        return Ok(());
    }
    let hooks: Vec<ResolvedHook> = hooks
        .iter()
        .map(|hook| ResolvedHook {
            command: fill_port(&hook.command, port),
            args: hook.args.iter().map(|arg| fill_port(arg, port)).collect(),
            env: hook
                .env
                .iter()
                .map(|(name, value)| (name.clone(), fill_port(value, port)))
                .collect(),
            timeout: hook.timeout,
            reload_config: hook.reload_config.clone(),
        })
        .collect();
    let env: Vec<(String, String)> = spec
        .launch
        .env
        .iter()
        .map(|(name, value)| (name.clone(), fill_port(value, port)))
        .collect();
    let label = format!("hook:tenant.{}:{}", event.as_str(), spec.name);
    if let Err(error) = run_hooks(&hooks, &env, &label).await {
        error!(tenant = %spec.name, hook = %label, error = %error, "tenant hook failed");
        return Err(error);
    }
    if let (Some(file), Some(reloader)) = (reload_target(&hooks), reloader) {
        reloader.request(Some(file), Condition::IfChanged, label);
    }
    Ok(())
}

/// The first `reload_config` of a hook list.
fn reload_target(hooks: &[ResolvedHook]) -> Option<PathBuf> {
    hooks.iter().find_map(|hook| hook.reload_config.clone())
}

async fn reload_after(reloader: &Reloader, file: PathBuf, label: &str) {
    let outcome = reloader
        .reload(Some(file.clone()), Condition::IfChanged, label)
        .await;
    match outcome {
        ReloadOutcome::Applied | ReloadOutcome::Unchanged => {}
        ReloadOutcome::Rejected(reason) => {
            warn!(hook = label, file = %file.display(), reason = %reason, "reload requested by hook was rejected")
        }
        ReloadOutcome::Unavailable => {
            info!(hook = label, file = %file.display(), "reload requested by hook skipped: navigator is shutting down")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Option<Duration>) -> ResolvedHook {
        ResolvedHook {
            command: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Vec::new(),
            timeout,
            reload_config: None,
        }
    }

    #[tokio::test]
    async fn hooks_run_in_order_with_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let first = sh(&format!("echo \"one $A $B\" >> {}", out.display()), None);
        let mut second = sh(&format!("echo \"two $A $B\" >> {}", out.display()), None);
        second.env = vec![("B".into(), "hook".into())];
        let env = vec![("A".into(), "base".into()), ("B".into(), "base".into())];

        run_hooks(&[first, second], &env, "hook:test")
            .await
            .unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, "one base base\ntwo base hook\n");
    }

    #[tokio::test]
    async fn failure_stops_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let failing = sh("exit 3", None);
        let later = sh(&format!("touch {}", marker.display()), None);

        let error = run_hooks(&[failing, later], &[], "hook:test")
            .await
            .unwrap_err();
        assert!(
            matches!(&error, HookError::Failed { status, .. } if status == "exit code 3"),
            "{error}"
        );
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn timeout_kills_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let hook = sh(
            &format!("echo $$ > {}; exec sleep 100", pid_file.display()),
            Some(Duration::from_millis(300)),
        );

        let error = run_hooks(&[hook], &[], "hook:test").await.unwrap_err();
        assert!(matches!(error, HookError::TimedOut { .. }), "{error}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        assert!(!alive, "hook process {pid} survived its timeout");
    }

    #[tokio::test]
    async fn zero_timeout_means_no_limit() {
        let hook = sh("sleep 0.2", Some(Duration::ZERO));
        run_hooks(&[hook], &[], "hook:test").await.unwrap();
    }

    #[tokio::test]
    async fn missing_command_is_spawn_error() {
        let hook = ResolvedHook {
            command: "/no/such/hook".into(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: None,
            reload_config: None,
        };
        let error = run_hooks(&[hook], &[], "hook:test").await.unwrap_err();
        assert!(matches!(error, HookError::Spawn { .. }), "{error}");
        assert!(error.to_string().contains("/no/such/hook"), "{error}");
    }

    #[test]
    fn first_reload_config_wins() {
        let mut a = sh("true", None);
        let mut b = sh("true", None);
        let c = sh("true", None);
        assert_eq!(reload_target(std::slice::from_ref(&c)), None);
        a.reload_config = Some("a.toml".into());
        b.reload_config = Some("b.toml".into());
        assert_eq!(reload_target(&[c, a, b]), Some(PathBuf::from("a.toml")));
    }
}
