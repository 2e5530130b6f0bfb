//! `Last-Event-ID` parsing (`SseCursor::decode`) on the raw input as text,
//! and, from the same bytes read as `arbitrary` data, cursors built with
//! `set` the way a stream builds them: they must encode to text that
//! decodes back to the same cursor.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

/// Channel segments, including a leading `+` and the `=` / `.` the text
/// form uses as separators.
const SEGMENTS: &[&str] = &["a", "b", "session", "42", "+x", "x=y.z", "=", "."];

#[derive(Arbitrary, Debug)]
struct Set {
    segments: Vec<u8>,
    /// A long segment of this many `x` (0: none), to reach the byte bound.
    long: u8,
    epoch: u64,
    /// Epoch length in hex digits (the hub uses 16).
    epoch_len: u8,
    offset: u64,
}

#[derive(Arbitrary, Debug)]
struct Sets {
    incomplete: bool,
    sets: Vec<Set>,
}

fn build(set: &Set) -> (String, String, u64) {
    let mut parts: Vec<String> = set
        .segments
        .iter()
        .take(8)
        .map(|&i| SEGMENTS[usize::from(i) % SEGMENTS.len()].to_owned())
        .collect();
    if set.long > 0 {
        parts.push("x".repeat(usize::from(set.long)));
    }
    let epoch = format!("{:016x}", set.epoch);
    let len = usize::from(set.epoch_len % 16) + 1;
    (parts.join(":"), epoch[16 - len..].to_owned(), set.offset)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        checks::cursor_text(text);
    }
    if let Ok(input) = Sets::arbitrary_take_rest(Unstructured::new(data)) {
        let sets: Vec<(String, String, u64)> = input.sets.iter().map(build).collect();
        checks::cursor_sets(input.incomplete, &sets);
    }
});
