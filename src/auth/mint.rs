//! Minting tokens. `chanhub token`, the CLI's own tokens, `POST /api/token`
//! and [`RunningHub::mint`](crate::embed::RunningHub::mint) all sign
//! through [`mint_for`], so a token comes out in the shape the `[auth]`
//! settings check: the client type under `auth.client_type_claim`, `aud`
//! and `iss` when `auth.audience` / `auth.issuer` are set, and the `kid`
//! of the key that signed it.

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ClientType;
use super::config::{AuthConfig, KeySource};
use super::keys::{entry_secret, load_or_create_secret};
use crate::error::ConfigError;

/// Claims of a token minted by chanhub (`chanhub token`, tests, the CLI).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Subject: who the client is.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The client type, under the default claim name ([`mint_for`] moves
    /// it to `auth.client_type_claim`).
    pub client_type: ClientType,
    /// Narrows the subscribe allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Narrows the publish allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// Caps the capabilities a worker may register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// Caps the slots a worker may register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slots: Option<u32>,
    /// Narrows the methods this client may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<Vec<String>>,
    /// Narrows the methods this client may serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<Vec<String>>,
}

/// Signs `claims` as they are, with no `kid` (tests and hand-made tokens;
/// chanhub's own tokens go through [`mint_for`]).
pub fn mint<T: Serialize>(
    claims: &T,
    algorithm: Algorithm,
    key: &EncodingKey,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key)
}

/// Signs `claims` — written with the client type under `client_type`, as
/// [`TokenClaims`] is — for a hub configured with `auth`: the client type
/// moves to `auth.client_type_claim`, `aud` and `iss` are set from
/// `auth.audience` and `auth.issuer`, and the header names `key`'s kid.
pub fn mint_for<T: Serialize>(
    auth: &AuthConfig,
    key: &SigningKey,
    claims: &T,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut body = match serde_json::to_value(claims)? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    if auth.client_type_claim != "client_type" {
        if let Some(ty) = body.remove("client_type") {
            body.insert(auth.client_type_claim.clone(), ty);
        }
    }
    if let Some(aud) = &auth.audience {
        body.insert("aud".into(), Value::String(aud.clone()));
    }
    if let Some(iss) = &auth.issuer {
        body.insert("iss".into(), Value::String(iss.clone()));
    }
    let mut header = Header::new(key.algorithm);
    header.kid = key.kid.clone();
    jsonwebtoken::encode(&header, &body, &key.key)
}

/// A key chanhub signs with, and the `kid` its tokens name.
#[derive(Clone)]
pub struct SigningKey {
    /// The algorithm of the key it pairs with.
    algorithm: Algorithm,
    /// The HS256 secret or the private key.
    key: EncodingKey,
    /// The `[[auth.keys]]` entry's kid; `None` for the `[auth]` key.
    kid: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why no [`SigningKey`] could be made.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// No `[[auth.keys]]` entry has the kid asked for.
    #[error("no [[auth.keys]] entry has kid {0:?}")]
    UnknownKid(String),
    /// No kid was asked for and no key is the default (the hub verifies
    /// JWKS keys, or several `[[auth.keys]]`).
    #[error(
        "no key signs tokens without a kid on this hub (it has several keys or a JWKS): name one with its kid"
    )]
    NoDefaultKey,
    /// The key is asymmetric: the hub holds only its public half.
    #[error("this hub verifies {algorithm} tokens with a public key: sign with its private key")]
    NeedsPrivateKey {
        /// The key's algorithm.
        algorithm: String,
    },
    /// The private key given is not one of the key's algorithm.
    #[error("not a {algorithm} private key (PEM): {reason}")]
    BadPrivateKey {
        /// The key's algorithm.
        algorithm: String,
        /// What the parser said.
        reason: String,
    },
    /// The HS256 secret cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl SigningKey {
    /// The key that signs tokens for a hub configured with `auth`: the
    /// `[[auth.keys]]` entry with `kid`, or without one the key that
    /// checks tokens without `kid` ([`AuthConfig::default_key`]). An HS256
    /// key signs with its secret (the `[auth]` key's may live in
    /// `data_dir`); the others need `private_pem`, the private half.
    pub fn for_config(
        auth: &AuthConfig,
        data_dir: &Path,
        kid: Option<&str>,
        private_pem: Option<&[u8]>,
    ) -> Result<SigningKey, SigningError> {
        let chosen = match kid {
            Some(kid) => KeySource::Entry(
                auth.keys
                    .iter()
                    .find(|k| k.kid == kid)
                    .ok_or_else(|| SigningError::UnknownKid(kid.to_string()))?,
            ),
            None => auth.default_key().ok_or(SigningError::NoDefaultKey)?,
        };
        let (name, kid) = match chosen {
            KeySource::Auth => (auth.algorithm.as_str(), None),
            KeySource::Entry(entry) => (entry.algorithm.as_str(), Some(entry.kid.clone())),
        };
        let (algorithm, key) = if name == "HS256" {
            let secret = match chosen {
                KeySource::Auth => load_or_create_secret(auth, data_dir)?,
                KeySource::Entry(entry) => {
                    entry_secret(entry, &format!("auth.keys (kid {:?})", entry.kid))?
                }
            };
            (Algorithm::HS256, EncodingKey::from_secret(&secret))
        } else {
            let pem = private_pem.ok_or_else(|| SigningError::NeedsPrivateKey {
                algorithm: name.to_string(),
            })?;
            let bad = |e: jsonwebtoken::errors::Error| SigningError::BadPrivateKey {
                algorithm: name.to_string(),
                reason: e.to_string(),
            };
            match name {
                "RS256" => (
                    Algorithm::RS256,
                    EncodingKey::from_rsa_pem(pem).map_err(bad)?,
                ),
                "ES256" => (
                    Algorithm::ES256,
                    EncodingKey::from_ec_pem(pem).map_err(bad)?,
                ),
                _ => (
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_pem(pem).map_err(bad)?,
                ),
            }
        };
        Ok(SigningKey {
            algorithm,
            key,
            kid,
        })
    }

    /// The algorithm tokens are signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}
