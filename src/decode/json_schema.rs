//! JSON values typed by a JSON Schema from the registry (`decode.json`): the schema's object
//! `properties`, in order, are the columns, and each record is decoded against them as against
//! `decode.fields` — so a record missing a `required` property, or holding a value of another
//! type, is a dead letter with the reason.
//!
//! Types: `string` (`format: date-time` → `timestamp`, `format: date` → `date`), `integer` →
//! `long`, `number` → `double`, `boolean`, `array` with `items` → `array`, `object` with
//! `properties` → `struct`, `object` with only `additionalProperties` → `map<string, T>`,
//! `enum`/`const` of strings → `string`; Kafka Connect's `connect.type` (`int8`/`int16`/`int32`
//! → `int`, `float32` → `float`, `bytes` → `binary` as base64) is honoured. `["null", T]`, and a
//! `oneOf`/`anyOf` of `null` and one type, are nullable; `$ref`s into the schema's own
//! `definitions`/`$defs` are followed. A property is not null when it is `required` and its type
//! admits no null. Anything else (a union of two types, a recursive `$ref`, an object without
//! properties) has no column type, and the schema is refused with the property's path.

use serde_json::Value;

use super::evolve::{Added, WriterColumns};
use super::registry::{confluent_id, not_confluent, ById, Registry, SchemaType};
use super::{Rejected, Rejection, Val};
use crate::config::{FieldConfig, FieldType, JsonSchemaConfig, WireFraming};

/// A writer JSON Schema as decoding uses it.
#[derive(Debug)]
struct Writer {
    /// Its columns beyond the reader schema's.
    columns: WriterColumns,
    /// What its records are read against with those columns in the batch: the reader schema's
    /// columns, then its own (a column it lacks is null whatever the record holds, so a row
    /// never depends on which records came before it).
    read: Vec<FieldConfig>,
}

/// JSON values framed for the registry: the framing, the ids of the JSON Schemas it knows, and
/// the columns their properties add beyond the reader schema's.
#[derive(Debug)]
pub struct JsonSchema {
    framing: WireFraming,
    /// The reader schema's columns.
    reader: Vec<FieldConfig>,
    /// The ids seen: each a JSON Schema the registry knows, or why its records are dead letters.
    ids: ById<Writer>,
    /// The columns writer schemas added (`sink.schema_evolution = "add-columns"`).
    added: Added,
}

impl JsonSchema {
    /// The setup `config` names, and the columns of its reader schema (fetched by the plan);
    /// the error is one line.
    pub fn load(config: &JsonSchemaConfig) -> Result<(JsonSchema, Vec<FieldConfig>), String> {
        let subject = &config.reader_subject;
        let Some(text) = &config.reader_text else {
            return Err(format!("reader_subject {subject:?}: the reader schema was not fetched (the plan fetches it: Plan::of)"));
        };
        let fields = columns(text).map_err(|e| format!("the registry's subject {subject:?}: {e}"))?;
        let registry = Registry::new(&config.registry).map_err(|e| format!("decode.json.{e}"))?;
        let ids = ById::new(registry, SchemaType::Json);
        Ok((JsonSchema { framing: config.framing, reader: fields.clone(), ids, added: Added::default() }, fields))
    }

    /// The columns writer schemas added so far.
    pub(super) fn added(&self) -> Vec<(FieldConfig, deltalake::arrow::datatypes::Field)> {
        self.added.columns()
    }

    /// Takes the columns the writer schemas of `values` add into the decoder's (see
    /// [`Added::grow`]).
    pub(super) fn grow<'v>(&self, values: impl Iterator<Item = &'v [u8]>) -> Result<(), String> {
        if self.framing == WireFraming::None {
            return Ok(());
        }
        for (id, _) in values.filter_map(confluent_id) {
            if let Ok(writer) = self.ids.get(id) {
                self.added.grow(&writer.columns)?;
            }
        }
        Ok(())
    }

    /// Asks the registry whether it answers; its address when it does.
    pub async fn check_registry(&self) -> Result<String, String> {
        self.ids.registry().check().await.map(|()| self.ids.registry().url().to_string())
    }

    /// Asks the registry for the ids among `values` no earlier batch asked for. `Err`: the
    /// registry could not be asked (the batch must not be decoded).
    pub async fn prepare<'v>(&self, values: impl Iterator<Item = &'v [u8]>) -> Result<(), String> {
        if self.framing == WireFraming::None {
            return Ok(());
        }
        let ids = values.filter_map(confluent_id).map(|(id, _)| id);
        self.ids
            .prepare(ids, |id, fetched| {
                serde_json::from_str::<Value>(&fetched.text)
                    .map_err(|e| format!("writer schema id {id} from the registry is not JSON: {e}"))?;
                // Its properties beyond the reader schema's, each a nullable column.
                let added: Result<Vec<FieldConfig>, String> = columns(&fetched.text).map(|all| {
                    all.into_iter()
                        .filter(|c| !self.reader.iter().any(|r| r.name == c.name))
                        .map(|c| FieldConfig { nullable: true, ..c })
                        .collect()
                });
                let read = self.reader.iter().chain(added.iter().flatten()).cloned().collect();
                Ok(Writer { columns: WriterColumns::new(format!("writer schema id {id}"), added), read })
            })
            .await
    }

    /// The column values of one framed value into `vals`: the reader schema's columns, then — when `added` is given — the columns writer schemas added, each null when
    /// the value's own writer schema lacks it. `Err`: not in the framing, an id the registry
    /// does not know as a JSON Schema, or a value its columns refuse.
    pub(super) fn values<'a>(
        &self,
        bytes: &'a [u8],
        added: Option<&[FieldConfig]>,
        vals: &mut Vec<Val<'a>>,
        slots: &mut super::json::Slots<'a>,
    ) -> Result<(), Rejected> {
        let (body, writer) = match self.framing {
            WireFraming::None => (bytes, None),
            WireFraming::Confluent => {
                let (id, body) = confluent_id(bytes).ok_or_else(|| not_confluent(bytes, Rejection::InvalidJson))?;
                (body, Some(self.ids.get(id)?))
            }
        };
        let text = super::utf8("value", body)?;
        let (Some(added), Some(writer)) = (added, writer) else {
            super::json::values(&self.reader, text, vals, slots)?;
            vals.extend(added.unwrap_or_default().iter().map(|_| Val::Null));
            return Ok(());
        };
        writer.columns.in_batch(added)?;
        let reader = self.reader.len();
        super::json::values(&writer.read, text, vals, slots)?;
        let mut own: Vec<(&str, Option<Val<'a>>)> =
            writer.read[reader..].iter().map(|c| c.name.as_str()).zip(vals.drain(reader..).map(Some)).collect();
        for c in added {
            vals.push(own.iter_mut().find(|(name, _)| *name == c.name).and_then(|(_, v)| v.take()).unwrap_or(Val::Null));
        }
        Ok(())
    }
}

/// The columns a JSON Schema's top-level object gives.
pub fn columns(text: &str) -> Result<Vec<FieldConfig>, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("the JSON Schema is not JSON: {e}"))?;
    let mut stack = Vec::new();
    match object_members(text, &root, &root, &mut stack, "")? {
        Some(members) if !members.is_empty() => Ok(members),
        _ => Err("the JSON Schema is not an object with properties".into()),
    }
}

/// The members of an object schema (`Some` when it has `properties`), in the order of its text.
fn object_members(
    text: &str,
    schema: &Value,
    root: &Value,
    stack: &mut Vec<String>,
    at: &str,
) -> Result<Option<Vec<FieldConfig>>, String> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return Ok(None) };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // serde_json's map is sorted; the order of the text is read from the text itself.
    let order = ordered_keys(text, at).unwrap_or_else(|| properties.keys().cloned().collect());
    let mut members = Vec::with_capacity(properties.len());
    for name in order {
        let Some(property) = properties.get(&name) else { continue };
        let path = if at.is_empty() { name.clone() } else { format!("{at}.{name}") };
        let (kind, nullable) = column_type(text, property, root, stack, &path)?;
        members.push(FieldConfig { kind, nullable: nullable || !required.contains(&name.as_str()), name });
    }
    Ok(Some(members))
}

/// The keys of the `properties` object at path `at` (dot-separated property names) in the
/// schema's text, in order; `None` when the path passes through a `$ref` or a union.
fn ordered_keys(text: &str, at: &str) -> Option<Vec<String>> {
    let mut object = text;
    for step in at.split('.').filter(|s| !s.is_empty()) {
        let properties = member(object, "properties")?;
        object = member(properties, step)?;
    }
    let properties = member(object, "properties")?;
    Some(super::json::entries(properties).ok()?.into_iter().map(|(k, _)| k.into_owned()).collect())
}

/// The text of member `name` of the JSON object `text`.
fn member<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    super::json::entries(text).ok()?.into_iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.get())
}

/// The column type of a property's schema, and whether it admits null.
fn column_type(text: &str, schema: &Value, root: &Value, stack: &mut Vec<String>, at: &str) -> Result<(FieldType, bool), String> {
    let none = |what: &str| Err(format!("property `{at}`: {what} has no column type"));
    let Some(schema) = schema.as_object() else { return none("a schema that is not an object") };
    if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
        if stack.iter().any(|s| s == target) {
            return none(&format!("the recursive $ref {target:?}"));
        }
        let resolved = target
            .strip_prefix("#/")
            .and_then(|path| path.split('/').try_fold(root, |v, step| v.get(step)))
            .ok_or_else(|| format!("property `{at}`: $ref {target:?} is not in the schema's own definitions"))?;
        stack.push(target.to_string());
        // Behind a `$ref` the text's order is not followed: the members are in the map's order.
        let t = column_type("", resolved, root, stack, at);
        stack.pop();
        return t;
    }
    for union in ["oneOf", "anyOf"] {
        if let Some(Value::Array(branches)) = schema.get(union) {
            let others: Vec<&Value> = branches.iter().filter(|b| b.get("type").and_then(Value::as_str) != Some("null")).collect();
            return match others.as_slice() {
                [one] => Ok((column_type("", one, root, stack, at)?.0, others.len() < branches.len())),
                _ => none(&format!("a {union} of other than null and one type")),
            };
        }
    }
    let (kind, nullable) = match schema.get("type") {
        Some(Value::String(t)) => (t.as_str(), false),
        Some(Value::Array(types)) => {
            let others: Vec<&str> = types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
            match others.as_slice() {
                [one] => (*one, others.len() < types.len()),
                _ => return none("a type list of other than null and one type"),
            }
        }
        None if schema.contains_key("enum") || schema.contains_key("const") => ("string", false),
        _ => return none("a schema without a type"),
    };
    let connect = schema.get("connect.type").and_then(Value::as_str);
    let t = match (kind, connect) {
        ("integer", Some("int8" | "int16" | "int32")) => FieldType::Int,
        ("integer", _) => FieldType::Long,
        ("number", Some("float32")) => FieldType::Float,
        ("number", _) => FieldType::Double,
        ("boolean", _) => FieldType::Boolean,
        ("string", Some("bytes")) => FieldType::Binary,
        ("string", _) => match schema.get("format").and_then(Value::as_str) {
            Some("date-time") => FieldType::Timestamp,
            Some("date") => FieldType::Date,
            _ => FieldType::String,
        },
        ("array", _) => match schema.get("items") {
            Some(items) => FieldType::List(Box::new(column_type("", items, root, stack, &format!("{at}[]"))?.0)),
            None => return none("an array without items"),
        },
        ("object", _) => match object_members(text, &Value::Object(schema.clone()), root, stack, at)? {
            Some(members) if !members.is_empty() => FieldType::Struct(members),
            _ => match schema.get("additionalProperties") {
                Some(values @ Value::Object(_)) => {
                    FieldType::Map(Box::new(column_type("", values, root, stack, &format!("{at}{{}}"))?.0))
                }
                _ => return none("an object without properties or additionalProperties"),
            },
        },
        (other, _) => return none(&format!("type {other:?}")),
    };
    Ok((t, nullable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_s_properties_are_the_columns_in_order() {
        let schema = r##"{
          "$schema": "http://json-schema.org/draft-07/schema#",
          "title": "Order", "type": "object",
          "properties": {
            "id": {"type": "integer"},
            "customer": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "connect.type": "int32"}}, "required": ["name"]},
            "at": {"type": "string", "format": "date-time"},
            "day": {"type": ["null", "string"], "format": "date"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "attrs": {"type": "object", "additionalProperties": {"type": "number"}},
            "ok": {"type": "boolean"},
            "status": {"enum": ["NEW", "PAID"]},
            "note": {"oneOf": [{"type": "null"}, {"type": "string"}]},
            "ship": {"$ref": "#/definitions/Address"}
          },
          "required": ["id", "at", "day", "note"],
          "definitions": {"Address": {"type": "object", "properties": {"city": {"type": "string"}}}}
        }"##;
        let got: Vec<String> = columns(schema)
            .unwrap()
            .iter()
            .map(|f| format!("{}: {}{}", f.name, f.kind, if f.nullable { "" } else { " not null" }))
            .collect();
        assert_eq!(
            got,
            [
                "id: long not null",
                "customer: struct<name: string not null, age: int>",
                "at: timestamp not null",
                "day: date",
                "tags: array<string>",
                "attrs: map<string, double>",
                "ok: boolean",
                "status: string",
                "note: string",
                "ship: struct<city: string>",
            ],
            "in the text's order; required and not nullable is not null"
        );
        for (bad, why) in [
            (r#"{"type": "array"}"#, "not an object with properties"),
            (r#"{"type": "object", "properties": {"x": {"type": ["string", "integer"]}}}"#, "property `x`: a type list"),
            (
                r##"{"type": "object", "properties": {"n": {"$ref": "#/definitions/N"}}, "definitions": {"N": {"type": "object", "properties": {"next": {"$ref": "#/definitions/N"}}}}}"##,
                "property `n.next`: the recursive $ref",
            ),
            (r#"{"type": "object", "properties": {"o": {"type": "object"}}}"#, "property `o`: an object without properties"),
        ] {
            let e = columns(bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
