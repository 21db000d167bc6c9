//! An epoch's write: its Parquet files, a bucket replacement's removes, a schema's growth,
//! and the writer that decides its commit ([`EpochWrite`]).

use super::*;
use crate::sink::delta::table::FILE_TAG;

pub(super) fn delta_fields(schema: &SchemaRef) -> Result<Vec<StructField>> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    schema
        .fields()
        .iter()
        .map(|f| f.as_ref().try_into_kernel().map_err(|e| Error::Sink(format!("no Delta type for column {}: {e}", f.name()))))
        .collect()
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

/// Tags an upsert epoch's file with its id, the epoch; the rows were written as one file
/// (their positions are the ones the index records).
pub(super) fn tag_upsert_file(path: &TableLocation, epoch: u64, adds: &mut [deltalake::kernel::Add]) -> Result<()> {
    match adds {
        [] => Ok(()),
        [add] => {
            add.tags.get_or_insert_with(Default::default).insert(FILE_TAG.to_string(), Some(epoch.to_string()));
            Ok(())
        }
        more => Err(Error::Sink(format!(
            "the upsert rows of epoch {epoch} were written to {} as {} files, not one",
            path.display(),
            more.len()
        ))),
    }
}

/// The rows an upsert epoch marks deleted: a new deletion vector for each file it touches
/// (the file's current one plus the new rows), as the remove and re-add of the file, and the
/// vector each file had when they were read.
#[derive(Default)]
pub(super) struct Marks {
    actions: Vec<Action>,
    /// Each file's path and its deletion vector the marks were built on.
    read: Vec<(String, Option<deltalake::kernel::DeletionVectorDescriptor>)>,
}

/// Builds the [`Marks`] of `deletes` (file id, positions) on `table`, writing their deletion
/// vectors into one new file. A file the index names that the table does not hold, or a row
/// already deleted, means the index and the table disagree: nothing is written.
pub(super) async fn mark_deleted(table: &DeltaTable, path: &TableLocation, deletes: &[(u64, Vec<u32>)]) -> Result<Marks> {
    let mut marks = Marks::default();
    if deletes.is_empty() {
        return Ok(marks);
    }
    let wanted: HashSet<u64> = deletes.iter().map(|(f, _)| *f).collect();
    let snapshot = table.snapshot().map_err(|e| delta_err(path, e))?;
    let mut files = std::collections::HashMap::new();
    for f in snapshot.log_data().iter() {
        #[allow(deprecated)]
        let add = f.add_action();
        let id = add.tags.as_ref().and_then(|t| t.get(FILE_TAG)).cloned().flatten().and_then(|v| v.parse::<u64>().ok());
        if let Some(id) = id.filter(|id| wanted.contains(id)) {
            files.insert(id, (add, f.remove_action(true)));
        }
    }
    let store = table.object_store();
    let mut vectors = dv::DvFile::new();
    for (id, rows) in deletes {
        let (add, remove) = files.remove(id).ok_or_else(|| {
            Error::Recovery(format!(
                "the upsert index names rows of the file epoch {id} wrote, which {} does not hold: was the table rewritten by another writer (an OPTIMIZE)? Nothing was written",
                path.display()
            ))
        })?;
        let mut deleted = match &add.deletion_vector {
            Some(d) => dv::read(store.as_ref(), d).await?,
            None => roaring::RoaringTreemap::new(),
        };
        let before = deleted.len();
        deleted.extend(rows.iter().map(|r| u64::from(*r)));
        if deleted.len() != before + rows.len() as u64 {
            return Err(Error::Recovery(format!(
                "the upsert index names rows of {} in {} that are deleted already; the index and the table disagree. Nothing was written",
                add.path,
                path.display()
            )));
        }
        let descriptor = vectors.push(&deleted)?;
        marks.read.push((add.path.clone(), add.deletion_vector.clone()));
        let stats = add.stats.as_deref().map(loose_bounds);
        marks.actions.push(Action::Remove(remove));
        marks.actions.push(Action::Add(deltalake::kernel::Add {
            deletion_vector: Some(descriptor),
            stats,
            data_change: true,
            ..add
        }));
    }
    vectors.write(store.as_ref()).await?;
    Ok(marks)
}

/// A file's statistics once rows of it are deleted: the bounds still hold, but may no longer be
/// reached (`tightBounds: false`, as the protocol asks of files with deletion vectors).
fn loose_bounds(stats: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(stats) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("tightBounds".into(), serde_json::Value::Bool(false));
            serde_json::Value::Object(m).to_string()
        }
        _ => stats.to_string(),
    }
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
        let props = crate::sink::parquet::writer_properties(&rows);
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
        metadata = metadata.add_config_key(key, epoch.to_string()).map_err(|e| delta_err(path, e))?;
    }
    Ok(Some(Action::Metadata(metadata)))
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
    /// The epoch's files (`None`: not written, the table held the epoch when it was opened).
    pub(super) adds: Option<Vec<deltalake::kernel::Add>>,
    /// A bucket replacement: the `_bucket`s whose current files the commit removes (`None`:
    /// every file).
    pub(super) replace: Option<Option<HashSet<u32>>>,
    /// An upsert's rows marked deleted in earlier files.
    pub(super) marks: Marks,
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
        if !self.marks.read.is_empty() {
            // The vectors were built on the files as read before the commit: a file another
            // writer changed since would lose that writer's deletes.
            let snapshot = table.snapshot().map_err(|e| delta_err(path, e))?;
            let marked: HashSet<&str> = self.marks.read.iter().map(|(file, _)| file.as_str()).collect();
            let now: std::collections::HashMap<String, Option<deltalake::kernel::DeletionVectorDescriptor>> = snapshot
                .log_data()
                .iter()
                .filter(|f| marked.contains(f.path().as_ref()))
                .map(|f| (f.path().to_string(), f.deletion_vector_descriptor()))
                .collect();
            if let Some((file, _)) = self.marks.read.iter().find(|(file, dv)| now.get(file) != Some(dv)) {
                return Err(Error::Conflict {
                    table: path.to_string(),
                    detail: format!("{file} changed while epoch {epoch} marked rows of it deleted; nothing was written"),
                });
            }
            actions.extend(self.marks.actions.iter().cloned());
        }
        actions.extend(evolution(table, path, self.evolve.as_ref(), epoch)?);
        actions.extend(adds.iter().cloned().map(Action::Add));
        Ok(commit::Decision::Write(Box::new(commit::Proposal {
            actions,
            txns: self.txns.clone(),
            info: json!({"pipeline": self.pipeline, "epoch": epoch, "ranges": ranges_json(self.ranges), "meaning": self.meaning}),
            operation: self.operation.clone(),
        })))
    }
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
