//! The call messages of a session: serving methods, calling them, replying
//! and cancelling. Each is checked against the connection's permissions; the
//! routing itself is [`crate::calls`]. The connection's registrations and
//! calls end with it (the hub's `ConnectionEntry` drop guard).

use futures::{Sink, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{End, Session};
use crate::channels::{ChannelName, Pattern};
use crate::error::{ErrorCode, RequestError};
use crate::protocol::calls::{CallError, CallerInfo, Payload};
use crate::protocol::{ClientMessage, ServerMessage};

/// Concurrency of a `serve` that names none.
const DEFAULT_CONCURRENCY: u32 = 16;

impl<S> Session<S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    pub(super) async fn on_call_message(&mut self, msg: ClientMessage) -> Result<(), End> {
        match msg {
            ClientMessage::Serve {
                id,
                methods,
                concurrency,
            } => match self.serve_patterns(&methods, concurrency) {
                Ok((patterns, concurrency)) => {
                    let calls = self.hub.calls();
                    let methods = calls.serve(&self.subscriber, patterns, concurrency).await;
                    self.reply(ServerMessage::Serving { id, methods }).await?;
                    self.hub.calls().serving_sent(self.client_id);
                    Ok(())
                }
                Err(err) => self.error(id, err, None).await,
            },
            ClientMessage::Unserve { id, methods } => {
                let methods = self.hub.calls().unserve(self.client_id, &methods).await;
                self.reply(ServerMessage::Unserving { id, methods }).await
            }
            ClientMessage::Call {
                id,
                method,
                params,
                timeout_ms,
            } => {
                let started = match self.check_call(&method) {
                    Ok((method, caller)) => {
                        let params = params.unwrap_or_default();
                        let calls = self.hub.calls();
                        let id = id.clone();
                        calls
                            .call(&self.subscriber, caller, id, method, params, timeout_ms)
                            .await
                    }
                    Err(err) => Err(err),
                };
                match started {
                    Ok(()) => Ok(()),
                    Err(err) => self.error(Some(id), err, None).await,
                }
            }
            ClientMessage::CallReply {
                call_id,
                result,
                error,
            } => {
                self.reply_to_call(&call_id, result, error);
                Ok(())
            }
            ClientMessage::CallCancel { id } => {
                self.hub.calls().cancel(self.client_id, &id);
                Ok(())
            }
            other => {
                let err = RequestError::new(
                    ErrorCode::BadRequest,
                    format!("unexpected message {other:?}"),
                );
                self.error(other.id().cloned(), err, None).await
            }
        }
    }

    /// Handles a `call` or `call:reply` that needs no await: a reply, and
    /// a call that passes its checks and needs no look-up in the cluster
    /// (its answer, or its `no_server` / `busy` error, comes through the
    /// connection's queue like every call's answer). Hands back anything
    /// else, for [`on_call_message`](Self::on_call_message) or the other
    /// handlers.
    pub(super) fn call_now(&mut self, msg: ClientMessage) -> Option<ClientMessage> {
        match msg {
            ClientMessage::CallReply {
                call_id,
                result,
                error,
            } => {
                self.reply_to_call(&call_id, result, error);
                None
            }
            ClientMessage::Call {
                id,
                method,
                params,
                timeout_ms,
            } => {
                let calls = self.hub.calls();
                match self.check_call(&method) {
                    Ok((name, caller)) if !calls.must_look_up(&name) => {
                        let params = params.unwrap_or_default();
                        let started = calls.call_now(
                            &self.subscriber,
                            caller,
                            id.clone(),
                            name,
                            params,
                            timeout_ms,
                        );
                        if let Err(err) = started {
                            self.subscriber.send_direct(
                                ServerMessage::Error {
                                    id: Some(id),
                                    code: err.code,
                                    message: err.message,
                                    channel: None,
                                    detail: None,
                                }
                                .to_json()
                                .into(),
                            );
                        }
                        None
                    }
                    _ => Some(ClientMessage::Call {
                        id,
                        method,
                        params,
                        timeout_ms,
                    }),
                }
            }
            other => Some(other),
        }
    }

    fn reply_to_call(&self, call_id: &str, result: Option<Payload>, error: Option<CallError>) {
        let reply = match error {
            Some(err) => Err(err),
            None => Ok(result.unwrap_or_default()),
        };
        self.hub.calls().reply(self.client_id, call_id, reply);
    }

    /// The patterns and concurrency of a `serve`, checked.
    fn serve_patterns(
        &self,
        methods: &[String],
        concurrency: Option<u32>,
    ) -> Result<(Vec<Pattern>, u32), RequestError> {
        let max = self.hub.calls().config().max_concurrency;
        let concurrency = concurrency.unwrap_or(DEFAULT_CONCURRENCY.min(max));
        if concurrency == 0 || concurrency > max {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("concurrency must be between 1 and {max}"),
            ));
        }
        if methods.is_empty() {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                "serve needs at least one method pattern",
            ));
        }
        let limits = self.hub.name_limits();
        let patterns = methods
            .iter()
            .map(|raw| {
                let pattern = Pattern::parse(raw, &limits)?;
                self.identity.permissions.check_serve(&pattern)?;
                Ok(pattern)
            })
            .collect::<Result<Vec<_>, RequestError>>()?;
        Ok((patterns, concurrency))
    }

    /// The method of a `call`, checked, and who calls it.
    fn check_call(&self, method: &str) -> Result<(ChannelName, CallerInfo), RequestError> {
        let method = ChannelName::parse(method, &self.hub.name_limits())?;
        self.identity.permissions.check_call(&method)?;
        let caller = CallerInfo {
            client_id: self.client_id.to_string(),
            sub: self.identity.sub.clone(),
            client_type: self.identity.client_type,
        };
        Ok((method, caller))
    }
}
