//! Call requests: what each call method sends and which answer completes
//! it, and the service (the `serve` registration) the client serves again
//! after a reconnect (the call counterpart of the worker registration).
//! Pure state with no I/O, driven by [`Requests`](super::requests::Requests).

use std::convert::Infallible;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::calls::CallRequest;
use super::types::ClientError;
use crate::error::ErrorCode;
use crate::protocol::calls::{CallError, Payload};
use crate::protocol::{ClientMessage, RequestId, ServerMessage};

/// A call request from a [`Client`](super::Client) handle or a service.
#[derive(Debug)]
pub(crate) enum CallOp {
    /// `call`.
    Call {
        /// The method.
        method: String,
        /// Its params (`null`: none).
        params: Value,
        /// When the caller stops waiting; what is left of it at sending
        /// time goes out as `timeoutMs`.
        deadline: Instant,
        /// Ends (with an error) when the caller drops the call, which then
        /// is cancelled if it is still in flight.
        caller: oneshot::Receiver<Infallible>,
    },
    /// `serve`, with the inbox its `call:request`s go to.
    Serve {
        /// What to serve.
        spec: ServiceSpec,
        /// The service's dispatcher.
        inbox: mpsc::Sender<Served>,
    },
    /// `unserve` of a service's patterns, unless that service has already
    /// ended (refused, or voided by a dropped connection).
    Unserve(ServiceSpec),
    /// `call:reply`; nothing answers it.
    Reply {
        /// The call answered.
        call_id: String,
        /// The handler's outcome.
        outcome: Result<Value, CallError>,
    },
}

/// What a service serves; sent again after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceSpec {
    /// Tells this service from an earlier or later one of the same client,
    /// so a late `unserve` of one never ends another.
    pub(crate) id: u64,
    /// Method patterns, as given to `serve`.
    pub(crate) methods: Vec<String>,
    /// Calls run at once.
    pub(crate) concurrency: u32,
}

impl ServiceSpec {
    /// The `serve` message for this service.
    pub(crate) fn message(&self, id: Option<RequestId>) -> ClientMessage {
        ClientMessage::Serve {
            id,
            methods: self.methods.clone(),
            concurrency: Some(self.concurrency),
        }
    }
}

/// What the connection task hands a service's dispatcher.
#[derive(Debug)]
pub(crate) enum Served {
    /// `call:request`: run it.
    Request(CallRequest),
    /// `call:cancelled`: stop it.
    Cancelled(String),
    /// The connection dropped; the hub ended every call it ran
    /// (`server_gone`), so stop them all.
    Lost,
}

/// The answer a pending call request expects.
#[derive(Debug)]
pub(crate) enum CallKind {
    /// `result`.
    Call,
    /// `serving`.
    Serve,
    /// `unserving`.
    Unserve,
}

/// A successful answer to a [`CallOp`].
#[derive(Debug)]
pub(crate) enum CallReply {
    /// The server's result.
    Result(Value),
    /// Every pattern served now.
    Serving(Vec<String>),
    /// `unserve` answered: the hub routes no more calls here.
    Unserved,
    /// A `call:reply` was handed to the socket.
    Sent,
}

/// What to do with a [`CallOp`].
#[derive(Debug)]
pub(crate) enum Start {
    /// Send `msg` and wait for the answer `kind`. With `caller`, the call
    /// is cancelled if its caller gives up first.
    Request {
        msg: ClientMessage,
        kind: CallKind,
        caller: Option<oneshot::Receiver<Infallible>>,
    },
    /// Send `msg`; it is answered [`CallReply::Sent`] once written.
    Notice(ClientMessage),
    /// Send nothing: this is the answer.
    Answered(Result<CallReply, ClientError>),
}

/// Where the service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `serve` sent, not answered.
    Asked,
    /// The hub serves it; served again after a reconnect.
    Accepted,
    /// `unserve` sent: its calls in flight finish, it is not served again.
    Dropped,
}

/// A `serve` this client made.
#[derive(Debug)]
struct Service {
    spec: ServiceSpec,
    /// The dispatcher's inbox; closed once the dispatcher has ended.
    inbox: mpsc::Sender<Served>,
    phase: Phase,
}

/// This client's standing as a server of methods: at most one service at
/// a time, like one worker registration.
#[derive(Debug, Default)]
pub(crate) struct ServeState {
    service: Option<Service>,
}

impl ServeState {
    /// What to send for `op`, made with request id `id`.
    pub(crate) fn start(&mut self, op: CallOp, id: i64) -> Start {
        let id = RequestId::Int(id);
        match op {
            CallOp::Call {
                method,
                params,
                deadline,
                caller,
            } => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Start::Answered(Err(ClientError::Refused {
                        code: ErrorCode::Timeout,
                        message: "the call's deadline passed before it could be sent".into(),
                    }));
                }
                let timeout_ms = u64::try_from(left.as_millis().max(1)).unwrap_or(u64::MAX);
                Start::Request {
                    msg: ClientMessage::Call {
                        id,
                        method,
                        params: (!params.is_null()).then(|| Payload::from_value(&params)),
                        timeout_ms: Some(timeout_ms),
                    },
                    kind: CallKind::Call,
                    caller: Some(caller),
                }
            }
            CallOp::Serve { spec, inbox } => {
                if self.active() {
                    return Start::Answered(Err(ClientError::Refused {
                        code: ErrorCode::BadRequest,
                        message: "this client already serves methods; close that first".into(),
                    }));
                }
                let msg = spec.message(Some(id));
                self.service = Some(Service {
                    spec,
                    inbox,
                    phase: Phase::Asked,
                });
                Start::Request {
                    msg,
                    kind: CallKind::Serve,
                    caller: None,
                }
            }
            CallOp::Unserve(spec) => match &mut self.service {
                Some(service) if service.spec.id == spec.id => {
                    // Not served again from now on, even if the connection
                    // drops before the answer.
                    service.phase = Phase::Dropped;
                    Start::Request {
                        msg: ClientMessage::Unserve {
                            id: Some(id),
                            methods: spec.methods,
                        },
                        kind: CallKind::Unserve,
                        caller: None,
                    }
                }
                // The `serve` was refused or voided: nothing is served.
                _ => Start::Answered(Ok(CallReply::Unserved)),
            },
            CallOp::Reply { call_id, outcome } => {
                let (result, error) = match outcome {
                    Ok(result) => (
                        (!result.is_null()).then(|| Payload::from_value(&result)),
                        None,
                    ),
                    Err(error) => (None, Some(error)),
                };
                Start::Notice(ClientMessage::CallReply {
                    call_id,
                    result,
                    error,
                })
            }
        }
    }

    /// Turns the hub's answer into the caller's result, tracking the
    /// service on the way.
    pub(crate) fn complete(
        &mut self,
        kind: CallKind,
        msg: ServerMessage,
    ) -> Result<CallReply, ClientError> {
        match (kind, msg) {
            (CallKind::Call, ServerMessage::Result { result, .. }) => {
                Ok(CallReply::Result(result.to_value()))
            }
            (
                CallKind::Call,
                ServerMessage::Error {
                    code: ErrorCode::CallFailed,
                    message,
                    detail,
                    ..
                },
            ) => match detail.map(serde_json::from_value::<CallError>) {
                Some(Ok(error)) => Err(ClientError::CallFailed(error)),
                _ => Err(ClientError::Protocol(format!(
                    "call_failed without a readable server error: {message}"
                ))),
            },
            (CallKind::Serve, ServerMessage::Serving { methods, .. }) => {
                if let Some(service) = &mut self.service {
                    if service.phase == Phase::Asked {
                        service.phase = Phase::Accepted;
                    }
                }
                Ok(CallReply::Serving(methods))
            }
            (CallKind::Serve, other) => {
                self.service = None;
                Err(refusal(other))
            }
            (CallKind::Unserve, ServerMessage::Unserving { .. }) => Ok(CallReply::Unserved),
            (_, other) => Err(refusal(other)),
        }
    }

    /// Whether a service exists whose dispatcher still runs.
    fn active(&mut self) -> bool {
        if self
            .service
            .as_ref()
            .is_some_and(|service| service.inbox.is_closed())
        {
            self.service = None;
        }
        self.service.is_some()
    }

    /// Where `call:request` and `call:cancelled` go, if a service runs.
    pub(crate) fn inbox(&mut self) -> Option<mpsc::Sender<Served>> {
        if !self.active() {
            return None;
        }
        self.service.as_ref().map(|service| service.inbox.clone())
    }

    /// The connection dropped. Returns the inbox of the service whose calls
    /// the hub has just ended, to tell it so. A `serve` in flight is void;
    /// a dropped service is forgotten (its calls have ended).
    pub(crate) fn connection_lost(&mut self) -> Option<mpsc::Sender<Served>> {
        let phase = self.service.as_ref()?.phase;
        match phase {
            Phase::Asked => {
                self.service = None;
                None
            }
            Phase::Accepted => self.inbox(),
            Phase::Dropped => self.service.take().map(|service| service.inbox),
        }
    }

    /// What to serve again on a fresh connection.
    pub(crate) fn restore(&mut self) -> Option<ServiceSpec> {
        if !self.active() {
            return None;
        }
        self.service
            .as_ref()
            .filter(|service| service.phase == Phase::Accepted)
            .map(|service| service.spec.clone())
    }

    /// The hub refused the service on a fresh connection: it ends (its
    /// dispatcher sees the inbox close).
    pub(crate) fn forget(&mut self) {
        self.service = None;
    }
}

/// An `error` answer as [`ClientError::Refused`]; anything else is a
/// protocol error.
fn refusal(msg: ServerMessage) -> ClientError {
    match msg {
        ServerMessage::Error { code, message, .. } => ClientError::Refused { code, message },
        other => ClientError::Protocol(format!(
            "unexpected answer to a call request: {}",
            other.to_json()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            id: 1,
            methods: vec!["demo.*".into()],
            concurrency: 2,
        }
    }

    fn serve(state: &mut ServeState, id: i64) -> (Start, mpsc::Receiver<Served>) {
        let (inbox, rx) = mpsc::channel(4);
        let start = state.start(
            CallOp::Serve {
                spec: spec(),
                inbox,
            },
            id,
        );
        (start, rx)
    }

    fn serving() -> ServerMessage {
        ServerMessage::Serving {
            id: Some(RequestId::Int(1)),
            methods: vec!["demo.*".into()],
        }
    }

    #[tokio::test]
    async fn a_call_sends_what_is_left_of_its_deadline() {
        let mut state = ServeState::default();
        let (_caller, gone) = oneshot::channel();
        let start = state.start(
            CallOp::Call {
                method: "demo.add".into(),
                params: Value::Null,
                deadline: Instant::now() + Duration::from_secs(5),
                caller: gone,
            },
            7,
        );
        let Start::Request { msg, .. } = start else {
            panic!("expected a request, got {start:?}");
        };
        let json = serde_json::to_value(&msg).expect("json");
        assert_eq!(json["type"], "call");
        assert_eq!(json["id"], 7);
        assert!(json.get("params").is_none(), "null params are omitted");
        let ms = json["timeoutMs"].as_u64().expect("timeoutMs");
        assert!((4000..=5000).contains(&ms), "{ms}");

        let (_caller, gone) = oneshot::channel();
        let late = state.start(
            CallOp::Call {
                method: "demo.add".into(),
                params: Value::Null,
                deadline: Instant::now(),
                caller: gone,
            },
            8,
        );
        assert!(matches!(
            late,
            Start::Answered(Err(ClientError::Refused {
                code: ErrorCode::Timeout,
                ..
            }))
        ));
    }

    #[test]
    fn call_failed_carries_the_servers_error() {
        let mut state = ServeState::default();
        let err = state
            .complete(
                CallKind::Call,
                ServerMessage::Error {
                    id: Some(RequestId::Int(1)),
                    code: ErrorCode::CallFailed,
                    message: "the server answered with an error: nope".into(),
                    channel: None,
                    detail: Some(serde_json::json!({"code": "nope", "message": "nope", "data": 1})),
                },
            )
            .unwrap_err();
        assert_eq!(
            err,
            ClientError::CallFailed(CallError::new("nope", "nope").with_data(1.into()))
        );
        let err = state
            .complete(
                CallKind::Call,
                ServerMessage::Error {
                    id: Some(RequestId::Int(2)),
                    code: ErrorCode::NoServer,
                    message: "nobody".into(),
                    channel: None,
                    detail: None,
                },
            )
            .unwrap_err();
        assert!(matches!(
            err,
            ClientError::Refused {
                code: ErrorCode::NoServer,
                ..
            }
        ));
    }

    #[test]
    fn one_service_at_a_time_restored_once_accepted_until_unserved() {
        let mut state = ServeState::default();
        let (start, _rx) = serve(&mut state, 1);
        assert!(matches!(start, Start::Request { .. }));
        assert_eq!(state.restore(), None, "not accepted yet");
        let (second, _rx2) = serve(&mut state, 2);
        assert!(matches!(
            second,
            Start::Answered(Err(ClientError::Refused {
                code: ErrorCode::BadRequest,
                ..
            }))
        ));
        state.complete(CallKind::Serve, serving()).expect("serving");
        assert_eq!(state.restore(), Some(spec()));
        assert!(state.connection_lost().is_some(), "told of the drop");
        assert_eq!(state.restore(), Some(spec()), "kept across a drop");

        let other = ServiceSpec { id: 2, ..spec() };
        assert!(
            matches!(
                state.start(CallOp::Unserve(other), 3),
                Start::Answered(Ok(CallReply::Unserved))
            ),
            "another service's unserve does not touch this one"
        );
        assert_eq!(state.restore(), Some(spec()));
        state.start(CallOp::Unserve(spec()), 3);
        assert_eq!(state.restore(), None, "not served again once unserved");
        assert!(state.inbox().is_some(), "its calls in flight still arrive");
        assert!(state.connection_lost().is_some());
        assert!(state.inbox().is_none(), "forgotten after the drop");
    }

    #[test]
    fn a_service_whose_dispatcher_ended_is_gone() {
        let mut state = ServeState::default();
        let (_, rx) = serve(&mut state, 1);
        state.complete(CallKind::Serve, serving()).expect("serving");
        drop(rx);
        assert!(state.inbox().is_none());
        assert_eq!(state.restore(), None);
        let (again, _rx) = serve(&mut state, 2);
        assert!(matches!(again, Start::Request { .. }), "may serve again");
    }

    #[test]
    fn a_serve_in_flight_is_void_after_a_drop_and_a_refused_one_is_forgotten() {
        let mut state = ServeState::default();
        let (_, _rx) = serve(&mut state, 1);
        assert!(state.connection_lost().is_none());
        assert!(state.inbox().is_none());

        let (_, _rx) = serve(&mut state, 2);
        let refused = ServerMessage::Error {
            id: Some(RequestId::Int(2)),
            code: ErrorCode::Forbidden,
            message: "no".into(),
            channel: None,
            detail: None,
        };
        assert!(state.complete(CallKind::Serve, refused).is_err());
        assert!(state.inbox().is_none());
        assert!(matches!(
            state.start(CallOp::Unserve(spec()), 3),
            Start::Answered(Ok(CallReply::Unserved))
        ));
    }
}
