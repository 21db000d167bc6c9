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
//! Rows go to the data table, then to each `sink.outputs` table; records that did not decode go
//! to the dead-letter table last (created on the first dead letter; the data table marks each
//! epoch that has some: `dead_letters_app_id`). Delta has no commit across tables, so each table
//! carries the txn actions itself, and every commit goes through [`commit::commit`]: a table that
//! already holds the epoch with this cut holds (a replay writes only to the tables that missed
//! it), one that holds it by another writer is refused (ARCHITECTURE.md, "The commit rule").

pub mod commit;
pub mod dv;
mod group;
pub mod rows;
pub mod table;
pub mod txn;
pub mod upsert;
mod write;

pub use table::{delta_err, load_table};
pub use txn::*;
use write::*;

use std::collections::HashSet;
use std::sync::Arc;

use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::{Action, StructField, Transaction};
use deltalake::protocol::{DeltaOperation, OutputMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::DeltaTable;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::json;
use tokio::sync::Mutex;

use super::Sink;
use crate::decode::{dead_letter_batch, dead_letter_schema, with_epoch};
use crate::error::{Error, Result};
use crate::maintenance::{self, Settings};
use crate::model::TableLocation;
use crate::model::{Offsets, PartitionRange, TopicPartition};
use crate::model::{Recorded, TableRecord};
use crate::sink::storage::table_builder;
use crate::sink::EpochBatch;
use crate::state::Output;
use crate::testing::failpoint::FailPoints;

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
    /// Whether its rows carry the columns Avro writer schemas added (so each epoch's rows may
    /// grow the table, or lack some of its columns).
    writer_columns: bool,
    /// An upsert table (`[upsert]`), with its key and sequence: deletion vectors enabled, each
    /// epoch's rows in one file tagged with the epoch, compacted in the epochs' commits, not in
    /// the background (see [`upsert`]).
    upsert: Option<crate::config::UpsertConfig>,
}

impl Spec {
    /// A table named `name` (its metrics label, see [`Spec::label`]), its maintenance fresh.
    fn new(path: TableLocation, schema: SchemaRef, partition_by: Vec<String>, name: &'static str, settings: Settings) -> Spec {
        // Aggregate tables are partitioned by `_bucket` and hold one file per bucket; append
        // tables (partitioned or not) compact by size tier, partition by partition.
        let compact = !partition_by.iter().any(|c| c == crate::model::BUCKET_COL);
        Spec {
            path,
            schema,
            partition_by,
            name,
            compact,
            settings,
            stats: Default::default(),
            writer_columns: false,
            upsert: None,
        }
    }

    /// The label of the table in metrics.
    fn label(&self) -> &'static str {
        match self.name {
            "data" => "data",
            "dead letters" => "dead_letters",
            _ => "output",
        }
    }
}

/// What one table gets in an epoch's commit.
enum Write {
    /// New files.
    Append(Vec<RecordBatch>),
    /// New files replacing the files of these `_bucket`s (`None`: every file).
    Replace { buckets: Option<HashSet<u32>>, rows: Vec<RecordBatch>, mode: crate::config::OutputMode },
    /// The epoch's one file of upserted rows, and rows of earlier epochs' files to mark deleted
    /// (see [`crate::state::Output::Upsert`]).
    Upsert { rows: Vec<RecordBatch>, deletes: Vec<(u64, Vec<u32>)> },
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
    /// The schema the table takes in the next data commit (`sink.schema_evolution`) and the
    /// paths it adds, until a commit carrying it lands.
    evolve: Option<super::schema::Growth>,
    /// An upsert table's compaction credit, in rows (see [`upsert::CREDIT_PER_CHANGE`]).
    credit: u64,
}

impl Open {
    /// Tells the table's maintenance about a commit of this sink's that landed (the table
    /// already holds it), and ends a schema evolution the commit carried.
    fn landed(&mut self, version: i64) {
        if let Some(m) = &self.maintenance {
            m.committed(version);
        }
        if let (Some((want, _)), Ok(snapshot)) = (&self.evolve, self.table.snapshot()) {
            if snapshot.schema().as_ref() == want {
                self.evolve = None;
            }
        }
    }
}

#[derive(Default)]
struct Tables {
    data: Option<Open>,
    dead: Option<Open>,
    /// `sink.outputs`' tables, in order.
    outputs: Vec<Option<Open>>,
    /// Whether `data`/`dead` reflect storage (refreshed by `committed_epoch`).
    loaded: bool,
    /// Group mode: the fencing token of each partition this member claimed. A commit finding
    /// another token in the table is fenced.
    tokens: std::collections::HashMap<TopicPartition, i64>,
}

/// Appends epochs to a Delta table and its dead-letter table, exactly once.
pub struct DeltaSink {
    pipeline: String,
    data: Spec,
    dead: Spec,
    failpoints: Arc<FailPoints>,
    tables: Mutex<Tables>,
    /// Group mode: this member's name (in every commit's `exactly` metadata); `None`: one
    /// process owns the pipeline.
    member: Option<String>,
    /// `sink.schema_evolution` of the data table.
    evolution: crate::config::SchemaEvolution,
    /// `sink.outputs`: their tables, and how the data table's rows fan out to them.
    outputs: Vec<Spec>,
    fan_out: crate::transform::Outputs,
    /// What its epochs mean (recorded in each epoch's commits; see `runtime::recovery`).
    meaning: crate::model::Meaning,
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
        DeltaSink {
            pipeline: pipeline.to_string(),
            data: Spec::new(path, schema, partition_by, "data", settings),
            dead: Spec::new(dead_letter_path, dead_letter_schema(), Vec::new(), "dead letters", dead_letter_settings),
            failpoints,
            tables: Mutex::new(Tables::default()),
            member: None,
            evolution: crate::config::SchemaEvolution::None,
            outputs: Vec::new(),
            fan_out: Default::default(),
            meaning: Default::default(),
        }
    }

    /// This sink, also writing `outputs` (`sink.outputs`: each a table with its settings, its
    /// schema and partition columns), fed through `fan_out`, in every epoch's commit.
    pub fn with_outputs(
        mut self,
        outputs: Vec<(TableLocation, Settings, SchemaRef, Vec<String>)>,
        fan_out: crate::transform::Outputs,
    ) -> Self {
        self.outputs = outputs
            .into_iter()
            .map(|(path, settings, schema, partition_by)| Spec::new(path, schema, partition_by, "output", settings))
            .collect();
        self.fan_out = fan_out;
        self
    }

    /// This sink, recording `meaning` in every epoch's commits.
    pub fn meaning(mut self, meaning: crate::model::Meaning) -> Self {
        self.meaning = meaning;
        self
    }

    /// This sink, growing the data table's schema as `evolution` allows.
    pub fn evolving(mut self, evolution: crate::config::SchemaEvolution) -> Self {
        self.evolution = evolution;
        self
    }

    /// This sink, taking the columns Avro writer schemas add into the data table as they
    /// arrive (see [`crate::decode::Decoder::taking_writer_columns`]), when `take` is set.
    pub fn taking_writer_columns(mut self, take: bool) -> Self {
        self.data.writer_columns = take;
        self
    }

    /// This sink, writing an upsert table (`[upsert]`) when `upsert` is given: see [`Spec`].
    pub fn upserting(mut self, upsert: Option<crate::config::UpsertConfig>) -> Self {
        self.data.compact &= upsert.is_none();
        self.data.upsert = upsert;
        self
    }

    /// The sink of one member of a group (`source.group_id`), named `member`.
    pub fn in_group(mut self, member: String) -> Self {
        self.member = Some(member);
        self
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
                let mut properties = spec.settings.table_properties();
                if spec.upsert.is_some() {
                    properties.insert(DELETION_VECTORS.into(), "true".into());
                }
                let created = commit::create(
                    table
                        .create()
                        .with_columns(delta_fields(&spec.schema)?)
                        .with_partition_columns(spec.partition_by.clone())
                        .with_comment(owner_description(&self.pipeline, spec.name))
                        // The user's own keys (`sink.table_properties`; `delta.*` ones are checked
                        // against Delta's when the config is planned).
                        .with_raise_if_key_not_exists(false)
                        .with_configuration(properties.into_iter().map(|(k, v)| (k, Some(v)))),
                )
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
                return Err(Error::OtherPipeline {
                    what: format!("the table at {}", path.display()),
                    owner: owner.to_string(),
                    pipeline: self.pipeline.clone(),
                    setting: "sink.path",
                });
            }
        }
        if spec.upsert.is_some() && !deletion_vectors_enabled(snapshot.protocol()) {
            return Err(Error::Recovery(format!(
                "the table at {} does not take deletion vectors, which upserts write; it was not created by an upsert pipeline: point sink.path at a new table",
                path.display()
            )));
        }
        let partitioned = snapshot.metadata().partition_columns();
        if *partitioned != spec.partition_by {
            let says =
                |cols: &[String]| if cols.is_empty() { "unpartitioned".to_string() } else { format!("partitioned by {cols:?}") };
            return Err(Error::Recovery(format!(
                "the table at {} is {}, but the pipeline writes it {}; a table's partitioning cannot change: point sink.path at a new table",
                path.display(),
                says(partitioned),
                says(&spec.partition_by)
            )));
        }
        let want = delta_fields(&spec.schema)?;
        let have: Vec<StructField> = snapshot.schema().fields().cloned().collect();
        let missing = if spec.writer_columns { super::schema::Missing::Null } else { super::schema::Missing::Refuse };
        let evolve = super::schema::reconcile(&have, &want, self.evolution, missing)
            .map_err(|why| self.schema_refused(format!("the table at {} {why}", path.display())))?;
        if let Some((_, added)) = &evolve {
            tracing::info!(table = %path.display(), columns = ?added, "the next commit adds the pipeline's new columns to the table (sink.schema_evolution)");
        }
        let table = self.apply_properties(table, spec).await?;
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
        Ok(Some(Open { table, maintenance: Some(maintenance), version, starts, evolve, credit: 0 }))
    }

    /// Brings the table properties the config stands for (checkpoint interval, retentions) up
    /// to date, in a commit of their own, when they differ.
    async fn apply_properties(&self, mut table: DeltaTable, spec: &Spec) -> Result<DeltaTable> {
        let mut write = commit::SetProperties { want: spec.settings.table_properties().into_iter().collect() };
        if let commit::Outcome::Landed(_) = commit::commit(&mut table, &spec.path, spec.label(), None, &mut write).await? {
            tracing::info!(table = %spec.path.display(), "updated the table's properties to the config");
        }
        Ok(table)
    }

    /// Writes `write` as one commit of epoch `epoch` to `open`, unless it already holds it
    /// (through [`commit::commit`]: see [`EpochWrite`]); the rows an upsert table's compaction
    /// moved in that commit.
    async fn commit_table(
        &self,
        spec: &Spec,
        open: &mut Open,
        batch: &EpochBatch,
        write: Write,
        skipped: &[crate::model::Skipped],
        extra: Vec<Transaction>,
    ) -> Result<Option<crate::state::Relocated>> {
        let (path, epoch, ranges) = (&spec.path, batch.epoch, batch.ranges.as_slice());
        let (rows, replace, output_mode, deletes) = match write {
            Write::Append(rows) => (rows, None, OutputMode::Append, None),
            Write::Replace { buckets, rows, mode } => {
                let m = match mode {
                    crate::config::OutputMode::Complete => OutputMode::Complete,
                    crate::config::OutputMode::Update => OutputMode::Update,
                };
                (rows, Some(buckets), m, None)
            }
            Write::Upsert { rows, deletes } => (rows, None, OutputMode::Update, Some(deletes)),
        };
        // A table that holds the epoch already (a replay) or a later one gets no files: its
        // writer checks the recorded cut and holds, or refuses.
        let adds = if open.version >= epoch {
            None
        } else {
            if spec.writer_columns && replace.is_none() {
                open.evolve = self.growth(spec, &table_fields(&open.table, path)?, &rows)?;
            }
            let mut adds = write_files(spec, &open.table, open.evolve.is_some(), rows).await?;
            if deletes.is_some() {
                upsert::tag_upsert_file(path, epoch, &mut adds)?;
            }
            self.failpoints.hit("after-parquet-write").await?;
            Some(adds)
        };
        let t_delta = std::time::Instant::now();
        take_fresh_snapshot(spec, open).await?;
        let mut rewrites = match (&adds, &deletes) {
            (Some(adds), Some(deletes)) => upsert_rewrites(spec, open, epoch, adds, deletes).await?,
            _ => upsert::Rewrites::default(),
        };
        let relocated = rewrites.relocated.take();
        let (rewritten, compacted_files) = (rewrites.rewritten, rewrites.compacted_files);
        let mut txns = vec![Transaction::new(&self.pipeline, epoch as i64)];
        for r in ranges {
            txns.push(Transaction::new(partition_app_id(&self.pipeline, &r.tp), r.end));
            if !open.starts.contains(&r.tp) {
                txns.push(Transaction::new(start_app_id(&self.pipeline, &r.tp), r.start));
            }
        }
        txns.extend(extra);
        let mut writer = EpochWrite {
            pipeline: &self.pipeline,
            meaning: &self.meaning,
            path,
            epoch,
            ranges,
            skipped,
            adds,
            replace,
            rewrites,
            evolve: open.evolve.clone(),
            txns,
            operation: DeltaOperation::StreamingUpdate { output_mode, query_id: self.pipeline.clone(), epoch_id: epoch as i64 },
        };
        let relocated = match commit::commit(&mut open.table, path, spec.label(), self.before_commit(), &mut writer).await? {
            commit::Outcome::Held => {
                // (A partition whose range is empty in the held epoch, added to the topic since,
                // records its start with the first epoch that writes it.)
                tracing::info!(table = %path.display(), epoch, "epoch already committed to this table; skipped");
                match (&deletes, &spec.upsert) {
                    (Some(_), Some(u)) => upsert::relocated_by(&open.table, path, epoch, u).await?,
                    _ => None,
                }
            }
            commit::Outcome::Landed(version) => {
                open.landed(version);
                open.starts.extend(ranges.iter().map(|r| r.tp.clone()));
                metrics::histogram!(crate::telemetry::metrics::COMMIT_SECONDS, "phase" => "delta")
                    .record(t_delta.elapsed().as_secs_f64());
                if compacted_files > 0 {
                    open.credit -= rewritten;
                    spec.stats.compacted(compacted_files);
                    metrics::counter!(crate::telemetry::metrics::COMPACTION_FILES, "table" => spec.label())
                        .increment(compacted_files);
                }
                relocated
            }
        };
        open.version = epoch;
        Ok(relocated)
    }

    /// What an epoch's `rows` add to a table whose columns are `have`: the pipeline's columns it
    /// lacks, and with Avro writer schemas' columns (which rows may carry or lack) every column
    /// of the rows it lacks. `Err`: two batches give one column two types, or the table has it
    /// with another, or (without writer columns) it has a column the pipeline does not write.
    fn growth(&self, spec: &Spec, have: &[StructField], rows: &[RecordBatch]) -> Result<Option<super::schema::Growth>> {
        let path = &spec.path;
        let mut want = delta_fields(&spec.schema)?;
        for b in rows.iter().filter(|_| spec.writer_columns) {
            for f in delta_fields(&b.schema())? {
                match want.iter().find(|w| w.name() == f.name()) {
                    Some(w) if w.data_type() == f.data_type() => {}
                    Some(w) => {
                        return Err(Error::Schema(format!(
                            "column `{}` arrives as {} and as {}: one column cannot hold both",
                            f.name(),
                            w.data_type(),
                            f.data_type()
                        )))
                    }
                    None => want.push(f),
                }
            }
        }
        let missing = if spec.writer_columns { super::schema::Missing::Null } else { super::schema::Missing::Refuse };
        super::schema::reconcile(have, &want, self.evolution, missing)
            .map_err(|why| Error::Schema(format!("the table at {} {why}", path.display())))
    }

    /// A table's schema refused for the pipeline's (`why`); a group member is told that the
    /// members agree on it.
    fn schema_refused(&self, why: String) -> Error {
        match self.member {
            None => Error::Recovery(why),
            Some(_) => Error::Recovery(format!(
                "{why} (in group mode the table's schema is what the members agree on: run this member with the config that wrote it)"
            )),
        }
    }

    /// The fail point of an epoch's commits, hit before each attempt.
    fn before_commit(&self) -> Option<(&FailPoints, &'static str)> {
        Some((&self.failpoints, "before-delta-commit"))
    }

    /// What the table of `spec` records of the pipeline (nothing: no table).
    async fn table_record(&self, spec: &Spec, open: Option<&Open>, partitions: &[TopicPartition]) -> Result<TableRecord> {
        let mut r = TableRecord { name: spec.path.display().to_string(), ..Default::default() };
        if let Some(open) = open {
            r.epoch = open.version;
            r.cut = recorded_cut(&open.table, &spec.path, &self.pipeline, partitions).await?;
        }
        Ok(r)
    }

    /// Opens the tables from storage, creating the data table and the outputs.
    async fn refresh(&self, tables: &mut Tables, partitions: &[TopicPartition]) -> Result<()> {
        self.reload(tables, partitions, true).await
    }

    /// Opens the tables from storage; `create`: the data table and the outputs too when missing.
    async fn reload(&self, tables: &mut Tables, partitions: &[TopicPartition], create: bool) -> Result<()> {
        tables.data = self.open(&self.data, partitions, create).await?;
        tables.dead = self.open(&self.dead, partitions, false).await?;
        tables.outputs.clear();
        for spec in &self.outputs {
            let open = self.open(spec, partitions, create).await?;
            tables.outputs.push(open);
        }
        tables.loaded = tables.data.is_some() && tables.outputs.iter().all(Option::is_some);
        Ok(())
    }
}

/// An upsert epoch's rewrites of the files before it (its marks, and a compaction within the
/// credit, which the epoch's `adds` and `deletes` earn first).
async fn upsert_rewrites(
    spec: &Spec,
    open: &mut Open,
    epoch: u64,
    adds: &[deltalake::kernel::Add],
    deletes: &[(u64, Vec<u32>)],
) -> Result<upsert::Rewrites> {
    let written: u64 = adds.iter().map(|a| a.get_stats().ok().flatten().map_or(0, |s| s.num_records.max(0) as u64)).sum();
    let changes = written + deletes.iter().map(|(_, rows)| rows.len() as u64).sum::<u64>();
    open.credit = open.credit.saturating_add(upsert::CREDIT_PER_CHANGE * changes);
    let compaction = match (&spec.settings.compaction, &spec.upsert) {
        (Some(policy), Some(u)) => Some(upsert::Compaction { policy, upsert: u, credit: open.credit }),
        _ => None,
    };
    upsert::rewrites(&open.table, &spec.path, epoch, deletes, compaction).await
}

/// An append epoch's rows fanned out to `sink.outputs` (see [`crate::transform::Outputs`]).
#[derive(Default)]
struct FannedOut {
    /// The data table's rows.
    main: Vec<RecordBatch>,
    /// Each output's rows, in the order of `sink.outputs`.
    outputs: Vec<Vec<RecordBatch>>,
    /// Rows an output's expression failed on: dead letters, in no table.
    dead: Vec<crate::decode::DeadLetter>,
}

impl DeltaSink {
    /// Fans an append epoch's `rows` out to the outputs (every row to the data table when there
    /// are none).
    fn fan_out(&self, rows: &[RecordBatch]) -> FannedOut {
        let mut out = FannedOut { outputs: vec![Vec::new(); self.outputs.len()], ..Default::default() };
        if self.fan_out.is_empty() {
            out.main = rows.to_vec();
            return out;
        }
        for b in rows {
            let f = self.fan_out.fan_out(b);
            out.dead.extend(
                f.failed
                    .into_iter()
                    .map(|(i, why)| crate::decode::DeadLetter::of_row(b, i, crate::model::Rejection::Transform, why)),
            );
            out.main.push(crate::decode::without_raw(&f.main));
            for (k, o) in f.outputs.into_iter().enumerate() {
                out.outputs[k].push(crate::decode::without_raw(&o));
            }
        }
        out
    }
}

impl Sink for DeltaSink {
    fn name(&self) -> &str {
        "delta"
    }

    fn preflight(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            super::storage::preflight(&self.data.path).await?;
            for spec in &self.outputs {
                super::storage::preflight(&spec.path).await?;
            }
            super::storage::preflight(&self.dead.path).await
        }
        .boxed()
    }

    fn table_stats(&self) -> Option<maintenance::TableStats> {
        Some(self.data.stats.get())
    }

    fn recorded<'a>(&'a self, partitions: &'a [TopicPartition]) -> BoxFuture<'a, Result<Option<Recorded>>> {
        async move {
            let mut tables = self.tables.lock().await;
            // Missing tables are created now, unless the data table is missing beside tables that
            // hold epochs: recovery refuses that, and must see it as it is.
            self.reload(&mut tables, partitions, false).await?;
            let orphans = tables.data.is_none() && tables.outputs.iter().chain([&tables.dead]).flatten().any(|o| o.version > 0);
            if !tables.loaded && !orphans {
                self.refresh(&mut tables, partitions).await?;
            }
            let data = self.table_record(&self.data, tables.data.as_ref(), partitions).await?;
            let mut recorded = Recorded {
                group_written: data.epoch == 0 && !data.cut.is_empty(),
                dead: self.table_record(&self.dead, tables.dead.as_ref(), partitions).await?,
                ..Default::default()
            };
            for (spec, open) in self.outputs.iter().zip(&tables.outputs) {
                recorded.outputs.push(self.table_record(spec, open.as_ref(), partitions).await?);
            }
            if let Some(open) = &tables.data {
                let path = &self.data.path;
                let mark = txn_version(&open.table, path, &dead_letters_app_id(&self.pipeline)).await?;
                recorded.dead_mark = mark.unwrap_or(0).max(0) as u64;
                if data.epoch > 0 {
                    let commit = epoch_commit(&open.table, path, &self.pipeline, data.epoch).await?.unwrap_or_default();
                    (recorded.starts, recorded.meaning) = (commit.starts, commit.meaning);
                }
            }
            recorded.data = data;
            Ok(Some(recorded))
        }
        .boxed()
    }

    fn held<'a>(&'a self, batch: &'a EpochBatch) -> BoxFuture<'a, Result<super::Committed>> {
        async move {
            let Some(u) = &self.data.upsert else { return Ok(super::Committed::default()) };
            let tables = self.tables.lock().await;
            let data = tables.data.as_ref().ok_or_else(|| Error::Sink("the data table is not open".into()))?;
            let relocated = upsert::relocated_by(&data.table, &self.data.path, batch.epoch, u).await?;
            Ok(super::Committed { relocated })
        }
        .boxed()
    }

    fn epochs<'a>(&'a self, from: u64, to: u64) -> BoxFuture<'a, Result<Vec<crate::model::EpochRanges>>> {
        async move {
            let tables = self.tables.lock().await;
            let Some(data) = tables.data.as_ref() else { return Ok(Vec::new()) };
            txn::epoch_ranges(&data.table, &self.data.path, &self.pipeline, from, to).await
        }
        .boxed()
    }

    fn group_reposition<'a>(&'a self, partitions: &'a [TopicPartition]) -> BoxFuture<'a, Result<Offsets>> {
        async move {
            let member = self.member.as_deref().ok_or_else(|| Error::Sink("this sink is not a group member's".into()))?;
            let mut tables = self.tables.lock().await;
            self.reposition(&mut tables, partitions, member).await
        }
        .boxed()
    }

    fn group_state<'a>(
        &'a self,
        partitions: &'a [TopicPartition],
        read: Option<(&'a crate::state::RestoreRead, super::EachBatch<'a>)>,
    ) -> BoxFuture<'a, Result<Offsets>> {
        async move {
            let mut tables = self.tables.lock().await;
            self.state_rows(&mut tables, partitions, read).await
        }
        .boxed()
    }

    fn group_claim<'a>(
        &'a self,
        partitions: &'a [TopicPartition],
        unrecorded: &'a super::Unrecorded,
    ) -> BoxFuture<'a, Result<Offsets>> {
        async move {
            let member = self.member.as_deref().ok_or_else(|| Error::Sink("this sink is not a group member's".into()))?;
            let mut tables = self.tables.lock().await;
            self.claim(&mut tables, partitions, unrecorded, member).await
        }
        .boxed()
    }

    fn check_topic_ids<'a>(&'a self, current: &'a std::collections::BTreeMap<String, String>) -> BoxFuture<'a, Result<()>> {
        async move {
            let mut tables = self.tables.lock().await;
            if tables.data.is_none() {
                self.refresh(&mut tables, &[]).await?;
            }
            let open = tables.data.as_mut().expect("data table opened by refresh");
            let path = &self.data.path;
            open.table.update_incremental(None).await.map_err(|e| delta_err(path, e))?;
            let config = open.table.snapshot().map_err(|e| delta_err(path, e))?.metadata().configuration().clone();
            let recorded: std::collections::BTreeMap<String, String> = config
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(TOPIC_ID_PROPERTY).map(|t| (t.to_string(), v.clone())))
                .collect();
            if let Some(e) = crate::source::recreated_topic(&recorded, current, &format!("the table {}", path.display())) {
                return Err(e);
            }
            let missing: std::collections::HashMap<String, String> = current
                .iter()
                .filter(|(t, _)| !recorded.contains_key(*t))
                .map(|(t, id)| (format!("{TOPIC_ID_PROPERTY}{t}"), id.clone()))
                .collect();
            if !missing.is_empty() {
                let mut write = commit::SetProperties { want: missing };
                commit::commit(&mut open.table, path, self.data.label(), None, &mut write).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn commit<'a>(&'a self, batch: &'a EpochBatch) -> BoxFuture<'a, Result<super::Committed>> {
        async move {
            let mut tables = self.tables.lock().await;
            if !tables.loaded {
                let tps: Vec<TopicPartition> = batch.ranges.iter().map(|r| r.tp.clone()).collect();
                self.refresh(&mut tables, &tps).await?;
            }
            if let Some(member) = &self.member {
                return self.commit_group(&mut tables, batch, member).await.map(|()| super::Committed::default());
            }
            let epoch = batch.epoch;
            let stamp = |rows: &[RecordBatch]| stamped(rows, epoch);
            let mut fanned = FannedOut { outputs: vec![Vec::new(); self.outputs.len()], ..Default::default() };
            let write = match &batch.output {
                Output::Append(rows) => {
                    fanned = self.fan_out(rows);
                    Write::Append(stamp(&std::mem::take(&mut fanned.main))?)
                }
                Output::Replace { buckets, rows, mode } => Write::Replace {
                    buckets: buckets.as_ref().map(|b| b.iter().copied().collect()),
                    rows: stamp(rows)?,
                    mode: *mode,
                },
                Output::Upsert { rows, deletes } => Write::Upsert { rows: stamp(rows)?, deletes: deletes.clone() },
            };
            let (mut fanned, fan_dead) = (fanned.outputs, fanned.dead);
            // The data table first: it is committed every epoch, so it always holds the cut, and
            // it marks an epoch with dead letters (`dead_letters_app_id`), so recovery knows the
            // dead-letter table must hold it too.
            let has_dead = !batch.dead_letters.is_empty() || !fan_dead.is_empty();
            let mark = has_dead.then(|| Transaction::new(dead_letters_app_id(&self.pipeline), epoch as i64));
            let data = tables.data.as_mut().ok_or_else(|| Error::Sink("the data table is not open".into()))?;
            let relocated = self.commit_table(&self.data, data, batch, write, &batch.skipped, mark.into_iter().collect()).await?;
            self.failpoints.hit("after-delta-commit").await?;
            // Every output commits every epoch (its txn records the cut even without rows), so
            // each table alone says how far it got: a replay commits only to those behind.
            for (k, spec) in self.outputs.iter().enumerate() {
                let open = tables.outputs[k].as_mut().expect("output table opened by refresh");
                let rows = stamp(&std::mem::take(&mut fanned[k]))?;
                self.commit_table(spec, open, batch, Write::Append(rows), &[], Vec::new()).await?;
            }
            let dead_letters: Vec<crate::decode::DeadLetter> = batch.dead_letters.iter().cloned().chain(fan_dead).collect();
            if !dead_letters.is_empty() {
                if tables.dead.is_none() {
                    let tps: Vec<TopicPartition> = batch.ranges.iter().map(|r| r.tp.clone()).collect();
                    tables.dead = self.open(&self.dead, &tps, true).await?;
                }
                let dead = tables.dead.as_mut().expect("dead-letter table opened");
                let rows = vec![dead_letter_batch(&dead_letters, epoch).map_err(|e| Error::Sink(e.to_string()))?];
                self.commit_table(&self.dead, dead, batch, Write::Append(rows), &[], Vec::new()).await?;
            }
            Ok(super::Committed { relocated })
        }
        .boxed()
    }
}
