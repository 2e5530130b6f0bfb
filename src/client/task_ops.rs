//! Task requests: what each task call sends and which answer completes it,
//! and the worker registration the client sends again after a reconnect
//! (the task counterpart of the resubscribe set). Pure state with no I/O,
//! driven by [`Requests`](super::requests::Requests).

use serde_json::Value;

use super::types::{ClientError, Registration};
use crate::error::ErrorCode;
use crate::protocol::tasks::{Accepted, TaskSpec, TaskState};
use crate::protocol::{ClientMessage, RequestId, ServerMessage};

/// A task request from a [`Client`](super::Client) handle.
#[derive(Debug)]
pub(crate) enum TaskOp {
    /// `task:submit`.
    Submit(TaskSpec),
    /// `task:cancel` from the submitter.
    Cancel(String),
    /// `register`.
    Register(Registration),
    /// `drain`.
    Drain,
    /// `task:progress`.
    Progress {
        task_id: String,
        progress: Option<u8>,
        message: Option<String>,
    },
    /// `task:complete`.
    Complete { task_id: String, result: Value },
    /// `task:error`.
    Fail {
        task_id: String,
        error: Value,
        retryable: bool,
    },
}

/// The answer a pending task request expects.
#[derive(Debug)]
pub(crate) enum TaskKind {
    /// `task:accepted`.
    Submit,
    /// `task:ack` (progress, complete, error, cancel).
    Ack,
    /// `registered`; keeps the registration to store once accepted.
    Register(Registration),
    /// `draining`.
    Drain,
}

/// A successful answer to a [`TaskOp`].
#[derive(Debug)]
pub(crate) enum TaskReply {
    /// The task is accepted and durable.
    Accepted(Accepted),
    /// The task's state after the request.
    Ack(TaskState),
    /// The worker id.
    Registered(String),
    /// Tasks still running.
    Draining(usize),
}

impl TaskOp {
    /// The message to send with request id `id`, and the answer to expect.
    pub(crate) fn into_message(self, id: Option<RequestId>) -> (ClientMessage, TaskKind) {
        match self {
            TaskOp::Submit(task) => (ClientMessage::TaskSubmit { id, task }, TaskKind::Submit),
            TaskOp::Cancel(task_id) => (ClientMessage::TaskCancel { id, task_id }, TaskKind::Ack),
            TaskOp::Register(registration) => (
                register_message(id, &registration),
                TaskKind::Register(registration),
            ),
            TaskOp::Drain => (ClientMessage::Drain { id }, TaskKind::Drain),
            TaskOp::Progress {
                task_id,
                progress,
                message,
            } => (
                ClientMessage::TaskProgress {
                    id,
                    task_id,
                    progress,
                    message,
                },
                TaskKind::Ack,
            ),
            TaskOp::Complete { task_id, result } => (
                ClientMessage::TaskComplete {
                    id,
                    task_id,
                    result,
                },
                TaskKind::Ack,
            ),
            TaskOp::Fail {
                task_id,
                error,
                retryable,
            } => (
                ClientMessage::TaskError {
                    id,
                    task_id,
                    error,
                    retryable,
                },
                TaskKind::Ack,
            ),
        }
    }
}

/// The `register` message for `registration`.
pub(crate) fn register_message(
    id: Option<RequestId>,
    registration: &Registration,
) -> ClientMessage {
    ClientMessage::Register {
        id,
        capabilities: registration.capabilities.clone(),
        slots: Some(registration.slots),
        labels: (!registration.labels.is_empty()).then(|| registration.labels.clone()),
    }
}

/// This client's standing as a worker.
#[derive(Debug, Default)]
pub(crate) struct WorkerState {
    /// The registration the hub accepted; sent again after a reconnect.
    registered: Option<Registration>,
    /// A `register` is in flight. With `registered`, it makes a second
    /// `register` fail here, before the hub could accept it on a
    /// connection whose first one is then refused.
    registering: bool,
    /// `drain` was accepted: the worker is winding down, so a reconnect
    /// does not register it again (the drop released its tasks anyway).
    draining: bool,
}

impl WorkerState {
    /// Refuses a second `register` the way the hub would.
    pub(crate) fn check(&self, op: &TaskOp) -> Result<(), ClientError> {
        if matches!(op, TaskOp::Register(_)) && (self.registered.is_some() || self.registering) {
            return Err(ClientError::Refused {
                code: ErrorCode::BadRequest,
                message: "this client is already registered as a worker".into(),
            });
        }
        Ok(())
    }

    /// A request of `kind` was sent.
    pub(crate) fn sent(&mut self, kind: &TaskKind) {
        if matches!(kind, TaskKind::Register(_)) {
            self.registering = true;
        }
    }

    /// Turns the hub's answer into the caller's result, tracking the
    /// registration on the way.
    pub(crate) fn complete(
        &mut self,
        kind: TaskKind,
        msg: ServerMessage,
    ) -> Result<TaskReply, ClientError> {
        match (kind, msg) {
            (TaskKind::Register(registration), ServerMessage::Registered { worker_id, .. }) => {
                self.registering = false;
                self.registered = Some(registration);
                self.draining = false;
                Ok(TaskReply::Registered(worker_id))
            }
            (TaskKind::Register(_), other) => {
                self.registering = false;
                Err(refusal(other))
            }
            (TaskKind::Drain, ServerMessage::Draining { running, .. }) => {
                self.draining = true;
                Ok(TaskReply::Draining(running))
            }
            (
                TaskKind::Submit,
                ServerMessage::TaskAccepted {
                    task_id,
                    deduplicated,
                    ..
                },
            ) => Ok(TaskReply::Accepted(Accepted {
                task_id,
                deduplicated,
            })),
            (TaskKind::Ack, ServerMessage::TaskAck { state, .. }) => Ok(TaskReply::Ack(state)),
            (_, other) => Err(refusal(other)),
        }
    }

    /// The connection dropped: a `register` in flight is void. Returns
    /// whether the worker was registered (so its tasks are gone). A
    /// draining worker is forgotten rather than registered again.
    pub(crate) fn connection_lost(&mut self) -> bool {
        self.registering = false;
        let was_registered = self.registered.is_some();
        if self.draining {
            self.registered = None;
            self.draining = false;
        }
        was_registered
    }

    /// What to register again on a fresh connection.
    pub(crate) fn registration(&self) -> Option<Registration> {
        self.registered.clone()
    }

    /// The hub refused the registration on a fresh connection.
    pub(crate) fn forget(&mut self) {
        self.registered = None;
    }
}

/// An `error` answer as [`ClientError::Refused`]; anything else is a
/// protocol error.
fn refusal(msg: ServerMessage) -> ClientError {
    match msg {
        ServerMessage::Error { code, message, .. } => ClientError::Refused { code, message },
        other => ClientError::Protocol(format!(
            "unexpected answer to a task request: {}",
            other.to_json()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered() -> ServerMessage {
        ServerMessage::Registered {
            id: None,
            worker_id: "7".into(),
            capabilities: vec!["demo:*".into()],
            slots: 2,
        }
    }

    fn register_op() -> TaskOp {
        TaskOp::Register(Registration::new(&["demo:*"], 2))
    }

    #[test]
    fn a_second_register_is_refused_while_one_is_pending_or_held() {
        let mut worker = WorkerState::default();
        assert!(worker.check(&register_op()).is_ok());
        let (_, kind) = register_op().into_message(None);
        worker.sent(&kind);
        assert!(worker.check(&register_op()).is_err(), "pending");
        let reply = worker.complete(kind, registered()).expect("registered");
        assert!(matches!(reply, TaskReply::Registered(id) if id == "7"));
        assert!(worker.check(&register_op()).is_err(), "held");
        assert_eq!(
            worker.registration(),
            Some(Registration::new(&["demo:*"], 2))
        );
    }

    #[test]
    fn a_refused_register_can_be_retried() {
        let mut worker = WorkerState::default();
        let (_, kind) = register_op().into_message(None);
        worker.sent(&kind);
        let refused = ServerMessage::Error {
            id: None,
            code: ErrorCode::Forbidden,
            message: "no".into(),
            channel: None,
            detail: None,
        };
        assert!(matches!(
            worker.complete(kind, refused),
            Err(ClientError::Refused {
                code: ErrorCode::Forbidden,
                ..
            })
        ));
        assert!(worker.check(&register_op()).is_ok());
        assert_eq!(worker.registration(), None);
    }

    #[test]
    fn a_lost_connection_keeps_the_registration_unless_draining() {
        let mut worker = WorkerState::default();
        assert!(!worker.connection_lost(), "never registered");
        let (_, kind) = register_op().into_message(None);
        worker.sent(&kind);
        worker.complete(kind, registered()).expect("registered");
        assert!(worker.connection_lost());
        assert!(worker.registration().is_some(), "registered again later");
        worker
            .complete(
                TaskKind::Drain,
                ServerMessage::Draining {
                    id: None,
                    running: 0,
                },
            )
            .expect("draining");
        assert!(worker.connection_lost());
        assert_eq!(worker.registration(), None, "a draining worker is done");
    }

    #[test]
    fn task_answers_reach_their_caller_and_a_second_register_is_not_sent() {
        use super::super::requests::{Command, Op, Reply, Requests};
        let mut requests = Requests::default();
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        let op = Op::Task(TaskOp::Complete {
            task_id: "t1".into(),
            result: Value::Null,
        });
        let text = requests.start(Command { op, reply }).expect("sent");
        let sent: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(sent["type"], "task:complete");
        let id = sent["id"].as_i64().expect("an integer id, so the hub acks");
        requests.on_reply(ServerMessage::TaskAck {
            id: Some(RequestId::Int(id)),
            task_id: "t1".into(),
            state: TaskState::Completed,
        });
        assert!(matches!(
            rx.try_recv(),
            Ok(Ok(Reply::Task(TaskReply::Ack(TaskState::Completed))))
        ));

        let (reply, _first) = tokio::sync::oneshot::channel();
        let op = Op::Task(register_op());
        assert!(requests.start(Command { op, reply }).is_some());
        let (reply, mut second) = tokio::sync::oneshot::channel();
        let op = Op::Task(register_op());
        assert!(requests.start(Command { op, reply }).is_none(), "not sent");
        assert!(matches!(
            second.try_recv(),
            Ok(Err(ClientError::Refused {
                code: ErrorCode::BadRequest,
                ..
            }))
        ));
    }

    #[test]
    fn register_sends_slots_and_omits_empty_labels() {
        let (msg, _) = register_op().into_message(Some(RequestId::Int(3)));
        let json = serde_json::to_value(&msg).expect("json");
        assert_eq!(json["type"], "register");
        assert_eq!(json["slots"], 2);
        assert!(json.get("labels").is_none(), "{json}");
        let labelled = Registration::new(&["a"], 1).label("region", "eu");
        let json = serde_json::to_value(register_message(None, &labelled)).expect("json");
        assert_eq!(json["labels"]["region"], "eu");
    }
}
