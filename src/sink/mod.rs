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

use futures::future::BoxFuture;

use crate::error::Result;
use deltalake::arrow::record_batch::RecordBatch;

use crate::decode::DeadLetter;
use crate::model::{Offsets, PartitionRange, TopicPartition};
use crate::state::checkpoint::StateChanges;
use crate::state::Output;

/// A closed epoch, ready to commit: every record between the previous cut and this one,
/// decoded into rows or dead letters.
#[derive(Debug, Clone)]
pub struct EpochBatch {
    /// Epoch number; epoch 1 is the first with data, 0 means "nothing committed yet".
    pub epoch: u64,
    /// Per-partition ranges, one for every assigned partition.
    pub ranges: Vec<PartitionRange>,
    /// What the data table gets: rows to append, or result buckets to replace.
    pub output: Output,
    /// Records that did not decode (or came too late for the watermark).
    pub dead_letters: Vec<DeadLetter>,
    /// Oldest Kafka timestamp in the epoch (ms), for end-to-end latency.
    pub min_timestamp_ms: Option<i64>,
    /// The keyed-state changes to write with this epoch's checkpoint.
    pub state: StateChanges,
    /// `state.scope = "partition"`: per partition, its range's end and the changes to write
    /// with it.
    pub partition_state: std::collections::BTreeMap<TopicPartition, (i64, StateChanges)>,
    /// Offsets Kafka deleted before they were read, skipped within this epoch's ranges
    /// (`source.on_data_loss = "skip"`).
    pub skipped: Vec<crate::model::Skipped>,
    /// Records dropped as duplicates.
    pub duplicates: u64,
    /// Changes ignored as older (`upsert.sequence_by`) than what their key holds.
    pub superseded: u64,
    /// Records the transform's filter dropped (`transform.where`).
    pub filtered: u64,
    /// Time the stateful stages (dedup, aggregation) took over this epoch.
    pub state_time: std::time::Duration,
}

impl EpochBatch {
    /// The end offsets (the cut) of this epoch.
    pub fn end_offsets(&self) -> Offsets {
        self.ranges.iter().map(|r| (r.tp.clone(), r.end)).collect()
    }

    /// Records consumed in this epoch (rows plus dead letters).
    pub fn input_records(&self) -> u64 {
        self.ranges.iter().map(|r| r.records).sum()
    }

    /// Rows to commit.
    pub fn row_count(&self) -> usize {
        self.output.rows().iter().map(RecordBatch::num_rows).sum()
    }

    /// True when no partition moved: nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.ranges.iter().all(|r| r.start == r.end && r.records == 0)
    }
}

/// What a sink's commit of an epoch did besides holding it.
#[derive(Debug, Default)]
pub struct Committed {
    /// Rows the commit moved to another file (an upsert table's compaction): the upsert index
    /// takes their new places in the epoch's checkpoint.
    pub relocated: Option<crate::state::Relocated>,
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

/// Where rows read from a table go, batch by batch.
pub type EachBatch<'a> = &'a mut (dyn FnMut(RecordBatch) -> Result<()> + Send);

/// A destination for committed epochs. Implementations are shared across actor restarts, so they
/// take `&self` and keep any mutable state behind their own locks.
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// What each of the sink's tables records of the pipeline (its epoch, its cut over
    /// `partitions`), for `runtime::recovery::decide`; `None` if the sink records nothing (console,
    /// channel: recovery then trusts the checkpoint alone).
    /// Re-reads storage.
    fn recorded<'a>(&'a self, partitions: &'a [TopicPartition]) -> BoxFuture<'a, Result<Option<crate::model::Recorded>>>;

    /// Commits one epoch, all or nothing. Called in epoch order by the committer only. A durable
    /// sink skips what it already holds, so committing a replayed epoch again is harmless.
    fn commit<'a>(&'a self, batch: &'a EpochBatch) -> BoxFuture<'a, Result<Committed>>;

    /// An epoch every table holds already, re-run by a catch-up for its state: writes nothing,
    /// and says what its commit changed besides rows (the rows an upsert compaction moved).
    fn held<'a>(&'a self, batch: &'a EpochBatch) -> BoxFuture<'a, Result<Committed>> {
        let _ = batch;
        Box::pin(async { Ok(Committed::default()) })
    }

    /// What the data table's commits recorded of epochs `from ..= to` (oldest first; a commit
    /// the log no longer holds is left out), for a catch-up.
    fn epochs<'a>(&'a self, from: u64, to: u64) -> BoxFuture<'a, Result<Vec<crate::model::EpochRanges>>> {
        let _ = (from, to);
        Box::pin(async { Err(crate::Error::Sink(format!("`{}` records no epochs to catch up from", self.name()))) })
    }

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

    /// Group mode, `state.scope = "partition"`: the data table's record of `partitions` (read
    /// now); with `read`, the rows it names (of the files of its buckets only, when it names
    /// some) handed to `each` file by file, from a snapshot at least as new.
    fn group_state<'a>(
        &'a self,
        partitions: &'a [TopicPartition],
        read: Option<(&'a crate::state::RestoreRead, EachBatch<'a>)>,
    ) -> BoxFuture<'a, Result<Offsets>> {
        let _ = (partitions, read);
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
