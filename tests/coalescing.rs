//! Write coalescing while the hub is saturated (`websocket.coalesce_interval`):
//! an event for an idle connection waits for the pacer's tick (falling
//! behind) or its next batch (keeping up) and leaves with whatever queued
//! behind it, in order; a connection's own requests and direct messages
//! (task assignments) never wait.
//!
//! The pacer here ticks every 10 s (longer than any test) and is saturated
//! on demand; the test releases the tick itself, so nothing depends on
//! timing.

mod common;

use std::time::Duration;

use chanhub::auth::ClientType;
use common::{RawResponse, TestHub};
use serde_json::json;

/// A hub saturated on demand, whose pacer ticks only when the test says.
async fn saturated_hub() -> TestHub {
    let hub =
        TestHub::with_config(|c| c.websocket.coalesce_interval = Duration::from_secs(10)).await;
    hub.hub.pacer_overload_for(u32::MAX);
    hub
}

/// The same, with room for `events` in each connection's queue.
async fn saturated_hub_with_queue(events: usize) -> TestHub {
    let hub = TestHub::with_config(|c| {
        c.websocket.coalesce_interval = Duration::from_secs(10);
        c.limits.outbound_queue = events;
    })
    .await;
    hub.hub.pacer_overload_for(u32::MAX);
    hub
}

/// The hub's `/metrics` text.
async fn metrics(hub: &TestHub) -> String {
    reqwest::get(hub.http_url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body")
}

#[tokio::test]
async fn while_saturated_events_wait_for_the_tick_then_leave_in_order() {
    let hub = saturated_hub().await;
    let (mut browser, _) = hub.connect(ClientType::Browser, "ui").await;
    browser.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let before = hub.hub.pacer_held_wakeups();
    for n in 0..3 {
        backend.publish_ok("session:1", json!(n)).await;
    }
    // The first event found the connection idle: waking it waits for the
    // tick. The next two joined it in the queue and woke nobody.
    assert_eq!(hub.hub.pacer_held_wakeups() - before, 1);
    let text = metrics(&hub).await;
    assert!(text.contains("\nchanhub_coalescing 1\n"), "{text}");
    assert!(
        text.contains(&format!(
            "\nchanhub_coalesced_wakeups_total {}\n",
            hub.hub.pacer_held_wakeups()
        )),
        "{text}"
    );

    hub.hub.pacer_release();
    for n in 0..3 {
        let event = browser.recv().await;
        assert_eq!(event["type"], "event", "{event}");
        assert_eq!(event["data"], n, "{event}");
    }
    browser.expect_quiet().await;
}

#[tokio::test]
async fn a_busy_hub_that_keeps_up_batches_events_and_says_for_how_long() {
    let hub =
        TestHub::with_config(|c| c.websocket.coalesce_interval = Duration::from_secs(10)).await;
    let (mut browser, _) = hub.connect(ClientType::Browser, "ui").await;
    browser.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let text = metrics(&hub).await;
    assert!(text.contains("\nchanhub_batch_seconds 0.0\n"), "{text}");
    // Not batching: an event wakes its connection at once.
    backend.publish_ok("session:1", json!("prompt")).await;
    assert_eq!(browser.recv().await["data"], "prompt");

    hub.hub.pacer_batch_for(Duration::from_millis(8));
    let before = hub.hub.pacer_held_wakeups();
    for n in 0..3 {
        backend.publish_ok("session:1", json!(n)).await;
    }
    assert_eq!(
        hub.hub.pacer_held_wakeups() - before,
        1,
        "one wake-up, put off"
    );
    let text = metrics(&hub).await;
    assert!(text.contains("\nchanhub_batch_seconds 0.008\n"), "{text}");
    assert!(
        text.contains("\nchanhub_coalescing 0\n"),
        "batching is not holding: {text}"
    );
    let stats: serde_json::Value = common::bearer_client(&hub.token(ClientType::Hub, "ops"))
        .get(hub.http_url("/api/stats"))
        .send()
        .await
        .expect("GET /api/stats")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stats["events"]["batchSeconds"], 0.008, "{stats}");

    // The batch's release wakes it, and the three leave together, in order.
    hub.hub.pacer_release();
    for n in 0..3 {
        let event = browser.recv().await;
        assert_eq!(event["data"], n, "{event}");
    }
    browser.expect_quiet().await;
}

#[tokio::test]
async fn a_connection_whose_queue_half_fills_is_woken_at_once_not_dropped() {
    let hub = saturated_hub_with_queue(8).await;
    let (mut browser, _) = hub.connect(ClientType::Browser, "ui").await;
    browser.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    // Never released: without the early wake-up the ninth event would find
    // the queue full and drop a subscriber that reads everything.
    for n in 0..20 {
        let reply = backend.publish("session:1", json!(n)).await;
        assert_eq!(reply["delivered"], 1, "{reply}");
    }
    hub.hub.pacer_release();
    for n in 0..20 {
        let event = browser.recv().await;
        assert_eq!(event["data"], n, "{event}");
    }
    browser.expect_quiet().await;
}

#[tokio::test]
async fn a_publisher_s_backlog_read_at_once_does_not_drop_subscribers_that_read() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let hub = saturated_hub_with_queue(8).await;
    let (mut browser, _) = hub.connect(ClientType::Browser, "ui").await;
    browser.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    // 200 publishes with no reply asked, in one write: the hub reads them
    // all at once, as it reads a publisher whose frames waited in its
    // socket. Each event lands in a queue of 8 whose wake-up is held; the
    // publisher's session must let the woken writer run before the queue
    // fills, however many frames it has read.
    const BURST: u64 = 200;
    for n in 0..BURST {
        let publish = json!({"type": "publish", "channel": "session:1", "data": n});
        backend
            .ws
            .feed(Message::text(publish.to_string()))
            .await
            .expect("feed");
    }
    backend.ws.flush().await.expect("flush");
    for n in 0..BURST {
        let event = browser.recv().await;
        assert_eq!(event["type"], "event", "{event}");
        assert_eq!(event["data"], n, "{event}");
    }
    browser.expect_quiet().await;
}

#[tokio::test]
async fn a_request_of_the_connections_own_writes_what_waits_first() {
    let hub = saturated_hub().await;
    let (mut browser, _) = hub.connect(ClientType::Browser, "ui").await;
    browser.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    backend.publish_ok("session:1", json!("waiting")).await;
    // No tick: the ping wakes the connection, which writes the queued
    // event before it answers.
    browser.send(json!({"type": "ping", "id": "p"})).await;
    let event = browser.recv().await;
    assert_eq!(event["type"], "event", "{event}");
    assert_eq!(event["data"], "waiting");
    let pong = browser.recv().await;
    assert_eq!(pong["type"], "pong", "{pong}");
}

#[tokio::test]
async fn task_assignments_never_wait_for_the_tick() {
    let hub = saturated_hub().await;
    let (mut worker, _) = hub.connect(ClientType::Worker, "w").await;
    worker.register(&["resize:*"], 1).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let before = hub.hub.pacer_held_wakeups();
    let id = backend
        .submit_task(json!({"type": "resize:png", "payload": {"n": 1}}))
        .await;
    // Never released: the assignment arrives all the same.
    let task = worker.next_assign().await;
    assert_eq!(task["id"], id.as_str(), "{task}");
    assert_eq!(hub.hub.pacer_held_wakeups(), before);
}

#[tokio::test]
async fn an_sse_stream_waits_for_the_tick_too_and_misses_nothing() {
    let hub = saturated_hub().await;
    let token = hub.token(ClientType::Browser, "operator");
    let mut sse = RawResponse::get(
        hub.addr,
        "/api/stream?channels=session:*",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(sse.status, 200);
    let connected = sse.next_event_frame().await;
    assert!(connected.contains("\"connected\""), "{connected}");
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    // The stream is open and subscribed once an event published now
    // reaches it; from then on it waits idle for the next one.
    hub.hub.pacer_release();
    backend.publish_ok("session:1", json!("first")).await;
    hub.hub.pacer_release();
    let frame = sse.next_event_frame().await;
    assert!(frame.contains("\"first\""), "{frame}");
    let before = hub.hub.pacer_held_wakeups();
    for n in 0..3 {
        backend.publish_ok("session:1", json!(n)).await;
    }
    assert_eq!(hub.hub.pacer_held_wakeups() - before, 1);
    hub.hub.pacer_release();
    for n in 0..3 {
        let frame = sse.next_event_frame().await;
        assert!(frame.contains(&format!("\"data\":{n}")), "{frame}");
    }
}

#[test]
fn a_coalesce_interval_over_ten_seconds_is_refused() {
    let err = chanhub::Config::from_toml("[websocket]\ncoalesce_interval = \"11s\"\n")
        .expect_err("refused");
    assert!(
        err.to_string().contains("websocket.coalesce_interval"),
        "{err}"
    );
    let off = chanhub::Config::from_toml("[websocket]\ncoalesce_interval = \"0s\"\n")
        .expect("0s turns it off");
    assert!(off.websocket.coalesce_interval.is_zero());
}

/// Polls `condition` until it holds; panics after `WAIT` (a hang guard,
/// not a timing assumption).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let waited = tokio::time::timeout(common::WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never: {what}");
}

#[tokio::test]
async fn an_idle_hub_stops_ticking_and_the_next_delivery_starts_it_again() {
    let hub =
        TestHub::with_config(|c| c.websocket.coalesce_interval = Duration::from_millis(5)).await;
    eventually("asleep with no connection", || hub.hub.pacer_asleep()).await;
    let (mut browser, _) = hub.connect(ClientType::Browser, "ui").await;
    browser.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    // Connecting and subscribing deliver no event.
    assert!(hub.hub.pacer_asleep());
    backend.publish_ok("session:1", json!("wake")).await;
    // The delivery wakes the ticker before the publish is acknowledged.
    assert!(!hub.hub.pacer_asleep());
    let event = browser.recv().await;
    assert_eq!(event["data"], "wake", "{event}");
    // Connected but quiet: asleep again, and a delivery still arrives.
    eventually("asleep with idle connections", || hub.hub.pacer_asleep()).await;
    backend.publish_ok("session:1", json!("again")).await;
    let event = browser.recv().await;
    assert_eq!(event["data"], "again", "{event}");
}

#[tokio::test]
async fn overloading_a_sleeping_pacer_wakes_it_and_strands_nothing() {
    let hub =
        TestHub::with_config(|c| c.websocket.coalesce_interval = Duration::from_millis(5)).await;
    eventually("asleep with no connection", || hub.hub.pacer_asleep()).await;
    // What parks from now on needs a tick: overloading wakes the ticker.
    hub.hub.pacer_overload_for(u32::MAX);
    assert!(!hub.hub.pacer_asleep());
    let (mut browser, _) = hub.connect(ClientType::Browser, "ui").await;
    browser.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    backend.publish_ok("session:1", json!("held")).await;
    // Never released by the test: a tick wakes the connection.
    let event = browser.recv().await;
    assert_eq!(event["data"], "held", "{event}");
}
