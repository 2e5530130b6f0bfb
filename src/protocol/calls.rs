//! The parts of call messages (`call:request`, `call:reply`) that are
//! objects of their own.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::auth::ClientType;
use crate::error::ErrorCode;

/// A call's params or result: any JSON value, kept as the text its sender
/// wrote. The hub passes it from caller to server and back without taking
/// it apart (no parse into a tree, no re-escaping of its strings), so it
/// also keeps what a tree would lose, such as integers beyond 2^53.
///
/// Reading one from a message the hub parses generically (internally
/// tagged enums buffer their fields) goes through a [`Value`]; the call
/// frames' own parse path ([`super::hot`]) reads the text as it is.
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// `null`.
    pub fn null() -> Payload {
        Payload(RawValue::NULL.to_owned())
    }

    /// The JSON text of `value`.
    pub fn from_value(value: &Value) -> Payload {
        // Writing a `Value` out cannot fail (its keys are strings).
        Payload(
            serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned()),
        )
    }

    /// Parsed into a [`Value`].
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }

    /// Parsed into any type.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Whether it is `null`.
    pub fn is_null(&self) -> bool {
        self.0.get() == "null"
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Payload {
        Payload(raw)
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Payload {
        Payload::from_value(&value)
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::null()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

/// Equal when they are the same JSON value, however written.
impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.0.get() == other.0.get() || self.to_value() == other.to_value()
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Payload, D::Error> {
        Value::deserialize(deserializer).map(|value| Payload::from_value(&value))
    }
}

impl JsonSchema for Payload {
    fn inline_schema() -> bool {
        Value::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        Value::schema_name()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        Value::json_schema(generator)
    }
}

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
        result: Payload,
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
