//! The Rust client's task support against a real hub on 127.0.0.1:0: a
//! submitter and a worker, both `chanhub::client::Client`s, through a
//! task's life (assign, progress, complete, fail, cancel), the hub's
//! refusals, draining, and a worker registering again after the hub
//! restarts on the same address.
//!
//! The examples (`examples/worker.rs`, `examples/submit.rs`) make the same
//! calls; `cargo test` builds them, so they cannot rot unnoticed.

mod common;

use std::time::Duration;

use chanhub::auth::ClientType;
use chanhub::client::{
    Assignment, Assignments, Backoff, Client, ClientError, ClientOptions, Registration,
    TaskResults, TaskSpec, TaskState, TaskView, Work,
};
use chanhub::error::ErrorCode;
use common::{RestartedHub, TestHub, WAIT};
use futures::FutureExt;
use serde_json::{Value, json};

/// Options for tests: fast reconnects, and timeouts that only guard
/// against hangs.
fn options(url: &str, token: String) -> ClientOptions {
    ClientOptions {
        backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
        request_timeout: WAIT,
        connect_timeout: WAIT,
        ..ClientOptions::new(url, token)
    }
}

/// A hub-token client and its result stream.
async fn connect_submitter(url: &str, hub: &TestHub) -> (Client, TaskResults) {
    let token = hub.token(ClientType::Hub, "backend");
    let (client, _events) = Client::connect(options(url, token))
        .await
        .expect("submitter connects");
    let results = client.task_results().expect("results not taken yet");
    (client, results)
}

/// A registered worker for `demo:*` with `slots`, its id and its work.
async fn connect_worker(url: &str, hub: &TestHub, slots: u32) -> (Client, String, Assignments) {
    let token = hub.token(ClientType::Worker, "w");
    let (client, _events) = Client::connect(options(url, token))
        .await
        .expect("worker connects");
    let work = client.assignments().expect("assignments not taken yet");
    let worker_id = client.register(&["demo:*"], slots).await.expect("register");
    (client, worker_id, work)
}

fn spec(kind: &str, payload: Value) -> TaskSpec {
    TaskSpec {
        kind: kind.into(),
        payload,
        priority: None,
        timeout_ms: None,
        max_attempts: None,
        dedup_key: None,
    }
}

async fn next_work(work: &mut Assignments) -> Work {
    tokio::time::timeout(WAIT, work.next_work())
        .await
        .expect("timed out waiting for work")
        .expect("assignments ended")
}

async fn next_assignment(work: &mut Assignments) -> Assignment {
    match next_work(work).await {
        Work::Assigned(task) => task,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

async fn next_result(results: &mut TaskResults) -> TaskView {
    tokio::time::timeout(WAIT, results.next_result())
        .await
        .expect("timed out waiting for a task result")
        .expect("results ended")
}

fn refused_code(err: ClientError) -> ErrorCode {
    match err {
        ClientError::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_task_runs_on_a_worker_and_its_result_reaches_the_submitter() {
    let hub = TestHub::start().await;
    let (worker, worker_id, mut work) = connect_worker(&hub.ws_url(), &hub, 1).await;
    let (submitter, mut results) = connect_submitter(&hub.ws_url(), &hub).await;

    let accepted = submitter
        .submit(spec("demo:echo", json!({"n": 1})))
        .await
        .expect("submit");
    assert!(!accepted.deduplicated);

    let task = next_assignment(&mut work).await;
    assert_eq!(task.id, accepted.task_id);
    assert_eq!(task.kind, "demo:echo");
    assert_eq!(task.payload, json!({"n": 1}));
    assert_eq!(task.attempt, 1);
    worker
        .progress(&task.id, Some(50), Some("halfway"))
        .await
        .expect("progress");
    let view = hub
        .hub
        .tasks()
        .get(&task.id)
        .await
        .expect("get")
        .expect("task");
    assert_eq!(view.progress, Some(50));
    assert_eq!(view.worker_id.as_deref(), Some(worker_id.as_str()));
    worker
        .complete(&task.id, json!({"echo": {"n": 1}}))
        .await
        .expect("complete");

    let result = next_result(&mut results).await;
    assert_eq!(result.id, accepted.task_id);
    assert_eq!(result.state, TaskState::Completed);
    assert_eq!(result.result, Some(json!({"echo": {"n": 1}})));
    assert_eq!(result.worker_id, Some(worker_id));
}

#[tokio::test]
async fn a_non_retryable_failure_makes_the_task_dead() {
    let hub = TestHub::start().await;
    let (worker, _, mut work) = connect_worker(&hub.ws_url(), &hub, 1).await;
    let (submitter, mut results) = connect_submitter(&hub.ws_url(), &hub).await;

    let accepted = submitter
        .submit(spec("demo:doomed", json!(null)))
        .await
        .expect("submit");
    let task = next_assignment(&mut work).await;
    let state = worker
        .fail(&task.id, json!({"reason": "bad input"}), false)
        .await
        .expect("fail");
    assert_eq!(state, TaskState::Dead);

    let result = next_result(&mut results).await;
    assert_eq!(result.id, accepted.task_id);
    assert_eq!(result.state, TaskState::Dead);
    assert_eq!(result.error, Some(json!({"reason": "bad input"})));
}

#[tokio::test]
async fn a_retryable_failure_is_acked_as_failed() {
    let hub = TestHub::start().await;
    let (worker, _, mut work) = connect_worker(&hub.ws_url(), &hub, 1).await;
    let (submitter, _results) = connect_submitter(&hub.ws_url(), &hub).await;

    submitter
        .submit(spec("demo:flaky", json!(null)))
        .await
        .expect("submit");
    let task = next_assignment(&mut work).await;
    let state = worker
        .fail(&task.id, json!("try again"), true)
        .await
        .expect("fail");
    assert_eq!(state, TaskState::Failed, "attempts remain: retried later");
}

#[tokio::test]
async fn cancelling_a_running_task_tells_its_worker_to_stop() {
    let hub = TestHub::start().await;
    let (worker, _, mut work) = connect_worker(&hub.ws_url(), &hub, 1).await;
    let (submitter, mut results) = connect_submitter(&hub.ws_url(), &hub).await;

    let accepted = submitter
        .submit(spec("demo:long", json!(null)))
        .await
        .expect("submit");
    let task = next_assignment(&mut work).await;
    let state = submitter.cancel_task(&task.id).await.expect("cancel");
    assert_eq!(state, TaskState::Cancelled);

    assert_eq!(
        next_work(&mut work).await,
        Work::Cancelled {
            task_id: accepted.task_id.clone(),
            reason: "cancelled".into(),
        }
    );
    let result = next_result(&mut results).await;
    assert_eq!(result.state, TaskState::Cancelled);

    // The worker no longer holds it; cancelling again finds it finished.
    let err = worker.complete(&task.id, json!(1)).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::NotAssigned);
    let err = submitter.cancel_task(&task.id).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::InvalidState);
}

#[tokio::test]
async fn reports_about_a_task_not_held_are_refused_not_assigned() {
    let hub = TestHub::start().await;
    let (worker, _, _work) = connect_worker(&hub.ws_url(), &hub, 1).await;

    let err = worker.complete("no-such-task", json!(1)).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::NotAssigned);
    let err = worker
        .progress("no-such-task", Some(10), None)
        .await
        .unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::NotAssigned);
    let err = worker
        .fail("no-such-task", json!("x"), false)
        .await
        .unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::NotAssigned);
}

#[tokio::test]
async fn the_hub_refuses_what_a_token_may_not_do() {
    let hub = TestHub::start().await;
    // A worker token may not submit.
    let (worker, _, _work) = connect_worker(&hub.ws_url(), &hub, 1).await;
    let err = worker
        .submit(spec("demo:x", json!(null)))
        .await
        .unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::Forbidden);
    // A client registers once.
    let err = worker.register(&["other:*"], 1).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::BadRequest);
    // A hub token may not register.
    let (submitter, _results) = connect_submitter(&hub.ws_url(), &hub).await;
    let err = submitter.register(&["demo:*"], 1).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::Forbidden);
    // A refused register does not count as one: the client may try again
    // (and is refused again, by the hub, for the same reason).
    let err = submitter.register(&["demo:*"], 1).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::Forbidden);
}

#[tokio::test]
async fn labels_are_shown_and_a_draining_worker_gets_no_new_tasks() {
    let hub = TestHub::start().await;
    let token = hub.token(ClientType::Worker, "w");
    let (worker, _events) = Client::connect(options(&hub.ws_url(), token))
        .await
        .expect("connect");
    let mut work = worker.assignments().expect("assignments");
    let registration = Registration::new(&["demo:*"], 2).label("region", "eu");
    let worker_id = worker.register_with(registration).await.expect("register");
    let shown = hub.hub.tasks().workers().await.expect("workers");
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].worker_id, worker_id);
    assert_eq!(shown[0].slots, 2);
    assert_eq!(
        shown[0].labels.get("region").map(String::as_str),
        Some("eu")
    );

    assert_eq!(worker.drain().await.expect("drain"), 0);
    let (submitter, _results) = connect_submitter(&hub.ws_url(), &hub).await;
    let accepted = submitter
        .submit(spec("demo:later", json!(null)))
        .await
        .expect("submit");
    // Dispatch happens as the task is accepted, and an assignment would be
    // queued to the worker before this ping's answer.
    worker.ping().await.expect("ping");
    assert!(
        work.next_work().now_or_never().is_none(),
        "a draining worker is not assigned tasks"
    );
    let view = hub
        .hub
        .tasks()
        .get(&accepted.task_id)
        .await
        .expect("get")
        .expect("task");
    assert_eq!(view.state, TaskState::Queued);
}

#[tokio::test]
async fn work_and_results_that_arrive_before_their_streams_are_taken_are_kept() {
    let hub = TestHub::start().await;
    let token = hub.token(ClientType::Hub, "backend");
    let (submitter, _events) = Client::connect(options(&hub.ws_url(), token))
        .await
        .expect("connect");
    // Queued: no worker yet.
    let accepted = submitter
        .submit(spec("demo:early", json!(7)))
        .await
        .expect("submit");

    // Registering hands the task over at once, before `registered` is
    // even answered; nobody has taken the assignments yet.
    let token = hub.token(ClientType::Worker, "w");
    let (worker, _events) = Client::connect(options(&hub.ws_url(), token))
        .await
        .expect("connect");
    worker.register(&["demo:*"], 1).await.expect("register");
    worker.ping().await.expect("ping");
    let mut work = worker.assignments().expect("assignments");
    assert!(worker.assignments().is_none(), "taken once");
    let task = next_assignment(&mut work).await;
    assert_eq!(task.id, accepted.task_id);
    assert_eq!(task.payload, json!(7));

    worker.complete(&task.id, json!(8)).await.expect("complete");
    submitter.ping().await.expect("ping");
    let mut results = submitter.task_results().expect("results");
    assert!(submitter.task_results().is_none(), "taken once");
    let result = next_result(&mut results).await;
    assert_eq!(result.id, accepted.task_id);
    assert_eq!(result.result, Some(json!(8)));
}

#[tokio::test]
async fn a_worker_registers_again_after_a_hub_restart_and_gets_new_tasks() {
    let mut first = TestHub::start().await;
    let addr = first.addr;
    let url = first.ws_url();
    let config = first.hub.config().clone();
    let (worker, _, mut work) = connect_worker(&url, &first, 2).await;

    // It holds a task when the hub goes away.
    let (submitter, _results) = connect_submitter(&url, &first).await;
    submitter
        .submit(spec("demo:held", json!(null)))
        .await
        .expect("submit");
    let held = next_assignment(&mut work).await;
    submitter.close().await;

    let server = first.begin_shutdown();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("hub did not stop")
        .expect("server task")
        .expect("server result");
    assert_eq!(next_work(&mut work).await, Work::Lost);

    let second = RestartedHub::start(addr, config).await;
    let Work::Reregistered { worker_id } = next_work(&mut work).await else {
        panic!("expected the worker to register again");
    };
    let shown = second.hub.tasks().workers().await.expect("workers");
    assert_eq!(shown.len(), 1, "registered with the new hub");
    assert_eq!(shown[0].worker_id, worker_id);
    assert_eq!(shown[0].capabilities, vec!["demo:*".to_string()]);
    assert_eq!(shown[0].slots, 2, "same slots as before");

    // The task held before the restart is not this connection's.
    let err = worker.complete(&held.id, json!(1)).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::NotAssigned);

    let (submitter, mut results) = connect_submitter(&url, &first).await;
    let accepted = submitter
        .submit(spec("demo:after", json!({"after": "restart"})))
        .await
        .expect("submit to the new hub");
    let task = next_assignment(&mut work).await;
    assert_eq!(task.id, accepted.task_id);
    worker
        .complete(&task.id, json!("done"))
        .await
        .expect("complete");
    let result = next_result(&mut results).await;
    assert_eq!(result.state, TaskState::Completed);
    assert_eq!(result.result, Some(json!("done")));
}
