//! Table maintenance: what keeps a table's cost flat while a pipeline runs for months.
//!
//! - [`Worker`]: one background task per Delta table the sink writes. After each commit it is
//!   told the new version; it writes Delta checkpoints every `sink.checkpoint_interval` commits,
//!   thins its older checkpoints ([`checkpoints`]), cleans expired log entries (at most once an
//!   hour, right after a checkpoint), compacts small
//!   files by size tier ([`compaction`]), and hands the sink a snapshot freshly loaded from the
//!   latest checkpoint so the sink's own snapshot never accumulates the table's whole history.
//!   With `[catalog]` it also registers the table in the catalog when the catalog has not seen
//!   it as it is (created, its schema grown), retrying a failed registration with a growing
//!   pause ([`crate::catalog`]). None of it runs inside an epoch's commit.
//! - [`commands`]: `exactly optimize` (bin-packing or Z-order, delta-rs) and `exactly vacuum`.
//!
//! **Architecture Invariant:** maintenance never changes what a table holds. Its commits carry
//! `dataChange = false` adds and removes of the same rows, or only checkpoints and log deletions;
//! they carry no `txn` action, so the pipeline's idempotence records are untouched.

pub mod checkpoints;
pub mod commands;
pub mod compaction;
pub mod stitch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::DeltaTable;
use tokio::sync::watch;

use crate::config::{Retention, SinkConfig, TableLocation};
use crate::error::Result;
use crate::testing::failpoint::FailPoints;

/// What maintenance last saw of a table, for progress reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    /// Live files of the current version.
    pub live_files: u64,
    /// Files merged away by auto-compaction since the pipeline started.
    pub files_compacted: u64,
}

/// [`TableStats`] shared between a table's worker and the sink.
#[derive(Debug, Default)]
pub struct SharedStats {
    live_files: std::sync::atomic::AtomicU64,
    files_compacted: std::sync::atomic::AtomicU64,
}

impl SharedStats {
    /// Counts `files` merged away (by a compaction in an upsert epoch's commit).
    pub fn compacted(&self, files: u64) {
        self.files_compacted.fetch_add(files, std::sync::atomic::Ordering::Relaxed);
    }

    /// The current figures.
    pub fn get(&self) -> TableStats {
        use std::sync::atomic::Ordering::Relaxed;
        TableStats { live_files: self.live_files.load(Relaxed), files_compacted: self.files_compacted.load(Relaxed) }
    }
}

/// The first pause before a failed catalog registration is tried again; it doubles up to
/// [`REGISTRATION_PAUSE_MAX`].
const REGISTRATION_PAUSE: Duration = Duration::from_secs(1);
const REGISTRATION_PAUSE_MAX: Duration = Duration::from_secs(60);

/// What the table's catalog was last told, and the pause of a failing streak.
#[derive(Default)]
struct Registration {
    published: Option<crate::catalog::Wanted>,
    pause: Option<Duration>,
}

/// How often expired log entries are looked for: cleaning lists the whole `_delta_log`.
pub const LOG_CLEANUP_EVERY: Duration = Duration::from_secs(3_600);

/// A table's maintenance settings, from `[sink]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Commits between Delta checkpoints.
    pub checkpoint_interval: u64,
    /// `delta.logRetentionDuration` value and length.
    pub log_retention: Retention,
    /// `delta.deletedFileRetentionDuration` value and length.
    pub deleted_file_retention: Retention,
    /// Auto-compaction, if on.
    pub compaction: Option<compaction::Policy>,
    /// How its Parquet files are written (`sink.parquet`).
    pub parquet: crate::config::ParquetConfig,
    /// The user's table properties (`sink.table_properties`).
    pub properties: std::collections::BTreeMap<String, String>,
    /// Where the table is registered (`[catalog]`), if anywhere.
    pub catalog: Option<crate::catalog::Entry>,
}

impl Settings {
    /// The settings of a table of a Delta sink config (`None` for other sinks): `aggregate` says
    /// whether it is an aggregate table, whose removed-file retention defaults shorter.
    pub fn of(sink: &SinkConfig, aggregate: bool) -> Option<Settings> {
        let SinkConfig::Delta {
            checkpoint_interval,
            log_retention,
            deleted_file_retention,
            compaction,
            parquet,
            table_properties,
            ..
        } = sink
        else {
            return None;
        };
        let default = || if aggregate { Retention::aggregate_deleted_files() } else { Retention::default_retention() };
        Some(Settings {
            checkpoint_interval: *checkpoint_interval,
            log_retention: log_retention.clone(),
            deleted_file_retention: deleted_file_retention.clone().unwrap_or_else(default),
            compaction: compaction.enabled.then(|| compaction::Policy {
                target_bytes: compaction.target_file_size_mb * 1024 * 1024,
                min_files: compaction.min_files,
                parquet: parquet.clone(),
            }),
            parquet: parquet.clone(),
            properties: table_properties.clone(),
            catalog: None,
        })
    }

    /// These settings, registering the table as `entry` (`[catalog]`).
    pub fn cataloged(mut self, entry: Option<crate::catalog::Entry>) -> Settings {
        self.catalog = entry;
        self
    }

    /// The Delta table properties these settings stand for, set when a table is created and
    /// brought up to date when the pipeline opens it.
    pub fn table_properties(&self) -> HashMap<String, String> {
        let mut properties: HashMap<String, String> = self.properties.clone().into_iter().collect();
        properties.extend([
            ("delta.checkpointInterval".to_string(), self.checkpoint_interval.to_string()),
            ("delta.logRetentionDuration".to_string(), self.log_retention.property()),
            ("delta.deletedFileRetentionDuration".to_string(), self.deleted_file_retention.property()),
            // The pipeline cleans the log itself, after checkpoints (see `Worker`); other writers
            // of the table (an OPTIMIZE from Spark or Python) would otherwise list the whole
            // log after each of their commits.
            ("delta.enableExpiredLogCleanup".to_string(), "false".to_string()),
        ]);
        properties
    }
}

fn table_label(path: &TableLocation) -> String {
    path.to_string()
}

/// The background maintenance of one table, on a thread of its own at a lower CPU priority
/// (nice 10): Parquet decoding and encoding never occupy the pipeline's async workers, and on a
/// busy machine the epochs get the CPU first. Dropping it stops the work (a compaction cut short
/// leaves only unreferenced files, which `exactly vacuum` removes).
pub struct Worker {
    committed: watch::Sender<i64>,
    fresh: Arc<Mutex<Option<DeltaTable>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lowers the calling thread's CPU priority (Linux: `setpriority` on a thread id acts on that
/// thread only). Best effort.
fn lower_priority() {
    // SAFETY: setpriority has no memory-safety preconditions; `0` names the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if rc != 0 {
        tracing::debug!("could not lower the maintenance thread's priority");
    }
}

impl Worker {
    /// Starts the maintenance of `table` (at `path`); `compact` says whether this table is
    /// compacted (append and dead-letter tables; aggregate tables are one file per bucket).
    pub fn spawn(
        table: DeltaTable,
        path: TableLocation,
        settings: Settings,
        compact: bool,
        label: &'static str,
        failpoints: Arc<FailPoints>,
        stats: Arc<SharedStats>,
    ) -> Worker {
        let version = table.version().unwrap_or(0) as i64;
        let (committed, rx) = watch::channel(version);
        let fresh = Arc::new(Mutex::new(None));
        let state = WorkerState {
            table,
            path,
            policy: if compact { settings.compaction.clone() } else { None },
            settings,
            label,
            failpoints,
            fresh: fresh.clone(),
            stats,
            last_checkpoint: None,
            last_cleanup: None,
            thinning: Default::default(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("maintenance runtime");
        let handle = runtime.spawn(state.run(rx));
        let task = handle.abort_handle();
        let spawned = std::thread::Builder::new().name(format!("exactly-maintenance-{label}")).spawn(move || {
            lower_priority();
            let _ = runtime.block_on(handle);
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the table maintenance thread; the table is not maintained");
        }
        Worker { committed, fresh, task }
    }

    /// Tells the worker the table reached `version`.
    pub fn committed(&self, version: i64) {
        self.committed.send_replace(version);
    }

    /// A snapshot loaded from the latest checkpoint, if one was made since the last call.
    pub fn take_fresh(&self) -> Option<DeltaTable> {
        self.fresh.lock().expect("fresh table lock").take()
    }
}

struct WorkerState {
    table: DeltaTable,
    path: TableLocation,
    settings: Settings,
    policy: Option<compaction::Policy>,
    label: &'static str,
    failpoints: Arc<FailPoints>,
    fresh: Arc<Mutex<Option<DeltaTable>>>,
    stats: Arc<SharedStats>,
    last_checkpoint: Option<i64>,
    last_cleanup: Option<Instant>,
    thinning: checkpoints::Thinning,
}

impl WorkerState {
    /// Deletes the checkpoints [`checkpoints::Thinning`] no longer needs, now that checkpoint
    /// `version` is written. A failed deletion leaves a file log cleanup removes later.
    async fn thin_checkpoints(&mut self, version: i64) {
        let store = self.table.log_store().object_store(None);
        let mut deleted = 0;
        for old in self.thinning.written(version, Instant::now()) {
            match store.delete(&checkpoints::checkpoint_path(old)).await {
                Ok(()) | Err(deltalake::ObjectStoreError::NotFound { .. }) => deleted += 1,
                Err(e) => {
                    metrics::counter!(crate::telemetry::metrics::MAINTENANCE_ERRORS, "table" => self.label).increment(1);
                    tracing::warn!(table = %table_label(&self.path), checkpoint = old, error = %e, "could not delete a superseded checkpoint; log cleanup removes it later");
                }
            }
        }
        metrics::counter!(crate::telemetry::metrics::DELTA_LOG_FILES_CLEANED, "table" => self.label).increment(deleted);
    }

    /// Publishes the table's live files (metric and progress).
    fn record_live_files(&self, n: usize) {
        metrics::gauge!(crate::telemetry::metrics::DELTA_LIVE_FILES, "table" => self.label).set(n as f64);
        self.stats.live_files.store(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    async fn run(mut self, mut rx: watch::Receiver<i64>) {
        match last_checkpoint_version(&self.table).await {
            Ok(v) => self.last_checkpoint = v,
            Err(e) => tracing::warn!(table = %table_label(&self.path), error = %e, "could not read the last checkpoint"),
        }
        let mut compacted_at = -1;
        let mut registration = Registration::default();
        loop {
            let version = *rx.borrow_and_update();
            if let Err(e) = self.round(version, &mut compacted_at, &rx).await {
                // Maintenance is retried on the next commit; the pipeline goes on either way.
                metrics::counter!(crate::telemetry::metrics::MAINTENANCE_ERRORS, "table" => self.label).increment(1);
                tracing::warn!(table = %table_label(&self.path), error = %e, "table maintenance failed; retrying after the next commit");
            }
            // A registration that failed is tried again after its pause, commits or not.
            let changed = match self.register(&mut registration).await {
                None => rx.changed().await,
                Some(pause) => tokio::select! {
                    changed = rx.changed() => changed,
                    () = tokio::time::sleep(pause) => Ok(()),
                },
            };
            if changed.is_err() {
                return;
            }
        }
    }

    /// Registers the table in its catalog (`[catalog]`) when the catalog has not seen it as it
    /// now is; the pause before trying again when that failed.
    async fn register(&mut self, state: &mut Registration) -> Option<Duration> {
        let entry = self.settings.catalog.clone()?;
        let wanted = match self.wanted().await {
            Ok(w) if state.published.as_ref() == Some(&w) => return None,
            Ok(w) => Ok(w),
            Err(e) => Err(e.to_string()),
        };
        let done = match wanted {
            Ok(wanted) => {
                let (entry, asked) = (entry.clone(), wanted.clone());
                tokio::task::spawn_blocking(move || crate::catalog::hive::register(&entry, &asked))
                    .await
                    .unwrap_or_else(|e| Err(format!("the registration stopped: {e}")))
                    .map(|done| (done, wanted))
            }
            Err(e) => Err(e),
        };
        match done {
            Ok((done, wanted)) => {
                let outcome = match done {
                    crate::catalog::hive::Registered::Created => Some("created"),
                    crate::catalog::hive::Registered::Altered => Some("altered"),
                    crate::catalog::hive::Registered::Unchanged => None,
                };
                if let Some(outcome) = outcome {
                    metrics::counter!(crate::telemetry::metrics::CATALOG_REGISTRATIONS, "table" => self.label, "outcome" => outcome)
                        .increment(1);
                    tracing::info!(table = %table_label(&self.path), catalog = %entry.label(), outcome, "registered in the catalog");
                }
                state.published = Some(wanted);
                state.pause = None;
                None
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::metrics::CATALOG_ERRORS, "table" => self.label).increment(1);
                if state.pause.is_none() {
                    tracing::warn!(table = %table_label(&self.path), catalog = %entry.label(), error = %e, "catalog registration failed; retrying in the background (commits go on)");
                }
                let pause = state.pause.map_or(REGISTRATION_PAUSE, |p| (p * 2).min(REGISTRATION_PAUSE_MAX));
                state.pause = Some(pause);
                Some(pause)
            }
        }
    }

    /// What the table is now, for its catalog: its URL, schema and partition columns.
    async fn wanted(&mut self) -> Result<crate::catalog::Wanted> {
        let path = self.path.clone();
        let err = |e: deltalake::DeltaTableError| crate::sink::delta::table::delta_err(&path, e);
        self.table.update_incremental(None).await.map_err(err)?;
        let snapshot = self.table.snapshot().map_err(err)?;
        Ok(crate::catalog::Wanted {
            location: self.table.table_url().as_str().trim_end_matches('/').to_string(),
            schema: snapshot.metadata().schema_string().clone(),
            partition_by: snapshot.metadata().partition_columns().to_vec(),
        })
    }

    /// One round: checkpoint and log cleanup when due, then compaction.
    async fn round(&mut self, version: i64, compacted_at: &mut i64, rx: &watch::Receiver<i64>) -> Result<()> {
        let path = self.path.clone();
        let err = |e: deltalake::DeltaTableError| crate::sink::delta::table::delta_err(&path, e);
        let due = self.last_checkpoint.is_none_or(|c| version - c >= self.settings.checkpoint_interval as i64);
        if due && version > 0 {
            let t0 = Instant::now();
            self.table.update_incremental(None).await.map_err(err)?;
            deltalake::checkpoints::create_checkpoint(&self.table, None).await.map_err(err)?;
            let version = self.table.version().unwrap_or(0) as i64;
            self.last_checkpoint = Some(version);
            metrics::counter!(crate::telemetry::metrics::DELTA_CHECKPOINTS, "table" => self.label).increment(1);
            metrics::histogram!(crate::telemetry::metrics::MAINTENANCE_SECONDS, "task" => "checkpoint")
                .record(t0.elapsed().as_secs_f64());
            self.thin_checkpoints(version).await;
            if self.last_cleanup.is_none_or(|t| t.elapsed() >= LOG_CLEANUP_EVERY) {
                let cutoff = (crate::telemetry::metrics::unix_now() * 1000.0) as i64
                    - self.settings.log_retention.length().as_millis() as i64;
                let removed = deltalake::checkpoints::cleanup_expired_logs_for(
                    version as u64,
                    self.table.log_store().as_ref(),
                    cutoff,
                    None,
                )
                .await
                .map_err(err)?;
                self.last_cleanup = Some(Instant::now());
                metrics::counter!(crate::telemetry::metrics::DELTA_LOG_FILES_CLEANED, "table" => self.label)
                    .increment(removed as u64);
            }
            // A snapshot read from the new checkpoint: the sink swaps it in, so the snapshot it
            // keeps up to date holds at most `checkpoint_interval` commits on top of one checkpoint.
            let fresh = crate::sink::delta::table::load_table(self.path.clone())
                .await?
                .ok_or_else(|| err(deltalake::DeltaTableError::NotATable(table_label(&self.path))))?;
            let live = fresh.snapshot().map_err(err)?.log_data().num_files();
            self.record_live_files(live);
            self.table = fresh.clone();
            *self.fresh.lock().expect("fresh table lock") = Some(fresh);
        }
        let Some(policy) = self.policy.clone() else { return Ok(()) };
        if *compacted_at == version {
            return Ok(());
        }
        self.table.update_incremental(None).await.map_err(err)?;
        // Merge until nothing is due, or a newer commit arrived (its round checks the checkpoint
        // first, then goes on here).
        loop {
            let files = compaction::live_files(self.table.snapshot().map_err(err)?);
            self.record_live_files(files.len());
            let Some(group) = policy.plan(&files).into_iter().next() else { break };
            let t0 = Instant::now();
            let Some(done) = compaction::rewrite(&mut self.table, &self.path, &group, &policy, &self.failpoints).await? else {
                break; // another commit took the inputs: the next round plans again
            };
            metrics::counter!(crate::telemetry::metrics::COMPACTION_FILES, "table" => self.label).increment(done.files_removed);
            self.stats.files_compacted.fetch_add(done.files_removed, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(crate::telemetry::metrics::COMPACTION_BYTES, "table" => self.label).increment(done.bytes_rewritten);
            metrics::gauge!(crate::telemetry::metrics::LAST_COMPACTION, "table" => self.label)
                .set(crate::telemetry::metrics::unix_now());
            metrics::histogram!(crate::telemetry::metrics::MAINTENANCE_SECONDS, "task" => "compaction")
                .record(t0.elapsed().as_secs_f64());
            tracing::debug!(table = %table_label(&self.path), files = done.files_removed, bytes = done.bytes_rewritten, "compacted");
            if rx.has_changed().unwrap_or(true) {
                return Ok(());
            }
        }
        *compacted_at = version;
        Ok(())
    }
}

/// The version of the table's latest Delta checkpoint (`_delta_log/_last_checkpoint`), if any.
pub async fn last_checkpoint_version(table: &DeltaTable) -> Result<Option<i64>> {
    let url = table.table_url().to_string();
    let location = deltalake::Path::from("_delta_log/_last_checkpoint");
    match table.object_store().get(&location).await {
        Ok(got) => {
            let bytes =
                got.bytes().await.map_err(|e| crate::error::Error::Delta { table: url.clone(), detail: e.to_string() })?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| crate::error::Error::Delta { table: url.clone(), detail: format!("_last_checkpoint: {e}") })?;
            Ok(v.get("version").and_then(|v| v.as_i64()))
        }
        Err(deltalake::ObjectStoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(crate::error::Error::Delta { table: url, detail: e.to_string() }),
    }
}
