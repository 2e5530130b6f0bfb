//! Entry points for the fuzz targets in `tests/fuzz/` and their property-test
//! twins in `tests/fuzz_props.rs`. Not a stable API.
//!
//! Most of what the targets exercise is public already (`ClientMessage`,
//! `salvage_id`, `ChannelName`, `Pattern`, `SubscriptionIndex`,
//! `SseCursor`). What is not is the request side of `GET /api/stream`,
//! which lives in the private `transport` module: the wrappers here call
//! the handler's own functions, so the fuzzers test the code that serves
//! requests rather than a copy of it.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderValue};

use crate::auth::{ClientType, Identity, Permissions, TypePolicy};
use crate::channels::{ChannelName, Pattern};
use crate::protocol::history::{SseCursor, StreamPosition};
use crate::{Config, Hub};

/// The `(key, value)` pairs of a raw query string, decoded the way every
/// HTTP handler decodes them.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    crate::transport::query_pairs(Some(query))
}

/// What `GET /api/stream` read from a request before subscribing.
#[derive(Debug)]
pub struct StreamRequest {
    /// The `channels` patterns, parsed, deduplicated, in request order.
    pub patterns: Vec<Pattern>,
    /// The resume cursor from `Last-Event-ID` / `?lastEventId=`, with its
    /// channels parsed; `None` when absent or a plain event id.
    pub resume: Option<(SseCursor, BTreeMap<ChannelName, StreamPosition>)>,
}

/// A hub with the default configuration (and an inline secret, so nothing
/// touches the disk), built once per process: the stream handler reads its
/// limits from one.
pub fn default_hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| {
        let mut config = Config::default();
        config.auth.secret = Some("fuzz-secret-fuzz-secret-fuzz-secret".into());
        config.tasks.durable = false;
        Hub::new(config).expect("the default config builds a hub")
    })
}

/// The identity of a `hub`-type token without narrowing claims: by default
/// it may subscribe to `**`, so permission checks never hide a parse path.
fn hub_identity(hub: &Hub) -> Identity {
    let policy = TypePolicy::from_config(
        hub.config().permissions.for_type(ClientType::Hub),
        &hub.name_limits(),
    );
    Identity {
        sub: "fuzz".into(),
        client_type: ClientType::Hub,
        expires_at: u64::MAX,
        permissions: Permissions::new(Arc::new(policy), None, None, None),
        capabilities: None,
        max_slots: None,
    }
}

/// Runs the request parsing of `GET /api/stream?<query>` (with an optional
/// raw `Last-Event-ID` header) against [`default_hub`]: the handler's own
/// `requested_patterns` and `resume_cursor`. `Err` is the 4xx message the
/// client would get.
pub fn stream_request(query: &str, last_event_id: Option<&[u8]>) -> Result<StreamRequest, String> {
    let hub = default_hub();
    let mut headers = HeaderMap::new();
    if let Some(value) = last_event_id.and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.insert("last-event-id", value);
    }
    let query = query_pairs(query);
    let identity = hub_identity(hub);
    let patterns =
        crate::transport::sse::requested_patterns(hub, &query, &identity).map_err(|e| e.message)?;
    let resume =
        crate::transport::sse::resume_cursor(hub, &headers, &query).map_err(|e| e.message)?;
    Ok(StreamRequest { patterns, resume })
}
