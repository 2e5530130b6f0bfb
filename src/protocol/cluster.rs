//! Messages between the nodes of one cluster (`engine = "redis"`), on each
//! node's own Redis channel (`<prefix>node:<id>`). Not part of the client
//! protocol: nodes of one cluster run the same version. Typed here so both
//! ends share one definition.

use serde::{Deserialize, Serialize};

use super::calls::{CallOutcome, CallerInfo, Payload};

/// What one node asks another to do for one of its connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Run a call on one of the receiving node's servers and answer the
    /// sending node with `callAnswer`.
    #[serde(rename_all = "camelCase")]
    CallRequest {
        /// The sending node (the caller's).
        from: u64,
        /// The call's id on the sending node.
        call_id: String,
        /// The method called.
        method: String,
        /// The caller's params.
        params: Payload,
        /// Who called.
        caller: CallerInfo,
        /// ms since the Unix epoch.
        deadline: u64,
    },
    /// The caller of `call_id` (a call the sending node relayed) is gone.
    #[serde(rename_all = "camelCase")]
    CallCancel {
        /// The sending node (the caller's).
        from: u64,
        /// The call's id on the sending node.
        call_id: String,
    },
    /// How the receiving node's call `call_id` ended on the sending node.
    #[serde(rename_all = "camelCase")]
    CallAnswer {
        /// The sending node (the server's).
        from: u64,
        /// The call's id on the receiving node.
        call_id: String,
        /// The outcome.
        outcome: CallOutcome,
    },
    /// The sending node's servers changed: read them again.
    #[serde(rename_all = "camelCase")]
    CallServersChanged {
        /// The sending node.
        from: u64,
    },
}

impl NodeMessage {
    /// The bytes published on the node channel.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Serializing strings, integers and JSON values cannot fail.
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
            NodeMessage::CallRequest {
                from: 9,
                call_id: "c1f".into(),
                method: "node.execute".into(),
                params: serde_json::json!({"cmd": "ls"}).into(),
                caller: CallerInfo {
                    client_id: "5".into(),
                    sub: "ui-1".into(),
                    client_type: crate::auth::ClientType::Browser,
                },
                deadline: 1_796_460_000_000,
            },
            NodeMessage::CallAnswer {
                from: 3,
                call_id: "c1f".into(),
                outcome: CallOutcome::Error {
                    code: crate::error::ErrorCode::ServerGone,
                    message: "gone".into(),
                },
            },
        ];
        for msg in messages {
            assert_eq!(NodeMessage::from_bytes(&msg.to_bytes()).unwrap(), msg);
        }
        assert!(NodeMessage::from_bytes(b"d|7|{}").is_err());
        assert!(NodeMessage::from_bytes(br#"{"type":"direct","conn":1}"#).is_err());
    }
}
