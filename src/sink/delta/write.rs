//! An epoch's write: its Parquet files, a bucket replacement's removes, a schema's growth,
//! and the writer that decides its commit ([`EpochWrite`]).

use super::*;
use crate::sink::schema::AddedAt;

pub(super) fn delta_fields(schema: &SchemaRef) -> Result<Vec<StructField>> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    schema
        .fields()
        .iter()
        .map(|f| f.as_ref().try_into_kernel().map_err(|e| Error::Sink(format!("no Delta type for column {}: {e}", f.name()))))
        .collect()
}

/// `rows` with the `_epoch` column of epoch `epoch`.
pub(super) fn stamped(rows: &[RecordBatch], epoch: u64) -> Result<Vec<RecordBatch>> {
    rows.iter().map(|b| with_epoch(b, epoch)).collect::<Result<Vec<_>, _>>().map_err(|e| Error::Sink(e.to_string()))
}

/// Remove actions for every current file of `buckets` (`None`: every file of the table).
pub(super) fn bucket_removes(table: &DeltaTable, path: &TableLocation, buckets: Option<&HashSet<u32>>) -> Result<Vec<Action>> {
    let snapshot = table.snapshot().map_err(|e| delta_err(path, e))?;
    let mut out = Vec::new();
    for file in snapshot.log_data().iter() {
        let bucket =
            file.partition_values_map().get(crate::model::BUCKET_COL).cloned().flatten().and_then(|b| b.parse::<u32>().ok());
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

/// The table property that enables deletion vectors (set when an upsert table is created).
pub(super) const DELETION_VECTORS: &str = "delta.enableDeletionVectors";

/// Whether a table's protocol has the `deletionVectors` writer feature.
pub(super) fn deletion_vectors_enabled(protocol: &deltalake::kernel::Protocol) -> bool {
    serde_json::to_value(protocol)
        .ok()
        .and_then(|p| p.get("writerFeatures").cloned())
        .is_some_and(|f| f.as_array().is_some_and(|f| f.iter().any(|x| x.as_str() == Some("deletionVectors"))))
}

/// Writes `rows` as Parquet files of `table` (not yet committed); `evolving`: they may carry
/// columns the table does not have yet.
pub(super) async fn write_files(
    spec: &Spec,
    table: &DeltaTable,
    evolving: bool,
    rows: Vec<RecordBatch>,
) -> Result<Vec<deltalake::kernel::Add>> {
    let path = &spec.path;
    let t_parquet = std::time::Instant::now();
    let mut adds = Vec::new();
    if rows.iter().any(|b| b.num_rows() > 0) {
        let props = crate::sink::parquet::writer_properties(&rows, &spec.settings.parquet);
        let mut writer = RecordBatchWriter::for_table(table).map_err(|e| delta_err(path, e))?.with_writer_properties(props);
        // While the schema grows, the files carry the new columns the table does not have yet;
        // with writer schemas' columns, rows may also lack columns the table has (null there).
        let mode = if evolving || spec.writer_columns { WriteMode::MergeSchema } else { WriteMode::Default };
        for b in rows.into_iter().filter(|b| b.num_rows() > 0) {
            writer.write_with_mode(b, mode).await.map_err(|e| delta_err(path, e))?;
        }
        adds = writer.flush().await.map_err(|e| delta_err(path, e))?;
    }
    let table_label = spec.label();
    metrics::histogram!(crate::telemetry::metrics::COMMIT_SECONDS, "phase" => "parquet")
        .record(t_parquet.elapsed().as_secs_f64());
    metrics::counter!(crate::telemetry::metrics::DELTA_FILES_ADDED, "table" => table_label).increment(adds.len() as u64);
    metrics::counter!(crate::telemetry::metrics::DELTA_BYTES_WRITTEN, "table" => table_label)
        .increment(adds.iter().map(|a| a.size.max(0) as u64).sum());
    Ok(adds)
}

/// Moves `open` to the snapshot its maintenance read from a newer Delta checkpoint, if any:
/// catching that one up costs a few commits, where the one kept so far carries every commit
/// since the pipeline opened the table.
pub(super) async fn take_fresh_snapshot(spec: &Spec, open: &mut Open) -> Result<()> {
    if let Some(mut fresh) = open.maintenance.as_ref().and_then(|m| m.take_fresh()) {
        fresh.update_incremental(None).await.map_err(|e| delta_err(&spec.path, e))?;
        if fresh.version() >= open.table.version() {
            open.table = fresh;
        }
    }
    Ok(())
}

/// The columns of `table` as last read.
pub(super) fn table_fields(table: &DeltaTable, path: &TableLocation) -> Result<Vec<StructField>> {
    Ok(table.snapshot().map_err(|e| delta_err(path, e))?.schema().fields().cloned().collect())
}

/// The metadata action that grows `table`'s schema, while evolution is pending: it goes into
/// the data commit of epoch `epoch`, beside the first files written with the new columns, and
/// records that epoch for each added path (`exactly.addedAt.<path>`, read by the audit: rows of
/// earlier epochs have no value there).
pub(super) fn evolution(
    table: &DeltaTable,
    path: &TableLocation,
    evolve: Option<&crate::sink::schema::Growth>,
    epoch: u64,
) -> Result<Option<Action>> {
    use deltalake::kernel::MetadataExt;
    let Some((schema, added)) = evolve else { return Ok(None) };
    let mut metadata = table.snapshot().map_err(|e| delta_err(path, e))?.metadata().clone();
    metadata = metadata.with_schema(schema).map_err(|e| delta_err(path, e))?;
    for column in added {
        let key = format!("{}{column}", crate::sink::schema::ADDED_AT_PREFIX);
        metadata = metadata.add_config_key(key, AddedAt::Epoch(epoch).to_string()).map_err(|e| delta_err(path, e))?;
    }
    Ok(Some(Action::Metadata(metadata)))
}

/// Group mode's metadata action of a data commit, if it needs one: the schema's growth
/// (`evolve`), and for each added column where the commit's partitions begin to carry it —
/// the first offset it writes of each (past the table's record, `recorded`), for partitions
/// the column's [`AddedAt`] does not name yet. Members number their own epochs, so a column's
/// start is recorded per partition, by the first commit that writes the partition with it.
pub(super) fn group_evolution(
    table: &DeltaTable,
    path: &TableLocation,
    evolve: Option<&crate::sink::schema::Growth>,
    ranges: &[PartitionRange],
    recorded: &Offsets,
) -> Result<Option<Action>> {
    use deltalake::kernel::MetadataExt;
    let prefix = crate::sink::schema::ADDED_AT_PREFIX;
    let mut metadata = table.snapshot().map_err(|e| delta_err(path, e))?.metadata().clone();
    let mut columns: Vec<(String, std::collections::BTreeMap<TopicPartition, i64>)> = metadata
        .configuration()
        .iter()
        .filter_map(|(k, v)| match AddedAt::parse(v)? {
            AddedAt::Offsets(m) => Some((k.strip_prefix(prefix)?.to_string(), m)),
            AddedAt::Epoch(_) => None,
        })
        .collect();
    let mut changed = false;
    if let Some((schema, added)) = evolve {
        metadata = metadata.with_schema(schema).map_err(|e| delta_err(path, e))?;
        columns.extend(added.iter().map(|c| (c.clone(), Default::default())));
        changed = true;
    }
    for (column, starts) in &mut columns {
        let before = starts.len();
        for r in ranges {
            let first = recorded.get(&r.tp).map_or(r.start, |n| r.start.max(*n));
            starts.entry(r.tp.clone()).or_insert(first);
        }
        if starts.len() > before || changed {
            let value = AddedAt::Offsets(std::mem::take(starts)).to_string();
            metadata = metadata.add_config_key(format!("{prefix}{column}"), value).map_err(|e| delta_err(path, e))?;
            changed = true;
        }
    }
    Ok(changed.then_some(Action::Metadata(metadata)))
}

/// The error of a table that holds an epoch of this pipeline no commit of this process wrote.
pub(super) fn another_writer(path: &TableLocation, pipeline: &str, held: u64, epoch: u64) -> Error {
    Error::Conflict {
        table: path.to_string(),
        detail: format!(
            "another writer committed epoch {held} of pipeline '{pipeline}' while this one was writing epoch {epoch}: is a second process running this pipeline with a checkpoint of its own? Nothing was written"
        ),
    }
}

/// One table's share of an epoch, as a [`commit::Writer`]: held when the table records the
/// epoch with this cut before anything was sent (a replay), fenced when it records this epoch
/// (after a send of this call that did not land) or a later one; else the epoch's files and
/// `txn`s, with a bucket replacement's removes read from this very snapshot.
pub(super) struct EpochWrite<'a> {
    pub(super) pipeline: &'a str,
    pub(super) meaning: &'a crate::model::Meaning,
    pub(super) path: &'a TableLocation,
    pub(super) epoch: u64,
    pub(super) ranges: &'a [PartitionRange],
    /// Offsets Kafka deleted before they were read, skipped in the epoch's ranges.
    pub(super) skipped: &'a [crate::model::Skipped],
    /// The epoch's files (`None`: not written, the table held the epoch when it was opened).
    pub(super) adds: Option<Vec<deltalake::kernel::Add>>,
    /// A bucket replacement: the `_bucket`s whose current files the commit removes (`None`:
    /// every file).
    pub(super) replace: Option<Option<HashSet<u32>>>,
    /// An upsert's rows marked deleted in earlier files, and its compaction.
    pub(super) rewrites: upsert::Rewrites,
    pub(super) evolve: Option<crate::sink::schema::Growth>,
    pub(super) txns: Vec<Transaction>,
    pub(super) operation: DeltaOperation,
}

impl commit::Writer for EpochWrite<'_> {
    async fn decide(&mut self, table: &DeltaTable, sent: bool) -> Result<commit::Decision> {
        let (path, epoch) = (self.path, self.epoch);
        let held = txn_version(table, path, self.pipeline).await?.unwrap_or(0).max(0) as u64;
        if held == epoch && !sent {
            // A replayed epoch: the recorded cut must be this epoch's.
            let tps: Vec<TopicPartition> = self.ranges.iter().map(|r| r.tp.clone()).collect();
            let recorded = recorded_cut(table, path, self.pipeline, &tps).await?;
            if let Err(diff) = crate::model::check_recorded_cut(&recorded, self.ranges) {
                return Err(Error::Recovery(format!(
                    "epoch {epoch} is already in {} with a different cut ({diff}); refusing to skip or rewrite it",
                    path.display()
                )));
            }
            return Ok(commit::Decision::Held);
        }
        if held >= epoch {
            return Err(another_writer(path, self.pipeline, held, epoch));
        }
        let Some(adds) = &self.adds else {
            return Err(Error::Recovery(format!(
                "{} held epoch {epoch} when it was opened and no longer does: it was replaced meanwhile",
                path.display()
            )));
        };
        let mut actions: Vec<Action> = Vec::new();
        if let Some(buckets) = &self.replace {
            actions.extend(bucket_removes(table, path, buckets.as_ref())?);
        }
        // The vectors and the compaction were built on the files as read before the commit.
        self.rewrites.check(table, path, epoch)?;
        actions.extend(self.rewrites.actions());
        actions.extend(evolution(table, path, self.evolve.as_ref(), epoch)?);
        actions.extend(adds.iter().cloned().map(Action::Add));
        Ok(commit::Decision::Write(Box::new(commit::Proposal {
            actions,
            txns: self.txns.clone(),
            info: with_skipped(
                json!({"pipeline": self.pipeline, "epoch": epoch, "ranges": ranges_json(self.ranges), "meaning": self.meaning}),
                self.skipped,
            ),
            operation: self.operation.clone(),
        })))
    }
}

/// An epoch's commit info with the offsets it skipped (`source.on_data_loss = "skip"`), as
/// `"skipped": [{topic, partition, from, to}]`, when it skipped any.
pub(super) fn with_skipped(mut info: serde_json::Value, skipped: &[crate::model::Skipped]) -> serde_json::Value {
    if !skipped.is_empty() {
        info["skipped"] = skipped
            .iter()
            .map(|s| json!({"topic": &*s.tp.topic, "partition": s.tp.partition, "from": s.from, "to": s.to}))
            .collect();
    }
    info
}

/// An epoch's ranges as its commit's `exactly` metadata records them.
pub(super) fn ranges_json(ranges: &[PartitionRange]) -> Vec<serde_json::Value> {
    ranges
        .iter()
        .map(
            |r| json!({"topic": &*r.tp.topic, "partition": r.tp.partition, "start": r.start, "end": r.end, "records": r.records}),
        )
        .collect()
}
