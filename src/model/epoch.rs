//! What a table records of the epochs it holds, and what decided their rows.

use std::collections::BTreeMap;

use super::record::{Offsets, PartitionRange};

/// What decides an epoch's rows, part by part (`decode`, `transform`, `outputs`), each as a
/// fingerprint.
pub type Meaning = BTreeMap<String, String>;

/// An epoch a table holds and the cut it recorded: what a replay re-cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEpoch {
    /// The epoch.
    pub epoch: u64,
    /// The cut that epoch ended at (partitions it recorded).
    pub offsets: Offsets,
}

/// An epoch's commit as the data table recorded it: where each partition's part started and
/// ended (what a catch-up re-cuts, and how it knows the epochs link up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRanges {
    /// The epoch.
    pub epoch: u64,
    /// Its ranges, per partition it recorded.
    pub ranges: Vec<PartitionRange>,
}

/// What one table records of the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRecord {
    /// Where it is (for messages).
    pub name: String,
    /// The pipeline's epoch txn version (0: none, or no table).
    pub epoch: u64,
    /// The next offset it records per partition.
    pub cut: Offsets,
}

/// What a durable sink's tables record, read together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The data table.
    pub data: TableRecord,
    /// `sink.outputs`' tables, in order.
    pub outputs: Vec<TableRecord>,
    /// The dead-letter table.
    pub dead: TableRecord,
    /// The data table's mark: the last epoch that had dead letters (0: none, or a table
    /// written before the mark existed).
    pub dead_mark: u64,
    /// Where the data table's epoch started, per partition of its commit (`None`: unknown).
    pub starts: Option<Offsets>,
    /// The data table records partitions' offsets but no epoch: group mode wrote it.
    pub group_written: bool,
    /// What the data table's epoch meant, as its commit recorded it (`None`: not recorded).
    pub meaning: Option<Meaning>,
}

/// For a table that already holds the replayed epoch: the cut it recorded must be this epoch's
/// cut, over the partitions it recorded; a partition it did not record must have an empty range
/// (added to the topic since). `Err` describes the mismatch.
pub fn check_recorded_cut(recorded: &Offsets, ranges: &[PartitionRange]) -> std::result::Result<(), String> {
    let mut diffs = Vec::new();
    for r in ranges {
        match recorded.get(&r.tp) {
            Some(end) if *end == r.end => {}
            Some(end) => diffs.push(format!("{}: table {end}, replay {}", r.tp, r.end)),
            None if r.start == r.end => {}
            None => diffs.push(format!("{}: not in the table, replay [{}, {})", r.tp, r.start, r.end)),
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("; "))
    }
}
