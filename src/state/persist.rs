//! Checkpoints that outlive their disk: the local RocksDB checkpoint persisted to an object
//! store (`checkpoint.remote`), incrementally, and restored on a fresh disk.
//!
//! The local directory stays the working copy. A persist takes a consistent copy of it between
//! two checkpoint writes ([`CheckpointStore::snapshot`]: hard links, memtables flushed first) and
//! uploads what the store lacks:
//!
//! - `files/<incarnation>/<name>.sst` — RocksDB table files, immutable: each is uploaded once,
//!   by the process (incarnation) that created it, and named by every later manifest that still
//!   needs it. So the bytes a persist uploads follow what changed (new flushes, compactions),
//!   not the state's size.
//! - `epochs/<epoch>-<incarnation>/` — the few small files that change (`CURRENT`, the RocksDB
//!   `MANIFEST`, rolled at 1 MB, `OPTIONS`).
//! - `manifests/<epoch>.json` — last, written put-if-absent: the persisted checkpoint exists
//!   once its manifest does, two writers cannot both write one epoch's, and a persist that died
//!   half way left only files no manifest names (swept by [`Remote::clean`]).
//!
//! A restore downloads the newest manifest's files into an empty directory (a sibling first,
//! renamed when complete), checking each file's size. A manifest that does not parse, or names a
//! file the store lacks or holds with another size, is one error naming the manifest; nothing is
//! written. The checkpoint restored may trail the table by several epochs: recovery re-runs them
//! through the state stage (`runtime::recovery`, "catch-up").
//!
//! **Architecture Invariant:** a manifest names only files uploaded before it was written, and
//! files are deleted only once no kept manifest names them — `state::persist::tests`,
//! `persist::a_stateful_pipeline_on_fresh_disks_with_its_checkpoint_on_s3_stays_exact`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deltalake::logstore::object_store::path::Path as StorePath;
use deltalake::logstore::object_store::{self, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::checkpoint::{Checkpoint, PartitionOffset};

const MANIFESTS: &str = "manifests";
const FILES: &str = "files";
const EPOCHS: &str = "epochs";
/// Transfers at a time.
const PARALLEL: usize = 4;
/// The manifest format this build writes and reads.
const FORMAT: u32 = 1;

/// One persisted checkpoint: the epoch, its cut, and the files that make up its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format.
    pub format: u32,
    /// The pipeline it belongs to.
    pub pipeline: String,
    /// The checkpoint's epoch.
    pub epoch: u64,
    /// The checkpoint's cut.
    pub offsets: Vec<PartitionOffset>,
    /// When it was written (ms since the Unix epoch).
    pub created_ms: u64,
    /// The database's files.
    pub files: Vec<PersistedFile>,
}

/// A file of a persisted checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedFile {
    /// Its name in the database directory.
    pub name: String,
    /// Its key in the store, under the remote root.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

impl Manifest {
    /// The state's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// What one persist did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persisted {
    /// The epoch persisted.
    pub epoch: u64,
    /// Files and bytes uploaded now.
    pub uploaded_files: usize,
    /// Bytes uploaded now.
    pub uploaded_bytes: u64,
    /// The state's whole size.
    pub total_bytes: u64,
    /// False: a manifest of this epoch was there already (another persist of it won).
    pub landed: bool,
}

/// What a clean removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Manifests past the retention.
    pub manifests: usize,
    /// Files no kept manifest names.
    pub files: usize,
}

/// The table files already in the store, by (name, size): what a persist need not upload.
#[derive(Debug, Clone, Default)]
pub struct Uploaded(HashMap<(String, u64), String>);

impl Uploaded {
    /// The immutable files `m` names.
    pub fn of(m: &Manifest) -> Self {
        Uploaded(m.files.iter().filter(|f| immutable(&f.name)).map(|f| ((f.name.clone(), f.size), f.key.clone())).collect())
    }
}

impl Uploaded {
    /// The immutable files `m` names that `dir` holds: uploaded by an incarnation of `dir`'s
    /// lineage, with a local file of the same name and size.
    pub fn local(m: &Manifest, dir: &Path) -> Self {
        let ours = lineage(dir);
        let mine = |f: &&PersistedFile| {
            uploaded_by(&f.key).is_some_and(|i| ours.contains(i))
                && std::fs::metadata(dir.join(&f.name)).is_ok_and(|meta| meta.len() == f.size)
        };
        Uploaded(
            m.files
                .iter()
                .filter(|f| immutable(&f.name))
                .filter(mine)
                .map(|f| ((f.name.clone(), f.size), f.key.clone()))
                .collect(),
        )
    }
}

/// RocksDB table files never change once written; every other file may.
fn immutable(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".blob")
}

/// A process's name for the files it uploads: unique, so two processes (a zombie and its
/// successor) never write the same key.
pub fn incarnation() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A checkpoint store's remote root.
#[derive(Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    shown: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

fn manifest_key(epoch: u64) -> StorePath {
    StorePath::from(format!("{MANIFESTS}/{epoch:020}.json"))
}

impl Remote {
    /// The remote root `store` (paths relative to it), shown as `shown` (no secrets).
    pub fn new(store: Arc<dyn ObjectStore>, shown: impl Into<String>) -> Self {
        Remote { store, shown: shown.into() }
    }

    fn err(&self, what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
        Error::Persisted { at: format!("{}/{what}", self.shown.trim_end_matches('/')), detail: e.to_string() }
    }

    /// The epochs persisted, oldest first.
    pub async fn epochs(&self) -> Result<Vec<u64>> {
        let prefix = StorePath::from(MANIFESTS);
        let listed: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.map_err(|e| self.err(MANIFESTS, e))?;
        let mut epochs: Vec<u64> =
            listed.iter().filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse::<u64>().ok()).collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// The manifest of `epoch`.
    pub async fn manifest(&self, epoch: u64) -> Result<Manifest> {
        let key = manifest_key(epoch);
        let bytes = self.store.get(&key).await.map_err(|e| self.err(&key, e))?.bytes().await.map_err(|e| self.err(&key, e))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| self.err(&key, format!("is not a manifest: {e}")))?;
        if m.format != FORMAT || m.epoch != epoch {
            return Err(self.err(&key, format!("is not a manifest of format {FORMAT} for epoch {epoch}")));
        }
        Ok(m)
    }

    /// The newest manifest, if any.
    pub async fn newest(&self) -> Result<Option<Manifest>> {
        match self.epochs().await?.last() {
            Some(e) => self.manifest(*e).await.map(Some),
            None => Ok(None),
        }
    }

    /// Persists the database copy in `snapshot` (holding checkpoint `cp`): uploads the files the
    /// store lacks, then writes the manifest put-if-absent. `known` is what the store holds
    /// (from the last manifest this process wrote or restored), updated on success.
    pub async fn persist(&self, snapshot: &Path, cp: &Checkpoint, incarnation: &str, known: &mut Uploaded) -> Result<Persisted> {
        let epoch = cp.epoch;
        let mut local = Vec::new();
        let entries = std::fs::read_dir(snapshot).map_err(|e| self.err(snapshot.display(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.err(snapshot.display(), e))?;
            let meta = entry.metadata().map_err(|e| self.err(snapshot.display(), e))?;
            if meta.is_file() {
                local.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
            }
        }
        local.sort();
        let mut files = Vec::with_capacity(local.len());
        let mut uploads = Vec::new();
        for (name, size) in local {
            let key = match known.0.get(&(name.clone(), size)) {
                Some(key) => key.clone(),
                None => {
                    let key = if immutable(&name) {
                        format!("{FILES}/{incarnation}/{name}")
                    } else {
                        format!("{EPOCHS}/{epoch:020}-{incarnation}/{name}")
                    };
                    uploads.push((snapshot.join(&name), key.clone(), immutable(&name), size));
                    key
                }
            };
            files.push(PersistedFile { name, key, size });
        }
        let uploaded_bytes: u64 = uploads.iter().map(|u| u.3).sum();
        let uploaded_files = uploads.len();
        futures::stream::iter(uploads.into_iter().map(|(path, key, once, size)| self.upload(path, key, once, size)))
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        let manifest = Manifest {
            format: FORMAT,
            pipeline: cp.pipeline_id.clone(),
            epoch,
            offsets: cp.offsets.clone(),
            created_ms: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            files,
        };
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| self.err("manifest", e))?;
        let key = manifest_key(epoch);
        let landed = match self.store.put_opts(&key, PutPayload::from(body), PutMode::Create.into()).await {
            Ok(_) => true,
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => false,
            Err(e) => return Err(self.err(&key, e)),
        };
        *known = Uploaded::of(&manifest);
        Ok(Persisted { epoch, uploaded_files, uploaded_bytes, total_bytes: manifest.bytes(), landed })
    }

    /// Uploads one file; an immutable file only if absent (one already there with its size is
    /// the same file, uploaded by a persist that died before its manifest).
    async fn upload(&self, path: PathBuf, key: String, once: bool, size: u64) -> Result<()> {
        let bytes = tokio::fs::read(&path).await.map_err(|e| self.err(path.display(), e))?;
        let at = StorePath::from(key.as_str());
        let mode = if once { PutMode::Create } else { PutMode::Overwrite };
        match self.store.put_opts(&at, PutPayload::from(bytes), PutOptions { mode, ..Default::default() }).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                let there = self.store.head(&at).await.map_err(|e| self.err(&key, e))?;
                if there.size == size {
                    Ok(())
                } else {
                    Err(self.err(&key, format!("exists with {} bytes, not {size}: written by another process", there.size)))
                }
            }
            Err(e) => Err(self.err(&key, e)),
        }
    }

    /// Downloads `m`'s files into `dir`, which must hold no database: into a sibling directory
    /// first, renamed to `dir` once every file is there with its size; the incarnations that
    /// uploaded them join `dir`'s lineage. Returns the bytes.
    pub async fn restore(&self, m: &Manifest, dir: &Path) -> Result<u64> {
        let key = manifest_key(m.epoch);
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
        let staging = dir.with_file_name(format!(".{name}.restoring"));
        let local = |e: std::io::Error| Error::Checkpoint { path: staging.clone(), detail: e.to_string() };
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(local)?;
        }
        std::fs::create_dir_all(&staging).map_err(local)?;
        let fetches = m.files.iter().map(|f| {
            let staging = &staging;
            let key = &key;
            async move {
                let at = StorePath::from(f.key.as_str());
                let missing =
                    |e: object_store::Error| self.err(key, format!("names {} ({}), which cannot be read: {e}", f.name, f.key));
                let bytes = self.store.get(&at).await.map_err(missing)?.bytes().await.map_err(missing)?;
                if bytes.len() as u64 != f.size {
                    return Err(self.err(
                        key,
                        format!("names {} ({}) of {} bytes, but the store holds {}", f.name, f.key, f.size, bytes.len()),
                    ));
                }
                tokio::fs::write(staging.join(&f.name), &bytes)
                    .await
                    .map_err(|e| Error::Checkpoint { path: staging.join(&f.name), detail: e.to_string() })
            }
        });
        let fetched = futures::stream::iter(fetches).buffer_unordered(PARALLEL).try_collect::<Vec<()>>().await;
        if let Err(e) = fetched {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        if !m.files.iter().any(|f| f.name == "CURRENT") {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(self.err(&key, "names no CURRENT file: not a RocksDB checkpoint"));
        }
        if dir.exists() {
            // A directory that holds no database may hold its lineage file only.
            let _ = std::fs::remove_file(dir.join(LINEAGE));
            std::fs::remove_dir(dir)
                .map_err(|e| Error::Checkpoint { path: dir.to_path_buf(), detail: format!("cannot replace it: {e}") })?;
        }
        std::fs::rename(&staging, dir).map_err(|e| Error::Checkpoint { path: dir.to_path_buf(), detail: e.to_string() })?;
        // Its table files are the store's: a later persist from here need not upload them.
        add_lineage(dir, m.files.iter().filter_map(|f| uploaded_by(&f.key)))?;
        Ok(m.bytes())
    }

    /// Deletes the manifest of `epoch`; its files go with the next [`Remote::clean`].
    pub async fn remove(&self, epoch: u64) -> Result<()> {
        let key = manifest_key(epoch);
        self.store.delete(&key).await.map_err(|e| self.err(&key, e))
    }

    /// Keeps the `retain` newest manifests and deletes the older ones, then every file no kept
    /// manifest names that is older than `min_age` (younger ones may belong to a persist still
    /// uploading).
    pub async fn clean(&self, retain: usize, min_age: Duration) -> Result<Cleaned> {
        let epochs = self.epochs().await?;
        let cut = epochs.len().saturating_sub(retain.max(1));
        let (old, kept) = epochs.split_at(cut);
        for e in old {
            self.remove(*e).await?;
        }
        let mut named = BTreeSet::new();
        for e in kept {
            named.extend(self.manifest(*e).await?.files.into_iter().map(|f| f.key));
        }
        let now = chrono::Utc::now();
        let mut stale = Vec::new();
        for prefix in [FILES, EPOCHS] {
            let listed: Vec<_> =
                self.store.list(Some(&StorePath::from(prefix))).try_collect().await.map_err(|e| self.err(prefix, e))?;
            stale.extend(
                listed
                    .into_iter()
                    .filter(|o| !named.contains(o.location.as_ref()))
                    .filter(|o| (now - o.last_modified).to_std().is_ok_and(|age| age >= min_age))
                    .map(|o| o.location),
            );
        }
        let files = stale.len();
        for at in stale {
            match self.store.delete(&at).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err(&at, e)),
            }
        }
        Ok(Cleaned { manifests: old.len(), files })
    }
}

/// The file in the checkpoint directory naming the incarnations whose uploads are files of this
/// directory: a manifest's table file under one of their prefixes, with a local file of its name
/// and size, is that very file (RocksDB never reuses a file number in a database), so a restart
/// does not upload it again. A file under another prefix (a zombie's, on another disk) may share
/// a name and is never taken for ours.
const LINEAGE: &str = "persisted-by";

/// The incarnations named in `dir`'s lineage file.
fn lineage(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join(LINEAGE)).map(|t| t.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// Adds `ids` to `dir`'s lineage file (creating the directory).
fn add_lineage<'a>(dir: &Path, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut all = lineage(dir);
    all.extend(ids.into_iter().map(str::to_string));
    let err = |e: std::io::Error| Error::Checkpoint { path: dir.join(LINEAGE), detail: e.to_string() };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::write(dir.join(LINEAGE), all.into_iter().collect::<Vec<_>>().join("\n") + "\n").map_err(err)
}

/// The incarnation a table file's key names (`files/<incarnation>/<name>`).
fn uploaded_by(key: &str) -> Option<&str> {
    key.strip_prefix(FILES)?.strip_prefix('/')?.split('/').next()
}

/// What start-up found of the persisted checkpoints.
#[derive(Debug)]
pub struct Found {
    /// The remote root.
    pub remote: Remote,
    /// This process's name for the files it uploads ([`incarnation`]), in the lineage already.
    pub incarnation: String,
    /// The store's files the local directory holds.
    pub known: Uploaded,
    /// The newest epoch persisted.
    pub stored: Option<u64>,
    /// The epoch restored into the local directory, its bytes and how long it took.
    pub restored: Option<(u64, u64, Duration)>,
}

/// At start-up: restores the newest persisted checkpoint of `pipeline` into `dir` when `dir`
/// holds no database (a fresh disk), and says what the store holds and which of its files the
/// directory has.
pub async fn start(remote: Remote, dir: &Path, pipeline: &str) -> Result<Found> {
    let incarnation = incarnation();
    if dir.join("CURRENT").exists() {
        let mut known = Uploaded::default();
        let stored = remote.epochs().await?.last().copied();
        if let Some(epoch) = stored {
            match remote.manifest(epoch).await {
                Ok(m) => known = Uploaded::local(&m, dir),
                Err(e) => {
                    tracing::warn!(error = %e, "the newest persisted checkpoint is unreadable; the next persist uploads every file")
                }
            }
        }
        add_lineage(dir, [incarnation.as_str()])?;
        return Ok(Found { remote, incarnation, known, stored, restored: None });
    }
    let Some(m) = remote.newest().await? else {
        add_lineage(dir, [incarnation.as_str()])?;
        return Ok(Found { remote, incarnation, known: Uploaded::default(), stored: None, restored: None });
    };
    if m.pipeline != pipeline {
        return Err(Error::OtherPipeline {
            what: format!("the persisted checkpoint {}", remote.shown),
            owner: m.pipeline.clone(),
            pipeline: pipeline.to_string(),
            setting: "checkpoint.remote",
        });
    }
    let t0 = std::time::Instant::now();
    let bytes = remote.restore(&m, dir).await?;
    let took = t0.elapsed();
    add_lineage(dir, [incarnation.as_str()])?;
    tracing::info!(epoch = m.epoch, bytes, ms = took.as_millis() as u64, from = %remote.shown, "restored the persisted checkpoint onto an empty checkpoint directory");
    Ok(Found { known: Uploaded::of(&m), incarnation, stored: Some(m.epoch), restored: Some((m.epoch, bytes, took)), remote })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StateConfig;
    use crate::model::{Offsets, TopicPartition};
    use crate::state::checkpoint::{CheckpointStore, StateChanges};
    use deltalake::logstore::object_store::local::LocalFileSystem;

    fn remote(dir: &Path) -> Remote {
        Remote::new(Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap()), dir.display().to_string())
    }

    fn commit(store: &CheckpointStore, epoch: u64, keys: std::ops::Range<u32>) {
        let offsets: Offsets = [(TopicPartition::new("t", 0), epoch as i64 * 10)].into_iter().collect();
        let changes = StateChanges {
            dedup_insert: keys.map(|k| (format!("key-{k:08}").into_bytes(), epoch as i64)).collect(),
            ..Default::default()
        };
        store.commit(&Checkpoint::new("p", epoch, &offsets), &changes).unwrap();
    }

    fn persist(store: &CheckpointStore, remote: &Remote, known: &mut Uploaded) -> Persisted {
        let snap = store.dir().join("persist");
        let cp = store.snapshot(&snap).unwrap().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(remote.persist(&snap, &cp, "i1", known)).unwrap()
    }

    #[test]
    fn a_persist_uploads_what_changed_and_a_restore_brings_the_state_back() {
        let (local, store_dir, fresh) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let remote = remote(store_dir.path());
        let store = CheckpointStore::open_with(local.path().join("cp"), &StateConfig::default()).unwrap();
        let mut known = Uploaded::default();
        commit(&store, 1, 0..20_000);
        let first = persist(&store, &remote, &mut known);
        assert!(first.landed && first.uploaded_bytes > 0);
        commit(&store, 2, 20_000..20_010);
        let second = persist(&store, &remote, &mut known);
        assert!(second.landed);
        assert!(
            second.uploaded_bytes < first.uploaded_bytes,
            "only the new flush and the small files: {second:?} after {first:?}"
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        assert_eq!(rt.block_on(remote.epochs()).unwrap(), vec![1, 2]);
        // A second persist of the same epoch does not replace the manifest.
        assert!(!persist(&store, &remote, &mut known).landed);
        let newest = rt.block_on(remote.newest()).unwrap().unwrap();
        let target = fresh.path().join("cp");
        rt.block_on(remote.restore(&newest, &target)).unwrap();
        let restored = CheckpointStore::open_with(&target, &StateConfig::default()).unwrap();
        assert_eq!(restored.load().unwrap().unwrap().epoch, 2);
        assert_eq!(restored.dedup_key_count().unwrap(), 20_010);
        let probe: Vec<&[u8]> = vec![b"key-00019999", b"key-00020009", b"key-99999999"];
        assert_eq!(restored.dedup_contains(&probe, 3).unwrap(), vec![true, true, false]);
        // Cleaning to one kept manifest deletes the first's files no later one names, and no
        // file the kept one names.
        let cleaned = rt.block_on(remote.clean(1, Duration::ZERO)).unwrap();
        assert_eq!(cleaned.manifests, 1);
        let again = fresh.path().join("again");
        rt.block_on(remote.restore(&rt.block_on(remote.newest()).unwrap().unwrap(), &again)).unwrap();
        assert_eq!(CheckpointStore::open_with(&again, &StateConfig::default()).unwrap().dedup_key_count().unwrap(), 20_010);
    }

    #[test]
    fn a_restart_on_the_same_disk_reuses_its_uploads_and_never_a_stranger_s() {
        let (local, store_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let remote = remote(store_dir.path());
        let dir = local.path().join("cp");
        let store = CheckpointStore::open_with(&dir, &StateConfig::default()).unwrap();
        commit(&store, 1, 0..20_000);
        persist(&store, &remote, &mut Uploaded::default());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let m = rt.block_on(remote.manifest(1)).unwrap();
        let tables = m.files.iter().filter(|f| immutable(&f.name)).count();
        assert!(tables > 0);
        // Another process uploaded those keys (a zombie's files may carry our names): not ours.
        add_lineage(&dir, ["i2"]).unwrap();
        assert_eq!(Uploaded::local(&m, &dir).0.len(), 0);
        // This directory's own uploads (incarnation i1, as `persist` names it): reused.
        add_lineage(&dir, ["i1"]).unwrap();
        let mut known = Uploaded::local(&m, &dir);
        assert_eq!(known.0.len(), tables);
        commit(&store, 2, 20_000..20_001);
        let again = persist(&store, &remote, &mut known);
        let new_tables = rt.block_on(remote.manifest(2)).unwrap().files.iter().filter(|f| f.key.contains("/i1/")).count();
        assert!(again.uploaded_bytes < m.bytes() / 2, "the table files of epoch 1 are not uploaded again: {again:?}");
        assert!(new_tables >= tables, "epoch 2 names epoch 1's files");
    }

    #[test]
    fn a_manifest_naming_a_missing_or_changed_file_is_refused_naming_it() {
        let (local, store_dir, fresh) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let remote = remote(store_dir.path());
        let store = CheckpointStore::open_with(local.path().join("cp"), &StateConfig::default()).unwrap();
        commit(&store, 1, 0..1_000);
        persist(&store, &remote, &mut Uploaded::default());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let m = rt.block_on(remote.manifest(1)).unwrap();
        let sst = m.files.iter().find(|f| f.name.ends_with(".sst")).unwrap();
        std::fs::write(store_dir.path().join(&sst.key), b"truncated").unwrap();
        let target = fresh.path().join("cp");
        let e = rt.block_on(remote.restore(&m, &target)).unwrap_err().to_string();
        assert!(e.contains("manifests/00000000000000000001.json") && e.contains(&sst.name), "{e}");
        assert!(!target.exists(), "nothing written");
        std::fs::remove_file(store_dir.path().join(&sst.key)).unwrap();
        let e = rt.block_on(remote.restore(&m, &target)).unwrap_err().to_string();
        assert!(e.contains("cannot be read"), "{e}");
        std::fs::write(store_dir.path().join("manifests/00000000000000000001.json"), b"{not json").unwrap();
        let e = rt.block_on(remote.newest()).unwrap_err().to_string();
        assert!(e.contains("manifests/00000000000000000001.json") && e.contains("not a manifest"), "{e}");
    }
}
