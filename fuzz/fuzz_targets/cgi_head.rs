//! CGI script output: finding the end of the header block and parsing it
//! never panic, and a parsed head has no hop-by-hop field.

#![no_main]

use libfuzzer_sys::fuzz_target;
use navigator::cgi::{find_head_end, parse_head};

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fuzz_target!(|data: &[u8]| {
    // As navigator reads it: up to the blank line, else the whole output.
    let block = match find_head_end(data) {
        Some((head_end, body_start)) => {
            assert!(head_end <= body_start && body_start <= data.len());
            &data[..head_end]
        }
        None => data,
    };
    let Ok((_status, headers)) = parse_head(block) else {
        return;
    };
    for name in HOP_BY_HOP {
        assert!(!headers.contains_key(name), "{name} passed through");
    }
    assert!(!headers.contains_key("status"));
});
