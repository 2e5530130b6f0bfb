//! Limits and bad input: oversized frames, invalid JSON, unknown types,
//! binary frames, invalid patterns, subscription and connection limits, a
//! burst of subscribes, slow consumers and clients that stop answering pings.
//! Each must behave as documented without disturbing other connections.

mod common;

use std::time::Duration;

use chanhub::auth::ClientType;
use common::{Closed, RawResponse, TestHub, WAIT, WsClient, expect_error};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let hub = TestHub::with_config(|c| c.limits.max_frame_bytes = 1024).await;
    let (mut bystander, _) = hub.connect(ClientType::Browser, "other").await;
    let (mut client, _) = hub.connect(ClientType::Hub, "backend").await;
    // Just under the limit is fine.
    let fits = json!({"type": "publish", "id": 1, "channel": "a", "data": "x".repeat(900)});
    assert!(fits.to_string().len() < 1024);
    client.send(fits).await;
    assert_eq!(client.recv().await["type"], "published");

    let big = json!({"type": "publish", "channel": "a", "data": "x".repeat(2048)});
    client.send(big).await;
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(1009), "{seen:?}");
    assert!(seen.is_empty(), "{seen:?}");
    bystander.sync().await;
}

#[tokio::test]
async fn invalid_json_gets_bad_request_and_the_connection_stays_open() {
    let hub = TestHub::start().await;
    let (mut client, _) = hub.connect(ClientType::Browser, "ui").await;
    client
        .send_raw(Message::text("{\"type\": \"subscribe\", oops"))
        .await;
    let err = expect_error(&mut client, "bad_request").await;
    assert!(err.get("id").is_none(), "{err}");
    client.sync().await;
    let ack = client.subscribe(&["session:*"]).await;
    assert_eq!(ack["channels"], json!(["session:*"]));
}

#[tokio::test]
async fn unknown_type_gets_bad_request_echoing_the_id() {
    let hub = TestHub::start().await;
    let (mut client, _) = hub.connect(ClientType::Browser, "ui").await;
    client.send(json!({"type": "teleport", "id": "t-1"})).await;
    let err = expect_error(&mut client, "bad_request").await;
    assert_eq!(err["id"], "t-1", "{err}");
    // A known type with a missing field is a bad request too.
    client.send(json!({"type": "subscribe", "id": 2})).await;
    let err = expect_error(&mut client, "bad_request").await;
    assert_eq!(err["id"], 2, "{err}");
    client.sync().await;
}

#[tokio::test]
async fn binary_frame_gets_bad_request_and_the_connection_stays_open() {
    let hub = TestHub::start().await;
    let (mut client, _) = hub.connect(ClientType::Browser, "ui").await;
    client
        .send_raw(Message::binary(br#"{"type":"ping"}"#.to_vec()))
        .await;
    expect_error(&mut client, "bad_request").await;
    client.sync().await;
}

#[tokio::test]
async fn consecutive_bad_frames_close_with_4009() {
    let hub = TestHub::with_config(|c| c.limits.max_bad_frames = 3).await;
    let (mut bystander, _) = hub.connect(ClientType::Browser, "other").await;
    let (mut client, _) = hub.connect(ClientType::Browser, "ui").await;
    client.send_raw(Message::text("nope")).await;
    client.send(json!({"type": "nope"})).await;
    client.send_raw(Message::binary(vec![1, 2, 3])).await;
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(4009), "{seen:?}");
    assert_eq!(seen.len(), 3, "{seen:?}");
    for err in &seen {
        assert_eq!(err["type"], "error", "{err}");
        assert_eq!(err["code"], "bad_request", "{err}");
    }
    bystander.sync().await;
}

#[tokio::test]
async fn a_good_frame_resets_the_bad_frame_count() {
    let hub = TestHub::with_config(|c| c.limits.max_bad_frames = 3).await;
    let (mut client, _) = hub.connect(ClientType::Browser, "ui").await;
    for _ in 0..3 {
        client.send_raw(Message::text("bad")).await;
        client.send_raw(Message::text("bad")).await;
        expect_error(&mut client, "bad_request").await;
        expect_error(&mut client, "bad_request").await;
        client.sync().await;
    }
}

#[tokio::test]
async fn invalid_pattern_gets_invalid_channel() {
    let hub = TestHub::start().await;
    let (mut client, _) = hub.connect(ClientType::Browser, "ui").await;
    let long = "a".repeat(300);
    let invalid = [
        "",
        "a::b",
        ":a",
        "a:",
        "sp ace",
        "semi;colon",
        "a:***",
        "a:x**",
        long.as_str(),
    ];
    let mut asked: Vec<&str> = invalid.to_vec();
    asked.push("session:*");
    client
        .send(json!({"type": "subscribe", "id": "s-1", "channels": asked}))
        .await;
    for pattern in invalid {
        let err = expect_error(&mut client, "invalid_channel").await;
        assert_eq!(err["channel"], pattern, "{err}");
        assert_eq!(err["id"], "s-1", "{err}");
    }
    let ack = client.recv().await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["channels"], json!(["session:*"]), "{ack}");
    client.sync().await;
}

#[tokio::test]
async fn too_many_segments_is_an_invalid_channel() {
    let hub = TestHub::start().await;
    let (mut client, _) = hub.connect(ClientType::Browser, "ui").await;
    let deep = vec!["s"; 17].join(":");
    let ok = vec!["s"; 16].join(":");
    client
        .send(json!({"type": "subscribe", "id": 1, "channels": [deep, ok]}))
        .await;
    let err = expect_error(&mut client, "invalid_channel").await;
    assert_eq!(err["channel"], deep.as_str(), "{err}");
    let ack = client.recv().await;
    assert_eq!(ack["channels"], json!([ok]), "{ack}");
}

#[tokio::test]
async fn publish_to_an_invalid_channel_gets_invalid_channel() {
    let hub = TestHub::start().await;
    let (mut client, _) = hub.connect(ClientType::Hub, "backend").await;
    for channel in ["session:*", "a::b", "**", ""] {
        client
            .send(json!({"type": "publish", "id": "p", "channel": channel, "data": 1}))
            .await;
        let err = expect_error(&mut client, "invalid_channel").await;
        assert_eq!(err["channel"], channel, "{err}");
        assert_eq!(err["id"], "p", "{err}");
    }
    client.sync().await;
}

#[tokio::test]
async fn subscriptions_beyond_the_limit_are_refused() {
    let hub = TestHub::with_config(|c| c.limits.max_subscriptions = 3).await;
    let (mut client, _) = hub.connect(ClientType::Browser, "ui").await;
    client
        .send(json!({"type": "subscribe", "id": 1, "channels": ["a:1", "a:2", "a:3", "a:4"]}))
        .await;
    let err = expect_error(&mut client, "too_many_subscriptions").await;
    assert_eq!(err["channel"], "a:4", "{err}");
    assert_eq!(err["id"], 1, "{err}");
    let ack = client.recv().await;
    assert_eq!(ack["channels"], json!(["a:1", "a:2", "a:3"]), "{ack}");

    // Re-subscribing a held pattern does not count again.
    let ack = client.subscribe(&["a:1"]).await;
    assert_eq!(ack["channels"], json!(["a:1"]), "{ack}");

    // Dropping one makes room.
    client
        .send(json!({"type": "unsubscribe", "channels": ["a:1"]}))
        .await;
    assert_eq!(client.recv().await["channels"], json!(["a:1"]));
    let ack = client.subscribe(&["a:4"]).await;
    assert_eq!(ack["channels"], json!(["a:4"]), "{ack}");
}

/// The next JSON text message from one half of a split socket.
async fn next_json<S>(stream: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("timed out reading replies")
            .expect("stream ended")
            .expect("read");
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).expect("json");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_ten_thousand_subscribes_gets_every_documented_reply() {
    const REQUESTS: u64 = 10_000;
    // About the subscription limit: the frame rate limit (tested in
    // tests/security.rs) is lifted so every request reaches it.
    let hub = TestHub::with_config(|c| c.limits.messages.browser = 0).await;
    let max = hub.hub.config().limits.max_subscriptions as u64;
    let (client, _) = hub.connect(ClientType::Browser, "burst").await;
    let (mut sink, mut stream) = client.ws.split();
    let (first_reply_tx, first_reply_rx) = tokio::sync::oneshot::channel::<()>();

    let send_all = async move {
        let frames = (0..REQUESTS).map(|i| {
            let msg = json!({"type": "subscribe", "id": i, "channels": [format!("burst:{i}")]});
            Ok(Message::text(msg.to_string()))
        });
        sink.send_all(&mut futures::stream::iter(frames))
            .await
            .expect("send burst");
        sink
    };

    let read_all = async move {
        let mut first_reply_tx = Some(first_reply_tx);
        for i in 0..REQUESTS {
            let channel = format!("burst:{i}");
            if i >= max {
                let err = next_json(&mut stream).await;
                assert_eq!(err["type"], "error", "{err}");
                assert_eq!(err["code"], "too_many_subscriptions", "{err}");
                assert_eq!(err["id"], i, "{err}");
                assert_eq!(err["channel"], channel.as_str(), "{err}");
            }
            let ack = next_json(&mut stream).await;
            assert_eq!(ack["type"], "subscribed", "{ack}");
            assert_eq!(ack["id"], i, "{ack}");
            let expected = if i < max { json!([channel]) } else { json!([]) };
            assert_eq!(ack["channels"], expected, "{ack}");
            if let Some(tx) = first_reply_tx.take() {
                let _ = tx.send(());
            }
        }
        stream
    };

    // Other connections are served while the burst is being handled.
    let others = async {
        first_reply_rx.await.expect("burst started");
        let (mut watcher, _) = hub.connect(ClientType::Browser, "watcher").await;
        let ack = watcher.subscribe(&["side:*"]).await;
        assert_eq!(ack["channels"], json!(["side:*"]));
        let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
        let ack = backend.publish("side:1", json!("meanwhile")).await;
        assert_eq!(ack["delivered"], 1, "{ack}");
        let event = watcher.recv().await;
        assert_eq!(event["channel"], "side:1", "{event}");
        backend
    };

    let (sink, stream, mut backend) = tokio::join!(send_all, read_all, others);

    // Exactly the first `max` patterns are held.
    let mut client = WsClient {
        ws: sink.reunite(stream).expect("same socket"),
    };
    client.sync().await;
    let ack = backend
        .publish(&format!("burst:{}", max - 1), json!(1))
        .await;
    assert_eq!(ack["delivered"], 1, "{ack}");
    let event = client.recv().await;
    assert_eq!(event["channel"], format!("burst:{}", max - 1), "{event}");
    let ack = backend.publish(&format!("burst:{max}"), json!(1)).await;
    assert_eq!(ack["delivered"], 0, "{ack}");
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let hub = TestHub::with_config(|c| c.limits.max_connections = Some(2)).await;
    let (mut first, _) = hub.connect(ClientType::Browser, "one").await;
    let (mut second, _) = hub.connect(ClientType::Browser, "two").await;

    match WsClient::try_connect(&hub.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("JSON body");
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
        }
        Err(other) => panic!("expected HTTP 503, got {other}"),
        Ok(_) => panic!("a third connection was accepted"),
    }
    // SSE streams count towards the same limit.
    let token = hub.token(ClientType::Browser, "sse");
    let mut sse = RawResponse::get(
        hub.addr,
        "/api/stream?channels=a",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(sse.status, 503);
    assert_eq!(sse.json().await["error"]["code"], "unavailable");

    first.sync().await;
    second.sync().await;
}

#[tokio::test]
async fn slow_consumer_is_disconnected_while_a_fast_one_gets_everything() {
    const EXTRA_AFTER_KICK: u64 = 20;
    const MAX_EVENTS: u64 = 20_000;
    let hub = TestHub::with_config(|c| c.limits.outbound_queue = 8).await;
    let (mut slow, _) = hub.connect(ClientType::Browser, "slow").await;
    slow.subscribe(&["load:*"]).await;
    let (mut fast, _) = hub.connect(ClientType::Browser, "fast").await;
    fast.subscribe(&["load:*"]).await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;

    // The fast subscriber reads continuously, forwarding sequence numbers.
    let (seq_tx, mut seq_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let fast_reader = tokio::spawn(async move {
        loop {
            let event = fast.recv().await;
            assert_eq!(event["channel"], "load:1", "{event}");
            let seq = event["data"]["seq"].as_u64().expect("seq");
            if seq_tx.send(seq).is_err() {
                return fast;
            }
        }
    });

    // Publish 8 KiB events until the hub reports the slow subscriber gone
    // (an event reaching only the fast one), then a few more.
    let pad = "x".repeat(8 * 1024);
    let mut slow = Some(slow);
    let mut slow_reader = None;
    let mut kicked_at = None;
    let mut seq = 0;
    while kicked_at.is_none_or(|k| seq <= k + EXTRA_AFTER_KICK) {
        assert!(
            seq < MAX_EVENTS,
            "the slow subscriber was never disconnected"
        );
        let ack = backend
            .publish("load:1", json!({"seq": seq, "pad": pad}))
            .await;
        assert_eq!(ack["type"], "published", "{ack}");
        match ack["delivered"].as_u64() {
            Some(2) => assert!(kicked_at.is_none(), "slow subscriber came back: {ack}"),
            Some(1) if kicked_at.is_none() => {
                kicked_at = Some(seq);
                // It has been dropped; it starts reading now, and must
                // find the rest of what was written and then its close.
                // (The hub waits only a bounded time for a client to take
                // its close frame, so it reads at once.)
                let mut slow = slow.take().expect("slow client");
                slow_reader = Some(tokio::spawn(async move { slow.drain_until_closed().await }));
            }
            Some(1) => {}
            _ => panic!("unexpected delivery count: {ack}"),
        }
        seq += 1;
    }
    let kicked_at = kicked_at.expect("kicked");
    let total = seq;

    // The fast subscriber got every event, in order.
    for expected in 0..total {
        let got = tokio::time::timeout(WAIT, seq_rx.recv())
            .await
            .expect("fast subscriber stalled")
            .expect("fast reader ended");
        assert_eq!(got, expected, "fast subscriber out of order");
    }
    drop(seq_rx);

    // The slow one saw a prefix of the events, then close 4008.
    let (closed, seen) = slow_reader
        .expect("slow reader")
        .await
        .expect("slow reader panicked");
    assert_eq!(closed, Closed::Code(4008), "after {} events", seen.len());
    assert!(
        seen.len() as u64 <= kicked_at,
        "{} > {kicked_at}",
        seen.len()
    );
    for (i, event) in seen.iter().enumerate() {
        assert_eq!(
            event["data"]["seq"], i as u64,
            "slow subscriber out of order"
        );
    }
    fast_reader.abort();
}

/// A client that reads frames off the socket but never answers pings: a
/// WebSocket handshake by hand, then raw frame parsing.
struct DeafClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame from the server: opcode and payload.
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

impl DeafClient {
    async fn connect(hub: &TestHub, token: &str) -> DeafClient {
        let mut stream = TcpStream::connect(hub.addr).await.expect("connect");
        let request = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            hub.addr
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut client = DeafClient {
            stream,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(pos) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos;
            }
            client.read_more().await;
        };
        let head = String::from_utf8_lossy(&client.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        client.buf.drain(..end + 4);
        client
    }

    async fn read_more(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("timed out reading")
            .expect("read");
        assert!(n > 0, "connection ended without a close frame");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next frame (server frames are unmasked).
    async fn frame(&mut self) -> Frame {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, header) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= header + len {
                    let payload = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return Frame { opcode, payload };
                }
            }
            self.read_more().await;
        }
    }
}

#[tokio::test]
async fn client_that_never_answers_pings_is_closed_with_4011() {
    let hub = TestHub::with_config(|c| {
        c.websocket.ping_interval = Duration::from_millis(100);
        c.websocket.ping_timeout = Duration::from_millis(500);
    })
    .await;
    // A normal client answers pings (tungstenite does it while reading).
    let (mut alive, _) = hub.connect(ClientType::Browser, "alive").await;

    let mut deaf = DeafClient::connect(&hub, &hub.token(ClientType::Browser, "deaf")).await;
    let hello = deaf.frame().await;
    assert_eq!(hello.opcode, 1, "text frame");
    let hello: Value = serde_json::from_slice(&hello.payload).expect("json");
    assert_eq!(hello["type"], "auth:success");

    let mut pings = 0;
    let close = loop {
        tokio::select! {
            frame = deaf.frame() => match frame.opcode {
                0x9 => pings += 1,
                0x8 => break frame,
                other => panic!("unexpected opcode {other}"),
            },
            msg = alive.ws.next() => match msg {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("the answering client got {other:?}"),
            },
        }
    };
    assert!(pings >= 1, "the hub pings before giving up");
    assert!(close.payload.len() >= 2, "close frame has a code");
    let code = u16::from_be_bytes([close.payload[0], close.payload[1]]);
    assert_eq!(code, 4011);

    // The client that answered is still served.
    alive.sync().await;
}
