//! `exactly verify`: the audit that proves exactly-once. It reads the Delta table, its
//! dead-letter table and the Kafka topic, and reports per partition which offsets are missing,
//! duplicated or unexpected — comparing against the offsets Kafka actually holds, so the gaps
//! real Kafka has (transaction markers, compaction) are never reported as missing.
//!
//! In the order it runs: `read` the tables and the topics' metadata, audit each
//! `partition` against Kafka's records (and each `outputs` table with it), then the
//! `keys` of a dedup or aggregate pipeline (`upsert`: an upsert table against the state its
//! topic implies), then the log's rules (`fencing`: each epoch
//! committed once, no commit by a fenced member); `render` prints the report.

mod fencing;
mod keys;
mod outputs;
mod partition;
mod read;
mod render;
mod upsert;

pub use fencing::{check_fencing, member_commits, MemberCommit, EPOCH_SCAN};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::logstore::object_store::path::Path as ObjectPath;
use deltalake::DeltaTable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{AggregateConfig, AggregateOp, PipelineConfig, TableLocation};
use crate::error::{Error, Result};
use crate::model::{Record, TopicPartition};
use crate::model::{EPOCH_COL, OFFSET_COL, PARTITION_COL, TOPIC_COL};
use crate::sink::delta::{load_table, partition_app_id, start_app_id, txn_version};
use crate::sink::schema::AddedAt;
use crate::source;

/// The audit of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionAudit {
    /// The partition.
    pub tp: Option<TopicPartition>,
    /// First offset the pipeline read (recorded in the table).
    pub start: i64,
    /// The committed cut: next offset after the last committed epoch.
    pub end: i64,
    /// Offsets Kafka holds in `[start, end)` (what must be in the tables once each).
    pub expected: u64,
    /// Rows found in the data table.
    pub rows: u64,
    /// Rows found in the dead-letter table.
    pub dead_lettered: u64,
    /// Expected offsets the transform's filter drops (evaluated again on Kafka's records): in
    /// neither table, and not missing.
    pub filtered: u64,
    /// Expected offsets found in neither table.
    pub missing: u64,
    /// Extra copies of offsets found more than once (across both tables).
    pub duplicated: u64,
    /// Offsets found in a table that Kafka does not hold in the committed range (or rows of a
    /// partition the table recorded no range for).
    pub unexpected: u64,
    /// Rows whose columns differ from the decode of the Kafka record at their coordinates, and
    /// dead letters whose key or value differ from that record's bytes.
    pub mismatched: u64,
    /// The topic's partition holds records but the table recorded no progress for it: the
    /// pipeline never read it (every record it holds counts as missing).
    pub unread: bool,
    /// Offsets found in a table that Kafka no longer holds (deleted by retention): counted, not
    /// judged.
    pub unverifiable: u64,
    /// Offsets Kafka deleted before the pipeline read them, which it skipped as
    /// `source.on_data_loss = "skip"` allows (recorded in its commits): not missing.
    pub skipped: u64,
    /// A few missing offsets, to look at.
    pub missing_sample: Vec<i64>,
    /// A few content mismatches, to look at.
    pub mismatch_sample: Vec<String>,
}

/// The whole audit.
#[derive(Debug, Clone)]
pub struct Audit {
    /// Pipeline id.
    pub pipeline: String,
    /// The data table.
    pub table: TableLocation,
    /// The dead-letter table.
    pub dead_letter_table: TableLocation,
    /// The last committed epoch in the data table.
    pub epoch: u64,
    /// Per partition.
    pub partitions: Vec<PartitionAudit>,
    /// Parquet files in the table directories that the current version does not reference:
    /// removed by a compaction or a bucket rewrite, or written by an epoch or a compaction that
    /// never committed; `exactly vacuum` deletes them once past the retention.
    pub orphan_files: Vec<String>,
    /// Key-level checks of dedup and aggregation pipelines.
    pub keys: Option<KeyAudit>,
    /// Group mode: data commits per member, from the commits the log still holds.
    pub members: BTreeMap<String, u64>,
    /// Group mode: commits of a partition by a member that was not its last claimant (another
    /// member had claimed it since): each a fencing failure.
    pub fencing: Vec<String>,
    /// `sink.outputs`: each output table against the topic, through the same fan-out.
    pub outputs: Vec<OutputAudit>,
    /// Epochs of the pipeline committed more than once to one table (data, outputs, dead
    /// letters), among each table's newest [`EPOCH_SCAN`] commits: each a broken commit rule.
    pub twice: Vec<String>,
}

/// One `sink.outputs` table against the topic: each record its `where` keeps exactly once,
/// with the columns its `select` makes, within the range that table recorded.
#[derive(Debug, Clone)]
pub struct OutputAudit {
    /// The output's name.
    pub name: String,
    /// Its table.
    pub table: TableLocation,
    /// Per partition (`expected`: the records of its range the output keeps; `filtered`: those
    /// it does not).
    pub partitions: Vec<PartitionAudit>,
}

impl OutputAudit {
    /// Sum of `f` over the output's partitions (as [`Audit::total`] for the main table).
    pub fn total(&self, f: impl Fn(&PartitionAudit) -> u64) -> u64 {
        self.partitions.iter().map(f).sum()
    }
}

/// Key-level checks: for dedup, every key of the topic's committed range in the table exactly
/// once; for aggregation, every group's aggregates equal to a recomputation from the topic; for
/// upserts, each key's row the one of its last change, and no deleted key present.
#[derive(Debug, Clone, Default)]
pub struct KeyAudit {
    /// `dedup` or `aggregate`.
    pub kind: String,
    /// Distinct keys (or groups) recomputed from the topic.
    pub expected: u64,
    /// Keys (or groups) in the table.
    pub found: u64,
    /// Keys in the topic that are not in the table.
    pub missing: u64,
    /// Keys in the table more than once.
    pub duplicated: u64,
    /// Groups whose aggregates differ from the recomputation (aggregation); keys whose row is
    /// not the one of their last change (upserts: a stale row).
    pub mismatched: u64,
    /// Upserts: keys in the table whose last change deletes them.
    pub deleted_present: u64,
    /// Upserts: keys in the table that no committed record changes.
    pub unexpected: u64,
    /// Upserts: keys changed in several partitions in records whose epoch the table's log no
    /// longer records: their order is not known, so they are counted, not judged.
    pub unordered: u64,
    /// A few problems, to look at.
    pub samples: Vec<String>,
}

impl Audit {
    /// Nothing missing, duplicated, unexpected or mismatched.
    pub fn ok(&self) -> bool {
        let clean = |p: &PartitionAudit| p.missing == 0 && p.duplicated == 0 && p.unexpected == 0 && p.mismatched == 0;
        self.fencing.is_empty()
            && self.twice.is_empty()
            && self.partitions.iter().all(clean)
            && self.outputs.iter().all(|o| o.partitions.iter().all(clean))
            && self.keys.as_ref().is_none_or(|k| {
                k.missing == 0 && k.duplicated == 0 && k.mismatched == 0 && k.deleted_present == 0 && k.unexpected == 0
            })
    }

    /// Sum of a field over partitions.
    pub fn total(&self, f: impl Fn(&PartitionAudit) -> u64) -> u64 {
        self.partitions.iter().map(f).sum()
    }
}

/// Audits `config`'s tables against its topics: every committed offset once, as Kafka holds it.
pub async fn verify(config: &PipelineConfig) -> Result<Audit> {
    let (tables, mut outputs) = read::Tables::read(config).await?;
    let mut audits = Vec::new();
    let mut kafka_rows = Vec::new();
    for tp in tables.partitions_seen() {
        let Some((audit, rows)) = partition::audit(config, &tables, &mut outputs, tp).await? else { continue };
        audits.push(audit);
        kafka_rows.extend(rows);
    }
    let keys = match &config.upsert {
        Some(u) => {
            let epochs = upsert::epoch_ranges(&tables.table, &tables.path, &config.id).await?;
            Some(upsert::audit(u, &kafka_rows, &tables, &epochs)?)
        }
        None => keys::audit(config, &kafka_rows, &tables)?,
    };
    let (id, path, dead_path) = (&config.id, &tables.path, &tables.dead_path);
    // A group's table: the fencing rule on its log (reading every commit a one-process table
    // keeps would cost the audit a read per epoch for nothing).
    let (members, fencing) = if config.source.group_id.is_some() || (tables.epoch == 0 && !tables.ranges.is_empty()) {
        check_fencing(&member_commits(&tables.table).await?)
    } else {
        (BTreeMap::new(), Vec::new())
    };
    // Each epoch lands in each table once (ARCHITECTURE.md, "The commit rule").
    let mut twice = fencing::epochs_committed_twice(&tables.table, path, id).await?;
    if let Some(t) = &tables.dead_table {
        twice.extend(fencing::epochs_committed_twice(t, dead_path, id).await?);
    }
    for o in &outputs {
        if let Some(t) = load_table(o.audit.table.clone()).await? {
            twice.extend(fencing::epochs_committed_twice(&t, &o.audit.table, id).await?);
        }
    }
    Ok(Audit {
        twice,
        pipeline: id.clone(),
        table: path.clone(),
        dead_letter_table: dead_path.clone(),
        epoch: tables.epoch,
        partitions: audits,
        orphan_files: tables.orphan_files,
        keys,
        members,
        fencing,
        outputs: outputs.into_iter().map(|o| o.audit).collect(),
    })
}
