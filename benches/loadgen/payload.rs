//! The 64-byte payload every publish carries, and the clock it is stamped
//! with. The same 64 ASCII bytes go to both brokers: as the JSON string
//! `data` of a chanhub publish, and as the raw NATS message body.
//!
//! Layout: `lg1:` + 20-digit nanoseconds since [`epoch`] + `:` + padding.
//! The stamp is the *scheduled* send time of the message, not the time it
//! was written, so a publisher that falls behind its schedule shows up as
//! latency instead of hiding it (no coordinated omission).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Payload size in bytes, the same for every broker and scenario.
pub(crate) const SIZE: usize = 64;

/// Marks the start of a payload inside a frame.
const MARKER: &[u8] = b"lg1:";

/// Digits of the timestamp.
const STAMP_DIGITS: usize = 20;

/// The generator's shared clock origin: publisher and subscribers live in
/// one process, so stamps need no clock synchronisation.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from [`epoch`] to `at`.
pub(crate) fn nanos_at(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds since [`epoch`], now.
pub(crate) fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// Writes the payload for a message scheduled at `stamp_ns` into `out`
/// (cleared first).
pub(crate) fn encode(stamp_ns: u64, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let _ = write!(out, "lg1:{stamp_ns:020}:");
    while out.len() < SIZE {
        out.push('.');
    }
}

/// Finds a payload in `frame` and returns its stamp.
pub(crate) fn decode(frame: &[u8]) -> Option<u64> {
    let start = find(frame, MARKER)? + MARKER.len();
    let digits = frame.get(start..start + STAMP_DIGITS)?;
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit()
            .then(|| acc.wrapping_mul(10).wrapping_add(u64::from(d - b'0')))
    })
}

/// Latency of a payload received `now_ns`, if the frame carries one.
pub(crate) fn latency(frame: &[u8], now_ns: u64) -> Option<Duration> {
    decode(frame).map(|sent| Duration::from_nanos(now_ns.saturating_sub(sent)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
