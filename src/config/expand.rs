//! `${NAME}` and `${NAME:-default}` templates in config strings.
//!
//! `$${` writes a literal `${`. The tenant port is written `${port}` or
//! `{{port}}` and is filled in at spawn time by [`fill_port`].

use std::fmt;

/// A template names a variable that is neither defined nor defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    Unknown(String),
    Unterminated,
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpandError::Unknown(name) => write!(
                f,
                "unknown variable ${{{name}}}; define it in the environment, as a tenant `var`, \
                 or give a default with ${{{name}:-value}}"
            ),
            ExpandError::Unterminated => f.write_str("unterminated `${` (missing `}`)"),
        }
    }
}

/// Expands every `${...}` in `template`. `lookup` returns the value of a
/// name, or `None` when it is unknown; an unknown name without a default
/// is an error.
pub fn expand(
    template: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    if !template.contains('$') {
        return Ok(template.to_string());
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(body_start) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let end = body_start.find('}').ok_or(ExpandError::Unterminated)?;
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(ExpandError::Unknown(name.to_string())),
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The placeholder left in per-tenant strings until the port is known.
pub const PORT_PLACEHOLDER: &str = "${port}";

/// Replaces `${port}` and `{{port}}` with the tenant's port.
pub fn fill_port(text: &str, port: u16) -> String {
    if !text.contains("port") {
        return text.to_string();
    }
    let port = port.to_string();
    text.replace(PORT_PLACEHOLDER, &port)
        .replace("{{port}}", &port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/rails".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_known_names() {
        assert_eq!(expand("${HOME}/db", env).unwrap(), "/home/rails/db");
        assert_eq!(expand("a${EMPTY}b", env).unwrap(), "ab");
    }

    #[test]
    fn default_applies_to_unknown_only() {
        assert_eq!(expand("${NOPE:-/data}", env).unwrap(), "/data");
        assert_eq!(expand("${HOME:-/data}", env).unwrap(), "/home/rails");
        assert_eq!(expand("${NOPE:-}", env).unwrap(), "");
    }

    #[test]
    fn unknown_name_is_error() {
        assert_eq!(
            expand("x ${NOPE} y", env),
            Err(ExpandError::Unknown("NOPE".into()))
        );
        assert_eq!(expand("${HOME", env), Err(ExpandError::Unterminated));
    }

    #[test]
    fn dollars_without_brace_are_literal() {
        assert_eq!(expand("^/$ and $1", env).unwrap(), "^/$ and $1");
        assert_eq!(expand("$${HOME}", env).unwrap(), "${HOME}");
    }

    #[test]
    fn port_placeholders_filled() {
        assert_eq!(fill_port("-p ${port} {{port}}", 4001), "-p 4001 4001");
    }
}
