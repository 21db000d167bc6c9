//! The Delta Lake sink: each epoch is ONE Delta commit per table, carrying its Parquet files and
//! the pipeline's progress as `txn` actions:
//!
//! - `txn(appId = <pipeline id>, version = epoch)` — what Spark's `DeltaSink` checks to skip a
//!   batch it already wrote;
//! - `txn(appId = "<pipeline id>-<topic>-<partition>", version = next offset)` for every assigned
//!   partition — the epoch's cut, as kafka-delta-ingest records it, so recovery can rebuild the
//!   checkpoint (or replay the epoch) from the table alone;
//! - `txn(appId = "<pipeline id>-<topic>-<partition>-start", version = first offset)`, once per
//!   partition — where the pipeline started reading, for `exactly verify`.
//!
//! Rows go to the data table; records that did not decode go to the dead-letter table (created
//! on the first dead letter). Delta has no commit across tables, so each table carries the txn
//! actions itself and each is skipped when it already holds the epoch: committing a replayed
//! epoch again writes only to the tables that missed it.
//!
//! **Architecture Invariant:** a table is written for epoch E only if its pipeline txn version
//! is below E; if it is already E, the cut it recorded must equal the batch's cut (a mismatch is
//! an error, never a silent skip).

use std::collections::HashSet;
use std::sync::Arc;

use deltalake::arrow::datatypes::{DataType as ArrowType, SchemaRef, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, DataType, StructField, Transaction};
use deltalake::protocol::{DeltaOperation, OutputMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::json;
use tokio::sync::Mutex;

use super::storage::{table_builder, TableLocation};
use super::{CommittedEpoch, Sink};
use crate::decode::{dead_letter_batch, dead_letter_schema, with_epoch};
use crate::error::{Error, Result};
use crate::failpoint::FailPoints;
use crate::maintenance::{self, Settings};
use crate::record::{EpochBatch, Offsets, PartitionRange, TopicPartition};
use crate::state::Output;

/// Tables created by a pipeline say so in their description, which starts with this.
pub const OWNER_PREFIX: &str = "exactly pipeline '";

/// The description of a table created by `pipeline`.
pub fn owner_description(pipeline: &str, what: &str) -> String {
    format!("{OWNER_PREFIX}{pipeline}' ({what})")
}

/// The pipeline that created a table, from its description.
pub fn owner_of(description: Option<&str>) -> Option<&str> {
    description?.strip_prefix(OWNER_PREFIX)?.split('\'').next()
}

/// The txn appId holding a partition's next offset.
pub fn partition_app_id(pipeline: &str, tp: &TopicPartition) -> String {
    format!("{pipeline}-{}-{}", tp.topic, tp.partition)
}

/// The txn appId holding the offset a partition started at.
pub fn start_app_id(pipeline: &str, tp: &TopicPartition) -> String {
    format!("{pipeline}-{}-{}-start", tp.topic, tp.partition)
}

/// A Delta error on the table at `path`.
pub fn delta_err(path: &TableLocation, e: impl std::fmt::Display) -> Error {
    Error::Delta { table: path.to_string(), detail: e.to_string() }
}

/// Loads the table at `path` (a local directory or an object-store location); `None` if there
/// is no Delta table there.
pub async fn load_table(path: impl Into<TableLocation>) -> Result<Option<DeltaTable>> {
    let path = path.into();
    if path.local_path().is_some_and(|dir| !dir.join("_delta_log").is_dir()) {
        return Ok(None);
    }
    let mut table = table_builder(&path)?.build().map_err(|e| delta_err(&path, e))?;
    if path.local_path().is_none() {
        // No log on the store: no table (asking delta-rs to load it logs an error first).
        use futures::StreamExt;
        let log = deltalake::Path::from("_delta_log/");
        let first = table.log_store().object_store(None).list(Some(&log)).next().await;
        match first {
            None => return Ok(None),
            Some(Err(e)) => return Err(delta_err(&path, e)),
            Some(Ok(_)) => {}
        }
    }
    match table.load().await {
        Ok(()) => Ok(table.version().map(|_| table)),
        Err(deltalake::DeltaTableError::NotATable(_)) => Ok(None), // no commit yet, or nothing there
        Err(e) => Err(delta_err(&path, e)),
    }
}

/// The version of `app_id`'s txn in the table, if any.
pub async fn txn_version(table: &DeltaTable, path: &TableLocation, app_id: &str) -> Result<Option<i64>> {
    let snapshot = table.snapshot().map_err(|e| delta_err(path, e))?;
    snapshot.transaction_version(table.log_store().as_ref(), app_id).await.map_err(|e| delta_err(path, e))
}

/// The cut recorded in a table for `partitions` (partitions it never recorded are left out).
pub async fn recorded_cut(
    table: &DeltaTable,
    path: &TableLocation,
    pipeline: &str,
    partitions: &[TopicPartition],
) -> Result<Offsets> {
    let mut cut = Offsets::new();
    for tp in partitions {
        if let Some(v) = txn_version(table, path, &partition_app_id(pipeline, tp)).await? {
            cut.insert(tp.clone(), v);
        }
    }
    Ok(cut)
}

fn delta_type(t: &ArrowType) -> Result<DataType> {
    Ok(match t {
        ArrowType::Utf8 => DataType::STRING,
        ArrowType::Int64 => DataType::LONG,
        ArrowType::Int32 => DataType::INTEGER,
        ArrowType::Float64 => DataType::DOUBLE,
        ArrowType::Boolean => DataType::BOOLEAN,
        ArrowType::Binary => DataType::BINARY,
        ArrowType::Timestamp(TimeUnit::Microsecond, Some(_)) => DataType::TIMESTAMP,
        other => return Err(Error::Sink(format!("no Delta type for {other}"))),
    })
}

fn delta_fields(schema: &SchemaRef) -> Result<Vec<StructField>> {
    schema.fields().iter().map(|f| Ok(StructField::new(f.name(), delta_type(f.data_type())?, f.is_nullable()))).collect()
}

/// How often a bucket-replacing commit reads the table again after another writer committed
/// first, before the epoch fails (and the pipeline restarts it).
const REPLACE_ATTEMPTS: u32 = 20;

/// A commit that failed only because another commit landed first.
fn lost_race(e: &deltalake::DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    matches!(
        e,
        deltalake::DeltaTableError::VersionAlreadyExists(_)
            | deltalake::DeltaTableError::Transaction { source: TransactionError::MaxCommitAttempts(_) }
    )
}

/// Remove actions for every current file of `buckets` (`None`: every file of the table).
fn bucket_removes(table: &DeltaTable, path: &TableLocation, buckets: Option<&HashSet<u32>>) -> Result<Vec<Action>> {
    let snapshot = table.snapshot().map_err(|e| delta_err(path, e))?;
    let mut out = Vec::new();
    for file in snapshot.log_data().iter() {
        let bucket =
            file.partition_values_map().get(crate::state::BUCKET_COL).cloned().flatten().and_then(|b| b.parse::<u32>().ok());
        let hit = match buckets {
            None => true,
            Some(set) => bucket.is_some_and(|b| set.contains(&b)),
        };
        if hit {
            out.push(Action::Remove(file.remove_action(true)));
        }
    }
    Ok(out)
}

/// One table the sink writes.
struct Spec {
    path: TableLocation,
    schema: SchemaRef,
    partition_by: Vec<String>,
    name: &'static str,
    /// Whether auto-compaction applies (append tables; aggregate tables hold a file per bucket).
    compact: bool,
    /// Its table properties and maintenance.
    settings: Settings,
    /// What its maintenance last saw.
    stats: Arc<maintenance::SharedStats>,
}

impl Spec {
    /// The label of the table in metrics.
    fn label(&self) -> &'static str {
        if self.name == "data" {
            "data"
        } else {
            "dead_letters"
        }
    }
}

/// What one table gets in an epoch's commit.
enum Write {
    /// New files.
    Append(Vec<RecordBatch>),
    /// New files replacing the files of these `_bucket`s (`None`: every file).
    Replace { buckets: Option<HashSet<u32>>, rows: Vec<RecordBatch>, mode: crate::config::OutputMode },
}

/// An open table and what the sink knows of it.
struct Open {
    table: DeltaTable,
    /// Its background maintenance (checkpoints, log cleanup, compaction).
    maintenance: Option<maintenance::Worker>,
    /// The pipeline's txn version in this table (0: none).
    version: u64,
    /// Partitions whose start offset the table already recorded.
    starts: HashSet<TopicPartition>,
}

#[derive(Default)]
struct Tables {
    data: Option<Open>,
    dead: Option<Open>,
    /// Whether `data`/`dead` reflect storage (refreshed by `committed_epoch`).
    loaded: bool,
}

/// Appends epochs to a Delta table and its dead-letter table, exactly once.
pub struct DeltaSink {
    pipeline: String,
    data: Spec,
    dead: Spec,
    failpoints: Arc<FailPoints>,
    tables: Mutex<Tables>,
}

impl DeltaSink {
    /// A sink for pipeline `pipeline` writing rows of `schema` (with `_epoch`) to the `data`
    /// table and dead letters to the `dead` one, each with its maintenance settings. Nothing is
    /// touched until the first call.
    pub fn new(
        pipeline: &str,
        (path, settings): (TableLocation, Settings),
        (dead_letter_path, dead_letter_settings): (TableLocation, Settings),
        schema: SchemaRef,
        partition_by: Vec<String>,
        failpoints: Arc<FailPoints>,
    ) -> Self {
        // Aggregate tables are partitioned by `_bucket` and hold one file per bucket.
        let compact = partition_by.is_empty();
        DeltaSink {
            pipeline: pipeline.to_string(),
            data: Spec { path, schema, partition_by, name: "data", compact, settings, stats: Default::default() },
            dead: Spec {
                path: dead_letter_path,
                schema: dead_letter_schema(),
                partition_by: Vec::new(),
                name: "dead letters",
                compact: true,
                settings: dead_letter_settings,
                stats: Default::default(),
            },
            failpoints,
            tables: Mutex::new(Tables::default()),
        }
    }

    /// Opens the table of `spec` if it exists, checking that it is this pipeline's and has its
    /// schema; creates it when `create` is set.
    async fn open(&self, spec: &Spec, partitions: &[TopicPartition], create: bool) -> Result<Option<Open>> {
        let path = &spec.path;
        let table = match load_table(path.clone()).await? {
            Some(t) => t,
            None if !create => return Ok(None),
            None => {
                if let Some(dir) = path.local_path() {
                    std::fs::create_dir_all(dir).map_err(|e| delta_err(path, e))?;
                }
                let table = table_builder(path)?.build().map_err(|e| delta_err(path, e))?;
                let created = table
                    .create()
                    .with_columns(delta_fields(&spec.schema)?)
                    .with_partition_columns(spec.partition_by.clone())
                    .with_comment(owner_description(&self.pipeline, spec.name))
                    .with_configuration(spec.settings.table_properties().into_iter().map(|(k, v)| (k, Some(v))))
                    .await;
                match created {
                    Ok(t) => t,
                    // Lost a creation race: use the table the winner made.
                    Err(e) => load_table(path.clone()).await?.ok_or_else(|| delta_err(path, e))?,
                }
            }
        };
        let snapshot = table.snapshot().map_err(|e| delta_err(path, e))?;
        if let Some(owner) = owner_of(snapshot.metadata().description()) {
            if owner != self.pipeline {
                return Err(Error::Recovery(format!(
                    "the table at {} belongs to pipeline '{owner}', not '{}'; give this pipeline its own sink.path",
                    path.display(),
                    self.pipeline
                )));
            }
        }
        let want = delta_fields(&spec.schema)?;
        let have: Vec<StructField> = snapshot.schema().fields().cloned().collect();
        if want != have {
            let show =
                |fs: &[StructField]| fs.iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ");
            return Err(Error::Recovery(format!(
                "the table at {} has columns [{}] but the pipeline writes [{}]; point sink.path at a new table or change decode.fields back",
                path.display(),
                show(&have),
                show(&want)
            )));
        }
        let table = Self::apply_properties(table, path, &spec.settings).await?;
        let version = txn_version(&table, path, &self.pipeline).await?.unwrap_or(0).max(0) as u64;
        let mut starts = HashSet::new();
        for tp in partitions {
            if txn_version(&table, path, &start_app_id(&self.pipeline, tp)).await?.is_some() {
                starts.insert(tp.clone());
            }
        }
        let maintenance = maintenance::Worker::spawn(
            table.clone(),
            path.clone(),
            spec.settings.clone(),
            spec.compact,
            spec.label(),
            self.failpoints.clone(),
            spec.stats.clone(),
        );
        Ok(Some(Open { table, maintenance: Some(maintenance), version, starts }))
    }

    /// Brings the table properties the config stands for (checkpoint interval, retentions) up
    /// to date, in a commit of their own, when they differ.
    async fn apply_properties(table: DeltaTable, path: &TableLocation, settings: &Settings) -> Result<DeltaTable> {
        let want = settings.table_properties();
        let have = table.snapshot().map_err(|e| delta_err(path, e))?.metadata().configuration().clone();
        let stale: std::collections::HashMap<String, String> = want.into_iter().filter(|(k, v)| have.get(k) != Some(v)).collect();
        if stale.is_empty() {
            return Ok(table);
        }
        tracing::info!(table = %path.display(), properties = ?stale, "updating the table's properties to the config");
        table
            .set_tbl_properties()
            .with_properties(stale)
            .with_commit_properties(maintenance::commit_properties())
            .await
            .map_err(|e| delta_err(path, e))
    }

    /// Writes `rows` as one commit of epoch `epoch` to `open`, unless it already holds it.
    async fn commit_table(
        &self,
        spec: &Spec,
        open: &mut Open,
        epoch: u64,
        write: Write,
        ranges: &[PartitionRange],
    ) -> Result<()> {
        let path = &spec.path;
        if open.version >= epoch {
            // Already committed (a replayed epoch): the recorded cut must be this epoch's.
            if open.version == epoch {
                let tps: Vec<TopicPartition> = ranges.iter().map(|r| r.tp.clone()).collect();
                let recorded = recorded_cut(&open.table, path, &self.pipeline, &tps).await?;
                if let Err(diff) = crate::replay::check_recorded_cut(&recorded, ranges) {
                    return Err(Error::Recovery(format!(
                        "epoch {epoch} is already in {} with a different cut ({diff}); refusing to skip or rewrite it",
                        path.display()
                    )));
                }
            }
            tracing::info!(table = %path.display(), epoch, "epoch already committed to this table; skipped");
            return Ok(());
        }
        let (rows, replace, output_mode) = match write {
            Write::Append(rows) => (rows, None, OutputMode::Append),
            Write::Replace { buckets, rows, mode } => {
                let m = match mode {
                    crate::config::OutputMode::Complete => OutputMode::Complete,
                    crate::config::OutputMode::Update => OutputMode::Update,
                };
                (rows, Some(buckets), m)
            }
        };
        let table_label = spec.label();
        let t_parquet = std::time::Instant::now();
        let mut adds = Vec::new();
        if rows.iter().any(|b| b.num_rows() > 0) {
            let mut writer = RecordBatchWriter::for_table(&open.table).map_err(|e| delta_err(path, e))?;
            for b in rows.into_iter().filter(|b| b.num_rows() > 0) {
                writer.write(b).await.map_err(|e| delta_err(path, e))?;
            }
            adds = writer.flush().await.map_err(|e| delta_err(path, e))?;
        }
        metrics::histogram!(crate::metrics::COMMIT_SECONDS, "phase" => "parquet").record(t_parquet.elapsed().as_secs_f64());
        metrics::counter!(crate::metrics::DELTA_FILES_ADDED, "table" => table_label).increment(adds.len() as u64);
        metrics::counter!(crate::metrics::DELTA_BYTES_WRITTEN, "table" => table_label)
            .increment(adds.iter().map(|a| a.size.max(0) as u64).sum());
        self.failpoints.hit("after-parquet-write").await?;
        let t_delta = std::time::Instant::now();
        if let Some(fresh) = open.maintenance.as_ref().and_then(|m| m.take_fresh()) {
            // A snapshot read from a newer Delta checkpoint: catching it up costs a few commits,
            // where the one kept so far carries every commit since the pipeline opened the table.
            let mut fresh = fresh;
            fresh.update_incremental(None).await.map_err(|e| delta_err(path, e))?;
            if fresh.version() >= open.table.version() {
                open.table = fresh;
            }
        }
        let mut txns = vec![Transaction::new(&self.pipeline, epoch as i64)];
        for r in ranges {
            txns.push(Transaction::new(partition_app_id(&self.pipeline, &r.tp), r.end));
            if !open.starts.contains(&r.tp) {
                txns.push(Transaction::new(start_app_id(&self.pipeline, &r.tp), r.start));
            }
        }
        let ranges_json: Vec<_> = ranges
            .iter()
            .map(|r| json!({"topic": &*r.tp.topic, "partition": r.tp.partition, "start": r.start, "end": r.end, "records": r.records}))
            .collect();
        let op = DeltaOperation::StreamingUpdate { output_mode, query_id: self.pipeline.clone(), epoch_id: epoch as i64 };
        let mut attempt = 0;
        let finalized = loop {
            attempt += 1;
            let mut props = maintenance::commit_properties().with_application_transactions(txns.clone()).with_metadata([(
                "exactly".to_string(),
                json!({"pipeline": &self.pipeline, "epoch": epoch, "ranges": ranges_json}),
            )]);
            let mut actions: Vec<Action> = Vec::new();
            if let Some(buckets) = &replace {
                // The files to remove are those current at commit time: read the latest version,
                // and land exactly on it (no retries that rebase past other commits). delta-rs
                // does not count a rewrite's `dataChange = false` removes as a conflict, so a
                // commit rebased past an OPTIMIZE would keep the OPTIMIZE's copy of a bucket next
                // to the new rows. Another commit in between: read again and retry.
                open.table.update_incremental(None).await.map_err(|e| delta_err(path, e))?;
                actions.extend(bucket_removes(&open.table, path, buckets.as_ref())?);
                props = props.with_max_retries(0);
            }
            actions.extend(adds.iter().cloned().map(Action::Add));
            let snapshot = open.table.snapshot().map_err(|e| delta_err(path, e))?;
            self.failpoints.hit("before-delta-commit").await?;
            let committed =
                CommitBuilder::from(props).with_actions(actions).build(Some(snapshot), open.table.log_store(), op.clone()).await;
            match committed {
                Ok(f) => break f,
                Err(e) if replace.is_some() && attempt < REPLACE_ATTEMPTS && lost_race(&e) => {
                    metrics::counter!(crate::metrics::DELTA_COMMIT_RETRIES, "table" => table_label).increment(1);
                    tracing::info!(table = %path.display(), epoch, attempt, "another writer committed first; replacing the buckets' current files again");
                }
                Err(e) => return Err(delta_err(path, e)),
            }
        };
        let committed_version = finalized.version() as i64;
        open.table.state = Some(finalized.snapshot());
        if let Some(m) = &open.maintenance {
            m.committed(committed_version);
        }
        metrics::histogram!(crate::metrics::COMMIT_SECONDS, "phase" => "delta").record(t_delta.elapsed().as_secs_f64());
        open.version = epoch;
        open.starts.extend(ranges.iter().map(|r| r.tp.clone()));
        Ok(())
    }

    async fn refresh(&self, tables: &mut Tables, partitions: &[TopicPartition]) -> Result<()> {
        tables.data = self.open(&self.data, partitions, true).await?;
        tables.dead = self.open(&self.dead, partitions, false).await?;
        tables.loaded = true;
        Ok(())
    }
}

impl Sink for DeltaSink {
    fn name(&self) -> &str {
        "delta"
    }

    fn preflight(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            super::storage::preflight(&self.data.path).await?;
            super::storage::preflight(&self.dead.path).await
        }
        .boxed()
    }

    fn table_stats(&self) -> Option<maintenance::TableStats> {
        Some(self.data.stats.get())
    }

    fn durable(&self) -> bool {
        true
    }

    fn committed_epoch<'a>(&'a self, partitions: &'a [TopicPartition]) -> BoxFuture<'a, Result<Option<CommittedEpoch>>> {
        async move {
            let mut tables = self.tables.lock().await;
            self.refresh(&mut tables, partitions).await?;
            let mut best: Option<CommittedEpoch> = None;
            for (spec, open) in [(&self.data, &tables.data), (&self.dead, &tables.dead)] {
                let Some(open) = open else { continue };
                if open.version == 0 || best.as_ref().is_some_and(|b| b.epoch >= open.version) {
                    continue;
                }
                let offsets = recorded_cut(&open.table, &spec.path, &self.pipeline, partitions).await?;
                best = Some(CommittedEpoch { epoch: open.version, offsets });
            }
            Ok(best)
        }
        .boxed()
    }

    fn commit<'a>(&'a self, batch: &'a EpochBatch) -> BoxFuture<'a, Result<()>> {
        async move {
            let mut tables = self.tables.lock().await;
            if !tables.loaded {
                let tps: Vec<TopicPartition> = batch.ranges.iter().map(|r| r.tp.clone()).collect();
                self.refresh(&mut tables, &tps).await?;
            }
            let epoch = batch.epoch;
            let stamp = |rows: &[RecordBatch]| -> Result<Vec<RecordBatch>> {
                rows.iter().map(|b| with_epoch(b, epoch)).collect::<Result<Vec<_>, _>>().map_err(|e| Error::Sink(e.to_string()))
            };
            let write = match &batch.output {
                Output::Append(rows) => Write::Append(stamp(rows)?),
                Output::Replace { buckets, rows, mode } => Write::Replace {
                    buckets: buckets.as_ref().map(|b| b.iter().copied().collect()),
                    rows: stamp(rows)?,
                    mode: *mode,
                },
            };
            // The data table first: it is committed every epoch, so it always holds the cut.
            let data = tables.data.as_mut().expect("data table opened by refresh");
            self.commit_table(&self.data, data, epoch, write, &batch.ranges).await?;
            self.failpoints.hit("after-delta-commit").await?;
            if !batch.dead_letters.is_empty() {
                if tables.dead.is_none() {
                    let tps: Vec<TopicPartition> = batch.ranges.iter().map(|r| r.tp.clone()).collect();
                    tables.dead = self.open(&self.dead, &tps, true).await?;
                }
                let dead = tables.dead.as_mut().expect("dead-letter table opened");
                let rows = vec![dead_letter_batch(&batch.dead_letters, epoch).map_err(|e| Error::Sink(e.to_string()))?];
                self.commit_table(&self.dead, dead, epoch, Write::Append(rows), &batch.ranges).await?;
            }
            Ok(())
        }
        .boxed()
    }
}
