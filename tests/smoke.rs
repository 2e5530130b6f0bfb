mod common;

use chanhub::auth::ClientType;
use common::TestHub;
use serde_json::json;

#[tokio::test]
async fn hub_publishes_to_a_pattern_subscriber() {
    let hub = TestHub::start().await;
    let (mut ui, hello) = hub.connect(ClientType::Browser, "ui").await;
    assert_eq!(hello["clientType"], "browser");
    ui.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let ack = backend.publish("session:42", json!({"hello": 1})).await;
    assert_eq!(ack["type"], "published", "{ack}");
    assert_eq!(ack["delivered"], 1);
    let event = ui.recv().await;
    assert_eq!(event["type"], "event");
    assert_eq!(event["channel"], "session:42");
    assert_eq!(event["data"], json!({"hello": 1}));
}
