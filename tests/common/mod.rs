//! Shared test harness: a real hub on 127.0.0.1:0 and real clients.
//!
//! Every wait is bounded by [`WAIT`]; it is a guard against hangs, not a
//! timing assumption: a passing run never waits for it.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use chanhub::auth::{ClientType, mint};
use chanhub::{Config, Hub};
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound on any single wait in tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub const SECRET: &str = "test-secret-0123456789";

/// A running hub.
pub struct TestHub {
    pub addr: SocketAddr,
    pub hub: Hub,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<Result<(), chanhub::ServerError>>>,
    _data: tempfile::TempDir,
}

impl TestHub {
    /// A hub with test defaults (known secret, temp data dir).
    pub async fn start() -> TestHub {
        TestHub::with_config(|_| {}).await
    }

    /// A hub with test defaults, then `tweak` applied.
    pub async fn with_config(tweak: impl FnOnce(&mut Config)) -> TestHub {
        let data = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.auth.secret = Some(SECRET.into());
        config.data_dir = Some(data.path().to_path_buf());
        config.log.level = "warn".into();
        tweak(&mut config);
        config.validate().expect("valid test config");
        let hub = Hub::new(config).expect("hub");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(chanhub::serve(listener, hub.clone(), async {
            let _ = rx.await;
        }));
        TestHub {
            addr,
            hub,
            shutdown: Some(tx),
            server: Some(server),
            _data: data,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Signals shutdown and returns the server's join handle.
    pub fn begin_shutdown(&mut self) -> JoinHandle<Result<(), chanhub::ServerError>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.take().expect("server still running")
    }

    /// A token of `ty` for `sub`, valid for an hour, plus `extra` claims.
    pub fn token(&self, ty: ClientType, sub: &str) -> String {
        token_with(json!({ "client_type": ty.as_str(), "sub": sub }))
    }

    /// Connects and authenticates with a first `auth` message; returns the
    /// client and the `auth:success` message.
    pub async fn connect(&self, ty: ClientType, sub: &str) -> (WsClient, Value) {
        self.connect_with_token(&self.token(ty, sub)).await
    }

    pub async fn connect_with_token(&self, token: &str) -> (WsClient, Value) {
        let mut client = WsClient::connect(&self.ws_url()).await;
        client.send(json!({"type": "auth", "token": token})).await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "auth:success", "auth reply: {reply}");
        (client, reply)
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    chanhub::protocol::now_ms() / 1000
}

/// Signs `claims` with the test secret; adds `exp` one hour ahead unless present.
pub fn token_with(mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now_secs() + 3600);
    }
    mint(
        &claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("mint")
}

/// A raw WebSocket client speaking JSON.
pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The stream ended or errored without a close frame.
    NoFrame,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect");
        WsClient { ws }
    }

    pub async fn send(&mut self, msg: Value) {
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next JSON text message (control frames skipped). Panics on close.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a message")
                .expect("stream ended")
                .expect("read error");
            match msg {
                Message::Text(text) => return serde_json::from_str(&text).expect("json"),
                Message::Close(frame) => panic!("closed while expecting a message: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next message of type `ty`, skipping others.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let msg = self.recv().await;
            if msg["type"] == ty {
                return msg;
            }
        }
    }

    /// Reads until the connection closes; returns how.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close")
            {
                Some(Ok(Message::Close(Some(frame)))) => return Closed::Code(frame.code.into()),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Closed::NoFrame,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads until close; returns the close code and the JSON messages seen before it.
    pub async fn drain_until_closed(&mut self) -> (Closed, Vec<Value>) {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (Closed::Code(frame.code.into()), seen);
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return (Closed::NoFrame, seen);
                }
                Some(Ok(Message::Text(text))) => {
                    seen.push(serde_json::from_str(&text).expect("json"))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Subscribes and waits for `subscribed`.
    pub async fn subscribe(&mut self, channels: &[&str]) -> Value {
        self.send(json!({"type": "subscribe", "id": "sub", "channels": channels}))
            .await;
        self.recv_type("subscribed").await
    }

    /// Publishes with an id and waits for `published`.
    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        self.send(json!({"type": "publish", "id": "pub", "channel": channel, "data": data}))
            .await;
        self.recv().await
    }

    /// Round-trips a ping: every message sent before it has been handled.
    pub async fn sync(&mut self) {
        self.send(json!({"type": "ping", "id": "sync"})).await;
        let pong = self.recv_type("pong").await;
        assert_eq!(pong["id"], "sync");
    }
}

/// Close code helper for readability.
pub fn code(c: CloseCode) -> u16 {
    c.into()
}
