//! The parts of call messages (`call:request`, `call:reply`) that are
//! objects of their own.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::ClientType;
use crate::error::ErrorCode;

/// Who made a call, as its server sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallerInfo {
    /// The caller's connection id.
    pub client_id: String,
    /// The caller token's subject.
    pub sub: String,
    /// The caller's client type.
    pub client_type: ClientType,
}

/// A server's error for a call; the caller gets it under `detail` of a
/// `call_failed` error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CallError {
    /// The server's own code, e.g. `not_found`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Anything more (any JSON value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// How a call ended, as its caller is answered. Passed between the nodes
/// of a cluster and between peer hubs (`hub:call:answer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum CallOutcome {
    /// The server's result.
    Result {
        /// Any JSON value.
        result: Value,
    },
    /// The server answered with an error (`call_failed` for the caller).
    Failed {
        /// The server's error object.
        error: CallError,
    },
    /// The hub ended the call: `no_server`, `timeout`, `server_gone`, `busy`.
    Error {
        /// Why.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

impl CallOutcome {
    /// The hub's error code of this outcome, `None` for a result.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallOutcome::Result { .. } => None,
            CallOutcome::Failed { .. } => Some(ErrorCode::CallFailed),
            CallOutcome::Error { code, .. } => Some(*code),
        }
    }
}

impl CallError {
    /// An error with no `data`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        CallError {
            code: code.into(),
            message: message.into(),
            data: None,
        }
    }

    /// Adds `data`.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}
