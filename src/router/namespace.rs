//! Namespaces: per-channel options chosen by pattern in the config
//! (`[[namespaces]]`): history, presence, join/leave events, publish grants
//! and a subscriber limit.
//!
//! # Which namespace a channel is in
//!
//! A channel takes the options of the **most specific** namespace whose
//! pattern matches it; a channel outside every namespace has none of the
//! features (no history, no presence). Specificity compares, in order:
//!
//! 1. the longer **literal prefix** (leading segments without wildcards)
//!    wins: `session:42:**` beats `session:*:log` for `session:42:log`;
//! 2. then **more literal segments** in total: `a:**:end` beats `a:*:*`;
//! 3. then **fewer `**` segments**: `session:*` beats `session:**`;
//! 4. then **fewer `*` segments** (a glob such as `{eu,us}` or `v?` is
//!    more specific than `*`);
//! 5. then the namespace **listed first** in the config.
//!
//! The answer for a channel is cached (the namespaces are fixed at start),
//! so a publish pays one cache lookup, or nothing when no namespace is
//! configured.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::ClientType;
use crate::channels::Segment;
use crate::channels::{ChannelName, NameLimits, Pattern, SubscriptionIndex};
use crate::error::ConfigError;

/// Largest `history_size` accepted: a bound on the memory one channel may
/// hold.
pub(crate) const MAX_HISTORY_SIZE: usize = 100_000;

/// One `[[namespaces]]` entry of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// The channels it applies to, in the channel pattern grammar.
    pub pattern: String,
    /// Events kept per channel for `history` and recovery; 0 = no history.
    #[serde(default)]
    pub history_size: usize,
    /// How long an event is kept; required with `history_size`.
    #[serde(default, with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Track who is subscribed (`presence`, `presence:stats`).
    #[serde(default)]
    pub presence: bool,
    /// Send `join` / `leave` to subscribers; needs `presence`.
    #[serde(default)]
    pub join_leave: bool,
    /// Client types that may publish here even though their permission
    /// table does not allow it (a token can still narrow this).
    #[serde(default)]
    pub allow_publish_by: Vec<ClientType>,
    /// Most connections subscribed to one channel by name; absent = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscribers: Option<usize>,
}

/// History limits of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryLimits {
    /// Events kept per channel.
    pub size: usize,
    /// Longest an event is kept.
    pub ttl: Duration,
}

/// A namespace, validated and compiled.
#[derive(Debug)]
pub(crate) struct Namespace {
    /// Its pattern.
    pub pattern: Pattern,
    /// `Some` when its channels keep history.
    pub history: Option<HistoryLimits>,
    /// Whether subscribers are tracked for `presence`.
    pub presence: bool,
    /// Whether subscribers get `join` / `leave`.
    pub join_leave: bool,
    /// Client types granted publishing here.
    pub allow_publish_by: Vec<ClientType>,
    /// Most subscribers by name per channel.
    pub max_subscribers: Option<usize>,
    /// Precomputed specificity; greater is more specific.
    rank: Rank,
}

/// Specificity as a sortable key; see the module docs for the rule.
type Rank = (usize, usize, Reverse<usize>, Reverse<usize>, Reverse<usize>);

impl Namespace {
    fn new(config: &NamespaceConfig, order: usize, pattern: Pattern) -> Namespace {
        let segments = pattern.segments();
        let literal = |s: &Segment| matches!(s, Segment::Literal(_));
        let prefix = segments.iter().take_while(|s| literal(s)).count();
        let literals = segments.iter().filter(|s| literal(s)).count();
        let double = segments
            .iter()
            .filter(|s| matches!(s, Segment::DoubleStar))
            .count();
        let star = segments
            .iter()
            .filter(|s| matches!(s, Segment::Star))
            .count();
        Namespace {
            history: (config.history_size > 0).then_some(HistoryLimits {
                size: config.history_size,
                ttl: config.history_ttl,
            }),
            presence: config.presence,
            join_leave: config.join_leave,
            allow_publish_by: config.allow_publish_by.clone(),
            max_subscribers: config.max_subscribers,
            rank: (
                prefix,
                literals,
                Reverse(double),
                Reverse(star),
                Reverse(order),
            ),
            pattern,
        }
    }

    /// Whether the hub keeps per-channel state for this namespace's
    /// channels: history, the members for presence, or a subscriber count.
    pub(crate) fn tracks_channels(&self) -> bool {
        self.history.is_some() || self.presence || self.max_subscribers.is_some()
    }

    /// Whether `client_type` may publish here beyond its permission table.
    pub(crate) fn allows_publish_by(&self, client_type: ClientType) -> bool {
        self.allow_publish_by.contains(&client_type)
    }
}

/// Every configured namespace, and the channel → namespace lookup.
pub(crate) struct Namespaces {
    /// In config order.
    list: Vec<Arc<Namespace>>,
    /// Namespace patterns in the subscription trie, keyed by config order,
    /// so a lookup walks the trie once and then hits its match cache.
    index: SubscriptionIndex<Arc<Namespace>>,
    /// The first segment of every pattern, when all of them are literal: a
    /// channel whose first segment is none of these is in no namespace, and
    /// is answered without touching the cache (the common case of a busy
    /// channel outside every namespace then costs a few comparisons).
    first_segments: Option<Vec<Arc<str>>>,
}

impl Namespaces {
    /// No namespaces: every channel gets the defaults.
    pub(crate) fn none() -> Namespaces {
        Namespaces {
            list: Vec::new(),
            index: SubscriptionIndex::new(0),
            first_segments: None,
        }
    }

    /// Compiles validated config; `cache` channels are remembered.
    pub(crate) fn new(
        configs: &[NamespaceConfig],
        limits: &NameLimits,
        cache: usize,
    ) -> Result<Namespaces, ConfigError> {
        validate(configs, limits)?;
        let index = SubscriptionIndex::new(cache);
        let mut list = Vec::with_capacity(configs.len());
        for (order, config) in configs.iter().enumerate() {
            let pattern = parse_pattern(order, config, limits)?;
            let namespace = Arc::new(Namespace::new(config, order, pattern));
            index.insert(&namespace.pattern, order as u64, Arc::clone(&namespace));
            list.push(namespace);
        }
        let first_segments = list
            .iter()
            .map(|ns| match ns.pattern.segments().first() {
                Some(Segment::Literal(text)) => Some(Arc::clone(text)),
                _ => None,
            })
            .collect();
        Ok(Namespaces {
            list,
            index,
            first_segments,
        })
    }

    /// Whether no namespace is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The namespaces, in config order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Namespace>> {
        self.list.iter()
    }

    /// The most specific namespace matching `channel`, if any.
    pub(crate) fn resolve(&self, channel: &ChannelName) -> Option<Arc<Namespace>> {
        if self.list.is_empty() {
            return None;
        }
        if let Some(firsts) = &self.first_segments {
            let name = channel.as_str();
            let first = name.split_once(':').map_or(name, |(first, _)| first);
            if !firsts.iter().any(|f| **f == *first) {
                return None;
            }
        }
        let hits = self.index.matches(channel);
        hits.iter().max_by_key(|ns| ns.rank).cloned()
    }
}

impl std::fmt::Debug for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|n| n.pattern.as_str()))
            .finish()
    }
}

fn parse_pattern(
    order: usize,
    config: &NamespaceConfig,
    limits: &NameLimits,
) -> Result<Pattern, ConfigError> {
    Pattern::parse(&config.pattern, limits).map_err(|e| ConfigError::Invalid {
        key: format!("namespaces[{order}].pattern"),
        problem: format!("{:?}: {e}", config.pattern),
    })
}

/// Checks `[[namespaces]]`; errors name the key, e.g.
/// `namespaces[1].history_ttl`.
pub(crate) fn validate(
    configs: &[NamespaceConfig],
    limits: &NameLimits,
) -> Result<(), ConfigError> {
    let mut seen: Vec<Pattern> = Vec::with_capacity(configs.len());
    for (i, config) in configs.iter().enumerate() {
        let invalid = |field: &str, problem: String| {
            Err(ConfigError::Invalid {
                key: format!("namespaces[{i}].{field}"),
                problem,
            })
        };
        let pattern = parse_pattern(i, config, limits)?;
        if let Some(j) = seen.iter().position(|p| *p == pattern) {
            return invalid(
                "pattern",
                format!(
                    "{:?} is already the pattern of namespaces[{j}]",
                    config.pattern
                ),
            );
        }
        seen.push(pattern);
        if config.history_size > MAX_HISTORY_SIZE {
            return invalid(
                "history_size",
                format!("must be at most {MAX_HISTORY_SIZE}"),
            );
        }
        if config.history_size > 0 && config.history_ttl.is_zero() {
            return invalid(
                "history_ttl",
                "must be greater than zero when history_size is set".into(),
            );
        }
        if config.history_size == 0 && !config.history_ttl.is_zero() {
            return invalid(
                "history_ttl",
                "is set but history_size is 0 (no history is kept)".into(),
            );
        }
        if config.join_leave && !config.presence {
            return invalid("join_leave", "needs presence = true".into());
        }
        if config.max_subscribers == Some(0) {
            return invalid(
                "max_subscribers",
                "must be at least 1 (leave it out for no limit)".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn ns(pattern: &str) -> NamespaceConfig {
        NamespaceConfig {
            pattern: pattern.into(),
            history_size: 0,
            history_ttl: Duration::ZERO,
            presence: false,
            join_leave: false,
            allow_publish_by: Vec::new(),
            max_subscribers: None,
        }
    }

    fn table(patterns: &[&str]) -> Namespaces {
        let configs: Vec<_> = patterns.iter().map(|p| ns(p)).collect();
        Namespaces::new(&configs, &NameLimits::default(), 16).expect("valid")
    }

    fn winner(table: &Namespaces, channel: &str) -> Option<String> {
        let channel = ChannelName::parse(channel, &NameLimits::default()).expect("valid");
        table
            .resolve(&channel)
            .map(|n| n.pattern.as_str().to_string())
    }

    #[test]
    fn the_most_specific_namespace_wins_whatever_the_order() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["session:**", "session:*"], "session:42", "session:*"),
            (&["session:**", "session:42"], "session:42", "session:42"),
            (
                &["session:*:log", "session:42:**"],
                "session:42:log",
                "session:42:**",
            ),
            (&["a:*:*", "a:**:end"], "a:x:end", "a:**:end"),
            (&["**", "*:log"], "a:log", "*:log"),
            (
                &["region:*:x", "region:{eu,us}:x"],
                "region:eu:x",
                "region:{eu,us}:x",
            ),
            (&["**", "session:**"], "task:1", "**"),
        ];
        for (patterns, channel, expected) in cases {
            let mut reversed = patterns.to_vec();
            reversed.reverse();
            for order in [patterns.to_vec(), reversed] {
                assert_eq!(
                    winner(&table(&order), channel).as_deref(),
                    Some(*expected),
                    "{order:?} for {channel}"
                );
            }
        }
    }

    #[test]
    fn the_first_segment_prefilter_agrees_with_the_trie() {
        // All literal first segments: the prefilter is on.
        let t = table(&["session:**", "room:*"]);
        assert!(t.first_segments.is_some());
        assert_eq!(winner(&t, "session").as_deref(), Some("session:**"));
        assert_eq!(winner(&t, "sessions:1"), None);
        assert_eq!(winner(&t, "task:1"), None);
        // A leading wildcard turns it off; results stay the same.
        let t = table(&["*:log", "room:*"]);
        assert!(t.first_segments.is_none());
        assert_eq!(winner(&t, "task:log").as_deref(), Some("*:log"));
        assert_eq!(winner(&t, "room:log").as_deref(), Some("room:*"));
        assert_eq!(winner(&t, "task:1"), None);
    }

    #[test]
    fn ties_go_to_the_first_listed() {
        let t = table(&["{a,b}:x", "[ab]:x"]);
        assert_eq!(winner(&t, "a:x").as_deref(), Some("{a,b}:x"));
        let t = table(&["[ab]:x", "{a,b}:x"]);
        assert_eq!(winner(&t, "a:x").as_deref(), Some("[ab]:x"));
    }

    #[test]
    fn channels_outside_every_namespace_get_none() {
        let t = table(&["session:*"]);
        assert_eq!(winner(&t, "session:1:log"), None);
        assert_eq!(winner(&t, "task:1"), None);
        assert_eq!(winner(&Namespaces::none(), "task:1"), None);
        // Repeated lookups (the cached path) agree.
        assert_eq!(winner(&t, "session:1").as_deref(), Some("session:*"));
        assert_eq!(winner(&t, "session:1").as_deref(), Some("session:*"));
    }

    #[test]
    fn config_file_namespaces_parse_and_resolve() {
        let config = Config::from_toml(
            r#"
[[namespaces]]
pattern = "session:**"
history_size = 100
history_ttl = "5m"

[[namespaces]]
pattern = "room:*"
presence = true
join_leave = true
allow_publish_by = ["browser", "worker"]
max_subscribers = 50
"#,
        )
        .expect("valid");
        let t = Namespaces::new(&config.namespaces, &config.name_limits(), 16).expect("valid");
        let room = ChannelName::parse("room:7", &config.name_limits()).expect("valid");
        let room = t.resolve(&room).expect("a namespace");
        assert!(room.presence && room.join_leave && room.history.is_none());
        assert!(room.allows_publish_by(ClientType::Browser));
        assert!(!room.allows_publish_by(ClientType::Hub));
        assert_eq!(room.max_subscribers, Some(50));
        let session = ChannelName::parse("session:1:x", &config.name_limits()).expect("valid");
        let session = t.resolve(&session).expect("a namespace");
        assert_eq!(
            session.history,
            Some(HistoryLimits {
                size: 100,
                ttl: Duration::from_secs(300)
            })
        );
    }

    #[test]
    fn invalid_namespaces_name_the_key() {
        let cases = [
            ("pattern = \"a::b\"", "namespaces[0].pattern"),
            (
                "pattern = \"a\"\nhistory_size = 10",
                "namespaces[0].history_ttl",
            ),
            (
                "pattern = \"a\"\nhistory_ttl = \"1m\"",
                "namespaces[0].history_ttl",
            ),
            (
                "pattern = \"a\"\nhistory_size = 1000000\nhistory_ttl = \"1m\"",
                "namespaces[0].history_size",
            ),
            (
                "pattern = \"a\"\njoin_leave = true",
                "namespaces[0].join_leave",
            ),
            (
                "pattern = \"a\"\nmax_subscribers = 0",
                "namespaces[0].max_subscribers",
            ),
            (
                "pattern = \"a\"\nallow_publish_by = [\"admin\"]",
                "allow_publish_by",
            ),
            ("pattern = \"a\"\nhistory = 5", "history"),
            ("history_size = 5", "pattern"),
        ];
        for (body, key) in cases {
            let err = Config::from_toml(&format!("[[namespaces]]\n{body}\n"))
                .expect_err(body)
                .to_string();
            assert!(err.contains(key), "{body}: {err}");
        }
        let err = Config::from_toml(
            "[[namespaces]]\npattern = \"a:*\"\n[[namespaces]]\npattern = \"a:*\"\n",
        )
        .expect_err("duplicate")
        .to_string();
        assert!(err.contains("namespaces[1].pattern"), "{err}");
    }
}
