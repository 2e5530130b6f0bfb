//! The `[auth]` and `[permissions]` sections of the configuration: how
//! tokens are checked and what each client type may do. Defined here, beside
//! the code that applies them; [`crate::config`] gathers them into the whole
//! configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ClientType;

/// Token verification settings.
///
/// Keys come from up to three places: the `[auth]` key itself
/// (`algorithm` with `secret` / `secret_file` / `public_key_file`), static
/// keys selected by `kid` (`keys`), and an identity provider's JWKS
/// (`jwks_url`). See [`AuthConfig::uses_auth_key`] for when the first one
/// is in use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The algorithm of the `[auth]` key (`HS256`, `RS256`, `ES256`,
    /// `EdDSA`). A token checked against that key must name it in `alg`;
    /// any other, including `none`, is refused.
    pub algorithm: String,
    /// HS256 shared secret. When empty (and no `secret_file`), a random secret
    /// is generated and kept in `<data_dir>/secret` so tokens survive restarts.
    pub secret: Option<String>,
    /// File holding the HS256 secret, as an alternative to `secret`.
    pub secret_file: Option<PathBuf>,
    /// PEM public key for RS256 / ES256 / EdDSA.
    pub public_key_file: Option<PathBuf>,
    /// Static keys selected by the token's `kid` header (`[[auth.keys]]`),
    /// e.g. the old and the new key during a planned rotation.
    pub keys: Vec<KeyConfig>,
    /// An identity provider's JWKS endpoint (Keycloak, Auth0, Entra, …).
    /// Fetched at start, then every `jwks_refresh_interval`, and again when
    /// a token names a `kid` the cached set lacks (at most once per
    /// `jwks_min_refetch`). When a fetch fails the cached set stays in use.
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again, so keys the provider retired
    /// stop verifying.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// The least time between two fetches of the JWKS, so tokens with
    /// made-up `kid`s cannot make the hub hammer the provider.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refetch: Duration,
    /// Name of the claim that carries the client type, so tokens from an
    /// existing identity provider can use their own claim name: a
    /// top-level name (`role`, `https://example.com/client_type`), else a
    /// dotted path into nested objects (`chanhub.client_type`). The value
    /// is a string, or an array of strings of which exactly one is a client
    /// type (a `roles` claim). Not a claim that means something else
    /// (`sub`, `exp`, `aud`, `channels`, …).
    pub client_type_claim: String,
    /// When set, the `aud` claim must contain this value.
    pub audience: Option<String>,
    /// When set, the `iss` claim must equal this value.
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`; at most a day.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Time a new connection has to present a token before it is closed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Accept `?token=` in the URL (browsers cannot set headers on WebSocket
    /// or EventSource requests). Disable when URLs end up in proxy logs.
    pub allow_query_token: bool,
    /// Static API keys for the HTTP API (`/api/publish`), for operators and
    /// backends without a token. Treated like a hub.
    pub admin_keys: Vec<String>,
    /// Longest token accepted, in bytes; bigger ones are refused before parsing.
    pub max_token_bytes: usize,
}

/// One static verification key, selected by the token's `kid` header
/// (`[[auth.keys]]`). The key material is given as for the `[auth]` key:
/// `secret` or `secret_file` for HS256, `public_key_file` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id tokens name in their `kid` header.
    pub kid: String,
    /// `HS256`, `RS256`, `ES256` or `EdDSA`; a token whose `alg` differs
    /// is refused.
    pub algorithm: String,
    /// HS256 shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// File holding the HS256 secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// PEM public key for RS256 / ES256 / EdDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

impl AuthConfig {
    /// Whether the `[auth]` key verifies tokens: when its material is
    /// configured (`secret`, `secret_file` or `public_key_file`), or when
    /// there is no other key source (`keys`, `jwks_url`) — then the HS256
    /// secret kept in the data directory is used, as it always was. A hub
    /// pointed at an identity provider thus trusts no locally generated
    /// secret unless told to.
    pub fn uses_auth_key(&self) -> bool {
        self.secret.is_some()
            || self.secret_file.is_some()
            || self.public_key_file.is_some()
            || (self.keys.is_empty() && self.jwks_url.is_none())
    }

    /// The key that checks a token without `kid`: the `[auth]` key when it
    /// is in use, else the one `[[auth.keys]]` entry when there is exactly
    /// one and no JWKS; otherwise none, and such a token is refused
    /// (`unknown_key`) rather than guessed at.
    pub fn default_key(&self) -> Option<KeySource<'_>> {
        if self.uses_auth_key() {
            return Some(KeySource::Auth);
        }
        match self.keys.as_slice() {
            [only] if self.jwks_url.is_none() => Some(KeySource::Entry(only)),
            _ => None,
        }
    }
}

/// Which configured key: the `[auth]` key or a `[[auth.keys]]` entry.
#[derive(Debug, Clone, Copy)]
pub enum KeySource<'a> {
    /// The `[auth]` key.
    Auth,
    /// A `[[auth.keys]]` entry.
    Entry(&'a KeyConfig),
}

/// What each client type may do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermissionsConfig {
    /// Browsers (UIs).
    pub browser: TypePermissions,
    /// Workers.
    pub worker: TypePermissions,
    /// Hubs: trusted backends and peer chanhubs.
    pub hub: TypePermissions,
}

/// The permissions of one client type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TypePermissions {
    /// May subscribe to channels.
    pub subscribe: bool,
    /// May publish (broadcast) events.
    pub publish: bool,
    /// May submit tasks.
    pub task_submit: bool,
    /// May register as a worker and receive tasks.
    pub task_receive: bool,
    /// May report task progress and completion.
    pub task_complete: bool,
    /// May federate as a peer hub.
    pub federate: bool,
    /// Patterns this type may subscribe to.
    pub subscribe_channels: Vec<String>,
    /// Channels this type may publish to.
    pub publish_channels: Vec<String>,
    /// May call methods.
    pub call: bool,
    /// May serve methods (answer calls).
    pub serve: bool,
    /// Method patterns this type may call.
    pub call_methods: Vec<String>,
    /// Method patterns this type may serve.
    pub serve_methods: Vec<String>,
}

impl TypePermissions {
    /// The default table for a client type.
    pub fn default_for(client_type: ClientType) -> Self {
        let everything = vec!["**".to_string()];
        let (publish, task_submit, task_receive, federate) = match client_type {
            ClientType::Browser => (false, false, false, false),
            ClientType::Worker => (false, false, true, false),
            ClientType::Hub => (true, true, false, true),
        };
        TypePermissions {
            subscribe: true,
            publish,
            task_submit,
            task_receive,
            task_complete: task_receive,
            federate,
            subscribe_channels: everything.clone(),
            publish_channels: everything.clone(),
            call: true,
            serve: client_type != ClientType::Browser,
            call_methods: everything.clone(),
            serve_methods: everything,
        }
    }
}

impl Default for PermissionsConfig {
    fn default() -> Self {
        PermissionsConfig {
            browser: TypePermissions::default_for(ClientType::Browser),
            worker: TypePermissions::default_for(ClientType::Worker),
            hub: TypePermissions::default_for(ClientType::Hub),
        }
    }
}

impl Default for TypePermissions {
    fn default() -> Self {
        TypePermissions::default_for(ClientType::Browser)
    }
}

impl PermissionsConfig {
    /// The permissions configured for one client type.
    pub fn for_type(&self, client_type: ClientType) -> &TypePermissions {
        match client_type {
            ClientType::Browser => &self.browser,
            ClientType::Worker => &self.worker,
            ClientType::Hub => &self.hub,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: "HS256".into(),
            secret: None,
            secret_file: None,
            public_key_file: None,
            keys: Vec::new(),
            jwks_url: None,
            jwks_refresh_interval: Duration::from_secs(600),
            jwks_min_refetch: Duration::from_secs(30),
            client_type_claim: "client_type".into(),
            audience: None,
            issuer: None,
            leeway: Duration::ZERO,
            timeout: Duration::from_secs(10),
            allow_query_token: true,
            admin_keys: Vec::new(),
            max_token_bytes: 8 * 1024,
        }
    }
}
