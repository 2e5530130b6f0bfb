//! Shared test harness: a real hub on 127.0.0.1:0 and real clients. The
//! submodules: `engine` runs one scenario on both engines, `cluster` starts
//! Redis and cluster nodes, `history` and `tasks` hold what those suites
//! share, `child` runs the binary, `proxy` cuts a client's connection, `node` runs
//! the JavaScript package's node scripts.
//!
//! Every wait is bounded by [`WAIT`]; it is a guard against hangs, not a
//! timing assumption: a passing run never waits for it.
#![allow(dead_code, unreachable_pub)]

pub mod calls;
pub mod child;
pub mod cluster;
pub mod engine;
pub mod history;
pub mod jwks;
pub mod node;
pub mod proxy;
pub mod tasks;

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
        authenticated(&self.ws_url(), token).await
    }
}

/// Connects to `ws_url` and authenticates with a first `auth` message;
/// returns the client and the `auth:success` message.
pub async fn authenticated(ws_url: &str, token: &str) -> (WsClient, Value) {
    let mut client = WsClient::connect(ws_url).await;
    client.send(json!({"type": "auth", "token": token})).await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "auth:success", "auth reply: {reply}");
    (client, reply)
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

    /// Publishes with an id and checks the reply is `published` (a refused
    /// publish answers at once, so it proves nothing as a sync point).
    pub async fn publish_ok(&mut self, channel: &str, data: Value) -> Value {
        let reply = self.publish(channel, data).await;
        assert_eq!(reply["type"], "published", "publish reply: {reply}");
        reply
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

impl WsClient {
    /// Connects with `Authorization: Bearer <token>` on the upgrade request.
    pub async fn connect_with_bearer(url: &str, token: &str) -> WsClient {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect timed out")
            .expect("connect");
        WsClient { ws }
    }

    /// Attempts the upgrade; the error is returned rather than panicking on.
    pub async fn try_connect(url: &str) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")?;
        Ok(WsClient { ws })
    }

    /// After a close frame was read: keeps reading until the stream ends, so
    /// the client's close reply is written and the handshake completes.
    pub async fn finish_close(&mut self) {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out finishing the close handshake")
            {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// A hub connection's next message must be an `error` with `code`; returns it.
pub async fn expect_error(client: &mut WsClient, code: &str) -> Value {
    let msg = client.recv().await;
    assert_eq!(msg["type"], "error", "expected an error: {msg}");
    assert_eq!(msg["code"], code, "{msg}");
    msg
}

/// An HTTP/1.1 response read with a raw TCP client: status and headers, then
/// the body decoded (chunked or `Content-Length`) as it arrives, so streamed
/// bodies such as SSE can be checked byte for byte.
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    stream: TcpStream,
    /// Bytes read but not yet decoded.
    raw: Vec<u8>,
    /// Decoded body bytes not yet consumed.
    body: Vec<u8>,
    framing: Framing,
}

/// How the body is framed, and where decoding is.
enum Framing {
    /// `Transfer-Encoding: chunked`; `left` bytes of the current chunk remain
    /// (None: a chunk-size line comes next).
    Chunked { left: Option<usize> },
    /// `Content-Length`: bytes remaining.
    Length(usize),
    /// The body ended with its framing (last chunk, or the full length).
    Complete,
    /// The connection closed before the framing said the body was over.
    Aborted,
}

/// How a body ended.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// The last chunk (or the full `Content-Length`) arrived.
    Complete,
    /// The connection closed in the middle of the body.
    Aborted,
}

impl RawResponse {
    /// Sends `GET path` with `headers` and reads the status line and headers.
    pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawResponse {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut response = RawResponse {
            status: 0,
            headers: Vec::new(),
            stream,
            raw: Vec::new(),
            body: Vec::new(),
            framing: Framing::Complete,
        };
        let head_end = loop {
            if let Some(pos) = find(&response.raw, b"\r\n\r\n") {
                break pos;
            }
            assert!(
                response.read_more().await,
                "connection closed before headers"
            );
        };
        let head = String::from_utf8(response.raw[..head_end].to_vec()).expect("utf-8 head");
        response.raw.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        response.status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        for line in lines {
            let (name, value) = line.split_once(':').expect("header line");
            response
                .headers
                .push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        response.framing = if response
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            Framing::Chunked { left: None }
        } else {
            let len = response
                .header("content-length")
                .map(|v| v.parse().expect("content-length"))
                .unwrap_or(0);
            Framing::Length(len)
        };
        response.decode();
        response
    }

    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next SSE frame: everything up to and including a blank line
    /// (`"\n\n"`). `None` when the body ends first.
    pub async fn next_frame(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = find(&self.body, b"\n\n") {
                let frame: Vec<u8> = self.body.drain(..pos + 2).collect();
                return Some(String::from_utf8(frame).expect("utf-8 frame"));
            }
            if self.is_over() {
                return None;
            }
            self.read_more().await;
            self.decode();
        }
    }

    /// The next SSE frame that is not a `:keepalive` comment.
    pub async fn next_event_frame(&mut self) -> String {
        loop {
            let frame = self.next_frame().await.expect("stream ended");
            if !frame.starts_with(':') {
                return frame;
            }
        }
    }

    /// Reads the rest of the body; returns it and how it ended.
    pub async fn read_to_end(&mut self) -> (String, BodyEnd) {
        while !self.is_over() {
            self.read_more().await;
            self.decode();
        }
        let body = String::from_utf8(std::mem::take(&mut self.body)).expect("utf-8 body");
        let end = match self.framing {
            Framing::Aborted => BodyEnd::Aborted,
            _ => BodyEnd::Complete,
        };
        (body, end)
    }

    /// The whole body as JSON.
    pub async fn json(&mut self) -> Value {
        let (body, end) = self.read_to_end().await;
        assert_eq!(end, BodyEnd::Complete, "body cut short: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    }

    fn is_over(&self) -> bool {
        matches!(self.framing, Framing::Complete | Framing::Aborted)
    }

    /// Reads more bytes; false at end of stream (and marks the body aborted
    /// if its framing was not finished).
    async fn read_more(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
            .await
            .expect("timed out reading the response")
            .unwrap_or(0);
        if n == 0 {
            if !self.is_over() {
                self.framing = Framing::Aborted;
            }
            return false;
        }
        self.raw.extend_from_slice(&buf[..n]);
        true
    }

    /// Moves whatever the framing allows from `raw` into `body`.
    fn decode(&mut self) {
        loop {
            match self.framing {
                Framing::Complete | Framing::Aborted => return,
                Framing::Length(0) => {
                    self.framing = Framing::Complete;
                    return;
                }
                Framing::Length(left) => {
                    let n = left.min(self.raw.len());
                    if n == 0 {
                        return;
                    }
                    self.body.extend(self.raw.drain(..n));
                    self.framing = Framing::Length(left - n);
                }
                Framing::Chunked { left: None } => {
                    let Some(pos) = find(&self.raw, b"\r\n") else {
                        return;
                    };
                    let line = String::from_utf8(self.raw[..pos].to_vec()).expect("chunk size");
                    let size_hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size_hex, 16)
                        .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                    if size == 0 {
                        // The last chunk: wait for the empty trailer line.
                        if self.raw.len() < pos + 4 {
                            return;
                        }
                        assert_eq!(&self.raw[pos..pos + 4], b"\r\n\r\n", "trailers");
                        self.raw.drain(..pos + 4);
                        self.framing = Framing::Complete;
                        return;
                    }
                    self.raw.drain(..pos + 2);
                    self.framing = Framing::Chunked { left: Some(size) };
                }
                Framing::Chunked { left: Some(0) } => {
                    if self.raw.len() < 2 {
                        return;
                    }
                    assert_eq!(&self.raw[..2], b"\r\n", "chunk must end with CRLF");
                    self.raw.drain(..2);
                    self.framing = Framing::Chunked { left: None };
                }
                Framing::Chunked { left: Some(left) } => {
                    let n = left.min(self.raw.len());
                    if n == 0 {
                        return;
                    }
                    self.body.extend(self.raw.drain(..n));
                    self.framing = Framing::Chunked {
                        left: Some(left - n),
                    };
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---- Task routing helpers ----

impl TestHub {
    /// An HTTP client that sends `Authorization: Bearer <token>`.
    pub fn http(&self, token: &str) -> reqwest::Client {
        bearer_client(token)
    }
}

/// An HTTP client that sends `Authorization: Bearer <token>` and gives up
/// after [`WAIT`].
pub fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(WAIT)
        .build()
        .expect("http client")
}

impl WsClient {
    /// Registers as a worker and waits for `registered`; returns it.
    pub async fn register(&mut self, capabilities: &[&str], slots: u32) -> Value {
        self.send(
            json!({"type": "register", "id": "reg", "capabilities": capabilities, "slots": slots}),
        )
        .await;
        let reply = self.recv().await;
        assert_eq!(reply["type"], "registered", "register reply: {reply}");
        reply
    }

    /// Submits `task` and waits for `task:accepted` (the next message);
    /// returns the task id.
    pub async fn submit_task(&mut self, task: Value) -> String {
        let accepted = self.submit_task_reply(task).await;
        assert_eq!(
            accepted["type"], "task:accepted",
            "submit reply: {accepted}"
        );
        accepted["taskId"]
            .as_str()
            .expect("taskId is a string")
            .to_string()
    }

    /// Submits `task`; returns the next message (`task:accepted` or `error`).
    pub async fn submit_task_reply(&mut self, task: Value) -> Value {
        self.send(json!({"type": "task:submit", "id": "submit", "task": task}))
            .await;
        self.recv().await
    }

    /// The next message, which must be a `task:assign`; returns its `task`.
    pub async fn next_assign(&mut self) -> Value {
        let msg = self.recv().await;
        assert_eq!(msg["type"], "task:assign", "expected an assignment: {msg}");
        msg["task"].clone()
    }

    /// Completes a task and waits for its `task:ack` (the next message).
    pub async fn complete_task(&mut self, task_id: &str, result: Value) {
        self.send(
            json!({"type": "task:complete", "id": "done", "taskId": task_id, "result": result}),
        )
        .await;
        let ack = self.recv().await;
        assert_eq!(ack["type"], "task:ack", "complete reply: {ack}");
        assert_eq!(ack["taskId"], task_id, "{ack}");
        assert_eq!(ack["state"], "completed", "{ack}");
    }

    /// Round-trips a ping and asserts nothing else arrived before the pong:
    /// whatever the hub queued for this connection so far has been seen.
    pub async fn expect_quiet(&mut self) {
        self.send(json!({"type": "ping", "id": "quiet"})).await;
        let msg = self.recv().await;
        assert_eq!(
            msg["type"], "pong",
            "expected nothing before the pong: {msg}"
        );
        assert_eq!(msg["id"], "quiet", "{msg}");
    }
}

/// A hub served on a given address, for a restart on the address a previous
/// hub released.
pub struct RestartedHub {
    /// Its own data directory: the first hub, still alive in the test,
    /// keeps its task store open.
    _data: tempfile::TempDir,
    pub hub: Hub,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), chanhub::ServerError>>,
}

impl RestartedHub {
    pub async fn start(addr: SocketAddr, mut config: Config) -> RestartedHub {
        let data = tempfile::tempdir().expect("tempdir");
        config.data_dir = Some(data.path().to_path_buf());
        let listener = bind_again(addr).await;
        let hub = Hub::new(config).expect("hub");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(chanhub::serve(listener, hub.clone(), async {
            let _ = rx.await;
        }));
        RestartedHub {
            _data: data,
            hub,
            shutdown: Some(tx),
            task,
        }
    }
}

impl Drop for RestartedHub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// Binds `addr` again. The previous listener is closed, but the kernel may
/// briefly still hold the port, so `AddrInUse` is retried a bounded number
/// of times (there is nothing to wait on but the kernel).
pub async fn bind_again(addr: SocketAddr) -> tokio::net::TcpListener {
    let mut last = None;
    for _ in 0..100 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
                last = Some(err);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("bind {addr}: {err}"),
        }
    }
    panic!("could not bind {addr} again: {last:?}");
}

/// Whether `var` is `1`: the tests that need an outside program (Node,
/// Chromium) skip only when asked to this way, and say so; without it a
/// missing program fails the test with how to install it.
pub fn skip_requested(var: &str) -> bool {
    let skip = std::env::var(var).as_deref() == Ok("1");
    if skip {
        eprintln!("skipped: {var}=1");
    }
    skip
}

/// `target/<profile>/examples/<name>`, next to the test binary's `deps/`
/// folder. `cargo test` builds the examples; `cargo test --test NAME` alone
/// does not (`cargo build --examples` first).
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` (or `cargo build --examples`) builds it",
        path.display()
    );
    path
}
