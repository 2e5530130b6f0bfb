//! The parts of call messages (`call:request`, `call:reply`) that are
//! objects of their own.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::ClientType;

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
