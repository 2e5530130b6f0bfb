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

/// The hub's own channels (`task:**`, `worker:**`, `hub:**`) take no
/// client publishes, whatever the allow-lists say: a hub token (which may
/// publish anywhere) and an admin key over HTTP are refused too.
#[tokio::test]
async fn no_client_publishes_on_the_hubs_own_channels() {
    const ADMIN_KEY: &str = "admin-key-for-tests";
    let hub = TestHub::with_config(|c| c.auth.admin_keys = vec![ADMIN_KEY.into()]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    for channel in ["task:completed", "worker:3", "hub:disconnected"] {
        backend
            .send(json!({"type": "publish", "id": channel, "channel": channel, "data": {"forged": true}}))
            .await;
        let err = expect_error(&mut backend, "forbidden").await;
        assert_eq!(err["id"], channel, "{err}");
    }
    let http = reqwest::Client::new();
    for key in [hub.token(ClientType::Hub, "backend"), ADMIN_KEY.to_string()] {
        let res = http
            .post(hub.http_url("/api/publish"))
            .bearer_auth(&key)
            .json(&json!({"channel": "task:completed", "data": 1}))
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), 403);
    }
    // A lookalike is an ordinary channel.
    backend
        .send(json!({"type": "publish", "id": "ok", "channel": "tasks:1", "data": 1}))
        .await;
    assert_eq!(backend.recv().await["type"], "published");
}

/// A message the client type may not send is `forbidden` before its shape
/// is checked, and `hub:hello` takes an `id` like every client message.
#[tokio::test]
async fn permission_comes_before_shape() {
    let hub = TestHub::start().await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    // Incomplete, and not the browser's to send anyway.
    ui.send(json!({"type": "hub:hello", "id": "r1", "name": "n"}))
        .await;
    let err = expect_error(&mut ui, "forbidden").await;
    assert_eq!(err["id"], "r1", "{err}");
    // Misspelt, and not the browser's to send anyway.
    ui.send(json!({"type": "publish", "id": "p", "chanel": "x:1"}))
        .await;
    let err = expect_error(&mut ui, "forbidden").await;
    assert_eq!(err["id"], "p", "{err}");
    // A hub may publish: the same frame is a bad request for it.
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    backend
        .send(json!({"type": "publish", "id": "p", "chanel": "x:1"}))
        .await;
    let err = expect_error(&mut backend, "bad_request").await;
    assert_eq!(err["id"], "p", "{err}");

    // A whole hub:hello with an id is read (no `unknown field id`) and
    // refused as federation.md says: the token may not federate.
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui2").await;
    ui.send(
        json!({"type": "hub:hello", "id": "r2", "hubId": "x", "name": "n",
        "version": "0.1.0", "maxFrameBytes": 65536}),
    )
    .await;
    let refused = ui.recv().await;
    assert_eq!(refused["type"], "hub:refused", "{refused}");
    assert_eq!(refused["reason"], "not_permitted", "{refused}");
}
