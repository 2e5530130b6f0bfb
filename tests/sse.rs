//! The SSE endpoint with a raw HTTP/1.1 client, so frames are checked byte
//! for byte: headers, the `connected` frame, event frames for WebSocket and
//! HTTP publishes, keepalive comments, and the 401/403/400 refusals; plus
//! `POST /api/publish` with hub tokens and admin keys. The tests of
//! delivery through `POST /api/publish` run on both engines.

mod common;

use std::time::Duration;

use chanhub::auth::ClientType;
use chanhub::protocol::now_ms;
use common::engine::{Engine, Hubs, Node, on_both_engines};
use common::{RawResponse, TestHub, token_with};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "admin-key-for-tests";

/// Opens `path` with a bearer token.
async fn open(hub: Node, path: &str, token: &str) -> RawResponse {
    let auth = format!("Bearer {token}");
    RawResponse::get(hub.addr, path, &[("Authorization", &auth)]).await
}

/// Opens a stream for `channels` as a browser, checks status, headers and
/// the `connected` frame.
async fn open_stream(hub: Node, path: &str, channels: &str) -> RawResponse {
    let token = hub.token(ClientType::Browser, "ui");
    let mut stream = open(hub, &format!("{path}?channels={channels}"), &token).await;
    assert_eq!(stream.status, 200);
    read_connected(&mut stream).await;
    stream
}

/// Reads the first frame and checks it is exactly the `connected` frame.
async fn read_connected(stream: &mut RawResponse) -> String {
    let before = now_ms();
    let frame = stream.next_frame().await.expect("connected frame");
    let json_text = frame
        .strip_prefix("data: ")
        .and_then(|f| f.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not a data frame: {frame:?}"));
    let value: Value = serde_json::from_str(json_text).expect("json");
    let client_id = value["data"]["clientId"].as_str().expect("clientId");
    assert!(!client_id.is_empty());
    let ts = value["timestamp"].as_u64().expect("timestamp");
    assert!(ts <= now_ms() && ts + 60_000 >= before, "timestamp {ts}");
    assert_eq!(
        frame,
        format!(
            "data: {{\"type\":\"connected\",\"data\":{{\"clientId\":\"{client_id}\"}},\"timestamp\":{ts}}}\n\n"
        )
    );
    client_id.to_string()
}

/// The exact SSE frame for an event.
fn event_frame(id: &str, channel: &str, data: &str, ts: u64) -> String {
    format!(
        "id: {id}\ndata: {{\"type\":\"{channel}\",\"channel\":\"{channel}\",\"data\":{data},\"timestamp\":{ts}}}\n\n"
    )
}

/// The `timestamp` field of an event frame.
fn frame_ts(frame: &str) -> u64 {
    let data = frame
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data line: {frame:?}"));
    let value: Value = serde_json::from_str(data).expect("json");
    value["timestamp"].as_u64().expect("timestamp")
}

/// `POST /api/publish` with `Authorization: Bearer <key>`.
async fn post_publish(hub: Node, key: &str, body: Value) -> reqwest::Response {
    tokio::time::timeout(
        common::WAIT,
        reqwest::Client::new()
            .post(hub.http_url("/api/publish"))
            .bearer_auth(key)
            .json(&body)
            .send(),
    )
    .await
    .expect("publish timed out")
    .expect("publish request")
}

#[tokio::test]
async fn stream_has_sse_headers_and_starts_with_connected() {
    let hub = TestHub::start().await;
    let token = hub.token(ClientType::Browser, "ui");
    let mut stream = open(hub.node(), "/api/stream?channels=session:*", &token).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(stream.header("cache-control"), Some("no-cache"));
    assert_eq!(stream.header("x-accel-buffering"), Some("no"));
    read_connected(&mut stream).await;
}

/// Memory only: `delivered` counts connections here; on Redis it counts
/// nodes (proto-docs/protocol.md, `published`), as
/// `suite_pubsub.rs`'s `overlapping_patterns_deliver_once_per_connection`
/// checks.
#[tokio::test]
async fn event_published_over_websocket_arrives_as_an_exact_frame() {
    let hub = TestHub::start().await;
    let mut stream = open_stream(hub.node(), "/api/stream", "session:*,task:**").await;
    // A WebSocket subscriber sees the same event, for its id and ts.
    let (mut ws_sub, _) = hub.connect(ClientType::Browser, "ws-ui").await;
    ws_sub.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let ack = backend.publish("session:42", json!({"n": 1})).await;
    assert_eq!(ack["delivered"], 2, "SSE stream and WebSocket: {ack}");
    let ws_event = ws_sub.recv().await;

    let frame = stream.next_event_frame().await;
    let id = ack["eventId"].as_str().expect("eventId");
    let ts = ws_event["ts"].as_u64().expect("ts");
    assert_eq!(ws_event["id"], id);
    assert_eq!(frame, event_frame(id, "session:42", r#"{"n":1}"#, ts));
}

async fn event_published_with_a_hub_token_over_http_arrives(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let mut stream = open_stream(hub, "/api/stream", "job:**").await;
    let token = hub.token(ClientType::Hub, "backend");
    let before = now_ms();
    let response = post_publish(
        hub,
        &token,
        json!({"channel": "job:9f1c:progress", "data": {"pct": 50}}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json body");
    let events = body["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["channel"], "job:9f1c:progress");
    assert_eq!(events[0]["delivered"], 1);
    let id = events[0]["id"].as_str().expect("id");

    let frame = stream.next_event_frame().await;
    let ts = frame_ts(&frame);
    assert!(ts >= before && ts <= now_ms(), "timestamp {ts}");
    assert_eq!(
        frame,
        event_frame(id, "job:9f1c:progress", r#"{"pct":50}"#, ts)
    );
}
on_both_engines!(event_published_with_a_hub_token_over_http_arrives);

async fn event_published_with_an_admin_key_over_http_arrives(engine: Engine) {
    let hubs = Hubs::start(engine, |c| c.auth.admin_keys = vec![ADMIN_KEY.into()]).await;
    let hub = hubs.node(0);
    let mut stream = open_stream(hub, "/api/stream", "session:*").await;
    let response = post_publish(
        hub,
        ADMIN_KEY,
        json!({"channel": "session:1", "data": "hello"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json body");
    let id = body["events"][0]["id"].as_str().expect("id");
    let frame = stream.next_event_frame().await;
    assert_eq!(
        frame,
        event_frame(id, "session:1", r#""hello""#, frame_ts(&frame))
    );
}
on_both_engines!(event_published_with_an_admin_key_over_http_arrives);

async fn batch_publish_delivers_every_event_in_order(engine: Engine) {
    let hubs = Hubs::start(engine, |c| c.auth.admin_keys = vec![ADMIN_KEY.into()]).await;
    let hub = hubs.node(0);
    let mut stream = open_stream(hub, "/api/stream", "session:*,job:*").await;
    let response = post_publish(
        hub,
        ADMIN_KEY,
        json!({"events": [
            {"channel": "session:1", "data": 1},
            {"channel": "job:2", "data": [2]},
            {"channel": "other:3", "data": 3},
        ]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json body");
    let events = body["events"].as_array().expect("events");
    assert_eq!(events.len(), 3, "{body}");
    let delivered: Vec<&Value> = events.iter().map(|e| &e["delivered"]).collect();
    assert_eq!(delivered, [&json!(1), &json!(1), &json!(0)], "{body}");

    let first = stream.next_event_frame().await;
    let id = events[0]["id"].as_str().expect("id");
    assert_eq!(first, event_frame(id, "session:1", "1", frame_ts(&first)));
    let second = stream.next_event_frame().await;
    let id = events[1]["id"].as_str().expect("id");
    assert_eq!(second, event_frame(id, "job:2", "[2]", frame_ts(&second)));
}
on_both_engines!(batch_publish_delivers_every_event_in_order);

/// More events than one body chunk carries (the stream joins what is
/// queued, up to 256 events, into one chunk) arrive whole, in order, each
/// as its own exact frame. Memory only: it publishes in-process without
/// yielding, so that all are queued before the stream's next poll.
#[tokio::test]
async fn a_burst_queued_before_the_stream_reads_arrives_whole_and_in_order() {
    let hub = TestHub::start().await;
    let mut stream = open_stream(hub.node(), "/api/stream", "burst:*").await;
    let channel = hub.hub.channel("burst:1").expect("valid channel");
    // Published without yielding: all 600 are queued before the stream's
    // next poll, so they leave in batches.
    let ids: Vec<String> = (0..600)
        .map(|n| hub.hub.publish(channel.clone(), json!(n)).0.id.clone())
        .collect();
    for (n, id) in ids.iter().enumerate() {
        let frame = stream.next_event_frame().await;
        assert_eq!(
            frame,
            event_frame(id, "burst:1", &n.to_string(), frame_ts(&frame)),
            "event {n}"
        );
    }
}

async fn stream_events_alias_works(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let mut stream = open_stream(hub, "/api/stream/events", "session:*").await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let ack = backend.publish("session:5", json!(true)).await;
    let frame = stream.next_event_frame().await;
    let id = ack["eventId"].as_str().expect("eventId");
    assert_eq!(
        frame,
        event_frame(id, "session:5", "true", frame_ts(&frame))
    );
}
on_both_engines!(stream_events_alias_works);

#[tokio::test]
async fn query_token_opens_a_stream() {
    let hub = TestHub::start().await;
    let token = hub.token(ClientType::Browser, "ui");
    let mut stream = RawResponse::get(
        hub.addr,
        &format!("/api/stream?channels=session:*&token={token}"),
        &[],
    )
    .await;
    assert_eq!(stream.status, 200);
    read_connected(&mut stream).await;
}

#[tokio::test]
async fn keepalive_comments_are_sent() {
    let hub = TestHub::with_config(|c| c.sse.keepalive = Duration::from_millis(100)).await;
    let mut stream = open_stream(hub.node(), "/api/stream", "session:*").await;
    assert_eq!(stream.next_frame().await.as_deref(), Some(":keepalive\n\n"));
    assert_eq!(stream.next_frame().await.as_deref(), Some(":keepalive\n\n"));
}

/// Expects a JSON error response with `status` and `code`.
async fn expect_refusal(mut response: RawResponse, status: u16, code: &str) {
    assert_eq!(response.status, status);
    assert!(
        response
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        response.headers
    );
    let body = response.json().await;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn missing_token_gets_401_with_json() {
    let hub = TestHub::start().await;
    let response = RawResponse::get(hub.addr, "/api/stream?channels=session:*", &[]).await;
    expect_refusal(response, 401, "missing_token").await;
}

#[tokio::test]
async fn bad_token_gets_401_with_its_reason() {
    let hub = TestHub::start().await;
    let expired = token_with(json!({
        "sub": "ui", "client_type": "browser", "exp": common::now_secs() - 60
    }));
    let response = open(hub.node(), "/api/stream?channels=session:*", &expired).await;
    expect_refusal(response, 401, "expired").await;
    let response = open(hub.node(), "/api/stream?channels=session:*", "not-a-jwt").await;
    expect_refusal(response, 401, "malformed_token").await;
}

#[tokio::test]
async fn forbidden_pattern_gets_403() {
    let hub = TestHub::start().await;
    let token = token_with(json!({
        "sub": "ui", "client_type": "browser", "channels": ["session:**"]
    }));
    for channels in ["task:*", "**", "session:*,task:*"] {
        let response = open(
            hub.node(),
            &format!("/api/stream?channels={channels}"),
            &token,
        )
        .await;
        expect_refusal(response, 403, "forbidden").await;
    }
    // The allowed part alone is fine.
    let mut ok = open(hub.node(), "/api/stream?channels=session:*", &token).await;
    assert_eq!(ok.status, 200);
    read_connected(&mut ok).await;
}

#[tokio::test]
async fn invalid_pattern_gets_400() {
    let hub = TestHub::start().await;
    let token = hub.token(ClientType::Browser, "ui");
    let response = open(hub.node(), "/api/stream?channels=a::b", &token).await;
    expect_refusal(response, 400, "invalid_channel").await;
    let response = open(hub.node(), "/api/stream", &token).await;
    expect_refusal(response, 400, "bad_request").await;
}

async fn browser_token_cannot_publish_over_http(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let mut stream = open_stream(hub, "/api/stream", "session:*").await;
    let browser = hub.token(ClientType::Browser, "ui");
    let response = post_publish(
        hub,
        &browser,
        json!({"channel": "session:1", "data": "nope"}),
    )
    .await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("json body");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");

    // Nothing was published: the stream's first event is a later one.
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let ack = backend.publish("session:2", json!("yes")).await;
    let frame = stream.next_event_frame().await;
    let id = ack["eventId"].as_str().expect("eventId");
    assert_eq!(
        frame,
        event_frame(id, "session:2", r#""yes""#, frame_ts(&frame))
    );
}
on_both_engines!(browser_token_cannot_publish_over_http);

#[tokio::test]
async fn http_publish_without_credentials_gets_401() {
    let hub = TestHub::start().await;
    let response = tokio::time::timeout(
        common::WAIT,
        reqwest::Client::new()
            .post(hub.http_url("/api/publish"))
            .json(&json!({"channel": "session:1", "data": 1}))
            .send(),
    )
    .await
    .expect("timed out")
    .expect("request");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json body");
    assert_eq!(body["error"]["code"], "missing_token", "{body}");
    // A wrong admin key is just a bad token.
    let response = post_publish(hub.node(), "wrong-key", json!({"channel": "a", "data": 1})).await;
    assert_eq!(response.status(), 401);
}
