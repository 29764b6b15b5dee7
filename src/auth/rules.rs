//! The public-path rules: `auth.public_paths` and `auth.auth_patterns`
//! compiled into matchers once per config.

use std::collections::HashSet;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::RegexSet;

use crate::compile::AuthRules;
use crate::compile::rules::AuthAction;
use crate::config::{ConfigError, Loaded};

/// The credentials a path needs before the pipeline may route it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// Every response is allowed without credentials.
    Public,
    /// Without credentials only the static-file step may respond. Globs
    /// such as `*.css` give this, so that a tenant route with a format
    /// suffix (`/2025/boston/people.css`) still needs credentials.
    PublicIfStatic,
    /// Credentials are required; a 401 names this realm.
    Credentials(Arc<str>),
}

/// The compiled public-path rules.
///
/// Precedence, first decision wins:
/// 1. `auth_patterns` in config order (the first matching regex decides:
///    `off` makes the path public, a realm name requires credentials), so
///    a realm pattern can protect a part of a public prefix;
/// 2. exact `public_paths` and prefixes (entries ending in `/`): public;
/// 3. globs (entries containing `*`): public only for static answers;
/// 4. everything else needs credentials with `auth.realm`.
#[derive(Debug)]
pub struct PublicRules {
    default_realm: Arc<str>,
    exact: HashSet<Box<str>>,
    /// Each ends with `/`; looked up by the path's own `/`-terminated
    /// prefixes, so the cost is one probe per path segment.
    prefixes: HashSet<Box<str>>,
    globs: GlobSet,
    patterns: RegexSet,
    /// The action of each regex in `patterns`, by index.
    actions: Vec<Requirement>,
}

impl PublicRules {
    /// Compiles `rules`; invalid globs and realms are reported at their
    /// config keys.
    pub fn compile(loaded: &Loaded, rules: &AuthRules, errors: &mut Vec<ConfigError>) -> Self {
        let default_realm: Arc<str> = Arc::from(rules.realm.as_str());
        check_realm(loaded, "auth.realm", &rules.realm, errors);

        // `AuthRules.public_paths` lists `auth.public_paths` first, then
        // Navigator's `server.auth_exclude`.
        let own_count = loaded.config.auth.public_paths.len();
        let key_of = |i: usize| {
            if i < own_count {
                format!("auth.public_paths[{i}]")
            } else {
                format!("server.auth_exclude[{}]", i - own_count)
            }
        };

        let mut exact = HashSet::new();
        let mut prefixes = HashSet::new();
        let mut globs = GlobSetBuilder::new();
        for (i, entry) in rules.public_paths.iter().enumerate() {
            if entry.contains('*') {
                // A leading `*` matches across `/` (`*.css` is any path
                // ending in `.css`, as in Navigator); elsewhere `*` stays
                // within one segment (`/docs/*.pdf`).
                let glob = GlobBuilder::new(entry)
                    .literal_separator(!entry.starts_with('*'))
                    .build();
                match glob {
                    Ok(glob) => {
                        globs.add(glob);
                    }
                    Err(error) => errors.push(loaded.error_at(
                        &key_of(i),
                        format!("invalid glob {entry:?}: {}", error.kind()),
                    )),
                }
            } else if !entry.starts_with('/') {
                errors.push(
                    loaded
                        .error_at(
                            &key_of(i),
                            format!("public path {entry:?} does not start with `/`"),
                        )
                        .with_hint(
                            "write an absolute path, a prefix ending in `/`, or a glob with `*`",
                        ),
                );
            } else if entry.ends_with('/') {
                prefixes.insert(entry.clone().into_boxed_str());
            } else {
                exact.insert(entry.clone().into_boxed_str());
            }
        }
        let globs = globs.build().unwrap_or_else(|error| {
            errors.push(loaded.error_at("auth.public_paths", error.to_string()));
            GlobSet::empty()
        });

        let mut actions = Vec::new();
        for (i, rule) in rules.patterns.iter().enumerate() {
            actions.push(match &rule.action {
                AuthAction::Public => Requirement::Public,
                AuthAction::Realm(realm) => {
                    check_realm(
                        loaded,
                        &format!("auth.auth_patterns[{i}].action"),
                        realm,
                        errors,
                    );
                    Requirement::Credentials(Arc::from(realm.as_str()))
                }
            });
        }
        let patterns = RegexSet::new(rules.patterns.iter().map(|rule| rule.pattern.as_str()))
            .unwrap_or_else(|error| {
                errors.push(loaded.error_at("auth.auth_patterns", error.to_string()));
                RegexSet::empty()
            });

        PublicRules {
            default_realm,
            exact,
            prefixes,
            globs,
            patterns,
            actions,
        }
    }

    /// Classifies a canonical path.
    pub fn classify(&self, path: &str) -> Requirement {
        if !self.actions.is_empty() {
            if let Some(first) = self.patterns.matches(path).iter().next() {
                return self.actions[first].clone();
            }
        }
        if self.exact.contains(path) || self.has_public_prefix(path) {
            return Requirement::Public;
        }
        if self.globs.is_match(path) {
            return Requirement::PublicIfStatic;
        }
        Requirement::Credentials(self.default_realm.clone())
    }

    /// Returns the realm of a challenge for paths that no realm pattern names.
    pub fn default_realm(&self) -> &Arc<str> {
        &self.default_realm
    }

    fn has_public_prefix(&self, path: &str) -> bool {
        if self.prefixes.is_empty() {
            return false;
        }
        path.match_indices('/')
            .any(|(end, _)| self.prefixes.contains(&path[..=end]))
    }
}

/// Reports a realm that cannot be written inside a quoted
/// `WWW-Authenticate` parameter.
fn check_realm(loaded: &Loaded, key: &str, realm: &str, errors: &mut Vec<ConfigError>) {
    let invalid = realm
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control());
    if invalid {
        errors.push(loaded.error_at(
            key,
            format!("realm {realm:?} contains a quote, backslash or control character"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::config::source::Format;
    use std::path::Path;

    fn rules(toml: &str) -> PublicRules {
        let loaded = load_str(toml, Format::Toml, Path::new("t.toml"), &|_| None).unwrap();
        let mut errors = Vec::new();
        let auth = AuthRules::compile(&loaded, &mut errors);
        let rules = PublicRules::compile(&loaded, &auth, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        rules
    }

    const SHOWCASE: &str = r#"
[auth]
enabled = true
realm = "Showcase"
htpasswd = "/nonexistent/htpasswd"
public_paths = ["/showcase/assets/", "/showcase/studios/", "/showcase/update_config",
                "/favicon.ico", "*.css", "*.js", "/showcase/docs/*.pdf"]
auth_patterns = [
  { pattern = "^/$", action = "off" },
  { pattern = "^/showcase/studios/admin", action = "Admins" },
  { pattern = "^/showcase/2025/(?:boston|raleigh)/?$", action = "off" },
  { pattern = "^/showcase/2025/[^/]+/[^/]+/public/", action = "off" },
]
"#;

    #[test]
    fn classify_each_rule_kind() {
        let rules = rules(SHOWCASE);
        let public = Requirement::Public;
        let static_only = Requirement::PublicIfStatic;
        let showcase = Requirement::Credentials(Arc::from("Showcase"));
        let admins = Requirement::Credentials(Arc::from("Admins"));
        let cases = [
            ("/", &public),
            ("/showcase", &showcase),
            ("/showcase/", &showcase),
            ("/showcase/assets/app.js", &public),
            ("/showcase/assets/", &public),
            ("/showcase/assets", &showcase),
            ("/showcase/studios/millbrae", &public),
            ("/showcase/studios/admin/users", &admins),
            ("/showcase/update_config", &public),
            ("/showcase/update_config/", &showcase),
            ("/showcase/update_configx", &showcase),
            ("/favicon.ico", &public),
            ("/showcase/2025/boston", &public),
            ("/showcase/2025/boston/", &public),
            ("/showcase/2025/boston/april/", &showcase),
            ("/showcase/2025/boston/april/public/heats", &public),
            ("/showcase/2025/boston/april/people.css", &static_only),
            ("/assets/app.js", &static_only),
            ("/showcase/2025/boston/april/people.css.", &showcase),
            ("/showcase/2025/boston/april/people.CSS", &showcase),
            ("/showcase/docs/guide.pdf", &static_only),
            ("/showcase/docs/sub/guide.pdf", &showcase),
            ("/SHOWCASE/assets/app.png", &showcase),
        ];
        for (path, expected) in cases {
            assert_eq!(&rules.classify(path), expected, "{path}");
        }
    }

    #[test]
    fn auth_exclude_merges_as_public_paths() {
        let rules = rules(
            "[server]\nauthentication = \"/x/htpasswd\"\nauth_exclude = [\"/up\", \"/public/\"]\n",
        );
        assert_eq!(rules.classify("/up"), Requirement::Public);
        assert_eq!(rules.classify("/public/x"), Requirement::Public);
        assert_eq!(
            rules.classify("/private"),
            Requirement::Credentials(Arc::from("Restricted"))
        );
    }

    #[test]
    fn invalid_entries_reported_at_key() {
        let text = "[auth]\nenabled = true\nhtpasswd = \"/x\"\nrealm = \"a\\\"b\"\n\
                    public_paths = [\"/ok\", \"relative\", \"/bad[*\"]\n";
        let loaded = load_str(text, Format::Toml, Path::new("t.toml"), &|_| None).unwrap();
        let mut errors = Vec::new();
        let auth = AuthRules::compile(&loaded, &mut errors);
        PublicRules::compile(&loaded, &auth, &mut errors);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["auth.realm", "auth.public_paths[1]", "auth.public_paths[2]"]
        );
    }
}
