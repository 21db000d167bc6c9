//! `exactly optimize` and `exactly vacuum`: compaction and file cleanup of a pipeline's tables
//! (or one table), safe while the pipeline runs.

use clap::Args;

use super::TableArgs;

#[derive(Args)]
pub(crate) struct OptimizeArgs {
    #[command(flatten)]
    pub(crate) tables: TableArgs,
    /// Z-order by these columns (comma-separated) instead of bin-packing.
    #[arg(long, value_delimiter = ',')]
    pub(crate) zorder: Vec<String>,
    /// Target file size in MiB (default: the table's delta.targetFileSize, else 100).
    #[arg(long)]
    pub(crate) target_size_mb: Option<u64>,
}

#[derive(Args)]
pub(crate) struct VacuumArgs {
    #[command(flatten)]
    pub(crate) tables: TableArgs,
    /// Delete the files (default: only list them).
    #[arg(long)]
    pub(crate) execute: bool,
    /// Keep files removed within this many hours (default: the table's
    /// delta.deletedFileRetentionDuration, 7 days for tables the pipeline created).
    #[arg(long)]
    pub(crate) retention_hours: Option<u64>,
    /// Allow a retention shorter than the table's (readers of older versions may fail).
    #[arg(long)]
    pub(crate) force: bool,
}

/// Compacts the tables `a` names.
pub(crate) async fn optimize(a: OptimizeArgs) -> anyhow::Result<()> {
    for table in a.tables.tables(!a.zorder.is_empty()).await? {
        let r = exactly::maintenance::commands::optimize(&table, a.target_size_mb.map(|m| m * 1024 * 1024), &a.zorder).await?;
        println!(
            "{}: {} files ({} bytes) compacted into {}, {} partitions; {} live files{}",
            r.table,
            r.files_removed,
            r.bytes_removed,
            r.files_added,
            r.partitions_optimized,
            r.live_files,
            r.version.map(|v| format!("; version {v}")).unwrap_or_else(|| "; nothing to do".into())
        );
    }
    Ok(())
}

/// Deletes (or lists) the files no version within the retention references.
pub(crate) async fn vacuum(a: VacuumArgs) -> anyhow::Result<()> {
    let retention = a.retention_hours.map(|h| std::time::Duration::from_secs(h * 3600));
    for table in a.tables.tables(false).await? {
        let r = exactly::maintenance::commands::vacuum(&table, retention, !a.execute, a.force).await?;
        for f in &r.files {
            println!("{}{f}", if r.dry_run { "would delete " } else { "deleted " });
        }
        println!(
            "{}: {} {} files{}",
            r.table,
            if r.dry_run { "would delete" } else { "deleted" },
            r.files.len(),
            if r.dry_run { " (dry run: add --execute to delete them)" } else { "" }
        );
    }
    Ok(())
}
