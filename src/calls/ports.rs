//! The endpoints of this hub itself: a connection (as a server it gets
//! `call:request` / `call:cancelled`, as a caller `result` / `error`), and
//! an HTTP request waiting for its answer.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{CallRequest, CallerPort, ServerPort};
use crate::error::ErrorCode;
use crate::protocol::calls::CallOutcome;
use crate::protocol::written::{call_request_json, result_json};
use crate::protocol::{RequestId, ServerMessage};
use crate::router::manager::Subscriber;

/// A connection of this hub, reached through its queue.
pub(super) struct ConnPort(Arc<Subscriber>);

impl ConnPort {
    pub(super) fn new(subscriber: &Arc<Subscriber>) -> ConnPort {
        ConnPort(Arc::clone(subscriber))
    }

    fn send(&self, msg: &ServerMessage) {
        self.0.send_direct(Utf8Bytes::from(msg.to_json()));
    }
}

impl ServerPort for ConnPort {
    fn request(&self, call_id: &str, request: CallRequest) {
        let json = call_request_json(
            call_id,
            &request.method,
            &request.params,
            &request.caller,
            request.deadline,
        );
        self.0.send_direct(Utf8Bytes::from(json));
    }

    fn cancelled(&self, call_id: &str) {
        self.send(&ServerMessage::CallCancelled {
            call_id: call_id.to_string(),
        });
    }
}

impl CallerPort for ConnPort {
    fn answer(&self, request_id: RequestId, outcome: CallOutcome) {
        self.0
            .send_direct(Utf8Bytes::from(answer_json(request_id, outcome)));
    }
}

/// The `result` or `error` a caller connection gets for `outcome`, as
/// JSON (a result written directly: every call ends with one).
fn answer_json(id: RequestId, outcome: CallOutcome) -> String {
    let (code, message, detail) = match outcome {
        CallOutcome::Result { result } => return result_json(&id, &result),
        CallOutcome::Failed { error } => (
            ErrorCode::CallFailed,
            format!("the server answered with an error: {}", error.message),
            serde_json::to_value(error).ok(),
        ),
        CallOutcome::Error { code, message } => (code, message, None),
    };
    ServerMessage::Error {
        id: Some(id),
        code,
        message,
        channel: None,
        detail,
    }
    .to_json()
}

/// An HTTP request waiting for its call's answer.
pub(super) struct Waiter(Mutex<Option<oneshot::Sender<CallOutcome>>>);

impl Waiter {
    pub(super) fn new(tx: oneshot::Sender<CallOutcome>) -> Waiter {
        Waiter(Mutex::new(Some(tx)))
    }
}

impl CallerPort for Waiter {
    fn answer(&self, _: RequestId, outcome: CallOutcome) {
        let tx = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            // The request may have gone; then nobody wants the answer.
            let _ = tx.send(outcome);
        }
    }
}
