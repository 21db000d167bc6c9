//! Records, partition positions and epochs: the data that flows consumer -> aggregator -> committer.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use deltalake::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::checkpoint::StateChanges;
use crate::decode::DeadLetter;
use crate::state::Output;

/// A Kafka topic-partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// Builds a topic-partition.
    pub fn new(topic: &str, partition: i32) -> Self {
        TopicPartition { topic: Arc::from(topic), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One Kafka record, owned, with its coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it came from.
    pub tp: TopicPartition,
    /// Its offset in the partition. Offsets are increasing but NOT contiguous: transaction
    /// markers and compaction leave gaps.
    pub offset: i64,
    /// Kafka timestamp in milliseconds since the epoch, when the broker gave one.
    pub timestamp_ms: Option<i64>,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
}

/// What the decode stage reads of a record: implemented by the owned [`Record`] and by the
/// consumers' [`crate::fetch::Msg`], so consumers decode straight from librdkafka's buffers
/// without copying each record first.
pub trait RecordView {
    /// Topic name.
    fn topic(&self) -> &str;
    /// Partition number.
    fn partition(&self) -> i32;
    /// Offset in the partition.
    fn offset(&self) -> i64;
    /// Kafka timestamp (ms), when the broker gave one.
    fn timestamp_ms(&self) -> Option<i64>;
    /// Key bytes.
    fn key(&self) -> Option<&[u8]>;
    /// Value bytes; `None` for a tombstone.
    fn payload(&self) -> Option<&[u8]>;
}

impl RecordView for Record {
    fn topic(&self) -> &str {
        &self.tp.topic
    }
    fn partition(&self) -> i32 {
        self.tp.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }
}

/// The next offset to read, per partition: a consistent cut of the input.
///
/// "Next offset" is the offset after the last record consumed, so resuming there never re-reads
/// a consumed record and never skips an unread one, gaps included.
pub type Offsets = BTreeMap<TopicPartition, i64>;

/// The records of one partition inside one epoch: offsets `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    /// The partition.
    pub tp: TopicPartition,
    /// First offset the epoch may contain (the previous epoch's `end`).
    pub start: i64,
    /// Next offset after the epoch (where the next epoch starts).
    pub end: i64,
    /// Records in the range (fewer than `end - start` when the partition has gaps).
    pub records: u64,
}

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
    /// Records dropped as duplicates.
    pub duplicates: u64,
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
