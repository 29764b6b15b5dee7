//! htpasswd files: parsing every line and verifying a password against
//! every hash that parses must not panic.
//!
//! The first input line is the password, the rest the file. Verifying
//! bcrypt hashes with a cost above 6 and SHA-crypt hashes with more than
//! 10 000 rounds is skipped: the cost field is an exponent (cost 31 means
//! 2^31 rounds), and such a hash would spend the run on one input instead
//! of finding anything. Those hashes are still parsed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use navigator::auth::hash::PasswordHash;
use navigator::auth::htpasswd::Users;

/// Highest bcrypt cost verified here; cost 6 takes about 4 ms.
const MAX_BCRYPT_COST: u32 = 6;

/// Most SHA-crypt rounds verified here; the format's default is 5000.
const MAX_SHA_CRYPT_ROUNDS: u64 = 10_000;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (password, file) = text.split_once('\n').unwrap_or(("", &text));

    let (users, problems) = Users::parse(file);
    let lines = file.lines().count();
    for problem in &problems {
        assert!(problem.line >= 1 && problem.line <= lines, "{problem:?}");
    }
    assert!(users.len() <= lines);

    for line in file.lines() {
        let Some((_, field)) = line.trim_end_matches('\r').split_once(':') else {
            continue;
        };
        let Ok(hash) = PasswordHash::parse(field) else {
            continue;
        };
        let _ = hash.format_name();
        if too_expensive(field) {
            continue;
        }
        let _ = hash.verify(password.as_bytes());
    }
});

fn too_expensive(field: &str) -> bool {
    if let Some(rest) = field
        .strip_prefix("$2y$")
        .or_else(|| field.strip_prefix("$2a$"))
        .or_else(|| field.strip_prefix("$2b$"))
    {
        let cost = rest.split('$').next().unwrap_or("");
        return cost
            .parse::<u32>()
            .map_or(true, |cost| cost > MAX_BCRYPT_COST);
    }
    if field.starts_with("$5$") || field.starts_with("$6$") {
        let rounds = field[3..]
            .strip_prefix("rounds=")
            .and_then(|rest| rest.split('$').next());
        return match rounds {
            Some(rounds) => rounds
                .parse::<u64>()
                .map_or(true, |n| n > MAX_SHA_CRYPT_ROUNDS),
            None => false,
        };
    }
    false
}
