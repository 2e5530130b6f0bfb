//! The subscription index against a naive model: an arbitrary sequence of
//! subscribe / unsubscribe / match operations over a small alphabet of
//! segments, so that patterns overlap and collide.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

use checks::IndexOp;

/// Pattern segments: literals that are also channel segments, wildcards
/// and a few globs.
const PATTERN_SEGMENTS: &[&str] = &["a", "b", "ab", "*", "**", "{a,b}", "a*", "?", "[!a]*", "*b"];
/// Channel segments.
const CHANNEL_SEGMENTS: &[&str] = &["a", "b", "ab", "ba", "c"];

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        pattern: Vec<u8>,
        key: u8,
        value: u8,
    },
    Remove {
        pattern: Vec<u8>,
        key: u8,
    },
    Match {
        channel: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    cache_capacity: u8,
    ops: Vec<Op>,
}

fn join(picks: &[u8], alphabet: &[&str]) -> String {
    picks
        .iter()
        .take(10)
        .map(|&i| alphabet[usize::from(i) % alphabet.len()])
        .collect::<Vec<_>>()
        .join(":")
}

fuzz_target!(|input: Input| {
    let ops: Vec<IndexOp> = input
        .ops
        .iter()
        .take(200)
        .map(|op| match op {
            Op::Insert {
                pattern,
                key,
                value,
            } => IndexOp::Insert {
                pattern: join(pattern, PATTERN_SEGMENTS),
                key: u64::from(key % 4),
                value: u32::from(*value),
            },
            Op::Remove { pattern, key } => IndexOp::Remove {
                pattern: join(pattern, PATTERN_SEGMENTS),
                key: u64::from(key % 4),
            },
            Op::Match { channel } => IndexOp::Match {
                channel: join(channel, CHANNEL_SEGMENTS),
            },
        })
        .collect();
    checks::index_ops(usize::from(input.cache_capacity % 5), &ops);
});
