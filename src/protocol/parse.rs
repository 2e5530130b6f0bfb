//! Reading a client's frame. Most messages go through the generic parse
//! of [`ClientMessage`]; the two frames every call carries (`call` and
//! `call:reply`) take a direct path when their `type` comes first, as
//! every client library writes it: serde's internally tagged enums buffer
//! each field before they know the variant, and cannot keep a
//! [`Payload`] as the text it was sent as. A frame the direct path does not
//! take whole (another shape, a bad field) goes the generic way, so both
//! paths accept the same frames and report the same errors.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::calls::{CallError, Payload};
use super::{ClientMessage, RequestId};

/// A client's frame, parsed.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, serde_json::Error> {
    let direct = if text.starts_with(r#"{"type":"call","#) {
        serde_json::from_str::<CallFrame>(text).ok().map(Into::into)
    } else if text.starts_with(r#"{"type":"call:reply","#) {
        serde_json::from_str::<ReplyFrame>(text)
            .ok()
            .map(Into::into)
    } else {
        None
    };
    match direct {
        Some(msg) => Ok(msg),
        None => serde_json::from_str(text),
    }
}

/// `call`, as [`ClientMessage::Call`] reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallFrame {
    /// Already known from the prefix; named so a second `type` is refused.
    #[serde(rename = "type")]
    _type: IgnoredAny,
    id: RequestId,
    method: String,
    #[serde(default)]
    params: Option<Box<RawValue>>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

impl From<CallFrame> for ClientMessage {
    fn from(frame: CallFrame) -> ClientMessage {
        ClientMessage::Call {
            id: frame.id,
            method: frame.method,
            params: frame.params.map(Payload::from),
            timeout_ms: frame.timeout_ms,
        }
    }
}

/// `call:reply`, as [`ClientMessage::CallReply`] reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReplyFrame {
    #[serde(rename = "type")]
    _type: IgnoredAny,
    call_id: String,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<CallError>,
}

impl From<ReplyFrame> for ClientMessage {
    fn from(frame: ReplyFrame) -> ClientMessage {
        ClientMessage::CallReply {
            call_id: frame.call_id,
            result: frame.result.map(Payload::from),
            error: frame.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the generic path makes of `text`.
    fn generic(text: &str) -> Result<ClientMessage, String> {
        serde_json::from_str::<ClientMessage>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_direct_path_reads_call_frames_as_the_generic_one_does() {
        let frames = [
            r#"{"type":"call","id":7,"method":"node.execute","params":{"a":[1,2,{"b":"\u00e9\n"}]},"timeoutMs":500}"#,
            r#"{"type":"call","id":"x","method":"m"}"#,
            r#"{"type":"call","id":1,"method":"m","params":null}"#,
            r#"{"type":"call","id":1,"method":"m","params":"s","extra":true}"#,
            r#"{"type":"call","method":"m","id":-3,"params":  [ 1 , 2 ] }"#,
            r#"{"type":"call:reply","callId":"c1","result":{"ok":1.5}}"#,
            r#"{"type":"call:reply","callId":"c1"}"#,
            r#"{"type":"call:reply","callId":"c1","result":null}"#,
            r#"{"type":"call:reply","callId":"c1","result":1,"error":{"code":"x","message":"y","data":[1]}}"#,
        ];
        for text in frames {
            let direct = parse_client_message(text).map_err(|e| e.to_string());
            assert_eq!(direct, generic(text), "{text}");
            assert!(direct.is_ok(), "{text}");
        }
    }

    #[test]
    fn bad_call_frames_get_the_generic_error() {
        let frames = [
            r#"{"type":"call","method":"m"}"#,
            r#"{"type":"call","id":1}"#,
            r#"{"type":"call","id":1,"method":"m","type":"publish"}"#,
            r#"{"type":"call","id":1,"method":"m","params":{"a":}"#,
            r#"{"type":"call","id":1,"method":"m","timeoutMs":-1}"#,
            r#"{"type":"call","id":1,"method":"m","id":2}"#,
            r#"{"type":"call:reply","result":1}"#,
            r#"{"type":"call:reply","callId":"c","error":{"code":"x"}}"#,
        ];
        for text in frames {
            let direct = parse_client_message(text).map_err(|e| e.to_string());
            assert!(direct.is_err(), "{text}");
            assert_eq!(direct, generic(text), "{text}");
        }
    }

    #[test]
    fn params_and_results_keep_the_text_they_were_sent_as() {
        let text = r#"{"type":"call","id":1,"method":"m","params":{"big":123456789012345678901234567890,"s":"a\"b"}}"#;
        let ClientMessage::Call { params, .. } = parse_client_message(text).unwrap() else {
            panic!("not a call");
        };
        assert_eq!(
            params.unwrap().get(),
            r#"{"big":123456789012345678901234567890,"s":"a\"b"}"#
        );
    }
}
