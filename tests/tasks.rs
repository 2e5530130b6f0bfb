//! Task routing against a real hub: priority and FIFO order, capability
//! patterns, slots and least-loaded choice, leases, disconnects, retries,
//! dead-lettering, cancel, dedup, permissions, lifecycle events, the HTTP
//! API and backpressure. Workers and submitters are raw WebSocket clients.
//!
//! "Nothing else arrived" is proved by ordering, never by waiting: a worker
//! pings and the pong must be the next message (see
//! [`WsClient::expect_quiet`]), or the next assignment must be the expected one.

mod common;

use std::time::{Duration, Instant};

use chanhub::auth::ClientType;
use common::{TestHub, WsClient, expect_error, token_with};
use serde_json::{Value, json};

/// The submitter's `sub`; HTTP checks use a hub token with it too.
const BACKEND: &str = "backend";

/// A backend connection that may submit tasks.
async fn submitter(hub: &TestHub) -> WsClient {
    hub.connect(ClientType::Hub, BACKEND).await.0
}

/// A registered worker; returns the client and its worker id.
async fn worker(hub: &TestHub, capabilities: &[&str], slots: u32) -> (WsClient, String) {
    let (mut client, _) = hub.connect(ClientType::Worker, "worker").await;
    let registered = client.register(capabilities, slots).await;
    assert_eq!(registered["slots"], slots, "{registered}");
    let id = registered["workerId"]
        .as_str()
        .expect("workerId is a string")
        .to_string();
    (client, id)
}

/// `GET path` with a hub token; returns the status and the JSON body.
async fn api_get(hub: &TestHub, path: &str) -> (u16, Value) {
    let response = hub
        .http(&hub.token(ClientType::Hub, BACKEND))
        .get(hub.http_url(path))
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// The task record from `GET /api/tasks/{id}`.
async fn task_record(hub: &TestHub, id: &str) -> Value {
    let (status, body) = api_get(hub, &format!("/api/tasks/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The ids `GET /api/tasks?state=<state>` lists.
async fn listed(hub: &TestHub, state: &str) -> Vec<String> {
    let (status, body) = api_get(hub, &format!("/api/tasks?state={state}")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("a list")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

/// The next message must be a `task:result` for `id`; returns its task.
async fn expect_result(client: &mut WsClient, id: &str) -> Value {
    let msg = client.recv().await;
    assert_eq!(msg["type"], "task:result", "expected a result: {msg}");
    assert_eq!(msg["task"]["id"], id, "{msg}");
    msg["task"].clone()
}

// ---- Order and routing ----

#[tokio::test]
async fn tasks_go_out_by_priority_then_in_submission_order() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    let submitted = [
        ("a", 5),
        ("b", 9),
        ("c", 1),
        ("d", 9),
        ("e", 5),
        ("f", 0),
        ("g", 1),
    ];
    for (name, priority) in submitted {
        backend
            .submit_task(json!({"type": "work:x", "payload": {"name": name}, "priority": priority}))
            .await;
    }
    // A task without a priority is a 5, after the 5s submitted before it.
    backend
        .submit_task(json!({"type": "work:x", "payload": {"name": "default"}}))
        .await;

    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    let mut order = Vec::new();
    for _ in 0..submitted.len() + 1 {
        let task = w.next_assign().await;
        assert_eq!(task["attempt"], 1, "{task}");
        order.push(task["payload"]["name"].as_str().expect("name").to_string());
        // One slot: the next assignment only comes once this one is done.
        w.complete_task(task["id"].as_str().expect("id"), json!(null))
            .await;
    }
    assert_eq!(order, ["b", "d", "a", "e", "default", "c", "g", "f"]);
    w.expect_quiet().await;
}

#[tokio::test]
async fn capability_patterns_decide_which_worker_gets_a_task() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    let (mut summarizer, _) = worker(&hub, &["summarize:*"], 2).await;

    let embed = backend
        .submit_task(json!({"type": "embedding:local", "payload": 1}))
        .await;
    let summary = backend
        .submit_task(json!({"type": "summarize:short", "payload": 2}))
        .await;

    let task = summarizer.next_assign().await;
    assert_eq!(task["id"], summary.as_str(), "{task}");
    assert_eq!(task["type"], "summarize:short", "{task}");
    assert_eq!(task["payload"], 2, "{task}");
    // It has a free slot, but `summarize:*` does not match `embedding:local`.
    summarizer.expect_quiet().await;
    assert_eq!(task_record(&hub, &embed).await["state"], "queued");
}

#[tokio::test]
async fn a_task_waits_until_a_capable_worker_registers() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    let (mut other, _) = worker(&hub, &["summarize:*"], 1).await;
    let id = backend
        .submit_task(json!({"type": "embedding:local", "payload": {"text": "hi"}}))
        .await;
    other.expect_quiet().await;
    assert_eq!(task_record(&hub, &id).await["state"], "queued");

    // The moment a capable worker registers, it gets the task.
    let (mut embedder, embedder_id) = worker(&hub, &["embedding:*"], 1).await;
    let task = embedder.next_assign().await;
    assert_eq!(task["id"], id.as_str(), "{task}");
    assert_eq!(task["payload"], json!({"text": "hi"}), "{task}");
    assert_eq!(task["attempt"], 1, "{task}");
    let record = task_record(&hub, &id).await;
    assert_eq!(record["state"], "assigned", "{record}");
    assert_eq!(record["workerId"], embedder_id.as_str(), "{record}");
}

// ---- Slots ----

#[tokio::test]
async fn a_worker_holds_at_most_its_slots() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    let (mut w, _) = worker(&hub, &["work:*"], 3).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            backend
                .submit_task(json!({"type": "work:x", "payload": n}))
                .await,
        );
    }

    for id in &ids[..3] {
        let task = w.next_assign().await;
        assert_eq!(task["id"], id.as_str(), "{task}");
    }
    // Three slots, three tasks: no fourth until one is done.
    w.expect_quiet().await;
    assert_eq!(listed(&hub, "queued").await, ids[3..]);

    // Completing one frees a slot: the very next message is the fourth task.
    w.complete_task(&ids[1], json!("done")).await;
    assert_eq!(w.next_assign().await["id"], ids[3].as_str());
    w.expect_quiet().await;
    w.complete_task(&ids[0], json!("done")).await;
    assert_eq!(w.next_assign().await["id"], ids[4].as_str());
    w.expect_quiet().await;
}

#[tokio::test]
async fn the_worker_with_the_most_free_slots_is_chosen() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    let (mut a, a_id) = worker(&hub, &["work:*"], 2).await;
    let first = backend
        .submit_task(json!({"type": "work:x", "payload": 1}))
        .await;
    assert_eq!(a.next_assign().await["id"], first.as_str());

    // A has 1 free slot, B has 2: B gets the next task.
    let (mut b, b_id) = worker(&hub, &["work:*"], 2).await;
    let second = backend
        .submit_task(json!({"type": "work:x", "payload": 2}))
        .await;
    assert_eq!(b.next_assign().await["id"], second.as_str());
    a.expect_quiet().await;

    // One free slot each: one task each, whichever goes first.
    let third = backend
        .submit_task(json!({"type": "work:x", "payload": 3}))
        .await;
    let fourth = backend
        .submit_task(json!({"type": "work:x", "payload": 4}))
        .await;
    let got_a = a.next_assign().await["id"].clone();
    let got_b = b.next_assign().await["id"].clone();
    let mut got = [got_a, got_b];
    got.sort_by_key(|v| v.to_string());
    let mut want = [json!(third), json!(fourth)];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want);

    let (status, workers) = api_get(&hub, "/api/workers").await;
    assert_eq!(status, 200, "{workers}");
    for (id, held) in [(&a_id, 2), (&b_id, 2)] {
        let view = workers
            .as_array()
            .expect("a list")
            .iter()
            .find(|w| w["workerId"] == id.as_str())
            .unwrap_or_else(|| panic!("worker {id} listed: {workers}"));
        assert_eq!(view["running"].as_array().expect("running").len(), held);
    }
}

// ---- Leases and lost workers ----

#[tokio::test]
async fn a_disconnected_workers_task_goes_to_another_worker_as_attempt_2() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    let (mut first, _) = worker(&hub, &["work:*"], 1).await;
    let id = backend
        .submit_task(json!({"type": "work:x", "payload": "p"}))
        .await;
    let task = first.next_assign().await;
    assert_eq!(task["id"], id.as_str());
    assert_eq!(task["attempt"], 1);

    let (mut second, second_id) = worker(&hub, &["work:*"], 1).await;
    second.expect_quiet().await;
    // The first worker dies without finishing.
    drop(first);

    let task = second.next_assign().await;
    assert_eq!(task["id"], id.as_str(), "{task}");
    assert_eq!(task["attempt"], 2, "{task}");
    assert_eq!(task["payload"], "p", "{task}");
    let record = task_record(&hub, &id).await;
    assert_eq!(record["workerId"], second_id.as_str(), "{record}");
    second.complete_task(&id, json!({"ok": true})).await;
    let result = expect_result(&mut backend, &id).await;
    assert_eq!(result["state"], "completed", "{result}");
    assert_eq!(result["attempt"], 2, "{result}");
}

#[tokio::test]
async fn a_task_whose_worker_disconnects_on_the_last_attempt_is_dead() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    let id = backend
        .submit_task(json!({"type": "work:x", "maxAttempts": 1}))
        .await;
    w.next_assign().await;
    drop(w);
    let result = expect_result(&mut backend, &id).await;
    assert_eq!(result["state"], "dead", "{result}");
    assert_eq!(result["error"], "worker disconnected", "{result}");
    assert_eq!(listed(&hub, "dead").await, [id]);
}

#[tokio::test]
async fn an_expired_lease_moves_the_task_and_cancels_it_on_the_old_worker() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    // The old worker has more free slots, so it gets the task first; after
    // its lease expires the task must go to the other worker.
    let (mut old, _) = worker(&hub, &["work:*"], 2).await;
    let (mut new, new_id) = worker(&hub, &["work:*"], 1).await;
    // Two attempts at most: if the new worker's 200 ms lease also runs out
    // before the old one reports, the task dies rather than returning to
    // the old worker, so the old worker never holds it again.
    let id = backend
        .submit_task(json!({"type": "work:x", "timeoutMs": 200, "maxAttempts": 2}))
        .await;
    let task = old.next_assign().await;
    assert_eq!(task["id"], id.as_str());
    assert_eq!(task["attempt"], 1);

    // No progress: after 200 ms the old worker is told, the other one has it.
    let cancel = old.recv().await;
    assert_eq!(cancel["type"], "task:cancel", "{cancel}");
    assert_eq!(cancel["taskId"], id.as_str(), "{cancel}");
    assert_eq!(cancel["reason"], "lease_expired", "{cancel}");
    let task = new.next_assign().await;
    assert_eq!(task["id"], id.as_str(), "{task}");
    assert_eq!(task["attempt"], 2, "{task}");

    // A late report from the old worker is refused, even naming the new
    // worker's id in the body: the hub uses the connection's own id.
    old.send(json!({"type": "task:complete", "id": 7, "taskId": id, "workerId": new_id, "result": "late"}))
        .await;
    let refused = expect_error(&mut old, "not_assigned").await;
    assert_eq!(refused["id"], 7, "{refused}");
    old.send(json!({"type": "task:progress", "id": 8, "taskId": id, "progress": 50}))
        .await;
    expect_error(&mut old, "not_assigned").await;
    let record = task_record(&hub, &id).await;
    assert_ne!(record["state"], "completed", "{record}");
    assert_ne!(record["result"], "late", "{record}");
}

#[tokio::test]
async fn an_expired_lease_with_no_other_worker_is_cancelled_before_it_returns() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    let id = backend
        .submit_task(json!({"type": "work:x", "timeoutMs": 200, "maxAttempts": 2}))
        .await;
    assert_eq!(w.next_assign().await["attempt"], 1);

    // The only capable worker gets the task back. It must see the cancel of
    // its lapsed attempt first, or it would drop the new attempt.
    let cancel = w.recv().await;
    assert_eq!(cancel["type"], "task:cancel", "{cancel}");
    assert_eq!(cancel["reason"], "lease_expired", "{cancel}");
    let task = w.next_assign().await;
    assert_eq!(task["id"], id.as_str(), "{task}");
    assert_eq!(task["attempt"], 2, "{task}");
}

#[tokio::test]
async fn progress_extends_the_lease() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    let (mut w, _) = worker(&hub, &["work:*"], 2).await;
    let (mut standby, _) = worker(&hub, &["work:*"], 1).await;
    const LEASE: Duration = Duration::from_millis(500);
    let id = backend
        .submit_task(json!({"type": "work:x", "timeoutMs": LEASE.as_millis() as u64}))
        .await;
    let started = Instant::now();
    assert_eq!(w.next_assign().await["id"], id.as_str());

    // Report well within every lease until three leases have passed. The
    // pauses are the time under test, not waits for a message.
    let mut step = 0;
    while started.elapsed() < LEASE * 3 {
        tokio::time::sleep(LEASE / 5).await;
        step += 1;
        w.send(json!({"type": "task:progress", "id": step, "taskId": id, "progress": step, "message": "working"}))
            .await;
        let ack = w.recv().await;
        assert_eq!(
            ack["type"], "task:ack",
            "still held after {step} reports: {ack}"
        );
        assert_eq!(ack["state"], "assigned", "{ack}");
    }
    w.complete_task(&id, json!("finished")).await;
    let result = expect_result(&mut backend, &id).await;
    assert_eq!(result["state"], "completed", "{result}");
    assert_eq!(result["attempt"], 1, "never reassigned: {result}");
    standby.expect_quiet().await;
}

// ---- Errors, retries, dead letters ----

#[tokio::test]
async fn a_retryable_error_is_retried_after_the_backoff() {
    const BACKOFF: Duration = Duration::from_millis(50);
    let hub = TestHub::with_config(|c| {
        c.tasks.retry.initial = BACKOFF;
        c.tasks.retry.max = Duration::from_secs(1);
        c.tasks.retry.jitter = 0.0;
    })
    .await;
    let (mut watcher, _) = hub.connect(ClientType::Browser, "watcher").await;
    watcher.subscribe(&["task:**"]).await;
    let mut backend = submitter(&hub).await;
    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    let id = backend
        .submit_task(json!({"type": "work:x", "maxAttempts": 3}))
        .await;
    assert_eq!(w.next_assign().await["attempt"], 1);

    let failed_at = Instant::now();
    w.send(
        json!({"type": "task:error", "taskId": id, "error": {"why": "busy"}, "retryable": true}),
    )
    .await;
    let task = w.next_assign().await;
    assert!(
        failed_at.elapsed() >= BACKOFF,
        "retried after {:?}, before the {BACKOFF:?} backoff",
        failed_at.elapsed()
    );
    assert_eq!(task["id"], id.as_str(), "{task}");
    assert_eq!(task["attempt"], 2, "{task}");

    // The task's own channel shows the round trip.
    let mut states = Vec::new();
    while states.len() < 5 {
        let event = watcher.recv_type("event").await;
        if event["channel"] == format!("task:{id}") {
            states.push(event["data"]["state"].as_str().expect("state").to_string());
        }
    }
    assert_eq!(
        states,
        ["queued", "assigned", "failed", "queued", "assigned"]
    );
}

#[tokio::test]
async fn a_non_retryable_error_makes_the_task_dead() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    let id = backend
        .submit_task(json!({"type": "work:x", "maxAttempts": 5}))
        .await;
    w.next_assign().await;
    w.send(json!({"type": "task:error", "id": "e", "taskId": id, "error": "bad input", "retryable": false}))
        .await;
    let ack = w.recv().await;
    assert_eq!(ack["type"], "task:ack", "{ack}");
    assert_eq!(ack["state"], "dead", "{ack}");

    let result = expect_result(&mut backend, &id).await;
    assert_eq!(result["state"], "dead", "{result}");
    assert_eq!(result["error"], "bad input", "{result}");
    let record = task_record(&hub, &id).await;
    assert_eq!(record["state"], "dead", "{record}");
    assert_eq!(record["attempt"], 1, "{record}");
    assert_eq!(listed(&hub, "dead").await, [id]);
    // Never retried.
    w.expect_quiet().await;
}

#[tokio::test]
async fn a_task_out_of_attempts_is_dead() {
    let hub = TestHub::with_config(|c| {
        c.tasks.retry.initial = Duration::from_millis(10);
        c.tasks.retry.jitter = 0.0;
    })
    .await;
    let mut backend = submitter(&hub).await;
    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    let id = backend
        .submit_task(json!({"type": "work:x", "maxAttempts": 2}))
        .await;
    for attempt in 1..=2 {
        let task = w.next_assign().await;
        assert_eq!(task["attempt"], attempt, "{task}");
        w.send(json!({"type": "task:error", "taskId": id, "error": format!("try {attempt}"), "retryable": true}))
            .await;
    }
    let result = expect_result(&mut backend, &id).await;
    assert_eq!(result["state"], "dead", "{result}");
    assert_eq!(result["attempt"], 2, "{result}");
    assert_eq!(result["error"], "try 2", "{result}");
    assert_eq!(task_record(&hub, &id).await["state"], "dead");
    w.expect_quiet().await;
}

// ---- Cancel and dedup ----

#[tokio::test]
async fn a_cancelled_queued_task_is_never_assigned() {
    let hub = TestHub::start().await;
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

#[tokio::test]
async fn cancelling_a_running_task_tells_its_worker() {
    let hub = TestHub::start().await;
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

#[tokio::test]
async fn another_submitter_cannot_cancel_a_task() {
    let hub = TestHub::start().await;
    let mut backend = submitter(&hub).await;
    let id = backend.submit_task(json!({"type": "work:x"})).await;
    let (mut other, _) = hub.connect(ClientType::Hub, "someone-else").await;
    other
        .send(json!({"type": "task:cancel", "id": 1, "taskId": id}))
        .await;
    expect_error(&mut other, "forbidden").await;
    assert_eq!(task_record(&hub, &id).await["state"], "queued");
}

#[tokio::test]
async fn a_dedup_key_returns_the_unfinished_task() {
    let hub = TestHub::start().await;
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

// ---- Permissions ----

#[tokio::test]
async fn a_browser_can_neither_submit_nor_register() {
    let hub = TestHub::start().await;
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

#[tokio::test]
async fn a_worker_cannot_submit() {
    let hub = TestHub::start().await;
    let (mut w, _) = worker(&hub, &["work:*"], 1).await;
    w.send(json!({"type": "task:submit", "id": 1, "task": {"type": "work:x"}}))
        .await;
    expect_error(&mut w, "forbidden").await;
    w.expect_quiet().await;
    assert_eq!(listed(&hub, "queued").await.len(), 0);
}

#[tokio::test]
async fn a_worker_tokens_capability_and_slot_caps_hold() {
    let hub = TestHub::start().await;
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

// ---- Visibility ----

#[tokio::test]
async fn a_browser_watching_task_events_sees_the_whole_life_in_order() {
    let hub = TestHub::start().await;
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

#[tokio::test]
async fn workers_coming_and_going_are_published() {
    let hub = TestHub::start().await;
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

#[tokio::test]
async fn a_draining_worker_finishes_but_takes_nothing_new() {
    let hub = TestHub::start().await;
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

// ---- HTTP API ----

#[tokio::test]
async fn the_http_api_submits_lists_shows_and_cancels() {
    let hub = TestHub::start().await;
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

// ---- Backpressure ----

#[tokio::test]
async fn a_full_queue_refuses_submits() {
    let hub = TestHub::with_config(|c| c.tasks.max_queued = 3).await;
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
