//! The store of local tables.
//!
//! Local tables use object_store's `LocalFileSystem` with one change: listing `_delta_log` from
//! an offset. Every commit lists the log from its current version (the latest-version lookup and
//! the snapshot update), and `LocalFileSystem` answers an offset listing by walking the whole
//! directory and converting every entry's path to a URL before comparing it with the offset —
//! measured at a fifth of the pipeline's CPU after 2,000 commits, growing with every commit the
//! log retains. Object stores list from an offset natively; [`LocalStore`] does the same for a
//! local `_delta_log`: it keeps the directory's names (one process-wide cache, `LogDirs`),
//! valid while the directory's modification time is the one it saw, updated by its own writes,
//! and answers a listing from the names after the offset, reading metadata for those only.
//!
//! A writer this process does not see (another process) changes the directory's modification
//! time, and the next listing reads the directory again. If a change slipped past within the
//! timestamp's resolution, the only effect is a stale view of the log: a commit then tries a
//! version that exists, the put-if-absent fails, the cache is dropped, and the retry sees it —
//! commit files are never overwritten.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;

use deltalake::logstore::object_store::local::LocalFileSystem;
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, RenameOptions, Result,
};
use futures::stream::{self, BoxStream, StreamExt};

/// `LocalFileSystem` rooted at `/`, with a fast offset listing of `_delta_log` directories.
#[derive(Debug)]
pub struct LocalStore {
    inner: LocalFileSystem,
}

impl LocalStore {
    /// The store of the local file system.
    pub fn new() -> Self {
        LocalStore { inner: LocalFileSystem::new() }
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalStore({})", self.inner)
    }
}

/// A name object_store would list as is (`LocalFileSystem` hides `#`-suffixed upload parts and
/// percent-encodes unusual names: those take the slow path).
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn etag(meta: &std::fs::Metadata) -> String {
    let mtime = meta.modified().ok().and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default().as_micros();
    format!("{:x}-{mtime:x}-{:x}", std::os::unix::fs::MetadataExt::ino(meta), meta.len())
}

/// The names in one `_delta_log` directory, as of its modification time `mtime`.
struct LogDir {
    mtime: SystemTime,
    names: BTreeSet<String>,
}

/// The process-wide cache of `_delta_log` directories' names.
type LogDirs = Mutex<HashMap<PathBuf, LogDir>>;

static LOG_DIRS: LazyLock<LogDirs> = LazyLock::new(Default::default);

fn log_dirs() -> std::sync::MutexGuard<'static, HashMap<PathBuf, LogDir>> {
    LOG_DIRS.lock().unwrap_or_else(|e| e.into_inner())
}

fn mtime(dir: &FsPath) -> std::io::Result<SystemTime> {
    std::fs::metadata(dir)?.modified()
}

/// The names of `dir` if the fast path handles it: plain file names only (no subdirectory, no
/// name `LocalFileSystem` would encode or hide).
fn read_names(dir: &FsPath) -> std::io::Result<Option<BTreeSet<String>>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().filter(|n| plain_name(n)).map(str::to_string) else { return Ok(None) };
        if entry.file_type()?.is_dir() {
            return Ok(None);
        }
        names.insert(name);
    }
    Ok(Some(names))
}

/// The files of `_delta_log` directory `dir` (object path `prefix`) whose names sort after
/// `after`; `None` if the fast path does not handle the directory and the slow listing must
/// answer.
fn list_after(dir: PathBuf, prefix: String, after: String) -> std::io::Result<Option<Vec<ObjectMeta>>> {
    let seen = match mtime(&dir) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(Vec::new())),
        Err(e) => return Err(e),
    };
    let cached: Option<Vec<String>> = log_dirs().get(&dir).filter(|c| c.mtime == seen).map(|c| {
        c.names.range::<str, _>((std::ops::Bound::Excluded(after.as_str()), std::ops::Bound::Unbounded)).cloned().collect()
    });
    let names = match cached {
        Some(names) => names,
        None => {
            // Read the names after taking the time: a change during the read moves the time on,
            // and the next listing reads again.
            let Some(names) = read_names(&dir)? else {
                log_dirs().remove(&dir);
                return Ok(None);
            };
            let after_offset = names.iter().filter(|n| n.as_str() > after.as_str()).cloned().collect();
            log_dirs().insert(dir.clone(), LogDir { mtime: seen, names });
            after_offset
        }
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let meta = match std::fs::metadata(dir.join(&name)) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                log_dirs().remove(&dir); // deleted meanwhile: read the directory again next time
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(location) = Path::parse(format!("{prefix}/{name}")) else { return Ok(None) };
        let last_modified = meta.modified().map(chrono::DateTime::<chrono::Utc>::from).unwrap_or_default();
        out.push(ObjectMeta { location, last_modified, size: meta.len(), e_tag: Some(etag(&meta)), version: None });
    }
    Ok(Some(out))
}

/// The `_delta_log` directory and file name of `location`, if it is a file in one.
fn in_log_dir(location: &Path) -> Option<(PathBuf, String)> {
    let name = location.filename()?.to_string();
    let parent: Vec<_> = location.parts().collect();
    let parent = &parent[..parent.len().checked_sub(1)?];
    if parent.last().map(|p| p.as_ref()) != Some("_delta_log") {
        return None;
    }
    let dir: PathBuf = std::iter::once("/".to_string()).chain(parent.iter().map(|p| p.as_ref().to_string())).collect();
    Some((dir, name))
}

/// A write's effect on the cached names: the file is there.
fn add_name(names: &mut BTreeSet<String>, name: &str) {
    names.insert(name.to_string());
}

/// Forgets the cached names of the log a deleted file was in.
fn forget_log_of(deleted: &Result<Path>) {
    if let Some((dir, _)) = deleted.as_ref().ok().and_then(in_log_dir) {
        log_dirs().remove(&dir);
    }
}

/// Runs a write to `location` and keeps the cache of its `_delta_log` directory (if any) true:
/// valid before and after it, the write's effect is applied; otherwise, or when the write
/// failed, the directory is read again on the next listing.
async fn tracked<T>(
    location: &Path,
    change: impl FnOnce(&mut BTreeSet<String>, &str),
    write: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let Some((dir, name)) = in_log_dir(location) else { return write.await };
    let before = mtime(&dir).ok();
    let result = write.await;
    let after = mtime(&dir).ok();
    let mut dirs = log_dirs();
    match (dirs.get_mut(&dir), &result, before, after) {
        (Some(c), Ok(_), Some(before), Some(after)) if c.mtime == before => {
            change(&mut c.names, &name);
            c.mtime = after;
        }
        _ => {
            dirs.remove(&dir);
        }
    }
    result
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        tracked(location, add_name, self.inner.put_opts(location, payload, opts)).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        // Deletions in a log (expired-log cleanup) drop its cached names once done.
        self.inner.delete_stream(locations).inspect(forget_log_of).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        let Some(prefix) = prefix.filter(|p| p.filename() == Some("_delta_log")) else {
            return self.inner.list_with_offset(prefix, offset);
        };
        let Some(after) = offset.as_ref().strip_prefix(prefix.as_ref()).and_then(|r| r.strip_prefix('/')).map(str::to_string)
        else {
            return self.inner.list_with_offset(Some(prefix), offset);
        };
        let (dir, p, o) = (PathBuf::from(format!("/{prefix}")), prefix.to_string(), after);
        let mut slow = Some(self.inner.list_with_offset(Some(prefix), offset)); // lazy: walks only if polled
        let failed = |e: Box<dyn std::error::Error + Send + Sync>| deltalake::logstore::object_store::Error::Generic {
            store: "LocalStore",
            source: e,
        };
        stream::once(async move { tokio::task::spawn_blocking(move || list_after(dir, p, o)).await })
            .flat_map(move |listed| match listed.map_err(|e| failed(e.into())).and_then(|r| r.map_err(|e| failed(e.into()))) {
                Ok(Some(found)) => stream::iter(found.into_iter().map(Ok)).boxed(),
                Ok(None) => slow.take().unwrap_or_else(|| stream::empty().boxed()),
                Err(e) => stream::iter([Err(e)]).boxed(),
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        tracked(to, add_name, self.inner.copy_opts(from, to, options)).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        // The source leaves its directory: forget that directory's names; the target is added.
        if let Some((dir, _)) = in_log_dir(from).filter(|(d, _)| in_log_dir(to).is_none_or(|(t, _)| &t != d)) {
            log_dirs().remove(&dir);
        }
        let from_name = from.filename().map(str::to_string);
        tracked(
            to,
            |names, n| {
                if let Some(f) = &from_name {
                    names.remove(f);
                }
                names.insert(n.to_string());
            },
            self.inner.rename_opts(from, to, options),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast listing answers exactly what `LocalFileSystem` answers.
    #[tokio::test]
    async fn offset_listing_of_a_log_matches_local_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t/_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        for v in 0..30u64 {
            std::fs::write(log.join(format!("{v:020}.json")), b"{}").unwrap();
        }
        std::fs::write(log.join(format!("{:020}.checkpoint.parquet", 9)), b"x").unwrap();
        std::fs::write(log.join("_last_checkpoint"), b"{}").unwrap();
        let prefix = Path::from_filesystem_path(&log).unwrap();
        let offset = Path::parse(format!("{prefix}/{:020}", 9)).unwrap();
        let collect = |s: BoxStream<'static, Result<ObjectMeta>>| async move {
            let mut v: Vec<(String, u64)> = s.map(|m| m.unwrap()).map(|m| (m.location.to_string(), m.size)).collect().await;
            v.sort();
            v
        };
        let fast = collect(LocalStore::new().list_with_offset(Some(&prefix), &offset)).await;
        let slow = collect(LocalFileSystem::new().list_with_offset(Some(&prefix), &offset)).await;
        assert_eq!(fast, slow);
        assert_eq!(fast.len(), 23, "9.checkpoint, 9.json, 10..29 and _last_checkpoint");
        // A subdirectory takes the slow path, with the same answer.
        std::fs::create_dir_all(log.join("_commits")).unwrap();
        std::fs::write(log.join(format!("_commits/{:020}.json", 40)), b"{}").unwrap();
        let fast = collect(LocalStore::new().list_with_offset(Some(&prefix), &offset)).await;
        let slow = collect(LocalFileSystem::new().list_with_offset(Some(&prefix), &offset)).await;
        assert_eq!(fast, slow);
    }

    /// The cached names follow the store's own writes and renames, and a write by someone else
    /// (straight to the file system) is seen at the next listing.
    #[tokio::test]
    async fn cached_names_follow_own_and_foreign_writes() {
        use deltalake::logstore::object_store::ObjectStoreExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t/_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        std::fs::write(log.join(format!("{:020}.json", 0)), b"{}").unwrap();
        let prefix = Path::from_filesystem_path(&log).unwrap();
        let offset = Path::parse(format!("{prefix}/{:020}", 0)).unwrap();
        let store = LocalStore::new();
        let names = |store: &LocalStore| {
            let s = store.list_with_offset(Some(&prefix), &offset);
            async move {
                let mut v: Vec<String> = s.map(|m| m.unwrap().location.filename().unwrap().to_string()).collect().await;
                v.sort();
                v
            }
        };
        assert_eq!(names(&store).await, [format!("{:020}.json", 0)]);
        // Own writes: a temp file renamed into place, as a commit does.
        let tmp = Path::parse(format!("{prefix}/_commit_abc.json.tmp")).unwrap();
        let one = Path::parse(format!("{prefix}/{:020}.json", 1)).unwrap();
        store.put(&tmp, b"{}".to_vec().into()).await.unwrap();
        store.rename(&tmp, &one).await.unwrap();
        assert_eq!(names(&store).await, [format!("{:020}.json", 0), format!("{:020}.json", 1)]);
        // A foreign writer; the directory's time moves on.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(log.join(format!("{:020}.json", 2)), b"{}").unwrap();
        let want: Vec<String> = (0..3).map(|v| format!("{v:020}.json")).collect();
        assert_eq!(names(&store).await, want);
        assert_eq!(names(&LocalStore::new()).await, want, "one cache for every store of the process");
        let slow: Vec<String> = LocalFileSystem::new()
            .list_with_offset(Some(&prefix), &offset)
            .map(|m| m.unwrap().location.filename().unwrap().to_string())
            .collect::<Vec<_>>()
            .await;
        assert_eq!(slow.len(), want.len());
    }
}
