//! The task messages of a session: workers registering and reporting,
//! submitters submitting and cancelling. Each is checked against the
//! connection's permissions; the worker id is always the connection's own,
//! whatever the message body says.

use std::collections::BTreeMap;

use axum::extract::ws::{Message, Utf8Bytes};
use futures::{Sink, Stream};

use super::{End, Session};
use crate::auth::Permission;
use crate::error::{ErrorCode, RequestError};
use crate::protocol::tasks::TaskState;
use crate::protocol::{ClientMessage, RequestId, ServerMessage};
use crate::tasks::cluster::ClusterTasks;

impl<S> Session<S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    pub(super) async fn on_task_message(&mut self, msg: ClientMessage) -> Result<(), End> {
        if let Some(tasks) = self.hub.cluster_tasks().cloned() {
            if self.is_worker {
                tasks.touch(self.client_id);
            }
            return self.on_task_message_clustered(&tasks, msg).await;
        }
        if self.is_worker {
            self.hub.tasks().touch(self.client_id);
        }
        let id = msg.id().cloned();
        let result = match msg {
            ClientMessage::Register {
                capabilities,
                slots,
                labels,
                ..
            } => self.register(id.clone(), &capabilities, slots, labels.unwrap_or_default()),
            ClientMessage::Drain { .. } => self.drain(id.clone()),
            ClientMessage::TaskSubmit { task, .. } => {
                return self.submit(id, task).await;
            }
            ClientMessage::TaskProgress {
                task_id,
                progress,
                message,
                ..
            } => self
                .require(Permission::TaskComplete)
                .and_then(|()| {
                    self.hub
                        .tasks()
                        .progress(self.client_id, &task_id, progress, message)
                })
                .map(|()| ack(id.clone(), task_id, TaskState::Assigned)),
            ClientMessage::TaskComplete {
                task_id, result, ..
            } => self
                .require(Permission::TaskComplete)
                .and_then(|()| self.hub.tasks().complete(self.client_id, &task_id, result))
                .map(|()| ack(id.clone(), task_id, TaskState::Completed)),
            ClientMessage::TaskError {
                task_id,
                error,
                retryable,
                ..
            } => self
                .require(Permission::TaskComplete)
                .and_then(|()| {
                    self.hub
                        .tasks()
                        .fail(self.client_id, &task_id, error, retryable)
                })
                .map(|state| ack(id.clone(), task_id, state)),
            ClientMessage::TaskCancel { task_id, .. } => self
                .require(Permission::TaskSubmit)
                .and_then(|()| self.hub.tasks().cancel(&task_id, Some(&self.identity.sub)))
                .map(|task| ack(id.clone(), task_id, task.state)),
            other => Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("unexpected message {other:?}"),
            )),
        };
        match result {
            // Acks of worker reports are only sent when asked for (an id).
            Ok(Some(reply)) => self.reply(reply).await,
            Ok(None) => Ok(()),
            Err(err) => self.error(id, err, None).await,
        }
    }

    /// Cluster mode: the same requests, against the queue in Redis.
    async fn on_task_message_clustered(
        &mut self,
        tasks: &ClusterTasks,
        msg: ClientMessage,
    ) -> Result<(), End> {
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
                match self
                    .require(Permission::TaskSubmit)
                    .and_then(|()| self.hub.check_engine())
                {
                    Err(err) => Err(err),
                    Ok(()) => tasks
                        .submit(task, &self.identity.sub, Some(client_id))
                        .await
                        .map(|accepted| {
                            Some(ServerMessage::TaskAccepted {
                                id: id.clone(),
                                task_id: accepted.task_id,
                                deduplicated: accepted.deduplicated,
                            })
                        }),
                }
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
                    .complete(client_id, &task_id, result)
                    .await
                    .map(|()| ack(id.clone(), task_id, TaskState::Completed)),
            },
            ClientMessage::TaskError {
                task_id,
                error,
                retryable,
                ..
            } => match self.require(Permission::TaskComplete) {
                Err(err) => Err(err),
                Ok(()) => tasks
                    .fail(client_id, &task_id, error, retryable)
                    .await
                    .map(|state| ack(id.clone(), task_id, state)),
            },
            ClientMessage::TaskCancel { task_id, .. } => match self.require(Permission::TaskSubmit)
            {
                Err(err) => Err(err),
                Ok(()) => tasks
                    .cancel(&task_id, Some(&self.identity.sub))
                    .await
                    .map(|task| ack(id.clone(), task_id, task.state)),
            },
            other => Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("unexpected message {other:?}"),
            )),
        };
        match result {
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
        let (registered, worker_id) = match (self.hub.cluster_tasks(), self.hub.cluster()) {
            (Some(tasks), Some(cluster)) => (
                tasks.register(
                    self.client_id,
                    &self.identity.sub,
                    capabilities,
                    slots,
                    labels,
                )?,
                cluster.worker_id(self.client_id),
            ),
            _ => (
                self.hub.tasks().register(
                    self.client_id,
                    &self.identity.sub,
                    capabilities,
                    slots,
                    labels,
                )?,
                self.client_id.to_string(),
            ),
        };
        self.is_worker = true;
        Ok(Some(ServerMessage::Registered {
            id,
            worker_id,
            capabilities: registered.iter().map(|p| p.as_str().to_string()).collect(),
            slots,
        }))
    }

    fn drain(&mut self, id: Option<RequestId>) -> Result<Option<ServerMessage>, RequestError> {
        self.require(Permission::TaskReceive)?;
        let running = self.hub.tasks().drain(self.client_id)?;
        Ok(Some(ServerMessage::Draining { id, running }))
    }

    /// Accepts the task now (in order with this connection's other
    /// messages), and sends `task:accepted` once it is durable — without
    /// holding up this connection's next messages while the disk syncs.
    async fn submit(
        &mut self,
        id: Option<RequestId>,
        spec: crate::protocol::tasks::TaskSpec,
    ) -> Result<(), End> {
        if let Err(err) = self
            .require(Permission::TaskSubmit)
            .and_then(|()| self.hub.check_engine())
        {
            return self.error(id, err, None).await;
        }
        let tasks = std::sync::Arc::clone(self.hub.tasks());
        let accepted = match tasks.accept(spec, &self.identity.sub, Some(self.client_id)) {
            Ok(accepted) => accepted,
            Err(err) => return self.error(id, err, None).await,
        };
        let subscriber = std::sync::Arc::clone(&self.subscriber);
        self.hub.tracker().spawn(async move {
            let reply = match tasks.durable().await {
                Ok(()) => ServerMessage::TaskAccepted {
                    id,
                    task_id: accepted.task_id,
                    deduplicated: accepted.deduplicated,
                },
                Err(err) => ServerMessage::Error {
                    id,
                    code: err.code,
                    message: err.message,
                    channel: None,
                },
            };
            subscriber.send_direct(Utf8Bytes::from(reply.to_json()));
        });
        Ok(())
    }
}

fn ack(id: Option<RequestId>, task_id: String, state: TaskState) -> Option<ServerMessage> {
    id.map(|id| ServerMessage::TaskAck {
        id: Some(id),
        task_id,
        state,
    })
}
