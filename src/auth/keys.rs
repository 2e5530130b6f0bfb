//! Verification keys: where each comes from — the `[auth]` key,
//! `[[auth.keys]]`, an identity provider's JWKS (`jwks.rs`, server build
//! only) — and which one checks a given token ([`KeyRing::select`], by the
//! token's `kid`).
//!
//! Every key has one algorithm, and a token is checked only against a key
//! of the algorithm its header names: there is no HS/RS confusion, and a
//! symmetric key is never taken from a JWKS (a published HMAC key would let
//! anyone sign).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};

use super::config::{AuthConfig, KeyConfig, KeySource};
#[cfg(feature = "server")]
use super::jwks::Jwks;
use crate::error::ConfigError;

/// The algorithms chanhub accepts, by their `alg` name.
pub(crate) const ALGORITHMS: [(&str, Algorithm); 4] = [
    ("HS256", Algorithm::HS256),
    ("RS256", Algorithm::RS256),
    ("ES256", Algorithm::ES256),
    ("EdDSA", Algorithm::EdDSA),
];

/// The algorithm named `name` (`HS256`, `RS256`, `ES256`, `EdDSA`), if
/// chanhub accepts it.
pub(crate) fn algorithm_named(name: &str) -> Option<Algorithm> {
    ALGORITHMS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, alg)| *alg)
}

/// One verification key and the one algorithm it verifies.
pub(crate) struct VerifyKey {
    /// A token must name exactly this `alg`.
    pub(crate) algorithm: Algorithm,
    /// The secret or public key.
    pub(crate) key: DecodingKey,
}

/// Which key checks a token.
pub(crate) struct KeyRing {
    /// The key for a token without `kid` ([`AuthConfig::default_key`]).
    default: Option<Arc<VerifyKey>>,
    /// Only the `[auth]` key is configured: every token is checked against
    /// it and `kid` is ignored, as before chanhub knew key ids.
    kid_ignored: bool,
    /// `[[auth.keys]]` by kid; they win over a JWKS key of the same kid.
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// The identity provider's keys, when `auth.jwks_url` is set (server
    /// build: fetching them needs its HTTP client).
    #[cfg(feature = "server")]
    jwks: Option<Arc<Jwks>>,
    /// Algorithms some key may have; a token naming another is refused
    /// before any lookup (and never makes the hub fetch the JWKS).
    accepted: Vec<Algorithm>,
}

impl KeyRing {
    /// Loads the configured keys. The HS256 secret of the `[auth]` key
    /// comes from `auth` or `data_dir` (created on first use).
    pub(crate) fn from_config(auth: &AuthConfig, data_dir: &Path) -> Result<KeyRing, ConfigError> {
        let auth_key = if auth.uses_auth_key() {
            Some(Arc::new(auth_key(auth, data_dir)?))
        } else {
            None
        };
        let mut by_kid = HashMap::new();
        for (i, entry) in auth.keys.iter().enumerate() {
            let key = Arc::new(entry_key(entry, &format!("auth.keys[{i}]"))?);
            if by_kid.insert(entry.kid.clone(), key).is_some() {
                return Err(invalid(
                    &format!("auth.keys[{i}].kid"),
                    format!("{:?} is used by an earlier key", entry.kid),
                ));
            }
        }
        let has_jwks = auth.jwks_url.is_some();
        let default = match auth.default_key() {
            Some(KeySource::Auth) => auth_key,
            Some(KeySource::Entry(entry)) => by_kid.get(&entry.kid).cloned(),
            None => None,
        };
        let mut accepted: Vec<Algorithm> = default
            .iter()
            .chain(by_kid.values())
            .map(|k| k.algorithm)
            .collect();
        if has_jwks {
            accepted.extend([Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]);
        }
        accepted.sort_by_key(|alg| ALGORITHMS.iter().position(|(_, a)| a == alg));
        accepted.dedup();
        Ok(KeyRing {
            kid_ignored: by_kid.is_empty() && !has_jwks,
            default,
            by_kid,
            #[cfg(feature = "server")]
            jwks: auth
                .jwks_url
                .as_ref()
                .map(|url| Arc::new(Jwks::new(url, auth))),
            accepted,
        })
    }

    /// Whether some key could have `algorithm`.
    pub(crate) fn accepts(&self, algorithm: Algorithm) -> bool {
        self.accepted.contains(&algorithm)
    }

    /// The key for a token whose header names `kid`: a cache lookup, no
    /// network. `None` when no key matches (`unknown_key`).
    pub(crate) fn select(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        match kid {
            _ if self.kid_ignored => self.default.clone(),
            None => self.default.clone(),
            Some(kid) => self.by_kid.get(kid).cloned().or_else(|| self.jwks_key(kid)),
        }
    }

    /// The JWKS, when `auth.jwks_url` is set.
    #[cfg(feature = "server")]
    pub(crate) fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// The cached JWKS key with this kid.
    #[cfg(feature = "server")]
    fn jwks_key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.jwks.as_ref()?.get(kid)
    }

    /// A client-only build fetches no JWKS.
    #[cfg(not(feature = "server"))]
    fn jwks_key(&self, _kid: &str) -> Option<Arc<VerifyKey>> {
        None
    }
}

/// The `[auth]` key.
fn auth_key(auth: &AuthConfig, data_dir: &Path) -> Result<VerifyKey, ConfigError> {
    match auth.algorithm.as_str() {
        "HS256" => Ok(VerifyKey {
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(&load_or_create_secret(auth, data_dir)?),
        }),
        name => public_key(
            name,
            auth.public_key_file.as_deref(),
            "auth.public_key_file",
        ),
    }
}

/// One `[[auth.keys]]` entry; `at` names it in errors (`auth.keys[2]`).
fn entry_key(entry: &KeyConfig, at: &str) -> Result<VerifyKey, ConfigError> {
    match entry.algorithm.as_str() {
        "HS256" => Ok(VerifyKey {
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(&entry_secret(entry, at)?),
        }),
        name => public_key(
            name,
            entry.public_key_file.as_deref(),
            &format!("{at}.public_key_file"),
        ),
    }
}

/// The secret of an HS256 `[[auth.keys]]` entry; `at` names the entry in
/// errors (`auth.keys[2]`).
pub(crate) fn entry_secret(entry: &KeyConfig, at: &str) -> Result<Vec<u8>, ConfigError> {
    match (&entry.secret, &entry.secret_file) {
        (Some(secret), None) if !secret.is_empty() => Ok(secret.as_bytes().to_vec()),
        (None, Some(path)) => read_secret(path, &format!("{at}.secret_file")),
        _ => Err(invalid(
            &format!("{at}.secret"),
            "an HS256 key needs one of secret, secret_file (not empty)".into(),
        )),
    }
}

/// A PEM public key for the algorithm `name` (RS256, ES256, EdDSA) read
/// from `path`; `at` names the setting in errors.
fn public_key(name: &str, path: Option<&Path>, at: &str) -> Result<VerifyKey, ConfigError> {
    let path = path.ok_or_else(|| invalid(at, format!("required for {name}")))?;
    let pem = std::fs::read(path).map_err(|e| invalid(at, format!("{}: {e}", path.display())))?;
    let parsed = match name {
        "RS256" => DecodingKey::from_rsa_pem(&pem).map(|k| (Algorithm::RS256, k)),
        "ES256" => DecodingKey::from_ec_pem(&pem).map(|k| (Algorithm::ES256, k)),
        "EdDSA" => DecodingKey::from_ed_pem(&pem).map(|k| (Algorithm::EdDSA, k)),
        other => {
            return Err(invalid(
                at,
                format!("{other:?} is not one of HS256, RS256, ES256, EdDSA"),
            ));
        }
    };
    let (algorithm, key) = parsed.map_err(|e| {
        invalid(
            at,
            format!("{}: not a {name} public key: {e}", path.display()),
        )
    })?;
    Ok(VerifyKey { algorithm, key })
}

fn invalid(key: &str, problem: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem,
    }
}

/// The HS256 secret: `auth.secret`, else `auth.secret_file`, else
/// `<data_dir>/secret`, generated (32 random bytes, hex, mode 0600) the first
/// time so tokens minted by `chanhub token` keep working across restarts.
pub fn load_or_create_secret(auth: &AuthConfig, data_dir: &Path) -> Result<Vec<u8>, ConfigError> {
    if let Some(secret) = &auth.secret {
        return Ok(secret.as_bytes().to_vec());
    }
    if let Some(path) = &auth.secret_file {
        return read_secret(path, "auth.secret_file");
    }
    let dir = data_dir;
    let path = dir.join("secret");
    if path.exists() {
        return read_secret(&path, "data_dir");
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| invalid("data_dir", format!("cannot create {}: {e}", dir.display())))?;
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(hex.as_bytes())
                .map_err(|e| invalid("data_dir", format!("{}: {e}", path.display())))?;
            tracing::info!(path = %path.display(), "generated a new token secret");
            Ok(hex.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_secret(&path, "data_dir"),
        Err(e) => Err(invalid("data_dir", format!("{}: {e}", path.display()))),
    }
}

/// A secret kept in a file (surrounding whitespace dropped); `key` names
/// the setting in errors.
pub(crate) fn read_secret(path: &Path, key: &str) -> Result<Vec<u8>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(secret.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_key_follows_the_configured_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hs = |kid: &str| KeyConfig {
            kid: kid.into(),
            algorithm: "HS256".into(),
            secret: Some(format!("secret-{kid}")),
            secret_file: None,
            public_key_file: None,
        };
        // Only the [auth] key: every token, kid or not.
        let only_auth = KeyRing::from_config(&AuthConfig::default(), dir.path()).expect("ring");
        assert!(only_auth.select(None).is_some() && only_auth.select(Some("any")).is_some());
        assert!(only_auth.accepts(Algorithm::HS256) && !only_auth.accepts(Algorithm::RS256));
        // One static key and nothing else: it is the default.
        let one = AuthConfig {
            keys: vec![hs("a")],
            ..AuthConfig::default()
        };
        let ring = KeyRing::from_config(&one, dir.path()).expect("ring");
        assert!(ring.select(None).is_some() && ring.select(Some("a")).is_some());
        assert!(ring.select(Some("b")).is_none());
        // Two static keys: no default.
        let two = AuthConfig {
            keys: vec![hs("a"), hs("b")],
            ..AuthConfig::default()
        };
        let ring = KeyRing::from_config(&two, dir.path()).expect("ring");
        assert!(ring.select(None).is_none() && ring.select(Some("b")).is_some());
        // A JWKS and no [auth] key: no default; JWKS algorithms accepted.
        let idp = AuthConfig {
            jwks_url: Some("https://id.example.com/jwks".into()),
            ..AuthConfig::default()
        };
        let fresh = tempfile::tempdir().expect("tempdir");
        let ring = KeyRing::from_config(&idp, fresh.path()).expect("ring");
        assert!(ring.select(None).is_none());
        assert!(ring.accepts(Algorithm::EdDSA) && !ring.accepts(Algorithm::HS256));
        // No secret was generated for it.
        assert!(!fresh.path().join("secret").exists());
    }
}
