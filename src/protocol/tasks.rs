//! Wire types of task routing: what a submitter sends, what a worker
//! receives, and the task record the HTTP API and lifecycle events show.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A task as submitted (`task:submit`'s `task`, `POST /api/tasks` body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSpec {
    /// Task type, a channel name such as `embedding:local`; workers'
    /// capability patterns are matched against it.
    #[serde(rename = "type")]
    pub kind: String,
    /// Anything the worker needs.
    #[serde(default)]
    pub payload: Value,
    /// 0–9, higher first; default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Lease per attempt in ms; default `tasks.default_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Deliveries before the task is dead-lettered; default `tasks.default_max_attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// While a task with this key is queued or running, submitting another
    /// returns the existing task's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for a capable worker with a free slot.
    Queued,
    /// Held by a worker under a lease.
    Assigned,
    /// Failed with a retryable error; queued again after a backoff.
    Failed,
    /// The worker reported a result.
    Completed,
    /// Attempts exhausted or a non-retryable error; kept for operators.
    Dead,
    /// Cancelled by the submitter or an admin.
    Cancelled,
}

impl TaskState {
    /// Whether the task will not change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Dead | TaskState::Cancelled
        )
    }

    /// The lowercase name, e.g. `queued`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Assigned => "assigned",
            TaskState::Failed => "failed",
            TaskState::Completed => "completed",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => TaskState::Queued,
            "assigned" => TaskState::Assigned,
            "failed" => TaskState::Failed,
            "completed" => TaskState::Completed,
            "dead" => TaskState::Dead,
            "cancelled" => TaskState::Cancelled,
            other => return Err(format!("unknown task state {other:?}")),
        })
    }
}

/// A task as the hub reports it: the HTTP API's task record, and the data
/// of every lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    /// Task id (also the `<id>` of its `task:<id>` channel).
    pub id: String,
    /// Task type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The submitted payload.
    pub payload: Value,
    /// 0–9.
    pub priority: u8,
    /// Current state.
    pub state: TaskState,
    /// Deliveries so far (the current one included).
    pub attempt: u32,
    /// Deliveries allowed.
    pub max_attempts: u32,
    /// Lease per attempt, ms.
    pub timeout_ms: u64,
    /// Dedup key, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    /// `sub` of the submitter's token (or `admin`).
    pub submitted_by: String,
    /// The worker holding it (assigned) or that finished it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Last reported progress, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// Last progress message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The worker's result (completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The last error reported or why the task died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// Name of the peer hub whose worker runs (or ran) it, when it was
    /// forwarded (federation); absent for tasks run here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<Box<str>>,
    /// When it was accepted, ms since the Unix epoch.
    pub created_at: u64,
    /// Last change, ms since the Unix epoch.
    pub updated_at: u64,
}

/// What a worker receives in `task:assign`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Task id.
    pub id: String,
    /// Task type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The submitted payload.
    pub payload: Value,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// Lease end, ms since the Unix epoch; `task:progress` extends it.
    pub deadline: u64,
}

/// A worker as `GET /api/workers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerView {
    /// Worker id (the connection's client id).
    pub worker_id: String,
    /// `sub` of the worker's token.
    pub sub: String,
    /// Capability patterns.
    pub capabilities: Vec<String>,
    /// Tasks it runs at once.
    pub slots: u32,
    /// Ids of the tasks it holds.
    pub running: Vec<String>,
    /// Not taking new tasks.
    pub draining: bool,
    /// Free-form labels from `register`.
    pub labels: BTreeMap<String, String>,
    /// When it registered, ms since the Unix epoch.
    pub connected_at: u64,
    /// Last message from it, ms since the Unix epoch.
    pub last_seen: u64,
}

/// `POST /api/tasks` response and the data of `task:accepted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The task's id.
    pub task_id: String,
    /// True when a task with the same dedup key was already queued or
    /// running and its id is returned instead of a new task.
    pub deduplicated: bool,
}
