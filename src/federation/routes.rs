//! What each hub wants and offers, as heard over each link: the pure logic
//! of interest and capacity propagation, kept free of I/O so its rules are
//! testable on their own.
//!
//! Every hub advertises an entry about itself — its local subscribers'
//! patterns (`hub:interest`), its workers' capacity (`hub:capacity`) —
//! stamped with a version that only grows. A hub passes on what it heard
//! about other hubs to its other links, one hop further. Three rules keep
//! this finite in any topology (chain, ring, mesh):
//!
//! - **versions**: for each origin only entries of the newest version seen
//!   count, so an old copy still travelling around a ring cannot revive
//!   interest the origin has dropped;
//! - **split horizon**: what was heard over a link is never advertised
//!   back over it;
//! - **hop limit**: an entry is passed on only while the origin stays
//!   within `max_hops` links, so the entries of a hub that went away die
//!   out even in a ring (each round trip adds a hop) instead of counting
//!   to infinity.
//!
//! A hub sends an advert only when it differs from the last one sent, so
//! the exchange stops once every hub has the same view.

use std::collections::{BTreeMap, HashMap};

use crate::channels::Pattern;

/// One origin's entry as heard over one link.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Route<P> {
    /// The origin's version.
    pub(crate) version: u64,
    /// Links between the origin and the hub that sent it, minus one
    /// (0: the sender is the origin).
    pub(crate) hops: u32,
    /// The advertised content.
    pub(crate) payload: P,
}

/// Entries per link and origin, plus the newest version seen per origin.
#[derive(Debug)]
pub(crate) struct Table<P> {
    /// Link id → origin hub id → entry.
    heard: HashMap<u64, HashMap<String, Route<P>>>,
    /// Origin → newest version seen over any link.
    latest: HashMap<String, u64>,
}

impl<P: Clone + PartialEq> Table<P> {
    pub(crate) fn new() -> Self {
        Table {
            heard: HashMap::new(),
            latest: HashMap::new(),
        }
    }

    /// Records an entry heard over `link`. Returns whether anything that
    /// counts changed. An entry older than the newest version known for
    /// the origin is ignored.
    pub(crate) fn hear(&mut self, link: u64, origin: &str, route: Route<P>) -> bool {
        let latest = self.latest.entry(origin.to_string()).or_insert(0);
        if route.version < *latest {
            return false;
        }
        let newer = route.version > *latest;
        *latest = route.version;
        let entries = self.heard.entry(link).or_default();
        let changed = entries.get(origin) != Some(&route);
        entries.insert(origin.to_string(), route);
        if newer {
            // Other links' entries for this origin are stale now.
            for (other, entries) in &mut self.heard {
                if *other != link {
                    entries.remove(origin);
                }
            }
        }
        changed || newer
    }

    /// Forgets `origin` as heard over `link`.
    pub(crate) fn withdraw(&mut self, link: u64, origin: &str) -> bool {
        let removed = self
            .heard
            .get_mut(&link)
            .is_some_and(|entries| entries.remove(origin).is_some());
        if removed {
            self.forget_if_unheard(origin);
        }
        removed
    }

    /// Forgets everything heard over `link`.
    pub(crate) fn drop_link(&mut self, link: u64) -> bool {
        let Some(entries) = self.heard.remove(&link) else {
            return false;
        };
        for origin in entries.keys() {
            self.forget_if_unheard(origin);
        }
        !entries.is_empty()
    }

    /// Once no link has an entry for `origin`, its version is forgotten
    /// too, so an origin whose clock went back is heard again when it
    /// returns.
    fn forget_if_unheard(&mut self, origin: &str) {
        if !self.heard.values().any(|e| e.contains_key(origin)) {
            self.latest.remove(origin);
        }
    }

    /// Current entries heard over `link` whose origin is within the hop
    /// limit of this hub.
    pub(crate) fn via(&self, link: u64, max_hops: u32) -> Vec<(&str, &Route<P>)> {
        self.heard
            .get(&link)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|(_, r)| r.hops < max_hops)
                    .map(|(o, r)| (o.as_str(), r))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What to tell `link` about other hubs: for every origin heard over
    /// another link, that origin's entries (one per link it was heard on)
    /// and the hop count to advertise — the smallest heard plus one, and
    /// only when it stays below `max_hops`. The origin `skip` (the peer
    /// itself) is left out.
    pub(crate) fn others(
        &self,
        link: u64,
        skip: &str,
        max_hops: u32,
    ) -> BTreeMap<String, (u64, u32, Vec<&P>)> {
        let mut out: BTreeMap<String, (u64, u32, Vec<&P>)> = BTreeMap::new();
        for (other, entries) in &self.heard {
            if *other == link {
                continue;
            }
            for (origin, route) in entries {
                let hops = route.hops + 1;
                if origin == skip || hops >= max_hops {
                    continue;
                }
                let slot = out
                    .entry(origin.clone())
                    .or_insert((route.version, hops, Vec::new()));
                slot.1 = slot.1.min(hops);
                slot.2.push(&route.payload);
            }
        }
        out
    }
}

/// The part of `patterns` an allow-list lets through, as patterns:
/// a pattern covered by an allowed one stays; one that covers allowed
/// patterns is replaced by them; one that only overlaps an allowed pattern
/// stays (a superset: the per-event check decides). The result has no
/// duplicates and no pattern covered by another.
pub(crate) fn narrow(patterns: &[Pattern], allow: &[Pattern]) -> Vec<Pattern> {
    let mut out: Vec<Pattern> = Vec::new();
    for p in patterns {
        if allow.iter().any(|a| a.covers(p)) {
            out.push(p.clone());
            continue;
        }
        let mut overlaps = false;
        for a in allow {
            if p.covers(a) {
                out.push(a.clone());
            } else if intersects(p, a) {
                overlaps = true;
            }
        }
        if overlaps {
            out.push(p.clone());
        }
    }
    reduce(out)
}

/// Drops duplicates and patterns covered by another in the list. Quadratic,
/// so very long lists are only deduplicated.
pub(crate) fn reduce(mut patterns: Vec<Pattern>) -> Vec<Pattern> {
    patterns.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    patterns.dedup();
    if patterns.len() > 2000 {
        return patterns;
    }
    let keep: Vec<bool> = patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            !patterns
                .iter()
                .enumerate()
                .any(|(j, q)| i != j && q.covers(p) && !(p.covers(q) && j > i))
        })
        .collect();
    patterns
        .into_iter()
        .zip(keep)
        .filter_map(|(p, k)| k.then_some(p))
        .collect()
}

/// A shorter stand-in for an interest list too big for one frame: each
/// pattern becomes its first segment plus `:**` (or `**` when that segment
/// is not a plain name). A superset, so nothing wanted is lost; the
/// per-event checks still apply.
pub(crate) fn coarsen(patterns: &[String]) -> Vec<String> {
    let mut out: Vec<String> = patterns
        .iter()
        .map(|p| match p.split_once(':') {
            Some((first, _)) if is_plain(first) => format!("{first}:**"),
            None if is_plain(p) => p.clone(),
            _ => "**".to_string(),
        })
        .collect();
    if out.iter().any(|p| p == "**") {
        return vec!["**".to_string()];
    }
    out.sort();
    out.dedup();
    out
}

fn is_plain(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.@/+=-".contains(c))
}

/// Whether some channel matches both patterns (see [`Pattern::intersects`]).
pub(crate) fn intersects(a: &Pattern, b: &Pattern) -> bool {
    a.intersects(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::{ChannelName, NameLimits};

    fn p(s: &str) -> Pattern {
        Pattern::parse(s, &NameLimits::default()).expect("pattern")
    }

    fn ps(list: &[&str]) -> Vec<Pattern> {
        list.iter().map(|s| p(s)).collect()
    }

    fn texts(list: &[Pattern]) -> Vec<&str> {
        list.iter().map(Pattern::as_str).collect()
    }

    #[test]
    fn intersection() {
        let yes = [
            ("session:*", "*:42"),
            ("**", "a:b"),
            ("a:**", "**:b"),
            ("a:*:c", "a:b:*"),
            ("job-*", "job-7"),
            ("a:**", "a"),
        ];
        for (x, y) in yes {
            assert!(intersects(&p(x), &p(y)), "{x} {y}");
            assert!(intersects(&p(y), &p(x)), "{y} {x}");
        }
        let no = [
            ("session:*", "task:*"),
            ("a:*", "a"),
            ("a:b", "a:c"),
            ("job-*", "task"),
            ("a:*:c", "a:*:d:**"),
        ];
        for (x, y) in no {
            assert!(!intersects(&p(x), &p(y)), "{x} {y}");
            assert!(!intersects(&p(y), &p(x)), "{y} {x}");
        }
    }

    /// Against brute force over a small channel universe.
    #[test]
    fn intersection_matches_brute_force() {
        let limits = NameLimits::default();
        let segs = ["a", "b", "c"];
        let mut channels = Vec::new();
        for n in 1..=3 {
            let mut idx = vec![0; n];
            loop {
                let name: Vec<&str> = idx.iter().map(|&i| segs[i]).collect();
                channels.push(ChannelName::parse(&name.join(":"), &limits).expect("channel"));
                let mut k = 0;
                while k < n {
                    idx[k] += 1;
                    if idx[k] < segs.len() {
                        break;
                    }
                    idx[k] = 0;
                    k += 1;
                }
                if k == n {
                    break;
                }
            }
        }
        let patterns = [
            "a", "b", "*", "**", "a:*", "*:a", "a:**", "**:c", "*:*", "a:*:c", "*:b:**", "**:b",
            "a:b:c",
        ];
        for x in patterns {
            for y in patterns {
                let (px, py) = (p(x), p(y));
                let brute = channels.iter().any(|c| px.matches(c) && py.matches(c));
                // Within three segments of a, b, c a non-empty intersection
                // of these patterns always has a witness.
                assert_eq!(intersects(&px, &py), brute, "{x} {y}");
            }
        }
    }

    #[test]
    fn narrowing() {
        let allow = ps(&["session:**", "task:*"]);
        assert_eq!(texts(&narrow(&ps(&["session:*"]), &allow)), ["session:*"]);
        assert_eq!(
            texts(&narrow(&ps(&["**"]), &allow)),
            ["session:**", "task:*"]
        );
        assert!(narrow(&ps(&["chat:*"]), &allow).is_empty());
        // Overlap without cover: kept as is; the event check decides.
        assert_eq!(texts(&narrow(&ps(&["*:42"]), &allow)), ["*:42"]);
        assert!(narrow(&ps(&["session:*"]), &[]).is_empty());
    }

    #[test]
    fn coarsening_keeps_a_superset() {
        let list: Vec<String> = ["session:1", "session:2:x", "task:*", "alerts"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(coarsen(&list), ["alerts", "session:**", "task:**"]);
        assert_eq!(coarsen(&["{a,b}:x".to_string()]), ["**"]);
    }

    #[test]
    fn a_forgotten_origin_may_come_back_with_an_older_version() {
        let mut t = Table::new();
        t.hear(1, "h", route(9, 0, "x"));
        assert!(!t.hear(2, "h", route(5, 0, "old")));
        t.drop_link(1);
        assert!(t.hear(2, "h", route(5, 0, "restarted")), "clock went back");
    }

    #[test]
    fn reduce_drops_covered() {
        let out = reduce(ps(&["session:*", "session:42", "session:*", "**:x"]));
        assert_eq!(texts(&out), ["**:x", "session:*"]);
    }

    fn route(version: u64, hops: u32, payload: &str) -> Route<String> {
        Route {
            version,
            hops,
            payload: payload.to_string(),
        }
    }

    #[test]
    fn newer_versions_replace_and_stale_ones_are_ignored() {
        let mut t = Table::new();
        assert!(t.hear(1, "h", route(2, 0, "x")));
        assert!(!t.hear(1, "h", route(2, 0, "x")), "same entry: no change");
        assert!(t.hear(2, "h", route(2, 1, "y")));
        assert!(!t.hear(2, "h", route(1, 0, "old")), "older version ignored");
        assert!(t.hear(1, "h", route(3, 0, "z")));
        // The version-2 entry heard over link 2 is stale now.
        assert!(t.via(2, 8).is_empty());
        let others = t.others(2, "peer", 8);
        assert_eq!(others["h"].1, 1);
        assert_eq!(others["h"].2, vec![&"z".to_string()]);
    }

    #[test]
    fn split_horizon_and_hop_limit() {
        let mut t = Table::new();
        t.hear(1, "h", route(1, 0, "x"));
        assert!(t.others(1, "", 8).is_empty(), "never back over the link");
        assert_eq!(t.others(2, "", 8)["h"].1, 1);
        t.hear(1, "far", route(1, 7, "y"));
        assert!(!t.others(2, "", 8).contains_key("far"), "8 hops away");
        assert!(
            !t.others(2, "h", 8).contains_key("h"),
            "not about the peer itself"
        );
        assert!(t.drop_link(1));
        assert!(t.others(2, "", 8).is_empty());
    }

    /// A ring A-B-C: after the origin (attached to A) leaves, the copies
    /// circulating in the ring die out within the hop limit.
    #[test]
    fn entries_of_a_departed_origin_die_out_in_a_ring() {
        const MAX: u32 = 8;
        // Hub i's links: to hub (i+1)%3 is link id 10*i+(i+1)%3.
        let link = |from: usize, to: usize| (10 * from + to) as u64;
        let mut hubs: Vec<Table<String>> = (0..3).map(|_| Table::new()).collect();
        // The origin "o" hangs off hub 0 over link 99.
        hubs[0].hear(99, "o", route(1, 0, "x"));
        let neighbours = |i: usize| [(i + 1) % 3, (i + 2) % 3];
        let exchange = |hubs: &mut Vec<Table<String>>| {
            let mut changed = false;
            for i in 0..3 {
                for j in neighbours(i) {
                    let advert: Vec<(String, u64, u32, String)> = hubs[i]
                        .others(link(i, j), "", MAX)
                        .into_iter()
                        .map(|(o, (v, h, p))| (o, v, h, p[0].clone()))
                        .collect();
                    let at_j = link(j, i);
                    let mut known: Vec<String> = hubs[j]
                        .via(at_j, u32::MAX)
                        .iter()
                        .map(|(o, _)| o.to_string())
                        .collect();
                    for (origin, version, hops, payload) in advert {
                        known.retain(|o| *o != origin);
                        let r = route(version, hops, &payload);
                        changed |= hubs[j].hear(at_j, &origin, r);
                    }
                    for origin in known {
                        changed |= hubs[j].withdraw(at_j, &origin);
                    }
                }
            }
            changed
        };
        for _ in 0..4 {
            exchange(&mut hubs);
        }
        assert!(!hubs[1].via(link(1, 0), MAX).is_empty());
        hubs[0].drop_link(99);
        let mut rounds = 0;
        while exchange(&mut hubs) {
            rounds += 1;
            assert!(rounds < 50, "did not converge");
        }
        for (i, hub) in hubs.iter().enumerate() {
            for j in neighbours(i) {
                assert!(hub.via(link(i, j), u32::MAX).is_empty(), "hub {i}");
            }
        }
    }
}
