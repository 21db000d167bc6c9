//! `[decode]` (the record format, Avro and its registry) and `[transform]`.

use super::*;

/// How record values become rows. Every row also gets `_kafka_topic`, `_kafka_partition`,
/// `_kafka_offset`, `_kafka_timestamp` and, when committed, `_epoch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// `raw`: `key` and `value` as bytes (Spark's Kafka source schema); `text`: as UTF-8 strings
    /// (`CAST(... AS STRING)`); `json`: the value is a JSON object decoded against `fields`
    /// (`from_json` with a schema).
    pub format: DecodeFormat,
    /// The declared schema for `json`: one entry per column, in order.
    pub fields: Vec<FieldConfig>,
    /// A record whose value is larger than this many bytes is dead-lettered instead of decoded.
    pub max_record_bytes: usize,
    /// For `avro`: the schemas and the framing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avro: Option<AvroConfig>,
    /// For `protobuf`: the descriptors, the message and the framing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protobuf: Option<ProtobufConfig>,
    /// For `json`: the columns from a JSON Schema in a schema registry instead of `fields`, and
    /// the framing of the values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<JsonSchemaConfig>,
    /// What wraps each row (with `[upsert]`): `none`, a value is the row and a null value (a
    /// tombstone) deletes the row of its key; `debezium`, a value is a Debezium change event
    /// (`op`, `before`, `after`, with or without the JSON converter's `schema`/`payload`).
    pub envelope: Envelope,
    /// Add the record's key as the binary column `_kafka_key` (Spark's `key`; `CAST(_kafka_key
    /// AS VARCHAR)` in `[transform]` reads a text key).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub include_key: bool,
    /// Add the record's headers as `_kafka_headers`: a list of `{key: string, value: binary}`
    /// in the record's order, repeated keys included (Spark's `includeHeaders`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub include_headers: bool,
}

/// `decode.envelope`: how a record says what changed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    /// The value is the row; with `[upsert]`, a null value deletes its key's row (the key is
    /// read from the Kafka key: a JSON object holding the key columns, or, with one key
    /// column, its value).
    #[default]
    None,
    /// A Debezium change event: `op` `c`/`r`/`u` upsert `after`, `d` deletes `before`'s key,
    /// a tombstone deletes the Kafka key's row.
    Debezium,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            format: DecodeFormat::Raw,
            fields: Vec::new(),
            max_record_bytes: 1024 * 1024,
            avro: None,
            protobuf: None,
            json: None,
            envelope: Envelope::None,
            include_key: false,
            include_headers: false,
        }
    }
}

/// `decode.avro`: Avro values and where their schemas come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AvroConfig {
    /// The reader schema (`.avsc`, a record): its fields are the table's columns, and every value
    /// is resolved to it. With `framing = "none"` it is also the writer schema. Either this or
    /// `reader_subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_file: Option<PathBuf>,
    /// The reader schema from the registry instead: this subject's version `reader_version`,
    /// fetched once when the config is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_subject: Option<String>,
    /// The version of `reader_subject` (absent: its latest version when the pipeline starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_version: Option<u32>,
    /// The text of the reader schema `reader_subject` names, as fetched
    /// (`plan::Plan`); every decoder of the process reads this one.
    #[serde(skip)]
    pub reader_text: Option<std::sync::Arc<str>>,
    /// How each value is framed (see [`AvroFraming`]).
    #[serde(default)]
    pub framing: AvroFraming,
    /// Writer schemas: with `confluent` framing, `<id>.avsc` per schema id; with `single-object`,
    /// any `.avsc` (found by fingerprint; the reader schema is always known).
    #[serde(default)]
    pub schemas_dir: Option<PathBuf>,
    /// With `confluent` framing: a Confluent-compatible schema registry for the writer schemas
    /// of ids not in `schemas_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryConfig>,
}

/// `decode.protobuf`: Protobuf values and where their descriptors come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProtobufConfig {
    /// The reader schema as a descriptor set (`protoc --include_imports
    /// --descriptor_set_out=<file> <file>.proto`): the fields of `message` are the table's
    /// columns. Either this or `reader_subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor_file: Option<PathBuf>,
    /// The reader schema from the registry instead: this subject's version `reader_version`,
    /// fetched (with the files it imports) once when the config is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_subject: Option<String>,
    /// The version of `reader_subject` (absent: its latest version when the pipeline starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_version: Option<u32>,
    /// The message whose fields are the columns, by full name (`shop.Order`). Absent: the first
    /// message of the reader schema's file (of a descriptor set, its last file: the one `protoc`
    /// was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The reader schema `reader_subject` names, as fetched and compiled (`plan::Plan`): an
    /// encoded `FileDescriptorSet`, its own file last.
    #[serde(skip)]
    pub reader_descriptor: Option<std::sync::Arc<[u8]>>,
    /// How each value is framed: `confluent` (magic byte 0, the 4-byte schema id, the message
    /// indexes, the message) or `none` (the bare message, of the reader's type).
    #[serde(default)]
    pub framing: WireFraming,
    /// With `confluent` framing: a Confluent-compatible schema registry for the writer schemas
    /// (absent: every value is read with the reader schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryConfig>,
    /// A field without presence (a proto3 scalar) that is not set reads as its default value
    /// (`0`, `""`, `false`, the first enum value) instead of null. Spark's `from_protobuf`
    /// option of the same name; both default to null.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emit_default_values: bool,
}

/// `decode.json`: JSON values typed by a JSON Schema in a schema registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaConfig {
    /// The subject whose JSON Schema gives the columns (an object's `properties`, in order),
    /// fetched once when the config is loaded.
    pub reader_subject: String,
    /// The version of `reader_subject` (absent: its latest version when the pipeline starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_version: Option<u32>,
    /// The JSON Schema `reader_subject` names, as fetched (`plan::Plan`).
    #[serde(skip)]
    pub reader_text: Option<std::sync::Arc<str>>,
    /// How each value is framed: `confluent` (magic byte 0, the 4-byte id of a JSON Schema the
    /// registry knows, the JSON text) or `none` (the JSON text).
    #[serde(default = "confluent_framing")]
    pub framing: WireFraming,
    /// The Confluent-compatible schema registry.
    pub registry: RegistryConfig,
}

fn confluent_framing() -> WireFraming {
    WireFraming::Confluent
}

/// How a Protobuf or JSON value is framed in a Kafka record.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WireFraming {
    /// The bare value.
    #[default]
    None,
    /// The Confluent wire format: magic byte 0, a 4-byte big-endian schema id (for Protobuf,
    /// then the message indexes), the value.
    Confluent,
}

/// `[transform]`: SQL over each decoded row and its `_kafka_*` columns, in DataFusion's dialect
/// (see `transform`). Only deterministic expressions: a replay must write the same rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// The columns out, each a column name or `<expression> AS <name>` (Spark's `selectExpr`);
    /// the `_kafka_*` columns always follow. Absent: every decoded column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Vec<String>>,
    /// A condition (Spark's `filter`): rows for which it is not true are dropped — counted, not
    /// dead-lettered. Evaluated before `select`, on the decoded columns.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// `decode.avro.registry`: a Confluent-compatible schema registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `http://host:port` or `https://host:port` (with a path prefix if the registry has one).
    pub url: String,
    /// Basic auth user (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic auth password: a secret (`{ env = "…" }`, `{ file = "…" }` or the value); never
    /// shown.
    #[serde(default)]
    pub password: Option<security::Secret>,
    /// A private CA (PEM) to trust for `https`, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Per request, in milliseconds.
    #[serde(default = "default_registry_timeout_ms")]
    pub timeout_ms: u64,
    /// Tries per schema id before the batch fails (the consumer then restarts through the
    /// restart budget); the pause between tries doubles from 200 ms to at most 5 s.
    #[serde(default = "default_registry_attempts")]
    pub attempts: u32,
}

fn default_registry_timeout_ms() -> u64 {
    10_000
}

fn default_registry_attempts() -> u32 {
    5
}

/// How an Avro value is framed in a Kafka record.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AvroFraming {
    /// The bare Avro body, written with the reader schema.
    #[default]
    None,
    /// The Confluent wire format: magic byte 0, a 4-byte big-endian schema id, the body.
    Confluent,
    /// Avro's single-object encoding: `C3 01`, the 8-byte little-endian CRC-64-AVRO
    /// fingerprint of the writer schema, the body.
    SingleObject,
}

impl DecodeConfig {
    /// The seed article's schema: `{"id": long (not null), "value": string, "ts": timestamp}`.
    pub fn seed() -> Self {
        DecodeConfig {
            format: DecodeFormat::Json,
            fields: vec![
                FieldConfig::new("id", FieldType::Long, false),
                FieldConfig::new("value", FieldType::String, true),
                FieldConfig::new("ts", FieldType::Timestamp, true),
            ],
            ..Default::default()
        }
    }
}

/// How values are decoded.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DecodeFormat {
    /// Key and value as bytes; never dead-letters.
    Raw,
    /// Key and value as UTF-8 strings; non-UTF-8 is dead-lettered.
    Text,
    /// A JSON object per value, decoded against `decode.fields`.
    Json,
    /// An Avro record per value, decoded with its writer schema and resolved to the reader
    /// schema `decode.avro.schema_file`, whose fields are the columns.
    Avro,
    /// A Protobuf message per value, decoded with its writer schema; the reader message's
    /// fields (`decode.protobuf`) are the columns.
    Protobuf,
}

impl PipelineConfig {
    /// Where the columns come from: `decode.fields` (JSON), or exactly one schema of the
    /// format's own table (`decode.avro`, `decode.protobuf`, `decode.json`).
    fn check_schema_source(&self, bad: &Bad) -> Result<(), ConfigError> {
        let d = &self.decode;
        let registry_json = d.json.is_some();
        if d.format == DecodeFormat::Json && d.fields.is_empty() && !registry_json {
            return Err(bad(
                "decode.fields",
                "is empty; `format = \"json\"` needs the schema, e.g. fields = [{ name = \"id\", type = \"long\" }], \
                 or decode.json.reader_subject (a JSON Schema in the registry)"
                    .into(),
            ));
        }
        if !d.fields.is_empty() && (d.format != DecodeFormat::Json || registry_json) {
            let why = match d.format {
                DecodeFormat::Avro => {
                    "is not used with `format = \"avro\"`: the reader schema (decode.avro.schema_file or reader_subject) gives the columns"
                }
                DecodeFormat::Protobuf => {
                    "is not used with `format = \"protobuf\"`: the reader message (decode.protobuf) gives the columns"
                }
                DecodeFormat::Json => "is not used with decode.json: the registry's JSON Schema gives the columns",
                _ => "is only used with `format = \"json\"`",
            };
            return Err(bad("decode.fields", why.into()));
        }
        for (set, table, format) in [
            (d.avro.is_some(), "decode.avro", DecodeFormat::Avro),
            (d.protobuf.is_some(), "decode.protobuf", DecodeFormat::Protobuf),
            (registry_json, "decode.json", DecodeFormat::Json),
        ] {
            if set && d.format != format {
                let name = serde_json::to_value(format).expect("a format serializes");
                return Err(bad(table, format!("is only used with `format = {name}`")));
            }
        }
        match d.format {
            DecodeFormat::Avro => {
                let Some(avro) = &d.avro else {
                    return Err(bad(
                        "decode.avro",
                        "is missing; `format = \"avro\"` needs schema_file = \"<reader schema>.avsc\" (or reader_subject)".into(),
                    ));
                };
                if avro.schema_file.is_some() == avro.reader_subject.is_some() {
                    return Err(bad(
                        "decode.avro",
                        "needs the reader schema once: schema_file = \"<reader schema>.avsc\", or reader_subject = \"<subject>\" \
                         (from decode.avro.registry)"
                            .into(),
                    ));
                }
                if avro.reader_version.is_some() && avro.reader_subject.is_none() {
                    return Err(bad("decode.avro.reader_version", "is the version of reader_subject, which is not set".into()));
                }
            }
            DecodeFormat::Protobuf => {
                let Some(proto) = &d.protobuf else {
                    return Err(bad(
                        "decode.protobuf",
                        "is missing; `format = \"protobuf\"` needs descriptor_file = \"<set>.desc\" (or reader_subject)".into(),
                    ));
                };
                if proto.descriptor_file.is_some() == proto.reader_subject.is_some() {
                    return Err(bad(
                        "decode.protobuf",
                        "needs the reader schema once: descriptor_file = \"<descriptor set>\" (protoc --include_imports \
                         --descriptor_set_out), or reader_subject = \"<subject>\" (from decode.protobuf.registry)"
                            .into(),
                    ));
                }
                if proto.reader_version.is_some() && proto.reader_subject.is_none() {
                    return Err(bad(
                        "decode.protobuf.reader_version",
                        "is the version of reader_subject, which is not set".into(),
                    ));
                }
                if proto.reader_subject.is_some() && proto.registry.is_none() {
                    return Err(bad(
                        "decode.protobuf.reader_subject",
                        "needs decode.protobuf.registry, the registry to read it from".into(),
                    ));
                }
                if proto.registry.is_some() && proto.framing != WireFraming::Confluent {
                    return Err(bad(
                        "decode.protobuf.registry",
                        "finds writer schemas by the id of the Confluent wire format: set framing = \"confluent\"".into(),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `[decode]` and `[transform]`, as far as the text tells.
    pub(super) fn check_decode(&self, bad: &Bad) -> Result<(), ConfigError> {
        self.check_schema_source(bad)?;
        let mut seen = std::collections::HashSet::new();
        for f in &self.decode.fields {
            if f.name.is_empty() || f.name.starts_with("_kafka") || f.name == "_epoch" {
                return Err(bad(
                    "decode.fields",
                    format!(
                        "has the name {:?}; names must be non-empty and not clash with the `_kafka_*` / `_epoch` columns",
                        f.name
                    ),
                ));
            }
            if !seen.insert(f.name.as_str()) {
                return Err(bad("decode.fields", format!("names {:?} twice", f.name)));
            }
            check_members(&f.kind, &f.name).map_err(|e| bad("decode.fields", e))?;
        }
        if self.decode.max_record_bytes == 0 {
            return Err(bad("decode.max_record_bytes", "must be at least 1".into()));
        }
        if self.transform.as_ref().is_some_and(|t| t.select.is_some()) && self.takes_writer_columns() {
            return Err(bad(
                "transform.select",
                "names the columns out, so the columns writer schemas add (sink.schema_evolution = \"add-columns\") \
                 would never reach the table; select them by name, or use transform.where alone"
                    .into(),
            ));
        }
        Ok(())
    }
}
