//! Error types, and the one place that maps them to what a client sees: an
//! HTTP status with a JSON body, a wire `error` code, or a WebSocket close code.

#[cfg(feature = "server")]
use axum::Json;
#[cfg(feature = "server")]
use axum::http::StatusCode;
#[cfg(feature = "server")]
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::channels::ChannelError;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is present but wrong.
    #[error("invalid configuration: {key}: {problem}")]
    Invalid {
        /// Dotted key, e.g. `limits.max_connections`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The file or environment could not be parsed into the config tree.
    #[error("invalid configuration: {0}")]
    Parse(String),
}

#[cfg(feature = "server")]
impl ConfigError {
    pub(crate) fn from_figment(err: figment::Error) -> Self {
        // figment prefixes paths with the profile name ("default."); drop it so
        // the message names the key as the user wrote it.
        let text = err
            .into_iter()
            .map(|e| e.to_string().replace("default.", ""))
            .collect::<Vec<_>>()
            .join("; ");
        ConfigError::Parse(text)
    }
}

/// Why a token was refused. The snake_case name is the `reason` of
/// `auth:failed` and of the HTTP 401 body.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error,
)]
#[serde(rename_all = "snake_case")]
pub enum AuthError {
    /// No token was presented.
    #[error("no token was presented")]
    MissingToken,
    /// The first message was not `auth`.
    #[error("the first message must be {{\"type\":\"auth\"}}")]
    AuthRequired,
    /// Not a JWT at all.
    #[error("the token is not a well-formed JWT")]
    MalformedToken,
    /// Longer than `auth.max_token_bytes`.
    #[error("the token is too large")]
    TokenTooLarge,
    /// `alg` is not the configured algorithm (this includes `none`).
    #[error("the token's algorithm is not the one this hub accepts")]
    AlgorithmNotAllowed,
    /// The token's `kid` names no key this hub trusts (not in
    /// `[[auth.keys]]`, nor in the JWKS even after fetching it again), or a
    /// token without `kid` where no key is the default.
    #[error("no key this hub trusts matches the token's key id (kid)")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` does not contain the configured audience.
    #[error("the token's audience is wrong")]
    InvalidAudience,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is wrong")]
    InvalidIssuer,
    /// A required claim (`sub`, `exp`) is absent or of the wrong type.
    #[error("the token lacks a required claim (sub, exp)")]
    MissingClaim,
    /// The client type claim is absent.
    #[error("the token has no client type claim")]
    MissingClientType,
    /// The client type claim is not browser, worker or hub.
    #[error("the token's client type is unknown")]
    UnknownClientType,
    /// A narrowing claim (`channels`, `publish`, `permissions`) is malformed.
    #[error("a narrowing claim (channels, publish, permissions) is malformed")]
    InvalidClaim,
    /// `auth:refresh` carried a token for a different subject or client type.
    #[error("the refreshed token names a different subject or client type")]
    SubjectMismatch,
}

impl AuthError {
    /// The wire reason code, e.g. `bad_signature`.
    pub fn code(self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::AuthRequired => "auth_required",
            AuthError::MalformedToken => "malformed_token",
            AuthError::TokenTooLarge => "token_too_large",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::InvalidAudience => "invalid_audience",
            AuthError::InvalidIssuer => "invalid_issuer",
            AuthError::MissingClaim => "missing_claim",
            AuthError::MissingClientType => "missing_client_type",
            AuthError::UnknownClientType => "unknown_client_type",
            AuthError::InvalidClaim => "invalid_claim",
            AuthError::SubjectMismatch => "subject_mismatch",
        }
    }
}

/// The `code` of a wire `error` message and of HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, an unknown `type`, a missing field, or a binary frame.
    BadRequest,
    /// The client type or token does not allow this.
    Forbidden,
    /// A channel name or pattern breaks the grammar.
    InvalidChannel,
    /// The connection already holds `limits.max_subscriptions`.
    TooManySubscriptions,
    /// Authentication failed (HTTP API only; WebSocket uses `auth:failed`).
    Unauthorized,
    /// `auth` sent on a connection that is already authenticated.
    AlreadyAuthenticated,
    /// The feature exists in the protocol but this hub does not serve it yet.
    Unsupported,
    /// The hub is shutting down or at its connection limit.
    Unavailable,
    /// `tasks.max_queued` tasks are waiting; try later.
    QueueFull,
    /// No such task.
    NotFound,
    /// The worker does not hold that task (never did, or its lease expired).
    NotAssigned,
    /// The connection must `register` as a worker first.
    NotRegistered,
    /// The task is already finished.
    InvalidState,
    /// Cluster mode: the engine (Redis) cannot be reached, so the hub cannot
    /// deliver a publish or keep a task; retry after `/readyz` is ready.
    EngineUnavailable,
    /// Over `limits.messages` (a frame) or `limits.connect.per_ip` (a
    /// connection attempt); slow down.
    RateLimited,
    /// The server of a call answered with an error (under `detail`).
    CallFailed,
    /// Nobody serves the method called.
    NoServer,
    /// The call's deadline passed before its server answered.
    Timeout,
    /// The call's server disconnected before answering.
    ServerGone,
    /// Every server of the method is at its concurrency and the method's
    /// wait queue (`calls.max_waiting`) is full.
    Busy,
}

impl ErrorCode {
    /// The wire name, e.g. `no_server`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotAssigned => "not_assigned",
            ErrorCode::NotRegistered => "not_registered",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::EngineUnavailable => "engine_unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::CallFailed => "call_failed",
            ErrorCode::NoServer => "no_server",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ServerGone => "server_gone",
            ErrorCode::Busy => "busy",
        }
    }
}

/// A refused request: a code plus a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RequestError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl RequestError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
        }
    }

    /// A permission refusal.
    pub fn forbidden(message: impl Into<String>) -> Self {
        RequestError::new(ErrorCode::Forbidden, message)
    }
}

impl From<ChannelError> for RequestError {
    fn from(err: ChannelError) -> Self {
        RequestError::new(ErrorCode::InvalidChannel, err.to_string())
    }
}

/// Why the hub closed a WebSocket; each has its own close code so a client
/// can tell them apart without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed, or the hub had nothing more to say.
    Normal,
    /// An inbound message exceeded `limits.max_frame_bytes`.
    TooBig,
    /// The hub is shutting down or restarting.
    ServiceRestart,
    /// The token was refused (after `auth:failed`).
    AuthFailed,
    /// No token within `auth.timeout`.
    AuthTimeout,
    /// The token expired and no `auth:refresh` arrived in time.
    TokenExpired,
    /// The outbound queue filled up: the client does not read fast enough.
    SlowConsumer,
    /// Too many consecutive bad frames.
    TooManyBadFrames,
    /// The client stopped answering pings.
    PingTimeout,
    /// The client kept sending over its `limits.messages` rate.
    RateLimited,
    /// The client broke the WebSocket framing rules (an orphan continuation
    /// frame, a reserved opcode, an unmasked frame).
    ProtocolError,
    /// A text frame that is not valid UTF-8.
    InvalidPayload,
}

impl CloseReason {
    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::TooBig => 1009,
            CloseReason::ServiceRestart => 1012,
            CloseReason::AuthFailed => 4001,
            CloseReason::AuthTimeout => 4002,
            CloseReason::TokenExpired => 4003,
            CloseReason::SlowConsumer => 4008,
            CloseReason::TooManyBadFrames => 4009,
            CloseReason::PingTimeout => 4011,
            CloseReason::RateLimited => 4029,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidPayload => 1007,
        }
    }

    /// The close frame's reason text.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal closure",
            CloseReason::TooBig => "message too big",
            CloseReason::ServiceRestart => "service restart",
            CloseReason::AuthFailed => "authentication failed",
            CloseReason::AuthTimeout => "authentication timeout",
            CloseReason::TokenExpired => "token expired",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::TooManyBadFrames => "too many bad frames",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::RateLimited => "rate limited",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::InvalidPayload => "invalid utf-8",
        }
    }
}

#[cfg(feature = "server")]
/// An HTTP API error: status plus `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code (an [`ErrorCode`] or [`AuthError`] name).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// More about the error (a `call_failed` carries the server's error
    /// object here).
    pub detail: Option<serde_json::Value>,
}

#[cfg(feature = "server")]
impl ApiError {
    /// A 400 with `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
            detail: None,
        }
    }
}

#[cfg(feature = "server")]
impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: err.code(),
            message: err.to_string(),
            detail: None,
        }
    }
}

#[cfg(feature = "server")]
impl From<RequestError> for ApiError {
    fn from(err: RequestError) -> Self {
        let status = match err.code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::InvalidChannel => StatusCode::BAD_REQUEST,
            ErrorCode::TooManySubscriptions => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::AlreadyAuthenticated => StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported => StatusCode::NOT_IMPLEMENTED,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::NotAssigned => StatusCode::CONFLICT,
            ErrorCode::NotRegistered => StatusCode::CONFLICT,
            ErrorCode::InvalidState => StatusCode::CONFLICT,
            ErrorCode::EngineUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::CallFailed => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::NoServer => StatusCode::NOT_FOUND,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::ServerGone => StatusCode::BAD_GATEWAY,
            ErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError {
            status,
            code: err.code.as_str(),
            message: err.message,
            detail: None,
        }
    }
}

#[cfg(feature = "server")]
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(detail) = self.detail {
            error["detail"] = detail;
        }
        let body = serde_json::json!({ "error": error });
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_error_code_is_its_wire_name() {
        let all = [
            AuthError::MissingToken,
            AuthError::AuthRequired,
            AuthError::MalformedToken,
            AuthError::TokenTooLarge,
            AuthError::AlgorithmNotAllowed,
            AuthError::UnknownKey,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::InvalidAudience,
            AuthError::InvalidIssuer,
            AuthError::MissingClaim,
            AuthError::MissingClientType,
            AuthError::UnknownClientType,
            AuthError::InvalidClaim,
            AuthError::SubjectMismatch,
        ];
        for err in all {
            let wire = serde_json::to_value(err).expect("serializes");
            assert_eq!(wire, serde_json::Value::from(err.code()));
        }
    }

    #[test]
    fn close_codes_are_distinct() {
        let all = [
            CloseReason::Normal,
            CloseReason::TooBig,
            CloseReason::ServiceRestart,
            CloseReason::AuthFailed,
            CloseReason::AuthTimeout,
            CloseReason::TokenExpired,
            CloseReason::SlowConsumer,
            CloseReason::TooManyBadFrames,
            CloseReason::PingTimeout,
            CloseReason::RateLimited,
            CloseReason::ProtocolError,
            CloseReason::InvalidPayload,
        ];
        let codes: std::collections::HashSet<u16> = all.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), all.len());
    }
}
