//! Bodies of the HTTP API (`POST /api/publish`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One event to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishItem {
    /// A channel name (no wildcards).
    pub channel: String,
    /// Any JSON value.
    pub data: Value,
}

/// `POST /api/publish` body: one event, or a batch under `events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PublishRequest {
    /// `{"events":[{"channel":...,"data":...},...]}`
    Batch {
        /// The events, published in order.
        events: Vec<PublishItem>,
    },
    /// `{"channel":...,"data":...}`
    One(PublishItem),
}

/// One published event in the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PublishedItem {
    /// The channel.
    pub channel: String,
    /// The event id subscribers see.
    pub id: String,
    /// How many connections it was queued for.
    pub delivered: usize,
}

/// `POST /api/publish` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PublishResponse {
    /// One entry per published event, in request order.
    pub events: Vec<PublishedItem>,
}

/// `POST /api/token` response: a short-lived hub token for an admin key
/// holder (the dashboard uses it on `/ws`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    /// A hub token (`sub` "admin") with `subscribe`, `publish` and
    /// `task:submit`.
    pub token: String,
    /// Its `exp`, in ms since the Unix epoch.
    pub expires_at: u64,
}
