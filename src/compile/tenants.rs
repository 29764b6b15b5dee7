//! Tenants resolved from the config: launch specs with their templates
//! expanded, and the index that finds a request's tenant by longest path
//! prefix in time independent of the number of tenants.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::supervision::{self, PrewarmPatterns, Supervision};
use crate::config::expand::{self, PORT_PLACEHOLDER};
use crate::config::schema::{BotDetection, Hook, TenantHooks};
use crate::config::{ConfigError, EnvLookup, Loaded};
use crate::lookup::LookupMap;

/// Everything that decides how a tenant's process is started. Two specs
/// that compare equal can share a running process across a reload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaunchSpec {
    pub program: String,
    /// May contain `${port}`/`{{port}}`, filled in at spawn.
    pub args: Vec<String>,
    /// Working directory; `None` keeps navigator's own.
    pub cwd: Option<PathBuf>,
    /// Variables set on top of navigator's environment, in order; later
    /// entries already won over earlier ones of the same name.
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub memory_limit: Option<u64>,
}

impl LaunchSpec {
    /// Returns the value of `name` in the tenant's own variables.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A hook command with the tenant's templates already expanded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedHook {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub reload_config: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TenantSpec {
    /// Unique; used in logs, status output and per-tenant log files.
    pub name: String,
    /// URL prefix ending in `/`.
    pub path: String,
    pub launch: LaunchSpec,
    pub health_check: String,
    /// How long a request waits for readiness before the maintenance page.
    pub startup_timeout: Duration,
    /// How long the start may take before it counts as failed.
    pub ready_timeout: Duration,
    /// Longest silence of the tenant on a request; `None` when disabled.
    pub response_timeout: Option<Duration>,
    pub start_delay: Duration,
    pub track_websockets: bool,
    pub bot_detection: Option<BotDetection>,
    pub start_hooks: Vec<ResolvedHook>,
    pub stop_hooks: Vec<ResolvedHook>,
    /// `PIDFILE` from the tenant environment; an empty value means none.
    pub pidfile: Option<PathBuf>,
    /// Prewarming, the request queue and recycling. Not part of the launch
    /// spec: a reload that changes only these keeps the process.
    pub supervision: Supervision,
}

/// Tenants by path prefix. A lookup tries the request path's own prefixes
/// from the longest, one hash probe per path segment.
#[derive(Debug, Default)]
pub struct TenantIndex {
    tenants: Vec<Arc<TenantSpec>>,
    by_path: LookupMap<Box<str>, usize>,
    by_name: LookupMap<Box<str>, usize>,
    /// The deepest tenant path in segments, to skip probes that cannot hit.
    max_depth: usize,
}

impl TenantIndex {
    pub fn new(tenants: Vec<TenantSpec>) -> TenantIndex {
        let tenants: Vec<Arc<TenantSpec>> = tenants.into_iter().map(Arc::new).collect();
        let by_path = tenants
            .iter()
            .enumerate()
            .map(|(i, tenant)| (tenant.path.clone().into_boxed_str(), i))
            .collect();
        let by_name = tenants
            .iter()
            .enumerate()
            .map(|(i, tenant)| (tenant.name.clone().into_boxed_str(), i))
            .collect();
        let max_depth = tenants
            .iter()
            .map(|t| t.path.matches('/').count())
            .max()
            .unwrap_or(0);
        TenantIndex {
            tenants,
            by_path,
            by_name,
            max_depth,
        }
    }

    /// Finds the tenant whose path is the longest prefix of `path` (a
    /// canonical path). Only prefixes that end at a `/` count, so `/2025/bos`
    /// never matches the tenant `/2025/boston/`.
    pub fn find(&self, path: &str) -> Option<&Arc<TenantSpec>> {
        let bytes = path.as_bytes();
        let mut depth = 0;
        let mut cut = None;
        for (i, byte) in bytes.iter().enumerate() {
            if *byte == b'/' {
                depth += 1;
                if depth == self.max_depth {
                    cut = Some(i + 1);
                    break;
                }
            }
        }
        let mut end = cut.unwrap_or_else(|| path.rfind('/').map_or(0, |i| i + 1));
        while end > 0 {
            if let Some(&i) = self.by_path.get(&path[..end]) {
                return Some(&self.tenants[i]);
            }
            end = path[..end - 1].rfind('/').map_or(0, |i| i + 1);
        }
        None
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<TenantSpec>> {
        self.by_name.get(name).map(|&i| &self.tenants[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<TenantSpec>> {
        self.tenants.iter()
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Returns whether `path` is a tenant path without its final `/`.
    pub fn is_path_without_slash(&self, path: &str) -> bool {
        if path.ends_with('/') {
            return false;
        }
        let mut with_slash = String::with_capacity(path.len() + 1);
        with_slash.push_str(path);
        with_slash.push('/');
        self.by_path.contains_key(with_slash.as_str())
    }
}

/// The value of a tenant template variable: the tenant's `var`, then
/// navigator's environment, then built-ins; `port` stays a placeholder.
fn tenant_lookup<'a>(
    vars: &'a BTreeMap<String, String>,
    env: EnvLookup<'a>,
) -> impl Fn(&str) -> Option<String> + 'a {
    move |name: &str| {
        if name == "port" {
            return Some(PORT_PLACEHOLDER.to_string());
        }
        vars.get(name)
            .cloned()
            .or_else(|| env(name))
            .or_else(|| builtin_variable(name))
    }
}

/// Variables navigator defines itself. `NAVIGATOR_BIN` is this executable,
/// so a config can run the built-in demo tenant without knowing where the
/// binary was installed.
pub fn builtin_variable(name: &str) -> Option<String> {
    match name {
        "NAVIGATOR_BIN" => std::env::current_exe()
            .ok()
            .map(|path| path.to_string_lossy().into_owned()),
        _ => None,
    }
}

/// Derives a tenant's default name from its path: the part after
/// `root_path` without slashes at the ends, e.g. `2025/boston/spring`.
pub fn default_name(root_path: &str, path: &str) -> String {
    let relative = path.strip_prefix(root_path).unwrap_or(path);
    let name = relative.trim_matches('/');
    if !name.is_empty() {
        return name.to_string();
    }
    let whole = path.trim_matches('/');
    if whole.is_empty() {
        "root".to_string()
    } else {
        whole.to_string()
    }
}

/// Resolves every tenant of `loaded`, reporting each problem at its key.
pub fn resolve(
    loaded: &Loaded,
    env: EnvLookup<'_>,
    prewarm: &PrewarmPatterns,
    errors: &mut Vec<ConfigError>,
) -> Vec<TenantSpec> {
    let config = &loaded.config;
    let apps = &config.applications;
    let root_path = config.server.root_path.trim_end_matches('/');
    let mut seen_paths: HashMap<String, usize> = HashMap::new();
    let mut seen_names: HashSet<String> = HashSet::new();
    let mut resolved = Vec::with_capacity(apps.tenants.len());

    let default_hooks = &config.hooks.tenant;
    let legacy_hooks = apps.hooks.clone().unwrap_or_default();
    for (i, tenant) in apps.tenants.iter().enumerate() {
        let key = format!("applications.tenants[{i}]");
        let mut failed = false;
        let mut fail = |suffix: &str, message: String| {
            let at = if suffix.is_empty() {
                key.clone()
            } else {
                format!("{key}.{suffix}")
            };
            errors.push(loaded.error_at(&at, message));
            failed = true;
        };

        if !tenant.path.starts_with('/') {
            fail(
                "path",
                format!("tenant path {:?} must start with `/`", tenant.path),
            );
            continue;
        }
        let mut path = tenant.path.clone();
        if !path.ends_with('/') {
            path.push('/');
        }
        // Requests are matched in canonical form, so a path that is not
        // canonical (`..`, `//`, percent escapes) would never match.
        match crate::canonical::canonicalize(&path) {
            Ok(canonical) if canonical == path => {}
            Ok(canonical) => {
                fail(
                    "path",
                    format!(
                        "tenant path {path:?} never matches a request, as requests are matched in canonical form; write it as {canonical:?}"
                    ),
                );
                continue;
            }
            Err(error) => {
                fail(
                    "path",
                    format!("tenant path {path:?} never matches a request: {error}"),
                );
                continue;
            }
        }
        if let Some(first) = seen_paths.insert(path.clone(), i) {
            fail(
                "path",
                format!("path {path} is also used by applications.tenants[{first}]"),
            );
            continue;
        }
        let name = tenant
            .name
            .clone()
            .unwrap_or_else(|| default_name(root_path, &path));
        if !seen_names.insert(name.clone()) {
            fail(
                "name",
                format!("tenant name {name:?} is used by another tenant; names must be unique"),
            );
            continue;
        }

        let lookup = tenant_lookup(&tenant.var, env);
        // The key path is only formatted for an error: with 10,000 tenants
        // formatting it for every expansion was a good part of a reload.
        let mut expand_at = |suffix: &dyn Fn() -> String, template: &str| -> String {
            match expand::expand(template, &lookup) {
                Ok(value) => value,
                Err(error) => {
                    errors.push(loaded.error_at(&suffix(), format!("{error} (for tenant {name})")));
                    failed = true;
                    String::new()
                }
            }
        };

        let (program, args, program_key) = match launch_command(loaded, i) {
            Some(command) => command,
            None => {
                errors.push(
                    loaded
                        .error_at(&key, format!("tenant {name} has no command"))
                        .with_hint("set applications.framework.command or the tenant's `command`"),
                );
                continue;
            }
        };
        let program = expand_at(&|| program_key.clone(), &program);
        let args: Vec<String> = args
            .iter()
            .enumerate()
            .map(|(n, arg)| expand_at(&|| format!("{program_key}.args[{n}]"), arg))
            .collect();

        let mut env_map: BTreeMap<String, String> = BTreeMap::new();
        env_map.insert(
            apps.framework.port_env_var.clone(),
            PORT_PLACEHOLDER.to_string(),
        );
        for (var, template) in &apps.env {
            let value = expand_at(&|| format!("applications.env.{var}"), template);
            env_map.insert(var.clone(), value);
        }
        for (var, template) in &tenant.env {
            let value = expand_at(&|| format!("{key}.env.{var}"), template);
            env_map.insert(var.clone(), value);
        }

        let cwd = tenant
            .root
            .clone()
            .or_else(|| apps.framework.app_directory.clone())
            .map(|dir| PathBuf::from(expand_at(&|| format!("{key}.root"), &dir.to_string_lossy())));

        let mut resolve_hooks =
            |which: &str, pick: fn(&TenantHooks) -> &Vec<Hook>| -> Vec<ResolvedHook> {
                let sources = [
                    ("hooks.tenant".to_string(), default_hooks),
                    ("applications.hooks".to_string(), &legacy_hooks),
                    (format!("{key}.hooks"), &tenant.hooks),
                ];
                let mut hooks = Vec::new();
                for (prefix, set) in sources {
                    for (n, hook) in pick(set).iter().enumerate() {
                        let at = format!("{prefix}.{which}[{n}]");
                        hooks.push(ResolvedHook {
                            command: expand_at(&|| format!("{at}.command"), &hook.command),
                            args: hook
                                .args
                                .iter()
                                .enumerate()
                                .map(|(a, arg)| expand_at(&|| format!("{at}.args[{a}]"), arg))
                                .collect(),
                            env: hook
                                .env
                                .iter()
                                .map(|(var, value)| {
                                    (var.clone(), expand_at(&|| format!("{at}.env.{var}"), value))
                                })
                                .collect(),
                            timeout: hook.timeout.map(|t| t.get()),
                            reload_config: hook.reload_config.clone(),
                        });
                    }
                }
                hooks
            };
        let start_hooks = resolve_hooks("start", |set| &set.start);
        let stop_hooks = resolve_hooks("stop", |set| &set.stop);
        let supervision = supervision::resolve(loaded, &key, &name, tenant, prewarm, errors);

        if failed {
            continue;
        }
        if program.trim().is_empty() {
            errors.push(
                loaded
                    .error_at(&program_key, format!("the command of tenant {name} is empty"))
                    .with_hint("check the variables the command expands, such as an empty ${NAVIGATOR_BIN}"),
            );
            continue;
        }

        let env: Vec<(String, String)> = env_map.into_iter().collect();
        let pidfile = env
            .iter()
            .find(|(var, _)| var == "PIDFILE")
            .filter(|(_, value)| !value.is_empty())
            .map(|(_, value)| PathBuf::from(value));
        resolved.push(TenantSpec {
            name,
            path,
            launch: LaunchSpec {
                program,
                args,
                cwd,
                env,
                user: tenant.user.clone().or_else(|| apps.pools.user.clone()),
                group: tenant.group.clone().or_else(|| apps.pools.group.clone()),
                memory_limit: tenant
                    .memory_limit
                    .or(apps.pools.default_memory_limit)
                    .map(|size| size.0),
            },
            health_check: tenant
                .health_check
                .clone()
                .unwrap_or_else(|| apps.health_check.clone()),
            startup_timeout: tenant.startup_timeout.unwrap_or(apps.startup_timeout).get(),
            ready_timeout: apps.ready_timeout.get(),
            response_timeout: Some(
                tenant
                    .response_timeout
                    .unwrap_or(apps.response_timeout)
                    .get(),
            )
            .filter(|timeout| !timeout.is_zero()),
            start_delay: apps.framework.start_delay.get(),
            track_websockets: tenant.track_websockets.unwrap_or(apps.track_websockets),
            bot_detection: tenant.bot_detection.clone(),
            start_hooks,
            stop_hooks,
            pidfile,
            supervision,
        });
    }
    resolved
}

/// The program and arguments of tenant `i`, and the key they came from:
/// the tenant's `command`, Navigator's `runtime`/`server`/`args` or
/// `framework` name, else `applications.framework`.
fn launch_command(loaded: &Loaded, i: usize) -> Option<(String, Vec<String>, String)> {
    let apps = &loaded.config.applications;
    let tenant = &apps.tenants[i];
    let key = format!("applications.tenants[{i}]");

    if let Some(command) = &tenant.command {
        let args = tenant
            .args
            .clone()
            .unwrap_or_else(|| apps.framework.args.clone());
        return Some((command.clone(), args, format!("{key}.command")));
    }

    let (runtime, server, framework_args) = match &tenant.framework {
        Some(framework) => (
            apps.runtime.get(framework).cloned(),
            apps.server.get(framework).cloned(),
            apps.args.get(framework).cloned(),
        ),
        None => (None, None, None),
    };
    let runtime = tenant.runtime.clone().or(runtime);
    if let Some(runtime) = runtime {
        let mut args: Vec<String> = tenant.server.clone().or(server).into_iter().collect();
        args.extend(tenant.args.clone().or(framework_args).unwrap_or_default());
        return Some((runtime, args, format!("{key}.runtime")));
    }

    let command = apps.framework.command.clone()?;
    let args = tenant
        .args
        .clone()
        .unwrap_or_else(|| apps.framework.args.clone());
    Some((command, args, "applications.framework.command".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str) -> TenantSpec {
        TenantSpec {
            name: path.trim_matches('/').to_string(),
            path: path.to_string(),
            launch: LaunchSpec {
                program: "true".into(),
                args: vec![],
                cwd: None,
                env: vec![],
                user: None,
                group: None,
                memory_limit: None,
            },
            health_check: "/".into(),
            startup_timeout: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(60),
            response_timeout: None,
            start_delay: Duration::ZERO,
            track_websockets: true,
            bot_detection: None,
            start_hooks: vec![],
            stop_hooks: vec![],
            pidfile: None,
            supervision: Supervision::default(),
        }
    }

    fn index(paths: &[&str]) -> TenantIndex {
        TenantIndex::new(paths.iter().map(|p| spec(p)).collect())
    }

    #[test]
    fn longest_prefix_wins() {
        let index = index(&[
            "/showcase/",
            "/showcase/2025/boston/",
            "/showcase/2025/boston/april/",
        ]);
        let find = |path| index.find(path).map(|t| t.path.as_str());
        assert_eq!(
            find("/showcase/2025/boston/april/heats"),
            Some("/showcase/2025/boston/april/")
        );
        assert_eq!(
            find("/showcase/2025/boston/may/"),
            Some("/showcase/2025/boston/")
        );
        assert_eq!(find("/showcase/2025/bos"), Some("/showcase/"));
        assert_eq!(find("/showcase/2025/boston"), Some("/showcase/"));
        assert_eq!(find("/other"), None);
        assert_eq!(find("/"), None);
    }

    #[test]
    fn root_tenant_matches_everything() {
        let index = index(&["/", "/a/b/"]);
        assert_eq!(index.find("/x/y/z").unwrap().path, "/");
        assert_eq!(index.find("/a/b/c/d/e/f").unwrap().path, "/a/b/");
        assert_eq!(index.find("/").unwrap().path, "/");
    }

    #[test]
    fn deep_paths_skip_impossible_prefixes() {
        let index = index(&["/a/"]);
        assert_eq!(index.find("/a/b/c/d/e/f/g/h/i").unwrap().path, "/a/");
    }

    #[test]
    fn path_without_slash_detected() {
        let index = index(&["/showcase/2025/boston/"]);
        assert!(index.is_path_without_slash("/showcase/2025/boston"));
        assert!(!index.is_path_without_slash("/showcase/2025/boston/"));
        assert!(!index.is_path_without_slash("/showcase/2025"));
    }

    #[test]
    fn default_names_from_paths() {
        assert_eq!(
            default_name("/showcase", "/showcase/2025/boston/spring/"),
            "2025/boston/spring"
        );
        assert_eq!(default_name("/showcase", "/showcase/"), "showcase");
        assert_eq!(default_name("", "/"), "root");
        assert_eq!(default_name("", "/app/"), "app");
    }
}
