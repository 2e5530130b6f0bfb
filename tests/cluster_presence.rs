//! Cluster presence: members listed on every node, `join` / `leave`
//! reaching subscribers on every node once and in order with the events,
//! and the members of a node that dies dropping out (with one `leave`
//! each) once its heartbeat expires.

mod common;

use std::time::Duration;

use chanhub::auth::ClientType;
use chanhub::config::NamespaceConfig;
use common::WAIT;
use common::cluster::{PRESENCE_TTL, cluster, expect_membership, flush, present, with_join_leave};
use serde_json::json;

#[tokio::test]
async fn presence_spans_nodes_and_a_dead_nodes_members_expire() {
    let with_presence = |config: &mut chanhub::Config| {
        config.namespaces = vec![NamespaceConfig {
            pattern: "room:*".into(),
            history_size: 0,
            history_ttl: Duration::ZERO,
            presence: true,
            join_leave: false,
            allow_publish_by: Vec::new(),
            max_subscribers: None,
        }];
        config.redis.presence_ttl = PRESENCE_TTL;
    };
    let Some((_redis, mut nodes)) = cluster(3, with_presence).await else {
        return;
    };
    let mut alice = nodes[0].connect(ClientType::Browser, "alice").await;
    alice.subscribe(&["room:1"]).await;
    let mut bob = nodes[1].connect(ClientType::Browser, "bob").await;
    bob.subscribe(&["room:1"]).await;
    let mut carol = nodes[2].connect(ClientType::Browser, "carol").await;
    carol.subscribe(&["room:1"]).await;
    // Joins are written in order with each node's other writes.
    for node in &nodes {
        flush(node).await;
    }
    let mut everyone = ["alice", "bob", "carol"].map(String::from).to_vec();
    assert_eq!(present(&mut alice, "room:1").await, everyone);
    assert_eq!(present(&mut bob, "room:1").await, everyone);

    // Leaving is seen everywhere.
    bob.send(json!({"type": "unsubscribe", "id": "u", "channels": ["room:1"]}))
        .await;
    bob.recv_type("unsubscribed").await;
    flush(&nodes[1]).await;
    everyone.retain(|s| s != "bob");
    assert_eq!(present(&mut alice, "room:1").await, everyone);

    // A node that dies drops out once its heartbeat expires.
    nodes[2].kill();
    drop(carol);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if present(&mut alice, "room:1").await == ["alice"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "carol never left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn join_and_leave_reach_subscribers_on_every_node_once_and_in_order_with_events() {
    let Some((_redis, nodes)) = cluster(2, with_join_leave).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    // On B: a member of room:1, and a watcher holding overlapping patterns
    // (it gets each message once).
    let mut bob = b.connect(ClientType::Browser, "bob").await;
    bob.subscribe(&["room:1"]).await;
    expect_membership(&mut bob, "join", "room:1", "bob").await;
    // Bob's join goes out through B's publisher, in order: once a publish
    // of B's is acked, it is out, and later subscribers do not get it.
    flush(b).await;
    let mut watcher = b.connect(ClientType::Browser, "watcher").await;
    watcher.subscribe(&["room:*", "room:**"]).await;
    // On A too (the member's own node).
    let mut near = a.connect(ClientType::Browser, "near").await;
    near.subscribe(&["room:*"]).await;
    let mut backend = a.connect(ClientType::Hub, "backend").await;

    // On A: an event, alice joins, another event; every node sees them in
    // that order.
    backend.publish("room:1", json!("before")).await;
    let mut alice = a.connect(ClientType::Browser, "alice").await;
    alice.subscribe(&["room:1"]).await;
    expect_membership(&mut alice, "join", "room:1", "alice").await;
    backend.publish("room:1", json!("after")).await;
    for client in [&mut watcher, &mut bob, &mut near] {
        let event = client.recv().await;
        assert_eq!(event["data"], "before", "{event}");
        expect_membership(client, "join", "room:1", "alice").await;
        let event = client.recv().await;
        assert_eq!(event["data"], "after", "{event}");
    }
    // The member's own join came once, before the event.
    let event = alice.recv().await;
    assert_eq!(event["data"], "after", "{event}");

    // Unsubscribing on A, and a connection on A that just goes away.
    alice
        .send(json!({"type": "unsubscribe", "id": "u", "channels": ["room:1"]}))
        .await;
    alice.recv_type("unsubscribed").await;
    for client in [&mut watcher, &mut bob, &mut near] {
        expect_membership(client, "leave", "room:1", "alice").await;
    }
    let mut carol = a.connect(ClientType::Browser, "carol").await;
    carol.subscribe(&["room:1"]).await;
    for client in [&mut watcher, &mut bob, &mut near] {
        expect_membership(client, "join", "room:1", "carol").await;
    }
    drop(carol);
    for client in [&mut watcher, &mut bob, &mut near] {
        expect_membership(client, "leave", "room:1", "carol").await;
    }

    // B's own member leaving reaches A's subscribers (and not B's twice).
    alice.subscribe(&["room:*"]).await;
    bob.send(json!({"type": "unsubscribe", "id": "u", "channels": ["room:1"]}))
        .await;
    bob.recv_type("unsubscribed").await;
    expect_membership(&mut alice, "leave", "room:1", "bob").await;
    expect_membership(&mut watcher, "leave", "room:1", "bob").await;
    expect_membership(&mut near, "leave", "room:1", "bob").await;
    // A round trip through each node's publisher: nothing else was queued.
    backend.publish("room:1", json!("end")).await;
    for client in [&mut watcher, &mut alice, &mut near] {
        let event = client.recv().await;
        assert_eq!(event["data"], "end", "nothing before the end: {event}");
        client.expect_quiet().await;
    }
}

#[tokio::test]
async fn the_members_of_a_dead_node_leave_once_when_its_heartbeat_expires() {
    let Some((_redis, mut nodes)) = cluster(3, |config| {
        with_join_leave(config);
        config.redis.presence_ttl = PRESENCE_TTL;
    })
    .await
    else {
        return;
    };
    // Watchers on the two nodes that stay; a member on the one that dies.
    let mut on_a = nodes[0].connect(ClientType::Browser, "a").await;
    on_a.subscribe(&["room:*"]).await;
    let mut on_b = nodes[1].connect(ClientType::Browser, "b").await;
    on_b.subscribe(&["room:*"]).await;
    let mut doomed = nodes[2].connect(ClientType::Browser, "carol").await;
    doomed.subscribe(&["room:1"]).await;
    for watcher in [&mut on_a, &mut on_b] {
        expect_membership(watcher, "join", "room:1", "carol").await;
    }

    nodes[2].kill();
    drop(doomed);
    // Both live nodes sweep; exactly one removes carol and tells everyone.
    for watcher in [&mut on_a, &mut on_b] {
        expect_membership(watcher, "leave", "room:1", "carol").await;
    }
    assert_eq!(present(&mut on_a, "room:1").await, Vec::<String>::new());
    // The sweep that removed carol also forgot the dead node, so no later
    // one can send a second leave.
    on_a.expect_quiet().await;
    on_b.expect_quiet().await;
}
