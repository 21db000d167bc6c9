//! Thinning of the Delta checkpoints a worker writes.
//!
//! A checkpoint is written every `sink.checkpoint_interval` commits and, left alone, kept for the
//! whole `sink.log_retention`: at a 1 s epoch and 100 commits per checkpoint that is ~6,000
//! checkpoints a week, each the size of the table's file list. Only the newest one is needed to
//! read the table; an older version is read from any earlier checkpoint plus the JSON commits
//! after it, which log cleanup keeps for the retention. So the worker keeps:
//! - the two newest checkpoints (a reader that has just read `_last_checkpoint` may still be
//!   about to open the one before the newest);
//! - one checkpoint per [`KEEP_EVERY`], so reading an old version replays at most an hour of
//!   commits;
//!
//! and deletes the others it wrote. Checkpoints written before the process started are left to
//! log cleanup. The `_delta_log` then holds, besides the JSON commits of the retention, about
//! `log_retention / KEEP_EVERY` checkpoints.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often a checkpoint is kept for reading older versions.
pub const KEEP_EVERY: Duration = Duration::from_secs(3_600);

/// Which of the checkpoints written so far are no longer needed.
#[derive(Debug, Default)]
pub struct Thinning {
    /// When the last kept checkpoint was written.
    kept_at: Option<Instant>,
    /// The two newest checkpoints' versions, oldest first.
    newest: VecDeque<i64>,
    /// Checkpoints written and not kept, oldest first.
    unkept: VecDeque<i64>,
}

impl Thinning {
    /// Records checkpoint `version`, written at `now`, and returns the versions of checkpoints
    /// that may now be deleted, oldest first.
    pub fn written(&mut self, version: i64, now: Instant) -> Vec<i64> {
        if self.kept_at.is_none_or(|t| now.saturating_duration_since(t) >= KEEP_EVERY) {
            self.kept_at = Some(now);
        } else {
            self.unkept.push_back(version);
        }
        self.newest.push_back(version);
        if self.newest.len() > 2 {
            self.newest.pop_front();
        }
        let oldest_needed = self.newest[0];
        let mut doomed = Vec::new();
        while self.unkept.front().is_some_and(|&v| v < oldest_needed) {
            doomed.extend(self.unkept.pop_front());
        }
        doomed
    }
}

/// The path of checkpoint `version` under the table's root (Delta's single-file checkpoint).
pub fn checkpoint_path(version: i64) -> deltalake::Path {
    deltalake::Path::from(format!("_delta_log/{version:020}.checkpoint.parquet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_two_newest_and_one_per_hour() {
        let t0 = Instant::now();
        let mut thin = Thinning::default();
        let minute = Duration::from_secs(60);
        // One checkpoint a minute: version 100 (the first, kept), 200, 300, ...
        let mut deleted = Vec::new();
        for i in 0..130i64 {
            deleted.extend(thin.written(100 * (i + 1), t0 + minute * i as u32));
        }
        // Kept: the first, the first after each full hour (minutes 0, 60, 120), and the two newest.
        let kept: Vec<i64> = (1..=130).map(|i| 100 * i).filter(|v| !deleted.contains(v)).collect();
        assert_eq!(kept, vec![100, 6_100, 12_100, 12_900, 13_000]);
        assert!(deleted.windows(2).all(|w| w[0] < w[1]), "deleted oldest first, each once");
    }

    #[test]
    fn nothing_deleted_before_two_newer_checkpoints_exist() {
        let t0 = Instant::now();
        let mut thin = Thinning::default();
        assert!(thin.written(100, t0).is_empty()); // kept
        assert!(thin.written(200, t0).is_empty()); // unkept, but one of the two newest
        assert!(thin.written(300, t0).is_empty()); // 200 still the second newest
        assert_eq!(thin.written(400, t0), vec![200]);
    }

    #[test]
    fn the_path_is_the_delta_checkpoint_name() {
        assert_eq!(checkpoint_path(1_234).as_ref(), "_delta_log/00000000000000001234.checkpoint.parquet");
    }
}
