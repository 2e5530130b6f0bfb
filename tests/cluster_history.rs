//! Cluster history: recovery by offset on another node than the one a
//! client left (WebSocket `since` and the `history` request, SSE
//! `Last-Event-ID`), and an epoch Redis does not know not being recovered.

mod common;

use chanhub::auth::ClientType;
use common::WsClient;
use common::cluster::{ClusterNode, cluster, with_history};
use serde_json::{Value, json};

#[tokio::test]
async fn a_client_reconnecting_to_another_node_recovers_missed_events_by_offset() {
    let Some((_redis, nodes)) = cluster(2, with_history).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut publisher = a.connect(ClientType::Hub, "backend").await;
    let mut ui = a.connect(ClientType::Browser, "ui").await;
    let reply = ui.subscribe(&["chat:1"]).await;
    assert_eq!(reply["positions"]["chat:1"]["offset"], 0, "{reply}");
    let epoch = reply["positions"]["chat:1"]["epoch"].clone();
    for n in 1..=3 {
        publisher.publish("chat:1", json!(n)).await;
    }
    let mut last = Value::Null;
    for n in 1..=3 {
        last = ui.recv_type("event").await;
        assert_eq!(last["data"], n);
        assert_eq!(last["offset"], n);
        assert_eq!(last["epoch"], epoch);
    }
    drop(ui);

    for n in 4..=7 {
        publisher.publish("chat:1", json!(n)).await;
    }
    // Back, on the other node, from the last offset seen.
    let mut ui = b.connect(ClientType::Browser, "ui").await;
    ui.send(json!({
        "type": "subscribe", "id": "r", "channels": ["chat:1"],
        "since": {"chat:1": {"offset": last["offset"], "epoch": last["epoch"]}}
    }))
    .await;
    let reply = ui.recv().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["recovered"]["chat:1"], true, "{reply}");
    assert_eq!(reply["positions"]["chat:1"]["offset"], 7, "{reply}");
    publisher.publish("chat:1", json!(8)).await;
    for n in 4..=8 {
        let event = ui.recv().await;
        assert_eq!(event["type"], "event", "{event}");
        assert_eq!(event["data"], n, "{event}");
        assert_eq!(event["offset"], n, "{event}");
    }
    ui.sync().await;

    // The history request reads the same stream on either node.
    ui.send(json!({"type": "history", "id": "h", "channel": "chat:1", "limit": 2}))
        .await;
    let page = ui.recv_type("history").await;
    assert_eq!(page["offset"], 8, "{page}");
    let offsets: Vec<&Value> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| &e["offset"])
        .collect();
    assert_eq!(offsets, [&json!(7), &json!(8)], "{page}");

    // A position of an epoch Redis does not know is not recovered.
    let mut stale = b.connect(ClientType::Browser, "stale").await;
    stale
        .send(json!({
            "type": "subscribe", "id": "r", "channels": ["chat:1"],
            "since": {"chat:1": {"offset": 2, "epoch": "0000000000000000"}}
        }))
        .await;
    let reply = stale.recv().await;
    assert_eq!(reply["recovered"]["chat:1"], false, "{reply}");
}

/// The next SSE frame that is not a keepalive: its `id:` and its data.
async fn next_sse(stream: &mut common::RawResponse) -> (Option<String>, Value) {
    let text = stream.next_event_frame().await;
    let (mut id, mut data) = (None, Value::Null);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = serde_json::from_str(v).expect("json data");
        }
    }
    (id, data)
}

async fn open_sse(node: &ClusterNode, last_event_id: Option<&str>) -> common::RawResponse {
    let token = common::token_with(json!({"client_type": "browser", "sub": "ops"}));
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(id) = last_event_id {
        headers.push(("Last-Event-ID", id));
    }
    let stream = common::RawResponse::get(node.addr, "/api/stream?channels=chat:1", &headers).await;
    assert_eq!(stream.status, 200);
    stream
}

#[tokio::test]
async fn an_sse_stream_resumed_on_another_node_replays_what_it_missed_once() {
    let Some((_redis, nodes)) = cluster(2, with_history).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut publisher = a.connect(ClientType::Hub, "backend").await;
    let mut stream = open_sse(a, None).await;
    let (_, connected) = next_sse(&mut stream).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    for n in 1..=3 {
        publisher.publish("chat:1", json!(n)).await;
    }
    let mut last_id = String::new();
    for n in 1..=3 {
        let (id, frame) = next_sse(&mut stream).await;
        assert_eq!(frame["data"], n, "{frame}");
        last_id = id.expect("an id: line on a history channel");
    }
    drop(stream);
    for n in 4..=7 {
        publisher.publish("chat:1", json!(n)).await;
    }

    // Back on node B with the last id seen: the missed events come from
    // Redis, then live ones, each once and in order.
    let mut stream = open_sse(b, Some(&last_id)).await;
    let (_, connected) = next_sse(&mut stream).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let mut seen = Vec::new();
    for _ in 4..=7 {
        let (_, frame) = next_sse(&mut stream).await;
        assert_eq!(frame["channel"], "chat:1", "no recovery:failed: {frame}");
        seen.push(frame["data"].clone());
    }
    publisher.publish("chat:1", json!(8)).await;
    let (_, frame) = next_sse(&mut stream).await;
    seen.push(frame["data"].clone());
    assert_eq!(seen, [json!(4), json!(5), json!(6), json!(7), json!(8)]);
}

/// `chat:*` keeps the last 3 events.
fn with_short_history(config: &mut chanhub::Config) {
    with_history(config);
    config.namespaces[0].history_size = 3;
}

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

#[tokio::test]
async fn history_with_a_lost_since_returns_the_oldest_kept_events_like_the_memory_engine() {
    let Some((_redis, nodes)) = cluster(2, with_short_history).await else {
        return;
    };
    let mut publisher = nodes[0].connect(ClientType::Hub, "backend").await;
    let mut reader = nodes[1].connect(ClientType::Browser, "ui").await;
    let clustered = lost_since_pages(&mut publisher, &mut reader).await;

    let memory = common::TestHub::with_config(with_short_history).await;
    let (mut publisher, _) = memory.connect(ClientType::Hub, "backend").await;
    let (mut reader, _) = memory.connect(ClientType::Browser, "ui").await;
    let single = lost_since_pages(&mut publisher, &mut reader).await;

    // As proto-docs/history.md says: `recovered: false`, then the events
    // start at the oldest kept one (3), `limit` still applies.
    let kept = |offsets: &[u64]| -> Vec<Value> { offsets.iter().map(|o| json!([o, o])).collect() };
    let expected = vec![
        json!([2, null, true, kept(&[3, 4, 5]), 5]),
        json!([1, null, false, kept(&[3, 4, 5]), 5]),
        json!([0, 2, false, kept(&[3, 4]), 5]),
        json!([4, null, false, kept(&[3, 4, 5]), 5]),
        json!([9, 1, false, kept(&[3]), 5]),
        json!([1, 0, false, kept(&[]), 5]),
    ];
    assert_eq!(single, expected, "memory engine");
    assert_eq!(clustered, expected, "redis engine");
}
