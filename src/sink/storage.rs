//! Where tables live: the object store a table is opened with.
//!
//! Local tables use object_store's `LocalFileSystem` with one change: listing `_delta_log` from
//! an offset. Every commit lists the log from its current version (the latest-version lookup and
//! the snapshot update), and `LocalFileSystem` answers an offset listing by walking the whole
//! directory and converting every entry's path to a URL before comparing it with the offset —
//! measured at a fifth of the pipeline's CPU after 2,000 commits, growing with every commit the
//! log retains. [`LocalStore`] reads the directory's names, skips those at or before the offset
//! by comparing bytes, and builds metadata only for the few after it. Object stores list from an
//! offset natively.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use deltalake::logstore::object_store::local::LocalFileSystem;
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use deltalake::DeltaTableBuilder;
use futures::stream::{self, BoxStream, StreamExt};

use crate::error::Result as ExactlyResult;

/// The builder of the table at `url`, on [`LocalStore`] for local paths.
pub fn table_builder(url: url::Url) -> ExactlyResult<DeltaTableBuilder> {
    let path = url.to_file_path().map(|p| p.display().to_string()).unwrap_or_else(|_| url.to_string());
    let err = |e: deltalake::DeltaTableError| crate::error::Error::Delta { table: path.clone(), detail: e.to_string() };
    let builder = DeltaTableBuilder::from_url(url.clone()).map_err(err)?;
    Ok(if url.scheme() == "file" { builder.with_storage_backend(Arc::new(LocalStore::new()), url) } else { builder })
}

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

/// The files of directory `dir` (object path `prefix`) whose paths sort after `offset`; `None`
/// if the directory holds something the fast path does not handle (a subdirectory, an unusual
/// name), and the slow listing must answer.
fn list_after(dir: PathBuf, prefix: String, offset: String) -> std::io::Result<Option<Vec<ObjectMeta>>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(out)),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| plain_name(n)) else { return Ok(None) };
        let location = format!("{prefix}/{name}");
        if location.as_str() <= offset.as_str() {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // deleted meanwhile
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            return Ok(None);
        }
        let Ok(location) = Path::parse(&location) else { return Ok(None) };
        let last_modified = meta.modified().map(chrono::DateTime::<chrono::Utc>::from).unwrap_or_default();
        out.push(ObjectMeta { location, last_modified, size: meta.len(), e_tag: Some(etag(&meta)), version: None });
    }
    Ok(Some(out))
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
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
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        let Some(prefix) = prefix.filter(|p| p.filename() == Some("_delta_log")) else {
            return self.inner.list_with_offset(prefix, offset);
        };
        let (dir, p, o) = (PathBuf::from(format!("/{prefix}")), prefix.to_string(), offset.to_string());
        let mut slow = Some(self.inner.list_with_offset(Some(prefix), offset)); // lazy: walks only if polled
        stream::once(async move { tokio::task::spawn_blocking(move || list_after(dir, p, o)).await })
            .flat_map(move |listed| match listed {
                Ok(Ok(Some(found))) => stream::iter(found.into_iter().map(Ok)).boxed(),
                Ok(Ok(None)) => slow.take().unwrap_or_else(|| stream::empty().boxed()),
                Ok(Err(e)) => {
                    stream::iter([Err(deltalake::logstore::object_store::Error::Generic { store: "LocalStore", source: Box::new(e) })])
                        .boxed()
                }
                Err(e) => {
                    stream::iter([Err(deltalake::logstore::object_store::Error::Generic { store: "LocalStore", source: Box::new(e) })])
                        .boxed()
                }
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
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
}
