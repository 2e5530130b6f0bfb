//! Helpers for the call tests (`calls.rs`, `suite_calls.rs`): a serving
//! worker, and the server's side of one call.

use chanhub::auth::ClientType;
use serde_json::{Value, json};

use super::WsClient;
use super::engine::Node;

/// Serves `methods` with `concurrency` and waits for `serving`.
pub async fn serve(client: &mut WsClient, methods: &[&str], concurrency: u32) -> Value {
    client
        .send(json!({"type": "serve", "id": "s", "methods": methods, "concurrency": concurrency}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "serving", "{reply}");
    reply
}

/// A worker on `node` serving `methods`.
pub async fn server(node: Node, sub: &str, methods: &[&str], concurrency: u32) -> WsClient {
    let (mut client, _) = node.connect(ClientType::Worker, sub).await;
    serve(&mut client, methods, concurrency).await;
    client
}

/// Waits until everything `client` sent before has been handled.
pub async fn sync(client: &mut WsClient) {
    client.send(json!({"type": "ping", "id": "sync"})).await;
    let pong = client.recv().await;
    assert_eq!(
        pong["type"], "pong",
        "expected nothing before the pong: {pong}"
    );
}

/// The next message, which must be a `call:request`.
pub async fn request(client: &mut WsClient) -> Value {
    let msg = client.recv().await;
    assert_eq!(msg["type"], "call:request", "{msg}");
    msg
}

/// Answers `request` with `result`.
pub async fn reply(client: &mut WsClient, request: &Value, result: Value) {
    client
        .send(json!({"type": "call:reply", "callId": request["callId"], "result": result}))
        .await;
}
