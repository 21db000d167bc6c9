//! Auto-compaction by size tier.
//!
//! Every epoch adds one small file per table. Bin-packing everything below the target size (what
//! `OPTIMIZE` does) would rewrite the growing, not yet full output file on every run: the bytes
//! rewritten grow with the file, quadratically in the target size. Instead, files are grouped by
//! size tier — tier `k` holds files of `min_files^k` to `min_files^(k+1)` KiB — and a tier is
//! merged into one file once it holds `min_files` files (in each partition). A merged file lands
//! one tier up, so each byte is rewritten about `log_min_files(target / epoch file size)` times
//! (4 for 100 KiB epoch files and a 128 MiB target with the default 10), and a partition keeps at
//! most `(min_files - 1)` files per tier below the target plus its full-size files.
//!
//! Files whose row groups are big already are merged by copying those row groups
//! ([`stitch`](super::stitch)); the others are decoded and written again.
//!
//! A compaction commit removes its input files and adds the merged ones, all with
//! `dataChange = false` (streaming readers see no new data), under the `OPTIMIZE` operation and
//! without `txn` actions. The pipeline's appends add files only, so the two never conflict: a
//! compaction commits on the latest version once it has checked that every input is still live
//! there. If another writer removed one of the inputs first (another member's compaction, an
//! OPTIMIZE), the compaction commits nothing; its files are left unreferenced and the next round
//! plans again. `exactly optimize` bin-packs through the same careful commit ([`Policy::bin_pack`]).

use crate::config::TableLocation;
use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::array::{new_null_array, Array, ArrayRef, StringArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::{Action, Remove};
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use serde_json::json;

use crate::error::{Error, Result};
use crate::sink::delta::commit;
use crate::sink::delta::table::delta_err;
use crate::testing::failpoint::FailPoints;

/// When files are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Files at least this big are left alone; merged files are cut at this size.
    pub target_bytes: u64,
    /// Files of one tier are merged once there are this many.
    pub min_files: usize,
    /// How the merged files are written (`sink.parquet`).
    pub parquet: crate::config::ParquetConfig,
}

/// One live file of the table.
#[derive(Debug, Clone)]
pub struct LiveFile {
    /// Path relative to the table root, as in the log.
    pub path: String,
    pub(crate) location: deltalake::Path,
    /// Bytes.
    pub size: u64,
    /// Partition values (column -> value, `None` for null), empty for an unpartitioned table.
    pub partition: BTreeMap<String, Option<String>>,
    /// Rows, from the file's statistics.
    pub rows: Option<u64>,
    /// Whether rows of the file are deleted through a deletion vector (never compacted here).
    pub has_deletion_vector: bool,
    /// Its Delta statistics (JSON), as the log holds them.
    pub stats: Option<String>,
    remove: Remove,
}

/// The table's live files, from a snapshot.
pub fn live_files(snapshot: &deltalake::table::state::DeltaTableState) -> Vec<LiveFile> {
    snapshot
        .log_data()
        .iter()
        .map(|f| LiveFile {
            path: f.path().to_string(),
            location: f.object_store_path(),
            size: f.size().max(0) as u64,
            partition: f.partition_values_map().into_iter().collect(),
            rows: f.num_records().map(|n| n as u64),
            has_deletion_vector: f.deletion_vector_descriptor().is_some(),
            stats: f.stats(),
            remove: f.remove_action(false),
        })
        .collect()
}

/// Files of one partition and tier, merged together.
#[derive(Debug, Clone)]
pub struct Group {
    /// The partition's values.
    pub partition: BTreeMap<String, Option<String>>,
    /// The tier.
    pub tier: u32,
    /// The files.
    pub files: Vec<LiveFile>,
}

impl Policy {
    /// The size tier of a file of `size` bytes.
    pub fn tier(&self, size: u64) -> u32 {
        let (mut tier, mut bound) = (0, 1024u64 * self.min_files as u64);
        while size >= bound {
            tier += 1;
            bound = bound.saturating_mul(self.min_files as u64);
        }
        tier
    }

    /// The groups due for merging, smallest tier first.
    pub fn plan(&self, files: &[LiveFile]) -> Vec<Group> {
        type Partition = BTreeMap<String, Option<String>>;
        let mut tiers: BTreeMap<(u32, Partition), Vec<LiveFile>> = BTreeMap::new();
        for f in files.iter().filter(|f| f.size < self.target_bytes && !f.has_deletion_vector) {
            tiers.entry((self.tier(f.size), f.partition.clone())).or_default().push(f.clone());
        }
        tiers
            .into_iter()
            .filter(|(_, fs)| fs.len() >= self.min_files)
            .map(|((tier, partition), mut fs)| {
                // At most `target_bytes` of input in one merge: memory stays bounded.
                fs.sort_by(|a, b| a.path.cmp(&b.path));
                let mut total = 0;
                fs.retain(|f| {
                    total += f.size;
                    total <= self.target_bytes
                });
                Group { partition, tier, files: fs }
            })
            .filter(|g| g.files.len() >= 2)
            .collect()
    }
}

impl Policy {
    /// OPTIMIZE's bin-packing: in each partition, the files below the target (without deletion
    /// vectors), in path order, packed into groups of at most the target's bytes; groups of one
    /// file are left alone.
    pub fn bin_pack(&self, files: &[LiveFile]) -> Vec<Group> {
        let mut parts: BTreeMap<BTreeMap<String, Option<String>>, Vec<LiveFile>> = BTreeMap::new();
        for f in files.iter().filter(|f| f.size < self.target_bytes && !f.has_deletion_vector) {
            parts.entry(f.partition.clone()).or_default().push(f.clone());
        }
        let mut groups = Vec::new();
        for (partition, mut fs) in parts {
            fs.sort_by(|a, b| a.path.cmp(&b.path));
            let mut bin: Vec<LiveFile> = Vec::new();
            let mut total = 0;
            for f in fs {
                if total + f.size > self.target_bytes && !bin.is_empty() {
                    groups.push(Group { partition: partition.clone(), tier: 0, files: std::mem::take(&mut bin) });
                    total = 0;
                }
                total += f.size;
                bin.push(f);
            }
            groups.push(Group { partition, tier: 0, files: bin });
        }
        groups.retain(|g| g.files.len() >= 2);
        groups
    }
}

/// What a merge did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Done {
    /// Input files removed.
    pub files_removed: u64,
    /// Files written.
    pub files_added: u64,
    /// Input bytes rewritten.
    pub bytes_rewritten: u64,
    /// The version committed.
    pub version: i64,
}

/// The bytes of the whole data file at `location` of `table` (at `path`).
pub(crate) async fn file_bytes(table: &DeltaTable, path: &TableLocation, location: &deltalake::Path) -> Result<bytes::Bytes> {
    let got = table.object_store().get(location).await.map_err(|e| delta_err(path, e))?;
    got.bytes().await.map_err(|e| delta_err(path, e))
}

/// A reader of the whole data file at `location` of `table` (at `path`).
pub(crate) async fn file_reader(
    table: &DeltaTable,
    path: &TableLocation,
    location: &deltalake::Path,
) -> Result<deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let bytes = file_bytes(table, path, location).await?;
    ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|b| b.build()).map_err(|e| delta_err(path, e))
}

/// A file's rows as batches of the table's schema (partition columns filled in).
pub(crate) fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
    partition: &BTreeMap<String, Option<String>>,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let col = match (partition.get(field.name()), batch.column_by_name(field.name())) {
            (Some(value), _) => partition_column(value, field.data_type(), n)
                .map_err(|e| Error::Sink(format!("partition value of {}: {e}", field.name())))?,
            (None, Some(col)) => {
                conform_column(col, field.data_type()).map_err(|e| Error::Sink(format!("column {}: {e}", field.name())))?
            }
            (None, None) => new_null_array(field.data_type(), n),
        };
        cols.push(col);
    }
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Sink(e.to_string()))
}

/// A partition column's `rows` values: the file's partition value (as the Delta log writes it,
/// text; `None` for null) as type `t`. Partition columns are not in the Parquet files.
pub(crate) fn partition_column(
    value: &Option<String>,
    t: &deltalake::arrow::datatypes::DataType,
    rows: usize,
) -> std::result::Result<ArrayRef, String> {
    let strings: ArrayRef = Arc::new(StringArray::from(vec![value.clone(); rows]));
    cast(&strings, t).map_err(|e| e.to_string())
}

/// `col` as type `to`: struct members matched by name, members the file lacks (added by
/// `sink.schema_evolution` after it was written) as nulls, anything else by Arrow's cast (view
/// and large strings from other writers).
fn conform_column(col: &ArrayRef, to: &deltalake::arrow::datatypes::DataType) -> std::result::Result<ArrayRef, String> {
    use deltalake::arrow::array::{AsArray, StructArray};
    use deltalake::arrow::datatypes::DataType;
    match (col.data_type(), to) {
        (from, to) if from == to => Ok(col.clone()),
        (DataType::Struct(_), DataType::Struct(members)) => {
            let s = col.as_struct();
            let children = members
                .iter()
                .map(|m| match s.column_by_name(m.name()) {
                    Some(child) => conform_column(child, m.data_type()),
                    None => Ok(new_null_array(m.data_type(), s.len())),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(Arc::new(StructArray::try_new(members.clone(), children, s.nulls().cloned()).map_err(|e| e.to_string())?))
        }
        (_, to) => cast(col, to).map_err(|e| e.to_string()),
    }
}

/// Merges `group` into files of up to the target size and commits the swap. `table` must be the
/// snapshot the group was planned from; it holds the new version afterwards. `None`: another
/// commit (another member's compaction, `exactly optimize`) removed an input meanwhile, and
/// nothing was committed. Files whose row groups are big already are merged by copying them
/// ([`stitch`](super::stitch)); others are decoded and written again.
pub async fn rewrite(
    table: &mut DeltaTable,
    path: &TableLocation,
    group: &Group,
    policy: &Policy,
    failpoints: &FailPoints,
) -> Result<Option<Done>> {
    let mut footers = Vec::with_capacity(group.files.len());
    for f in &group.files {
        footers.push(super::stitch::footer(table, path, &f.location, f.size).await?);
    }
    let codec = crate::sink::parquet::compression(&policy.parquet);
    // A copy's statistics are its inputs' merged: only inputs that have them are copied.
    let with_stats = group.files.iter().all(|f| f.stats.is_some());
    let (rows_read, mut adds) = if with_stats && super::stitch::copyable(&footers, super::stitch::min_copied_rows(policy), codec)
    {
        let schema = table.snapshot().map_err(|e| delta_err(path, e))?.schema().as_ref().clone();
        let rows: i64 = footers.iter().map(|m| m.file_metadata().num_rows()).sum();
        (rows as u64, vec![super::stitch::stitch(table, path, group, &footers[0], &schema).await?])
    } else {
        reencode(table, path, group, policy).await?
    };
    if let Some(expected) = group.files.iter().map(|f| f.rows).sum::<Option<u64>>() {
        if expected != rows_read {
            return Err(delta_err(
                path,
                format!("compaction read {rows_read} rows from files whose statistics say {expected}; nothing committed"),
            ));
        }
    }
    for add in &mut adds {
        add.data_change = false;
    }
    let written: u64 = adds.iter().filter_map(|a| a.get_stats().ok().flatten().map(|s| s.num_records as u64)).sum();
    if written != rows_read {
        return Err(delta_err(path, format!("compaction wrote {written} rows of {rows_read}; nothing committed")));
    }
    let done = Done {
        files_removed: group.files.len() as u64,
        files_added: adds.len() as u64,
        bytes_rewritten: group.files.iter().map(|f| f.size).sum(),
        version: 0,
    };
    let mut swap = Swap {
        group,
        adds,
        info: json!({"compaction": {"tier": group.tier, "files_removed": done.files_removed, "bytes_rewritten": done.bytes_rewritten}}),
        operation: DeltaOperation::Optimize { predicate: None, target_size: policy.target_bytes as i64 },
    };
    let hook = Some((failpoints, "compaction-before-commit"));
    match commit::commit(table, path, "compaction", hook, &mut swap).await? {
        commit::Outcome::Landed(version) => Ok(Some(Done { version, ..done })),
        commit::Outcome::Held => Ok(None),
    }
}

/// `group`'s rows decoded and written again as files of up to the target size (not yet
/// committed): the rows read, and the files' add actions. Columns mostly distinct in the first
/// file are written without a dictionary, as the sink writes them.
async fn reencode(
    table: &DeltaTable,
    path: &TableLocation,
    group: &Group,
    policy: &Policy,
) -> Result<(u64, Vec<deltalake::kernel::Add>)> {
    let mut writer =
        RecordBatchWriter::for_table(table).map_err(|e| delta_err(path, e))?.with_target_file_size(policy.target_bytes);
    let schema = writer.arrow_schema();
    let mut rows_read = 0u64;
    for (i, f) in group.files.iter().enumerate() {
        let batches = file_reader(table, path, &f.location)
            .await?
            .map(|b| b.map_err(|e| delta_err(path, e)).and_then(|b| conform(&b, &schema, &group.partition)))
            .collect::<Result<Vec<_>>>()?;
        if i == 0 {
            writer = writer.with_writer_properties(crate::sink::parquet::writer_properties(&batches, &policy.parquet));
        }
        for batch in batches {
            rows_read += batch.num_rows() as u64;
            writer.write(batch).await.map_err(|e| delta_err(path, e))?;
        }
    }
    Ok((rows_read, writer.flush().await.map_err(|e| delta_err(path, e))?))
}

/// A compaction's swap, as a [`commit::Writer`]: it lands only on a version that still holds
/// every input file (delta-rs does not count a `dataChange = false` remove as a conflict, so a
/// commit rebased past another compaction of the same files would keep both copies of their
/// rows); once one is gone (another member's compaction, `exactly optimize`), it holds: nothing
/// is committed.
struct Swap<'a> {
    group: &'a Group,
    adds: Vec<deltalake::kernel::Add>,
    info: serde_json::Value,
    operation: DeltaOperation,
}

impl commit::Writer for Swap<'_> {
    async fn decide(&mut self, table: &DeltaTable, _sent: bool) -> Result<commit::Decision> {
        let snapshot = table.snapshot().map_err(|e| Error::Sink(e.to_string()))?;
        let live: std::collections::HashSet<String> = snapshot.log_data().iter().map(|f| f.path().to_string()).collect();
        if let Some(gone) = self.group.files.iter().find(|f| !live.contains(&f.path)) {
            tracing::debug!(file = %gone.path, "a compaction input was removed by another commit meanwhile; nothing committed");
            return Ok(commit::Decision::Held);
        }
        let mut actions: Vec<Action> = self.group.files.iter().map(|f| Action::Remove(f.remove.clone())).collect();
        actions.extend(self.adds.iter().cloned().map(Action::Add));
        Ok(commit::Decision::Write(Box::new(commit::Proposal {
            actions,
            txns: Vec::new(),
            info: self.info.clone(),
            operation: self.operation.clone(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> LiveFile {
        LiveFile {
            path: name.to_string(),
            location: deltalake::Path::from(name),
            size,
            partition: BTreeMap::new(),
            rows: Some(1),
            has_deletion_vector: false,
            stats: None,
            remove: Remove { path: name.to_string(), data_change: false, ..Default::default() },
        }
    }

    #[test]
    fn bin_packing_fills_groups_up_to_the_target_per_partition() {
        let p = Policy { target_bytes: 100, min_files: 2, parquet: Default::default() };
        let mut files: Vec<LiveFile> = ["a", "b", "c", "d"].iter().map(|n| file(n, 40)).collect();
        files.push(file("full", 100));
        let mut other = file("e", 10);
        other.partition.insert("_bucket".into(), Some("1".into()));
        files.push(other);
        let groups = p.bin_pack(&files);
        let names: Vec<Vec<&str>> = groups.iter().map(|g| g.files.iter().map(|f| f.path.as_str()).collect()).collect();
        assert_eq!(names, [vec!["a", "b"], vec!["c", "d"]], "full-size files and lone files are left alone");
    }

    #[test]
    fn tiers_grow_by_the_fan_in() {
        let p = Policy { target_bytes: 128 << 20, min_files: 10, parquet: Default::default() };
        assert_eq!(p.tier(0), 0);
        assert_eq!(p.tier(10 * 1024 - 1), 0);
        assert_eq!(p.tier(10 * 1024), 1);
        assert_eq!(p.tier(100 * 1024), 2);
        assert_eq!(p.tier(5 << 20), 3);
    }

    #[test]
    fn a_tier_is_merged_once_it_holds_min_files() {
        let p = Policy { target_bytes: 128 << 20, min_files: 4, parquet: Default::default() };
        let mut files: Vec<LiveFile> = (0..3).map(|i| file(&format!("a{i}"), 5_000)).collect();
        assert!(p.plan(&files).is_empty(), "three of four");
        files.push(file("a3", 5_000));
        files.push(file("big", 200 << 20));
        files.push(file("mid", 40_000));
        let plan = p.plan(&files);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a0", "a1", "a2", "a3"]);
    }

    #[test]
    fn partitions_are_merged_apart_and_files_with_deletion_vectors_never() {
        let p = Policy { target_bytes: 128 << 20, min_files: 2, parquet: Default::default() };
        let mut a = file("a", 100);
        a.partition.insert("_bucket".into(), Some("1".into()));
        let mut b = file("b", 100);
        b.partition.insert("_bucket".into(), Some("2".into()));
        let mut c = file("c", 100);
        c.has_deletion_vector = true;
        assert!(p.plan(&[a.clone(), b, c.clone(), file("d", 100)]).is_empty());
        let mut a2 = file("a2", 100);
        a2.partition = a.partition.clone();
        assert_eq!(p.plan(&[a, a2, c]).len(), 1);
    }
}
