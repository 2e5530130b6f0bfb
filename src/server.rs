//! The server: the router, and `run`, which serves until a shutdown signal
//! and then closes every connection it tracks within the grace period.
//!
//! axum's graceful shutdown stops accepting and waits for HTTP requests, but
//! it does not reach upgraded WebSockets; those sessions watch the hub's
//! cancellation token and are counted by its task tracker instead.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::ConfigError;
use crate::hub::Hub;
use crate::transport::{
    api, calls_api, federation_api, presence_api, sse, stats_api, tasks_api, web, ws,
};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener failed.
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The HTTP routes, bound to `hub`.
pub fn app(hub: Hub) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/api/stream", get(sse::stream))
        .route("/api/stream/events", get(sse::stream))
        .route("/api/publish", post(api::publish))
        .route("/api/tasks", post(tasks_api::submit).get(tasks_api::list))
        .route(
            "/api/tasks/{id}",
            get(tasks_api::show).delete(tasks_api::cancel),
        )
        .route("/api/workers", get(tasks_api::workers))
        .route("/api/call/{method}", post(calls_api::call))
        .route("/api/federation", get(federation_api::links))
        .route("/api/presence", get(presence_api::presence))
        .route("/api/presence/stats", get(presence_api::stats))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(stats_api::metrics))
        .route("/api/stats", get(stats_api::stats))
        .route("/api/token", post(stats_api::token))
        .merge(web::routes())
        .with_state(hub)
}

/// Serves `config` on `listener` until `shutdown` resolves, then closes
/// every connection (WebSockets with 1012) and returns once they are gone or
/// `shutdown.grace_period` has passed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let hub = Hub::new(config)?;
    serve(listener, hub, shutdown).await
}

/// Like [`run`], with a hub built by the caller (tests keep a handle to it).
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "chanhub listening");
    hub.log_connection_limit();
    // Small frames (a reply, then an event) must not wait for Nagle's
    // algorithm and delayed ACKs: that costs ~40 ms per round trip.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(error = %err, "could not set TCP_NODELAY");
        }
    });
    let token = hub.shutdown_token().clone();
    let stop = token.clone();
    hub.engine().start(hub.tracker(), token.clone());
    hub.tasks().start(hub.tracker(), token.clone());
    hub.calls().start(hub.tracker(), token.clone());
    hub.verifier().start(hub.tracker(), token.clone());
    hub.tracker().spawn(crate::metrics::sample_rates(
        Arc::clone(hub.metrics()),
        Arc::clone(hub.channels()),
        token.clone(),
    ));
    // Dial the configured peers; links stop with the shutdown token.
    hub.federation().start(&hub.host());
    hub.tracker()
        .spawn(Arc::clone(hub.channels()).run_sweeper(token.clone()));
    hub.tracker()
        .spawn(hub.clone().run_gate_sweeper(token.clone()));
    hub.tracker()
        .spawn(Arc::clone(hub.pacer()).run(token.clone()));
    let server = axum::serve(
        listener,
        app(hub.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .into_future();
    tokio::pin!(server);
    tokio::pin!(shutdown);
    tokio::select! {
        result = &mut server => {
            // The listener failed before any shutdown was asked for.
            token.cancel();
            return result.map_err(ServerError::Io);
        }
        _ = &mut shutdown => {}
        _ = token.cancelled() => {}
    }
    tracing::info!("shutting down: closing connections");
    token.cancel();
    let grace = hub.config().shutdown.grace_period;
    let tracker = hub.tracker().clone();
    let drained = tokio::time::timeout(grace, async {
        let served = server.await;
        tracker.close();
        tracker.wait().await;
        served
    })
    .await;
    // Whatever the closing sessions handed back must be on disk before exit.
    hub.tasks().flush().await;
    match drained {
        Ok(result) => {
            tracing::info!("shutdown complete");
            result.map_err(ServerError::Io)
        }
        Err(_) => {
            tracing::warn!(
                remaining = hub.connection_count(),
                "grace period over; dropping remaining connections"
            );
            Ok(())
        }
    }
}
