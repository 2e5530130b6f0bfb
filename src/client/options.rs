//! What a [`Client`](super::Client) is told at connect time: where the hub
//! is, where the token comes from, and how it behaves when the connection
//! drops.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::Backoff;

/// Settings for [`Client::connect`](super::Client::connect).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The hub's WebSocket endpoint, e.g. `ws://127.0.0.1:7070/ws`.
    pub url: String,
    /// Where the JWT comes from; read again on every reconnect so an expired
    /// token can be replaced.
    pub token: TokenSource,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// Whether the client reconnects (and resubscribes) by itself after a
    /// connection it did not close drops. Default `true`.
    pub reconnect: bool,
    /// How long a request (`subscribe`, `publish`, …) may take, including
    /// any time spent waiting for a reconnection. Default 10 s.
    pub request_timeout: Duration,
    /// How long a [`call`](super::Client::call) waits for its answer unless
    /// it sets its own ([`Call::timeout`](super::Call::timeout)); sent to
    /// the hub as the call's `timeoutMs` (the hub caps it at
    /// `calls.max_timeout`). Default 30 s, the hub's default.
    pub call_timeout: Duration,
    /// How long one connection attempt (dial, authenticate, resubscribe)
    /// may take before it counts as failed. Default 10 s.
    pub connect_timeout: Duration,
    /// Capacity of the queue of events handed to [`Events`](super::Events).
    /// When it is full the client stops reading the socket, so a reader that
    /// falls behind is eventually disconnected by the hub as a slow consumer
    /// instead of growing memory here. Default 1024; 0 is treated as 1.
    pub event_buffer: usize,
}

impl ClientOptions {
    /// Options with a static token and the defaults.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        ClientOptions::with_token_source(url, TokenSource::Static(token.into()))
    }

    /// Options with any token source and the defaults.
    pub fn with_token_source(url: impl Into<String>, token: TokenSource) -> Self {
        ClientOptions {
            url: url.into(),
            token,
            backoff: Backoff::default(),
            reconnect: true,
            request_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            event_buffer: 1024,
        }
    }
}

/// The signature of a token provider.
pub type TokenProvider = dyn Fn() -> Result<String, String> + Send + Sync;

/// Where the client gets the token it authenticates with.
///
/// Its `Debug` output never shows the token.
#[derive(Clone)]
pub enum TokenSource {
    /// The same token on every connection. If the hub refuses it on a
    /// reconnect the client stops: a bad token will not get better.
    Static(String),
    /// Called before every connection attempt, e.g. to mint or fetch a fresh
    /// token. It runs on the connection task, so it should not block for
    /// long. If the hub refuses its token, or it returns an error, the client
    /// keeps retrying with backoff.
    Provider(Arc<TokenProvider>),
}

impl TokenSource {
    /// A provider source from a closure.
    pub fn provider(f: impl Fn() -> Result<String, String> + Send + Sync + 'static) -> Self {
        TokenSource::Provider(Arc::new(f))
    }

    /// The token to present now.
    pub(crate) fn fetch(&self) -> Result<String, String> {
        match self {
            TokenSource::Static(token) => Ok(token.clone()),
            TokenSource::Provider(provider) => provider(),
        }
    }

    /// Whether a later call may return a different token.
    pub(crate) fn may_change(&self) -> bool {
        matches!(self, TokenSource::Provider(_))
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Static(_) => f.write_str("Static(<redacted>)"),
            TokenSource::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

impl From<String> for TokenSource {
    fn from(token: String) -> Self {
        TokenSource::Static(token)
    }
}

impl From<&str> for TokenSource {
    fn from(token: &str) -> Self {
        TokenSource::Static(token.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_token() {
        let options = ClientOptions::new("ws://h/ws", "secret-token-value");
        let text = format!("{options:?}");
        assert!(!text.contains("secret-token-value"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }

    #[test]
    fn provider_is_called_each_time() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let source = TokenSource::provider(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(format!("t{n}"))
        });
        assert_eq!(source.fetch(), Ok("t0".into()));
        assert_eq!(source.fetch(), Ok("t1".into()));
        assert!(source.may_change());
        assert!(!TokenSource::from("x").may_change());
    }
}
