//! Sinks: where the committer writes a closed epoch.
//!
//! A sink commits one epoch atomically and, if it is durable, remembers which epoch it committed
//! last, so recovery can tell "committed but not checkpointed" from "not committed".

pub mod channel;
pub mod console;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::config::SinkConfig;
use crate::error::Result;
use crate::record::{EpochBatch, Offsets};

/// What a durable sink knows it committed last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEpoch {
    /// The epoch.
    pub epoch: u64,
    /// The cut that epoch ended at.
    pub offsets: Offsets,
}

/// A destination for committed epochs. Implementations are shared across actor restarts, so they
/// take `&self` and keep any mutable state behind their own locks.
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// The last epoch this sink durably committed for the pipeline, if it records that
    /// (a Delta table does, in its `txn` actions; the console does not).
    fn committed_epoch(&self) -> BoxFuture<'_, Result<Option<CommittedEpoch>>>;

    /// Commits one epoch, all or nothing. Called once per epoch, in epoch order, by the
    /// committer only.
    fn commit<'a>(&'a self, batch: &'a EpochBatch) -> BoxFuture<'a, Result<()>>;
}

/// Builds the sink a config names.
pub fn from_config(config: &SinkConfig) -> Arc<dyn Sink> {
    match config {
        SinkConfig::Console { num_rows } => Arc::new(console::ConsoleSink::stdout(*num_rows)),
    }
}
