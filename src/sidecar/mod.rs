//! Running the hub as a child process of a desktop app (a *sidecar*): a
//! machine-readable ready line or file ([`ready`]), a startup failure as
//! one JSON line with an exit status per kind ([`Failure`]), and watching
//! the parent so the hub never outlives it ([`parent`], [`stdin`]), and
//! the stop signals, listened for from the start ([`signals`]).
//!
//! `chanhub serve --ready-json --exit-with-parent` uses all of it; the
//! protocol a parent sees is in the README ("Running chanhub inside a
//! desktop app").

pub mod parent;
pub mod ready;
pub mod signals;
pub mod stdin;

use serde::Serialize;

use crate::error::ConfigError;

/// Why the hub could not start, as the parent is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The configuration (file, environment, flags) is invalid.
    ConfigInvalid,
    /// The listen address could not be bound (in use, not permitted).
    BindFailed,
    /// The data directory could not be created, read or written.
    DataDir,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// The `code` of the error line.
    pub fn code(self) -> &'static str {
        match self {
            FailureKind::ConfigInvalid => "config_invalid",
            FailureKind::BindFailed => "bind_failed",
            FailureKind::DataDir => "data_dir",
            FailureKind::Other => "other",
        }
    }

    /// The process exit status for it.
    pub fn exit_status(self) -> u8 {
        match self {
            FailureKind::Other => 1,
            FailureKind::ConfigInvalid => 3,
            FailureKind::BindFailed => 4,
            FailureKind::DataDir => 5,
        }
    }

    /// The kind of a configuration error: the data directory's, or the
    /// configuration's.
    pub fn of_config(err: &ConfigError) -> FailureKind {
        match err {
            ConfigError::Invalid { key, .. } if key == "data_dir" => FailureKind::DataDir,
            _ => FailureKind::ConfigInvalid,
        }
    }
}

/// A startup failure: `{"event":"error","code":...,"message":...}`.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    event: &'static str,
    /// [`FailureKind::code`].
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// The error line of `kind`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            event: "error",
            code: kind.code(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code_and_exit_status() {
        let kinds = [
            FailureKind::ConfigInvalid,
            FailureKind::BindFailed,
            FailureKind::DataDir,
            FailureKind::Other,
        ];
        let codes: std::collections::BTreeSet<_> = kinds.iter().map(|k| k.code()).collect();
        let statuses: std::collections::BTreeSet<_> =
            kinds.iter().map(|k| k.exit_status()).collect();
        assert_eq!((codes.len(), statuses.len()), (4, 4));
        assert!(!statuses.contains(&0));
        let data_dir = ConfigError::Invalid {
            key: "data_dir".into(),
            problem: "read-only".into(),
        };
        assert_eq!(FailureKind::of_config(&data_dir), FailureKind::DataDir);
        assert_eq!(
            FailureKind::of_config(&ConfigError::Parse("x".into())),
            FailureKind::ConfigInvalid
        );
    }
}
