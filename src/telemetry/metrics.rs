//! Metric names, in one place, and the Prometheus exporter. Every name is documented in
//! `dashboards/README.md`.

/// Counter, labels `topic`, `partition`: records read from Kafka (including re-reads after a
/// restart).
pub const RECORDS_CONSUMED: &str = "exactly_records_consumed_total";
/// Counter: records committed to the sink (each record once).
pub const RECORDS_COMMITTED: &str = "exactly_records_committed_total";
/// Counter: records dropped by dedup as duplicates.
pub const DUPLICATES_DROPPED: &str = "exactly_duplicates_dropped_total";
/// Counter: changes `[upsert]` ignored as older (`upsert.sequence_by`) than what their key
/// holds, counted when their epoch commits.
pub const CHANGES_SUPERSEDED: &str = "exactly_changes_superseded_total";
/// Counter: records the transform's filter dropped (`transform.where`), counted when their epoch
/// commits (each record once).
pub const RECORDS_FILTERED: &str = "exactly_records_filtered_total";
/// Counter, label `reason` (a fixed category): records written to the dead-letter table.
pub const DEAD_LETTERS: &str = "exactly_dead_letters_total";
/// Counter, label `table` (`data`, `dead_letters`): Parquet files added by Delta commits.
pub const DELTA_FILES_ADDED: &str = "exactly_delta_files_added_total";
/// Counter, label `table`: bytes of Parquet files added by Delta commits.
pub const DELTA_BYTES_WRITTEN: &str = "exactly_delta_bytes_written_total";
/// Counter, label `table`: bucket-replacing commits redone because another writer (an OPTIMIZE)
/// committed first.
pub const DELTA_COMMIT_RETRIES: &str = "exactly_delta_commit_retries_total";
/// Counter, label `table`: files merged away by auto-compaction.
pub const COMPACTION_FILES: &str = "exactly_compaction_files_total";
/// Counter, label `table`: bytes of the files auto-compaction rewrote.
pub const COMPACTION_BYTES: &str = "exactly_compaction_bytes_rewritten_total";
/// Gauge, label `table`: Unix time of the last auto-compaction commit.
pub const LAST_COMPACTION: &str = "exactly_last_compaction_timestamp_seconds";
/// Gauge, label `table`: live (current) files of the table, as maintenance last saw them.
pub const DELTA_LIVE_FILES: &str = "exactly_delta_live_files";
/// Counter, label `table`: Delta checkpoints written.
pub const DELTA_CHECKPOINTS: &str = "exactly_delta_checkpoints_total";
/// Counter, label `table`: expired `_delta_log` entries deleted.
pub const DELTA_LOG_FILES_CLEANED: &str = "exactly_delta_log_files_cleaned_total";
/// Histogram, label `task` (`checkpoint`, `compaction`): seconds of one maintenance task.
pub const MAINTENANCE_SECONDS: &str = "exactly_maintenance_duration_seconds";
/// Counter, label `table`: maintenance rounds that failed (retried after the next commit).
pub const MAINTENANCE_ERRORS: &str = "exactly_maintenance_errors_total";
/// Counter, labels `table`, `outcome` (`created`, `altered`): registrations in the catalog
/// (`[catalog]`) that changed it.
pub const CATALOG_REGISTRATIONS: &str = "exactly_catalog_registrations_total";
/// Counter, label `table`: registrations in the catalog that failed (retried in the background).
pub const CATALOG_ERRORS: &str = "exactly_catalog_errors_total";
/// Histogram: seconds of one persist of the checkpoint to `checkpoint.remote` (snapshot,
/// uploads, manifest).
pub const CHECKPOINT_PERSIST_SECONDS: &str = "exactly_checkpoint_persist_duration_seconds";
/// Counter: bytes uploaded by checkpoint persists (the files the store lacked).
pub const CHECKPOINT_PERSIST_BYTES: &str = "exactly_checkpoint_persist_bytes_total";
/// Counter: checkpoint persists that failed (retried when the next is due).
pub const CHECKPOINT_PERSIST_FAILURES: &str = "exactly_checkpoint_persist_failures_total";
/// Gauge: the epoch of the newest checkpoint persisted by this process.
pub const CHECKPOINT_PERSISTED_EPOCH: &str = "exactly_checkpoint_persisted_epoch";
/// Gauge: seconds the restore of a persisted checkpoint took at start-up (0: none).
pub const CHECKPOINT_RESTORE_SECONDS: &str = "exactly_checkpoint_restore_seconds";
/// Histogram: seconds a group member took to rebuild a partition's keyed state from the data
/// table (`state.scope = "partition"`), per restore.
pub const PARTITION_STATE_RESTORE_SECONDS: &str = "exactly_partition_state_restore_seconds";
/// Counter: offsets Kafka deleted before they were read, skipped and recorded in a commit
/// (`source.on_data_loss = "skip"`), by topic and partition.
pub const OFFSETS_SKIPPED: &str = "exactly_offsets_skipped_total";
/// Gauge: resident set size of the process, bytes.
pub const PROCESS_RSS: &str = "exactly_process_resident_bytes";
/// Gauge: Unix time of the last committed epoch (set to the start time before the first).
pub const LAST_COMMIT: &str = "exactly_last_commit_timestamp_seconds";
/// Gauge: the configured epoch interval, seconds (alert rules scale with it).
pub const EPOCH_INTERVAL: &str = "exactly_epoch_interval_seconds";
/// Gauge: restarts left in the restart budget's current window.
pub const RESTART_BUDGET_REMAINING: &str = "exactly_restart_budget_remaining";
/// Gauge, label `kind` (`dedup`, `aggregate`): keys held in the RocksDB state.
pub const STATE_KEYS: &str = "exactly_state_keys";
/// Gauge: bytes of the RocksDB state on disk (SST files).
pub const STATE_BYTES: &str = "exactly_state_bytes";
/// Gauge, label `kind` (`memtables`, `table_readers`, `block_cache`, `block_cache_pinned`):
/// RocksDB's memory, from its own accounting.
pub const STATE_MEMORY: &str = "exactly_state_memory_bytes";
/// Gauge: the last committed epoch.
pub const EPOCH_COMMITTED: &str = "exactly_epoch_committed";
/// Histogram, label `phase` (`state`: dedup and aggregation before the commit; `sink`, with
/// its parts `parquet` and `delta`; `checkpoint`): seconds spent on an epoch.
pub const COMMIT_SECONDS: &str = "exactly_commit_duration_seconds";
/// Histogram: seconds from the oldest Kafka timestamp in an epoch to its commit.
pub const END_TO_END_SECONDS: &str = "exactly_end_to_end_latency_seconds";
/// Gauge, labels `topic`, `partition`: records in Kafka not yet committed by the pipeline.
pub const CONSUMER_LAG: &str = "exactly_consumer_lag_records";
/// Counter, labels `actor`, `reason`: restarts of the actor tree.
pub const ACTOR_RESTARTS: &str = "exactly_actor_restarts_total";
/// Gauge: the current generation of the actor tree (increments on every restart).
pub const GENERATION: &str = "exactly_generation";

/// Counter: consumer-group rebalances that changed (or revoked) this member's partitions.
pub const REBALANCES: &str = "exactly_rebalances_total";
/// Histogram: group mode, seconds from a rebalance (or a fence) to the next running generation
/// — how long this member committed nothing because of it.
pub const REBALANCE_PAUSE_SECONDS: &str = "exactly_rebalance_pause_seconds";
/// Gauge: the partitions this process reads (group mode: its share of the group's).
pub const ASSIGNED_PARTITIONS: &str = "exactly_assigned_partitions";
/// Counter: epochs dropped because another group member had claimed one of their partitions.
pub const FENCED: &str = "exactly_fenced_epochs_total";

/// Histogram buckets, seconds: from 1 ms to half an hour (a commit to a store in trouble, the
/// end-to-end latency of a backlog).
pub(super) const BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Registers every labelled series at zero, so dashboards and `rate()` have data from the
/// first scrape, not from the first event.
pub fn register_zeros() {
    for reason in crate::model::Rejection::ALL {
        metrics::counter!(DEAD_LETTERS, "reason" => reason.as_str()).increment(0);
    }
    for actor in ["consumer", "aggregator", "committer", "start-up"] {
        for reason in ["failed", "stopped"] {
            metrics::counter!(ACTOR_RESTARTS, "actor" => actor, "reason" => reason).increment(0);
        }
    }
    for table in ["data", "dead_letters"] {
        metrics::counter!(DELTA_FILES_ADDED, "table" => table).increment(0);
        metrics::counter!(DELTA_BYTES_WRITTEN, "table" => table).increment(0);
        metrics::counter!(DELTA_COMMIT_RETRIES, "table" => table).increment(0);
        metrics::counter!(COMPACTION_FILES, "table" => table).increment(0);
        metrics::counter!(COMPACTION_BYTES, "table" => table).increment(0);
        metrics::counter!(DELTA_CHECKPOINTS, "table" => table).increment(0);
        metrics::counter!(DELTA_LOG_FILES_CLEANED, "table" => table).increment(0);
        metrics::counter!(MAINTENANCE_ERRORS, "table" => table).increment(0);
    }
    metrics::counter!(RECORDS_COMMITTED).increment(0);
    metrics::counter!(CHECKPOINT_PERSIST_BYTES).increment(0);
    metrics::counter!(CHECKPOINT_PERSIST_FAILURES).increment(0);
    metrics::counter!(REBALANCES).increment(0);
    metrics::counter!(FENCED).increment(0);
    metrics::counter!(DUPLICATES_DROPPED).increment(0);
    metrics::counter!(RECORDS_FILTERED).increment(0);
    metrics::counter!(CHANGES_SUPERSEDED).increment(0);
    for kind in ["dedup", "aggregate", "upsert"] {
        metrics::gauge!(STATE_KEYS, "kind" => kind).increment(0.0);
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
