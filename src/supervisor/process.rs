//! Spawning and stopping child processes, each in its own process group.
//!
//! Every child is forked by one long-lived "spawner" thread. The reason is
//! `PR_SET_PDEATHSIG`: Linux sends the death signal when the *thread* that
//! forked the child exits, not when the process does. Tokio's blocking and
//! worker threads come and go, so a child forked from one of them could get
//! SIGTERM in the middle of its life. The spawner thread blocks on its
//! request channel for as long as navigator runs and so only exits with the
//! process, which is when the signal is meant to fire.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid};
use tokio::runtime::Handle;

use super::identity::{self, Identity};
use super::output::{self, OutputCapture, OutputSink};

/// Time `wait` and `stop` give the output readers to reach end of file
/// after the child exited, so that `stderr_tail` includes its last lines.
/// It only runs out when a grandchild outside the stopped group, or one
/// that survived, keeps the pipes open.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_millis(250);

/// Program, arguments, working directory, environment and isolation of a
/// child.
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
    /// User the child runs as, a name or a numeric uid. Applied only when
    /// navigator runs as root; otherwise a warning is logged once and the
    /// child keeps navigator's user. `HOME`, `USER` and `LOGNAME` are set
    /// from the user's passwd entry unless `env` sets them.
    pub user: Option<String>,
    /// Group the child runs as, a name or a numeric gid; default: the
    /// user's primary group. Supplementary groups are always cleared.
    pub group: Option<String>,
    /// Directory of a cgroup (v1 or v2) the child joins before exec, for
    /// example [`super::cgroup::TenantCgroup::path`].
    pub cgroup: Option<PathBuf>,
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
/// SIGTERM when navigator dies. Before exec it joins `spec.cgroup` and
/// switches to `spec.user`/`spec.group`. Must be called inside a tokio
/// runtime, which then owns the child's reaping and output tasks. Blocks the calling
/// thread until the spawner thread has forked and the child has exec'd,
/// as `std::process::Command::spawn` does.
///
/// The error names the program and the working directory, plus the user
/// and cgroup when set, e.g. "failed to start `bin/rails` in /rails: No
/// such file or directory". An unknown user or group fails here, before
/// fork, with a message that names it.
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

    // Everything that allocates, reads files or may fail with a message
    // happens here, before fork; the child only makes system calls.
    let identity = child_identity(spec)?;
    let cgroup_procs = match &spec.cgroup {
        Some(dir) => Some(open_cgroup_procs(dir, &spec.program)?),
        None => None,
    };

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
    if let Some(account) = identity
        .as_ref()
        .and_then(|identity| identity.account.as_ref())
    {
        for (name, value) in [
            ("HOME", account.home.as_os_str()),
            ("USER", account.name.as_ref()),
            ("LOGNAME", account.name.as_ref()),
        ] {
            if !spec.env.iter().any(|(set, _)| set == name) {
                command.env(name, value);
            }
        }
    }

    let parent = nix::unistd::getpid();
    let setup = ChildSetup {
        parent,
        uid: identity.as_ref().and_then(|identity| identity.uid),
        gid: identity.as_ref().map(|identity| identity.gid),
        cgroup_procs,
    };
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe functions may be called because other threads' locks
    // may be held forever. `prepare_child` calls only setpgid, getpid,
    // write, setgroups, setgid, setuid, prctl and getppid through nix's thin
    // wrappers, which neither allocate nor lock. It formats the pid into a
    // stack buffer. Its error is a raw OS error, which does not allocate
    // either. The cgroup file was opened before fork and is only borrowed.
    unsafe {
        command.pre_exec(move || prepare_child(&setup));
    }

    let mut child = fork_on_spawner_thread(command, runtime).map_err(|error| {
        let cwd = match &spec.cwd {
            Some(cwd) => cwd.display().to_string(),
            None => "navigator's working directory".to_string(),
        };
        let mut context = String::new();
        if let Some(identity) = &identity {
            context.push_str(&format!(" as {identity}"));
        }
        if let Some(cgroup) = &spec.cgroup {
            context.push_str(&format!(" in cgroup {}", cgroup.display()));
        }
        io::Error::new(
            error.kind(),
            format!(
                "failed to start `{}` in {cwd}{context}: {error}",
                spec.program
            ),
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

/// Resolves the spec's user and group, or returns `None` when the child
/// keeps navigator's credentials: none are set, or navigator is not root.
fn child_identity(spec: &SpawnSpec) -> io::Result<Option<Identity>> {
    static NOT_ROOT_WARNED: AtomicBool = AtomicBool::new(false);

    if spec.user.is_none() && spec.group.is_none() {
        return Ok(None);
    }
    if !identity::can_switch() {
        if !NOT_ROOT_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                tenant = %spec.label,
                user = spec.user.as_deref().unwrap_or("-"),
                group = spec.group.as_deref().unwrap_or("-"),
                euid = nix::unistd::geteuid().as_raw(),
                "navigator is not running as root, so children keep its user and group; \
                 `user` and `group` are ignored (logged once)"
            );
        }
        return Ok(None);
    }
    identity::resolve(spec.user.as_deref(), spec.group.as_deref()).map_err(|message| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("failed to start `{}`: {message}", spec.program),
        )
    })
}

/// Opens the file a process writes its pid to in order to join the
/// cgroup at `dir`; `cgroup.procs` exists in both cgroup v1 and v2.
fn open_cgroup_procs(dir: &Path, program: &str) -> io::Result<File> {
    let path = dir.join("cgroup.procs");
    OpenOptions::new().write(true).open(&path).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!(
                "failed to start `{program}`: cannot open {}: {error}",
                path.display()
            ),
        )
    })
}

/// Steps of the forked child before exec, prepared by the parent.
struct ChildSetup {
    parent: Pid,
    uid: Option<Uid>,
    /// Set when the child switches user or group.
    gid: Option<Gid>,
    /// `cgroup.procs` of the cgroup to join, opened before fork.
    cgroup_procs: Option<File>,
}

/// Runs in the forked child before exec; see the SAFETY comment in `spawn`.
fn prepare_child(setup: &ChildSetup) -> io::Result<()> {
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;

    // Joining needs navigator's privileges, so it comes before the switch.
    if let Some(procs) = &setup.cgroup_procs {
        let mut digits = [0u8; 20];
        let pid = format_decimal(nix::unistd::getpid().as_raw().unsigned_abs(), &mut digits);
        let written = nix::unistd::write(procs, pid)?;
        if written != pid.len() {
            return Err(io::Error::from(Errno::EIO));
        }
    }

    // Group before user: once the uid is not root, setgid is refused.
    if let Some(gid) = setup.gid {
        nix::unistd::setgroups(&[])?;
        nix::unistd::setgid(gid)?;
        if let Some(uid) = setup.uid {
            nix::unistd::setuid(uid)?;
        }
    }

    // The kernel clears the death signal when the uid or gid changes, so
    // it is set after the switch.
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    // The parent may have died between fork and prctl, in which case the
    // death signal will never come.
    if nix::unistd::getppid() != setup.parent {
        return Err(io::Error::from(Errno::ESRCH));
    }
    Ok(())
}

/// Writes `value` in decimal into `buffer` and returns the digits, without
/// allocating (it runs in the forked child).
fn format_decimal(mut value: u32, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buffer[start..];
        }
    }
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
            ..SpawnSpec::default()
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

    /// Runs `script` and returns its stdout lines once it exited with 0.
    async fn output_of(spec: SpawnSpec) -> Vec<String> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let hook_lines = Arc::clone(&lines);
        let sink = OutputSink::new("ids").with_hook(Arc::new(move |stream, text: &str| {
            if stream == Stream::Stdout {
                hook_lines.lock().unwrap().push(text.to_string());
            }
        }));
        let mut child = spawn(&spec, sink).unwrap();
        let status = child.wait().await.unwrap();
        assert!(status.success(), "{status:?}: {:?}", child.stderr_tail());
        lines.lock().unwrap().clone()
    }

    #[test]
    fn format_decimal_cases() {
        let mut buffer = [0u8; 20];
        assert_eq!(format_decimal(0, &mut buffer), b"0");
        assert_eq!(format_decimal(4_194_304, &mut buffer), b"4194304");
        assert_eq!(format_decimal(u32::MAX, &mut buffer), b"4294967295");
    }

    #[tokio::test]
    async fn spawn_switches_user_and_clears_groups() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: switching users needs root");
            return;
        }
        let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
            eprintln!("skipped: no user `nobody` on this machine");
            return;
        };
        let mut spec =
            sh("grep -E '^(Uid|Gid|Groups):' /proc/self/status; echo \"$HOME $USER $LOGNAME\"");
        spec.user = Some("nobody".into());
        let lines = output_of(spec).await;
        let fields = |line: &str| -> Vec<String> {
            line.split_whitespace().skip(1).map(String::from).collect()
        };
        let uid = nobody.uid.to_string();
        let gid = nobody.gid.to_string();
        assert_eq!(fields(&lines[0]), vec![uid.as_str(); 4]);
        assert_eq!(fields(&lines[1]), vec![gid.as_str(); 4]);
        assert!(
            fields(&lines[2]).is_empty(),
            "supplementary groups: {}",
            lines[2]
        );
        assert_eq!(lines[3], format!("{} nobody nobody", nobody.dir.display()));
    }

    #[tokio::test]
    async fn spawn_keeps_env_user_variables() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: switching users needs root");
            return;
        }
        let mut spec = sh("echo \"$HOME\"; id -g");
        spec.user = Some("root".into());
        spec.group = Some("65534".into());
        spec.env = vec![("HOME".into(), "/srv/app".into())];
        let lines = output_of(spec).await;
        assert_eq!(lines, vec!["/srv/app".to_string(), "65534".to_string()]);
    }

    #[tokio::test]
    async fn spawn_unknown_user_fails_with_name() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: users are only resolved as root");
            return;
        }
        let mut spec = sh("true");
        spec.user = Some("no-such-user-navtest".into());
        let message = spawn(&spec, OutputSink::new("test"))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            message,
            "failed to start `sh`: user `no-such-user-navtest` not found (no passwd entry); \
             create it or change `user`"
        );
    }

    #[tokio::test]
    async fn spawn_joins_cgroup_before_exec() {
        let Some(controller) = crate::supervisor::cgroup::controller() else {
            eprintln!("skipped: no usable cgroup memory controller here");
            return;
        };
        let cgroup = controller.create("process-test/join", 256 << 20).unwrap();
        let mut spec = sh("cat /proc/self/cgroup");
        spec.cgroup = Some(cgroup.path().to_path_buf());
        let lines = output_of(spec).await;
        // The cgroup path relative to the hierarchy's mount point ends with
        // navigator/<pid>/<name>.
        let suffix = format!(
            "/navigator/{}/{}",
            std::process::id(),
            cgroup.path().file_name().unwrap().to_string_lossy()
        );
        assert!(
            lines.iter().any(|line| line.ends_with(&suffix)),
            "{suffix} not in {lines:?}"
        );
        cgroup.remove().await;
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
