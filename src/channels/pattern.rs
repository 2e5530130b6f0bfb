//! Channel patterns: what a client subscribes to, and what permission
//! allow-lists are written in.
//!
//! A pattern is parsed and compiled once (globs included) so that matching a
//! published channel against it never re-parses text. The compiled segments
//! are shared by the direct matcher here ([`Pattern::matches`]), by the
//! containment check used for permissions ([`Pattern::covers`]) and by the
//! subscription trie in `index.rs`.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use globset::{Candidate, GlobBuilder, GlobMatcher};

use super::name::{SEPARATOR, is_name_char, validate};
use super::{ChannelError, ChannelName, NameLimits};

/// Glob metacharacters accepted in a pattern segment on top of the name
/// characters.
fn is_glob_meta(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | ',' | '!' | '^')
}

/// Something that matches one channel segment.
///
/// Exists so that [`GlobSegment`] can hold its compiled glob as a trait
/// object: `GlobMatcher` contains the regex engine's scratch-space pool
/// (interior mutability), which would otherwise make clippy's
/// `mutable_key_type` lint fire on every `HashSet<Pattern>` / `HashMap`
/// keyed by patterns, although `Pattern`'s `Hash`/`Eq` only look at the
/// immutable source text.
trait SegmentMatcher: fmt::Debug + Send + Sync {
    fn is_match(&self, segment: &str) -> bool;
}

impl SegmentMatcher for GlobMatcher {
    fn is_match(&self, segment: &str) -> bool {
        // `Candidate::from_bytes` borrows the text: no allocation and no
        // platform path normalisation on the match path.
        self.is_match_candidate(&Candidate::from_bytes(segment.as_bytes()))
    }
}

/// A compiled glob that matches within one segment.
#[derive(Debug, Clone)]
pub(crate) struct GlobSegment {
    /// The segment as written; two globs are only considered the same (for
    /// trie sharing and for `covers`) when their text is identical.
    text: Arc<str>,
    /// The compiled matcher, built once at parse time and shared by every
    /// clone of the pattern and by the subscription trie.
    matcher: Arc<dyn SegmentMatcher>,
}

impl GlobSegment {
    fn compile(text: &str) -> Result<Self, ChannelError> {
        // `literal_separator(false)`: a channel segment never contains `:`,
        // and `/` is an ordinary name character, so nothing inside a segment
        // may act as a path separator. `backslash_escape(false)`: `\` is not
        // in the charset anyway; disabling escapes keeps the glob language
        // exactly the documented one on every platform.
        let glob = GlobBuilder::new(text)
            .literal_separator(false)
            .backslash_escape(false)
            .build()
            .map_err(|e| ChannelError::InvalidGlob {
                segment: text.to_owned(),
                reason: e.kind().to_string(),
            })?;
        Ok(Self {
            text: text.into(),
            matcher: Arc::new(glob.compile_matcher()),
        })
    }

    /// The glob as written.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Whether the glob matches one channel segment.
    pub(crate) fn is_match(&self, segment: &str) -> bool {
        self.matcher.is_match(segment)
    }
}

/// One compiled segment of a pattern.
#[derive(Debug, Clone)]
pub(crate) enum Segment {
    /// Matches exactly this text. An `Arc` so the subscription trie can key
    /// its literal children by it without copying the text on every insert.
    Literal(Arc<str>),
    /// `*`: exactly one segment, any content.
    Star,
    /// `**`: zero or more whole segments.
    DoubleStar,
    /// A segment with glob metacharacters, matched within one segment.
    Glob(GlobSegment),
}

impl Segment {
    fn parse(text: &str) -> Result<Self, ChannelError> {
        match text {
            "**" => Ok(Self::DoubleStar),
            "*" => Ok(Self::Star),
            _ if text.chars().all(is_name_char) => Ok(Self::Literal(text.into())),
            _ if text.contains("**") => Err(ChannelError::DoubleStarInSegment {
                segment: text.to_owned(),
            }),
            _ => GlobSegment::compile(text).map(Self::Glob),
        }
    }

    /// The segment as it appears in the normalised pattern text.
    pub(crate) fn text(&self) -> &str {
        match self {
            Self::Literal(text) => text,
            Self::Star => "*",
            Self::DoubleStar => "**",
            Self::Glob(glob) => glob.text(),
        }
    }

    /// Whether this segment matches exactly one channel segment. `**` spans
    /// a variable number of segments, so callers handle it themselves; here
    /// it answers `true` (it can always consume one segment).
    pub(crate) fn matches_one(&self, segment: &str) -> bool {
        match self {
            Self::Literal(text) => **text == *segment,
            Self::Star | Self::DoubleStar => true,
            Self::Glob(glob) => glob.is_match(segment),
        }
    }
}

/// Whether `a`, standing for one segment of the covering pattern, accepts
/// every channel segment that `b` accepts. `**` on the covering side is
/// handled by the caller.
fn segment_covers(a: &Segment, b: &Segment) -> bool {
    match (a, b) {
        // Only a `**` on the covering side spans a variable number of segments.
        (_, Segment::DoubleStar) => false,
        (Segment::DoubleStar | Segment::Star, _) => true,
        (Segment::Literal(x), Segment::Literal(y)) => x == y,
        (Segment::Glob(g), Segment::Literal(y)) => g.is_match(y),
        (Segment::Glob(g), Segment::Glob(h)) => g.text() == h.text(),
        // Conservative: a literal never covers a glob or `*`, and a glob
        // never covers `*` or a glob with different text, even where the
        // languages happen to be contained (e.g. `[a]` vs `a`).
        _ => false,
    }
}

/// A validated, compiled channel pattern such as `session:*`, `user:42:**`
/// or `region:{eu,us}:job-?`.
///
/// Equality and hashing use the normalised source text (runs of `**`
/// segments collapsed to one), so `a:**:**` and `a:**` are the same pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Normalised source text: what `Display`, `Serialize` and equality use.
    source: Arc<str>,
    /// Compiled segments, shared so that cloning a pattern is cheap.
    segments: Arc<[Segment]>,
    /// Cached [`Pattern::is_literal`], asked on every subscribe.
    literal: bool,
}

impl Pattern {
    /// Parses and compiles `s` against the pattern grammar and `limits`.
    ///
    /// Limits apply to the text as written, before `**` runs are collapsed.
    ///
    /// # Errors
    ///
    /// Returns the first problem found; see [`ChannelError`]. Length,
    /// segment-count, empty-segment and character problems are reported
    /// before `**`-placement and glob-syntax problems.
    pub fn parse(s: &str, limits: &NameLimits) -> Result<Pattern, ChannelError> {
        validate(s, limits, |c| is_name_char(c) || is_glob_meta(c))?;
        let mut segments: Vec<Segment> = Vec::new();
        let mut collapsed = false;
        for text in s.split(SEPARATOR) {
            let segment = Segment::parse(text)?;
            if matches!(segment, Segment::DoubleStar)
                && matches!(segments.last(), Some(Segment::DoubleStar))
            {
                collapsed = true;
                continue;
            }
            segments.push(segment);
        }
        let source: Arc<str> = if collapsed {
            let parts: Vec<&str> = segments.iter().map(Segment::text).collect();
            parts.join(":").into()
        } else {
            s.into()
        };
        let literal = segments.iter().all(|s| matches!(s, Segment::Literal(_)));
        Ok(Pattern {
            source,
            segments: segments.into(),
            literal,
        })
    }

    /// The normalised pattern text.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The compiled segments, for the subscription trie.
    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True when the pattern has no wildcards or globs, i.e. it matches
    /// exactly one channel (its own text).
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    /// Whether `channel` matches this pattern.
    ///
    /// This is the direct matcher for one pattern; matching a channel against
    /// many subscriptions goes through
    /// [`SubscriptionIndex`](super::SubscriptionIndex) instead. It runs
    /// in `O(pattern segments × channel segments)` worst case without
    /// allocating: the classic greedy wildcard algorithm, where `**` plays
    /// the role of `*` and every other segment matches exactly one channel
    /// segment, so only the most recent `**` ever needs to be revisited.
    pub fn matches(&self, channel: &ChannelName) -> bool {
        let channel = channel.as_str();
        if self.literal {
            // No wildcard: the one channel written the same way.
            return *self.source == *channel;
        }
        // Channel positions are byte offsets of segment starts; a position
        // past `channel.len()` means every segment has been consumed.
        let done = |pos: usize| pos > channel.len();
        let (mut p, mut c) = (0, 0);
        // (pattern index just after the last `**`, channel position the
        // `**` currently stops at).
        let mut resume: Option<(usize, usize)> = None;
        loop {
            if done(c) {
                return self.segments[p..]
                    .iter()
                    .all(|s| matches!(s, Segment::DoubleStar));
            }
            match self.segments.get(p) {
                Some(Segment::DoubleStar) => {
                    resume = Some((p + 1, c));
                    p += 1;
                    continue;
                }
                Some(segment) => {
                    let (text, next) = segment_at(channel, c);
                    if segment.matches_one(text) {
                        p += 1;
                        c = next;
                        continue;
                    }
                }
                None => {}
            }
            // Mismatch: let the last `**` swallow one more segment.
            let Some((after, from)) = resume else {
                return false;
            };
            let (_, next) = segment_at(channel, from);
            resume = Some((after, next));
            p = after;
            c = next;
        }
    }

    /// True when every channel `other` can match is also matched by `self`.
    ///
    /// This is the rule used for permission allow-lists: a subscribe pattern
    /// is allowed only if every channel it can match is allowed, and,
    /// conservatively, only if a single allow-list pattern covers it.
    ///
    /// Conservative: may return false for some true containments (e.g.
    /// glob-vs-glob with different text), never true for a false one.
    ///
    /// The check aligns the two segment lists (a dynamic programme over
    /// `self × other` segments):
    /// - a `**` in `self` covers any run of zero or more of `other`'s
    ///   segments, including `other`'s `**`;
    /// - `*` covers exactly one literal, `*` or glob segment;
    /// - a literal covers only the identical literal;
    /// - a glob covers a literal it matches and the identical glob text;
    /// - a `**` in `other` is covered only by a `**` in `self`.
    pub fn covers(&self, other: &Pattern) -> bool {
        let (a, b) = (&*self.segments, &*other.segments);
        let width = b.len() + 1;
        // table[i * width + j]: does a[i..] cover b[j..]?
        let mut table = vec![false; (a.len() + 1) * width];
        table[a.len() * width + b.len()] = true;
        for i in (0..a.len()).rev() {
            for j in (0..=b.len()).rev() {
                let covered = match &a[i] {
                    Segment::DoubleStar => {
                        // Zero more segments, or swallow b[j] and stay on `**`.
                        table[(i + 1) * width + j] || (j < b.len() && table[i * width + j + 1])
                    }
                    single => {
                        j < b.len()
                            && segment_covers(single, &b[j])
                            && table[(i + 1) * width + j + 1]
                    }
                };
                table[i * width + j] = covered;
            }
        }
        table[0]
    }
}

impl Pattern {
    /// True when some channel matches both `self` and `other`.
    ///
    /// Federation uses it to decide whether a subscription pattern and an
    /// export or import allow-list entry can share events. Conservative in
    /// the other direction from [`covers`](Self::covers): two glob segments
    /// (or a glob and `*`) in the same position are assumed to overlap, so
    /// it may say true for some disjoint patterns, never false for
    /// overlapping ones.
    pub fn intersects(&self, other: &Pattern) -> bool {
        let (a, b) = (&*self.segments, &*other.segments);
        let width = b.len() + 1;
        // table[i * width + j]: can a[i..] and b[j..] match a common channel?
        let mut table = vec![false; (a.len() + 1) * width];
        table[a.len() * width + b.len()] = true;
        for i in (0..=a.len()).rev() {
            for j in (0..=b.len()).rev() {
                if i == a.len() && j == b.len() {
                    continue;
                }
                let at = |i: usize, j: usize| table[i * width + j];
                let a_ds = i < a.len() && matches!(a[i], Segment::DoubleStar);
                let b_ds = j < b.len() && matches!(b[j], Segment::DoubleStar);
                // A `**` matches nothing more, or swallows the other side's
                // next segment (any single segment matches some text).
                let value = (a_ds && (at(i + 1, j) || (j < b.len() && at(i, j + 1))))
                    || (b_ds && (at(i, j + 1) || (i < a.len() && at(i + 1, j))))
                    || (i < a.len()
                        && j < b.len()
                        && !a_ds
                        && !b_ds
                        && segments_intersect(&a[i], &b[j])
                        && at(i + 1, j + 1));
                table[i * width + j] = value;
            }
        }
        table[0]
    }
}

/// Whether two single-segment matchers accept a common segment.
fn segments_intersect(a: &Segment, b: &Segment) -> bool {
    match (a, b) {
        (Segment::Literal(x), Segment::Literal(y)) => x == y,
        (Segment::Literal(x), Segment::Glob(g)) | (Segment::Glob(g), Segment::Literal(x)) => {
            g.is_match(x)
        }
        // `*` takes anything; two globs are assumed to overlap.
        _ => true,
    }
}

/// The channel segment starting at byte `pos` and the start of the next one
/// (past the end of `channel` after the last segment).
fn segment_at(channel: &str, pos: usize) -> (&str, usize) {
    let rest = channel.get(pos..).unwrap_or_default();
    match rest.find(SEPARATOR) {
        Some(len) => (&rest[..len], pos + len + 1),
        None => (rest, channel.len() + 1),
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl Hash for Pattern {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.source.hash(state);
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl AsRef<str> for Pattern {
    fn as_ref(&self) -> &str {
        &self.source
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

#[cfg(test)]
mod tests;
