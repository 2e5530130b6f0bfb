//! Cluster tasks: a task submitted on one node runs on another node's
//! worker and its submitter sees the whole life; priority order, dedup,
//! cancel and dead-lettering, retries after their backoff, `max_queued`
//! and the task list all hold across nodes.

mod common;

use std::time::Duration;

use chanhub::auth::ClientType;
use common::cluster::cluster;
use common::{WsClient, expect_error};
use serde_json::{Value, json};

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
