//! A published event and its encodings. An event is serialized once per
//! transport and the same bytes go to every subscriber: fan-out clones an
//! `Arc<Event>`, and each session clones a refcounted buffer out of it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::channels::ChannelName;

/// An event on its way to subscribers.
#[derive(Debug)]
pub struct Event {
    /// The concrete channel it was published to.
    pub channel: ChannelName,
    /// The published value.
    pub data: Value,
    /// Hub-unique id; also the SSE `id:`.
    pub id: String,
    /// Publish time in ms since the Unix epoch.
    pub ts: u64,
    /// The WebSocket `event` frame, built eagerly on the publisher's task
    /// because nearly every event goes to a WebSocket subscriber.
    ws_frame: Utf8Bytes,
    /// The SSE frame, built by the first SSE subscriber that needs it.
    sse_frame: OnceLock<Bytes>,
}

#[derive(Serialize)]
struct WsEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    data: &'a Value,
    id: &'a str,
    ts: u64,
}

#[derive(Serialize)]
struct SseEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    channel: &'a str,
    data: &'a Value,
    timestamp: u64,
}

impl Event {
    /// Builds an event and its WebSocket frame.
    pub fn new(channel: ChannelName, data: Value, id: String, ts: u64) -> Event {
        let frame = serde_json::to_string(&WsEvent {
            kind: "event",
            channel: channel.as_str(),
            data: &data,
            id: &id,
            ts,
        })
        .unwrap_or_default();
        Event {
            channel,
            data,
            id,
            ts,
            ws_frame: Utf8Bytes::from(frame),
            sse_frame: OnceLock::new(),
        }
    }

    /// The WebSocket text frame (a refcount, not a copy).
    pub fn ws_frame(&self) -> Utf8Bytes {
        self.ws_frame.clone()
    }

    /// The SSE frame: `id: <id>\ndata: {"type":<channel>,...}\n\n`.
    pub fn sse_frame(&self) -> Bytes {
        self.sse_frame
            .get_or_init(|| {
                let body = serde_json::to_string(&SseEvent {
                    kind: self.channel.as_str(),
                    channel: self.channel.as_str(),
                    data: &self.data,
                    timestamp: self.ts,
                })
                .unwrap_or_default();
                Bytes::from(format!("id: {}\ndata: {}\n\n", self.id, body))
            })
            .clone()
    }
}

/// Hands out event ids: a per-process prefix (the boot time in base 36) and a
/// counter, so ids stay unique across restarts without any storage.
#[derive(Debug)]
pub struct EventIds {
    /// Distinguishes this process's ids from an earlier run's.
    prefix: String,
    /// Next sequence number.
    next: AtomicU64,
}

impl EventIds {
    /// A generator with a fresh prefix.
    pub fn new() -> Self {
        let mut n = now_ms();
        let mut digits = Vec::new();
        while n > 0 {
            let d = (n % 36) as u8;
            digits.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
            n /= 36;
        }
        digits.reverse();
        EventIds {
            prefix: String::from_utf8(digits).unwrap_or_default(),
            next: AtomicU64::new(1),
        }
    }

    /// The next id.
    pub fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

impl Default for EventIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::NameLimits;

    fn event() -> Event {
        let channel = ChannelName::parse("session:42", &NameLimits::default()).expect("valid");
        Event::new(channel, serde_json::json!({"n": 1}), "k-1".into(), 1700)
    }

    #[test]
    fn ws_frame_is_an_event_message() {
        let frame = event().ws_frame();
        let parsed: crate::protocol::ServerMessage =
            serde_json::from_str(frame.as_str()).expect("parses");
        assert_eq!(
            parsed,
            crate::protocol::ServerMessage::Event {
                channel: "session:42".into(),
                data: serde_json::json!({"n": 1}),
                id: "k-1".into(),
                ts: 1700
            }
        );
    }

    #[test]
    fn sse_frame_has_id_and_data_lines() {
        let frame = event().sse_frame();
        let text = std::str::from_utf8(&frame).expect("utf8");
        assert_eq!(
            text,
            "id: k-1\ndata: {\"type\":\"session:42\",\"channel\":\"session:42\",\"data\":{\"n\":1},\"timestamp\":1700}\n\n"
        );
    }

    #[test]
    fn ids_are_unique() {
        let ids = EventIds::new();
        assert_ne!(ids.next_id(), ids.next_id());
    }
}
