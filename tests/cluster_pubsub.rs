//! Cluster fan-out: several nodes in this process sharing one Redis (a
//! child `redis-server` on a free port). A publish on one node reaches the
//! matching subscribers on every node exactly once and in order, whatever
//! their overlapping patterns; and the example cluster config is valid.
//! Behaviour that is the same on one node of either engine is in the
//! `suite_*` tests.

mod common;

use chanhub::auth::ClientType;
use common::WsClient;
use common::cluster::cluster;
use serde_json::{Value, json};

/// The `data` of the next messages until one with data `"end"`; fails on
/// anything that is not an event.
async fn events_until_end(client: &mut WsClient) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let msg = client.recv().await;
        assert_eq!(msg["type"], "event", "expected an event: {msg}");
        if msg["data"] == "end" {
            return seen;
        }
        seen.push(json!([msg["channel"], msg["data"]]));
    }
}

#[tokio::test]
async fn a_publish_on_one_node_reaches_matching_subscribers_on_every_node_once_and_in_order() {
    let Some((_redis, nodes)) = cluster(3, |_| {}).await else {
        return;
    };
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut publisher = a.connect(ClientType::Hub, "backend").await;
    // On A itself: events come back through Redis like everyone else's.
    let mut on_a = a.connect(ClientType::Browser, "a").await;
    on_a.subscribe(&["room:*"]).await;
    // Overlapping patterns on one connection: still once.
    let mut on_b = b.connect(ClientType::Browser, "b").await;
    on_b.subscribe(&["room:*", "room:1", "room:**"]).await;
    // Overlapping patterns on two connections of one node: the node holds
    // overlapping Redis subscriptions, and still delivers once.
    let mut on_c1 = c.connect(ClientType::Browser, "c1").await;
    on_c1.subscribe(&["room:1"]).await;
    let mut on_c2 = c.connect(ClientType::Browser, "c2").await;
    on_c2.subscribe(&["room:**", "other:{x,y}"]).await;

    let mut all = Vec::new();
    for n in 0..40 {
        let channel = match n % 4 {
            0 | 1 => "room:1",
            2 => "room:2:deep",
            _ => "other:y",
        };
        let reply = publisher.publish(channel, json!(n)).await;
        assert_eq!(reply["type"], "published", "{reply}");
        all.push((channel, n));
    }
    // Not matched by anyone's patterns.
    publisher.publish("other:z", json!("nobody")).await;
    for channel in ["room:1", "room:2:deep", "other:x"] {
        publisher.publish(channel, json!("end")).await;
    }

    let expect = |pred: &dyn Fn(&str) -> bool| -> Vec<Value> {
        all.iter()
            .filter(|(ch, _)| pred(ch))
            .map(|(ch, n)| json!([ch, n]))
            .collect()
    };
    // Each client stops at its first "end"; every event before it is
    // checked, so a duplicate or a reordering fails.
    assert_eq!(
        events_until_end(&mut on_a).await,
        expect(&|ch| ch == "room:1"),
        "room:* on A"
    );
    assert_eq!(
        events_until_end(&mut on_b).await,
        expect(&|ch| ch.starts_with("room:")),
        "room:* + room:1 + room:** on B"
    );
    assert_eq!(
        events_until_end(&mut on_c1).await,
        expect(&|ch| ch == "room:1"),
        "room:1 on C"
    );
    assert_eq!(
        events_until_end(&mut on_c2).await,
        expect(&|ch| ch.starts_with("room:") || ch == "other:y"),
        "room:** + other:{{x,y}} on C"
    );
    // The remaining "end" markers, then nothing else.
    on_b.recv_type("event").await;
    let last = on_c2.recv_type("event").await;
    assert_eq!(last["data"], "end");
    let last = on_c2.recv_type("event").await;
    assert_eq!(last["data"], "end", "other:x end");
    on_c2.sync().await;
    on_c1.sync().await;
}

#[test]
fn the_example_cluster_config_is_valid() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster/node.toml"),
    )
    .expect("examples/cluster/node.toml");
    let config = chanhub::Config::from_toml(&text).expect("valid");
    assert_eq!(config.engine, chanhub::config::EngineKind::Redis);
}
