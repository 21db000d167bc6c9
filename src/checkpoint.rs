//! The checkpoint: the last committed epoch and the offsets it ends at, in one small JSON file
//! replaced atomically (write temp, fsync, rename, fsync directory).
//!
//! **Architecture Invariant:** the checkpoint is written only by the committer, and only after
//! the sink has durably committed the same epoch. So the checkpoint epoch C never runs ahead of
//! the sink's epoch V: C <= V <= C + 1.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::failpoint::FailPoints;
use crate::record::{Offsets, TopicPartition};

const FILE: &str = "checkpoint.json";

/// What the checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The pipeline this checkpoint belongs to; a mismatch is refused.
    pub pipeline_id: String,
    /// Last committed epoch (0: none yet, only the starting offsets are pinned).
    pub epoch: u64,
    /// Next offset to read per partition.
    pub offsets: Vec<PartitionOffset>,
}

/// One partition's next offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to read.
    pub next_offset: i64,
}

impl Checkpoint {
    /// Builds a checkpoint from a cut.
    pub fn new(pipeline_id: &str, epoch: u64, offsets: &Offsets) -> Self {
        Checkpoint {
            pipeline_id: pipeline_id.to_string(),
            epoch,
            offsets: offsets
                .iter()
                .map(|(tp, o)| PartitionOffset { topic: tp.topic.to_string(), partition: tp.partition, next_offset: *o })
                .collect(),
        }
    }

    /// The offsets as a map.
    pub fn offsets(&self) -> Offsets {
        self.offsets.iter().map(|p| (TopicPartition::new(&p.topic, p.partition), p.next_offset)).collect()
    }
}

/// The checkpoint directory of one pipeline.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    failpoints: Arc<FailPoints>,
}

impl CheckpointStore {
    /// Opens (creating if needed) a checkpoint directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)
            .map_err(|e| Error::Checkpoint { path: dir.clone(), detail: format!("cannot create directory: {e}") })?;
        Ok(CheckpointStore { dir, failpoints: Arc::new(FailPoints::new()) })
    }

    /// Uses `failpoints` (for `mid-checkpoint-write`).
    pub fn with_failpoints(mut self, failpoints: Arc<FailPoints>) -> Self {
        self.failpoints = failpoints;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Reads the checkpoint, `None` if there is none yet.
    pub fn load(&self) -> Result<Option<Checkpoint>> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Checkpoint { path, detail: format!("corrupt checkpoint: {e}") }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Checkpoint { path, detail: e.to_string() }),
        }
    }

    /// Replaces the checkpoint atomically and durably. A crash leaves either the old or the new
    /// checkpoint, never a torn one.
    pub fn store(&self, checkpoint: &Checkpoint) -> Result<()> {
        let path = self.path();
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let err = |detail: String| Error::Checkpoint { path: path.clone(), detail };
        let bytes = serde_json::to_vec_pretty(checkpoint).map_err(|e| err(e.to_string()))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| err(format!("cannot write: {e}")))?;
        f.write_all(&bytes).map_err(|e| err(format!("cannot write: {e}")))?;
        f.sync_all().map_err(|e| err(format!("cannot sync: {e}")))?;
        drop(f);
        self.failpoints.hit_sync("mid-checkpoint-write")?;
        fs::rename(&tmp, &path).map_err(|e| err(format!("cannot replace: {e}")))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| err(format!("cannot sync directory: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().join("cp")).unwrap();
        assert_eq!(store.load().unwrap(), None);
        let mut offsets = Offsets::new();
        offsets.insert(TopicPartition::new("t", 0), 42);
        offsets.insert(TopicPartition::new("t", 1), 7);
        let c = Checkpoint::new("p", 3, &offsets);
        store.store(&c).unwrap();
        assert_eq!(store.load().unwrap(), Some(c.clone()));
        assert_eq!(store.load().unwrap().unwrap().offsets(), offsets);
        let c4 = Checkpoint::new("p", 4, &offsets);
        store.store(&c4).unwrap();
        assert_eq!(store.load().unwrap().unwrap().epoch, 4);
    }
}
