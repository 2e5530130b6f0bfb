//! Property-test twins of the fuzz targets in `tests/fuzz/`: the same
//! invariants (`tests/fuzz/checks.rs`, shared with the targets), on a few
//! hundred generated inputs each, so `cargo test` exercises them without
//! cargo-fuzz or a nightly compiler.

#[path = "fuzz/checks.rs"]
mod checks;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::{Value, json};

use checks::IndexOp;

/// Pattern segments: literals that are also channel segments, wildcards
/// and globs (the alphabet of the `subscription_index` target).
const PATTERN_SEGMENTS: &[&str] = &["a", "b", "ab", "*", "**", "{a,b}", "a*", "?", "[!a]*", "*b"];
/// Channel segments.
const CHANNEL_SEGMENTS: &[&str] = &["a", "b", "ab", "ba", "c"];

fn joined(alphabet: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(alphabet), 1..=max).prop_map(|s| s.join(":"))
}

fn pattern() -> impl Strategy<Value = String> {
    joined(PATTERN_SEGMENTS, 6)
}

fn channel() -> impl Strategy<Value = String> {
    joined(CHANNEL_SEGMENTS, 7)
}

/// Short strings over the characters that matter to the grammar.
fn grammar_text() -> impl Strategy<Value = String> {
    "[a-c0-9:*?{},!^\\[\\]+=./@_ é-]{0,24}"
}

fn request_id() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        any::<i64>().prop_map(|i| Some(json!(i))),
        "[a-z0-9-]{0,8}".prop_map(|s| Some(json!(s))),
        Just(Some(json!(1.5))),
        Just(Some(json!({"nested": true}))),
    ]
}

/// Client messages: well-formed ones of every common type, with odd ids
/// and data, sometimes cut short or with a field of the wrong type.
fn client_frame() -> impl Strategy<Value = String> {
    let message = (
        prop::sample::select(
            &[
                "auth",
                "auth:refresh",
                "subscribe",
                "unsubscribe",
                "publish",
                "ping",
                "history",
                "presence",
                "task:complete",
                "task:cancel",
                "nope",
            ][..],
        ),
        request_id(),
        prop::collection::vec(prop_oneof![pattern(), grammar_text()], 0..4),
        prop_oneof![channel(), grammar_text()],
        any::<u64>(),
    )
        .prop_map(|(kind, id, channels, channel, n)| {
            let mut msg = json!({
                "type": kind,
                "token": "t",
                "channels": channels,
                "channel": channel,
                "data": {"n": n, "f": n as f64 / 7.0, "s": "é\u{1}"},
                "since": {"a:b": {"offset": n, "epoch": "e"}},
                "limit": n % 100,
                "taskId": "t-1",
            });
            if let Some(id) = id {
                msg["id"] = id;
            }
            msg.to_string()
        })
        .boxed();
    // Call frames with `type` first, as clients write them (the object
    // above has its keys in order, `type` among them): the session's
    // direct path takes these.
    let call = (
        prop::sample::select(&["call", "call:reply", "call:cancel"][..]),
        request_id(),
        prop_oneof![channel(), grammar_text()],
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(kind, id, method, n, failed)| {
            let mut rest = json!({
                "method": method,
                "params": {"n": n, "big": format!("{n}0000000000000000000"), "s": "é\"\u{1}"},
                "callId": format!("c{n:x}"),
                "result": [n, n as f64 / 3.0, null],
            });
            if n % 3 == 0 {
                rest["timeoutMs"] = json!(n % 10_000);
            }
            if n % 5 == 0 {
                rest["timeoutMs"] = json!(-1);
            }
            if failed {
                rest["error"] = json!({"code": "x", "message": "m", "data": n});
            }
            if let Some(id) = id {
                rest["id"] = id;
            }
            let rest = rest.to_string();
            format!(r#"{{"type":"{kind}",{}"#, &rest[1..])
        })
        .boxed();
    prop_oneof![
        3 => message.clone(),
        2 => call,
        1 => (message, any::<prop::sample::Index>()).prop_map(|(text, cut)| {
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text[..at].to_owned()
        }),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn client_message(text in client_frame()) {
        checks::client_message(&text);
    }

    #[test]
    fn channel_pattern_text(
        lines in prop::collection::vec(prop_oneof![grammar_text(), pattern(), channel()], 1..4)
    ) {
        checks::names_and_patterns(&lines.join("\n"));
    }

    #[test]
    fn channel_pattern_pairs(a in pattern(), b in pattern(), channel in channel()) {
        checks::pattern_pair(&a, &b, &channel);
    }

    #[test]
    fn sse_query(
        lists in prop::collection::vec(
            prop::collection::vec(prop_oneof![pattern(), grammar_text()], 0..4), 0..3),
        spaces in any::<bool>(),
        extra in "[a-z=&%0-9+]{0,12}",
        header in prop::option::of(prop_oneof![cursor_text(), "[ -~\t]{0,12}"]),
        param in prop::option::of(cursor_text()),
    ) {
        let separator = if spaces { " , " } else { "," };
        let mut parts: Vec<String> = lists
            .iter()
            .map(|l| format!("channels={}", urlencode(&l.join(separator))))
            .collect();
        if let Some(param) = param {
            parts.push(format!("lastEventId={param}"));
        }
        parts.push(extra);
        checks::stream_request(header.as_deref().map(str::as_bytes), &parts.join("&"));
    }

    #[test]
    fn last_event_id_text(text in prop_oneof![cursor_text(), any::<String>()]) {
        checks::cursor_text(&text);
    }

    #[test]
    fn last_event_id_sets(
        incomplete in any::<bool>(),
        sets in prop::collection::vec(
            (
                prop_oneof![
                    3 => joined(&["a", "b", "+x", "x=y.z", "="], 4),
                    1 => "[a-z]{200,250}",
                ],
                "[0-9a-f]{1,16}",
                prop_oneof![any::<u64>(), 0u64..100, Just(u64::MAX)],
            ),
            0..40,
        ),
    ) {
        checks::cursor_sets(incomplete, &sets);
    }
}

proptest! {
    // The slowest twin: fewer cases keep the file within a few seconds.
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn subscription_index(
        cache in 0usize..4,
        ops in prop::collection::vec(
            prop_oneof![
                (pattern(), 0u64..4, any::<u32>())
                    .prop_map(|(pattern, key, value)| IndexOp::Insert { pattern, key, value }),
                (pattern(), 0u64..4).prop_map(|(pattern, key)| IndexOp::Remove { pattern, key }),
                channel().prop_map(|channel| IndexOp::Match { channel }),
            ],
            0..60,
        )
    ) {
        checks::index_ops(cache, &ops);
    }
}

/// `Last-Event-ID` candidates: `r1.` and the base64 of a payload built
/// from plausible and broken entries.
fn cursor_text() -> impl Strategy<Value = String> {
    let entry = (
        prop_oneof![
            channel(),
            Just("+x".to_owned()),
            Just("a=b".to_owned()),
            grammar_text()
        ],
        prop_oneof![Just("e".to_owned()), "[0-9a-f.=]{0,4}"],
        prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[+0-9a]{0,3}"],
    )
        .prop_map(|(c, e, o)| format!("{c}={e}.{o}"));
    (any::<bool>(), prop::collection::vec(entry, 0..5)).prop_map(|(plus, entries)| {
        let payload = format!("{}{}", if plus { "+" } else { "" }, entries.join(","));
        format!("r1.{}", URL_SAFE_NO_PAD.encode(payload))
    })
}

/// Percent-encodes what a query value cannot carry as is.
fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
