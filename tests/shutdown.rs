//! Graceful shutdown: every WebSocket is closed with 1012, every SSE stream
//! ends, and the server returns within the grace period.

mod common;

use std::time::{Duration, Instant};

use chanhub::auth::ClientType;
use common::{BodyEnd, Closed, RawResponse, TestHub};

const GRACE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn shutdown_closes_websockets_with_1012_ends_sse_and_exits_within_grace() {
    let mut hub = TestHub::with_config(|c| c.shutdown.grace_period = GRACE).await;

    let ready = reqwest::get(hub.http_url("/readyz")).await.expect("readyz");
    assert_eq!(ready.status(), 200);

    let (mut browser, _) = hub.connect(ClientType::Browser, "ui").await;
    browser.subscribe(&["session:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let token = hub.token(ClientType::Browser, "operator");
    let mut sse = RawResponse::get(
        hub.addr,
        "/api/stream?channels=session:*",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(sse.status, 200);
    let connected = sse.next_frame().await.expect("connected frame");
    assert!(connected.contains("\"connected\""), "{connected:?}");

    let started = Instant::now();
    let server = hub.begin_shutdown();

    for client in [&mut browser, &mut backend] {
        assert_eq!(client.closed().await, Closed::Code(1012));
        client.finish_close().await;
    }
    let (rest, end) = sse.read_to_end().await;
    assert_eq!(end, BodyEnd::Complete, "the SSE body ends cleanly");
    assert!(
        rest.split_terminator("\n\n").all(|f| f == ":keepalive"),
        "only keepalives after connected: {rest:?}"
    );

    let result = tokio::time::timeout(GRACE + Duration::from_secs(2), server)
        .await
        .expect("server did not stop")
        .expect("server task panicked");
    assert!(result.is_ok(), "{result:?}");
    let took = started.elapsed();
    assert!(
        took < GRACE,
        "shutdown took {took:?}, the whole grace period"
    );

    // Nothing accepts connections any more.
    assert!(tokio::net::TcpStream::connect(hub.addr).await.is_err());
}

#[tokio::test]
async fn readyz_and_healthz_answer_while_running() {
    let hub = TestHub::start().await;
    for path in ["/readyz", "/healthz"] {
        let response = reqwest::get(hub.http_url(path)).await.expect("request");
        assert_eq!(response.status(), 200, "{path}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert!(body["status"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn unauthenticated_connection_is_closed_with_1012_on_shutdown() {
    let mut hub = TestHub::with_config(|c| c.shutdown.grace_period = GRACE).await;
    // Upgraded, but no token yet: the hub is waiting for `auth`.
    let mut pending = common::WsClient::connect(&hub.ws_url()).await;
    let server = hub.begin_shutdown();
    assert_eq!(pending.closed().await, Closed::Code(1012));
    pending.finish_close().await;
    let result = tokio::time::timeout(GRACE + Duration::from_secs(2), server)
        .await
        .expect("server did not stop")
        .expect("server task panicked");
    assert!(result.is_ok(), "{result:?}");
}
