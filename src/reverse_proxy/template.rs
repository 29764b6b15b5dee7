//! Templates of reverse proxy routes, parsed once at load: the `target`
//! URL with `$1`.. and `${name}` capture references, and request header
//! values with `$host`, `$remote_addr` and `$scheme`.

use regex::{Captures, Regex};

/// One piece of a target template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TargetPart {
    Literal(String),
    /// A capture group of the route's regex, by index.
    Group(usize),
}

/// A `target` with its capture references resolved to group indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTemplate {
    parts: Vec<TargetPart>,
}

impl TargetTemplate {
    /// Parses `text` with the reference syntax of Go's `Regexp.Expand`
    /// and the regex crate. `$name` takes the longest run of letters,
    /// digits and `_`, so `$10` is group 10 and `$1x` is the group named
    /// `1x`. `${name}` delimits the name, and `$$` is a literal `$`. A `$`
    /// followed by anything else is literal. Every reference must name a
    /// group of `regex`; with no regex (a prefix route) there are none.
    pub fn parse(text: &str, regex: Option<&Regex>) -> Result<TargetTemplate, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                literal.push('$');
                rest = tail;
                continue;
            }
            let (name, tail) = match after.strip_prefix('{') {
                Some(braced) => match braced.find('}') {
                    Some(end) => (&braced[..end], &braced[end + 1..]),
                    None => return Err(format!("unclosed `${{` in target {text:?}")),
                },
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            if name.is_empty() {
                literal.push('$');
                rest = after;
                continue;
            }
            let group = resolve_group(name, regex)?;
            if !literal.is_empty() {
                parts.push(TargetPart::Literal(std::mem::take(&mut literal)));
            }
            parts.push(TargetPart::Group(group));
            rest = tail;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(TargetPart::Literal(literal));
        }
        Ok(TargetTemplate { parts })
    }

    /// Returns whether the template refers to any capture group.
    pub fn uses_captures(&self) -> bool {
        self.parts
            .iter()
            .any(|part| matches!(part, TargetPart::Group(_)))
    }

    /// Expands the template; `encode` is applied to each captured value
    /// (they come from the decoded canonical path). A group that did not
    /// take part in the match expands to nothing.
    pub fn expand(
        &self,
        captures: Option<&Captures<'_>>,
        encode: impl Fn(&str) -> String,
    ) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TargetPart::Literal(text) => out.push_str(text),
                TargetPart::Group(index) => {
                    if let Some(value) = captures.and_then(|c| c.get(*index)) {
                        out.push_str(&encode(value.as_str()));
                    }
                }
            }
        }
        out
    }
}

fn resolve_group(name: &str, regex: Option<&Regex>) -> Result<usize, String> {
    let Some(regex) = regex else {
        return Err(format!(
            "the target refers to capture `${name}`, but a prefix route has no captures; \
             write `$$` for a literal `$`"
        ));
    };
    let index = match name.parse::<usize>() {
        Ok(index) => Some(index).filter(|index| *index < regex.captures_len()),
        Err(_) => regex.capture_names().position(|n| n == Some(name)),
    };
    index.ok_or_else(|| {
        format!(
            "the target refers to capture `${name}`, but the regex has {} group(s){}",
            regex.captures_len() - 1,
            named_groups(regex)
        )
    })
}

fn named_groups(regex: &Regex) -> String {
    let names: Vec<&str> = regex.capture_names().flatten().collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" named {}", names.join(", "))
    }
}

/// One piece of a request header template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderPart {
    Literal(String),
    /// The request's host: the `Host` header, or the URI authority.
    Host,
    /// The client address: the peer, or with `trust_proxy` the first
    /// `X-Forwarded-For` entry.
    RemoteAddr,
    /// `https` or `http`, as the client used it.
    Scheme,
}

/// A request header value with `$host`, `$remote_addr` and `$scheme`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate {
    parts: Vec<HeaderPart>,
}

/// The values a header template can refer to.
pub struct HeaderVariables<'a> {
    pub host: &'a str,
    pub remote_addr: &'a str,
    pub scheme: &'a str,
}

impl HeaderTemplate {
    /// Parses `text`. Variables other than the three known ones stay as
    /// they are written.
    pub fn parse(text: &str) -> HeaderTemplate {
        const VARIABLES: [(&str, HeaderPart); 3] = [
            ("$remote_addr", HeaderPart::RemoteAddr),
            ("$scheme", HeaderPart::Scheme),
            ("$host", HeaderPart::Host),
        ];
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        'scan: while !rest.is_empty() {
            for (name, part) in &VARIABLES {
                let boundary = rest.strip_prefix(name).is_some_and(|tail| {
                    !tail.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                });
                if boundary {
                    if !literal.is_empty() {
                        parts.push(HeaderPart::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part.clone());
                    rest = &rest[name.len()..];
                    continue 'scan;
                }
            }
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                literal.push(c);
            }
            rest = chars.as_str();
        }
        if !literal.is_empty() {
            parts.push(HeaderPart::Literal(literal));
        }
        HeaderTemplate { parts }
    }

    pub fn expand(&self, variables: &HeaderVariables<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                HeaderPart::Literal(text) => out.push_str(text),
                HeaderPart::Host => out.push_str(variables.host),
                HeaderPart::RemoteAddr => out.push_str(variables.remote_addr),
                HeaderPart::Scheme => out.push_str(variables.scheme),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(text: &str) -> String {
        text.to_string()
    }

    #[test]
    fn target_expands_ten_and_named_groups() {
        let regex = Regex::new(r"^/t/(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)/(?P<rest>.*)$").unwrap();
        let template =
            TargetTemplate::parse("http://h/$10/$1/${rest}?q=$$x", Some(&regex)).unwrap();
        let captures = regex.captures("/t/abcdefghij/x/y").unwrap();
        assert_eq!(
            template.expand(Some(&captures), identity),
            "http://h/j/a/x/y?q=$x"
        );
        assert!(template.uses_captures());
    }

    #[test]
    fn target_reference_rules() {
        let regex = Regex::new(r"^/(x)(y)$").unwrap();
        let captures = regex.captures("/xy").unwrap();
        let expand = |text: &str| {
            TargetTemplate::parse(text, Some(&regex))
                .unwrap()
                .expand(Some(&captures), identity)
        };
        assert_eq!(expand("/${1}0"), "/x0");
        assert_eq!(expand("/$2-$1"), "/y-x");
        assert_eq!(expand("/a$"), "/a$");
        assert_eq!(expand("/a$-b"), "/a$-b");

        let error = TargetTemplate::parse("/$1x", Some(&regex)).unwrap_err();
        assert!(error.contains("`$1x`"), "{error}");
        let error = TargetTemplate::parse("/$3", Some(&regex)).unwrap_err();
        assert!(error.contains("2 group(s)"), "{error}");
        assert!(TargetTemplate::parse("/${1", Some(&regex)).is_err());
        assert!(TargetTemplate::parse("http://h/$1", None).is_err());
        let plain = TargetTemplate::parse("http://h/base", None).unwrap();
        assert!(!plain.uses_captures());
        assert_eq!(plain.expand(None, identity), "http://h/base");
    }

    #[test]
    fn captured_values_are_encoded() {
        let regex = Regex::new(r"^/p(/.*)$").unwrap();
        let template = TargetTemplate::parse("http://h$1", Some(&regex)).unwrap();
        let captures = regex.captures("/p/a b").unwrap();
        let encoded = template.expand(Some(&captures), |text| text.replace(' ', "%20"));
        assert_eq!(encoded, "http://h/a%20b");
    }

    #[test]
    fn header_variables_substituted() {
        let variables = HeaderVariables {
            host: "example.test",
            remote_addr: "10.0.0.7",
            scheme: "https",
        };
        let expand = |text: &str| HeaderTemplate::parse(text).expand(&variables);
        assert_eq!(expand("$host"), "example.test");
        assert_eq!(
            expand("for=$remote_addr;proto=$scheme"),
            "for=10.0.0.7;proto=https"
        );
        assert_eq!(expand("$hostname $scheme"), "$hostname https");
        assert_eq!(expand("plain"), "plain");
        assert_eq!(expand("€$host€"), "€example.test€");
    }
}
