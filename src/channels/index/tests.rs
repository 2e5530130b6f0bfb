use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::thread;

use proptest::prelude::*;

use super::*;
use crate::channels::NameLimits;
use crate::channels::test_support::{channel_text, oracle_matches, pattern_text};

fn pat(s: &str) -> Pattern {
    Pattern::parse(s, &NameLimits::default()).unwrap()
}

fn chan(s: &str) -> ChannelName {
    ChannelName::parse(s, &NameLimits::default()).unwrap()
}

fn hits(index: &SubscriptionIndex<&'static str>, channel: &str) -> Vec<&'static str> {
    index.matches(&chan(channel)).to_vec()
}

#[test]
fn is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SubscriptionIndex<u64>>();
    assert_send_sync::<SubscriptionIndex<Arc<str>>>();
}

#[test]
fn insert_remove_and_len() {
    let index = SubscriptionIndex::new(16);
    assert!(index.is_empty());
    assert!(index.insert(&pat("session:*"), 1, "one"));
    assert!(!index.insert(&pat("session:*"), 1, "changed"));
    assert!(index.insert(&pat("session:*"), 2, "two"));
    assert!(index.insert(&pat("session:**"), 1, "one-all"));
    assert_eq!(index.len(), 3);
    // The duplicate insert did not change the value.
    assert_eq!(hits(&index, "session:42"), ["one-all", "two"]);
    assert!(index.remove(&pat("session:*"), 2));
    assert!(!index.remove(&pat("session:*"), 2));
    assert!(!index.remove(&pat("session:*:x"), 1));
    assert!(!index.remove(&pat("other"), 1));
    assert_eq!(index.len(), 2);
    assert!(index.remove(&pat("session:*"), 1));
    assert!(index.remove(&pat("session:**"), 1));
    assert!(index.is_empty());
    assert!(index.read().root.is_empty(), "emptied nodes are pruned");
    let debug = format!("{index:?}");
    assert!(
        debug.contains("len: 0") && debug.contains("cache_capacity: 16"),
        "{debug}"
    );
}

#[test]
fn every_segment_kind_matches() {
    let index = SubscriptionIndex::new(0);
    index.insert(&pat("session:42:log"), 1, "literal");
    index.insert(&pat("session:*"), 2, "star");
    index.insert(&pat("session:**"), 3, "rest");
    index.insert(&pat("**"), 4, "all");
    index.insert(&pat("{session,task}:4?"), 5, "glob");
    index.insert(&pat("[a-s]*:*:log"), 6, "class");
    assert_eq!(
        hits(&index, "session:42:log"),
        ["literal", "rest", "all", "class"]
    );
    assert_eq!(hits(&index, "session:42"), ["star", "rest", "all", "glob"]);
    assert_eq!(hits(&index, "session"), ["rest", "all"]);
    assert_eq!(hits(&index, "task:40"), ["all", "glob"]);
    assert_eq!(hits(&index, "zzz:1:log"), ["all"]);
    let empty = SubscriptionIndex::<u8>::new(4);
    assert!(empty.matches(&chan("a")).is_empty());
}

#[test]
fn overlapping_patterns_deliver_once_in_key_order() {
    let index = SubscriptionIndex::new(8);
    for (p, key, value) in [
        ("a:b", 9, "nine"),
        ("a:*", 3, "three-star"),
        ("a:**", 3, "three-rest"),
        ("**", 3, "three-all"),
        ("a:{b,c}", 1, "one"),
        ("*:b", 5, "five"),
    ] {
        index.insert(&pat(p), key, value);
    }
    // Key 3 appears once, with its most recently inserted matching value.
    assert_eq!(hits(&index, "a:b"), ["one", "three-all", "five", "nine"]);
    assert!(index.remove(&pat("**"), 3));
    assert_eq!(hits(&index, "a:b"), ["one", "three-rest", "five", "nine"]);
}

#[test]
fn cache_is_invalidated_by_changes() {
    let index = SubscriptionIndex::new(8);
    let channel = chan("session:1");
    assert!(index.matches(&channel).is_empty());
    index.insert(&pat("session:*"), 1, "a");
    assert_eq!(&*index.matches(&channel), ["a"]);
    // Served from the cache: the same allocation comes back.
    let first = index.matches(&channel);
    assert!(Arc::ptr_eq(&first, &index.matches(&channel)));
    index.insert(&pat("session:1"), 2, "b");
    assert_eq!(&*index.matches(&channel), ["a", "b"]);
    index.remove(&pat("session:*"), 1);
    assert_eq!(&*index.matches(&channel), ["b"]);
    // A no-op change does not invalidate.
    let cached = index.matches(&channel);
    assert!(!index.insert(&pat("session:1"), 2, "c"));
    assert!(!index.remove(&pat("nothing"), 2));
    assert!(Arc::ptr_eq(&cached, &index.matches(&channel)));
}

#[test]
fn cache_stays_bounded() {
    for capacity in [1, 3, 17, 40] {
        let index = SubscriptionIndex::new(capacity);
        index.insert(&pat("**"), 1, 1u8);
        for i in 0..200 {
            assert_eq!(&*index.matches(&chan(&format!("c:{i}"))), [1]);
        }
        let (total, held) = index.cache.as_ref().unwrap().capacity_and_len();
        assert_eq!(total, capacity);
        assert!(held <= capacity && held > 0, "{held} > {capacity}");
    }
    assert!(SubscriptionIndex::<u8>::new(0).cache.is_none());
}

#[test]
fn chained_double_stars_stay_cheap() {
    let index = SubscriptionIndex::new(0);
    // Many overlapping `**` chains: without memoisation this walk is
    // exponential in the number of `**` edges.
    for k in 0..8 {
        index.insert(&pat(&["**", "a"].repeat(8 - k).join(":")), k as u64, k);
    }
    index.insert(&pat(&["**", "a"].repeat(8).join(":")), 99, 99);
    let miss = [vec!["a"; 15], vec!["b"]].concat().join(":");
    assert!(index.matches(&chan(&miss)).is_empty());
    let hit = vec!["a"; 16].join(":");
    assert_eq!(index.matches(&chan(&hit)).len(), 9);
}

#[test]
fn concurrent_use() {
    let index = Arc::new(SubscriptionIndex::new(64));
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let index = Arc::clone(&index);
            thread::spawn(move || {
                for i in 0..500u64 {
                    let key = t * 1000 + i;
                    let p = pat(&format!("t{t}:{}", i % 7));
                    assert!(index.insert(&p, key, key));
                    let found = index.matches(&chan(&format!("t{t}:{}", i % 7)));
                    assert!(found.contains(&key));
                    if i % 2 == 0 {
                        assert!(index.remove(&p, key));
                        assert!(
                            !index
                                .matches(&chan(&format!("t{t}:{}", i % 7)))
                                .contains(&key)
                        );
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(index.len(), 4 * 250);
}

#[derive(Debug, Clone)]
enum Op {
    Insert(usize, u64, u32),
    Remove(usize, u64),
    Match(String),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..6usize, 0..4u64, any::<u32>()).prop_map(|(p, k, v)| Op::Insert(p, k, v)),
        2 => (0..6usize, 0..4u64).prop_map(|(p, k)| Op::Remove(p, k)),
        3 => channel_text().prop_map(Op::Match),
    ]
}

/// The expected `matches` result computed from a flat list of
/// subscriptions with the independent oracle.
fn expected(model: &HashMap<(String, u64), (u64, u32)>, channel: &str) -> Vec<(u64, u32)> {
    let mut best: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    for ((pattern, key), &(seq, value)) in model {
        if oracle_matches(pattern, channel) {
            let entry = best.entry(*key).or_insert((seq, value));
            if seq > entry.0 {
                *entry = (seq, value);
            }
        }
    }
    best.into_iter()
        .map(|(key, (_, value))| (key, value))
        .collect()
}

proptest! {
    #[test]
    fn index_agrees_with_oracle(
        patterns in prop::collection::vec(pattern_text(), 1..=6),
        ops in prop::collection::vec(op(), 1..60),
        capacity in prop::sample::select(vec![0usize, 1, 2, 64]),
    ) {
        let patterns: Vec<Pattern> = patterns.iter().map(|p| pat(p)).collect();
        let index = SubscriptionIndex::new(capacity);
        let mut model: HashMap<(String, u64), (u64, u32)> = HashMap::new();
        let mut seq = 0;
        let mut seen = Vec::new();
        let check = |index: &SubscriptionIndex<(u64, u32)>,
                     model: &HashMap<(String, u64), (u64, u32)>,
                     channel: &str| {
            let want = expected(model, channel);
            // Twice: the second answer may come from the cache.
            for _ in 0..2 {
                let got = index.matches(&chan(channel));
                prop_assert_eq!(&*got, want.as_slice(), "channel {}", channel);
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Insert(p, key, value) => {
                    let pattern = &patterns[p % patterns.len()];
                    let id = (pattern.as_str().to_owned(), key);
                    let fresh = !model.contains_key(&id);
                    prop_assert_eq!(index.insert(pattern, key, (key, value)), fresh);
                    if fresh {
                        model.insert(id, (seq, value));
                        seq += 1;
                    }
                }
                Op::Remove(p, key) => {
                    let pattern = &patterns[p % patterns.len()];
                    let id = (pattern.as_str().to_owned(), key);
                    prop_assert_eq!(index.remove(pattern, key), model.remove(&id).is_some());
                }
                Op::Match(channel) => {
                    check(&index, &model, &channel)?;
                    seen.push(channel);
                }
            }
            prop_assert_eq!(index.len(), model.len());
        }
        // Everything matched earlier is re-checked against the final state,
        // so a stale cache entry would be caught.
        for channel in &seen {
            check(&index, &model, channel)?;
        }
        for pattern in &patterns {
            for key in 0..4 {
                index.remove(pattern, key);
            }
        }
        prop_assert!(index.is_empty());
        prop_assert!(index.read().root.is_empty());
    }
}

#[test]
fn pattern_counts_lists_each_pattern_with_its_subscribers() {
    let index = SubscriptionIndex::new(16);
    for (pattern, key) in [
        ("session:*", 1),
        ("session:*", 2),
        ("a:**:end", 1),
        ("**", 3),
        ("region:{eu,us}:x", 4),
        ("session", 5),
    ] {
        index.insert(&pat(pattern), key, "v");
    }
    index.remove(&pat("session:*"), 2);
    let mut counts = index.pattern_counts();
    counts.sort();
    assert_eq!(
        counts,
        vec![
            ("**".to_string(), 1),
            ("a:**:end".to_string(), 1),
            ("region:{eu,us}:x".to_string(), 1),
            ("session".to_string(), 1),
            ("session:*".to_string(), 1),
        ]
    );
}
