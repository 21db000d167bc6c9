//! How the process ends: an exit code by what went wrong, so a scheduler or a script can tell a
//! bad config from an unreachable cluster, and an audit that found problems from one that could
//! not run (README, "Exit codes").

use exactly::error::{ConfigError, Error};

/// Something failed while running (the restart budget spent, a fatal error).
pub(crate) const FAILED: u8 = 1;
/// The config or the command line is wrong (clap's usage errors exit 2 as well).
pub(crate) const CONFIG: u8 = 2;
/// A broker, topic, store or schema registry is unreachable, missing, or refused the
/// credentials.
pub(crate) const UNREACHABLE: u8 = 3;
/// `exactly verify`: the audit found problems.
pub(crate) const AUDIT_FAILED: u8 = 4;
/// `exactly verify`: the audit could not run (a table or topic it could not read).
pub(crate) const AUDIT_NOT_RUN: u8 = 5;

/// How `exactly verify` ended when it did not pass.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Audit {
    /// It ran and found problems (the summary).
    #[error("{0}")]
    Failed(String),
    /// It could not run.
    #[error("verify could not run: {0:#}")]
    NotRun(anyhow::Error),
}

/// The exit code for `e`.
pub(crate) fn code(e: &anyhow::Error) -> u8 {
    if let Some(audit) = e.downcast_ref::<Audit>() {
        return match audit {
            Audit::Failed(_) => AUDIT_FAILED,
            Audit::NotRun(inner) => cause(inner).unwrap_or(AUDIT_NOT_RUN),
        };
    }
    cause(e).unwrap_or(FAILED)
}

/// A config error or an unreachable part, wherever it is in `e`'s chain.
fn cause(e: &anyhow::Error) -> Option<u8> {
    e.chain().find_map(|c| {
        if c.downcast_ref::<ConfigError>().is_some() {
            return Some(CONFIG);
        }
        match c.downcast_ref::<Error>()? {
            Error::Config(_) => Some(CONFIG),
            Error::BrokerUnreachable { .. }
            | Error::KafkaRefused { .. }
            | Error::TopicMissing { .. }
            | Error::NoTopicMatches { .. }
            | Error::Store { .. }
            | Error::SchemaRegistry(_) => Some(UNREACHABLE),
            _ => None,
        }
    })
}
