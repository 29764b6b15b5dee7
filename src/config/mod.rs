//! Loading a config file: parse (TOML or Navigator YAML) into a positioned
//! tree, expand `${VAR}` in server-wide strings, deserialize into the
//! schema, and report every problem with file, line, column and key path.

pub mod error;
pub mod expand;
pub mod schema;
pub mod source;
pub mod units;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors};
pub use schema::Config;
use source::{Format, Node, Positions, Value, join_index, join_key};

/// A parsed config with what is needed to report later errors against it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub file: PathBuf,
    pub format: Format,
    /// The document tree after `${VAR}` expansion, for `convert`.
    pub tree: Node,
    /// The file's bytes, to tell whether a reload target changed.
    pub text: String,
}

impl Loaded {
    /// An error at the position of `key`.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let position = Positions::collect(&self.tree).find(key);
        ConfigError::new(&self.file, Some(position), key, message)
    }
}

/// Reads and parses `file` with navigator's own environment.
pub fn load(file: &Path) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|error| {
        ConfigError::new(file, None, "", format!("cannot read config file: {error}"))
    })?;
    load_str(&text, Format::from_path(file), file, &|name| {
        std::env::var(name).ok()
    })
}

/// The config file used when none is named: `config/navigator.toml`, then
/// `config/navigator.yml`.
pub fn default_path() -> PathBuf {
    let toml = PathBuf::from("config/navigator.toml");
    let yaml = PathBuf::from("config/navigator.yml");
    if !toml.exists() && yaml.exists() {
        yaml
    } else {
        toml
    }
}

pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Parses `text` as if read from `file`; `env` supplies `${VAR}` values.
pub fn load_str(
    text: &str,
    format: Format,
    file: &Path,
    env: EnvLookup<'_>,
) -> Result<Loaded, ConfigErrors> {
    let mut tree = source::parse(text, format)
        .map_err(|error| ConfigError::new(file, Some(error.pos), "", error.message))?;
    if !matches!(tree.value, Value::Map(_)) {
        return Err(ConfigError::new(
            file,
            Some(tree.pos),
            "",
            "the config must be a table of sections",
        )
        .into());
    }

    let mut failures: Vec<(String, String)> = Vec::new();
    expand_server_strings(&mut tree, "", env, &mut |key, message| {
        failures.push((key.to_string(), message));
    });
    let positions = Positions::collect(&tree);
    if !failures.is_empty() {
        let errors = failures
            .into_iter()
            .map(|(key, message)| ConfigError::new(file, Some(positions.find(&key)), key, message))
            .collect();
        return Err(ConfigErrors(errors));
    }

    let config: Config = serde_path_to_error::deserialize(source::NodeDeserializer(&tree))
        .map_err(|error| {
            let key = error.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let message = error.inner().to_string();
            match error::explain_unknown_field(&message) {
                Some((message, hint)) => {
                    ConfigError::new(file, Some(positions.find(&key)), key, message).with_hint(hint)
                }
                None => ConfigError::new(file, Some(positions.find(&key)), key, message),
            }
        })?;

    Ok(Loaded {
        config,
        file: file.to_path_buf(),
        format,
        tree,
        text: text.to_string(),
    })
}

/// Whether strings under `key` are per-tenant templates, expanded for each
/// tenant at compile time (a tenant `var` wins over the environment there).
pub fn is_tenant_template(key: &str) -> bool {
    const PREFIXES: [&str; 8] = [
        "applications.env",
        "applications.framework",
        "applications.tenants",
        "applications.runtime",
        "applications.server",
        "applications.args",
        "applications.hooks",
        "hooks.tenant",
    ];
    PREFIXES.iter().any(|prefix| {
        key.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    })
}

/// Expands `${VAR}` in every string outside the per-tenant templates.
fn expand_server_strings(
    node: &mut Node,
    key: &str,
    env: EnvLookup<'_>,
    report: &mut dyn FnMut(&str, String),
) {
    if is_tenant_template(key) {
        return;
    }
    match &mut node.value {
        Value::Str(text) => match expand::expand(text, env) {
            Ok(expanded) => *text = expanded,
            Err(error) => report(key, error.to_string()),
        },
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_server_strings(item, &join_index(key, i), env, report);
            }
        }
        Value::Map(entries) => {
            for entry in entries {
                let child = join_key(key, &entry.key);
                expand_server_strings(&mut entry.node, &child, env, report);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load_toml(text: &str) -> Result<Loaded, ConfigErrors> {
        load_str(text, Format::Toml, Path::new("test.toml"), &no_env)
    }

    fn load_yaml(text: &str) -> Result<Loaded, ConfigErrors> {
        load_str(text, Format::Yaml, Path::new("test.yml"), &no_env)
    }

    /// Reads the typed config (or the error's key path and message) from
    /// the tree both directly and through JSON.
    fn both_ways(text: &str, format: Format) -> (String, String) {
        let tree = source::parse(text, format).unwrap();
        let direct: Result<Config, _> =
            serde_path_to_error::deserialize(source::NodeDeserializer(&tree));
        let through_json: Result<Config, _> =
            serde_path_to_error::deserialize(source::to_json(&tree));
        let show = |result: Result<Config, (String, String)>| format!("{result:?}");
        (
            show(direct.map_err(|e| (e.path().to_string(), e.inner().to_string()))),
            show(through_json.map_err(|e| (e.path().to_string(), e.inner().to_string()))),
        )
    }

    #[test]
    fn tree_read_directly_as_through_json() {
        let cases = [
            (
                "[server]\nlisten = 3000\nroot_path = \"/showcase\"\ntrust_proxy = true\n\
                 [applications]\nresponse_timeout = \"90s\"\n\
                 [applications.env]\nRAILS_MAX_THREADS = 3\nRATIO = 1.5\nDEBUG = false\nNEG = -4\n\
                 [applications.pools]\nmax_size = 12\nmax_concurrency = 16\n\
                 [[applications.tenants]]\npath = \"/showcase/2025/boston/\"\nvar = { database = \"db\" }\n\
                 [logging]\nlevel = \"warn\"\nformat = \"json\"\n",
                Format::Toml,
            ),
            (
                "server:\n  listen: 3000\n  root_path: ~\napplications:\n  env:\n    A: null\n    B: 'x'\n  tenants:\n  - path: /a/\n    name: ~\n",
                Format::Yaml,
            ),
            ("[server]\nlisten = true\n", Format::Toml),
            ("[server]\nlisten = 1.5\n", Format::Toml),
            ("[server]\nlisen = 3000\n", Format::Toml),
            ("[logging]\nlevel = \"loud\"\n", Format::Toml),
            ("[logging]\nlevel = 3\n", Format::Toml),
            ("[applications.pools]\nstart_port = -5\n", Format::Toml),
            ("[applications.pools]\nstart_port = 70000\n", Format::Toml),
            ("[applications]\ntenants = \"none\"\n", Format::Toml),
            ("[[applications.tenants]]\npath = [1, 2]\n", Format::Toml),
            ("[applications.env]\nA = [1]\n", Format::Toml),
            ("server: [1, 2]\n", Format::Yaml),
        ];
        for (text, format) in cases {
            let (direct, through_json) = both_ways(text, format);
            assert_eq!(direct, through_json, "{text}");
        }
    }

    #[test]
    fn unknown_key_names_line_path_and_suggestion() {
        let errors = load_toml("[server]\nlisten = 3000\nroot_pth = \"/x\"\n").unwrap_err();
        let error = errors.first().unwrap();
        assert_eq!(error.key, "server.root_pth");
        assert_eq!(error.pos.unwrap().line, 3);
        assert_eq!(error.hint.as_deref(), Some("did you mean `root_path`?"));
    }

    #[test]
    fn unknown_key_in_tenant_list_has_index() {
        let text =
            "applications:\n  tenants:\n  - path: /a/\n  - path: /b/\n    evn:\n      A: b\n";
        let error = load_yaml(text).unwrap_err().0.remove(0);
        assert_eq!(error.key, "applications.tenants[1].evn");
        assert_eq!(error.pos.unwrap().line, 5);
        assert_eq!(error.hint.as_deref(), Some("did you mean `env`?"));
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let error = load_toml("[applications.pools]\nmax_size = \"eight\"\n")
            .unwrap_err()
            .0
            .remove(0);
        assert_eq!(error.key, "applications.pools.max_size");
        assert_eq!(error.pos.unwrap().line, 2);
        assert!(error.message.contains("invalid type"), "{}", error.message);
    }

    #[test]
    fn invalid_duration_is_reported() {
        let error = load_toml("[applications]\nstartup_timeout = \"5 parsecs\"\n")
            .unwrap_err()
            .0
            .remove(0);
        assert_eq!(error.key, "applications.startup_timeout");
        assert!(
            error.message.contains("invalid duration"),
            "{}",
            error.message
        );
    }

    #[test]
    fn env_vars_expand_outside_tenant_templates() {
        let env = |name: &str| (name == "PUBLIC").then(|| "/srv/public".to_string());
        let text = "[server.static]\npublic_dir = \"${PUBLIC}\"\n[applications.env]\nDB = \"${database}\"\n";
        let loaded = load_str(text, Format::Toml, Path::new("t.toml"), &env).unwrap();
        let public_dir = loaded.config.server.static_files.public_dir.unwrap();
        assert_eq!(public_dir, PathBuf::from("/srv/public"));
        assert_eq!(loaded.config.applications.env["DB"], "${database}");
    }

    #[test]
    fn unknown_env_var_is_error_with_key() {
        let error = load_toml("[server]\nhostname = \"${NO_SUCH_VAR}\"\n")
            .unwrap_err()
            .0
            .remove(0);
        assert_eq!(error.key, "server.hostname");
        assert!(error.message.contains("NO_SUCH_VAR"));
    }

    #[test]
    fn yaml_and_toml_give_same_schema() {
        let yaml = "server:\n  listen: 9999\n  root_path: /showcase\napplications:\n  env:\n    RAILS_MAX_THREADS: 3\n  tenants:\n  - path: /showcase/2025/boston/\n    var:\n      database: 2025-boston\n";
        let toml = "[server]\nlisten = 9999\nroot_path = \"/showcase\"\n[applications.env]\nRAILS_MAX_THREADS = \"3\"\n[[applications.tenants]]\npath = \"/showcase/2025/boston/\"\nvar = { database = \"2025-boston\" }\n";
        let a = load_yaml(yaml).unwrap().config;
        let b = load_toml(toml).unwrap().config;
        assert_eq!(a.server.listen, b.server.listen);
        assert_eq!(a.applications.env, b.applications.env);
        assert_eq!(a.applications.tenants[0].var, b.applications.tenants[0].var);
    }

    #[test]
    fn tenant_template_prefixes() {
        assert!(is_tenant_template("applications.env.DATABASE_URL"));
        assert!(is_tenant_template("applications.tenants[3].env.X"));
        assert!(is_tenant_template("hooks.tenant.stop[0].args[0]"));
        assert!(!is_tenant_template("applications.environment"));
        assert!(!is_tenant_template("hooks.server.ready[0].command"));
    }
}
