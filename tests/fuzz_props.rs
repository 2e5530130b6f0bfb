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

use chanhub::auth::{ClientType, TokenClaims};
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
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn token(input in token_input()) {
        if let Some(token) = checks::token_from_input(&input) {
            checks::token_text(&token);
        }
    }

    #[test]
    fn token_minted(case in mint_case()) {
        checks::minted_token(&case);
    }

    #[test]
    fn config(text in config_text()) {
        checks::config_text(&text);
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

/// The `alg` and `kid` headers and a few claim shapes the `token` twin
/// combines.
const ALGS: &[&str] = &["HS256", "ES256", "EdDSA", "RS256", "none", "HS512", "hs256"];
const KIDS: &[&str] = &["hs-1", "ec-1", "ed-1", "rs-1", "zz", ""];

fn token_header() -> impl Strategy<Value = String> {
    (
        prop::sample::select(ALGS),
        prop::option::of(prop::sample::select(KIDS)),
        any::<bool>(),
    )
        .prop_map(|(alg, kid, typ)| {
            let mut header = json!({ "alg": alg });
            if typ {
                header["typ"] = json!("JWT");
            }
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            header.to_string()
        })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Values for one optional claim: absent (`None`) or one of `values`.
fn claim(values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    prop::option::of(prop::sample::select(values))
}

fn token_claims() -> impl Strategy<Value = String> {
    let now = now_secs();
    let lists = prop::option::of(prop::collection::vec(
        prop_oneof![pattern(), grammar_text()],
        0..3,
    ));
    (
        (
            claim(vec![json!("ui-1"), json!(""), json!(7)]),
            claim(vec![
                json!(now + 3600),
                json!(now - 3600),
                json!(now + 3),
                json!((now + 3600) as f64 + 0.5),
                json!("soon"),
                json!(u64::MAX),
            ]),
            claim(vec![json!(now + 3600), json!(now - 3600), json!("x")]),
            claim(vec![
                json!("chanhub"),
                json!(["other", "chanhub"]),
                json!("other"),
            ]),
            claim(vec![json!("https://id.example.com"), json!("https://evil")]),
        ),
        (
            claim(vec![
                json!("browser"),
                json!("worker"),
                json!("hub"),
                json!("admin"),
                json!(["hub", "staff"]),
                json!(["hub", "browser"]),
                json!(3),
            ]),
            claim(vec![
                json!({ "client_type": "worker" }),
                json!("hub"),
                json!({}),
            ]),
            lists.clone(),
            lists.clone(),
            lists,
        ),
        (
            claim(vec![
                json!(["subscribe"]),
                json!(["publish", "call", "serve", "task:receive"]),
                json!([]),
                json!(["root"]),
                json!("subscribe"),
            ]),
            claim(vec![json!(4), json!(-1), json!(1u64 << 33), json!(null)]),
        ),
    )
        .prop_map(
            |(
                (sub, exp, nbf, aud, iss),
                (client_type, nested, channels, publish, call),
                (permissions, max_slots),
            )| {
                let mut claims = serde_json::Map::new();
                let mut put = |name: &str, value: Option<Value>| {
                    if let Some(value) = value {
                        claims.insert(name.to_owned(), value);
                    }
                };
                put("sub", sub);
                put("exp", exp);
                put("nbf", nbf);
                put("aud", aud);
                put("iss", iss);
                put("client_type", client_type);
                put("chanhub", nested);
                put("channels", channels.map(|l| json!(l)));
                put("publish", publish.map(|l| json!(l)));
                put("call", call.map(|l| json!(l)));
                put("permissions", permissions);
                put("max_slots", max_slots);
                Value::Object(claims).to_string()
            },
        )
}

/// A token one of the verifiers accepts, as a `token` input: the
/// signer's own header and valid claims, with up to two claims replaced
/// by those of `other` (an object from [`token_claims`]).
fn mostly_valid(signer: u8, other: &str, picks: &[prop::sample::Index]) -> Vec<u8> {
    let (header, rotation) = match signer {
        b'h' => (json!({"alg": "HS256", "kid": "hs-1"}), true),
        b'e' => (json!({"alg": "EdDSA", "kid": "ed-1"}), true),
        b'c' => (json!({"alg": "ES256", "kid": "ec-1"}), true),
        _ => (json!({"alg": "HS256", "typ": "JWT"}), false),
    };
    let mut claims = json!({"sub": "ui-1", "exp": now_secs() + 3600});
    if rotation {
        claims["aud"] = json!("chanhub");
        claims["iss"] = json!("https://id.example.com");
        claims["chanhub"] = json!({"client_type": "browser"});
    } else {
        claims["client_type"] = json!("worker");
    }
    let other: serde_json::Map<String, Value> = serde_json::from_str(other).expect("an object");
    let keys: Vec<&String> = other.keys().collect();
    for pick in picks {
        if !keys.is_empty() {
            let key = keys[pick.index(keys.len())];
            claims[key] = other[key].clone();
        }
    }
    let mut input = vec![signer];
    input.extend_from_slice(format!("{header}\n{claims}").as_bytes());
    input
}

/// `token` inputs: signed header and claims (selector byte first), mostly
/// valid or not, or token text as is: random, or a signed token with one
/// byte changed.
fn token_input() -> impl Strategy<Value = Vec<u8>> {
    let signed = (
        prop::sample::select(&[b'p', b'h', b'e', b'c', b'w'][..]),
        token_header(),
        token_claims(),
    )
        .prop_map(|(signer, header, claims)| {
            let mut input = vec![signer];
            input.extend_from_slice(format!("{header}\n{claims}").as_bytes());
            input
        })
        .boxed();
    let valid = (
        prop::sample::select(&[b'p', b'h', b'e', b'c'][..]),
        token_claims(),
        prop::collection::vec(any::<prop::sample::Index>(), 0..3),
    )
        .prop_map(|(signer, other, picks)| mostly_valid(signer, &other, &picks))
        .boxed();
    prop_oneof![
        3 => valid.clone(),
        2 => signed,
        1 => (valid, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(input, at, byte)| {
            let mut token = checks::token_from_input(&input).expect("a token").into_bytes();
            let at = at.index(token.len());
            token[at] = b'!'.max(byte % 0x7f);
            let mut raw = vec![b'r'];
            raw.extend_from_slice(&token);
            raw
        }),
        1 => any::<String>().prop_map(|s| format!("r{s}").into_bytes()),
    ]
}

fn mint_case() -> impl Strategy<Value = checks::MintCase> {
    let now = now_secs();
    let lists = || {
        prop::option::of(prop::collection::vec(
            prop_oneof![pattern(), grammar_text()],
            0..3,
        ))
    };
    (
        any::<bool>(),
        prop::option::of(prop::sample::select(KIDS)),
        prop_oneof![Just(String::new()), "[a-z0-9-]{1,8}", any::<String>()],
        prop_oneof![
            (120u64..100_000).prop_map(move |s| now + s),
            (120u64..100_000).prop_map(move |s| now - s),
            any::<u64>(),
        ],
        prop::sample::select(&ClientType::ALL[..]),
        (lists(), lists(), lists(), lists(), lists()),
        prop::option::of(any::<u32>()),
    )
        .prop_map(
            |(
                rotation,
                kid,
                sub,
                exp,
                client_type,
                (channels, publish, capabilities, call, serve),
                max_slots,
            )| {
                checks::MintCase {
                    rotation,
                    kid: kid.map(String::from),
                    claims: TokenClaims {
                        sub,
                        exp,
                        iat: None,
                        client_type,
                        channels,
                        publish,
                        capabilities,
                        max_slots,
                        call,
                        serve,
                    },
                }
            },
        )
}

/// `config` inputs: the documented default file, the `token` twin's
/// rotation config, or entries picked from a table of (section, keys and
/// values), good and bad, written with each section once, sometimes cut
/// short.
fn config_text() -> impl Strategy<Value = String> {
    const ENTRIES: &[(&str, &str)] = &[
        ("", "listen = \"0.0.0.0:7070\""),
        ("", "listen = \"nope\""),
        ("", "engine = \"redis\""),
        ("", "engine = \"etcd\""),
        ("", "nonsense = 1"),
        ("[auth]", "secret = \"s3cret\""),
        ("[auth]", "secret = \"\""),
        ("[auth]", "algorithm = \"ES256\""),
        ("[auth]", "leeway = \"1h\""),
        ("[auth]", "secret = \"x\"\nleeway = \"100years\""),
        ("[auth]", "secret = \"x\"\nclient_type_claim = \"sub\""),
        (
            "[auth]",
            "secret = \"x\"\nclient_type_claim = \"aud\"\naudience = \"a\"",
        ),
        ("[auth]", "timeout = \"100years\""),
        ("[auth]", "client_type_claim = \"role\""),
        ("[auth]", "client_type_claim = \"chanhub.client_type\""),
        (
            "[auth]",
            "audience = \"chanhub\"\nissuer = \"https://id.example.com\"",
        ),
        ("[auth]", "max_token_bytes = 64"),
        ("[auth]", "jwks_url = \"https://id.example.com/jwks\""),
        (
            "[[auth.keys]]",
            "kid = \"k1\"\nalgorithm = \"HS256\"\nsecret = \"one\"",
        ),
        (
            "[[auth.keys]]",
            "kid = \"k2\"\nalgorithm = \"HS256\"\nsecret = \"two\"",
        ),
        ("[[auth.keys]]", "kid = \"k3\"\nalgorithm = \"EdDSA\""),
        ("[limits]", "max_frame_bytes = 0"),
        ("[limits]", "max_connections = 10"),
        ("[limits.messages]", "browser = 5\nwindow = \"1ms\""),
        (
            "[websocket]",
            "ping_interval = \"1s\"\nping_timeout = \"2s\"",
        ),
        ("[websocket]", "coalesce_interval = \"11s\""),
        ("[tasks]", "retention = \"584942417355years\""),
        ("[tasks.retry]", "jitter = 1.5"),
        (
            "[[tasks.retry_by_type]]",
            "pattern = \"video:*\"\ninitial = \"1s\"\nmax = \"2s\"\njitter = 0.5",
        ),
        (
            "[[namespaces]]",
            "pattern = \"session:*\"\nhistory_size = 10\nhistory_ttl = \"1m\"",
        ),
        ("[[namespaces]]", "pattern = \"a::b\""),
        ("[federation]", "hub_id = \"hub-1\"\nlabels = { a = \"b\" }"),
        (
            "[[federation.peers]]",
            "name = \"b\"\nurl = \"ws://127.0.0.1:1/ws\"\ntoken = \"t\"",
        ),
        (
            "[permissions.browser]",
            "subscribe_channels = [\"session:*\"]",
        ),
        (
            "[permissions.hub]",
            "publish_channels = [\"**\", \"x:{a,b}\"]",
        ),
        ("[log]", "format = \"xml\""),
        ("[metrics]", "key = \"k\""),
        ("[redis]", "url = \"redis://127.0.0.1:6379\"\npool_size = 0"),
        ("[calls]", "max_timeout = \"1s\""),
    ];
    let picked = prop::collection::btree_set(0..ENTRIES.len(), 0..8).prop_map(|picks| {
        let mut sections: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for i in picks {
            let (section, body) = ENTRIES[i];
            sections.entry(section).or_default().push(body);
        }
        let mut text = String::new();
        for (section, bodies) in sections {
            if section.starts_with("[[") {
                for body in bodies {
                    text += &format!("{section}\n{body}\n");
                }
            } else {
                if !section.is_empty() {
                    text += &format!("{section}\n");
                }
                text += &bodies.join("\n");
                text += "\n";
            }
        }
        text
    });
    prop_oneof![
        1 => Just(chanhub::config::DEFAULT_CONFIG_TOML.to_owned()),
        1 => Just(checks::ROTATION_CONFIG.replace("{dir}", "/nonexistent")),
        6 => picked.clone(),
        1 => (picked, any::<prop::sample::Index>()).prop_map(|(text, cut)| {
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text[..at].to_owned()
        }),
    ]
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
