//! The history and recovery suite over WebSocket, on both engines (memory,
//! and two Redis cluster nodes: a client that comes back may land on the
//! other one): recovery replays exactly the missed events, in order, then
//! live; an event published during the recovery arrives exactly once;
//! out-of-window and epoch changes are answered `recovered: false`; and the
//! `history` request, with a lost `since` too. SSE resume is in
//! `suite_sse_resume.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chanhub::auth::ClientType;
use chanhub::protocol::history::StreamPosition;
use common::engine::{Engine, Hubs, on_both_engines};
use common::history::{epoch, history_ns, next_event, offset, with_history};
use common::{TestHub, WsClient, expect_error, token_with};
use serde_json::{Value, json};

/// `session:*` keeps 1000 events and `small:*` keeps 5; two nodes on Redis.
async fn start(engine: Engine) -> Hubs {
    Hubs::nodes(engine, 2, with_history).await
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

async fn websocket_recovery_replays_exactly_the_missed_events_then_live(engine: Engine) {
    let hubs = start(engine).await;
    let hub = hubs.node(0);
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

    // Back (on Redis, on the other node) from the last offset seen.
    let (mut ui, _) = hubs.node(1).connect(ClientType::Browser, "ui").await;
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
on_both_engines!(websocket_recovery_replays_exactly_the_missed_events_then_live);

/// The switch from history to live is race-free: with a publisher running
/// while the subscriber recovers, every event after the `since` offset
/// arrives exactly once, in offset order. The publisher runs in another
/// task, each publish acked before the next.
async fn an_event_published_during_recovery_arrives_exactly_once(engine: Engine) {
    const ROUNDS: usize = 50;
    const BEFORE: u64 = 5;
    /// Events published after the reply, so the publisher surely overlaps
    /// the recovery; and a cap that keeps everything in the history and in
    /// the outbound queue.
    const AFTER: u64 = 20;
    const CAP: u64 = 800;
    let hubs = start(engine).await;
    let (mut publisher, _) = hubs.node(0).connect(ClientType::Hub, "backend").await;
    // Rounds whose switch from history to live fell inside the concurrent
    // publishing (some of its events replayed, the rest live).
    let mut overlapped = 0;
    for round in 0..ROUNDS {
        let channel = format!("session:race-{round}");
        for n in 0..BEFORE {
            publisher.publish_ok(&channel, json!(n)).await;
        }
        // Recover from the middle of what is already kept.
        let since =
            json!({&channel: {"offset": 2, "epoch": epoch(&mut publisher, &channel).await}});

        let (mut ui, _) = hubs.node(1).connect(ClientType::Browser, "ui").await;
        let replied = Arc::new(AtomicBool::new(false));
        let concurrent = {
            let channel = channel.clone();
            let replied = Arc::clone(&replied);
            tokio::spawn(async move {
                let mut after = 0;
                for n in BEFORE..BEFORE + CAP {
                    publisher.publish_ok(&channel, json!(n)).await;
                    if replied.load(Ordering::Acquire) {
                        after += 1;
                        if after == AFTER {
                            return (publisher, n + 1);
                        }
                    }
                    tokio::task::yield_now().await;
                }
                (publisher, BEFORE + CAP)
            })
        };
        let reply = subscribe_since(&mut ui, &[channel.as_str()], since).await;
        replied.store(true, Ordering::Release);
        assert_eq!(reply["recovered"][&channel], true, "round {round}: {reply}");
        let published;
        (publisher, published) = concurrent.await.expect("publisher");
        publisher.publish_ok(&channel, json!("end")).await;
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
on_both_engines!(
    an_event_published_during_recovery_arrives_exactly_once,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn out_of_window_and_epoch_changes_are_not_recovered(engine: Engine) {
    let hubs = start(engine).await;
    let hub = hubs.node(0);
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    let reply = ui.subscribe(&["small:1"]).await;
    let start = position(&reply["positions"]["small:1"]);
    drop(ui);
    // small:* keeps 5 events: 10 push the first ones out.
    for n in 0..10 {
        publisher.publish("small:1", json!(n)).await;
    }
    let (mut ui, _) = hubs.node(1).connect(ClientType::Browser, "ui").await;
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
on_both_engines!(out_of_window_and_epoch_changes_are_not_recovered);

/// Memory only: a restarted hub starts every channel again under a new
/// epoch. On Redis the epoch lives in Redis and survives a node restart; it
/// changes only when Redis lost the channel (proto-docs/history.md,
/// "Cluster mode"), which `cluster_faults.rs` covers.
#[tokio::test]
async fn a_restart_changes_the_epoch_and_recovery_fails() {
    let first = TestHub::with_config(with_history).await;
    let (mut publisher, _) = first.connect(ClientType::Hub, "backend").await;
    let (mut ui, _) = first.connect(ClientType::Browser, "ui").await;
    ui.subscribe(&["session:1"]).await;
    publisher.publish("session:1", json!(1)).await;
    let event = next_event(&mut ui).await;
    drop(ui);
    drop(first);

    let second = TestHub::with_config(with_history).await;
    let (mut publisher, _) = second.connect(ClientType::Hub, "backend").await;
    publisher.publish("session:1", json!(2)).await;
    let (mut ui, _) = second.connect(ClientType::Browser, "ui").await;
    let since = json!({"session:1": {"offset": offset(&event), "epoch": event["epoch"]}});
    let reply = subscribe_since(&mut ui, &["session:1"], since).await;
    assert_eq!(reply["recovered"], json!({"session:1": false}), "{reply}");
    assert_ne!(reply["positions"]["session:1"]["epoch"], event["epoch"]);
    ui.expect_quiet().await;
}

async fn since_on_a_channel_already_live_or_unmatched_is_not_replayed(engine: Engine) {
    let hubs = start(engine).await;
    let hub = hubs.node(0);
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
on_both_engines!(since_on_a_channel_already_live_or_unmatched_is_not_replayed);

async fn history_request_pages_and_checks_permission(engine: Engine) {
    let hubs = start(engine).await;
    let hub = hubs.node(0);
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    for n in 1..=5 {
        publisher.publish("session:h", json!(n)).await;
    }
    // On Redis, read on the other node.
    let (mut ui, _) = hubs.node(1).connect(ClientType::Browser, "ui").await;
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
on_both_engines!(history_request_pages_and_checks_permission);

/// Publishes 1..=5 on `chat:1` through `publisher`, then asks `reader` for
/// the history from several positions; returns (since, limit, recovered,
/// offsets, newest offset) for each.
async fn lost_since_pages(publisher: &mut WsClient, reader: &mut WsClient) -> Vec<Value> {
    for n in 1..=5 {
        let reply = publisher.publish("chat:1", json!(n)).await;
        assert_eq!(reply["type"], "published", "{reply}");
    }
    reader
        .send(json!({"type": "history", "id": "h0", "channel": "chat:1", "limit": 0}))
        .await;
    let epoch = reader.recv_type("history").await["epoch"].clone();
    let other = json!("0000000000000000");
    let asks = [
        // Within the window: continued.
        (json!({"offset": 2, "epoch": epoch}), Value::Null),
        // Older than the oldest kept (3): lost, the oldest kept ones.
        (json!({"offset": 1, "epoch": epoch}), Value::Null),
        (json!({"offset": 0, "epoch": epoch}), json!(2)),
        // Another epoch, and an offset beyond the newest: lost too.
        (json!({"offset": 4, "epoch": other}), Value::Null),
        (json!({"offset": 9, "epoch": epoch}), json!(1)),
        (json!({"offset": 1, "epoch": epoch}), json!(0)),
    ];
    let mut pages = Vec::new();
    for (since, limit) in asks {
        let mut ask = json!({"type": "history", "id": "h", "channel": "chat:1", "since": since});
        if !limit.is_null() {
            ask["limit"] = limit.clone();
        }
        reader.send(ask).await;
        let page = reader.recv_type("history").await;
        let offsets: Vec<Value> = page["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events: {page}"))
            .iter()
            .map(|e| json!([e["offset"], e["data"]]))
            .collect();
        pages.push(json!([
            since["offset"],
            limit,
            page["recovered"],
            offsets,
            page["offset"]
        ]));
    }
    pages
}

/// As proto-docs/history.md says: a `history` request with a lost `since`
/// (another epoch, older than the oldest kept event, or beyond the newest)
/// answers `recovered: false`, then the oldest kept events, `limit` still
/// applying. On Redis the reader is on another node than the publisher.
async fn history_with_a_lost_since_returns_the_oldest_kept_events(engine: Engine) {
    let hubs = Hubs::nodes(engine, 2, |config| {
        config.namespaces = vec![history_ns("chat:*", 3)];
    })
    .await;
    let (mut publisher, _) = hubs.node(0).connect(ClientType::Hub, "backend").await;
    let (mut reader, _) = hubs.node(1).connect(ClientType::Browser, "ui").await;
    let pages = lost_since_pages(&mut publisher, &mut reader).await;

    let kept = |offsets: &[u64]| -> Vec<Value> { offsets.iter().map(|o| json!([o, o])).collect() };
    let expected = vec![
        json!([2, null, true, kept(&[3, 4, 5]), 5]),
        json!([1, null, false, kept(&[3, 4, 5]), 5]),
        json!([0, 2, false, kept(&[3, 4]), 5]),
        json!([4, null, false, kept(&[3, 4, 5]), 5]),
        json!([9, 1, false, kept(&[3]), 5]),
        json!([1, 0, false, kept(&[]), 5]),
    ];
    assert_eq!(pages, expected, "{engine:?}");
}
on_both_engines!(history_with_a_lost_since_returns_the_oldest_kept_events);
