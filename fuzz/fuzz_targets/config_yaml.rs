//! Config files in Navigator's YAML: loading and compiling must not panic,
//! and a YAML document that `navigator convert` turns into TOML must read
//! back as the same tree.

#![no_main]

use libfuzzer_sys::fuzz_target;
use navigator::config::source::{self, Format};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = navigator_fuzz::load_and_compile(text, Format::Yaml);

    // The conversion `navigator convert` performs.
    let Ok(tree) = source::parse(text, Format::Yaml) else {
        return;
    };
    let json = source::to_json(&tree);
    let Ok(toml_text) = toml::to_string_pretty(&json) else {
        return;
    };
    let reread = source::parse(&toml_text, Format::Toml).unwrap_or_else(|error| {
        panic!(
            "converted TOML does not parse: {}\n{toml_text}",
            error.message
        )
    });
    assert_eq!(
        source::to_json(&reread),
        json,
        "converted TOML:\n{toml_text}"
    );
});
