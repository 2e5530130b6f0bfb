//! Request/reply calls on one hub (memory engine), with real WebSocket
//! clients: routing and load balancing, every error code, cancel, caller
//! and server disconnects, concurrency and the wait queue, permissions and
//! token narrowing.

mod common;

use std::time::{Duration, Instant};

use chanhub::auth::ClientType;
use common::calls::{reply, request, serve, server, sync};
use common::{TestHub, expect_error, token_with};
use serde_json::json;

#[tokio::test]
async fn a_call_reaches_its_server_with_the_caller_and_the_result_comes_back() {
    let hub = TestHub::start().await;
    let mut worker = server(hub.node(), "w1", &["node.*"], 4).await;
    let (mut ui, hello) = hub.connect(ClientType::Browser, "ui-1").await;
    ui.send(json!({"type": "call", "id": 7, "method": "node.execute", "params": {"x": 1}, "timeoutMs": 5000}))
        .await;
    let req = request(&mut worker).await;
    assert_eq!(req["method"], "node.execute", "{req}");
    assert_eq!(req["params"], json!({"x": 1}), "{req}");
    assert_eq!(req["caller"]["sub"], "ui-1", "{req}");
    assert_eq!(req["caller"]["clientType"], "browser", "{req}");
    assert_eq!(req["caller"]["clientId"], hello["clientId"], "{req}");
    let deadline = req["deadline"].as_u64().expect("deadline");
    assert!(deadline > chanhub::protocol::now_ms(), "{req}");
    reply(&mut worker, &req, json!({"ok": true})).await;
    let res = ui.recv().await;
    assert_eq!(
        res,
        json!({"type": "result", "id": 7, "result": {"ok": true}})
    );
}

#[tokio::test]
async fn calls_spread_over_servers_by_calls_in_flight() {
    let hub = TestHub::start().await;
    let mut a = server(hub.node(), "a", &["node.*"], 16).await;
    let mut b = server(hub.node(), "b", &["node.execute"], 16).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    for id in 0..4 {
        ui.send(json!({"type": "call", "id": id, "method": "node.execute"}))
            .await;
    }
    // Fewest in flight first: each server gets two of the four.
    let mut requests = Vec::new();
    for client in [&mut a, &mut b] {
        for _ in 0..2 {
            requests.push(request(client).await);
        }
        sync(client).await;
    }
    for (i, req) in requests.iter().enumerate() {
        let client = if i < 2 { &mut a } else { &mut b };
        reply(client, req, req["callId"].clone()).await;
    }
    let mut ids: Vec<i64> = Vec::new();
    for _ in 0..4 {
        let res = ui.recv().await;
        assert_eq!(res["type"], "result", "{res}");
        ids.push(res["id"].as_i64().expect("id"));
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn a_method_nobody_serves_is_no_server() {
    let hub = TestHub::start().await;
    let _other = server(hub.node(), "w", &["node.*"], 1).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": "x", "method": "fs.read"}))
        .await;
    let err = expect_error(&mut ui, "no_server").await;
    assert_eq!(err["id"], "x", "{err}");
}

#[tokio::test]
async fn after_unserve_the_method_has_no_server() {
    let hub = TestHub::start().await;
    let mut worker = server(hub.node(), "w", &["node.*", "fs.read"], 1).await;
    worker
        .send(json!({"type": "unserve", "id": 2, "methods": ["node.*"]}))
        .await;
    let done = worker.recv().await;
    assert_eq!(
        done,
        json!({"type": "unserving", "id": 2, "methods": ["node.*"]})
    );
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "node.execute"}))
        .await;
    expect_error(&mut ui, "no_server").await;
}

#[tokio::test]
async fn a_late_server_times_out_is_told_and_its_reply_is_dropped() {
    let hub = TestHub::start().await;
    let mut worker = server(hub.node(), "w", &["slow"], 1).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "slow", "timeoutMs": 100}))
        .await;
    let req = request(&mut worker).await;
    let err = expect_error(&mut ui, "timeout").await;
    assert_eq!(err["id"], 1, "{err}");
    let cancelled = worker.recv().await;
    assert_eq!(
        cancelled,
        json!({"type": "call:cancelled", "callId": req["callId"]})
    );
    reply(&mut worker, &req, json!("too late")).await;
    sync(&mut worker).await;
    assert_eq!(hub.hub.late_call_replies(), 1);
    // The slot is free again.
    ui.send(json!({"type": "call", "id": 2, "method": "slow"}))
        .await;
    let req = request(&mut worker).await;
    reply(&mut worker, &req, json!(2)).await;
    assert_eq!(ui.recv().await["result"], 2);
}

#[tokio::test]
async fn timeouts_are_capped_by_config() {
    let hub = TestHub::with_config(|c| {
        c.calls.default_timeout = Duration::from_millis(100);
        c.calls.max_timeout = Duration::from_millis(150);
    })
    .await;
    let mut worker = server(hub.node(), "w", &["slow"], 1).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    let started = Instant::now();
    ui.send(json!({"type": "call", "id": 1, "method": "slow", "timeoutMs": 60000}))
        .await;
    request(&mut worker).await;
    expect_error(&mut ui, "timeout").await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_server_that_drops_mid_call_is_server_gone_at_once() {
    let hub = TestHub::start().await;
    let mut worker = server(hub.node(), "w", &["node.*"], 1).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "node.run", "timeoutMs": 30000}))
        .await;
    request(&mut worker).await;
    let started = Instant::now();
    drop(worker);
    let err = expect_error(&mut ui, "server_gone").await;
    assert_eq!(err["id"], 1, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not at the deadline"
    );
    // Nobody serves it now.
    ui.send(json!({"type": "call", "id": 2, "method": "node.run"}))
        .await;
    expect_error(&mut ui, "no_server").await;
}

#[tokio::test]
async fn a_full_wait_queue_is_busy() {
    let hub = TestHub::with_config(|c| c.calls.max_waiting = 1).await;
    let mut worker = server(hub.node(), "w", &["job"], 1).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    for id in 1..=3 {
        ui.send(json!({"type": "call", "id": id, "method": "job"}))
            .await;
    }
    // 1 runs, 2 waits, 3 finds the queue full.
    let err = expect_error(&mut ui, "busy").await;
    assert_eq!(err["id"], 3, "{err}");
    let first = request(&mut worker).await;
    sync(&mut worker).await;
    reply(&mut worker, &first, json!("one")).await;
    let res = ui.recv().await;
    assert_eq!(
        (res["id"].clone(), res["result"].clone()),
        (json!(1), json!("one"))
    );
    // The waiting call gets the freed slot.
    let second = request(&mut worker).await;
    reply(&mut worker, &second, json!("two")).await;
    let res = ui.recv().await;
    assert_eq!(
        (res["id"].clone(), res["result"].clone()),
        (json!(2), json!("two"))
    );
}

#[tokio::test]
async fn a_waiting_call_times_out_in_the_queue() {
    let hub = TestHub::start().await;
    let mut worker = server(hub.node(), "w", &["job"], 1).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "job"}))
        .await;
    ui.send(json!({"type": "call", "id": 2, "method": "job", "timeoutMs": 50}))
        .await;
    let first = request(&mut worker).await;
    let err = expect_error(&mut ui, "timeout").await;
    assert_eq!(err["id"], 2, "{err}");
    // The server never saw the waiting call, so it is not told.
    sync(&mut worker).await;
    reply(&mut worker, &first, json!(1)).await;
    assert_eq!(ui.recv().await["id"], 1);
}

#[tokio::test]
async fn a_server_error_is_call_failed_with_detail() {
    let hub = TestHub::start().await;
    let mut worker = server(hub.node(), "w", &["fs.read"], 1).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 5, "method": "fs.read", "params": "/nope"}))
        .await;
    let req = request(&mut worker).await;
    let error = json!({"code": "not_found", "message": "no such file", "data": {"path": "/nope"}});
    worker
        .send(json!({"type": "call:reply", "callId": req["callId"], "error": error}))
        .await;
    let err = expect_error(&mut ui, "call_failed").await;
    assert_eq!(err["id"], 5, "{err}");
    assert_eq!(err["detail"], error, "{err}");
}

#[tokio::test]
async fn a_cancelled_call_tells_its_server() {
    let hub = TestHub::start().await;
    let mut worker = server(hub.node(), "w", &["job"], 1).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 7, "method": "job"}))
        .await;
    let req = request(&mut worker).await;
    ui.send(json!({"type": "call:cancel", "id": 7})).await;
    let cancelled = worker.recv().await;
    assert_eq!(
        cancelled,
        json!({"type": "call:cancelled", "callId": req["callId"]})
    );
    reply(&mut worker, &req, json!("ignored")).await;
    sync(&mut worker).await;
    assert_eq!(hub.hub.late_call_replies(), 1);
    // The caller got nothing for the cancelled call.
    sync(&mut ui).await;
}

#[tokio::test]
async fn a_caller_that_leaves_cancels_its_calls() {
    let hub = TestHub::start().await;
    let mut worker = server(hub.node(), "w", &["job"], 1).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "job"}))
        .await;
    ui.send(json!({"type": "call", "id": 2, "method": "job"}))
        .await;
    let req = request(&mut worker).await;
    sync(&mut ui).await;
    drop(ui);
    let cancelled = worker.recv().await;
    assert_eq!(
        cancelled,
        json!({"type": "call:cancelled", "callId": req["callId"]})
    );
    // The waiting call went too: a new caller's call runs next.
    let (mut other, _) = hub.connect(ClientType::Browser, "other").await;
    other
        .send(json!({"type": "call", "id": 3, "method": "job"}))
        .await;
    let next = request(&mut worker).await;
    reply(&mut worker, &next, json!(3)).await;
    assert_eq!(other.recv().await["result"], 3);
}

#[tokio::test]
async fn a_duplicate_call_id_in_flight_is_refused() {
    let hub = TestHub::start().await;
    let mut worker = server(hub.node(), "w", &["job"], 2).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "job"}))
        .await;
    ui.send(json!({"type": "call", "id": 1, "method": "job"}))
        .await;
    expect_error(&mut ui, "bad_request").await;
    let req = request(&mut worker).await;
    reply(&mut worker, &req, json!(null)).await;
    assert_eq!(
        ui.recv().await,
        json!({"type": "result", "id": 1, "result": null})
    );
}

#[tokio::test]
async fn a_method_with_wildcards_is_an_invalid_channel() {
    let hub = TestHub::start().await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "node.*"}))
        .await;
    expect_error(&mut ui, "invalid_channel").await;
}

#[tokio::test]
async fn a_browser_may_call_but_not_serve() {
    let hub = TestHub::start().await;
    let (mut ui, hello) = hub.connect(ClientType::Browser, "ui").await;
    assert_eq!(
        hello["permissions"],
        json!(["subscribe", "call"]),
        "{hello}"
    );
    ui.send(json!({"type": "serve", "id": 1, "methods": ["ui.*"]}))
        .await;
    let err = expect_error(&mut ui, "forbidden").await;
    assert_eq!(err["id"], 1, "{err}");
}

#[tokio::test]
async fn a_call_claim_narrows_what_may_be_called() {
    let hub = TestHub::start().await;
    let mut worker = server(hub.node(), "w", &["**"], 4).await;
    let token = token_with(json!({"client_type": "browser", "sub": "ui", "call": ["ui.*"]}));
    let (mut ui, _) = hub.connect_with_token(&token).await;
    ui.send(json!({"type": "call", "id": 1, "method": "admin.x"}))
        .await;
    let err = expect_error(&mut ui, "forbidden").await;
    assert_eq!(err["id"], 1, "{err}");
    ui.send(json!({"type": "call", "id": 2, "method": "ui.open"}))
        .await;
    let req = request(&mut worker).await;
    assert_eq!(req["method"], "ui.open");
    reply(&mut worker, &req, json!("opened")).await;
    assert_eq!(ui.recv().await["result"], "opened");
}

#[tokio::test]
async fn a_serve_claim_narrows_what_may_be_served() {
    let hub = TestHub::start().await;
    let token = token_with(json!({"client_type": "worker", "sub": "w", "serve": ["node.*"]}));
    let (mut worker, _) = hub.connect_with_token(&token).await;
    worker
        .send(json!({"type": "serve", "id": 1, "methods": ["**"]}))
        .await;
    expect_error(&mut worker, "forbidden").await;
    let ok = serve(&mut worker, &["node.run"], 1).await;
    assert_eq!(ok["methods"], json!(["node.run"]));
}

#[tokio::test]
async fn config_can_narrow_a_types_methods() {
    let hub = TestHub::with_config(|c| {
        c.permissions.browser.call_methods = vec!["ui.*".into()];
        c.permissions.worker.serve = false;
    })
    .await;
    let (mut worker, hello) = hub.connect(ClientType::Worker, "w").await;
    assert!(
        !hello["permissions"]
            .as_array()
            .expect("list")
            .contains(&json!("serve"))
    );
    worker
        .send(json!({"type": "serve", "id": 1, "methods": ["x"]}))
        .await;
    expect_error(&mut worker, "forbidden").await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "admin.x"}))
        .await;
    expect_error(&mut ui, "forbidden").await;
}

#[tokio::test]
async fn serve_refuses_bad_concurrency() {
    let hub = TestHub::start().await;
    let (mut worker, _) = hub.connect(ClientType::Worker, "w").await;
    worker
        .send(json!({"type": "serve", "id": 1, "methods": ["x"], "concurrency": 0}))
        .await;
    expect_error(&mut worker, "bad_request").await;
}

#[tokio::test]
async fn equally_loaded_servers_take_turns() {
    let hub = TestHub::start().await;
    let mut a = server(hub.node(), "a", &["job"], 4).await;
    let mut b = server(hub.node(), "b", &["job"], 4).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    let mut served = Vec::new();
    for id in 0..4 {
        ui.send(json!({"type": "call", "id": id, "method": "job"}))
            .await;
        // One call at a time: both servers are idle at each call.
        let (who, req) = tokio::select! {
            req = a.recv() => ("a", req),
            req = b.recv() => ("b", req),
        };
        assert_eq!(req["type"], "call:request", "{req}");
        let client = if who == "a" { &mut a } else { &mut b };
        reply(client, &req, json!(id)).await;
        assert_eq!(ui.recv().await["id"], id);
        served.push(who);
    }
    assert!(
        served.windows(2).all(|w| w[0] != w[1]),
        "round-robin: {served:?}"
    );
}

#[tokio::test]
async fn a_call_in_flight_does_not_hold_up_shutdown() {
    let mut hub = TestHub::start().await;
    let mut worker = server(hub.node(), "w", &["slow"], 1).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "slow", "timeoutMs": 60000}))
        .await;
    request(&mut worker).await;
    let started = Instant::now();
    let server = hub.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("shutdown finished")
        .expect("joined")
        .expect("clean shutdown");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_new_server_hears_serving_before_the_calls_that_waited_for_it() {
    let hub = TestHub::start().await;
    let mut busy = server(hub.node(), "a", &["job"], 1).await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "job"}))
        .await;
    ui.send(json!({"type": "call", "id": 2, "method": "job"}))
        .await;
    request(&mut busy).await;
    // Call 2 waits: its pong comes after the hub queued it.
    sync(&mut ui).await;
    // `server` asserts that `serving` is the first thing the new one hears.
    let mut fresh = server(hub.node(), "b", &["job"], 1).await;
    let req = request(&mut fresh).await;
    reply(&mut fresh, &req, json!("second")).await;
    let res = ui.recv().await;
    assert_eq!(
        (res["id"].clone(), res["result"].clone()),
        (json!(2), json!("second"))
    );
}
