//! Opening a table: the one loader every reader and writer uses, and the error it names.

use deltalake::DeltaTable;

use crate::error::{Error, Result};
use crate::model::TableLocation;
use crate::sink::storage::table_builder;

/// A Delta error on the table at `path`.
pub fn delta_err(path: &TableLocation, e: impl std::fmt::Display) -> Error {
    Error::Delta { table: path.to_string(), detail: e.to_string() }
}

/// Loads the table at `path` (a local directory or an object-store location); `None` if there
/// is no Delta table there.
pub async fn load_table(path: impl Into<TableLocation>) -> Result<Option<DeltaTable>> {
    let path = path.into();
    if path.local_path().is_some_and(|dir| !dir.join("_delta_log").is_dir()) {
        return Ok(None);
    }
    let mut table = table_builder(&path)?.build().map_err(|e| delta_err(&path, e))?;
    if path.local_path().is_none() {
        // No log on the store: no table (asking delta-rs to load it logs an error first).
        use futures::StreamExt;
        let log = deltalake::Path::from("_delta_log/");
        let first = table.log_store().object_store(None).list(Some(&log)).next().await;
        match first {
            None => return Ok(None),
            Some(Err(e)) => return Err(delta_err(&path, e)),
            Some(Ok(_)) => {}
        }
    }
    // Log cleanup (the pipeline's maintenance, or another writer's) may delete a commit file
    // between the listing that named it and its read: list again, from the newer checkpoint.
    let mut attempts = 0;
    loop {
        match table.load().await {
            Ok(()) => return Ok(table.version().map(|_| table)),
            Err(deltalake::DeltaTableError::NotATable(_)) => return Ok(None), // no commit yet, or nothing there
            Err(e) if attempts < 3 && cleaned_under_the_reader(&e) => {
                attempts += 1;
                table = table_builder(&path)?.build().map_err(|e| delta_err(&path, e))?;
            }
            Err(e) => return Err(delta_err(&path, e)),
        }
    }
}

/// Whether a load failed on a commit file of the log that is no longer there (deleted by log
/// cleanup after the listing named it).
fn cleaned_under_the_reader(e: &deltalake::DeltaTableError) -> bool {
    let text = e.to_string();
    text.contains("_delta_log") && (text.contains("not found") || text.contains("No such file"))
}

/// The actions of `versions` of `table`'s log, read as delta-rs reads them (16 commits at a
/// time), in the order asked; a version no longer in the log (cleaned up) is left out. The one
/// reader of commit files: the recorded epochs, the audit's log rules and the tests use it.
pub async fn commits(
    table: &DeltaTable,
    path: &TableLocation,
    versions: impl Iterator<Item = u64>,
) -> Result<Vec<(u64, Vec<deltalake::kernel::Action>)>> {
    use futures::StreamExt;
    let store = table.log_store();
    let read: Vec<_> = futures::stream::iter(versions)
        .map(|v| {
            let store = store.clone();
            async move { (v, store.read_commit_entry(v).await) }
        })
        .buffered(16)
        .collect()
        .await;
    let mut out = Vec::with_capacity(read.len());
    for (version, entry) in read {
        let Some(bytes) = entry.map_err(|e| delta_err(path, e))? else { continue };
        // An action this delta-rs does not know is no action of ours: passed over.
        let actions = String::from_utf8_lossy(&bytes).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        out.push((version, actions));
    }
    Ok(out)
}

/// The `txn` versions of `app_id` among `actions`.
pub fn txn_versions<'a>(actions: &'a [deltalake::kernel::Action], app_id: &'a str) -> impl Iterator<Item = i64> + 'a {
    actions.iter().filter_map(move |a| match a {
        deltalake::kernel::Action::Txn(t) if t.app_id == app_id => Some(t.version),
        _ => None,
    })
}

/// The tag of an upsert table's files: the epoch that wrote the file, its id in the upsert index
/// (see `state::upsert`).
pub const FILE_TAG: &str = "exactly.file";

/// Whether `table` is an upsert table: a file of it carries [`FILE_TAG`].
pub fn is_upsert_table(table: &DeltaTable) -> bool {
    table.snapshot().is_ok_and(|s| {
        s.log_data().iter().any(|f| {
            #[allow(deprecated)]
            let add = f.add_action();
            add.tags.is_some_and(|t| t.contains_key(FILE_TAG))
        })
    })
}

/// The `exactly` metadata of the commit info among `actions`, if any.
pub fn exactly_info(actions: &[deltalake::kernel::Action]) -> Option<&serde_json::Value> {
    actions.iter().find_map(|a| match a {
        deltalake::kernel::Action::CommitInfo(info) => info.info.get("exactly"),
        _ => None,
    })
}
