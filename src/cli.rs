//! Command-line subcommands other than running the server: `check`,
//! `convert` and `reload`.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::compile::Snapshot;
use crate::config::{self, source};

/// Exit code for a usage or config error.
pub const EXIT_CONFIG: i32 = 2;

/// `navigator check`: loads and validates the config and prints a summary.
pub fn check(path: &Path) -> i32 {
    let snapshot = match crate::compile::load_snapshot(path) {
        Ok(snapshot) => snapshot,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: invalid ({} error{})",
                path.display(),
                errors.0.len(),
                plural(errors.0.len())
            );
            return EXIT_CONFIG;
        }
    };
    print!("{}", summary(path, &snapshot));
    let mut warnings = missing_files(&snapshot);
    warnings.extend(crate::supervisor::identity::missing_accounts(&snapshot));
    warnings.extend(prewarm_warnings(&snapshot));
    warnings.extend(public_root_warnings(&snapshot));
    for warning in &warnings {
        println!("warning: {warning}");
    }
    println!("{}: ok", path.display());
    0
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// The counts `check` prints.
pub fn summary(path: &Path, snapshot: &Snapshot) -> String {
    let config = &snapshot.config;
    let rows = [
        ("listen", config.server.listen.to_string()),
        ("root_path", display_or_none(&snapshot.root_path)),
        ("tenants", snapshot.tenants.len().to_string()),
        ("redirects", snapshot.path_rules.redirects.len().to_string()),
        ("rewrites", snapshot.path_rules.rewrites.len().to_string()),
        ("fly replay rules", snapshot.replay.rules.len().to_string()),
        (
            "reverse proxies",
            snapshot.reverse_proxies.len().to_string(),
        ),
        ("cgi scripts", snapshot.cgi.len().to_string()),
        (
            "auth",
            if snapshot.auth.enabled {
                "on".into()
            } else {
                "off".into()
            },
        ),
        ("auth patterns", snapshot.auth.patterns.len().to_string()),
        ("public paths", snapshot.auth.public_paths.len().to_string()),
        (
            "managed processes",
            config.managed_processes.len().to_string(),
        ),
        ("max processes", snapshot.pools.max_size.to_string()),
        (
            "maintenance",
            if snapshot.maintenance_enabled {
                "on".into()
            } else {
                "off".into()
            },
        ),
    ];
    let mut out = format!("{}\n", path.display());
    for (name, value) in rows {
        out.push_str(&format!("  {name:<18} {value}\n"));
    }
    out
}

fn display_or_none(text: &str) -> String {
    if text.is_empty() {
        "(none)".into()
    } else {
        text.into()
    }
}

/// Files the config names that do not exist: warnings in `check`, errors
/// later where the feature needs them.
pub fn missing_files(snapshot: &Snapshot) -> Vec<String> {
    let config = &snapshot.config;
    let mut named: Vec<(String, PathBuf)> = Vec::new();
    if let Some(files) = &snapshot.static_files {
        named.push((
            "server.static.public_dir".into(),
            files.public_dir().to_path_buf(),
        ));
    }
    if let Some(htpasswd) = &snapshot.auth.htpasswd {
        named.push(("auth.htpasswd".into(), htpasswd.clone()));
    }
    for (i, script) in config.server.cgi_scripts.iter().enumerate() {
        named.push((
            format!("server.cgi_scripts[{i}].script"),
            script.script.clone(),
        ));
    }
    if let Some(tls) = &config.server.tls {
        named.push(("server.tls.cert".into(), tls.cert.clone()));
        named.push(("server.tls.key".into(), tls.key.clone()));
    }
    named
        .into_iter()
        .filter(|(_, path)| !path.exists())
        .map(|(key, path)| format!("{key}: {} does not exist", path.display()))
        .collect()
}

/// Lists the prewarm warnings: patterns that match no tenant, and more
/// marked tenants than `pools.max_size` allows.
pub fn prewarm_warnings(snapshot: &Snapshot) -> Vec<String> {
    let mut warnings: Vec<String> = snapshot
        .pools
        .prewarm_unmatched
        .iter()
        .map(|pattern| format!("applications.pools.prewarm: {pattern:?} matches no tenant"))
        .collect();
    let marked = snapshot
        .tenants
        .iter()
        .filter(|spec| spec.supervision.prewarm)
        .count();
    if marked > snapshot.pools.max_size {
        warnings.push(format!(
            "{marked} tenants are marked prewarm, but applications.pools.max_size is {}; only the first {} in config order are prewarmed",
            snapshot.pools.max_size, snapshot.pools.max_size
        ));
    }
    warnings
}

/// Lists public paths of `/` under enabled auth. Entries ending in `/` are
/// prefixes, so such an entry makes every path public.
pub fn public_root_warnings(snapshot: &Snapshot) -> Vec<String> {
    if !snapshot.auth.enabled {
        return Vec::new();
    }
    // `snapshot.auth.public_paths` lists `auth.public_paths` first, then
    // Navigator's `server.auth_exclude`.
    let own_count = snapshot.config.auth.public_paths.len();
    snapshot
        .auth
        .public_paths
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry.as_str() == "/")
        .map(|(i, _)| {
            let key = if i < own_count {
                format!("auth.public_paths[{i}]")
            } else {
                format!("server.auth_exclude[{}]", i - own_count)
            };
            format!(
                "{key}: \"/\" is a prefix of every path, so no path needs credentials; \
                 to make only the home page public, remove it and add \
                 {{ pattern = \"^/$\", action = \"off\" }} to auth.auth_patterns"
            )
        })
        .collect()
}

/// `navigator convert FILE.yml`: prints the equivalent TOML, keeping
/// `${...}` templates as written.
pub fn convert(path: &Path) -> i32 {
    if let Err(errors) = config::load(path) {
        eprintln!("{errors}");
        return EXIT_CONFIG;
    }
    match convert_to_toml(path) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(message) => {
            eprintln!("{}: {message}", path.display());
            EXIT_CONFIG
        }
    }
}

/// Converts the file at `path` (either format) to TOML text.
pub fn convert_to_toml(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let tree = source::parse(&text, source::Format::from_path(path))
        .map_err(|e| format!("{}: {}", e.pos, e.message))?;
    let json = source::to_json(&tree);
    toml::to_string_pretty(&json).map_err(|e| format!("cannot write TOML: {e}"))
}

/// Reads a process's command name from its `/proc/PID/comm` file. Returns
/// `None` when the process is gone or there is no procfs.
fn process_name(comm: &Path) -> Option<String> {
    let text = std::fs::read_to_string(comm).ok()?;
    Some(text.trim_end_matches('\n').to_string())
}

/// `navigator -s reload`: sends SIGHUP to the pid in the pid file, after
/// checking that the process has navigator's command name.
pub fn signal_reload(pid_file: &Path) -> i32 {
    let text = match std::fs::read_to_string(pid_file) {
        Ok(text) => text,
        Err(error) => {
            eprintln!(
                "cannot read pid file {}: {error}; is navigator running?",
                pid_file.display()
            );
            return 1;
        }
    };
    let pid: i32 = match text.trim().parse() {
        Ok(pid) if pid > 0 => pid,
        _ => {
            eprintln!(
                "pid file {} does not contain a process id",
                pid_file.display()
            );
            return 1;
        }
    };
    // A stale pid file may name a pid that the system has since given to
    // another program, which SIGHUP would most likely terminate.
    if let (Some(own), Some(theirs)) = (
        process_name(Path::new("/proc/self/comm")),
        process_name(&Path::new("/proc").join(pid.to_string()).join("comm")),
    ) && own != theirs
    {
        eprintln!(
            "stale pid file {}: pid {pid} is `{theirs}`, not navigator; remove the file or pass --pid-file",
            pid_file.display()
        );
        return 1;
    }
    match kill(Pid::from_raw(pid), Signal::SIGHUP) {
        Ok(()) => {
            println!(
                "sent SIGHUP to navigator (pid {pid} from {})",
                pid_file.display()
            );
            0
        }
        Err(error) => {
            eprintln!(
                "cannot signal pid {pid} from {}: {error}",
                pid_file.display()
            );
            1
        }
    }
}
