//! The SSE resume suite, on both engines (memory, and Redis cluster nodes:
//! a stream that comes back may land on another one): `Last-Event-ID` /
//! `?lastEventId=` replays the missed events first, then live; an
//! impossible resume sends `recovery:failed`; channels without history
//! have plain event ids.

mod common;

use chanhub::auth::ClientType;
use chanhub::protocol::history::{SseCursor, StreamPosition};
use common::RawResponse;
use common::engine::{Engine, Hubs, Node, on_both_engines};
use common::history::{epoch, next_event, with_history};
use serde_json::{Value, json};

/// Opens an SSE stream; `headers` may carry Last-Event-ID.
async fn open_sse(hub: Node, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let token = hub.token(ClientType::Browser, "ops");
    let auth = format!("Bearer {token}");
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    RawResponse::get(hub.addr, path, &all).await
}

/// A parsed SSE frame.
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Value,
}

async fn next_sse(stream: &mut RawResponse) -> Frame {
    let text = stream.next_event_frame().await;
    let mut frame = Frame {
        id: None,
        event: None,
        data: Value::Null,
    };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            frame.id = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("event: ") {
            frame.event = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            frame.data = serde_json::from_str(v).expect("json data");
        }
    }
    frame
}

fn cursor(id: &str) -> SseCursor {
    SseCursor::decode(id)
        .expect("a valid cursor")
        .expect("a cursor")
}

async fn sse_resume_with_last_event_id_replays_the_missed_events_first(engine: Engine) {
    let hubs = Hubs::nodes(engine, 2, with_history).await;
    let hub = hubs.node(0);
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    let mut stream = open_sse(hub, "/api/stream?channels=session:sse,plain:*", &[]).await;
    assert_eq!(stream.status, 200);
    let connected = next_sse(&mut stream).await;
    assert_eq!(connected.data["type"], "connected");
    let start = cursor(connected.id.as_deref().expect("a cursor from the start"));
    assert_eq!(start.get("session:sse").map(|p| p.offset), Some(0));
    for n in 0..3 {
        publisher.publish_ok("session:sse", json!({"n": n})).await;
    }
    let mut last_id = String::new();
    for n in 0..3u64 {
        let frame = next_sse(&mut stream).await;
        assert_eq!(frame.data["channel"], "session:sse");
        assert_eq!(frame.data["data"]["n"], n);
        last_id = frame.id.expect("id");
        assert_eq!(
            cursor(&last_id).get("session:sse").map(|p| p.offset),
            Some(n + 1)
        );
    }
    drop(stream);
    for n in 3..13 {
        publisher.publish_ok("session:sse", json!({"n": n})).await;
    }

    // Back (on Redis, on the other node) with the last id seen.
    let mut stream = open_sse(
        hubs.node(1),
        "/api/stream?channels=session:sse,plain:*",
        &[("Last-Event-ID", &last_id)],
    )
    .await;
    assert_eq!(stream.status, 200);
    let connected = next_sse(&mut stream).await;
    assert_eq!(connected.data["type"], "connected");
    assert_eq!(connected.id.as_deref(), Some(last_id.as_str()));
    for n in 3..13u64 {
        let frame = next_sse(&mut stream).await;
        assert!(frame.event.is_none());
        assert_eq!(frame.data["data"]["n"], n, "missed events in order");
        let id = frame.id.expect("id");
        assert_eq!(
            cursor(&id).get("session:sse").map(|p| p.offset),
            Some(n + 1)
        );
    }
    publisher.publish_ok("session:sse", json!({"n": 13})).await;
    // A channel without history keeps the cursor as the id.
    publisher.publish_ok("plain:1", json!("plain")).await;
    let frame = next_sse(&mut stream).await;
    assert_eq!(frame.data["data"]["n"], 13, "then live");
    let live_id = frame.id.expect("id");
    let frame = next_sse(&mut stream).await;
    assert_eq!(frame.data["channel"], "plain:1");
    assert_eq!(frame.id.as_deref(), Some(live_id.as_str()));

    // ?lastEventId= works the same (EventSource cannot set headers on the
    // first request).
    let query = format!("/api/stream?channels=session:sse&lastEventId={last_id}");
    let mut stream = open_sse(hub, &query, &[]).await;
    next_sse(&mut stream).await;
    for n in 3..14u64 {
        assert_eq!(next_sse(&mut stream).await.data["data"]["n"], n);
    }
}
on_both_engines!(sse_resume_with_last_event_id_replays_the_missed_events_first);

async fn sse_impossible_resume_sends_recovery_failed(engine: Engine) {
    let hubs = Hubs::start(engine, with_history).await;
    let hub = hubs.node(0);
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    for n in 0..10 {
        publisher.publish_ok("small:sse", json!(n)).await;
    }
    let epoch = epoch(&mut publisher, "small:sse").await;
    let mut old = SseCursor::new();
    // Out of the 5-event window, and an unknown epoch.
    old.set(
        "small:sse",
        StreamPosition {
            offset: 1,
            epoch: epoch.as_str().expect("an epoch").to_string(),
        },
    );
    old.set(
        "session:gone",
        StreamPosition {
            offset: 3,
            epoch: "from-a-previous-run".into(),
        },
    );
    let id = old.encode();
    let mut stream = open_sse(
        hub,
        "/api/stream?channels=small:sse,session:gone",
        &[("Last-Event-ID", &id)],
    )
    .await;
    assert_eq!(stream.status, 200);
    let connected = next_sse(&mut stream).await;
    assert_eq!(connected.data["type"], "connected");
    let failed = next_sse(&mut stream).await;
    assert_eq!(failed.event.as_deref(), Some("recovery:failed"));
    assert_eq!(failed.data["type"], "recovery:failed");
    assert_eq!(
        failed.data["data"]["channels"],
        json!(["session:gone", "small:sse"])
    );
    // Its id moves the failed channels to where live delivery starts.
    let now = cursor(failed.id.as_deref().expect("id"));
    assert_eq!(now.get("small:sse").map(|p| p.offset), Some(10));
    assert_eq!(now.get("session:gone").map(|p| p.offset), Some(0));
    // Nothing replayed: the next frame is live.
    publisher.publish_ok("small:sse", json!("live")).await;
    let frame = next_sse(&mut stream).await;
    assert_eq!(frame.data["data"], "live");

    // A cursor that cannot be read is refused.
    let stream = open_sse(
        hub,
        "/api/stream?channels=small:sse",
        &[("Last-Event-ID", "r1.%%%")],
    )
    .await;
    assert_eq!(stream.status, 400);
}
on_both_engines!(sse_impossible_resume_sends_recovery_failed);

async fn no_namespaces_means_no_offsets_and_plain_sse_ids(engine: Engine) {
    let hubs = Hubs::start(engine, |_| {}).await;
    let hub = hubs.node(0);
    let (mut publisher, _) = hub.connect(ClientType::Hub, "backend").await;
    let (mut ui, _) = hub.connect(ClientType::Browser, "ui").await;
    let reply = ui.subscribe(&["session:1"]).await;
    assert!(reply.get("positions").is_none(), "{reply}");
    let ack = publisher.publish("session:1", json!(1)).await;
    let event = next_event(&mut ui).await;
    assert!(event.get("offset").is_none() && event.get("epoch").is_none());
    let mut stream = open_sse(hub, "/api/stream?channels=session:1", &[]).await;
    let connected = next_sse(&mut stream).await;
    assert!(connected.id.is_none());
    let ack2 = publisher.publish("session:1", json!(2)).await;
    let frame = next_sse(&mut stream).await;
    assert_eq!(frame.id.as_deref(), ack2["eventId"].as_str());
    assert_ne!(ack["eventId"], ack2["eventId"]);
}
on_both_engines!(no_namespaces_means_no_offsets_and_plain_sse_ids);
