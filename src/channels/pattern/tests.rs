use std::collections::HashSet;

use proptest::prelude::*;

use super::*;
use crate::channels::test_support::{
    PATTERN_SEGMENTS, channel_text, oracle_matches, pattern_text, serialize_str,
};

fn pat(s: &str) -> Pattern {
    Pattern::parse(s, &NameLimits::default()).unwrap()
}

fn chan(s: &str) -> ChannelName {
    ChannelName::parse(s, &NameLimits::default()).unwrap()
}

fn err(s: &str) -> ChannelError {
    Pattern::parse(s, &NameLimits::default()).unwrap_err()
}

#[test]
fn segment_forms() {
    let p = pat("lit:*:**:job-?");
    let kinds: Vec<_> = p
        .segments()
        .iter()
        .map(|s| match s {
            Segment::Literal(_) => "literal",
            Segment::Star => "star",
            Segment::DoubleStar => "double-star",
            Segment::Glob(_) => "glob",
        })
        .collect();
    assert_eq!(kinds, ["literal", "star", "double-star", "glob"]);
    assert!(pat("session:42:log").is_literal());
    assert!(!pat("session:*").is_literal());
    assert!(!pat("**").is_literal());
    assert!(!pat("a:{x,y}").is_literal());
    assert_eq!(pat("session:*").as_str(), "session:*");
    assert_eq!(pat("session:*").to_string(), "session:*");
}

#[test]
fn double_star_runs_are_normalised() {
    assert_eq!(pat("a:**:**:b").as_str(), "a:**:b");
    assert_eq!(pat("**:**").as_str(), "**");
    assert_eq!(pat("a:**:**:**").as_str(), "a:**");
    assert_eq!(pat("a:**:**:b"), pat("a:**:b"));
    let set: HashSet<Pattern> = [pat("a:**:**"), pat("a:**")].into_iter().collect();
    assert_eq!(set.len(), 1);
    // `*:*` is two segments, not a `**`.
    assert_eq!(pat("*:*").as_str(), "*:*");
    assert_ne!(pat("*:*"), pat("**"));
}

#[test]
fn invalid_patterns() {
    assert_eq!(err(""), ChannelError::Empty);
    assert_eq!(err("a::*"), ChannelError::EmptySegment { index: 1 });
    assert_eq!(err("**:"), ChannelError::EmptySegment { index: 1 });
    assert_eq!(
        err("a:b c"),
        ChannelError::InvalidChar { ch: ' ', index: 3 }
    );
    assert_eq!(
        err("a:\\*"),
        ChannelError::InvalidChar { ch: '\\', index: 2 }
    );
    assert_eq!(
        err(&"*".repeat(300)),
        ChannelError::TooLong { len: 300, max: 255 }
    );
    assert_eq!(
        err(&vec!["**"; 17].join(":")),
        ChannelError::TooManySegments { count: 17, max: 16 }
    );
    for seg in ["foo**", "**foo", "a**b", "***", "{a,**}"] {
        assert_eq!(
            err(&format!("x:{seg}")),
            ChannelError::DoubleStarInSegment {
                segment: seg.to_owned()
            },
            "{seg}"
        );
    }
    assert_eq!(
        err("foo**").to_string(),
        "`**` must be a whole segment, found in segment `foo**`"
    );
    for seg in ["[ab", "{a,b", "[]", "[z-a]"] {
        match err(&format!("x:{seg}:y")) {
            ChannelError::InvalidGlob { segment, reason } => {
                assert_eq!(segment, seg);
                assert!(!reason.is_empty());
            }
            other => panic!("{seg}: unexpected {other:?}"),
        }
    }
}

#[test]
fn examples_from_the_grammar() {
    let star = pat("session:*");
    assert!(star.matches(&chan("session:42")));
    assert!(!star.matches(&chan("session:42:log")));
    assert!(!star.matches(&chan("session")));
    assert!(!star.matches(&chan("task:42")));

    let rest = pat("session:**");
    assert!(rest.matches(&chan("session")));
    assert!(rest.matches(&chan("session:42")));
    assert!(rest.matches(&chan("session:42:log")));
    assert!(!rest.matches(&chan("sessions:42")));

    let all = pat("**");
    for c in ["a", "a:b", "x:y:z:w", "session:42:log"] {
        assert!(all.matches(&chan(c)), "{c}");
    }

    let middle = pat("a:**:z");
    assert!(middle.matches(&chan("a:z")));
    assert!(middle.matches(&chan("a:b:c:z")));
    assert!(!middle.matches(&chan("a:b:c")));
    assert!(pat("**:log").matches(&chan("log")));
    assert!(pat("**:log").matches(&chan("a:b:log")));
}

#[test]
fn glob_segments() {
    let alt = pat("region:{eu,us}:*");
    assert!(alt.matches(&chan("region:eu:1")));
    assert!(alt.matches(&chan("region:us:2")));
    assert!(!alt.matches(&chan("region:ap:1")));

    let class = pat("shard:[a-c]x");
    assert!(class.matches(&chan("shard:bx")));
    assert!(!class.matches(&chan("shard:dx")));
    let negated = pat("shard:[!a-c]x");
    assert!(negated.matches(&chan("shard:dx")));
    assert!(!negated.matches(&chan("shard:ax")));
    assert!(pat("shard:[^a-c]x").matches(&chan("shard:dx")));

    let one = pat("job-?");
    assert!(one.matches(&chan("job-1")));
    assert!(!one.matches(&chan("job-12")));
    assert!(!one.matches(&chan("job-")));

    let prefix = pat("job-*:log");
    assert!(prefix.matches(&chan("job-:log")));
    assert!(prefix.matches(&chan("job-abc:log")));
    assert!(!prefix.matches(&chan("job-abc:x:log")));
}

#[test]
fn slash_is_not_a_separator() {
    assert!(pat("a*").matches(&chan("ab/cd")));
    assert!(pat("a:*").matches(&chan("a:b/c")));
    assert!(pat("x:?/?").matches(&chan("x:1/2")));
    assert!(pat("build/*").matches(&chan("build/linux/x86")));
}

#[test]
fn covers_examples() {
    let session_all = pat("session:**");
    for other in [
        "session:*",
        "session:a:*",
        "session:**",
        "session",
        "session:{a,b}",
    ] {
        assert!(session_all.covers(&pat(other)), "session:** covers {other}");
    }
    for other in ["**", "*:**", "{session,task}:*", "task:*", "sessions:*"] {
        assert!(
            !session_all.covers(&pat(other)),
            "session:** must not cover {other}"
        );
    }
    assert!(pat("**").covers(&pat("**")));
    assert!(pat("**").covers(&pat("a:*:{x,y}:**")));
    assert!(pat("*").covers(&pat("{a,b}")));
    assert!(!pat("*").covers(&pat("**")));
    assert!(!pat("*").covers(&pat("a:b")));
    assert!(pat("*:*").covers(&pat("a:b")));
    assert!(pat("{a,b}:*").covers(&pat("a:x")));
    assert!(!pat("{a,b}:*").covers(&pat("c:x")));
    assert!(pat("{a,b}:*").covers(&pat("{a,b}:x")));
    // Conservative: true containment, but different glob text.
    assert!(!pat("{a,b}").covers(&pat("{b,a}")));
    assert!(!pat("a").covers(&pat("*")));
    assert!(pat("a:**:z").covers(&pat("a:b:**:c:z")));
    assert!(!pat("a:**:z").covers(&pat("a:b:**")));
}

#[test]
fn chained_double_stars_stay_cheap() {
    let pattern = pat(&["**", "a"].repeat(8).join(":"));
    let channel = chan(&[vec!["a"; 15], vec!["b"]].concat().join(":"));
    assert!(!pattern.matches(&channel));
    assert!(pattern.matches(&chan(&vec!["a"; 16].join(":"))));
}

#[test]
fn serializes_as_a_string() {
    assert_eq!(serialize_str(&pat("a:**:**")).unwrap(), "a:**");
}

/// Small exhaustive check of `covers` soundness: every channel matched by
/// `b` is matched by `a` whenever `a.covers(b)`.
#[test]
fn covers_is_sound_exhaustively() {
    let segs = ["a", "*", "**", "a*", "{a,b}"];
    let mut patterns = Vec::new();
    for n in 1..=3u32 {
        for i in 0..segs.len().pow(n) {
            let mut rest = i;
            let text: Vec<&str> = (0..n)
                .map(|_| {
                    let s = segs[rest % segs.len()];
                    rest /= segs.len();
                    s
                })
                .collect();
            patterns.push(pat(&text.join(":")));
        }
    }
    let words = ["a", "b", "ab"];
    let mut channels = Vec::new();
    for n in 1..=4u32 {
        for i in 0..words.len().pow(n) {
            let mut rest = i;
            let text: Vec<&str> = (0..n)
                .map(|_| {
                    let s = words[rest % words.len()];
                    rest /= words.len();
                    s
                })
                .collect();
            channels.push(chan(&text.join(":")));
        }
    }
    let mut covered_pairs = 0;
    for a in &patterns {
        assert!(a.covers(a), "{a} covers itself");
        for b in &patterns {
            if a.covers(b) {
                covered_pairs += 1;
                for c in &channels {
                    assert!(!b.matches(c) || a.matches(c), "{a} covers {b} but not {c}");
                }
            }
        }
    }
    assert!(covered_pairs > patterns.len());
}

proptest! {
    #[test]
    fn matcher_agrees_with_oracle(p in pattern_text(), c in channel_text()) {
        let pattern = pat(&p);
        prop_assert_eq!(pattern.matches(&chan(&c)), oracle_matches(&p, &c), "{} vs {}", p, c);
    }

    #[test]
    fn covers_is_sound(
        a in pattern_text(),
        b in pattern_text(),
        channels in prop::collection::vec(channel_text(), 1..20),
    ) {
        let (a, b) = (pat(&a), pat(&b));
        prop_assert!(a.covers(&a));
        if a.covers(&b) {
            for c in &channels {
                let c = chan(c);
                prop_assert!(!b.matches(&c) || a.matches(&c), "{} covers {} but not {}", a, b, c);
            }
        }
    }

    /// Builds `b` by specialising `a` segment by segment exactly as the
    /// `covers` rules allow, so `a.covers(b)` must hold; then checks it is
    /// also true on random channels.
    #[test]
    fn covers_accepts_specialisations(
        (a, b) in prop::collection::vec(prop::sample::select(PATTERN_SEGMENTS), 1..=5)
            .prop_flat_map(|a| {
                let parts: Vec<BoxedStrategy<Vec<&'static str>>> = a
                    .iter()
                    .map(|&seg| match seg {
                        "**" => prop::collection::vec(prop::sample::select(PATTERN_SEGMENTS), 0..=3).boxed(),
                        "*" => prop::sample::select(PATTERN_SEGMENTS)
                            .prop_filter("single segment", |s| *s != "**")
                            .prop_map(|s| vec![s])
                            .boxed(),
                        other => Just(vec![other]).boxed(),
                    })
                    .collect();
                (Just(a.join(":")), parts.prop_map(|p| p.concat().join(":")))
            }),
        channels in prop::collection::vec(channel_text(), 1..20),
    ) {
        let a = pat(&a);
        let b = if b.is_empty() { pat("a") } else { pat(&b) };
        prop_assert!(a.covers(&b), "{} should cover {}", a, b);
        for c in &channels {
            let c = chan(c);
            prop_assert!(!b.matches(&c) || a.matches(&c), "{} covers {} but not {}", a, b, c);
        }
    }

    #[test]
    fn parse_never_panics(s in ".{0,300}") {
        let _ = Pattern::parse(&s, &NameLimits::default());
        let _ = ChannelName::parse(&s, &NameLimits::default());
    }

    #[test]
    fn parse_never_panics_on_glob_soup(s in "[ab:*?\\[\\]{}!^,/.\\-]{0,40}") {
        if let Ok(p) = Pattern::parse(&s, &NameLimits::default()) {
            // A parsed pattern re-parses to itself and can be matched.
            prop_assert_eq!(&pat(p.as_str()), &p);
            let _ = p.matches(&chan("a:b/c:ab"));
        }
        let _ = ChannelName::parse(&s, &NameLimits { max_bytes: 8, max_segments: 2 });
    }
}
