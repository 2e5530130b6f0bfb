//! Embedding: a hub started inside the caller's tokio runtime (a Tauri
//! app, a Rust service), with a handle that knows its address, mints its
//! tokens and stops it.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use chanhub::auth::ClientType;
//! use chanhub::{Config, Hub};
//!
//! # async fn app() -> Result<(), chanhub::EmbedError> {
//! let config = Config {
//!     data_dir: Some("/path/to/app/data/chanhub".into()),
//!     ..Config::default()
//! };
//! let hub = Hub::builder(config).listen("127.0.0.1:0").start().await?;
//! hub.ready().await?;
//! // Hand these to the UI and to worker processes.
//! let url = hub.ws_url();
//! let token = hub.mint_token(ClientType::Browser, "main-window", Duration::from_secs(3600))?;
//! # let _ = (url, token);
//! // ... the app runs ...
//! hub.shutdown().await?; // clients get 1012; bounded by shutdown.grace_period
//! # Ok(())
//! # }
//! ```
//!
//! Nothing here runs the hub differently from `chanhub serve`: the builder
//! binds the listener, builds a [`Hub`] and spawns [`serve`]
//! on the current runtime; [`RunningHub::shutdown`] resolves the shutdown
//! future `serve` was given, so the graceful stop is the same code path as
//! SIGTERM (WebSockets closed with 1012, SSE streams ended, tasks handed
//! back and flushed, all within `shutdown.grace_period`).
//!
//! Two choices differ from the binary, because the app holds the handle:
//!
//! - **The token secret.** With `auth.algorithm = "HS256"` and none of
//!   `auth.secret`, `auth.secret_file`, `auth.keys`, `auth.jwks_url` set,
//!   the builder generates a
//!   random secret in memory instead of creating `<data_dir>/secret`: the
//!   app mints every token through [`RunningHub::mint_token`], no secret is
//!   left on disk, and two app instances never accept each other's tokens.
//!   Tokens then stop working when the hub stops; set `auth.secret` or
//!   `auth.secret_file` for tokens that outlive a restart (or that
//!   `chanhub token` can mint). With RS256/ES256/EdDSA the hub only has the
//!   public key, and an identity provider's keys are its own: mint
//!   elsewhere ([`RunningHub::mint`] fails with
//!   [`EmbedError::NoSigningKey`]).
//! - **Logging.** The hub logs through `tracing`; it installs no
//!   subscriber (`log.*` is ignored): the app's subscriber gets the lines.
//!
//! The data directory is used as configured (`data_dir`, by default the
//! platform's `chanhub` directory): the hub id and, with `tasks.durable`,
//! `tasks.redb` live there, and only one hub at a time can hold a
//! `tasks.redb`. Give each app instance its own `data_dir` (Tauri: a
//! folder under the app's data directory), or set `tasks.durable = false`
//! for a hub whose tasks need not survive it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::auth::{ClientType, SigningError, SigningKey, TokenClaims, mint_for};
use crate::config::Config;
use crate::error::ConfigError;
use crate::hub::Hub;
use crate::protocol::now_ms;
use crate::server::{ServerError, serve};

/// Why an embedded hub could not start, mint a token, or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The configuration is unusable (including a data directory that
    /// cannot be created or read).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The hub holds no key to sign tokens with: it verifies them with a
    /// public key (RS256, ES256, EdDSA) or with its identity provider's
    /// keys.
    #[error("this hub cannot mint tokens: {reason}")]
    NoSigningKey {
        /// Why, e.g. that the key is RS256 and only its public half is here.
        reason: String,
    },
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Mint(#[from] jsonwebtoken::errors::Error),
    /// The hub stopped (shut down, or its listener failed) before it was
    /// ready.
    #[error("the hub stopped before it was ready")]
    Stopped,
    /// The server failed while running.
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl Hub {
    /// A builder that starts a hub with `config` inside the caller's tokio
    /// runtime; see [`HubBuilder`] and the [`embed`](crate::embed) module.
    pub fn builder(config: Config) -> HubBuilder {
        HubBuilder {
            config,
            listen: Listen::Config,
        }
    }
}

/// Starts an embedded hub: [`Hub::builder`], then
/// [`listen`](HubBuilder::listen) (or [`listener`](HubBuilder::listener)),
/// then [`start`](HubBuilder::start).
#[must_use = "a builder does nothing until `start().await`"]
pub struct HubBuilder {
    /// The configuration, validated by `start`.
    config: Config,
    /// Where to listen.
    listen: Listen,
}

/// Where the builder's hub listens.
enum Listen {
    /// `config.listen`.
    Config,
    /// An address to bind, as given (`"127.0.0.1:0"`, `"localhost:7070"`).
    Addr(String),
    /// A listener the caller bound.
    Listener(TcpListener),
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listen = match &self.listen {
            Listen::Config => self.config.listen.to_string(),
            Listen::Addr(addr) => addr.clone(),
            Listen::Listener(listener) => format!("{:?}", listener.local_addr()),
        };
        f.debug_struct("HubBuilder")
            .field("listen", &listen)
            .finish_non_exhaustive()
    }
}

impl HubBuilder {
    /// Listens on `addr` (anything `TcpListener::bind` resolves, e.g.
    /// `"127.0.0.1:0"` for a free port; [`RunningHub::addr`] tells which)
    /// instead of `config.listen`.
    pub fn listen(mut self, addr: impl ToString) -> HubBuilder {
        self.listen = Listen::Addr(addr.to_string());
        self
    }

    /// Serves on a listener the caller bound already.
    pub fn listener(mut self, listener: TcpListener) -> HubBuilder {
        self.listen = Listen::Listener(listener);
        self
    }

    /// Validates the configuration, binds, builds the hub and spawns it on
    /// the current tokio runtime; returns once the listener is bound (the
    /// kernel queues connections from then on). Must be called within a
    /// tokio runtime with the time and I/O drivers enabled.
    pub async fn start(self) -> Result<RunningHub, EmbedError> {
        let HubBuilder { mut config, listen } = self;
        // Only where the `[auth]` key would be the generated secret anyway:
        // a hub given other keys trusts no secret it was not given.
        let generated = config.auth.algorithm == "HS256"
            && config.auth.secret.is_none()
            && config.auth.secret_file.is_none()
            && config.auth.uses_auth_key();
        if generated {
            config.auth.secret = Some(random_secret());
        }
        config.validate()?;
        let listener = match listen {
            Listen::Listener(listener) => listener,
            Listen::Addr(addr) => bind(addr).await?,
            Listen::Config => bind(config.listen.to_string()).await?,
        };
        let addr = listener.local_addr().map_err(|source| EmbedError::Bind {
            addr: config.listen.to_string(),
            source,
        })?;
        config.listen = addr;
        let signing = match SigningKey::for_config(&config.auth, &config.data_dir(), None, None) {
            Ok(key) => Ok(key),
            Err(SigningError::Config(err)) => return Err(err.into()),
            Err(other) => Err(other.to_string()),
        };
        let hub = Hub::new(config)?;
        let (stop, stopped) = oneshot::channel::<()>();
        // Resolved by `shutdown`, or by the sender's drop with the handle.
        let signal = async move {
            let _ = stopped.await;
        };
        let server = tokio::spawn(serve(listener, hub.clone(), signal));
        tracing::debug!(%addr, generated_secret = generated, "embedded hub started");
        Ok(RunningHub {
            hub,
            addr,
            signing,
            stop,
            server,
        })
    }
}

async fn bind(addr: String) -> Result<TcpListener, EmbedError> {
    TcpListener::bind(addr.as_str())
        .await
        .map_err(|source| EmbedError::Bind { addr, source })
}

/// 32 random bytes, hex: the same form as a generated `<data_dir>/secret`.
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hub running inside this process, started by [`HubBuilder::start`].
///
/// Stop it with [`shutdown`](RunningHub::shutdown). Dropping the handle
/// without calling it starts the same graceful shutdown in the background
/// and does not wait for it: clients get 1012 and tasks are handed back as
/// long as the runtime keeps running, but if the runtime stops first (say,
/// `main` returns right after the drop) what is still running is cut short
/// — connections dropped without a close frame, and work handed back in
/// those last moments possibly not flushed to `tasks.redb`. Await
/// `shutdown()` when that matters.
pub struct RunningHub {
    /// The hub's state: publishing, tasks, stats.
    hub: Hub,
    /// Where the listener is bound.
    addr: SocketAddr,
    /// The HS256 key tokens are minted with, or why there is none (a
    /// public-key algorithm, a JWKS).
    signing: Result<SigningKey, String>,
    /// Sending, or dropping it with the handle, starts the graceful
    /// shutdown.
    stop: oneshot::Sender<()>,
    /// The task running [`serve`]; it ends once shutdown is done.
    server: JoinHandle<Result<(), ServerError>>,
}

impl fmt::Debug for RunningHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningHub")
            .field("addr", &self.addr)
            .field("hub_id", &self.hub.hub_id())
            .finish_non_exhaustive()
    }
}

impl RunningHub {
    /// The address the listener is bound to (the port chosen for `:0`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://<addr>/ws`, the endpoint clients connect to. An unspecified
    /// bind address (`0.0.0.0`, `::`) is written as loopback.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.connect_addr())
    }

    /// `http://<addr>`, the base of the HTTP API, SSE and the dashboard
    /// (no trailing slash).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.connect_addr())
    }

    /// Where a client on this machine connects.
    fn connect_addr(&self) -> SocketAddr {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.addr.port())
    }

    /// The hub: [`publish`](Hub::publish), [`tasks`](Hub::tasks),
    /// [`stats`](Hub::stats), [`engine`](Hub::engine), …
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// A token for a client of type `client_type` named `sub`, valid for
    /// `ttl` (whole seconds), with the type's configured permissions (nothing narrowed).
    pub fn mint_token(
        &self,
        client_type: ClientType,
        sub: &str,
        ttl: Duration,
    ) -> Result<String, EmbedError> {
        let now = now_ms() / 1000;
        self.mint(&TokenClaims {
            sub: sub.to_string(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            client_type,
            channels: None,
            publish: None,
            capabilities: None,
            max_slots: None,
            call: None,
            serve: None,
        })
    }

    /// Signs `claims` (narrowed channels, capabilities, methods …) with the
    /// hub's key, in the form this hub's configuration expects: the client
    /// type under `auth.client_type_claim`, and `aud` / `iss` when
    /// `auth.audience` / `auth.issuer` are set.
    pub fn mint(&self, claims: &TokenClaims) -> Result<String, EmbedError> {
        let key = self
            .signing
            .as_ref()
            .map_err(|reason| EmbedError::NoSigningKey {
                reason: reason.clone(),
            })?;
        Ok(mint_for(&self.hub.config().auth, key, claims)?)
    }

    /// Resolves once the hub would answer `/readyz` with 200: at once on
    /// the memory engine (the listener is bound by the time
    /// [`start`](HubBuilder::start) returns), once Redis answers on the
    /// Redis engine. [`EmbedError::Stopped`] if the hub stops first. Not
    /// bounded: wrap it in `tokio::time::timeout` to give up.
    pub async fn ready(&self) -> Result<(), EmbedError> {
        let stopping = self.hub.shutdown_token();
        loop {
            if self.hub.is_shutting_down() {
                return Err(EmbedError::Stopped);
            }
            if self.hub.is_ready() {
                return Ok(());
            }
            tokio::select! {
                _ = stopping.cancelled() => {}
                _ = self.hub.engine().wait_ready(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Stops the hub as SIGTERM stops `chanhub serve`, and returns when it
    /// has: no new connections, every WebSocket closed with 1012, SSE
    /// streams ended, workers' tasks handed back and the task store
    /// flushed. Bounded by `shutdown.grace_period`: connections still open
    /// then are dropped.
    pub async fn shutdown(self) -> Result<(), EmbedError> {
        let RunningHub { stop, server, .. } = self;
        // An error means the server already ended (its listener failed).
        let _ = stop.send(());
        match server.await {
            Ok(result) => Ok(result?),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // The runtime is shutting down and cancelled the server task.
            Err(_) => Ok(()),
        }
    }
}
