//! `exactly optimize` and `exactly vacuum`: Spark's OPTIMIZE [ZORDER BY] and VACUUM, on the
//! tables of a pipeline config or on any Delta table path.
//!
//! Both are safe while the pipeline runs. OPTIMIZE commits with `dataChange = false` and no
//! `txn`; the pipeline's appends never conflict with it, and a bucket-replacing commit of an
//! aggregate table re-reads the current files when OPTIMIZE lands first (`sink::delta`).
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
use crate::sink::delta::{delta_err, load_table};

/// Which tables a command works on: the pipeline's data and dead-letter tables (those that
/// exist), or one location (a directory or URL; an object store is reached through the
/// standard environment variables).
pub async fn tables_of(config: Option<&PipelineConfig>, path: Option<&TableLocation>) -> Result<Vec<TableLocation>> {
    match (config, path) {
        (_, Some(p)) => Ok(vec![p.clone()]),
        (Some(c), None) => match (c.table_path(), c.dead_letter_path()) {
            (Some(data), Some(dead)) => {
                let mut out = Vec::new();
                for t in [data, dead] {
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

/// Bin-packs the files of `path` below `target` bytes (`None`: the table's
/// `delta.targetFileSize`, else 100 MiB), or Z-orders them by `zorder` columns.
pub async fn optimize(path: &TableLocation, target: Option<u64>, zorder: &[String]) -> Result<OptimizeReport> {
    let table = load_table(path.clone()).await?.ok_or_else(|| delta_err(path, "no Delta table here"))?;
    let before = table.version();
    let columns: Vec<String> =
        table.snapshot().map_err(|e| delta_err(path, e))?.schema().fields().map(|f| f.name().clone()).collect();
    if let Some(c) = zorder.iter().find(|c| !columns.contains(c)) {
        return Err(delta_err(path, format!("cannot Z-order by '{c}': the table's columns are {}", columns.join(", "))));
    }
    let mut builder = table
        .optimize()
        .with_type(if zorder.is_empty() { OptimizeType::Compact } else { OptimizeType::ZOrder(zorder.to_vec()) })
        .with_commit_properties(super::commit_properties())
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
    let table = load_table(path.clone()).await?.ok_or_else(|| delta_err(path, "no Delta table here"))?;
    let mut builder = table
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_dry_run(dry_run)
        .with_enforce_retention_duration(!force)
        .with_commit_properties(super::commit_properties());
    if let Some(r) = retention {
        let r = chrono::Duration::from_std(r).map_err(|e| delta_err(path, e))?;
        builder = builder.with_retention_period(r);
    }
    let (_, m) = builder.await.map_err(|e| delta_err(path, e))?;
    Ok(VacuumReport { table: path.to_string(), dry_run: m.dry_run, files: m.files_deleted })
}
