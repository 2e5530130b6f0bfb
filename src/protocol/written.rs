//! The JSON of the two frames every call sends, `call:request` and
//! `result`, written directly: serde would take their fifteen names and
//! strings through the escaper one by one. The tests check the text
//! against what serde writes for the same [`ServerMessage`](super::ServerMessage).

use std::fmt::Write;

use super::RequestId;
use super::calls::{CallerInfo, Payload};

/// The JSON of `call:request`, as [`super::ServerMessage::CallRequest`]
/// serializes.
pub(crate) fn call_request_json(
    call_id: &str,
    method: &str,
    params: &Payload,
    caller: &CallerInfo,
    deadline: u64,
) -> String {
    let mut out = String::with_capacity(160 + params.get().len() + caller.sub.len());
    out.push_str(r#"{"type":"call:request","callId":"#);
    push_json_str(&mut out, call_id);
    out.push_str(r#","method":"#);
    push_json_str(&mut out, method);
    out.push_str(r#","params":"#);
    out.push_str(params.get());
    out.push_str(r#","caller":{"clientId":"#);
    push_json_str(&mut out, &caller.client_id);
    out.push_str(r#","sub":"#);
    push_json_str(&mut out, &caller.sub);
    out.push_str(r#","clientType":"#);
    push_json_str(&mut out, caller.client_type.as_str());
    out.push_str(r#"},"deadline":"#);
    // Writing to a String cannot fail.
    let _ = write!(out, "{deadline}");
    out.push('}');
    out
}

/// The JSON of `result`, as [`super::ServerMessage::Result`] serializes.
pub(crate) fn result_json(id: &RequestId, result: &Payload) -> String {
    let mut out = String::with_capacity(40 + result.get().len());
    out.push_str(r#"{"type":"result","id":"#);
    match id {
        RequestId::Int(n) => {
            let _ = write!(out, "{n}");
        }
        RequestId::Str(s) => push_json_str(&mut out, s),
    }
    out.push_str(r#","result":"#);
    out.push_str(result.get());
    out.push('}');
    out
}

/// `s` as a JSON string: as is between quotes when nothing in it needs
/// escaping (the usual case), else escaped by serde_json.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::auth::ClientType;
    use crate::protocol::ServerMessage;

    fn caller(client_id: &str, sub: &str) -> CallerInfo {
        CallerInfo {
            client_id: client_id.into(),
            sub: sub.into(),
            client_type: ClientType::Browser,
        }
    }

    #[test]
    fn the_written_call_frames_are_what_serde_writes() {
        let subs = [
            "ui-1",
            "quote\" and \\ back",
            "tab\tnew\nline \u{1}",
            "é ü 漢 🙂",
        ];
        let params = [
            r#"{"a":[1,2.5,"x"]}"#,
            "null",
            r#""s""#,
            "123456789012345678901234567890",
        ];
        for (sub, params) in subs.iter().zip(params) {
            let params: Payload = serde_json::from_str::<Box<RawValue>>(params)
                .unwrap()
                .into();
            let info = caller("42", sub);
            let expected = ServerMessage::CallRequest {
                call_id: "c1f".into(),
                method: "node.execute:x".into(),
                params: params.clone(),
                caller: info.clone(),
                deadline: 1_796_460_000_000,
            }
            .to_json();
            let written =
                call_request_json("c1f", "node.execute:x", &params, &info, 1_796_460_000_000);
            assert_eq!(written, expected);
            for id in [RequestId::Int(-7), RequestId::Str((*sub).into())] {
                let expected = ServerMessage::Result {
                    id: id.clone(),
                    result: params.clone(),
                }
                .to_json();
                assert_eq!(result_json(&id, &params), expected);
            }
        }
    }
}
