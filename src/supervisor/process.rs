//! Spawning and stopping child processes, each in its own process group.
//!
//! Every child is forked by one long-lived "spawner" thread. The reason is
//! `PR_SET_PDEATHSIG`: Linux sends the death signal when the *thread* that
//! forked the child exits, not when the process does. Tokio's blocking and
//! worker threads come and go, so a child forked from one of them could get
//! SIGTERM in the middle of its life. The spawner thread blocks on its
//! request channel for as long as navigator runs and so only exits with the
//! process, which is when the signal is meant to fire.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::runtime::Handle;

use super::output::{self, OutputCapture, OutputSink};

/// Time `wait` and `stop` give the output readers to reach end of file
/// after the child exited, so that `stderr_tail` includes its last lines.
/// It only runs out when a grandchild outside the stopped group, or one
/// that survived, keeps the pipes open.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_millis(250);

/// Program, arguments, working directory and environment of a child.
#[derive(Debug, Clone, Default)]
pub struct SpawnSpec {
    /// Name of the child in logs, e.g. the tenant name `2025/boston` or a
    /// managed process name.
    pub label: String,
    pub program: String,
    pub args: Vec<String>,
    /// Working directory; `None` keeps navigator's.
    pub cwd: Option<PathBuf>,
    /// Variables set on top of navigator's own inherited environment.
    pub env: Vec<(String, String)>,
}

/// A running or exited child, leader of its own process group.
///
/// Dropping it without `stop` or a completed `wait` sends SIGKILL to the
/// whole group; tokio reaps the leader in the background.
pub struct ChildProcess {
    label: String,
    pid: u32,
    child: tokio::process::Child,
    /// Set once the child has been reaped. Its pid may then belong to
    /// another process, so the group must not be signalled any more.
    status: Option<ExitStatus>,
    output: OutputCapture,
}

/// Starts `spec` with stdin on `/dev/null` and stdout and stderr captured
/// into `output`.
///
/// The child runs in a new process group whose id is its pid, and gets
/// SIGTERM when navigator dies. Must be called inside a tokio runtime, which
/// then owns the child's reaping and output tasks. Blocks the calling
/// thread until the spawner thread has forked and the child has exec'd,
/// as `std::process::Command::spawn` does.
///
/// The error names the program and the working directory, e.g.
/// "failed to start `bin/rails` in /rails: No such file or directory".
pub fn spawn(spec: &SpawnSpec, output: OutputSink) -> io::Result<ChildProcess> {
    spawn_with(spec, output, false).map(|(child, _)| child)
}

/// The standard input and output of a child started by [`spawn_piped`].
pub struct Pipes {
    pub stdin: tokio::process::ChildStdin,
    pub stdout: tokio::process::ChildStdout,
}

/// Starts `spec` like [`spawn`], but hands its stdin and stdout to the
/// caller instead of `/dev/null` and the log; only stderr goes to `output`.
/// The child inherits nothing of navigator's environment: `spec.env` is
/// all it gets. For programs that speak a protocol on those streams and
/// whose environment must hold only what the caller vouches for, such as
/// CGI scripts.
pub fn spawn_piped(spec: &SpawnSpec, output: OutputSink) -> io::Result<(ChildProcess, Pipes)> {
    let (child, pipes) = spawn_with(spec, output, true)?;
    let pipes = pipes
        .ok_or_else(|| io::Error::other(format!("`{}` started without pipes", spec.program)))?;
    Ok((child, pipes))
}

fn spawn_with(
    spec: &SpawnSpec,
    output: OutputSink,
    piped: bool,
) -> io::Result<(ChildProcess, Option<Pipes>)> {
    let runtime = Handle::try_current().map_err(|_| {
        io::Error::other(format!(
            "failed to start `{}`: spawn must be called inside a tokio runtime",
            spec.program
        ))
    })?;

    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(name, value)| (name, value)))
        .stdin(if piped { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Backstop for a leader that outlives its ChildProcess; Drop below
        // also kills the rest of the group.
        .kill_on_drop(true);
    if piped {
        command.env_clear();
        command.envs(spec.env.iter().map(|(name, value)| (name, value)));
    }
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let parent = nix::unistd::getpid();
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe functions may be called because other threads' locks
    // may be held forever. `prepare_child` calls only setpgid, prctl and
    // getppid through nix's thin wrappers, which neither allocate nor lock,
    // and its error is a raw OS error, which does not allocate either.
    unsafe {
        command.pre_exec(move || prepare_child(parent));
    }

    let mut child = fork_on_spawner_thread(command, runtime).map_err(|error| {
        let cwd = match &spec.cwd {
            Some(cwd) => cwd.display().to_string(),
            None => "navigator's working directory".to_string(),
        };
        io::Error::new(
            error.kind(),
            format!("failed to start `{}` in {cwd}: {error}", spec.program),
        )
    })?;

    let pid = child.id().ok_or_else(|| {
        io::Error::other(format!(
            "`{}` exited before its pid could be read",
            spec.program
        ))
    })?;
    let pipes = if piped {
        match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => Some(Pipes { stdin, stdout }),
            _ => None,
        }
    } else {
        None
    };
    let stdout = if piped { None } else { child.stdout.take() };
    let output = output::capture(output, stdout, child.stderr.take());
    tracing::info!(tenant = %spec.label, pid, program = %spec.program, "started process");

    let child = ChildProcess {
        label: spec.label.clone(),
        pid,
        child,
        status: None,
        output,
    };
    Ok((child, pipes))
}

/// Runs in the forked child before exec; see the SAFETY comment in `spawn`.
fn prepare_child(parent: Pid) -> io::Result<()> {
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    // The parent may have died between fork and prctl, in which case the
    // death signal will never come.
    if nix::unistd::getppid() != parent {
        return Err(io::Error::from(Errno::ESRCH));
    }
    Ok(())
}

struct SpawnRequest {
    command: tokio::process::Command,
    runtime: Handle,
    reply: mpsc::SyncSender<io::Result<tokio::process::Child>>,
}

/// Sends `command` to the spawner thread and waits for the spawned child.
fn fork_on_spawner_thread(
    command: tokio::process::Command,
    runtime: Handle,
) -> io::Result<tokio::process::Child> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();

    let spawner = SPAWNER
        .get_or_init(start_spawner_thread)
        .as_ref()
        .map_err(|error| io::Error::other(error.clone()))?;
    let (reply, response) = mpsc::sync_channel(1);
    let request = SpawnRequest {
        command,
        runtime,
        reply,
    };
    spawner
        .send(request)
        .map_err(|_| io::Error::other("the spawner thread has exited"))?;
    response
        .recv()
        .map_err(|_| io::Error::other("the spawner thread dropped the spawn request"))?
}

fn start_spawner_thread() -> Result<mpsc::Sender<SpawnRequest>, String> {
    let (sender, requests) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("navigator-spawner".into())
        .spawn(move || {
            // The static sender is never dropped, so this loop runs until
            // the process exits.
            for mut request in requests {
                // Entering the caller's runtime registers the child with that
                // runtime's reaper and I/O driver.
                let spawned = {
                    let _runtime = request.runtime.enter();
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        request.command.spawn()
                    }))
                    .unwrap_or_else(|_| Err(io::Error::other("spawning the child panicked")))
                };
                // The requester may have gone away; the child then drops and
                // is killed by kill_on_drop.
                let _ = request.reply.send(spawned);
            }
        })
        .map(|_| sender)
        .map_err(|error| format!("failed to start the spawner thread: {error}"))
}

impl ChildProcess {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Waits for the child to exit, reaps it, and gives its output up to
    /// 250 ms to drain. Cancel-safe: a later call returns the same status.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.wait_exit().await?;
        self.drain_output().await;
        Ok(status)
    }

    /// Waits for the child to exit and reaps it, without waiting for its
    /// output; callers that must react to the exit at once use this and
    /// [`ChildProcess::drain_output`] afterwards. Cancel-safe.
    pub async fn wait_exit(&mut self) -> io::Result<ExitStatus> {
        match self.status {
            Some(status) => Ok(status),
            None => {
                let status = self.child.wait().await?;
                self.record_exit(status);
                Ok(status)
            }
        }
    }

    /// Gives the output readers up to 250 ms to reach end of file, so the
    /// last lines are logged and in the stderr tail.
    pub async fn drain_output(&self) {
        self.output.drained(OUTPUT_DRAIN_LIMIT).await;
    }

    /// Returns the exit status without blocking, reaping the child when it
    /// has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let status = self.child.try_wait()?;
        if let Some(status) = status {
            self.record_exit(status);
        }
        Ok(status)
    }

    /// Stops the child: SIGTERM to the whole process group, up to `grace`
    /// for the leader to exit, then SIGKILL to the group. Always reaps the
    /// leader and returns its exit status. A child that already exited is
    /// only reaped.
    pub async fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            self.output.drained(OUTPUT_DRAIN_LIMIT).await;
            return Ok(status);
        }

        tracing::info!(tenant = %self.label, pid = self.pid, grace_ms = grace.as_millis() as u64, "stopping process");
        self.signal_group_logged(Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                // Members that ignored SIGTERM would outlive the leader and
                // could keep its port. While such members exist, Linux does
                // not reuse the group id as a pid. Once the group is empty,
                // a new group with this id could only appear if the pids
                // wrapped around in the microseconds since the reap.
                self.kill_group_leftovers();
                status?
            }
            Err(_) => {
                tracing::warn!(tenant = %self.label, pid = self.pid, grace_ms = grace.as_millis() as u64,
                    "process did not exit within the grace period; sending SIGKILL");
                self.signal_group_logged(Signal::SIGKILL);
                self.child.wait().await?
            }
        };
        self.record_exit(status);
        self.output.drained(OUTPUT_DRAIN_LIMIT).await;
        Ok(status)
    }

    /// Sends `signal` to the child's process group. Fails with ESRCH once the
    /// child has been reaped, because its pid may then name another group.
    pub fn signal_group(&self, signal: Signal) -> nix::Result<()> {
        if self.status.is_some() {
            return Err(Errno::ESRCH);
        }
        killpg(self.group(), signal)
    }

    /// Returns up to the last 20 lines of stderr, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.output.stderr_tail()
    }

    fn group(&self) -> Pid {
        // A pid always fits i32 on Linux (pid_max is at most 2^22).
        Pid::from_raw(self.pid as i32)
    }

    fn signal_group_logged(&self, signal: Signal) {
        match killpg(self.group(), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => {
                tracing::warn!(tenant = %self.label, pid = self.pid, signal = %signal, %error,
                "failed to signal process group")
            }
        }
    }

    fn kill_group_leftovers(&self) {
        match killpg(self.group(), Signal::SIGKILL) {
            Ok(()) => tracing::info!(tenant = %self.label, pid = self.pid,
                "sent SIGKILL to processes left in the group after the leader exited"),
            Err(Errno::ESRCH) => {}
            Err(error) => tracing::warn!(tenant = %self.label, pid = self.pid, %error,
                "failed to kill processes left in the group"),
        }
    }

    fn record_exit(&mut self, status: ExitStatus) {
        if self.status.is_none() {
            self.status = Some(status);
            tracing::info!(tenant = %self.label, pid = self.pid, status = %describe_status(status), "process exited");
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // Until the leader is reaped its pid, and so the group id, cannot be
        // reused, so this cannot hit another group.
        if self.status.is_none() {
            let _ = killpg(self.group(), Signal::SIGKILL);
        }
    }
}

/// Formats an exit status as "exit code 3" or "signal 9 (SIGKILL)".
pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(number) => match Signal::try_from(number) {
            Ok(signal) => format!("signal {number} ({signal})"),
            Err(_) => format!("signal {number}"),
        },
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use crate::supervisor::output::Stream;

    fn sh(script: &str) -> SpawnSpec {
        SpawnSpec {
            label: "test".into(),
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: None,
            env: Vec::new(),
        }
    }

    /// Returns the pids and command names of live (non-zombie) processes in
    /// group `pgid`.
    fn live_group_members(pgid: u32) -> Vec<(u32, String)> {
        let mut members = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The command name in parentheses may contain spaces, so parse
            // the fields after the last ')': state, ppid, pgrp.
            let (Some((_, name)), Some((_, after_name))) =
                (stat.split_once('('), stat.rsplit_once(')'))
            else {
                continue;
            };
            let name = name.rsplit_once(')').map_or(name, |(name, _)| name);
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            if fields[0] != "Z" && fields[2] == pgid.to_string() {
                members.push((pid, name.to_string()));
            }
        }
        members
    }

    /// Waits until group `pgid` runs two `sleep` processes. The shell may
    /// exec the last one in place of itself, so it is not counted.
    async fn wait_for_two_sleeps(pgid: u32) {
        for _ in 0..500 {
            let members = live_group_members(pgid);
            if members.iter().filter(|(_, name)| name == "sleep").count() >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("group {pgid} never ran two sleep processes");
    }

    #[tokio::test]
    async fn spawn_reports_exit_code() {
        let mut child = spawn(&sh("exit 7"), OutputSink::new("test")).unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(7));
        assert_eq!(child.try_wait().unwrap(), Some(status));
        assert_eq!(child.wait().await.unwrap(), status);
    }

    #[tokio::test]
    async fn spawn_error_names_program_and_cwd() {
        let spec = SpawnSpec {
            label: "missing".into(),
            program: "no-such-program-here".into(),
            cwd: Some(PathBuf::from("/")),
            ..SpawnSpec::default()
        };
        let error = spawn(&spec, OutputSink::new("missing")).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        let message = error.to_string();
        assert!(
            message.starts_with("failed to start `no-such-program-here` in /: "),
            "{message}"
        );
    }

    #[tokio::test]
    async fn spawn_error_for_missing_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("absent");
        let mut spec = sh("true");
        spec.cwd = Some(cwd.clone());
        let message = spawn(&spec, OutputSink::new("test"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            message.contains(&format!("in {}", cwd.display())),
            "{message}"
        );
    }

    #[tokio::test]
    async fn spawn_applies_env_cwd_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let hook_lines = Arc::clone(&lines);
        let sink = OutputSink::new("env").with_hook(Arc::new(move |stream, text: &str| {
            hook_lines.lock().unwrap().push((stream, text.to_string()));
        }));
        let mut spec = sh("echo \"$NAVIGATOR_TEST_VALUE\"; pwd; cut -d' ' -f5 /proc/$$/stat");
        spec.cwd = Some(cwd.clone());
        spec.env = vec![("NAVIGATOR_TEST_VALUE".into(), "hello".into())];

        let mut child = spawn(&spec, sink).unwrap();
        let pid = child.pid();
        assert!(child.wait().await.unwrap().success());
        for _ in 0..500 {
            if lines.lock().unwrap().len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lines = lines.lock().unwrap();
        assert_eq!(lines[0], (Stream::Stdout, "hello".to_string()));
        assert_eq!(lines[1], (Stream::Stdout, cwd.display().to_string()));
        assert_eq!(lines[2], (Stream::Stdout, pid.to_string()));
    }

    #[tokio::test]
    async fn wait_includes_last_stderr_lines() {
        let script = "i=1; while [ $i -le 30 ]; do echo err$i >&2; i=$((i+1)); done; exit 1";
        let mut child = spawn(&sh(script), OutputSink::new("test")).unwrap();
        assert_eq!(child.wait().await.unwrap().code(), Some(1));
        let expected: Vec<String> = (11..=30).map(|i| format!("err{i}")).collect();
        assert_eq!(child.stderr_tail(), expected);
    }

    #[tokio::test]
    async fn stop_terminates_with_sigterm() {
        let mut child = spawn(&sh("exec sleep 100"), OutputSink::new("test")).unwrap();
        let status = child.stop(Duration::from_secs(10)).await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(child.signal_group(Signal::SIGTERM), Err(Errno::ESRCH));
    }

    #[tokio::test]
    async fn stop_kills_grandchildren() {
        let mut child = spawn(&sh("sleep 100 & sleep 100"), OutputSink::new("test")).unwrap();
        let pgid = child.pid();
        wait_for_two_sleeps(pgid).await;
        let members = live_group_members(pgid);

        child.stop(Duration::from_secs(10)).await.unwrap();
        for (pid, _) in members {
            let mut alive = true;
            for _ in 0..500 {
                alive = live_group_members(pgid)
                    .iter()
                    .any(|(member, _)| *member == pid);
                if !alive {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(!alive, "process {pid} of group {pgid} survived stop");
        }
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill() {
        // Ignored signals stay ignored across exec, so sleep ignores TERM too.
        let script = "trap '' TERM; echo trapped; sleep 100";
        let (ready_sender, mut ready) = tokio::sync::mpsc::unbounded_channel();
        let sink = OutputSink::new("trap").with_hook(Arc::new(move |_, _: &str| {
            let _ = ready_sender.send(());
        }));
        let mut child = spawn(&sh(script), sink).unwrap();
        // Wait until the trap is set, or SIGTERM would end the shell.
        ready.recv().await.unwrap();

        let status = child.stop(Duration::from_millis(200)).await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(live_group_members(child.pid()).is_empty());
    }

    #[tokio::test]
    async fn stop_after_exit_returns_status() {
        let mut child = spawn(&sh("exit 4"), OutputSink::new("test")).unwrap();
        child.wait().await.unwrap();
        let status = child.stop(Duration::from_secs(1)).await.unwrap();
        assert_eq!(status.code(), Some(4));
    }

    #[tokio::test]
    async fn drop_kills_process_group() {
        let child = spawn(&sh("sleep 100 & sleep 100"), OutputSink::new("test")).unwrap();
        let pgid = child.pid();
        wait_for_two_sleeps(pgid).await;
        drop(child);
        for _ in 0..500 {
            if live_group_members(pgid).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("group {pgid} survived the drop");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_flood_arrives_whole() {
        const LINES: u64 = 100_000;
        let received = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
        let hook_state = Arc::clone(&received);
        let sink = OutputSink::new("flood").with_hook(Arc::new(move |_, text: &str| {
            // (lines received, lines reported dropped, last number seen)
            let mut state = hook_state.lock().unwrap();
            if let Some(count) = text.strip_suffix(" lines dropped because logging fell behind") {
                state.1 += count.parse::<u64>().unwrap();
                return;
            }
            let number: u64 = text
                .parse()
                .unwrap_or_else(|_| panic!("broken line {text:?}"));
            assert!(number > state.2, "line {number} after {}", state.2);
            state.0 += 1;
            state.2 = number;
        }));

        let spec = SpawnSpec {
            label: "flood".into(),
            program: "seq".into(),
            args: vec!["1".into(), LINES.to_string()],
            ..SpawnSpec::default()
        };
        let mut child = spawn(&spec, sink).unwrap();
        assert!(child.wait().await.unwrap().success());
        for _ in 0..1000 {
            let (lines, dropped, _) = *received.lock().unwrap();
            if lines + dropped == LINES {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("lines missing: {:?}", *received.lock().unwrap());
    }

    #[test]
    fn describe_status_cases() {
        assert_eq!(describe_status(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(
            describe_status(ExitStatus::from_raw(9)),
            "signal 9 (SIGKILL)"
        );
    }
}
