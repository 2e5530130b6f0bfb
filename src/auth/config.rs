//! The `[auth]` and `[permissions]` sections of the configuration: how
//! tokens are checked and what each client type may do. Defined here, beside
//! the code that applies them; [`crate::config`] gathers them into the whole
//! configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ClientType;

/// Token verification settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The only JWT algorithm accepted (`HS256`, `RS256`, `ES256`, `EdDSA`).
    /// Tokens signed with any other algorithm, including `none`, are refused.
    pub algorithm: String,
    /// HS256 shared secret. When empty (and no `secret_file`), a random secret
    /// is generated and kept in `<data_dir>/secret` so tokens survive restarts.
    pub secret: Option<String>,
    /// File holding the HS256 secret, as an alternative to `secret`.
    pub secret_file: Option<PathBuf>,
    /// PEM public key for RS256 / ES256 / EdDSA.
    pub public_key_file: Option<PathBuf>,
    /// Name of the claim that carries the client type, so tokens from an
    /// existing identity provider can use their own claim name.
    pub client_type_claim: String,
    /// When set, the `aud` claim must contain this value.
    pub audience: Option<String>,
    /// When set, the `iss` claim must equal this value.
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
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
