//! The task routing suite, on both engines (memory, and a Redis cluster
//! node): priority and FIFO order, capability patterns, slots and
//! least-loaded choice, leases, disconnects, retries and dead-lettering.
//! Cancel, dedup, permissions, lifecycle events, the HTTP API and
//! backpressure are in `suite_tasks_api.rs`; tasks across nodes in
//! `cluster_tasks.rs` and `cluster_workers.rs`. Workers and submitters are
//! raw WebSocket clients.
//!
//! "Nothing else arrived" is proved by ordering, never by waiting: a worker
//! pings and the pong must be the next message (see
//! `WsClient::expect_quiet`), or the next assignment must be the expected one.

mod common;

use std::time::{Duration, Instant};

use chanhub::auth::ClientType;
use common::engine::{Engine, Hubs, on_both_engines};
use common::expect_error;
use common::tasks::{api_get, expect_result, listed, submitter, task_record, worker};
use serde_json::json;

// ---- Order and routing ----

async fn tasks_go_out_by_priority_then_in_submission_order(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
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
on_both_engines!(tasks_go_out_by_priority_then_in_submission_order);

async fn capability_patterns_decide_which_worker_gets_a_task(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
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
on_both_engines!(capability_patterns_decide_which_worker_gets_a_task);

async fn a_task_waits_until_a_capable_worker_registers(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
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
on_both_engines!(a_task_waits_until_a_capable_worker_registers);

// ---- Slots ----

async fn a_worker_holds_at_most_its_slots(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
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
on_both_engines!(a_worker_holds_at_most_its_slots);

async fn the_worker_with_the_most_free_slots_is_chosen(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
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
on_both_engines!(the_worker_with_the_most_free_slots_is_chosen);

// ---- Leases and lost workers ----

async fn a_disconnected_workers_task_goes_to_another_worker_as_attempt_2(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
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
on_both_engines!(a_disconnected_workers_task_goes_to_another_worker_as_attempt_2);

async fn a_task_whose_worker_disconnects_on_the_last_attempt_is_dead(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
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
on_both_engines!(a_task_whose_worker_disconnects_on_the_last_attempt_is_dead);

async fn an_expired_lease_moves_the_task_and_cancels_it_on_the_old_worker(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
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
on_both_engines!(an_expired_lease_moves_the_task_and_cancels_it_on_the_old_worker);

async fn an_expired_lease_with_no_other_worker_is_cancelled_before_it_returns(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
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
on_both_engines!(an_expired_lease_with_no_other_worker_is_cancelled_before_it_returns);

async fn progress_extends_the_lease(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
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
on_both_engines!(progress_extends_the_lease);

// ---- Errors, retries, dead letters ----

async fn a_retryable_error_is_retried_after_the_backoff(engine: Engine) {
    const BACKOFF: Duration = Duration::from_millis(50);
    let hubs = Hubs::start(engine, |c| {
        c.tasks.retry.initial = BACKOFF;
        c.tasks.retry.max = Duration::from_secs(1);
        c.tasks.retry.jitter = 0.0;
    })
    .await;
    let hub = hubs.node(0);
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
on_both_engines!(a_retryable_error_is_retried_after_the_backoff);

async fn a_non_retryable_error_makes_the_task_dead(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
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
on_both_engines!(a_non_retryable_error_makes_the_task_dead);

async fn a_task_out_of_attempts_is_dead(engine: Engine) {
    let hubs = Hubs::start(engine, |c| {
        c.tasks.retry.initial = Duration::from_millis(10);
        c.tasks.retry.jitter = 0.0;
    })
    .await;
    let hub = hubs.node(0);
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
on_both_engines!(a_task_out_of_attempts_is_dead);
