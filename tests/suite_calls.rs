//! Request/reply calls on both engines: the server connects to node 0 and
//! the caller to node 1, so on Redis every call crosses between two cluster
//! nodes (on memory both are the one hub). One-hub specifics (the wait
//! queue, permissions, token claims) are in `calls.rs`.

mod common;

use chanhub::auth::ClientType;
use common::calls::{reply, request, server, sync};
use common::engine::{Engine, Hubs, on_both_engines};
use common::expect_error;
use serde_json::{Value, json};

async fn a_call_reaches_a_server_on_another_node_and_its_result_comes_back(engine: Engine) {
    let hubs = Hubs::nodes(engine, 2, |_| {}).await;
    let mut worker = server(hubs.node(0), "w1", &["node.*"], 4).await;
    let (mut ui, hello) = hubs.node(1).connect(ClientType::Browser, "ui-1").await;
    ui.send(json!({"type": "call", "id": 7, "method": "node.execute", "params": {"x": 1}}))
        .await;
    let req = request(&mut worker).await;
    assert_eq!(req["method"], "node.execute", "{req}");
    assert_eq!(req["params"], json!({"x": 1}), "{req}");
    assert_eq!(req["caller"]["sub"], "ui-1", "{req}");
    assert_eq!(req["caller"]["clientType"], "browser", "{req}");
    assert_eq!(req["caller"]["clientId"], hello["clientId"], "{req}");
    reply(&mut worker, &req, json!({"ok": true})).await;
    assert_eq!(
        ui.recv().await,
        json!({"type": "result", "id": 7, "result": {"ok": true}})
    );
}
on_both_engines!(a_call_reaches_a_server_on_another_node_and_its_result_comes_back);

async fn calls_spread_over_the_servers_of_both_nodes(engine: Engine) {
    let hubs = Hubs::nodes(engine, 2, |_| {}).await;
    let mut far = server(hubs.node(0), "far", &["job"], 16).await;
    let mut near = server(hubs.node(1), "near", &["job"], 16).await;
    let (mut ui, _) = hubs.node(1).connect(ClientType::Browser, "ui").await;
    for id in 0..4 {
        ui.send(json!({"type": "call", "id": id, "method": "job"}))
            .await;
    }
    // Fewest in flight first: each server gets two of the four.
    for client in [&mut far, &mut near] {
        for _ in 0..2 {
            let req = request(client).await;
            reply(client, &req, json!("done")).await;
        }
        sync(client).await;
    }
    let mut ids = Vec::new();
    for _ in 0..4 {
        let res = ui.recv().await;
        assert_eq!(res["result"], "done", "{res}");
        ids.push(res["id"].as_i64().expect("id"));
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2, 3]);
}
on_both_engines!(calls_spread_over_the_servers_of_both_nodes);

async fn every_way_a_call_can_fail_reaches_a_caller_on_another_node(engine: Engine) {
    let hubs = Hubs::nodes(engine, 2, |_| {}).await;
    let (mut ui, _) = hubs.node(1).connect(ClientType::Browser, "ui").await;

    ui.send(json!({"type": "call", "id": "none", "method": "fs.read"}))
        .await;
    let err = expect_error(&mut ui, "no_server").await;
    assert_eq!(err["id"], "none", "{err}");

    let mut worker = server(hubs.node(0), "w", &["fs.read"], 1).await;
    ui.send(json!({"type": "call", "id": "failed", "method": "fs.read", "params": "/nope"}))
        .await;
    let req = request(&mut worker).await;
    let error = json!({"code": "not_found", "message": "no such file", "data": {"path": "/nope"}});
    worker
        .send(json!({"type": "call:reply", "callId": req["callId"], "error": error}))
        .await;
    let err = expect_error(&mut ui, "call_failed").await;
    assert_eq!(err["id"], "failed", "{err}");
    assert_eq!(err["detail"], error, "{err}");

    // The deadline passes: the caller gets `timeout`, the server is told
    // once, and a reply after it is dropped.
    ui.send(json!({"type": "call", "id": "slow", "method": "fs.read", "timeoutMs": 200}))
        .await;
    let req = request(&mut worker).await;
    let err = expect_error(&mut ui, "timeout").await;
    assert_eq!(err["id"], "slow", "{err}");
    assert_eq!(
        worker.recv().await,
        json!({"type": "call:cancelled", "callId": req["callId"]})
    );
    reply(&mut worker, &req, json!("too late")).await;
    sync(&mut worker).await;

    // The server's socket drops mid-call: `server_gone` at once.
    ui.send(json!({"type": "call", "id": "gone", "method": "fs.read", "timeoutMs": 60000}))
        .await;
    request(&mut worker).await;
    drop(worker);
    let err = expect_error(&mut ui, "server_gone").await;
    assert_eq!(err["id"], "gone", "{err}");
    ui.send(json!({"type": "call", "id": "after", "method": "fs.read"}))
        .await;
    expect_error(&mut ui, "no_server").await;
    // Nothing else came: one answer per call.
    sync(&mut ui).await;
}
on_both_engines!(every_way_a_call_can_fail_reaches_a_caller_on_another_node);

async fn a_cancel_or_a_caller_leaving_reaches_the_server_on_another_node(engine: Engine) {
    let hubs = Hubs::nodes(engine, 2, |_| {}).await;
    let mut worker = server(hubs.node(0), "w", &["job"], 4).await;
    let (mut ui, _) = hubs.node(1).connect(ClientType::Browser, "ui").await;
    ui.send(json!({"type": "call", "id": 1, "method": "job"}))
        .await;
    let req = request(&mut worker).await;
    ui.send(json!({"type": "call:cancel", "id": 1})).await;
    assert_eq!(
        worker.recv().await,
        json!({"type": "call:cancelled", "callId": req["callId"]})
    );
    reply(&mut worker, &req, json!("ignored")).await;

    ui.send(json!({"type": "call", "id": 2, "method": "job"}))
        .await;
    let req = request(&mut worker).await;
    drop(ui);
    assert_eq!(
        worker.recv().await,
        json!({"type": "call:cancelled", "callId": req["callId"]})
    );
    // The server's slots are free: a new caller's calls run.
    let (mut other, _) = hubs.node(1).connect(ClientType::Browser, "other").await;
    other
        .send(json!({"type": "call", "id": 3, "method": "job"}))
        .await;
    let next = request(&mut worker).await;
    reply(&mut worker, &next, json!(3)).await;
    assert_eq!(other.recv().await["result"], 3);
}
on_both_engines!(a_cancel_or_a_caller_leaving_reaches_the_server_on_another_node);

async fn post_api_call_answers_with_the_result_or_the_error_status(engine: Engine) {
    let hubs = Hubs::nodes(engine, 2, |_| {}).await;
    let node = hubs.node(1);
    let http = node.http(&node.token(ClientType::Hub, "backend"));
    let url = |method: &str| node.http_url(&format!("/api/call/{method}"));

    let res = http
        .post(url("demo.add"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_server", "{body}");

    let mut worker = server(hubs.node(0), "w", &["demo.*"], 4).await;
    let answer = tokio::spawn({
        let http = http.clone();
        let url = url("demo.add");
        async move {
            let res = http
                .post(url)
                .json(&json!({"a": 1, "b": 2}))
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    });
    let req = request(&mut worker).await;
    assert_eq!(req["params"], json!({"a": 1, "b": 2}), "{req}");
    assert_eq!(req["caller"]["sub"], "backend", "{req}");
    assert_eq!(req["caller"]["clientType"], "hub", "{req}");
    reply(&mut worker, &req, json!({"sum": 3})).await;
    assert_eq!(answer.await.unwrap(), (200, json!({"sum": 3})));

    let answer = tokio::spawn({
        let http = http.clone();
        let url = url("demo.fail");
        async move {
            let res = http.post(url).send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    });
    let req = request(&mut worker).await;
    assert_eq!(req["params"], Value::Null, "no body: null params");
    let error = json!({"code": "demo_failed", "message": "as asked"});
    worker
        .send(json!({"type": "call:reply", "callId": req["callId"], "error": error}))
        .await;
    let (status, body) = answer.await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "call_failed", "{body}");
    assert_eq!(body["error"]["detail"], error, "{body}");

    let res = http
        .post(format!("{}?timeoutMs=100", url("demo.slow")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    let req = request(&mut worker).await;
    assert_eq!(
        worker.recv().await,
        json!({"type": "call:cancelled", "callId": req["callId"]})
    );

    // Not JSON, a bad timeout, a browser token narrowed away from `demo.*`.
    let res = http.post(url("demo.add")).body("{").send().await.unwrap();
    assert_eq!(res.status(), 400);
    let res = http
        .post(format!("{}?timeoutMs=soon", url("demo.add")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let narrowed = common::token_with(json!({
        "client_type": "browser", "sub": "ui", "call": ["ui.*"]
    }));
    let res = node
        .http(&narrowed)
        .post(url("demo.add"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = reqwest::Client::new()
        .post(url("demo.add"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}
on_both_engines!(post_api_call_answers_with_the_result_or_the_error_status);

async fn api_stats_counts_calls_per_method_where_they_were_made(engine: Engine) {
    let hubs = Hubs::nodes(engine, 2, |_| {}).await;
    let mut worker = server(hubs.node(0), "w", &["stats.*"], 4).await;
    let (mut ui, _) = hubs.node(1).connect(ClientType::Browser, "ui").await;
    for id in 0..3 {
        ui.send(json!({"type": "call", "id": id, "method": "stats.ok"}))
            .await;
        let req = request(&mut worker).await;
        reply(&mut worker, &req, json!(id)).await;
        assert_eq!(ui.recv().await["result"], id);
    }
    ui.send(json!({"type": "call", "id": "f", "method": "stats.ok"}))
        .await;
    let req = request(&mut worker).await;
    worker
        .send(json!({"type": "call:reply", "callId": req["callId"], "error": {"code": "x", "message": "y"}}))
        .await;
    expect_error(&mut ui, "call_failed").await;

    let node = hubs.node(1);
    let admin = node.http(&node.token(ClientType::Hub, "ops"));
    let stats: Value = admin
        .get(node.http_url("/api/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = stats["calls"]["methods"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["method"] == "stats.ok"))
        .unwrap_or_else(|| panic!("no stats.ok row: {stats}"));
    assert_eq!(row["calls"], 4, "{row}");
    assert_eq!(row["errors"]["call_failed"], 1, "{row}");
    assert_eq!(row["latency"]["count"], 4, "{row}");
    assert_eq!(row["servers"], 1, "{row}");
    assert_eq!(row["inFlight"], 0, "{row}");

    let metrics = admin
        .get(node.http_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "chanhub_calls_total{method=\"stats.ok\"} 4",
        "chanhub_call_errors_total{method=\"stats.ok\",code=\"call_failed\"} 1",
        "chanhub_call_duration_seconds_count{method=\"stats.ok\"} 4",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}
on_both_engines!(api_stats_counts_calls_per_method_where_they_were_made);
