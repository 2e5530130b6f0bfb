//! The shortest path through the hub, on both engines: a hub client's
//! publish reaches a browser's pattern subscription.

mod common;

use chanhub::auth::ClientType;
use common::engine::{Engine, Hubs, on_both_engines};
use serde_json::json;

async fn hub_publishes_to_a_pattern_subscriber(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let (mut ui, hello) = hub.connect(ClientType::Browser, "ui").await;
    assert_eq!(hello["clientType"], "browser");
    ui.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let ack = backend.publish("session:42", json!({"hello": 1})).await;
    assert_eq!(ack["type"], "published", "{ack}");
    // One connection on memory; one node on Redis (proto-docs/protocol.md,
    // `published`).
    assert_eq!(ack["delivered"], 1);
    let event = ui.recv().await;
    assert_eq!(event["type"], "event");
    assert_eq!(event["channel"], "session:42");
    assert_eq!(event["data"], json!({"hello": 1}));
}
on_both_engines!(hub_publishes_to_a_pattern_subscriber);
