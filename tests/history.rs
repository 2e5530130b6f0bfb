//! History, offsets and recovery against a real hub: WebSocket recovery
//! (exactly the missed events, in order, then live; an event published
//! during the recovery arrives exactly once), out-of-window and epoch
//! changes answered `recovered: false`, the `history` request, and SSE
//! resume with `Last-Event-ID` / `?lastEventId=` including `recovery:failed`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chanhub::auth::ClientType;
use chanhub::config::NamespaceConfig;
use chanhub::protocol::history::{SseCursor, StreamPosition};
use common::{RawResponse, TestHub, WsClient, expect_error, token_with};
use serde_json::{Value, json};

/// A namespace with history.
fn history_ns(pattern: &str, size: usize) -> NamespaceConfig {
    NamespaceConfig {
        pattern: pattern.into(),
        history_size: size,
        history_ttl: Duration::from_secs(600),
        presence: false,
        join_leave: false,
        allow_publish_by: Vec::new(),
        max_subscribers: None,
    }
}

/// A hub where `session:*` keeps 1000 events and `small:*` keeps 5.
async fn start() -> TestHub {
    TestHub::with_config(|c| {
        c.namespaces = vec![history_ns("session:*", 1000), history_ns("small:*", 5)];
    })
    .await
}

/// The next `event`, skipping nothing: anything else fails.
async fn next_event(client: &mut WsClient) -> Value {
    let msg = client.recv().await;
    assert_eq!(msg["type"], "event", "expected an event: {msg}");
    msg
}

fn offset(event: &Value) -> u64 {
    event["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset: {event}"))
}

fn position(value: &Value) -> StreamPosition {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"))
}

/// Subscribes with `since` and returns the `subscribed` reply (the next
/// message).
async fn subscribe_since(client: &mut WsClient, channels: &[&str], since: Value) -> Value {
    client
        .send(json!({"type": "subscribe", "id": "rs", "channels": channels, "since": since}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    reply
}

#[tokio::test]
async fn websocket_recovery_replays_exactly_the_missed_events_then_live() {
    let hub = start().await;
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    let reply = ui.subscribe(&["session:42"]).await;
    let start = position(&reply["positions"]["session:42"]);
    assert_eq!(start.offset, 0, "{reply}");

    for n in 0..3 {
        publisher.publish("session:42", json!({"n": n})).await;
    }
    let mut last = None;
    for n in 0..3u64 {
        let event = next_event(&mut ui).await;
        assert_eq!(event["data"]["n"], n);
        assert_eq!(offset(&event), n + 1);
        assert_eq!(event["epoch"], start.epoch.as_str());
        last = Some(event);
    }
    let last = last.expect("three events");
    drop(ui);

    let mut missed_ids = Vec::new();
    for n in 3..53 {
        let ack = publisher.publish("session:42", json!({"n": n})).await;
        missed_ids.push(ack["eventId"].as_str().expect("eventId").to_string());
    }

    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    let since = json!({"session:42": {"offset": offset(&last), "epoch": last["epoch"]}});
    let reply = subscribe_since(&mut ui, &["session:42"], since).await;
    assert_eq!(reply["recovered"], json!({"session:42": true}), "{reply}");
    assert_eq!(reply["positions"]["session:42"]["offset"], 53, "{reply}");
    for (i, id) in missed_ids.iter().enumerate() {
        let event = next_event(&mut ui).await;
        assert_eq!(offset(&event), 4 + i as u64, "{event}");
        assert_eq!(event["data"]["n"], 3 + i as u64);
        assert_eq!(event["id"], id.as_str());
    }
    ui.expect_quiet().await;
    publisher.publish("session:42", json!({"n": 53})).await;
    let live = next_event(&mut ui).await;
    assert_eq!(offset(&live), 54);
    assert_eq!(live["data"]["n"], 53);
    ui.expect_quiet().await;
}

/// The switch from history to live is race-free: with a publisher running
/// while the subscriber recovers, every event after the `since` offset
/// arrives exactly once, in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_during_recovery_arrives_exactly_once() {
    const ROUNDS: usize = 50;
    const BEFORE: u64 = 5;
    /// Events published after the reply, so the publisher surely overlaps
    /// the recovery; and a cap that keeps everything in the history and in
    /// the outbound queue.
    const AFTER: u64 = 20;
    const CAP: u64 = 800;
    let hub = start().await;
    let channel_hub = hub.hub.clone();
    // Rounds whose switch from history to live fell inside the concurrent
    // publishing (some of its events replayed, the rest live).
    let mut overlapped = 0;
    for round in 0..ROUNDS {
        let channel = format!("session:race-{round}");
        let name = channel_hub.channel(&channel).expect("valid");
        for n in 0..BEFORE {
            channel_hub.publish(name.clone(), json!(n));
        }
        let position = channel_hub.history_position(&name).expect("history");
        // Recover from the middle of what is already kept.
        let since = json!({&channel: {"offset": 2, "epoch": position.epoch}});

        let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
        let replied = Arc::new(AtomicBool::new(false));
        let publisher = {
            let hub = channel_hub.clone();
            let name = name.clone();
            let replied = Arc::clone(&replied);
            tokio::spawn(async move {
                let mut after = 0;
                for n in BEFORE..BEFORE + CAP {
                    hub.publish(name.clone(), json!(n));
                    if replied.load(Ordering::Acquire) {
                        after += 1;
                        if after == AFTER {
                            return n + 1;
                        }
                    }
                    tokio::task::yield_now().await;
                }
                BEFORE + CAP
            })
        };
        let reply = subscribe_since(&mut ui, &[channel.as_str()], since).await;
        replied.store(true, Ordering::Release);
        assert_eq!(reply["recovered"][&channel], true, "round {round}: {reply}");
        let published = publisher.await.expect("publisher");
        channel_hub.publish(name.clone(), json!("end"));
        let switch = reply["positions"][&channel]["offset"]
            .as_u64()
            .expect("position");
        if switch > BEFORE && switch < published {
            overlapped += 1;
        }

        let mut expected = 3;
        loop {
            let event = next_event(&mut ui).await;
            assert_eq!(
                offset(&event),
                expected,
                "round {round}: a gap or a duplicate: {event}"
            );
            expected += 1;
            if event["data"] == "end" {
                break;
            }
        }
        assert_eq!(expected, published + 2, "round {round}");
        ui.expect_quiet().await;
    }
    assert!(overlapped > 0, "the publisher never overlapped a recovery");
}

#[tokio::test]
async fn out_of_window_and_epoch_changes_are_not_recovered() {
    let hub = start().await;
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    let reply = ui.subscribe(&["small:1"]).await;
    let start = position(&reply["positions"]["small:1"]);
    drop(ui);
    // small:* keeps 5 events: 10 push the first ones out.
    for n in 0..10 {
        publisher.publish("small:1", json!(n)).await;
    }
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    let since = json!({"small:1": {"offset": start.offset, "epoch": start.epoch}});
    let reply = subscribe_since(&mut ui, &["small:1"], since).await;
    assert_eq!(reply["recovered"], json!({"small:1": false}), "{reply}");
    assert_eq!(reply["positions"]["small:1"]["offset"], 10);
    // Nothing is replayed; live events continue the offsets.
    ui.expect_quiet().await;
    publisher.publish("small:1", json!("live")).await;
    let event = next_event(&mut ui).await;
    assert_eq!(offset(&event), 11);

    // Within the window but another epoch.
    let (mut other, _) = hub.connect(ClientType::Browser, "ui").await;
    let since = json!({"small:1": {"offset": 9, "epoch": "not-this-epoch"}});
    let reply = subscribe_since(&mut other, &["small:1"], since).await;
    assert_eq!(reply["recovered"], json!({"small:1": false}), "{reply}");
    other.expect_quiet().await;

    // A channel without history cannot be recovered either.
    let since = json!({"plain:1": {"offset": 1, "epoch": start.epoch}});
    let reply = subscribe_since(&mut other, &["plain:*"], since).await;
    assert_eq!(reply["recovered"], json!({"plain:1": false}), "{reply}");
    assert!(reply.get("positions").is_none(), "{reply}");
    // And one within the window recovers.
    let (mut third, _) = hub.connect(ClientType::Browser, "ui").await;
    let since = json!({"small:1": {"offset": 9, "epoch": start.epoch}});
    let reply = subscribe_since(&mut third, &["small:*"], since).await;
    assert_eq!(reply["recovered"], json!({"small:1": true}), "{reply}");
    assert_eq!(offset(&next_event(&mut third).await), 10);
    assert_eq!(offset(&next_event(&mut third).await), 11);
    third.expect_quiet().await;
}

#[tokio::test]
async fn a_restart_changes_the_epoch_and_recovery_fails() {
    let first = start().await;
    let (mut publisher, _) = first.connect(ClientType::Hub, "backend").await;
    let (mut ui, _) = first.connect(ClientType::Browser, "ui").await;
    ui.subscribe(&["session:1"]).await;
    publisher.publish("session:1", json!(1)).await;
    let event = next_event(&mut ui).await;
    drop(ui);
    drop(first);

    let second = start().await;
    let (mut publisher, _) = second.connect(ClientType::Hub, "backend").await;
    publisher.publish("session:1", json!(2)).await;
    let (mut ui, _) = second.connect(ClientType::Browser, "ui").await;
    let since = json!({"session:1": {"offset": offset(&event), "epoch": event["epoch"]}});
    let reply = subscribe_since(&mut ui, &["session:1"], since).await;
    assert_eq!(reply["recovered"], json!({"session:1": false}), "{reply}");
    assert_ne!(reply["positions"]["session:1"]["epoch"], event["epoch"]);
    ui.expect_quiet().await;
}

#[tokio::test]
async fn since_on_a_channel_already_live_or_unmatched_is_not_replayed() {
    let hub = start().await;
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    let reply = ui.subscribe(&["session:*"]).await;
    assert!(
        reply.get("positions").is_none(),
        "patterns have none: {reply}"
    );
    publisher.publish("session:7", json!(1)).await;
    let event = next_event(&mut ui).await;
    // session:7 is live already through session:*: no replay, no answer.
    let since = json!({"session:7": {"offset": 0, "epoch": event["epoch"]}, "other:1": {"offset": 0, "epoch": "x"}});
    let reply = subscribe_since(&mut ui, &["session:7"], since).await;
    assert!(reply.get("recovered").is_none(), "{reply}");
    ui.expect_quiet().await;
    // A since key that is not a channel name is an error, before subscribed.
    ui.send(json!({"type": "subscribe", "id": 9, "channels": ["session:8"], "since": {"a::b": {"offset": 1, "epoch": "x"}}}))
        .await;
    let err = expect_error(&mut ui, "invalid_channel").await;
    assert_eq!(err["channel"], "a::b");
    let reply = ui.recv().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

#[tokio::test]
async fn history_request_pages_and_checks_permission() {
    let hub = start().await;
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    for n in 1..=5 {
        publisher.publish("session:h", json!(n)).await;
    }
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "history", "id": 1, "channel": "session:h", "limit": 3}))
        .await;
    let page = ui.recv().await;
    assert_eq!(page["type"], "history", "{page}");
    assert_eq!(page["id"], 1);
    assert_eq!(page["offset"], 5);
    assert!(page.get("recovered").is_none(), "{page}");
    let offsets: Vec<u64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(offset)
        .collect();
    assert_eq!(offsets, [3, 4, 5]);
    assert_eq!(page["events"][0]["data"], 3);
    let epoch = page["epoch"].clone();

    ui.send(json!({"type": "history", "id": 2, "channel": "session:h", "since": {"offset": 1, "epoch": epoch}, "limit": 2}))
        .await;
    let page = ui.recv().await;
    assert_eq!(page["recovered"], true, "{page}");
    let offsets: Vec<u64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(offset)
        .collect();
    assert_eq!(offsets, [2, 3]);

    ui.send(json!({"type": "history", "id": 3, "channel": "session:h", "since": {"offset": 1, "epoch": "old"}}))
        .await;
    let page = ui.recv().await;
    assert_eq!(page["recovered"], false, "{page}");

    ui.send(json!({"type": "history", "id": 4, "channel": "plain:1"}))
        .await;
    let err = expect_error(&mut ui, "bad_request").await;
    assert_eq!(err["channel"], "plain:1");

    let narrow = token_with(json!({"sub": "ui", "client_type": "browser", "channels": ["task:*"]}));
    let (mut limited, _) = hub.connect_with_token(&narrow).await;
    limited
        .send(json!({"type": "history", "id": 5, "channel": "session:h"}))
        .await;
    expect_error(&mut limited, "forbidden").await;
}

// ---- SSE ----

/// Opens an SSE stream; `headers` may carry Last-Event-ID.
async fn open_sse(hub: &TestHub, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let token = hub.token(ClientType::Browser, "ops");
    let auth = format!("Bearer {token}");
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    RawResponse::get(hub.addr, path, &all).await
}

/// A parsed SSE frame.
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Value,
}

async fn next_sse(stream: &mut RawResponse) -> Frame {
    let text = stream.next_event_frame().await;
    let mut frame = Frame {
        id: None,
        event: None,
        data: Value::Null,
    };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            frame.id = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("event: ") {
            frame.event = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            frame.data = serde_json::from_str(v).expect("json data");
        }
    }
    frame
}

fn cursor(id: &str) -> SseCursor {
    SseCursor::decode(id)
        .expect("a valid cursor")
        .expect("a cursor")
}

#[tokio::test]
async fn sse_resume_with_last_event_id_replays_the_missed_events_first() {
    let hub = start().await;
    let publish = |n: u64| {
        let name = hub.hub.channel("session:sse").expect("valid");
        hub.hub.publish(name, json!({"n": n}))
    };
    let mut stream = open_sse(&hub, "/api/stream?channels=session:sse,plain:*", &[]).await;
    assert_eq!(stream.status, 200);
    let connected = next_sse(&mut stream).await;
    assert_eq!(connected.data["type"], "connected");
    let start = cursor(connected.id.as_deref().expect("a cursor from the start"));
    assert_eq!(start.get("session:sse").map(|p| p.offset), Some(0));
    for n in 0..3 {
        publish(n);
    }
    let mut last_id = String::new();
    for n in 0..3u64 {
        let frame = next_sse(&mut stream).await;
        assert_eq!(frame.data["channel"], "session:sse");
        assert_eq!(frame.data["data"]["n"], n);
        last_id = frame.id.expect("id");
        assert_eq!(
            cursor(&last_id).get("session:sse").map(|p| p.offset),
            Some(n + 1)
        );
    }
    drop(stream);
    for n in 3..13 {
        publish(n);
    }

    let mut stream = open_sse(
        &hub,
        "/api/stream?channels=session:sse,plain:*",
        &[("Last-Event-ID", &last_id)],
    )
    .await;
    assert_eq!(stream.status, 200);
    let connected = next_sse(&mut stream).await;
    assert_eq!(connected.data["type"], "connected");
    assert_eq!(connected.id.as_deref(), Some(last_id.as_str()));
    for n in 3..13u64 {
        let frame = next_sse(&mut stream).await;
        assert!(frame.event.is_none());
        assert_eq!(frame.data["data"]["n"], n, "missed events in order");
        let id = frame.id.expect("id");
        assert_eq!(
            cursor(&id).get("session:sse").map(|p| p.offset),
            Some(n + 1)
        );
    }
    publish(13);
    // A channel without history keeps the cursor as the id.
    let plain = hub.hub.channel("plain:1").expect("valid");
    hub.hub.publish(plain, json!("plain"));
    let frame = next_sse(&mut stream).await;
    assert_eq!(frame.data["data"]["n"], 13, "then live");
    let live_id = frame.id.expect("id");
    let frame = next_sse(&mut stream).await;
    assert_eq!(frame.data["channel"], "plain:1");
    assert_eq!(frame.id.as_deref(), Some(live_id.as_str()));

    // ?lastEventId= works the same (EventSource cannot set headers on the
    // first request).
    let query = format!("/api/stream?channels=session:sse&lastEventId={last_id}");
    let mut stream = open_sse(&hub, &query, &[]).await;
    next_sse(&mut stream).await;
    for n in 3..14u64 {
        assert_eq!(next_sse(&mut stream).await.data["data"]["n"], n);
    }
}

#[tokio::test]
async fn sse_impossible_resume_sends_recovery_failed() {
    let hub = start().await;
    for n in 0..10 {
        let name = hub.hub.channel("small:sse").expect("valid");
        hub.hub.publish(name, json!(n));
    }
    let position = hub
        .hub
        .history_position(&hub.hub.channel("small:sse").expect("valid"))
        .expect("history");
    let mut old = SseCursor::new();
    // Out of the 5-event window, and an unknown epoch.
    old.set(
        "small:sse",
        StreamPosition {
            offset: 1,
            epoch: position.epoch.clone(),
        },
    );
    old.set(
        "session:gone",
        StreamPosition {
            offset: 3,
            epoch: "from-a-previous-run".into(),
        },
    );
    let id = old.encode();
    let mut stream = open_sse(
        &hub,
        "/api/stream?channels=small:sse,session:gone",
        &[("Last-Event-ID", &id)],
    )
    .await;
    assert_eq!(stream.status, 200);
    let connected = next_sse(&mut stream).await;
    assert_eq!(connected.data["type"], "connected");
    let failed = next_sse(&mut stream).await;
    assert_eq!(failed.event.as_deref(), Some("recovery:failed"));
    assert_eq!(failed.data["type"], "recovery:failed");
    assert_eq!(
        failed.data["data"]["channels"],
        json!(["session:gone", "small:sse"])
    );
    // Its id moves the failed channels to where live delivery starts.
    let now = cursor(failed.id.as_deref().expect("id"));
    assert_eq!(now.get("small:sse").map(|p| p.offset), Some(10));
    assert_eq!(now.get("session:gone").map(|p| p.offset), Some(0));
    // Nothing replayed: the next frame is live.
    let name = hub.hub.channel("small:sse").expect("valid");
    hub.hub.publish(name, json!("live"));
    let frame = next_sse(&mut stream).await;
    assert_eq!(frame.data["data"], "live");

    // A cursor that cannot be read is refused.
    let stream = open_sse(
        &hub,
        "/api/stream?channels=small:sse",
        &[("Last-Event-ID", "r1.%%%")],
    )
    .await;
    assert_eq!(stream.status, 400);
}

#[tokio::test]
async fn no_namespaces_means_no_offsets_and_plain_sse_ids() {
    let hub = TestHub::start().await;
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    let reply = ui.subscribe(&["session:1"]).await;
    assert!(reply.get("positions").is_none(), "{reply}");
    let ack = publisher.publish("session:1", json!(1)).await;
    let event = next_event(&mut ui).await;
    assert!(event.get("offset").is_none() && event.get("epoch").is_none());
    let mut stream = open_sse(&hub, "/api/stream?channels=session:1", &[]).await;
    let connected = next_sse(&mut stream).await;
    assert!(connected.id.is_none());
    let ack2 = publisher.publish("session:1", json!(2)).await;
    let frame = next_sse(&mut stream).await;
    assert_eq!(frame.id.as_deref(), ack2["eventId"].as_str());
    assert_ne!(ack["eventId"], ack2["eventId"]);
}
