//! Sinks: where the committer writes a closed epoch.
//!
//! A sink commits one epoch atomically and, if it is durable, remembers which epoch it committed
//! last and where that epoch ended, so recovery can tell "committed but not checkpointed" from
//! "not committed", and a replayed epoch is never written twice.

pub mod channel;
pub mod console;
pub mod delta;
pub mod parquet;
pub mod schema;
pub mod storage;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::config::{PipelineConfig, SinkConfig};
use crate::decode::Decoder;
use crate::error::Result;
use crate::failpoint::FailPoints;
use crate::record::{EpochBatch, Offsets, TopicPartition};

/// An epoch a table holds and the cut it recorded: what a replay re-cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEpoch {
    /// The epoch.
    pub epoch: u64,
    /// The cut that epoch ended at (partitions it recorded).
    pub offsets: Offsets,
}

/// Where partitions a table never recorded start, resolved from Kafka.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unrecorded {
    /// `source.starting_offsets`: for partitions of a topic the table never recorded.
    pub starting: Offsets,
    /// The earliest offsets: for partitions added to a topic the table recorded (as one-process
    /// mode reads a new partition).
    pub earliest: Offsets,
}

impl Unrecorded {
    /// Both the same (`starting_offsets = "earliest"`, or tests).
    pub fn same(offsets: Offsets) -> Self {
        Unrecorded { starting: offsets.clone(), earliest: offsets }
    }
}

/// A destination for committed epochs. Implementations are shared across actor restarts, so they
/// take `&self` and keep any mutable state behind their own locks.
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// What each of the sink's tables records of the pipeline (its epoch, its cut over
    /// `partitions`), for [`crate::recovery::plan`]; `None` if the sink records nothing (console,
    /// channel: recovery then trusts the checkpoint alone).
    /// Re-reads storage.
    fn recorded<'a>(&'a self, partitions: &'a [TopicPartition]) -> BoxFuture<'a, Result<Option<crate::recovery::Recorded>>>;

    /// Commits one epoch, all or nothing. Called in epoch order by the committer only. A durable
    /// sink skips what it already holds, so committing a replayed epoch again is harmless.
    fn commit<'a>(&'a self, batch: &'a EpochBatch) -> BoxFuture<'a, Result<()>>;

    /// Group mode (`source.group_id`): claims `partitions` for this member and says where each
    /// resumes, by the table's own record; a partition the table never recorded is pinned where
    /// `unrecorded` says (`starting_offsets` for a topic the table never recorded, earliest for
    /// a partition added to a topic it did). From then on a commit of one of them fails with
    /// [`crate::Error::Fenced`] once another member has claimed it.
    fn group_claim<'a>(&'a self, partitions: &'a [TopicPartition], unrecorded: &'a Unrecorded) -> BoxFuture<'a, Result<Offsets>> {
        let _ = (partitions, unrecorded);
        Box::pin(async { Err(crate::Error::Sink(format!("group mode needs a Delta sink, not `{}`", self.name()))) })
    }

    /// Group mode: refuses topics whose id differs from the one the table recorded (deleted and
    /// created again since), and records the ids of topics it has none for.
    fn check_topic_ids<'a>(&'a self, current: &'a std::collections::BTreeMap<String, String>) -> BoxFuture<'a, Result<()>> {
        let _ = current;
        Box::pin(async { Ok(()) })
    }

    /// Group mode: where `partitions`, claimed by this member before, resume by the table's
    /// record, without claiming them again: a member that lost them meanwhile is fenced at its
    /// next commit instead of taking them back.
    fn group_reposition<'a>(&'a self, partitions: &'a [TopicPartition]) -> BoxFuture<'a, Result<Offsets>> {
        let _ = partitions;
        Box::pin(async { Err(crate::Error::Sink(format!("group mode needs a Delta sink, not `{}`", self.name()))) })
    }

    /// Checks, before the pipeline starts, that the sink's storage can be written (an object
    /// store answers, accepts the credentials, refuses overwrites on put-if-absent). One clear
    /// error otherwise.
    fn preflight(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// The data table's files and compactions, as its maintenance last saw them (progress).
    fn table_stats(&self) -> Option<crate::maintenance::TableStats> {
        None
    }
}

/// Builds the sink a config names.
pub fn from_config(config: &PipelineConfig, failpoints: Arc<FailPoints>) -> Arc<dyn Sink> {
    match &config.sink {
        SinkConfig::Console { num_rows } => Arc::new(console::ConsoleSink::stdout(*num_rows)),
        SinkConfig::Delta { .. } => {
            let decoder = Decoder::for_table(config);
            let (schema, partition_by) = match &config.aggregate {
                Some(a) => (
                    crate::decode::with_epoch_field(&crate::state::result_schema(&decoder.schema(), a)),
                    vec![crate::state::BUCKET_COL.to_string()],
                ),
                None => (decoder.output_schema(), config.sink.partition_by().to_vec()),
            };
            let sink = delta::DeltaSink::new(
                &config.id,
                (
                    config.table_path().expect("a delta sink"),
                    crate::maintenance::Settings::of(&config.sink, config.aggregate.is_some()).expect("a delta sink"),
                ),
                (
                    config.dead_letter_path().expect("a delta sink"),
                    crate::maintenance::Settings::of(&config.sink, false).expect("a delta sink"),
                ),
                schema,
                partition_by,
                failpoints,
            )
            .evolving(config.sink.schema_evolution())
            .meaning(crate::recovery::meaning(config))
            .taking_writer_columns(config.takes_writer_columns());
            let sink = match &config.sink {
                SinkConfig::Delta { outputs, .. } if !outputs.is_empty() => {
                    let rows = decoder.schema();
                    let fan_out = crate::transform::Outputs::new(outputs, &rows).expect("sink.outputs (checked at start)");
                    let tables = outputs
                        .iter()
                        .zip(fan_out.schemas(&rows))
                        .map(|(o, out)| {
                            (
                                config.output_path(o),
                                crate::maintenance::Settings::of(&config.sink, false).expect("a delta sink"),
                                crate::decode::with_epoch_field(&out),
                                o.partition_by.clone(),
                            )
                        })
                        .collect();
                    sink.with_outputs(tables, fan_out)
                }
                _ => sink,
            };
            match &config.source.group_id {
                Some(_) => Arc::new(sink.in_group(crate::group::member_name())),
                None => Arc::new(sink),
            }
        }
    }
}
