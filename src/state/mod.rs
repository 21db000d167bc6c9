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

pub mod checkpoint;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Date32Array, Date32Builder, Float32Array,
    Float64Array, Float64Builder, Int32Array, Int32Builder, Int64Array, Int64Builder, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;

use crate::config::{AggregateConfig, AggregateOp, DedupConfig, OutputMode};
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
}

impl Output {
    /// The rows written.
    pub fn rows(&self) -> &[RecordBatch] {
        match self {
            Output::Append(r) => r,
            Output::Replace { rows, .. } => rows,
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
}

/// A value of a key column.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Null,
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Bin(Vec<u8>),
}

/// A key column, downcast once per batch: [`KeyCol::encode`] appends a row's value to a key
/// (a tag byte, then the value; strings and bytes length-prefixed; null is the tag alone).
enum KeyCol<'a> {
    I64(&'a Int64Array),
    I32(&'a Int32Array),
    Date(&'a Date32Array),
    Ts(&'a TimestampMicrosecondArray),
    F64(&'a Float64Array),
    Bool(&'a BooleanArray),
    Str(&'a StringArray),
    Bin(&'a BinaryArray),
}

impl<'a> KeyCol<'a> {
    fn new(col: &'a ArrayRef) -> Result<KeyCol<'a>> {
        Ok(match col.data_type() {
            DataType::Int64 => KeyCol::I64(col.as_primitive()),
            DataType::Int32 => KeyCol::I32(col.as_primitive()),
            DataType::Date32 => KeyCol::Date(col.as_primitive()),
            DataType::Timestamp(TimeUnit::Microsecond, _) => KeyCol::Ts(col.as_primitive()),
            DataType::Float64 => KeyCol::F64(col.as_primitive()),
            DataType::Boolean => KeyCol::Bool(col.as_boolean()),
            DataType::Utf8 => KeyCol::Str(col.as_string()),
            DataType::Binary => KeyCol::Bin(col.as_binary()),
            other => return Err(Error::Sink(format!("cannot use a {other} column as a key"))),
        })
    }

    /// The key columns `cols` of `batch`.
    fn of(batch: &'a RecordBatch, cols: &[usize]) -> Result<Vec<KeyCol<'a>>> {
        cols.iter().map(|c| KeyCol::new(batch.column(*c))).collect()
    }

    fn encode(&self, i: usize, out: &mut Vec<u8>) {
        match self {
            KeyCol::I64(a) if a.is_valid(i) => push_i64(out, 1, a.value(i)),
            KeyCol::I32(a) if a.is_valid(i) => push_i64(out, 1, a.value(i) as i64),
            KeyCol::Date(a) if a.is_valid(i) => push_i64(out, 1, a.value(i) as i64),
            KeyCol::Ts(a) if a.is_valid(i) => push_i64(out, 1, a.value(i)),
            KeyCol::F64(a) if a.is_valid(i) => push_i64(out, 2, a.value(i).to_bits() as i64),
            KeyCol::Bool(a) if a.is_valid(i) => out.extend([3, u8::from(a.value(i))]),
            KeyCol::Str(a) if a.is_valid(i) => push_bytes(out, 4, a.value(i).as_bytes()),
            KeyCol::Bin(a) if a.is_valid(i) => push_bytes(out, 5, a.value(i)),
            _ => out.push(0),
        }
    }
}

fn push_i64(out: &mut Vec<u8>, tag: u8, v: i64) {
    out.push(tag);
    out.extend(v.to_be_bytes());
}

fn push_bytes(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    out.push(tag);
    out.extend((b.len() as u32).to_be_bytes());
    out.extend(b);
}

fn decode_key(mut b: &[u8]) -> Vec<Scalar> {
    let mut out = Vec::new();
    let take = |b: &mut &[u8], n: usize| {
        let (h, t) = b.split_at(n);
        *b = t;
        h.to_vec()
    };
    while let Some((&tag, rest)) = b.split_first() {
        b = rest;
        out.push(match tag {
            0 => Scalar::Null,
            1 => Scalar::I64(i64::from_be_bytes(take(&mut b, 8).try_into().unwrap())),
            2 => Scalar::F64(f64::from_bits(u64::from_be_bytes(take(&mut b, 8).try_into().unwrap()))),
            3 => Scalar::Bool(take(&mut b, 1)[0] != 0),
            4 | 5 => {
                let n = u32::from_be_bytes(take(&mut b, 4).try_into().unwrap()) as usize;
                let bytes = take(&mut b, n);
                if tag == 4 {
                    Scalar::Str(String::from_utf8(bytes).unwrap_or_default())
                } else {
                    Scalar::Bin(bytes)
                }
            }
            _ => break,
        });
    }
    out
}

/// FNV-1a: a hash that never changes between versions (bucket numbers are persisted).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A number in an aggregate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    I(i64),
    F(f64),
}

/// The state of one group.
#[derive(Debug, Clone, PartialEq)]
struct AggState {
    count: i64,
    vals: Vec<Option<Num>>,
}

impl AggState {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.count.to_be_bytes().to_vec();
        for v in &self.vals {
            match v {
                None => out.extend([0u8; 9]),
                Some(Num::I(x)) => {
                    out.push(1);
                    out.extend(x.to_be_bytes());
                }
                Some(Num::F(x)) => {
                    out.push(2);
                    out.extend(x.to_bits().to_be_bytes());
                }
            }
        }
        out
    }

    fn decode(b: &[u8], n: usize) -> AggState {
        let count = i64::from_be_bytes(b[..8].try_into().unwrap());
        let vals = (0..n)
            .map(|i| {
                let at = 8 + i * 9;
                let raw: [u8; 8] = b[at + 1..at + 9].try_into().unwrap();
                match b[at] {
                    1 => Some(Num::I(i64::from_be_bytes(raw))),
                    2 => Some(Num::F(f64::from_bits(u64::from_be_bytes(raw)))),
                    _ => None,
                }
            })
            .collect();
        AggState { count, vals }
    }
}

/// A column aggregated by value, downcast once per batch (`None` for a type no aggregate reads:
/// its values count as null).
enum NumCol<'a> {
    I64(&'a Int64Array),
    I32(&'a Int32Array),
    Ts(&'a TimestampMicrosecondArray),
    F64(&'a Float64Array),
    F32(&'a Float32Array),
}

impl<'a> NumCol<'a> {
    fn new(col: &'a ArrayRef) -> Option<NumCol<'a>> {
        Some(match col.data_type() {
            DataType::Int64 => NumCol::I64(col.as_primitive()),
            DataType::Int32 => NumCol::I32(col.as_primitive()),
            DataType::Timestamp(TimeUnit::Microsecond, _) => NumCol::Ts(col.as_primitive()),
            DataType::Float64 => NumCol::F64(col.as_primitive()),
            DataType::Float32 => NumCol::F32(col.as_primitive()),
            _ => return None,
        })
    }

    fn get(&self, i: usize) -> Option<Num> {
        Some(match self {
            NumCol::I64(a) if a.is_valid(i) => Num::I(a.value(i)),
            NumCol::I32(a) if a.is_valid(i) => Num::I(a.value(i) as i64),
            NumCol::Ts(a) if a.is_valid(i) => Num::I(a.value(i)),
            NumCol::F64(a) if a.is_valid(i) => Num::F(a.value(i)),
            NumCol::F32(a) if a.is_valid(i) => Num::F(a.value(i) as f64),
            _ => return None,
        })
    }
}

fn combine(op: AggregateOp, acc: Option<Num>, v: Option<Num>) -> Option<Num> {
    let Some(v) = v else { return acc };
    let Some(a) = acc else { return Some(v) };
    Some(match (op, a, v) {
        (AggregateOp::Sum, Num::I(a), Num::I(b)) => Num::I(a.wrapping_add(b)),
        (AggregateOp::Sum, Num::F(a), Num::F(b)) => Num::F(a + b),
        (AggregateOp::Min, Num::I(a), Num::I(b)) => Num::I(a.min(b)),
        (AggregateOp::Min, Num::F(a), Num::F(b)) => Num::F(a.min(b)),
        (AggregateOp::Max, Num::I(a), Num::I(b)) => Num::I(a.max(b)),
        (AggregateOp::Max, Num::F(a), Num::F(b)) => Num::F(a.max(b)),
        (_, a, _) => a,
    })
}

/// The type an aggregate column has in the result table.
fn agg_type(op: AggregateOp, field: Option<&DataType>) -> DataType {
    match (op, field) {
        (AggregateOp::Count, _) => DataType::Int64,
        (_, Some(DataType::Float64 | DataType::Float32)) => DataType::Float64,
        (AggregateOp::Min | AggregateOp::Max, Some(t @ DataType::Timestamp(..))) => t.clone(),
        _ => DataType::Int64,
    }
}

/// The result table's schema (without `_epoch`, which the sink adds): group columns, aggregate
/// columns, `_bucket`.
/// `Err` names a group column the rows do not have.
pub fn result_schema(decoded: &Schema, config: &AggregateConfig) -> std::result::Result<SchemaRef, String> {
    let mut fields: Vec<Field> = config
        .group_by
        .iter()
        .map(|g| {
            Ok(decoded
                .field_with_name(g)
                .map_err(|_| format!("names {g:?}, which is not a decoded column"))?
                .clone()
                .with_nullable(true))
        })
        .collect::<std::result::Result<_, String>>()?;
    for a in &config.aggregates {
        let ft = a.field.as_ref().and_then(|f| decoded.field_with_name(f).ok()).map(|f| f.data_type().clone());
        fields.push(Field::new(a.column(), agg_type(a.op, ft.as_ref()), a.op != AggregateOp::Count));
    }
    fields.push(Field::new(BUCKET_COL, DataType::Int32, false));
    Ok(Arc::new(Schema::new(fields)))
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
    schema: SchemaRef,
}

/// Runs dedup and aggregation for closed epochs.
pub struct Processor {
    dedup: Option<Dedup>,
    agg: Option<Agg>,
    store: CheckpointStore,
}

fn index(schema: &Schema, name: &str) -> Result<usize> {
    schema.index_of(name).map_err(|_| Error::Sink(format!("no decoded column {name}")))
}

impl Processor {
    /// A processor for the configured stages over rows of `decoded`; `None` when the pipeline
    /// has no stateful stage.
    pub fn new(
        decoded: &Schema,
        dedup: Option<&DedupConfig>,
        aggregate: Option<&AggregateConfig>,
        store: CheckpointStore,
    ) -> Result<Option<Processor>> {
        if dedup.is_none() && aggregate.is_none() {
            return Ok(None);
        }
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
                schema: result_schema(decoded, a).map_err(|e| Error::Sink(format!("aggregate.group_by {e}")))?,
            }),
        };
        Ok(Some(Processor { dedup, agg, store }))
    }

    /// Processes epoch `epoch`'s rows (in canonical order). Blocking: reads RocksDB.
    pub fn process(&self, epoch: u64, rows: Vec<RecordBatch>) -> Result<Processed> {
        let mut changes = StateChanges::default();
        let mut late = Vec::new();
        let mut duplicates = 0;
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
        Ok(Processed { output, late, changes, duplicates })
    }

    fn dedup(
        &self,
        d: &Dedup,
        epoch: u64,
        rows: Vec<RecordBatch>,
        changes: &mut StateChanges,
        late: &mut Vec<DeadLetter>,
        duplicates: &mut u64,
    ) -> Result<Vec<RecordBatch>> {
        let prev_watermark = self.store.watermark()?;
        let keyed = EpochKeys::of(d, epoch, &rows, prev_watermark, late)?;
        let total = keyed.stamps.len();
        let (sorted, runs) = keyed.runs();
        let distinct: Vec<&[u8]> = runs.iter().map(|pos| keyed.key(sorted[*pos].1 as usize)).collect();
        let present = self.store.dedup_contains(&distinct, epoch)?;
        let mut keep = vec![false; total];
        for (r, start) in runs.iter().enumerate() {
            let end = runs.get(r + 1).copied().unwrap_or(total);
            // Rejected rows are neither kept nor duplicates; the first other one is kept unless
            // the key is held already.
            let mut first = !present[r];
            for i in sorted[*start..end].iter().map(|(_, i)| *i as usize).filter(|i| !keyed.rejected[*i]) {
                if first {
                    keep[i] = true;
                    first = false;
                    changes.dedup_insert.push((keyed.key(i).to_vec(), keyed.stamps[i].expect("a kept row has a stamp")));
                } else {
                    *duplicates += 1;
                }
            }
        }
        let max_ms = (0..total).filter(|i| keep[*i]).filter_map(|i| keyed.stamps[i]).max();
        let mut out = Vec::with_capacity(rows.len());
        let mut at = 0;
        for batch in rows {
            let n = batch.num_rows();
            let mask = BooleanArray::from(keep[at..at + n].to_vec());
            at += n;
            out.push(filter_record_batch(&batch, &mask).map_err(|e| Error::Sink(e.to_string()))?);
        }
        // The new keys are in key order (see `EpochKeys::runs`): RocksDB's memtable inserts walk
        // its skip list from where the previous one ended, and a bulk insert writes them as
        // they are.
        retention(d, epoch, prev_watermark, max_ms, changes);
        Ok(out)
    }

    fn aggregate(&self, a: &Agg, epoch: u64, rows: &[RecordBatch], changes: &mut StateChanges) -> Result<Output> {
        let _ = epoch;
        // The epoch's groups: full key (bucket ++ group values) -> slot in `keys` / `states`.
        // Rows find their group by hash with one reused key buffer; a group's key is copied,
        // and its stored state read, only when the epoch first meets it.
        let mut slot_of: HashMap<Box<[u8]>, usize, foldhash::fast::RandomState> = HashMap::default();
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        let mut states: Vec<(AggState, bool)> = Vec::new();
        let mut key = Vec::with_capacity(64);
        let mut slots = Vec::new();
        for batch in rows {
            let group = KeyCol::of(batch, &a.group)?;
            let values: Vec<Option<NumCol>> = a
                .aggs
                .iter()
                .map(|(op, f)| f.filter(|_| *op != AggregateOp::Count).and_then(|f| NumCol::new(batch.column(f))))
                .collect();
            let first_new = keys.len();
            slots.clear();
            for i in 0..batch.num_rows() {
                key.clear();
                key.extend([0, 0]);
                for c in &group {
                    c.encode(i, &mut key);
                }
                let bucket = (fnv1a(&key[2..]) % a.buckets as u64) as u16;
                key[..2].copy_from_slice(&bucket.to_be_bytes());
                let slot = match slot_of.get(key.as_slice()) {
                    Some(s) => *s,
                    None => {
                        let s = keys.len();
                        keys.push(key.as_slice().into());
                        slot_of.insert(key.as_slice().into(), s);
                        s
                    }
                };
                slots.push(slot);
            }
            let fresh: Vec<Vec<u8>> = keys[first_new..].iter().map(|k| k.to_vec()).collect();
            for v in self.store.agg_get(&fresh)? {
                states.push(match v {
                    Some(b) => (AggState::decode(&b, a.aggs.len()), false),
                    None => (AggState { count: 0, vals: vec![None; a.aggs.len()] }, true),
                });
            }
            for (i, slot) in slots.iter().enumerate() {
                let (state, _) = &mut states[*slot];
                state.count += 1;
                for (j, col) in values.iter().enumerate() {
                    if let Some(col) = col {
                        state.vals[j] = combine(a.aggs[j].0, state.vals[j], col.get(i));
                    }
                }
            }
        }
        let updated: BTreeMap<Vec<u8>, (AggState, bool)> = keys.into_iter().map(Vec::from).zip(states).collect();
        let touched: BTreeSet<u16> = updated.keys().map(|k| u16::from_be_bytes([k[0], k[1]])).collect();
        changes.agg_put = updated.iter().map(|(k, (s, new))| (k.clone(), s.encode(), *new)).collect();
        // The rows to write: the stored state of every key in the affected buckets, with this
        // epoch's updates applied over it.
        let prefixes: Vec<Vec<u8>> = match a.mode {
            OutputMode::Complete => vec![Vec::new()],
            OutputMode::Update => touched.iter().map(|b| b.to_be_bytes().to_vec()).collect(),
        };
        let mut current: BTreeMap<Vec<u8>, AggState> = BTreeMap::new();
        for p in &prefixes {
            for (k, v) in self.store.agg_scan(p)? {
                current.insert(k, AggState::decode(&v, a.aggs.len()));
            }
        }
        for (k, (s, _)) in updated {
            current.insert(k, s);
        }
        let rows = self.result_rows(a, &current)?;
        Ok(Output::Replace {
            buckets: match a.mode {
                OutputMode::Complete => None,
                OutputMode::Update => Some(touched.iter().map(|b| *b as u32).collect()),
            },
            rows: if rows.num_rows() > 0 { vec![rows] } else { Vec::new() },
            mode: a.mode,
        })
    }

    fn result_rows(&self, a: &Agg, states: &BTreeMap<Vec<u8>, AggState>) -> Result<RecordBatch> {
        let schema = &a.schema;
        let mut cols: Vec<ArrayRef> = Vec::new();
        let keys: Vec<(u16, Vec<Scalar>)> =
            states.keys().map(|k| (u16::from_be_bytes([k[0], k[1]]), decode_key(&k[2..]))).collect();
        for (gi, _) in a.group.iter().enumerate() {
            let f = schema.field(gi);
            let vals = keys.iter().map(|(_, k)| k.get(gi).cloned().unwrap_or(Scalar::Null));
            cols.push(build_column(f.data_type(), vals)?);
        }
        for (j, (op, _)) in a.aggs.iter().enumerate() {
            let f = schema.field(a.group.len() + j);
            let vals = states.values().map(|s| match op {
                AggregateOp::Count => Scalar::I64(s.count),
                _ => match s.vals[j] {
                    None => Scalar::Null,
                    Some(Num::I(x)) => Scalar::I64(x),
                    Some(Num::F(x)) => Scalar::F64(x),
                },
            });
            cols.push(build_column(f.data_type(), vals)?);
        }
        cols.push(Arc::new(Int32Array::from(keys.iter().map(|(b, _)| *b as i32).collect::<Vec<_>>())));
        RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Sink(e.to_string()))
    }
}

fn build_column(t: &DataType, vals: impl Iterator<Item = Scalar>) -> Result<ArrayRef> {
    Ok(match t {
        DataType::Int64 => {
            let mut b = Int64Builder::new();
            vals.for_each(|v| b.append_option(if let Scalar::I64(x) = v { Some(x) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Int32 => {
            let mut b = Int32Builder::new();
            vals.for_each(|v| b.append_option(if let Scalar::I64(x) = v { Some(x as i32) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Date32 => {
            let mut b = Date32Builder::new();
            vals.for_each(|v| b.append_option(if let Scalar::I64(x) = v { Some(x as i32) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Float64 => {
            let mut b = Float64Builder::new();
            vals.for_each(|v| b.append_option(if let Scalar::F64(x) = v { Some(x) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Boolean => {
            let mut b = BooleanBuilder::new();
            vals.for_each(|v| b.append_option(if let Scalar::Bool(x) = v { Some(x) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Utf8 => {
            let mut b = StringBuilder::new();
            vals.for_each(|v| b.append_option(if let Scalar::Str(x) = v { Some(x) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Binary => {
            let mut b = BinaryBuilder::new();
            vals.for_each(|v| b.append_option(if let Scalar::Bin(x) = v { Some(x) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let mut b = TimestampMicrosecondBuilder::new();
            vals.for_each(|v| b.append_option(if let Scalar::I64(x) = v { Some(x) } else { None }));
            Arc::new(b.finish().with_timezone_opt(tz.clone()))
        }
        other => return Err(Error::Sink(format!("cannot build a {other} result column"))),
    })
}

/// What the dedup retention keeps after an epoch: the watermark (event-time dedup) or the
/// oldest epoch whose keys are held (`max_age_epochs`).
fn retention(d: &Dedup, epoch: u64, prev_watermark: Option<i64>, max_ms: Option<i64>, changes: &mut StateChanges) {
    match (d.watermark, d.max_age) {
        (Some(_), _) => {
            let w = match (prev_watermark, max_ms) {
                (p, Some(m)) => Some(p.unwrap_or(i64::MIN).max(m.saturating_sub(d.lateness_ms))),
                (p, None) => p,
            };
            changes.watermark = w;
            changes.dedup_expire_before = w;
        }
        (None, Some(age)) => {
            let before = epoch as i64 - age as i64 + 1;
            if before > 0 {
                changes.dedup_expire_before = Some(before);
            }
        }
        (None, None) => {}
    }
}

/// Every row's dedup key of an epoch, in one buffer (row i's key ends at `ends[i]`), its stamp,
/// and whether it is rejected (late or future), in canonical order over the epoch's batches.
struct EpochKeys {
    keys: Vec<u8>,
    ends: Vec<usize>,
    stamps: Vec<Option<i64>>,
    rejected: Vec<bool>,
}

impl EpochKeys {
    fn of(
        d: &Dedup,
        epoch: u64,
        rows: &[RecordBatch],
        prev_watermark: Option<i64>,
        late: &mut Vec<DeadLetter>,
    ) -> Result<EpochKeys> {
        let total: usize = rows.iter().map(RecordBatch::num_rows).sum();
        let mut k = EpochKeys {
            keys: Vec::with_capacity(total * 10),
            ends: Vec::with_capacity(total),
            stamps: Vec::with_capacity(total),
            rejected: Vec::with_capacity(total),
        };
        for batch in rows {
            let n = batch.num_rows();
            let batch_stamps = match d.watermark {
                Some(w) => event_ms(batch.column(w))?,
                None => vec![Some(epoch as i64); n],
            };
            // The Kafka timestamps bound future event times (event-time dedup only).
            let produced_ms = match batch.column_by_name(crate::model::TIMESTAMP_COL) {
                Some(c) if d.watermark.is_some() => event_ms(c)?,
                _ => vec![None; n],
            };
            let key_cols = KeyCol::of(batch, &d.key)?;
            for i in 0..n {
                for c in &key_cols {
                    c.encode(i, &mut k.keys);
                }
                k.ends.push(k.keys.len());
                let rejection = rejection(d, batch_stamps[i], prev_watermark, produced_ms[i]);
                k.rejected.push(rejection.is_some());
                if let Some((kind, reason)) = rejection {
                    late.push(DeadLetter::of_row(batch, i, kind, reason));
                }
            }
            k.stamps.extend(batch_stamps);
        }
        Ok(k)
    }

    fn key(&self, i: usize) -> &[u8] {
        &self.keys[if i == 0 { 0 } else { self.ends[i - 1] }..self.ends[i]]
    }

    /// Rows sorted by key, ties in canonical order, and where each distinct key's run starts:
    /// equal keys are neighbours, the first of each run is the earliest record. One sort
    /// replaces a hash set of the epoch's keys and puts the lookups and the new keys in the
    /// order RocksDB reads and writes fastest. Rows are compared by their keys' first 16 bytes
    /// as one integer (zero-padded, so in byte order), and by the whole keys only where those
    /// are equal.
    fn runs(&self) -> (Vec<(u128, u32)>, Vec<usize>) {
        let prefix = |i: usize| {
            let (k, mut b) = (self.key(i), [0u8; 16]);
            let n = k.len().min(16);
            b[..n].copy_from_slice(&k[..n]);
            u128::from_be_bytes(b)
        };
        let mut sorted: Vec<(u128, u32)> = (0..self.stamps.len()).map(|i| (prefix(i), i as u32)).collect();
        sorted.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| self.key(a.1 as usize).cmp(self.key(b.1 as usize))).then(a.1.cmp(&b.1))
        });
        let mut runs: Vec<usize> = Vec::new();
        for pos in 0..sorted.len() {
            let (p, i) = sorted[pos];
            if pos == 0 || sorted[pos - 1].0 != p || self.key(sorted[pos - 1].1 as usize) != self.key(i as usize) {
                runs.push(pos);
            }
        }
        (sorted, runs)
    }
}

/// A timestamp column's values in milliseconds (`None` where null).
fn event_ms(c: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let col = c
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| Error::Sink(format!("a dedup timestamp column is {}, not a timestamp", c.data_type())))?;
    Ok((0..col.len()).map(|i| (!col.is_null(i)).then(|| col.value(i).div_euclid(1000))).collect())
}

/// Why event-time dedup rejects a row: no event time, an event time too far ahead of its Kafka
/// timestamp, or one older than the watermark.
fn rejection(d: &Dedup, stamp: Option<i64>, watermark: Option<i64>, produced: Option<i64>) -> Option<(Rejection, String)> {
    match (d.watermark, stamp, watermark, produced) {
        (Some(_), None, _, _) => Some((Rejection::Late, "has no event time (null watermark column)".to_string())),
        (Some(_), Some(ts), _, Some(at)) if ts.saturating_sub(at) > d.max_future_ms => Some((
            Rejection::Future,
            format!(
                "event time {ts} ms is {} ms ahead of the record's Kafka timestamp {at} ms, more than dedup.max_future_ms = {}; it would push the watermark past every later record",
                ts.saturating_sub(at),
                d.max_future_ms
            ),
        )),
        (Some(_), Some(ts), Some(w), _) if ts < w => {
            Some((Rejection::Late, format!("event time {ts} ms is older than the watermark {w} ms; too late to deduplicate")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), None]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![7, -3]));
        let cols = [KeyCol::new(&a).unwrap(), KeyCol::new(&b).unwrap()];
        let key = |i| {
            let mut k = Vec::new();
            cols.iter().for_each(|c| c.encode(i, &mut k));
            k
        };
        assert_eq!(decode_key(&key(0)), vec![Scalar::Str("x".into()), Scalar::I64(7)]);
        assert_eq!(decode_key(&key(1)), vec![Scalar::Null, Scalar::I64(-3)]);
        let f: ArrayRef = Arc::new(deltalake::arrow::array::Float32Array::from(vec![1.0]));
        assert!(KeyCol::new(&f).is_err(), "a float32 column is not a key");
    }

    #[test]
    fn agg_state_round_trips() {
        let s = AggState { count: 3, vals: vec![Some(Num::I(-4)), None, Some(Num::F(2.5))] };
        assert_eq!(AggState::decode(&s.encode(), 3), s);
    }
}
