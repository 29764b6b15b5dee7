//! Client frames and broadcast bodies of the built-in cable: never panic,
//! every accepted stream name is within the limits, and a stream name
//! survives the JSON quoting of the acknowledgement.

#![no_main]

use libfuzzer_sys::fuzz_target;
use navigator::cable::{Command, json_string, parse_broadcast, parse_command};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match parse_command(text) {
            Ok(Command::Subscribe(stream) | Command::Unsubscribe(stream)) => {
                assert!(!stream.is_empty(), "{text:?}");
                let quoted = json_string(&stream);
                let back: String = serde_json::from_str(&quoted)
                    .unwrap_or_else(|error| panic!("{quoted:?}: {error}"));
                assert_eq!(back, stream);
            }
            Ok(Command::Pong | Command::Unknown(_)) | Err(_) => {}
        }
    }
    if let Ok(request) = parse_broadcast(data) {
        assert!(!request.stream.is_empty());
    }
});
