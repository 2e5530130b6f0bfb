//! The task API suite, on both engines (memory, and a Redis cluster node):
//! cancel and dedup, permissions, lifecycle events and worker events,
//! draining, the HTTP API and backpressure. Routing, leases and retries
//! are in `suite_tasks.rs`.
//!
//! "Nothing else arrived" is proved by ordering, never by waiting: a worker
//! pings and the pong must be the next message (see
//! `WsClient::expect_quiet`), or the next assignment must be the expected one.

mod common;

use std::collections::HashMap;

use chanhub::auth::ClientType;
use common::engine::{Engine, Hubs, on_both_engines};
use common::tasks::{BACKEND, api_get, expect_result, listed, submitter, task_record, worker};
use common::{WAIT, expect_error, token_with};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

// ---- Cancel and dedup ----

async fn a_cancelled_queued_task_is_never_assigned(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let mut backend = submitter(&hub).await;
    let id = backend.submit_task(json!({"type": "work:x"})).await;
    backend
        .send(json!({"type": "task:cancel", "id": "c", "taskId": id}))
        .await;
    // The ack answers the request; the result follows as for any task.
    let ack = backend.recv().await;
    assert_eq!(ack["type"], "task:ack", "{ack}");
    assert_eq!(ack["state"], "cancelled", "{ack}");
    let result = expect_result(&mut backend, &id).await;
    assert_eq!(result["state"], "cancelled", "{result}");

    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    w.expect_quiet().await;
    let record = task_record(&hub, &id).await;
    assert_eq!(record["state"], "cancelled", "{record}");
    assert_eq!(record["attempt"], 0, "{record}");
    // Cancelling again is refused: it is finished.
    backend
        .send(json!({"type": "task:cancel", "id": "again", "taskId": id}))
        .await;
    expect_error(&mut backend, "invalid_state").await;
}
on_both_engines!(a_cancelled_queued_task_is_never_assigned);

async fn cancelling_a_running_task_tells_its_worker(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let mut backend = submitter(&hub).await;
    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    let id = backend.submit_task(json!({"type": "work:x"})).await;
    w.next_assign().await;

    backend
        .send(json!({"type": "task:cancel", "taskId": id}))
        .await;
    let cancel = w.recv().await;
    assert_eq!(cancel["type"], "task:cancel", "{cancel}");
    assert_eq!(cancel["taskId"], id.as_str(), "{cancel}");
    assert_eq!(cancel["reason"], "cancelled", "{cancel}");
    let result = expect_result(&mut backend, &id).await;
    assert_eq!(result["state"], "cancelled", "{result}");

    w.send(json!({"type": "task:complete", "id": "late", "taskId": id, "result": 1}))
        .await;
    expect_error(&mut w, "not_assigned").await;
    assert_eq!(task_record(&hub, &id).await["state"], "cancelled");
}
on_both_engines!(cancelling_a_running_task_tells_its_worker);

async fn another_submitter_cannot_cancel_a_task(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let mut backend = submitter(&hub).await;
    let id = backend.submit_task(json!({"type": "work:x"})).await;
    let (mut other, _) = hub.connect(ClientType::Hub, "someone-else").await;
    other
        .send(json!({"type": "task:cancel", "id": 1, "taskId": id}))
        .await;
    expect_error(&mut other, "forbidden").await;
    assert_eq!(task_record(&hub, &id).await["state"], "queued");
}
on_both_engines!(another_submitter_cannot_cancel_a_task);

async fn a_dedup_key_returns_the_unfinished_task(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let mut backend = submitter(&hub).await;
    let task = json!({"type": "work:x", "payload": 1, "dedupKey": "doc-42"});

    let first = backend.submit_task_reply(task.clone()).await;
    assert_eq!(first["deduplicated"], false, "{first}");
    let id = first["taskId"].as_str().expect("taskId").to_string();
    let again = backend.submit_task_reply(task.clone()).await;
    assert_eq!(again["type"], "task:accepted", "{again}");
    assert_eq!(again["taskId"], id.as_str(), "{again}");
    assert_eq!(again["deduplicated"], true, "{again}");

    // Still the same while it runs.
    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    assert_eq!(w.next_assign().await["id"], id.as_str());
    let running = backend.submit_task_reply(task.clone()).await;
    assert_eq!(running["taskId"], id.as_str(), "{running}");
    assert_eq!(running["deduplicated"], true, "{running}");
    assert_eq!(listed(&hub, "queued").await.len(), 0);

    // Once it is finished, the key makes a new task.
    w.complete_task(&id, json!(null)).await;
    expect_result(&mut backend, &id).await;
    let after = backend.submit_task_reply(task).await;
    assert_eq!(after["deduplicated"], false, "{after}");
    assert_ne!(after["taskId"], id.as_str(), "{after}");
}
on_both_engines!(a_dedup_key_returns_the_unfinished_task);

// ---- Permissions ----

async fn a_browser_can_neither_submit_nor_register(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let (mut browser, _) = hub.connect(ClientType::Browser, "visitor").await;
    browser
        .send(json!({"type": "task:submit", "id": 1, "task": {"type": "work:x"}}))
        .await;
    let refused = expect_error(&mut browser, "forbidden").await;
    assert_eq!(refused["id"], 1, "{refused}");
    browser
        .send(json!({"type": "register", "id": 2, "capabilities": ["work:*"]}))
        .await;
    expect_error(&mut browser, "forbidden").await;
    assert_eq!(listed(&hub, "queued").await.len(), 0);
    assert_eq!(api_get(&hub, "/api/workers").await.1, json!([]));
}
on_both_engines!(a_browser_can_neither_submit_nor_register);

async fn a_worker_cannot_submit(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    w.send(json!({"type": "task:submit", "id": 1, "task": {"type": "work:x"}}))
        .await;
    expect_error(&mut w, "forbidden").await;
    w.expect_quiet().await;
    assert_eq!(listed(&hub, "queued").await.len(), 0);
}
on_both_engines!(a_worker_cannot_submit);

async fn a_worker_tokens_capability_and_slot_caps_hold(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let token = token_with(json!({
        "client_type": "worker",
        "sub": "embedder",
        "capabilities": ["embedding:*"],
        "max_slots": 2,
    }));
    let (mut w, _) = hub.connect_with_token(&token).await;
    for caps in [
        json!(["summarize:*"]),
        json!(["embedding:*", "summarize:short"]),
        json!(["**"]),
    ] {
        w.send(json!({"type": "register", "id": "r", "capabilities": caps, "slots": 1}))
            .await;
        expect_error(&mut w, "forbidden").await;
    }
    w.send(json!({"type": "register", "id": "r", "capabilities": ["embedding:local"], "slots": 3}))
        .await;
    expect_error(&mut w, "forbidden").await;

    let registered = w.register(&["embedding:*"], 2).await;
    assert_eq!(registered["capabilities"], json!(["embedding:*"]));
    assert_eq!(registered["slots"], 2);

    // The refused capability really is not served.
    let mut backend = submitter(&hub).await;
    let id = backend
        .submit_task(json!({"type": "summarize:short"}))
        .await;
    w.expect_quiet().await;
    assert_eq!(task_record(&hub, &id).await["state"], "queued");
}
on_both_engines!(a_worker_tokens_capability_and_slot_caps_hold);

// ---- Visibility ----

async fn a_browser_watching_task_events_sees_the_whole_life_in_order(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let (mut browser, _) = hub.connect(ClientType::Browser, "watcher").await;
    browser.subscribe(&["task:**"]).await;
    let mut backend = submitter(&hub).await;
    let id = backend
        .submit_task(json!({"type": "work:x", "payload": {"doc": 1}}))
        .await;
    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    w.next_assign().await;
    w.send(json!({"type": "task:progress", "id": "p", "taskId": id, "progress": 50, "message": "halfway"}))
        .await;
    assert_eq!(w.recv().await["type"], "task:ack");
    w.complete_task(&id, json!({"vector": [1, 2]})).await;

    let result = expect_result(&mut backend, &id).await;
    assert_eq!(result["state"], "completed", "{result}");
    assert_eq!(result["result"], json!({"vector": [1, 2]}), "{result}");

    // Every state change comes twice, in order: on `task:<id>` and on its
    // lifecycle channel.
    let own = format!("task:{id}");
    let expected = [
        ("task:queued", "queued", Value::Null),
        ("task:assigned", "assigned", Value::Null),
        ("task:progress", "assigned", json!(50)),
        ("task:completed", "completed", json!(100)),
    ];
    for (lifecycle, state, progress) in expected {
        for channel in [own.as_str(), lifecycle] {
            let event = browser.recv().await;
            assert_eq!(event["type"], "event", "{event}");
            assert_eq!(event["channel"], channel, "{event}");
            assert_eq!(event["data"]["id"], id.as_str(), "{event}");
            assert_eq!(event["data"]["state"], state, "{event}");
            assert_eq!(event["data"]["progress"], progress, "{event}");
        }
    }
    // `worker:connected` is not a `task:**` channel; nothing else is due.
    browser.expect_quiet().await;
}
on_both_engines!(a_browser_watching_task_events_sees_the_whole_life_in_order);

/// The submitter hears `task:accepted` before anything else about a task —
/// its events, its `task:result` — even when a worker on another node
/// completes it at once, and watchers see each task's events in lifecycle
/// order. Many pipelined submits, so a race would show.
async fn a_fast_workers_task_is_accepted_before_anything_else_about_it(engine: Engine) {
    const TASKS: usize = 200;
    const LIFECYCLE: &str = "task:{queued,assigned,completed}";
    let hubs = Hubs::nodes(engine, 2, |_| {}).await;
    let (mut watcher, _) = hubs.node(1).connect(ClientType::Browser, "watcher").await;
    watcher.subscribe(&[LIFECYCLE]).await;
    let mut backend = submitter(&hubs.node(0)).await;
    backend.subscribe(&[LIFECYCLE]).await;
    // A worker on the other node that completes every assignment at once.
    let (mut w, _) = worker(&hubs.node(1), &["work:*"], 16).await;
    let completing = tokio::spawn(async move {
        loop {
            let msg = w.recv().await;
            assert_eq!(msg["type"], "task:assign", "{msg}");
            let id = &msg["task"]["id"];
            w.send(json!({"type": "task:complete", "taskId": id, "result": id}))
                .await;
        }
    });

    // What the submitter hears about each task, in order.
    let (mut sink, mut stream) = backend.ws.split();
    let send = async {
        for n in 0..TASKS {
            let msg =
                json!({"type": "task:submit", "id": n, "task": {"type": "work:x", "payload": n}});
            sink.feed(Message::text(msg.to_string()))
                .await
                .expect("send");
        }
        sink.flush().await.expect("flush");
    };
    let receive = async {
        let mut heard: HashMap<String, Vec<String>> = HashMap::new();
        let mut results = 0;
        while results < TASKS {
            let msg = next_json(&mut stream).await;
            let (id, what) = match msg["type"].as_str() {
                Some("task:accepted") => (&msg["taskId"], "accepted".to_string()),
                Some("event") => (
                    &msg["data"]["id"],
                    msg["channel"].as_str().expect("channel").to_string(),
                ),
                Some("task:result") => {
                    results += 1;
                    (&msg["task"]["id"], "result".to_string())
                }
                _ => panic!("unexpected {msg}"),
            };
            let id = id.as_str().expect("task id").to_string();
            heard.entry(id).or_default().push(what);
        }
        heard
    };
    let ((), heard) = tokio::join!(send, receive);
    assert_eq!(heard.len(), TASKS);
    for (id, kinds) in &heard {
        assert_eq!(kinds[0], "accepted", "task {id}: {kinds:?}");
        let events: Vec<&str> = kinds
            .iter()
            .map(String::as_str)
            .filter(|k| k.starts_with("task:"))
            .collect();
        // The last event may still be on its way when the result came.
        assert!(
            ["task:queued", "task:assigned", "task:completed"].starts_with(&events),
            "task {id}: {kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| *k == "result").count(),
            1,
            "{kinds:?}"
        );
    }
    // The watcher on the other node: every task's events, in order, once.
    let mut watched: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..TASKS * 3 {
        let event = watcher.recv().await;
        assert_eq!(event["type"], "event", "{event}");
        let id = event["data"]["id"].as_str().expect("id").to_string();
        let channel = event["channel"].as_str().expect("channel").to_string();
        watched.entry(id).or_default().push(channel);
    }
    assert_eq!(watched.len(), TASKS);
    for (id, channels) in &watched {
        assert!(heard.contains_key(id), "{id}");
        assert_eq!(
            channels,
            &["task:queued", "task:assigned", "task:completed"],
            "task {id}"
        );
    }
    watcher.expect_quiet().await;
    completing.abort();
}
on_both_engines!(
    a_fast_workers_task_is_accepted_before_anything_else_about_it,
    flavor = "multi_thread",
    worker_threads = 2
);

/// The next JSON text frame (bounded by [`WAIT`]).
async fn next_json<S>(stream: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("timed out waiting for a message")
            .expect("stream ended")
            .expect("read error");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).expect("json"),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

async fn workers_coming_and_going_are_published(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let (mut browser, _) = hub.connect(ClientType::Browser, "watcher").await;
    browser.subscribe(&["worker:*"]).await;
    let (w, id) = worker(&hub, &["work:*"], 3).await;
    let event = browser.recv().await;
    assert_eq!(event["channel"], "worker:connected", "{event}");
    assert_eq!(event["data"]["workerId"], id.as_str(), "{event}");
    assert_eq!(event["data"]["capabilities"], json!(["work:*"]), "{event}");
    assert_eq!(event["data"]["slots"], 3, "{event}");
    drop(w);
    let event = browser.recv().await;
    assert_eq!(event["channel"], "worker:disconnected", "{event}");
    assert_eq!(event["data"]["workerId"], id.as_str(), "{event}");
}
on_both_engines!(workers_coming_and_going_are_published);

async fn a_draining_worker_finishes_but_takes_nothing_new(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let mut backend = submitter(&hub).await;
    let (mut w, _) = worker(&hub, &["work:*"], 2).await;
    let first = backend.submit_task(json!({"type": "work:x"})).await;
    assert_eq!(w.next_assign().await["id"], first.as_str());
    w.send(json!({"type": "drain", "id": "d"})).await;
    let draining = w.recv().await;
    assert_eq!(draining["type"], "draining", "{draining}");
    assert_eq!(draining["running"], 1, "{draining}");

    let second = backend.submit_task(json!({"type": "work:x"})).await;
    w.expect_quiet().await;
    w.complete_task(&first, json!(null)).await;
    w.expect_quiet().await;
    assert_eq!(task_record(&hub, &second).await["state"], "queued");
}
on_both_engines!(a_draining_worker_finishes_but_takes_nothing_new);

// ---- HTTP API ----

async fn the_http_api_submits_lists_shows_and_cancels(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let http = hub.http(&hub.token(ClientType::Hub, BACKEND));

    let response = http
        .post(hub.http_url("/api/tasks"))
        .json(&json!({"type": "embedding:local", "payload": {"text": "a"}, "priority": 7}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 201);
    let accepted: Value = response.json().await.expect("JSON");
    assert_eq!(accepted["deduplicated"], false, "{accepted}");
    let queued = accepted["taskId"].as_str().expect("taskId").to_string();

    assert_eq!(listed(&hub, "queued").await, [queued.as_str()]);
    let record = task_record(&hub, &queued).await;
    assert_eq!(record["type"], "embedding:local", "{record}");
    assert_eq!(record["payload"], json!({"text": "a"}), "{record}");
    assert_eq!(record["priority"], 7, "{record}");
    assert_eq!(record["submittedBy"], BACKEND, "{record}");
    let (status, by_type) = api_get(&hub, "/api/tasks?type=summarize:*").await;
    assert_eq!(status, 200, "{by_type}");
    assert_eq!(by_type, json!([]));

    // A worker, and a task it runs.
    let (mut w, worker_id) = worker(&hub, &["summarize:*"], 2).await;
    let running: Value = http
        .post(hub.http_url("/api/tasks"))
        .json(&json!({"type": "summarize:short"}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    let running = running["taskId"].as_str().expect("taskId").to_string();
    assert_eq!(w.next_assign().await["id"], running.as_str());
    let (status, workers) = api_get(&hub, "/api/workers").await;
    assert_eq!(status, 200, "{workers}");
    let workers = workers.as_array().expect("a list");
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0]["workerId"], worker_id.as_str());
    assert_eq!(workers[0]["capabilities"], json!(["summarize:*"]));
    assert_eq!(workers[0]["slots"], 2);
    assert_eq!(workers[0]["running"], json!([running]));
    assert_eq!(listed(&hub, "assigned").await, [running.as_str()]);

    // DELETE cancels.
    let response = http
        .delete(hub.http_url(&format!("/api/tasks/{queued}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status().as_u16(), 200);
    let cancelled: Value = response.json().await.expect("JSON");
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(listed(&hub, "queued").await.len(), 0);
    assert_eq!(listed(&hub, "cancelled").await, [queued.as_str()]);
    let (status, _) = api_get(&hub, "/api/tasks/0000000000000000").await;
    assert_eq!(status, 404);

    // Browsers and workers may not use it.
    for ty in [ClientType::Browser, ClientType::Worker] {
        let other = hub.http(&hub.token(ty, "intruder"));
        let post = other
            .post(hub.http_url("/api/tasks"))
            .json(&json!({"type": "work:x"}))
            .send()
            .await
            .expect("POST");
        assert_eq!(post.status().as_u16(), 403, "{ty:?} POST");
        let list = other
            .get(hub.http_url("/api/tasks"))
            .send()
            .await
            .expect("GET");
        assert_eq!(list.status().as_u16(), 403, "{ty:?} GET");
        let delete = other
            .delete(hub.http_url(&format!("/api/tasks/{running}")))
            .send()
            .await
            .expect("DELETE");
        assert_eq!(delete.status().as_u16(), 403, "{ty:?} DELETE");
    }
    assert_eq!(task_record(&hub, &running).await["state"], "assigned");
    w.expect_quiet().await;
}
on_both_engines!(the_http_api_submits_lists_shows_and_cancels);

// ---- Backpressure ----

async fn a_full_queue_refuses_submits(engine: Engine) {
    let hubs = Hubs::start(engine, |c| c.tasks.max_queued = 3).await;
    let hub = hubs.node(0);
    let mut backend = submitter(&hub).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(backend.submit_task(json!({"type": "work:x"})).await);
    }
    let refused = backend.submit_task_reply(json!({"type": "work:x"})).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "queue_full", "{refused}");
    assert_eq!(refused["id"], "submit", "{refused}");
    let response = hub
        .http(&hub.token(ClientType::Hub, BACKEND))
        .post(hub.http_url("/api/tasks"))
        .json(&json!({"type": "work:x"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(listed(&hub, "queued").await, ids);

    // A worker taking one makes room for one more.
    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    assert_eq!(w.next_assign().await["id"], ids[0].as_str());
    backend.submit_task(json!({"type": "work:x"})).await;
    let refused = backend.submit_task_reply(json!({"type": "work:x"})).await;
    assert_eq!(refused["code"], "queue_full", "{refused}");
}
on_both_engines!(a_full_queue_refuses_submits);
