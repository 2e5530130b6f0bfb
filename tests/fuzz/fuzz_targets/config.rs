//! The TOML configuration: `Config::from_toml` and `Config::load` (the
//! path `chanhub serve --config` takes) on arbitrary text, validation,
//! a TOML round trip, and the verifier a valid configuration builds.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

fuzz_target!(|data: &[u8]| {
    // A configuration file is read as UTF-8 text.
    if let Ok(text) = std::str::from_utf8(data) {
        checks::config_text(text);
    }
});
