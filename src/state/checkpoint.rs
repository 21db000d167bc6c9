//! The checkpoint: the last committed epoch, the offsets it ends at, and the pipeline's keyed
//! state, in one RocksDB database (Spark's `checkpointLocation` holds offsets and state too).
//!
//! Everything an epoch changes — its offsets, its dedup keys and aggregates, the watermark, the
//! key counters — is written in ONE `WriteBatch`: a crash leaves the state of epoch C or of
//! epoch C + 1, never a mixture. One exception keeps that rule by another means: an epoch with
//! many new dedup keys (`state.bulk_insert_min_keys`) writes them as sorted table files that
//! RocksDB ingests just before the batch — far cheaper than one memtable insert per key. A crash
//! between the two leaves keys of epoch E = C + 1 without its checkpoint, so every dedup entry
//! carries the epoch that wrote it, and a lookup for epoch E ignores entries of epochs >= E: the
//! replay of E sees the state of C, recomputes the same keys and ingests them again (the same
//! entries), then writes the batch.
//!
//! **Architecture Invariant:** the checkpoint is written only by the committer, and only after
//! the sink has durably committed the same epoch. So the checkpoint epoch C never runs ahead of
//! the sink's epoch V: C <= V <= C + 1.
//!
//! Column families: `meta` (checkpoint, watermark, key counters), `dedup` (dedup key -> stamp ++
//! the epoch that wrote it; entries written before epochs were recorded hold the stamp only),
//! `dedup_expiry` (stamp ++ key, ordered for expiry scans), `agg` (bucket ++ group key ->
//! aggregate state), `upsert` (key -> the file and row holding its current row, or its
//! deletion; see `state::upsert`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, IngestExternalFileOptions, IteratorMode, Options, SstFileWriter,
    WriteBatch, DB,
};
use serde::{Deserialize, Serialize};

use crate::config::StateConfig;
use crate::error::{Error, Result};
use crate::model::{Offsets, TopicPartition};
use crate::testing::failpoint::FailPoints;

const META: &str = "meta";
const DEDUP: &str = "dedup";
const DEDUP_EXPIRY: &str = "dedup_expiry";
const AGG: &str = "agg";
const UPSERT: &str = "upsert";

/// Keys per MultiGet call: RocksDB and its C binding allocate a few arrays per call, sized by
/// the keys; calls of bounded size reuse the same memory instead of mapping fresh pages for an
/// epoch's whole key set.
const MULTI_GET_CHUNK: usize = 4_096;

const KEY_CHECKPOINT: &[u8] = b"checkpoint";
const KEY_WATERMARK: &[u8] = b"watermark";
const KEY_DEDUP_COUNT: &[u8] = b"dedup_keys";
const KEY_AGG_COUNT: &[u8] = b"agg_keys";
const KEY_UPSERT_ROWS: &[u8] = b"upsert_rows";
const KEY_TOPIC_IDS: &[u8] = b"topic_ids";

/// What the checkpoint holds besides state.
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

/// The state changes of one epoch, staged by the aggregator and written with its checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateChanges {
    /// Dedup keys first seen in this epoch, with their stamp (event time in ms, or epoch).
    pub dedup_insert: Vec<(Vec<u8>, i64)>,
    /// Dedup keys whose stamp is below this expire.
    pub dedup_expire_before: Option<i64>,
    /// Aggregate states to store (full key, encoded state); new keys are counted.
    pub agg_put: Vec<(Vec<u8>, Vec<u8>, bool)>,
    /// The watermark after this epoch.
    pub watermark: Option<i64>,
    /// Upsert index entries to store (key -> where its row lives, or that it was deleted).
    pub upsert_put: Vec<(Vec<u8>, Vec<u8>)>,
    /// Upsert index entries to remove (deleted keys, without `upsert.sequence_by`).
    pub upsert_delete: Vec<Vec<u8>>,
    /// How the number of rows the upsert table holds changed.
    pub upsert_rows: i64,
}

/// An expiry index entry: the stamp, ordered, then the key.
fn expiry_key(stamp: i64, key: &[u8]) -> Vec<u8> {
    let mut idx = Vec::with_capacity(8 + key.len());
    idx.extend_from_slice(&stamp_bytes(stamp));
    idx.extend_from_slice(key);
    idx
}

/// Order-preserving encoding of an i64 (sign bit flipped, big-endian).
fn stamp_bytes(stamp: i64) -> [u8; 8] {
    ((stamp as u64) ^ (1 << 63)).to_be_bytes()
}

/// A dedup entry's value: its stamp, then the epoch that wrote it.
fn dedup_value(stamp: i64, epoch: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&stamp.to_be_bytes());
    v[8..].copy_from_slice(&epoch.to_be_bytes());
    v
}

/// Whether a dedup entry counts for a lookup of epoch `epoch`: written by an earlier epoch (or
/// before epochs were recorded).
fn dedup_visible(value: &[u8], epoch: u64) -> bool {
    value.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).is_none_or(|written| written < epoch)
}

fn read_u64(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

/// RocksDB's memory by kind, in bytes (`exactly_state_memory_bytes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateMemory {
    /// Active and immutable memtables (bounded by `state.write_buffer_mb` x 2 per column family).
    pub memtables: u64,
    /// Table readers' memory outside the block cache.
    pub table_readers: u64,
    /// The block cache (bounded by `state.block_cache_mb`, unless pinned blocks exceed it).
    pub block_cache: u64,
    /// Blocks pinned in the cache (level-0 index and filter blocks).
    pub block_cache_pinned: u64,
}

/// The checkpoint and state database of one pipeline.
#[derive(Clone)]
pub struct CheckpointStore {
    db: Arc<DB>,
    dir: PathBuf,
    failpoints: Arc<FailPoints>,
    /// Held for every write and every checkpoint read: a write still running after its actor was
    /// killed finishes before a new generation reads the checkpoint.
    lock: Arc<Mutex<()>>,
    /// Bulk inserts of dedup keys (not for a checkpoint in memory).
    bulk: Option<Arc<Bulk>>,
}

/// An epoch's bulk-inserted state, written but not yet ingested. Dropping it removes its files
/// (a sink commit that failed; a commit that ingested them moved them into the database).
#[derive(Debug)]
pub struct Staged {
    epoch: u64,
    files: Vec<(&'static str, PathBuf)>,
    /// Expiry entries that go into the write batch (see `write_files`).
    late_index: Vec<Vec<u8>>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (_, path) in &self.files {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How large epochs' dedup keys are written: sorted table files in `dir`, ingested.
struct Bulk {
    /// The dedup families' options (comparator, table format, Bloom filters) for the files.
    options: Options,
    min_keys: usize,
    dir: PathBuf,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointStore({})", self.dir.display())
    }
}

impl CheckpointStore {
    /// Opens (creating if needed) the checkpoint in `dir` with default memory bounds.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(dir, &StateConfig::default())
    }

    /// Opens the checkpoint with the configured memory bounds (block cache, write buffers).
    pub fn open_with(dir: impl Into<PathBuf>, config: &StateConfig) -> Result<Self> {
        Self::open_in(dir.into(), config, None)
    }

    /// A checkpoint that lives in memory only, for group mode: there the tables record where
    /// every partition resumes and no state is kept, so a member needs no directory of its own
    /// (and several members may run on one machine with one config).
    pub fn in_memory(config: &StateConfig) -> Result<Self> {
        let dir = PathBuf::from("/exactly-group-member");
        let env = rocksdb::Env::mem_env().map_err(|e| Error::Checkpoint { path: dir.clone(), detail: e.to_string() })?;
        Self::open_in(dir, config, Some(env))
    }

    fn open_in(dir: PathBuf, config: &StateConfig, env: Option<rocksdb::Env>) -> Result<Self> {
        let err = |detail: String| Error::Checkpoint { path: dir.clone(), detail };
        if env.is_none() {
            std::fs::create_dir_all(&dir).map_err(|e| err(format!("cannot create directory: {e}")))?;
        }
        let cache = Cache::new_lru_cache(config.block_cache_mb * 1024 * 1024).map_err(|e| err(e.to_string()))?;
        let cf_opts = || {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Index and filter blocks live in the bounded cache too: otherwise every table
            // reader keeps them in memory and RSS grows with the data on disk.
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            // Filters and indexes in small partitions under a pinned top level: a table file's
            // whole filter (10 bits per key: megabytes for a file of millions of keys) would be
            // larger than a shard of the block cache, never stay cached, and be read from disk
            // again for every lookup batch — the dedup of 20M ids slowed to one epoch per 46 s.
            table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
            table.set_partition_filters(true);
            table.set_metadata_block_size(4096);
            table.set_pin_top_level_index_and_filter(true);
            // Most dedup lookups are for keys never seen: Bloom filters answer those without
            // searching the memtables' skip lists or reading table blocks.
            table.set_bloom_filter(10.0, false);
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_memtable_prefix_bloom_ratio(0.1);
            o.set_memtable_whole_key_filtering(true);
            o.set_write_buffer_size(config.write_buffer_mb * 1024 * 1024);
            o.set_max_write_buffer_number(2);
            o
        };
        let mut opts = cf_opts();
        if let Some(env) = &env {
            opts.set_env(env);
        }
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(256);
        // The MANIFEST is uploaded whole with every persisted checkpoint (`state::persist`):
        // rolled at this size, it stays small.
        opts.set_max_manifest_file_size(1024 * 1024);
        // The write-ahead log is kept until every column family whose writes it holds has
        // flushed them; the checkpoint's own family, written a few bytes per epoch, never fills
        // a memtable, so without a bound the log grows to RocksDB's default (four times all
        // write buffers: 640 MB) and a restart replays all of it (8 s after an upsert load).
        // Past this size the families holding the oldest log are flushed.
        opts.set_max_total_wal_size((config.write_buffer_mb * 1024 * 1024 * 4) as u64);
        let cfs = [META, DEDUP, DEDUP_EXPIRY, AGG, UPSERT].map(|n| ColumnFamilyDescriptor::new(n, cf_opts()));
        let bulk = match &env {
            Some(_) => None,
            None => {
                // Files of a commit that never ingested them (a crash) are garbage.
                let files = dir.join("ingest");
                let _ = std::fs::remove_dir_all(&files);
                std::fs::create_dir_all(&files).map_err(|e| err(format!("cannot create {}: {e}", files.display())))?;
                Some(Arc::new(Bulk { options: cf_opts(), min_keys: config.bulk_insert_min_keys.max(1), dir: files }))
            }
        };
        let db = DB::open_cf_descriptors(&opts, &dir, cfs).map_err(|e| {
            let s = e.to_string();
            if s.contains("lock") {
                err("is in use by another process (is this pipeline already running?)".into())
            } else {
                err(s)
            }
        })?;
        Ok(CheckpointStore {
            db: Arc::new(db),
            dir,
            failpoints: Arc::new(FailPoints::new()),
            lock: Arc::new(Mutex::new(())),
            bulk,
        })
    }

    /// A consistent copy of the database in `into` (hard links to its table files, flushed
    /// first), and the checkpoint it holds (`None`: none yet, nothing copied). Taken between
    /// two checkpoint writes, so the copy is the state of one committed epoch.
    pub fn snapshot(&self, into: &Path) -> Result<Option<Checkpoint>> {
        let _guard = self.lock.lock().expect("checkpoint lock");
        let Some(cp) = self.load_unlocked()? else { return Ok(None) };
        if into.exists() {
            std::fs::remove_dir_all(into).map_err(|e| self.err(format!("cannot clear {}: {e}", into.display())))?;
        }
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(into))
            .map_err(|e| self.err(format!("cannot snapshot the state into {}: {e}", into.display())))?;
        Ok(Some(cp))
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

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Checkpoint { path: self.dir.clone(), detail: e.to_string() }
    }

    /// Reads the checkpoint, `None` if there is none yet.
    pub fn load(&self) -> Result<Option<Checkpoint>> {
        let _guard = self.lock.lock().expect("checkpoint lock");
        self.load_unlocked()
    }

    fn load_unlocked(&self) -> Result<Option<Checkpoint>> {
        match self.db.get_cf(self.cf(META), KEY_CHECKPOINT).map_err(|e| self.err(e))? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| self.err(format!("corrupt checkpoint: {e}"))),
            None => Ok(None),
        }
    }

    /// The Kafka topic id of every topic the checkpoint's offsets belong to (recorded at the first
    /// start; older checkpoints have none until recorded).
    pub fn topic_ids(&self) -> Result<BTreeMap<String, String>> {
        match self.db.get_cf(self.cf(META), KEY_TOPIC_IDS).map_err(|e| self.err(e))? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.err(format!("corrupt topic ids: {e}"))),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Records the topic ids (synced).
    pub fn set_topic_ids(&self, ids: &BTreeMap<String, String>) -> Result<()> {
        let _guard = self.lock.lock().expect("checkpoint lock");
        let bytes = serde_json::to_vec(ids).map_err(|e| self.err(e))?;
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.put_cf_opt(self.cf(META), KEY_TOPIC_IDS, bytes, &opts).map_err(|e| self.err(e))
    }

    /// Replaces the checkpoint (no state changes).
    pub fn store(&self, checkpoint: &Checkpoint) -> Result<()> {
        self.commit(checkpoint, &StateChanges::default())
    }

    /// Writes the checkpoint and an epoch's state changes in one atomic, synced write. Blocking:
    /// call it from a blocking context.
    pub fn commit(&self, checkpoint: &Checkpoint, changes: &StateChanges) -> Result<()> {
        let staged = self.stage(checkpoint.epoch, changes)?;
        self.commit_staged(checkpoint, changes, staged)
    }

    /// The part of an epoch's state write that does not touch the database and may run before
    /// (or while) the sink commits the epoch: the table files of a bulk insert. `None` when the
    /// epoch's keys go through the write batch. Blocking.
    pub fn stage(&self, epoch: u64, changes: &StateChanges) -> Result<Option<Staged>> {
        match self.bulk.as_ref().filter(|b| changes.dedup_insert.len() >= b.min_keys) {
            Some(bulk) => self.write_files(bulk, epoch, changes).map(Some),
            None => Ok(None),
        }
    }

    /// [`CheckpointStore::commit`] with the epoch's staged files (from [`CheckpointStore::stage`]
    /// with the same epoch and changes): ingests them, then writes the batch. Blocking.
    pub fn commit_staged(&self, checkpoint: &Checkpoint, changes: &StateChanges, staged: Option<Staged>) -> Result<()> {
        if let Some(s) = &staged {
            if s.epoch != checkpoint.epoch {
                return Err(
                    self.err(format!("state files of epoch {} staged for the checkpoint of epoch {}", s.epoch, checkpoint.epoch))
                );
            }
        }
        let _guard = self.lock.lock().expect("checkpoint lock");
        let mut batch = WriteBatch::default();
        let (meta, dedup, expiry, agg) = (self.cf(META), self.cf(DEDUP), self.cf(DEDUP_EXPIRY), self.cf(AGG));
        let mut dedup_count = read_u64(self.db.get_cf(meta, KEY_DEDUP_COUNT).map_err(|e| self.err(e))?) as i64;
        if let Some(before) = changes.dedup_expire_before {
            let end = stamp_bytes(before);
            let mut expired = 0i64;
            for item in self.db.iterator_cf(expiry, IteratorMode::Start) {
                let (k, _) = item.map_err(|e| self.err(e))?;
                if k.len() < 8 || k[..8] >= end[..] {
                    break;
                }
                batch.delete_cf(dedup, &k[8..]);
                expired += 1;
            }
            batch.delete_range_cf(expiry, [0u8; 8], end);
            dedup_count -= expired;
        }
        match staged {
            Some(staged) => self.ingest(staged, &mut batch)?,
            None => {
                for (key, stamp) in &changes.dedup_insert {
                    batch.put_cf(dedup, key, dedup_value(*stamp, checkpoint.epoch));
                    batch.put_cf(expiry, expiry_key(*stamp, key), []);
                }
            }
        }
        dedup_count += changes.dedup_insert.len() as i64;
        let mut agg_count = read_u64(self.db.get_cf(meta, KEY_AGG_COUNT).map_err(|e| self.err(e))?);
        for (key, value, is_new) in &changes.agg_put {
            batch.put_cf(agg, key, value);
            agg_count += u64::from(*is_new);
        }
        if let Some(w) = changes.watermark {
            batch.put_cf(meta, KEY_WATERMARK, w.to_be_bytes());
        }
        if !changes.upsert_put.is_empty() || !changes.upsert_delete.is_empty() || changes.upsert_rows != 0 {
            let upsert = self.cf(UPSERT);
            for key in &changes.upsert_delete {
                batch.delete_cf(upsert, key);
            }
            for (key, entry) in &changes.upsert_put {
                batch.put_cf(upsert, key, entry);
            }
            let rows = read_u64(self.db.get_cf(meta, KEY_UPSERT_ROWS).map_err(|e| self.err(e))?) as i64 + changes.upsert_rows;
            batch.put_cf(meta, KEY_UPSERT_ROWS, (rows.max(0) as u64).to_be_bytes());
        }
        batch.put_cf(meta, KEY_DEDUP_COUNT, (dedup_count.max(0) as u64).to_be_bytes());
        batch.put_cf(meta, KEY_AGG_COUNT, agg_count.to_be_bytes());
        batch.put_cf(meta, KEY_CHECKPOINT, serde_json::to_vec(checkpoint).map_err(|e| self.err(e))?);
        self.failpoints.hit_sync("mid-checkpoint-write")?;
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| self.err(format!("cannot write: {e}")))
    }

    /// Writes an epoch's new dedup keys and their expiry entries as sorted table files. Expiry
    /// entries this epoch's own expiry would remove (stamps below `dedup_expire_before`) are
    /// kept aside for the batch, after its range delete, as in the batch path.
    fn write_files(&self, bulk: &Bulk, epoch: u64, changes: &StateChanges) -> Result<Staged> {
        let mut inserts: Vec<&(Vec<u8>, i64)> = changes.dedup_insert.iter().collect();
        if !inserts.windows(2).all(|w| w[0].0 < w[1].0) {
            inserts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            inserts.dedup_by(|a, b| a.0 == b.0);
        }
        let floor = changes.dedup_expire_before.unwrap_or(i64::MIN);
        let mut staged = Staged { epoch, files: Vec::new(), late_index: Vec::new() };
        let mut index: Vec<Vec<u8>> = Vec::with_capacity(inserts.len());
        for (key, stamp) in &inserts {
            if *stamp < floor {
                staged.late_index.push(expiry_key(*stamp, key));
            } else {
                index.push(expiry_key(*stamp, key));
            }
        }
        // Epoch stamps are all equal, so the index is in key order already; event times are not.
        if !index.windows(2).all(|w| w[0] < w[1]) {
            index.sort_unstable();
        }
        // Unique names: a killed committer's write may still run beside the next generation's.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let write = |name: &str, entries: &mut dyn Iterator<Item = (&[u8], &[u8])>| -> Result<PathBuf> {
            let path = bulk.dir.join(format!("{epoch}-{seq}-{name}.sst"));
            let mut w = SstFileWriter::create(&bulk.options);
            let written = (|| {
                w.open(&path)?;
                for (k, v) in entries {
                    w.put(k, v)?;
                }
                w.finish()
            })();
            written.map_err(|e| self.err(format!("cannot write {}: {e}", path.display())))?;
            Ok(path)
        };
        let values: Vec<[u8; 16]> = inserts.iter().map(|(_, stamp)| dedup_value(*stamp, epoch)).collect();
        // The two files are written on two threads.
        let (dedup_file, expiry_file) = std::thread::scope(|s| {
            let expiry = s.spawn(|| {
                (!index.is_empty()).then(|| write(DEDUP_EXPIRY, &mut index.iter().map(|k| (k.as_slice(), &[][..])))).transpose()
            });
            let dedup = write(DEDUP, &mut inserts.iter().zip(&values).map(|((k, _), v)| (k.as_slice(), v.as_slice())));
            (dedup, expiry.join())
        });
        staged.files.push((DEDUP, dedup_file?));
        if let Some(path) = expiry_file.map_err(|_| self.err("a state file thread panicked"))?? {
            staged.files.push((DEDUP_EXPIRY, path));
        }
        Ok(staged)
    }

    /// Ingests staged files (synced, atomically per family); their late expiry entries go into
    /// `batch`.
    fn ingest(&self, staged: Staged, batch: &mut WriteBatch) -> Result<()> {
        for idx in &staged.late_index {
            batch.put_cf(self.cf(DEDUP_EXPIRY), idx, []);
        }
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        for (cf, path) in &staged.files {
            self.db
                .ingest_external_file_cf_opts(self.cf(cf), &opts, vec![path])
                .map_err(|e| self.err(format!("cannot ingest {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// The watermark stored with the last checkpoint.
    pub fn watermark(&self) -> Result<Option<i64>> {
        let v = self.db.get_cf(self.cf(META), KEY_WATERMARK).map_err(|e| self.err(e))?;
        Ok(v.and_then(|b| b.try_into().ok()).map(i64::from_be_bytes))
    }

    /// Which of `keys` are held as dedup keys for processing epoch `epoch`: entries written by
    /// `epoch` or later (an ingestion whose checkpoint a crash lost) do not count.
    /// `keys` must be in ascending order (one batched MultiGet visits memtables and table blocks
    /// once each, in order).
    pub fn dedup_contains(&self, keys: &[&[u8]], epoch: u64) -> Result<Vec<bool>> {
        debug_assert!(keys.windows(2).all(|w| w[0] <= w[1]), "dedup lookups in key order");
        let look = |keys: &[&[u8]]| self.multi_get_sorted(DEDUP, keys, |v| v.is_some_and(|v| dedup_visible(v, epoch)));
        if keys.len() < 4 * MULTI_GET_CHUNK {
            return look(keys);
        }
        // A large epoch's lookups in two halves on two threads (RocksDB reads in parallel): the
        // epoch's state stage is on the commit path, while consumers wait for the buffer.
        let (low, high) = keys.split_at(keys.len() / 2);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| look(low));
            (a.join(), look(high))
        });
        let mut out = a.map_err(|_| self.err("a dedup lookup thread panicked"))??;
        out.extend(b?);
        Ok(out)
    }

    /// The stored aggregate states of `keys`.
    pub fn agg_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.lookup(AGG, keys, |v| v.map(<[u8]>::to_vec))
    }

    /// Looks `keys` up in `cf` over the keys in sorted order, results in the order of `keys`.
    fn lookup<T: Clone + Default>(&self, cf: &str, keys: &[Vec<u8>], f: impl Fn(Option<&[u8]>) -> T) -> Result<Vec<T>> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by(|a, b| keys[*a].cmp(&keys[*b]));
        let sorted: Vec<&[u8]> = order.iter().map(|i| keys[*i].as_slice()).collect();
        let mut out = vec![T::default(); keys.len()];
        for (i, v) in order.into_iter().zip(self.multi_get_sorted(cf, &sorted, f)?) {
            out[i] = v;
        }
        Ok(out)
    }

    /// Looks up `keys`, in ascending order, in `cf`: batched MultiGets of bounded size (memtable
    /// and table blocks are visited once each, in order), results in the order of `keys`.
    fn multi_get_sorted<T>(&self, cf: &str, keys: &[&[u8]], f: impl Fn(Option<&[u8]>) -> T) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MULTI_GET_CHUNK) {
            for r in self.db.batched_multi_get_cf(self.cf(cf), chunk, true) {
                out.push(f(r.map_err(|e| self.err(e))?.as_deref()));
            }
        }
        Ok(out)
    }

    /// The upsert index entries of `keys` (in ascending order), in their order.
    pub fn upsert_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.multi_get_sorted(UPSERT, keys, |v| v.map(<[u8]>::to_vec))
    }

    /// Rows the upsert table holds by the index (exact: counted in every write).
    pub fn upsert_row_count(&self) -> Result<u64> {
        Ok(read_u64(self.db.get_cf(self.cf(META), KEY_UPSERT_ROWS).map_err(|e| self.err(e))?))
    }

    /// Every aggregate (full key, state) whose key starts with `prefix`.
    pub fn agg_scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(AGG), IteratorMode::From(prefix, rocksdb::Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Dedup keys held (exact: counted in every write).
    pub fn dedup_key_count(&self) -> Result<u64> {
        Ok(read_u64(self.db.get_cf(self.cf(META), KEY_DEDUP_COUNT).map_err(|e| self.err(e))?))
    }

    /// Aggregation keys held (exact).
    pub fn agg_key_count(&self) -> Result<u64> {
        Ok(read_u64(self.db.get_cf(self.cf(META), KEY_AGG_COUNT).map_err(|e| self.err(e))?))
    }

    /// What RocksDB holds in memory, from its own accounting.
    pub fn memory(&self) -> StateMemory {
        let prop = |cf: &str, name: &str| self.db.property_int_value_cf(self.cf(cf), name).ok().flatten().unwrap_or(0);
        let sum = |name: &str| [META, DEDUP, DEDUP_EXPIRY, AGG, UPSERT].iter().map(|cf| prop(cf, name)).sum();
        StateMemory {
            memtables: sum("rocksdb.cur-size-all-mem-tables"),
            table_readers: sum("rocksdb.estimate-table-readers-mem"),
            // One block cache is shared by every column family.
            block_cache: prop(DEDUP, "rocksdb.block-cache-usage"),
            block_cache_pinned: prop(DEDUP, "rocksdb.block-cache-pinned-usage"),
        }
    }

    /// Approximate bytes on disk (SST files) of the state.
    pub fn disk_bytes(&self) -> u64 {
        [DEDUP, DEDUP_EXPIRY, AGG, UPSERT]
            .iter()
            .filter_map(|n| self.db.property_int_value_cf(self.cf(n), "rocksdb.total-sst-files-size").ok().flatten())
            .sum()
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
        store.store(&Checkpoint::new("p", 4, &offsets)).unwrap();
        assert_eq!(store.load().unwrap().unwrap().epoch, 4);
    }

    fn keys<'a>(names: &[&'a str]) -> Vec<&'a [u8]> {
        names.iter().map(|n| n.as_bytes()).collect()
    }

    /// The same expiry and counting through the write batch and through bulk ingestion.
    #[test]
    fn dedup_keys_expire_by_stamp_and_are_counted() {
        for bulk_min in [usize::MAX, 1] {
            let dir = tempfile::tempdir().unwrap();
            let config = StateConfig { bulk_insert_min_keys: bulk_min, ..Default::default() };
            let store = CheckpointStore::open_with(dir.path(), &config).unwrap();
            let changes = StateChanges {
                // Event-time stamps: not in key order in the expiry index.
                dedup_insert: vec![(b"a".to_vec(), -5), (b"b".to_vec(), 10), (b"c".to_vec(), 20), (b"d".to_vec(), 12)],
                ..Default::default()
            };
            store.commit(&Checkpoint::new("p", 1, &Offsets::new()), &changes).unwrap();
            assert_eq!(store.dedup_key_count().unwrap(), 4);
            assert_eq!(store.dedup_contains(&keys(&["a", "z"]), 2).unwrap(), vec![true, false]);
            let expire = StateChanges { dedup_expire_before: Some(15), ..Default::default() };
            store.commit(&Checkpoint::new("p", 2, &Offsets::new()), &expire).unwrap();
            assert_eq!(store.dedup_key_count().unwrap(), 1);
            assert_eq!(store.dedup_contains(&keys(&["a", "b", "c", "d"]), 3).unwrap(), vec![false, false, true, false]);
            // An epoch that inserts keys its own expiry passes keeps them until the next expiry.
            let late = StateChanges {
                dedup_insert: vec![(b"e".to_vec(), 16), (b"f".to_vec(), 30)],
                dedup_expire_before: Some(18),
                ..Default::default()
            };
            store.commit(&Checkpoint::new("p", 3, &Offsets::new()), &late).unwrap();
            assert_eq!(store.dedup_key_count().unwrap(), 3, "bulk_min {bulk_min}");
            store
                .commit(
                    &Checkpoint::new("p", 4, &Offsets::new()),
                    &StateChanges { dedup_expire_before: Some(25), ..Default::default() },
                )
                .unwrap();
            assert_eq!(store.dedup_key_count().unwrap(), 1, "bulk_min {bulk_min}");
            assert_eq!(store.dedup_contains(&keys(&["c", "e", "f"]), 5).unwrap(), vec![false, false, true]);
            assert_eq!(std::fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0, "no file left behind");
        }
    }

    /// A crash between the ingestion of an epoch's keys and its checkpoint: the keys are on disk,
    /// the checkpoint is the previous epoch's. The replay of the epoch does not see them, writes
    /// them again, and the counts come out as if nothing had happened.
    #[test]
    fn keys_ingested_without_their_checkpoint_are_invisible_to_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let config = StateConfig { bulk_insert_min_keys: 2, ..Default::default() };
        let failpoints = Arc::new(FailPoints::new());
        let store = CheckpointStore::open_with(dir.path(), &config).unwrap().with_failpoints(failpoints.clone());
        let first = StateChanges { dedup_insert: vec![(b"a".to_vec(), 1), (b"b".to_vec(), 1)], ..Default::default() };
        store.commit(&Checkpoint::new("p", 1, &Offsets::new()), &first).unwrap();
        let second = StateChanges { dedup_insert: vec![(b"c".to_vec(), 2), (b"d".to_vec(), 2)], ..Default::default() };
        failpoints.arm("mid-checkpoint-write", crate::testing::failpoint::FailAction::Error, Some(1));
        store.commit(&Checkpoint::new("p", 2, &Offsets::new()), &second).unwrap_err();
        drop(store);
        let store = CheckpointStore::open_with(dir.path(), &config).unwrap();
        assert_eq!(store.load().unwrap().unwrap().epoch, 1);
        assert_eq!(store.dedup_key_count().unwrap(), 2);
        // Epoch 2's replay: its own keys are not there yet; epoch 1's are.
        assert_eq!(store.dedup_contains(&keys(&["a", "c", "d"]), 2).unwrap(), vec![true, false, false]);
        store.commit(&Checkpoint::new("p", 2, &Offsets::new()), &second).unwrap();
        assert_eq!(store.dedup_key_count().unwrap(), 4);
        assert_eq!(store.dedup_contains(&keys(&["a", "c", "d", "e"]), 3).unwrap(), vec![true, true, true, false]);
    }

    /// Entries written before the epoch was recorded with them (8-byte values) still count.
    #[test]
    fn entries_without_an_epoch_count_for_every_epoch() {
        assert!(dedup_visible(&5i64.to_be_bytes(), 1));
        assert!(dedup_visible(&dedup_value(5, 3), 4));
        assert!(!dedup_visible(&dedup_value(5, 3), 3));
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _a = CheckpointStore::open(dir.path()).unwrap();
        let e = CheckpointStore::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another process"), "{e}");
    }
}
