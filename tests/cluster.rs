//! Cluster mode: several nodes in this process sharing one Redis (a child
//! `redis-server` on a free port). Cross-node pattern delivery exactly once
//! and in order, recovery by offset and `history` on another node,
//! presence and `join` / `leave` across nodes (dead nodes included), tasks
//! across nodes (priority, retries, drain, `max_queued`, dead nodes, ids and
//! the worker list), and Redis going away (killed, or frozen with SIGSTOP)
//! and coming back.

mod common;

use std::time::Duration;

use chanhub::auth::ClientType;
use chanhub::config::NamespaceConfig;
use common::{ClusterNode, RedisServer, WAIT, WsClient, expect_error};
use serde_json::{Value, json};

/// `redis.presence_ttl` of the tests that wait for a dead node to drop out:
/// short, but well above a health check delayed by a loaded machine (a
/// live node whose heartbeat lapses counts as dead).
const PRESENCE_TTL: Duration = Duration::from_secs(1);

/// Starts Redis and `n` nodes on it, or `None` when Redis is not installed.
async fn cluster(
    n: usize,
    tweak: impl Fn(&mut chanhub::Config),
) -> Option<(RedisServer, Vec<ClusterNode>)> {
    let redis = RedisServer::start().await?;
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(ClusterNode::start(&redis, "test:", &tweak).await);
    }
    Some((redis, nodes))
}

/// `chat:*` keeps history.
fn with_history(config: &mut chanhub::Config) {
    config.namespaces = vec![NamespaceConfig {
        pattern: "chat:*".into(),
        history_size: 100,
        history_ttl: Duration::from_secs(600),
        presence: false,
        join_leave: false,
        allow_publish_by: Vec::new(),
        max_subscribers: None,
    }];
}

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

/// `GET /readyz`: (status code, body status).
async fn readyz(node: &ClusterNode) -> (u16, String) {
    let response = reqwest::get(node.http_url("/readyz"))
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    (
        status,
        body["status"].as_str().unwrap_or_default().to_string(),
    )
}

/// Polls `/readyz` until it answers `status`.
async fn wait_readyz(node: &ClusterNode, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = readyz(node).await;
        if code == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_going_away_makes_nodes_not_ready_and_refuse_publishes_until_it_returns() {
    let Some((mut redis, nodes)) = cluster(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    assert_eq!(readyz(a).await, (200, "ready".to_string()));
    let mut publisher = a.connect(ClientType::Hub, "backend").await;
    let mut ui = b.connect(ClientType::Browser, "ui").await;
    ui.subscribe(&["news:*"]).await;
    publisher.publish("news:1", json!("before")).await;
    assert_eq!(ui.recv_type("event").await["data"], "before");

    redis.stop();
    assert_eq!(wait_readyz(a, 503).await, "engine_unavailable");
    assert_eq!(wait_readyz(b, 503).await, "engine_unavailable");
    // Refused, with a code, over the WebSocket and over HTTP.
    publisher
        .send(json!({"type": "publish", "id": "p", "channel": "news:1", "data": "lost"}))
        .await;
    expect_error(&mut publisher, "engine_unavailable").await;
    let http = reqwest::Client::new()
        .post(a.http_url("/api/publish"))
        .bearer_auth(common::token_with(
            json!({"client_type": "hub", "sub": "backend"}),
        ))
        .json(&json!({"channel": "news:1", "data": "lost"}))
        .send()
        .await
        .expect("post");
    assert_eq!(http.status().as_u16(), 503);
    let body: Value = http.json().await.expect("json");
    assert_eq!(body["error"]["code"], "engine_unavailable", "{body}");
    publisher
        .send(json!({"type": "task:submit", "id": "t", "task": {"type": "x", "payload": {}}}))
        .await;
    expect_error(&mut publisher, "engine_unavailable").await;

    // Back on the same port, empty: the nodes reconnect and resubscribe.
    redis.restart().await;
    assert_eq!(wait_readyz(a, 200).await, "ready");
    assert_eq!(wait_readyz(b, 200).await, "ready");
    let reply = publisher.publish("news:1", json!("after")).await;
    assert_eq!(reply["type"], "published", "{reply}");
    // The same connections, still open; "lost" was never delivered.
    assert_eq!(ui.recv_type("event").await["data"], "after");
    ui.sync().await;
}

/// Messages until `task:result`, keeping the `state` of each event on
/// `task:<id>`; returns (states, result).
async fn lifecycle_until_result(client: &mut WsClient, task_id: &str) -> (Vec<String>, Value) {
    let channel = format!("task:{task_id}");
    let mut states = Vec::new();
    loop {
        let msg = client.recv().await;
        match msg["type"].as_str() {
            Some("event") if msg["channel"] == channel.as_str() => {
                states.push(
                    msg["data"]["state"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            Some("task:result") => return (states, msg),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_task_submitted_on_one_node_runs_on_another_nodes_worker_and_the_submitter_sees_it_all() {
    let Some((_redis, nodes)) = cluster(3, |_| {}).await else {
        return;
    };
    let (a, c) = (&nodes[0], &nodes[2]);
    let mut worker = c.connect(ClientType::Worker, "w").await;
    worker.register(&["render:*"], 1).await;
    let mut submitter = a.connect(ClientType::Hub, "backend").await;
    submitter.subscribe(&["task:*"]).await;
    submitter
        .send(json!({"type": "task:submit", "id": "s", "task": {"type": "render:pdf", "payload": {"doc": 7}}}))
        .await;
    let accepted = submitter.recv_type("task:accepted").await;
    let task_id = accepted["taskId"].as_str().expect("task id").to_string();

    let assign = worker.next_assign().await;
    assert_eq!(assign["id"], task_id.as_str());
    assert_eq!(assign["payload"], json!({"doc": 7}));
    assert_eq!(assign["attempt"], 1);
    worker
        .send(json!({"type": "task:progress", "taskId": task_id, "progress": 50}))
        .await;
    worker.complete_task(&task_id, json!({"pages": 3})).await;

    let (states, result) = lifecycle_until_result(&mut submitter, &task_id).await;
    assert_eq!(result["task"]["state"], "completed", "{result}");
    assert_eq!(result["task"]["result"], json!({"pages": 3}), "{result}");
    // The result is direct; the last events may still be on their way.
    let mut states = states;
    while states.len() < 4 {
        let msg = submitter.recv_type("event").await;
        if msg["channel"] == format!("task:{task_id}").as_str() {
            states.push(
                msg["data"]["state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    assert_eq!(states, ["queued", "assigned", "assigned", "completed"]);
}

#[tokio::test]
async fn priority_order_holds_across_nodes() {
    let Some((_redis, nodes)) = cluster(3, |_| {}).await else {
        return;
    };
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut on_a = a.connect(ClientType::Hub, "a").await;
    let mut on_b = b.connect(ClientType::Hub, "b").await;
    let mut expected: Vec<(u8, String)> = Vec::new();
    for (n, priority) in [1u8, 9, 5, 9, 0, 5].into_iter().enumerate() {
        let submitter = if n % 2 == 0 { &mut on_a } else { &mut on_b };
        let id = submitter
            .submit_task(json!({"type": "job", "priority": priority, "payload": n}))
            .await;
        expected.push((priority, id));
    }
    // Highest priority first, then oldest first (a stable sort keeps
    // submission order within a priority).
    expected.sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

    let mut worker = c.connect(ClientType::Worker, "w").await;
    worker.register(&["job"], 1).await;
    let mut order = Vec::new();
    for _ in 0..expected.len() {
        let assign = worker.next_assign().await;
        let id = assign["id"].as_str().expect("id").to_string();
        worker.complete_task(&id, json!(null)).await;
        order.push(id);
    }
    assert_eq!(order, expected);
}

#[tokio::test]
async fn tasks_held_by_a_killed_node_are_completed_by_another_nodes_worker_once() {
    let Some((_redis, mut nodes)) = cluster(3, |_| {}).await else {
        return;
    };
    let mut submitter = nodes[0].connect(ClientType::Hub, "backend").await;
    submitter.subscribe(&["task:completed"]).await;
    let mut doomed = nodes[2].connect(ClientType::Worker, "doomed").await;
    doomed.register(&["job"], 2).await;
    let mut ids = Vec::new();
    for n in 0..2 {
        ids.push(
            submitter
                .submit_task(json!({"type": "job", "payload": n, "timeoutMs": 300}))
                .await,
        );
    }
    // Both held by the worker on the node about to die.
    for _ in 0..2 {
        let assign = doomed.next_assign().await;
        assert_eq!(assign["attempt"], 1);
    }
    let mut survivor = nodes[1].connect(ClientType::Worker, "survivor").await;
    survivor.register(&["job"], 2).await;
    nodes[2].kill();
    drop(doomed);

    // The leases run out; the other node's worker gets both, second attempt.
    let mut taken = Vec::new();
    for _ in 0..2 {
        let assign = survivor.next_assign().await;
        assert_eq!(assign["attempt"], 2, "{assign}");
        taken.push(assign["id"].as_str().expect("id").to_string());
    }
    for id in &taken {
        survivor.complete_task(id, json!("done")).await;
    }
    taken.sort();
    ids.sort();
    assert_eq!(taken, ids);

    // The submitter hears of each completion once: one result, one event.
    let mut results = Vec::new();
    let mut completed = Vec::new();
    while results.len() < 2 || completed.len() < 2 {
        let msg = submitter.recv().await;
        match msg["type"].as_str() {
            Some("task:result") => {
                assert_eq!(msg["task"]["state"], "completed", "{msg}");
                results.push(msg["task"]["id"].as_str().unwrap_or_default().to_string());
            }
            Some("event") => {
                completed.push(msg["data"]["id"].as_str().unwrap_or_default().to_string())
            }
            _ => panic!("unexpected {msg}"),
        }
    }
    results.sort();
    completed.sort();
    assert_eq!(results, ids);
    assert_eq!(completed, ids);
    submitter.expect_quiet().await;
}

/// Returns once every Redis write `node` queued before the call is done:
/// a hub's publish goes out through the node's one ordered publisher
/// connection and is acked only after Redis ran it (presence writes and
/// `join` / `leave` go through the same connection).
async fn flush(node: &ClusterNode) {
    let mut backend = node.connect(ClientType::Hub, "flush").await;
    backend.publish_ok("sync:flush", json!(null)).await;
}

/// The `sub`s in `presence` of `channel`, asked on `client`'s node.
async fn present(client: &mut WsClient, channel: &str) -> Vec<String> {
    client
        .send(json!({"type": "presence", "id": "p", "channel": channel}))
        .await;
    let reply = client.recv_type("presence").await;
    let mut subs: Vec<String> = reply["clients"]
        .as_array()
        .unwrap_or_else(|| panic!("no clients: {reply}"))
        .iter()
        .map(|c| c["sub"].as_str().unwrap_or_default().to_string())
        .collect();
    subs.sort();
    subs
}

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

#[test]
fn the_example_cluster_config_is_valid() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster/node.toml"),
    )
    .expect("examples/cluster/node.toml");
    let config = chanhub::Config::from_toml(&text).expect("valid");
    assert_eq!(config.engine, chanhub::config::EngineKind::Redis);
}

#[tokio::test]
async fn a_node_shut_down_gracefully_hands_its_workers_tasks_to_other_nodes_at_once() {
    let Some((_redis, mut nodes)) = cluster(3, |_| {}).await else {
        return;
    };
    let mut submitter = nodes[0].connect(ClientType::Hub, "backend").await;
    let mut leaving = nodes[1].connect(ClientType::Worker, "leaving").await;
    leaving.register(&["job"], 1).await;
    // A lease far longer than any wait here: only the hand-back can move it.
    let id = submitter
        .submit_task(json!({"type": "job", "payload": 1, "timeoutMs": 600000}))
        .await;
    assert_eq!(leaving.next_assign().await["id"], id.as_str());
    let mut staying = nodes[2].connect(ClientType::Worker, "staying").await;
    staying.register(&["job"], 1).await;

    // Rolling restart of node 1: SIGTERM-like shutdown.
    nodes[1].shutdown().await;
    let assign = staying.next_assign().await;
    assert_eq!(assign["id"], id.as_str());
    assert_eq!(assign["attempt"], 2, "{assign}");
    staying.complete_task(&id, json!("ok")).await;
    let result = submitter.recv_type("task:result").await;
    assert_eq!(result["task"]["state"], "completed", "{result}");
    assert_eq!(result["task"]["attempt"], 2, "{result}");
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

#[tokio::test]
async fn dedup_cancel_and_dead_letter_hold_across_nodes() {
    let Some((_redis, nodes)) = cluster(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut on_a = a.connect(ClientType::Hub, "backend").await;
    let mut on_b = b.connect(ClientType::Hub, "backend").await;

    // The same dedup key on another node returns the unfinished task.
    let first = on_a
        .submit_task_reply(json!({"type": "job:x", "payload": 1, "dedupKey": "k1"}))
        .await;
    assert_eq!(first["type"], "task:accepted", "{first}");
    let again = on_b
        .submit_task_reply(json!({"type": "job:x", "payload": 2, "dedupKey": "k1"}))
        .await;
    assert_eq!(again["taskId"], first["taskId"], "{again}");
    assert_eq!(again["deduplicated"], true, "{again}");

    // Cancelled from the other node (same submitter), it is never assigned.
    on_b.send(json!({"type": "task:cancel", "id": "c", "taskId": first["taskId"]}))
        .await;
    let ack = on_b.recv_type("task:ack").await;
    assert_eq!(ack["state"], "cancelled", "{ack}");
    on_b.send(json!({"type": "task:cancel", "id": "c2", "taskId": first["taskId"]}))
        .await;
    expect_error(&mut on_b, "invalid_state").await;
    // The submitting connection, on node A, is told.
    let told = on_a.recv_type("task:result").await;
    assert_eq!(told["task"]["id"], first["taskId"], "{told}");
    assert_eq!(told["task"]["state"], "cancelled", "{told}");

    // A non-retryable error on node B's worker dead-letters a task
    // submitted on node A, and A's submitter hears it.
    let mut worker = b.connect(ClientType::Worker, "w").await;
    worker.register(&["job:*"], 1).await;
    let doomed = on_a
        .submit_task(json!({"type": "job:x", "payload": 3, "maxAttempts": 5}))
        .await;
    let task = worker.next_assign().await;
    assert_eq!(
        task["id"],
        doomed.as_str(),
        "the cancelled task is not assigned"
    );
    worker
        .send(json!({"type": "task:error", "id": "e", "taskId": doomed, "error": "bad input"}))
        .await;
    let ack = worker.recv_type("task:ack").await;
    assert_eq!(ack["state"], "dead", "{ack}");
    let result = on_a.recv_type("task:result").await;
    assert_eq!(result["task"]["id"], doomed.as_str(), "{result}");
    assert_eq!(result["task"]["state"], "dead", "{result}");
    assert_eq!(result["task"]["error"], "bad input", "{result}");
}

#[tokio::test]
async fn the_task_list_shows_every_nodes_tasks() {
    let Some((_redis, nodes)) = cluster(3, |_| {}).await else {
        return;
    };
    let mut on_a = nodes[0].connect(ClientType::Hub, "backend").await;
    let mut on_b = nodes[1].connect(ClientType::Hub, "backend").await;
    let first = on_a
        .submit_task(json!({"type": "render:pdf", "payload": 1}))
        .await;
    let second = on_b
        .submit_task(json!({"type": "mail:send", "payload": 2}))
        .await;
    let third = on_b
        .submit_task(json!({"type": "render:png", "payload": 3}))
        .await;
    on_a.send(json!({"type": "task:cancel", "id": "c", "taskId": third}))
        .await;
    assert_eq!(on_a.recv_type("task:ack").await["state"], "cancelled");

    // Asked on node C, which holds none of them.
    let http = common::bearer_client(&common::token_with(
        json!({"client_type": "hub", "sub": "ops"}),
    ));
    let list = |query: &'static str| {
        let http = http.clone();
        let url = nodes[2].http_url(&format!("/api/tasks{query}"));
        async move {
            let body: Value = http
                .get(url)
                .send()
                .await
                .expect("GET /api/tasks")
                .json()
                .await
                .expect("json");
            body.as_array()
                .expect("a list")
                .iter()
                .map(|t| t["id"].as_str().expect("id").to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list("").await,
        [first.as_str(), second.as_str(), third.as_str()],
        "oldest first"
    );
    assert_eq!(
        list("?state=queued").await,
        [first.as_str(), second.as_str()]
    );
    assert_eq!(list("?state=cancelled").await, [third.as_str()]);
    assert_eq!(
        list("?type=render:*").await,
        [first.as_str(), third.as_str()]
    );
}

/// `room:*` has presence with `join` / `leave`.
fn with_join_leave(config: &mut chanhub::Config) {
    config.namespaces = vec![NamespaceConfig {
        pattern: "room:*".into(),
        history_size: 0,
        history_ttl: Duration::ZERO,
        presence: true,
        join_leave: true,
        allow_publish_by: Vec::new(),
        max_subscribers: None,
    }];
}

/// The next message, which must be `ty` (`join` / `leave`) of `sub` on
/// `channel`.
async fn expect_membership(client: &mut WsClient, ty: &str, channel: &str, sub: &str) {
    let msg = client.recv().await;
    assert_eq!(msg["type"], ty, "expected a {ty}: {msg}");
    assert_eq!(msg["channel"], channel, "{msg}");
    assert_eq!(msg["info"]["sub"], sub, "{msg}");
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

/// Node `node`'s id in the cluster.
fn node_id(node: &ClusterNode) -> String {
    node.hub.engine().node_id().expect("a cluster node")
}

#[tokio::test]
async fn worker_ids_are_unique_across_nodes_and_hub_names_the_node_running_the_task() {
    let Some((_redis, nodes)) = cluster(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    // The first connection of each node: the same connection id on both.
    let mut on_a = a.connect(ClientType::Worker, "wa").await;
    let mut on_b = b.connect(ClientType::Worker, "wb").await;
    let id_a = on_a.register(&["render"], 1).await["workerId"].clone();
    let id_b = on_b.register(&["mail"], 1).await["workerId"].clone();
    assert_ne!(id_a, id_b, "worker ids repeat across nodes");
    assert_eq!(id_a, json!(format!("{}-1", node_id(a))));
    assert_eq!(id_b, json!(format!("{}-1", node_id(b))));

    // A task submitted on A, run by B's worker: its record names B.
    let mut submitter = a.connect(ClientType::Hub, "backend").await;
    submitter.subscribe(&["task:queued", "task:assigned"]).await;
    let task_id = submitter
        .submit_task(json!({"type": "mail", "payload": 1}))
        .await;
    let queued = submitter.recv_type("event").await;
    assert_eq!(queued["channel"], "task:queued", "{queued}");
    assert!(queued["data"].get("hub").is_none(), "{queued}");
    assert!(queued["data"].get("workerId").is_none(), "{queued}");
    let assigned = submitter.recv_type("event").await;
    assert_eq!(assigned["channel"], "task:assigned", "{assigned}");
    assert_eq!(assigned["data"]["workerId"], id_b, "{assigned}");
    assert_eq!(assigned["data"]["hub"], node_id(b).as_str(), "{assigned}");
    assert_eq!(on_b.next_assign().await["id"], task_id.as_str());
    on_b.complete_task(&task_id, json!("sent")).await;
    let result = submitter.recv_type("task:result").await;
    assert_eq!(result["task"]["workerId"], id_b, "{result}");
    assert_eq!(result["task"]["hub"], node_id(b).as_str(), "{result}");

    // The same in the HTTP record and the workers list, asked on A.
    let http = common::bearer_client(&common::token_with(
        json!({"client_type": "hub", "sub": "ops"}),
    ));
    let record: Value = http
        .get(a.http_url(&format!("/api/tasks/{task_id}")))
        .send()
        .await
        .expect("GET task")
        .json()
        .await
        .expect("json");
    assert_eq!(record["workerId"], id_b, "{record}");
    assert_eq!(record["hub"], node_id(b).as_str(), "{record}");
    let ids =
        |list: &[Value]| -> Vec<Value> { list.iter().map(|w| w["workerId"].clone()).collect() };
    let workers = workers_until(a, |list| list.len() == 2).await;
    let mut expected = vec![id_a, id_b];
    expected.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
    assert_eq!(ids(&workers), expected);
}

/// `job` retries after 300 ms, without jitter.
fn with_slow_retry(config: &mut chanhub::Config) {
    config.tasks.retry = chanhub::config::RetryConfig {
        initial: Duration::from_millis(300),
        max: Duration::from_millis(300),
        jitter: 0.0,
    };
}

#[tokio::test]
async fn a_retryable_failure_is_retried_after_its_backoff_on_another_node_with_one_result() {
    let Some((_redis, nodes)) = cluster(3, with_slow_retry).await else {
        return;
    };
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut submitter = a.connect(ClientType::Hub, "backend").await;
    let mut failing = b.connect(ClientType::Worker, "failing").await;
    failing.register(&["job"], 1).await;
    let task_id = submitter
        .submit_task(json!({"type": "job", "payload": 1, "maxAttempts": 3}))
        .await;
    let first = failing.next_assign().await;
    assert_eq!(first["attempt"], 1, "{first}");
    let mut healthy = c.connect(ClientType::Worker, "healthy").await;
    let healthy_id = healthy.register(&["job"], 1).await["workerId"].clone();

    failing
        .send(json!({"type": "task:error", "id": "e", "taskId": task_id, "error": "flaky", "retryable": true}))
        .await;
    let ack = failing.recv_type("task:ack").await;
    let failed_at = tokio::time::Instant::now();
    assert_eq!(ack["state"], "failed", "{ack}");
    // Drained: the retry must go to the other node's worker.
    failing.send(json!({"type": "drain", "id": "d"})).await;
    let draining = failing.recv_type("draining").await;
    assert_eq!(draining["running"], 0, "{draining}");

    let second = healthy.next_assign().await;
    assert!(
        failed_at.elapsed() >= Duration::from_millis(250),
        "retried after {:?}, before its 300 ms backoff",
        failed_at.elapsed()
    );
    assert_eq!(second["id"], task_id.as_str());
    assert_eq!(second["attempt"], 2, "{second}");
    healthy.complete_task(&task_id, json!("ok")).await;

    let result = submitter.recv_type("task:result").await;
    assert_eq!(result["task"]["state"], "completed", "{result}");
    assert_eq!(result["task"]["attempt"], 2, "{result}");
    assert_eq!(result["task"]["workerId"], healthy_id, "{result}");
    assert_eq!(result["task"]["result"], "ok", "{result}");
    submitter.expect_quiet().await;
    failing.expect_quiet().await;
}

#[tokio::test]
async fn a_draining_worker_finishes_its_task_and_gets_no_new_one_in_cluster_mode() {
    let Some((_redis, nodes)) = cluster(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut submitter = a.connect(ClientType::Hub, "backend").await;
    let mut leaving = b.connect(ClientType::Worker, "leaving").await;
    leaving.register(&["job"], 2).await;
    let first = submitter
        .submit_task(json!({"type": "job", "payload": 1}))
        .await;
    assert_eq!(leaving.next_assign().await["id"], first.as_str());
    leaving.send(json!({"type": "drain", "id": "d"})).await;
    let draining = leaving.recv_type("draining").await;
    assert_eq!(draining["running"], 1, "{draining}");

    // A free slot, but draining: the next task waits for another worker.
    let second = submitter
        .submit_task(json!({"type": "job", "payload": 2}))
        .await;
    let http = common::bearer_client(&common::token_with(
        json!({"client_type": "hub", "sub": "ops"}),
    ));
    let workers: Value = http
        .get(b.http_url("/api/workers"))
        .send()
        .await
        .expect("GET workers")
        .json()
        .await
        .expect("json");
    assert_eq!(workers[0]["draining"], true, "{workers}");
    assert_eq!(workers[0]["running"], json!([first]), "{workers}");
    let mut staying = a.connect(ClientType::Worker, "staying").await;
    staying.register(&["job"], 1).await;
    assert_eq!(staying.next_assign().await["id"], second.as_str());

    // The running task still completes.
    leaving.complete_task(&first, json!("done")).await;
    staying.complete_task(&second, json!("done")).await;
    let mut results = Vec::new();
    for _ in 0..2 {
        let result = submitter.recv_type("task:result").await;
        assert_eq!(result["task"]["state"], "completed", "{result}");
        results.push(result["task"]["id"].as_str().expect("id").to_string());
    }
    results.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(results, expected);
    leaving.expect_quiet().await;
}

#[tokio::test]
async fn max_queued_counts_the_tasks_waiting_on_every_node() {
    let Some((_redis, nodes)) = cluster(3, |config| {
        config.tasks.max_queued = 2;
        // Retries wait longer than this test.
        config.tasks.retry.initial = Duration::from_secs(600);
        config.tasks.retry.max = Duration::from_secs(600);
    })
    .await
    else {
        return;
    };
    let mut on_a = nodes[0].connect(ClientType::Hub, "backend").await;
    let mut on_b = nodes[1].connect(ClientType::Hub, "backend").await;
    let mut on_c = nodes[2].connect(ClientType::Hub, "backend").await;
    on_a.submit_task(json!({"type": "job", "payload": 1})).await;
    on_b.submit_task(json!({"type": "job", "payload": 2})).await;
    // Two waiting in the cluster: C, holding none, is full too.
    let refused = on_c
        .submit_task_reply(json!({"type": "job", "payload": 3}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "queue_full", "{refused}");
    // Any type, any node.
    let refused = on_a
        .submit_task_reply(json!({"type": "other", "payload": 4}))
        .await;
    assert_eq!(refused["code"], "queue_full", "{refused}");

    // A worker takes one: room for one more, anywhere.
    let mut worker = nodes[2].connect(ClientType::Worker, "w").await;
    worker.register(&["job"], 1).await;
    let held = worker.next_assign().await;
    on_c.submit_task(json!({"type": "job", "payload": 5})).await;
    let refused = on_b
        .submit_task_reply(json!({"type": "job", "payload": 6}))
        .await;
    assert_eq!(refused["code"], "queue_full", "{refused}");

    // A task backing off before its retry still counts: the worker fails
    // its task and takes the next, and the queue stays full.
    worker
        .send(json!({"type": "task:error", "id": "e", "taskId": held["id"], "error": "later", "retryable": true}))
        .await;
    assert_eq!(worker.recv_type("task:ack").await["state"], "failed");
    assert_eq!(worker.next_assign().await["payload"], 2);
    let refused = on_b
        .submit_task_reply(json!({"type": "job", "payload": 7}))
        .await;
    assert_eq!(refused["code"], "queue_full", "{refused}");
}

/// What the submitter hears until it has a `task:result` and a lifecycle
/// event, and then nothing more: (results, events).
async fn results_and_events(submitter: &mut WsClient) -> (Vec<Value>, Vec<Value>) {
    let (mut results, mut events) = (Vec::new(), Vec::new());
    while results.is_empty() || events.is_empty() {
        let msg = submitter.recv().await;
        match msg["type"].as_str() {
            Some("task:result") => results.push(msg["task"].clone()),
            Some("event") => events.push(msg["data"].clone()),
            _ => panic!("unexpected {msg}"),
        }
    }
    submitter.expect_quiet().await;
    (results, events)
}

#[tokio::test]
async fn task_operations_while_redis_is_away_are_refused_and_a_completion_is_reported_once() {
    let Some((mut redis, nodes)) = cluster(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut submitter = a.connect(ClientType::Hub, "backend").await;
    submitter.subscribe(&["task:completed"]).await;
    let mut worker = b.connect(ClientType::Worker, "w").await;
    worker.register(&["job"], 1).await;
    // A lease far longer than the outage.
    let task_id = submitter
        .submit_task(json!({"type": "job", "payload": 1, "timeoutMs": 600000}))
        .await;
    assert_eq!(worker.next_assign().await["id"], task_id.as_str());

    // Redis stops answering (a partition; it keeps its data). The node has
    // not noticed yet: the complete reaches Redis, which runs it only when
    // it answers again — the worker must not be acked meanwhile.
    redis.pause();
    worker
        .send(json!({"type": "task:complete", "id": "c1", "taskId": task_id, "result": "first"}))
        .await;
    let refused = expect_error(&mut worker, "engine_unavailable").await;
    assert_eq!(refused["id"], "c1", "{refused}");
    wait_readyz(a, 503).await;
    wait_readyz(b, 503).await;
    // Now known to be away: refused at once.
    worker
        .send(json!({"type": "task:complete", "id": "c2", "taskId": task_id, "result": "second"}))
        .await;
    expect_error(&mut worker, "engine_unavailable").await;
    let refused = submitter
        .submit_task_reply(json!({"type": "job", "payload": 2}))
        .await;
    assert_eq!(refused["code"], "engine_unavailable", "{refused}");

    redis.resume();
    wait_readyz(a, 200).await;
    wait_readyz(b, 200).await;
    // The worker tries again: acked, and the submitter hears of it once.
    worker
        .send(json!({"type": "task:complete", "id": "c3", "taskId": task_id, "result": "third"}))
        .await;
    let ack = worker.recv_type("task:ack").await;
    assert_eq!(ack["state"], "completed", "{ack}");
    // A repeat after the ack is refused, and tells nobody.
    worker
        .send(json!({"type": "task:complete", "id": "c4", "taskId": task_id, "result": "fourth"}))
        .await;
    expect_error(&mut worker, "invalid_state").await;

    let (results, events) = results_and_events(&mut submitter).await;
    assert_eq!(results.len(), 1);
    assert_eq!(events.len(), 1);
    assert_eq!(results[0]["state"], "completed", "{}", results[0]);
    // Whichever complete Redis ran first is the result: the one sent while
    // it was frozen (run when it thawed), or the retry.
    assert!(
        results[0]["result"] == "first" || results[0]["result"] == "third",
        "{}",
        results[0]
    );
    assert_eq!(events[0]["result"], results[0]["result"]);

    // Submits work again.
    submitter
        .submit_task(json!({"type": "job", "payload": 3}))
        .await;
}

/// Polls `GET /api/workers` on `node` until `done` holds for the list;
/// returns it.
async fn workers_until(node: &ClusterNode, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let http = common::bearer_client(&common::token_with(
        json!({"client_type": "hub", "sub": "ops"}),
    ));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list: Value = http
            .get(node.http_url("/api/workers"))
            .send()
            .await
            .expect("GET /api/workers")
            .json()
            .await
            .expect("json");
        let list = list.as_array().expect("a list").clone();
        if done(&list) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET /api/workers never got there: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_worker_list_shows_every_live_nodes_workers() {
    let Some((_redis, mut nodes)) = cluster(3, |config| {
        config.redis.presence_ttl = PRESENCE_TTL;
    })
    .await
    else {
        return;
    };
    let mut on_a = nodes[0].connect(ClientType::Worker, "wa").await;
    let id_a = on_a.register(&["render"], 1).await["workerId"].clone();
    let mut on_b = nodes[1].connect(ClientType::Worker, "wb").await;
    let id_b = on_b.register(&["mail"], 2).await["workerId"].clone();
    on_b.send(json!({"type": "drain", "id": "d"})).await;
    on_b.recv_type("draining").await;
    let mut submitter = nodes[2].connect(ClientType::Hub, "backend").await;
    let task_id = submitter
        .submit_task(json!({"type": "render", "payload": 1}))
        .await;
    assert_eq!(on_a.next_assign().await["id"], task_id.as_str());

    // Asked on C, which has no worker: A's and B's, as they are now.
    let mut expected = vec![
        (id_a.clone(), json!("wa"), json!([task_id]), json!(false)),
        (id_b.clone(), json!("wb"), json!([]), json!(true)),
    ];
    expected.sort_by(|x, y| x.0.as_str().cmp(&y.0.as_str()));
    let shown = |list: &[Value]| -> Vec<(Value, Value, Value, Value)> {
        list.iter()
            .map(|w| {
                (
                    w["workerId"].clone(),
                    w["sub"].clone(),
                    w["running"].clone(),
                    w["draining"].clone(),
                )
            })
            .collect()
    };
    let list = workers_until(&nodes[2], |list| shown(list) == expected).await;

    // A worker's task messages move its lastSeen, on every node's list.
    let seen = |list: &[Value]| -> u64 {
        let wa = list.iter().find(|w| w["workerId"] == id_a).expect("wa");
        wa["lastSeen"].as_u64().expect("lastSeen")
    };
    let before = seen(&list);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        on_a.send(json!({"type": "task:progress", "id": "p", "taskId": task_id, "progress": 10}))
            .await;
        on_a.recv_type("task:ack").await;
        let now = workers_until(&nodes[2], |list| list.len() == 2).await;
        if seen(&now) > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lastSeen never moved"
        );
    }

    // B dies: its worker drops out once B's snapshot expires.
    nodes[1].kill();
    drop(on_b);
    let list = workers_until(&nodes[2], |list| list.len() == 1).await;
    assert_eq!(list[0]["workerId"], id_a, "{list:?}");
    // A's worker leaves: nobody.
    drop(on_a);
    workers_until(&nodes[0], |list| list.is_empty()).await;
    workers_until(&nodes[2], |list| list.is_empty()).await;
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

#[tokio::test]
async fn members_are_written_again_and_rejoin_after_redis_lost_its_data() {
    let Some((mut redis, nodes)) = cluster(2, |config| {
        with_join_leave(config);
        config.redis.presence_ttl = PRESENCE_TTL;
    })
    .await
    else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut bob = b.connect(ClientType::Browser, "bob").await;
    bob.subscribe(&["room:1"]).await;
    expect_membership(&mut bob, "join", "room:1", "bob").await;
    flush(b).await;
    let mut watcher = b.connect(ClientType::Browser, "watcher").await;
    watcher.subscribe(&["room:*"]).await;
    let mut on_a = a.connect(ClientType::Browser, "alice").await;
    assert_eq!(present(&mut on_a, "room:1").await, ["bob"]);

    // Redis comes back empty: bob is still connected to B.
    redis.restart().await;
    wait_readyz(a, 200).await;
    wait_readyz(b, 200).await;
    // B writes bob again and says so; A lists bob again.
    expect_membership(&mut watcher, "join", "room:1", "bob").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while present(&mut on_a, "room:1").await != ["bob"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bob himself was not told he joined again.
    bob.expect_quiet().await;
}

#[tokio::test]
async fn a_dead_letter_redis_ran_while_frozen_is_reported_once_when_the_worker_repeats_it() {
    let Some((mut redis, nodes)) = cluster(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut submitter = a.connect(ClientType::Hub, "backend").await;
    submitter.subscribe(&["task:dead"]).await;
    let mut worker = b.connect(ClientType::Worker, "w").await;
    worker.register(&["job"], 1).await;
    let task_id = submitter
        .submit_task(json!({"type": "job", "payload": 1, "timeoutMs": 600000}))
        .await;
    assert_eq!(worker.next_assign().await["id"], task_id.as_str());

    // A non-retryable error reaches the frozen Redis, runs when it thaws.
    redis.pause();
    worker
        .send(json!({"type": "task:error", "id": "e1", "taskId": task_id, "error": "bad input"}))
        .await;
    expect_error(&mut worker, "engine_unavailable").await;
    redis.resume();
    wait_readyz(b, 200).await;
    wait_readyz(a, 200).await;
    worker
        .send(json!({"type": "task:error", "id": "e2", "taskId": task_id, "error": "bad input"}))
        .await;
    let ack = worker.recv_type("task:ack").await;
    assert_eq!(ack["state"], "dead", "{ack}");
    worker
        .send(json!({"type": "task:error", "id": "e3", "taskId": task_id, "error": "bad input"}))
        .await;
    expect_error(&mut worker, "invalid_state").await;

    let (results, events) = results_and_events(&mut submitter).await;
    assert_eq!((results.len(), events.len()), (1, 1));
    assert_eq!(results[0]["state"], "dead", "{}", results[0]);
    assert_eq!(results[0]["error"], "bad input", "{}", results[0]);
}
