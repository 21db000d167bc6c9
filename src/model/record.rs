//! Records, partition positions and epochs: the data that flows consumer -> aggregator -> committer.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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
    /// Its headers, in order (a key may repeat; a value may be null).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// What the decode stage reads of a record: implemented by the owned [`Record`] and by the
/// consumers' `source::fetch::Msg`, so consumers decode straight from librdkafka's buffers
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
    /// Headers, in order (read only for `decode.include_headers`).
    fn headers(&self) -> Vec<(&str, Option<&[u8]>)>;
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
    fn headers(&self) -> Vec<(&str, Option<&[u8]>)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect()
    }
}

/// The next offset to read, per partition: a consistent cut of the input.
///
/// "Next offset" is the offset after the last record consumed, so resuming there never re-reads
/// a consumed record and never skips an unread one, gaps included.
pub type Offsets = BTreeMap<TopicPartition, i64>;

/// Offsets `[from, to)` of a partition that Kafka deleted before the pipeline read them, skipped
/// by `source.on_data_loss = "skip"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The partition.
    pub tp: TopicPartition,
    /// First skipped offset.
    pub from: i64,
    /// First offset after them.
    pub to: i64,
}

impl Skipped {
    /// Where a consumer of `tp` positioned at `start` reads from: past its skipped offsets.
    pub fn read_from(skipped: &[Skipped], tp: &TopicPartition, start: i64) -> i64 {
        skipped.iter().find(|s| s.tp == *tp).map_or(start, |s| s.to)
    }
}

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
