//! Where tables live: a local directory or an object store (S3 and S3-compatible servers, Azure
//! Blob / ADLS Gen2, Google Cloud Storage), and the store a table is opened with.
//!
//! - [`TableLocation`]: a table's address as the config gives it, with the storage options that
//!   reach it (`[sink.storage]`, never shown).
//! - [`table_builder`]: delta-rs's builder on the right store — [`local::LocalStore`] for local
//!   directories (a fast `_delta_log` listing), delta-rs's own object stores for URLs.
//! - [`preflight`]: before the first write, one check that the store answers, the credentials
//!   may write, and the store refuses to overwrite an object on a put-if-absent — what keeps a
//!   second writer or a zombie from replacing a Delta commit file.

pub mod local;

use std::collections::HashMap;
use std::sync::{Arc, Once};
use std::time::Duration;

use deltalake::logstore::object_store::{self, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use deltalake::DeltaTableBuilder;

use crate::error::{Error, Result, StoreProblem};
use crate::model::{TableLocation, UNSAFE_S3_OPTION};

/// Registers delta-rs's object stores for the URL schemes, once per process.
fn register_stores() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        deltalake::aws::register_handlers(None);
        deltalake::azure::register_handlers(None);
        deltalake::gcp::register_handlers(None);
    });
}

/// The builder of the table at `at`: [`local::LocalStore`] for local tables; delta-rs's object
/// store for URLs, with the location's storage options over the standard environment variables
/// (`AWS_*`, `AZURE_STORAGE_*`, `GOOGLE_*`), which delta-rs reads for the keys not given.
pub fn table_builder(at: &TableLocation) -> Result<DeltaTableBuilder> {
    let err = |e: deltalake::DeltaTableError| Error::Delta { table: at.to_string(), detail: e.to_string() };
    if at.local_path().is_some() {
        let builder = DeltaTableBuilder::from_url(at.url().clone()).map_err(err)?;
        return Ok(builder.with_storage_backend(Arc::new(local::LocalStore::new()), at.url().clone()));
    }
    register_stores();
    let options: HashMap<String, String> = at.options().0.clone().into_iter().collect();
    Ok(DeltaTableBuilder::from_url(at.url().clone()).map_err(err)?.with_storage_options(options))
}

/// The object store rooted at `at`, for files that are not a table's (a persisted checkpoint):
/// the store delta-rs reaches a URL with, with the location's options; a local directory
/// (created if missing) through the file system.
pub fn root_store(at: &TableLocation) -> Result<Arc<dyn ObjectStore>> {
    if let Some(dir) = at.local_path() {
        let err = |e: String| Error::Io { context: format!("cannot use {}", dir.display()), source: std::io::Error::other(e) };
        std::fs::create_dir_all(&dir).map_err(|e| err(e.to_string()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| err(e.to_string()))?;
        return Ok(Arc::new(store));
    }
    let table = table_builder(at)?.build().map_err(|e| store_error(at, StoreProblem::Other(e.to_string())))?;
    Ok(table.log_store().object_store(None))
}

/// [`preflight`] for `checkpoint.remote`: the same checks, its error naming the checkpoint's
/// location and settings, not a table's.
pub async fn preflight_checkpoint(at: &TableLocation) -> Result<()> {
    preflight(at).await.map_err(|e| match e {
        Error::Store { table, problem } => Error::Persisted {
            at: table,
            detail: format!("cannot write there: {problem}")
                .replace("[sink.storage]", "[checkpoint.storage] (default: [sink.storage])"),
        },
        other => other,
    })
}

/// The persisted checkpoints at `at` (`checkpoint.remote`).
pub fn checkpoint_remote(at: &TableLocation) -> Result<crate::state::persist::Remote> {
    Ok(crate::state::persist::Remote::new(root_store(at)?, at.to_string()))
}

/// How long the pre-flight waits for the store.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(20);

/// Checks, before the first write, that the store at `at` answers, accepts the credentials, and
/// refuses a put-if-absent over an existing object (S3 `If-None-Match: *`, Azure and GCS
/// preconditions). One clear error otherwise: a wrong key, a missing bucket, a store that would
/// let a second writer overwrite a commit. A local table (rename-if-absent on a file system)
/// must be a directory, or be creatable in one this process can write ([`preflight_local`]).
pub async fn preflight(at: &TableLocation) -> Result<()> {
    if let Some(dir) = at.local_path() {
        return preflight_local(&dir).map_err(|problem| store_error(at, StoreProblem::Other(problem)));
    }
    let unsafe_allowed = at.options().has(UNSAFE_S3_OPTION) || std::env::var_os(UNSAFE_S3_OPTION).is_some();
    let check = async {
        let table = table_builder(at)?.build().map_err(|e| store_error(at, StoreProblem::Other(e.to_string())))?;
        let store = table.log_store().object_store(None);
        let probe = object_store::path::Path::from(format!("_exactly_probe/{}", uuid_like()));
        let put = |mode: PutMode| {
            let store = store.clone();
            let probe = probe.clone();
            async move {
                store
                    .put_opts(&probe, PutPayload::from_static(b"exactly pre-flight"), PutOptions { mode, ..Default::default() })
                    .await
            }
        };
        put(PutMode::Create).await.map_err(|e| classify(at, e))?;
        let second = put(PutMode::Create).await;
        let _ = store.delete(&probe).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => Ok(()),
            Ok(_) if unsafe_allowed => Ok(()),
            Ok(_) => Err(store_error(at, StoreProblem::NoConditionalWrites(UNSAFE_S3_OPTION))),
            Err(e) => Err(classify(at, e)),
        }
    };
    match tokio::time::timeout(PREFLIGHT_TIMEOUT, check).await {
        Ok(r) => r,
        Err(_) => Err(store_error(at, StoreProblem::Unreachable(format!("no answer within {PREFLIGHT_TIMEOUT:?}")))),
    }
}

/// Checks, writing nothing that stays, that `dir` is a directory this process can write files
/// in, or one it can create: its nearest existing ancestor is a writable directory.
pub fn preflight_local(dir: &std::path::Path) -> std::result::Result<(), String> {
    // (Without a trailing `/`: `file/` does not "exist" when `file` is a file.)
    let dir: std::path::PathBuf = dir.components().collect();
    let dir = dir.as_path();
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => return Ok(()), // a relative path under the working directory
        }
    }
    if !at.is_dir() {
        return Err(if at == dir {
            "it is a file, not a directory".to_string()
        } else {
            format!("{} is a file, so the directory cannot be created", at.display())
        });
    }
    let probe = at.join(format!(".exactly-probe-{}", uuid_like()));
    std::fs::write(&probe, b"exactly pre-flight").map_err(|e| {
        let which = if at == dir { String::new() } else { format!(" (nor create it in {})", at.display()) };
        format!("cannot write in the directory{which}: {e}")
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// A unique enough name for the probe object (no secrets, no clock collisions between processes).
fn uuid_like() -> String {
    format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

fn store_error(at: &TableLocation, problem: StoreProblem) -> Error {
    Error::Store { table: at.to_string(), problem }
}

/// One line for a failed write to the store, naming what is wrong when the store says so.
fn classify(at: &TableLocation, e: object_store::Error) -> Error {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let problem = if matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })
        || [
            "status 403",
            "403 forbidden",
            "status 401",
            "401 unauthorized",
            "accessdenied",
            "access denied",
            "signaturedoesnotmatch",
            "invalidaccesskeyid",
            "authenticationfailed",
        ]
        .iter()
        .any(|s| lower.contains(s))
    {
        StoreProblem::Refused
    } else if matches!(e, object_store::Error::NotFound { .. })
        || ["nosuchbucket", "bucket does not exist", "containernotfound"].iter().any(|s| lower.contains(s))
    {
        StoreProblem::Missing
    } else if lower.contains("error sending request") || lower.contains("connection refused") || lower.contains("dns error") {
        StoreProblem::Unreachable(first_line(&text))
    } else {
        StoreProblem::Other(first_line(&text))
    };
    store_error(at, problem)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or(text).chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_table_must_be_a_directory_or_creatable_in_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(preflight_local(&dir.path().join("new/table")), Ok(()));
        assert_eq!(preflight_local(dir.path()), Ok(()));
        assert!(preflight_local(&file).unwrap_err().contains("is a file"));
        assert!(preflight_local(&file.join("")).unwrap_err().contains("is a file"), "a trailing `/`");
        assert!(preflight_local(&file.join("sub/t")).unwrap_err().contains("cannot be created"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing left behind");
    }

    #[test]
    fn store_errors_are_named_by_status_not_by_digits_in_a_path() {
        let at = TableLocation::parse("s3://bucket/t").unwrap();
        let generic = |m: &str| object_store::Error::Generic { store: "S3", source: m.to_string().into() };
        let refused =
            classify(&at, generic("Error performing PUT http://h/bucket/t/_exactly_probe/a403b401 - error sending request"));
        assert!(matches!(refused, Error::Store { problem: StoreProblem::Unreachable(_), .. }), "{refused}");
        let denied = classify(&at, generic("Client error with status 403 Forbidden: <Code>SignatureDoesNotMatch</Code>"));
        assert!(matches!(denied, Error::Store { problem: StoreProblem::Refused, .. }), "{denied}");
        let missing = classify(&at, generic("Client error with status 404 Not Found: <Code>NoSuchBucket</Code>"));
        assert!(matches!(missing, Error::Store { problem: StoreProblem::Missing, .. }), "{missing}");
    }
}
