//! chanhub: a pub/sub channel hub. Browsers, workers and hubs connect over
//! WebSocket, authenticate with a JWT naming their client type, subscribe to
//! channels by wildcard pattern and publish events; operators read the same
//! events as Server-Sent Events with `curl -N`.
//!
//! # Cargo features
//!
//! - `server` (default): the hub — [`Hub`], [`run`], [`serve`], [`app`],
//!   [`config`], [`embed`] ([`Hub::builder`]), the `chanhub` binary.
//!   Turns on `client`.
//! - `client`: the Rust client ([`client`]) and what it speaks
//!   ([`protocol`], [`channels`], [`auth`], [`error`]), without the
//!   server's dependencies (axum, redis, redb, jemalloc, …):
//!   `default-features = false, features = ["client"]`.
//! - `test-hooks`: hooks the crate's own tests use; not a supported API.
//!
//! # Public surface
//!
//! What an embedder or a client needs: [`config`] (the configuration tree),
//! [`Hub`] (the handle: tokens, publishing, [`Engine`] and [`Tasks`],
//! stats, shutdown), [`embed`] (a hub started in the caller's runtime:
//! [`Hub::builder`] → [`RunningHub`] with its address, token minting and
//! shutdown), [`server`] (`run`, `serve`, `app`), [`auth`] (client
//! types, token minting and verification), [`protocol`] (the wire types),
//! [`channels`] (the name and pattern grammar), [`client`], [`error`],
//! [`metrics`] (the `/api/stats` body) and [`logging`] (the log filter).
//! Everything else is internal (`pub(crate)`).
//!
//! # Layout
//!
//! Bottom to top: a module imports only from the modules listed before it
//! (there are no import cycles between top-level modules).
//!
//! - [`channels`] — the grammar: channel names, patterns, the subscription
//!   trie and its match cache. Imports nothing else from the crate.
//! - [`error`] — error enums and their HTTP status / close-code mapping.
//! - [`auth`] — JWT verification against keys chosen by `kid` (the
//!   `[auth]` key, `[[auth.keys]]`, an identity provider's JWKS, cached and
//!   refreshed in `auth/jwks.rs`), token minting, client types,
//!   permissions, and the `[auth]` / `[permissions]` settings.
//! - [`protocol`] — the wire messages; the single source of truth for
//!   `proto-docs/` (node-to-node messages of a cluster in
//!   `protocol/cluster.rs`, internal); a client frame's parse, with the
//!   call frames' direct path (`protocol/parse.rs`), and the two call
//!   frames the hub writes directly (`protocol/written.rs`).
//! - `pacing` — write coalescing under overload.
//! - `router` — this node's subscriptions and the fan-out path
//!   (`router/manager.rs`: the one way into the connections' queues),
//!   namespaces, the memory engine's history and presence, and the
//!   interfaces the router hands events on through
//!   (`router/upstream.rs`: `Upstream` for a shared engine, `Forwarder`
//!   for peer hubs).
//! - [`metrics`] — counters, and the state read for `/metrics` (OpenMetrics
//!   text) and `/api/stats` (JSON for the dashboard), handed in by the hub.
//! - `engine` — where cross-node state lives, behind one value,
//!   [`Engine`] (`engine/mod.rs`, the only place that matches on
//!   memory | redis): confirmed publishes, subscribing with recovery,
//!   history, presence, readiness. The Redis engine is `engine/redis/`
//!   (its recovery argument in `engine/redis/recovery.rs`; catching up
//!   after its pub/sub connection was down in `engine/redis/catchup.rs`).
//! - `tasks` — task routing behind one value, [`Tasks`]
//!   (`tasks/handle.rs`: local | cluster): the local dispatcher, leases,
//!   durable store, and what is sent only after the store's commit
//!   (`tasks/outbox.rs`); the cluster node's side (`tasks/cluster.rs`); the
//!   lifecycle vocabulary both publish (`tasks/events.rs`), the retry rules
//!   both apply (`tasks/retry.rs`) and the `[tasks]` settings.
//! - `calls` — request/reply calls: which endpoint serves which method
//!   patterns, routing (least in flight), deadlines, the per-method wait
//!   queue, the cluster's and peers' servers, and the `[calls]` settings.
//! - `fd_limit` — the open-file limit, raised at start, and the default
//!   connection limit derived from it.
//! - [`client`] — a Rust client with reconnect and resubscribe.
//! - `federation` — links to peer hubs: interest, event forwarding,
//!   task forwarding; it reaches its hub through the `Host` trait it owns.
//! - `limits` — connection gates and message rates.
//! - [`config`] — the whole configuration tree (gathering the sections the
//!   modules above define), defaults, env overrides, validation.
//! - `hub` — the shared state behind a cheap-`Clone` handle: it builds
//!   the engine, the task service and the federation once.
//! - `writer` (private) — the one writer of WebSocket sessions and SSE
//!   streams: batched takes from a connection's queue, the skip filter,
//!   counting.
//! - `session` (private) — one WebSocket connection's loop.
//! - `transport` (private) — `/ws`, `/api/stream` (SSE), the HTTP API,
//!   health, and `web` (files under `src/web/`: `chanhub.js` from the
//!   `chanhub` npm package in `src/web/client/`, and the dashboard at `/`).
//! - [`server`] — the axum router and `run(listener, config, shutdown)`,
//!   which tests and embedders call with a listener on `127.0.0.1:0`.
//! - [`embed`] — [`Hub::builder`]: `serve` spawned on the caller's
//!   runtime, behind a handle with the address, token minting, `ready`
//!   and `shutdown` (Tauri and other Rust apps).

// The crate docs link the server's items, absent from a client-only build.
#![cfg_attr(not(feature = "server"), allow(rustdoc::broken_intra_doc_links))]

pub mod auth;
#[cfg(feature = "server")]
pub(crate) mod calls;
pub mod channels;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod embed;
#[cfg(feature = "server")]
pub(crate) mod engine;
pub mod error;
#[cfg(feature = "server")]
pub(crate) mod fd_limit;
#[cfg(feature = "server")]
pub(crate) mod federation;
#[cfg(feature = "server")]
mod hub;
#[cfg(feature = "server")]
pub(crate) mod limits;
#[cfg(feature = "server")]
pub mod logging;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub(crate) mod pacing;
pub mod protocol;
#[cfg(feature = "server")]
pub(crate) mod router;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
mod session;
#[cfg(feature = "server")]
pub mod sidecar;
#[cfg(feature = "server")]
pub(crate) mod tasks;
#[cfg(feature = "server")]
mod transport;
#[cfg(feature = "server")]
mod writer;

#[cfg(feature = "server")]
pub use config::Config;
#[cfg(feature = "server")]
pub use embed::{EmbedError, HubBuilder, RunningHub};
#[cfg(feature = "server")]
pub use engine::Engine;
#[cfg(feature = "server")]
pub use hub::Hub;
#[cfg(feature = "server")]
pub use server::{ServerError, app, run, serve};
#[cfg(feature = "server")]
pub use tasks::Tasks;

/// Entry points for the fuzz targets and property tests (`test-hooks`
/// feature only; not a supported API).
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod fuzz_api;
