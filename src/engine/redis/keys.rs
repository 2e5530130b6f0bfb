//! Names in Redis: keys, pub/sub channels, and how a chanhub pattern becomes
//! a Redis subscription.
//!
//! Every event goes to the pub/sub channel `<prefix>ev:<channel>`. A node
//! subscribes to what its own connections want: a literal pattern becomes a
//! `SUBSCRIBE` of that one channel; a wildcard pattern a `PSUBSCRIBE` of a
//! Redis glob that matches *at least* the same channels (Redis's `*` also
//! crosses `:`, and it has no `{a,b}`), so the node re-filters what arrives
//! with its own subscription index, as it does for local publishes.

use crate::channels::Pattern;

/// One Redis subscription of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum RedisSub {
    /// `SUBSCRIBE` of one channel.
    Channel(String),
    /// `PSUBSCRIBE` of a glob.
    Pattern(String),
}

/// The Redis names of one cluster (one key prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `redis.key_prefix`.
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// The pub/sub channel events of `channel` are published to.
    pub(crate) fn events(&self, channel: &str) -> String {
        format!("{}ev:{channel}", self.prefix)
    }

    /// The stream holding `channel`'s history (entry id `<offset>-0`).
    pub(crate) fn stream(&self, channel: &str) -> String {
        format!("{}hist:{channel}", self.prefix)
    }

    /// The hash holding `channel`'s history epoch and newest offset.
    pub(crate) fn meta(&self, channel: &str) -> String {
        format!("{}meta:{channel}", self.prefix)
    }

    /// Where a node announces queued tasks, so idle workers anywhere look.
    pub(crate) fn wake(&self) -> String {
        format!("{}wake", self.prefix)
    }

    /// Messages for one node (for its connections, or its workers' tasks).
    pub(crate) fn node(&self, node: u64) -> String {
        format!("{}node:{node:016x}", self.prefix)
    }

    /// The Redis subscription that receives (at least) every event matching
    /// `pattern`.
    pub(crate) fn subscription(&self, pattern: &Pattern) -> RedisSub {
        let text = pattern.as_str();
        if pattern.is_literal() {
            return RedisSub::Channel(self.events(text));
        }
        let mut glob = format!("{}ev:", self.prefix);
        let segments: Vec<&str> = text.split(':').collect();
        for (i, segment) in segments.iter().enumerate() {
            if *segment == "**" {
                // Zero or more segments: `a:**` also matches `a`, so the
                // colon before it is not required either.
                if i > 0 {
                    glob.pop();
                }
                glob.push('*');
                return RedisSub::Pattern(glob);
            }
            if is_plain(segment) {
                escape_into(&mut glob, segment);
            } else {
                glob.push('*');
            }
            glob.push(':');
        }
        glob.pop();
        RedisSub::Pattern(glob)
    }
}

/// A segment without glob syntax.
fn is_plain(segment: &str) -> bool {
    !segment.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// Appends `text`, escaping what Redis globs treat specially.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::NameLimits;

    fn sub(pattern: &str) -> RedisSub {
        let limits = NameLimits {
            max_bytes: 255,
            max_segments: 16,
        };
        Keys::new("p:").subscription(&Pattern::parse(pattern, &limits).expect("pattern"))
    }

    #[test]
    fn literal_patterns_subscribe_one_channel() {
        assert_eq!(
            sub("session:42"),
            RedisSub::Channel("p:ev:session:42".into())
        );
    }

    #[test]
    fn wildcards_become_wider_globs() {
        assert_eq!(sub("session:*"), RedisSub::Pattern("p:ev:session:*".into()));
        assert_eq!(sub("a:*:c"), RedisSub::Pattern("p:ev:a:*:c".into()));
        assert_eq!(sub("a:{x,y}:c"), RedisSub::Pattern("p:ev:a:*:c".into()));
        assert_eq!(sub("a:b?"), RedisSub::Pattern("p:ev:a:*".into()));
        assert_eq!(sub("task:**"), RedisSub::Pattern("p:ev:task*".into()));
        assert_eq!(sub("**"), RedisSub::Pattern("p:ev:*".into()));
        assert_eq!(sub("a:**:z"), RedisSub::Pattern("p:ev:a*".into()));
    }
}
