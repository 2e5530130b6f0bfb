//! The `[federation]` configuration: who this hub is to its peers, which
//! peers it links to, what may cross each link, and how tasks are handed
//! out. Validated with the rest of [`Config`](crate::Config).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::channels::{NameLimits, Pattern};
use crate::error::ConfigError;

/// Federation with other hubs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// This hub's stable id. Unset: generated once and kept in
    /// `<data_dir>/hub_id`. Two linked hubs must not share it.
    pub hub_id: Option<String>,
    /// The name peers know this hub by (their `[[federation.peers]] name`).
    /// Unset: the hub id.
    pub name: Option<String>,
    /// Region, sent in `hub:hello` and shown to peers.
    pub region: Option<String>,
    /// Free-form labels, sent in `hub:hello`.
    pub labels: BTreeMap<String, String>,
    /// Most links an event or a task may cross; also bounds how far
    /// interest and capacity are advertised.
    pub max_hops: u32,
    /// Events remembered per hub to drop ones that arrive twice (over two
    /// paths of a mesh). Bounded: the oldest are forgotten first.
    pub dedup_window: usize,
    /// A link silent this long is sent a `hub:ping` (which also measures
    /// latency and carries this hub's health).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A link silent this long is closed and redialed.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Longest a dial (connect, authenticate, hello) may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Changes of interest and capacity are gathered this long before
    /// peers are told, so a burst of subscriptions is one message.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
    /// First reconnect delay ceiling; doubled per failed attempt
    /// (exponential backoff with full jitter).
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Largest reconnect delay ceiling.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Frames queued for one link before it counts as a slow peer and is
    /// dropped (and redialed).
    pub link_queue: usize,
    /// A task whose capable local workers are all busy is forwarded to a
    /// peer once it has waited this long (at once when no local worker
    /// has the capability).
    #[serde(with = "humantime_serde")]
    pub task_wait: Duration,
    /// How a peer is chosen for a forwarded task.
    pub strategy: Strategy,
    /// The peers.
    pub peers: Vec<PeerConfig>,
}

/// How a task is forwarded when several peers could run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Highest `priority`; among equals the healthiest (lowest latency).
    Priority,
    /// At random, in proportion to `weight`.
    Weighted,
    /// Most free slots, then lowest latency.
    LeastLoaded,
    /// In turn.
    RoundRobin,
}

/// One peer hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's name (its `federation.name`); an accepted link is
    /// matched to its entry by the name in its `hub:hello`.
    pub name: String,
    /// `ws://` or `wss://` URL of the peer's `/ws`. Unset: this hub does
    /// not dial; it only accepts the peer's link.
    #[serde(default)]
    pub url: Option<String>,
    /// A hub token the peer issued (client type `hub`, permission
    /// `federate`). Required with `url` unless `token_file` is set.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding that token, read before every dial (for rotation).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Channel patterns whose events may go to this peer. Empty: none.
    #[serde(default)]
    pub export: Vec<String>,
    /// Channel patterns whose events are accepted from this peer. Empty: none.
    #[serde(default)]
    pub import: Vec<String>,
    /// Method patterns the peer may call on this hub's servers. Empty: none.
    #[serde(default)]
    pub call_export: Vec<String>,
    /// Method patterns this hub may call on the peer's servers (when no
    /// server of its own serves them). Empty: none.
    #[serde(default)]
    pub call_import: Vec<String>,
    /// Preference of the `priority` strategy; higher first.
    #[serde(default)]
    pub priority: u32,
    /// Share of the `weighted` strategy; 0 never chosen by it.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The peer's region, for operators.
    #[serde(default)]
    pub region: Option<String>,
    /// Free-form labels, for operators.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            hub_id: None,
            name: None,
            region: None,
            labels: BTreeMap::new(),
            max_hops: 8,
            dedup_window: 65_536,
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            debounce: Duration::from_millis(50),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            link_queue: 4096,
            task_wait: Duration::from_secs(2),
            strategy: Strategy::Priority,
            peers: Vec::new(),
        }
    }
}

/// Whether `id` can be a hub id: 1–64 of `A-Z a-z 0-9 _ . -`.
pub(crate) fn valid_hub_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl FederationConfig {
    /// Checks what serde cannot.
    pub(crate) fn validate(&self, limits: &NameLimits) -> Result<(), ConfigError> {
        let invalid = |key: String, problem: String| Err(ConfigError::Invalid { key, problem });
        if let Some(id) = &self.hub_id {
            if !valid_hub_id(id) {
                return invalid(
                    "federation.hub_id".into(),
                    "must be 1-64 of A-Z a-z 0-9 _ . -".into(),
                );
            }
        }
        if self.name.as_deref() == Some("") {
            return invalid(
                "federation.name".into(),
                "must not be empty when set".into(),
            );
        }
        if self.max_hops == 0 {
            return invalid("federation.max_hops".into(), "must be at least 1".into());
        }
        for (key, value) in [
            ("federation.dedup_window", self.dedup_window),
            ("federation.link_queue", self.link_queue),
        ] {
            if value == 0 {
                return invalid(key.into(), "must be greater than zero".into());
            }
        }
        for (key, value) in [
            ("federation.ping_interval", self.ping_interval),
            ("federation.connect_timeout", self.connect_timeout),
            ("federation.reconnect_max", self.reconnect_max),
        ] {
            if value.is_zero() {
                return invalid(key.into(), "must be greater than zero".into());
            }
        }
        if self.ping_timeout <= self.ping_interval {
            return invalid(
                "federation.ping_timeout".into(),
                "must exceed federation.ping_interval".into(),
            );
        }
        if self.reconnect_max < self.reconnect_initial {
            return invalid(
                "federation.reconnect_max".into(),
                "must be at least reconnect_initial".into(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let key = |field: &str| format!("federation.peers[{i}].{field}");
            if peer.name.is_empty() {
                return invalid(key("name"), "must not be empty".into());
            }
            if !names.insert(peer.name.as_str()) {
                return invalid(key("name"), format!("{:?} is listed twice", peer.name));
            }
            if let Some(url) = &peer.url {
                match url::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "ws" | "wss") => {}
                    Ok(u) => {
                        return invalid(
                            key("url"),
                            format!("scheme {:?} is not ws or wss", u.scheme()),
                        );
                    }
                    Err(e) => return invalid(key("url"), format!("{url:?}: {e}")),
                }
                if peer.token.is_none() && peer.token_file.is_none() {
                    return invalid(
                        key("token"),
                        "a peer with a url needs token or token_file (a hub token the peer issued)"
                            .into(),
                    );
                }
            }
            if peer.token.as_deref() == Some("") {
                return invalid(key("token"), "must not be empty when set".into());
            }
            for (field, list) in [
                ("export", &peer.export),
                ("import", &peer.import),
                ("call_export", &peer.call_export),
                ("call_import", &peer.call_import),
            ] {
                for pattern in list {
                    if let Err(e) = Pattern::parse(pattern, limits) {
                        return invalid(key(field), format!("{pattern:?}: {e}"));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn peers_parse_with_defaults() {
        let config = Config::from_toml(
            r#"
            [federation]
            name = "a"
            [[federation.peers]]
            name = "b"
            url = "ws://127.0.0.1:7071/ws"
            token = "t"
            export = ["session:**"]
            "#,
        )
        .expect("valid");
        let peer = &config.federation.peers[0];
        assert_eq!(peer.weight, 1);
        assert_eq!(peer.priority, 0);
        assert!(peer.import.is_empty());
        assert_eq!(config.federation.max_hops, 8);
    }

    #[test]
    fn bad_peers_are_named() {
        let cases = [
            (
                "[[federation.peers]]\nname = \"b\"\nurl = \"http://x/ws\"\ntoken = \"t\"\n",
                "url",
            ),
            (
                "[[federation.peers]]\nname = \"b\"\nurl = \"ws://x/ws\"\n",
                "token",
            ),
            (
                "[[federation.peers]]\nname = \"b\"\nexport = [\"a::b\"]\n",
                "export",
            ),
            (
                "[[federation.peers]]\nname = \"b\"\n[[federation.peers]]\nname = \"b\"\n",
                "name",
            ),
            ("[federation]\nhub_id = \"a b\"\n", "federation.hub_id"),
            ("[federation]\nmax_hops = 0\n", "federation.max_hops"),
        ];
        for (toml, key) in cases {
            let err = Config::from_toml(toml).expect_err(toml).to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }
}
