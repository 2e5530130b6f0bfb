//! The runnable examples, run as a newcomer would: `examples/worker.rs`,
//! `examples/submit.rs`, `examples/publish.rs` and
//! `examples/demo_worker.rs` against a real hub.
//! `cargo test` builds the examples into `target/<profile>/examples/`.

mod common;

use std::process::Stdio;

use chanhub::auth::ClientType;
use chanhub::client::{Client, ClientError, ClientOptions};
use common::{TestHub, WAIT, example};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn the_worker_and_submit_examples_run_tasks_to_completion() {
    let hub = TestHub::start().await;
    let mut worker = Command::new(example("worker"))
        .args([
            "--url",
            &hub.ws_url(),
            "--capabilities",
            "demo:*",
            "--work-ms",
            "10",
        ])
        .arg("--token")
        .arg(hub.token(ClientType::Worker, "example-worker"))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker example");
    // The submitter waits for every task it submits to finish, so it only
    // exits 0 once the worker example has run them all.
    let submit = Command::new(example("submit"))
        .args([
            "--url",
            &hub.ws_url(),
            "--type",
            "demo:echo",
            "--count",
            "3",
        ])
        .arg("--token")
        .arg(hub.token(ClientType::Hub, "example-submitter"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, submit)
        .await
        .expect("submit example did not finish")
        .expect("ran the submit example");
    let _ = worker.kill().await;
    assert!(
        output.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let completed = hub
        .hub
        .tasks()
        .list(Some(chanhub::protocol::tasks::TaskState::Completed), None)
        .await
        .expect("list");
    assert_eq!(completed.len(), 3, "{completed:?}");
    for task in completed {
        assert_eq!(
            task.result.as_ref().map(|r| r["echo"].clone()),
            Some(task.payload.clone()),
            "{task:?}"
        );
    }
}

#[tokio::test]
async fn the_publish_example_reaches_a_subscriber() {
    let hub = TestHub::start().await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.subscribe(&["demo:*"]).await;
    let publish = Command::new(example("publish"))
        .args([
            "--url",
            &hub.ws_url(),
            "--channel",
            "demo:ticks",
            "--count",
            "3",
            "--interval",
            "1ms",
        ])
        .arg("--token")
        .arg(hub.token(ClientType::Hub, "example-publisher"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, publish)
        .await
        .expect("publish example did not finish")
        .expect("ran the publish example");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for n in 1..=3 {
        let event = ui.recv_type("event").await;
        assert_eq!(event["channel"], "demo:ticks");
        assert_eq!(event["data"], json!({"n": n, "of": 3}));
    }
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 3);
}

#[tokio::test]
async fn the_demo_worker_example_answers_calls() {
    let hub = TestHub::start().await;
    let mut worker = Command::new(example("demo_worker"))
        .args(["--url", &hub.ws_url()])
        .arg("--token")
        .arg(hub.token(ClientType::Worker, "example-demo-worker"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the demo_worker example");
    let stdout = worker.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("demo_worker did not say it serves")
        .expect("read stdout")
        .expect("demo_worker exited");
    assert_eq!(first, "serving demo.*");

    let token = hub.token(ClientType::Browser, "example-caller");
    let (caller, _events) = Client::connect(ClientOptions::new(hub.ws_url(), token))
        .await
        .expect("connect");
    let sum = caller
        .call("demo.add", json!({"a": 2, "b": 3}))
        .timeout(WAIT)
        .await
        .expect("demo.add");
    assert_eq!(sum, json!({"sum": 5}));
    let echo = caller
        .call("demo.echo", json!({"text": "hi"}))
        .timeout(WAIT)
        .await
        .expect("demo.echo");
    assert_eq!(echo, json!({"text": "hi"}));
    match caller
        .call("demo.fail", json!({"x": 1}))
        .timeout(WAIT)
        .await
    {
        Err(ClientError::CallFailed(error)) => {
            assert_eq!(error.code, "demo_failed");
            assert_eq!(error.data, Some(json!({"x": 1})));
        }
        other => panic!("expected call_failed, got {other:?}"),
    }
    match caller.call("demo.nope", json!(null)).timeout(WAIT).await {
        Err(ClientError::CallFailed(error)) => assert_eq!(error.code, "not_found"),
        other => panic!("expected call_failed, got {other:?}"),
    }
    caller.close().await;
    let _ = worker.kill().await;
}

#[tokio::test]
async fn the_embed_example_runs_a_hub_in_process_and_stops_it() {
    // It starts its own hub on 127.0.0.1:0, so it needs nothing from here.
    let run = Command::new(example("embed")).kill_on_drop(true).output();
    let output = tokio::time::timeout(WAIT * 3, run)
        .await
        .expect("the embed example did not stop by itself")
        .expect("ran the embed example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "hub listening on ws://127.0.0.1:",
        "published event ",
        "subscriber received demo:greeting {\"hello\":\"from the app\"}",
        "worker got task demo:echo ({\"n\":1})",
        " completed with result {\"echo\":{\"n\":1}}",
        "hub stopped",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}
