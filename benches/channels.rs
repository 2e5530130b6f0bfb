//! Benchmarks for the subscription index: subscribe, unsubscribe and
//! matching (through the cache and with the cache disabled) at 1k, 10k and
//! 100k subscriptions.
//!
//! The index is filled with an even mix of literal channels
//! (`session:<i>:evt`), `*` patterns (`session:<i>:*`) and `**` patterns
//! (`user:<i>:**`), one subscription per key.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chanhub::channels::{ChannelName, NameLimits, Pattern, SubscriptionIndex};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// Subscriptions inserted (or removed) per timed batch.
const BATCH: usize = 1_024;
/// Distinct channels cycled through by the match benchmarks.
const CHANNELS: usize = 1_024;

fn limits() -> NameLimits {
    NameLimits::default()
}

fn pattern(text: &str) -> Pattern {
    Pattern::parse(text, &limits()).expect("bench pattern is valid")
}

fn channel(text: &str) -> ChannelName {
    ChannelName::parse(text, &limits()).expect("bench channel is valid")
}

/// The `i`th pattern of the mix.
fn mixed_pattern(i: usize) -> Pattern {
    match i % 3 {
        0 => pattern(&format!("session:{i}:evt")),
        1 => pattern(&format!("session:{i}:*")),
        _ => pattern(&format!("user:{i}:**")),
    }
}

fn filled(n: usize, cache_capacity: usize) -> SubscriptionIndex<u64> {
    let index = SubscriptionIndex::new(cache_capacity);
    for i in 0..n {
        index.insert(&mixed_pattern(i), i as u64, i as u64);
    }
    index
}

/// Channels that each match exactly one subscription of a size-`n` index,
/// spread over all three kinds.
fn hit_channels(n: usize) -> Vec<ChannelName> {
    (0..CHANNELS)
        .map(|j| {
            let i = (j * 7919) % n;
            match i % 3 {
                0 => channel(&format!("session:{i}:evt")),
                1 => channel(&format!("session:{i}:log")),
                _ => channel(&format!("user:{i}:inbox:new")),
            }
        })
        .collect()
}

/// Channels that match nothing but share prefixes with the subscriptions.
fn miss_channels(n: usize) -> Vec<ChannelName> {
    (0..CHANNELS)
        .map(|j| {
            let i = (j * 7919) % n;
            match j % 3 {
                0 => channel(&format!("session:{}:evt", n + i)),
                1 => channel(&format!("session:{i}:evt:extra:{j}")),
                _ => channel(&format!("task:{i}")),
            }
        })
        .collect()
}

fn subscribe(c: &mut Criterion) {
    let mut group = c.benchmark_group("subscribe");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let index = filled(n, 0);
        let fresh: Vec<Pattern> = (n..n + BATCH).map(mixed_pattern).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            // Time inserting a batch of new subscriptions, then remove them
            // untimed so the index stays at about `n`.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let batch = left.min(BATCH);
                    let start = Instant::now();
                    for (k, p) in fresh[..batch].iter().enumerate() {
                        black_box(index.insert(p, (n + k) as u64, k as u64));
                    }
                    total += start.elapsed();
                    for (k, p) in fresh[..batch].iter().enumerate() {
                        index.remove(p, (n + k) as u64);
                    }
                    left -= batch;
                }
                total
            });
        });
    }
    group.finish();
}

fn unsubscribe(c: &mut Criterion) {
    let mut group = c.benchmark_group("unsubscribe");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let index = filled(n, 0);
        let fresh: Vec<Pattern> = (n..n + BATCH).map(mixed_pattern).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let batch = left.min(BATCH);
                    for (k, p) in fresh[..batch].iter().enumerate() {
                        index.insert(p, (n + k) as u64, k as u64);
                    }
                    let start = Instant::now();
                    for (k, p) in fresh[..batch].iter().enumerate() {
                        black_box(index.remove(p, (n + k) as u64));
                    }
                    total += start.elapsed();
                    left -= batch;
                }
                total
            });
        });
    }
    group.finish();
}

fn matching(c: &mut Criterion) {
    for (name, hit) in [("match_hit", true), ("match_miss", false)] {
        for (mode, capacity) in [("cached", 4 * CHANNELS), ("uncached", 0)] {
            let mut group = c.benchmark_group(format!("{name}_{mode}"));
            group.throughput(Throughput::Elements(1));
            for n in SIZES {
                let index = filled(n, capacity);
                let channels = if hit {
                    hit_channels(n)
                } else {
                    miss_channels(n)
                };
                let expected = usize::from(hit);
                for ch in &channels {
                    assert_eq!(index.matches(ch).len(), expected, "{ch}");
                }
                group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                    let mut next = 0;
                    b.iter(|| {
                        next = (next + 1) % channels.len();
                        black_box(index.matches(&channels[next]))
                    });
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, subscribe, unsubscribe, matching);
criterion_main!(benches);
