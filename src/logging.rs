//! The log filter. Whatever level is asked for, libraries that dump frame
//! or request contents at TRACE are capped at DEBUG: those contents hold
//! tokens (an `auth` frame, an `auth:refresh`) and event data, which must
//! never reach the logs. A filter that names such a library itself (say
//! `tungstenite=trace` in `RUST_LOG`) is taken as a deliberate choice.

use tracing_subscriber::EnvFilter;

/// Libraries whose TRACE output includes payloads.
const PAYLOAD_DUMPERS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// `RUST_LOG` when set, else `level`; plus the caps above where the filter
/// would otherwise let those libraries log at TRACE (its default level is
/// `trace`). A cap never raises a library above the filter's own level.
pub fn filter(level: &str) -> EnvFilter {
    let asked = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| level.to_string());
    let mut directives = asked.clone();
    if default_is_trace(&asked) {
        for lib in PAYLOAD_DUMPERS {
            if !asked.contains(lib) {
                directives.push_str(&format!(",{lib}=debug"));
            }
        }
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|err| {
        eprintln!("invalid log filter {asked:?} ({err}); using \"info\"");
        EnvFilter::new("info")
    })
}

/// Whether the filter's default level (its last directive without a
/// target) is TRACE.
fn default_is_trace(filter: &str) -> bool {
    filter
        .split(',')
        .map(str::trim)
        .rfind(|d| !d.contains('=') && !d.is_empty())
        .is_some_and(|d| d.eq_ignore_ascii_case("trace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_trace_default_is_capped() {
        assert!(default_is_trace("trace"));
        assert!(default_is_trace("chanhub=debug,TRACE"));
        assert!(!default_is_trace("warn"));
        assert!(!default_is_trace("chanhub=trace"));
        assert!(!default_is_trace("trace,info"));
        // `warn` stays `warn` for tungstenite too: no cap is added.
        if std::env::var_os(EnvFilter::DEFAULT_ENV).is_none() {
            assert_eq!(filter("warn").to_string(), "warn");
        }
    }
}
