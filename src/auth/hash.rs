//! Password hash formats of htpasswd files and their verification.
//!
//! Supported: bcrypt (`$2y$`, `$2a$`, `$2b$`), Apache MD5 (`$apr1$`),
//! MD5-crypt (`$1$`), SHA-256-crypt (`$5$`), SHA-512-crypt (`$6$`),
//! `{SHA}` (base64 of the SHA-1 digest) and plain text. Every comparison of
//! a computed value with a stored one is constant-time.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest as _, Md5};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// One stored password hash, parsed and checked for shape when the file is
/// read, so a request only computes and compares.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// The whole `$2y$cost$salt+hash` string, verified by the `bcrypt` crate.
    Bcrypt(String),
    /// `$1$` or `$apr1$`: the same algorithm with another magic string.
    Md5Crypt {
        magic: Md5Magic,
        salt: String,
        checksum: String,
    },
    /// The whole `$5$…` or `$6$…` string, verified by the `sha-crypt` crate.
    ShaCrypt(String),
    /// `{SHA}` followed by the base64 of a SHA-1 digest.
    Sha1([u8; 20]),
    /// Plain text, stored as its SHA-256 digest so the comparison takes the
    /// same time whatever the lengths.
    Plain([u8; 32]),
}

/// The prefix that distinguishes MD5-crypt variants. It is hashed in too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Md5Magic {
    /// `$1$`, as crypt(3) and `openssl passwd -1` write it.
    Crypt,
    /// `$apr1$`, as Apache's `htpasswd -m` and `openssl passwd -apr1` write it.
    Apr1,
}

impl Md5Magic {
    fn prefix(self) -> &'static str {
        match self {
            Md5Magic::Crypt => "$1$",
            Md5Magic::Apr1 => "$apr1$",
        }
    }
}

/// The reason a stored hash cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHash(pub String);

impl fmt::Display for InvalidHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PasswordHash {
    /// Names the format only: hashes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.format_name())
    }
}

/// Characters of the crypt(3) base64 alphabet.
const CRYPT_ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl PasswordHash {
    /// Parses the hash field of an htpasswd line. A field that starts with
    /// `$` must be one of the supported crypt formats; anything else that is
    /// not `{SHA}` is plain text.
    pub fn parse(field: &str) -> Result<PasswordHash, InvalidHash> {
        if field.is_empty() {
            return Err(InvalidHash("the password hash is empty".into()));
        }
        if let Some(encoded) = field.strip_prefix("{SHA}") {
            let digest = STANDARD
                .decode(encoded)
                .ok()
                .and_then(|bytes| <[u8; 20]>::try_from(bytes).ok())
                .ok_or_else(|| {
                    InvalidHash("{SHA} is not followed by the base64 of 20 bytes".into())
                })?;
            return Ok(PasswordHash::Sha1(digest));
        }
        if !field.starts_with('$') {
            return Ok(PasswordHash::Plain(Sha256::digest(field.as_bytes()).into()));
        }
        if ["$2y$", "$2a$", "$2b$"]
            .iter()
            .any(|p| field.starts_with(p))
        {
            return field
                .parse::<bcrypt::HashParts>()
                .map(|_| PasswordHash::Bcrypt(field.to_string()))
                .map_err(|error| InvalidHash(format!("invalid bcrypt hash: {error}")));
        }
        if let Some(rest) = field.strip_prefix("$apr1$") {
            return parse_md5_crypt(Md5Magic::Apr1, rest);
        }
        if let Some(rest) = field.strip_prefix("$1$") {
            return parse_md5_crypt(Md5Magic::Crypt, rest);
        }
        if field.starts_with("$5$") || field.starts_with("$6$") {
            return parse_sha_crypt(field);
        }
        let id = field[1..].split('$').next().unwrap_or_default();
        Err(InvalidHash(format!(
            "unsupported hash format ${id}$; use bcrypt, $apr1$, $1$, $5$, $6$, {{SHA}} or plain text"
        )))
    }

    /// Returns the format's name for logs and errors.
    pub fn format_name(&self) -> &'static str {
        match self {
            PasswordHash::Bcrypt(_) => "bcrypt",
            PasswordHash::Md5Crypt {
                magic: Md5Magic::Apr1,
                ..
            } => "apr1",
            PasswordHash::Md5Crypt {
                magic: Md5Magic::Crypt,
                ..
            } => "md5-crypt",
            PasswordHash::ShaCrypt(hash) if hash.starts_with("$5$") => "sha256-crypt",
            PasswordHash::ShaCrypt(_) => "sha512-crypt",
            PasswordHash::Sha1(_) => "sha1",
            PasswordHash::Plain(_) => "plain",
        }
    }

    /// Checks whether verifying costs enough CPU time to belong on a
    /// blocking thread (bcrypt: tens of ms, the crypt formats: thousands
    /// of rounds).
    pub fn is_expensive(&self) -> bool {
        matches!(
            self,
            PasswordHash::Bcrypt(_) | PasswordHash::ShaCrypt(_) | PasswordHash::Md5Crypt { .. }
        )
    }

    /// Checks `password` against this hash. Runs for as long as the format
    /// takes (bcrypt at cost 10: about 50 ms on one core), so callers on an
    /// async runtime run it on a blocking thread.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Md5Crypt {
                magic,
                salt,
                checksum,
            } => {
                let computed = md5_crypt_checksum(*magic, password, salt.as_bytes());
                computed.as_bytes().ct_eq(checksum.as_bytes()).into()
            }
            PasswordHash::ShaCrypt(hash) => verify_sha_crypt(hash, password),
            PasswordHash::Sha1(digest) => {
                let computed: [u8; 20] = Sha1::digest(password).into();
                computed.ct_eq(digest).into()
            }
            PasswordHash::Plain(digest) => {
                let computed: [u8; 32] = Sha256::digest(password).into();
                computed.ct_eq(digest).into()
            }
        }
    }
}

fn parse_md5_crypt(magic: Md5Magic, rest: &str) -> Result<PasswordHash, InvalidHash> {
    let (salt, checksum) = rest.split_once('$').ok_or_else(|| {
        InvalidHash(format!(
            "{} hash has no `$` between salt and checksum",
            magic.prefix()
        ))
    })?;
    let valid_salt = salt.len() <= 8 && !salt.contains('$');
    let valid_checksum = checksum.len() == 22 && checksum.bytes().all(is_crypt_base64);
    if !valid_salt || !valid_checksum {
        return Err(InvalidHash(format!(
            "{} hash needs a salt of at most 8 characters and a 22-character checksum",
            magic.prefix()
        )));
    }
    Ok(PasswordHash::Md5Crypt {
        magic,
        salt: salt.to_string(),
        checksum: checksum.to_string(),
    })
}

fn parse_sha_crypt(field: &str) -> Result<PasswordHash, InvalidHash> {
    let parsed = sha_crypt::PasswordHashRef::new(field)
        .map_err(|error| InvalidHash(format!("invalid SHA-crypt hash: {error}")))?;
    // `$id$[rounds=N$]salt$checksum`: the checksum is the last field.
    let checksum = parsed.fields().last().map(|f| f.as_str()).unwrap_or("");
    let expected_length = if field.starts_with("$5$") { 43 } else { 86 };
    if checksum.len() != expected_length || !checksum.bytes().all(is_crypt_base64) {
        return Err(InvalidHash(format!(
            "SHA-crypt hash needs a {expected_length}-character checksum"
        )));
    }
    Ok(PasswordHash::ShaCrypt(field.to_string()))
}

fn verify_sha_crypt(hash: &str, password: &[u8]) -> bool {
    use sha_crypt::PasswordVerifier as _;
    let Ok(parsed) = sha_crypt::PasswordHashRef::new(hash) else {
        return false;
    };
    // The verifier takes the algorithm from the hash's own `$5$`/`$6$` id
    // and compares in constant time.
    sha_crypt::ShaCrypt::default()
        .verify_password(password, parsed)
        .is_ok()
}

fn is_crypt_base64(byte: u8) -> bool {
    CRYPT_ALPHABET.contains(&byte)
}

/// Computes the 22-character MD5-crypt checksum of `password` with `salt`
/// (at most 8 bytes), following Poul-Henning Kamp's algorithm: a digest of
/// password, magic and salt mixed with an alternate digest, then 1000
/// rounds that interleave password, salt and the previous digest.
pub fn md5_crypt_checksum(magic: Md5Magic, password: &[u8], salt: &[u8]) -> String {
    let salt = &salt[..salt.len().min(8)];

    let alternate = {
        let mut md5 = Md5::new();
        md5.update(password);
        md5.update(salt);
        md5.update(password);
        md5.finalize()
    };

    let mut md5 = Md5::new();
    md5.update(password);
    md5.update(magic.prefix().as_bytes());
    md5.update(salt);
    // The alternate digest, repeated to the password's length.
    let mut remaining = password.len();
    while remaining > 0 {
        let take = remaining.min(16);
        md5.update(&alternate[..take]);
        remaining -= take;
    }
    // For each bit of the password length, lowest first: a zero byte for a
    // set bit, the password's first byte for a clear one.
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            md5.update([0u8]);
        } else {
            md5.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest: [u8; 16] = md5.finalize().into();

    for round in 0..1000 {
        let mut md5 = Md5::new();
        if round % 2 == 1 {
            md5.update(password);
        } else {
            md5.update(digest);
        }
        if round % 3 != 0 {
            md5.update(salt);
        }
        if round % 7 != 0 {
            md5.update(password);
        }
        if round % 2 == 1 {
            md5.update(digest);
        } else {
            md5.update(password);
        }
        digest = md5.finalize().into();
    }

    // The digest bytes go out in this permuted order, three at a time as
    // four characters, least significant six bits first; byte 11 last.
    let mut out = String::with_capacity(22);
    for [a, b, c] in [[0, 6, 12], [1, 7, 13], [2, 8, 14], [3, 9, 15], [4, 10, 5]] {
        let value =
            (u32::from(digest[a]) << 16) | (u32::from(digest[b]) << 8) | u32::from(digest[c]);
        push_crypt_base64(&mut out, value, 4);
    }
    push_crypt_base64(&mut out, u32::from(digest[11]), 2);
    out
}

fn push_crypt_base64(out: &mut String, mut value: u32, characters: usize) {
    for _ in 0..characters {
        out.push(char::from(CRYPT_ALPHABET[(value & 0x3f) as usize]));
        value >>= 6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected hashes computed with `openssl passwd -1` and `-apr1` (OpenSSL 3).
    #[test]
    fn md5_crypt_known_answers() {
        let cases = [
            (
                Md5Magic::Crypt,
                "password",
                "saltstri",
                "$1$saltstri$qQY4WxjABChYG1ccLpfkz/",
            ),
            (
                Md5Magic::Apr1,
                "password",
                "RandSalt",
                "$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/",
            ),
        ];
        for (magic, password, salt, expected) in cases {
            let checksum = md5_crypt_checksum(magic, password.as_bytes(), salt.as_bytes());
            assert_eq!(
                format!("{}{salt}${checksum}", magic.prefix()),
                expected,
                "{password} {salt}"
            );
        }
    }

    #[test]
    fn fixture_style_hashes_verify() {
        let cases = [
            (
                "$2y$05$8gm8sB.L7CRWAuQ6dO9Yy.hbmZk26on0WogB/nN5GWMaB./8rb1jS",
                "bcrypt-secret",
            ),
            ("$apr1$iYTQalFy$7uKvGi0NDzGglO3VB8mNU/", "apr1-secret"),
            ("{SHA}KkPcK3XYeA35EhWhKYmaCyAgadY=", "sha-secret"),
            ("plain-secret", "plain-secret"),
            ("$1$SBxY4Rd6$kTkdlZOAnJwqJ6nlHm2J.1", "crypt-secret"),
        ];
        for (stored, password) in cases {
            let hash = PasswordHash::parse(stored).unwrap();
            assert!(hash.verify(password.as_bytes()), "{stored}");
            assert!(!hash.verify(b"wrong"), "{stored} accepted a wrong password");
            assert!(!hash.verify(b""), "{stored} accepted an empty password");
        }
    }

    #[test]
    fn sha_crypt_known_answers() {
        // Computed with `openssl passwd -5`/`-6` and glibc crypt(3) (rounds).
        let sha256 = "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5";
        let sha512 = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
        let rounds = "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA";
        for stored in [sha256, sha512] {
            let hash = PasswordHash::parse(stored).unwrap();
            assert!(hash.verify(b"Hello world!"), "{stored}");
            assert!(!hash.verify(b"Hello world"), "{stored}");
        }
        let hash = PasswordHash::parse(rounds).unwrap();
        assert!(hash.verify(b"Hello world!"));
    }

    #[test]
    fn malformed_hashes_rejected() {
        let cases = [
            "",
            "{SHA}not-base64!",
            "{SHA}YWJj",
            "$2y$05$tooshort",
            "$apr1$salt",
            "$apr1$toolongsalt$7uKvGi0NDzGglO3VB8mNU/",
            "$1$SBxY4Rd6$short",
            "$5$salt$short",
            "$argon2id$v=19$m=65536,t=3,p=4$abc$def",
            "$3$whatever",
        ];
        for stored in cases {
            assert!(PasswordHash::parse(stored).is_err(), "{stored:?} parsed");
        }
    }

    #[test]
    fn debug_output_hides_hash() {
        let hash = PasswordHash::parse("plain-secret").unwrap();
        assert_eq!(format!("{hash:?}"), "plain");
    }
}
