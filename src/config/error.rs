//! Config errors that name the file, line, column and key path, and say
//! what would be valid.

use std::fmt;
use std::path::{Path, PathBuf};

use super::source::Pos;

#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub pos: Option<Pos>,
    /// Key path such as `applications.tenants[12].path`; empty for errors
    /// about the file as a whole.
    pub key: String,
    pub message: String,
    /// What would be valid, e.g. the nearest known key.
    pub hint: Option<String>,
}

impl ConfigError {
    pub fn new(
        file: &Path,
        pos: Option<Pos>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            pos,
            key: key.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(pos) = self.pos {
            write!(f, ":{}:{}", pos.line, pos.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// One or more errors found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn first(&self) -> Option<&ConfigError> {
        self.0.first()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a
/// message and a hint naming the nearest known key.
pub fn explain_unknown_field(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let nearest = candidates
        .iter()
        .map(|candidate| (strsim::osa_distance(field, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2 && *distance < field.len())
        .min_by_key(|(distance, _)| *distance);
    let hint = match nearest {
        Some((_, candidate)) => format!("did you mean `{candidate}`?"),
        None if candidates.is_empty() => "this table takes no keys".to_string(),
        None => format!("valid keys: {}", candidates.join(", ")),
    };
    Some((format!("unknown key `{field}`"), hint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_suggests_nearest() {
        let (message, hint) = explain_unknown_field(
            "unknown field `lisen`, expected one of `listen`, `hostname`, `root_path`",
        )
        .unwrap();
        assert_eq!(message, "unknown key `lisen`");
        assert_eq!(hint, "did you mean `listen`?");
    }

    #[test]
    fn unknown_field_lists_keys_when_nothing_is_near() {
        let (_, hint) =
            explain_unknown_field("unknown field `zzz`, expected `path` or `target`").unwrap();
        assert_eq!(hint, "valid keys: path, target");
    }

    #[test]
    fn display_has_location_key_and_hint() {
        let error = ConfigError::new(
            Path::new("nav.toml"),
            Some(Pos { line: 3, column: 1 }),
            "server.lisen",
            "unknown key `lisen`",
        )
        .with_hint("did you mean `listen`?");
        assert_eq!(
            error.to_string(),
            "nav.toml:3:1: server.lisen: unknown key `lisen` (did you mean `listen`?)"
        );
    }
}
