//! Configuration: one serde tree with a default for every option, read from an
//! optional TOML file and then `CHANHUB_*` environment variables, and validated
//! once at start so a bad value fails with the key's name instead of surfacing
//! later as odd behaviour.
//!
//! Environment variables map onto keys with `__` between levels:
//! `CHANHUB_LISTEN=127.0.0.1:9000`, `CHANHUB_LIMITS__MAX_CONNECTIONS=500`,
//! `CHANHUB_AUTH__SECRET=...`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::auth::{AuthConfig, PermissionsConfig, TypePermissions};
use crate::auth::{ClientType, Verifier};
pub use crate::calls::config::CallsConfig;
use crate::channels::{NameLimits, Pattern};
pub use crate::engine::config::{EngineKind, RedisConfig};
use crate::error::ConfigError;
pub use crate::federation::config::{FederationConfig, PeerConfig, Strategy};
pub use crate::limits::{ConnectRateConfig, MessageRateConfig};
pub use crate::router::namespace::NamespaceConfig;
pub use crate::tasks::config::{RetryConfig, RetryRule, TasksConfig};

/// The whole configuration of a hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP/WebSocket listener binds. Loopback by default so a hub
    /// started with no configuration is not reachable from the network.
    pub listen: SocketAddr,
    /// Where the generated token secret (and later, durable state) lives.
    /// Empty means the platform data directory (`$XDG_DATA_HOME/chanhub`,
    /// `~/.local/share/chanhub`).
    pub data_dir: Option<PathBuf>,
    /// Token verification.
    pub auth: AuthConfig,
    /// Per-connection and per-hub limits.
    pub limits: LimitsConfig,
    /// WebSocket keepalive.
    pub websocket: WebSocketConfig,
    /// SSE endpoint behaviour.
    pub sse: SseConfig,
    /// What each client type may do; tokens can only narrow this.
    pub permissions: PermissionsConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Log output.
    pub log: LogConfig,
    /// Task queueing, leases and retries.
    pub tasks: TasksConfig,
    /// Request/reply calls: timeouts and wait queues.
    pub calls: CallsConfig,
    /// `GET /metrics`.
    pub metrics: MetricsConfig,
    /// Per-channel options by pattern: history, presence, publish grants
    /// (`[[namespaces]]`; the most specific match wins).
    pub namespaces: Vec<NamespaceConfig>,
    /// Links to peer hubs.
    pub federation: FederationConfig,
    /// Where cross-node state lives: `memory` (one node) or `redis`
    /// (a cluster of nodes sharing one Redis).
    pub engine: EngineKind,
    /// How to reach Redis when `engine = "redis"`.
    pub redis: RedisConfig,
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// When set, `GET /metrics` needs `Authorization: Bearer <key>`, so a
    /// hub listening beyond loopback does not show its traffic to anyone.
    pub key: Option<String>,
}

/// Per-connection and per-hub limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest inbound WebSocket message; bigger ones close the connection with 1009.
    pub max_frame_bytes: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Concurrent connections (WebSocket + SSE); the next upgrade gets HTTP
    /// 503. Unset: the process's open-file limit (raised to its hard
    /// limit at start) less 512 descriptors kept for everything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Events queued for one connection before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// Consecutive bad frames (invalid JSON, unknown type, binary) tolerated
    /// before the connection is closed.
    pub max_bad_frames: u32,
    /// Longest channel name or pattern, in bytes.
    pub max_channel_bytes: usize,
    /// Most segments in a channel name or pattern.
    pub max_channel_segments: usize,
    /// Channel patterns in one SSE request.
    pub max_sse_patterns: usize,
    /// Entries in the subscription index's match cache.
    pub match_cache: usize,
    /// WebSocket connections that have not authenticated yet; beyond it an
    /// upgrade gets HTTP 503.
    pub max_unauthenticated: usize,
    /// Frames per window one connection may send, by client type.
    pub messages: MessageRateConfig,
    /// Connection attempts per window from one IP address.
    pub connect: ConnectRateConfig,
}

/// WebSocket keepalive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// A connection silent for this long is sent a WebSocket ping.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A connection silent for this long is closed (4011). Must exceed the interval.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// While the hub's threads are saturated, an event for an idle
    /// connection (WebSocket or SSE) waits for the next batch (2 ms up to
    /// this interval, as long as the load needs, while the hub keeps up) or
    /// the next tick of this interval (while it falls behind), and the
    /// connection writes all that queued meanwhile at once; zero: always
    /// wake connections at once. See `src/pacing.rs`.
    #[serde(with = "humantime_serde")]
    pub coalesce_interval: Duration,
}

/// SSE endpoint behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// Interval of `:keepalive` comments, which keep proxies from closing idle streams.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
}

/// Graceful shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long shutdown waits for connections to close before giving up on them.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `chanhub=debug`. `RUST_LOG` wins when set.
    pub level: String,
}

impl Verifier {
    /// Builds a verifier from the whole configuration (see
    /// [`Verifier::new`]).
    pub fn from_config(config: &Config) -> Result<Verifier, ConfigError> {
        Verifier::new(
            &config.auth,
            &config.permissions,
            config.name_limits(),
            &config.data_dir(),
        )
    }
}

/// The port chanhub listens on when nothing says otherwise.
pub const DEFAULT_PORT: u16 = 7070;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            data_dir: None,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            websocket: WebSocketConfig::default(),
            sse: SseConfig::default(),
            permissions: PermissionsConfig::default(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
            tasks: TasksConfig::default(),
            calls: CallsConfig::default(),
            metrics: MetricsConfig::default(),
            namespaces: Vec::new(),
            federation: FederationConfig::default(),
            engine: EngineKind::Memory,
            redis: RedisConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 64 * 1024,
            max_subscriptions: 1000,
            max_connections: None,
            outbound_queue: 1024,
            max_bad_frames: 10,
            max_channel_bytes: 255,
            max_channel_segments: 16,
            max_sse_patterns: 100,
            match_cache: 65_536,
            max_unauthenticated: 1000,
            messages: MessageRateConfig::default(),
            connect: ConnectRateConfig::default(),
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(60),
            coalesce_interval: Duration::from_millis(50),
        }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            keepalive: Duration::from_secs(30),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period: Duration::from_secs(10),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

impl Config {
    /// The HS256 token secret: configured, or kept in the data directory
    /// (created on first use).
    pub fn token_secret(&self) -> Result<Vec<u8>, ConfigError> {
        crate::auth::load_or_create_secret(&self.auth, &self.data_dir())
    }

    /// Loads defaults, then `file` (when given), then `CHANHUB_*` variables,
    /// and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config".into(),
                    problem: format!("file {} does not exist", path.display()),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only variables naming a top-level option are configuration; others
        // that share the prefix (say, a script's CHANHUB_TOKEN) are ignored.
        // Typos below the top level still fail with the key named.
        let sections = top_level_keys();
        figment = figment.merge(
            Env::prefixed("CHANHUB_")
                .filter(move |key| {
                    let top = key.as_str().split("__").next().unwrap_or("");
                    sections.iter().any(|s| s.eq_ignore_ascii_case(top))
                })
                .split("__"),
        );
        let config: Config = figment.extract().map_err(ConfigError::from_figment)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document on top of the defaults (no environment), for tests
    /// and embedders.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(ConfigError::from_figment)?;
        config.validate()?;
        Ok(config)
    }

    /// `[[auth.keys]]` and the JWKS settings. (The key files are read when
    /// the hub starts, by `auth::Verifier`.)
    fn validate_keys(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, problem: String| Err(ConfigError::Invalid { key, problem });
        let mut kids = std::collections::HashSet::new();
        for (i, key) in self.auth.keys.iter().enumerate() {
            let at = format!("auth.keys[{i}]");
            if key.kid.is_empty() {
                return invalid(format!("{at}.kid"), "must not be empty".into());
            }
            if !kids.insert(key.kid.as_str()) {
                return invalid(
                    format!("{at}.kid"),
                    format!("{:?} is used by an earlier key", key.kid),
                );
            }
            let material = [
                key.secret.is_some(),
                key.secret_file.is_some(),
                key.public_key_file.is_some(),
            ];
            let problem = match key.algorithm.as_str() {
                "HS256" if key.public_key_file.is_some() => {
                    Some("an HS256 key takes secret or secret_file, not public_key_file")
                }
                "HS256" if material.iter().filter(|m| **m).count() != 1 => {
                    Some("an HS256 key needs exactly one of secret, secret_file")
                }
                "HS256" if key.secret.as_deref() == Some("") => Some("secret must not be empty"),
                "RS256" | "ES256" | "EdDSA" if key.public_key_file.is_none() => {
                    Some("needs public_key_file (a PEM public key)")
                }
                "RS256" | "ES256" | "EdDSA"
                    if key.secret.is_some() || key.secret_file.is_some() =>
                {
                    Some("a public-key algorithm takes public_key_file, not a secret")
                }
                "HS256" | "RS256" | "ES256" | "EdDSA" => None,
                _ => {
                    return invalid(
                        format!("{at}.algorithm"),
                        format!(
                            "{:?} is not one of HS256, RS256, ES256, EdDSA",
                            key.algorithm
                        ),
                    );
                }
            };
            if let Some(problem) = problem {
                return invalid(at, format!("kid {:?}: {problem}", key.kid));
            }
        }
        if let Some(url) = &self.auth.jwks_url {
            match url::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                Ok(_) => {
                    return invalid(
                        "auth.jwks_url".into(),
                        format!("{url:?} is not an http:// or https:// URL"),
                    );
                }
                Err(e) => return invalid("auth.jwks_url".into(), format!("{url:?}: {e}")),
            }
        }
        if self.auth.jwks_refresh_interval.is_zero() {
            return invalid(
                "auth.jwks_refresh_interval".into(),
                "must be greater than zero".into(),
            );
        }
        if self.auth.jwks_min_refetch > self.auth.jwks_refresh_interval {
            return invalid(
                "auth.jwks_min_refetch".into(),
                format!(
                    "must not exceed auth.jwks_refresh_interval ({})",
                    humantime::format_duration(self.auth.jwks_refresh_interval)
                ),
            );
        }
        Ok(())
    }

    /// Checks relations between values that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                problem,
            })
        };
        match self.auth.algorithm.as_str() {
            "HS256" => {}
            "RS256" | "ES256" | "EdDSA" => {
                if self.auth.public_key_file.is_none() {
                    return invalid(
                        "auth.public_key_file",
                        format!("required when auth.algorithm = {:?}", self.auth.algorithm),
                    );
                }
            }
            other => {
                return invalid(
                    "auth.algorithm",
                    format!("{other:?} is not one of HS256, RS256, ES256, EdDSA"),
                );
            }
        }
        if self.auth.secret.as_deref() == Some("") {
            return invalid("auth.secret", "must not be empty when set".into());
        }
        self.validate_keys()?;
        if self.metrics.key.as_deref() == Some("") {
            return invalid("metrics.key", "must not be empty when set".into());
        }
        if self.auth.client_type_claim.is_empty() {
            return invalid("auth.client_type_claim", "must not be empty".into());
        }
        if crate::auth::OTHER_CLAIMS.contains(&self.auth.client_type_claim.as_str()) {
            return invalid(
                "auth.client_type_claim",
                format!(
                    "{:?} is a claim with another meaning; name the claim that carries the client type",
                    self.auth.client_type_claim
                ),
            );
        }
        if self.auth.leeway > crate::auth::MAX_LEEWAY {
            return invalid(
                "auth.leeway",
                format!(
                    "must be at most {}",
                    humantime::format_duration(crate::auth::MAX_LEEWAY)
                ),
            );
        }
        if self.auth.timeout.is_zero() {
            return invalid("auth.timeout", "must be greater than zero".into());
        }
        let positive = [
            ("limits.max_frame_bytes", self.limits.max_frame_bytes),
            ("limits.max_subscriptions", self.limits.max_subscriptions),
            (
                "limits.max_connections",
                self.limits.max_connections.unwrap_or(1),
            ),
            ("limits.outbound_queue", self.limits.outbound_queue),
            ("limits.max_channel_bytes", self.limits.max_channel_bytes),
            (
                "limits.max_channel_segments",
                self.limits.max_channel_segments,
            ),
            ("limits.max_sse_patterns", self.limits.max_sse_patterns),
            (
                "limits.max_unauthenticated",
                self.limits.max_unauthenticated,
            ),
            (
                "limits.messages.close_after",
                self.limits.messages.close_after as usize,
            ),
            ("auth.max_token_bytes", self.auth.max_token_bytes),
        ];
        for (key, value) in positive {
            if value == 0 {
                return invalid(key, "must be greater than zero".into());
            }
        }
        if self.limits.messages.window.is_zero() {
            return invalid("limits.messages.window", "must be greater than zero".into());
        }
        if self.limits.connect.window.is_zero() {
            return invalid("limits.connect.window", "must be greater than zero".into());
        }
        if self.websocket.ping_interval.is_zero() {
            return invalid(
                "websocket.ping_interval",
                "must be greater than zero".into(),
            );
        }
        if self.websocket.ping_timeout <= self.websocket.ping_interval {
            return invalid(
                "websocket.ping_timeout",
                format!(
                    "must exceed websocket.ping_interval ({})",
                    humantime::format_duration(self.websocket.ping_interval)
                ),
            );
        }
        if self.websocket.coalesce_interval > Duration::from_secs(10) {
            return invalid(
                "websocket.coalesce_interval",
                "must be at most 10s (0 turns coalescing off)".into(),
            );
        }
        if self.sse.keepalive.is_zero() {
            return invalid("sse.keepalive", "must be greater than zero".into());
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            return invalid(
                "log.format",
                format!("{:?} is not one of human, json", self.log.format),
            );
        }
        let limits = self.name_limits();
        self.validate_tasks(&limits)?;
        self.calls.validate()?;
        crate::router::namespace::validate(&self.namespaces, &limits)?;
        self.federation.validate(&limits)?;
        if self.engine == EngineKind::Redis {
            self.redis.validate()?;
        }
        for client_type in ClientType::ALL {
            let perms = self.permissions.for_type(client_type);
            for (field, list) in [
                ("subscribe_channels", &perms.subscribe_channels),
                ("publish_channels", &perms.publish_channels),
                ("call_methods", &perms.call_methods),
                ("serve_methods", &perms.serve_methods),
            ] {
                for pattern in list {
                    if let Err(e) = Pattern::parse(pattern, &limits) {
                        return invalid(
                            &format!("permissions.{client_type}.{field}"),
                            format!("{pattern:?}: {e}"),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_tasks(&self, limits: &NameLimits) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                problem,
            })
        };
        let tasks = &self.tasks;
        if tasks.max_queued == 0 {
            return invalid("tasks.max_queued", "must be greater than zero".into());
        }
        if tasks.default_timeout.is_zero() {
            return invalid("tasks.default_timeout", "must be greater than zero".into());
        }
        if tasks.default_max_attempts == 0 {
            return invalid("tasks.default_max_attempts", "must be at least 1".into());
        }
        if tasks.max_slots == 0 {
            return invalid("tasks.max_slots", "must be at least 1".into());
        }
        let rules = std::iter::once(("tasks.retry".to_string(), &tasks.retry)).chain(
            tasks
                .retry_by_type
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("tasks.retry_by_type[{i}]"), &r.retry)),
        );
        for (key, retry) in rules {
            if !(0.0..=1.0).contains(&retry.jitter) {
                return invalid(
                    &format!("{key}.jitter"),
                    "must be between 0.0 and 1.0".into(),
                );
            }
            if retry.max < retry.initial {
                return invalid(&format!("{key}.max"), "must be at least initial".into());
            }
        }
        for (i, rule) in tasks.retry_by_type.iter().enumerate() {
            if let Err(e) = Pattern::parse(&rule.pattern, limits) {
                return invalid(
                    &format!("tasks.retry_by_type[{i}].pattern"),
                    format!("{:?}: {e}", rule.pattern),
                );
            }
        }
        Ok(())
    }

    /// The channel name limits from `limits`.
    pub fn name_limits(&self) -> NameLimits {
        NameLimits {
            max_bytes: self.limits.max_channel_bytes,
            max_segments: self.limits.max_channel_segments,
        }
    }

    /// The data directory, resolved to the platform default when unset.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("chanhub");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home).join(".local/share/chanhub");
        }
        PathBuf::from(".chanhub")
    }
}

/// The names of the top-level options, from the defaults themselves so a new
/// section needs no list to be kept in step.
fn top_level_keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// The configuration file printed by `chanhub config`: every option with its
/// default and a comment. A test checks that it parses to the defaults.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("config_default.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_default_file_equals_defaults() {
        let parsed = Config::from_toml(DEFAULT_CONFIG_TOML).expect("default file parses");
        let defaults = Config::default();
        assert_eq!(
            serde_json::to_value(&parsed).expect("serializes"),
            serde_json::to_value(&defaults).expect("serializes")
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[limits]\nmax_conections = 5\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("max_conections"), "{text}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Config::from_toml("[limits]\nmax_connections = \"many\"\n").unwrap_err();
        assert!(err.to_string().contains("limits.max_connections"), "{err}");
    }

    #[test]
    fn ping_timeout_must_exceed_interval() {
        let err =
            Config::from_toml("[websocket]\nping_interval = \"30s\"\nping_timeout = \"10s\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("websocket.ping_timeout"), "{err}");
    }

    #[test]
    fn bad_permission_pattern_is_named() {
        let err = Config::from_toml("[permissions.browser]\nsubscribe_channels = [\"a::b\"]\n")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("permissions.browser.subscribe_channels"),
            "{err}"
        );
    }

    #[test]
    fn asymmetric_algorithm_needs_a_key() {
        let err = Config::from_toml("[auth]\nalgorithm = \"RS256\"\n").unwrap_err();
        assert!(err.to_string().contains("auth.public_key_file"), "{err}");
        let err = Config::from_toml("[auth]\nalgorithm = \"none\"\n").unwrap_err();
        assert!(err.to_string().contains("auth.algorithm"), "{err}");
    }

    #[test]
    fn key_entries_are_checked() {
        let cases = [
            (
                "[[auth.keys]]\nkid = \"\"\nalgorithm = \"HS256\"\nsecret = \"s\"\n",
                "auth.keys[0].kid",
            ),
            (
                "[[auth.keys]]\nkid = \"a\"\nalgorithm = \"HS256\"\nsecret = \"s\"\n\
                 [[auth.keys]]\nkid = \"a\"\nalgorithm = \"HS256\"\nsecret = \"t\"\n",
                "auth.keys[1].kid",
            ),
            (
                "[[auth.keys]]\nkid = \"a\"\nalgorithm = \"PS256\"\n",
                "auth.keys[0].algorithm",
            ),
            (
                "[[auth.keys]]\nkid = \"a\"\nalgorithm = \"RS256\"\nsecret = \"s\"\n",
                "auth.keys[0]",
            ),
            (
                "[[auth.keys]]\nkid = \"a\"\nalgorithm = \"HS256\"\n",
                "auth.keys[0]",
            ),
            (
                "[auth]\njwks_url = \"ftp://id.example.com/keys\"\n",
                "auth.jwks_url",
            ),
            (
                "[auth]\njwks_refresh_interval = \"10s\"\njwks_min_refetch = \"1m\"\n",
                "auth.jwks_min_refetch",
            ),
        ];
        for (toml, key) in cases {
            let err = Config::from_toml(toml).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
        let ok = Config::from_toml(
            "[auth]\njwks_url = \"https://id.example.com/.well-known/jwks.json\"\n\
             [[auth.keys]]\nkid = \"2025\"\nalgorithm = \"HS256\"\nsecret = \"s\"\n",
        )
        .expect("valid");
        assert_eq!(ok.auth.keys[0].kid, "2025");
    }

    /// Found by the `config` fuzz target's property twin: a leeway past
    /// the current Unix time made the token check compute `now - leeway`
    /// below zero (a panic per token in a debug build; in release every
    /// token refused as expired), and a huge one overflowed adding it to
    /// a connection's expiry.
    #[test]
    fn leeway_is_bounded() {
        let err = Config::from_toml("[auth]\nsecret = \"s\"\nleeway = \"100years\"\n").unwrap_err();
        assert!(err.to_string().contains("auth.leeway"), "{err}");
        let ok = Config::from_toml("[auth]\nsecret = \"s\"\nleeway = \"1day\"\n").expect("a day");
        let verifier = Verifier::from_config(&ok).expect("verifier");
        let key = crate::auth::SigningKey::for_config(&ok.auth, &ok.data_dir(), None, None)
            .expect("signing key");
        let claims = crate::auth::TokenClaims {
            sub: "a".into(),
            exp: crate::protocol::now_ms() / 1000 + 60,
            iat: None,
            client_type: ClientType::Hub,
            channels: None,
            publish: None,
            capabilities: None,
            max_slots: None,
            call: None,
            serve: None,
        };
        let token = crate::auth::mint_for(&ok.auth, &key, &claims).expect("mints");
        assert_eq!(verifier.verify(&token).expect("accepted").sub, "a");
    }

    /// Found by the same twin: with `client_type_claim = "sub"` a token
    /// minted by the hub itself carried the client type as its subject
    /// (every hub token named `hub`); `exp`, `aud`, `iss` and chanhub's
    /// own claims have other meanings too, so none can carry the type.
    #[test]
    fn client_type_claim_cannot_be_another_claim() {
        for name in [
            "sub",
            "exp",
            "nbf",
            "iat",
            "jti",
            "aud",
            "iss",
            "channels",
            "permissions",
        ] {
            let err = Config::from_toml(&format!("[auth]\nclient_type_claim = \"{name}\"\n"))
                .unwrap_err();
            assert!(
                err.to_string().contains("auth.client_type_claim"),
                "{name}: {err}"
            );
        }
        for name in [
            "role",
            "roles",
            "https://example.com/client_type",
            "chanhub.client_type",
        ] {
            Config::from_toml(&format!("[auth]\nclient_type_claim = \"{name}\"\n"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn default_permission_table() {
        let p = PermissionsConfig::default();
        assert!(p.browser.subscribe && !p.browser.publish && !p.browser.task_submit);
        assert!(!p.browser.task_receive && !p.browser.task_complete && !p.browser.federate);
        assert!(p.worker.subscribe && !p.worker.publish && !p.worker.task_submit);
        assert!(p.worker.task_receive && p.worker.task_complete && !p.worker.federate);
        assert!(p.hub.subscribe && p.hub.publish && p.hub.task_submit);
        assert!(!p.hub.task_receive && !p.hub.task_complete && p.hub.federate);
    }
}
