//! Messages between the nodes of one cluster (`engine = "redis"`), on each
//! node's own Redis channel (`<prefix>node:<id>`). Not part of the client
//! protocol: nodes of one cluster run the same version. Typed here so both
//! ends share one definition.

use serde::{Deserialize, Serialize};

/// What one node asks another to do for one of its connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub(crate) enum NodeMessage {
    /// Write `frame` (a serialized server message, e.g. `task:result`) to
    /// connection `conn` of the receiving node.
    #[serde(rename_all = "camelCase")]
    Direct {
        /// The receiving node's connection id.
        conn: u64,
        /// The frame, already serialized.
        frame: String,
    },
    /// Tell worker `worker` of the receiving node that it lost `task_id`
    /// (`task:cancel` with `reason`), and free its slot.
    #[serde(rename_all = "camelCase")]
    Cancel {
        /// The receiving node's worker connection id.
        worker: u64,
        /// The task it held.
        task_id: String,
        /// Why: `cancelled`, `lease_expired`, ...
        reason: String,
    },
}

impl NodeMessage {
    /// The bytes published on the node channel.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Serializing a plain enum of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a node channel payload.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<NodeMessage, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_messages_round_trip_and_junk_is_refused() {
        let messages = [
            NodeMessage::Direct {
                conn: 7,
                frame: r#"{"type":"task:result","task":{"id":"a|b"}}"#.into(),
            },
            NodeMessage::Cancel {
                worker: 3,
                task_id: "9f1c".into(),
                reason: "lease_expired".into(),
            },
        ];
        for msg in messages {
            assert_eq!(NodeMessage::from_bytes(&msg.to_bytes()).unwrap(), msg);
        }
        assert!(NodeMessage::from_bytes(b"d|7|{}").is_err());
        assert!(NodeMessage::from_bytes(br#"{"type":"direct","conn":1}"#).is_err());
    }
}
