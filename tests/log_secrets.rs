//! Tokens never reach the logs. Every log line of the process — the hub's
//! and its libraries' (hyper, tungstenite), through the hub's own log
//! filter at its most verbose (`trace`) — is captured while
//! tokens travel every way they can: an `auth` message, the upgrade's
//! `Authorization` header, `?token=` on the WebSocket and SSE URLs,
//! `auth:refresh`, HTTP publish, and refused tokens (bad signature,
//! expired). None of the tokens, nor their signatures, may appear.
//!
//! Its own test binary: the capturing subscriber is process-global. Also
//! here: `auth.allow_query_token = false` turns SSE `?token=` off.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use chanhub::auth::ClientType;
use common::{TestHub, WsClient, token_with};
use serde_json::json;

/// Everything written by the subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_appears_in_any_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    // The hub's own filter, at its most verbose.
    tracing_subscriber::fmt()
        .with_env_filter(chanhub::logging::filter("trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let hub = TestHub::start().await;
    let mut tokens = Vec::new();
    let mut token = |ty: ClientType, sub: &str| {
        let t = hub.token(ty, sub);
        tokens.push(t.clone());
        t
    };

    // In an auth message, then refreshed.
    let first = token(ClientType::Browser, "by-message");
    let (mut client, _) = hub.connect_with_token(&first).await;
    let fresh = token(ClientType::Browser, "by-message");
    client
        .send(json!({"type": "auth:refresh", "id": "r", "token": fresh}))
        .await;
    assert_eq!(client.recv().await["type"], "auth:refreshed");
    // A refresh for another subject is refused (and may be logged as such).
    let other = token(ClientType::Browser, "someone-else");
    client
        .send(json!({"type": "auth:refresh", "id": "r2", "token": other}))
        .await;
    assert_eq!(client.recv().await["type"], "auth:failed");

    // On the upgrade: Authorization header, and ?token=.
    let bearer = token(ClientType::Hub, "by-header");
    let mut by_header = WsClient::connect_with_bearer(&hub.ws_url(), &bearer).await;
    assert_eq!(by_header.recv().await["type"], "auth:success");
    let query = token(ClientType::Browser, "by-query");
    let mut by_query = WsClient::connect(&format!("{}?token={query}", hub.ws_url())).await;
    assert_eq!(by_query.recv().await["type"], "auth:success");

    // SSE with ?token=, and an HTTP publish with a bearer token.
    let sse_token = token(ClientType::Browser, "sse");
    let sse = reqwest::get(hub.http_url(&format!("/api/stream?channels=log:*&token={sse_token}")))
        .await
        .expect("sse");
    assert_eq!(sse.status(), 200);
    drop(sse);
    let publisher = token(ClientType::Hub, "http-publisher");
    let published = common::bearer_client(&publisher)
        .post(hub.http_url("/api/publish"))
        .json(&json!({"channel": "log:1", "data": 1}))
        .send()
        .await
        .expect("publish");
    assert!(published.status().is_success());

    // Refused tokens: a wrong signature and an expired one, both ways.
    let forged = {
        let mut t = token(ClientType::Hub, "forger");
        t.truncate(t.len() - 4);
        t.push_str("AAAA");
        tokens.push(t.clone());
        t
    };
    let expired = token_with(json!({"sub": "late", "client_type": "hub", "exp": 1_000_000}));
    tokens.push(expired.clone());
    for bad in [&forged, &expired] {
        let mut refused = WsClient::connect(&hub.ws_url()).await;
        refused.send(json!({"type": "auth", "token": bad})).await;
        assert_eq!(refused.recv().await["type"], "auth:failed");
        let status = reqwest::get(hub.http_url(&format!("/api/stream?channels=a:*&token={bad}")))
            .await
            .expect("sse")
            .status();
        assert_eq!(status, 401);
    }
    drop((client, by_header, by_query));
    drop(hub);

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8 logs");
    // The capture works: the hub's own lines are there.
    assert!(logs.contains("chanhub listening"), "nothing captured");
    assert!(
        logs.contains("authentication failed"),
        "refusals are logged"
    );
    for token in &tokens {
        let signature = token.rsplit('.').next().expect("signature");
        assert!(
            !logs.contains(token.as_str()) && !logs.contains(signature),
            "a token reached the logs: {}",
            logs.lines()
                .find(|l| l.contains(signature))
                .unwrap_or_default()
        );
    }
}

#[tokio::test]
async fn sse_query_tokens_can_be_disabled() {
    let hub = TestHub::with_config(|c| c.auth.allow_query_token = false).await;
    let token = hub.token(ClientType::Browser, "sse");
    let url = hub.http_url(&format!("/api/stream?channels=log:*&token={token}"));
    let refused = reqwest::get(&url).await.expect("request");
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "missing_token", "{body}");
    // The header still works.
    let accepted = common::bearer_client(&token)
        .get(hub.http_url("/api/stream?channels=log:*"))
        .send()
        .await
        .expect("request");
    assert_eq!(accepted.status(), 200);
}
