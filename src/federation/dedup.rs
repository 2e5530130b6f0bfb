//! The duplicate filter for forwarded events: in a ring or a mesh the same
//! event reaches a hub over several paths, and only the first copy may be
//! delivered. Keys are (origin hub id, origin message id); the window is
//! bounded and forgets the oldest key first, which is safe because copies
//! of one event arrive within a few link latencies of each other.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

/// A bounded set of recently seen events.
#[derive(Debug)]
pub(crate) struct Dedup {
    /// Hashes of the keys seen, for the membership test. A 64-bit keyed
    /// hash instead of the strings keeps the window small; a collision
    /// (one in 2^64 per pair) would drop one event.
    seen: HashSet<u64>,
    /// The same hashes in arrival order, for eviction.
    order: VecDeque<u64>,
    /// Most keys kept.
    capacity: usize,
    /// Per-process hash key, so peers cannot craft collisions.
    hasher: RandomState,
}

impl Dedup {
    pub(crate) fn new(capacity: usize) -> Self {
        Dedup {
            seen: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            hasher: RandomState::new(),
        }
    }

    /// Records the event; false when it was seen before.
    pub(crate) fn first_time(&mut self, origin: &str, msg_id: &str) -> bool {
        let mut h = self.hasher.build_hasher();
        origin.hash(&mut h);
        msg_id.hash(&mut h);
        let key = h.finish();
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_copy_is_dropped_and_the_window_is_bounded() {
        let mut d = Dedup::new(2);
        assert!(d.first_time("a", "1"));
        assert!(!d.first_time("a", "1"));
        assert!(d.first_time("b", "1"), "other origin, same id");
        assert!(d.first_time("a", "2"));
        // ("a","1") fell out of the window.
        assert!(d.first_time("a", "1"));
        assert_eq!(d.seen.len(), 2);
    }
}
