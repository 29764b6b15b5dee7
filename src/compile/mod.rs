//! The compiled snapshot of a config: everything the request path needs,
//! built once per load so that nothing is parsed or compiled per request.
//! A reload builds a new snapshot and swaps it in whole.

pub mod rules;
pub mod supervision;
pub mod tenants;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::auth::AccessControl;
use crate::config::schema::{BotDetection, CgiScript, Config};
use crate::config::{ConfigErrors, EnvLookup, Loaded};
use crate::static_files::StaticFiles;
pub use rules::{AuthRules, PathRules, ProxyRoute, ReplayRules, ReplayTarget};
pub use tenants::{LaunchSpec, TenantIndex, TenantSpec};

/// The synthetic health check response.
#[derive(Debug, Clone)]
pub struct HealthResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct HealthRoute {
    pub path: String,
    /// `None`: the health check is proxied like a tenant request.
    pub response: Option<HealthResponse>,
}

/// Pool-wide tenant process settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_size: usize,
    /// Idle time before a tenant is stopped; zero disables reaping.
    pub idle_timeout: Duration,
    pub start_port: u16,
    pub end_port: u16,
    pub grace_period: Duration,
    /// How often tenants with `recycle_memory` have their memory read.
    pub memory_check_interval: Duration,
    /// `pools.prewarm` globs that match no tenant, for a warning.
    pub prewarm_unmatched: Vec<String>,
}

pub struct Snapshot {
    /// The config as written (after `${VAR}` expansion), for components
    /// that read their own sections, without `applications.tenants`: that
    /// list is in `loaded.config`, and compiled in `tenants`.
    pub config: Config,
    pub loaded: Loaded,
    pub loaded_at: SystemTime,
    /// `server.root_path` without a trailing slash; empty for none.
    pub root_path: String,
    pub health: Option<HealthRoute>,
    pub static_files: Option<StaticFiles>,
    pub maintenance_enabled: bool,
    pub maintenance_page: String,
    pub path_rules: PathRules,
    pub replay: ReplayRules,
    pub fly: crate::fly::FlyRoutes,
    pub auth: AuthRules,
    /// The public-path matchers and the htpasswd file built from `auth`.
    pub access: AccessControl,
    pub reverse_proxies: Vec<ProxyRoute>,
    /// The pooled client for reverse proxy targets; trusts the public web
    /// roots plus `routes.tls_ca_file`.
    pub reverse_proxy_client: crate::reverse_proxy::Client,
    pub cgi: HashMap<String, CgiScript>,
    pub bot_detection: BotDetection,
    pub tenants: TenantIndex,
    pub pools: PoolSettings,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("file", &self.loaded.file)
            .field("tenants", &self.tenants.len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Compiles `loaded`; `env` resolves `${VAR}` in tenant templates.
    pub fn compile(mut loaded: Loaded, env: EnvLookup<'_>) -> Result<Snapshot, ConfigErrors> {
        let mut errors = Vec::new();
        // The tenant list can hold 10,000 entries, so the snapshot keeps it
        // once, in `loaded.config`, and this copy goes without it.
        let tenant_list = std::mem::take(&mut loaded.config.applications.tenants);
        let config = loaded.config.clone();
        loaded.config.applications.tenants = tenant_list;
        let server = &config.server;

        let root_path = server.root_path.trim_end_matches('/').to_string();
        if !root_path.is_empty() && !root_path.starts_with('/') {
            errors.push(loaded.error_at("server.root_path", "root_path must start with `/`"));
        }

        let health = server.health_check.as_ref().map(|check| HealthRoute {
            path: check.path.clone(),
            response: check.response.as_ref().map(|response| {
                let status = StatusCode::from_u16(response.status).unwrap_or_else(|_| {
                    errors.push(loaded.error_at(
                        "server.health_check.response.status",
                        format!("invalid HTTP status {}", response.status),
                    ));
                    StatusCode::OK
                });
                let mut headers = HeaderMap::new();
                for (name, value) in &response.headers {
                    let key = format!("server.health_check.response.headers.{name}");
                    match (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(value),
                    ) {
                        (Ok(name), Ok(value)) => {
                            headers.insert(name, value);
                        }
                        _ => errors.push(
                            loaded.error_at(&key, format!("invalid header {name}: {value:?}")),
                        ),
                    }
                }
                HealthResponse {
                    status,
                    headers,
                    body: Bytes::from(response.body.clone()),
                }
            }),
        });

        let mut static_config = server.static_files.clone();
        if static_config.public_dir.is_none() {
            static_config.public_dir = server.public_dir.clone();
        }
        if let Some(extensions) = &server.allowed_extensions {
            static_config
                .allowed_extensions
                .extend(extensions.iter().cloned());
        }
        if let Some(try_files) = &server.try_files {
            static_config.try_files.extend(try_files.iter().cloned());
        }
        if let Some(cache) = &server.cache_control {
            static_config
                .cache_control
                .overrides
                .extend(cache.overrides.iter().cloned());
            if static_config.cache_control.default.is_none() {
                static_config.cache_control.default = cache.default;
            }
        }
        let static_files = StaticFiles::new(&root_path, &static_config);

        if let Err(message) = crate::status::validate_path(&server.status.path) {
            errors.push(loaded.error_at("server.status.path", message));
        }

        let path_rules = PathRules::compile(&loaded, &mut errors);
        let replay = ReplayRules::compile(&loaded, &mut errors);
        let fly = crate::fly::FlyRoutes::compile(&loaded, &mut errors);
        let auth = AuthRules::compile(&loaded, &mut errors);
        let access = AccessControl::compile(&loaded, &auth, &mut errors);
        let bots_enabled = server.bot_detection.enabled
            || loaded.config.applications.tenants.iter().any(|tenant| {
                tenant
                    .bot_detection
                    .as_ref()
                    .is_some_and(|bots| bots.enabled)
            });
        if bots_enabled {
            crate::bots::warm_up();
        }
        let reverse_proxies = rules::compile_reverse_proxies(&loaded, &mut errors);
        let ca_file = config.routes.tls_ca_file.as_deref();
        let reverse_proxy_client = match crate::reverse_proxy::new_client(ca_file) {
            Ok(client) => Some(client),
            Err(message) => {
                errors.push(loaded.error_at("routes.tls_ca_file", message));
                None
            }
        };

        let mut cgi = HashMap::new();
        for (i, script) in server.cgi_scripts.iter().enumerate() {
            if cgi.insert(script.path.clone(), script.clone()).is_some() {
                errors.push(loaded.error_at(
                    &format!("server.cgi_scripts[{i}].path"),
                    format!("CGI path {} is configured twice", script.path),
                ));
            }
        }

        let prewarm = supervision::PrewarmPatterns::compile(&loaded, &mut errors);
        let tenant_specs = tenants::resolve(&loaded, env, &prewarm, &mut errors);

        let pools = &config.applications.pools;
        if pools.max_size == 0 {
            errors.push(
                loaded.error_at("applications.pools.max_size", "max_size must be at least 1"),
            );
        }
        let end_port = pools
            .end_port
            .unwrap_or_else(|| pools.start_port.saturating_add(999));
        if end_port < pools.start_port {
            errors.push(loaded.error_at(
                "applications.pools.end_port",
                "end_port is below start_port",
            ));
        }

        for (i, process) in config.managed_processes.iter().enumerate() {
            let duplicate = config.managed_processes[..i]
                .iter()
                .any(|p| p.name == process.name);
            if duplicate {
                errors.push(loaded.error_at(
                    &format!("managed_processes[{i}].name"),
                    format!("managed process name {:?} is used twice", process.name),
                ));
            }
        }

        if pools.memory_check_interval.is_zero() {
            errors.push(loaded.error_at(
                "applications.pools.memory_check_interval",
                "memory_check_interval must be longer than 0",
            ));
        }
        let prewarm_unmatched =
            prewarm.unmatched(tenant_specs.iter().map(|spec| spec.name.as_str()));

        let Some(reverse_proxy_client) = reverse_proxy_client.filter(|_| errors.is_empty()) else {
            return Err(ConfigErrors(errors));
        };

        Ok(Snapshot {
            root_path,
            health,
            static_files,
            maintenance_enabled: config.maintenance.enabled,
            maintenance_page: config.maintenance.page.clone(),
            path_rules,
            replay,
            fly,
            auth,
            access,
            reverse_proxies,
            reverse_proxy_client,
            cgi,
            bot_detection: server.bot_detection.clone(),
            tenants: TenantIndex::new(tenant_specs),
            pools: PoolSettings {
                max_size: pools.max_size.max(1),
                idle_timeout: pools.timeout.get(),
                start_port: pools.start_port,
                end_port,
                grace_period: pools.grace_period.get(),
                memory_check_interval: pools.memory_check_interval.get(),
                prewarm_unmatched,
            },
            config,
            loaded,
            loaded_at: SystemTime::now(),
        })
    }

    /// Whether `path` is `root_path` or a tenant path without its final
    /// `/`, which answer with a redirect to the path with it.
    pub fn needs_trailing_slash(&self, path: &str) -> bool {
        (!self.root_path.is_empty() && path == self.root_path)
            || self.tenants.is_path_without_slash(path)
    }
}

/// Loads and compiles `file` with navigator's own environment.
pub fn load_snapshot(file: &std::path::Path) -> Result<Arc<Snapshot>, ConfigErrors> {
    let loaded = crate::config::load(file)?;
    Snapshot::compile(loaded, &|name| std::env::var(name).ok()).map(Arc::new)
}
