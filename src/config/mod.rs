//! The pipeline configuration: one TOML file, every field documented here, safe defaults.
//!
//! Layering: built-in defaults -> the file -> the environment (`KAFKA_BROKERS` replaces
//! `source.brokers`). Unknown keys are errors, so a typo never silently becomes a default.
//! The reference with every field is `docs/config.md`; `examples/` holds runnable files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::model::{StorageOptions, TableLocation};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod security;

pub use crate::error::ConfigError;

/// Whether a config line may carry a secret (a password, a key, a token): a parse error then
/// names the line by number only, never quoting it.
fn may_hold_a_secret(line: &str) -> bool {
    let key = line.split('=').next().unwrap_or(line).to_ascii_lowercase();
    ["password", "secret", "token", "credential", "access_key", "account_key", "sas_", "jaas"].iter().any(|w| key.contains(w))
}

/// Consumer properties the pipeline sets itself, which `source.properties` may not change, and
/// why (the config check quotes the reason).
pub const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    ("enable.auto.commit", "progress lives in the checkpoint and the sink, not in Kafka"),
    ("enable.auto.offset.store", "progress lives in the checkpoint and the sink, not in Kafka"),
    ("group.id", "progress lives in the checkpoint and the sink, not in Kafka"),
    ("isolation.level", "the pipeline reads read_committed, so records of aborted or open transactions never reach a table"),
    (
        "auto.offset.reset",
        "a committed position that Kafka no longer holds stops the pipeline instead of silently skipping records",
    ),
];

/// Consumer properties group mode sets itself (beyond [`MANAGED_PROPERTIES`]).
pub const GROUP_MANAGED_PROPERTIES: &[(&str, &str)] = &[(
    "partition.assignment.strategy",
    "group mode uses cooperative-sticky: a rebalance moves only the partitions that change owner",
)];

/// How a check names a field and its problem.
type Bad<'a> = dyn Fn(&str, String) -> ConfigError + 'a;

/// Environment variable that replaces `source.brokers` when set.
pub const BROKERS_ENV: &str = "KAFKA_BROKERS";

/// A whole pipeline: where to read, how to cut epochs, where to write, where to keep progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Pipeline identity. It names the checkpoint and, in the Delta sink, the `txn` appId that
    /// makes commits idempotent: two pipelines must never share an id, and an id must not change
    /// for the life of its output. Letters, digits, `.`, `_` and `-`.
    pub id: String,
    /// The Kafka source.
    #[serde(default)]
    pub source: SourceConfig,
    /// How record values become rows (Spark's `CAST(value AS STRING)` / `from_json`).
    #[serde(default)]
    pub decode: DecodeConfig,
    /// Shape the decoded rows (Spark's `selectExpr` / `filter`) before every later stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformConfig>,
    /// Drop records whose key was already seen (Spark's `dropDuplicates`), with bounded state.
    #[serde(default)]
    pub dedup: Option<DedupConfig>,
    /// Keyed aggregation (Spark's `groupBy(...).agg(...)`); the sink then gets the result table.
    #[serde(default)]
    pub aggregate: Option<AggregateConfig>,
    /// Memory bounds of the RocksDB state in the checkpoint dir.
    #[serde(default)]
    pub state: StateConfig,
    /// How the stream is cut into epochs (Spark's trigger interval).
    #[serde(default)]
    pub epoch: EpochConfig,
    /// Where committed epochs go.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Where progress is recorded.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Restart policy of the actor tree.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
}

/// Where records come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Kafka bootstrap servers, comma separated. Replaced by `KAFKA_BROKERS` when that is set.
    pub brokers: String,
    /// Topics to read; every partition of each is read by its own consumer actor.
    pub topics: Vec<String>,
    /// Where a pipeline with no checkpoint starts: `earliest` (the whole retained topic) or
    /// `latest` (only records produced after the first start). Ignored once a checkpoint exists.
    pub starting_offsets: StartingOffsets,
    /// Most records a consumer forwards in one message to the aggregator.
    pub max_batch_records: usize,
    /// Back-pressure: consumers stop reading while this many records are consumed but not yet
    /// committed (a slow sink then bounds memory instead of growing it).
    pub max_buffered_records: u64,
    /// TLS and authentication of every connection to the brokers (`[source.security]`; see
    /// docs/config.md and the README's "Secured Kafka").
    pub security: security::SecurityConfig,
    /// Extra librdkafka client properties (fetch sizes, rarer security settings, ...), given to
    /// every client the pipeline, `verify`, `produce` and `topics` make. The properties in
    /// [`kafka::MANAGED_PROPERTIES`] (`enable.auto.commit`, `group.id`, `isolation.level`, ...)
    /// are managed by the pipeline and refused here: Kafka's committed offsets are never the
    /// source of truth, and records of aborted transactions never reach a table.
    pub properties: BTreeMap<String, String>,
    /// How long to wait for the brokers at start-up before giving up, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How often the topics' partition lists are looked up while running, in milliseconds.
    /// Partitions added to a topic are read from their earliest offset within this delay (the
    /// open epoch is committed, then the actor tree restarts with a consumer for each new
    /// partition; no restart budget is spent).
    pub partition_discovery_ms: u64,
    /// Group mode: the Kafka consumer group several processes of this pipeline share. Every
    /// process started with the same config (same `id`, same `group_id`) owns a share of the
    /// topics' partitions (cooperative-sticky assignment), runs the actor tree for them and
    /// commits its own epochs to the shared tables; the table, not the checkpoint, says where
    /// each partition resumes (ARCHITECTURE.md, "Group mode"). Unset: one process reads every
    /// partition (the default). Stateless pipelines only, for now.
    pub group_id: Option<String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            brokers: "127.0.0.1:9092".into(),
            topics: Vec::new(),
            starting_offsets: StartingOffsets::Earliest,
            max_batch_records: 5_000,
            max_buffered_records: 1_000_000,
            security: Default::default(),
            properties: BTreeMap::new(),
            connect_timeout_ms: 10_000,
            partition_discovery_ms: 10_000,
            group_id: None,
        }
    }
}

/// Where a fresh pipeline starts reading.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartingOffsets {
    /// From the oldest retained record.
    Earliest,
    /// From the end of each partition at first start.
    Latest,
}

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
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig { format: DecodeFormat::Raw, fields: Vec::new(), max_record_bytes: 1024 * 1024, avro: None }
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
}

/// One declared column (or, inside a `struct`, one member).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "FieldSpec", into = "FieldSpec")]
pub struct FieldConfig {
    /// Column name = JSON key.
    pub name: String,
    /// Column type.
    pub kind: FieldType,
    /// Whether the key may be missing or null (then the column is null). A record missing a
    /// non-nullable field is dead-lettered.
    pub nullable: bool,
}

impl FieldConfig {
    /// A field of `kind`, nullable or not.
    pub fn new(name: &str, kind: FieldType, nullable: bool) -> Self {
        FieldConfig { name: name.to_string(), kind, nullable }
    }
}

/// A field as written in the config: `{ name = "id", type = "long", nullable = false }`; a
/// `struct` gives its members either inline (`type = "struct<a: long, b: string>"`) or as
/// `fields = [...]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldSpec {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    nullable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fields: Option<Vec<FieldConfig>>,
}

impl TryFrom<FieldSpec> for FieldConfig {
    type Error = String;

    fn try_from(spec: FieldSpec) -> std::result::Result<Self, String> {
        let kind = match (FieldType::parse(&spec.kind), spec.fields) {
            (Ok(FieldType::Struct(inline)), None) if inline.is_empty() => {
                return Err(format!(
                    "field `{}`: a struct needs its members: `fields = [...]` or `struct<a: long, ...>`",
                    spec.name
                ))
            }
            (Ok(FieldType::Struct(inline)), Some(fields)) if inline.is_empty() => FieldType::Struct(fields),
            (Ok(_), Some(_)) => return Err(format!("field `{}`: `fields` is only for `type = \"struct\"`", spec.name)),
            (Ok(kind), None) => kind,
            (Err(e), _) => return Err(format!("field `{}`: {e}", spec.name)),
        };
        Ok(FieldConfig { name: spec.name, kind, nullable: spec.nullable })
    }
}

impl From<FieldConfig> for FieldSpec {
    fn from(f: FieldConfig) -> Self {
        FieldSpec { name: f.name, kind: f.kind.to_string(), nullable: f.nullable, fields: None }
    }
}

fn yes() -> bool {
    true
}

/// Column types a JSON field can be decoded to, each stored as the Delta type Spark writes for
/// it. In the config a type is written as text: `long`, `decimal(12, 2)`, `array<string>`,
/// `map<string, double>`, `struct<id: long not null, tags: array<string>>`.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    /// UTF-8 text (a JSON string).
    String,
    /// 64-bit integer (a JSON integer).
    Long,
    /// 32-bit integer (a JSON integer in range).
    Int,
    /// 64-bit float (any JSON number).
    Double,
    /// 32-bit float (any JSON number, rounded to the nearest `float`; Avro `float`).
    Float,
    /// `true` / `false`.
    Boolean,
    /// A timestamp given as epoch milliseconds (a JSON integer) or as an RFC 3339 / ISO 8601
    /// string with a zone (`2026-11-26T12:00:00.123456Z`, `…+02:00`; microseconds kept);
    /// stored as a Delta `timestamp` (UTC, microseconds).
    Timestamp,
    /// A calendar date given as an ISO 8601 string `YYYY-MM-DD`; stored as a Delta `date`.
    Date,
    /// Bytes given as a base64 string (standard alphabet, padded, as Spark's `to_json` writes
    /// binary); stored as a Delta `binary`.
    Binary,
    /// An exact decimal number with `precision` digits, `scale` of them after the point, given
    /// as a JSON number or a string (`12.30`, `"12.30"`, `1.2e1`), read from its text (never
    /// through a float). More fraction digits than `scale`, or more integer digits than
    /// `precision - scale`, make the record a dead letter.
    Decimal {
        /// Total digits, 1 to 38.
        precision: u8,
        /// Digits after the point, 0 to `precision`.
        scale: u8,
    },
    /// A JSON array of values of one type (elements may be null); a Delta `array`.
    List(Box<FieldType>),
    /// A JSON object with string keys and values of one type (values may be null); a Delta
    /// `map<string, T>`.
    Map(Box<FieldType>),
    /// A JSON object with declared members (others ignored); a Delta `struct`.
    Struct(Vec<FieldConfig>),
}

impl FieldType {
    /// Parses a type as written in the config (case-insensitive keywords).
    pub fn parse(text: &str) -> std::result::Result<FieldType, String> {
        let mut p = TypeParser { s: text, at: 0 };
        let t = p.ty()?;
        p.space();
        if p.at < p.s.len() {
            return Err(format!("unexpected {:?} in type {text:?}", &p.s[p.at..]));
        }
        Ok(t)
    }

    /// Whether values of this type can form a key (dedup, grouping): not nested, not decimal,
    /// not float.
    pub fn is_key_type(&self) -> bool {
        !matches!(
            self,
            FieldType::Float | FieldType::Decimal { .. } | FieldType::List(_) | FieldType::Map(_) | FieldType::Struct(_)
        )
    }
}

impl std::fmt::Display for FieldType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldType::String => f.write_str("string"),
            FieldType::Long => f.write_str("long"),
            FieldType::Int => f.write_str("int"),
            FieldType::Double => f.write_str("double"),
            FieldType::Float => f.write_str("float"),
            FieldType::Boolean => f.write_str("boolean"),
            FieldType::Timestamp => f.write_str("timestamp"),
            FieldType::Date => f.write_str("date"),
            FieldType::Binary => f.write_str("binary"),
            FieldType::Decimal { precision, scale } => write!(f, "decimal({precision}, {scale})"),
            FieldType::List(t) => write!(f, "array<{t}>"),
            FieldType::Map(t) => write!(f, "map<string, {t}>"),
            FieldType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, m) in fields.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    let not_null = if m.nullable { "" } else { " not null" };
                    if !m.name.is_empty() && m.name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                        write!(f, "{sep}{}: {}{not_null}", m.name, m.kind)?;
                    } else {
                        write!(f, "{sep}`{}`: {}{not_null}", m.name, m.kind)?;
                    }
                }
                f.write_str(">")
            }
        }
    }
}

/// Checks the members of a struct anywhere in `t` (under `at`): named, each once.
fn check_members(t: &FieldType, at: &str) -> std::result::Result<(), String> {
    match t {
        FieldType::List(t) | FieldType::Map(t) => check_members(t, at),
        FieldType::Struct(members) => {
            let mut seen = std::collections::HashSet::new();
            for m in members {
                if m.name.is_empty() || !seen.insert(m.name.as_str()) {
                    return Err(format!("struct `{at}` has an empty or repeated member name {:?}", m.name));
                }
                check_members(&m.kind, &format!("{at}.{}", m.name))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A recursive-descent reader of the type text.
struct TypeParser<'a> {
    s: &'a str,
    at: usize,
}

impl TypeParser<'_> {
    fn space(&mut self) {
        while self.s[self.at..].starts_with(char::is_whitespace) {
            self.at += self.s[self.at..].chars().next().map_or(1, char::len_utf8);
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.space();
        if self.s[self.at..].starts_with(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected `{c}` at {:?} in type {:?}", &self.s[self.at..], self.s))
        }
    }

    /// A word: letters, digits, `_` (a member name or a keyword), or a backquoted name.
    fn word(&mut self) -> std::result::Result<String, String> {
        self.space();
        let rest = &self.s[self.at..];
        if let Some(quoted) = rest.strip_prefix('`') {
            let end = quoted.find('`').ok_or_else(|| format!("unclosed ` in type {:?}", self.s))?;
            self.at += end + 2;
            return Ok(quoted[..end].to_string());
        }
        let len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if len == 0 {
            return Err(format!("expected a type or name at {rest:?} in type {:?}", self.s));
        }
        self.at += len;
        Ok(rest[..len].to_string())
    }

    fn number(&mut self) -> std::result::Result<u8, String> {
        let w = self.word()?;
        w.parse().map_err(|_| format!("expected a number, got {w:?} in type {:?}", self.s))
    }

    fn ty(&mut self) -> std::result::Result<FieldType, String> {
        let word = self.word()?;
        Ok(match word.to_ascii_lowercase().as_str() {
            "string" => FieldType::String,
            "long" | "bigint" => FieldType::Long,
            "int" | "integer" => FieldType::Int,
            "double" => FieldType::Double,
            "float" | "real" => FieldType::Float,
            "boolean" => FieldType::Boolean,
            "timestamp" => FieldType::Timestamp,
            "date" => FieldType::Date,
            "binary" => FieldType::Binary,
            "decimal" => {
                let (precision, scale) = if self.eat('(') {
                    let p = self.number()?;
                    let s = if self.eat(',') { self.number()? } else { 0 };
                    self.expect(')')?;
                    (p, s)
                } else {
                    (10, 0)
                };
                if !(1..=38).contains(&precision) || scale > precision {
                    return Err(format!("decimal({precision}, {scale}): precision must be 1 to 38 and scale 0 to the precision"));
                }
                FieldType::Decimal { precision, scale }
            }
            "array" | "list" => {
                self.expect('<')?;
                let t = self.ty()?;
                self.expect('>')?;
                FieldType::List(Box::new(t))
            }
            "map" => {
                self.expect('<')?;
                if self.ty()? != FieldType::String {
                    return Err(format!("map keys must be strings (JSON object keys), in type {:?}", self.s));
                }
                self.expect(',')?;
                let t = self.ty()?;
                self.expect('>')?;
                FieldType::Map(Box::new(t))
            }
            "struct" => {
                let mut fields = Vec::new();
                if self.eat('<') {
                    loop {
                        let name = self.word()?;
                        self.expect(':')?;
                        let kind = self.ty()?;
                        let save = self.at;
                        let nullable = match self.word() {
                            Ok(w) if w.eq_ignore_ascii_case("not") => {
                                let null = self.word()?;
                                if !null.eq_ignore_ascii_case("null") {
                                    return Err(format!("expected `not null` in type {:?}", self.s));
                                }
                                false
                            }
                            _ => {
                                self.at = save;
                                true
                            }
                        };
                        fields.push(FieldConfig { name, kind, nullable });
                        if !self.eat(',') {
                            break;
                        }
                    }
                    self.expect('>')?;
                }
                FieldType::Struct(fields)
            }
            other => {
                return Err(format!(
                    "unknown type {other:?}; types are string, long, int, double, float, boolean, timestamp, date, binary, \
                     decimal(p, s), array<T>, map<string, T>, struct<name: T, ...>"
                ))
            }
        })
    }
}

/// Deduplication by key within a bounded retention.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Columns whose values together form the key (the seed's `["id"]`).
    pub key: Vec<String>,
    /// Event-time retention (Spark's `dropDuplicatesWithinWatermark`): this timestamp column's
    /// maximum minus `allowed_lateness_ms` is the watermark; keys older than it expire, and records
    /// older than it are too late to dedup (they go to the dead-letter table).
    #[serde(default)]
    pub watermark_field: Option<String>,
    /// With `watermark_field`: how far behind the newest event time a record may be.
    #[serde(default)]
    pub allowed_lateness_ms: u64,
    /// Epoch retention: a key expires this many epochs after it was first seen.
    #[serde(default)]
    pub max_age_epochs: Option<u64>,
    /// With `watermark_field`: how far an event time may be ahead of its record's Kafka
    /// timestamp (when it was produced). A record past it goes to the dead-letter table instead
    /// of advancing the watermark — one event stamped in the year 2100 would otherwise make every
    /// later record "too late". The Kafka timestamp (not the wall clock) keeps a replay
    /// deterministic.
    #[serde(default = "default_max_future_ms")]
    pub max_future_ms: u64,
}

fn default_max_future_ms() -> u64 {
    3_600_000
}

impl DedupConfig {
    /// Dedup by `key` with epoch retention (`max_age_epochs`) and the other settings' defaults.
    pub fn by_epochs(key: &[&str], max_age_epochs: u64) -> Self {
        DedupConfig {
            key: key.iter().map(|k| k.to_string()).collect(),
            watermark_field: None,
            allowed_lateness_ms: 0,
            max_age_epochs: Some(max_age_epochs),
            max_future_ms: default_max_future_ms(),
        }
    }

    /// Dedup by `key` with event-time retention on `watermark_field`.
    pub fn by_watermark(key: &[&str], watermark_field: &str, allowed_lateness_ms: u64) -> Self {
        DedupConfig {
            key: key.iter().map(|k| k.to_string()).collect(),
            watermark_field: Some(watermark_field.to_string()),
            allowed_lateness_ms,
            max_age_epochs: None,
            max_future_ms: default_max_future_ms(),
        }
    }
}

/// Keyed aggregation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Grouping columns (the seed's `groupBy("value")`).
    pub group_by: Vec<String>,
    /// Aggregates per group.
    pub aggregates: Vec<AggregateSpec>,
    /// `complete`: every epoch replaces the whole result table; `update`: every epoch rewrites
    /// only the buckets holding keys that changed.
    #[serde(default = "default_output_mode")]
    pub output_mode: OutputMode,
    /// The result table is partitioned into this many `_bucket`s by a hash of the group key;
    /// `update` rewrites only the buckets whose keys changed.
    #[serde(default = "default_buckets")]
    pub buckets: u32,
}

impl AggregateConfig {
    /// `groupBy(group_by).count()` in `mode` over `buckets` buckets.
    pub fn count_by(group_by: &[&str], mode: OutputMode, buckets: u32) -> Self {
        AggregateConfig {
            group_by: group_by.iter().map(|g| g.to_string()).collect(),
            aggregates: vec![AggregateSpec { op: AggregateOp::Count, field: None, name: None }],
            output_mode: mode,
            buckets,
        }
    }
}

fn default_output_mode() -> OutputMode {
    OutputMode::Complete
}

fn default_buckets() -> u32 {
    16
}

/// One aggregate column.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    /// `count`, `sum`, `min` or `max`.
    pub op: AggregateOp,
    /// The aggregated column (not for `count`).
    #[serde(default)]
    pub field: Option<String>,
    /// Output column name; default `count` / `sum_<field>` / `min_<field>` / `max_<field>`.
    #[serde(default)]
    pub name: Option<String>,
}

impl AggregateSpec {
    /// The output column name.
    pub fn column(&self) -> String {
        self.name.clone().unwrap_or_else(|| match (&self.op, &self.field) {
            (AggregateOp::Count, _) => "count".into(),
            (op, Some(f)) => format!("{}_{f}", op.as_str()),
            (op, None) => op.as_str().into(),
        })
    }
}

/// Aggregate functions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AggregateOp {
    /// Rows per group.
    Count,
    /// Sum of a numeric column (nulls skipped).
    Sum,
    /// Minimum of a numeric or timestamp column.
    Min,
    /// Maximum of a numeric or timestamp column.
    Max,
}

impl AggregateOp {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            AggregateOp::Count => "count",
            AggregateOp::Sum => "sum",
            AggregateOp::Min => "min",
            AggregateOp::Max => "max",
        }
    }
}

/// Output modes of an aggregation (Spark's `outputMode`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// The whole result, every epoch.
    Complete,
    /// Only what changed, every epoch.
    Update,
}

/// Memory bounds of the RocksDB state: the process's RSS stays bounded while the key count grows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Block cache shared by all column families, in MiB.
    pub block_cache_mb: usize,
    /// Write buffer (memtable) size per column family, in MiB (two per family at most).
    pub write_buffer_mb: usize,
    /// An epoch with at least this many new dedup keys writes them as sorted table files that
    /// RocksDB ingests, instead of inserting them one by one into its memtables (a catching-up
    /// pipeline's large epochs); smaller epochs use the write batch.
    pub bulk_insert_min_keys: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { block_cache_mb: 64, write_buffer_mb: 16, bulk_insert_min_keys: 20_000 }
    }
}

/// Epoch boundaries: an epoch closes after `interval_ms`, or earlier once `max_records` records
/// are buffered, whichever comes first. Epochs with no new records are not committed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EpochConfig {
    /// Epoch interval in milliseconds (the seed's trigger interval).
    pub interval_ms: u64,
    /// Close the epoch early once this many records are buffered.
    pub max_records: usize,
}

impl Default for EpochConfig {
    fn default() -> Self {
        EpochConfig { interval_ms: 1_000, max_records: 200_000 }
    }
}

impl EpochConfig {
    /// The interval as a [`Duration`].
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// Where committed epochs are written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)] // one per config, built once
pub enum SinkConfig {
    /// Print each epoch to standard output, like Spark's `format("console")`. For debugging:
    /// it keeps no record of what it printed, so a crash can print an epoch twice.
    Console {
        /// Rows printed per epoch (Spark's `numRows`); the rest are counted, not printed.
        #[serde(default = "default_num_rows")]
        num_rows: usize,
    },
    /// Append to a Delta Lake table (Spark's `format("delta").outputMode("append")`), exactly
    /// once: each epoch is one Delta commit carrying the pipeline's `txn` action.
    Delta {
        /// Table location: a local directory or an object-store URL (`s3://bucket/prefix`,
        /// `abfss://…`, `gs://…`); created with the pipeline's schema on first run.
        path: TableLocation,
        /// The dead-letter table for records that do not decode. Default: `<path>_dead_letters`.
        #[serde(default)]
        dead_letter_path: Option<TableLocation>,
        /// delta-rs storage options for object-store tables (endpoint, region, credentials), over
        /// the standard environment variables. Values are never shown.
        #[serde(default)]
        storage: StorageOptions,
        /// Write a Delta checkpoint every this many commits (`delta.checkpointInterval`). The
        /// pipeline writes it in the background, never in an epoch's commit.
        #[serde(default = "default_checkpoint_interval")]
        checkpoint_interval: u64,
        /// How long log entries are kept (`delta.logRetentionDuration`), e.g. `"7 days"`.
        #[serde(default = "default_retention")]
        log_retention: Retention,
        /// How long removed files stay on disk before `exactly vacuum` may delete them
        /// (`delta.deletedFileRetentionDuration`), e.g. `"7 days"`. Unset: 7 days for append and
        /// dead-letter tables, [`AGGREGATE_DELETED_FILE_RETENTION`] for aggregate tables.
        #[serde(default)]
        deleted_file_retention: Option<Retention>,
        /// Auto-compaction of small files.
        #[serde(default)]
        compaction: CompactionConfig,
        /// What happens when the pipeline's columns differ from the table's: `none` refuses to
        /// start; `add-columns` adds new nullable columns (and new nullable struct members) to
        /// the table's schema in the commit of the first epoch written with them. With Avro,
        /// `add-columns` also makes the fields a writer schema has beyond the reader schema's
        /// columns, as records written with it arrive (no restart). Dropping, retyping
        /// (widening included) or changing a column's nullability is refused either way,
        /// naming the column.
        #[serde(default)]
        schema_evolution: SchemaEvolution,
        /// Partition columns of the data table (Spark's `partitionBy`): any columns of the rows
        /// written, typically a derived date or hour (`[transform]`). Files are written per
        /// partition value. An existing table must be partitioned the same. Not for aggregate
        /// tables; the dead-letter table is never partitioned.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        partition_by: Vec<String>,
        /// More tables fed from the same read (`[[sink.outputs]]`, Spark's one query per output
        /// table): each with its own `where` / `select` over the rows of `path`, committed in
        /// the same epoch, each with its own `txn`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        outputs: Vec<OutputConfig>,
    },
}

/// `[[sink.outputs]]`: another table from the same read, with its own filter and projection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Names the output in errors and dead-letter reasons (letters, digits, `_`, `-`).
    pub name: String,
    /// Its table (with `sink.storage`'s options).
    pub path: TableLocation,
    /// The columns out, over the rows `sink.path` gets (see [`TransformConfig::select`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Vec<String>>,
    /// Which of those rows it gets (see [`TransformConfig::filter`]).
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Its partition columns (see `sink.partition_by`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
}

impl OutputConfig {
    /// Its `where` / `select` as a transform.
    pub fn transform(&self) -> TransformConfig {
        TransformConfig { select: self.select.clone(), filter: self.filter.clone() }
    }
}

/// `sink.schema_evolution`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SchemaEvolution {
    /// The table's columns must be the pipeline's.
    #[default]
    None,
    /// New nullable columns are added to the table with the first epoch that writes them.
    AddColumns,
}

fn default_checkpoint_interval() -> u64 {
    100
}

fn default_retention() -> Retention {
    Retention::default_retention()
}

/// The default `sink.log_retention`, and `sink.deleted_file_retention` of append and dead-letter
/// tables: Delta's own default, the time-travel window readers expect.
pub const DEFAULT_RETENTION: (u64, &str) = (7, "days");

/// The default `sink.deleted_file_retention` of an aggregate table. Every epoch replaces the
/// files of the buckets it touched, and each Delta checkpoint lists every file removed within
/// the retention: at 7 days a 16-bucket table at a 1 s epoch would carry ~10 million such
/// entries in each checkpoint. The replaced files are superseded results, not history; a few
/// minutes cover readers still reading the previous version.
pub const AGGREGATE_DELETED_FILE_RETENTION: (u64, &str) = (5, "minutes");

impl SinkConfig {
    /// `schema_evolution` of a Delta sink (`None` for any other).
    pub fn schema_evolution(&self) -> SchemaEvolution {
        match self {
            SinkConfig::Delta { schema_evolution, .. } => *schema_evolution,
            _ => SchemaEvolution::None,
        }
    }

    /// `outputs` of a Delta sink (empty for any other).
    pub fn outputs(&self) -> &[OutputConfig] {
        match self {
            SinkConfig::Delta { outputs, .. } => outputs,
            _ => &[],
        }
    }

    /// `partition_by` of a Delta sink (empty for any other).
    pub fn partition_by(&self) -> &[String] {
        match self {
            SinkConfig::Delta { partition_by, .. } => partition_by,
            _ => &[],
        }
    }

    /// A Delta sink at `path` with every other setting at its default.
    pub fn delta(path: impl Into<TableLocation>) -> Self {
        SinkConfig::Delta {
            path: path.into(),
            dead_letter_path: None,
            storage: StorageOptions::default(),
            checkpoint_interval: default_checkpoint_interval(),
            log_retention: default_retention(),
            deleted_file_retention: None,
            compaction: CompactionConfig::default(),
            schema_evolution: SchemaEvolution::None,
            partition_by: Vec::new(),
            outputs: Vec::new(),
        }
    }
}

/// Auto-compaction: small files of committed epochs are merged in the background, by size tier,
/// in commits of their own that change no data (`dataChange = false`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Compact append and dead-letter tables in the background (aggregate tables need none:
    /// each bucket is one file).
    pub enabled: bool,
    /// Files at least this big are done; compaction writes files up to this size. MiB.
    pub target_file_size_mb: u64,
    /// Files of one size tier are merged once there are this many of them.
    pub min_files: usize,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig { enabled: true, target_file_size_mb: 128, min_files: 10 }
    }
}

/// A retention such as `"7 days"`, `"12 hours"`, `"30 minutes"`: a number and a unit, checked
/// when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    text: String,
    length: Duration,
}

impl Retention {
    /// Parses `"<n> <unit>"` (second, minute, hour, day, week; singular or plural).
    pub fn parse(text: &str) -> Result<Retention, String> {
        let bad = || format!("is {text:?}; give a number and a unit, e.g. \"7 days\", \"12 hours\"");
        let mut parts = text.split_whitespace();
        let n: u64 = parts.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let unit = parts.next().ok_or_else(bad)?;
        let secs = match (unit.trim_end_matches('s'), parts.next()) {
            ("second", None) => 1,
            ("minute", None) => 60,
            ("hour", None) => 3_600,
            ("day", None) => 86_400,
            ("week", None) => 604_800,
            _ => return Err(bad()),
        };
        Ok(Retention { text: format!("{n} {unit}"), length: Duration::from_secs(n * secs) })
    }

    /// [`DEFAULT_RETENTION`].
    pub fn default_retention() -> Retention {
        let (n, unit) = DEFAULT_RETENTION;
        Retention { text: format!("{n} {unit}"), length: Duration::from_secs(n * 86_400) }
    }

    /// [`AGGREGATE_DELETED_FILE_RETENTION`].
    pub fn aggregate_deleted_files() -> Retention {
        let (n, unit) = AGGREGATE_DELETED_FILE_RETENTION;
        Retention { text: format!("{n} {unit}"), length: Duration::from_secs(n * 60) }
    }

    /// The Delta table property value (`"interval 7 days"`).
    pub fn property(&self) -> String {
        format!("interval {}", self.text)
    }

    /// How long.
    pub fn length(&self) -> Duration {
        self.length
    }
}

impl Serialize for Retention {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Retention::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

fn default_num_rows() -> usize {
    20
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::Console { num_rows: default_num_rows() }
    }
}

/// Where progress is recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Checkpoint directory (Spark's `checkpointLocation`). Default: `data/checkpoints/<id>`.
    /// One directory per pipeline; never share it.
    pub dir: Option<PathBuf>,
    /// When the checkpoint is missing (a fresh disk, a container that lost its volume) and the
    /// table holds epochs of this pipeline, rebuild the checkpoint from the table's last epoch
    /// and resume after it, instead of refusing. Stateless pipelines only: the table records
    /// offsets, not dedup keys or running totals. Off by default.
    pub rebuild_from_table: bool,
}

/// Prometheus metrics endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on, e.g. `127.0.0.1:9464`. Unset: no endpoint.
    pub listen: Option<String>,
}

/// The restart budget: at most `max_restarts` restarts within `window_secs`; one more failure
/// stops the pipeline with an error (and a non-zero exit).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Restarts allowed within the window.
    pub max_restarts: usize,
    /// The window, in seconds.
    pub window_secs: u64,
    /// Delay before a restart, in milliseconds (doubles on each restart inside the window).
    pub backoff_ms: u64,
    /// How long a graceful stop (Ctrl-C, SIGTERM) may take to commit the open epoch, in
    /// milliseconds. Past it the pipeline stops without that epoch — the checkpoint is intact and
    /// the next start reads those records again — and exits non-zero.
    pub shutdown_timeout_ms: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig { max_restarts: 10, window_secs: 60, backoff_ms: 100, shutdown_timeout_ms: 30_000 }
    }
}

impl PipelineConfig {
    /// A minimal config for `id` reading `topics`, everything else default.
    pub fn new(id: impl Into<String>, topics: &[&str]) -> Self {
        PipelineConfig {
            id: id.into(),
            source: SourceConfig { topics: topics.iter().map(|t| t.to_string()).collect(), ..Default::default() },
            decode: DecodeConfig::default(),
            transform: None,
            dedup: None,
            aggregate: None,
            state: StateConfig::default(),
            epoch: EpochConfig::default(),
            sink: SinkConfig::default(),
            checkpoint: CheckpointConfig::default(),
            metrics: MetricsConfig::default(),
            supervisor: SupervisorConfig::default(),
        }
    }

    /// Reads, parses, applies the environment, and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let mut config = Self::parse(&text, &shown)?;
        config.apply_env();
        config.validate(&shown)?;
        Ok(config)
    }

    /// Parses TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let location = match e.span() {
                Some(span) => {
                    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                    if line.is_empty() || may_hold_a_secret(line) {
                        format!("line {line_no}")
                    } else {
                        format!("line {line_no} (`{line}`)")
                    }
                }
                None => "top level".to_string(),
            };
            ConfigError::Parse { path: origin.to_string(), location, message: e.message().trim().to_string() }
        })
    }

    /// Applies environment overrides (`KAFKA_BROKERS`).
    pub fn apply_env(&mut self) {
        if let Ok(brokers) = std::env::var(BROKERS_ENV) {
            if !brokers.trim().is_empty() {
                self.source.brokers = brokers;
            }
        }
    }

    /// Checks values that parse but make no sense, section by section: what the text alone
    /// can tell. What needs the decoder (a key column's type, an output's expression) is
    /// checked when the config is planned (`plan::Plan::new`).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad =
            |field: &str, problem: String| ConfigError::Invalid { path: origin.to_string(), field: field.to_string(), problem };
        self.check_id(&bad)?;
        self.check_source(&bad, origin)?;
        self.check_runtime(&bad)?;
        self.check_group(&bad)?;
        self.check_decode(&bad)?;
        self.check_stateful(&bad)?;
        self.check_sink(&bad)
    }

    /// `id`.
    fn check_id(&self, bad: &Bad) -> Result<(), ConfigError> {
        if self.id.is_empty() || !self.id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(bad(
                "id",
                format!(
                    "is {:?}; use letters, digits, '.', '_' or '-' (it names the checkpoint and the Delta txn appId)",
                    self.id
                ),
            ));
        }
        Ok(())
    }

    /// `[source]`.
    fn check_source(&self, bad: &Bad, origin: &str) -> Result<(), ConfigError> {
        if self.source.brokers.trim().is_empty() {
            return Err(bad("source.brokers", "is empty; give host:port[,host:port] or set KAFKA_BROKERS".into()));
        }
        if self.source.topics.is_empty() {
            return Err(bad("source.topics", "is empty; name at least one topic, e.g. topics = [\"events\"]".into()));
        }
        if let Some(t) = self
            .source
            .topics
            .iter()
            .find(|t| t.is_empty() || t.len() > 249 || !t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return Err(bad("source.topics", format!("has {t:?}, which is not a valid Kafka topic name")));
        }
        if self.source.max_buffered_records == 0 {
            return Err(bad("source.max_buffered_records", "must be at least 1".into()));
        }
        if self.source.max_batch_records == 0 {
            return Err(bad("source.max_batch_records", "must be at least 1".into()));
        }
        for (key, why) in MANAGED_PROPERTIES {
            if self.source.properties.contains_key(*key) {
                return Err(bad(
                    &format!("source.properties.\"{key}\""),
                    format!("is managed by the pipeline and cannot be set: {why}"),
                ));
            }
        }
        self.source.security.check(&self.source.properties).map_err(|p| ConfigError::Invalid {
            path: origin.to_string(),
            field: p.field,
            problem: p.problem,
        })?;
        if self.source.connect_timeout_ms == 0 {
            return Err(bad("source.connect_timeout_ms", "must be at least 1".into()));
        }
        if self.source.partition_discovery_ms < 100 {
            return Err(bad("source.partition_discovery_ms", "must be at least 100 (milliseconds)".into()));
        }
        Ok(())
    }

    /// `[epoch]`, `[supervisor]`, `[metrics]`.
    fn check_runtime(&self, bad: &Bad) -> Result<(), ConfigError> {
        if self.epoch.interval_ms < 10 {
            return Err(bad("epoch.interval_ms", format!("is {}; must be at least 10 (milliseconds)", self.epoch.interval_ms)));
        }
        if self.epoch.max_records == 0 {
            return Err(bad("epoch.max_records", "must be at least 1".into()));
        }
        if self.supervisor.window_secs == 0 {
            return Err(bad("supervisor.window_secs", "must be at least 1".into()));
        }
        if self.supervisor.shutdown_timeout_ms == 0 {
            return Err(bad("supervisor.shutdown_timeout_ms", "must be at least 1".into()));
        }
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(bad("metrics.listen", format!("is {listen:?}; give ip:port, e.g. \"127.0.0.1:9464\"")));
            }
        }
        Ok(())
    }

    /// Group mode (`source.group_id`) and what it cannot be combined with.
    fn check_group(&self, bad: &Bad) -> Result<(), ConfigError> {
        if let Some(group) = &self.source.group_id {
            for (key, why) in GROUP_MANAGED_PROPERTIES {
                if self.source.properties.contains_key(*key) {
                    return Err(bad(
                        &format!("source.properties.\"{key}\""),
                        format!("is managed in group mode and cannot be set: {why}"),
                    ));
                }
            }
            if group.is_empty() || !group.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                return Err(bad("source.group_id", format!("is {group:?}; use letters, digits, '.', '_' or '-'")));
            }
            let stateful = match (&self.dedup, &self.aggregate) {
                (Some(_), _) => Some("dedup"),
                (None, Some(_)) => Some("aggregate"),
                _ => None,
            };
            if let Some(section) = stateful {
                return Err(bad(
                    "source.group_id",
                    format!("cannot be used with [{section}] yet: keyed state lives in one process's RocksDB and does not move with its partition (ARCHITECTURE.md, \"Group mode\"); run a stateful pipeline as one process"),
                ));
            }
            if !matches!(self.sink, SinkConfig::Delta { .. }) {
                return Err(bad(
                    "source.group_id",
                    "needs a Delta sink: in group mode the table records where each partition resumes".into(),
                ));
            }
            if self.checkpoint.rebuild_from_table {
                return Err(bad(
                    "checkpoint.rebuild_from_table",
                    "has no meaning in group mode: members keep no checkpoint, the table records where each partition resumes"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// `[decode]` and `[transform]`, as far as the text tells.
    fn check_decode(&self, bad: &Bad) -> Result<(), ConfigError> {
        if self.decode.format == DecodeFormat::Json && self.decode.fields.is_empty() {
            return Err(bad(
                "decode.fields",
                "is empty; `format = \"json\"` needs the schema, e.g. fields = [{ name = \"id\", type = \"long\" }]".into(),
            ));
        }
        if self.decode.format != DecodeFormat::Json && !self.decode.fields.is_empty() {
            let why = match self.decode.format {
                DecodeFormat::Avro => {
                    "is not used with `format = \"avro\"`: the reader schema (decode.avro.schema_file or reader_subject) gives the columns"
                }
                _ => "is only used with `format = \"json\"`",
            };
            return Err(bad("decode.fields", why.into()));
        }
        match (self.decode.format, &self.decode.avro) {
            (DecodeFormat::Avro, None) => {
                return Err(bad(
                    "decode.avro",
                    "is missing; `format = \"avro\"` needs schema_file = \"<reader schema>.avsc\" (or reader_subject)".into(),
                ))
            }
            (DecodeFormat::Avro, Some(avro)) => {
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
            (_, Some(_)) => return Err(bad("decode.avro", "is only used with `format = \"avro\"`".into())),
            (_, None) => {}
        }
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
                "names the columns out, so the columns Avro writer schemas add (sink.schema_evolution = \"add-columns\") \
                 would never reach the table; select them by name, or use transform.where alone"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `[dedup]`, `[aggregate]`, `[state]`, as far as the text tells.
    fn check_stateful(&self, bad: &Bad) -> Result<(), ConfigError> {
        if let Some(d) = &self.dedup {
            if d.key.is_empty() {
                return Err(bad("dedup.key", "is empty; name the key columns, e.g. key = [\"id\"]".into()));
            }
            match (&d.watermark_field, d.max_age_epochs) {
                (Some(_), Some(_)) => {
                    return Err(bad("dedup", "sets both watermark_field and max_age_epochs; choose one retention".into()))
                }
                (None, None) => {
                    return Err(bad(
                        "dedup",
                        "needs a bounded retention: watermark_field (with allowed_lateness_ms) or max_age_epochs".into(),
                    ))
                }
                (None, Some(0)) => return Err(bad("dedup.max_age_epochs", "must be at least 1".into())),
                _ => {}
            }
        }
        if let Some(a) = &self.aggregate {
            if a.group_by.is_empty() {
                return Err(bad("aggregate.group_by", "is empty; name the grouping columns".into()));
            }
            if a.aggregates.is_empty() {
                return Err(bad("aggregate.aggregates", "is empty; e.g. aggregates = [{ op = \"count\" }]".into()));
            }
            if let Some(op) = a.aggregates.iter().find(|s| s.op != AggregateOp::Count && s.field.is_none()).map(|s| s.op) {
                return Err(bad("aggregate.aggregates", format!("`{}` needs a field", op.as_str())));
            }
            if a.buckets == 0 || a.buckets > 4096 {
                return Err(bad("aggregate.buckets", "must be between 1 and 4096".into()));
            }
        }
        if self.checkpoint.rebuild_from_table && (self.dedup.is_some() || self.aggregate.is_some()) {
            return Err(bad(
                "checkpoint.rebuild_from_table",
                "works for stateless pipelines only: the table records offsets, not the dedup keys or running totals in the checkpoint".into(),
            ));
        }
        if self.state.block_cache_mb == 0 || self.state.write_buffer_mb == 0 || self.state.bulk_insert_min_keys == 0 {
            return Err(bad("state", "block_cache_mb, write_buffer_mb and bulk_insert_min_keys must be at least 1".into()));
        }
        Ok(())
    }

    /// `[sink]`, as far as the text tells.
    fn check_sink(&self, bad: &Bad) -> Result<(), ConfigError> {
        if let SinkConfig::Delta {
            path,
            dead_letter_path,
            checkpoint_interval,
            log_retention: _,
            deleted_file_retention: _,
            compaction,
            storage: _,
            schema_evolution,
            partition_by,
            outputs,
        } = &self.sink
        {
            if dead_letter_path.as_ref() == Some(path) {
                return Err(bad("sink.dead_letter_path", "must differ from sink.path".into()));
            }
            if *checkpoint_interval == 0 {
                return Err(bad("sink.checkpoint_interval", "must be at least 1".into()));
            }
            if compaction.target_file_size_mb == 0 {
                return Err(bad("sink.compaction.target_file_size_mb", "must be at least 1".into()));
            }
            if compaction.min_files < 2 {
                return Err(bad("sink.compaction.min_files", "must be at least 2".into()));
            }
            if *schema_evolution != SchemaEvolution::None && self.source.group_id.is_some() {
                return Err(bad(
                    "sink.schema_evolution",
                    "is not supported in group mode yet: members restarted one by one would write with two schemas at once"
                        .into(),
                ));
            }
            for (i, o) in outputs.iter().enumerate() {
                let field = format!("sink.outputs[{i}]");
                if o.name.is_empty() || !o.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) {
                    return Err(bad(&field, format!("has the name {:?}; use letters, digits, `_` and `-`", o.name)));
                }
                if outputs[..i].iter().any(|p| p.name == o.name) {
                    return Err(bad(&field, format!("names {:?} again; each output needs its own name", o.name)));
                }
                let dead = dead_letter_path.clone().unwrap_or_else(|| path.with_suffix("_dead_letters"));
                let taken = [path, &dead];
                if taken.iter().any(|t| t.display() == o.path.display())
                    || outputs[..i].iter().any(|p| p.path.display() == o.path.display())
                {
                    return Err(bad(&field, format!("writes {}, which another table of this pipeline uses", o.path.display())));
                }
                let stateful = if self.dedup.is_some() {
                    Some("dedup")
                } else if self.aggregate.is_some() {
                    Some("aggregate")
                } else {
                    None
                };
                if let Some(stage) = stateful {
                    return Err(bad(&field, format!("is for stateless pipelines yet; this one has [{stage}]")));
                }
                if self.source.group_id.is_some() {
                    return Err(bad(&field, "is not supported in group mode yet".into()));
                }
                if *schema_evolution != SchemaEvolution::None {
                    return Err(bad(&field, "cannot be combined with sink.schema_evolution yet".into()));
                }
            }
            if !partition_by.is_empty() {
                if self.aggregate.is_some() {
                    return Err(bad(
                        "sink.partition_by",
                        "is for tables of rows; an aggregate table is partitioned by its buckets (aggregate.buckets)".into(),
                    ));
                }
                if *schema_evolution != SchemaEvolution::None {
                    return Err(bad(
                        "sink.partition_by",
                        "cannot be combined with sink.schema_evolution yet: the Delta writer cannot grow a partitioned table's schema while it writes".into(),
                    ));
                }
                if let Some(c) = partition_by.iter().enumerate().find_map(|(i, c)| partition_by[..i].contains(c).then_some(c)) {
                    return Err(bad("sink.partition_by", format!("names {c:?} twice")));
                }
            }
            if *schema_evolution != SchemaEvolution::None && self.aggregate.is_some() {
                return Err(bad(
                    "sink.schema_evolution",
                    "is for tables of decoded rows; an aggregate table's columns come from aggregate.group_by and aggregates"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The dead-letter table's location for a Delta sink.
    pub fn dead_letter_path(&self) -> Option<TableLocation> {
        match &self.sink {
            SinkConfig::Delta { path, dead_letter_path, storage, .. } => {
                Some(dead_letter_path.clone().unwrap_or_else(|| path.with_suffix("_dead_letters")).with_options(storage.clone()))
            }
            _ => None,
        }
    }

    /// Whether the fields Avro writer schemas have beyond the reader schema's become columns
    /// (`decode.format = "avro"` with `sink.schema_evolution = "add-columns"`).
    pub fn takes_writer_columns(&self) -> bool {
        self.decode.format == DecodeFormat::Avro && self.sink.schema_evolution() == SchemaEvolution::AddColumns
    }

    /// An output's table location, with the Delta sink's storage options.
    pub fn output_path(&self, output: &OutputConfig) -> TableLocation {
        match &self.sink {
            SinkConfig::Delta { storage, .. } => output.path.clone().with_options(storage.clone()),
            _ => output.path.clone(),
        }
    }

    /// The Delta sink's table location with its storage options (`None` for other sinks).
    pub fn table_path(&self) -> Option<TableLocation> {
        match &self.sink {
            SinkConfig::Delta { path, storage, .. } => Some(path.clone().with_options(storage.clone())),
            _ => None,
        }
    }

    /// The checkpoint directory, defaulted from the id.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoint.dir.clone().unwrap_or_else(|| PathBuf::from("data/checkpoints").join(&self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_parse_and_the_defaults_say_what_they_are() {
        assert_eq!(Retention::parse("7 days"), Ok(Retention::default_retention()));
        assert_eq!(Retention::parse("5 minutes"), Ok(Retention::aggregate_deleted_files()));
        assert_eq!(Retention::parse("12 hours").unwrap().length(), Duration::from_secs(43_200));
        assert_eq!(Retention::parse("1 week").unwrap().property(), "interval 1 week");
        for bad in ["7", "days", "7 fortnights", "7 days ago", ""] {
            assert!(Retention::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = PipelineConfig::parse("id = \"p\"\n[source]\ntopics = [\"t\"]\n", "x.toml").unwrap();
        assert_eq!(c.source.brokers, "127.0.0.1:9092");
        assert_eq!(c.epoch.interval_ms, 1000);
        assert_eq!(c.sink, SinkConfig::Console { num_rows: 20 });
        assert_eq!(c.checkpoint_dir(), PathBuf::from("data/checkpoints/p"));
        c.validate("x.toml").unwrap();
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = PipelineConfig::parse("id = \"p\"\n[epoch]\nintervl_ms = 5\n", "x.toml").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("intervl_ms"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn wrong_type_names_the_line() {
        let e = PipelineConfig::parse("id = \"p\"\n[epoch]\ninterval_ms = \"fast\"\n", "x.toml").unwrap_err().to_string();
        assert!(e.contains("interval_ms = \"fast\""), "{e}");
    }

    #[test]
    fn group_mode_takes_stateless_delta_pipelines_only() {
        let mut c = PipelineConfig::new("p", &["t"]);
        c.sink = SinkConfig::delta(std::path::Path::new("data/t"));
        c.source.group_id = Some("g".into());
        c.validate("x").unwrap();
        let problem = |c: &PipelineConfig| c.validate("x").unwrap_err().to_string();
        let mut stateful = c.clone();
        stateful.aggregate = Some(AggregateConfig::count_by(&["key"], OutputMode::Update, 4));
        stateful.decode.format = DecodeFormat::Text;
        assert!(problem(&stateful).contains("[aggregate]"), "{}", problem(&stateful));
        let mut console = c.clone();
        console.sink = SinkConfig::Console { num_rows: 1 };
        assert!(problem(&console).contains("needs a Delta sink"));
        let mut assignor = c.clone();
        assignor.source.properties.insert("partition.assignment.strategy".into(), "range".into());
        assert!(problem(&assignor).contains("managed in group mode"));
        let mut rebuild = c.clone();
        rebuild.checkpoint.rebuild_from_table = true;
        assert!(problem(&rebuild).contains("no meaning in group mode"));
        let mut bad = c;
        bad.source.group_id = Some("a group".into());
        assert!(problem(&bad).contains("source.group_id"));
    }

    #[test]
    fn invalid_values_name_the_field() {
        let mut c = PipelineConfig::new("p", &["t"]);
        c.epoch.interval_ms = 0;
        let e = c.validate("x.toml").unwrap_err().to_string();
        assert!(e.contains("`epoch.interval_ms`"), "{e}");
        let c = PipelineConfig::new("p", &[]);
        assert!(c.validate("x").unwrap_err().to_string().contains("source.topics"));
    }

    #[test]
    fn types_are_written_as_text_and_nest() {
        use FieldType::*;
        let t = |s: &str| FieldType::parse(s);
        assert_eq!(t("Decimal(12,2)"), Ok(Decimal { precision: 12, scale: 2 }));
        assert_eq!(t("decimal"), Ok(Decimal { precision: 10, scale: 0 }));
        assert_eq!(t("array<map<string, bigint>>"), Ok(List(Box::new(Map(Box::new(Long))))));
        let s = t("struct<a: int not null, `b c`: list<date>>").unwrap();
        assert_eq!(s, Struct(vec![FieldConfig::new("a", Int, false), FieldConfig::new("b c", List(Box::new(Date)), true)]));
        assert_eq!(FieldType::parse(&s.to_string()), Ok(s.clone()), "what is written reads back: {s}");
        for (bad, why) in [
            ("decimal(39, 0)", "precision must be 1 to 38"),
            ("decimal(5, 6)", "precision must be 1 to 38"),
            ("map<int, long>", "map keys must be strings"),
            ("array<string", "expected `>`"),
            ("struct<a int>", "expected `:`"),
            ("number", "unknown type \"number\""),
            ("long long", "unexpected"),
        ] {
            let e = t(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let config = |fields: &str| {
            PipelineConfig::parse(
                &format!("id = \"p\"\n[source]\ntopics = [\"t\"]\n[decode]\nformat = \"json\"\nfields = [{fields}]\n"),
                "x.toml",
            )
            .and_then(|c| c.validate("x.toml"))
            .map_err(|e| e.to_string())
        };
        assert!(config(r#"{ name = "s", type = "struct", fields = [{ name = "a", type = "long" }] }"#).is_ok());
        let e = config(r#"{ name = "s", type = "struct" }"#).unwrap_err();
        assert!(e.contains("a struct needs its members"), "{e}");
        let e = config(r#"{ name = "s", type = "struct<a: long, a: int>" }"#).unwrap_err();
        assert!(e.contains("repeated member name \"a\""), "{e}");
        let e = config(r#"{ name = "n", type = "long", fields = [] }"#).unwrap_err();
        assert!(e.contains("`fields` is only for"), "{e}");
    }

    #[test]
    fn sink_kind_is_checked() {
        let e = PipelineConfig::parse("id = \"p\"\n[sink]\nkind = \"s3\"\n", "x.toml").unwrap_err().to_string();
        assert!(e.contains("s3"), "{e}");
    }
}
