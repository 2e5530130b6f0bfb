//! The open-file limit: raised to its hard maximum when a hub is built (as
//! the Go runtime does at start), and the default connection limit derived
//! from it. Every WebSocket or SSE connection holds one descriptor, so a
//! hub with a soft limit of 1,024 — the usual default on Linux — would fail
//! accepting long before `limits.max_connections` means anything.

/// Descriptors kept for everything that is not a client connection: the
/// listener, the task store, Redis and federation links, log files.
const RESERVED: u64 = 512;

/// The fewest connections a derived limit allows.
const FLOOR: u64 = 64;

/// Where the platform has no per-process descriptor limit to read.
#[cfg(not(unix))]
const WITHOUT_RLIMIT: usize = 100_000;

/// The open-file limit after raising the soft limit to the hard one, or
/// `None` where the platform has none.
#[cfg(unix)]
pub(crate) fn raise_open_files() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    if limit.maximum.is_none_or(|max| max > current) {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
        // Some systems refuse "unlimited" (macOS caps it): keep the soft
        // limit as it was.
    }
    Some(current)
}

#[cfg(not(unix))]
pub(crate) fn raise_open_files() -> Option<u64> {
    None
}

/// The connection limit: `configured` when set, else what `open_files`
/// leaves after [`RESERVED`] descriptors.
pub(crate) fn connection_limit(configured: Option<usize>, open_files: Option<u64>) -> usize {
    if let Some(max) = configured {
        return max;
    }
    match open_files {
        Some(files) => {
            let derived = files.saturating_sub(RESERVED).max(FLOOR);
            usize::try_from(derived).unwrap_or(usize::MAX)
        }
        #[cfg(not(unix))]
        None => WITHOUT_RLIMIT,
        #[cfg(unix)]
        None => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_limit_wins_and_the_default_follows_the_open_files() {
        assert_eq!(connection_limit(Some(7), Some(1_048_576)), 7);
        assert_eq!(connection_limit(None, Some(1_048_576)), 1_048_064);
        assert_eq!(connection_limit(None, Some(1024)), 512);
        assert_eq!(connection_limit(None, Some(100)), 64);
    }

    #[cfg(unix)]
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let raised = raise_open_files();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(raised, now.current);
    }
}
