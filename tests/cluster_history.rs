//! Cluster history: recovery by offset on another node than the one a
//! client left (WebSocket `since` and the `history` request, SSE
//! `Last-Event-ID`), and an epoch Redis does not know not being recovered.
//! What holds on one node of either engine (a lost `since` included) is in
//! `suite_history.rs` and `suite_sse_resume.rs`.

mod common;

use chanhub::auth::ClientType;
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
