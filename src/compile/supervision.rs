//! Process-pool controls of each tenant, resolved from the tenant's own
//! keys and the `applications.pools` defaults: prewarming, the request
//! queue and recycling.

use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::schema::{Pools, Tenant};
use crate::config::{ConfigError, Loaded};

/// A bound on the requests one tenant process serves at once, with a
/// bounded wait queue in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    pub max_concurrency: usize,
    /// Requests that may wait once `max_concurrency` are in flight; a
    /// request beyond that gets a 503 at once.
    pub max_queue: usize,
    /// Maximum wait for a place; `None` waits without limit.
    pub timeout: Option<Duration>,
}

/// When a tenant process is replaced by a fresh one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecycleSettings {
    /// After this many admitted requests.
    pub max_requests: Option<u64>,
    /// When the resident memory of its process group exceeds this many
    /// bytes.
    pub memory: Option<u64>,
}

/// The `applications.pools.prewarm` globs, compiled once per load.
pub struct PrewarmPatterns {
    patterns: Vec<String>,
    set: GlobSet,
}

impl PrewarmPatterns {
    /// Compiles the globs of `pools.prewarm`. In them `*` and `?` stay
    /// within one path segment of a tenant name, `**` spans segments, and
    /// `[abc]` is a character class.
    pub fn compile(loaded: &Loaded, errors: &mut Vec<ConfigError>) -> PrewarmPatterns {
        let pools = &loaded.config.applications.pools;
        let mut builder = GlobSetBuilder::new();
        let mut patterns = Vec::new();
        for (i, pattern) in pools.prewarm.iter().enumerate() {
            match GlobBuilder::new(pattern).literal_separator(true).build() {
                Ok(glob) => {
                    builder.add(glob);
                    patterns.push(pattern.clone());
                }
                Err(error) => errors.push(
                    loaded
                        .error_at(
                            &format!("applications.pools.prewarm[{i}]"),
                            format!("invalid glob {pattern:?}: {}", error.kind()),
                        )
                        .with_hint("use tenant names with `*` (one segment) or `**` (any depth)"),
                ),
            }
        }
        let set = builder.build().unwrap_or_else(|error| {
            errors.push(loaded.error_at(
                "applications.pools.prewarm",
                format!("cannot compile the prewarm globs: {error}"),
            ));
            GlobSet::empty()
        });
        PrewarmPatterns { patterns, set }
    }

    /// Returns whether some pattern matches the tenant `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.set.is_match(name)
    }

    /// Returns the patterns that match none of `names`, for a warning:
    /// such a pattern is most likely a typo.
    pub fn unmatched<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) -> Vec<String> {
        let mut matched = vec![false; self.patterns.len()];
        for name in names {
            for index in self.set.matches(name) {
                matched[index] = true;
            }
        }
        self.patterns
            .iter()
            .zip(matched)
            .filter(|(_, hit)| !hit)
            .map(|(pattern, _)| pattern.clone())
            .collect()
    }
}

/// A tenant's resolved pool controls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Supervision {
    pub prewarm: bool,
    /// `None`: no bound on concurrent requests.
    pub queue: Option<QueueSettings>,
    pub recycle: RecycleSettings,
}

/// Resolves the controls of tenant `tenant` (at key `key`, named `name`):
/// its own keys win over the `pools` defaults. Zero where it would make
/// no sense (no request ever served, a process recycled at once) is
/// reported as an error.
pub fn resolve(
    loaded: &Loaded,
    key: &str,
    name: &str,
    tenant: &Tenant,
    prewarm: &PrewarmPatterns,
    errors: &mut Vec<ConfigError>,
) -> Supervision {
    let pools: &Pools = &loaded.config.applications.pools;
    let mut at_least_one = |value: Option<u64>, tenant_sets_it: bool, field: &str| {
        if value != Some(0) {
            return value;
        }
        let at = if tenant_sets_it {
            format!("{key}.{field}")
        } else {
            format!("applications.pools.{field}")
        };
        errors.push(
            loaded
                .error_at(&at, format!("{field} must be at least 1"))
                .with_hint("leave the key out for no limit"),
        );
        None
    };

    let max_concurrency = at_least_one(
        tenant
            .max_concurrency
            .or(pools.max_concurrency)
            .map(|n| n as u64),
        tenant.max_concurrency.is_some(),
        "max_concurrency",
    );
    let max_requests = at_least_one(
        tenant.max_requests.or(pools.max_requests),
        tenant.max_requests.is_some(),
        "max_requests",
    );
    let memory = at_least_one(
        tenant
            .recycle_memory
            .or(pools.recycle_memory)
            .map(|size| size.0),
        tenant.recycle_memory.is_some(),
        "recycle_memory",
    );

    let queue = max_concurrency.map(|limit| {
        let timeout = tenant.queue_timeout.unwrap_or(pools.queue_timeout);
        QueueSettings {
            max_concurrency: usize::try_from(limit).unwrap_or(usize::MAX),
            max_queue: tenant.max_queue.unwrap_or(pools.max_queue),
            timeout: (!timeout.is_zero()).then(|| timeout.get()),
        }
    });

    Supervision {
        prewarm: tenant.prewarm.unwrap_or_else(|| prewarm.matches(name)),
        queue,
        recycle: RecycleSettings {
            max_requests,
            memory,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::source::Format;
    use std::path::Path;

    fn load(text: &str) -> Loaded {
        crate::config::load_str(text, Format::Toml, Path::new("test.toml"), &|_| None)
            .expect("valid config")
    }

    #[test]
    fn prewarm_globs_stay_within_segments() {
        let loaded = load(
            "[applications.pools]\nprewarm = [\"2025/boston/april\", \"2025/raleigh/*\", \"2024/**\"]\n",
        );
        let mut errors = Vec::new();
        let patterns = PrewarmPatterns::compile(&loaded, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(patterns.matches("2025/boston/april"));
        assert!(!patterns.matches("2025/boston/may"));
        assert!(patterns.matches("2025/raleigh/disney"));
        assert!(!patterns.matches("2025/raleigh/disney/extra"));
        assert!(patterns.matches("2024/kobe/spring"));
        assert!(!patterns.matches("2023/kobe/spring"));
    }

    #[test]
    fn prewarm_reports_unmatched_patterns() {
        let loaded = load("[applications.pools]\nprewarm = [\"2025/*/april\", \"2052/*/*\"]\n");
        let patterns = PrewarmPatterns::compile(&loaded, &mut Vec::new());
        let names = ["2025/boston/april", "2025/kobe/spring"];
        assert_eq!(patterns.unmatched(names.iter().copied()), vec!["2052/*/*"]);
    }

    #[test]
    fn prewarm_invalid_glob_is_error() {
        let loaded = load("[applications.pools]\nprewarm = [\"2025/[boston\"]\n");
        let mut errors = Vec::new();
        PrewarmPatterns::compile(&loaded, &mut errors);
        assert_eq!(errors.len(), 1);
        let message = errors[0].to_string();
        assert!(
            message.contains("applications.pools.prewarm[0]"),
            "{message}"
        );
        assert!(message.contains("invalid glob"), "{message}");
    }

    #[test]
    fn tenant_keys_override_pool_defaults() {
        let loaded = load(
            r#"
[applications.pools]
prewarm = ["a"]
max_concurrency = 4
max_queue = 7
queue_timeout = "2s"
max_requests = 1000
recycle_memory = "600M"

[[applications.tenants]]
path = "/a/"
prewarm = false
max_concurrency = 2
queue_timeout = "0"
recycle_memory = "1G"
"#,
        );
        let patterns = PrewarmPatterns::compile(&loaded, &mut Vec::new());
        let tenant = &loaded.config.applications.tenants[0];
        let mut errors = Vec::new();
        let resolved = resolve(
            &loaded,
            "applications.tenants[0]",
            "a",
            tenant,
            &patterns,
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!resolved.prewarm, "the tenant's own `false` wins");
        assert_eq!(
            resolved.queue,
            Some(QueueSettings {
                max_concurrency: 2,
                max_queue: 7,
                timeout: None,
            })
        );
        assert_eq!(resolved.recycle.max_requests, Some(1000));
        assert_eq!(resolved.recycle.memory, Some(1 << 30));
    }

    #[test]
    fn defaults_are_unlimited() {
        let loaded = load("[[applications.tenants]]\npath = \"/a/\"\n");
        let patterns = PrewarmPatterns::compile(&loaded, &mut Vec::new());
        let tenant = &loaded.config.applications.tenants[0];
        let resolved = resolve(
            &loaded,
            "applications.tenants[0]",
            "a",
            tenant,
            &patterns,
            &mut Vec::new(),
        );
        assert_eq!(resolved, Supervision::default());
    }

    #[test]
    fn zero_limits_are_errors_at_their_key() {
        let loaded = load(
            "[applications.pools]\nmax_requests = 0\n\n[[applications.tenants]]\npath = \"/a/\"\nmax_concurrency = 0\n",
        );
        let patterns = PrewarmPatterns::compile(&loaded, &mut Vec::new());
        let tenant = &loaded.config.applications.tenants[0];
        let mut errors = Vec::new();
        let resolved = resolve(
            &loaded,
            "applications.tenants[0]",
            "a",
            tenant,
            &patterns,
            &mut errors,
        );
        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("applications.tenants[0].max_concurrency"));
        assert!(messages[1].contains("applications.pools.max_requests"));
        assert_eq!(resolved.queue, None);
    }
}
