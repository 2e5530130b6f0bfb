//! Wire types of history, recovery and presence (`proto-docs/history.md`),
//! and the SSE resume cursor: the `id:` of an SSE frame on a stream that
//! carries history channels.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::ClientType;

/// A place in one channel's history: the offset of the last event seen and
/// the epoch that offset belongs to. Offsets count from 1; offset 0 means
/// "before the first event".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamPosition {
    /// The offset of the last event seen (0: none yet).
    pub offset: u64,
    /// The channel's epoch; offsets of different epochs are unrelated.
    pub epoch: String,
}

/// One event of a `history` reply. The channel and epoch are the reply's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryEvent {
    /// The published value.
    pub data: Value,
    /// The event id, as in `event.id`.
    pub id: String,
    /// Publish time, ms since the Unix epoch.
    pub ts: u64,
    /// The event's offset in its channel.
    pub offset: u64,
}

/// One connection subscribed to a presence channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceInfo {
    /// The connection's id (`clientId` of `auth:success`); a client on two
    /// connections appears twice.
    pub client_id: String,
    /// The token's subject.
    pub sub: String,
    /// The token's client type.
    pub client_type: ClientType,
    /// When the connection authenticated, ms since the Unix epoch.
    pub connected_at: u64,
}

/// `GET /api/presence?channel=...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceResponse {
    /// The channel asked about.
    pub channel: String,
    /// Its subscribers, one entry per connection, oldest connection first.
    pub clients: Vec<PresenceInfo>,
}

/// `GET /api/presence/stats?channel=...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceStatsResponse {
    /// The channel asked about.
    pub channel: String,
    /// Connections subscribed.
    pub clients: usize,
    /// Distinct `sub`s among them.
    pub users: usize,
}

/// The SSE resume cursor: for each history channel of a stream, the
/// position of the last event the stream delivered. It is sent as the `id:`
/// of SSE frames, so `EventSource` hands it back as `Last-Event-ID` on a
/// reconnect.
///
/// Text form: `r1.` then the unpadded URL-safe base64 of the payload
/// `[+]channel=epoch.offset,channel=epoch.offset,...` (UTF-8). A leading `+`
/// marks a cursor that had to drop channels to stay within its bounds.
/// Entries are kept least recently updated first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseCursor {
    /// (channel, position), least recently updated first; channels unique.
    entries: Vec<(String, StreamPosition)>,
    /// Channels were dropped to keep the cursor within its bounds.
    incomplete: bool,
}

/// Why a `Last-Event-ID` that looks like a cursor could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Last-Event-ID is not a valid resume cursor: {0}")]
pub struct CursorError(&'static str);

impl SseCursor {
    /// The prefix of every cursor, and its format version.
    pub const PREFIX: &'static str = "r1.";
    /// Most channels a cursor holds; the least recently updated go first.
    pub const MAX_CHANNELS: usize = 32;
    /// Most payload bytes (before base64), so an `id:` line stays small.
    pub const MAX_PAYLOAD: usize = 2048;
    /// Longest cursor text accepted back from a client.
    pub const MAX_TEXT: usize = Self::PREFIX.len() + Self::MAX_PAYLOAD.div_ceil(3) * 4;

    /// An empty cursor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the cursor has no channels and never dropped one.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && !self.incomplete
    }

    /// Whether channels were dropped to respect the bounds.
    pub fn is_incomplete(&self) -> bool {
        self.incomplete
    }

    /// Marks the cursor as having dropped channels.
    pub fn set_incomplete(&mut self) {
        self.incomplete = true;
    }

    /// Clears the incomplete mark (once it has been reported).
    pub fn clear_incomplete(&mut self) {
        self.incomplete = false;
    }

    /// The entries, least recently updated first.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &StreamPosition)> {
        self.entries.iter().map(|(c, p)| (c.as_str(), p))
    }

    /// The position held for `channel`.
    pub fn get(&self, channel: &str) -> Option<&StreamPosition> {
        self.entries
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, p)| p)
    }

    /// Sets `channel`'s position and makes it the most recently updated,
    /// dropping the least recently updated channels beyond the bounds.
    pub fn set(&mut self, channel: &str, position: StreamPosition) {
        if let Some(i) = self.entries.iter().position(|(c, _)| c == channel) {
            let (name, _) = self.entries.remove(i);
            self.entries.push((name, position));
        } else {
            self.entries.push((channel.to_string(), position));
        }
        while self.entries.len() > 1
            && (self.entries.len() > Self::MAX_CHANNELS || self.payload_len() > Self::MAX_PAYLOAD)
        {
            self.entries.remove(0);
            self.incomplete = true;
        }
    }

    /// Forgets `channel`.
    pub fn remove(&mut self, channel: &str) {
        self.entries.retain(|(c, _)| c != channel);
    }

    fn payload_len(&self) -> usize {
        // Per entry: `=`, `.`, up to 20 offset digits and one separator (a
        // `,`, or the `+` / `,` that `encode` may put first).
        let entries: usize = self
            .entries
            .iter()
            .map(|(c, p)| c.len() + p.epoch.len() + 23)
            .sum();
        entries + usize::from(self.incomplete)
    }

    /// The text form, `r1.<base64>`.
    pub fn encode(&self) -> String {
        let mut payload = String::with_capacity(self.payload_len());
        if self.incomplete {
            payload.push('+');
        } else if self
            .entries
            .first()
            .is_some_and(|(c, _)| c.starts_with('+'))
        {
            // `+` may start a channel name: an empty first entry, which
            // `decode` skips, keeps it from reading as the incomplete mark.
            payload.push(',');
        }
        for (i, (channel, pos)) in self.entries.iter().enumerate() {
            if i > 0 {
                payload.push(',');
            }
            payload.push_str(channel);
            payload.push('=');
            payload.push_str(&pos.epoch);
            payload.push('.');
            payload.push_str(&pos.offset.to_string());
        }
        format!("{}{}", Self::PREFIX, URL_SAFE_NO_PAD.encode(payload))
    }

    /// Reads a `Last-Event-ID`. `Ok(None)` when it is not a cursor at all
    /// (e.g. the plain event id of a stream without history channels).
    /// Channel names are checked by the caller.
    pub fn decode(text: &str) -> Result<Option<SseCursor>, CursorError> {
        let Some(encoded) = text.strip_prefix(Self::PREFIX) else {
            return Ok(None);
        };
        if text.len() > Self::MAX_TEXT {
            return Err(CursorError("too long"));
        }
        let payload = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| CursorError("not base64url"))?;
        let payload = String::from_utf8(payload).map_err(|_| CursorError("not UTF-8"))?;
        let (incomplete, list) = match payload.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, payload.as_str()),
        };
        let mut cursor = SseCursor {
            entries: Vec::new(),
            incomplete,
        };
        for entry in list.split(',').filter(|e| !e.is_empty()) {
            // The channel may contain `=` and `.`; the epoch and offset do
            // not, so split from the right.
            let (channel, position) = entry
                .rsplit_once('=')
                .ok_or(CursorError("an entry lacks `=`"))?;
            let (epoch, offset) = position
                .split_once('.')
                .ok_or(CursorError("an entry lacks `epoch.offset`"))?;
            let offset = offset
                .parse()
                .map_err(|_| CursorError("an offset is not a number"))?;
            if channel.is_empty() || epoch.is_empty() {
                return Err(CursorError("an entry has an empty channel or epoch"));
            }
            if cursor.entries.len() >= Self::MAX_CHANNELS || cursor.get(channel).is_some() {
                return Err(CursorError("too many or repeated channels"));
            }
            cursor.entries.push((
                channel.to_string(),
                StreamPosition {
                    offset,
                    epoch: epoch.to_string(),
                },
            ));
        }
        Ok(Some(cursor))
    }

    /// The entries as a map, for recovery.
    pub fn to_map(&self) -> BTreeMap<String, StreamPosition> {
        self.entries.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn cursor_round_trips() {
        let mut cursor = SseCursor::new();
        cursor.set("session:42", pos(10, "ab12cd34"));
        cursor.set("odd=name.x:1", pos(0, "ff"));
        let text = cursor.encode();
        assert!(text.starts_with("r1."), "{text}");
        assert!(
            text.bytes()
                .skip(3)
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{text}"
        );
        assert_eq!(SseCursor::decode(&text), Ok(Some(cursor.clone())));
        assert_eq!(cursor.get("odd=name.x:1"), Some(&pos(0, "ff")));
    }

    #[test]
    fn plain_ids_are_not_cursors_and_garbage_is_an_error() {
        assert_eq!(SseCursor::decode("mwpnqzuo-4"), Ok(None));
        assert!(SseCursor::decode("r1.!!!").is_err());
        let bad = format!("r1.{}", URL_SAFE_NO_PAD.encode("a:b=ep"));
        assert!(SseCursor::decode(&bad).is_err());
        let bad = format!("r1.{}", URL_SAFE_NO_PAD.encode("a=ep.x"));
        assert!(SseCursor::decode(&bad).is_err());
        let repeated = format!("r1.{}", URL_SAFE_NO_PAD.encode("a=e.1,a=e.2"));
        assert!(SseCursor::decode(&repeated).is_err());
        let long = format!("r1.{}", "A".repeat(SseCursor::MAX_TEXT));
        assert!(SseCursor::decode(&long).is_err());
    }

    #[test]
    fn cursor_is_bounded_and_says_so() {
        let mut cursor = SseCursor::new();
        for i in 0..SseCursor::MAX_CHANNELS + 5 {
            cursor.set(&format!("room:{i}"), pos(i as u64, "e"));
        }
        assert_eq!(cursor.entries().count(), SseCursor::MAX_CHANNELS);
        assert!(cursor.is_incomplete());
        // The most recently updated survive.
        assert!(cursor.get("room:0").is_none());
        assert!(
            cursor
                .get(&format!("room:{}", SseCursor::MAX_CHANNELS + 4))
                .is_some()
        );
        let decoded = SseCursor::decode(&cursor.encode())
            .expect("valid")
            .expect("a cursor");
        assert!(decoded.is_incomplete());
        // Long names hit the byte bound first.
        let mut cursor = SseCursor::new();
        for i in 0..20 {
            cursor.set(&format!("{}:{i}", "x".repeat(200)), pos(1, "e"));
        }
        assert!(cursor.encode().len() <= SseCursor::MAX_TEXT);
        assert!(cursor.is_incomplete());
    }

    #[test]
    fn a_channel_starting_with_plus_is_not_the_incomplete_mark() {
        // Found by the `last_event_id` fuzz target: `+x` came back as `x`
        // on an incomplete cursor.
        let mut cursor = SseCursor::new();
        cursor.set("+x", pos(3, "e"));
        cursor.set("a", pos(1, "e"));
        assert_eq!(
            SseCursor::decode(&cursor.encode()),
            Ok(Some(cursor.clone()))
        );
        cursor.set_incomplete();
        assert_eq!(SseCursor::decode(&cursor.encode()), Ok(Some(cursor)));
    }

    #[test]
    fn a_full_cursor_with_huge_offsets_is_read_back() {
        // Found by the `last_event_id` fuzz target: the bound did not count
        // the commas, so a cursor could encode longer than `decode` accepts.
        let mut cursor = SseCursor::new();
        for i in 0..SseCursor::MAX_CHANNELS {
            cursor.set(&format!("c{i:0>37}"), pos(u64::MAX, "0123"));
        }
        let text = cursor.encode();
        assert!(text.len() <= SseCursor::MAX_TEXT, "{}", text.len());
        assert_eq!(SseCursor::decode(&text), Ok(Some(cursor)));
    }

    #[test]
    fn set_moves_a_channel_to_the_end() {
        let mut cursor = SseCursor::new();
        cursor.set("a", pos(1, "e"));
        cursor.set("b", pos(1, "e"));
        cursor.set("a", pos(2, "e"));
        let order: Vec<&str> = cursor.entries().map(|(c, _)| c).collect();
        assert_eq!(order, ["b", "a"]);
        assert_eq!(cursor.get("a"), Some(&pos(2, "e")));
    }
}
