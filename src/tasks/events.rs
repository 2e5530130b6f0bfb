//! What both task services tell the world, in one vocabulary: each state
//! change is an event on `task:<id>` and on its lifecycle channel, each
//! worker arriving or leaving one on `worker:connected` /
//! `worker:disconnected`, published through the router like any event.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::channels::{ChannelName, NameLimits};
use crate::protocol::tasks::{TaskView, WorkerView};
use crate::router::manager::ChannelManager;

/// Which lifecycle channel a task event goes to (besides `task:<id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    Queued,
    Assigned,
    Progress,
    Completed,
    Failed,
    Dead,
    Cancelled,
}

impl Lifecycle {
    /// The lifecycle channel.
    pub(crate) fn channel(self) -> &'static str {
        match self {
            Lifecycle::Queued => "task:queued",
            Lifecycle::Assigned => "task:assigned",
            Lifecycle::Progress => "task:progress",
            Lifecycle::Completed => "task:completed",
            Lifecycle::Failed => "task:failed",
            Lifecycle::Dead => "task:dead",
            Lifecycle::Cancelled => "task:cancelled",
        }
    }
}

/// A worker arriving or leaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerEvent {
    Connected,
    Disconnected,
}

impl WorkerEvent {
    /// Its channel.
    pub(crate) fn channel(self) -> &'static str {
        match self {
            WorkerEvent::Connected => "worker:connected",
            WorkerEvent::Disconnected => "worker:disconnected",
        }
    }
}

/// Publishes task and worker events through the router.
pub(crate) struct Events {
    /// The router (and through it the engine and the federation).
    channels: Arc<ChannelManager>,
    /// Grammar limits, to name `task:<id>` channels.
    limits: NameLimits,
}

impl Events {
    pub(crate) fn new(channels: Arc<ChannelManager>, limits: NameLimits) -> Events {
        Events { channels, limits }
    }

    /// `view` on `task:<id>` and on the lifecycle channel.
    pub(crate) fn task(&self, lifecycle: Lifecycle, view: &TaskView) {
        let data = to_value(view);
        self.publish(&format!("task:{}", view.id), data.clone());
        self.publish(lifecycle.channel(), data);
    }

    /// `view` on the worker event's channel.
    pub(crate) fn worker(&self, which: WorkerEvent, view: &WorkerView) {
        self.publish(which.channel(), to_value(view));
    }

    fn publish(&self, channel: &str, data: Value) {
        match ChannelName::parse(channel, &self.limits) {
            Ok(name) => {
                self.channels.publish_data(name, data);
            }
            Err(e) => tracing::error!(channel, error = %e, "task event channel invalid"),
        }
    }
}

fn to_value(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}
