//! `exactly optimize` and `exactly vacuum`: Spark's OPTIMIZE [ZORDER BY] and VACUUM, on the
//! tables of a pipeline config or on any Delta table path.
//!
//! Both are safe while the pipeline runs. OPTIMIZE commits with `dataChange = false` and no
//! `txn`; the pipeline's appends never conflict with it, and a bucket-replacing commit of an
//! aggregate table re-reads the current files when OPTIMIZE lands first (`sink::delta`).
//! Bin-packing commits only on versions that still hold its inputs, like auto-compaction; Z-order
//! (delta-rs's OPTIMIZE) rebases past anything, so it must not run beside auto-compaction.
//! VACUUM deletes only files that no version within the deleted-file retention references, and
//! unreferenced files older than the retention (left by a crash between writing and
//! committing) — never a file a running pipeline may still commit.

use std::num::NonZeroU64;
use std::time::Duration;

use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use serde::Serialize;

use crate::config::{PipelineConfig, TableLocation};
use crate::error::{Error, Result};
use crate::sink::delta::commit::{self, VACUUM_FLOOR};
use crate::sink::delta::table::{delta_err, load_table};

/// VACUUM's commits: its START and END markers, commit info and nothing else.
fn vacuum_commit_properties() -> deltalake::kernel::transaction::CommitProperties {
    deltalake::kernel::transaction::CommitProperties::default()
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false))
}

/// Which tables a command works on: the pipeline's data and dead-letter tables (those that
/// exist) — only the data table for a Z-order (`zorder`: the dead-letter table has none of the
/// pipeline's columns, and its auto-compaction must not race a rewrite of the same files) —,
/// or one location (a directory or URL; an object store is reached through the standard
/// environment variables).
pub async fn tables_of(
    config: Option<&PipelineConfig>,
    path: Option<&TableLocation>,
    zorder: bool,
) -> Result<Vec<TableLocation>> {
    match (config, path) {
        (_, Some(p)) => Ok(vec![p.clone()]),
        (Some(c), None) => match (c.table_path(), c.dead_letter_path()) {
            (Some(data), Some(dead)) => {
                let mut out = Vec::new();
                let tables = if zorder { vec![data] } else { vec![data, dead] };
                for t in tables {
                    if load_table(t.clone()).await?.is_some() {
                        out.push(t);
                    }
                }
                Ok(out)
            }
            _ => Err(Error::Sink("the config's sink is not a Delta table; give --path".into())),
        },
        (None, None) => Err(Error::Sink("give --config or --path".into())),
    }
}

/// What OPTIMIZE did to one table.
#[derive(Debug, Clone, Serialize)]
pub struct OptimizeReport {
    /// The table.
    pub table: String,
    /// Files removed (compacted).
    pub files_removed: u64,
    /// Files added.
    pub files_added: u64,
    /// Bytes of the removed files.
    pub bytes_removed: u64,
    /// Partitions with at least one file rewritten.
    pub partitions_optimized: u64,
    /// The table's live files afterwards.
    pub live_files: usize,
    /// The version committed, if anything was.
    pub version: Option<i64>,
}

/// The bin-packing target when neither the command nor the table names one (delta-rs's).
const DEFAULT_TARGET_BYTES: u64 = 100 * 1024 * 1024;

/// Bin-packs the files of `path` below `target` bytes (`None`: the table's
/// `delta.targetFileSize`, else 100 MiB), or Z-orders them by `zorder` columns.
///
/// Bin-packing commits each group the way auto-compaction does (`compaction::rewrite`): only on
/// a version that still holds every input, so it never collides with a running pipeline's
/// compactions. Z-order is delta-rs's OPTIMIZE, which rebases past anything: run it where no
/// auto-compaction runs (aggregate tables, or `sink.compaction.enabled = false`).
pub async fn optimize(path: &TableLocation, target: Option<u64>, zorder: &[String]) -> Result<OptimizeReport> {
    let table = load_table(path.clone()).await?.ok_or_else(|| delta_err(path, "no Delta table here"))?;
    if crate::sink::delta::table::is_upsert_table(&table) {
        return Err(delta_err(
            path,
            "is an upsert table: its pipeline compacts it as it commits (sink.compaction: deleted rows purged, small files merged, its key index kept right); a compaction from outside would move the rows the index names",
        ));
    }
    if zorder.is_empty() {
        return bin_pack(table, path, target).await;
    }
    let before = table.version();
    let columns: Vec<String> =
        table.snapshot().map_err(|e| delta_err(path, e))?.schema().fields().map(|f| f.name().clone()).collect();
    if let Some(c) = zorder.iter().find(|c| !columns.contains(c)) {
        return Err(delta_err(path, format!("cannot Z-order by '{c}': the table's columns are {}", columns.join(", "))));
    }
    let mut builder = table
        .optimize()
        .with_type(if zorder.is_empty() { OptimizeType::Compact } else { OptimizeType::ZOrder(zorder.to_vec()) })
        // No rebase: a Z-order that another commit overtook fails instead of landing beside a
        // compaction of the same files.
        .with_commit_properties(commit::properties())
        .with_max_concurrent_tasks(2);
    if let Some(t) = target.and_then(NonZeroU64::new) {
        builder = builder.with_target_size(t);
    }
    let (table, m) = builder.await.map_err(|e| delta_err(path, e))?;
    let live_files = table.snapshot().map_err(|e| delta_err(path, e))?.log_data().num_files();
    Ok(OptimizeReport {
        table: path.to_string(),
        files_removed: m.num_files_removed,
        files_added: m.num_files_added,
        bytes_removed: m.files_removed.total_size.max(0) as u64,
        partitions_optimized: m.partitions_optimized,
        live_files,
        version: (table.version() != before).then(|| table.version().unwrap_or(0) as i64),
    })
}

async fn bin_pack(mut table: deltalake::DeltaTable, path: &TableLocation, target: Option<u64>) -> Result<OptimizeReport> {
    use super::compaction::{live_files, rewrite, Policy};
    let snapshot = table.snapshot().map_err(|e| delta_err(path, e))?;
    let from_table = snapshot.metadata().configuration().get("delta.targetFileSize").and_then(|v| v.parse::<u64>().ok());
    let policy = Policy {
        target_bytes: target.or(from_table).unwrap_or(DEFAULT_TARGET_BYTES).max(1),
        min_files: 2,
        parquet: Default::default(),
    };
    let groups = policy.bin_pack(&live_files(snapshot));
    let failpoints = crate::testing::failpoint::FailPoints::new();
    let (mut removed, mut added, mut bytes, mut version) = (0, 0, 0, None);
    let mut partitions = std::collections::BTreeSet::new();
    for group in &groups {
        // A group whose inputs another commit removed meanwhile (a compaction) is skipped.
        if let Some(done) = rewrite(&mut table, path, group, &policy, &failpoints).await? {
            removed += done.files_removed;
            added += done.files_added;
            bytes += done.bytes_rewritten;
            version = Some(done.version);
            partitions.insert(format!("{:?}", group.partition));
        }
    }
    let live_files = table.snapshot().map_err(|e| delta_err(path, e))?.log_data().num_files();
    Ok(OptimizeReport {
        table: path.to_string(),
        files_removed: removed,
        files_added: added,
        bytes_removed: bytes,
        partitions_optimized: partitions.len() as u64,
        live_files,
        version,
    })
}

/// What VACUUM did (or would do) to one table.
#[derive(Debug, Clone, Serialize)]
pub struct VacuumReport {
    /// The table.
    pub table: String,
    /// Whether files were only listed.
    pub dry_run: bool,
    /// The files deleted, or that a run would delete.
    pub files: Vec<String>,
}

/// Deletes (or with `dry_run` lists) the files of `path` no version within `retention` (default:
/// the table's `delta.deletedFileRetentionDuration`) references. A retention shorter than the
/// table's is refused, as Delta does, unless `force`.
pub async fn vacuum(path: &TableLocation, retention: Option<Duration>, dry_run: bool, force: bool) -> Result<VacuumReport> {
    use deltalake::table::config::TablePropertiesExt;
    let table = load_table(path.clone()).await?.ok_or_else(|| delta_err(path, "no Delta table here"))?;
    let table_retention = table.snapshot().map_err(|e| delta_err(path, e))?.table_config().deleted_file_retention_duration();
    let asked = chrono::Duration::from_std(retention.unwrap_or(table_retention)).map_err(|e| delta_err(path, e))?;
    // Files a commit removed go by the retention asked for (Lite); files no version references
    // never younger than the longest a commit may take from writing its files to landing (Full):
    // one younger than that may belong to a commit still in flight.
    let floor = chrono::Duration::from_std(VACUUM_FLOOR).map_err(|e| delta_err(path, e))?;
    let pass = |table: deltalake::DeltaTable, mode: VacuumMode, retention: chrono::Duration, enforce: bool| {
        table
            .vacuum()
            .with_mode(mode)
            .with_dry_run(dry_run)
            .with_enforce_retention_duration(enforce)
            .with_retention_period(retention)
            // VACUUM's own commits hold commit info only (no file, no txn): delta-rs may rebase them.
            .with_commit_properties(vacuum_commit_properties())
    };
    let (table, removed) = pass(table, VacuumMode::Lite, asked, !force).await.map_err(|e| delta_err(path, e))?;
    let (_, unreferenced) = pass(table, VacuumMode::Full, asked.max(floor), false).await.map_err(|e| delta_err(path, e))?;
    let mut files = removed.files_deleted;
    for f in unreferenced.files_deleted {
        if !files.contains(&f) {
            files.push(f);
        }
    }
    Ok(VacuumReport { table: path.to_string(), dry_run: removed.dry_run, files })
}
