//! `GET /metrics` and `GET /api/stats` after known traffic show exactly
//! the expected counts; both need what they should; `POST /api/token` gives
//! an admin a working hub token. The node's workers and tasks show on both
//! engines (they read through the engine seam).
//!
//! The counts below follow from the traffic each test makes; the comments
//! next to the expected values say where each message comes from. (The
//! test runtime is single-threaded, so once a client has seen the end of
//! its connection, the hub's bookkeeping for it is done.)

mod common;

use chanhub::auth::ClientType;
use common::engine::{Engine, Hubs, Node, on_both_engines};
use common::{RawResponse, TestHub, WsClient, token_with};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "metrics-test-admin-key";

async fn hub() -> TestHub {
    TestHub::with_config(|c| {
        c.auth.admin_keys = vec![ADMIN.into()];
        c.limits.max_bad_frames = 1;
        c.limits.max_frame_bytes = 1024;
        c.tasks.durable = false;
    })
    .await
}

async fn scrape(hub: Node) -> String {
    let response = reqwest::get(hub.http_url("/metrics")).await.expect("GET");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

async fn stats(hub: Node, credential: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(hub.http_url("/api/stats"))
        .bearer_auth(credential)
        .send()
        .await
        .expect("GET /api/stats")
}

/// The value of one series, e.g. `chanhub_connections{transport="ws",client_type="hub"}`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().expect("number"))
        })
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[tokio::test]
async fn known_traffic_gives_known_counts() {
    let hub = hub().await;
    let browser = || hub.token(ClientType::Browser, "b");

    // Two browsers and an SSE stream on m:*; a hub client publishes.
    let (mut b1, _) = hub.connect(ClientType::Browser, "b1").await;
    let (mut b2, _) = hub.connect(ClientType::Browser, "b2").await;
    b1.subscribe(&["m:*"]).await;
    b2.subscribe(&["m:*"]).await;
    let mut sse = RawResponse::get(
        hub.addr,
        &format!("/api/stream?channels=m:*&token={}", browser()),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert!(sse.next_event_frame().await.contains("connected"));
    let (mut h, _) = hub.connect(ClientType::Hub, "backend").await;
    for _ in 0..3 {
        let ack = h.publish("m:1", json!({"n": 1})).await;
        assert_eq!(ack["type"], "published");
    }
    let body = json!({"events": [{"channel": "m:2", "data": 2}, {"channel": "m:3", "data": 3}]});
    let http = reqwest::Client::new()
        .post(hub.http_url("/api/publish"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .expect("publish");
    assert_eq!(http.status(), 200);
    for client in [&mut b1, &mut b2] {
        for _ in 0..5 {
            client.recv_type("event").await;
        }
    }
    for _ in 0..5 {
        assert!(sse.next_event_frame().await.contains("\"channel\":\"m:"));
    }
    for client in [&mut b1, &mut b2, &mut h] {
        client.sync().await;
    }

    // Refused tokens: a bad signature, a first frame that is not auth, an
    // HTTP call without a credential.
    let mut tampered = token_with(json!({"client_type": "browser", "sub": "x"}));
    tampered.push('x');
    let mut bad = WsClient::connect(&hub.ws_url()).await;
    bad.send(json!({"type": "auth", "token": tampered})).await;
    assert_eq!(bad.recv().await["reason"], "bad_signature");
    assert_eq!(bad.closed().await, common::Closed::Code(4001));
    bad.finish_close().await;
    let mut early = WsClient::connect(&hub.ws_url()).await;
    early.send(json!({"type": "ping"})).await;
    assert_eq!(early.recv().await["reason"], "auth_required");
    assert_eq!(early.closed().await, common::Closed::Code(4001));
    early.finish_close().await;
    let anonymous = reqwest::Client::new()
        .post(hub.http_url("/api/publish"))
        .json(&body)
        .send()
        .await
        .expect("publish");
    assert_eq!(anonymous.status(), 401);

    // Limit closes: a binary frame (max_bad_frames = 1) and an oversized one.
    let (mut binary, _) = hub.connect(ClientType::Browser, "c").await;
    binary.send_raw(Message::binary(vec![1, 2, 3])).await;
    let (closed, seen) = binary.drain_until_closed().await;
    assert_eq!(closed, common::Closed::Code(4009));
    assert_eq!(seen.len(), 1, "the bad frame's error");
    binary.finish_close().await;
    let (mut big, _) = hub.connect(ClientType::Browser, "d").await;
    big.send_raw(Message::text("x".repeat(2000))).await;
    assert_eq!(big.closed().await, common::Closed::Code(1009));
    big.finish_close().await;

    let text = scrape(hub.node()).await;
    let v = |series: &str| value(&text, series);
    // Authenticated and open: b1, b2, h over WebSocket; the SSE stream.
    assert_eq!(
        v(r#"chanhub_connections{transport="ws",client_type="browser"}"#),
        2.0
    );
    assert_eq!(
        v(r#"chanhub_connections{transport="ws",client_type="hub"}"#),
        1.0
    );
    assert_eq!(
        v(r#"chanhub_connections{transport="ws",client_type="worker"}"#),
        0.0
    );
    assert_eq!(
        v(r#"chanhub_connections{transport="sse",client_type="browser"}"#),
        1.0
    );
    assert_eq!(v("chanhub_connections_unauthenticated"), 0.0);
    assert_eq!(v("chanhub_subscriptions"), 3.0);
    assert_eq!(v("chanhub_subscription_patterns"), 1.0);
    // 3 over WebSocket + 2 over HTTP, each to 3 subscribers.
    assert_eq!(v("chanhub_events_published_total"), 5.0);
    assert_eq!(v("chanhub_event_deliveries_total"), 15.0);
    assert_eq!(v("chanhub_slow_consumers_total"), 0.0);
    // In over WebSocket, after auth: b1 and b2 subscribe + ping (2 each),
    // h 3 publishes + ping (4), the binary frame (1). Over HTTP: 2 events.
    assert_eq!(v(r#"chanhub_messages_in_total{transport="ws"}"#), 9.0);
    assert_eq!(v(r#"chanhub_messages_in_total{transport="http"}"#), 2.0);
    assert!(!text.contains(r#"chanhub_messages_in_total{transport="sse"}"#));
    // Out over WebSocket: b1 and b2 auth:success, subscribed, 5 events,
    // pong (8 each); h auth:success, 3 published, pong (5); the binary
    // frame's client auth:success + error (2); the oversized one's
    // auth:success (1). Over SSE: 5 events.
    assert_eq!(v(r#"chanhub_messages_out_total{transport="ws"}"#), 24.0);
    assert_eq!(v(r#"chanhub_messages_out_total{transport="sse"}"#), 5.0);
    assert!(v(r#"chanhub_received_bytes_total{transport="ws"}"#) > 0.0);
    assert_eq!(
        v(r#"chanhub_received_bytes_total{transport="http"}"#),
        body.to_string().len() as f64
    );
    assert!(v(r#"chanhub_sent_bytes_total{transport="sse"}"#) > 0.0);
    assert_eq!(
        v(r#"chanhub_auth_failures_total{reason="bad_signature"}"#),
        1.0
    );
    assert_eq!(
        v(r#"chanhub_auth_failures_total{reason="auth_required"}"#),
        1.0
    );
    assert_eq!(
        v(r#"chanhub_auth_failures_total{reason="missing_token"}"#),
        1.0
    );
    let closes = |code: &str, reason: &str| {
        v(&format!(
            r#"chanhub_disconnects_total{{transport="ws",code="{code}",reason="{reason}"}}"#
        ))
    };
    assert_eq!(closes("4001", "authentication failed"), 2.0);
    assert_eq!(closes("4009", "too many bad frames"), 1.0);
    assert_eq!(closes("1009", "message too big"), 1.0);
    // One sample per write batch that starts with an event: 10 event frames
    // went to b1 and b2, in at least one batch each.
    let latency = v("chanhub_publish_to_write_seconds_count");
    assert!((2.0..=10.0).contains(&latency), "{latency}");
    assert_eq!(
        v(r#"chanhub_publish_to_write_seconds_bucket{le="+Inf"}"#),
        latency
    );
    assert_eq!(v("chanhub_task_queue_depth"), 0.0);
    assert_eq!(v("chanhub_workers"), 0.0);

    // /api/stats shows the same numbers.
    let json: Value = stats(hub.node(), ADMIN).await.json().await.expect("json");
    assert_eq!(json["connections"]["byType"]["ws"]["browser"], 2);
    assert_eq!(json["connections"]["byType"]["sse"]["browser"], 1);
    assert_eq!(json["connections"]["total"], 4);
    assert_eq!(json["events"]["published"], 5);
    assert_eq!(json["events"]["delivered"], 15);
    assert_eq!(json["traffic"]["ws"]["messagesIn"], 9);
    assert_eq!(json["traffic"]["ws"]["messagesOut"], 24);
    assert_eq!(json["authFailures"]["bad_signature"], 1);
    assert_eq!(
        json["channels"],
        json!([{"pattern": "m:*", "subscribers": 3}])
    );
    assert_eq!(json["publishToWrite"]["count"].as_f64(), Some(latency));
}

#[tokio::test]
async fn task_metrics_count_states_queue_and_dispatch() {
    let hub = hub().await;
    let (mut worker, _) = hub.connect(ClientType::Worker, "w").await;
    worker
        .send(json!({"type": "register", "id": 1, "capabilities": ["job:*"], "slots": 2}))
        .await;
    worker.recv_type("registered").await;
    let (mut submitter, _) = hub.connect(ClientType::Hub, "s").await;

    // job:a completes; job:b fails for good (dead); job:none waits, as no
    // worker can run it.
    for (kind, max_attempts) in [("job:a", 3), ("job:b", 1)] {
        submitter
            .send(json!({"type": "task:submit", "id": kind, "task": {"type": kind, "maxAttempts": max_attempts}}))
            .await;
        let assign = worker.recv_type("task:assign").await;
        let task_id = assign["task"]["id"].clone();
        let report = if kind == "job:a" {
            json!({"type": "task:complete", "taskId": task_id, "result": "ok"})
        } else {
            json!({"type": "task:error", "taskId": task_id, "error": "broken", "retryable": false})
        };
        worker.send(report).await;
        submitter.recv_type("task:result").await;
    }
    submitter
        .send(json!({"type": "task:submit", "id": "w", "task": {"type": "other:none"}}))
        .await;
    submitter.recv_type("task:accepted").await;

    let text = scrape(hub.node()).await;
    let v = |series: &str| value(&text, series);
    assert_eq!(v(r#"chanhub_tasks{type="job:a",state="completed"}"#), 1.0);
    assert_eq!(v(r#"chanhub_tasks{type="job:b",state="dead"}"#), 1.0);
    assert_eq!(v(r#"chanhub_tasks{type="other:none",state="queued"}"#), 1.0);
    assert_eq!(v("chanhub_task_queue_depth"), 1.0);
    // job:a and job:b were each assigned once.
    assert_eq!(v("chanhub_task_dispatch_wait_seconds_count"), 2.0);
    assert_eq!(v("chanhub_workers"), 1.0);
    assert_eq!(v(r#"chanhub_worker_slots{state="busy"}"#), 0.0);
    assert_eq!(v(r#"chanhub_worker_slots{state="free"}"#), 2.0);
    assert_eq!(
        v(r#"chanhub_connections{transport="ws",client_type="worker"}"#),
        1.0
    );

    let json: Value = stats(hub.node(), ADMIN).await.json().await.expect("json");
    assert_eq!(json["tasks"]["byType"]["job:a"]["completed"], 1);
    assert_eq!(json["tasks"]["waiting"], 1);
    let dead = json["tasks"]["dead"].as_array().expect("dead list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["type"], "job:b");
    assert_eq!(json["workers"][0]["capabilities"], json!(["job:*"]));
}

#[tokio::test]
async fn stats_need_a_hub_token_or_an_admin_key() {
    let hub = hub().await;
    let response = reqwest::get(hub.http_url("/api/stats")).await.expect("GET");
    assert_eq!(response.status(), 401);
    let browser = hub.token(ClientType::Browser, "b");
    let response = stats(hub.node(), &browser).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        stats(hub.node(), &hub.token(ClientType::Hub, "ops"))
            .await
            .status(),
        200
    );
    assert_eq!(stats(hub.node(), ADMIN).await.status(), 200);
    assert_eq!(stats(hub.node(), "not-a-key").await.status(), 401);
}

#[tokio::test]
async fn metrics_key_protects_metrics() {
    let hub = TestHub::with_config(|c| c.metrics.key = Some("scrape-key".into())).await;
    let get = |key: Option<&'static str>| {
        let mut request = reqwest::Client::new().get(hub.http_url("/metrics"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    assert_eq!(get(None).await.expect("GET").status(), 401);
    assert_eq!(get(Some("wrong")).await.expect("GET").status(), 401);
    let ok = get(Some("scrape-key")).await.expect("GET");
    assert_eq!(ok.status(), 200);
    assert!(
        ok.text()
            .await
            .expect("body")
            .contains("chanhub_uptime_seconds")
    );
}

#[tokio::test]
async fn an_admin_key_buys_a_short_lived_hub_token() {
    let hub = hub().await;
    let post = |credential: Option<String>| {
        let mut request = reqwest::Client::new().post(hub.http_url("/api/token"));
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        request.send()
    };
    assert_eq!(post(None).await.expect("POST").status(), 401);
    let hub_token = hub.token(ClientType::Hub, "ops");
    assert_eq!(post(Some(hub_token)).await.expect("POST").status(), 403);
    let minted: Value = post(Some(ADMIN.into()))
        .await
        .expect("POST")
        .json()
        .await
        .expect("json");
    let token = minted["token"].as_str().expect("token");
    let expires_at = minted["expiresAt"].as_u64().expect("expiresAt");
    let now = chanhub::protocol::now_ms();
    assert!(expires_at > now && expires_at <= now + 15 * 60 * 1000 + 1000);

    let (mut client, welcome) = hub.connect_with_token(token).await;
    assert_eq!(welcome["clientType"], "hub");
    assert_eq!(welcome["sub"], "admin");
    assert_eq!(welcome["expiresAt"], expires_at);
    assert_eq!(
        welcome["permissions"],
        json!(["subscribe", "publish", "task:submit"])
    );
    let ack = client.publish("ops:note", json!("hello")).await;
    assert_eq!(ack["type"], "published");
}

#[tokio::test]
async fn federation_links_show_their_state() {
    // A peer this hub does not dial (no url) and that has not connected.
    let federation = chanhub::Config::from_toml("[[federation.peers]]\nname = \"east\"\n")
        .expect("config")
        .federation;
    let hub = TestHub::with_config(|c| {
        c.auth.admin_keys = vec![ADMIN.into()];
        c.federation = federation;
    })
    .await;
    let text = scrape(hub.node()).await;
    assert_eq!(
        value(&text, r#"chanhub_federation_link_up{peer="east"}"#),
        0.0
    );
    assert_eq!(
        value(
            &text,
            r#"chanhub_federation_events_total{peer="east",direction="in"}"#
        ),
        0.0
    );
    let json: Value = stats(hub.node(), ADMIN).await.json().await.expect("json");
    assert_eq!(json["federation"]["links"][0]["peer"], "east");
    assert_eq!(json["federation"]["links"][0]["state"], "idle");
}

/// `/api/stats` and `/metrics` show the node's view of its workers and
/// tasks (README, "Running a cluster") whichever engine holds them: a
/// registered worker, and tasks by type and state.
async fn stats_and_metrics_show_the_nodes_workers_and_tasks(engine: Engine) {
    let hubs = Hubs::start(engine, |c| c.auth.admin_keys = vec![ADMIN.into()]).await;
    let hub = hubs.node(0);
    let (mut worker, _) = hub.connect(ClientType::Worker, "indexer").await;
    let worker_id = worker.register(&["index:*"], 2).await["workerId"].clone();
    let (mut submitter, _) = hub.connect(ClientType::Hub, "backend").await;
    // index:docs: one completed, one running; mail:send waits, as no worker
    // can run it.
    let done = submitter
        .submit_task(json!({"type": "index:docs", "payload": 1}))
        .await;
    assert_eq!(worker.next_assign().await["id"], done.as_str());
    worker.complete_task(&done, json!("indexed")).await;
    submitter.recv_type("task:result").await;
    let running = submitter
        .submit_task(json!({"type": "index:docs", "payload": 2}))
        .await;
    assert_eq!(worker.next_assign().await["id"], running.as_str());
    submitter
        .submit_task(json!({"type": "mail:send", "payload": 3}))
        .await;

    let json: Value = stats(hub, ADMIN).await.json().await.expect("json");
    let workers = json["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 1, "one worker: {json}");
    assert_eq!(workers[0]["workerId"], worker_id, "{json}");
    assert_eq!(workers[0]["capabilities"], json!(["index:*"]), "{json}");
    assert_eq!(workers[0]["slots"], 2, "{json}");
    assert_eq!(workers[0]["running"], json!([running]), "{json}");
    let by_type = &json["tasks"]["byType"];
    assert_eq!(by_type["index:docs"]["completed"], 1, "{json}");
    assert_eq!(by_type["index:docs"]["assigned"], 1, "{json}");
    assert_eq!(by_type["mail:send"]["queued"], 1, "{json}");
    assert_eq!(json["tasks"]["waiting"], 1, "{json}");

    let text = scrape(hub).await;
    let v = |series: &str| value(&text, series);
    assert_eq!(v("chanhub_workers"), 1.0);
    assert_eq!(v(r#"chanhub_worker_slots{state="busy"}"#), 1.0);
    assert_eq!(v(r#"chanhub_worker_slots{state="free"}"#), 1.0);
    assert_eq!(
        v(r#"chanhub_tasks{type="index:docs",state="completed"}"#),
        1.0
    );
    assert_eq!(
        v(r#"chanhub_tasks{type="index:docs",state="assigned"}"#),
        1.0
    );
    assert_eq!(v(r#"chanhub_tasks{type="mail:send",state="queued"}"#), 1.0);
    assert_eq!(v("chanhub_task_queue_depth"), 1.0);
}
on_both_engines!(stats_and_metrics_show_the_nodes_workers_and_tasks);
