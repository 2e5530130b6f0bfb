//! The subscription index: which subscribers want a published channel.
//!
//! Every publish asks "who is subscribed to this channel?", so the answer
//! must not cost time proportional to the number of subscriptions. Patterns
//! are stored in a trie keyed by segment (the design of NATS server's
//! `sublist.go`), so a lookup only walks the branches the channel can
//! actually follow, and recent answers are kept in a small cache that any
//! subscribe or unsubscribe invalidates.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use self::cache::MatchCache;
use super::pattern::{GlobSegment, Segment};
use super::{ChannelName, Pattern};

mod cache;

/// One (pattern, key) subscription's payload.
struct Subscription<V> {
    /// Insertion order, so that when one key has several matching patterns
    /// the value of the most recent subscription is the one returned.
    seq: u64,
    /// What `matches` hands back to the caller (e.g. a connection handle).
    value: V,
}

/// A glob-segment edge of the trie.
struct GlobChild<V> {
    /// The compiled glob, tested against the channel segment at this depth.
    glob: GlobSegment,
    /// The subtree for patterns continuing after this glob.
    node: Node<V>,
}

/// A trie node. The edges from the root to it spell a pattern prefix; the
/// node holds the subscriptions for exactly that pattern and the edges to
/// longer ones.
struct Node<V> {
    /// Literal edges, looked up by the channel segment in O(1). Keyed by the
    /// pattern's own `Arc<str>` so inserts do not copy the text.
    literals: HashMap<Arc<str>, Node<V>>,
    /// The `*` edge: taken for any channel segment.
    star: Option<Box<Node<V>>>,
    /// The `**` edge: may consume zero or more channel segments.
    double_star: Option<Box<Node<V>>>,
    /// Glob edges. They cannot be looked up by key, so they are scanned at
    /// their level; in practice there are few distinct globs per level.
    globs: Vec<GlobChild<V>>,
    /// Subscriptions whose pattern ends exactly at this node, by key.
    subs: HashMap<u64, Subscription<V>>,
}

impl<V> Node<V> {
    fn new() -> Self {
        Self {
            literals: HashMap::new(),
            star: None,
            double_star: None,
            globs: Vec::new(),
            subs: HashMap::new(),
        }
    }

    /// True when the node holds nothing and can be pruned from its parent.
    fn is_empty(&self) -> bool {
        self.subs.is_empty()
            && self.literals.is_empty()
            && self.star.is_none()
            && self.double_star.is_none()
            && self.globs.is_empty()
    }

    fn child_or_insert(&mut self, segment: &Segment) -> &mut Node<V> {
        match segment {
            Segment::Literal(text) => self
                .literals
                .entry(Arc::clone(text))
                .or_insert_with(Node::new),
            Segment::Star => self.star.get_or_insert_with(|| Box::new(Node::new())),
            Segment::DoubleStar => self
                .double_star
                .get_or_insert_with(|| Box::new(Node::new())),
            Segment::Glob(glob) => {
                let index = match self.globs.iter().position(|c| c.glob.text() == glob.text()) {
                    Some(index) => index,
                    None => {
                        self.globs.push(GlobChild {
                            glob: glob.clone(),
                            node: Node::new(),
                        });
                        self.globs.len() - 1
                    }
                };
                &mut self.globs[index].node
            }
        }
    }

    fn child_mut(&mut self, segment: &Segment) -> Option<&mut Node<V>> {
        match segment {
            Segment::Literal(text) => self.literals.get_mut(&**text),
            Segment::Star => self.star.as_deref_mut(),
            Segment::DoubleStar => self.double_star.as_deref_mut(),
            Segment::Glob(glob) => self
                .globs
                .iter_mut()
                .find(|c| c.glob.text() == glob.text())
                .map(|c| &mut c.node),
        }
    }

    /// Drops the child for `segment` if it has become empty, so that removed
    /// subscriptions leave no dead branches for later lookups to walk.
    fn prune(&mut self, segment: &Segment) {
        match segment {
            Segment::Literal(text) => {
                if self.literals.get(&**text).is_some_and(Node::is_empty) {
                    self.literals.remove(&**text);
                }
            }
            Segment::Star => {
                if self.star.as_deref().is_some_and(Node::is_empty) {
                    self.star = None;
                }
            }
            Segment::DoubleStar => {
                if self.double_star.as_deref().is_some_and(Node::is_empty) {
                    self.double_star = None;
                }
            }
            Segment::Glob(glob) => {
                let emptied = self
                    .globs
                    .iter()
                    .position(|c| c.glob.text() == glob.text() && c.node.is_empty());
                if let Some(index) = emptied {
                    // Order of glob edges does not matter: results are sorted.
                    self.globs.swap_remove(index);
                }
            }
        }
    }

    /// Removes `key` from the node `segments` leads to, pruning emptied
    /// nodes on the way back up.
    fn remove(&mut self, segments: &[Segment], key: u64) -> Option<Subscription<V>> {
        let Some((first, rest)) = segments.split_first() else {
            return self.subs.remove(&key);
        };
        let removed = self.child_mut(first)?.remove(rest, key);
        if removed.is_some() {
            self.prune(first);
        }
        removed
    }
}

/// Everything the trie lock protects.
struct Trie<V> {
    /// Root of the segment trie.
    root: Node<V>,
    /// Number of (pattern, key) subscriptions, for `len`.
    len: usize,
    /// Next [`Subscription::seq`].
    next_seq: u64,
}

/// One matching walk over the trie for one channel.
struct Walk<'t, 'c, V> {
    /// The channel's segments.
    segments: &'c [&'c str],
    /// (key, seq, value) of every subscription found, duplicates included.
    found: Vec<(u64, u64, &'t V)>,
    /// For each `**` node entered so far, the lowest channel position it has
    /// been entered at. Entering at position `j` explores every position
    /// from `j` to the end, so a later entry at `j' >= j` has nothing new to
    /// find; this keeps each (node, position) pair visited at most once and
    /// rules out the exponential blowup of chained `**` edges. (The walk
    /// happens to reach each node at non-decreasing positions, so the first
    /// entry is the lowest; tracking the minimum keeps this correct for any
    /// visiting order.)
    double_stars: Vec<(&'t Node<V>, usize)>,
}

impl<'t, V> Walk<'t, '_, V> {
    fn visit(&mut self, node: &'t Node<V>, at: usize) {
        if let Some(next) = node.double_star.as_deref() {
            let end = self.segments.len() + 1;
            let upto = match self
                .double_stars
                .iter_mut()
                .find(|(n, _)| std::ptr::eq(*n, next))
            {
                Some((_, lowest)) => {
                    let explored_from = *lowest;
                    *lowest = explored_from.min(at);
                    explored_from
                }
                None => {
                    self.double_stars.push((next, at));
                    end
                }
            };
            // `**` consumes segments at..k, for every k not yet explored.
            for k in at..upto {
                self.visit(next, k);
            }
        }
        let Some(&segment) = self.segments.get(at) else {
            self.found.extend(
                node.subs
                    .iter()
                    .map(|(&key, sub)| (key, sub.seq, &sub.value)),
            );
            return;
        };
        if let Some(child) = node.literals.get(segment) {
            self.visit(child, at + 1);
        }
        if let Some(child) = node.star.as_deref() {
            self.visit(child, at + 1);
        }
        for child in &node.globs {
            if child.glob.is_match(segment) {
                self.visit(&child.node, at + 1);
            }
        }
    }
}

/// Maps channel patterns to subscriber values and answers, for a published
/// channel, which subscribers match.
///
/// Keys identify subscribers (e.g. a connection id); one key may hold many
/// patterns. All methods take `&self` and the type is `Send + Sync`, so one
/// index is shared by every task of the broker.
///
/// # Cost
///
/// A lookup is proportional to the channel's segment count and to the
/// subscriptions it finds, not to the number of subscriptions that do not
/// match, with one exception: glob-segment edges (e.g. `{eu,us}`) cannot be
/// looked up by key, so all distinct globs at a level the walk reaches are
/// tested against the channel segment.
pub struct SubscriptionIndex<V> {
    /// The trie. A std `RwLock`, not a tokio one, because nothing awaits
    /// while it is held (every method is synchronous), and publishes (reads)
    /// vastly outnumber subscribes and unsubscribes (writes).
    trie: RwLock<Trie<V>>,
    /// Bumped on every change to the trie, always while the write lock is
    /// held, so a reader holding the read lock sees the generation that
    /// exactly describes the trie it is walking. Cache entries are only
    /// served while the generation they were computed at is current.
    generation: AtomicU64,
    /// Recent results; `None` when created with capacity 0.
    cache: Option<MatchCache<V>>,
    /// Shared empty result, so a miss on an unsubscribed channel does not
    /// allocate.
    empty: Arc<[V]>,
}

impl<V> SubscriptionIndex<V> {
    // Poisoning is recovered from rather than propagated: nothing that can
    // panic runs between a change to the trie and the generation bump in
    // the same critical section (values are never dropped under the lock on
    // removal), so a poisoned trie is still consistent; at worst a panic in
    // `insert` leaves an empty node, which matching tolerates.
    fn read(&self) -> RwLockReadGuard<'_, Trie<V>> {
        self.trie.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Trie<V>> {
        self.trie.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<V: Clone + Send + Sync + 'static> SubscriptionIndex<V> {
    /// Creates an empty index whose match cache holds at most
    /// `cache_capacity` channels (0 disables the cache).
    pub fn new(cache_capacity: usize) -> Self {
        Self {
            trie: RwLock::new(Trie {
                root: Node::new(),
                len: 0,
                next_seq: 0,
            }),
            generation: AtomicU64::new(0),
            cache: MatchCache::new(cache_capacity),
            empty: Arc::from(Vec::new()),
        }
    }

    /// Adds (pattern, key) -> value. Returns false if this key already had
    /// this exact pattern (value not changed).
    pub fn insert(&self, pattern: &Pattern, key: u64, value: V) -> bool {
        let mut guard = self.write();
        let Trie {
            root,
            len,
            next_seq,
        } = &mut *guard;
        let mut node = root;
        for segment in pattern.segments() {
            node = node.child_or_insert(segment);
        }
        // If the key is present the path already existed, so the early
        // return leaves no new empty nodes behind.
        if node.subs.contains_key(&key) {
            return false;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        node.subs.insert(
            key,
            Subscription {
                seq: *next_seq,
                value,
            },
        );
        *next_seq += 1;
        *len += 1;
        true
    }

    /// Removes (pattern, key). Returns whether it was present.
    pub fn remove(&self, pattern: &Pattern, key: u64) -> bool {
        let removed = {
            let mut guard = self.write();
            let removed = guard.root.remove(pattern.segments(), key);
            if removed.is_some() {
                self.generation.fetch_add(1, Ordering::SeqCst);
                guard.len -= 1;
            }
            removed
        };
        // The value is dropped here, after the lock is released: dropping a
        // subscriber handle may do work that should not stall publishers.
        removed.is_some()
    }

    /// All values whose patterns match `channel`, each key at most once (a
    /// connection with overlapping patterns gets an event once), in
    /// ascending key order.
    ///
    /// When a key has several matching patterns with different values, the
    /// value of its most recently inserted matching subscription is used.
    pub fn matches(&self, channel: &ChannelName) -> Arc<[V]> {
        let name = channel.as_str();
        // (No let-chains here: the crate's MSRV, 1.85, predates them.)
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.get(name, self.generation.load(Ordering::SeqCst)));
        if let Some(hit) = cached {
            return hit;
        }
        let (result, generation) = {
            let trie = self.read();
            // Read under the same read lock as the walk: writers only bump
            // the generation while holding the write lock, so the result is
            // never older than the generation it is cached under.
            let generation = self.generation.load(Ordering::SeqCst);
            (self.collect(&trie.root, channel), generation)
        };
        if let Some(cache) = &self.cache {
            cache.put(name, generation, Arc::clone(&result));
        }
        result
    }

    fn collect(&self, root: &Node<V>, channel: &ChannelName) -> Arc<[V]> {
        let segments: Vec<&str> = channel.segments().collect();
        let mut walk = Walk {
            segments: &segments,
            found: Vec::new(),
            double_stars: Vec::new(),
        };
        walk.visit(root, 0);
        let mut found = walk.found;
        if found.is_empty() {
            return Arc::clone(&self.empty);
        }
        // Ascending key; for one key, the newest subscription first, so that
        // `dedup_by_key` (which keeps the first of a run) keeps it.
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        found.dedup_by_key(|f| f.0);
        found
            .into_iter()
            .map(|(_, _, value)| value.clone())
            .collect()
    }

    /// Number of (pattern, key) subscriptions.
    pub fn len(&self) -> usize {
        self.read().len
    }

    /// True when there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every subscribed pattern with its number of keys (subscribers), in
    /// no particular order. Walks the whole trie under the read lock: for
    /// monitoring on request, not for the publish path.
    pub fn pattern_counts(&self) -> Vec<(String, usize)> {
        fn walk<V>(node: &Node<V>, path: &mut Vec<String>, out: &mut Vec<(String, usize)>) {
            if !node.subs.is_empty() {
                out.push((path.join(":"), node.subs.len()));
            }
            let children = node
                .literals
                .iter()
                .map(|(text, child)| (text.to_string(), child))
                .chain(node.star.as_deref().map(|c| ("*".to_string(), c)))
                .chain(node.double_star.as_deref().map(|c| ("**".to_string(), c)))
                .chain(
                    node.globs
                        .iter()
                        .map(|g| (g.glob.text().to_string(), &g.node)),
                );
            for (segment, child) in children {
                path.push(segment);
                walk(child, path, out);
                path.pop();
            }
        }
        let trie = self.read();
        let mut out = Vec::new();
        walk(&trie.root, &mut Vec::new(), &mut out);
        out
    }
}

impl<V> fmt::Debug for SubscriptionIndex<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.read().len;
        f.debug_struct("SubscriptionIndex")
            .field("len", &len)
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .field(
                "cache_capacity",
                &self.cache.as_ref().map_or(0, MatchCache::capacity),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
