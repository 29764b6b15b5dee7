//! Clearing a tenant's pid file before a spawn.
//!
//! `rails server` refuses to boot while its pid file names a process that
//! `kill(pid, 0)` reaches, which includes zombies and unrelated processes
//! that got the pid after a crash. So before a spawn the file is removed
//! unless it names a live process, and a live process is stopped only when
//! it verifiably belongs to this tenant.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Time a leftover tenant process gets to exit after SIGTERM before it gets
/// SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Time a process gets to disappear after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Outcome of [`prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidfileAction {
    /// No pid file existed.
    Absent,
    /// The file did not contain a usable pid and was removed.
    RemovedInvalid,
    /// The file named a process that no longer runs (or is a zombie) and was
    /// removed.
    RemovedStale { pid: i32 },
    /// The file named this tenant's own leftover process, which was stopped
    /// before the file was removed.
    StoppedRunning { pid: i32 },
}

/// Prepares `pidfile` for a new tenant process.
///
/// A missing file needs nothing. A file that cannot be parsed or names a
/// dead or zombie process is removed. A file naming a live process is
/// handled only when that process is verifiably this tenant's: one of its
/// argv words (see [`command_matches`]) matches `expected_command`, and its
/// working directory is `expected_cwd` when given. Such a process gets
/// SIGTERM, then SIGKILL after 5 s, and then the file is removed. Any other
/// live process is left alone and an error is returned.
pub async fn prepare(
    pidfile: &Path,
    expected_command: &str,
    expected_cwd: Option<&Path>,
) -> Result<PidfileAction, String> {
    prepare_with_grace(pidfile, expected_command, expected_cwd, TERM_GRACE).await
}

async fn prepare_with_grace(
    pidfile: &Path,
    expected_command: &str,
    expected_cwd: Option<&Path>,
    term_grace: Duration,
) -> Result<PidfileAction, String> {
    let text = match tokio::fs::read_to_string(pidfile).await {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(PidfileAction::Absent),
        Err(error) if error.kind() == io::ErrorKind::InvalidData => String::new(),
        Err(error) => {
            return Err(format!(
                "failed to read pid file {}: {error}",
                pidfile.display()
            ));
        }
    };

    let Some(pid) = parse_pid(&text) else {
        tracing::info!(pidfile = %pidfile.display(), "removing pid file without a valid pid");
        remove_required(pidfile)?;
        return Ok(PidfileAction::RemovedInvalid);
    };

    // A tenant can be neither pid 1 nor navigator itself, so such a file is
    // left over from an earlier boot whose pids were different.
    let own_pid = std::process::id() as i32;
    if pid == 1 || pid == own_pid || !is_running(pid) {
        tracing::info!(pidfile = %pidfile.display(), pid, "removing stale pid file");
        remove_required(pidfile)?;
        return Ok(PidfileAction::RemovedStale { pid });
    }

    verify_owner(pid, expected_command, expected_cwd).map_err(|reason| {
        format!(
            "pid file {} names running process {pid}, which is not this tenant's ({reason}); \
             stop that process or remove the pid file",
            pidfile.display()
        )
    })?;

    tracing::info!(pidfile = %pidfile.display(), pid, "stopping leftover tenant process named in pid file");
    stop_process(pid, term_grace).await.map_err(|error| {
        format!(
            "failed to stop leftover process {pid} named in pid file {}: {error}",
            pidfile.display()
        )
    })?;
    remove_required(pidfile)?;
    Ok(PidfileAction::StoppedRunning { pid })
}

/// Removes `pidfile` after its process stopped; a missing file is fine and
/// other failures are logged.
pub fn remove(pidfile: &Path) {
    match std::fs::remove_file(pidfile) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(pidfile = %pidfile.display(), %error, "failed to remove pid file");
        }
    }
}

fn remove_required(pidfile: &Path) -> Result<(), String> {
    match std::fs::remove_file(pidfile) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(format!(
            "failed to remove pid file {}: {error}",
            pidfile.display()
        )),
    }
}

/// Parses a pid file's content. Only a positive integer is valid, because
/// `kill` reads 0 and negative pids as process groups.
fn parse_pid(text: &str) -> Option<i32> {
    text.trim().parse::<i32>().ok().filter(|&pid| pid > 0)
}

/// Tests whether `pid` is a process that is neither gone nor a zombie.
fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => process_state(&stat).is_some_and(|state| state != 'Z' && state != 'X'),
        // /proc/PID/stat is readable for every process of every user, so an
        // error means the process is gone.
        Err(_) => false,
    }
}

/// Returns the state letter of a `/proc/PID/stat` line. The command name in
/// parentheses may contain spaces and ')' itself, so the state is the first
/// field after the last ')'.
fn process_state(stat: &str) -> Option<char> {
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.trim_start().chars().next()
}

/// Checks that `pid` runs `expected_command` in `expected_cwd`, or returns
/// the reason it does not or cannot be verified.
fn verify_owner(
    pid: i32,
    expected_command: &str,
    expected_cwd: Option<&Path>,
) -> Result<(), String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|error| format!("its command line cannot be read: {error}"))?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !command_matches(&cmdline, expected_command) {
        let command_text = cmdline.replace('\0', " ");
        return Err(format!(
            "it runs `{}`, not `{expected_command}`",
            command_text.trim_end()
        ));
    }

    if let Some(expected_cwd) = expected_cwd {
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map_err(|error| format!("its working directory cannot be read: {error}"))?;
        let expected = canonical(expected_cwd);
        if cwd != expected {
            return Err(format!(
                "it runs in {}, not in {}",
                cwd.display(),
                expected.display()
            ));
        }
    }
    Ok(())
}

/// Tests whether a `/proc/PID/cmdline` matches `expected`: some argv word
/// equals it or has the same file name. Words are separated by NUL and also
/// by whitespace, because a process that sets its title (Puma writes
/// `puma 6.4.0 (tcp://0.0.0.0:3000) [app]`) puts it all in argv[0].
///
/// NOTE: a retitled Puma no longer shows `bundle` or `bin/rails`, so its
/// caller has to pass `puma` to have it recognised.
pub fn command_matches(cmdline: &str, expected: &str) -> bool {
    let expected = expected.trim();
    if expected.is_empty() {
        return false;
    }
    let expected_name = file_name(expected);
    cmdline
        .split(|c: char| c == '\0' || c.is_whitespace())
        .filter(|word| !word.is_empty())
        .any(|word| word == expected || file_name(word) == expected_name)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Sends SIGTERM, waits up to `term_grace`, then SIGKILL, and waits until
/// the process is gone or a zombie. The process is not navigator's child,
/// so it cannot be reaped here; its own parent or init reaps it.
async fn stop_process(pid: i32, term_grace: Duration) -> Result<(), Errno> {
    let target = Pid::from_raw(pid);
    match kill(target, Signal::SIGTERM) {
        Ok(()) => {}
        Err(Errno::ESRCH) => return Ok(()),
        Err(error) => return Err(error),
    }
    if wait_until_gone(pid, term_grace).await {
        return Ok(());
    }

    tracing::warn!(
        pid,
        grace_ms = term_grace.as_millis() as u64,
        "leftover tenant process ignored SIGTERM; sending SIGKILL"
    );
    match kill(target, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => return Err(error),
    }
    if wait_until_gone(pid, KILL_GRACE).await {
        Ok(())
    } else {
        Err(Errno::ETIMEDOUT)
    }
}

async fn wait_until_gone(pid: i32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !is_running(pid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};

    /// Starts `sh -c script` in `cwd` and reaps it when dropped.
    struct Sleeper(Child);

    impl Sleeper {
        fn start(script: &str, cwd: &Path) -> Self {
            let child = Command::new("sh")
                .args(["-c", script])
                .current_dir(cwd)
                .spawn()
                .unwrap();
            // The scripts end in `exec sleep`; until the shell has exec'ed,
            // /proc shows `sh` and the command checks would see the wrong
            // program.
            let cmdline = format!("/proc/{}/cmdline", child.id());
            for _ in 0..500 {
                let current = std::fs::read(&cmdline).unwrap_or_default();
                if current.starts_with(b"sleep") {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Sleeper(child)
        }

        fn pid(&self) -> i32 {
            self.0.id() as i32
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn write_pidfile(dir: &Path, content: &str) -> PathBuf {
        let path = dir.join("server.pid");
        std::fs::write(&path, content).unwrap();
        path
    }

    #[tokio::test]
    async fn prepare_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let action = prepare(&dir.path().join("none.pid"), "sleep", None).await;
        assert_eq!(action, Ok(PidfileAction::Absent));
    }

    #[tokio::test]
    async fn prepare_removes_unparsable_file() {
        let dir = tempfile::tempdir().unwrap();
        for content in ["", "abc", "0", "-1", "12 34"] {
            let pidfile = write_pidfile(dir.path(), content);
            let action = prepare(&pidfile, "sleep", None).await;
            assert_eq!(action, Ok(PidfileAction::RemovedInvalid), "{content:?}");
            assert!(!pidfile.exists(), "{content:?}");
        }
    }

    #[tokio::test]
    async fn prepare_removes_dead_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let pidfile = write_pidfile(dir.path(), &format!("{pid}\n"));

        let action = prepare(&pidfile, "true", None).await;
        assert_eq!(action, Ok(PidfileAction::RemovedStale { pid }));
        assert!(!pidfile.exists());
    }

    #[tokio::test]
    async fn prepare_treats_zombie_as_dead() {
        let dir = tempfile::tempdir().unwrap();
        let mut zombie = Sleeper::start("exit 0", dir.path());
        let pid = zombie.pid();
        // Not reaped until the end, so the process stays a zombie.
        for _ in 0..500 {
            if !is_running(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        let pidfile = write_pidfile(dir.path(), &pid.to_string());

        let action = prepare(&pidfile, "sh", Some(dir.path())).await;
        assert_eq!(action, Ok(PidfileAction::RemovedStale { pid }));
        assert!(!pidfile.exists());
        assert_eq!(
            zombie.0.try_wait().unwrap().map(|s| s.code()),
            Some(Some(0))
        );
    }

    #[tokio::test]
    async fn prepare_refuses_foreign_command() {
        let dir = tempfile::tempdir().unwrap();
        let sleeper = Sleeper::start("exec sleep 30", dir.path());
        let pidfile = write_pidfile(dir.path(), &sleeper.pid().to_string());

        let error = prepare(&pidfile, "bin/rails", Some(dir.path()))
            .await
            .unwrap_err();
        assert!(error.contains("not this tenant's"), "{error}");
        assert!(error.contains("not `bin/rails`"), "{error}");
        assert!(is_running(sleeper.pid()));
        assert!(pidfile.exists());
    }

    #[tokio::test]
    async fn prepare_refuses_foreign_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let sleeper = Sleeper::start("exec sleep 30", other.path());
        let pidfile = write_pidfile(dir.path(), &sleeper.pid().to_string());

        let error = prepare(&pidfile, "sleep", Some(dir.path()))
            .await
            .unwrap_err();
        assert!(error.contains("it runs in"), "{error}");
        assert!(is_running(sleeper.pid()));
        assert!(pidfile.exists());
    }

    #[tokio::test]
    async fn prepare_stops_own_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut sleeper = Sleeper::start("exec sleep 30", dir.path());
        let pid = sleeper.pid();
        let pidfile = write_pidfile(dir.path(), &pid.to_string());

        let action = prepare(&pidfile, "/usr/bin/sleep", Some(dir.path())).await;
        assert_eq!(action, Ok(PidfileAction::StoppedRunning { pid }));
        assert!(!pidfile.exists());
        let status = sleeper.0.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[tokio::test]
    async fn prepare_kills_process_ignoring_term() {
        let dir = tempfile::tempdir().unwrap();
        // Ignored signals stay ignored across exec.
        let marker = dir.path().join("trapped");
        let script = format!("trap '' TERM; touch {}; exec sleep 30", marker.display());
        let mut sleeper = Sleeper::start(&script, dir.path());
        let pid = sleeper.pid();
        for _ in 0..500 {
            if marker.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pidfile = write_pidfile(dir.path(), &pid.to_string());

        let action = prepare_with_grace(
            &pidfile,
            "sleep",
            Some(dir.path()),
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(action, Ok(PidfileAction::StoppedRunning { pid }));
        let status = sleeper.0.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn prepare_removes_own_pid() {
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id() as i32;
        let pidfile = write_pidfile(dir.path(), &pid.to_string());
        let action = prepare(&pidfile, "navigator", None).await;
        assert_eq!(action, Ok(PidfileAction::RemovedStale { pid }));
    }

    #[test]
    fn command_matches_cases() {
        assert!(command_matches("sleep\x0030\x00", "sleep"));
        assert!(command_matches("/usr/bin/sleep\x0030\x00", "sleep"));
        assert!(command_matches(
            "ruby\x00bin/rails\x00server\x00",
            "bin/rails"
        ));
        assert!(command_matches(
            "puma 6.4.0 (tcp://0.0.0.0:3000) [app]\x00",
            "puma"
        ));
        assert!(!command_matches("sleep\x0030\x00", "rails"));
        assert!(!command_matches("sleep\x00", ""));
    }

    #[test]
    fn remove_ignores_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = write_pidfile(dir.path(), "1");
        remove(&pidfile);
        assert!(!pidfile.exists());
        remove(&pidfile);
    }

    #[test]
    fn process_state_handles_parentheses() {
        assert_eq!(process_state("42 (a) b) S 1 42"), Some('S'));
        assert_eq!(process_state("42 (sleep) Z 1 42"), Some('Z'));
        assert_eq!(process_state("garbage"), None);
    }
}
