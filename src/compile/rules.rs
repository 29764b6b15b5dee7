//! Path rules compiled once per config: redirects, rewrites, Fly-Replay,
//! auth patterns and reverse proxy routes. Every regex is compiled here; an
//! invalid one is a config error, never skipped.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::{Regex, RegexSet};

use crate::config::{ConfigError, Loaded};
use crate::reverse_proxy::template::{HeaderTemplate, TargetTemplate};

/// Compiles `pattern`, reporting an invalid one at `key`.
pub fn compile_regex(
    loaded: &Loaded,
    key: &str,
    pattern: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Regex> {
    match Regex::new(pattern) {
        Ok(regex) => Some(regex),
        Err(error) => {
            errors.push(
                loaded
                    .error_at(
                        key,
                        format!(
                            "invalid regex {pattern:?}: {}",
                            first_line(&error.to_string())
                        ),
                    )
                    .with_hint("patterns use RE2 syntax, as in Go's regexp"),
            );
            None
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .rfind(|line| !line.trim().is_empty())
        .unwrap_or(text)
        .trim()
        .to_string()
}

/// Parses an HTTP method list, reporting invalid names.
fn parse_methods(
    loaded: &Loaded,
    key: &str,
    names: &[String],
    errors: &mut Vec<ConfigError>,
) -> Vec<Method> {
    names
        .iter()
        .enumerate()
        .filter_map(
            |(i, name)| match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                Ok(method) => Some(method),
                Err(_) => {
                    errors.push(loaded.error_at(
                        &format!("{key}[{i}]"),
                        format!("invalid HTTP method {name:?}"),
                    ));
                    None
                }
            },
        )
        .collect()
}

fn parse_status(
    loaded: &Loaded,
    key: &str,
    status: u16,
    valid: &[u16],
    errors: &mut Vec<ConfigError>,
) -> StatusCode {
    match StatusCode::from_u16(status) {
        Ok(code) if valid.contains(&status) => code,
        _ => {
            let list: Vec<String> = valid.iter().map(u16::to_string).collect();
            errors.push(loaded.error_at(
                key,
                format!(
                    "status {status} is not valid here; use one of {}",
                    list.join(", ")
                ),
            ));
            StatusCode::FOUND
        }
    }
}

const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

#[derive(Debug)]
pub struct RedirectRule {
    pub from: Regex,
    /// Replacement with `$1`.. for captures.
    pub to: String,
    pub status: StatusCode,
    /// Empty means every method.
    pub methods: Vec<Method>,
}

#[derive(Debug)]
pub struct RewriteRule {
    pub from: Regex,
    pub to: String,
    pub methods: Vec<Method>,
}

/// Redirects and rewrites, each list matched in config order.
#[derive(Debug, Default)]
pub struct PathRules {
    pub redirects: Vec<RedirectRule>,
    pub rewrites: Vec<RewriteRule>,
    /// One automaton over every redirect, so a path that matches none
    /// costs one scan.
    redirect_set: Option<RegexSet>,
}

impl PathRules {
    pub fn compile(loaded: &Loaded, errors: &mut Vec<ConfigError>) -> PathRules {
        let routes = &loaded.config.routes;
        let mut rules = PathRules::default();

        for (i, redirect) in routes.redirects.iter().enumerate() {
            let key = format!("routes.redirects[{i}]");
            let status = parse_status(
                loaded,
                &format!("{key}.status"),
                redirect.status,
                &REDIRECT_STATUSES,
                errors,
            );
            if let Some(from) =
                compile_regex(loaded, &format!("{key}.from"), &redirect.from, errors)
            {
                rules.redirects.push(RedirectRule {
                    from,
                    to: redirect.to.clone(),
                    status,
                    methods: Vec::new(),
                });
            }
        }

        for (i, rewrite) in routes.rewrites.iter().enumerate() {
            let key = format!("routes.rewrites[{i}]");
            let (from, from_key) = match (&rewrite.from, &rewrite.pattern) {
                (Some(from), None) => (from, "from"),
                (None, Some(pattern)) => (pattern, "pattern"),
                _ => {
                    errors.push(
                        loaded
                            .error_at(
                                &key,
                                "a rewrite needs `from` (or Navigator's `pattern`), not both",
                            )
                            .with_hint("write `from = \"regex\"` and `to = \"replacement\"`"),
                    );
                    continue;
                }
            };
            let to = match (&rewrite.to, &rewrite.replacement) {
                (Some(to), None) | (None, Some(to)) => to.clone(),
                _ => {
                    errors.push(loaded.error_at(
                        &key,
                        "a rewrite needs `to` (or Navigator's `replacement`), not both",
                    ));
                    continue;
                }
            };
            let methods =
                parse_methods(loaded, &format!("{key}.methods"), &rewrite.methods, errors);
            let Some(regex) = compile_regex(loaded, &format!("{key}.{from_key}"), from, errors)
            else {
                continue;
            };
            if rewrite.redirect {
                let status = parse_status(
                    loaded,
                    &format!("{key}.status"),
                    rewrite.status.unwrap_or(302),
                    &REDIRECT_STATUSES,
                    errors,
                );
                rules.redirects.push(RedirectRule {
                    from: regex,
                    to,
                    status,
                    methods,
                });
            } else {
                rules.rewrites.push(RewriteRule {
                    from: regex,
                    to,
                    methods,
                });
            }
        }

        // No set without rules: searching an empty set still costs a
        // cache checkout on every request.
        rules.redirect_set = regex_set(rules.redirects.iter().map(|r| r.from.as_str()));
        rules
    }

    /// Finds the first redirect matching `path` and `method` and returns it
    /// with its location.
    pub fn redirect(&self, path: &str, method: &Method) -> Option<(&RedirectRule, String)> {
        let candidates = self.redirect_set.as_ref()?.matches(path);
        if !candidates.matched_any() {
            return None;
        }
        candidates
            .iter()
            .map(|i| &self.redirects[i])
            .find(|rule| rule.methods.is_empty() || rule.methods.contains(method))
            .map(|rule| (rule, expand_captures(&rule.from, path, &rule.to)))
    }

    /// Applies every matching rewrite in order; `None` when none matched.
    pub fn rewrite(&self, path: &str, method: &Method) -> Option<String> {
        let mut current: Option<String> = None;
        for rule in &self.rewrites {
            if !rule.methods.is_empty() && !rule.methods.contains(method) {
                continue;
            }
            let subject = current.as_deref().unwrap_or(path);
            if rule.from.is_match(subject) {
                current = Some(expand_captures(&rule.from, subject, &rule.to));
            }
        }
        current
    }
}

/// Compiles `patterns` into one automaton, or returns `None` when there
/// are none.
fn regex_set<'a>(patterns: impl ExactSizeIterator<Item = &'a str>) -> Option<RegexSet> {
    if patterns.len() == 0 {
        return None;
    }
    RegexSet::new(patterns).ok()
}

/// Expands `$1`.. and `${name}` in `template` from `regex`'s captures on
/// `subject`, as Go's `Regexp.Expand` does.
pub fn expand_captures(regex: &Regex, subject: &str, template: &str) -> String {
    let mut out = String::new();
    match regex.captures(subject) {
        Some(captures) => captures.expand(template, &mut out),
        None => out.push_str(template),
    }
    out
}

/// The destination of a replayed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayTarget {
    Region(String),
    App(String),
    Machine { app: String, machine: String },
}

#[derive(Debug)]
pub struct ReplayRule {
    pub path: Regex,
    pub target: ReplayTarget,
    pub status: StatusCode,
    pub methods: Vec<Method>,
}

/// Fly-Replay rules behind one automaton; the first rule in config order
/// that matches path and method wins.
#[derive(Debug, Default)]
pub struct ReplayRules {
    pub rules: Vec<ReplayRule>,
    set: Option<RegexSet>,
}

impl ReplayRules {
    pub fn compile(loaded: &Loaded, errors: &mut Vec<ConfigError>) -> ReplayRules {
        let routes = &loaded.config.routes;
        let sources = routes
            .fly
            .replay
            .iter()
            .enumerate()
            .map(|(i, rule)| (format!("routes.fly.replay[{i}]"), rule))
            .chain(
                routes
                    .fly_replay
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| (format!("routes.fly_replay[{i}]"), rule)),
            );
        let mut rules = Vec::new();
        for (key, rule) in sources {
            let target = match (&rule.region, &rule.app, &rule.machine) {
                (Some(region), None, None) => ReplayTarget::Region(region.clone()),
                (None, Some(app), None) => ReplayTarget::App(app.clone()),
                (None, Some(app), Some(machine)) => ReplayTarget::Machine {
                    app: app.clone(),
                    machine: machine.clone(),
                },
                _ => {
                    errors.push(
                        loaded
                            .error_at(&key, "a replay rule needs exactly one target")
                            .with_hint("set `region`, or `app`, or `machine` together with `app`"),
                    );
                    continue;
                }
            };
            let status = parse_status(
                loaded,
                &format!("{key}.status"),
                rule.status,
                &[307, 308],
                errors,
            );
            let methods = parse_methods(loaded, &format!("{key}.methods"), &rule.methods, errors);
            if let Some(path) = compile_regex(loaded, &format!("{key}.path"), &rule.path, errors) {
                rules.push(ReplayRule {
                    path,
                    target,
                    status,
                    methods,
                });
            }
        }
        let set = regex_set(rules.iter().map(|r| r.path.as_str()));
        ReplayRules { rules, set }
    }

    /// Finds the first rule matching `path` and `method`.
    pub fn find(&self, path: &str, method: &Method) -> Option<&ReplayRule> {
        let matches = self.set.as_ref()?.matches(path);
        matches
            .iter()
            .map(|i| &self.rules[i])
            .find(|rule| rule.methods.is_empty() || rule.methods.contains(method))
    }
}

/// The effect of an `auth_patterns` entry on matching paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthAction {
    Public,
    /// Credentials required, challenged with this realm.
    Realm(String),
}

#[derive(Debug)]
pub struct AuthPatternRule {
    pub pattern: Regex,
    pub action: AuthAction,
}

/// Authentication rules as written; the access-control module builds its
/// matchers from these.
#[derive(Debug, Default)]
pub struct AuthRules {
    pub enabled: bool,
    pub realm: String,
    pub htpasswd: Option<std::path::PathBuf>,
    pub public_paths: Vec<String>,
    pub patterns: Vec<AuthPatternRule>,
}

impl AuthRules {
    pub fn compile(loaded: &Loaded, errors: &mut Vec<ConfigError>) -> AuthRules {
        let server = &loaded.config.server;
        let auth = &loaded.config.auth;
        let mut public_paths = auth.public_paths.clone();
        public_paths.extend(server.auth_exclude.clone().unwrap_or_default());
        let htpasswd = auth
            .htpasswd
            .clone()
            .or_else(|| server.authentication.clone());
        let enabled = auth.enabled || server.authentication.is_some();
        if enabled && htpasswd.is_none() {
            errors.push(
                loaded
                    .error_at(
                        "auth.enabled",
                        "authentication is enabled but no htpasswd file is set",
                    )
                    .with_hint("set auth.htpasswd"),
            );
        }
        let patterns = auth
            .auth_patterns
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let key = format!("auth.auth_patterns[{i}].pattern");
                let pattern = compile_regex(loaded, &key, &rule.pattern, errors)?;
                let action = match rule.action.as_str() {
                    "off" | "none" | "public" => AuthAction::Public,
                    realm => AuthAction::Realm(realm.to_string()),
                };
                Some(AuthPatternRule { pattern, action })
            })
            .collect();
        AuthRules {
            enabled,
            realm: auth.realm.clone(),
            htpasswd,
            public_paths,
            patterns,
        }
    }
}

/// The matcher of a reverse proxy route.
#[derive(Debug)]
pub enum ProxyMatch {
    Regex(Regex),
    Prefix(String),
}

#[derive(Debug)]
pub struct ProxyRoute {
    pub name: String,
    pub matcher: ProxyMatch,
    /// The target as written, for logs.
    pub target: String,
    pub target_template: TargetTemplate,
    pub strip_path: bool,
    /// Request headers set on the way upstream, with `$host`,
    /// `$remote_addr` and `$scheme` substituted.
    pub headers: Vec<(HeaderName, HeaderTemplate)>,
    pub response_headers: HeaderMap,
    pub websocket: bool,
}

pub fn compile_reverse_proxies(loaded: &Loaded, errors: &mut Vec<ConfigError>) -> Vec<ProxyRoute> {
    let mut routes = Vec::new();
    for (i, route) in loaded.config.routes.reverse_proxies.iter().enumerate() {
        let key = format!("routes.reverse_proxies[{i}]");
        let matcher = match (&route.path, &route.prefix) {
            (Some(path), None) => match compile_regex(loaded, &format!("{key}.path"), path, errors)
            {
                Some(regex) => ProxyMatch::Regex(regex),
                None => continue,
            },
            (None, Some(prefix)) if prefix.starts_with('/') => ProxyMatch::Prefix(prefix.clone()),
            (None, Some(prefix)) => {
                errors.push(loaded.error_at(
                    &format!("{key}.prefix"),
                    format!("prefix {prefix:?} must start with `/`"),
                ));
                continue;
            }
            _ => {
                errors.push(loaded.error_at(
                    &key,
                    "a reverse proxy route needs exactly one of `path` (regex) or `prefix`",
                ));
                continue;
            }
        };
        let Some(target_template) = compile_target(loaded, &key, &route.target, &matcher, errors)
        else {
            continue;
        };

        let mut headers = Vec::new();
        for (name, value) in &route.headers {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(header) => headers.push((header, HeaderTemplate::parse(value))),
                Err(_) => errors.push(loaded.error_at(
                    &format!("{key}.headers.{name}"),
                    format!("invalid header name {name:?}"),
                )),
            }
        }
        let mut response_headers = HeaderMap::new();
        for (name, value) in &route.response_headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => {
                    response_headers.insert(name, value);
                }
                _ => errors.push(loaded.error_at(
                    &format!("{key}.response_headers.{name}"),
                    format!("invalid header {name}: {value:?}"),
                )),
            }
        }

        routes.push(ProxyRoute {
            name: route
                .name
                .clone()
                .unwrap_or_else(|| format!("reverse_proxies[{i}]")),
            matcher,
            target: route.target.clone(),
            target_template,
            strip_path: route.strip_path,
            headers,
            response_headers,
            websocket: route.websocket,
        });
    }
    routes
}

/// Parses a route's target; a target without capture references must
/// already be a valid absolute `http://` or `https://` URL.
fn compile_target(
    loaded: &Loaded,
    key: &str,
    target: &str,
    matcher: &ProxyMatch,
    errors: &mut Vec<ConfigError>,
) -> Option<TargetTemplate> {
    let key = format!("{key}.target");
    if !(target.starts_with("http://") || target.starts_with("https://")) {
        errors.push(
            loaded
                .error_at(&key, format!("invalid target {target:?}"))
                .with_hint("targets are http:// or https:// URLs"),
        );
        return None;
    }
    let regex = match matcher {
        ProxyMatch::Regex(regex) => Some(regex),
        ProxyMatch::Prefix(_) => None,
    };
    let template = match TargetTemplate::parse(target, regex) {
        Ok(template) => template,
        Err(message) => {
            errors.push(loaded.error_at(&key, message));
            return None;
        }
    };
    if !template.uses_captures() {
        let valid = target
            .parse::<http::Uri>()
            .is_ok_and(|uri| uri.authority().is_some_and(|a| !a.host().is_empty()));
        if !valid {
            errors.push(loaded.error_at(&key, format!("invalid target URL {target:?}")));
            return None;
        }
    }
    Some(template)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::config::source::Format;
    use std::path::Path;

    fn loaded(text: &str) -> Loaded {
        load_str(text, Format::Toml, Path::new("t.toml"), &|_| None).unwrap()
    }

    #[test]
    fn redirect_expands_captures() {
        let loaded = loaded(
            "[[routes.redirects]]\nfrom = \"^/old/(.*)$\"\nto = \"/new/$1\"\nstatus = 301\n",
        );
        let mut errors = Vec::new();
        let rules = PathRules::compile(&loaded, &mut errors);
        assert!(errors.is_empty());
        let (rule, location) = rules.redirect("/old/a/b", &Method::GET).unwrap();
        assert_eq!(location, "/new/a/b");
        assert_eq!(rule.status, StatusCode::MOVED_PERMANENTLY);
        assert!(rules.redirect("/other", &Method::GET).is_none());
    }

    #[test]
    fn rewrites_chain_in_order() {
        let text = "[[routes.rewrites]]\nfrom = \"^/assets/(.*)\"\nto = \"/showcase/assets/$1\"\n\
                    [[routes.rewrites]]\nfrom = \"^/showcase/assets/old-(.*)\"\nto = \"/showcase/assets/$1\"\n";
        let loaded = loaded(text);
        let mut errors = Vec::new();
        let rules = PathRules::compile(&loaded, &mut errors);
        assert_eq!(
            rules.rewrite("/assets/old-a.js", &Method::GET).unwrap(),
            "/showcase/assets/a.js"
        );
        assert!(rules.rewrite("/x", &Method::GET).is_none());
    }

    #[test]
    fn navigator_rewrite_spelling_can_redirect() {
        let text = "[[routes.rewrites]]\npattern = \"^/a$\"\nreplacement = \"/b\"\nredirect = true\nstatus = 301\n";
        let loaded = loaded(text);
        let mut errors = Vec::new();
        let rules = PathRules::compile(&loaded, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let (rule, location) = rules.redirect("/a", &Method::GET).unwrap();
        assert_eq!((rule.status.as_u16(), location.as_str()), (301, "/b"));
    }

    #[test]
    fn invalid_regex_is_error_with_key() {
        let loaded = loaded("[[routes.fly.replay]]\npath = \"^/(unclosed\"\nregion = \"syd\"\n");
        let mut errors = Vec::new();
        let rules = ReplayRules::compile(&loaded, &mut errors);
        assert!(rules.rules.is_empty());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "routes.fly.replay[0].path");
        assert_eq!(errors[0].pos.unwrap().line, 2);
    }

    #[test]
    fn replay_first_rule_in_order_wins() {
        let text = "[[routes.fly.replay]]\npath = \"^/showcase/.+\\\\.pdf$\"\napp = \"pdf\"\n\
                    [[routes.fly.replay]]\npath = \"^/showcase/2025/adelaide/.+$\"\nregion = \"syd\"\n\
                    [[routes.fly.replay]]\npath = \"^/post-only$\"\nregion = \"ams\"\nmethods = [\"POST\"]\n";
        let loaded = loaded(text);
        let mut errors = Vec::new();
        let rules = ReplayRules::compile(&loaded, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let pdf = rules
            .find("/showcase/2025/adelaide/x/a.pdf", &Method::GET)
            .unwrap();
        assert_eq!(pdf.target, ReplayTarget::App("pdf".into()));
        let region = rules
            .find("/showcase/2025/adelaide/x/", &Method::GET)
            .unwrap();
        assert_eq!(region.target, ReplayTarget::Region("syd".into()));
        assert!(rules.find("/post-only", &Method::GET).is_none());
        assert!(rules.find("/post-only", &Method::POST).is_some());
    }

    #[test]
    fn reverse_proxy_target_checked() {
        let text = "[[routes.reverse_proxies]]\npath = \"^/a/(x)$\"\ntarget = \"http://h/$2\"\n\
                    [[routes.reverse_proxies]]\nprefix = \"/b\"\ntarget = \"ftp://h/\"\n\
                    [[routes.reverse_proxies]]\nprefix = \"/c\"\ntarget = \"http://h/\"\n\
                    headers = { \"Bad Name\" = \"x\" }\n\
                    [[routes.reverse_proxies]]\nprefix = \"/d\"\ntarget = \"http://h/base\"\n\
                    headers = { \"X-Client\" = \"$remote_addr\" }\n\
                    response_headers = { \"Access-Control-Allow-Origin\" = \"*\" }\n";
        let loaded = loaded(text);
        let mut errors = Vec::new();
        let routes = compile_reverse_proxies(&loaded, &mut errors);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "routes.reverse_proxies[0].target",
                "routes.reverse_proxies[1].target",
                "routes.reverse_proxies[2].headers.Bad Name",
            ]
        );
        assert!(
            errors[0].message.contains("1 group(s)"),
            "{}",
            errors[0].message
        );
        assert_eq!(routes.len(), 2);
        let route = &routes[1];
        assert_eq!(route.headers[0].0, "x-client");
        assert_eq!(route.response_headers["access-control-allow-origin"], "*");
    }

    #[test]
    fn replay_rule_needs_one_target() {
        let loaded =
            loaded("[[routes.fly.replay]]\npath = \"^/x\"\nregion = \"syd\"\napp = \"a\"\n");
        let mut errors = Vec::new();
        ReplayRules::compile(&loaded, &mut errors);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("exactly one target"));
    }
}
