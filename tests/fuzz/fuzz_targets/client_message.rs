//! A WebSocket text frame as the session reads it: `ClientMessage`
//! decoding, `salvage_id`, and the channel parsers the request goes to.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 by the time the session sees them.
    if let Ok(text) = std::str::from_utf8(data) {
        checks::client_message(text);
    }
});
