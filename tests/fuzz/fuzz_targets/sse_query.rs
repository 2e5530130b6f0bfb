//! The request side of `GET /api/stream`: input is an optional
//! `Last-Event-ID` header line, a newline, then the raw query string (no
//! newline: the whole input is the query).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

fuzz_target!(|data: &[u8]| {
    let (header, query) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    // The raw query arrives as a `&str` (axum's `RawQuery`).
    if let Ok(query) = std::str::from_utf8(query) {
        checks::stream_request(header, query);
    }
});
