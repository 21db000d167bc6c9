//! Change records (`[upsert]`): what a record says happened to its key's row — an upsert of a
//! row, or a delete — and, with `upsert.sequence_by`, the change's sequence.
//!
//! Two envelopes ([`Envelope`]): a plain keyed topic, where a value is the row and a null value
//! (a tombstone) deletes the row of the Kafka key; and Debezium's change event, in JSON with or
//! without the converter's `schema`/`payload` wrapper, where `op` `c`/`r`/`u` upsert `after`
//! and `d` deletes `before` (its key columns: a table's default replica identity gives only
//! those). A tombstone after a Debezium delete (log compaction's marker) deletes again, which
//! changes nothing. What is not a change the table can take is a dead letter
//! ([`Rejection::NotAChange`]), never skipped.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::value::RawValue;

use super::json;
use super::{Rejected, Rejection, Val};
use crate::config::{Envelope, FieldConfig, FieldType, UpsertConfig};
use crate::model::RecordView;

/// Where a change's sequence is read.
#[derive(Debug, Clone)]
enum Sequence {
    /// A declared column (its index among the fields).
    Column(usize),
    /// A path into the Debezium envelope (`source.lsn`, `ts_ms`).
    Envelope(Vec<String>),
}

/// How records become changes.
#[derive(Debug, Clone)]
pub(super) struct Changes {
    envelope: Envelope,
    /// The key columns' indexes among the fields, and the fields themselves (not nullable).
    key: Vec<usize>,
    key_fields: Vec<FieldConfig>,
    sequence: Option<Sequence>,
}

/// What one record changes, besides its row's values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Change {
    /// The record deletes its key's row.
    pub(super) delete: bool,
    /// Its sequence (`None`: no `sequence_by`, or a tombstone, which has none).
    pub(super) sequence: Option<i64>,
}

impl Changes {
    /// The changes of `upsert` over records of `fields` in `envelope`; `Err`: a key or
    /// sequence column that is not declared, or of a type that cannot be one.
    pub(super) fn new(upsert: &UpsertConfig, envelope: Envelope, fields: &[FieldConfig]) -> Result<Changes, String> {
        let position = |name: &str| fields.iter().position(|f| f.name == name);
        let mut key = Vec::new();
        for k in &upsert.key {
            let i = position(k).ok_or_else(|| format!("upsert.key names {k:?}, which is not a declared column"))?;
            if !matches!(
                fields[i].kind,
                FieldType::Long
                    | FieldType::Int
                    | FieldType::String
                    | FieldType::Boolean
                    | FieldType::Date
                    | FieldType::Timestamp
            ) {
                return Err(format!(
                    "upsert.key column {k:?} is a {}; a key column is a long, int, string, boolean, date or timestamp",
                    fields[i].kind
                ));
            }
            key.push(i);
        }
        let key_fields = key.iter().map(|i| FieldConfig { nullable: false, ..fields[*i].clone() }).collect();
        let sequence = match upsert.sequence_by.as_deref() {
            None => None,
            Some(name) => match position(name) {
                Some(i) if matches!(fields[i].kind, FieldType::Long | FieldType::Int | FieldType::Timestamp) => {
                    Some(Sequence::Column(i))
                }
                Some(i) => {
                    return Err(format!(
                        "upsert.sequence_by column {name:?} is a {}; a sequence is a long, int or timestamp",
                        fields[i].kind
                    ))
                }
                None if envelope == Envelope::Debezium => Some(Sequence::Envelope(name.split('.').map(str::to_string).collect())),
                None => return Err(format!("upsert.sequence_by names {name:?}, which is not a declared column")),
            },
        };
        Ok(Changes { envelope, key, key_fields, sequence })
    }

    /// Whether changes carry a sequence.
    pub(super) fn sequenced(&self) -> bool {
        self.sequence.is_some()
    }

    /// The values of `fields` of the row record `r` changes into `vals` (a delete: its key
    /// columns, the others null), and what it changes; or why it is not a change.
    pub(super) fn values<'a, R: RecordView>(
        &self,
        fields: &[FieldConfig],
        r: &'a R,
        vals: &mut Vec<Val<'a>>,
        slots: &mut json::Slots<'a>,
    ) -> Result<Change, Rejected> {
        let Some(value) = r.payload() else {
            self.key_of_record(fields, r, vals)?;
            return Ok(Change { delete: true, sequence: None });
        };
        let text = utf8("value", value)?;
        match self.envelope {
            Envelope::None => {
                json::values(fields, text, vals, slots)?;
                let sequence = self.column_sequence(vals)?;
                Ok(Change { delete: false, sequence })
            }
            Envelope::Debezium => self.debezium(fields, text, vals, slots),
        }
    }

    /// A Debezium change event.
    fn debezium<'a>(
        &self,
        fields: &[FieldConfig],
        text: &'a str,
        vals: &mut Vec<Val<'a>>,
        slots: &mut json::Slots<'a>,
    ) -> Result<Change, Rejected> {
        let mut event = members(text, "value")?;
        // The JSON converter with schemas wraps the event: `{"schema": ..., "payload": ...}`.
        if !event.contains_key("op") && event.contains_key("schema") {
            if let Some(payload) = event.get("payload") {
                event = members(payload.get(), "payload")?;
            }
        }
        let op = match event.get("op").map(|o| serde_json::from_str::<Cow<str>>(o.get())) {
            Some(Ok(op)) => op,
            _ => return Err(not_a_change("is not a Debezium change event: it has no `op`".into())),
        };
        let present = |name: &str| event.get(name).filter(|v| v.get() != "null");
        let (delete, row) = match op.as_ref() {
            "c" | "r" | "u" => (false, present("after")),
            "d" => (true, present("before")),
            "t" => return Err(not_a_change("is a truncate (op `t`), which an upsert table cannot take; truncate the table by hand, or skip truncates in the connector (skipped.operations = \"t\")".into())),
            other => return Err(not_a_change(format!("has op {other:?}; a change is `c`, `r`, `u` or `d`"))),
        };
        let Some(row) = row else {
            let side = if delete { "before" } else { "after" };
            return Err(not_a_change(format!("is a Debezium `{op}` event without `{side}`")));
        };
        if delete {
            self.key_only(fields, row.get(), vals, slots)?;
        } else {
            json::values(fields, row.get(), vals, slots)?;
        }
        let sequence = match &self.sequence {
            Some(Sequence::Envelope(path)) => Some(envelope_sequence(&event, path)?),
            Some(Sequence::Column(_)) if delete => None,
            _ => self.column_sequence(vals)?,
        };
        Ok(Change { delete, sequence })
    }

    /// The key columns of a tombstone, from its Kafka key: a JSON object holding them (in the
    /// converter's `payload` wrapper or not), or, with one key column, its JSON or text value.
    fn key_of_record<'a, R: RecordView>(
        &self,
        fields: &[FieldConfig],
        r: &'a R,
        vals: &mut Vec<Val<'a>>,
    ) -> Result<(), Rejected> {
        let key = r.key().ok_or_else(|| not_a_change("has neither a value nor a key: no row to change".into()))?;
        let text = utf8("key", key)?;
        let mut slots = Vec::new();
        if let Ok(object) = members(text, "key") {
            let object = match (object.get("schema"), object.get("payload")) {
                (Some(_), Some(payload)) => payload.get(),
                _ => text,
            };
            if self.key_only(fields, object, vals, &mut slots).is_ok() {
                return Ok(());
            }
        }
        if let [single] = self.key_fields.as_slice() {
            let value = match serde_json::from_str::<&RawValue>(text) {
                Ok(raw) => json::typed_column(&single.kind, raw, &single.name),
                Err(_) if single.kind == FieldType::String => Ok(Val::Str(Cow::Borrowed(text))),
                Err(e) => Err((Rejection::InvalidJson, format!("key is not valid JSON: {e}"))),
            };
            if let Ok(v) = value {
                vals.clear();
                vals.extend(fields.iter().map(|_| Val::Null));
                vals[self.key[0]] = v;
                return Ok(());
            }
        }
        let names: Vec<&str> = self.key_fields.iter().map(|f| f.name.as_str()).collect();
        Err(not_a_change(format!(
            "is a tombstone whose key {} does not give the key columns {names:?}",
            super::truncate(text, 60)
        )))
    }

    /// Reads the key columns from the JSON object `text` into `vals`, the other columns null.
    fn key_only<'a>(
        &self,
        fields: &[FieldConfig],
        text: &'a str,
        vals: &mut Vec<Val<'a>>,
        slots: &mut json::Slots<'a>,
    ) -> Result<(), Rejected> {
        let mut keys = Vec::with_capacity(self.key.len());
        json::values(&self.key_fields, text, &mut keys, slots)?;
        vals.clear();
        vals.extend(fields.iter().map(|_| Val::Null));
        for (i, v) in self.key.iter().zip(keys) {
            vals[*i] = v;
        }
        Ok(())
    }

    /// The sequence from the sequence column of a decoded row.
    fn column_sequence(&self, vals: &[Val<'_>]) -> Result<Option<i64>, Rejected> {
        let Some(Sequence::Column(i)) = &self.sequence else { return Ok(None) };
        match &vals[*i] {
            Val::Long(v) => Ok(Some(*v)),
            Val::Int(v) => Ok(Some(*v as i64)),
            _ => Err(not_a_change("has no upsert.sequence_by value (the column is null)".into())),
        }
    }
}

/// The members of the JSON object `text` (their values unparsed); `what` names it in reasons.
fn members<'a>(text: &'a str, what: &str) -> Result<HashMap<String, &'a RawValue>, Rejected> {
    let raw = serde_json::from_str::<&RawValue>(text)
        .map_err(|e| (Rejection::InvalidJson, format!("{what} is not valid JSON: {e}")))?;
    if !raw.get().starts_with('{') {
        return Err((Rejection::NotObject, format!("{what} is not a JSON object")));
    }
    serde_json::from_str(raw.get()).map_err(|e| (Rejection::InvalidJson, format!("{what} is not valid JSON: {e}")))
}

/// The integer at `path` in a Debezium event (`source.lsn`).
fn envelope_sequence(event: &HashMap<String, &RawValue>, path: &[String]) -> Result<i64, Rejected> {
    let shown = path.join(".");
    let missing = || not_a_change(format!("has no upsert.sequence_by value at `{shown}`"));
    let raw = member_at(event, path).ok_or_else(missing)?;
    let value: Option<serde_json::Value> = serde_json::from_str(raw.get()).ok();
    match value {
        Some(serde_json::Value::Number(n)) if n.is_i64() => Ok(n.as_i64().expect("an i64")),
        Some(serde_json::Value::String(s)) if s.parse::<i64>().is_ok() => Ok(s.parse().expect("parsed")),
        _ => Err(not_a_change(format!("has `{shown}` = {}, not an integer sequence", super::truncate(raw.get(), 40)))),
    }
}

/// The member at `path` below `object` (nested objects read as the path goes).
fn member_at<'a>(object: &HashMap<String, &'a RawValue>, path: &[String]) -> Option<&'a RawValue> {
    let (first, rest) = path.split_first()?;
    let value = *object.get(first)?;
    if rest.is_empty() {
        return Some(value);
    }
    member_at(&members(value.get(), first).ok()?, rest)
}

fn utf8<'a>(what: &str, b: &'a [u8]) -> Result<&'a str, Rejected> {
    std::str::from_utf8(b).map_err(|e| (Rejection::NotUtf8, format!("{what} is not valid UTF-8: {e}")))
}

fn not_a_change(why: String) -> Rejected {
    (Rejection::NotAChange, format!("record {why}"))
}
