//! A published event and its encodings. An event is serialized once per
//! transport and the same bytes go to every subscriber: fan-out clones an
//! `Arc<Event>`, and each session clones a refcounted buffer out of it.
//!
//! An event on a channel with history also carries its [`Position`] (offset
//! and epoch), written into the WebSocket frame once like everything else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::now_ms;
use crate::channels::ChannelName;

/// Where an event sits in its channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The event's offset: 1 for the first event of the epoch, then +1 each.
    pub offset: u64,
    /// The channel's epoch, shared by every event of that epoch.
    pub epoch: Arc<str>,
}

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
    /// Offset and epoch, on channels with history; `None` elsewhere.
    pub position: Option<Position>,
    /// When the event was built (its publish), for the publish-to-write
    /// latency metric; monotonic, unlike `ts`.
    pub published_at: std::time::Instant,
    /// The WebSocket `event` frame, built eagerly on the publisher's task
    /// because nearly every event goes to a WebSocket subscriber.
    ws_frame: Utf8Bytes,
    /// The SSE frame, built by the first SSE subscriber that needs it.
    sse_frame: OnceLock<SseFrame>,
}

/// The SSE frame and where its `data:` line starts, so streams that write
/// their own `id:` line (a resume cursor) share the rest of the bytes.
#[derive(Debug)]
struct SseFrame {
    /// `id: <id>\ndata: {...}\n\n`.
    bytes: Bytes,
    /// Length of the `id:` line.
    data_at: usize,
}

#[derive(Serialize)]
struct WsEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    data: &'a Value,
    id: &'a str,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
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
        Event::build(channel, data, id, ts, None)
    }

    /// Builds an event of a history channel: its frame carries `offset`
    /// and `epoch`.
    pub fn with_position(
        channel: ChannelName,
        data: Value,
        id: String,
        ts: u64,
        position: Position,
    ) -> Event {
        Event::build(channel, data, id, ts, Some(position))
    }

    /// An event rebuilt from its WebSocket frame (an event another node
    /// published): the frame's bytes are kept, not serialized again.
    pub fn from_frame(
        channel: ChannelName,
        data: Value,
        id: String,
        ts: u64,
        position: Option<Position>,
        ws_frame: Utf8Bytes,
    ) -> Event {
        Event {
            channel,
            data,
            id,
            ts,
            position,
            published_at: std::time::Instant::now(),
            ws_frame,
            sse_frame: OnceLock::new(),
        }
    }

    fn build(
        channel: ChannelName,
        data: Value,
        id: String,
        ts: u64,
        position: Option<Position>,
    ) -> Event {
        let frame = serde_json::to_string(&WsEvent {
            kind: "event",
            channel: channel.as_str(),
            data: &data,
            id: &id,
            ts,
            offset: position.as_ref().map(|p| p.offset),
            epoch: position.as_ref().map(|p| &*p.epoch),
        })
        .unwrap_or_default();
        Event {
            channel,
            data,
            id,
            ts,
            position,
            published_at: std::time::Instant::now(),
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
        self.sse().bytes.clone()
    }

    /// The SSE frame without its `id:` line (`data: {...}\n\n`), for
    /// streams that write a resume cursor as the id: a slice of the same
    /// shared buffer, not a copy.
    pub fn sse_data(&self) -> Bytes {
        let frame = self.sse();
        frame.bytes.slice(frame.data_at..)
    }

    fn sse(&self) -> &SseFrame {
        self.sse_frame.get_or_init(|| {
            let body = serde_json::to_string(&SseEvent {
                kind: self.channel.as_str(),
                channel: self.channel.as_str(),
                data: &self.data,
                timestamp: self.ts,
            })
            .unwrap_or_default();
            let id_line = format!("id: {}\n", self.id);
            SseFrame {
                data_at: id_line.len(),
                bytes: Bytes::from(format!("{id_line}data: {body}\n\n")),
            }
        })
    }
}

/// Hands out event ids: a per-process prefix (the boot time in base 36) and a
/// counter, so ids stay unique across restarts without any storage.
#[derive(Debug)]
pub(crate) struct EventIds {
    /// Distinguishes this process's ids from an earlier run's.
    prefix: String,
    /// Next sequence number.
    next: AtomicU64,
}

impl EventIds {
    /// A generator with a fresh prefix.
    pub(crate) fn new() -> Self {
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
    pub(crate) fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

impl Default for EventIds {
    fn default() -> Self {
        Self::new()
    }
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
                ts: 1700,
                offset: None,
                epoch: None,
            }
        );
    }

    #[test]
    fn history_event_frame_carries_offset_and_epoch() {
        let channel = ChannelName::parse("session:42", &NameLimits::default()).expect("valid");
        let position = Position {
            offset: 7,
            epoch: "ab12".into(),
        };
        let event = Event::with_position(channel, serde_json::json!(1), "k-2".into(), 5, position);
        assert_eq!(
            event.ws_frame().as_str(),
            r#"{"type":"event","channel":"session:42","data":1,"id":"k-2","ts":5,"offset":7,"epoch":"ab12"}"#
        );
        let data = event.sse_data();
        assert!(event.sse_frame().ends_with(&data));
        assert!(data.starts_with(b"data: {"), "{data:?}");
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
