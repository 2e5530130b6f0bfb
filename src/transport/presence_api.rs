//! `GET /api/presence` and `GET /api/presence/stats`: who is subscribed to a
//! presence channel, for backends and operators. Authenticated like
//! `/api/publish` (a token, or an admin API key); a token needs the
//! subscribe permission on the channel, as for the WebSocket `presence`.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;

use super::api::Caller;
use super::query_pairs;
use crate::channels::{ChannelName, Pattern};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::protocol::history::{PresenceResponse, PresenceStatsResponse};

/// `GET /api/presence?channel=room:7`.
pub(crate) async fn presence(
    State(hub): State<Hub>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<PresenceResponse>, ApiError> {
    let channel = checked_channel(&hub, &headers, query.as_deref()).await?;
    let clients = hub.engine().presence(&channel).await?;
    Ok(Json(PresenceResponse {
        channel: channel.to_string(),
        clients,
    }))
}

/// `GET /api/presence/stats?channel=room:7`.
pub(crate) async fn stats(
    State(hub): State<Hub>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<PresenceStatsResponse>, ApiError> {
    let channel = checked_channel(&hub, &headers, query.as_deref()).await?;
    let (clients, users) = hub.engine().presence_stats(&channel).await?;
    Ok(Json(PresenceStatsResponse {
        channel: channel.to_string(),
        clients,
        users,
    }))
}

/// The `channel` parameter, once the caller may see it.
async fn checked_channel(
    hub: &Hub,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<ChannelName, ApiError> {
    let caller = Caller::from_headers(hub, headers).await?;
    let query = query_pairs(query);
    let raw = query
        .iter()
        .find(|(k, _)| k == "channel")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| ApiError::bad_request("name the channel: ?channel=room:7"))?;
    let channel = hub.channel(raw)?;
    if let Caller::Token(identity) = &caller {
        let pattern = Pattern::parse(raw, &hub.name_limits())
            .map_err(|e| ApiError::from(crate::error::RequestError::from(e)))?;
        identity.permissions.check_subscribe(&pattern)?;
    }
    Ok(channel)
}
