//! The Rust client's offset tracking and recovery against a real hub: a
//! network drop (a proxy between the client and the hub cuts the
//! connection while the hub keeps running) is followed by exactly the
//! missed events, in offset order, then live ones; a channel whose missed
//! events fell out of the history window is reported by
//! `Client::unrecovered`.

mod common;

use std::time::Duration;

use chanhub::auth::ClientType;
use chanhub::client::{Backoff, Client, ClientOptions, ConnectionState, Event, Events};
use chanhub::config::NamespaceConfig;
use common::proxy::Proxy;
use common::{TestHub, WAIT};
use serde_json::json;

/// A namespace with history.
fn history_ns(pattern: &str, size: usize) -> NamespaceConfig {
    NamespaceConfig {
        pattern: pattern.into(),
        history_size: size,
        history_ttl: Duration::from_secs(60),
        presence: false,
        join_leave: false,
        allow_publish_by: Vec::new(),
        max_subscribers: None,
    }
}

/// A hub where `room:**` keeps 100 events and `small:**` keeps 2.
async fn start() -> TestHub {
    TestHub::with_config(|c| {
        c.namespaces = vec![history_ns("room:**", 100), history_ns("small:**", 2)];
    })
    .await
}

fn options(url: &str, token: String) -> ClientOptions {
    ClientOptions {
        backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
        request_timeout: WAIT,
        connect_timeout: WAIT,
        ..ClientOptions::new(url, token)
    }
}

async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.next_event())
        .await
        .expect("timed out waiting for an event")
        .expect("events ended")
}

async fn wait_state(client: &Client, ok: impl FnMut(&ConnectionState) -> bool) {
    let mut state = client.state();
    tokio::time::timeout(WAIT, state.wait_for(ok))
        .await
        .expect("timed out waiting for a connection state")
        .expect("state sender dropped");
}

fn is_connected(state: &ConnectionState) -> bool {
    matches!(state, ConnectionState::Connected { .. })
}

/// Drops the client's connection, runs `while_down` (the hub keeps
/// running), then lets it reconnect and waits until it is `Connected`.
async fn drop_connection<F: std::future::Future<Output = ()>>(
    proxy: &Proxy,
    client: &Client,
    while_down: F,
) {
    proxy.cut();
    wait_state(client, |s| !is_connected(s)).await;
    while_down.await;
    proxy.reopen();
    wait_state(client, is_connected).await;
}

#[tokio::test]
async fn reconnect_replays_exactly_the_missed_events_then_live() {
    let hub = start().await;
    let proxy = Proxy::start(hub.addr).await;
    let token = hub.token(ClientType::Hub, "subscriber");
    let (client, mut events) = Client::connect(options(&proxy.url(), token))
        .await
        .expect("connect");
    let publisher_token = hub.token(ClientType::Hub, "publisher");
    let (publisher, _publisher_events) = Client::connect(options(&hub.ws_url(), publisher_token))
        .await
        .expect("connect publisher");
    client.subscribe(&["room:*"]).await.expect("subscribe");

    for n in 0..3 {
        publisher
            .publish("room:1", json!({"n": n}))
            .await
            .expect("publish");
    }
    for n in 0..3u64 {
        let event = next_event(&mut events).await;
        assert_eq!(event.data, json!({"n": n}));
        assert_eq!(event.offset, Some(n + 1), "{event:?}");
    }

    drop_connection(&proxy, &client, async {
        for n in 3..8 {
            publisher
                .publish("room:1", json!({"n": n}))
                .await
                .expect("publish");
        }
    })
    .await;
    publisher
        .publish("room:1", json!({"n": 8}))
        .await
        .expect("publish");

    // Exactly the missed ones in offset order, then the live one: nothing
    // lost, nothing twice.
    for n in 3..9u64 {
        let event = next_event(&mut events).await;
        assert_eq!(event.channel, "room:1");
        assert_eq!(event.data, json!({"n": n}), "{event:?}");
        assert_eq!(event.offset, Some(n + 1), "{event:?}");
    }
    assert!(client.unrecovered().borrow().is_empty());
    // A later live event comes next: no duplicate arrived in between.
    publisher
        .publish("room:1", json!({"n": 9}))
        .await
        .expect("publish");
    let event = next_event(&mut events).await;
    assert_eq!(event.offset, Some(10), "{event:?}");
    client.close().await;
    publisher.close().await;
}

#[tokio::test]
async fn events_beyond_the_window_are_reported_unrecovered() {
    let hub = start().await;
    let proxy = Proxy::start(hub.addr).await;
    let token = hub.token(ClientType::Hub, "subscriber");
    let (client, mut events) = Client::connect(options(&proxy.url(), token))
        .await
        .expect("connect");
    let publisher_token = hub.token(ClientType::Hub, "publisher");
    let (publisher, _publisher_events) = Client::connect(options(&hub.ws_url(), publisher_token))
        .await
        .expect("connect publisher");
    client
        .subscribe(&["small:*", "room:*"])
        .await
        .expect("subscribe");
    publisher
        .publish("small:1", json!(0))
        .await
        .expect("publish");
    publisher
        .publish("room:1", json!(0))
        .await
        .expect("publish");
    assert_eq!(next_event(&mut events).await.offset, Some(1));
    assert_eq!(next_event(&mut events).await.offset, Some(1));

    let mut unrecovered = client.unrecovered();
    drop_connection(&proxy, &client, async {
        // `small:*` keeps 2 events: 4 missed ones cannot be replayed.
        for n in 1..5 {
            publisher
                .publish("small:1", json!(n))
                .await
                .expect("publish");
        }
        publisher
            .publish("room:1", json!(1))
            .await
            .expect("publish");
    })
    .await;
    assert!(unrecovered.has_changed().expect("client alive"));
    assert_eq!(
        *unrecovered.borrow_and_update(),
        vec!["small:1".to_string()]
    );

    // `room:1` is recovered; `small:1` continues with live events.
    let event = next_event(&mut events).await;
    assert_eq!((event.channel.as_str(), event.offset), ("room:1", Some(2)));
    publisher
        .publish("small:1", json!(5))
        .await
        .expect("publish");
    let event = next_event(&mut events).await;
    assert_eq!((event.channel.as_str(), event.offset), ("small:1", Some(6)));
    client.close().await;
    publisher.close().await;
}
