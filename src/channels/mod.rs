//! TEMPORARY naive stand-in, replaced by the real module.
#![allow(missing_docs, unreachable_pub)]
pub mod manager;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameLimits {
    pub max_bytes: usize,
    pub max_segments: usize,
}
impl Default for NameLimits {
    fn default() -> Self {
        NameLimits {
            max_bytes: 255,
            max_segments: 16,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("invalid: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ChannelName(String);
fn ok_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.@/+=-".contains(c)
}
impl ChannelName {
    pub fn parse(s: &str, l: &NameLimits) -> Result<ChannelName, ChannelError> {
        if s.is_empty()
            || s.len() > l.max_bytes
            || s.split(':').count() > l.max_segments
            || s.split(':')
                .any(|g| g.is_empty() || !g.chars().all(ok_char))
        {
            return Err(ChannelError::Invalid(s.into()));
        }
        Ok(ChannelName(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl std::fmt::Display for ChannelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct Pattern {
    src: String,
    segs: Vec<Seg>,
}
#[derive(Debug, Clone)]
enum Seg {
    Lit(String),
    Star,
    Double,
    Glob(String, globset::GlobMatcher),
}
impl PartialEq for Pattern {
    fn eq(&self, o: &Self) -> bool {
        self.src == o.src
    }
}
impl Eq for Pattern {}
impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.src.hash(h)
    }
}
impl Pattern {
    pub fn parse(s: &str, l: &NameLimits) -> Result<Pattern, ChannelError> {
        if s.is_empty() || s.len() > l.max_bytes || s.split(':').count() > l.max_segments {
            return Err(ChannelError::Invalid(s.into()));
        }
        let mut segs = Vec::new();
        for g in s.split(':') {
            if g.is_empty() {
                return Err(ChannelError::Invalid(s.into()));
            }
            segs.push(if g == "*" {
                Seg::Star
            } else if g == "**" {
                Seg::Double
            } else if g.chars().all(ok_char) {
                Seg::Lit(g.into())
            } else {
                if g.contains("**") || !g.chars().all(|c| ok_char(c) || "*?[]{},!^".contains(c)) {
                    return Err(ChannelError::Invalid(s.into()));
                }
                let m = globset::GlobBuilder::new(g)
                    .literal_separator(false)
                    .backslash_escape(false)
                    .build()
                    .map_err(|e| ChannelError::Invalid(e.to_string()))?
                    .compile_matcher();
                Seg::Glob(g.into(), m)
            });
        }
        Ok(Pattern {
            src: s.into(),
            segs,
        })
    }
    pub fn as_str(&self) -> &str {
        &self.src
    }
    pub fn matches(&self, c: &ChannelName) -> bool {
        let cs: Vec<&str> = c.0.split(':').collect();
        m(&self.segs, &cs)
    }
    pub fn covers(&self, o: &Pattern) -> bool {
        cov(&self.segs, &o.segs)
    }
}
fn m(p: &[Seg], c: &[&str]) -> bool {
    match p.first() {
        None => c.is_empty(),
        Some(Seg::Double) => (0..=c.len()).any(|k| m(&p[1..], &c[k..])),
        Some(s) => {
            !c.is_empty()
                && match s {
                    Seg::Lit(l) => l == c[0],
                    Seg::Star => true,
                    Seg::Glob(_, g) => g.is_match(c[0]),
                    Seg::Double => false,
                }
                && m(&p[1..], &c[1..])
        }
    }
}
fn cov(a: &[Seg], b: &[Seg]) -> bool {
    match (a.first(), b.first()) {
        (None, None) => true,
        (Some(Seg::Double), _) => cov(&a[1..], b) || (!b.is_empty() && cov(a, &b[1..])),
        (None, _) | (_, None) => false,
        (Some(x), Some(y)) => {
            (match (x, y) {
                (_, Seg::Double) => false,
                (Seg::Star, _) => true,
                (Seg::Lit(p), Seg::Lit(q)) => p == q,
                (Seg::Glob(_, g), Seg::Lit(q)) => g.is_match(q),
                (Seg::Glob(p, _), Seg::Glob(q, _)) => p == q,
                _ => false,
            }) && cov(&a[1..], &b[1..])
        }
    }
}

pub struct SubscriptionIndex<V> {
    subs: RwLock<Vec<(Pattern, u64, V)>>,
}
impl<V: Clone + Send + Sync + 'static> SubscriptionIndex<V> {
    pub fn new(_cap: usize) -> Self {
        SubscriptionIndex {
            subs: RwLock::new(Vec::new()),
        }
    }
    pub fn insert(&self, p: &Pattern, k: u64, v: V) -> bool {
        let mut s = self.subs.write().unwrap();
        if s.iter().any(|(q, kk, _)| q == p && *kk == k) {
            return false;
        }
        s.push((p.clone(), k, v));
        true
    }
    pub fn remove(&self, p: &Pattern, k: u64) -> bool {
        let mut s = self.subs.write().unwrap();
        let n = s.len();
        s.retain(|(q, kk, _)| !(q == p && *kk == k));
        n != s.len()
    }
    pub fn matches(&self, c: &ChannelName) -> Arc<[V]> {
        let s = self.subs.read().unwrap();
        let mut r = BTreeMap::new();
        for (p, k, v) in s.iter() {
            if p.matches(c) {
                r.insert(*k, v.clone());
            }
        }
        r.into_values().collect()
    }
    pub fn len(&self) -> usize {
        self.subs.read().unwrap().len()
    }
}
