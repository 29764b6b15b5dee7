//! Access control: HTTP Basic authentication against an htpasswd file, and
//! the public-path rules that exempt requests from it.
//!
//! [`AccessControl::authorize`] is pipeline step 4. It runs before every
//! routing decision and returns one of three outcomes (see [`Decision`]):
//! allow, allow only a static-file response, or challenge with 401.

pub mod hash;
pub mod htpasswd;
pub mod rules;

use std::sync::Arc;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use tracing::debug;

use crate::body::Body;
use crate::compile::AuthRules;
use crate::config::{ConfigError, Loaded};
use crate::responses;
pub use htpasswd::{Htpasswd, Verdict};
pub use rules::{PublicRules, Requirement};

/// The outcome of step 4 for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Route normally. `user` is set when valid credentials came along,
    /// also on public paths, so that CGI gets `REMOTE_USER`.
    Allow { user: Option<String> },
    /// A glob made the path public for static files only, and no valid
    /// credentials came along. The static-file step may respond; every
    /// other outcome is a 401 with this realm.
    StaticOnly { realm: Arc<str> },
    /// Respond with 401 and this realm now.
    Challenge { realm: Arc<str> },
}

/// The compiled `[auth]` section.
#[derive(Debug)]
pub struct AccessControl {
    enabled: bool,
    rules: PublicRules,
    htpasswd: Option<Arc<Htpasswd>>,
}

impl AccessControl {
    /// Compiles the matchers and opens the htpasswd file. A missing file
    /// is no error here (`navigator check` only warns about it); the
    /// server refuses to start or reload without it, see
    /// [`AccessControl::missing_htpasswd`].
    pub fn compile(loaded: &Loaded, rules: &AuthRules, errors: &mut Vec<ConfigError>) -> Self {
        let public = PublicRules::compile(loaded, rules, errors);
        let htpasswd = if rules.enabled {
            rules
                .htpasswd
                .as_deref()
                .map(|path| Arc::new(Htpasswd::open(path)))
        } else {
            None
        };
        AccessControl {
            enabled: rules.enabled && htpasswd.is_some(),
            rules: public,
            htpasswd,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Returns the htpasswd path when auth is enabled and the file is
    /// missing or unreadable.
    pub fn missing_htpasswd(&self) -> Option<&std::path::Path> {
        let htpasswd = self.htpasswd.as_ref()?;
        (!htpasswd.is_available()).then(|| htpasswd.path())
    }

    /// Decides whether the request for the canonical `path` (decoded from
    /// `raw_path`) may go on. Valid credentials always allow; without them
    /// the path's [`Requirement`] decides. Invalid credentials count as
    /// none.
    pub async fn authorize(&self, path: &str, raw_path: &str, headers: &HeaderMap) -> Decision {
        let Some(htpasswd) = self.htpasswd.as_ref().filter(|_| self.enabled) else {
            return Decision::Allow { user: None };
        };
        let requirement = self.requirement(path, raw_path);

        let user = match basic_credentials(headers) {
            Some(credentials) => match htpasswd
                .check(&credentials.user, &credentials.password)
                .await
            {
                Verdict::Valid => Some(credentials.user),
                Verdict::Invalid | Verdict::FileMissing => {
                    debug!(user = %credentials.user, path, "invalid credentials");
                    None
                }
            },
            None => None,
        };

        match (user, requirement) {
            (Some(user), _) => Decision::Allow { user: Some(user) },
            (None, Requirement::Public) => Decision::Allow { user: None },
            (None, Requirement::PublicIfStatic) => Decision::StaticOnly {
                realm: self.rules.default_realm().clone(),
            },
            (None, Requirement::Credentials(realm)) => Decision::Challenge { realm },
        }
    }
}

impl AccessControl {
    /// Classifies the request. An encoded slash (`%2F`) is a separator in
    /// the canonical path, but the tenant receives the original path and
    /// sees it inside one segment. Such a path is classified both ways and
    /// the stricter requirement applies, so `/event/public%2Fpeople`
    /// cannot borrow a rule meant for `/event/public/`.
    fn requirement(&self, path: &str, raw_path: &str) -> Requirement {
        let requirement = self.rules.classify(path);
        if matches!(requirement, Requirement::Credentials(_)) || !has_encoded_slash(raw_path) {
            return requirement;
        }
        let literal = raw_path.replace("%2f", "%252f").replace("%2F", "%252F");
        let as_tenant_sees_it = match crate::canonical::canonicalize(&literal) {
            Ok(canonical) => self.rules.classify(&canonical),
            Err(_) => Requirement::Credentials(self.rules.default_realm().clone()),
        };
        match (requirement, as_tenant_sees_it) {
            (_, strict @ Requirement::Credentials(_)) => strict,
            (Requirement::PublicIfStatic, _) | (_, Requirement::PublicIfStatic) => {
                Requirement::PublicIfStatic
            }
            (requirement, _) => requirement,
        }
    }
}

fn has_encoded_slash(raw_path: &str) -> bool {
    raw_path
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] == b'f' || w[2] == b'F'))
}

/// Credentials from an `Authorization: Basic` header.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Vec<u8>,
}

/// Base64 that accepts tokens with or without `=` padding.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Reads Basic credentials (RFC 7617). Anything unusable (another scheme,
/// two `Authorization` headers, bad base64, no `:`, an empty or non-UTF-8
/// user name, control characters in it) counts as no credentials.
pub fn basic_credentials(headers: &HeaderMap) -> Option<Credentials> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = LENIENT_BASE64.decode(token.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = std::str::from_utf8(&decoded[..colon]).ok()?;
    if user.is_empty() || user.chars().any(char::is_control) {
        return None;
    }
    Some(Credentials {
        user: user.to_string(),
        password: decoded[colon + 1..].to_vec(),
    })
}

/// Builds the 401 response with a Basic challenge for `realm`.
pub fn challenge(realm: &str) -> Response<Body> {
    let mut response = responses::error_page(
        StatusCode::UNAUTHORIZED,
        "This page needs a user name and password.",
    );
    // Realms are checked at config load to hold no quote, backslash or
    // control character, so the header value is always valid.
    let value = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
        .unwrap_or(HeaderValue::from_static("Basic realm=\"Restricted\""));
    response.headers_mut().insert(WWW_AUTHENTICATE, value);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn basic_credentials_forms() {
        // judge:bcrypt-secret
        let token = "anVkZ2U6YmNyeXB0LXNlY3JldA==";
        let expected = Some(Credentials {
            user: "judge".into(),
            password: b"bcrypt-secret".to_vec(),
        });
        assert_eq!(
            basic_credentials(&headers(&format!("Basic {token}"))),
            expected
        );
        assert_eq!(
            basic_credentials(&headers(&format!("basic {token}"))),
            expected
        );
        assert_eq!(
            basic_credentials(&headers(&format!("BASIC  {}", token.trim_end_matches('=')))),
            expected
        );
        // user:pa:ss keeps the second colon in the password.
        assert_eq!(
            basic_credentials(&headers("Basic dXNlcjpwYTpzcw==")),
            Some(Credentials {
                user: "user".into(),
                password: b"pa:ss".to_vec()
            })
        );
    }

    #[test]
    fn basic_credentials_rejects_unusable() {
        let cases = [
            "Bearer anVkZ2U6YmNyeXB0LXNlY3JldA==",
            "Basic",
            "Basic !!!",
            "Basic anVkZ2U=",     // "judge", no colon
            "Basic OnNlY3JldA==", // ":secret", empty user
            "Basic AQI6eA==",     // control characters in the user
            "Basic /w==",         // not UTF-8
        ];
        for value in cases {
            assert_eq!(basic_credentials(&headers(value)), None, "{value}");
        }
        let mut two = headers("Basic anVkZ2U6YmNyeXB0LXNlY3JldA==");
        two.append(
            AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYTpzcw=="),
        );
        assert_eq!(basic_credentials(&two), None);
    }

    #[test]
    fn challenge_names_realm() {
        let response = challenge("Showcase");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Basic realm=\"Showcase\""
        );
    }
}
