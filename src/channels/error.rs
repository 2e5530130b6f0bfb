//! The single error type for channel names and patterns.
//!
//! Names and patterns share one error enum because they share one grammar:
//! a caller that accepts "a channel or a pattern" from a client can report
//! either failure the same way, and the messages name the exact problem and
//! where it is so a client developer can fix the input without guessing.

/// Why a channel name or pattern was rejected.
///
/// Positions are reported as zero-based indices: `index` in
/// [`ChannelError::EmptySegment`] counts segments, `index` in
/// [`ChannelError::InvalidChar`] is a byte offset into the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The input was the empty string.
    #[error("channel name or pattern is empty")]
    Empty,
    /// The input is longer than [`NameLimits::max_bytes`](super::NameLimits::max_bytes).
    #[error("channel name or pattern is {len} bytes long; at most {max} bytes are allowed")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The input has more `:`-separated segments than
    /// [`NameLimits::max_segments`](super::NameLimits::max_segments).
    #[error("channel name or pattern has {count} segments; at most {max} are allowed")]
    TooManySegments {
        /// Number of segments in the input.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A segment is empty: the input has `::`, or starts or ends with `:`.
    #[error("segment {index} is empty (`::`, or a leading or trailing `:`)")]
    EmptySegment {
        /// Zero-based index of the empty segment.
        index: usize,
    },
    /// A character outside the allowed set.
    #[error("invalid character {ch:?} at byte {index}")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Byte offset of the character in the input.
        index: usize,
    },
    /// A glob segment of a pattern could not be compiled (for example an
    /// unclosed `[` or `{`).
    #[error("invalid glob in segment `{segment}`: {reason}")]
    InvalidGlob {
        /// The segment text as written.
        segment: String,
        /// What the glob compiler objected to.
        reason: String,
    },
    /// `**` appeared inside a segment together with other characters
    /// (`foo**`, `a**b`); it is only meaningful as a whole segment.
    #[error("`**` must be a whole segment, found in segment `{segment}`")]
    DoubleStarInSegment {
        /// The segment text as written.
        segment: String,
    },
}
