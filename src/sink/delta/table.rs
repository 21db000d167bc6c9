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
    match table.load().await {
        Ok(()) => Ok(table.version().map(|_| table)),
        Err(deltalake::DeltaTableError::NotATable(_)) => Ok(None), // no commit yet, or nothing there
        Err(e) => Err(delta_err(&path, e)),
    }
}
