//! Who a client is and what it may do: JWT verification ([`Verifier`]) with
//! its keys (`keys.rs`: the `[auth]` key, `[[auth.keys]]` by `kid`, an
//! identity provider's JWKS, fetched by `jwks.rs` in the server build),
//! minting ([`mint_for`]), the three client types, and [`Permissions`] —
//! the configured table for a type, narrowed by the token's claims —
//! checked on every message.

pub mod config;
#[cfg(feature = "server")]
mod jwks;
mod jwt;
mod keys;
mod mint;
mod permissions;

pub use config::{AuthConfig, KeyConfig, KeySource, PermissionsConfig, TypePermissions};
pub use jwt::{Identity, Verifier};
#[cfg(feature = "server")]
pub(crate) use jwt::{MAX_LEEWAY, OTHER_CLAIMS};
pub use keys::load_or_create_secret;
pub use mint::{SigningError, SigningKey, TokenClaims, mint, mint_for};
pub use permissions::{Permission, Permissions, TypePolicy};

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The three kinds of client, named in the token's client type claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientType {
    /// A UI: subscribes and renders.
    Browser,
    /// Registers capabilities and runs tasks.
    Worker,
    /// A trusted backend or a peer chanhub: publishes, submits, federates.
    Hub,
}

impl ClientType {
    /// Every client type, in table order.
    pub const ALL: [ClientType; 3] = [ClientType::Browser, ClientType::Worker, ClientType::Hub];

    /// The claim value, e.g. `browser`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientType::Browser => "browser",
            ClientType::Worker => "worker",
            ClientType::Hub => "hub",
        }
    }
}

impl fmt::Display for ClientType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ClientType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "browser" => Ok(ClientType::Browser),
            "worker" => Ok(ClientType::Worker),
            "hub" => Ok(ClientType::Hub),
            other => Err(format!(
                "unknown client type {other:?} (expected browser, worker or hub)"
            )),
        }
    }
}
