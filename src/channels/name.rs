//! Validated channel names.
//!
//! Every channel string that reaches the broker from a client goes through
//! [`ChannelName::parse`] once, at the edge; everything inside the broker
//! then works with [`ChannelName`] and never re-validates. That keeps the
//! grammar in one place and lets the subscription index assume well-formed
//! input (non-empty segments, bounded length and depth).

use std::fmt;
use std::sync::Arc;

use super::ChannelError;

/// Separator between the segments of a channel name or pattern.
pub(crate) const SEPARATOR: char = ':';

/// Bounds on the size of channel names and patterns.
///
/// The limits exist so that a client cannot make the broker store or match
/// arbitrarily large strings, and so that pattern matching, whose cost grows
/// with the number of segments, stays cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameLimits {
    /// Maximum total length in bytes (default 255).
    pub max_bytes: usize,
    /// Maximum number of `:`-separated segments (default 16).
    pub max_segments: usize,
}

impl NameLimits {
    /// No limit: for names already validated elsewhere (a literal pattern
    /// spelling a channel, a channel another node published on).
    pub const UNBOUNDED: NameLimits = NameLimits {
        max_bytes: usize::MAX,
        max_segments: usize::MAX,
    };
}

impl Default for NameLimits {
    fn default() -> Self {
        Self {
            max_bytes: 255,
            max_segments: 16,
        }
    }
}

/// Whether `c` may appear in a channel-name segment: `[A-Za-z0-9_.@/+=-]`.
pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '/' | '+' | '=' | '-')
}

/// Checks the structure shared by names and patterns: non-empty, within the
/// limits, non-empty segments, and only characters accepted by `allowed`.
///
/// The cheap whole-string checks run first so that an oversized input is
/// rejected without scanning it.
pub(crate) fn validate(
    s: &str,
    limits: &NameLimits,
    allowed: impl Fn(char) -> bool,
) -> Result<(), ChannelError> {
    if s.is_empty() {
        return Err(ChannelError::Empty);
    }
    if s.len() > limits.max_bytes {
        return Err(ChannelError::TooLong {
            len: s.len(),
            max: limits.max_bytes,
        });
    }
    let count = s.split(SEPARATOR).count();
    if count > limits.max_segments {
        return Err(ChannelError::TooManySegments {
            count,
            max: limits.max_segments,
        });
    }
    // Report whichever problem comes first in the input, so the position in
    // the message is the first thing the user has to fix.
    let mut segment = 0;
    let mut segment_len = 0;
    for (index, ch) in s.char_indices() {
        if ch == SEPARATOR {
            if segment_len == 0 {
                return Err(ChannelError::EmptySegment { index: segment });
            }
            segment += 1;
            segment_len = 0;
        } else if allowed(ch) {
            segment_len += 1;
        } else {
            return Err(ChannelError::InvalidChar { ch, index });
        }
    }
    if segment_len == 0 {
        return Err(ChannelError::EmptySegment { index: segment });
    }
    Ok(())
}

/// A validated channel name such as `session:42:log`.
///
/// The string is held in an `Arc<str>` because names are cloned into every
/// event, cache entry and log line that mentions them; cloning must be a
/// reference-count bump, not a copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `s` against the channel grammar and `limits`.
    ///
    /// # Errors
    ///
    /// Returns the first problem found; see [`ChannelError`].
    pub fn parse(s: &str, limits: &NameLimits) -> Result<ChannelName, ChannelError> {
        validate(s, limits, is_name_char)?;
        Ok(ChannelName(Arc::from(s)))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `:`-separated segments, in order. Never yields an empty segment.
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.0.split(SEPARATOR)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ChannelName, ChannelError> {
        ChannelName::parse(s, &NameLimits::default())
    }

    #[test]
    fn default_limits() {
        let l = NameLimits::default();
        assert_eq!((l.max_bytes, l.max_segments), (255, 16));
    }

    #[test]
    fn valid_names() {
        for s in [
            "a",
            "session:42:log",
            "user@example.com:inbox",
            "A-Z_a.z/0+9=x",
            "task:build/linux-x86_64:1.2.3",
        ] {
            let name = parse(s).unwrap();
            assert_eq!(name.as_str(), s);
            assert_eq!(name.to_string(), s);
            assert_eq!(name.as_ref(), s);
        }
        let name = parse("session:42:log").unwrap();
        assert_eq!(
            name.segments().collect::<Vec<_>>(),
            ["session", "42", "log"]
        );
    }

    #[test]
    fn limits_are_inclusive() {
        let limits = NameLimits {
            max_bytes: 5,
            max_segments: 3,
        };
        assert!(ChannelName::parse("a:b:c", &limits).is_ok());
        assert_eq!(
            ChannelName::parse("abcdef", &limits),
            Err(ChannelError::TooLong { len: 6, max: 5 })
        );
        assert_eq!(
            ChannelName::parse(
                "a:b:c:d",
                &NameLimits {
                    max_bytes: 255,
                    ..limits
                }
            ),
            Err(ChannelError::TooManySegments { count: 4, max: 3 })
        );
        let long = "x".repeat(256);
        assert_eq!(
            parse(&long),
            Err(ChannelError::TooLong { len: 256, max: 255 })
        );
        assert!(parse(&long[..255]).is_ok());
        let deep = vec!["a"; 17].join(":");
        assert_eq!(
            parse(&deep),
            Err(ChannelError::TooManySegments { count: 17, max: 16 })
        );
        assert!(parse(&deep[2..]).is_ok());
    }

    #[test]
    fn invalid_names() {
        assert_eq!(parse(""), Err(ChannelError::Empty));
        assert_eq!(parse(":a"), Err(ChannelError::EmptySegment { index: 0 }));
        assert_eq!(parse("a::b"), Err(ChannelError::EmptySegment { index: 1 }));
        assert_eq!(parse("a:b:"), Err(ChannelError::EmptySegment { index: 2 }));
        assert_eq!(parse(":"), Err(ChannelError::EmptySegment { index: 0 }));
        assert_eq!(
            parse("session:*"),
            Err(ChannelError::InvalidChar { ch: '*', index: 8 })
        );
        assert_eq!(
            parse("a b"),
            Err(ChannelError::InvalidChar { ch: ' ', index: 1 })
        );
        assert_eq!(
            parse("ab:é"),
            Err(ChannelError::InvalidChar { ch: 'é', index: 3 })
        );
        // The first problem in reading order wins.
        assert_eq!(
            parse("a?::"),
            Err(ChannelError::InvalidChar { ch: '?', index: 1 })
        );
    }

    #[test]
    fn error_messages_name_the_position() {
        let msg = parse("ab:c d").unwrap_err().to_string();
        assert_eq!(msg, "invalid character ' ' at byte 4");
        let msg = parse("a::b").unwrap_err().to_string();
        assert!(msg.contains("segment 1"), "{msg}");
    }

    #[test]
    fn serializes_as_a_string() {
        let name = parse("session:42").unwrap();
        assert_eq!(
            crate::channels::test_support::serialize_str(&name).unwrap(),
            "session:42"
        );
    }
}
