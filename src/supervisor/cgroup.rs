//! Memory limits for tenant processes through cgroups.
//!
//! Navigator finds the memory controller once: cgroup v2 when the unified
//! hierarchy offers `memory`, else the cgroup v1 memory hierarchy. It then
//! creates `<its own cgroup>/navigator/<its pid>/` and one child cgroup per
//! running tenant process below it, named after the tenant
//! (`2025/boston` becomes `2025-boston`). The pid level keeps navigators
//! that share a cgroup (parallel tests, a restart while the old one still
//! exits) apart. A child joins its cgroup between fork and exec (see
//! `process::spawn`), so everything it allocates is charged there.
//!
//! Where no controller is usable (no cgroups, no permission), this is
//! logged once and tenants start without a limit.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Name of the directory below navigator's own cgroup that contains its
/// tenant cgroups.
const NAVIGATOR_DIR: &str = "navigator";

/// Attempts to remove a tenant cgroup whose processes are still exiting.
const REMOVE_ATTEMPTS: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// The memory controller navigator creates tenant cgroups under.
#[derive(Debug)]
pub struct MemoryController {
    version: Version,
    /// Navigator's own cgroup directory in the memory hierarchy.
    own: PathBuf,
    /// `<own>/navigator/<pid>`: the parent of every tenant cgroup.
    base: PathBuf,
    /// Directory names below `base` that belong to live `TenantCgroup`s.
    names_in_use: Mutex<HashSet<String>>,
}

static CONTROLLER: OnceLock<Option<Arc<MemoryController>>> = OnceLock::new();

/// Returns the process-wide controller, detecting and preparing it on the
/// first call. Logs once, at the first call, whether limits are enforced.
pub fn controller() -> Option<&'static Arc<MemoryController>> {
    CONTROLLER
        .get_or_init(|| match MemoryController::detect() {
            Ok(controller) => {
                tracing::info!(
                    version = controller.version.as_str(),
                    cgroup = %controller.base.display(),
                    "tenant memory limits are enforced with cgroups"
                );
                Some(Arc::new(controller))
            }
            Err(reason) => {
                tracing::warn!(
                    %reason,
                    "tenant memory limits are not enforced; tenants start without a limit (logged once)"
                );
                None
            }
        })
        .as_ref()
}

/// Creates the cgroup of one tenant process with `limit` bytes, or returns
/// `None` after logging why it could not. A tenant without a cgroup
/// still starts.
pub fn for_tenant(tenant: &str, limit: u64) -> Option<TenantCgroup> {
    let controller = controller()?;
    match controller.create(tenant, limit) {
        Ok(cgroup) => Some(cgroup),
        Err(error) => {
            tracing::warn!(
                tenant,
                limit = %format_bytes(limit),
                %error,
                "failed to create the tenant's cgroup; it starts without a memory limit"
            );
            None
        }
    }
}

/// Removes navigator's own cgroup directory at shutdown, once every tenant
/// cgroup below it is gone. Does nothing when limits were never used.
pub fn remove_navigator_cgroup() {
    let Some(Some(controller)) = CONTROLLER.get() else {
        return;
    };
    match fs::remove_dir(&controller.base) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(
            cgroup = %controller.base.display(),
            %error,
            "failed to remove navigator's cgroup directory"
        ),
    }
}

impl MemoryController {
    /// Finds the memory controller of this process and prepares
    /// `<own>/navigator/<pid>`. The error explains why limits cannot be used.
    pub fn detect() -> Result<MemoryController, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|error| format!("cannot read /proc/self/mountinfo: {error}"))?;
        let membership = fs::read_to_string("/proc/self/cgroup")
            .map_err(|error| format!("cannot read /proc/self/cgroup: {error}"))?;

        let candidates = locate(&mountinfo, &membership);
        let chosen = candidates
            .iter()
            .find(|(version, dir)| *version == Version::V2 && v2_offers_memory(dir))
            .or_else(|| {
                candidates
                    .iter()
                    .find(|(version, dir)| *version == Version::V1 && dir.is_dir())
            });
        let Some((version, own)) = chosen.cloned() else {
            return Err(
                "no cgroup memory controller is mounted (neither cgroup v2 with `memory` \
                 in cgroup.controllers nor a cgroup v1 memory hierarchy)"
                    .to_string(),
            );
        };

        let controller = MemoryController::at(version, own, std::process::id());
        controller.prepare()?;
        Ok(controller)
    }

    /// Creates a controller whose tenant cgroups go under
    /// `<own>/navigator/<pid>`, without touching the file system.
    pub fn at(version: Version, own: PathBuf, pid: u32) -> MemoryController {
        let base = own.join(NAVIGATOR_DIR).join(pid.to_string());
        MemoryController {
            version,
            own,
            base,
            names_in_use: Mutex::new(HashSet::new()),
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Creates `<own>/navigator/<pid>` and, on cgroup v2, enables the memory
    /// controller for the children of each level. Removes the directories
    /// of navigators that are no longer running.
    fn prepare(&self) -> Result<(), String> {
        let navigator_dir = self.own.join(NAVIGATOR_DIR);
        for dir in [&navigator_dir, &self.base] {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => {
                    return Err(format!(
                        "cannot create cgroup {}: {error} (navigator needs root or a \
                         cgroup delegated to its user)",
                        dir.display()
                    ));
                }
            }
        }

        if self.version == Version::V2 {
            for dir in [&self.own, &navigator_dir, &self.base] {
                let control = dir.join("cgroup.subtree_control");
                if let Err(error) = fs::write(&control, "+memory") {
                    let hint = if error.raw_os_error() == Some(libc::EBUSY) {
                        " because the cgroup contains processes; cgroup v2 allows \
                         controllers only for cgroups without processes of their own, so \
                         run navigator as the only process of a cgroup it can manage, \
                         e.g. the root cgroup of its container"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "cannot enable the memory controller in {}: {error}{hint}",
                        control.display()
                    ));
                }
            }
        }

        remove_stale(&navigator_dir, &self.base);
        Ok(())
    }

    /// Creates the cgroup of one process of `tenant` with a memory limit of
    /// `limit` bytes. Memory plus swap is limited to the same amount, so a
    /// tenant cannot grow past its limit into swap.
    pub fn create(self: &Arc<Self>, tenant: &str, limit: u64) -> io::Result<TenantCgroup> {
        let (name, dir) = self.claim_directory(tenant)?;
        let cgroup = TenantCgroup {
            controller: Arc::clone(self),
            name,
            dir,
            limit,
            removed: false,
        };
        cgroup.write_limits()?;
        Ok(cgroup)
    }

    /// Creates a fresh directory for `tenant`: its sanitized name, or with
    /// a `.N` suffix while an earlier process of the same tenant (a draining
    /// one after a reload) still uses that name.
    fn claim_directory(&self, tenant: &str) -> io::Result<(String, PathBuf)> {
        let stem = directory_name(tenant);
        let mut in_use = lock(&self.names_in_use);
        for attempt in 0..100u32 {
            let name = match attempt {
                0 => stem.clone(),
                n => format!("{stem}.{n}"),
            };
            if in_use.contains(&name) {
                continue;
            }
            let dir = self.base.join(&name);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                // Left over from a navigator that had the same pid; reuse
                // it only if it is empty and can be recreated fresh.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    if fs::remove_dir(&dir).is_err() || fs::create_dir(&dir).is_err() {
                        continue;
                    }
                }
                Err(error) => {
                    return Err(io::Error::new(
                        error.kind(),
                        format!("cannot create cgroup {}: {error}", dir.display()),
                    ));
                }
            }
            in_use.insert(name.clone());
            return Ok((name, dir));
        }
        Err(io::Error::other(format!(
            "no free cgroup name for tenant {tenant} under {}",
            self.base.display()
        )))
    }

    fn release(&self, name: &str) {
        lock(&self.names_in_use).remove(name);
    }
}

/// One tenant process's cgroup, removed when dropped (or by [`remove`]).
///
/// [`remove`]: TenantCgroup::remove
#[derive(Debug)]
pub struct TenantCgroup {
    controller: Arc<MemoryController>,
    name: String,
    dir: PathBuf,
    /// Bytes.
    limit: u64,
    removed: bool,
}

/// Memory counters of a tenant cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Highest usage in bytes: v2 `memory.peak` (Linux 5.19 and later), v1
    /// `memory.max_usage_in_bytes`.
    pub peak: Option<u64>,
    /// Processes killed by the OOM killer: `oom_kill` in v2 `memory.events`
    /// or in v1 `memory.oom_control` (Linux 4.13 and later).
    pub oom_kills: Option<u64>,
    /// Times the limit was hit (v1 `memory.failcnt`, v2 `max` events).
    pub limit_hits: Option<u64>,
}

/// Counters a tenant cgroup recorded about a process that exited.
#[derive(Debug, Clone)]
pub struct ExitMemory {
    pub usage: MemoryUsage,
    /// Bytes.
    pub limit: u64,
    pub oom_killed: bool,
    pub path: PathBuf,
}

impl TenantCgroup {
    /// Reads the counters after the tenant's process exited with `status`,
    /// and removes the cgroup when it is already empty.
    pub fn finish(&mut self, status: Option<ExitStatus>) -> ExitMemory {
        let usage = self.usage();
        let memory = ExitMemory {
            usage,
            limit: self.limit,
            oom_killed: self.oom_killed(&usage, status),
            path: self.dir.clone(),
        };
        self.try_remove();
        memory
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn write_limits(&self) -> io::Result<()> {
        let limit = self.limit.to_string();
        let (memory, swap, swap_value) = match self.controller.version {
            Version::V2 => ("memory.max", "memory.swap.max", "0"),
            // memsw is memory plus swap and must not be below the memory
            // limit, so it is written second.
            Version::V1 => (
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                limit.as_str(),
            ),
        };
        write_control(&self.dir.join(memory), &limit)?;
        // The swap file is missing where swap accounting is off.
        let swap_path = self.dir.join(swap);
        if swap_path.exists() {
            write_control(&swap_path, swap_value)?;
        }
        Ok(())
    }

    /// Reads the counters; a counter this kernel lacks is `None`.
    pub fn usage(&self) -> MemoryUsage {
        let read = |file: &str| fs::read_to_string(self.dir.join(file)).ok();
        match self.controller.version {
            Version::V2 => {
                let events = read("memory.events");
                MemoryUsage {
                    peak: read("memory.peak").and_then(|text| text.trim().parse().ok()),
                    oom_kills: events
                        .as_deref()
                        .and_then(|text| keyed_value(text, "oom_kill")),
                    limit_hits: events.as_deref().and_then(|text| keyed_value(text, "max")),
                }
            }
            Version::V1 => MemoryUsage {
                peak: read("memory.max_usage_in_bytes").and_then(|text| text.trim().parse().ok()),
                oom_kills: read("memory.oom_control")
                    .as_deref()
                    .and_then(|text| keyed_value(text, "oom_kill")),
                limit_hits: read("memory.failcnt").and_then(|text| text.trim().parse().ok()),
            },
        }
    }

    /// Returns whether the kernel's OOM killer ended a process of this
    /// cgroup. On a kernel without an `oom_kill` counter, a SIGKILL after
    /// the limit was hit counts as one.
    pub fn oom_killed(&self, usage: &MemoryUsage, status: Option<ExitStatus>) -> bool {
        match usage.oom_kills {
            Some(kills) => kills > 0,
            None => {
                usage.limit_hits.unwrap_or(0) > 0
                    && status.and_then(|status| status.signal()) == Some(libc::SIGKILL)
            }
        }
    }

    /// Sends SIGKILL to every process still in the cgroup: members that
    /// left the tenant's process group, or survived its stop.
    pub fn kill_remaining(&self) -> usize {
        let Ok(text) = fs::read_to_string(self.dir.join("cgroup.procs")) else {
            return 0;
        };
        let mut killed = 0;
        for pid in text
            .lines()
            .filter_map(|line| line.trim().parse::<i32>().ok())
        {
            if pid > 0 && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        killed
    }

    /// Removes the cgroup if it is empty and returns whether it is gone.
    pub fn try_remove(&mut self) -> bool {
        if self.removed {
            return true;
        }
        match fs::remove_dir(&self.dir) {
            Ok(()) => {
                tracing::debug!(cgroup = %self.dir.display(), "removed tenant cgroup");
                self.mark_removed();
                true
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.mark_removed();
                true
            }
            Err(_) => false,
        }
    }

    /// Removes the cgroup once its processes are gone. A cgroup cannot be
    /// removed while a process is in it, so leftovers are killed and the
    /// removal retried for up to about two seconds.
    pub async fn remove(mut self) {
        for attempt in 0..REMOVE_ATTEMPTS {
            if self.try_remove() {
                return;
            }
            if attempt == 0 {
                let killed = self.kill_remaining();
                if killed > 0 {
                    tracing::info!(cgroup = %self.dir.display(), killed,
                        "killed processes left in the tenant's cgroup");
                }
            }
            tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt + 1))).await;
        }
        // Drop tries once more and logs the failure.
    }

    fn mark_removed(&mut self) {
        self.removed = true;
        self.controller.release(&self.name);
    }
}

impl Drop for TenantCgroup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        match fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(
                cgroup = %self.dir.display(),
                %error,
                "failed to remove the tenant's cgroup; it is left behind"
            ),
        }
        self.controller.release(&self.name);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_control(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot write {value} to {}: {error}", path.display()),
        )
    })
}

fn v2_offers_memory(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .is_ok_and(|text| text.split_whitespace().any(|name| name == "memory"))
}

/// Returns the memory-hierarchy directories of this process's cgroup, v2
/// first, from the text of `/proc/self/mountinfo` and `/proc/self/cgroup`.
pub fn locate(mountinfo: &str, membership: &str) -> Vec<(Version, PathBuf)> {
    let mut found = Vec::new();
    let own_v2 = membership.lines().find_map(|line| line.strip_prefix("0::"));
    let own_v1 = membership.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|name| name == "memory")
            .then_some(path)
    });

    for line in mountinfo.lines() {
        let Some((mount, filesystem)) = line.split_once(" - ") else {
            continue;
        };
        let mount: Vec<&str> = mount.split_whitespace().collect();
        let filesystem: Vec<&str> = filesystem.split_whitespace().collect();
        let (Some(root), Some(point), Some(fstype)) =
            (mount.get(3), mount.get(4), filesystem.first())
        else {
            continue;
        };
        let options = filesystem.get(2).copied().unwrap_or("");
        let (version, own) = match *fstype {
            "cgroup2" => (Version::V2, own_v2),
            "cgroup" if options.split(',').any(|option| option == "memory") => {
                (Version::V1, own_v1)
            }
            _ => continue,
        };
        let Some(own) = own else {
            continue;
        };
        // The mount may show only a subtree (containers): `root` is the
        // subtree's path, which the process's own path starts with.
        let relative = Path::new(own)
            .strip_prefix(root)
            .unwrap_or_else(|_| Path::new(own));
        let relative = relative.strip_prefix("/").unwrap_or(relative);
        found.push((version, Path::new(point).join(relative)));
    }
    found.sort_by_key(|(version, _)| *version == Version::V1);
    found
}

/// Maps a tenant name to a cgroup directory name: `/` becomes `-` and any
/// byte other than ASCII letters, digits, `-`, `_` and `.` becomes `_`. A
/// leading `.` is replaced, so the name cannot be `.`, `..` or hidden.
pub fn directory_name(tenant: &str) -> String {
    let mut name: String = tenant
        .chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' => c,
            _ => '_',
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, '_');
    }
    name
}

/// Returns the number after `key` in a `key value` per line file such as
/// `memory.events` or `memory.oom_control`.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

/// Removes the cgroups of navigators that no longer run: directories under
/// `<own>/navigator/` named by a pid that is not alive. Their tenants died
/// with them (death signal), so the cgroups are empty.
fn remove_stale(navigator_dir: &Path, own_base: &Path) {
    let Ok(entries) = fs::read_dir(navigator_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = matches!(
            kill(Pid::from_raw(pid), None),
            Ok(()) | Err(nix::errno::Errno::EPERM)
        );
        if path == own_base || pid <= 0 || alive {
            continue;
        }
        if let Ok(children) = fs::read_dir(&path) {
            for child in children.flatten() {
                if child.file_type().is_ok_and(|kind| kind.is_dir()) {
                    let _ = fs::remove_dir(child.path());
                }
            }
        }
        match fs::remove_dir(&path) {
            Ok(()) => {
                tracing::info!(cgroup = %path.display(), "removed the cgroup of a navigator that no longer runs")
            }
            Err(error) => {
                tracing::debug!(cgroup = %path.display(), %error, "cannot remove a stale navigator cgroup")
            }
        }
    }
}

/// Formats a byte count for logs: `768 MiB`, `1 GiB`, or bytes.
pub fn format_bytes(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    match bytes {
        0 => "0 bytes".to_string(),
        b if b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b if b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_HYBRID: &str = "\
24 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 24 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 30 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
36 30 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const MEMBERSHIP_HYBRID: &str = "\
9:name=systemd:/
4:memory:/process_api/abc
1:cpu:/
0::/
";

    #[test]
    fn locate_hybrid_lists_v2_then_v1() {
        let found = locate(MOUNTINFO_HYBRID, MEMBERSHIP_HYBRID);
        assert_eq!(
            found,
            vec![
                (Version::V2, PathBuf::from("/sys/fs/cgroup/unified")),
                (
                    Version::V1,
                    PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
                ),
            ]
        );
    }

    #[test]
    fn locate_unified_only() {
        let mountinfo = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let found = locate(mountinfo, "0::/init.scope\n");
        assert_eq!(
            found,
            vec![(Version::V2, PathBuf::from("/sys/fs/cgroup/init.scope"))]
        );
    }

    #[test]
    fn locate_strips_mount_root_of_subtree() {
        // A container that mounts only the hierarchy below /docker/xyz.
        let mountinfo =
            "50 40 0:32 /docker/xyz /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n";
        let found = locate(mountinfo, "5:memory:/docker/xyz/app\n");
        assert_eq!(
            found,
            vec![(Version::V1, PathBuf::from("/sys/fs/cgroup/memory/app"))]
        );
    }

    #[test]
    fn locate_ignores_v1_without_memory() {
        let mountinfo = "33 30 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n";
        assert!(locate(mountinfo, "1:cpu,cpuacct:/\n").is_empty());
    }

    #[test]
    fn directory_name_cases() {
        assert_eq!(directory_name("2025/boston/spring"), "2025-boston-spring");
        assert_eq!(directory_name("index"), "index");
        assert_eq!(directory_name("a b:c"), "a_b_c");
        assert_eq!(directory_name(".."), "_..");
        assert_eq!(directory_name(""), "_");
    }

    #[test]
    fn keyed_value_reads_counters() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(1));
        assert_eq!(keyed_value(events, "max"), Some(12));
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(oom_control, "oom_kill"), Some(3));
        assert_eq!(keyed_value("under_oom 0\n", "oom_kill"), None);
    }

    #[test]
    fn format_bytes_cases() {
        assert_eq!(format_bytes(768 * 1024 * 1024), "768 MiB");
        assert_eq!(format_bytes(2 * 1024 * 1024 * 1024), "2 GiB");
        assert_eq!(format_bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(format_bytes(4096), "4 KiB");
        assert_eq!(format_bytes(1000), "1000 bytes");
    }

    /// Creates a controller over plain directories, where the control
    /// files become regular files. That is enough to check names and
    /// written values.
    fn fake_controller(version: Version) -> (tempfile::TempDir, Arc<MemoryController>) {
        let dir = tempfile::tempdir().unwrap();
        let controller = MemoryController::at(version, dir.path().to_path_buf(), 42);
        fs::create_dir_all(controller.base()).unwrap();
        (dir, Arc::new(controller))
    }

    #[tokio::test]
    async fn create_writes_limit_and_names_uniquely() {
        let (_dir, controller) = fake_controller(Version::V2);
        let first = controller.create("2025/boston", 64 << 20).unwrap();
        assert_eq!(first.path(), controller.base().join("2025-boston"));
        assert_eq!(
            fs::read_to_string(first.path().join("memory.max")).unwrap(),
            (64u64 << 20).to_string()
        );

        // A second process of the same tenant while the first still uses
        // the name (a draining process after a reload).
        let second = controller.create("2025/boston", 64 << 20).unwrap();
        assert_eq!(second.path(), controller.base().join("2025-boston.1"));

        // Plain directories with files in them cannot be removed, so only
        // the name is released here.
        fs::remove_file(first.path().join("memory.max")).unwrap();
        let first_path = first.path().to_path_buf();
        first.remove().await;
        assert!(!first_path.exists());
        let third = controller.create("2025/boston", 64 << 20).unwrap();
        assert_eq!(third.path(), first_path);
        drop(second);
        drop(third);
    }

    #[test]
    fn v1_limits_swap_when_accounted() {
        let (_dir, controller) = fake_controller(Version::V1);
        let cgroup = controller.create("kobe", 1 << 30).unwrap();
        assert_eq!(
            fs::read_to_string(cgroup.path().join("memory.limit_in_bytes")).unwrap(),
            (1u64 << 30).to_string()
        );
        assert!(!cgroup.path().join("memory.memsw.limit_in_bytes").exists());

        // The kernel creates the memsw file where swap is accounted.
        let memsw = cgroup.path().join("memory.memsw.limit_in_bytes");
        fs::write(&memsw, "9223372036854771712").unwrap();
        cgroup.write_limits().unwrap();
        assert_eq!(
            fs::read_to_string(&memsw).unwrap(),
            (1u64 << 30).to_string()
        );
    }

    #[test]
    fn stale_nonempty_directory_skipped() {
        let (_dir, controller) = fake_controller(Version::V2);
        let stale = controller.base().join("kobe");
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("cgroup.procs"), "123\n").unwrap();
        let cgroup = controller.create("kobe", 1 << 20).unwrap();
        assert_eq!(cgroup.path(), controller.base().join("kobe.1"));
    }

    #[test]
    fn oom_killed_reads_counter_or_falls_back() {
        let (_dir, controller) = fake_controller(Version::V1);
        let cgroup = controller.create("salem", 1 << 20).unwrap();
        let killed = ExitStatus::from_raw(libc::SIGKILL);
        let exited = ExitStatus::from_raw(1 << 8);
        let counted = MemoryUsage {
            oom_kills: Some(1),
            ..MemoryUsage::default()
        };
        assert!(cgroup.oom_killed(&counted, Some(exited)));
        let old_kernel = MemoryUsage {
            oom_kills: None,
            limit_hits: Some(5),
            peak: None,
        };
        assert!(cgroup.oom_killed(&old_kernel, Some(killed)));
        assert!(!cgroup.oom_killed(&old_kernel, Some(exited)));
        assert!(!cgroup.oom_killed(&MemoryUsage::default(), Some(killed)));
    }
}
