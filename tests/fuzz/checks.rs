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

// ---------------------------------------------------------------------------
// Target `token`: JWT verification (`auth::Verifier`, what `Hub::verify`
// runs before its JWKS refetch) against two verifiers, built once.

/// The HS256 secret of the `plain` verifier's `[auth]` key.
pub(crate) const PLAIN_SECRET: &str = "fuzz-plain-secret";
/// The HS256 secret of the `rotation` verifier's key `hs-1`.
pub(crate) const ROTATION_SECRET: &str = "fuzz-rotation-secret";
/// A secret no verifier has.
pub(crate) const WRONG_SECRET: &str = "fuzz-wrong-secret";

/// The test keys of `tests/keys/` (paths relative to this file, so the
/// fuzz crate and the main crate's tests both find them).
const EC_PUBLIC: &str = include_str!("../keys/ec-a.pub.pem");
const ED_PUBLIC: &str = include_str!("../keys/ed-a.pub.pem");
const RSA_PUBLIC: &str = include_str!("../keys/rsa-a.pub.pem");
pub(crate) const EC_PRIVATE: &str = include_str!("../keys/ec-a.pem");
pub(crate) const ED_PRIVATE: &str = include_str!("../keys/ed-a.pem");

/// The `rotation` verifier's configuration: four keys by kid (no `[auth]`
/// key, so no default key and `kid` is required), a JWKS that is never
/// fetched (an unknown kid is refused from the empty cache), audience,
/// issuer, leeway, a nested client type claim, and narrower permissions
/// than the defaults. `{dir}` is where the public keys are written.
pub(crate) const ROTATION_CONFIG: &str = r#"
[auth]
jwks_url = "https://id.example.com/.well-known/jwks.json"
client_type_claim = "chanhub.client_type"
audience = "chanhub"
issuer = "https://id.example.com"
leeway = "5s"

[[auth.keys]]
kid = "hs-1"
algorithm = "HS256"
secret = "fuzz-rotation-secret"

[[auth.keys]]
kid = "ec-1"
algorithm = "ES256"
public_key_file = "{dir}/ec-a.pub.pem"

[[auth.keys]]
kid = "ed-1"
algorithm = "EdDSA"
public_key_file = "{dir}/ed-a.pub.pem"

[[auth.keys]]
kid = "rs-1"
algorithm = "RS256"
public_key_file = "{dir}/rsa-a.pub.pem"

[permissions.browser]
subscribe_channels = ["session:*", "public:**"]
call_methods = ["math:*"]

[permissions.worker]
publish = true
publish_channels = ["worker:*:status"]
serve_methods = ["math:**"]

[permissions.hub]
publish_channels = ["events:**", "public:*"]
task_receive = true
"#;

/// A verifier and the configuration it was built from.
pub(crate) struct TestVerifier {
    pub(crate) config: chanhub::Config,
    pub(crate) verifier: chanhub::auth::Verifier,
}

/// A data directory no verifier here may touch: every key is inline or a
/// public key file.
fn no_data_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("chanhub-fuzz-unused-data-dir")
}

/// The `plain` verifier: the default configuration with an inline
/// `[auth]` secret (the only key, so `kid` is ignored).
pub(crate) fn plain_verifier() -> &'static TestVerifier {
    static PLAIN: std::sync::OnceLock<TestVerifier> = std::sync::OnceLock::new();
    PLAIN.get_or_init(|| {
        let mut config = chanhub::Config::default();
        config.auth.secret = Some(PLAIN_SECRET.into());
        let verifier = chanhub::auth::Verifier::new(
            &config.auth,
            &config.permissions,
            config.name_limits(),
            &no_data_dir(),
        )
        .expect("the plain verifier builds");
        TestVerifier { config, verifier }
    })
}

/// The `rotation` verifier ([`ROTATION_CONFIG`]); its public keys are
/// written once per process to a temporary directory.
pub(crate) fn rotation_verifier() -> &'static TestVerifier {
    static ROTATION: std::sync::OnceLock<TestVerifier> = std::sync::OnceLock::new();
    ROTATION.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("chanhub-fuzz-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key directory");
        for (name, pem) in [
            ("ec-a.pub.pem", EC_PUBLIC),
            ("ed-a.pub.pem", ED_PUBLIC),
            ("rsa-a.pub.pem", RSA_PUBLIC),
        ] {
            std::fs::write(dir.join(name), pem).expect("public key file");
        }
        let text = ROTATION_CONFIG.replace("{dir}", &dir.display().to_string());
        let config = chanhub::Config::from_toml(&text).expect("the rotation config is valid");
        let verifier = chanhub::auth::Verifier::new(
            &config.auth,
            &config.permissions,
            config.name_limits(),
            &no_data_dir(),
        )
        .expect("the rotation verifier builds");
        TestVerifier { config, verifier }
    })
}

/// Who signs the token a `token` input describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signer {
    /// HS256 with [`PLAIN_SECRET`].
    Plain,
    /// HS256 with [`ROTATION_SECRET`] (kid `hs-1`).
    Rotation,
    /// EdDSA with `ed-a` (kid `ed-1`).
    Ed,
    /// ES256 with `ec-a` (kid `ec-1`).
    Ec,
    /// HS256 with [`WRONG_SECRET`].
    Wrong,
}

impl Signer {
    /// The selector byte of a `token` input.
    pub(crate) fn from_byte(b: u8) -> Option<Signer> {
        Some(match b {
            b'p' => Signer::Plain,
            b'h' => Signer::Rotation,
            b'e' => Signer::Ed,
            b'c' => Signer::Ec,
            b'w' => Signer::Wrong,
            _ => return None,
        })
    }

    /// Signs `message` (`header.payload`, both base64url) with this key.
    fn sign(self, message: &[u8]) -> String {
        use jsonwebtoken::{Algorithm, EncodingKey};
        thread_local! {
            static KEYS: Vec<(Algorithm, EncodingKey)> = vec![
                (Algorithm::HS256, EncodingKey::from_secret(PLAIN_SECRET.as_bytes())),
                (Algorithm::HS256, EncodingKey::from_secret(ROTATION_SECRET.as_bytes())),
                (Algorithm::EdDSA, EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed key")),
                (Algorithm::ES256, EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec key")),
                (Algorithm::HS256, EncodingKey::from_secret(WRONG_SECRET.as_bytes())),
            ];
        }
        let index = match self {
            Signer::Plain => 0,
            Signer::Rotation => 1,
            Signer::Ed => 2,
            Signer::Ec => 3,
            Signer::Wrong => 4,
        };
        KEYS.with(|keys| {
            let (alg, key) = &keys[index];
            jsonwebtoken::crypto::sign(message, key, *alg).expect("signs")
        })
    }
}

/// The token a `token` input describes. The first byte selects: `p`, `h`,
/// `e`, `c`, `w` ([`Signer`]) take the rest as `<header JSON>\n<claims
/// JSON>`, base64url-encode both and sign them; anything else is followed
/// by the token text as is. Not UTF-8: no token (a header value or a
/// `?token=` that is not text never reaches the verifier).
pub(crate) fn token_from_input(data: &[u8]) -> Option<String> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (&first, rest) = data.split_first()?;
    let rest = std::str::from_utf8(rest).ok()?;
    let Some(signer) = Signer::from_byte(first) else {
        return Some(rest.to_owned());
    };
    let (header, claims) = rest.split_once('\n').unwrap_or((rest, ""));
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = signer.sign(message.as_bytes());
    Some(format!("{message}.{signature}"))
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The client type names, written out independently of `ClientType`'s
/// `FromStr`.
fn client_type_named(name: &str) -> Option<chanhub::auth::ClientType> {
    use chanhub::auth::ClientType;
    match name {
        "browser" => Some(ClientType::Browser),
        "worker" => Some(ClientType::Worker),
        "hub" => Some(ClientType::Hub),
        _ => None,
    }
}

/// The client type a verifier with claim name `claim` must read from
/// `claims`, if any: the top-level claim of that name, else the dotted
/// path; a string naming a type, or an array in which the strings naming
/// a type all name the same one.
fn claimed_type(
    claims: &serde_json::Map<String, serde_json::Value>,
    claim: &str,
) -> Option<chanhub::auth::ClientType> {
    use serde_json::Value;
    let value = claims.get(claim).or_else(|| {
        if !claim.contains('.') {
            return None;
        }
        let mut parts = claim.split('.');
        let mut value = claims.get(parts.next()?)?;
        for part in parts {
            value = value.as_object()?.get(part)?;
        }
        Some(value)
    })?;
    match value {
        Value::String(s) => client_type_named(s),
        Value::Array(roles) => {
            let mut named = roles
                .iter()
                .filter_map(|v| client_type_named(v.as_str()?))
                .collect::<Vec<_>>();
            named.dedup();
            match named[..] {
                [only] => Some(only),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A narrowing claim as the verifier must have read it: `None` when absent
/// or null, else every entry a string that parses, normalised.
fn claimed_patterns(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    limits: &NameLimits,
) -> Option<Vec<String>> {
    match claims.get(name) {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => {
            let list = value
                .as_array()
                .unwrap_or_else(|| panic!("accepted a non-array {name} claim: {value}"));
            Some(
                list.iter()
                    .map(|v| {
                        let text = v
                            .as_str()
                            .unwrap_or_else(|| panic!("accepted a non-string {name} entry: {v}"));
                        assert!(
                            Pattern::parse(text, limits).is_ok(),
                            "accepted an invalid {name} entry {text:?}"
                        );
                        normalised(text)
                    })
                    .collect(),
            )
        }
    }
}

/// The wire names of the permissions, written out.
const PERMISSION_NAMES: [&str; 8] = [
    "subscribe",
    "publish",
    "task:submit",
    "task:receive",
    "task:complete",
    "federate",
    "call",
    "serve",
];

/// Channel names probed on every accepted identity, besides the literal
/// entries of its claims.
const PROBES: &[&str] = &[
    "session:1",
    "public:news",
    "public:a:b",
    "events:x",
    "worker:w1:status",
    "math:add",
    "math:x:y",
    "task:t-1",
    "admin",
];

/// Checks an identity `verifier` accepted for `token` against the token
/// itself, read independently: the signature verifies under the key the
/// header's `kid` names (whose algorithm the header names); `sub`, `exp`,
/// the client type, the narrowing claims and `max_slots` are what the
/// claims say; `exp` / `nbf` / `aud` / `iss` hold; and the permissions are
/// the type's table narrowed by the claims — never wider — on a set of
/// probe channels.
fn check_identity(which: &TestVerifier, token: &str, identity: &chanhub::auth::Identity, now: u64) {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{Algorithm, DecodingKey};
    use serde_json::{Map, Value};

    let auth = &which.config.auth;
    let limits = which.config.name_limits();
    let rotation = auth.secret.is_none();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted {token:?}");
    let header: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(parts[0])
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .unwrap_or_else(|| panic!("accepted an unreadable header: {token:?}"));
    let claims: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(parts[1])
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .unwrap_or_else(|| panic!("accepted unreadable claims: {token:?}"));
    let alg = header.get("alg").and_then(Value::as_str);
    let kid = header.get("kid").and_then(Value::as_str);
    // The key: the plain verifier has one and ignores kid; the rotation
    // verifier has only keys by kid.
    let (key_alg, key) = match (rotation, kid) {
        (false, _) => (
            Algorithm::HS256,
            DecodingKey::from_secret(PLAIN_SECRET.as_bytes()),
        ),
        (true, Some("hs-1")) => (
            Algorithm::HS256,
            DecodingKey::from_secret(ROTATION_SECRET.as_bytes()),
        ),
        (true, Some("ec-1")) => (
            Algorithm::ES256,
            DecodingKey::from_ec_pem(EC_PUBLIC.as_bytes()).expect("ec"),
        ),
        (true, Some("ed-1")) => (
            Algorithm::EdDSA,
            DecodingKey::from_ed_pem(ED_PUBLIC.as_bytes()).expect("ed"),
        ),
        (true, Some("rs-1")) => (
            Algorithm::RS256,
            DecodingKey::from_rsa_pem(RSA_PUBLIC.as_bytes()).expect("rsa"),
        ),
        (true, other) => panic!("the rotation verifier accepted kid {other:?}: {token:?}"),
    };
    let key_alg_name = format!("{key_alg:?}");
    assert_eq!(alg, Some(key_alg_name.as_str()), "alg of {token:?}");
    let message = format!("{}.{}", parts[0], parts[1]);
    assert!(
        jsonwebtoken::crypto::verify(parts[2], message.as_bytes(), &key, key_alg).unwrap_or(false),
        "accepted a signature that does not verify: {token:?}"
    );

    let leeway = auth.leeway.as_secs();
    assert_eq!(
        claims.get("sub").and_then(Value::as_str),
        Some(identity.sub.as_str())
    );
    assert!(!identity.sub.is_empty());
    assert_eq!(
        claims.get("exp").and_then(Value::as_u64),
        Some(identity.expires_at)
    );
    assert!(
        identity.expires_at.saturating_add(leeway) >= now,
        "accepted an expired token: {token:?}"
    );
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
        assert!(
            nbf <= (now + leeway + 2) as f64,
            "accepted a token not valid yet: {token:?}"
        );
    }
    if let Some(audience) = &auth.audience {
        let aud = claims.get("aud");
        let ok = match aud {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        assert!(ok, "accepted audience {aud:?}: {token:?}");
    }
    if let Some(issuer) = &auth.issuer {
        assert_eq!(
            claims.get("iss").and_then(Value::as_str),
            Some(issuer.as_str()),
            "issuer of {token:?}"
        );
    }
    let client_type = claimed_type(&claims, &auth.client_type_claim);
    assert_eq!(client_type, Some(identity.client_type), "type of {token:?}");
    let capabilities = identity
        .capabilities
        .as_ref()
        .map(|list| list.iter().map(|p| p.as_str().to_owned()).collect());
    assert_eq!(
        claimed_patterns(&claims, "capabilities", &limits),
        capabilities
    );
    let max_slots = match claims.get("max_slots") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or_else(|| panic!("accepted max_slots {v}")),
        ),
    };
    assert_eq!(identity.max_slots, max_slots);

    // Permissions: the type's table, narrowed by the `permissions` claim.
    let table = which.config.permissions.for_type(identity.client_type);
    let flags = [
        table.subscribe,
        table.publish,
        table.task_submit,
        table.task_receive,
        table.task_complete,
        table.federate,
        table.call,
        table.serve,
    ];
    let granted: Option<Vec<&str>> = match claims.get("permissions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_array()
                .and_then(|l| l.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                .filter(|l| l.iter().all(|p| PERMISSION_NAMES.contains(p)))
                .unwrap_or_else(|| panic!("accepted permissions {v}")),
        ),
    };
    let expected: Vec<&str> = PERMISSION_NAMES
        .iter()
        .zip(flags)
        .filter(|(name, on)| *on && granted.as_ref().is_none_or(|g| g.contains(name)))
        .map(|(name, _)| *name)
        .collect();
    let actual: Vec<&str> = identity
        .permissions
        .list()
        .into_iter()
        .map(|p| p.as_str())
        .collect();
    assert_eq!(actual, expected, "permissions of {token:?}");
    let has = |name: &str| expected.contains(&name);

    // Allow-lists: the claim when present, else the type's.
    let channels = claimed_patterns(&claims, "channels", &limits);
    let publish = claimed_patterns(&claims, "publish", &limits);
    let call = claimed_patterns(&claims, "call", &limits);
    let serve = claimed_patterns(&claims, "serve", &limits);
    let typed = |list: &[String]| list.iter().map(|p| normalised(p)).collect::<Vec<_>>();
    assert_eq!(
        identity.permissions.subscribe_patterns(),
        channels
            .clone()
            .unwrap_or_else(|| typed(&table.subscribe_channels))
    );
    let expected_publish = if has("publish") {
        publish
            .clone()
            .unwrap_or_else(|| typed(&table.publish_channels))
    } else {
        Vec::new()
    };
    assert_eq!(identity.permissions.publish_patterns(), expected_publish);

    // Never wider than the table and the claims, on probe channels and
    // on every literal entry of the claims.
    let matched = |list: &[String], channel: &str| {
        list.iter()
            .any(|p| reference_matches(&normalised(p), channel))
    };
    let claim_allows = |claim: &Option<Vec<String>>, channel: &str| {
        claim.as_ref().is_none_or(|l| matched(l, channel))
    };
    let literals = [&channels, &publish, &call, &serve]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|p| Pattern::parse(p, &limits).is_ok_and(|p| p.is_literal()))
        .cloned();
    let probes: Vec<String> = PROBES
        .iter()
        .map(|s| (*s).to_owned())
        .chain(literals)
        .collect();
    for probe in &probes {
        let Ok(name) = ChannelName::parse(probe, &limits) else {
            continue;
        };
        let literal = Pattern::parse(probe, &limits).expect("a name is a pattern");
        let publishes = has("publish")
            && matched(&table.publish_channels, probe)
            && claim_allows(&publish, probe);
        assert_eq!(
            identity.permissions.check_publish(&name).is_ok(),
            publishes,
            "publish {probe} with {token:?}"
        );
        let calls =
            has("call") && matched(&table.call_methods, probe) && claim_allows(&call, probe);
        assert_eq!(
            identity.permissions.check_call(&name).is_ok(),
            calls,
            "call {probe} with {token:?}"
        );
        // Subscribing and serving use `covers`, which may refuse more
        // than `matches` would allow, never less.
        if identity.permissions.check_subscribe(&literal).is_ok() {
            assert!(
                has("subscribe")
                    && matched(&table.subscribe_channels, probe)
                    && claim_allows(&channels, probe),
                "subscribe {probe} with {token:?}"
            );
        }
        if identity.permissions.check_serve(&literal).is_ok() {
            assert!(
                has("serve") && matched(&table.serve_methods, probe) && claim_allows(&serve, probe),
                "serve {probe} with {token:?}"
            );
        }
    }
}

/// Target `token`, for a token string: neither verifier panics; only an
/// empty token is `missing_token`; every identity either accepts passes
/// [`check_identity`].
pub(crate) fn token_text(token: &str) {
    use chanhub::error::AuthError;
    for which in [plain_verifier(), rotation_verifier()] {
        let now = now_secs();
        match which.verifier.verify(token) {
            Ok(identity) => check_identity(which, token, &identity, now),
            Err(e) => {
                assert_eq!(e == AuthError::MissingToken, token.is_empty(), "{e:?}");
                assert!(
                    !matches!(e, AuthError::AuthRequired | AuthError::SubjectMismatch),
                    "{e:?} from verify"
                );
            }
        }
    }
}

/// Target `token`, minting: one token from chanhub's own `mint_for`.
#[derive(Debug, Clone)]
pub(crate) struct MintCase {
    /// Mint for (and verify with) the rotation verifier, else the plain one.
    pub(crate) rotation: bool,
    /// The kid asked of `SigningKey::for_config`.
    pub(crate) kid: Option<String>,
    /// The claims, as `chanhub token` builds them.
    pub(crate) claims: chanhub::auth::TokenClaims,
}

/// Target `token`, for claims minted by the hub: `SigningKey::for_config`
/// refuses exactly the kids it cannot sign for (unknown, none where no key
/// is the default, an RSA key without its private half), and a minted
/// token either verifies to the identity of its claims or is refused for
/// the first reason that applies — too large, expired, empty `sub`, a
/// narrowing entry that is not a pattern — never another.
pub(crate) fn minted_token(case: &MintCase) {
    use chanhub::auth::{SigningError, SigningKey, mint_for};
    use chanhub::error::AuthError;
    let which = if case.rotation {
        rotation_verifier()
    } else {
        plain_verifier()
    };
    let auth = &which.config.auth;
    let kid = case.kid.as_deref();
    let private = match kid {
        Some("ed-1") => Some(ED_PRIVATE.as_bytes()),
        Some("ec-1") => Some(EC_PRIVATE.as_bytes()),
        _ => None,
    };
    let signing = SigningKey::for_config(auth, &no_data_dir(), kid, private);
    let signing = match (case.rotation, kid, signing) {
        (false, None, Ok(key)) => key,
        (true, Some("hs-1" | "ed-1" | "ec-1"), Ok(key)) => key,
        (true, None, Err(SigningError::NoDefaultKey)) => return,
        (true, Some("rs-1"), Err(SigningError::NeedsPrivateKey { .. })) => return,
        (false, Some(k), Err(SigningError::UnknownKid(named))) => {
            assert_eq!(k, named);
            return;
        }
        (true, Some(k), Err(SigningError::UnknownKid(named)))
            if !["hs-1", "ed-1", "ec-1", "rs-1"].contains(&k) =>
        {
            assert_eq!(k, named);
            return;
        }
        (rotation, kid, other) => panic!("signing key for {rotation} / {kid:?}: {other:?}"),
    };
    let claims = &case.claims;
    let token = mint_for(auth, &signing, claims).expect("minting never fails");
    let now = now_secs();
    let result = which.verifier.verify(&token);
    let limits = which.config.name_limits();
    let leeway = auth.leeway.as_secs();
    let lists = [
        &claims.channels,
        &claims.publish,
        &claims.capabilities,
        &claims.call,
        &claims.serve,
    ];
    let bad_pattern = lists
        .iter()
        .copied()
        .flatten()
        .flatten()
        .any(|p| Pattern::parse(p, &limits).is_err());
    // Within a few seconds of the expiry either answer is right.
    let deadline = claims.exp.saturating_add(leeway);
    let borderline = deadline.abs_diff(now) <= 2;
    let expected = if token.len() > auth.max_token_bytes {
        Err(AuthError::TokenTooLarge)
    } else if deadline < now && !borderline {
        Err(AuthError::Expired)
    } else if claims.sub.is_empty() {
        Err(AuthError::MissingClaim)
    } else if bad_pattern {
        Err(AuthError::InvalidClaim)
    } else {
        Ok(())
    };
    match (&result, expected) {
        // At the deadline the verifier may find the token expired before
        // it looks at anything else.
        (Err(AuthError::Expired), _) if borderline => {}
        (Ok(identity), Ok(())) => {
            check_identity(which, &token, identity, now);
            assert_eq!(identity.sub, claims.sub);
            assert_eq!(identity.client_type, claims.client_type);
            assert_eq!(identity.expires_at, claims.exp);
            assert_eq!(identity.max_slots, claims.max_slots);
            let norm = |l: &Option<Vec<String>>| {
                l.as_ref()
                    .map(|l| l.iter().map(|p| normalised(p)).collect::<Vec<_>>())
            };
            let capabilities = identity
                .capabilities
                .as_ref()
                .map(|l| l.iter().map(|p| p.as_str().to_owned()).collect());
            assert_eq!(capabilities, norm(&claims.capabilities));
            if let Some(channels) = norm(&claims.channels) {
                assert_eq!(identity.permissions.subscribe_patterns(), channels);
            }
        }
        (Err(actual), Err(expected)) => assert_eq!(*actual, expected, "{case:?}"),
        (actual, expected) => panic!("{case:?}: got {actual:?}, expected {expected:?}"),
    }
}

// ---------------------------------------------------------------------------
// Target `config`: the TOML configuration.

/// A loaded configuration as comparable data.
fn config_value(config: &chanhub::Config) -> serde_json::Value {
    serde_json::to_value(config).expect("a config serializes to JSON")
}

/// `Config::load` (the path `chanhub serve --config` takes: the file, then
/// `CHANHUB_*` variables, then validation) on `text` written to a file;
/// `None` when a `CHANHUB_*` variable is set, which would make it differ
/// from `Config::from_toml` on purpose.
fn load_from_file(text: &str) -> Option<Result<chanhub::Config, String>> {
    thread_local! {
        static PATH: Option<std::path::PathBuf> =
            std::env::vars_os().all(|(k, _)| !k.to_string_lossy().starts_with("CHANHUB_")).then(|| {
                std::env::temp_dir().join(format!(
                    "chanhub-fuzz-config-{}-{:?}.toml",
                    std::process::id(),
                    std::thread::current().id()
                ).replace(['(', ')'], ""))
            });
    }
    PATH.with(|path| {
        let path = path.as_ref()?;
        std::fs::write(path, text).expect("config file");
        let loaded = chanhub::Config::load(Some(path)).map_err(|e| e.to_string());
        let _ = std::fs::remove_file(path);
        Some(loaded)
    })
}

/// Target `config`: loading never panics and is deterministic; the file
/// path (`Config::load`, as `chanhub serve --config` runs it) and the
/// string path (`Config::from_toml`) agree; a configuration that loads
/// validates again, serialises to TOML and loads back to the same values;
/// and when its keys are all inline, the verifier it configures builds and
/// accepts a token `mint_for` signs with each key it can sign with.
pub(crate) fn config_text(text: &str) {
    let first = chanhub::Config::from_toml(text);
    let second = chanhub::Config::from_toml(text);
    let outcome = |r: &Result<chanhub::Config, chanhub::error::ConfigError>| {
        r.as_ref().map(config_value).map_err(ToString::to_string)
    };
    assert_eq!(outcome(&first), outcome(&second), "loading {text:?} twice");
    if let Some(from_file) = load_from_file(text) {
        match (&first, &from_file) {
            (Ok(a), Ok(b)) => assert_eq!(config_value(a), config_value(b), "file vs string"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!(
                "from_toml and load disagree on {text:?}: {:?} vs {:?}",
                a.as_ref().map(|_| ()),
                b.as_ref().map(|_| ())
            ),
        }
    }
    let Ok(config) = first else {
        return;
    };
    if let Err(e) = config.validate() {
        panic!("a loaded config fails validation again: {e} ({text:?})");
    }
    let written = toml::to_string(&config)
        .unwrap_or_else(|e| panic!("a loaded config does not serialise to TOML: {e} ({text:?})"));
    match chanhub::Config::from_toml(&written) {
        Ok(again) => assert_eq!(
            config_value(&again),
            config_value(&config),
            "{text:?} re-serialised as {written:?}"
        ),
        Err(e) => panic!("{text:?} re-serialised as {written:?} does not load: {e}"),
    }
    config_tokens(&config);
}

/// The verifier of a valid configuration whose key material is all
/// inline (no key file to read, no secret to generate): it builds, and a
/// hub token minted for it with each key that can sign verifies.
fn config_tokens(config: &chanhub::Config) {
    use chanhub::auth::{ClientType, SigningKey, TokenClaims, Verifier, mint_for};
    use chanhub::error::AuthError;
    let auth = &config.auth;
    let inline = auth.secret_file.is_none()
        && auth.public_key_file.is_none()
        && (auth.secret.is_some() || !auth.uses_auth_key())
        && auth
            .keys
            .iter()
            .all(|k| k.secret_file.is_none() && k.public_key_file.is_none());
    if !inline {
        return;
    }
    let dir = no_data_dir();
    let verifier = Verifier::new(auth, &config.permissions, config.name_limits(), &dir)
        .unwrap_or_else(|e| panic!("a valid config's verifier fails: {e}"));
    let kids = std::iter::once(None).chain(auth.keys.iter().map(|k| Some(k.kid.as_str())));
    for kid in kids {
        let Ok(key) = SigningKey::for_config(auth, &dir, kid, None) else {
            continue;
        };
        let claims = TokenClaims {
            sub: "fuzz-sub".into(),
            exp: now_secs() + 3600,
            iat: None,
            client_type: ClientType::Hub,
            channels: None,
            publish: None,
            capabilities: None,
            max_slots: None,
            call: None,
            serve: None,
        };
        let token = mint_for(auth, &key, &claims).expect("mints");
        match verifier.verify(&token) {
            Ok(identity) => {
                assert_eq!(identity.sub, claims.sub, "kid {kid:?}: {token}");
                assert_eq!(identity.client_type, ClientType::Hub, "kid {kid:?}");
                assert_eq!(identity.expires_at, claims.exp, "kid {kid:?}");
            }
            Err(AuthError::TokenTooLarge) if token.len() > auth.max_token_bytes => {}
            Err(e) => panic!("kid {kid:?}: the hub refuses its own token ({e:?}): {token}"),
        }
    }
}
