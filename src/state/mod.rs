//! Stateful processing on RocksDB: deduplication with bounded retention and keyed aggregation.
//!
//! Both run when an epoch closes, over the epoch's rows in a canonical order (partition, then
//! offset), against the state of the last committed epoch. So the output and the staged state
//! changes depend only on the records and the state at C — never on arrival order or wall
//! clock — and replaying an epoch after a crash reproduces them exactly. The changes are
//! written with the epoch's checkpoint, in one RocksDB batch, after the sink commit
//! ([`crate::state::checkpoint::CheckpointStore::commit`]).
//!
//! With one barrier in flight at a time, epoch E+1 closes only after E's checkpoint is written,
//! so reading RocksDB always sees the state of the previous epoch: no overlay is needed.

mod aggregate;
pub mod checkpoint;
mod dedup;
mod keys;
mod partitioned;
pub mod persist;
mod upsert;

pub use aggregate::result_schema;
use keys::*;
pub use partitioned::{PartitionProcessed, PartitionStates, RestoreRead};
pub use upsert::Relocated;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Date32Array, Date32Builder, Float32Array,
    Float64Array, Float64Builder, Int32Array, Int32Builder, Int64Array, Int64Builder, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;

use crate::config::{AggregateConfig, AggregateOp, DedupConfig, OutputMode, UpsertConfig};
use crate::decode::DeadLetter;
use crate::error::{Error, Result};
use crate::model::Rejection;
use crate::state::checkpoint::{CheckpointStore, StateChanges};

use crate::model::BUCKET_COL;

/// What an epoch writes to the data table.
#[derive(Debug, Clone)]
pub enum Output {
    /// Append these rows (append pipelines, with or without dedup).
    Append(Vec<RecordBatch>),
    /// Replace the rows of these `_bucket`s (`None`: all of them) with these rows (aggregation).
    Replace {
        /// Buckets whose files are replaced; `None` replaces the whole table (complete mode).
        buckets: Option<Vec<u32>>,
        /// The new rows of those buckets.
        rows: Vec<RecordBatch>,
        /// The output mode, for the Delta operation.
        mode: OutputMode,
    },
    /// Upserts (`[upsert]`): append these rows as the epoch's one file (its id: the epoch
    /// number; row i of `rows` at position i), and mark these rows of earlier epochs' files
    /// deleted (file id, positions ascending; files ascending).
    Upsert {
        /// The keys' new rows.
        rows: Vec<RecordBatch>,
        /// The rows they supersede, and the deleted keys' rows.
        deletes: Vec<(u64, Vec<u32>)>,
    },
}

impl Output {
    /// The rows written.
    pub fn rows(&self) -> &[RecordBatch] {
        match self {
            Output::Append(r) => r,
            Output::Replace { rows, .. } | Output::Upsert { rows, .. } => rows,
        }
    }
}

/// What stateful processing made of an epoch.
#[derive(Debug, Clone)]
pub struct Processed {
    /// Rows for the data table.
    pub output: Output,
    /// Records too late for the watermark (dead-lettered, never silently dropped).
    pub late: Vec<DeadLetter>,
    /// The state changes to write with the checkpoint.
    pub changes: StateChanges,
    /// Records dropped as duplicates.
    pub duplicates: u64,
    /// Changes ignored as older (`upsert.sequence_by`) than what their key holds.
    pub superseded: u64,
}

/// `[upsert]`: the key, where each row says whether it deletes and its sequence, and the
/// table's columns.
struct Upsert {
    key: Vec<usize>,
    delete: usize,
    sequence: Option<usize>,
    /// The decoded columns the table holds, and its schema (without `_epoch`).
    columns: Vec<usize>,
    schema: SchemaRef,
}

struct Dedup {
    key: Vec<usize>,
    watermark: Option<usize>,
    lateness_ms: i64,
    max_future_ms: i64,
    max_age: Option<u64>,
}

struct Agg {
    group: Vec<usize>,
    aggs: Vec<(AggregateOp, Option<usize>)>,
    mode: OutputMode,
    buckets: u32,
    /// The first `_bucket` (`state.scope = "partition"`: the partition's own range).
    base: u32,
    schema: SchemaRef,
}

/// A pipeline's keyed stages, by `state.scope`.
#[derive(Clone)]
pub enum Keyed {
    /// One state for every partition the process reads (one process).
    Process(Arc<Processor>),
    /// Each partition's own state (group mode).
    Partition(Arc<PartitionStates>),
}

/// Runs dedup, aggregation or upserts for closed epochs.
pub struct Processor {
    dedup: Option<Dedup>,
    agg: Option<Agg>,
    upsert: Option<Upsert>,
    store: CheckpointStore,
}

fn index(schema: &Schema, name: &str) -> Result<usize> {
    schema.index_of(name).map_err(|_| Error::Sink(format!("no decoded column {name}")))
}

impl Processor {
    /// A processor for the configured stages over rows of `decoded`; `None` when the pipeline
    /// has no stateful stage. `upsert`: the key and the schema of the table's rows (with
    /// `_epoch`).
    pub fn new(
        decoded: &Schema,
        dedup: Option<&DedupConfig>,
        aggregate: Option<&AggregateConfig>,
        upsert: Option<(&UpsertConfig, &Schema)>,
        store: CheckpointStore,
    ) -> Result<Option<Processor>> {
        if dedup.is_none() && aggregate.is_none() && upsert.is_none() {
            return Ok(None);
        }
        let upsert = match upsert {
            None => None,
            Some((u, table)) => {
                let fields: Vec<Field> =
                    table.fields().iter().filter(|f| f.name() != crate::model::EPOCH_COL).map(|f| f.as_ref().clone()).collect();
                Some(Upsert {
                    key: u.key.iter().map(|k| index(decoded, k)).collect::<Result<_>>()?,
                    delete: index(decoded, crate::model::CHANGE_DELETE_COL)?,
                    sequence: u.sequence_by.as_ref().map(|_| index(decoded, crate::model::CHANGE_SEQUENCE_COL)).transpose()?,
                    columns: fields.iter().map(|f| index(decoded, f.name())).collect::<Result<_>>()?,
                    schema: Arc::new(Schema::new(fields)),
                })
            }
        };
        let dedup = match dedup {
            None => None,
            Some(d) => Some(Dedup {
                key: d.key.iter().map(|k| index(decoded, k)).collect::<Result<_>>()?,
                watermark: d.watermark_field.as_deref().map(|w| index(decoded, w)).transpose()?,
                lateness_ms: d.allowed_lateness_ms as i64,
                max_future_ms: d.max_future_ms.min(i64::MAX as u64) as i64,
                max_age: d.max_age_epochs,
            }),
        };
        let agg = match aggregate {
            None => None,
            Some(a) => Some(Agg {
                group: a.group_by.iter().map(|g| index(decoded, g)).collect::<Result<_>>()?,
                aggs: a
                    .aggregates
                    .iter()
                    .map(|s| Ok((s.op, s.field.as_deref().map(|f| index(decoded, f)).transpose()?)))
                    .collect::<Result<_>>()?,
                mode: a.output_mode,
                buckets: a.buckets,
                base: 0,
                schema: result_schema(decoded, a).map_err(|e| Error::Sink(format!("aggregate.group_by {e}")))?,
            }),
        };
        Ok(Some(Processor { dedup, agg, upsert, store }))
    }

    /// The processor with its aggregate's keys in `_bucket`s `base .. base + buckets`.
    fn with_bucket_base(mut self, base: u32) -> Processor {
        if let Some(a) = self.agg.as_mut() {
            a.base = base;
        }
        self
    }

    /// Processes epoch `epoch`'s rows (in canonical order). Blocking: reads RocksDB.
    pub fn process(&self, epoch: u64, rows: Vec<RecordBatch>) -> Result<Processed> {
        let mut changes = StateChanges::default();
        let mut late = Vec::new();
        let mut duplicates = 0;
        if let Some(u) = &self.upsert {
            let folded = self.upsert(u, epoch, rows, &mut changes)?;
            return Ok(Processed { output: folded.output, late, changes, duplicates, superseded: folded.superseded });
        }
        let rows = match &self.dedup {
            None => rows,
            Some(d) => self.dedup(d, epoch, rows, &mut changes, &mut late, &mut duplicates)?,
        };
        // The raw key/value columns were kept only to dead-letter rows; they are never written.
        let rows: Vec<RecordBatch> = rows.iter().map(crate::decode::without_raw).collect();
        let output = match &self.agg {
            None => Output::Append(rows),
            Some(a) => self.aggregate(a, epoch, &rows, &mut changes)?,
        };
        Ok(Processed { output, late, changes, duplicates, superseded: 0 })
    }
}
