//! Verification keys: where each comes from — the `[auth]` key,
//! `[[auth.keys]]`, an identity provider's JWKS — and which one checks a
//! given token ([`KeyRing::select`], by the token's `kid`). The JWKS is
//! cached here ([`Jwks`]); fetching it over HTTP is `jwks.rs`, in the
//! server build only.
//!
//! Every key has one algorithm, and a token is checked only against a key
//! of the algorithm its header names: there is no HS/RS confusion, and a
//! symmetric key is never taken from a JWKS (a published HMAC key would let
//! anyone sign).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::config::{AuthConfig, KeySource, KeyConfig};
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
    /// The identity provider's keys, when `auth.jwks_url` is set.
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
        let jwks = auth.jwks_url.as_ref().map(|url| Arc::new(Jwks::new(url, auth)));
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
        if jwks.is_some() {
            accepted.extend([Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]);
        }
        accepted.sort_by_key(|alg| ALGORITHMS.iter().position(|(_, a)| a == alg));
        accepted.dedup();
        Ok(KeyRing {
            kid_ignored: by_kid.is_empty() && jwks.is_none(),
            default,
            by_kid,
            jwks,
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
            Some(kid) => self
                .by_kid
                .get(kid)
                .cloned()
                .or_else(|| self.jwks.as_ref().and_then(|jwks| jwks.get(kid))),
        }
    }

    /// The JWKS, when `auth.jwks_url` is set.
    pub(crate) fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }
}

/// The `[auth]` key.
fn auth_key(auth: &AuthConfig, data_dir: &Path) -> Result<VerifyKey, ConfigError> {
    match auth.algorithm.as_str() {
        "HS256" => Ok(VerifyKey {
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(&load_or_create_secret(auth, data_dir)?),
        }),
        name => public_key(name, auth.public_key_file.as_deref(), "auth.public_key_file"),
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

/// An identity provider's key set, fetched from `auth.jwks_url` (by
/// `jwks.rs`) and cached here. Verification only reads the cache.
pub(crate) struct Jwks {
    /// Where the set is fetched.
    pub(crate) url: String,
    /// How often it is fetched again.
    pub(crate) refresh_interval: Duration,
    /// The least time between two fetches.
    pub(crate) min_refetch: Duration,
    /// The cached keys by kid, replaced whole by each successful fetch. A
    /// std lock: held only to clone an `Arc` out or swap the map in.
    keys: RwLock<Arc<HashMap<String, Arc<VerifyKey>>>>,
    /// Successful fetches so far; a token waiting for a fetch compares it
    /// to know whether one finished meanwhile.
    pub(crate) loads: AtomicU64,
    /// Failed fetches so far (`chanhub_jwks_refresh_total{result="error"}`).
    pub(crate) failures: AtomicU64,
    /// When the last fetch started. Held across the fetch, so that tokens
    /// naming an unknown kid at the same time wait for one fetch instead of
    /// starting their own (a tokio lock: it is held across the request).
    pub(crate) last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

/// What one JWKS document held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// Keys now in the cache.
    pub(crate) keys: usize,
    /// Keys left out: not for signatures, no `kid`, symmetric, an
    /// algorithm or curve chanhub does not accept, or unreadable.
    pub(crate) skipped: usize,
}

impl Jwks {
    fn new(url: &str, auth: &AuthConfig) -> Jwks {
        Jwks {
            url: url.to_string(),
            refresh_interval: auth.jwks_refresh_interval,
            min_refetch: auth.jwks_min_refetch,
            keys: RwLock::default(),
            loads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached key with this kid.
    fn get(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.get(kid).cloned()
    }

    /// Whether a fetch has succeeded yet (`/readyz`).
    pub(crate) fn is_loaded(&self) -> bool {
        self.loads.load(Ordering::Acquire) > 0
    }

    /// Replaces the cached set with the keys of a JWKS document (RFC 7517).
    /// A document that is not a JWKS leaves the cache as it was; keys
    /// missing from the new set stop verifying at once.
    pub(crate) fn load(&self, body: &[u8]) -> Result<Loaded, String> {
        // Each key is read on its own, so one key of a type jsonwebtoken
        // does not know does not hide the others.
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        let mut skipped = 0;
        for value in document.keys {
            match serde_json::from_value::<Jwk>(value)
                .ok()
                .and_then(|jwk| jwk_key(&jwk))
            {
                Some((kid, key)) if !keys.contains_key(&kid) => {
                    keys.insert(kid, Arc::new(key));
                }
                _ => skipped += 1,
            }
        }
        let loaded = Loaded {
            keys: keys.len(),
            skipped,
        };
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        self.loads.fetch_add(1, Ordering::AcqRel);
        Ok(loaded)
    }
}

/// A JWKS key chanhub can verify with, and its kid; `None` for a key to
/// leave out (see [`Loaded::skipped`]).
fn jwk_key(jwk: &Jwk) -> Option<(String, VerifyKey)> {
    let common = &jwk.common;
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let kid = common.key_id.clone().filter(|k| !k.is_empty())?;
    // The algorithm follows from the key; a stated `alg` must agree.
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let stated = match common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(_) => return None,
    };
    if stated.is_some_and(|alg| alg != algorithm) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, VerifyKey { algorithm, key }))
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
    use jsonwebtoken::EncodingKey;
    use serde_json::{Value, json};

    fn rsa_jwk(kid: &str) -> Value {
        let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa-a.pem"))
            .expect("test key");
        let key = EncodingKey::from_rsa_pem(&pem).expect("rsa");
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk"))
                .expect("json");
        jwk["kid"] = json!(kid);
        jwk
    }

    fn jwks() -> Jwks {
        Jwks::new("http://127.0.0.1:1/jwks.json", &AuthConfig::default())
    }

    fn document(keys: Vec<Value>) -> Vec<u8> {
        json!({ "keys": keys }).to_string().into_bytes()
    }

    #[test]
    fn a_fetched_set_replaces_the_cached_one() {
        let cache = jwks();
        assert!(!cache.is_loaded());
        let loaded = cache.load(&document(vec![rsa_jwk("a"), rsa_jwk("b")]));
        assert_eq!(loaded, Ok(Loaded { keys: 2, skipped: 0 }));
        assert!(cache.get("a").is_some() && cache.get("b").is_some());
        cache.load(&document(vec![rsa_jwk("b")])).expect("loads");
        assert!(cache.get("a").is_none(), "a removed key stops verifying");
        assert!(cache.get("b").is_some());
        // Not a JWKS: the cache stays as it was.
        assert!(cache.load(b"<html>").is_err());
        assert!(cache.load(br#"{"no":"keys"}"#).is_err());
        assert!(cache.get("b").is_some());
        assert_eq!(cache.loads.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn keys_chanhub_cannot_use_are_skipped() {
        let mut enc = rsa_jwk("enc");
        enc["use"] = json!("enc");
        let mut encrypt_only = rsa_jwk("ops");
        encrypt_only["key_ops"] = json!(["encrypt"]);
        let mut no_kid = rsa_jwk("x");
        no_kid.as_object_mut().expect("object").remove("kid");
        let mut mislabelled = rsa_jwk("ps");
        mislabelled["alg"] = json!("PS256");
        let hmac = json!({"kty": "oct", "kid": "hs", "k": "c2VjcmV0", "alg": "HS256"});
        let p384 = json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"});
        let unknown = json!({"kty": "XYZ", "kid": "xyz"});
        let keys = vec![
            enc,
            encrypt_only,
            no_kid,
            mislabelled,
            hmac,
            p384,
            unknown,
            rsa_jwk("good"),
            rsa_jwk("good"),
        ];
        let cache = jwks();
        assert_eq!(
            cache.load(&document(keys)),
            Ok(Loaded { keys: 1, skipped: 8 })
        );
        let good = cache.get("good").expect("kept");
        assert_eq!(good.algorithm, Algorithm::RS256);
    }

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
