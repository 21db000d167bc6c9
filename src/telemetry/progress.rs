//! Per-epoch progress, like Spark's `StreamingQueryProgress`: one report per committed epoch,
//! logged as one structured line and broadcast to whoever watches (the CLI's live view, tests).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// One partition's share of an epoch.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionProgress {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset of the epoch's range.
    pub start_offset: i64,
    /// Next offset after the range.
    pub end_offset: i64,
    /// Records committed from this partition in the epoch.
    pub records: u64,
    /// Records in Kafka past `end_offset`, from the last statistics (None until known).
    pub lag: Option<i64>,
}

/// What one committed epoch did.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// When the epoch's commit was reported, RFC 3339 in UTC (`2026-12-07T04:01:02.345Z`).
    pub timestamp: String,
    /// Pipeline id.
    pub pipeline: String,
    /// Epoch committed.
    pub epoch: u64,
    /// Actor-tree generation (0 until the first restart).
    pub generation: u64,
    /// Records consumed in this epoch.
    pub input_rows: u64,
    /// Rows written to the table.
    pub output_rows: u64,
    /// Records sent to the dead-letter table.
    pub dead_letters: u64,
    /// Records the transform's filter dropped.
    pub filtered: u64,
    /// Records committed per second since the previous commit.
    pub rows_per_second: f64,
    /// Time in the stateful stages (dedup, aggregation) before the commit, milliseconds.
    pub state_ms: f64,
    /// Time in the sink commit, milliseconds.
    pub sink_ms: f64,
    /// Time writing the checkpoint, milliseconds.
    pub checkpoint_ms: f64,
    /// Total records behind, over all partitions (None until statistics arrive).
    pub lag: Option<i64>,
    /// Restarts since the pipeline started.
    pub restarts: u64,
    /// The data table's live files, as its maintenance last saw them (Delta sink only).
    pub table_files: Option<u64>,
    /// Files merged away by auto-compaction since the pipeline started (Delta sink only).
    pub files_compacted: Option<u64>,
    /// Per partition.
    pub partitions: Vec<PartitionProgress>,
    /// Group mode: this member's name (`host-pid`, as its commits record it); its partitions
    /// are the ones in `partitions`.
    pub member: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Progress {
    /// Now, as [`Progress::timestamp`] shows it.
    pub fn now() -> String {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// Milliseconds of a duration, for the report.
    pub fn millis(d: Duration) -> f64 {
        ms(d)
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lag = self.lag.map(|l| l.to_string()).unwrap_or_else(|| "?".into());
        write!(
            f,
            "{} epoch {:>6} | {:>8} rows | {:>4} dead | {:>9.0} rows/s | lag {:>8} | commit {:>6.1} ms + checkpoint {:>5.1} ms | restarts {}",
            self.timestamp,
            self.epoch,
            self.input_rows,
            self.dead_letters,
            self.rows_per_second,
            lag,
            self.sink_ms,
            self.checkpoint_ms,
            self.restarts
        )?;
        if self.state_ms > 0.0 {
            write!(f, " | state {:.1} ms", self.state_ms)?;
        }
        if self.filtered > 0 {
            write!(f, " | filtered {}", self.filtered)?;
        }
        if let Some(files) = self.table_files {
            write!(f, " | files {files} ({} compacted)", self.files_compacted.unwrap_or(0))?;
        }
        if let Some(member) = &self.member {
            let owned: Vec<String> = self.partitions.iter().map(|p| format!("{}/{}", p.topic, p.partition)).collect();
            write!(f, " | member {member} owns {}", owned.join(","))?;
        }
        Ok(())
    }
}
