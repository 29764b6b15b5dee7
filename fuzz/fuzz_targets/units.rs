//! Durations, sizes and listen addresses from configs: never panic, and
//! what parses survives formatting and parsing again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use navigator::config::units::{format_duration, parse_duration, parse_listen, parse_size};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(duration) = parse_duration(text) {
        // Configs are written in whole milliseconds at the finest.
        let formatted = format_duration(duration);
        let reparsed = parse_duration(&formatted)
            .unwrap_or_else(|error| panic!("{text:?} -> {formatted:?}: {error}"));
        assert_eq!(
            reparsed.as_millis(),
            duration.as_millis(),
            "{text:?} -> {formatted:?}"
        );
    }

    let _ = parse_size(text);

    if let Ok(listen) = parse_listen(text) {
        let formatted = listen.to_string();
        let reparsed = parse_listen(&formatted)
            .unwrap_or_else(|error| panic!("{text:?} -> {formatted:?}: {error}"));
        assert_eq!(reparsed, listen, "{text:?} -> {formatted:?}");
    }
});
