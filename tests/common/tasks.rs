//! What the task suites share: submitters and workers as raw WebSocket
//! clients, and the HTTP API read with a hub token.

use chanhub::auth::ClientType;
use serde_json::Value;

use super::WsClient;
use super::engine::Node;

/// The submitter's `sub`; HTTP checks use a hub token with it too.
pub const BACKEND: &str = "backend";

/// A backend connection that may submit tasks.
pub async fn submitter(hub: &Node) -> WsClient {
    hub.connect(ClientType::Hub, BACKEND).await.0
}

/// A registered worker; returns the client and its worker id.
pub async fn worker(hub: &Node, capabilities: &[&str], slots: u32) -> (WsClient, String) {
    let (mut client, _) = hub.connect(ClientType::Worker, "worker").await;
    let registered = client.register(capabilities, slots).await;
    assert_eq!(registered["slots"], slots, "{registered}");
    let id = registered["workerId"]
        .as_str()
        .expect("workerId is a string")
        .to_string();
    (client, id)
}

/// `GET path` with a hub token; returns the status and the JSON body.
pub async fn api_get(hub: &Node, path: &str) -> (u16, Value) {
    let response = hub
        .http(&hub.token(ClientType::Hub, BACKEND))
        .get(hub.http_url(path))
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// The task record from `GET /api/tasks/{id}`.
pub async fn task_record(hub: &Node, id: &str) -> Value {
    let (status, body) = api_get(hub, &format!("/api/tasks/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The ids `GET /api/tasks?state=<state>` lists.
pub async fn listed(hub: &Node, state: &str) -> Vec<String> {
    let (status, body) = api_get(hub, &format!("/api/tasks?state={state}")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("a list")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

/// The next message must be a `task:result` for `id`; returns its task.
pub async fn expect_result(client: &mut WsClient, id: &str) -> Value {
    let msg = client.recv().await;
    assert_eq!(msg["type"], "task:result", "expected a result: {msg}");
    assert_eq!(msg["task"]["id"], id, "{msg}");
    msg["task"].clone()
}
