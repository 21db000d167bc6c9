//! Change records (`[upsert]`): what a record says happened to its key's row — an upsert of a
//! row, or a delete — and, with `upsert.sequence_by`, the change's sequence.
//!
//! Two envelopes ([`Envelope`]): a plain keyed topic, where a value is the row and a null value
//! (a tombstone) deletes the row of the Kafka key; and Debezium's change event, in JSON with or
//! without the converter's `schema`/`payload` wrapper, or in Avro (the envelope's schema the
//! reader schema, its `after` record the columns), where `op` `c`/`r`/`u` upsert `after` and
//! `d` deletes `before` (its key columns: a table's default replica identity gives only those).
//! In Avro, a tombstone's key is an Avro record read by its own schema id. A tombstone after a Debezium delete (log compaction's marker) deletes again, which
//! changes nothing. What is not a change the table can take is a dead letter
//! ([`Rejection::NotAChange`]), never skipped.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::types::Value as AvroValue;

use serde_json::value::RawValue;

use super::avro::{self, Avro};
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
    /// `format = "avro"`: values (and tombstones' keys) are Avro.
    avro: Option<Arc<Avro>>,
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
    pub(super) fn new(
        upsert: &UpsertConfig,
        envelope: Envelope,
        fields: &[FieldConfig],
        avro: Option<Arc<Avro>>,
    ) -> Result<Changes, String> {
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
        Ok(Changes { envelope, key, key_fields, sequence, avro })
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
            match &self.avro {
                Some(avro) => self.avro_key(avro, fields, r, vals)?,
                None => self.key_of_record(fields, r, vals)?,
            }
            return Ok(Change { delete: true, sequence: None });
        };
        match (self.envelope, &self.avro) {
            (Envelope::None, None) => {
                json::values(fields, utf8("value", value)?, vals, slots)?;
                let sequence = self.column_sequence(vals)?;
                Ok(Change { delete: false, sequence })
            }
            (Envelope::None, Some(avro)) => {
                avro.values(value, vals, None)?;
                let sequence = self.column_sequence(vals)?;
                Ok(Change { delete: false, sequence })
            }
            (Envelope::Debezium, None) => self.debezium(fields, utf8("value", value)?, vals, slots),
            (Envelope::Debezium, Some(avro)) => self.debezium_avro(avro, fields, value, vals),
        }
    }

    /// A Debezium change event in Avro (the envelope's schema is the reader schema; the
    /// columns are its `after` record's fields).
    fn debezium_avro(
        &self,
        avro: &Avro,
        fields: &[FieldConfig],
        value: &[u8],
        vals: &mut Vec<Val<'_>>,
    ) -> Result<Change, Rejected> {
        let mut event = avro.record(value)?;
        let op = match event.iter().find(|(name, _)| name == "op").map(|(_, v)| unwrap_union(v)) {
            Some(AvroValue::String(op)) => Some(op.clone()),
            _ => None,
        };
        let delete = op_deletes(op.as_deref())?;
        let side = if delete { "before" } else { "after" };
        let row =
            event.iter_mut().find(|(name, _)| name == side).map(|(_, v)| std::mem::replace(v, AvroValue::Null)).map(
                |v| match v {
                    AvroValue::Union(_, inner) => *inner,
                    v => v,
                },
            );
        let Some(AvroValue::Record(members)) = row else {
            return Err(not_a_change(format!("is a Debezium `{}` event without `{side}`", op.unwrap_or_default())));
        };
        if delete {
            self.avro_key_only(fields, members, vals)?;
        } else {
            avro::row(fields, members, vals)?;
        }
        let sequence = match &self.sequence {
            Some(Sequence::Envelope(path)) => Some(avro_sequence(&event, path)?),
            Some(Sequence::Column(_)) if delete => None,
            _ => self.column_sequence(vals)?,
        };
        Ok(Change { delete, sequence })
    }

    /// The key columns of an Avro tombstone, from its Kafka key (an Avro record holding them).
    fn avro_key<R: RecordView>(
        &self,
        avro: &Avro,
        fields: &[FieldConfig],
        r: &R,
        vals: &mut Vec<Val<'_>>,
    ) -> Result<(), Rejected> {
        let key = r.key().ok_or_else(|| not_a_change("has neither a value nor a key: no row to change".into()))?;
        let members = avro
            .own_record(key)
            .map_err(|(_, why)| not_a_change(format!("is a tombstone whose Avro key does not read: {why}")))?;
        self.avro_key_only(fields, members, vals)
    }

    /// Reads the key columns from an Avro record's members into `vals`, the other columns null.
    fn avro_key_only(
        &self,
        fields: &[FieldConfig],
        members: Vec<(String, AvroValue)>,
        vals: &mut Vec<Val<'_>>,
    ) -> Result<(), Rejected> {
        let mut keys = Vec::with_capacity(self.key.len());
        avro::row(&self.key_fields, members, &mut keys)?;
        if let Some(f) = self.key_fields.iter().zip(&keys).find(|(_, v)| matches!(v, Val::Null)).map(|(f, _)| f) {
            return Err(not_a_change(format!("gives no value for the key column `{}`", f.name)));
        }
        self.place_keys(fields, keys, vals);
        Ok(())
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
            Some(Ok(op)) => Some(op),
            _ => None,
        };
        let delete = op_deletes(op.as_deref())?;
        let present = |name: &str| event.get(name).filter(|v| v.get() != "null");
        let row = if delete { present("before") } else { present("after") };
        let op = op.unwrap_or_default();
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
                self.place_keys(fields, vec![v], vals);
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
        self.place_keys(fields, keys, vals);
        Ok(())
    }

    /// A delete's row into `vals`: the key columns' values `keys` (in `upsert.key` order), the
    /// other columns null.
    fn place_keys<'a>(&self, fields: &[FieldConfig], keys: Vec<Val<'a>>, vals: &mut Vec<Val<'a>>) {
        vals.clear();
        vals.extend(fields.iter().map(|_| Val::Null));
        for (i, v) in self.key.iter().zip(keys) {
            vals[*i] = v;
        }
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

/// Whether a Debezium event's `op` deletes (`d`) or upserts (`c`, `r`, `u`); anything else
/// is not a change an upsert table can take.
fn op_deletes(op: Option<&str>) -> Result<bool, Rejected> {
    match op {
        Some("c" | "r" | "u") => Ok(false),
        Some("d") => Ok(true),
        Some("t") => Err(not_a_change("is a truncate (op `t`), which an upsert table cannot take; truncate the table by hand, or skip truncates in the connector (skipped.operations = \"t\")".into())),
        Some(other) => Err(not_a_change(format!("has op {other:?}; a change is `c`, `r`, `u` or `d`"))),
        None => Err(not_a_change("is not a Debezium change event: it has no `op`".into())),
    }
}

fn unwrap_union(v: &AvroValue) -> &AvroValue {
    match v {
        AvroValue::Union(_, inner) => unwrap_union(inner),
        v => v,
    }
}

/// The integer at `path` in an Avro Debezium event (`source.lsn`).
fn avro_sequence(event: &[(String, AvroValue)], path: &[String]) -> Result<i64, Rejected> {
    let shown = path.join(".");
    let mut members = event;
    let mut at = None;
    for (i, step) in path.iter().enumerate() {
        let v = members.iter().find(|(name, _)| name == step).map(|(_, v)| unwrap_union(v));
        match (v, i + 1 == path.len()) {
            (Some(v), true) => at = Some(v),
            (Some(AvroValue::Record(inner)), false) => members = inner,
            _ => break,
        }
    }
    match at {
        Some(AvroValue::Long(n)) => Ok(*n),
        Some(AvroValue::Int(n)) => Ok(i64::from(*n)),
        Some(AvroValue::String(s)) if s.parse::<i64>().is_ok() => Ok(s.parse().expect("parsed")),
        Some(other) => Err(not_a_change(format!("has `{shown}` = {other:?}, not an integer sequence"))),
        None => Err(not_a_change(format!("has no upsert.sequence_by value at `{shown}`"))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;
    use crate::model::{Record, TopicPartition};
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::{Int64Type, TimestampMicrosecondType};

    /// Debezium's envelope for a table `(id bigint primary key, name text, updated timestamptz,
    /// created timestamp)`, as the Connect Avro converters write it.
    const ENVELOPE: &str = r#"{"type": "record", "name": "Envelope", "namespace": "shop.public.orders", "fields": [
        {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [
            {"name": "id", "type": "long"},
            {"name": "name", "type": ["null", "string"], "default": null},
            {"name": "updated", "type": ["null", {"type": "string", "connect.version": 1, "connect.name": "io.debezium.time.ZonedTimestamp"}], "default": null},
            {"name": "created", "type": ["null", {"type": "long", "connect.version": 1, "connect.name": "io.debezium.time.MicroTimestamp"}], "default": null}
        ], "connect.name": "shop.public.orders.Value"}], "default": null},
        {"name": "after", "type": ["null", "Value"], "default": null},
        {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
            "fields": [{"name": "lsn", "type": ["null", "long"], "default": null}]}},
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"], "default": null}
    ]}"#;
    const KEY: &str =
        r#"{"type": "record", "name": "Key", "namespace": "shop.public.orders", "fields": [{"name": "id", "type": "long"}]}"#;

    fn framed(id: u32, schema: &str, value: AvroValue) -> Vec<u8> {
        let schema = apache_avro::Schema::parse_str(schema).unwrap();
        [vec![0], id.to_be_bytes().to_vec(), apache_avro::to_avro_datum(&schema, value).unwrap()].concat()
    }

    fn row(id: i64, name: Option<&str>, updated: Option<&str>, created: Option<i64>) -> AvroValue {
        let opt = |v: Option<AvroValue>| match v {
            Some(v) => AvroValue::Union(1, Box::new(v)),
            None => AvroValue::Union(0, Box::new(AvroValue::Null)),
        };
        AvroValue::Record(vec![
            ("id".into(), AvroValue::Long(id)),
            ("name".into(), opt(name.map(|n| AvroValue::String(n.into())))),
            ("updated".into(), opt(updated.map(|u| AvroValue::String(u.into())))),
            ("created".into(), opt(created.map(AvroValue::Long))),
        ])
    }

    fn event(op: &str, before: Option<AvroValue>, after: Option<AvroValue>, lsn: Option<i64>) -> Vec<u8> {
        let side = |v: Option<AvroValue>| match v {
            Some(v) => AvroValue::Union(1, Box::new(v)),
            None => AvroValue::Union(0, Box::new(AvroValue::Null)),
        };
        let lsn = match lsn {
            Some(l) => AvroValue::Union(1, Box::new(AvroValue::Long(l))),
            None => AvroValue::Union(0, Box::new(AvroValue::Null)),
        };
        let value = AvroValue::Record(vec![
            ("before".into(), side(before)),
            ("after".into(), side(after)),
            ("source".into(), AvroValue::Record(vec![("lsn".into(), lsn)])),
            ("op".into(), AvroValue::String(op.into())),
            ("ts_ms".into(), AvroValue::Union(0, Box::new(AvroValue::Null))),
        ]);
        framed(1, ENVELOPE, value)
    }

    fn record(offset: i64, key: i64, value: Option<Vec<u8>>) -> Record {
        Record {
            tp: TopicPartition::new("t", 0),
            offset,
            timestamp_ms: Some(1_000),
            key: Some(framed(2, KEY, AvroValue::Record(vec![("id".into(), AvroValue::Long(key))]))),
            payload: value,
            headers: Vec::new(),
        }
    }

    #[test]
    fn debezium_avro_events_become_changes_with_connect_s_temporal_types() {
        let dir = tempfile::tempdir().unwrap();
        let schemas = dir.path().join("schemas");
        std::fs::create_dir_all(&schemas).unwrap();
        std::fs::write(schemas.join("1.avsc"), ENVELOPE).unwrap();
        std::fs::write(schemas.join("2.avsc"), KEY).unwrap();
        std::fs::write(dir.path().join("envelope.avsc"), ENVELOPE).unwrap();
        let config: crate::config::DecodeConfig = toml::from_str(&format!(
            "format = \"avro\"\nenvelope = \"debezium\"\navro = {{ schema_file = {:?}, framing = \"confluent\", schemas_dir = {:?} }}",
            dir.path().join("envelope.avsc"),
            schemas
        ))
        .unwrap();
        let upsert = UpsertConfig { key: vec!["id".into()], sequence_by: Some("source.lsn".into()) };
        let decoder = Decoder::new(&config).unwrap().changing(Some(&upsert), Envelope::Debezium).unwrap();
        let kinds: Vec<String> = decoder.fields().iter().map(|f| format!("{} {}", f.name, f.kind)).collect();
        assert_eq!(kinds, ["id long", "name string", "updated timestamp", "created timestamp"], "the `after` record's columns");

        let a = row(1, Some("a"), Some("2026-01-01T00:00:01.5Z"), Some(1_000_000));
        let out = decoder.decode(&[
            record(0, 1, Some(event("c", None, Some(a.clone()), Some(10)))),
            record(1, 1, Some(event("u", Some(a), Some(row(1, Some("b"), None, None)), Some(20)))),
            record(2, 2, Some(event("d", Some(row(2, None, None, None)), None, Some(30)))),
            record(3, 2, None),
            record(4, 1, Some(event("t", None, None, Some(40)))),
            record(5, 1, Some(event("u", None, Some(row(1, Some("c"), None, None)), None))),
            record(6, 3, Some(event("c", None, None, Some(50)))),
        ]);
        let reasons: Vec<&str> = out.dead.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(out.dead.iter().map(|d| d.offset).collect::<Vec<_>>(), [4, 5, 6], "{reasons:?}");
        assert!(reasons[0].contains("truncate") && reasons[1].contains("source.lsn") && reasons[2].contains("without `after`"));
        let rows = &out.rows;
        let col = |name: &str| rows.column_by_name(name).unwrap().clone();
        let ids: Vec<i64> = col("id").as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ids, [1, 1, 2, 2]);
        let deletes: Vec<bool> = col(crate::model::CHANGE_DELETE_COL).as_boolean().iter().map(Option::unwrap).collect();
        assert_eq!(deletes, [false, false, true, true]);
        let sequences: Vec<Option<i64>> = col(crate::model::CHANGE_SEQUENCE_COL).as_primitive::<Int64Type>().iter().collect();
        assert_eq!(sequences, [Some(10), Some(20), Some(30), None], "a tombstone has no sequence");
        let updated = col("updated");
        let updated = updated.as_primitive::<TimestampMicrosecondType>();
        assert_eq!((updated.value(0), updated.is_null(1)), (1_767_225_601_500_000, true), "ISO 8601 read as its instant");
        let created = col("created");
        assert_eq!(created.as_primitive::<TimestampMicrosecondType>().value(0), 1_000_000, "micros since the epoch");
        assert_eq!(col("name").as_string::<i32>().value(1), "b");
    }
}
