//! Config files in TOML: parsing, `${VAR}` expansion, deserializing and
//! compiling (regexes, globs, tenant templates) must not panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use navigator::config::source::Format;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = navigator_fuzz::load_and_compile(text, Format::Toml);
});
