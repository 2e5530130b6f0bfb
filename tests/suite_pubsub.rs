//! The pub/sub suite, on both engines (memory, and a Redis cluster node):
//! pattern delivery over WebSocket (`*`, `**`, globs inside a segment),
//! overlapping patterns, unsubscribe, per-channel ordering, and narrowing
//! by a token's `channels` claim. Cross-node fan-out is in
//! `cluster_pubsub.rs`.
//!
//! To show an event was *not* delivered, a marker event is published last
//! on a channel the subscriber holds: events from one publisher reach a
//! subscriber in publish order, so everything delivered before the marker
//! is everything that was going to be delivered.

mod common;

use chanhub::auth::ClientType;
use common::engine::{Engine, Hubs, on_both_engines};
use common::{WsClient, expect_error, token_with};
use serde_json::{Value, json};

/// A channel every test subscriber also holds, published last.
const MARKER: &str = "zz-marker";

/// Subscribes to `patterns` (plus the marker) and asserts all are accepted.
async fn subscribe_all(client: &mut WsClient, patterns: &[&str]) {
    let mut all: Vec<&str> = patterns.to_vec();
    all.push(MARKER);
    client
        .send(json!({"type": "subscribe", "id": "s", "channels": all}))
        .await;
    let ack = client.recv().await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["channels"], json!(all), "{ack}");
}

/// Events `client` receives up to (not including) the marker, as channel names.
async fn channels_before_marker(client: &mut WsClient) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let event = client.recv().await;
        assert_eq!(event["type"], "event", "{event}");
        let channel = event["channel"].as_str().expect("channel").to_string();
        if channel == MARKER {
            return seen;
        }
        seen.push(channel);
    }
}

/// Publishes on each channel in order, then on the marker, with acks.
async fn publish_each(publisher: &mut WsClient, channels: &[&str]) {
    for channel in channels.iter().copied().chain([MARKER]) {
        let ack = publisher.publish(channel, json!({"on": channel})).await;
        assert_eq!(ack["type"], "published", "{ack}");
    }
}

/// Which of `channels` a connection subscribed to `patterns` receives, in order.
async fn delivered(engine: Engine, patterns: &[&str], channels: &[&str]) -> Vec<String> {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let (mut sub, _) = hub.connect(ClientType::Browser, "ui").await;
    subscribe_all(&mut sub, patterns).await;
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    publish_each(&mut publisher, channels).await;
    channels_before_marker(&mut sub).await
}

async fn single_star_matches_exactly_one_segment(engine: Engine) {
    let got = delivered(
        engine,
        &["session:*"],
        &[
            "session:42",
            "session:42:log",
            "session",
            "sessions:1",
            "other:42",
            "session:abc",
        ],
    )
    .await;
    assert_eq!(got, ["session:42", "session:abc"]);
}
on_both_engines!(single_star_matches_exactly_one_segment);

async fn double_star_matches_any_number_of_segments(engine: Engine) {
    let got = delivered(
        engine,
        &["session:**"],
        &[
            "session:42",
            "session:42:log",
            "session:1:2:3:4",
            "session",
            "sessions:1",
            "other:session:1",
        ],
    )
    .await;
    assert_eq!(
        got,
        ["session:42", "session:42:log", "session:1:2:3:4", "session"]
    );
}
on_both_engines!(double_star_matches_any_number_of_segments);

async fn double_star_alone_matches_everything(engine: Engine) {
    let channels = [
        "a",
        "session:42",
        "session:42:log",
        "job:9f1c:progress",
        "x:y:z:w:v",
    ];
    let got = delivered(engine, &["**"], &channels).await;
    assert_eq!(got, channels);
}
on_both_engines!(double_star_alone_matches_everything);

async fn double_star_in_the_middle_spans_segments(engine: Engine) {
    let got = delivered(
        engine,
        &["job:**:done"],
        &[
            "job:done",
            "job:1:done",
            "job:1:2:done",
            "job:1:fail",
            "done",
        ],
    )
    .await;
    assert_eq!(got, ["job:done", "job:1:done", "job:1:2:done"]);
}
on_both_engines!(double_star_in_the_middle_spans_segments);

async fn glob_star_inside_a_segment(engine: Engine) {
    let got = delivered(
        engine,
        &["user-*:inbox"],
        &[
            "user-1:inbox",
            "user-abc:inbox",
            "user-:inbox",
            "admin-1:inbox",
            "user-1:outbox",
            "user-1:inbox:old",
            "user:inbox",
        ],
    )
    .await;
    assert_eq!(got, ["user-1:inbox", "user-abc:inbox", "user-:inbox"]);
}
on_both_engines!(glob_star_inside_a_segment);

async fn glob_alternation_inside_a_segment(engine: Engine) {
    let got = delivered(
        engine,
        &["region:{eu,us}:*"],
        &[
            "region:eu:1",
            "region:us:2",
            "region:ap:3",
            "region:eux:4",
            "region:eu",
        ],
    )
    .await;
    assert_eq!(got, ["region:eu:1", "region:us:2"]);
}
on_both_engines!(glob_alternation_inside_a_segment);

async fn glob_character_class_inside_a_segment(engine: Engine) {
    let got = delivered(
        engine,
        &["shard:[a-c]"],
        &[
            "shard:a", "shard:b", "shard:c", "shard:d", "shard:ab", "shard:A",
        ],
    )
    .await;
    assert_eq!(got, ["shard:a", "shard:b", "shard:c"]);
}
on_both_engines!(glob_character_class_inside_a_segment);

async fn glob_question_mark_matches_one_character(engine: Engine) {
    let got = delivered(
        engine,
        &["job:?"],
        &["job:1", "job:x", "job:12", "job:1:log", "jobs:1"],
    )
    .await;
    assert_eq!(got, ["job:1", "job:x"]);
}
on_both_engines!(glob_question_mark_matches_one_character);

async fn overlapping_patterns_deliver_once_per_connection(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let (mut both, _) = hub.connect(ClientType::Browser, "ui-1").await;
    subscribe_all(&mut both, &["session:*", "session:**", "session:42"]).await;
    let (mut other, _) = hub.connect(ClientType::Browser, "ui-2").await;
    subscribe_all(&mut other, &["session:**", "**"]).await;
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;

    // `delivered` counts connections on memory; on Redis, the Redis
    // subscriptions that took the event (proto-docs/protocol.md,
    // `published`): at least one per node with a matching subscriber, so it
    // says whether anyone may be listening, not how many.
    let check = |ack: &Value| match engine {
        Engine::Memory => assert_eq!(ack["delivered"], 2, "one per connection: {ack}"),
        Engine::Redis => assert!(ack["delivered"].as_u64() >= Some(1), "{ack}"),
    };
    check(&publisher.publish("session:42", json!(1)).await);
    check(&publisher.publish("session:42:log", json!(2)).await);
    publish_each(&mut publisher, &[]).await;

    for client in [&mut both, &mut other] {
        assert_eq!(
            channels_before_marker(client).await,
            ["session:42", "session:42:log"]
        );
    }
}
on_both_engines!(overlapping_patterns_deliver_once_per_connection);

async fn unsubscribe_stops_delivery(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let (mut sub, _) = hub.connect(ClientType::Browser, "ui").await;
    subscribe_all(&mut sub, &["session:*", "session:42"]).await;

    sub.send(json!({"type": "unsubscribe", "id": "u-1", "channels": ["session:*", "never:held"]}))
        .await;
    let ack = sub.recv().await;
    assert_eq!(ack["type"], "unsubscribed", "{ack}");
    assert_eq!(ack["id"], "u-1", "{ack}");
    assert_eq!(
        ack["channels"],
        json!(["session:*"]),
        "only held patterns: {ack}"
    );

    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    publish_each(&mut publisher, &["session:7", "session:42"]).await;
    assert_eq!(channels_before_marker(&mut sub).await, ["session:42"]);
}
on_both_engines!(unsubscribe_stops_delivery);

async fn events_on_one_channel_from_one_publisher_arrive_in_order(engine: Engine) {
    const COUNT: u64 = 500;
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let (mut sub, _) = hub.connect(ClientType::Browser, "ui").await;
    subscribe_all(&mut sub, &["orders:*"]).await;
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    // Pipelined: no ids, so no acks to wait for between publishes.
    for seq in 0..COUNT {
        publisher
            .send(json!({"type": "publish", "channel": "orders:1", "data": {"seq": seq}}))
            .await;
    }
    publisher.sync().await;
    let mut last_id: Option<String> = None;
    for seq in 0..COUNT {
        let event: Value = sub.recv().await;
        assert_eq!(event["channel"], "orders:1", "{event}");
        assert_eq!(event["data"]["seq"], seq, "out of order: {event}");
        let id = event["id"].as_str().expect("id").to_string();
        assert_ne!(last_id.as_deref(), Some(id.as_str()), "ids are unique");
        last_id = Some(id);
    }
}
on_both_engines!(events_on_one_channel_from_one_publisher_arrive_in_order);

async fn token_channels_claim_narrows_subscriptions(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let token = token_with(json!({
        "client_type": "browser", "sub": "ui", "channels": ["session:**"]
    }));
    let (mut ui, hello) = hub.connect_with_token(&token).await;
    assert_eq!(hello["subscribeChannels"], json!(["session:**"]), "{hello}");

    let refused = ["task:*", "**", "*:**", "{session,task}:*"];
    let mut asked: Vec<&str> = refused.to_vec();
    asked.push("session:*");
    ui.send(json!({"type": "subscribe", "id": "narrow", "channels": asked}))
        .await;
    for pattern in refused {
        let err = expect_error(&mut ui, "forbidden").await;
        assert_eq!(err["channel"], pattern, "{err}");
        assert_eq!(err["id"], "narrow", "{err}");
    }
    let ack = ui.recv().await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["channels"], json!(["session:*"]), "{ack}");

    // Delivery follows: task:1 is not delivered, session:1 is.
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    for channel in ["task:1", "session:1"] {
        publisher.publish(channel, json!(null)).await;
    }
    let first = ui.recv().await;
    assert_eq!(first["channel"], "session:1", "{first}");
}
on_both_engines!(token_channels_claim_narrows_subscriptions);

async fn token_channels_claim_allows_narrower_patterns(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let token = token_with(json!({
        "client_type": "browser", "sub": "ui", "channels": ["session:**"]
    }));
    let (mut ui, _) = hub.connect_with_token(&token).await;
    let wanted = [
        "session:*",
        "session:**",
        "session:42:log",
        "session:{a,b}:*",
    ];
    ui.send(json!({"type": "subscribe", "id": 9, "channels": wanted}))
        .await;
    let ack = ui.recv().await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["id"], 9, "{ack}");
    assert_eq!(ack["channels"], json!(wanted), "{ack}");
}
on_both_engines!(token_channels_claim_allows_narrower_patterns);
