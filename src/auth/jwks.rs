//! Fetching an identity provider's JWKS (`auth.jwks_url`) into the cache
//! of `keys.rs`: at start, every `auth.jwks_refresh_interval`, and when a
//! token names a `kid` the cache lacks — at most once per
//! `auth.jwks_min_refetch`, one fetch shared by every token waiting for
//! it. A failed fetch keeps the cached set, so the hub keeps serving the
//! keys it knows while the provider is down.
//!
//! Server build only (it needs an HTTP client); verification itself never
//! waits for the network except for a token whose `kid` is unknown.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::keys::Jwks;
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

impl Verifier {
    /// [`Verifier::verify`], and when no key matches the token's `kid`
    /// and a JWKS is configured, the set fetched again (unless fetched
    /// within `auth.jwks_min_refetch`) and the token checked once more.
    pub async fn verify_fetching(&self, token: &str) -> Result<Identity, AuthError> {
        let result = self.verify(token);
        if let (Err(AuthError::UnknownKey), Some(jwks)) = (&result, self.keys.jwks()) {
            if jwks.refetch().await {
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
