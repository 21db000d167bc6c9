//! `exactly verify`: the audit that proves exactly-once. It reads the Delta table, its
//! dead-letter table and the Kafka topic, and reports per partition which offsets are missing,
//! duplicated or unexpected — comparing against the offsets Kafka actually holds, so the gaps
//! real Kafka has (transaction markers, compaction) are never reported as missing.

use std::collections::{BTreeMap, HashMap, HashSet};
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
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::DeltaTable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{AggregateConfig, AggregateOp, PipelineConfig, TableLocation};
use crate::error::{Error, Result};
use crate::model::{Record, TopicPartition};
use crate::model::{EPOCH_COL, OFFSET_COL, PARTITION_COL, TOPIC_COL};
use crate::sink::delta::{load_table, partition_app_id, start_app_id, txn_version};
use crate::source;

/// How long the Kafka read may go without progress before the audit gives up.
const KAFKA_STALL: Duration = Duration::from_secs(30);

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

/// How many of a table's newest commits the audit reads for epochs committed twice.
pub const EPOCH_SCAN: u64 = 2_000;

/// Epochs of `pipeline` that more than one commit of `table` (among its newest [`EPOCH_SCAN`])
/// recorded, as "<table>: epoch E committed N times".
async fn epochs_committed_twice(table: &DeltaTable, path: &TableLocation, pipeline: &str) -> Result<Vec<String>> {
    use futures::StreamExt;
    let Some(latest) = table.version() else { return Ok(Vec::new()) };
    let store = table.log_store();
    let versions = latest.saturating_sub(EPOCH_SCAN - 1)..=latest;
    let entries: Vec<_> =
        futures::stream::iter(versions).map(|v| store.read_commit_entry(v)).buffer_unordered(16).collect().await;
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for entry in entries {
        let Some(bytes) = entry.map_err(|e| Error::Sink(format!("reading the log of {}: {e}", path.display())))? else {
            continue;
        };
        for line in String::from_utf8_lossy(&bytes).lines() {
            let Ok(action) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if action["txn"]["appId"].as_str() == Some(pipeline) {
                if let Some(v) = action["txn"]["version"].as_i64() {
                    *counts.entry(v).or_default() += 1;
                }
            }
        }
    }
    Ok(counts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(e, n)| format!("{}: epoch {e} committed {n} times", path.display()))
        .collect())
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

/// An output table as the audit reads it.
struct OutputTable {
    audit: OutputAudit,
    ranges: BTreeMap<TopicPartition, (i64, i64)>,
    content_cols: Vec<String>,
    rows: FoundOffsets,
    contents: RowContents,
}

impl OutputTable {
    async fn read(
        config: &PipelineConfig,
        o: &crate::config::OutputConfig,
        schema: &deltalake::arrow::datatypes::Schema,
        partitions: &[TopicPartition],
    ) -> Result<OutputTable> {
        let location = config.output_path(o);
        let content_cols: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut ranges = BTreeMap::new();
        let (mut found, mut contents) = (FoundOffsets::new(), RowContents::new());
        if let Some(table) = load_table(location.clone()).await? {
            for tp in partitions {
                let end = txn_version(&table, &location, &partition_app_id(&config.id, tp)).await?;
                let start = txn_version(&table, &location, &start_app_id(&config.id, tp)).await?;
                if let (Some(start), Some(end)) = (start, end) {
                    ranges.insert(tp.clone(), (start, end));
                }
            }
            let mut names: Vec<&str> = content_cols.iter().map(String::as_str).collect();
            names.push(EPOCH_COL);
            let batches = read_columns(&table, &active_files(&table)?, &names).await?;
            found = coordinates(&batches)?;
            contents = self::contents(&batches, &content_cols)?;
        }
        let audit = OutputAudit { name: o.name.clone(), table: location, partitions: Vec::new() };
        Ok(OutputTable { audit, ranges, content_cols, rows: found, contents })
    }

    /// Checks partition `tp` against the main table's committed range `[main_start, main_end)`
    /// (an output is committed right after the main table in every epoch, so it must hold the
    /// same range — from where it started, if it was added later): `kept` are the output's rows
    /// of the records read for it, `read` those records' offsets.
    fn check(&mut self, tp: &TopicPartition, kept: &RecordBatch, read: &[i64], (main_start, main_end): (i64, i64)) -> Result<()> {
        let found = self.rows.get(tp).cloned().unwrap_or_default();
        let start = self.ranges.get(tp).map_or(main_start, |(s, _)| (*s).max(main_start));
        let end = main_end;
        let offs = crate::decode::offsets(kept).ok_or_else(|| Error::Sink("output rows without offsets".into()))?;
        let mut want: HashMap<i64, usize> = HashMap::new();
        for i in 0..kept.num_rows() {
            let o = offs.value(i);
            if o >= start && o < end {
                want.insert(o, i);
            }
        }
        let mut counts: HashMap<i64, u64> = HashMap::new();
        for o in &found {
            *counts.entry(*o).or_default() += 1;
        }
        let mut missing: Vec<i64> = want.keys().copied().filter(|o| !counts.contains_key(o)).collect();
        missing.sort_unstable();
        let mut mismatches = Vec::new();
        for (o, i) in &want {
            let Some((have, _)) = self.contents.get(tp).and_then(|m| m.get(o)) else { continue };
            let text = row_text_masked(kept, &self.content_cols, *i, &[])?;
            if *have != text {
                mismatches.push(format!("output row at offset {o}: table ({have}), Kafka's record gives ({text})"));
            }
        }
        self.audit.partitions.push(PartitionAudit {
            tp: Some(tp.clone()),
            start,
            end,
            expected: want.len() as u64,
            rows: found.len() as u64,
            filtered: (read.iter().filter(|o| **o >= start && **o < end).count() as u64).saturating_sub(want.len() as u64),
            missing: missing.len() as u64,
            duplicated: counts.values().filter(|n| **n > 1).map(|n| n - 1).sum(),
            unexpected: counts.keys().filter(|o| !want.contains_key(o)).count() as u64,
            mismatched: mismatches.len() as u64,
            missing_sample: missing.into_iter().take(10).collect(),
            mismatch_sample: mismatches.into_iter().take(10).collect(),
            ..Default::default()
        });
        Ok(())
    }
}

/// One commit of a group member, from the `exactly` metadata it carries in the Delta log.
#[derive(Debug, Clone)]
pub struct MemberCommit {
    /// Table version.
    pub version: i64,
    /// The member (`host-pid`).
    pub member: String,
    /// Partitions this commit claims (`topic/partition`).
    pub claim: Vec<String>,
    /// The ranges this commit writes: partition, start, end, records.
    pub ranges: Vec<(String, i64, i64, u64)>,
}

/// The commits of group members the table's log still holds, oldest first.
pub async fn member_commits(table: &DeltaTable) -> Result<Vec<MemberCommit>> {
    use futures::TryStreamExt;
    let newest = table.version().unwrap_or(0);
    let infos: Vec<deltalake::kernel::CommitInfo> =
        table.history(None).try_collect().await.map_err(|e| Error::Sink(format!("reading the table's history: {e}")))?;
    let mut out = Vec::new();
    // Newest first, one per commit still in the log.
    for (i, info) in infos.iter().enumerate() {
        let Some(meta) = info.info.get("exactly") else { continue };
        let Some(member) = meta["member"].as_str() else { continue };
        let claim =
            meta["claim"].as_array().map(|a| a.iter().filter_map(|p| p.as_str().map(String::from)).collect()).unwrap_or_default();
        let ranges = meta["ranges"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            format!("{}/{}", r["topic"].as_str().unwrap_or("?"), r["partition"]),
                            r["start"].as_i64().unwrap_or(-1),
                            r["end"].as_i64().unwrap_or(-1),
                            r["records"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(MemberCommit { version: newest as i64 - i as i64, member: member.to_string(), claim, ranges });
    }
    out.reverse();
    Ok(out)
}

/// The fencing rule, checked on the log: every commit of a partition comes from the member that
/// claimed it last. Returns the data commits per member and the commits that broke the rule.
pub fn check_fencing(commits: &[MemberCommit]) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut claimant: BTreeMap<&str, &str> = BTreeMap::new();
    let mut members: BTreeMap<String, u64> = BTreeMap::new();
    let mut broken = Vec::new();
    for c in commits {
        for p in &c.claim {
            claimant.insert(p, &c.member);
        }
        for (p, start, end, _) in &c.ranges {
            match claimant.get(p.as_str()) {
                Some(owner) if *owner == c.member => {}
                // The claim fell out of the log (cleaned up): nothing to check against.
                None => {}
                Some(owner) => broken.push(format!(
                    "version {}: {} committed {p} [{start}, {end}) after {owner} had claimed it",
                    c.version, c.member
                )),
            }
        }
        if !c.ranges.is_empty() {
            *members.entry(c.member.clone()).or_default() += 1;
        }
    }
    (members, broken)
}

/// Key-level checks: for dedup, every key of the topic's committed range in the table exactly
/// once; for aggregation, every group's aggregates equal to a recomputation from the topic.
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
    /// Groups whose aggregates differ from the recomputation (aggregation only).
    pub mismatched: u64,
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
            && self.keys.as_ref().is_none_or(|k| k.missing == 0 && k.duplicated == 0 && k.mismatched == 0)
    }

    /// Sum of a field over partitions.
    pub fn total(&self, f: impl Fn(&PartitionAudit) -> u64) -> u64 {
        self.partitions.iter().map(f).sum()
    }

    /// The report `exactly verify` prints.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // A table written by a group records no pipeline epoch: each member numbers its own.
        let epoch = if self.epoch == 0 && !self.partitions.is_empty() {
            "written by a group".to_string()
        } else {
            format!("epoch {}", self.epoch)
        };
        let _ = writeln!(
            s,
            "pipeline '{}': table {} ({epoch}), dead letters {}",
            self.pipeline,
            self.table.display(),
            self.dead_letter_table.display()
        );
        let _ = writeln!(
            s,
            "{:<28} {:>22} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10}",
            "partition", "committed range", "expected", "rows", "dead", "missing", "duplicated", "unexpected", "mismatched"
        );
        for p in &self.partitions {
            let tp = p.tp.as_ref().map(|t| t.to_string()).unwrap_or_default();
            let range = if p.unread { "never read".to_string() } else { format!("[{}, {})", p.start, p.end) };
            let _ = writeln!(
                s,
                "{:<28} {:>22} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10}",
                tp, range, p.expected, p.rows, p.dead_lettered, p.missing, p.duplicated, p.unexpected, p.mismatched
            );
            if p.unread {
                let _ = writeln!(
                    s,
                    "    the topic holds records here but the table recorded no progress: the pipeline never read this partition"
                );
            }
            if !p.missing_sample.is_empty() {
                let _ = writeln!(s, "    first missing offsets: {:?}", p.missing_sample);
            }
            if p.filtered > 0 {
                let _ = writeln!(s, "    {} records dropped by transform.where (evaluated again here)", p.filtered);
            }
            for m in &p.mismatch_sample {
                let _ = writeln!(s, "    {m}");
            }
            if p.unverifiable > 0 {
                let _ = writeln!(s, "    {} rows have offsets Kafka no longer holds (retention); not judged", p.unverifiable);
            }
        }
        let _ = writeln!(
            s,
            "{:<28} {:>22} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10}",
            "total",
            "",
            self.total(|p| p.expected),
            self.total(|p| p.rows),
            self.total(|p| p.dead_lettered),
            self.total(|p| p.missing),
            self.total(|p| p.duplicated),
            self.total(|p| p.unexpected),
            self.total(|p| p.mismatched)
        );
        if let Some(k) = &self.keys {
            let _ = writeln!(
                s,
                "{} keys: expected {}, in table {}, missing {}, duplicated {}, mismatched {}",
                k.kind, k.expected, k.found, k.missing, k.duplicated, k.mismatched
            );
            for sample in &k.samples {
                let _ = writeln!(s, "    {sample}");
            }
        }
        if !self.members.is_empty() {
            let counts: Vec<String> = self.members.iter().map(|(m, n)| format!("{m}: {n}")).collect();
            let _ = writeln!(
                s,
                "group: {} members committed ({}); commits by a member that had lost the partition: {}",
                self.members.len(),
                counts.join(", "),
                self.fencing.len()
            );
            for f in self.fencing.iter().take(10) {
                let _ = writeln!(s, "    {f}");
            }
        }
        for t in self.twice.iter().take(10) {
            let _ = writeln!(s, "commit rule broken: {t}");
        }
        for o in &self.outputs {
            let _ = writeln!(
                s,
                "output `{}` ({}): expected {}, rows {}, filtered {}, missing {}, duplicated {}, unexpected {}, mismatched {}",
                o.name,
                o.table.display(),
                o.total(|p| p.expected),
                o.total(|p| p.rows),
                o.total(|p| p.filtered),
                o.total(|p| p.missing),
                o.total(|p| p.duplicated),
                o.total(|p| p.unexpected),
                o.total(|p| p.mismatched)
            );
            for p in &o.partitions {
                if !p.missing_sample.is_empty() {
                    let tp = p.tp.as_ref().map(|t| t.to_string()).unwrap_or_default();
                    let _ = writeln!(s, "    {tp}: first missing offsets: {:?}", p.missing_sample);
                }
                for m in &p.mismatch_sample {
                    let _ = writeln!(s, "    {m}");
                }
            }
        }
        let _ = writeln!(s, "parquet files not in the current version (compacted away or never committed; `exactly vacuum` removes them past the retention): {}", self.orphan_files.len());
        if self.ok() {
            let what = match self.keys.as_ref().map(|k| k.kind.as_str()) {
                Some("aggregate") => "every group equals its recomputation from the topic",
                Some(_) => "every key of the topic is in the table exactly once",
                None => "every committed offset is in the tables exactly once, as Kafka holds it",
            };
            let _ = writeln!(s, "result: OK — {what}");
        } else {
            let _ = writeln!(
                s,
                "result: FAILED — offsets missing, duplicated or unexpected, content that differs from Kafka's, or commits by a fenced member"
            );
        }
        s
    }
}

/// Where each table row came from, per partition.
type FoundOffsets = HashMap<TopicPartition, Vec<i64>>;

/// The named columns of every row in these Parquet files of `table`, read through its store.
async fn read_columns(table: &DeltaTable, files: &[ObjectPath], names: &[&str]) -> Result<Vec<RecordBatch>> {
    let store = table.log_store().object_store(None);
    let snapshot = table.snapshot().map_err(|e| Error::Delta { table: table.table_url().to_string(), detail: e.to_string() })?;
    // Partition columns are in the log, not in the files: each file's values, for the names asked.
    let schema = snapshot.snapshot().arrow_schema();
    let partitions: HashMap<ObjectPath, Vec<(String, Option<String>)>> = snapshot
        .log_data()
        .iter()
        .map(|f| {
            let values = f.partition_values_map().into_iter().filter(|(k, _)| names.contains(&k.as_str())).collect();
            (f.object_store_path(), values)
        })
        .collect();
    let mut out = Vec::new();
    for path in files {
        let err = |e: String| Error::Delta { table: format!("{}{path}", table.table_url()), detail: e };
        let bytes = store.get(path).await.map_err(|e| err(e.to_string()))?.bytes().await.map_err(|e| err(e.to_string()))?;
        // Decoding is CPU work: off the async workers.
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let decoded = tokio::task::spawn_blocking(move || -> std::result::Result<Vec<RecordBatch>, String> {
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
            let mask = ProjectionMask::columns(builder.parquet_schema(), names.iter().map(String::as_str));
            let mut batches = Vec::new();
            for batch in builder.with_projection(mask).build().map_err(|e| e.to_string())? {
                batches.push(plain_types(batch.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?);
            }
            Ok(batches)
        })
        .await
        .map_err(|e| err(e.to_string()))?;
        let mut batches = decoded.map_err(err)?;
        if let Some(values) = partitions.get(path).filter(|v| !v.is_empty()) {
            for batch in &mut batches {
                let (mut fields, mut columns): (Vec<_>, Vec<_>) =
                    (batch.schema().fields().iter().cloned().collect(), batch.columns().to_vec());
                for (name, value) in values {
                    let field = schema.field_with_name(name).map_err(|e| err(e.to_string()))?;
                    let column = crate::maintenance::compaction::partition_column(value, field.data_type(), batch.num_rows())
                        .map_err(|e| err(format!("partition value of {name}: {e}")))?;
                    fields.push(Arc::new(field.clone()));
                    columns.push(column);
                }
                *batch = RecordBatch::try_new(Arc::new(deltalake::arrow::datatypes::Schema::new(fields)), columns)
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        out.extend(batches);
    }
    Ok(out)
}

/// The batch with view, large and dictionary strings and binaries as plain `Utf8`/`Binary`: a
/// file rewritten by another writer (an OPTIMIZE through DataFusion writes `Utf8View`) holds the
/// same values under another Arrow type.
fn plain_types(batch: RecordBatch) -> std::result::Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    use deltalake::arrow::datatypes::{Field, Schema};
    let plain = |t: &DataType| match t {
        DataType::Utf8View | DataType::LargeUtf8 => Some(DataType::Utf8),
        DataType::BinaryView | DataType::LargeBinary => Some(DataType::Binary),
        DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) => {
            Some(DataType::Utf8)
        }
        _ => None,
    };
    if batch.schema().fields().iter().all(|f| plain(f.data_type()).is_none()) {
        return Ok(batch);
    }
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        match plain(f.data_type()) {
            Some(t) => {
                cols.push(deltalake::arrow::compute::cast(c, &t)?);
                fields.push(Field::new(f.name(), t, f.is_nullable()));
            }
            None => {
                cols.push(c.clone());
                fields.push(f.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), cols)
}

/// A cell as text, the same way for table rows and for rows decoded from Kafka: integers and
/// timestamps as their raw integer, doubles with 6 decimals, decimals and nested values as
/// Arrow prints them.
fn cell(col: &ArrayRef, i: usize) -> String {
    if col.is_null(i) {
        return "null".into();
    }
    let any = col.as_any();
    match col.data_type() {
        DataType::Int64 => any.downcast_ref::<Int64Array>().map(|a| a.value(i).to_string()),
        DataType::Int32 => any.downcast_ref::<Int32Array>().map(|a| a.value(i).to_string()),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            any.downcast_ref::<TimestampMicrosecondArray>().map(|a| a.value(i).to_string())
        }
        DataType::Date32 => any.downcast_ref::<Date32Array>().map(|a| a.value(i).to_string()),
        DataType::Float64 => any.downcast_ref::<Float64Array>().map(|a| format!("{:.6}", a.value(i))),
        DataType::Utf8 => any.downcast_ref::<StringArray>().map(|a| a.value(i).to_string()),
        DataType::Boolean => any.downcast_ref::<BooleanArray>().map(|a| a.value(i).to_string()),
        DataType::Binary => any.downcast_ref::<BinaryArray>().map(|a| format!("{:?}", a.value(i))),
        DataType::Struct(_) | DataType::List(_) | DataType::LargeList(_) | DataType::Map(..) => Some(nested(col.as_ref(), i)),
        // Decimals and the rest: Arrow's text form.
        _ => deltalake::arrow::util::display::ArrayFormatter::try_new(col.as_ref(), &Default::default())
            .ok()
            .map(|f| f.value(i).to_string()),
    }
    .unwrap_or_else(|| "?".into())
}

/// A nested value as text, the same for every layout of the same value: struct members sorted
/// by name and null ones left out (a file written before `sink.schema_evolution` added a member
/// has no such member, and reads it as null), lists and maps in order, leaves as [`cell`] does.
fn nested(col: &dyn Array, i: usize) -> String {
    nested_masked(col, i, &[])
}

/// [`nested`] without the struct members at `masked` (paths of member names below `col`).
fn nested_masked(col: &dyn Array, i: usize, masked: &[&[String]]) -> String {
    use deltalake::arrow::array::AsArray;
    if col.is_null(i) {
        return "null".into();
    }
    match col.data_type() {
        DataType::Struct(fields) => {
            let s = col.as_struct();
            let mut members: Vec<(String, String)> = fields
                .iter()
                .zip(s.columns())
                .filter(|(f, c)| !c.is_null(i) && !masked.iter().any(|m| m.len() == 1 && m[0] == *f.name()))
                .map(|(f, c)| {
                    let below: Vec<&[String]> =
                        masked.iter().filter(|m| m.len() > 1 && m[0] == *f.name()).map(|m| &m[1..]).collect();
                    let text = if below.is_empty() { cell(c, i) } else { nested_masked(c.as_ref(), i, &below) };
                    (f.name().clone(), text)
                })
                .collect();
            members.sort();
            format!("{{{}}}", members.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "))
        }
        DataType::List(_) => {
            let items = col.as_list::<i32>().value(i);
            format!("[{}]", (0..items.len()).map(|j| cell(&items, j)).collect::<Vec<_>>().join(", "))
        }
        DataType::LargeList(_) => {
            let items = col.as_list::<i64>().value(i);
            format!("[{}]", (0..items.len()).map(|j| cell(&items, j)).collect::<Vec<_>>().join(", "))
        }
        DataType::Map(..) => {
            let m = col.as_map();
            let (start, end) = (m.value_offsets()[i] as usize, m.value_offsets()[i + 1] as usize);
            let entries = (start..end).map(|j| format!("{}: {}", cell(m.keys(), j), cell(m.values(), j)));
            format!("{{{}}}", entries.collect::<Vec<_>>().join(", "))
        }
        _ => "?".into(),
    }
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    b.column_by_name(name).ok_or_else(|| Error::Sink(format!("table has no column {name}")))
}

/// `(partition, offset)` of every row, from the `_kafka_*` columns.
fn coordinates(batches: &[RecordBatch]) -> Result<FoundOffsets> {
    let mut found = FoundOffsets::new();
    for b in batches {
        let topics =
            column(b, TOPIC_COL)?.as_any().downcast_ref::<StringArray>().ok_or_else(|| Error::Sink("bad topic column".into()))?;
        let parts = column(b, PARTITION_COL)?
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| Error::Sink("bad partition column".into()))?;
        let offs = column(b, OFFSET_COL)?
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::Sink("bad offset column".into()))?;
        for i in 0..b.num_rows() {
            found.entry(TopicPartition::new(topics.value(i), parts.value(i))).or_default().push(offs.value(i));
        }
    }
    Ok(found)
}

/// Row `i` as text: the named columns' cells, `name=value`, joined (what a row is compared by).
fn row_text(b: &RecordBatch, cols: &[String], i: usize) -> Result<String> {
    row_text_masked(b, cols, i, &[])
}

/// [`row_text`] with the columns and struct members at `masked` (paths: a column name, then
/// member names) read as null: those `sink.schema_evolution` added after the row was written.
fn row_text_masked(b: &RecordBatch, cols: &[String], i: usize, masked: &[&[String]]) -> Result<String> {
    let mut out = Vec::with_capacity(cols.len());
    for c in cols {
        let here: Vec<&[String]> = masked.iter().filter(|m| m.first() == Some(c)).map(|m| &m[1..]).collect();
        // A column the file lacks (written before `sink.schema_evolution` added it) reads as
        // null, as Delta readers read it.
        let text = match b.column_by_name(c) {
            None => "null".to_string(),
            Some(_) if here.iter().any(|m| m.is_empty()) => "null".to_string(),
            Some(col) if here.is_empty() => cell(col, i),
            Some(col) => nested_masked(col.as_ref(), i, &here),
        };
        out.push(format!("{c}={text}"));
    }
    Ok(out.join(", "))
}

/// The columns and struct members `sink.schema_evolution` added, each with the epoch that
/// added it (table properties `exactly.addedAt.<path>`).
fn added_columns(table: &DeltaTable) -> Result<Vec<(Vec<String>, i64)>> {
    let snapshot = table.snapshot().map_err(|e| Error::Sink(e.to_string()))?;
    Ok(snapshot
        .metadata()
        .configuration()
        .iter()
        .filter_map(|(k, v)| {
            let path = k.strip_prefix(crate::sink::schema::ADDED_AT_PREFIX)?;
            Some((path.split('.').map(String::from).collect(), v.parse().ok()?))
        })
        .collect())
}

/// Each row's text and `_epoch`, by partition and offset.
type RowContents = HashMap<TopicPartition, HashMap<i64, (String, i64)>>;

/// Every row's text and epoch by partition and offset (the first row at a coordinate; copies
/// are counted as duplicates elsewhere).
fn contents(batches: &[RecordBatch], cols: &[String]) -> Result<RowContents> {
    let mut out = RowContents::new();
    for b in batches {
        let (topics, parts, offs) = (column(b, TOPIC_COL)?, column(b, PARTITION_COL)?, column(b, OFFSET_COL)?);
        let epochs = column(b, EPOCH_COL)?;
        for i in 0..b.num_rows() {
            let tp = TopicPartition::new(&cell(topics, i), cell(parts, i).parse().unwrap_or(-1));
            let offset = cell(offs, i).parse().unwrap_or(-1);
            let epoch = cell(epochs, i).parse().unwrap_or(-1);
            out.entry(tp).or_default().entry(offset).or_insert((row_text(b, cols, i)?, epoch));
        }
    }
    Ok(out)
}

/// Each dead letter's key and value bytes, by partition and offset.
type DeadBytes = HashMap<TopicPartition, HashMap<i64, (Option<Vec<u8>>, Option<Vec<u8>>)>>;

fn dead_letter_bytes(batches: &[RecordBatch]) -> Result<DeadBytes> {
    let mut out = DeadBytes::new();
    for b in batches {
        let bin = |name: &str| -> Result<BinaryArray> {
            column(b, name)?
                .as_any()
                .downcast_ref::<BinaryArray>()
                .cloned()
                .ok_or_else(|| Error::Sink(format!("bad {name} column")))
        };
        let (key, value) = (bin("key")?, bin("value")?);
        let (topics, parts, offs) = (column(b, TOPIC_COL)?, column(b, PARTITION_COL)?, column(b, OFFSET_COL)?);
        for i in 0..b.num_rows() {
            let tp = TopicPartition::new(&cell(topics, i), cell(parts, i).parse().unwrap_or(-1));
            let bytes = |a: &BinaryArray| (!a.is_null(i)).then(|| a.value(i).to_vec());
            out.entry(tp).or_default().entry(cell(offs, i).parse().unwrap_or(-1)).or_insert((bytes(&key), bytes(&value)));
        }
    }
    Ok(out)
}

/// The key of row `i`: the named columns' cells, joined.
fn key_of(b: &RecordBatch, cols: &[String], i: usize) -> Result<String> {
    let mut k = Vec::with_capacity(cols.len());
    for c in cols {
        k.push(cell(column(b, c)?, i));
    }
    Ok(k.join("|"))
}

/// Recomputes the configured aggregates per group from decoded rows; values as [`cell`] text.
fn recompute(rows: &[RecordBatch], config: &AggregateConfig) -> Result<BTreeMap<String, Vec<String>>> {
    #[derive(Clone, Copy)]
    enum V {
        I(i64),
        F(f64),
    }
    let mut groups: BTreeMap<String, (i64, Vec<Option<V>>)> = BTreeMap::new();
    for b in rows {
        for i in 0..b.num_rows() {
            let g = groups.entry(key_of(b, &config.group_by, i)?).or_insert_with(|| (0, vec![None; config.aggregates.len()]));
            g.0 += 1;
            for (j, spec) in config.aggregates.iter().enumerate() {
                let Some(f) = &spec.field else { continue };
                let col = column(b, f)?;
                if col.is_null(i) {
                    continue;
                }
                let v = match col.data_type() {
                    DataType::Float64 => V::F(col.as_any().downcast_ref::<Float64Array>().unwrap().value(i)),
                    DataType::Float32 => V::F(col.as_any().downcast_ref::<Float32Array>().unwrap().value(i) as f64),
                    _ => V::I(cell(col, i).parse().unwrap_or(0)),
                };
                g.1[j] = Some(match (spec.op, g.1[j], v) {
                    (_, None, v) => v,
                    (AggregateOp::Sum, Some(V::I(a)), V::I(b)) => V::I(a.wrapping_add(b)),
                    (AggregateOp::Sum, Some(V::F(a)), V::F(b)) => V::F(a + b),
                    (AggregateOp::Min, Some(V::I(a)), V::I(b)) => V::I(a.min(b)),
                    (AggregateOp::Min, Some(V::F(a)), V::F(b)) => V::F(a.min(b)),
                    (AggregateOp::Max, Some(V::I(a)), V::I(b)) => V::I(a.max(b)),
                    (AggregateOp::Max, Some(V::F(a)), V::F(b)) => V::F(a.max(b)),
                    (_, Some(a), _) => a,
                });
            }
        }
    }
    Ok(groups
        .into_iter()
        .map(|(k, (count, vals))| {
            let cells = config
                .aggregates
                .iter()
                .zip(vals)
                .map(|(spec, v)| match (spec.op, v) {
                    (AggregateOp::Count, _) => count.to_string(),
                    (_, None) => "null".into(),
                    (_, Some(V::I(x))) => x.to_string(),
                    (_, Some(V::F(x))) => format!("{x:.6}"),
                })
                .collect();
            (k, cells)
        })
        .collect())
}

/// The files the table's current version references, relative to its root.
fn active_files(table: &DeltaTable) -> Result<Vec<ObjectPath>> {
    let snapshot = table.snapshot().map_err(|e| Error::Delta { table: table.table_url().to_string(), detail: e.to_string() })?;
    Ok(snapshot.log_data().iter().map(|f| f.object_store_path()).collect())
}

/// Parquet files under the table's root (outside `_delta_log`) that its current version does
/// not reference, as `<table>/<file>`.
async fn orphans(table: &DeltaTable, at: &TableLocation, active: &[ObjectPath]) -> Result<Vec<String>> {
    use futures::TryStreamExt;
    let live: HashSet<&ObjectPath> = active.iter().collect();
    let listed: Vec<_> = table
        .log_store()
        .object_store(None)
        .list(None)
        .try_collect()
        .await
        .map_err(|e| Error::Delta { table: at.to_string(), detail: e.to_string() })?;
    let mut out: Vec<String> = listed
        .into_iter()
        .map(|m| m.location)
        .filter(|p| p.extension() == Some("parquet") && !p.as_ref().starts_with("_delta_log/") && !live.contains(p))
        .map(|p| format!("{}/{p}", at.display().trim_end_matches('/')))
        .collect();
    out.sort();
    Ok(out)
}

/// The offsets Kafka holds for `tp` in `[from, to)` (read_committed, like the pipeline), and
/// the partition's low watermark.
fn kafka_records(connection: &source::Connection, tp: &TopicPartition, from: i64, to: i64) -> Result<(Vec<Record>, i64)> {
    let consumer: BaseConsumer = connection
        .client_config()
        .set("group.id", "exactly-verify")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(10))?;
    let begin = from.max(low);
    let mut out = Vec::new();
    if begin >= to || begin >= high {
        return Ok((out, low));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(begin))?;
    consumer.assign(&tpl)?;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if m.offset() < to {
                    out.push(Record {
                        tp: tp.clone(),
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                    });
                }
                if m.offset() >= to - 1 {
                    break;
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => tracing::warn!(%tp, error = %e, "kafka error while auditing; retrying"),
            None => {}
        }
        if last_progress.elapsed() > KAFKA_STALL {
            return Err(Error::BrokerUnreachable {
                brokers: connection.brokers().to_string(),
                detail: format!("reading {tp} stalled for {KAFKA_STALL:?}"),
            });
        }
    }
    Ok((out, low))
}

/// Audits a Delta-sink pipeline's tables against its Kafka topics.
pub async fn verify(config: &PipelineConfig) -> Result<Audit> {
    let (Some(path), Some(dead_path)) = (config.table_path(), config.dead_letter_path()) else {
        return Err(Error::Sink("verify audits a Delta table; this pipeline's sink is not `delta`".into()));
    };
    let path = &path;
    let src = &config.source;
    let connection = crate::source::Connection::of(&config.source)?;
    let partitions = source::preflight(&connection, &src.topics, Duration::from_millis(src.connect_timeout_ms)).await?;
    let table = load_table(path.clone()).await?.ok_or_else(|| Error::Sink(format!("no Delta table at {path}")))?;
    let dead_table = load_table(dead_path.clone()).await?;
    let id = &config.id;
    let epoch = txn_version(&table, path, id).await?.unwrap_or(0).max(0) as u64;
    let mut ranges = BTreeMap::new();
    for tp in &partitions {
        let end = txn_version(&table, path, &partition_app_id(id, tp)).await?;
        let start = txn_version(&table, path, &start_app_id(id, tp)).await?;
        if let (Some(start), Some(end)) = (start, end) {
            ranges.insert(tp.clone(), (start, end));
        }
    }

    // What the data table holds: per-record rows (append, dedup), every decoded column so each
    // row can be compared with its Kafka record; or one row per group (aggregation).
    let decoder = crate::plan::Plan::new(config)?.table_decoder;
    let per_record = config.aggregate.is_none();
    let mut content_cols: Vec<String> = decoder.schema().fields().iter().map(|f| f.name().clone()).collect();
    if config.takes_writer_columns() {
        // The columns the topic's writer schemas added (the decoder learns them as it reads).
        let snapshot = table.snapshot().map_err(|e| Error::Sink(e.to_string()))?;
        let extra: Vec<String> = snapshot
            .schema()
            .fields()
            .map(|f| f.name().clone())
            .filter(|n| n != EPOCH_COL && !content_cols.contains(n))
            .collect();
        content_cols.extend(extra);
    }
    let mut data_cols: Vec<String> = Vec::new();
    if per_record {
        data_cols.extend(content_cols.iter().cloned());
        data_cols.push(EPOCH_COL.to_string());
    }
    let added = added_columns(&table)?;
    let fan_out = crate::transform::Outputs::new(config.sink.outputs(), &decoder.schema()).map_err(Error::Sink)?;
    let mut outputs = Vec::new();
    for (o, schema) in config.sink.outputs().iter().zip(fan_out.schemas(&decoder.schema())) {
        outputs.push(OutputTable::read(config, o, &schema, &partitions).await?);
    }
    if let Some(a) = &config.aggregate {
        data_cols.extend(a.group_by.iter().cloned());
        data_cols.extend(a.aggregates.iter().map(|s| s.column()));
    }
    let data_files = active_files(&table)?;
    let dead_files = match &dead_table {
        Some(t) => active_files(t)?,
        None => Vec::new(),
    };
    let (data_rows, dead_rows, orphan_files) = {
        let names: Vec<&str> = data_cols.iter().map(String::as_str).collect();
        let data = read_columns(&table, &data_files, &names).await?;
        let mut orphan_files = orphans(&table, path, &data_files).await?;
        let dead = match &dead_table {
            Some(t) => {
                orphan_files.extend(orphans(t, &dead_path, &dead_files).await?);
                read_columns(t, &dead_files, &[TOPIC_COL, PARTITION_COL, OFFSET_COL, "key", "value"]).await?
            }
            None => Vec::new(),
        };
        (data, dead, orphan_files)
    };
    let rows = if per_record { coordinates(&data_rows)? } else { FoundOffsets::new() };
    let row_content = if per_record { contents(&data_rows, &content_cols)? } else { HashMap::new() };
    let dead = coordinates(&dead_rows)?;
    let dead_bytes = dead_letter_bytes(&dead_rows)?;

    // Every partition of the topics, and any other partition the tables hold rows of.
    let mut all: Vec<TopicPartition> = partitions.clone();
    for tp in rows.keys().chain(dead.keys()) {
        if !all.contains(tp) {
            all.push(tp.clone());
        }
    }
    all.sort();
    let mut audits = Vec::new();
    let mut kafka_rows = Vec::new();
    for tp in all {
        let row_offsets = rows.get(&tp).cloned().unwrap_or_default();
        let dead_offsets = dead.get(&tp).cloned().unwrap_or_default();
        let Some((start, end)) = ranges.get(&tp).copied() else {
            // No progress recorded for this partition. If the topic holds records in it, the
            // pipeline never read them: all missing. Rows of it are unexpected either way.
            let unread = if partitions.contains(&tp) && (epoch > 0 || !ranges.is_empty()) {
                let (connection, tp2) = (connection.clone(), tp.clone());
                let (records, _) = tokio::task::spawn_blocking(move || kafka_records(&connection, &tp2, 0, i64::MAX))
                    .await
                    .map_err(|e| Error::Actor(e.to_string()))??;
                records.iter().map(|r| r.offset).collect()
            } else {
                Vec::new()
            };
            if unread.is_empty() && row_offsets.is_empty() && dead_offsets.is_empty() {
                continue;
            }
            audits.push(PartitionAudit {
                tp: Some(tp),
                expected: unread.len() as u64,
                rows: row_offsets.len() as u64,
                dead_lettered: dead_offsets.len() as u64,
                missing: unread.len() as u64,
                unexpected: (row_offsets.len() + dead_offsets.len()) as u64,
                unread: !unread.is_empty(),
                missing_sample: unread.into_iter().take(10).collect(),
                ..Default::default()
            });
            continue;
        };
        let (connection, tp2) = (connection.clone(), tp.clone());
        let (records, low) = tokio::task::spawn_blocking(move || kafka_records(&connection, &tp2, start, end))
            .await
            .map_err(|e| Error::Actor(e.to_string()))??;
        let expected: Vec<i64> = records.iter().map(|r| r.offset).collect();
        decoder.prepare(&records).await?;
        let decoded = decoder.decode(&records);
        let filtered: HashSet<i64> = decoded.filtered.iter().map(|(_, o)| *o).collect();
        let now_dead: HashSet<i64> = decoded.dead.iter().map(|d| d.offset).collect();
        let mut now_rows: HashSet<i64> =
            crate::decode::offsets(&decoded.rows).map(|o| o.values().iter().copied().collect()).unwrap_or_default();
        // `sink.outputs`: the rows fan out as the sink fans them (a row an output fails on is
        // a dead letter, in no table).
        let (main_rows, fanned) = if fan_out.is_empty() {
            (decoded.rows, Vec::new())
        } else {
            let f = fan_out.fan_out(&decoded.rows);
            if let Some(offs) = crate::decode::offsets(&decoded.rows) {
                for (i, _) in &f.failed {
                    now_rows.remove(&offs.value(*i));
                }
            }
            (crate::decode::without_raw(&f.main), f.outputs)
        };
        for (output, kept) in outputs.iter_mut().zip(&fanned) {
            output.check(&tp, kept, &expected, (start, end))?;
        }
        // Content: each row equals the decode of its record; each dead letter carries its
        // record's bytes.
        let mut mismatches = Vec::new();
        if per_record {
            let found = row_content.get(&tp);
            let offs = crate::decode::offsets(&main_rows).ok_or_else(|| Error::Sink("decoded rows without offsets".into()))?;
            for i in 0..main_rows.num_rows() {
                let Some((have, epoch)) = found.and_then(|m| m.get(&offs.value(i))) else { continue };
                // Columns added after the row's epoch were not written with it.
                let masked: Vec<&[String]> = added.iter().filter(|(_, at)| epoch < at).map(|(p, _)| p.as_slice()).collect();
                let want = row_text_masked(&main_rows, &content_cols, i, &masked)?;
                if *have != want {
                    mismatches
                        .push(format!("row at offset {}: table ({have}), Kafka's record decodes to ({want})", offs.value(i)));
                }
            }
        }
        // A row or dead letter of a record the filter drops should not be there.
        for o in row_offsets.iter().chain(&dead_offsets).filter(|o| filtered.contains(o)) {
            mismatches.push(format!("offset {o} is in a table, but transform.where drops its record"));
        }
        if let Some(bytes) = dead_bytes.get(&tp) {
            for r in &records {
                let Some(have) = bytes.get(&r.offset) else { continue };
                if have.0.as_deref() != r.key.as_deref() || have.1.as_deref() != r.payload.as_deref() {
                    mismatches.push(format!("dead letter at offset {}: its key/value are not the record's bytes", r.offset));
                }
            }
        }
        // Decoded again now: a row whose record fails, or a dead letter whose record decodes to
        // a row (a schema id the registry did not know yet when the pipeline asked), means the
        // epoch was decided differently than its records decide it. (A dedup watermark's late
        // and future dead letters are rows that decode: not comparable here.)
        for o in row_offsets.iter().filter(|o| now_dead.contains(o)) {
            mismatches.push(format!("row at offset {o}: Kafka's record does not decode now (a dead letter)"));
        }
        if config.dedup.as_ref().is_none_or(|d| d.watermark_field.is_none()) {
            for o in dead_offsets.iter().filter(|o| now_rows.contains(o)) {
                mismatches.push(format!("dead letter at offset {o}: Kafka's record decodes to a row now"));
            }
        }
        if config.dedup.is_some() || config.aggregate.is_some() {
            kafka_rows.push(main_rows);
        }
        let mut counts: HashMap<i64, u64> = HashMap::new();
        for o in row_offsets.iter().chain(&dead_offsets) {
            *counts.entry(*o).or_default() += 1;
        }
        let expected_set: HashSet<i64> = expected.iter().copied().collect();
        // Offset-level completeness holds for append pipelines; dedup drops duplicates on
        // purpose and aggregation keeps groups, so theirs is checked key by key below.
        let mut missing: Vec<i64> = if config.dedup.is_none() && per_record {
            expected.iter().copied().filter(|o| !counts.contains_key(o) && !filtered.contains(o)).collect()
        } else {
            Vec::new()
        };
        missing.sort_unstable();
        let duplicated = counts.values().filter(|n| **n > 1).map(|n| n - 1).sum();
        let unverifiable = counts.keys().filter(|o| **o < low && **o >= start).count() as u64;
        let unexpected = counts.keys().filter(|o| !expected_set.contains(o) && (**o >= low || **o < start)).count() as u64;
        audits.push(PartitionAudit {
            tp: Some(tp),
            start,
            end,
            expected: expected.len() as u64,
            rows: row_offsets.len() as u64,
            dead_lettered: dead_offsets.len() as u64,
            filtered: filtered.len() as u64,
            missing: missing.len() as u64,
            duplicated,
            unexpected,
            mismatched: mismatches.len() as u64,
            unverifiable,
            unread: false,
            missing_sample: missing.into_iter().take(10).collect(),
            mismatch_sample: mismatches.into_iter().take(10).collect(),
        });
    }

    let keys = if let Some(a) = &config.aggregate {
        // Dedup (if any) before aggregating: one row per key.
        let mut seen = HashSet::new();
        let mut rows = Vec::new();
        for b in &kafka_rows {
            let mut keep = Vec::with_capacity(b.num_rows());
            for i in 0..b.num_rows() {
                keep.push(match &config.dedup {
                    Some(d) => seen.insert(key_of(b, &d.key, i)?),
                    None => true,
                });
            }
            rows.push(
                deltalake::arrow::compute::filter_record_batch(b, &BooleanArray::from(keep))
                    .map_err(|e| Error::Sink(e.to_string()))?,
            );
        }
        let want = recompute(&rows, a)?;
        let mut have: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut duplicated = 0;
        for b in &data_rows {
            for i in 0..b.num_rows() {
                let vals = a.aggregates.iter().map(|s| Ok(cell(column(b, &s.column())?, i))).collect::<Result<Vec<_>>>()?;
                if have.insert(key_of(b, &a.group_by, i)?, vals).is_some() {
                    duplicated += 1;
                }
            }
        }
        let mut k = KeyAudit {
            kind: "aggregate".into(),
            expected: want.len() as u64,
            found: have.len() as u64,
            duplicated,
            ..Default::default()
        };
        for (g, vals) in &want {
            match have.get(g) {
                None => {
                    k.missing += 1;
                    if k.samples.len() < 10 {
                        k.samples.push(format!("group {g} missing from the table (expected {vals:?})"));
                    }
                }
                Some(h) if h != vals => {
                    k.mismatched += 1;
                    if k.samples.len() < 10 {
                        k.samples.push(format!("group {g}: table {h:?}, recomputed {vals:?}"));
                    }
                }
                _ => {}
            }
        }
        Some(k)
    } else if let Some(d) = &config.dedup {
        // Records dead-lettered (too late for the watermark, or too far ahead) are accounted for by the
        // dead-letter table; every other key of the topic must be in the data table once.
        let dead_set: HashSet<(String, i64)> =
            dead.iter().flat_map(|(tp, offs)| offs.iter().map(move |o| (tp.to_string(), *o))).collect();
        let mut want = HashSet::new();
        for b in &kafka_rows {
            let (topic, part, off) = (column(b, TOPIC_COL)?, column(b, PARTITION_COL)?, column(b, OFFSET_COL)?);
            for i in 0..b.num_rows() {
                let tp = TopicPartition::new(&cell(topic, i), cell(part, i).parse().unwrap_or(-1));
                if dead_set.contains(&(tp.to_string(), cell(off, i).parse().unwrap_or(-1))) {
                    continue;
                }
                want.insert(key_of(b, &d.key, i)?);
            }
        }
        let mut have: HashMap<String, u64> = HashMap::new();
        for b in &data_rows {
            for i in 0..b.num_rows() {
                *have.entry(key_of(b, &d.key, i)?).or_default() += 1;
            }
        }
        let mut k =
            KeyAudit { kind: "dedup".into(), expected: want.len() as u64, found: have.len() as u64, ..Default::default() };
        for (key, n) in &have {
            if *n > 1 {
                k.duplicated += n - 1;
                if k.samples.len() < 10 {
                    k.samples.push(format!("key {key} is in the table {n} times"));
                }
            }
        }
        for key in &want {
            if !have.contains_key(key) {
                k.missing += 1;
                if k.samples.len() < 10 {
                    k.samples.push(format!("key {key} is in the topic but not in the table"));
                }
            }
        }
        Some(k)
    } else {
        None
    };
    // A group's table: the fencing rule on its log (reading every commit a one-process table
    // keeps would cost the audit a read per epoch for nothing).
    let (members, fencing) = if config.source.group_id.is_some() || (epoch == 0 && !ranges.is_empty()) {
        check_fencing(&member_commits(&table).await?)
    } else {
        (BTreeMap::new(), Vec::new())
    };
    // Each epoch lands in each table once (ARCHITECTURE.md, "The commit rule").
    let mut twice = epochs_committed_twice(&table, path, id).await?;
    if let Some(t) = &dead_table {
        twice.extend(epochs_committed_twice(t, &dead_path, id).await?);
    }
    for o in &outputs {
        if let Some(t) = load_table(o.audit.table.clone()).await? {
            twice.extend(epochs_committed_twice(&t, &o.audit.table, id).await?);
        }
    }
    Ok(Audit {
        twice,
        pipeline: id.clone(),
        table: path.clone(),
        dead_letter_table: dead_path,
        epoch,
        partitions: audits,
        orphan_files,
        keys,
        members,
        fencing,
        outputs: outputs.into_iter().map(|o| o.audit).collect(),
    })
}
