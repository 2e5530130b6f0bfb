//! The task messages of a session: workers registering and reporting,
//! submitters submitting and cancelling. Each is checked against the
//! connection's permissions; the worker id is always the connection's own,
//! whatever the message body says. A submit, a report and a cancel are
//! answered by the task service once the change is durable (see
//! `tasks::handle`); the session answers their refusals.

use std::collections::BTreeMap;

use futures::{Sink, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{End, Session};
use crate::auth::Permission;
use crate::error::{ErrorCode, RequestError};
use crate::protocol::tasks::TaskState;
use crate::protocol::{ClientMessage, RequestId, ServerMessage};

impl<S> Session<S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    pub(super) async fn on_task_message(&mut self, msg: ClientMessage) -> Result<(), End> {
        let tasks = self.hub.tasks();
        if self.is_worker {
            tasks.touch(self.client_id);
        }
        let id = msg.id().cloned();
        let client_id = self.client_id;
        let result = match msg {
            ClientMessage::Register {
                capabilities,
                slots,
                labels,
                ..
            } => self.register(id.clone(), &capabilities, slots, labels.unwrap_or_default()),
            ClientMessage::Drain { .. } => self
                .require(Permission::TaskReceive)
                .and_then(|()| tasks.drain(client_id))
                .map(|running| {
                    Some(ServerMessage::Draining {
                        id: id.clone(),
                        running,
                    })
                }),
            ClientMessage::TaskSubmit { task, .. } => {
                return self.submit(id, task).await;
            }
            ClientMessage::TaskProgress {
                task_id,
                progress,
                message,
                ..
            } => match self.require(Permission::TaskComplete) {
                Err(err) => Err(err),
                Ok(()) => tasks
                    .progress(client_id, &task_id, progress, message)
                    .await
                    .map(|()| ack(id.clone(), task_id, TaskState::Assigned)),
            },
            ClientMessage::TaskComplete {
                task_id, result, ..
            } => match self.require(Permission::TaskComplete) {
                Err(err) => Err(err),
                Ok(()) => tasks
                    .complete(client_id, &task_id, result, id.clone())
                    .await
                    .map(|()| None),
            },
            ClientMessage::TaskError {
                task_id,
                error,
                retryable,
                ..
            } => match self.require(Permission::TaskComplete) {
                Err(err) => Err(err),
                Ok(()) => tasks
                    .fail(client_id, &task_id, error, retryable, id.clone())
                    .await
                    .map(|()| None),
            },
            ClientMessage::TaskCancel { task_id, .. } => match self.require(Permission::TaskSubmit)
            {
                Err(err) => Err(err),
                Ok(()) => tasks
                    .cancel_request(client_id, id.clone(), &task_id, &self.identity.sub)
                    .await
                    .map(|()| None),
            },
            other => Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("unexpected message {other:?}"),
            )),
        };
        match result {
            // Acks of progress are only sent when asked for (an id); the
            // task service sends the other acks.
            Ok(Some(reply)) => self.reply(reply).await,
            Ok(None) => Ok(()),
            Err(err) => self.error(id, err, None).await,
        }
    }

    fn require(&self, permission: Permission) -> Result<(), RequestError> {
        self.identity.permissions.require(permission)
    }

    fn register(
        &mut self,
        id: Option<RequestId>,
        capabilities: &[String],
        slots: Option<u32>,
        labels: BTreeMap<String, String>,
    ) -> Result<Option<ServerMessage>, RequestError> {
        self.require(Permission::TaskReceive)?;
        let slots = slots.unwrap_or(1);
        let max = self.hub.config().tasks.max_slots;
        if slots == 0 || slots > max {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("slots must be between 1 and {max}"),
            ));
        }
        if let Some(cap) = self.identity.max_slots {
            if slots > cap {
                return Err(RequestError::forbidden(format!(
                    "this token allows at most {cap} slots"
                )));
            }
        }
        let limits = self.hub.name_limits();
        if let Some(allowed) = &self.identity.capabilities {
            for raw in capabilities {
                let pattern = crate::channels::Pattern::parse(raw, &limits)?;
                if !allowed.iter().any(|a| a.covers(&pattern)) {
                    return Err(RequestError::forbidden(format!(
                        "this token may not register capability {raw:?}"
                    )));
                }
            }
        }
        let (registered, worker_id) = self.hub.tasks().register(
            self.client_id,
            &self.identity.sub,
            capabilities,
            slots,
            labels,
        )?;
        self.is_worker = true;
        Ok(Some(ServerMessage::Registered {
            id,
            worker_id,
            capabilities: registered.iter().map(|p| p.as_str().to_string()).collect(),
            slots,
        }))
    }

    /// Accepts the task now (in order with this connection's other
    /// messages); the task service sends `task:accepted` once it is durable,
    /// without holding up this connection's next messages while the disk
    /// syncs.
    async fn submit(
        &mut self,
        id: Option<RequestId>,
        spec: crate::protocol::tasks::TaskSpec,
    ) -> Result<(), End> {
        let accepted = match self
            .require(Permission::TaskSubmit)
            .and_then(|()| self.hub.engine().check_ready())
        {
            Ok(()) => {
                self.hub
                    .tasks()
                    .accept(spec, &self.identity.sub, self.client_id, id.clone())
                    .await
            }
            Err(err) => Err(err),
        };
        match accepted {
            Ok(()) => Ok(()),
            Err(err) => self.error(id, err, None).await,
        }
    }
}

fn ack(id: Option<RequestId>, task_id: String, state: TaskState) -> Option<ServerMessage> {
    id.map(|id| ServerMessage::TaskAck {
        id: Some(id),
        task_id,
        state,
    })
}
