//! The path canonicaliser: never panics, and a path it accepts is
//! absolute, no longer than the input, and free of everything it promises
//! to reject (dot segments, empty segments, NUL, backslash, control
//! characters).

#![no_main]

use libfuzzer_sys::fuzz_target;
use navigator::canonical::canonicalize;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(path) = canonicalize(raw) else {
        return;
    };
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    assert!(path.len() <= raw.len(), "{raw:?} -> {path:?}");
    for forbidden in ["/./", "/../", "//", "\0", "\\"] {
        assert!(
            !path.contains(forbidden),
            "{raw:?} -> {path:?} contains {forbidden:?}"
        );
    }
    assert!(
        !path.ends_with("/.") && !path.ends_with("/.."),
        "{raw:?} -> {path:?}"
    );
    assert!(
        !path.chars().any(|c| c.is_ascii_control()),
        "{raw:?} -> {path:?} contains a control character"
    );
});
