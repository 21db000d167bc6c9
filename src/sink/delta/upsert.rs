//! An upsert table's share of an epoch (`[upsert]`, see `state::upsert`): the epoch's new rows
//! as one file tagged with its id ([`FILE_TAG`]: the epoch number); the rows they supersede,
//! and deleted keys' rows, marked deleted in the files holding them (a new deletion vector per
//! file: its current one plus the new rows); and, with `sink.compaction`, a compaction in the
//! same commit.
//!
//! **Compaction.** Each epoch adds a small file and deletes rows all over the table, so an
//! upsert table gathers small files and files that are mostly deleted rows. Rows cannot move
//! behind the index's back, so the compaction is part of an epoch's commit, planned on the files
//! as that commit leaves them ([`plan`]): files whose rows are all deleted are dropped, files at
//! least half deleted are purged, and small files are merged by size tier of their live bytes
//! (as auto-compaction merges an append table's), up to `target_file_size_mb` of input per
//! epoch. The live rows of the chosen files — in file id order, then row order — become one
//! file with id `COMPACTED + epoch`; the commit removes the chosen files and adds it. The
//! index follows in the epoch's checkpoint ([`crate::state::Relocated`]): the moved rows' keys,
//! read from the file written (a replay of an epoch the table holds reads them from the
//! table: the file with that id), each now at its row in that file.

use std::collections::BTreeMap;

use deltalake::arrow::array::BooleanArray;
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::record_batch::RecordBatchReader;
use deltalake::kernel::{Add, DeletionVectorDescriptor, Remove};
use roaring::RoaringTreemap;

use super::*;
use crate::maintenance::compaction::{file_reader, Policy};
use crate::sink::delta::table::FILE_TAG;
use crate::state::Relocated;

/// The id of the file epoch `e`'s compaction writes is `COMPACTED + e` (an epoch's own file:
/// `e`).
pub const COMPACTED: u64 = 1 << 48;

/// Rows an upsert table's compaction may rewrite per row an epoch writes or deletes. Its work
/// (rewriting rows, then re-pointing their keys in the index) follows the change: each epoch
/// earns this much credit, a compaction is planned only within the credit saved so far, and
/// spends it. Purging a file at half deleted rewrites a live row per deleted one, and merging
/// small files rewrites each row a few times: 4 keeps up with both.
pub(super) const CREDIT_PER_CHANGE: u64 = 4;

/// The most rows one epoch's compaction rewrites, however much credit is saved: re-pointing a
/// row's key in the index costs a few microseconds, so this bounds the epoch it lands in to
/// about a second more. Files that large are left alone by merges (they are big enough for
/// readers); a file half deleted is purged once its live rows fit.
pub(super) const MAX_REWRITE_ROWS: u64 = 500_000;

/// Tags an upsert epoch's file with its id, the epoch; the rows were written as one file
/// (their positions are the ones the index records).
pub(super) fn tag_upsert_file(path: &TableLocation, epoch: u64, adds: &mut [Add]) -> Result<()> {
    match adds {
        [] => Ok(()),
        [add] => {
            tag(add, epoch);
            Ok(())
        }
        more => Err(Error::Sink(format!(
            "the upsert rows of epoch {epoch} were written to {} as {} files, not one",
            path.display(),
            more.len()
        ))),
    }
}

fn tag(add: &mut Add, id: u64) {
    add.tags.get_or_insert_with(Default::default).insert(FILE_TAG.to_string(), Some(id.to_string()));
}

/// A live file of an upsert table.
struct Tagged {
    /// Rows, from its statistics.
    rows: u64,
    add: Add,
    remove: Remove,
    location: deltalake::Path,
}

/// The table's files by id.
fn tagged(table: &DeltaTable, path: &TableLocation) -> Result<BTreeMap<u64, Tagged>> {
    let snapshot = table.snapshot().map_err(|e| delta_err(path, e))?;
    let mut files = BTreeMap::new();
    for f in snapshot.log_data().iter() {
        #[allow(deprecated)]
        let add = f.add_action();
        let id = add.tags.as_ref().and_then(|t| t.get(FILE_TAG)).cloned().flatten().and_then(|v| v.parse::<u64>().ok());
        if let Some(id) = id {
            files.insert(
                id,
                Tagged {
                    rows: f.num_records().unwrap_or(0) as u64,
                    add,
                    remove: f.remove_action(true),
                    location: f.object_store_path(),
                },
            );
        }
    }
    Ok(files)
}

/// What an upsert epoch's commit does to the files before it, and the file its compaction adds.
#[derive(Default)]
pub(super) struct Rewrites {
    files: Vec<Rewrite>,
    compacted: Option<Add>,
    /// The rows the compaction moved.
    pub(super) relocated: Option<Relocated>,
    /// The rows it rewrote (its cost, against the credit), and the files it removed.
    pub(super) rewritten: u64,
    pub(super) compacted_files: u64,
}

/// A file the commit removes: re-added with a new deletion vector, or not (compacted); and the
/// vector it had when it was read.
struct Rewrite {
    path: String,
    read: Option<DeletionVectorDescriptor>,
    remove: Remove,
    readd: Option<Add>,
}

impl Rewrites {
    /// Refuses a commit on `table` if a file these rewrites read changed since: the new vectors
    /// would lose another writer's deletes, the compaction its rows.
    pub(super) fn check(&self, table: &DeltaTable, path: &TableLocation, epoch: u64) -> Result<()> {
        if self.files.is_empty() {
            return Ok(());
        }
        let snapshot = table.snapshot().map_err(|e| delta_err(path, e))?;
        let read: HashSet<&str> = self.files.iter().map(|f| f.path.as_str()).collect();
        let now: std::collections::HashMap<String, Option<DeletionVectorDescriptor>> = snapshot
            .log_data()
            .iter()
            .filter(|f| read.contains(f.path().as_ref()))
            .map(|f| (f.path().to_string(), f.deletion_vector_descriptor()))
            .collect();
        match self.files.iter().find(|f| now.get(&f.path) != Some(&f.read)) {
            Some(f) => Err(Error::Conflict {
                table: path.to_string(),
                detail: format!("{} changed while epoch {epoch} rewrote it; nothing was written", f.path),
            }),
            None => Ok(()),
        }
    }

    /// The commit's actions for these rewrites.
    pub(super) fn actions(&self) -> impl Iterator<Item = Action> + '_ {
        self.files
            .iter()
            .flat_map(|f| [Some(Action::Remove(f.remove.clone())), f.readd.clone().map(Action::Add)])
            .flatten()
            .chain(self.compacted.clone().map(Action::Add))
    }
}

/// What an upsert epoch's commit may compact: the policy, the table's `[upsert]` (its key
/// columns), and the credit (in rows, see [`CREDIT_PER_CHANGE`]).
pub(super) struct Compaction<'a> {
    pub(super) policy: &'a Policy,
    pub(super) upsert: &'a crate::config::UpsertConfig,
    pub(super) credit: u64,
}

/// Builds the [`Rewrites`] of epoch `epoch` on `table`: `deletes` (file id, positions) marked
/// deleted (their vectors written into one new file), and the compaction planned within
/// `compaction`. A file the index names that the table does not hold, or a row already deleted,
/// means the index and the table disagree: nothing is written.
pub(super) async fn rewrites(
    table: &DeltaTable,
    path: &TableLocation,
    epoch: u64,
    deletes: &[(u64, Vec<u32>)],
    compaction: Option<Compaction<'_>>,
) -> Result<Rewrites> {
    let mut out = Rewrites::default();
    if deletes.is_empty() && compaction.is_none() {
        return Ok(out);
    }
    let mut files = tagged(table, path)?;
    let store = table.object_store();
    // Each marked file's rows deleted after this commit.
    let mut marked: BTreeMap<u64, RoaringTreemap> = BTreeMap::new();
    for (id, rows) in deletes {
        let file = files.get(id).ok_or_else(|| {
            Error::Recovery(format!(
                "the upsert index names rows of file {id}, which {} does not hold: was the table rewritten by another writer (an OPTIMIZE)? Nothing was written",
                path.display()
            ))
        })?;
        let mut deleted = deleted_now(table, file).await?;
        let before = deleted.len();
        deleted.extend(rows.iter().map(|r| u64::from(*r)));
        if deleted.len() != before + rows.len() as u64 {
            return Err(Error::Recovery(format!(
                "the upsert index names rows of {} in {} that are deleted already; the index and the table disagree. Nothing was written",
                file.add.path,
                path.display()
            )));
        }
        marked.insert(*id, deleted);
    }
    let (chosen, rewritten) = match &compaction {
        None => (Vec::new(), 0),
        Some(c) => {
            let sizes: Vec<Size> = files
                .iter()
                .map(|(id, f)| Size {
                    id: *id,
                    bytes: f.add.size.max(0) as u64,
                    rows: f.rows,
                    deleted: marked
                        .get(id)
                        .map(RoaringTreemap::len)
                        .or_else(|| f.add.deletion_vector.as_ref().map(|d| d.cardinality.max(0) as u64))
                        .unwrap_or(0),
                })
                .collect();
            plan(c.policy, &sizes, c.credit.min(MAX_REWRITE_ROWS))
        }
    };
    if let (Some(Compaction { upsert, policy, .. }), false) = (compaction, chosen.is_empty()) {
        // Each source, its rows deleted after this commit, and whether this epoch marks it (its
        // remove then deletes rows: `dataChange`).
        let mut sources = Vec::with_capacity(chosen.len());
        for id in &chosen {
            let file = files.remove(id).expect("planned from these files");
            let (deleted, marks) = match marked.remove(id) {
                Some(d) => (d, true),
                None => (deleted_now(table, &file).await?, false),
            };
            sources.push((file, deleted, marks));
        }
        let (add, relocated) = compact(table, path, epoch, &sources, (upsert, &policy.parquet)).await?;
        out.compacted = add;
        out.relocated = relocated;
        out.rewritten = rewritten;
        out.compacted_files = sources.len() as u64;
        for (file, _, marks) in sources {
            let remove = Remove { data_change: marks, ..file.remove };
            out.files.push(Rewrite { path: file.add.path, read: file.add.deletion_vector, remove, readd: None });
        }
    }
    let mut vectors = dv::DvFile::new();
    for (id, deleted) in &marked {
        let file = files.remove(id).expect("marked files are held");
        let descriptor = vectors.push(deleted)?;
        let stats = file.add.stats.as_deref().map(loose_bounds);
        let readd = Add { deletion_vector: Some(descriptor), stats, data_change: true, ..file.add.clone() };
        out.files.push(Rewrite { path: file.add.path, read: file.add.deletion_vector, remove: file.remove, readd: Some(readd) });
    }
    if !marked.is_empty() {
        vectors.write(store.as_ref()).await?;
    }
    Ok(out)
}

/// The rows of `file` its deletion vector deletes now.
async fn deleted_now(table: &DeltaTable, file: &Tagged) -> Result<RoaringTreemap> {
    match &file.add.deletion_vector {
        Some(d) => dv::read(table.object_store().as_ref(), d).await,
        None => Ok(RoaringTreemap::new()),
    }
}

/// Writes the live rows of `sources` (each with its rows deleted after this commit) as the one
/// file of epoch `epoch`'s compaction (`None`: no row is live), and the rows' keys.
async fn compact(
    table: &DeltaTable,
    path: &TableLocation,
    epoch: u64,
    sources: &[(Tagged, RoaringTreemap, bool)],
    (upsert, parquet): (&crate::config::UpsertConfig, &crate::config::ParquetConfig),
) -> Result<(Option<Add>, Option<Relocated>)> {
    let keys = &upsert.key;
    let mut writer = RecordBatchWriter::for_table(table)
        .map_err(|e| delta_err(path, e))?
        .with_writer_properties(crate::sink::parquet::properties(parquet));
    let schema = writer.arrow_schema();
    let key_cols: Vec<usize> =
        keys.iter().map(|k| schema.index_of(k).map_err(|_| Error::Sink(format!("no key column {k}")))).collect::<Result<_>>()?;
    let mut moved = Vec::new();
    let mut live_rows = 0u64;
    for (file, deleted, _) in sources {
        let rows = file.rows;
        if deleted.len() >= rows {
            continue; // nothing live: dropped unread
        }
        let mut at = 0u64;
        for batch in file_reader(table, path, &file.location).await? {
            let batch =
                crate::maintenance::compaction::conform(&batch.map_err(|e| delta_err(path, e))?, &schema, &BTreeMap::new())?;
            let n = batch.num_rows() as u64;
            let keep = BooleanArray::from((at..at + n).map(|r| !deleted.contains(r)).collect::<Vec<bool>>());
            at += n;
            let kept = filter_record_batch(&batch, &keep).map_err(|e| Error::Sink(e.to_string()))?;
            if kept.num_rows() > 0 {
                live_rows += kept.num_rows() as u64;
                moved.push(kept.project(&key_cols).map_err(|e| Error::Sink(e.to_string()))?);
                writer.write(kept).await.map_err(|e| delta_err(path, e))?;
            }
        }
        if at != rows {
            return Err(delta_err(
                path,
                format!("{} holds {at} rows, its statistics say {rows}; nothing written", file.add.path),
            ));
        }
    }
    let mut adds = writer.flush().await.map_err(|e| delta_err(path, e))?;
    let id = COMPACTED + epoch;
    match adds.as_mut_slice() {
        [] if live_rows == 0 => Ok((None, None)),
        [add] => {
            tag(add, id);
            add.data_change = false;
            Ok((Some(add.clone()), Some(Relocated { file: id, keys: moved, sequenced: upsert.sequence_by.is_some() })))
        }
        _ => Err(delta_err(path, format!("epoch {epoch}'s compaction of {live_rows} rows wrote {} files, not one", adds.len()))),
    }
}

/// The rows epoch `epoch`'s compaction moved, read from the file it added to `table` (a replay
/// of an epoch the table holds): `None` if it compacted nothing.
pub(super) async fn relocated_by(
    table: &DeltaTable,
    path: &TableLocation,
    epoch: u64,
    upsert: &crate::config::UpsertConfig,
) -> Result<Option<Relocated>> {
    let (keys, id) = (&upsert.key, COMPACTED + epoch);
    let Some(file) = tagged(table, path)?.remove(&id) else { return Ok(None) };
    let reader = file_reader(table, path, &file.location).await?;
    let schema = reader.schema();
    let cols: Vec<usize> =
        keys.iter().map(|k| schema.index_of(k).map_err(|_| Error::Sink(format!("no key column {k}")))).collect::<Result<_>>()?;
    let mut moved = Vec::new();
    for batch in reader {
        moved.push(batch.map_err(|e| delta_err(path, e))?.project(&cols).map_err(|e| Error::Sink(e.to_string()))?);
    }
    Ok(Some(Relocated { file: id, keys: moved, sequenced: upsert.sequence_by.is_some() }))
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

/// A file as an epoch's commit leaves it, for [`plan`]: its id, bytes, rows and deleted rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Size {
    id: u64,
    bytes: u64,
    rows: u64,
    deleted: u64,
}

/// The files an epoch's commit compacts (ids ascending) and the live rows it rewrites: every
/// file whose rows are all deleted (dropped unread, free); then, while the rows rewritten stay
/// within `credit`, files at least half deleted (purged; the most deleted first), then tiers of
/// small files (by live bytes, as [`Policy::tier`]) holding `policy.min_files` files (merged, at
/// most `policy.target_bytes` of them).
pub(super) fn plan(policy: &Policy, files: &[Size], credit: u64) -> (Vec<u64>, u64) {
    let live = |f: &Size| f.rows - f.deleted.min(f.rows);
    let live_bytes = |f: &Size| f.bytes * live(f) / f.rows.max(1);
    let empty = |f: &Size| f.deleted >= f.rows;
    let sparse = |f: &Size| !empty(f) && f.deleted * 2 >= f.rows;
    let mut chosen: Vec<u64> = files.iter().filter(|f| empty(f)).map(|f| f.id).collect();
    let mut rewritten = 0u64;
    let mut sparse_files: Vec<&Size> = files.iter().filter(|f| sparse(f)).collect();
    // The most deleted first: the most purged per row rewritten.
    sparse_files.sort_by(|a, b| (b.deleted * a.rows).cmp(&(a.deleted * b.rows)).then(a.id.cmp(&b.id)));
    for f in sparse_files {
        if rewritten + live(f) <= credit {
            chosen.push(f.id);
            rewritten += live(f);
        }
    }
    let mut tiers: BTreeMap<u32, Vec<&Size>> = BTreeMap::new();
    for f in files.iter().filter(|f| !empty(f) && !sparse(f) && live_bytes(f) < policy.target_bytes) {
        tiers.entry(policy.tier(live_bytes(f))).or_default().push(f);
    }
    for (_, tier) in tiers.into_iter().filter(|(_, t)| t.len() >= policy.min_files) {
        let (mut bytes, mut rows) = (0, 0);
        let fits: Vec<&Size> = tier
            .into_iter()
            .take_while(|f| {
                bytes += f.bytes;
                rows += live(f);
                bytes <= policy.target_bytes && rewritten + rows <= credit
            })
            .collect();
        if fits.len() >= 2 {
            rewritten += fits.iter().map(|f| live(f)).sum::<u64>();
            chosen.extend(fits.iter().map(|f| f.id));
        }
    }
    chosen.sort_unstable();
    (chosen, rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: u64, bytes: u64, rows: u64, deleted: u64) -> Size {
        Size { id, bytes, rows, deleted }
    }

    #[test]
    fn empty_files_go_sparse_ones_are_purged_and_small_ones_merge_by_tier() {
        let p = Policy { target_bytes: 1 << 20, min_files: 3, parquet: Default::default() };
        let plenty = u64::MAX;
        // Mostly live, not enough of one tier: nothing.
        assert_eq!(plan(&p, &[f(1, 50_000, 100, 10), f(2, 50_000, 100, 0)], plenty), (vec![], 0));
        // A file whose rows are all deleted goes alone, at no cost.
        assert_eq!(plan(&p, &[f(1, 50_000, 100, 100), f(2, 50_000, 100, 0)], 0), (vec![1], 0));
        // Half deleted: purged, even alone; its 50 live rows rewritten.
        assert_eq!(plan(&p, &[f(1, 50_000, 100, 50), f(2, 50_000, 100, 0)], plenty), (vec![1], 50));
        // Three small files of one tier merge.
        let files = [f(1, 50_000, 100, 0), f(2, 50_000, 100, 0), f(3, 50_000, 100, 1), f(9, 900_000, 100, 0)];
        assert_eq!(plan(&p, &files, plenty), (vec![1, 2, 3], 299));
    }

    #[test]
    fn a_compaction_stays_within_the_credit_and_the_target() {
        let p = Policy { target_bytes: 100_000, min_files: 2, parquet: Default::default() };
        let files: Vec<Size> = (1..=10).map(|i| f(i, 30_000, 100, 0)).collect();
        assert_eq!(plan(&p, &files, u64::MAX).0, [1, 2, 3], "three files of 30 kB fit in 100 kB");
        assert_eq!(plan(&p, &files, 250).0, [1, 2], "two files' rows fit in the credit");
        assert!(plan(&p, &files, 150).0.is_empty(), "one file is no merge");
        // The most deleted sparse file first; one that does not fit the credit waits.
        let files = [f(1, 500_000, 100, 60), f(2, 400_000, 100, 70), f(3, 10_000, 100, 100)];
        assert_eq!(plan(&p, &files, 50), (vec![2, 3], 30));
        assert_eq!(plan(&p, &files, 80), (vec![1, 2, 3], 70));
    }
}
