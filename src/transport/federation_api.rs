//! `GET /api/federation`: this hub's id and every link — configured peers
//! and accepted ones — with state, latency, interest and counters.
//! Callers authenticate like the task API: a token with `federate` (hubs
//! by default) or an admin key.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;

use super::api::Caller;
use crate::auth::Permission;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::protocol::federation::FederationView;

/// `GET /api/federation`.
pub(crate) async fn links(
    State(hub): State<Hub>,
    headers: HeaderMap,
) -> Result<Json<FederationView>, ApiError> {
    let caller = Caller::from_headers(&hub, &headers).await?;
    caller.require(Permission::Federate)?;
    Ok(Json(hub.federation().view()))
}
