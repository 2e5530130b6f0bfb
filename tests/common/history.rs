//! What the history suites share: the namespaces they keep history in,
//! and reading offsets off events.

use std::time::Duration;

use chanhub::Config;
use chanhub::config::NamespaceConfig;
use serde_json::Value;

use super::WsClient;

/// A namespace with history.
pub fn history_ns(pattern: &str, size: usize) -> NamespaceConfig {
    NamespaceConfig {
        pattern: pattern.into(),
        history_size: size,
        history_ttl: Duration::from_secs(600),
        presence: false,
        join_leave: false,
        allow_publish_by: Vec::new(),
        max_subscribers: None,
    }
}

/// `session:*` keeps 1000 events and `small:*` keeps 5.
pub fn with_history(config: &mut Config) {
    config.namespaces = vec![history_ns("session:*", 1000), history_ns("small:*", 5)];
}

/// The next `event`, skipping nothing: anything else fails.
pub async fn next_event(client: &mut WsClient) -> Value {
    let msg = client.recv().await;
    assert_eq!(msg["type"], "event", "expected an event: {msg}");
    msg
}

/// An event's `offset`.
pub fn offset(event: &Value) -> u64 {
    event["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset: {event}"))
}

/// The `epoch` of `channel`'s history, asked with a `history` request of
/// no events.
pub async fn epoch(client: &mut WsClient, channel: &str) -> Value {
    client
        .send(serde_json::json!({"type": "history", "id": "epoch", "channel": channel, "limit": 0}))
        .await;
    let page = client.recv_type("history").await;
    assert!(page["epoch"].is_string(), "{page}");
    page["epoch"].clone()
}
