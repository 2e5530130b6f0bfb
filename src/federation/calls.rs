//! Calls across federation links. Each side tells the other, in
//! `hub:serving`, the method patterns its own connections serve, narrowed
//! to its `call_export` for that peer; the receiver keeps them as one
//! server (the link) that it only sends methods of its `call_import` for
//! the peer, and only when no server of its own (or of its cluster) serves
//! the method. A call sent over a link (`hub:call`) runs on the receiver's
//! own servers only (one hop: what a hub advertises is what its own
//! connections serve), and its outcome comes back as `hub:call:answer`; a
//! caller that leaves sends `hub:call:cancel`. A link that drops ends the
//! calls running over it with `server_gone` and cancels the calls its peer
//! made.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::link::Link;
use super::{Federation, lock};
use crate::calls::{CallRequest, CallerPort, Calls, NewCall, ServerPort, ServingListener};
use crate::channels::{ChannelName, Pattern};
use crate::error::{ErrorCode, RequestError};
use crate::protocol::RequestId;
use crate::protocol::calls::CallOutcome;
use crate::protocol::federation::HubMessage;

/// One link's endpoints in the call registry.
#[derive(Clone)]
pub(crate) struct LinkEnds {
    /// The link as a server of the methods its peer advertised.
    server_id: u64,
    /// The link as the caller of the calls its peer sends.
    caller_id: u64,
    port: Arc<LinkPort>,
}

/// Sends call messages over one link.
struct LinkPort(Weak<Link>);

impl LinkPort {
    fn send(&self, msg: &HubMessage) {
        if let Some(link) = self.0.upgrade() {
            link.send_msg(msg);
        }
    }
}

impl ServerPort for LinkPort {
    fn request(&self, call_id: &str, request: CallRequest) {
        self.send(&HubMessage::Call {
            call_id: call_id.to_string(),
            method: request.method,
            params: request.params,
            caller: request.caller,
            deadline: request.deadline,
        });
    }

    fn cancelled(&self, call_id: &str) {
        self.send(&HubMessage::CallCancel {
            call_id: call_id.to_string(),
        });
    }
}

impl CallerPort for LinkPort {
    fn answer(&self, request_id: RequestId, outcome: CallOutcome) {
        let RequestId::Str(call_id) = request_id else {
            return;
        };
        self.send(&HubMessage::CallAnswer { call_id, outcome });
    }
}

/// The call side of the federation: the registry and each link's
/// endpoints.
#[derive(Default)]
pub(crate) struct FederatedCalls {
    calls: std::sync::OnceLock<Weak<Calls>>,
    links: std::sync::Mutex<HashMap<u64, LinkEnds>>,
}

impl Federation {
    /// Connects calls to the federation: links learn what this hub serves,
    /// and calls can go over links.
    pub(crate) fn observe_calls(self: &Arc<Self>, calls: &Arc<Calls>) {
        let _ = self.calls.calls.set(Arc::downgrade(calls));
        let listener: Arc<dyn ServingListener> = self.clone();
        calls.set_listener(Arc::downgrade(&listener));
    }

    fn registry(&self) -> Option<Arc<Calls>> {
        self.calls.calls.get().and_then(Weak::upgrade)
    }

    /// What `link`'s peer may call: the patterns this hub's connections
    /// serve, each narrowed to the peer's `call_export`.
    fn serving_for(&self, link: &Link, calls: &Calls) -> HubMessage {
        let (served, concurrency) = calls.local_serving();
        let export = &link.peer.call_export;
        let mut methods: Vec<String> = Vec::new();
        for raw in served {
            let Ok(pattern) = Pattern::parse(&raw, &self.limits) else {
                continue;
            };
            for allowed in export {
                let narrowed = if allowed.covers(&pattern) {
                    Some(&pattern)
                } else if pattern.covers(allowed) {
                    Some(allowed)
                } else {
                    None
                };
                if let Some(p) = narrowed
                    && !methods.iter().any(|m| m == p.as_str())
                {
                    methods.push(p.as_str().to_string());
                }
            }
        }
        let concurrency = if methods.is_empty() { 0 } else { concurrency };
        HubMessage::Serving {
            methods,
            concurrency,
        }
    }

    /// A link is up: it gets endpoints and hears what this hub serves.
    pub(crate) fn calls_link_up(&self, link: &Arc<Link>) {
        let Some(calls) = self.registry() else {
            return;
        };
        let ends = LinkEnds {
            server_id: calls.endpoint_id(),
            caller_id: calls.endpoint_id(),
            port: Arc::new(LinkPort(Arc::downgrade(link))),
        };
        lock(&self.calls.links).insert(link.id, ends);
        link.send_msg(&self.serving_for(link, &calls));
    }

    /// A link is down: calls over it end.
    pub(crate) fn calls_link_down(&self, link: &Link) {
        let ends = lock(&self.calls.links).remove(&link.id);
        if let (Some(calls), Some(ends)) = (self.registry(), ends) {
            calls.endpoint_gone(ends.server_id);
            calls.endpoint_gone(ends.caller_id);
        }
    }

    /// A call message from `link`'s peer.
    pub(crate) fn on_call_message(&self, link: &Arc<Link>, msg: HubMessage) {
        let (Some(calls), Some(ends)) = (
            self.registry(),
            lock(&self.calls.links).get(&link.id).cloned(),
        ) else {
            return;
        };
        match msg {
            HubMessage::Serving {
                methods,
                concurrency,
            } => {
                let patterns = methods
                    .iter()
                    .filter_map(|raw| Pattern::parse(raw, &self.limits).ok())
                    .collect();
                let port: Arc<dyn ServerPort> = ends.port;
                let import = link.peer.call_import.clone();
                calls.set_peer(ends.server_id, &port, patterns, import, concurrency);
            }
            HubMessage::Call {
                call_id,
                method,
                params,
                caller,
                deadline,
            } => {
                let request_id = RequestId::Str(call_id);
                let started = ChannelName::parse(&method, &self.limits)
                    .map_err(RequestError::from)
                    .and_then(|method| {
                        if !link.peer.call_export.iter().any(|p| p.matches(&method)) {
                            return Err(RequestError::new(
                                ErrorCode::NoServer,
                                format!("{:?} is not exported to this peer", method.as_str()),
                            ));
                        }
                        let call = NewCall {
                            caller_id: ends.caller_id,
                            caller: Arc::clone(&ends.port) as _,
                            request_id: request_id.clone(),
                            method,
                            params,
                            info: caller,
                        };
                        calls.call_relayed(call, deadline)
                    });
                if let Err(err) = started {
                    let outcome = CallOutcome::Error {
                        code: err.code,
                        message: err.message,
                    };
                    ends.port.answer(request_id, outcome);
                }
            }
            HubMessage::CallAnswer { call_id, outcome } => {
                calls.answer_from(ends.server_id, &call_id, outcome);
            }
            HubMessage::CallCancel { call_id } => {
                calls.cancel(ends.caller_id, &RequestId::Str(call_id));
            }
            _ => {}
        }
    }
}

impl ServingListener for Federation {
    fn serving_changed(&self) {
        let Some(calls) = self.registry() else {
            return;
        };
        for link in self.links.iter() {
            link.send_msg(&self.serving_for(link.value(), &calls));
        }
    }
}
