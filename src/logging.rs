//! The log filter. Whatever level is asked for, libraries that dump frame
//! or request contents at TRACE are capped at DEBUG: those contents hold
//! tokens (an `auth` frame, an `auth:refresh`) and event data, which must
//! never reach the logs. A filter that names such a library itself (say
//! `tungstenite=trace` in `RUST_LOG`) is taken as a deliberate choice.

use tracing_subscriber::EnvFilter;

/// Libraries whose TRACE output includes payloads.
const PAYLOAD_DUMPERS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// `RUST_LOG` when set, else `level`; plus the caps above.
pub fn filter(level: &str) -> EnvFilter {
    let asked = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| level.to_string());
    let mut directives = asked.clone();
    for lib in PAYLOAD_DUMPERS {
        if !asked.contains(lib) {
            directives.push_str(&format!(",{lib}=debug"));
        }
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|err| {
        eprintln!("invalid log filter {asked:?} ({err}); using \"info\"");
        EnvFilter::new("info")
    })
}
