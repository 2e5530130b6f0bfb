//! Calls in a Redis cluster when a node dies: its servers leave within
//! `redis.presence_ttl`, calls running on them end with `server_gone`, and
//! the method has no server until another node serves it.

mod common;

use std::time::{Duration, Instant};

use chanhub::auth::ClientType;
use common::cluster::{PRESENCE_TTL, cluster};
use common::expect_error;
use serde_json::json;

#[tokio::test]
async fn a_dead_nodes_servers_leave_and_its_calls_end_with_server_gone() {
    let Some((_redis, mut nodes)) = cluster(2, |c| c.redis.presence_ttl = PRESENCE_TTL).await
    else {
        return;
    };
    let mut worker = nodes[0].connect(ClientType::Worker, "w").await;
    worker
        .send(json!({"type": "serve", "id": 1, "methods": ["job"]}))
        .await;
    assert_eq!(worker.recv().await["type"], "serving");
    let mut ui = nodes[1].connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "job", "timeoutMs": 60000}))
        .await;
    assert_eq!(worker.recv().await["type"], "call:request");

    let killed = Instant::now();
    nodes[0].kill();
    let err = expect_error(&mut ui, "server_gone").await;
    assert_eq!(err["id"], 1, "{err}");
    assert!(
        killed.elapsed() < PRESENCE_TTL + Duration::from_secs(5),
        "within presence_ttl of the death, not at the deadline: {:?}",
        killed.elapsed()
    );
    ui.send(json!({"type": "call", "id": 2, "method": "job"}))
        .await;
    expect_error(&mut ui, "no_server").await;

    // Another node serving it takes the calls.
    let mut second = nodes[1].connect(ClientType::Worker, "w2").await;
    second
        .send(json!({"type": "serve", "id": 1, "methods": ["job"]}))
        .await;
    assert_eq!(second.recv().await["type"], "serving");
    ui.send(json!({"type": "call", "id": 3, "method": "job"}))
        .await;
    let req = second.recv().await;
    second
        .send(json!({"type": "call:reply", "callId": req["callId"], "result": "ok"}))
        .await;
    assert_eq!(ui.recv().await["result"], "ok");
}
