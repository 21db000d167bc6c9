//! The Avro format: each value is one Avro datum in binary, framed as `decode.avro.framing`
//! says —
//!
//! - `none`: the bare body, written with the reader schema itself;
//! - `confluent`: the Confluent wire format: magic byte `0`, the writer schema's id (4 bytes,
//!   big-endian), the body;
//! - `single-object`: Avro's single-object encoding: `C3 01`, the writer schema's CRC-64-AVRO
//!   fingerprint (8 bytes, little-endian), the body.
//!
//! The reader schema (`decode.avro.schema_file`, a record) gives the table's columns, each the
//! Delta type Spark's `from_avro` gives it. Writer schemas come from `decode.avro.schemas_dir`
//! (`<id>.avsc` for Confluent ids; any `.avsc` for fingerprints; the reader schema is always
//! known). A datum is read with its writer schema and resolved to the reader schema by Avro's
//! rules (a field the writer lacks takes the reader's default, a field the reader lacks is
//! skipped, `int` → `long` → `float` → `double` promotions), so one table holds every version
//! of a topic's schema. An unknown schema id or fingerprint, a wrong frame, a body that does not
//! decode or resolve, or a value that does not fit its column is a dead letter with the reason.
//!
//! With `sink.schema_evolution = "add-columns"` the fields a writer schema has beyond the reader
//! schema's become columns too (`Avro::grow`): the first record written with such a schema
//! brings its new fields to the table, without a restart. Each such column is nullable and
//! holds exactly what the record's own writer schema gives (null when it lacks the field), so a
//! row never depends on which records were decoded before it.

use deltalake::arrow::datatypes::Field;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::types::Value;
use apache_avro::Schema;

use super::evolve::{Added, WriterColumns};
use super::registry::{confluent_id, ById, Registry, SchemaType};
use super::{Rejected, Rejection, Val};
use crate::config::{AvroConfig, AvroFraming, FieldConfig, FieldType};

/// Where the writer schema of each value comes from.
#[derive(Debug)]
enum Writers {
    /// `framing = "none"`: the reader schema.
    Reader(Arc<Writer>),
    /// Confluent ids: from `schemas_dir`, then from the registry.
    ById { dir: HashMap<u32, Arc<Writer>>, registry: Option<ById<Writer>> },
    /// Single-object fingerprints (little-endian CRC-64-AVRO).
    ByFingerprint(HashMap<[u8; 8], Arc<Writer>>),
}

/// A writer schema as decoding uses it.
#[derive(Debug)]
struct Writer {
    /// The schema, as given to `apache-avro` (see [`resolvable`]).
    schema: Schema,
    /// Its label and the columns its fields give beyond the reader schema's.
    columns: WriterColumns,
}

impl Writer {
    fn new(label: String, schema: &Schema, reader: &[FieldConfig]) -> Writer {
        Writer { schema: resolvable(schema), columns: WriterColumns::new(label, added_columns(schema, reader)) }
    }
}

/// A loaded Avro setup: the reader schema, its columns, the writer schemas.
#[derive(Debug)]
pub struct Avro {
    reader: Schema,
    fields: Vec<FieldConfig>,
    framing: AvroFraming,
    writers: Writers,
    /// The columns writer schemas added beyond the reader schema's (only grown when the
    /// pipeline takes writer fields as columns).
    added: Added,
}

impl Avro {
    /// Reads and checks the schemas `config` names; the error is one line naming the file and
    /// the problem.
    /// `row_field`: the field of the reader schema whose record type gives the columns
    /// (Debezium's envelope: `after`); `None`: the reader schema's own fields.
    pub fn load(config: &AvroConfig, row_field: Option<&str>) -> Result<Avro, String> {
        let (reader, reader_fp, zoned, origin) = match (&config.schema_file, &config.reader_subject, &config.reader_text) {
            (Some(path), _, _) => {
                let (schema, fp, zoned) = read_schema(path)?;
                (schema, fp, zoned, path.display().to_string())
            }
            (None, Some(subject), Some(text)) => {
                let origin = format!("the registry's subject {subject:?}");
                let (schema, fp, zoned) = parse_schema(text, &origin)?;
                (schema, fp, zoned, origin)
            }
            (None, Some(subject), None) => {
                return Err(format!(
                    "reader_subject {subject:?}: the reader schema was not fetched (the plan fetches it: Plan::of)"
                ))
            }
            (None, None, _) => return Err("needs the reader schema: schema_file or reader_subject".into()),
        };
        let fields = match row_field {
            None => columns(&reader),
            Some(field) => row_columns(&reader, field),
        }
        .map(|columns| zoned_timestamps(columns, &zoned))
        .map_err(|e| format!("{origin}: {e}"))?;
        if config.registry.is_some() && config.framing != AvroFraming::Confluent {
            return Err(
                "registry finds writer schemas by the id of the Confluent wire format: set framing = \"confluent\"".into()
            );
        }
        let writers = match config.framing {
            AvroFraming::None => Writers::Reader(Arc::new(Writer::new("the reader schema".into(), &reader, &fields))),
            AvroFraming::Confluent => {
                let mut by_id = HashMap::new();
                for (path, stem) in schema_files(config.schemas_dir.as_deref())? {
                    let id: u32 = stem.parse().map_err(|_| {
                        format!("{}: with confluent framing, schema files are named by their id, like 42.avsc", path.display())
                    })?;
                    by_id.insert(id, Arc::new(Writer::new(format!("writer schema id {id}"), &read_schema(&path)?.0, &fields)));
                }
                let registry = config.registry.as_ref().map(Registry::new).transpose().map_err(|e| format!("decode.avro.{e}"))?;
                Writers::ById { dir: by_id, registry: registry.map(|r| ById::new(r, SchemaType::Avro)) }
            }
            AvroFraming::SingleObject => {
                let label = |fp: [u8; 8]| format!("writer schema fingerprint {:016x}", u64::from_le_bytes(fp));
                let mut by_fingerprint = HashMap::from([(reader_fp, Arc::new(Writer::new(label(reader_fp), &reader, &fields)))]);
                for (path, _) in schema_files(config.schemas_dir.as_deref())? {
                    let (schema, fp, _) = read_schema(&path)?;
                    by_fingerprint.insert(fp, Arc::new(Writer::new(label(fp), &schema, &fields)));
                }
                Writers::ByFingerprint(by_fingerprint)
            }
        };
        Ok(Avro { reader: resolvable(&reader), fields, framing: config.framing, writers, added: Added::default() })
    }

    /// Asks the schema registry, if one is configured, whether it answers (see
    /// [`Registry::check`]); its address when it does.
    pub async fn check_registry(&self) -> Result<Option<String>, String> {
        match &self.writers {
            Writers::ById { registry: Some(by_id), .. } => {
                by_id.registry().check().await.map(|()| Some(by_id.registry().url().to_string()))
            }
            _ => Ok(None),
        }
    }

    /// The columns the reader schema gives.
    pub fn fields(&self) -> &[FieldConfig] {
        &self.fields
    }

    /// The columns writer schemas added so far (see [`Avro::grow`]).
    pub(super) fn added(&self) -> Vec<(FieldConfig, Field)> {
        self.added.columns()
    }

    /// The column values of one Avro value into `vals`, or why it cannot be decoded: the
    /// reader schema's columns, then — when `added` is given — the columns writer schemas
    /// added.
    pub(super) fn values<'a>(
        &self,
        bytes: &[u8],
        vals: &mut Vec<Val<'a>>,
        added: Option<&[FieldConfig]>,
    ) -> Result<(), Rejected> {
        let (writer, body) = self.writer(bytes)?;
        self.resolve(&writer, body, vals, added)
    }

    /// An Avro value resolved to the reader schema, as its record's members (a Debezium change
    /// event: `op`, `before`, `after`, `source`, ...).
    pub(super) fn record(&self, bytes: &[u8]) -> Result<Vec<(String, Value)>, Rejected> {
        let (writer, body) = self.writer(bytes)?;
        let value = datum(&writer, body)?.resolve(&self.reader).map_err(|e| {
            (Rejection::InvalidAvro, format!("{} does not resolve to the reader schema: {e}", writer.columns.label))
        })?;
        match value {
            Value::Record(members) => Ok(members),
            _ => Err((Rejection::InvalidAvro, "the Avro value is not a record".into())),
        }
    }

    /// An Avro value read with its writer schema alone, as its record's members: a Kafka key,
    /// whose schema is not the reader schema.
    pub(super) fn own_record(&self, bytes: &[u8]) -> Result<Vec<(String, Value)>, Rejected> {
        let (writer, body) = self.writer(bytes)?;
        match datum(&writer, body)? {
            Value::Record(members) => Ok(members),
            _ => Err((Rejection::InvalidAvro, "the Avro key is not a record".into())),
        }
    }

    /// The writer schema of a value and the value's Avro body.
    fn writer<'b>(&self, bytes: &'b [u8]) -> Result<(Arc<Writer>, &'b [u8]), Rejected> {
        let corrupt = |why: String| (Rejection::InvalidAvro, why);
        match (&self.framing, &self.writers) {
            (_, Writers::Reader(reader)) => Ok((reader.clone(), bytes)),
            (AvroFraming::Confluent, Writers::ById { dir, registry }) => {
                let (id, body) =
                    confluent_id(bytes).ok_or_else(|| super::registry::not_confluent(bytes, Rejection::InvalidAvro))?;
                match (dir.get(&id), registry) {
                    (Some(writer), _) => Ok((writer.clone(), body)),
                    (None, None) => {
                        Err((Rejection::UnknownSchema, format!("unknown writer schema id {id} (not in decode.avro.schemas_dir)")))
                    }
                    (None, Some(by_id)) => Ok((by_id.get(id)?, body)),
                }
            }
            (_, Writers::ByFingerprint(by_fingerprint)) => {
                if bytes.len() < 10 || bytes[..2] != [0xc3, 0x01] {
                    return Err(corrupt(format!(
                        "not in Avro's single-object encoding (C3 01, an 8-byte fingerprint): starts with {:02x?}",
                        &bytes[..bytes.len().min(10)]
                    )));
                }
                let fp: [u8; 8] = bytes[2..10].try_into().expect("8 bytes");
                let writer = by_fingerprint.get(&fp).ok_or_else(|| {
                    (
                        Rejection::UnknownSchema,
                        format!(
                            "unknown writer schema fingerprint {:016x} (neither the reader schema nor one in decode.avro.schemas_dir)",
                            u64::from_le_bytes(fp)
                        ),
                    )
                })?;
                Ok((writer.clone(), &bytes[10..]))
            }
            (framing, writers) => unreachable!("{framing:?} loads no {writers:?}"),
        }
    }

    /// Takes the columns the writer schemas of `values` add beyond the reader schema's into the
    /// decoder's columns (once per writer schema). `Err`: a writer schema gives a column
    /// another one already gave with another type — one column cannot hold both, and which
    /// one came first must not decide a row, so the batch is not decoded.
    pub(super) fn grow<'v>(&self, values: impl Iterator<Item = &'v [u8]>) -> Result<(), String> {
        for bytes in values {
            let Ok((writer, _)) = self.writer(bytes) else { continue };
            self.added.grow(&writer.columns)?;
        }
        Ok(())
    }

    /// Fetches the writer schemas of the Confluent ids among `values` that neither
    /// `schemas_dir` nor an earlier fetch knows, so [`Avro::values`] finds every one. `Err`: the
    /// registry could not be asked (the batch must not be decoded).
    pub(super) async fn prepare<'v>(&self, values: impl Iterator<Item = &'v [u8]>) -> Result<(), String> {
        let Writers::ById { dir, registry: Some(by_id) } = &self.writers else { return Ok(()) };
        let ids = values.filter_map(confluent_id).map(|(id, _)| id).filter(|id| !dir.contains_key(id));
        by_id
            .prepare(ids, |id, fetched| {
                let text = super::registry::inlined(&fetched).map_err(|why| format!("writer schema id {id}: {why}"))?;
                let schema = Schema::parse_str(&connect_types(&text).0)
                    .map_err(|e| format!("writer schema id {id} from the registry is not an Avro schema: {e}"))?;
                columns_check(&schema).map_err(|why| format!("writer schema id {id}: {why}"))?;
                Ok(Writer::new(format!("writer schema id {id}"), &schema, &self.fields))
            })
            .await
    }

    /// One body read with `writer` and resolved to the reader schema, into `vals`; then, when
    /// `added` is given, the values of those columns the writer schema has.
    fn resolve<'a>(
        &self,
        writer: &Writer,
        body: &[u8],
        vals: &mut Vec<Val<'a>>,
        added: Option<&[FieldConfig]>,
    ) -> Result<(), Rejected> {
        let corrupt = |why: String| (Rejection::InvalidAvro, why);
        let value = datum(writer, body)?;
        // The writer's own fields beyond the reader schema, taken out before resolution
        // skips them.
        let mut own: Vec<(String, Value)> = Vec::new();
        let value = match (added, value) {
            (Some(added), Value::Record(mut members)) => {
                for c in writer.columns.in_batch(added)? {
                    if let Some((_, v)) = members.iter_mut().find(|(name, _)| *name == c.name) {
                        own.push((c.name.clone(), std::mem::replace(v, Value::Null)));
                    }
                }
                Value::Record(members)
            }
            (_, value) => value,
        };
        let value = value
            .resolve(&self.reader)
            .map_err(|e| corrupt(format!("{} does not resolve to the reader schema: {e}", writer.columns.label)))?;
        let Value::Record(members) = value else {
            return Err(corrupt("the Avro value is not a record".into()));
        };
        row(&self.fields, members, vals)?;
        for c in added.unwrap_or_default() {
            let v = own.iter().position(|(name, _)| *name == c.name).map_or(Value::Null, |i| own.swap_remove(i).1);
            vals.push(val(&c.kind, v, &c.name)?);
        }
        Ok(())
    }
}

/// The values of `fields` from a record's members into `vals` (a member missing: null).
pub(super) fn row(fields: &[FieldConfig], members: Vec<(String, Value)>, vals: &mut Vec<Val<'_>>) -> Result<(), Rejected> {
    let mut members: HashMap<String, Value> = members.into_iter().collect();
    for f in fields {
        let v = members.remove(&f.name).unwrap_or(Value::Null);
        vals.push(val(&f.kind, v, &f.name)?);
    }
    Ok(())
}

/// An Avro body read with its writer schema; nothing may follow it.
fn datum(writer: &Writer, mut body: &[u8]) -> Result<Value, Rejected> {
    let corrupt = |why: String| (Rejection::InvalidAvro, why);
    let value = apache_avro::from_avro_datum(&writer.schema, &mut body, None)
        .map_err(|e| corrupt(format!("the Avro body does not decode with its writer schema: {e}")))?;
    if !body.is_empty() {
        return Err(corrupt(format!("{} bytes follow the Avro record", body.len())));
    }
    Ok(value)
}

/// A writer schema is usable when it is a record (resolution then says whether it fits the
/// reader schema).
fn columns_check(schema: &Schema) -> Result<(), String> {
    match schema {
        Schema::Record(_) => Ok(()),
        _ => Err("not a record".into()),
    }
}

/// A schema and the little-endian CRC-64-AVRO fingerprint of its Parsing Canonical Form (what
/// single-object encoding frames a value with).
fn read_schema(path: &Path) -> Result<(Schema, [u8; 8], HashSet<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read Avro schema {}: {e}", path.display()))?;
    parse_schema(&text, &path.display().to_string())
}

/// [`read_schema`] of a schema's text; `origin` names it in errors.
fn parse_schema(text: &str, origin: &str) -> Result<(Schema, [u8; 8], HashSet<String>), String> {
    let (typed, zoned) = connect_types(text);
    let schema = Schema::parse_str(&typed).map_err(|e| format!("{origin} is not an Avro schema: {e}"))?;
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("{origin} is not JSON: {e}"))?;
    let mut canonical = String::new();
    canonical_form(&json, None, &mut canonical);
    Ok((schema, crc64_avro(canonical.as_bytes()).to_le_bytes(), zoned))
}

/// Kafka Connect's semantic types (`connect.name`, as Debezium's connectors and the Connect
/// Avro converters write them) that Avro spells as a plain `long` or `int`, and the Avro
/// logical type that reads them as Spark would want them: timestamps and dates.
const CONNECT_LOGICAL: &[(&str, &str)] = &[
    ("io.debezium.time.MicroTimestamp", "timestamp-micros"),
    ("io.debezium.time.Timestamp", "timestamp-millis"),
    ("org.apache.kafka.connect.data.Timestamp", "timestamp-millis"),
    ("io.debezium.time.Date", "date"),
    ("org.apache.kafka.connect.data.Date", "date"),
];

/// Debezium's `timestamptz`: an ISO 8601 string with its offset.
const ZONED_TIMESTAMP: &str = "io.debezium.time.ZonedTimestamp";

/// A schema's text with Connect's semantic types of [`CONNECT_LOGICAL`] as Avro logical types
/// (their bytes are the same: only how they read changes), and the record fields whose type is
/// Debezium's zoned timestamp (a string; [`zoned_timestamps`] makes such a column a
/// timestamp). Text that is not JSON is returned as it is, for the parser to refuse.
pub(super) fn connect_types(text: &str) -> (std::borrow::Cow<'_, str>, HashSet<String>) {
    fn visit(v: &mut serde_json::Value, field: Option<&str>, zoned: &mut HashSet<String>, changed: &mut bool) {
        match v {
            serde_json::Value::Array(union) => union.iter_mut().for_each(|v| visit(v, field, zoned, changed)),
            serde_json::Value::Object(o) => {
                let name = o.get("connect.name").and_then(|n| n.as_str()).map(str::to_string);
                if let Some(name) = name.filter(|_| !o.contains_key("logicalType")) {
                    if let Some((_, logical)) = CONNECT_LOGICAL.iter().find(|(n, _)| *n == name) {
                        o.insert("logicalType".into(), (*logical).into());
                        *changed = true;
                    } else if let (ZONED_TIMESTAMP, Some(field)) = (name.as_str(), field) {
                        zoned.insert(field.to_string());
                    }
                }
                if let Some(serde_json::Value::Array(fields)) = o.get_mut("fields") {
                    for f in fields.iter_mut().filter_map(|f| f.as_object_mut()) {
                        let name = f.get("name").and_then(|n| n.as_str()).map(str::to_string);
                        if let Some(t) = f.get_mut("type") {
                            visit(t, name.as_deref(), zoned, changed);
                        }
                    }
                }
                for (key, inner) in [("type", field), ("items", None), ("values", None)] {
                    if let Some(child @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) = o.get_mut(key) {
                        visit(child, inner, zoned, changed);
                    }
                }
            }
            _ => {}
        }
    }
    let Ok(mut json) = serde_json::from_str::<serde_json::Value>(text) else { return (text.into(), HashSet::new()) };
    let (mut zoned, mut changed) = (HashSet::new(), false);
    visit(&mut json, None, &mut zoned, &mut changed);
    (if changed { json.to_string().into() } else { text.into() }, zoned)
}

/// `columns` with the string columns holding Debezium's zoned timestamps (`zoned`, by name)
/// made timestamps: their ISO 8601 text is read as the instant it names.
fn zoned_timestamps(mut columns: Vec<FieldConfig>, zoned: &HashSet<String>) -> Vec<FieldConfig> {
    for c in columns.iter_mut().filter(|c| c.kind == FieldType::String && zoned.contains(&c.name)) {
        c.kind = FieldType::Timestamp;
    }
    columns
}

/// `schema` as given to `apache-avro`'s decoding and resolution: `bytes` decimals as plain
/// `bytes` (apache-avro 0.21 refuses a bytes decimal whose encoding is shorter than its
/// precision could need — every small value — so [`val`] reads the bytes into the decimal
/// column itself); everything else as it is.
fn resolvable(schema: &Schema) -> Schema {
    match schema {
        Schema::Decimal(d) if matches!(*d.inner, Schema::Bytes) => Schema::Bytes,
        Schema::Array(a) => {
            let mut a = a.clone();
            a.items = Box::new(resolvable(&a.items));
            Schema::Array(a)
        }
        Schema::Map(m) => {
            let mut m = m.clone();
            m.types = Box::new(resolvable(&m.types));
            Schema::Map(m)
        }
        Schema::Record(r) => {
            let mut r = r.clone();
            for f in &mut r.fields {
                f.schema = resolvable(&f.schema);
            }
            Schema::Record(r)
        }
        Schema::Union(u) => apache_avro::schema::UnionSchema::new(u.variants().iter().map(resolvable).collect())
            .map(Schema::Union)
            .unwrap_or_else(|_| schema.clone()),
        other => other.clone(),
    }
}

/// The Avro specification's Parsing Canonical Form of a schema's JSON: primitives as names,
/// full names, only the attributes that matter for parsing, in the specified order, no
/// whitespace. (`apache-avro`'s own keeps `precision`/`scale` and writes `{"type":"long"}`, so
/// its fingerprints differ from Java's and fastavro's.)
fn canonical_form(v: &serde_json::Value, namespace: Option<&str>, out: &mut String) {
    use serde_json::Value as J;
    const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];
    let full = |name: &str, ns: Option<&str>| match ns {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    };
    let quoted = |s: &str| serde_json::to_string(s).expect("a string");
    match v {
        J::String(s) if PRIMITIVES.contains(&s.as_str()) => out.push_str(&quoted(s)),
        J::String(s) => out.push_str(&quoted(&full(s, namespace))),
        J::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_form(b, namespace, out);
            }
            out.push(']');
        }
        J::Object(o) => {
            let kind = o.get("type");
            match kind.and_then(J::as_str) {
                Some(t @ ("record" | "error" | "enum" | "fixed")) => {
                    let name = o.get("name").and_then(J::as_str).unwrap_or_default();
                    let ns = o.get("namespace").and_then(J::as_str).or(namespace);
                    let name = full(name, ns);
                    let inner = name.rsplit_once('.').map(|(ns, _)| ns);
                    out.push_str(&format!(
                        "{{\"name\":{},\"type\":{}",
                        quoted(&name),
                        quoted(if t == "error" { "record" } else { t })
                    ));
                    match t {
                        "enum" => {
                            let symbols = o.get("symbols").cloned().unwrap_or(J::Array(Vec::new()));
                            out.push_str(&format!(",\"symbols\":{symbols}"));
                        }
                        "fixed" => out.push_str(&format!(",\"size\":{}", o.get("size").cloned().unwrap_or(J::Null))),
                        _ => {
                            out.push_str(",\"fields\":[");
                            for (i, f) in o.get("fields").and_then(J::as_array).into_iter().flatten().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let fname = f.get("name").and_then(J::as_str).unwrap_or_default();
                                out.push_str(&format!("{{\"name\":{},\"type\":", quoted(fname)));
                                canonical_form(f.get("type").unwrap_or(&J::Null), inner, out);
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                }
                Some("array") => {
                    out.push_str("{\"type\":\"array\",\"items\":");
                    canonical_form(o.get("items").unwrap_or(&J::Null), namespace, out);
                    out.push('}');
                }
                Some("map") => {
                    out.push_str("{\"type\":\"map\",\"values\":");
                    canonical_form(o.get("values").unwrap_or(&J::Null), namespace, out);
                    out.push('}');
                }
                // A primitive (maybe with a logical type), or a type given by name or nested.
                _ => canonical_form(kind.unwrap_or(&J::Null), namespace, out),
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The CRC-64-AVRO (Rabin) fingerprint of `data`, as the Avro specification defines it.
fn crc64_avro(data: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: [u64; 256] = std::array::from_fn(|i| {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
        }
        fp
    });
    data.iter().fold(EMPTY, |fp, b| (fp >> 8) ^ table[((fp ^ *b as u64) & 0xff) as usize])
}

/// The `.avsc` files of `dir`, with their file stems, in name order.
fn schema_files(dir: Option<&Path>) -> Result<Vec<(PathBuf, String)>, String> {
    let Some(dir) = dir else { return Ok(Vec::new()) };
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read decode.avro.schemas_dir {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("cannot read decode.avro.schemas_dir {}: {e}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "avsc") {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            out.push((path, stem));
        }
    }
    out.sort();
    Ok(out)
}

/// The columns a writer schema's fields give beyond the reader schema's `reader` columns, all
/// nullable (rows of other writer schemas have no value there).
fn added_columns(schema: &Schema, reader: &[FieldConfig]) -> Result<Vec<FieldConfig>, String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
    let Schema::Record(record) = schema else { return Err("not a record".into()) };
    let mut out = Vec::new();
    for f in record.fields.iter().filter(|f| !reader.iter().any(|r| r.name == f.name)) {
        if f.name.starts_with("_kafka") || f.name == super::EPOCH_COL {
            return Err(format!("field `{}` has the name of a column the pipeline adds itself", f.name));
        }
        let (kind, _) = column_type(&f.schema, resolved.get_names(), &mut Vec::new(), &f.name)?;
        out.push(FieldConfig { name: f.name.clone(), kind, nullable: true });
    }
    Ok(out)
}

/// The columns of a reader schema (a record): each field with the type Spark's `from_avro`
/// gives it, nullable when it is a union with `null`.
fn columns(schema: &Schema) -> Result<Vec<FieldConfig>, String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
    let names = resolved.get_names();
    let Schema::Record(record) = schema else {
        return Err("the reader schema must be a record (its fields are the table's columns)".into());
    };
    let mut seen = Vec::new();
    record
        .fields
        .iter()
        .map(|f| {
            let (kind, nullable) = column_type(&f.schema, names, &mut seen, &f.name)?;
            Ok(FieldConfig { name: f.name.clone(), kind, nullable })
        })
        .collect()
}

/// The columns of the record type of field `field` of a reader schema (a record): Debezium's
/// `after`, `["null", <the table's row record>]`.
fn row_columns(schema: &Schema, field: &str) -> Result<Vec<FieldConfig>, String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
    let Schema::Record(record) = schema else { return Err("the reader schema must be a record".into()) };
    let f = record.fields.iter().find(|f| f.name == field).ok_or_else(|| {
        format!("the reader schema has no field `{field}`: is it a Debezium change event's schema (the topic's value subject)?")
    })?;
    let mut row = &f.schema;
    if let Schema::Union(u) = row {
        row = u.variants().iter().find(|s| !matches!(s, Schema::Null)).unwrap_or(row);
    }
    if let Schema::Ref { name } = row {
        row = resolved.get_names().get(name).copied().ok_or_else(|| format!("field `{field}`: unknown type {name}"))?;
    }
    match row {
        Schema::Record(_) => columns(row).map_err(|e| format!("field `{field}`: {e}")),
        _ => Err(format!("field `{field}` is not a record (or null and a record)")),
    }
}

/// The column type of an Avro schema and whether it is nullable; `stack` holds the records
/// being expanded (a recursive type has no table form).
fn column_type(
    schema: &Schema,
    names: &HashMap<Name, &Schema>,
    stack: &mut Vec<String>,
    at: &str,
) -> Result<(FieldType, bool), String> {
    let unsupported = |what: &str| Err(format!("field `{at}`: {what} has no column type"));
    let t = match schema {
        Schema::Union(u) => {
            let others: Vec<&Schema> = u.variants().iter().filter(|s| !matches!(s, Schema::Null)).collect();
            return match others.as_slice() {
                [one] => Ok((column_type(one, names, stack, at)?.0, u.is_nullable())),
                _ => unsupported("a union other than [\"null\", T]"),
            };
        }
        Schema::Null => return unsupported("a null-only type"),
        Schema::Boolean => FieldType::Boolean,
        Schema::Int | Schema::TimeMillis => FieldType::Int,
        Schema::Long | Schema::TimeMicros => FieldType::Long,
        Schema::Float => FieldType::Float,
        Schema::Double => FieldType::Double,
        Schema::Bytes | Schema::Fixed(_) => FieldType::Binary,
        Schema::String | Schema::Enum(_) | Schema::Uuid => FieldType::String,
        Schema::Date => FieldType::Date,
        Schema::TimestampMillis | Schema::TimestampMicros | Schema::LocalTimestampMillis | Schema::LocalTimestampMicros => {
            FieldType::Timestamp
        }
        Schema::Decimal(d) => match (u8::try_from(d.precision), u8::try_from(d.scale)) {
            (Ok(precision @ 1..=38), Ok(scale)) if scale <= precision => FieldType::Decimal { precision, scale },
            _ => return unsupported(&format!("decimal({}, {}) (Delta decimals have 1 to 38 digits)", d.precision, d.scale)),
        },
        Schema::Array(a) => FieldType::List(Box::new(column_type(&a.items, names, stack, &format!("{at}[]"))?.0)),
        Schema::Map(m) => FieldType::Map(Box::new(column_type(&m.types, names, stack, &format!("{at}{{}}"))?.0)),
        Schema::Record(r) => {
            let name = r.name.fullname(None);
            if stack.contains(&name) {
                return unsupported(&format!("the recursive record {name}"));
            }
            stack.push(name);
            let mut members = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let (kind, nullable) = column_type(&f.schema, names, stack, &format!("{at}.{}", f.name))?;
                members.push(FieldConfig { name: f.name.clone(), kind, nullable });
            }
            stack.pop();
            FieldType::Struct(members)
        }
        Schema::Ref { name } => {
            let target = names
                .get(name)
                .or_else(|| names.iter().find(|(n, _)| n.name == name.name).map(|(_, s)| s))
                .ok_or_else(|| format!("field `{at}`: unknown type {}", name.fullname(None)))?;
            return column_type(target, names, stack, at);
        }
        Schema::TimestampNanos | Schema::LocalTimestampNanos => return unsupported("a nanosecond timestamp"),
        Schema::BigDecimal => return unsupported("big-decimal"),
        Schema::Duration => return unsupported("duration"),
    };
    Ok((t, false))
}

/// The value of a resolved Avro value as column type `t`.
pub(super) fn val(t: &FieldType, v: Value, at: &str) -> Result<Val<'static>, Rejected> {
    let wrong = |v: &Value| (Rejection::WrongType, format!("field `{at}`: {v:?} is not a {t}"));
    Ok(match (t, v) {
        (_, Value::Union(_, inner)) => val(t, *inner, at)?,
        (_, Value::Null) => Val::Null,
        (FieldType::Boolean, Value::Boolean(b)) => Val::Bool(b),
        (FieldType::Int, Value::Int(x) | Value::TimeMillis(x)) => Val::Int(x),
        (FieldType::Long, Value::Long(x) | Value::TimeMicros(x)) => Val::Long(x),
        (FieldType::Float, Value::Float(x)) => Val::Float(x),
        (FieldType::Double, Value::Double(x)) => Val::Double(x),
        (FieldType::Binary, Value::Bytes(b) | Value::Fixed(_, b)) => Val::Bytes(b),
        (FieldType::String, Value::String(s) | Value::Enum(_, s)) => Val::Str(s.into()),
        (FieldType::String, Value::Uuid(u)) => Val::Str(u.to_string().into()),
        (FieldType::Date, Value::Date(d)) => Val::Date(d),
        (FieldType::Timestamp, Value::TimestampMicros(x) | Value::LocalTimestampMicros(x)) => Val::Long(x),
        (FieldType::Timestamp, Value::String(text)) => Val::Long(super::json::rfc3339_micros(&text).ok_or_else(|| {
            (Rejection::WrongType, format!("field `{at}`: {text:?} is not an ISO 8601 timestamp with an offset"))
        })?),
        (FieldType::Timestamp, Value::TimestampMillis(x) | Value::LocalTimestampMillis(x)) => {
            Val::Long(x.checked_mul(1000).ok_or_else(|| (Rejection::WrongType, format!("field `{at}`: timestamp out of range")))?)
        }
        (FieldType::Decimal { precision, .. }, v @ (Value::Decimal(_) | Value::Bytes(_))) => {
            let bytes = match v {
                Value::Decimal(d) => <Vec<u8>>::try_from(&d).map_err(|e| (Rejection::WrongType, format!("field `{at}`: {e}")))?,
                Value::Bytes(b) => b,
                _ => unreachable!("matched above"),
            };
            let unscaled = unscaled(&bytes)
                .filter(|x| x.unsigned_abs() < 10u128.pow(*precision as u32))
                .ok_or_else(|| (Rejection::WrongType, format!("field `{at}`: the decimal has more than {precision} digits")))?;
            Val::Dec(unscaled)
        }
        (FieldType::List(elem), Value::Array(items)) => {
            Val::List(items.into_iter().enumerate().map(|(i, v)| val(elem, v, &format!("{at}[{i}]"))).collect::<Result<_, _>>()?)
        }
        (FieldType::Map(value), Value::Map(entries)) => {
            // Sorted by key: a map's entries have no order in Avro, and decoding must give the
            // same row every time (replays, the audit).
            let mut entries: Vec<(String, Value)> = entries.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let v = val(value, v, &format!("{at}[{k:?}]"))?;
                out.push((k.into(), v));
            }
            Val::Map(out)
        }
        (FieldType::Struct(members), Value::Record(fields)) => {
            let mut fields: HashMap<String, Value> = fields.into_iter().collect();
            let mut out = Vec::with_capacity(members.len());
            for m in members {
                out.push(val(&m.kind, fields.remove(&m.name).unwrap_or(Value::Null), &format!("{at}.{}", m.name))?);
            }
            Val::Struct(out)
        }
        (_, v) => return Err(wrong(&v)),
    })
}

/// A big-endian two's-complement integer of any length as an `i128`, if it fits.
fn unscaled(bytes: &[u8]) -> Option<i128> {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let sign = if negative { 0xff } else { 0 };
    let significant = bytes.iter().position(|b| *b != sign).unwrap_or(bytes.len());
    let rest = &bytes[significant..];
    if rest.len() > 16 || (rest.len() == 16 && (rest[0] & 0x80 != 0) != negative) {
        return None;
    }
    let mut full = [sign; 16];
    full[16 - rest.len()..].copy_from_slice(rest);
    Some(i128::from_be_bytes(full))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_of_any_width_fit_or_are_refused() {
        assert_eq!(unscaled(&[]), Some(0));
        assert_eq!(unscaled(&[0x01, 0x18]), Some(280));
        assert_eq!(unscaled(&[0xff, 0xfe]), Some(-2));
        assert_eq!(unscaled(&[0x80]), Some(-128));
        assert_eq!(unscaled(&[0x00, 0x80]), Some(128));
        let mut wide = vec![0xff; 20];
        wide[19] = 0x85;
        assert_eq!(unscaled(&wide), Some(-123));
        assert_eq!(unscaled(&[0x7f; 17]), None);
        assert_eq!(unscaled(&i128::MIN.to_be_bytes()), Some(i128::MIN));
    }

    #[test]
    fn fingerprints_follow_the_specification_s_canonical_form() {
        let schema = serde_json::json!({"type": "record", "name": "Order", "namespace": "shop", "doc": "d", "fields": [
            {"name": "id", "type": {"type": "long"}, "doc": "x", "default": 0},
            {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [{"name": "tags", "type": {"type": "array", "items": "string"}}]}},
            {"name": "bill", "type": ["null", "Customer"]},
            {"name": "status", "type": {"type": "enum", "name": "Status", "aliases": ["S"], "symbols": ["NEW", "PAID"]}},
            {"name": "attrs", "type": {"type": "map", "values": "double"}},
            {"name": "hash", "type": {"type": "fixed", "name": "other.Hash", "size": 16}}
        ]});
        let mut canonical = String::new();
        canonical_form(&schema, None, &mut canonical);
        // As Java and fastavro write it (fastavro.schema.to_parsing_canonical_form).
        assert_eq!(
            canonical,
            r#"{"name":"shop.Order","type":"record","fields":[{"name":"id","type":"long"},{"name":"price","type":"bytes"},{"name":"at","type":"long"},{"name":"customer","type":{"name":"shop.Customer","type":"record","fields":[{"name":"tags","type":{"type":"array","items":"string"}}]}},{"name":"bill","type":["null","shop.Customer"]},{"name":"status","type":{"name":"shop.Status","type":"enum","symbols":["NEW","PAID"]}},{"name":"attrs","type":{"type":"map","values":"double"}},{"name":"hash","type":{"name":"other.Hash","type":"fixed","size":16}}]}"#
        );
        // The fingerprint of "int" in its little-endian bytes, as Java and fastavro give it;
        // of the empty input, the empty fingerprint.
        assert_eq!(crc64_avro(b"\"int\"").to_le_bytes(), [0x8f, 0x5c, 0x39, 0x3f, 0x1a, 0xd5, 0x75, 0x72]);
        assert_eq!(crc64_avro(b""), 0xc15d_213a_a4d7_a795);
    }

    #[test]
    fn writer_schemas_grow_the_columns_once_and_never_retype_one() {
        let dir = tempfile::tempdir().unwrap();
        let record =
            |fields: &str| format!(r#"{{"type": "record", "name": "P", "fields": [{{"name": "id", "type": "long"}}{fields}]}}"#);
        std::fs::write(dir.path().join("reader.avsc"), record("")).unwrap();
        let schemas = dir.path().join("schemas");
        std::fs::create_dir_all(&schemas).unwrap();
        std::fs::write(schemas.join("2.avsc"), record(r#", {"name": "score", "type": "int"}, {"name": "a", "type": "string"}"#))
            .unwrap();
        std::fs::write(schemas.join("3.avsc"), record(r#", {"name": "a", "type": ["null", "string"]}"#)).unwrap();
        std::fs::write(schemas.join("4.avsc"), record(r#", {"name": "score", "type": "string"}"#)).unwrap();
        let avro = Avro::load(
            &AvroConfig {
                schema_file: Some(dir.path().join("reader.avsc")),
                framing: AvroFraming::Confluent,
                schemas_dir: Some(schemas),
                ..AvroConfig::default()
            },
            None,
        )
        .unwrap();
        let framed = |id: u32| [&[0u8][..], &id.to_be_bytes()].concat();
        let (two, three, four) = (framed(2), framed(3), framed(4));
        avro.grow([two.as_slice(), three.as_slice(), two.as_slice()].into_iter()).unwrap();
        let added: Vec<String> = avro
            .added()
            .iter()
            .map(|(f, _)| format!("{}: {}{}", f.name, f.kind, if f.nullable { "" } else { " not null" }))
            .collect();
        assert_eq!(added, ["score: int", "a: string"], "each once, nullable, in the order first seen");
        let e = avro.grow([four.as_slice()].into_iter()).unwrap_err();
        assert!(e.contains("writer schema id 4 has field `score` as string") && e.contains("as int"), "{e}");
        assert_eq!(avro.added().len(), 2);
    }

    #[test]
    fn reader_schemas_give_spark_s_column_types() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "Order", "namespace": "shop", "fields": [
                {"name": "id", "type": "long"},
                {"name": "note", "type": ["null", "string"], "default": null},
                {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
                {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
                {"name": "tags", "type": {"type": "array", "items": "string"}},
                {"name": "ship", "type": {"type": "record", "name": "Address", "fields": [{"name": "city", "type": "string"}]}},
                {"name": "bill", "type": ["null", "Address"]},
                {"name": "ratio", "type": "float"}
            ]}"#,
        )
        .unwrap();
        let got: Vec<String> = columns(&schema)
            .unwrap()
            .iter()
            .map(|f| format!("{}: {}{}", f.name, f.kind, if f.nullable { "" } else { " not null" }))
            .collect();
        assert_eq!(
            got,
            [
                "id: long not null",
                "note: string",
                "price: decimal(12, 2) not null",
                "at: timestamp not null",
                "kind: string not null",
                "tags: array<string> not null",
                "ship: struct<city: string not null> not null",
                "bill: struct<city: string not null>",
                "ratio: float not null",
            ]
        );
        let union = Schema::parse_str(r#"{"type": "record", "name": "U", "fields": [{"name": "x", "type": ["int", "string"]}]}"#)
            .unwrap();
        assert!(columns(&union).unwrap_err().contains("field `x`: a union other than"));
        let recursive =
            Schema::parse_str(r#"{"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}"#)
                .unwrap();
        assert!(columns(&recursive).unwrap_err().contains("recursive record Node"));
    }
}
