//! The permission table over WebSocket: what each client type is told it may
//! do in `auth:success`, and what the hub actually allows; config overrides;
//! a token's `permissions` claim narrows but never widens.

mod common;

use chanhub::auth::ClientType;
use common::{TestHub, WsClient, expect_error, token_with};
use serde_json::{Value, json};

/// The permissions listed in `auth:success` for a client of `ty`.
async fn listed_permissions(ty: ClientType) -> Value {
    let hub = TestHub::start().await;
    let (_client, hello) = hub.connect(ty, "someone").await;
    assert_eq!(hello["clientType"], ty.as_str(), "{hello}");
    assert_eq!(hello["sub"], "someone", "{hello}");
    assert!(
        hello["clientId"].as_str().is_some_and(|id| !id.is_empty()),
        "{hello}"
    );
    hello["permissions"].clone()
}

#[tokio::test]
async fn browser_is_told_it_may_subscribe_and_call() {
    assert_eq!(
        listed_permissions(ClientType::Browser).await,
        json!(["subscribe", "call"])
    );
}

#[tokio::test]
async fn worker_is_told_it_may_subscribe_run_tasks_call_and_serve() {
    assert_eq!(
        listed_permissions(ClientType::Worker).await,
        json!([
            "subscribe",
            "task:receive",
            "task:complete",
            "call",
            "serve"
        ])
    );
}

#[tokio::test]
async fn hub_is_told_it_may_subscribe_publish_submit_federate_call_and_serve() {
    assert_eq!(
        listed_permissions(ClientType::Hub).await,
        json!([
            "subscribe",
            "publish",
            "task:submit",
            "federate",
            "call",
            "serve"
        ])
    );
}

/// A client of `ty` subscribes to `session:*` and receives an event a hub
/// publishes there.
async fn subscribes_and_receives(ty: ClientType) {
    let hub = TestHub::start().await;
    let (mut client, _) = hub.connect(ty, "listener").await;
    let ack = client.subscribe(&["session:*"]).await;
    assert_eq!(ack["channels"], json!(["session:*"]), "{ack}");
    assert_eq!(ack["id"], "sub", "{ack}");
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let published = backend.publish("session:7", json!({"n": 7})).await;
    assert_eq!(published["type"], "published", "{published}");
    assert_eq!(published["delivered"], 1, "{published}");
    let event = client.recv().await;
    assert_eq!(event["type"], "event", "{event}");
    assert_eq!(event["channel"], "session:7", "{event}");
    assert_eq!(event["data"], json!({"n": 7}), "{event}");
}

#[tokio::test]
async fn browser_may_subscribe() {
    subscribes_and_receives(ClientType::Browser).await;
}

#[tokio::test]
async fn worker_may_subscribe() {
    subscribes_and_receives(ClientType::Worker).await;
}

#[tokio::test]
async fn hub_may_subscribe() {
    subscribes_and_receives(ClientType::Hub).await;
}

/// `client` tries to publish on `session:1`: it gets `forbidden` echoing the
/// request id, nothing reaches `watcher` (subscribed to `session:*`), and the
/// connection stays usable.
async fn publish_is_refused(hub: &TestHub, client: &mut WsClient) {
    let (mut watcher, _) = hub.connect(ClientType::Browser, "watcher").await;
    watcher.subscribe(&["session:*"]).await;

    client
        .send(json!({"type": "publish", "id": "p-1", "channel": "session:1", "data": {"x": 1}}))
        .await;
    let err = expect_error(client, "forbidden").await;
    assert_eq!(err["id"], "p-1", "{err}");

    // Still open: a ping gets its pong.
    client.sync().await;

    // The refused event was not published: the watcher's first event is a
    // later one, published in-process (permissions do not apply there).
    let channel = hub.hub.channel("session:2").expect("valid channel");
    let (_, delivered) = hub.hub.publish(channel, json!({"x": 2}));
    assert_eq!(delivered, 1);
    let first = watcher.recv().await;
    assert_eq!(first["channel"], "session:2", "{first}");
}

#[tokio::test]
async fn browser_publish_is_forbidden_and_connection_stays_open() {
    let hub = TestHub::start().await;
    let (mut browser, _) = hub.connect(ClientType::Browser, "ui").await;
    publish_is_refused(&hub, &mut browser).await;
}

#[tokio::test]
async fn worker_publish_is_forbidden_and_connection_stays_open() {
    let hub = TestHub::start().await;
    let (mut worker, _) = hub.connect(ClientType::Worker, "w").await;
    publish_is_refused(&hub, &mut worker).await;
}

#[tokio::test]
async fn hub_may_publish() {
    let hub = TestHub::start().await;
    let (mut watcher, _) = hub.connect(ClientType::Browser, "watcher").await;
    watcher.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let ack = backend.publish("session:1", json!({"ok": true})).await;
    assert_eq!(ack["type"], "published", "{ack}");
    assert_eq!(ack["id"], "pub", "{ack}");
    assert_eq!(ack["channel"], "session:1", "{ack}");
    assert_eq!(ack["delivered"], 1, "{ack}");
    let event = watcher.recv().await;
    assert_eq!(event["channel"], "session:1", "{event}");
    assert_eq!(event["id"], ack["eventId"], "{event} vs {ack}");
}

#[tokio::test]
async fn config_can_grant_browsers_publish() {
    let hub = TestHub::with_config(|c| c.permissions.browser.publish = true).await;
    let (mut watcher, _) = hub.connect(ClientType::Browser, "watcher").await;
    watcher.subscribe(&["session:*"]).await;
    let (mut browser, hello) = hub.connect(ClientType::Browser, "ui").await;
    assert_eq!(
        hello["permissions"],
        json!(["subscribe", "publish", "call"])
    );
    let ack = browser.publish("session:1", json!(1)).await;
    assert_eq!(ack["type"], "published", "{ack}");
    assert_eq!(ack["delivered"], 1, "{ack}");
    assert_eq!(watcher.recv().await["channel"], "session:1");
}

#[tokio::test]
async fn config_can_take_publish_from_hubs() {
    let hub = TestHub::with_config(|c| c.permissions.hub.publish = false).await;
    let (mut backend, hello) = hub.connect(ClientType::Hub, "backend").await;
    assert_eq!(
        hello["permissions"],
        json!(["subscribe", "task:submit", "federate", "call", "serve"])
    );
    publish_is_refused(&hub, &mut backend).await;
}

#[tokio::test]
async fn permissions_claim_narrows_a_hub_token() {
    let hub = TestHub::start().await;
    let token = token_with(json!({
        "client_type": "hub", "sub": "narrow", "permissions": ["subscribe"]
    }));
    let (mut narrowed, hello) = hub.connect_with_token(&token).await;
    assert_eq!(hello["permissions"], json!(["subscribe"]), "{hello}");
    publish_is_refused(&hub, &mut narrowed).await;
    // What it kept still works.
    let ack = narrowed.subscribe(&["task:*"]).await;
    assert_eq!(ack["channels"], json!(["task:*"]), "{ack}");
}

#[tokio::test]
async fn permissions_claim_cannot_widen_a_browser_token() {
    let hub = TestHub::start().await;
    let token = token_with(json!({
        "client_type": "browser", "sub": "greedy", "permissions": ["subscribe", "publish"]
    }));
    let (mut browser, hello) = hub.connect_with_token(&token).await;
    assert_eq!(hello["permissions"], json!(["subscribe"]), "{hello}");
    publish_is_refused(&hub, &mut browser).await;
}

#[tokio::test]
async fn permissions_claim_of_only_publish_leaves_a_browser_nothing() {
    let hub = TestHub::start().await;
    let token = token_with(json!({
        "client_type": "browser", "sub": "greedy", "permissions": ["publish"]
    }));
    let (mut browser, hello) = hub.connect_with_token(&token).await;
    assert_eq!(hello["permissions"], json!([]), "{hello}");
    publish_is_refused(&hub, &mut browser).await;
    browser
        .send(json!({"type": "subscribe", "id": "s-1", "channels": ["session:*"]}))
        .await;
    let err = expect_error(&mut browser, "forbidden").await;
    assert_eq!(err["id"], "s-1", "{err}");
}
