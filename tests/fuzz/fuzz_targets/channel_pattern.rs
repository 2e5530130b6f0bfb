//! `ChannelName` and `Pattern` parsing with the default `NameLimits`: every
//! line on its own, and lines 1-3 as (pattern, pattern, channel) for
//! `matches` vs the naive matcher and the soundness of `covers` /
//! `intersects`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        checks::names_and_patterns(text);
    }
});
