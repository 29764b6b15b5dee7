//! Tenant isolation. Processes run as the configured user with no
//! supplementary groups, inside a memory-limited cgroup. An OOM kill is
//! logged and the next request starts the tenant again, and the cgroup
//! goes away with the process. The tests need root and a cgroup memory
//! controller, and each prints why it skips where they are missing.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{Navigator, Showcase, event_scope, eventually, process_alive, start_showcase};

fn json_get(navigator: &Navigator, path: &str) -> serde_json::Value {
    let response = navigator.request("GET", path, &[("Accept", "application/json")], b"");
    assert_eq!(
        response.status,
        200,
        "{path}: {}\nlog:\n{}",
        response.text(),
        navigator.logs.text()
    );
    response.json()
}

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root (switching users and creating cgroups)");
    false
}

/// A system user created for one test and deleted when dropped, also when
/// the test fails.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

impl TestUser {
    fn create() -> TestUser {
        let name = format!("navtest-{:08x}", fastrand::u32(..));
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(&name)
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {name} failed: {status}");
        let entry = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("the new user has a passwd entry");
        TestUser {
            uid: entry.uid.as_raw(),
            gid: entry.gid.as_raw(),
            home: entry.dir.display().to_string(),
            name,
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        // userdel removes the user's own group only where USERGROUPS_ENAB
        // is set; remove it if it is still there.
        if nix::unistd::Group::from_name(&self.name)
            .ok()
            .flatten()
            .is_some()
        {
            let _ = Command::new("groupdel").arg(&self.name).status();
        }
    }
}

/// Hands `dir` and everything in it to `uid`/`gid`, so a tenant running as
/// that user can use it as its working directory, database and pid dir.
fn give_to(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            give_to(&path, uid, gid);
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
    }
}

/// Returns a path of the navigator binary that other users can execute:
/// the built one when every directory above it is searchable by others,
/// else a copy in `dir`.
fn executable_for_others(dir: &Path) -> PathBuf {
    let built = Path::new(support::NAVIGATOR);
    let searchable = built
        .ancestors()
        .skip(1)
        .all(|ancestor| std::fs::metadata(ancestor).is_ok_and(|m| m.mode() & 0o001 != 0));
    if searchable {
        return built.to_path_buf();
    }
    let copy = dir.join("navigator-bin");
    if std::fs::hard_link(built, &copy).is_err() {
        std::fs::copy(built, &copy).unwrap();
    }
    copy
}

/// Returns the supplementary groups of `pid` from `/proc/PID/status`.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    navigator::demo::process_ids(&status).2
}

#[test]
fn tenant_runs_as_configured_user() {
    if !is_root() || support::skip_without("useradd") || support::skip_without("setpriv") {
        return;
    }
    let user = TestUser::create();
    let dir = tempfile::tempdir().unwrap();
    support::write_public_tree(dir.path());
    std::fs::create_dir_all(dir.path().join("db")).unwrap();
    std::fs::create_dir_all(dir.path().join("pids")).unwrap();
    let binary = executable_for_others(dir.path());
    give_to(dir.path(), user.uid, user.gid);
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let config = Showcase {
        pools: format!("user = \"{}\"", user.name),
        ..Showcase::default()
    }
    .toml()
    .replace("@NAVIGATOR@", &binary.display().to_string());
    // Navigator itself gets supplementary groups, so the test shows that
    // the tenant does not inherit them.
    let navigator =
        Navigator::start_wrapped(dir, &config, &[], &["setpriv", "--groups", "4,27", "--"]);
    assert_eq!(supplementary_groups(navigator.child.id()), vec![4, 27]);

    let scope = event_scope(0);
    let body = json_get(&navigator, &format!("/showcase/{scope}/"));
    assert_eq!(body["uid"], user.uid);
    assert_eq!(body["gid"], user.gid);
    assert_eq!(body["groups"], serde_json::json!([]));
    assert_eq!(body["env"]["USER"], user.name.as_str());
    assert_eq!(body["env"]["LOGNAME"], user.name.as_str());
    assert_eq!(body["env"]["HOME"], user.home.as_str());

    // The death signal survives the switch: killing navigator still ends
    // the tenant.
    let pid = body["pid"].as_u64().unwrap() as i32;
    navigator.signal(Signal::SIGKILL);
    assert!(
        eventually(Duration::from_secs(10), || !process_alive(pid)),
        "tenant {pid} outlived a killed navigator"
    );
}

#[test]
fn unknown_user_fails_start_with_name() {
    if !is_root() {
        return;
    }
    let missing = format!("navtest-missing-{:06x}", fastrand::u32(..0xff_ffff));
    let navigator = start_showcase(&Showcase {
        pools: format!("user = \"{missing}\""),
        ..Showcase::default()
    });
    let response = navigator.get(&format!("/showcase/{}/", event_scope(1)));
    assert_eq!(response.status, 502, "{}", response.text());
    let line = navigator
        .logs
        .wait_for("tenant failed to start", Duration::from_secs(5))
        .expect("a start failure in the log");
    assert!(
        line.contains(&format!("user `{missing}` not found")),
        "{line}"
    );
}

#[test]
fn check_warns_about_missing_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("navigator.toml");
    let showcase = Showcase {
        pools: "user = \"navtest-nobody-here\"\ngroup = \"navtest-nogroup-here\"".into(),
        ..Showcase::default()
    };
    support::write_config(&config, &showcase.toml(), dir.path());
    let output = Command::new(support::NAVIGATOR)
        .arg("check")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(
            "warning: applications.pools.user: user `navtest-nobody-here` not found \
             (no passwd entry); create it or change `user`"
        ),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("warning: applications.pools.group: group `navtest-nogroup-here` not found"),
        "{stdout}"
    );
}

/// Returns the cgroup directory of the tenant's process from the start
/// line, or `None` (after printing why) where limits are not enforced.
fn tenant_cgroup(navigator: &Navigator, scope: &str) -> Option<PathBuf> {
    let line = navigator
        .logs
        .wait_for(
            &format!("tenant process started tenant={scope} "),
            Duration::from_secs(10),
        )
        .expect("a start line");
    if let Some(reason) = navigator
        .logs
        .wait_for("memory limits are not enforced", Duration::ZERO)
    {
        eprintln!("skipped: this machine offers no usable cgroup memory controller: {reason}");
        return None;
    }
    let path = support::parse_field(&line, "cgroup").expect("cgroup field");
    assert_ne!(path, "-", "{line}");
    Some(PathBuf::from(path))
}

/// Reads the memory limit the cgroup enforces (v2 or v1 file).
fn cgroup_limit(cgroup: &Path) -> u64 {
    let text = std::fs::read_to_string(cgroup.join("memory.max"))
        .or_else(|_| std::fs::read_to_string(cgroup.join("memory.limit_in_bytes")))
        .unwrap();
    text.trim().parse().unwrap()
}

#[test]
fn tenant_over_memory_limit_killed_and_restarted() {
    let navigator = start_showcase(&Showcase {
        pools: "default_memory_limit = \"64M\"".into(),
        ..Showcase::default()
    });
    let scope = event_scope(2);
    let first = json_get(&navigator, &format!("/showcase/{scope}/"));
    let Some(cgroup) = tenant_cgroup(&navigator, &scope) else {
        return;
    };
    assert_eq!(cgroup_limit(&cgroup), 64 << 20);
    let cgroup_pids = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert_eq!(cgroup_pids.trim(), first["pid"].to_string());

    // Allocating four times the limit gets the tenant killed mid-request.
    let response = navigator.get(&format!("/showcase/{scope}/allocate?mb=256"));
    assert!(response.status >= 500, "{}", response.status);
    let line = navigator
        .logs
        .wait_for(
            "tenant killed by the kernel OOM killer",
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("no OOM report; log:\n{}", navigator.logs.text()));
    assert!(line.contains(&format!("tenant={scope}")), "{line}");
    assert!(line.contains("limit=64 MiB"), "{line}");

    let second = json_get(&navigator, &format!("/showcase/{scope}/"));
    assert_ne!(second["pid"], first["pid"]);
    let allocated = navigator.get(&format!("/showcase/{scope}/allocate?mb=8"));
    assert_eq!(allocated.status, 200, "small allocations still work");
}

#[test]
fn cgroup_removed_after_idle_stop() {
    let navigator = start_showcase(&Showcase {
        pools: "timeout = \"1s\"\ndefault_memory_limit = \"256M\"".into(),
        ..Showcase::default()
    });
    let scope = event_scope(3);
    json_get(&navigator, &format!("/showcase/{scope}/allocate?mb=16"));
    let Some(cgroup) = tenant_cgroup(&navigator, &scope) else {
        return;
    };
    assert!(cgroup.is_dir());
    assert_eq!(cgroup_limit(&cgroup), 256 << 20);

    let stopped = navigator
        .logs
        .wait_for("tenant process stopped", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("tenant not stopped; log:\n{}", navigator.logs.text()));
    assert!(
        eventually(Duration::from_secs(5), || !cgroup.exists()),
        "cgroup {} left behind",
        cgroup.display()
    );
    // The peak covers the 16 MiB the tenant touched.
    let peak = support::parse_field(&stopped, "memory_peak").unwrap();
    assert!(
        peak.parse::<f64>().is_ok_and(|mib| mib >= 16.0),
        "{stopped}"
    );
}

#[test]
fn unprivileged_navigator_runs_tenants_unchanged() {
    if !is_root() || support::skip_without("setpriv") {
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("skipped: no user `nobody` on this machine");
        return;
    };
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let dir = tempfile::tempdir().unwrap();
    support::write_public_tree(dir.path());
    let binary = executable_for_others(dir.path());
    give_to(dir.path(), uid, gid);

    let config = Showcase {
        pools: "user = \"root\"\ndefault_memory_limit = \"64M\"".into(),
        ..Showcase::default()
    }
    .toml()
    .replace("@NAVIGATOR@", &binary.display().to_string());
    let reuid = format!("--reuid={uid}");
    let regid = format!("--regid={gid}");
    let navigator = Navigator::start_wrapped(
        dir,
        &config,
        &[],
        &["setpriv", &reuid, &regid, "--clear-groups", "--"],
    );

    // Neither the user switch nor the memory limit is possible: both are
    // logged once and every tenant still starts as navigator's user.
    for i in 0..2 {
        let body = json_get(&navigator, &format!("/showcase/{}/", event_scope(i)));
        assert_eq!(body["uid"], uid);
        assert_eq!(body["gid"], gid);
    }
    // Logged before the first tenant starts, but the thread that reads
    // navigator's output may still be behind.
    for line in [
        "navigator is not running as root",
        "memory limits are not enforced",
    ] {
        assert!(
            navigator
                .logs
                .wait_for(line, Duration::from_secs(10))
                .is_some()
        );
        assert_eq!(navigator.logs.count(line), 1, "{line}");
    }
    let started = navigator.logs.count("tenant process started");
    assert_eq!(started, 2, "log:\n{}", navigator.logs.text());
}
