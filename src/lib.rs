//! chanhub: a pub/sub channel hub. Browsers, workers and hubs connect over
//! WebSocket, authenticate with a JWT naming their client type, subscribe to
//! channels by wildcard pattern and publish events; operators read the same
//! events as Server-Sent Events with `curl -N`.
//!
//! # Cargo features
//!
//! - `server` (default): the hub — [`Hub`], [`run`], [`serve`], [`app`],
//!   [`config`], the `chanhub` binary. Turns on `client`.
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
//! stats, shutdown), [`server`] (`run`, `serve`, `app`), [`auth`] (client
//! types, token minting and verification), [`protocol`] (the wire types),
//! [`channels`] (the name and pattern grammar), [`client`], [`error`],
//! [`metrics`] (the `/api/stats` body) and [`logging`] (the log filter).
//! Everything else is internal (`pub(crate)`).
//!
//! # Layout
//!
//! - [`server`] — the router and `run(listener, config, shutdown)`, which
//!   tests and embedders call with a listener on `127.0.0.1:0`.
//! - `hub` — the shared state behind a cheap-`Clone` handle, [`Hub`].
//! - `session` — one WebSocket connection's loop.
//! - `transport` — `/ws`, `/api/stream` (SSE), `/api/publish`, health.
//! - `writer` — the one writer of WebSocket and SSE: batched takes from a
//!   connection's queue, the skip filter, counting.
//! - [`protocol`] — the wire messages; the single source of truth for
//!   `proto-docs/`.
//! - [`channels`] — channel names, patterns and the subscription trie;
//!   the crate's bottom layer.
//! - `router` — the fan-out path (`router/manager.rs`, the one way into
//!   the connections' queues); namespaces, per-channel history (offsets,
//!   epochs, recovery) and presence of the memory engine; the interfaces
//!   the router hands events on through (`router/upstream.rs`: `Upstream`
//!   for a shared engine, `Forwarder` for peer hubs).
//! - [`auth`] — JWT verification, client types, permissions.
//! - [`config`] — the configuration tree, defaults, env overrides, validation.
//! - [`error`] — error enums and their HTTP status / close-code mapping.
//! - `tasks` — task routing behind one value, [`Tasks`]
//!   (`tasks/handle.rs`: local | cluster): the local dispatcher, leases,
//!   durable store; the cluster node's side (`tasks/cluster.rs`); the
//!   lifecycle vocabulary both publish (`tasks/events.rs`) and the retry
//!   rules both apply (`tasks/retry.rs`).
//! - [`client`] — a Rust client with reconnect and resubscribe.
//! - `pacing` — write coalescing under overload.
//! - [`metrics`] — counters and the state read for `/metrics` (OpenMetrics
//!   text) and `/api/stats` (JSON for the dashboard).
//! - [`logging`] — the log filter that keeps payloads out of the logs.
//! - `web` (files under `src/web/`, served by `transport/web.rs`) — the
//!   browser client `chanhub.js` and the dashboard at `/`.
//! - `engine` — where cross-node state lives, behind one value,
//!   [`Engine`] (`engine/mod.rs`, the only place that matches on
//!   memory | redis): confirmed publishes, subscribing with recovery,
//!   history, presence, readiness. The Redis engine is `engine/redis/`
//!   (its recovery argument in `engine/redis/recovery.rs`); node-to-node
//!   messages are typed in `protocol/cluster.rs`.
//! - `federation` — links to peer hubs: interest, event forwarding,
//!   task forwarding.

// The crate docs link the server's items, absent from a client-only build.
#![cfg_attr(not(feature = "server"), allow(rustdoc::broken_intra_doc_links))]

pub mod auth;
pub mod channels;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub(crate) mod engine;
pub mod error;
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
pub(crate) mod tasks;
#[cfg(feature = "server")]
mod transport;
#[cfg(feature = "server")]
mod writer;

#[cfg(feature = "server")]
pub use config::Config;
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
