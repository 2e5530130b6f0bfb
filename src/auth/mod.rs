//! Who a client is and what it may do: JWT verification ([`Verifier`]), the
//! three client types, and [`Permissions`] — the configured table for a type,
//! narrowed by the token's claims — checked on every message.

pub mod config;
mod jwt;
mod permissions;

pub use config::{AuthConfig, PermissionsConfig, TypePermissions};
pub use jwt::{Identity, TokenClaims, Verifier, load_or_create_secret, mint};
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
