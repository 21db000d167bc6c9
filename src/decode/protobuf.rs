//! The Protobuf format: each value is one Protobuf message, framed as `decode.protobuf.framing`
//! says —
//!
//! - `none`: the bare message, of the reader's type;
//! - `confluent`: the Confluent wire format: magic byte `0`, the writer schema's id (4 bytes,
//!   big-endian), the message indexes (a zigzag varint count, then that many zigzag varints; a
//!   single `0` for the file's first message), the message.
//!
//! The reader schema (a descriptor set, or a subject's version in the registry) and its message
//! give the table's columns, each the Delta type Spark's `from_protobuf` gives it (with
//! `upcast.unsigned.ints` and `unwrap.primitive.wrapper.types`): `int32`/`sint32`/`sfixed32` →
//! `int`, `int64`/`sint64`/`sfixed64` and `uint32`/`fixed32` → `long`, `uint64`/`fixed64` →
//! `decimal(20, 0)`, `float`, `double`, `bool` → `boolean`, `string`, `bytes` → `binary`, an
//! enum → its value's name, a message → a `struct`, `repeated` → an `array`, a map → a `map`
//! (keys as text), `oneof` members → a column each, `google.protobuf.Timestamp` → `timestamp`,
//! the wrappers (`Int64Value`, ...) → their value, nullable. A recursive message has no table
//! form and is refused when the schema is read.
//!
//! With the registry, each record is read with its writer schema (the files of its id, compiled
//! in pure Rust: `.proto` text, or a base64 `FileDescriptorProto` as Confluent's Python
//! serializer registers it; `google/protobuf/*` built in), the message its indexes name; its
//! fields fill the columns of the same name. A message of another type than the reader's, a body
//! that does not decode, or a value that does not fit its column is a dead letter with the
//! reason. With `sink.schema_evolution = "add-columns"` a writer's fields beyond the reader's
//! become columns too, as for Avro (`super::evolve`).
//!
//! A field that is not set reads as null, as Spark's `from_protobuf` reads it (a proto3 scalar
//! at its default value is not on the wire: `emit_default_values` reads it as that value
//! instead); an unset `repeated` field or map is empty.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::datatypes::Field;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use super::evolve::{Added, WriterColumns};
use super::registry::{confluent_id, not_confluent, ById, Fetched, Registry, SchemaType};
use super::{Rejected, Rejection, Val};
use crate::config::{FieldConfig, FieldType, ProtobufConfig, WireFraming};

/// A writer schema as decoding uses it: its file and the message of the reader's type in it.
#[derive(Debug)]
struct Writer {
    /// The file the message indexes point into (`None`: the reader's message, whatever the
    /// indexes say — no registry to read the writer's file from).
    file: Option<FileDescriptor>,
    /// The message of the reader's full name in the file, if it has one.
    message: Option<MessageDescriptor>,
    /// Its label and the columns its fields give beyond the reader's.
    columns: WriterColumns,
}

impl Writer {
    fn new(label: String, file: Option<FileDescriptor>, message: Option<MessageDescriptor>, reader: &[FieldConfig]) -> Writer {
        let added = match &message {
            Some(m) => added_columns(m, reader),
            None => Ok(Vec::new()),
        };
        Writer { file, message, columns: WriterColumns::new(label, added) }
    }
}

/// A value's writer schema, message indexes and body.
type Framed<'b> = (Arc<Writer>, Vec<i32>, &'b [u8]);

/// A loaded Protobuf setup: the reader message, its columns, the writer schemas.
#[derive(Debug)]
pub struct Protobuf {
    reader: MessageDescriptor,
    fields: Vec<FieldConfig>,
    framing: WireFraming,
    /// The reader schema as the writer of every value (no registry).
    own: Arc<Writer>,
    /// With the registry: the writer schemas by id.
    registry: Option<ById<Writer>>,
    /// `emit_default_values`.
    defaults: bool,
    /// The columns writer schemas added beyond the reader's.
    added: Added,
}

impl Protobuf {
    /// Reads the reader schema `config` names (the descriptor set file, or the one the plan
    /// fetched) and finds its message; the error is one line naming the file and the problem.
    pub fn load(config: &ProtobufConfig) -> Result<Protobuf, String> {
        let (set, origin) = match (&config.descriptor_file, &config.reader_descriptor, &config.reader_subject) {
            (Some(path), _, _) => (
                std::fs::read(path).map_err(|e| format!("descriptor_file {}: {e}", path.display()))?,
                format!("descriptor_file {}", path.display()),
            ),
            (None, Some(set), Some(subject)) => (set.to_vec(), format!("the registry's subject {subject:?}")),
            (None, None, Some(subject)) => {
                return Err(format!(
                    "reader_subject {subject:?}: the reader schema was not fetched (the plan fetches it: Plan::of)"
                ))
            }
            _ => return Err("needs the reader schema: descriptor_file or reader_subject".into()),
        };
        let pool = DescriptorPool::decode(set.as_slice())
            .map_err(|e| format!("{origin} is not a descriptor set (protoc --include_imports --descriptor_set_out): {e}"))?;
        let reader = reader_message(&pool, config.message.as_deref()).map_err(|e| format!("{origin}: {e}"))?;
        let fields = columns(&reader).map_err(|e| format!("{origin}: {e}"))?;
        let registry = match &config.registry {
            Some(r) => Some(ById::new(Registry::new(r).map_err(|e| format!("decode.protobuf.{e}"))?, SchemaType::Protobuf)),
            None => None,
        };
        let own = Arc::new(Writer::new("the reader schema".into(), None, Some(reader.clone()), &fields));
        Ok(Protobuf {
            reader,
            fields,
            framing: config.framing,
            own,
            registry,
            defaults: config.emit_default_values,
            added: Added::default(),
        })
    }

    /// Asks the schema registry, if one is configured, whether it answers; its address when it
    /// does.
    pub async fn check_registry(&self) -> Result<Option<String>, String> {
        match &self.registry {
            Some(by_id) => by_id.registry().check().await.map(|()| Some(by_id.registry().url().to_string())),
            None => Ok(None),
        }
    }

    /// The columns the reader message gives.
    pub fn fields(&self) -> &[FieldConfig] {
        &self.fields
    }

    /// The columns writer schemas added so far.
    pub(super) fn added(&self) -> Vec<(FieldConfig, Field)> {
        self.added.columns()
    }

    /// Fetches the writer schemas of the ids among `values` no earlier fetch knows. `Err`: the
    /// registry could not be asked (the batch must not be decoded).
    pub(super) async fn prepare<'v>(&self, values: impl Iterator<Item = &'v [u8]>) -> Result<(), String> {
        let Some(by_id) = &self.registry else { return Ok(()) };
        let ids = values.filter_map(confluent_id).map(|(id, _)| id);
        by_id
            .prepare(ids, |id, fetched| {
                let label = format!("writer schema id {id}");
                let (pool, name) = compile(&fetched, &format!("schema-{id}.proto")).map_err(|e| format!("{label}: {e}"))?;
                let file = pool.get_file_by_name(&name).expect("the compiled file is in its pool");
                let message = pool.get_message_by_name(self.reader.full_name());
                Ok(Writer::new(label, Some(file), message, &self.fields))
            })
            .await
    }

    /// Takes the columns the writer schemas of `values` add into the decoder's (see
    /// [`Added::grow`]).
    pub(super) fn grow<'v>(&self, values: impl Iterator<Item = &'v [u8]>) -> Result<(), String> {
        for bytes in values {
            let Ok((writer, _, _)) = self.writer(bytes) else { continue };
            self.added.grow(&writer.columns)?;
        }
        Ok(())
    }

    /// The column values of one value into `vals`, or why it cannot be decoded: the reader's
    /// columns, then — when `added` is given — the columns writer schemas added.
    pub(super) fn values<'a>(
        &self,
        bytes: &[u8],
        vals: &mut Vec<Val<'a>>,
        added: Option<&[FieldConfig]>,
    ) -> Result<(), Rejected> {
        let (writer, indexes, body) = self.writer(bytes)?;
        let message = match (&writer.file, &writer.message) {
            (None, _) => self.reader.clone(),
            (Some(file), own) => {
                let named = by_indexes(file, &indexes).ok_or_else(|| {
                    (Rejection::InvalidProtobuf, format!("{}: no message at indexes {indexes:?}", writer.columns.label))
                })?;
                match own {
                    Some(m) if *m == named => named,
                    _ => {
                        return Err((
                            Rejection::WrongType,
                            format!(
                                "{}: the value is a {}, not a {} (the reader message)",
                                writer.columns.label,
                                named.full_name(),
                                self.reader.full_name()
                            ),
                        ))
                    }
                }
            }
        };
        let decoded = DynamicMessage::decode(message, body).map_err(|e| {
            (Rejection::InvalidProtobuf, format!("the message does not decode with {}: {e}", writer.columns.label))
        })?;
        for f in &self.fields {
            vals.push(self.field(&decoded, &f.name, &f.kind, &f.name)?);
        }
        if let Some(added) = added {
            let own = writer.columns.in_batch(added)?;
            for c in added {
                vals.push(match own.iter().any(|o| o.name == c.name) {
                    true => self.field(&decoded, &c.name, &c.kind, &c.name)?,
                    false => Val::Null,
                });
            }
        }
        Ok(())
    }

    /// The writer schema of a value, its message indexes and its body.
    fn writer<'b>(&self, bytes: &'b [u8]) -> Result<Framed<'b>, Rejected> {
        if self.framing == WireFraming::None {
            return Ok((self.own.clone(), vec![0], bytes));
        }
        let (id, rest) = confluent_id(bytes).ok_or_else(|| not_confluent(bytes, Rejection::InvalidProtobuf))?;
        let (indexes, body) = message_indexes(rest)
            .ok_or_else(|| (Rejection::InvalidProtobuf, format!("writer schema id {id}: the message indexes do not read")))?;
        let writer = match &self.registry {
            Some(by_id) => by_id.get(id)?,
            None => self.own.clone(),
        };
        Ok((writer, indexes, body))
    }

    /// The value of the field `name` of `message` as column type `t` (`at`: its path, for
    /// reasons); a field the message's type does not have is null.
    fn field(&self, message: &DynamicMessage, name: &str, t: &FieldType, at: &str) -> Result<Val<'static>, Rejected> {
        let Some(fd) = message.descriptor().get_field_by_name(name) else { return Ok(Val::Null) };
        if !(fd.is_list() || fd.is_map() || message.has_field(&fd) || (self.defaults && !fd.supports_presence())) {
            return Ok(Val::Null);
        }
        self.val(&fd.kind(), &message.get_field(&fd), t, at)
    }

    /// A field's value of protobuf kind `kind` as column type `t`.
    fn val(&self, kind: &Kind, v: &Value, t: &FieldType, at: &str) -> Result<Val<'static>, Rejected> {
        let wrong = || (Rejection::WrongType, format!("field `{at}`: {v:?} is not a {t}"));
        Ok(match (t, v) {
            (FieldType::Boolean, Value::Bool(b)) => Val::Bool(*b),
            (FieldType::Int, Value::I32(x)) => Val::Int(*x),
            (FieldType::Long, Value::I64(x)) => Val::Long(*x),
            (FieldType::Long, Value::I32(x)) => Val::Long(i64::from(*x)),
            (FieldType::Long, Value::U32(x)) => Val::Long(i64::from(*x)),
            (FieldType::Decimal { scale: 0, .. }, Value::U64(x)) => Val::Dec(i128::from(*x)),
            (FieldType::Decimal { scale: 0, .. }, Value::U32(x)) => Val::Dec(i128::from(*x)),
            (FieldType::Float, Value::F32(x)) => Val::Float(*x),
            (FieldType::Double, Value::F64(x)) => Val::Double(*x),
            (FieldType::Double, Value::F32(x)) => Val::Double(f64::from(*x)),
            (FieldType::String, Value::String(s)) => Val::Str(s.clone().into()),
            (FieldType::Binary, Value::Bytes(b)) => Val::Bytes(b.to_vec()),
            (FieldType::String, Value::EnumNumber(n)) => {
                let name = match kind {
                    Kind::Enum(e) => e.get_value(*n).map(|v| v.name().to_string()),
                    _ => None,
                };
                // An open enum's number no symbol names (a newer writer's): kept as its number.
                Val::Str(name.unwrap_or_else(|| n.to_string()).into())
            }
            (FieldType::Timestamp, Value::Message(m)) if m.descriptor().full_name() == TIMESTAMP => {
                let seconds = m.get_field_by_name("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
                let nanos = m.get_field_by_name("nanos").and_then(|v| v.as_i32()).unwrap_or(0);
                Val::Long(
                    seconds
                        .checked_mul(1_000_000)
                        .and_then(|s| s.checked_add(i64::from(nanos / 1000)))
                        .ok_or_else(|| (Rejection::WrongType, format!("field `{at}`: timestamp {seconds} s is out of range")))?,
                )
            }
            (_, Value::Message(m)) if wrapped(m.descriptor().full_name()).is_some() => {
                let Some(value) = m.descriptor().get_field_by_name("value") else { return Err(wrong()) };
                self.val(&value.kind(), &m.get_field(&value), t, at)?
            }
            (FieldType::Struct(members), Value::Message(m)) => {
                let mut out = Vec::with_capacity(members.len());
                for member in members {
                    out.push(self.field(m, &member.name, &member.kind, &format!("{at}.{}", member.name))?);
                }
                Val::Struct(out)
            }
            (FieldType::List(elem), Value::List(items)) => Val::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.val(kind, v, elem, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            (FieldType::Map(value), Value::Map(entries)) => {
                let Kind::Message(entry) = kind else { return Err(wrong()) };
                let value_kind = entry.map_entry_value_field().kind();
                // Sorted by key: a map's entries have no order on the wire, and decoding must
                // give the same row every time (replays, the audit).
                let mut sorted: Vec<_> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = Vec::with_capacity(sorted.len());
                for (k, v) in sorted {
                    let key = map_key(k);
                    let v = self.val(&value_kind, v, value, &format!("{at}[{key:?}]"))?;
                    out.push((key.into(), v));
                }
                Val::Map(out)
            }
            _ => return Err(wrong()),
        })
    }
}

/// `google.protobuf.Timestamp`, a `timestamp` column.
const TIMESTAMP: &str = "google.protobuf.Timestamp";

/// The column type a wrapper message (`google.protobuf.Int64Value`, ...) unwraps to.
fn wrapped(full_name: &str) -> Option<FieldType> {
    Some(match full_name {
        "google.protobuf.DoubleValue" => FieldType::Double,
        "google.protobuf.FloatValue" => FieldType::Float,
        "google.protobuf.Int64Value" => FieldType::Long,
        "google.protobuf.UInt64Value" => FieldType::Decimal { precision: 20, scale: 0 },
        "google.protobuf.Int32Value" => FieldType::Int,
        "google.protobuf.UInt32Value" => FieldType::Long,
        "google.protobuf.BoolValue" => FieldType::Boolean,
        "google.protobuf.StringValue" => FieldType::String,
        "google.protobuf.BytesValue" => FieldType::Binary,
        _ => return None,
    })
}

/// A map key as text (a Delta map of this table has string keys).
fn map_key(k: &prost_reflect::MapKey) -> String {
    use prost_reflect::MapKey;
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(x) => x.to_string(),
        MapKey::I64(x) => x.to_string(),
        MapKey::U32(x) => x.to_string(),
        MapKey::U64(x) => x.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// The message `name` names in `pool`, or (absent) the first message of the pool's last file.
fn reader_message(pool: &DescriptorPool, name: Option<&str>) -> Result<MessageDescriptor, String> {
    match name {
        Some(name) => pool.get_message_by_name(name.trim_start_matches('.')).ok_or_else(|| {
            let known: Vec<String> =
                pool.all_messages().map(|m| m.full_name().to_string()).filter(|n| !n.starts_with("google.")).collect();
            format!("has no message {name:?} (it has {})", known.join(", "))
        }),
        None => pool
            .files()
            .last()
            .and_then(|f| f.messages().next())
            .ok_or_else(|| "has no message; name one with decode.protobuf.message".to_string()),
    }
}

/// The message the Confluent message indexes point at in `file`: the first index a top-level
/// message, each further one a message nested in the one before.
fn by_indexes(file: &FileDescriptor, indexes: &[i32]) -> Option<MessageDescriptor> {
    let (first, nested) = indexes.split_first()?;
    let mut message = file.messages().nth(usize::try_from(*first).ok()?)?;
    for i in nested {
        let child = message.child_messages().nth(usize::try_from(*i).ok()?)?;
        message = child;
    }
    Some(message)
}

/// The message indexes at the start of `bytes` and what follows them: a zigzag varint count,
/// then that many zigzag varints (a count of 0: the first message, `[0]`).
fn message_indexes(mut bytes: &[u8]) -> Option<(Vec<i32>, &[u8])> {
    let zigzag = |b: &mut &[u8]| -> Option<i64> {
        let v = prost::encoding::decode_varint(b).ok()?;
        Some(((v >> 1) as i64) ^ -((v & 1) as i64))
    };
    let count = zigzag(&mut bytes)?;
    if count == 0 {
        return Some((vec![0], bytes));
    }
    if !(1..=64).contains(&count) {
        return None;
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        indexes.push(i32::try_from(zigzag(&mut bytes)?).ok()?);
    }
    Some((indexes, bytes))
}

/// The columns of a reader message: one per field, in field order, all nullable.
fn columns(message: &MessageDescriptor) -> Result<Vec<FieldConfig>, String> {
    let mut stack = vec![message.full_name().to_string()];
    message
        .fields()
        .map(|f| Ok(FieldConfig { name: f.name().to_string(), kind: column_type(&f, &mut stack, f.name())?, nullable: true }))
        .collect()
}

/// The columns a writer message's fields give beyond the reader's (by name), all nullable.
fn added_columns(message: &MessageDescriptor, reader: &[FieldConfig]) -> Result<Vec<FieldConfig>, String> {
    let mut stack = vec![message.full_name().to_string()];
    message
        .fields()
        .filter(|f| !reader.iter().any(|r| r.name == f.name()))
        .map(|f| Ok(FieldConfig { name: f.name().to_string(), kind: column_type(&f, &mut stack, f.name())?, nullable: true }))
        .collect()
}

/// The column type of a field; `stack` holds the messages being expanded (a recursive message
/// has no table form).
fn column_type(field: &FieldDescriptor, stack: &mut Vec<String>, at: &str) -> Result<FieldType, String> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else { unreachable!("a map field's kind is its entry message") };
        let value = entry.map_entry_value_field();
        return Ok(FieldType::Map(Box::new(kind_type(&value.kind(), stack, &format!("{at}{{}}"))?)));
    }
    let t = kind_type(&field.kind(), stack, at)?;
    Ok(if field.is_list() { FieldType::List(Box::new(t)) } else { t })
}

/// The column type of one value of protobuf kind `kind`.
fn kind_type(kind: &Kind, stack: &mut Vec<String>, at: &str) -> Result<FieldType, String> {
    Ok(match kind {
        Kind::Double => FieldType::Double,
        Kind::Float => FieldType::Float,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => FieldType::Int,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint32 | Kind::Fixed32 => FieldType::Long,
        Kind::Uint64 | Kind::Fixed64 => FieldType::Decimal { precision: 20, scale: 0 },
        Kind::Bool => FieldType::Boolean,
        Kind::String | Kind::Enum(_) => FieldType::String,
        Kind::Bytes => FieldType::Binary,
        Kind::Message(m) if m.full_name() == TIMESTAMP => FieldType::Timestamp,
        Kind::Message(m) => match wrapped(m.full_name()) {
            Some(t) => t,
            None => {
                let name = m.full_name().to_string();
                if stack.contains(&name) {
                    return Err(format!("field `{at}`: the recursive message {name} has no column type"));
                }
                stack.push(name);
                let mut members = Vec::new();
                for f in m.fields() {
                    let kind = column_type(&f, stack, &format!("{at}.{}", f.name()))?;
                    members.push(FieldConfig { name: f.name().to_string(), kind, nullable: true });
                }
                stack.pop();
                if members.is_empty() {
                    return Err(format!("field `{at}`: the message {} has no fields, so no column type", m.full_name()));
                }
                FieldType::Struct(members)
            }
        },
    })
}

/// A registry schema's files (`.proto` text or a base64 `FileDescriptorProto`, by name), with
/// Google's well-known types behind them.
struct RegistryFiles(HashMap<String, String>);

impl FileResolver for RegistryFiles {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(text) => parse_file(name, text),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// One registry schema's text as a file: a base64 `FileDescriptorProto` (what Confluent's
/// Python serializer registers), or `.proto` text.
fn parse_file(name: &str, text: &str) -> Result<File, protox::Error> {
    if let Some(bytes) = descriptor_bytes(text) {
        if let Ok(file) = File::decode_file_descriptor_proto(bytes.as_slice()) {
            return Ok(file);
        }
    }
    File::from_source(name, text)
}

/// The bytes of a base64 text that holds no `.proto` syntax.
fn descriptor_bytes(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    (!text.is_empty() && !text.contains([' ', ';', '\n'])).then(|| super::json::base64(text)).flatten()
}

/// Compiles a registry schema (the main file named `name` unless its descriptor names itself)
/// with the files it references; the pool and the main file's name.
pub(super) fn compile(fetched: &Fetched, name: &str) -> Result<(DescriptorPool, String), String> {
    let mut files = HashMap::new();
    fn collect(f: &Fetched, files: &mut HashMap<String, String>) {
        for (name, r) in &f.references {
            files.insert(name.clone(), r.text.clone());
            collect(r, files);
        }
    }
    collect(fetched, &mut files);
    let main = match descriptor_bytes(&fetched.text).and_then(|b| File::decode_file_descriptor_proto(b.as_slice()).ok()) {
        Some(file) if !file.name().is_empty() => file.name().to_string(),
        _ => name.to_string(),
    };
    files.insert(main.clone(), fetched.text.clone());
    let mut resolver = ChainFileResolver::new();
    resolver.add(RegistryFiles(files));
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler.open_file(&main).map_err(|e| format!("the Protobuf schema does not compile: {e}"))?;
    Ok((compiler.descriptor_pool(), main))
}

/// A reader schema from the registry as an encoded descriptor set, its own file last (what
/// `decode.protobuf.reader_descriptor` holds).
pub fn reader_descriptor(fetched: &Fetched, subject: &str) -> Result<Vec<u8>, String> {
    let (pool, main) = compile(fetched, &format!("{subject}.proto"))?;
    // The pool lists files with each one's imports before it: the main file is opened last.
    debug_assert_eq!(pool.files().last().map(|f| f.name().to_string()), Some(main));
    Ok(prost::Message::encode_to_vec(&prost_reflect::prost_types::FileDescriptorSet {
        file: pool.files().map(|f| f.file_descriptor_proto().clone()).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const ORDER: &str = r#"
        syntax = "proto3";
        package shop;
        import "google/protobuf/timestamp.proto";
        import "google/protobuf/wrappers.proto";
        enum Status { NEW = 0; PAID = 1; }
        message Customer { string name = 1; repeated string tags = 2; }
        message Order {
          int64 id = 1;
          Customer customer = 2;
          uint64 big = 3;
          uint32 small = 4;
          sint32 delta = 5;
          Status status = 6;
          google.protobuf.Timestamp at = 7;
          google.protobuf.StringValue coupon = 8;
          map<int32, double> attrs = 9;
          oneof pay { string card = 10; bytes token = 11; }
          optional bool gift = 12;
          float ratio = 13;
        }
        message Node { string v = 1; Node next = 2; }
    "#;

    fn order_files() -> Fetched {
        Fetched { text: ORDER.into(), references: Vec::new() }
    }

    fn load(framing: WireFraming, defaults: bool) -> Protobuf {
        let set = reader_descriptor(&order_files(), "orders-value").unwrap();
        Protobuf::load(&ProtobufConfig {
            reader_subject: Some("orders-value".into()),
            reader_descriptor: Some(set.into()),
            message: Some("shop.Order".into()),
            framing,
            emit_default_values: defaults,
            ..ProtobufConfig::default()
        })
        .unwrap()
    }

    fn order(p: &Protobuf, set: &[(&str, Value)]) -> Vec<u8> {
        let mut m = DynamicMessage::new(p.reader.clone());
        for (name, v) in set {
            m.set_field_by_name(name, v.clone());
        }
        m.encode_to_vec()
    }

    fn show(vals: &[Val<'_>]) -> Vec<String> {
        fn one(v: &Val<'_>) -> String {
            match v {
                Val::Null => "null".into(),
                Val::Str(s) => format!("{s:?}"),
                Val::Long(x) => x.to_string(),
                Val::Int(x) => x.to_string(),
                Val::Double(x) => x.to_string(),
                Val::Float(x) => x.to_string(),
                Val::Bool(b) => b.to_string(),
                Val::Dec(x) => format!("dec {x}"),
                Val::Bytes(b) => format!("{b:?}"),
                Val::List(items) => format!("[{}]", items.iter().map(one).collect::<Vec<_>>().join(", ")),
                Val::Map(entries) => {
                    format!("{{{}}}", entries.iter().map(|(k, v)| format!("{k}: {}", one(v))).collect::<Vec<_>>().join(", "))
                }
                Val::Struct(members) => format!("{{{}}}", members.iter().map(one).collect::<Vec<_>>().join(", ")),
                Val::Date(d) => format!("date {d}"),
                Val::Bin(b) => format!("{b:?}"),
            }
        }
        vals.iter().map(one).collect()
    }

    #[test]
    fn messages_give_spark_s_column_types() {
        let p = load(WireFraming::None, false);
        let types: Vec<String> = p.fields().iter().map(|f| format!("{}: {}", f.name, f.kind)).collect();
        assert_eq!(
            types,
            [
                "id: long",
                "customer: struct<name: string, tags: array<string>>",
                "big: decimal(20, 0)",
                "small: long",
                "delta: int",
                "status: string",
                "at: timestamp",
                "coupon: string",
                "attrs: map<string, double>",
                "card: string",
                "token: binary",
                "gift: boolean",
                "ratio: float",
            ]
        );
        let set = reader_descriptor(&order_files(), "s").unwrap();
        let e = Protobuf::load(&ProtobufConfig {
            reader_subject: Some("s".into()),
            reader_descriptor: Some(set.into()),
            message: Some("shop.Node".into()),
            ..ProtobufConfig::default()
        })
        .unwrap_err();
        assert!(e.contains("field `next`: the recursive message shop.Node has no column type"), "{e}");
    }

    #[test]
    fn every_kind_of_value_decodes_and_unset_fields_are_null() {
        let p = load(WireFraming::None, false);
        let customer = {
            let Kind::Message(c) = p.reader.get_field_by_name("customer").unwrap().kind() else { panic!() };
            let mut m = DynamicMessage::new(c);
            m.set_field_by_name("name", Value::String("ada".into()));
            m.set_field_by_name("tags", Value::List(vec![Value::String("vip".into())]));
            m
        };
        let pool = p.reader.parent_pool().clone();
        let mut at = DynamicMessage::new(pool.get_message_by_name(TIMESTAMP).unwrap());
        at.set_field_by_name("seconds", Value::I64(1_764_158_400));
        at.set_field_by_name("nanos", Value::I32(123_456_789));
        let mut coupon = DynamicMessage::new(pool.get_message_by_name("google.protobuf.StringValue").unwrap());
        coupon.set_field_by_name("value", Value::String(String::new()));
        let attrs =
            HashMap::from([(prost_reflect::MapKey::I32(2), Value::F64(2.5)), (prost_reflect::MapKey::I32(-1), Value::F64(1.0))]);
        let bytes = order(
            &p,
            &[
                ("id", Value::I64(7)),
                ("customer", Value::Message(customer)),
                ("big", Value::U64(u64::MAX)),
                ("small", Value::U32(u32::MAX)),
                ("delta", Value::I32(-3)),
                ("status", Value::EnumNumber(1)),
                ("at", Value::Message(at)),
                ("coupon", Value::Message(coupon)),
                ("attrs", Value::Map(attrs)),
                ("token", Value::Bytes(vec![1, 2].into())),
                ("gift", Value::Bool(false)),
            ],
        );
        let mut vals = Vec::new();
        p.values(&bytes, &mut vals, None).unwrap();
        assert_eq!(
            show(&vals),
            [
                "7",
                "{\"ada\", [\"vip\"]}",
                "dec 18446744073709551615",
                "4294967295",
                "-3",
                "\"PAID\"",
                "1764158400123456",
                "\"\"",
                "{-1: 1, 2: 2.5}",
                "null",
                "[1, 2]",
                "false",
                "null",
            ],
            "an unset oneof member and an unset proto3 scalar are null; a set wrapper or optional at its default is not"
        );
        // Nothing set: every column null, but a repeated field or map is empty.
        vals.clear();
        p.values(&[], &mut vals, None).unwrap();
        assert!(show(&vals).iter().enumerate().all(|(i, v)| v == if i == 8 { "{}" } else { "null" }), "{:?}", show(&vals));
        // emit_default_values: an unset proto3 scalar is its default; presence fields stay null.
        let p = load(WireFraming::None, true);
        vals.clear();
        p.values(&[], &mut vals, None).unwrap();
        assert_eq!(show(&vals)[..7], ["0", "null", "dec 0", "0", "0", "\"NEW\"", "null"]);
    }

    #[test]
    fn the_confluent_frame_and_its_message_indexes() {
        assert_eq!(message_indexes(&[0, 9]), Some((vec![0], &[9u8][..])));
        assert_eq!(message_indexes(&[4, 2, 6, 9]), Some((vec![1, 3], &[9u8][..])), "zigzag: 4 is 2, 2 is 1, 6 is 3");
        assert_eq!(message_indexes(&[0x80]), None, "a varint cut short");
        let p = load(WireFraming::Confluent, false);
        let body = order(&p, &[("id", Value::I64(1))]);
        let framed = [&[0u8, 0, 0, 0, 5, 0][..], &body].concat();
        let mut vals = Vec::new();
        p.values(&framed, &mut vals, None).unwrap();
        assert_eq!(show(&vals)[0], "1");
        let e = p.values(&body, &mut vals, None).unwrap_err();
        assert_eq!(e.0, Rejection::InvalidProtobuf);
        assert!(e.1.contains("not in the Confluent wire format"), "{}", e.1);
        let e = p.values(&[0, 0, 0, 0, 5, 0, 0x0a, 0xff], &mut vals, None).unwrap_err();
        assert!(e.0 == Rejection::InvalidProtobuf && e.1.contains("does not decode"), "{e:?}");
        // The file's messages by index: Order is the second top-level message.
        let (pool, name) = compile(&order_files(), "x.proto").unwrap();
        let file = pool.get_file_by_name(&name).unwrap();
        assert_eq!(by_indexes(&file, &[1]).unwrap().full_name(), "shop.Order");
        assert_eq!(by_indexes(&file, &[1, 0]).unwrap().full_name(), "shop.Order.AttrsEntry", "a map's entry is nested");
        assert!(by_indexes(&file, &[1, 1]).is_none());
        assert!(by_indexes(&file, &[3]).is_none());
    }

    #[test]
    fn registry_schemas_compile_from_text_or_a_base64_descriptor_with_references() {
        let (pool, _) = compile(&order_files(), "x.proto").unwrap();
        let file = pool.get_file_by_name("x.proto").unwrap();
        let encoded = file.file_descriptor_proto().encode_to_vec();
        let b64 = base64_encode(&encoded);
        let (again, name) = compile(&Fetched { text: b64, references: Vec::new() }, "ignored.proto").unwrap();
        assert_eq!(name, "x.proto", "a descriptor names its own file");
        assert!(again.get_message_by_name("shop.Order").is_some());
        // A reference: an imported file registered as a subject of its own.
        let common =
            Fetched { text: "syntax = \"proto3\"; package c; message Money { int64 cents = 1; }".into(), references: vec![] };
        let main = Fetched {
            text: "syntax = \"proto3\"; import \"c/money.proto\"; message Pay { c.Money amount = 1; }".into(),
            references: vec![("c/money.proto".into(), common)],
        };
        let set = reader_descriptor(&main, "pay-value").unwrap();
        let p = Protobuf::load(&ProtobufConfig {
            reader_subject: Some("pay-value".into()),
            reader_descriptor: Some(set.into()),
            ..ProtobufConfig::default()
        })
        .unwrap();
        assert_eq!(p.fields()[0].kind.to_string(), "struct<cents: long>", "the first message of the subject's file");
        let e = compile(&Fetched { text: "message {".into(), references: vec![] }, "bad.proto").unwrap_err();
        assert!(e.contains("does not compile"), "{e}");
    }

    fn base64_encode(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                out.push(if i <= chunk.len() { A[(n >> (18 - 6 * i)) as usize & 63] as char } else { '=' });
            }
        }
        out
    }
}
