//! The match cache of [`SubscriptionIndex`](super::SubscriptionIndex).
//!
//! Publishing to the same channels over and over is the common case, and a
//! cached answer costs one short mutex and one hash lookup instead of a trie
//! walk. Kept separate from the trie because its correctness argument
//! (generations) is self-contained.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Most cache shards used; fewer when the capacity is smaller.
const MAX_CACHE_SHARDS: usize = 16;

/// One shard of the match cache.
struct CacheShard<V> {
    /// The trie generation every entry in `entries` was computed at.
    generation: u64,
    /// Most entries this shard holds before it is cleared.
    capacity: usize,
    /// Results by channel. `Box<str>` keys can be looked up with a `&str`,
    /// so a cache hit allocates nothing.
    entries: HashMap<Box<str>, Arc<[V]>>,
}

/// A bounded cache of recent match results.
///
/// Sharded by channel so that concurrent publishers on different channels
/// rarely contend on the same (short, never awaited) mutex. When a shard is
/// full it is simply cleared: eviction is O(1) amortised and needs no
/// recency bookkeeping on the hit path, and a broker's hot channels refill
/// it immediately.
pub(super) struct MatchCache<V> {
    /// Shards, selected by a hash of the channel.
    shards: Box<[Mutex<CacheShard<V>>]>,
}

impl<V> MatchCache<V> {
    /// `None` for capacity 0, which disables caching entirely.
    pub(super) fn new(capacity: usize) -> Option<Self> {
        if capacity == 0 {
            return None;
        }
        let count = capacity.min(MAX_CACHE_SHARDS);
        // Spread the capacity exactly: the shard capacities sum to `capacity`.
        let shards = (0..count)
            .map(|i| {
                Mutex::new(CacheShard {
                    generation: 0,
                    capacity: capacity / count + usize::from(i < capacity % count),
                    entries: HashMap::new(),
                })
            })
            .collect();
        Some(Self { shards })
    }

    fn shard(&self, channel: &str) -> &Mutex<CacheShard<V>> {
        // FNV-1a: a few nanoseconds for a short name, and only has to spread
        // channels over a handful of shards.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in channel.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let index = (hash % self.shards.len() as u64) as usize;
        &self.shards[index]
    }

    /// The cached result for `channel`, if it was computed at `generation`.
    pub(super) fn get(&self, channel: &str, generation: u64) -> Option<Arc<[V]>> {
        // A poisoned shard only means another thread panicked while holding
        // it; the map itself is always in a consistent state.
        let mut shard = self
            .shard(channel)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.generation != generation {
            if shard.generation < generation {
                // Everything here is stale: free it now rather than at the
                // next insert.
                shard.entries.clear();
                shard.generation = generation;
            }
            return None;
        }
        shard.entries.get(channel).cloned()
    }

    /// Stores `result`, computed at `generation`, unless a newer generation
    /// has already been seen (the result would be stale on arrival).
    pub(super) fn put(&self, channel: &str, generation: u64, result: Arc<[V]>) {
        let mut shard = self
            .shard(channel)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if generation < shard.generation {
            return;
        }
        if generation > shard.generation
            || (shard.entries.len() >= shard.capacity && !shard.entries.contains_key(channel))
        {
            shard.entries.clear();
            shard.generation = generation;
        }
        shard.entries.insert(channel.into(), result);
    }

    /// Total capacity, for `Debug`.
    pub(super) fn capacity(&self) -> usize {
        self.capacity_and_len().0
    }

    /// (total capacity, entries held), summed over the shards.
    pub(super) fn capacity_and_len(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(cap, len), shard| {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            (cap + shard.capacity, len + shard.entries.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_generations() {
        // One shard, so every channel below shares one shard generation.
        let cache = MatchCache::<u8>::new(1).unwrap();
        let one: Arc<[u8]> = Arc::from([1]);
        let two: Arc<[u8]> = Arc::from([2]);
        cache.put("a", 5, Arc::clone(&one));
        assert_eq!(cache.get("a", 5).as_deref(), Some(&[1][..]));
        assert!(
            cache.get("a", 6).is_none(),
            "older generation is not served"
        );
        // A result computed at an older generation than one already seen (a
        // reader that raced with a writer) is dropped, not served later.
        cache.put("b", 5, Arc::clone(&two));
        assert!(cache.get("b", 6).is_none());
        cache.put("b", 6, Arc::clone(&two));
        assert_eq!(cache.get("b", 6).as_deref(), Some(&[2][..]));
        cache.put("c", 4, one);
        assert!(cache.get("c", 6).is_none());
    }
}
