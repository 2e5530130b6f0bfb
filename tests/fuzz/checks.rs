//! The invariants of the fuzz targets, shared by the targets in
//! `fuzz_targets/` and their property-test twins in `tests/fuzz_props.rs`
//! (both include this file with `#[path]`), so that a fuzzer and a
//! proptest can never check different things under the same name.
//!
//! Every check panics when an invariant is broken; that panic is what
//! libFuzzer reports as a crash and proptest shrinks.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

use globset::GlobMatcher;

use chanhub::channels::list::split_list;
use chanhub::channels::{ChannelName, NameLimits, Pattern, SubscriptionIndex};
use chanhub::fuzz_api;
use chanhub::protocol::history::{SseCursor, StreamPosition};
use chanhub::protocol::{ClientMessage, parse_client_message, salvage_id};

/// Target `client_message`: what the WebSocket session does with a text
/// frame. Parsing never panics; the session's parse (with the call
/// frames' direct path) and the generic one agree, message or error; a
/// parsed message survives a serialize / parse round trip unchanged;
/// `salvage_id` reads the same id the message carries; the channel strings
/// in it go through the same parsers the session uses next.
pub(crate) fn client_message(text: &str) {
    let salvaged = salvage_id(text);
    let parsed = parse_client_message(text).map_err(|e| e.to_string());
    let generic = serde_json::from_str::<ClientMessage>(text).map_err(|e| e.to_string());
    assert_eq!(parsed, generic, "the two parse paths disagree on {text:?}");
    let Ok(message) = parsed else {
        return;
    };
    let json = serde_json::to_string(&message).expect("a parsed message serializes");
    let again: ClientMessage = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("re-parsing {json} failed: {e} (input {text:?})"));
    assert_eq!(again, message, "round trip through {json}");
    if let Some(id) = message.id() {
        assert_eq!(
            salvaged.as_ref(),
            Some(id),
            "salvage_id disagrees on {text:?}"
        );
    }
    let limits = NameLimits::default();
    match &message {
        ClientMessage::Subscribe {
            channels, since, ..
        } => {
            for channel in channels {
                let _ = Pattern::parse(channel, &limits);
            }
            for channel in since.keys() {
                let _ = ChannelName::parse(channel, &limits);
            }
        }
        ClientMessage::Unsubscribe { channels, .. } => {
            for channel in channels {
                let _ = Pattern::parse(channel, &limits);
            }
        }
        ClientMessage::Publish { channel, .. } | ClientMessage::History { channel, .. } => {
            let _ = ChannelName::parse(channel, &limits);
        }
        _ => {}
    }
}

/// Whether `c` is a channel-name character, written out independently of
/// the crate's own predicate.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.@/+=-".contains(c)
}

/// The pattern text with runs of `**` segments collapsed to one: what
/// `Pattern::as_str` must return.
pub(crate) fn normalised(pattern: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for segment in pattern.split(':') {
        if segment == "**" && out.last() == Some(&"**") {
            continue;
        }
        out.push(segment);
    }
    out.join(":")
}

/// Whether one pattern segment (not `**`) matches one channel segment.
fn segment_matches(pattern: &str, channel: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if pattern.chars().all(is_name_char) {
        return pattern == channel;
    }
    // Glob segments: the same glob language and options the crate
    // documents; this model tests the segment structure, not globset.
    // Compiled globs are cached: compiling dominates the run time otherwise.
    thread_local! {
        static GLOBS: RefCell<HashMap<String, Option<GlobMatcher>>> = RefCell::default();
    }
    GLOBS.with_borrow_mut(|globs| {
        if globs.len() > 4096 {
            globs.clear();
        }
        globs
            .entry(pattern.to_owned())
            .or_insert_with(|| {
                globset::GlobBuilder::new(pattern)
                    .literal_separator(false)
                    .backslash_escape(false)
                    .build()
                    .ok()
                    .map(|g| g.compile_matcher())
            })
            .as_ref()
            .is_some_and(|g| g.is_match(channel))
    })
}

/// The naive matcher: does the (valid) pattern text match the (valid)
/// channel text? A dynamic programme over (pattern segment, channel
/// segment) positions, with `**` taking zero or more whole segments.
pub(crate) fn reference_matches(pattern: &str, channel: &str) -> bool {
    let p: Vec<&str> = pattern.split(':').collect();
    let c: Vec<&str> = channel.split(':').collect();
    // table[i][j]: does p[i..] match c[j..]?
    let mut table = vec![vec![false; c.len() + 1]; p.len() + 1];
    table[p.len()][c.len()] = true;
    for i in (0..p.len()).rev() {
        for j in (0..=c.len()).rev() {
            table[i][j] = if p[i] == "**" {
                table[i + 1][j] || (j < c.len() && table[i][j + 1])
            } else {
                j < c.len() && segment_matches(p[i], c[j]) && table[i + 1][j + 1]
            };
        }
    }
    table[0][0]
}

/// Target `channel_pattern`, for one string: parsing a name or a pattern
/// never panics; a parsed name is the input, within the limits, and also a
/// literal pattern that matches itself; a parsed pattern's text is the
/// input with `**` runs collapsed, parses again to itself, covers and
/// intersects itself, and when literal matches exactly its own name.
pub(crate) fn name_and_pattern(text: &str) {
    let limits = NameLimits::default();
    if let Ok(name) = ChannelName::parse(text, &limits) {
        assert_eq!(name.as_str(), text);
        assert!(text.len() <= limits.max_bytes);
        let segments: Vec<&str> = name.segments().collect();
        assert!(segments.len() <= limits.max_segments);
        assert!(segments.iter().all(|s| !s.is_empty()));
        assert!(text.chars().all(|c| c == ':' || is_name_char(c)));
        let pattern = Pattern::parse(text, &limits).expect("every name is a pattern");
        assert!(pattern.is_literal(), "{text:?} parsed as a name is literal");
        assert_eq!(pattern.as_str(), text);
        assert!(pattern.matches(&name), "{text:?} matches itself");
    }
    if let Ok(pattern) = Pattern::parse(text, &limits) {
        assert_eq!(pattern.as_str(), normalised(text), "normalised text");
        let again = Pattern::parse(pattern.as_str(), &limits).expect("normalised text parses");
        assert_eq!(again, pattern);
        assert_eq!(again.as_str(), pattern.as_str());
        assert!(pattern.covers(&pattern), "{text:?} covers itself");
        assert!(pattern.intersects(&pattern), "{text:?} intersects itself");
        if pattern.is_literal() {
            let name = ChannelName::parse(text, &limits).expect("a literal pattern is a name");
            assert!(pattern.matches(&name));
        }
    }
}

/// Target `channel_pattern`, for two patterns and a channel: `matches`
/// agrees with the naive matcher, and `covers` / `intersects` are sound
/// (the permission check may refuse too much, never allow too much).
pub(crate) fn pattern_pair(a: &str, b: &str, channel: &str) {
    let limits = NameLimits::default();
    let (Ok(a), Ok(b), Ok(name)) = (
        Pattern::parse(a, &limits),
        Pattern::parse(b, &limits),
        ChannelName::parse(channel, &limits),
    ) else {
        return;
    };
    let in_a = a.matches(&name);
    let in_b = b.matches(&name);
    assert_eq!(
        in_a,
        reference_matches(a.as_str(), channel),
        "{a} vs {channel}"
    );
    assert_eq!(
        in_b,
        reference_matches(b.as_str(), channel),
        "{b} vs {channel}"
    );
    if a.covers(&b) && in_b {
        assert!(
            in_a,
            "{a} covers {b}, which matches {channel}, but {a} does not"
        );
    }
    if b.covers(&a) && in_a {
        assert!(
            in_b,
            "{b} covers {a}, which matches {channel}, but {b} does not"
        );
    }
    if in_a && in_b {
        assert!(a.intersects(&b), "{a} and {b} both match {channel}");
        assert!(b.intersects(&a), "{b} and {a} both match {channel}");
    }
}

/// Target `channel_pattern`: every line on its own, and the first three
/// lines as (pattern, pattern, channel).
pub(crate) fn names_and_patterns(text: &str) {
    let lines: Vec<&str> = text.split('\n').collect();
    for line in &lines {
        name_and_pattern(line);
    }
    if let [a, b, channel, ..] = lines[..] {
        pattern_pair(a, b, channel);
    }
}

/// One step of target `subscription_index`.
#[derive(Debug, Clone)]
pub(crate) enum IndexOp {
    /// `insert(pattern, key, (key, value))`.
    Insert {
        pattern: String,
        key: u64,
        value: u32,
    },
    /// `remove(pattern, key)`.
    Remove { pattern: String, key: u64 },
    /// `matches(channel)`.
    Match { channel: String },
}

/// The model's subscription: what `SubscriptionIndex` must behave like.
struct ModelSub {
    key: u64,
    pattern: String,
    value: u32,
    seq: u64,
}

/// Target `subscription_index`: runs `ops` on a real index and on a
/// `Vec` of subscriptions with the naive matcher. Insert and remove
/// results, `len`, `pattern_counts` and every match result (twice, the
/// second from the cache when enabled) must agree.
pub(crate) fn index_ops(cache_capacity: usize, ops: &[IndexOp]) {
    let limits = NameLimits::default();
    let index: SubscriptionIndex<(u64, u32)> = SubscriptionIndex::new(cache_capacity);
    let mut model: Vec<ModelSub> = Vec::new();
    let mut seq = 0u64;
    // Parsed once per distinct text and kept across runs: compiling globs
    // would otherwise dominate (parsing has its own target).
    thread_local! {
        static PATTERNS: RefCell<HashMap<String, Option<Pattern>>> = RefCell::default();
    }
    let parse = |text: &str| -> Option<Pattern> {
        PATTERNS.with_borrow_mut(|patterns| {
            if patterns.len() > 4096 {
                patterns.clear();
            }
            patterns
                .entry(text.to_owned())
                .or_insert_with(|| Pattern::parse(text, &limits).ok())
                .clone()
        })
    };
    for op in ops {
        match op {
            IndexOp::Insert {
                pattern,
                key,
                value,
            } => {
                let Some(parsed) = parse(pattern) else {
                    continue;
                };
                let text = parsed.as_str();
                let present = model.iter().any(|s| s.key == *key && s.pattern == text);
                assert_eq!(
                    index.insert(&parsed, *key, (*key, *value)),
                    !present,
                    "insert {text} for {key}"
                );
                if !present {
                    model.push(ModelSub {
                        key: *key,
                        pattern: text.to_owned(),
                        value: *value,
                        seq,
                    });
                    seq += 1;
                }
            }
            IndexOp::Remove { pattern, key } => {
                let Some(parsed) = parse(pattern) else {
                    continue;
                };
                let text = parsed.as_str();
                let before = model.len();
                model.retain(|s| !(s.key == *key && s.pattern == text));
                assert_eq!(
                    index.remove(&parsed, *key),
                    model.len() < before,
                    "remove {text} for {key}"
                );
            }
            IndexOp::Match { channel } => {
                let Ok(name) = ChannelName::parse(channel, &limits) else {
                    continue;
                };
                // Each key once, with the value of its newest matching
                // subscription, in ascending key order.
                let mut newest: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
                for sub in model
                    .iter()
                    .filter(|s| reference_matches(&s.pattern, channel))
                {
                    let entry = newest.entry(sub.key).or_insert((sub.seq, sub.value));
                    if sub.seq >= entry.0 {
                        *entry = (sub.seq, sub.value);
                    }
                }
                let expected: Vec<(u64, u32)> =
                    newest.into_iter().map(|(k, (_, v))| (k, v)).collect();
                assert_eq!(&*index.matches(&name), &expected[..], "match {channel}");
                assert_eq!(&*index.matches(&name), &expected[..], "again {channel}");
            }
        }
        assert_eq!(index.len(), model.len());
        assert_eq!(index.is_empty(), model.is_empty());
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for sub in &model {
        *counts.entry(sub.pattern.clone()).or_default() += 1;
    }
    let mut actual = index.pattern_counts();
    actual.sort();
    assert_eq!(actual, counts.into_iter().collect::<Vec<_>>());
}

/// Whether a `Last-Event-ID` header value reaches the handler as text:
/// `HeaderValue::to_str` accepts only tab and visible ASCII (plus space).
fn header_text(raw: &[u8]) -> Option<&str> {
    raw.iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| std::str::from_utf8(raw).ok())
        .flatten()
}

/// What `SseCursor::decode` plus the channel check make of a resume text:
/// `Ok(None)` for none, `Err` for a 400.
fn expected_resume(text: &str) -> Result<Option<Vec<String>>, ()> {
    let limits = NameLimits::default();
    match SseCursor::decode(text) {
        Err(_) => Err(()),
        Ok(None) => Ok(None),
        Ok(Some(cursor)) => {
            let channels: Vec<String> = cursor.entries().map(|(c, _)| c.to_owned()).collect();
            if channels
                .iter()
                .all(|c| ChannelName::parse(c, &limits).is_ok())
            {
                Ok(Some(channels))
            } else {
                Err(())
            }
        }
    }
}

/// Target `sse_query`: the request side of `GET /api/stream?<query>` with
/// an optional `Last-Event-ID`. Never panics; `split_list` yields trimmed,
/// non-empty entries; and the handler's patterns and resume cursor (or its
/// refusal) are exactly those of a straightforward reading of the query:
/// every `channels` value split, at most `limits.max_sse_patterns` entries
/// listed (repeats count), each parsed, duplicates dropped, at least one;
/// the header wins over `?lastEventId=` and its channels must be valid
/// names.
pub(crate) fn stream_request(last_event_id: Option<&[u8]>, query: &str) {
    let limits = NameLimits::default();
    let max = fuzz_api::default_hub().config().limits.max_sse_patterns;
    let pairs = fuzz_api::query_pairs(query);
    let mut patterns: Vec<Pattern> = Vec::new();
    let mut refused = false;
    // Every listed entry counts towards the limit, repeats included.
    let mut listed = 0;
    for (_, value) in pairs.iter().filter(|(k, _)| k == "channels") {
        for raw in split_list(value) {
            assert!(
                !raw.is_empty() && raw == raw.trim(),
                "split_list gave {raw:?}"
            );
            listed += 1;
            if listed > max {
                refused = true;
                break;
            }
            match Pattern::parse(raw, &limits) {
                Ok(p) if !patterns.contains(&p) => patterns.push(p),
                Ok(_) => {}
                Err(_) => {
                    refused = true;
                    break;
                }
            }
        }
        if refused {
            break;
        }
    }
    refused |= patterns.is_empty();
    let header = last_event_id.and_then(header_text).map(str::trim);
    let param = pairs
        .iter()
        .find(|(k, _)| k == "lastEventId")
        .map(|(_, v)| v.as_str());
    let resume = match header.or(param).filter(|t| !t.is_empty()) {
        Some(text) => expected_resume(text),
        None => Ok(None),
    };
    match fuzz_api::stream_request(query, last_event_id) {
        Ok(request) => {
            assert!(
                !refused,
                "accepted a query the reference refuses: {query:?}"
            );
            assert_eq!(request.patterns, patterns, "patterns of {query:?}");
            let channels = request.resume.map(|(cursor, since)| {
                let channels: Vec<String> = cursor.entries().map(|(c, _)| c.to_owned()).collect();
                let keys: HashSet<&str> = since.keys().map(ChannelName::as_str).collect();
                assert_eq!(keys.len(), channels.len());
                assert!(channels.iter().all(|c| keys.contains(c.as_str())));
                channels
            });
            assert_eq!(Ok(channels), resume, "resume of {query:?}");
        }
        Err(message) => {
            assert!(
                refused || resume.is_err(),
                "refused {query:?} ({message}) that the reference accepts"
            );
        }
    }
}

/// Target `last_event_id`, for text: `decode` never panics, says "not a
/// cursor" exactly for text without the `r1.` prefix, and a decoded cursor
/// is within its bounds and survives `encode` / `decode` unchanged.
pub(crate) fn cursor_text(text: &str) {
    match SseCursor::decode(text) {
        Ok(None) => assert!(!text.starts_with(SseCursor::PREFIX)),
        Err(_) => assert!(text.starts_with(SseCursor::PREFIX)),
        Ok(Some(cursor)) => {
            let entries: Vec<(&str, &StreamPosition)> = cursor.entries().collect();
            assert!(entries.len() <= SseCursor::MAX_CHANNELS);
            let unique: HashSet<&str> = entries.iter().map(|(c, _)| *c).collect();
            assert_eq!(unique.len(), entries.len(), "repeated channels");
            for (channel, position) in &entries {
                assert!(!channel.is_empty() && !position.epoch.is_empty());
            }
            let encoded = cursor.encode();
            assert_eq!(
                SseCursor::decode(&encoded),
                Ok(Some(cursor.clone())),
                "{text:?} re-encoded as {encoded:?}"
            );
        }
    }
}

/// Target `last_event_id`, for cursors the hub builds: after any sequence
/// of `set`s (valid channel names, epochs of hex digits as the hub makes
/// them), the text fits in what `decode` accepts and decodes to the same
/// cursor, and the channel set last is still there with its position.
pub(crate) fn cursor_sets(incomplete: bool, sets: &[(String, String, u64)]) {
    let limits = NameLimits::default();
    let mut cursor = SseCursor::new();
    if incomplete {
        cursor.set_incomplete();
    }
    for (channel, epoch, offset) in sets {
        if ChannelName::parse(channel, &limits).is_err()
            || epoch.is_empty()
            || epoch.len() > 16
            || !epoch.bytes().all(|b| b.is_ascii_hexdigit())
        {
            continue;
        }
        let position = StreamPosition {
            offset: *offset,
            epoch: epoch.clone(),
        };
        cursor.set(channel, position.clone());
        assert_eq!(cursor.get(channel), Some(&position));
        assert!(cursor.entries().count() <= SseCursor::MAX_CHANNELS);
        let text = cursor.encode();
        assert!(
            text.len() <= SseCursor::MAX_TEXT,
            "{} > {} bytes: {text}",
            text.len(),
            SseCursor::MAX_TEXT
        );
        assert_eq!(
            SseCursor::decode(&text),
            Ok(Some(cursor.clone())),
            "{text:?} decodes to another cursor"
        );
    }
}
