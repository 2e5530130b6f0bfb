//! Hostile input (issue #7): hostile tokens, permission escalation, protocol
//! abuse and floods. Every case asserts the exact outcome (the reason, error
//! or close code the attacker gets) and that a bystander — a subscriber and
//! a publisher connected before the attack — is still served afterwards.
//!
//! The rate limits (`limits.messages`, `limits.connect`,
//! `limits.max_unauthenticated`) have their own cases at the end. Tests of
//! configurations with short windows use a one-hour window so no refill can
//! happen during the test: counts are exact, not timing-dependent.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chanhub::auth::{ClientType, mint};
use common::{Closed, TestHub, WAIT, WsClient, expect_error, token_with};
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

const HOUR: Duration = Duration::from_secs(3600);

/// A subscriber and a publisher connected before an attack; after it, an
/// event must still go from one to the other.
struct Bystander {
    watcher: WsClient,
    backend: WsClient,
    sent: u32,
}

impl Bystander {
    async fn join(hub: &TestHub) -> Bystander {
        let watcher = hub.token(ClientType::Browser, "bystander");
        let backend = hub.token(ClientType::Hub, "bystander-backend");
        Bystander::join_with(hub, &watcher, &backend).await
    }

    async fn join_with(hub: &TestHub, watcher: &str, backend: &str) -> Bystander {
        let (mut watcher, _) = hub.connect_with_token(watcher).await;
        watcher.subscribe(&["side:*"]).await;
        let (backend, _) = hub.connect_with_token(backend).await;
        Bystander {
            watcher,
            backend,
            sent: 0,
        }
    }

    async fn still_served(&mut self) {
        self.sent += 1;
        let channel = format!("side:{}", self.sent);
        let ack = self.backend.publish(&channel, json!(self.sent)).await;
        assert_eq!(ack["type"], "published", "{ack}");
        assert_eq!(ack["delivered"], 1, "{ack}");
        let event = self.watcher.recv().await;
        assert_eq!(event["channel"], channel.as_str(), "{event}");
        assert_eq!(event["data"], self.sent, "{event}");
    }
}

fn key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn claims(ty: &str) -> Value {
    json!({"sub": "mallory", "client_type": ty, "exp": common::now_secs() + 3600})
}

/// A token from its parts, the signature taken as is.
fn hand_made(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature
    )
}

/// Presents `token` in an `auth` message; expects `auth:failed` then 4001
/// and returns the reason.
async fn refused(hub: &TestHub, token: &str) -> String {
    let mut client = WsClient::connect(&hub.ws_url()).await;
    client
        .send(json!({"type": "auth", "id": "a", "token": token}))
        .await;
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(4001), "{seen:?}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["type"], "auth:failed", "{seen:?}");
    seen[0]["reason"].as_str().expect("reason").to_string()
}

// --- Tokens ---------------------------------------------------------------

#[tokio::test]
async fn hostile_tokens_are_refused_with_their_reason() {
    let hub = TestHub::with_config(|c| {
        c.auth.audience = Some("chanhub-a".into());
        c.auth.issuer = Some("issuer-a".into());
    })
    .await;
    let good = |mut extra: Value| {
        extra["aud"] = json!("chanhub-a");
        extra["iss"] = json!("issuer-a");
        extra
    };
    let mut bystander = Bystander::join_with(
        &hub,
        &token_with(good(json!({"sub": "watcher", "client_type": "browser"}))),
        &token_with(good(json!({"sub": "backend", "client_type": "hub"}))),
    )
    .await;
    let now = common::now_secs();
    let valid = token_with(good(claims("browser")));
    let (_ok, hello) = hub.connect_with_token(&valid).await;
    assert_eq!(hello["clientType"], "browser");

    // A browser token whose claims were edited to say "hub", signature kept.
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(good(claims("hub")).to_string()),
        parts[2]
    );
    let other_hub = mint(
        &good(claims("hub")),
        Algorithm::HS256,
        &EncodingKey::from_secret(b"the-secret-of-another-hub"),
    )
    .expect("mint");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            hand_made(
                &json!({"alg": "none", "typ": "JWT"}),
                &good(claims("hub")),
                "",
            ),
            "algorithm_not_allowed",
        ),
        ("tampered payload", tampered, "bad_signature"),
        ("hub token of another hub", other_hub, "bad_signature"),
        (
            "expired",
            token_with(good(
                json!({"sub": "m", "client_type": "hub", "exp": now - 60}),
            )),
            "expired",
        ),
        (
            "not yet valid",
            token_with(good(
                json!({"sub": "m", "client_type": "hub", "nbf": now + 600}),
            )),
            "not_yet_valid",
        ),
        (
            "another audience",
            token_with(
                json!({"sub": "m", "client_type": "hub", "aud": "chanhub-b", "iss": "issuer-a"}),
            ),
            "invalid_audience",
        ),
        (
            "another issuer",
            token_with(
                json!({"sub": "m", "client_type": "hub", "aud": "chanhub-a", "iss": "issuer-b"}),
            ),
            "invalid_issuer",
        ),
        (
            "no client type",
            token_with(good(json!({"sub": "m"}))),
            "missing_client_type",
        ),
        (
            "unknown client type",
            token_with(good(claims("admin"))),
            "unknown_client_type",
        ),
        ("not a JWT", "x".repeat(500), "malformed_token"),
    ];
    for (name, token, reason) in cases {
        assert_eq!(refused(&hub, &token).await, reason, "case {name}");
    }
    bystander.still_served().await;
}

#[tokio::test]
async fn an_rs256_hub_refuses_hmac_tokens_and_other_keys() {
    let hub = TestHub::with_config(|c| {
        c.auth.algorithm = "RS256".into();
        c.auth.public_key_file = Some(key("rsa-a.pub.pem"));
    })
    .await;
    let sign = |alg, key: EncodingKey| mint(&claims("hub"), alg, &key).expect("mint");
    let private = |name| {
        let pem = std::fs::read(key(name)).expect("key file");
        EncodingKey::from_rsa_pem(&pem).expect("rsa key")
    };
    let (mut backend, _) = hub
        .connect_with_token(&sign(Algorithm::RS256, private("rsa-a.pem")))
        .await;
    let (mut watcher, _) = hub
        .connect_with_token(&sign(Algorithm::RS256, private("rsa-a.pem")))
        .await;
    watcher.subscribe(&["side:*"]).await;

    // Algorithm confusion: HS256 keyed with the hub's public key.
    let public = std::fs::read(key("rsa-a.pub.pem")).expect("key file");
    let confused = sign(Algorithm::HS256, EncodingKey::from_secret(&public));
    assert_eq!(refused(&hub, &confused).await, "algorithm_not_allowed");
    // RS256, but signed by a key the hub does not trust.
    let foreign = sign(Algorithm::RS256, private("rsa-b.pem"));
    assert_eq!(refused(&hub, &foreign).await, "bad_signature");

    let ack = backend.publish("side:1", json!(1)).await;
    assert_eq!(ack["delivered"], 1, "{ack}");
    assert_eq!(watcher.recv().await["channel"], "side:1");
}

#[tokio::test]
async fn a_100_kb_token_is_refused_in_every_place_it_can_be_put() {
    let hub = TestHub::start().await;
    let mut bystander = Bystander::join(&hub).await;
    let mut big = claims("hub");
    big["padding"] = json!("p".repeat(100 * 1024));
    let token = token_with(big);
    assert!(token.len() > 100 * 1024);

    // In an `auth` message: the frame is over limits.max_frame_bytes.
    let mut client = WsClient::connect(&hub.ws_url()).await;
    client.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(client.closed().await, Closed::Code(1009));

    // In the upgrade's Authorization header: over auth.max_token_bytes.
    let mut client = WsClient::connect_with_bearer(&hub.ws_url(), &token).await;
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(4001), "{seen:?}");
    assert_eq!(seen[0]["reason"], "token_too_large", "{seen:?}");

    // As an SSE ?token=: the request line is over the HTTP layer's URI
    // limit (64 KiB), so it is refused before any handler runs.
    let request = format!(
        "GET /api/stream?channels=side:*&token={token} HTTP/1.1\r\nHost: {}\r\n\r\n",
        hub.addr
    );
    assert_eq!(raw_http(hub.addr, request.as_bytes()).await, Some(414));

    bystander.still_served().await;
}

#[tokio::test]
async fn a_token_after_other_messages_is_refused() {
    let hub = TestHub::start().await;
    let mut client = WsClient::connect(&hub.ws_url()).await;
    client.send(json!({"type": "ping", "id": "early"})).await;
    client
        .send(json!({"type": "auth", "token": hub.token(ClientType::Hub, "late")}))
        .await;
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(4001), "{seen:?}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["reason"], "auth_required", "{seen:?}");
    assert_eq!(seen[0]["id"], "early", "{seen:?}");
}

// --- Permission escalation -----------------------------------------------

#[tokio::test]
async fn a_browser_cannot_publish_submit_register_or_federate() {
    let hub = TestHub::start().await;
    let mut bystander = Bystander::join(&hub).await;
    let (mut browser, _) = hub.connect(ClientType::Browser, "mallory").await;
    let attempts = [
        json!({"type": "publish", "id": 1, "channel": "side:x", "data": "forged"}),
        json!({"type": "task:submit", "id": 2, "task": {"type": "job:x", "payload": {}}}),
        json!({"type": "register", "id": 3, "capabilities": ["job:*"], "slots": 1}),
    ];
    for attempt in attempts {
        browser.send(attempt.clone()).await;
        let err = expect_error(&mut browser, "forbidden").await;
        assert_eq!(err["id"], attempt["id"], "{err}");
    }
    // Still open, and nothing was forged onto side:*.
    browser.sync().await;
    bystander.still_served().await;

    browser
        .send(
            json!({"type": "hub:hello", "hubId": "5b0c7f2e-3d1a-4a8e-9c61-0f2d8e7b4a13",
            "name": "evil", "version": "0.1.0", "maxFrameBytes": 65536}),
        )
        .await;
    let (closed, seen) = browser.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(1008), "{seen:?}");
    assert_eq!(seen[0]["type"], "hub:refused", "{seen:?}");
    assert_eq!(seen[0]["reason"], "not_permitted", "{seen:?}");
    bystander.still_served().await;
}

#[tokio::test]
async fn a_worker_cannot_finish_a_task_it_does_not_hold() {
    let hub = TestHub::start().await;
    let (mut submitter, _) = hub.connect(ClientType::Hub, "submitter").await;
    let (mut holder, _) = hub.connect(ClientType::Worker, "holder").await;
    let registered = holder.register(&["job:*"], 1).await;
    let (mut thief, _) = hub.connect(ClientType::Worker, "thief").await;
    thief.register(&["other:*"], 1).await;
    let id = submitter
        .submit_task(json!({"type": "job:x", "payload": {"n": 1}}))
        .await;
    let task = holder.next_assign().await;
    assert_eq!(task["id"], id.as_str());

    for msg in [
        json!({"type": "task:complete", "id": "c", "taskId": id, "result": "stolen"}),
        json!({"type": "task:error", "id": "e", "taskId": id, "error": "x", "retryable": false}),
        json!({"type": "task:progress", "id": "p", "taskId": id, "progress": 50}),
    ] {
        thief.send(msg).await;
        expect_error(&mut thief, "not_assigned").await;
    }
    holder.complete_task(&id, json!("real")).await;
    let result = submitter.recv_type("task:result").await;
    assert_eq!(result["task"]["result"], "real", "{result}");
    assert_eq!(
        result["task"]["workerId"], registered["workerId"],
        "{result}"
    );
}

#[tokio::test]
async fn a_narrowed_browser_cannot_widen_its_subscription_with_patterns() {
    let hub = TestHub::start().await;
    let token =
        token_with(json!({"sub": "ui", "client_type": "browser", "channels": ["session:**"]}));
    let (mut browser, _) = hub.connect_with_token(&token).await;
    for wide in ["**", "*:**", "{session,task}:*", "*", "sess*:**", "task:**"] {
        browser
            .send(json!({"type": "subscribe", "id": wide, "channels": [wide]}))
            .await;
        let err = expect_error(&mut browser, "forbidden").await;
        assert_eq!(err["channel"], wide, "{err}");
        let ack = browser.recv_type("subscribed").await;
        assert_eq!(ack["channels"], json!([]), "{wide}: {ack}");
    }
    // What the allow-list covers is still allowed.
    let ack = browser.subscribe(&["session:*", "session:1:**"]).await;
    assert_eq!(ack["channels"], json!(["session:*", "session:1:**"]));
}

// --- Protocol abuse -------------------------------------------------------

/// A masked client frame: `fin`, `opcode`, payload.
fn raw_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_header(fin, opcode, payload.len() as u64);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A masked frame's header (with its mask key) announcing `len` bytes.
fn frame_header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=65535 => {
            out.push(0x80 | 126);
            out.extend((len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend(len.to_be_bytes());
        }
    }
    out.extend([0x37, 0xfa, 0x21, 0x3d]);
    out
}

/// An authenticated client (bearer token on the upgrade) that writes raw
/// bytes under tungstenite and reads the hub's answer with it.
async fn raw_client(hub: &TestHub) -> WsClient {
    let mut client =
        WsClient::connect_with_bearer(&hub.ws_url(), &hub.token(ClientType::Browser, "raw")).await;
    assert_eq!(client.recv().await["type"], "auth:success");
    client
}

async fn write_raw(client: &mut WsClient, bytes: &[u8]) {
    let MaybeTlsStream::Plain(tcp) = client.ws.get_mut() else {
        panic!("plain TCP expected");
    };
    // The hub may close mid-write (that is the point); a failed write is fine.
    let _ = tcp.write_all(bytes).await;
    let _ = tcp.flush().await;
}

#[tokio::test]
async fn malformed_frames_close_with_their_code() {
    let hub = TestHub::start().await;
    let mut bystander = Bystander::join(&hub).await;
    const TEXT: u8 = 0x1;
    const CONTINUATION: u8 = 0x0;

    // Invalid UTF-8 in a text frame.
    let mut client = raw_client(&hub).await;
    write_raw(
        &mut client,
        &raw_frame(true, TEXT, b"{\"type\":\"ping\xff\xfe\"}"),
    )
    .await;
    assert_eq!(client.closed().await, Closed::Code(1007));

    // A continuation frame with no message to continue.
    let mut client = raw_client(&hub).await;
    write_raw(&mut client, &raw_frame(true, CONTINUATION, b"orphan")).await;
    assert_eq!(client.closed().await, Closed::Code(1002));

    // A fragmented message whose fragments add up past the 64 KiB limit.
    let mut client = raw_client(&hub).await;
    let chunk = vec![b' '; 40 * 1024];
    let mut bytes = raw_frame(false, TEXT, &chunk);
    bytes.extend(raw_frame(true, CONTINUATION, &chunk));
    write_raw(&mut client, &bytes).await;
    assert_eq!(client.closed().await, Closed::Code(1009));

    // A 10 MB frame: refused from its header, before the payload is read.
    let mut client = raw_client(&hub).await;
    let mut bytes = frame_header(true, TEXT, 10 * 1024 * 1024);
    bytes.extend(vec![b'x'; 64 * 1024]);
    write_raw(&mut client, &bytes).await;
    assert_eq!(client.closed().await, Closed::Code(1009));

    bystander.still_served().await;
}

#[tokio::test]
async fn absurd_json_is_a_bad_frame_and_the_connection_lives() {
    // A 1 MiB frame limit so the parser, not the size check, meets the input.
    let hub = TestHub::with_config(|c| c.limits.max_frame_bytes = 1 << 20).await;
    let mut bystander = Bystander::join(&hub).await;
    let (mut client, _) = hub.connect(ClientType::Hub, "absurd").await;

    let nested = format!(
        "{{\"type\":\"publish\",\"id\":\"deep\",\"channel\":\"side:deep\",\"data\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    client.send_raw(Message::text(nested)).await;
    let err = expect_error(&mut client, "bad_request").await;
    assert_eq!(err["id"], "deep", "{err}");

    for huge in ["1e999999", &"9".repeat(400), "-1e400"] {
        let frame = format!(
            "{{\"type\":\"publish\",\"id\":\"huge\",\"channel\":\"side:huge\",\"data\":{huge}}}"
        );
        client.send_raw(Message::text(frame)).await;
        let err = expect_error(&mut client, "bad_request").await;
        assert_eq!(err["id"], "huge", "{err}");
    }
    client.sync().await;
    bystander.still_served().await;
}

/// Sends `frames` as fast as the socket takes them while reading; returns
/// the JSON messages seen and how the connection ended.
async fn flood(client: WsClient, frames: Vec<Message>) -> (Vec<Value>, Closed) {
    let (mut sink, mut stream) = client.ws.split();
    let writer = tokio::spawn(async move {
        for frame in frames {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let closed = loop {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the flood must end in a close")
        {
            Some(Ok(Message::Close(Some(frame)))) => break Closed::Code(frame.code.into()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => break Closed::NoFrame,
            Some(Ok(Message::Text(text))) => seen.push(serde_json::from_str(&text).expect("json")),
            Some(Ok(_)) => {}
        }
    };
    writer.abort();
    (seen, closed)
}

fn count(seen: &[Value], ty: &str, code: Option<&str>) -> usize {
    seen.iter()
        .filter(|m| m["type"] == ty && code.is_none_or(|c| m["code"] == c))
        .count()
}

#[tokio::test]
async fn a_flood_of_100_000_subscribes_is_rate_limited_then_closed() {
    let hub = TestHub::with_config(|c| c.limits.messages.window = HOUR * 10).await;
    let mut bystander = Bystander::join(&hub).await;
    let baseline = hub.hub.stats().await.subscriptions;
    let (client, _) = hub.connect(ClientType::Browser, "flooder").await;
    let frames = (0..100_000)
        .map(|i| {
            Message::text(
                json!({"type": "subscribe", "id": i, "channels": ["flood:*"]}).to_string(),
            )
        })
        .collect();
    let (seen, closed) = flood(client, frames).await;
    assert_eq!(closed, Closed::Code(4029));
    // The browser budget (1000 per window) and then `close_after` refusals.
    let limits = &hub.hub.config().limits.messages;
    assert_eq!(count(&seen, "subscribed", None), limits.browser as usize);
    assert_eq!(
        count(&seen, "error", Some("rate_limited")),
        limits.close_after as usize
    );
    assert_eq!(seen.len(), (limits.browser + limits.close_after) as usize);
    bystander.still_served().await;
    assert_eq!(hub.hub.stats().await.subscriptions, baseline);
}

#[tokio::test]
async fn a_ping_flood_is_rate_limited_then_closed() {
    let hub = TestHub::with_config(|c| {
        c.limits.messages.browser = 50;
        c.limits.messages.window = HOUR;
        c.limits.messages.close_after = 10;
    })
    .await;
    let mut bystander = Bystander::join(&hub).await;
    let (client, _) = hub.connect(ClientType::Browser, "pinger").await;
    let frames = (0..100_000)
        .map(|_| Message::Ping(b"flood".to_vec().into()))
        .collect();
    let (seen, closed) = flood(client, frames).await;
    assert_eq!(closed, Closed::Code(4029));
    assert_eq!(count(&seen, "error", Some("rate_limited")), 10, "{seen:?}");
    bystander.still_served().await;
}

/// Sends raw bytes as an HTTP request; returns the status code, or `None`
/// when the hub closed the connection without answering.
async fn raw_http(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.write_all(request).await;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("the hub must answer or close")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split(' ').nth(1).and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn bad_upgrades_and_oversized_requests_are_refused_over_http() {
    let hub = TestHub::start().await;
    let mut bystander = Bystander::join(&hub).await;
    let host = hub.addr;
    let upgrade = |extra: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{extra}\r\n"
        )
    };
    // No key; a wrong version; not an upgrade at all.
    let no_key = upgrade("Sec-WebSocket-Version: 13\r\n");
    let old_version =
        upgrade("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    let plain = format!("GET /ws HTTP/1.1\r\nHost: {host}\r\n\r\n");
    for request in [no_key, old_version, plain] {
        let status = raw_http(hub.addr, request.as_bytes()).await;
        assert!(
            matches!(status, Some(400 | 426)),
            "{request:?} got {status:?}"
        );
    }
    // The refusal says why, as JSON like every other error.
    let mut tcp = TcpStream::connect(hub.addr).await.expect("connect");
    let old_version =
        upgrade("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    tcp.write_all(old_version.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).ends_with('}') {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("the hub must answer")
            .expect("read");
        assert!(n > 0, "closed before the body: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.contains(r#""code":"bad_request""#) && answer.contains("Sec-WebSocket-Version"),
        "{answer}"
    );

    // 10,000 patterns in one SSE request: over limits.max_sse_patterns
    // (repeats count too).
    let token = hub.token(ClientType::Hub, "sse");
    let request = format!(
        "GET /api/stream?channels={} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n",
        vec!["a:*"; 10_000].join(",")
    );
    assert_eq!(raw_http(hub.addr, request.as_bytes()).await, Some(400));

    // A 1 MB query string: refused by the HTTP layer before any handler.
    let long = format!(
        "GET /api/stream?channels={} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let status = raw_http(hub.addr, long.as_bytes()).await;
    // 431 from hyper's head limit; the reset may overtake it while the
    // request is still being written.
    assert!(matches!(status, None | Some(431)), "{status:?}");
    bystander.still_served().await;
}

// --- Rate limits ----------------------------------------------------------

#[tokio::test]
async fn frames_over_the_rate_get_rate_limited_then_4029_and_are_counted() {
    let hub = TestHub::with_config(|c| {
        c.limits.messages.browser = 5;
        c.limits.messages.window = HOUR;
        c.limits.messages.close_after = 3;
    })
    .await;
    let mut bystander = Bystander::join(&hub).await;
    let (mut browser, _) = hub.connect(ClientType::Browser, "chatty").await;
    // The bystander's own subscribe spent one of its frames, not ours.
    for i in 0..5 {
        browser.send(json!({"type": "ping", "id": i})).await;
        assert_eq!(browser.recv().await["type"], "pong");
    }
    for i in 5..7 {
        browser.send(json!({"type": "ping", "id": i})).await;
        let err = expect_error(&mut browser, "rate_limited").await;
        assert_eq!(err["id"], i, "{err}");
    }
    browser.send(json!({"type": "ping", "id": 7})).await;
    let (closed, seen) = browser.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(4029));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["code"], "rate_limited");

    // Hub-type clients are unlimited by default.
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    for i in 0..50 {
        backend.send(json!({"type": "ping", "id": i})).await;
    }
    for _ in 0..50 {
        assert_eq!(backend.recv().await["type"], "pong");
    }
    bystander.still_served().await;

    let metrics = reqwest::get(hub.http_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("chanhub_messages_rate_limited_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"chanhub_disconnects_total{transport="ws",code="4029""#),
        "{metrics}"
    );
}

/// Opens a WebSocket from `source` (any 127.x address is loopback).
async fn upgrade_from(
    source: &str,
    hub: &TestHub,
) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind");
    let tcp = socket.connect(hub.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(hub.ws_url(), MaybeTlsStream::Plain(tcp)).await?;
    Ok(WsClient { ws })
}

fn http_status(err: tokio_tungstenite::tungstenite::Error) -> u16 {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn connection_attempts_are_limited_per_address() {
    let hub = TestHub::with_config(|c| {
        c.limits.connect.per_ip = 3;
        c.limits.connect.window = HOUR;
        c.limits.connect.exempt = vec!["127.0.0.9/32".parse().expect("net")];
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            upgrade_from("127.0.0.2", &hub)
                .await
                .expect("within the limit"),
        );
    }
    let refused = upgrade_from("127.0.0.2", &hub)
        .await
        .err()
        .expect("refused");
    assert_eq!(http_status(refused), 429);
    // SSE counts against the same address ...
    let sse = raw_sse_from("127.0.0.2", &hub).await;
    assert_eq!(sse, 429);
    // ... other addresses, and exempt ones, are not affected.
    upgrade_from("127.0.0.3", &hub)
        .await
        .expect("another address");
    for _ in 0..10 {
        upgrade_from("127.0.0.9", &hub)
            .await
            .expect("exempt address");
    }
    let metrics = reqwest::get(hub.http_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"chanhub_connections_rejected_total{reason="rate_limited"} 2"#),
        "{metrics}"
    );
}

/// The status of an SSE request sent from `source`.
async fn raw_sse_from(source: &str, hub: &TestHub) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind");
    let mut tcp = socket.connect(hub.addr).await.expect("connect");
    let token = hub.token(ClientType::Browser, "sse");
    let request = format!(
        "GET /api/stream?channels=side:* HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        hub.addr
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("answer")
        .expect("read");
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status")
}

#[tokio::test]
async fn unauthenticated_sockets_are_capped() {
    let hub = TestHub::with_config(|c| c.limits.max_unauthenticated = 2).await;
    let mut bystander = Bystander::join(&hub).await;
    let mut first = WsClient::connect(&hub.ws_url()).await;
    let _second = WsClient::connect(&hub.ws_url()).await;
    let refused = WsClient::try_connect(&hub.ws_url())
        .await
        .err()
        .expect("over the cap");
    assert_eq!(http_status(refused), 503);
    // Once one authenticates, its place is free again.
    first
        .send(json!({"type": "auth", "token": hub.token(ClientType::Browser, "late")}))
        .await;
    assert_eq!(first.recv().await["type"], "auth:success");
    let _third = WsClient::connect(&hub.ws_url()).await;
    bystander.still_served().await;
}
