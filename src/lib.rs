//! chanhub: a pub/sub channel hub. Browsers, workers and hubs connect over
//! WebSocket, authenticate with a JWT naming their client type, subscribe to
//! channels by wildcard pattern and publish events; operators read the same
//! events as Server-Sent Events with `curl -N`.
//!
//! # Layout
//!
//! - [`server`] — the router and `run(listener, config, shutdown)`, which
//!   tests and embedders call with a listener on `127.0.0.1:0`.
//! - [`hub`] — the shared state behind a cheap-`Clone` handle.
//! - [`session`] (private) — one WebSocket connection's loop.
//! - `transport` (private) — `/ws`, `/api/stream` (SSE), `/api/publish`, health.
//! - `transport::writer` (private) — the one writer of WebSocket and SSE:
//!   batched takes from a connection's queue, the skip filter, counting.
//! - [`protocol`] — the wire messages; the single source of truth for
//!   `proto-docs/`.
//! - [`channels`] — channel names, patterns, the subscription trie and the
//!   fan-out path; namespaces, per-channel history (offsets, epochs,
//!   recovery) and presence.
//! - [`auth`] — JWT verification, client types, permissions.
//! - [`config`] — the configuration tree, defaults, env overrides, validation.
//! - [`error`] — error enums and their HTTP status / close-code mapping.
//! - [`tasks`] — task routing: dispatcher, leases, retries, durable store.
//! - [`client`] — a Rust client with reconnect and resubscribe.
//! - [`pacing`] — write coalescing under overload.
//! - [`metrics`] — counters and the state read for `/metrics` (OpenMetrics
//!   text) and `/api/stats` (JSON for the dashboard).
//! - `web` (files under `src/web/`, served by `transport/web.rs`) — the
//!   browser client `chanhub.js` and the dashboard at `/`.
//! - [`engine`] — where cross-node state lives: memory (one node) or Redis
//!   (a cluster: fan-out between nodes, history).
//! - [`federation`] — links to peer hubs: interest, event forwarding,
//!   task forwarding.

pub mod auth;
pub mod channels;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod federation;
pub mod hub;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod pacing;
pub mod protocol;
pub mod server;
mod session;
pub mod tasks;
mod transport;

pub use config::Config;
pub use hub::Hub;
pub use server::{ServerError, app, run, serve};

#[doc(hidden)]
pub mod fuzz_api;
