//! An identity provider's key set (`auth.jwks_url`): cached ([`Jwks`];
//! checking a token only reads the cache) and fetched at start, every
//! `auth.jwks_refresh_interval`, and when a token names a `kid` the cache
//! lacks — at most once per `auth.jwks_min_refetch`, one fetch shared by
//! every token waiting for it. A failed fetch keeps the cached set, so the
//! hub keeps serving the keys it knows while the provider is down.
//!
//! Server build only (it needs an HTTP client); verification itself never
//! waits for the network except for a token whose `kid` is unknown.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::AuthConfig;
use super::keys::VerifyKey;
use super::{Identity, Verifier};
use crate::error::AuthError;

/// The longest one fetch may take: a token naming an unknown `kid` waits
/// this long at worst (under the default `auth.timeout` of 10 s).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest JWKS document read; a provider's holds a few keys, a few KB.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The background fetch's first retry after a failure, doubled on each
/// further failure up to `auth.jwks_refresh_interval`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// An identity provider's key set, fetched from `auth.jwks_url` and
/// cached. Verification only reads the cache.
pub(crate) struct Jwks {
    /// Where the set is fetched.
    url: String,
    /// How often it is fetched again.
    refresh_interval: Duration,
    /// The least time between two fetches.
    min_refetch: Duration,
    /// The cached keys by kid, replaced whole by each successful fetch. A
    /// std lock: held only to clone a key's `Arc` out or to swap the map.
    keys: RwLock<HashMap<String, Arc<VerifyKey>>>,
    /// Successful fetches so far; a token waiting for a fetch compares it
    /// to know whether one finished meanwhile.
    loads: AtomicU64,
    /// Failed fetches so far (`chanhub_jwks_refresh_total{result="error"}`).
    failures: AtomicU64,
    /// When the last fetch started. Held across the fetch, so that tokens
    /// naming an unknown kid at the same time wait for one fetch instead of
    /// starting their own (a tokio lock: it is held across the request).
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

/// What one JWKS document held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loaded {
    /// Keys now in the cache.
    keys: usize,
    /// Keys left out: not for signatures, no `kid`, symmetric, an
    /// algorithm or curve chanhub does not accept, or unreadable.
    skipped: usize,
}

impl Jwks {
    pub(crate) fn new(url: &str, auth: &AuthConfig) -> Jwks {
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
    pub(crate) fn get(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.get(kid).cloned()
    }

    /// Whether a fetch has succeeded yet (`/readyz`).
    fn is_loaded(&self) -> bool {
        self.loads.load(Ordering::Acquire) > 0
    }

    /// Replaces the cached set with the keys of a JWKS document (RFC 7517).
    /// A document that is not a JWKS leaves the cache as it was; keys
    /// missing from the new set stop verifying at once.
    fn load(&self, body: &[u8]) -> Result<Loaded, String> {
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
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
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
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
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

impl Verifier {
    /// [`Verifier::verify`], and when no key matches the token's `kid`
    /// and a JWKS is configured, the set fetched again (unless fetched
    /// within `auth.jwks_min_refetch`) and the token checked once more.
    pub async fn verify_fetching(&self, token: &str) -> Result<Identity, AuthError> {
        let result = self.verify(token);
        if let (Err(AuthError::UnknownKey), Some(jwks)) = (&result, self.keys.jwks()) {
            // Only a kid can be learnt from the provider.
            let names_a_kid = self.read_header(token).is_ok_and(|(_, kid)| kid.is_some());
            if names_a_kid && jwks.refetch().await {
                return self.verify(token);
            }
        }
        result
    }

    /// Keeps the JWKS fresh, when `auth.jwks_url` is set: the first fetch
    /// at once, then on the interval, until `shutdown`.
    pub(crate) fn start(&self, tracker: &TaskTracker, shutdown: CancellationToken) {
        if let Some(jwks) = self.keys.jwks() {
            tracker.spawn(Arc::clone(jwks).run(shutdown));
        }
    }

    /// False while a configured JWKS has never been fetched: tokens from
    /// the identity provider cannot be checked yet (`/readyz`).
    pub(crate) fn keys_ready(&self) -> bool {
        self.keys.jwks().is_none_or(|jwks| jwks.is_loaded())
    }

    /// JWKS fetches by result (`ok`, `error`); empty without a JWKS.
    pub(crate) fn jwks_refreshes(&self) -> BTreeMap<String, u64> {
        let Some(jwks) = self.keys.jwks() else {
            return BTreeMap::new();
        };
        BTreeMap::from([
            ("ok".to_string(), jwks.loads.load(Ordering::Relaxed)),
            ("error".to_string(), jwks.failures.load(Ordering::Relaxed)),
        ])
    }
}

impl Jwks {
    /// Fetches the set for a token whose `kid` is not cached. Returns
    /// whether the cache changed since the caller looked (so it should look
    /// again): a fetch that finished while this one waited for the lock
    /// counts, so concurrent callers share one fetch.
    async fn refetch(&self) -> bool {
        let seen = self.loads.load(Ordering::Acquire);
        let mut last = self.last_fetch.lock().await;
        if self.loads.load(Ordering::Acquire) != seen {
            return true;
        }
        if last.is_some_and(|at| at.elapsed() < self.min_refetch) {
            return false;
        }
        *last = Some(Instant::now());
        self.fetch("unknown kid").await
    }

    /// The first fetch, then one per `refresh_interval`; after a failure,
    /// retries sooner (from [`FIRST_RETRY`], doubling, never more often
    /// than `min_refetch`).
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut retry = FIRST_RETRY;
        let mut why = "start";
        loop {
            let fetched = async {
                let mut last = self.last_fetch.lock().await;
                *last = Some(Instant::now());
                self.fetch(why).await
            };
            let ok = tokio::select! {
                _ = shutdown.cancelled() => return,
                ok = fetched => ok,
            };
            let wait = if ok {
                retry = FIRST_RETRY;
                self.refresh_interval
            } else {
                let wait = retry.min(self.refresh_interval).max(self.min_refetch);
                retry = retry.saturating_mul(2);
                wait
            };
            why = if ok { "interval" } else { "retry" };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One fetch, logged and counted; the caller holds `last_fetch`. A
    /// failure is logged at most once per fetch, and fetches are at most
    /// one per `min_refetch` plus the background's backed-off retries.
    async fn fetch(&self, why: &'static str) -> bool {
        match self.download().await.and_then(|body| self.load(&body)) {
            Ok(loaded) => {
                tracing::info!(
                    url = %self.url,
                    keys = loaded.keys,
                    skipped = loaded.skipped,
                    why,
                    "fetched the JWKS"
                );
                true
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    url = %self.url,
                    %error,
                    why,
                    cached = self.is_loaded(),
                    "could not fetch the JWKS; keeping the keys already cached"
                );
                false
            }
        }
    }

    /// The document at `url`, at most [`MAX_JWKS_BYTES`].
    async fn download(&self) -> Result<Vec<u8>, String> {
        let http = http_client()?;
        let mut response = http
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| with_causes(&e))?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let too_big = || format!("the document is larger than {MAX_JWKS_BYTES} bytes");
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| with_causes(&e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// One HTTP client for every fetch (its connection pool and the system's
/// CA certificates, loaded once).
fn http_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .map_err(|e| with_causes(&e))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// An error and its sources on one line (reqwest's own text omits the
/// cause, e.g. "connection refused").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
        assert_eq!(
            loaded,
            Ok(Loaded {
                keys: 2,
                skipped: 0
            })
        );
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
            Ok(Loaded {
                keys: 1,
                skipped: 8
            })
        );
        let good = cache.get("good").expect("kept");
        assert_eq!(good.algorithm, Algorithm::RS256);
    }
}
