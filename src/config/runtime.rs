//! `[epoch]`, `[checkpoint]`, `[metrics]`, `[supervisor]`.

use super::*;

/// Epoch boundaries: an epoch closes after `interval_ms`, or earlier once `max_records` records
/// are buffered, whichever comes first. Epochs with no new records are not committed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EpochConfig {
    /// Epoch interval in milliseconds (the seed's trigger interval).
    pub interval_ms: u64,
    /// Close the epoch early once this many records are buffered.
    pub max_records: usize,
}

impl Default for EpochConfig {
    fn default() -> Self {
        EpochConfig { interval_ms: 1_000, max_records: 200_000 }
    }
}

impl EpochConfig {
    /// The interval as a [`Duration`].
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// Where progress is recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Checkpoint directory (Spark's `checkpointLocation`). Default: `data/checkpoints/<id>`.
    /// One directory per pipeline; never share it.
    pub dir: Option<PathBuf>,
    /// When the checkpoint is missing (a fresh disk, a container that lost its volume) and the
    /// table holds epochs of this pipeline, rebuild the checkpoint from the table's last epoch
    /// and resume after it, instead of refusing. Stateless pipelines only: the table records
    /// offsets, not dedup keys or running totals. Off by default.
    pub rebuild_from_table: bool,
    /// Where the checkpoint is persisted so it outlives its disk: a directory or an `s3://`,
    /// `az://`, `abfss://` or `gs://` URL. The local directory stays the working copy; its
    /// RocksDB files are uploaded incrementally (each table file once) with a small manifest per
    /// persisted epoch, and a process starting on an empty `dir` restores the newest one.
    /// Unset: the checkpoint lives on the local disk only.
    pub remote: Option<TableLocation>,
    /// Storage options for `remote` (endpoint, region, credentials; never shown). Unset: the
    /// Delta sink's `sink.storage`.
    pub storage: Option<StorageOptions>,
    /// Persist after this many committed epochs...
    pub persist_every_epochs: u64,
    /// ...or after this many milliseconds with at least one new epoch, whichever comes first.
    pub persist_interval_ms: u64,
    /// Persisted checkpoints kept (newest first); older ones and the files only they name are
    /// deleted in the background.
    pub retain: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: None,
            rebuild_from_table: false,
            remote: None,
            storage: None,
            persist_every_epochs: 20,
            persist_interval_ms: 60_000,
            retain: 3,
        }
    }
}

/// Prometheus metrics endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on, e.g. `127.0.0.1:9464`. Unset: no endpoint.
    pub listen: Option<String>,
}

/// The restart budget: at most `max_restarts` restarts within `window_secs`; one more failure
/// stops the pipeline with an error (and a non-zero exit).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Restarts allowed within the window.
    pub max_restarts: usize,
    /// The window, in seconds.
    pub window_secs: u64,
    /// Delay before a restart, in milliseconds (doubles on each restart inside the window).
    pub backoff_ms: u64,
    /// How long a graceful stop (Ctrl-C, SIGTERM) may take to commit the open epoch, in
    /// milliseconds. Past it the pipeline stops without that epoch — the checkpoint is intact and
    /// the next start reads those records again — and exits non-zero.
    pub shutdown_timeout_ms: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig { max_restarts: 10, window_secs: 60, backoff_ms: 100, shutdown_timeout_ms: 30_000 }
    }
}

impl PipelineConfig {
    /// `[epoch]`, `[supervisor]`, `[metrics]`.
    pub(super) fn check_runtime(&self, bad: &Bad) -> Result<(), ConfigError> {
        if self.epoch.interval_ms < 10 {
            return Err(bad("epoch.interval_ms", format!("is {}; must be at least 10 (milliseconds)", self.epoch.interval_ms)));
        }
        if self.epoch.max_records == 0 {
            return Err(bad("epoch.max_records", "must be at least 1".into()));
        }
        if self.supervisor.window_secs == 0 {
            return Err(bad("supervisor.window_secs", "must be at least 1".into()));
        }
        if self.supervisor.shutdown_timeout_ms == 0 {
            return Err(bad("supervisor.shutdown_timeout_ms", "must be at least 1".into()));
        }
        let cp = &self.checkpoint;
        if cp.remote.is_some() && (cp.persist_every_epochs == 0 || cp.persist_interval_ms < 100 || cp.retain == 0) {
            return Err(bad(
                "checkpoint",
                "persist_every_epochs and retain must be at least 1, persist_interval_ms at least 100".into(),
            ));
        }
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(bad("metrics.listen", format!("is {listen:?}; give ip:port, e.g. \"127.0.0.1:9464\"")));
            }
        }
        Ok(())
    }
}
