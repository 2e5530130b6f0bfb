//! The presence suite, on both engines (memory, and a Redis cluster node):
//! `presence` / `presence:stats` across client types and connections,
//! `join` / `leave` (also when a connection just drops), `GET
//! /api/presence`, `max_subscribers`, `allow_publish_by`, and wildcard
//! subscriptions not counting as members. Presence across nodes, and dead
//! nodes' members, are in `cluster_presence.rs`.
//!
//! A Redis node writes a member after `subscribed`, in order with its other
//! writes (its `join` included); where a test reads presence with no `join`
//! seen since the subscribe, [`Hubs::flush`] waits for those writes.

mod common;

use chanhub::auth::ClientType;
use chanhub::config::NamespaceConfig;
use common::engine::{Engine, Hubs, Node, on_both_engines};
use common::{RawResponse, WsClient, expect_error, token_with};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "presence-admin-key";

fn ns(pattern: &str) -> NamespaceConfig {
    NamespaceConfig {
        pattern: pattern.into(),
        history_size: 0,
        history_ttl: std::time::Duration::ZERO,
        presence: false,
        join_leave: false,
        allow_publish_by: Vec::new(),
        max_subscribers: None,
    }
}

/// `room:*`: presence with join/leave, browsers may publish; `lobby:*`:
/// presence, at most 2 subscribers; `quiet:*`: presence without join/leave.
async fn start(engine: Engine) -> Hubs {
    Hubs::start(engine, |c| {
        c.auth.admin_keys = vec![ADMIN_KEY.into()];
        c.namespaces = vec![
            NamespaceConfig {
                presence: true,
                join_leave: true,
                allow_publish_by: vec![ClientType::Browser],
                ..ns("room:*")
            },
            NamespaceConfig {
                presence: true,
                max_subscribers: Some(2),
                ..ns("lobby:*")
            },
            NamespaceConfig {
                presence: true,
                ..ns("quiet:*")
            },
        ];
    })
    .await
}

/// The next message, which must be a `join` or `leave` (`kind`) on
/// `channel`; returns its `info`.
async fn expect_membership(client: &mut WsClient, kind: &str, channel: &str) -> Value {
    let msg = client.recv().await;
    assert_eq!(msg["type"], kind, "expected {kind}: {msg}");
    assert_eq!(msg["channel"], channel, "{msg}");
    msg["info"].clone()
}

async fn presence(client: &mut WsClient, channel: &str) -> Vec<Value> {
    client
        .send(json!({"type": "presence", "id": "p", "channel": channel}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "presence", "{reply}");
    assert_eq!(reply["id"], "p");
    reply["clients"].as_array().expect("clients").clone()
}

async fn stats(client: &mut WsClient, channel: &str) -> (u64, u64) {
    client
        .send(json!({"type": "presence:stats", "id": "s", "channel": channel}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "presence:stats", "{reply}");
    (
        reply["clients"].as_u64().expect("clients"),
        reply["users"].as_u64().expect("users"),
    )
}

fn ids(clients: &[Value]) -> Vec<String> {
    clients
        .iter()
        .map(|c| c["clientId"].as_str().expect("clientId").to_string())
        .collect()
}

async fn get(hub: Node, path: &str, key: &str) -> RawResponse {
    let auth = format!("Bearer {key}");
    RawResponse::get(hub.addr, path, &[("Authorization", &auth)]).await
}

async fn presence_and_join_leave_across_client_types(engine: Engine) {
    let hubs = start(engine).await;
    let hub = hubs.node(0);
    let (mut ana, ana_auth) = hub.connect(ClientType::Browser, "ana").await;
    ana.subscribe(&["room:1"]).await;
    let me = expect_membership(&mut ana, "join", "room:1").await;
    assert_eq!(me["clientId"], ana_auth["clientId"]);
    assert_eq!(me["sub"], "ana");
    assert_eq!(me["clientType"], "browser");
    assert!(me["connectedAt"].as_u64().is_some_and(|t| t > 0), "{me}");

    let (mut worker, worker_auth) = hub.connect(ClientType::Worker, "w1").await;
    worker.subscribe(&["room:1"]).await;
    let joined = expect_membership(&mut ana, "join", "room:1").await;
    assert_eq!(joined["clientId"], worker_auth["clientId"]);
    assert_eq!(joined["clientType"], "worker");
    assert_eq!(joined["sub"], "w1");

    let (mut backend, backend_auth) = hub.connect(ClientType::Hub, "backend").await;
    backend.subscribe(&["room:1"]).await;
    let joined = expect_membership(&mut ana, "join", "room:1").await;
    assert_eq!(joined["clientType"], "hub");

    // The same user on a second connection is listed twice.
    let (mut ana2, ana2_auth) = hub.connect(ClientType::Browser, "ana").await;
    ana2.subscribe(&["room:1"]).await;
    expect_membership(&mut ana, "join", "room:1").await;

    let clients = presence(&mut ana, "room:1").await;
    assert_eq!(
        ids(&clients),
        [
            &ana_auth["clientId"],
            &worker_auth["clientId"],
            &backend_auth["clientId"],
            &ana2_auth["clientId"],
        ]
        .map(|v| v.as_str().expect("id").to_string())
    );
    let types: Vec<&str> = clients
        .iter()
        .map(|c| c["clientType"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["browser", "worker", "hub", "browser"]);
    assert_eq!(stats(&mut ana, "room:1").await, (4, 3));

    // Unsubscribing leaves.
    worker
        .send(json!({"type": "unsubscribe", "id": 1, "channels": ["room:1"]}))
        .await;
    worker.recv_type("unsubscribed").await;
    let left = expect_membership(&mut ana, "leave", "room:1").await;
    assert_eq!(left["clientId"], worker_auth["clientId"]);

    // A dropped connection (no close frame) leaves too.
    drop(backend);
    let left = expect_membership(&mut ana, "leave", "room:1").await;
    assert_eq!(left["clientId"], backend_auth["clientId"]);
    assert_eq!(left["clientType"], "hub");
    drop(ana2);
    expect_membership(&mut ana, "leave", "room:1").await;
    assert_eq!(
        ids(&presence(&mut ana, "room:1").await),
        [ana_auth["clientId"].as_str().expect("id")]
    );
    assert_eq!(stats(&mut ana, "room:1").await, (1, 1));
    ana.expect_quiet().await;
}
on_both_engines!(presence_and_join_leave_across_client_types);

async fn http_presence_with_admin_key_or_token(engine: Engine) {
    let hubs = start(engine).await;
    let hub = hubs.node(0);
    let (mut ana, ana_auth) = hub.connect(ClientType::Browser, "ana").await;
    ana.subscribe(&["quiet:1"]).await;
    ana.sync().await;
    hubs.flush().await;

    let mut res = get(hub, "/api/presence?channel=quiet:1", ADMIN_KEY).await;
    assert_eq!(res.status, 200);
    let body = res.json().await;
    assert_eq!(body["channel"], "quiet:1");
    assert_eq!(body["clients"][0]["clientId"], ana_auth["clientId"]);
    assert_eq!(body["clients"][0]["sub"], "ana");

    let hub_token = hub.token(ClientType::Hub, "backend");
    let mut res = get(hub, "/api/presence/stats?channel=quiet:1", &hub_token).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.json().await,
        json!({"channel": "quiet:1", "clients": 1, "users": 1})
    );

    let narrow = token_with(json!({"sub": "x", "client_type": "hub", "channels": ["room:*"]}));
    let res = get(hub, "/api/presence?channel=quiet:1", &narrow).await;
    assert_eq!(res.status, 403);
    let res = get(hub, "/api/presence", ADMIN_KEY).await;
    assert_eq!(res.status, 400);
    let res = get(hub, "/api/presence?channel=plain:1", ADMIN_KEY).await;
    assert_eq!(res.status, 400, "no presence on plain:*");
    let res = get(hub, "/api/presence?channel=quiet:1", "wrong").await;
    assert_eq!(res.status, 401);
    // An empty channel has nobody.
    let mut res = get(hub, "/api/presence?channel=quiet:2", ADMIN_KEY).await;
    assert_eq!(res.json().await["clients"], json!([]));
}
on_both_engines!(http_presence_with_admin_key_or_token);

async fn max_subscribers_refuses_the_next_subscriber_by_name(engine: Engine) {
    let hubs = start(engine).await;
    let hub = hubs.node(0);
    let (mut a, _) = hub.connect(ClientType::Browser, "a").await;
    let (mut b, _) = hub.connect(ClientType::Browser, "b").await;
    let (mut c, _) = hub.connect(ClientType::Browser, "c").await;
    assert_eq!(
        a.subscribe(&["lobby:1"]).await["channels"],
        json!(["lobby:1"])
    );
    assert_eq!(
        b.subscribe(&["lobby:1"]).await["channels"],
        json!(["lobby:1"])
    );
    c.send(json!({"type": "subscribe", "id": 3, "channels": ["lobby:1", "lobby:2"]}))
        .await;
    let err = expect_error(&mut c, "too_many_subscriptions").await;
    assert_eq!(err["channel"], "lobby:1");
    let reply = c.recv().await;
    assert_eq!(reply["channels"], json!(["lobby:2"]), "{reply}");
    // A wildcard subscription is not a member: not refused, not counted.
    assert_eq!(
        c.subscribe(&["lobby:*"]).await["channels"],
        json!(["lobby:*"])
    );
    // Once one leaves there is room.
    a.send(json!({"type": "unsubscribe", "id": 5, "channels": ["lobby:1"]}))
        .await;
    a.recv_type("unsubscribed").await;
    assert_eq!(
        c.subscribe(&["lobby:1"]).await["channels"],
        json!(["lobby:1"])
    );
    hubs.flush().await;
    let (clients, users) = stats(&mut b, "lobby:1").await;
    assert_eq!((clients, users), (2, 2));
}
on_both_engines!(max_subscribers_refuses_the_next_subscriber_by_name);

async fn allow_publish_by_lets_browsers_publish_in_the_namespace_only(engine: Engine) {
    let hubs = start(engine).await;
    let hub = hubs.node(0);
    let (mut listener, _) = hub.connect(ClientType::Hub, "backend").await;
    listener.subscribe(&["room:**"]).await;
    let (mut ana, _) = hub.connect(ClientType::Browser, "ana").await;
    let ack = ana.publish("room:1", json!("hi")).await;
    assert_eq!(ack["type"], "published", "{ack}");
    let event = listener.recv_type("event").await;
    assert_eq!(event["data"], "hi");
    let refused = ana.publish("lobby:1", json!("no")).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // A token narrowing publishing still narrows it.
    let narrow = token_with(json!({"sub": "x", "client_type": "browser", "publish": ["chat:*"]}));
    let (mut limited, _) = hub.connect_with_token(&narrow).await;
    let refused = limited.publish("room:1", json!("no")).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // Not deeper than the namespace's pattern: room:1:x is outside room:*.
    let refused = ana.publish("room:1:x", json!("no")).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
}
on_both_engines!(allow_publish_by_lets_browsers_publish_in_the_namespace_only);

async fn wildcard_subscribers_hear_join_leave_but_are_not_members(engine: Engine) {
    let hubs = start(engine).await;
    let hub = hubs.node(0);
    let (mut watcher, _) = hub.connect(ClientType::Hub, "ops").await;
    watcher.subscribe(&["room:*"]).await;
    watcher.expect_quiet().await;
    let (mut ana, ana_auth) = hub.connect(ClientType::Browser, "ana").await;
    ana.subscribe(&["room:9"]).await;
    let joined = expect_membership(&mut watcher, "join", "room:9").await;
    assert_eq!(joined["clientId"], ana_auth["clientId"]);
    assert_eq!(
        ids(&presence(&mut watcher, "room:9").await),
        [ana_auth["clientId"].as_str().expect("id")]
    );
    drop(ana);
    expect_membership(&mut watcher, "leave", "room:9").await;
    assert!(presence(&mut watcher, "room:9").await.is_empty());
    // No join/leave on a presence channel without join_leave, and presence
    // on a channel without it is refused.
    let (mut bob, _) = hub.connect(ClientType::Browser, "bob").await;
    bob.subscribe(&["quiet:1"]).await;
    bob.expect_quiet().await;
    bob.send(json!({"type": "presence", "id": 1, "channel": "plain:1"}))
        .await;
    let err = expect_error(&mut bob, "bad_request").await;
    assert_eq!(err["channel"], "plain:1");
    let narrow = token_with(json!({"sub": "x", "client_type": "browser", "channels": ["quiet:2"]}));
    let (mut limited, _) = hub.connect_with_token(&narrow).await;
    limited
        .send(json!({"type": "presence:stats", "id": 1, "channel": "quiet:1"}))
        .await;
    expect_error(&mut limited, "forbidden").await;
}
on_both_engines!(wildcard_subscribers_hear_join_leave_but_are_not_members);
