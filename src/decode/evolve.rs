//! The columns writer schemas add beyond the reader schema's (`sink.schema_evolution =
//! "add-columns"`), for the formats whose records name their writer schema (Avro, Protobuf, JSON
//! with a registry's JSON Schema): one rule for growing them, one check that a record's own
//! columns are in its batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use deltalake::arrow::datatypes::Field;

use super::{Rejected, Rejection};
use crate::config::FieldConfig;

/// A writer schema's columns beyond the reader schema's, and whether they were grown.
#[derive(Debug)]
pub(super) struct WriterColumns {
    /// What names the writer schema in messages: `writer schema id 7`, `… fingerprint …`.
    pub label: String,
    /// Its columns beyond the reader schema's, all nullable (`Err`: one of them has no column
    /// type).
    added: Result<Vec<FieldConfig>, String>,
    /// Whether [`Added::grow`] took `added` into the decoder's columns.
    grown: AtomicBool,
}

impl WriterColumns {
    /// The columns `added` of the writer schema `label`.
    pub fn new(label: String, added: Result<Vec<FieldConfig>, String>) -> WriterColumns {
        let added = added.map_err(|why| format!("{label}: {why}"));
        WriterColumns { label, added, grown: AtomicBool::new(false) }
    }

    /// Its columns beyond the reader schema's, each checked to be one of `batch` (the columns
    /// of the batch being decoded); `Err`: a column that is not (the record is a dead letter
    /// saying so, never a row missing a column) or that has no column type.
    pub fn in_batch(&self, batch: &[FieldConfig]) -> Result<&[FieldConfig], Rejected> {
        let columns = self.added.as_ref().map_err(|why| (Rejection::WrongType, why.clone()))?;
        if let Some(c) = columns.iter().find(|c| !batch.iter().any(|a| a.name == c.name && a.kind == c.kind)) {
            return Err((
                Rejection::WrongType,
                format!(
                    "{}: field `{}` ({}) is not a column of this batch: Decoder::prepare runs before decode",
                    self.label, c.name, c.kind
                ),
            ));
        }
        Ok(columns)
    }
}

/// The columns writer schemas added so far, in the order they were first seen.
#[derive(Debug, Default)]
pub(super) struct Added(RwLock<Vec<(FieldConfig, Field)>>);

impl Added {
    /// The columns, with their Arrow fields.
    pub fn columns(&self) -> Vec<(FieldConfig, Field)> {
        self.0.read().expect("added columns lock").clone()
    }

    /// Takes `writer`'s columns into the decoder's (once per writer schema). `Err`: a writer
    /// schema gives a column another one already gave with another type — one column cannot
    /// hold both, and which one came first must not decide a row, so the batch is not decoded.
    pub fn grow(&self, writer: &WriterColumns) -> Result<(), String> {
        if writer.grown.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Ok(columns) = &writer.added {
            let mut added = self.0.write().expect("added columns lock");
            for c in columns {
                match added.iter().map(|(a, _)| a).find(|a| a.name == c.name) {
                    Some(a) if a.kind == c.kind => {}
                    Some(a) => {
                        return Err(format!(
                            "{} has field `{}` as {}, but an earlier writer schema gave it as {}: one column cannot \
                             hold both; keep the field's type across the topic's schemas",
                            writer.label, c.name, c.kind, a.kind
                        ))
                    }
                    None => added.push((c.clone(), super::arrow_field(c).map_err(|e| format!("{}: {e}", writer.label))?)),
                }
            }
        }
        writer.grown.store(true, Ordering::Release);
        Ok(())
    }
}
