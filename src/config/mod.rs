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

mod catalog;
mod decode;
pub mod env;
mod runtime;
pub mod security;
mod sink;
mod source;
mod stateful;
mod types;

pub use catalog::*;
pub use decode::*;
pub use runtime::*;
pub use sink::*;
pub use source::*;
pub use stateful::*;
pub use types::*;

pub use crate::error::ConfigError;

/// Whether a config line may carry a secret (a password, a key, a token): a parse error then
/// names the line by number only, never quoting it.
fn may_hold_a_secret(line: &str) -> bool {
    let key = line.split('=').next().unwrap_or(line).to_ascii_lowercase();
    ["password", "secret", "token", "credential", "access_key", "account_key", "sas_", "jaas"].iter().any(|w| key.contains(w))
}

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
    /// Upserts and deletes by key (change data capture): the table holds each key's current row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsert: Option<UpsertConfig>,
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
    /// A catalog to register the tables in (`[catalog]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogConfig>,
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
            upsert: None,
            state: StateConfig::default(),
            epoch: EpochConfig::default(),
            sink: SinkConfig::default(),
            checkpoint: CheckpointConfig::default(),
            metrics: MetricsConfig::default(),
            supervisor: SupervisorConfig::default(),
            catalog: None,
        }
    }

    /// Reads a config file, substitutes `${VAR}`s from the environment ([`env`]), parses it,
    /// applies the environment's overrides, and validates it. A file must say where epochs go
    /// (`[sink]`).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let (substituted, values) = env::substitute(&text, |name| std::env::var(name).ok())
            .map_err(|(line, message)| ConfigError::Parse { path: shown.clone(), location: format!("line {line}"), message })?;
        let mut config = Self::parse_shown(&substituted, &text, &shown).map_err(|e| match e {
            ConfigError::Parse { path, location, message } => {
                ConfigError::Parse { path, location, message: env::hide(&message, &values) }
            }
            other => other,
        })?;
        if !toml::from_str::<toml::Table>(&substituted).is_ok_and(|t| t.contains_key("sink")) {
            return Err(ConfigError::Invalid {
                path: shown,
                field: "sink".into(),
                problem: "is missing: say where epochs go, e.g. `[sink]` with `kind = \"delta\"` and `path = \"...\"` (or `kind = \"console\"` to print them)".into(),
            });
        }
        config.apply_env();
        config.validate(&shown)?;
        Ok(config)
    }

    /// Parses TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::parse_shown(text, text, origin)
    }

    /// Parses `text`, showing the lines of `shown` (the file as written, before substitution:
    /// no value from the environment is printed) in errors.
    fn parse_shown(text: &str, shown: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let location = match e.span() {
                Some(span) => {
                    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    let line = shown.lines().nth(line_no - 1).unwrap_or("").trim();
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
        self.check_sink(&bad)?;
        self.check_catalog(&bad)
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

    /// The dead-letter table's location for a Delta sink.
    pub fn dead_letter_path(&self) -> Option<TableLocation> {
        match &self.sink {
            SinkConfig::Delta { path, dead_letter_path, storage, .. } => {
                Some(dead_letter_path.clone().unwrap_or_else(|| path.with_suffix("_dead_letters")).with_options(storage.clone()))
            }
            _ => None,
        }
    }

    /// Whether the fields writer schemas have beyond the reader schema's become columns (Avro,
    /// Protobuf or a registry's JSON Schema, with `sink.schema_evolution = "add-columns"`).
    pub fn takes_writer_columns(&self) -> bool {
        (matches!(self.decode.format, DecodeFormat::Avro | DecodeFormat::Protobuf) || self.decode.json.is_some())
            && self.sink.schema_evolution() == SchemaEvolution::AddColumns
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

    /// Where the checkpoint is persisted (`checkpoint.remote`), with `checkpoint.storage`'s
    /// options, else the Delta sink's.
    pub fn checkpoint_remote(&self) -> Option<TableLocation> {
        let remote = self.checkpoint.remote.clone()?;
        let options = match (&self.checkpoint.storage, &self.sink) {
            (Some(o), _) => o.clone(),
            (None, SinkConfig::Delta { storage, .. }) => storage.clone(),
            (None, _) => StorageOptions::default(),
        };
        Some(remote.with_options(options))
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
    fn parquet_settings_and_table_properties_are_checked() {
        let with = |f: &dyn Fn(&mut ParquetConfig, &mut BTreeMap<String, String>)| {
            let mut c = PipelineConfig::new("p", &["t"]);
            c.sink = SinkConfig::delta(Path::new("data/t"));
            if let SinkConfig::Delta { parquet, table_properties, .. } = &mut c.sink {
                f(parquet, table_properties);
            }
            c.validate("x.toml").map_err(|e| e.to_string())
        };
        for ok in ["snappy", "ZSTD", "zstd(19)", "lz4", "gzip(9)", "brotli(3)", "none"] {
            with(&|p, _| p.compression = ok.into()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(ParquetConfig { compression: "zstd(7)".into(), ..Default::default() }.codec(), Ok(Codec::Zstd(7)));
        for bad in ["zstd(0)", "gzip(10)", "snappy(1)", "lzo", "zstd(x)"] {
            let e = with(&|p, _| p.compression = bad.into()).unwrap_err();
            assert!(e.contains("sink.parquet.compression"), "{bad}: {e}");
        }
        assert!(with(&|p, _| p.row_group_rows = Some(10)).unwrap_err().contains("row_group_rows"));
        let e = with(&|_, t| {
            t.insert("delta.logRetentionDuration".into(), "interval 1 day".into());
        })
        .unwrap_err();
        assert!(e.contains("managed by the pipeline") && e.contains("sink.log_retention"), "{e}");
        assert!(with(&|_, t| {
            t.insert("exactly.addedAt.x".into(), "1".into());
        })
        .is_err());
        with(&|_, t| {
            t.insert("owner.team".into(), "payments".into());
        })
        .unwrap();
    }

    #[test]
    fn a_catalog_takes_a_delta_sink_a_thrift_uri_and_plain_names() {
        let check = |sink: &str, catalog: &str| {
            let text = format!(
                "id = \"orders.v2-eu\"\n[source]\ntopics = [\"t\"]\n[sink]\n{sink}\n[catalog]\nkind = \"hive\"\n{catalog}"
            );
            PipelineConfig::parse(&text, "x.toml")?.validate("x.toml").map(|_| ())
        };
        let delta = "kind = \"delta\"\npath = \"data/t\"";
        check(delta, "uri = \"thrift://127.0.0.1:9083\"").unwrap();
        let c: CatalogConfig = toml::from_str("kind = \"hive\"\nuri = \"thrift://h:1\"").unwrap();
        assert_eq!(c.name_of("orders.v2-eu", None), "orders_v2_eu");
        assert_eq!(c.name_of("orders.v2-eu", Some("late-ones")), "orders_v2_eu_late_ones");
        for (sink, catalog, want) in [
            ("kind = \"console\"", "uri = \"thrift://h:1\"", "needs `[sink] kind = \"delta\"`"),
            (delta, "uri = \"http://h:1\"", "give thrift://host:port"),
            (delta, "uri = \"thrift://h:1\"\ndatabase = \"a-b\"", "catalog.database"),
            (delta, "uri = \"thrift://h:1\"\ntable = \"x y\"", "catalog.table"),
        ] {
            let e = check(sink, catalog).unwrap_err().to_string();
            assert!(e.contains(want), "{catalog}: {e}");
        }
    }

    #[test]
    fn each_format_takes_its_own_schema_source_once() {
        let check = |text: &str| {
            let c = PipelineConfig::parse(&format!("id = \"p\"\n[source]\ntopics = [\"t\"]\n{text}"), "x.toml")?;
            c.validate("x.toml").map(|_| ())
        };
        let problem = |text: &str| check(text).unwrap_err().to_string();
        let registry = "registry = { url = \"http://127.0.0.1:8081\" }";
        check(&format!(
            "[decode]\nformat = \"protobuf\"\n[decode.protobuf]\nreader_subject = \"s\"\nframing = \"confluent\"\n{registry}"
        ))
        .unwrap();
        check("[decode]\nformat = \"protobuf\"\n[decode.protobuf]\ndescriptor_file = \"o.desc\"\nmessage = \"shop.Order\"")
            .unwrap();
        check(&format!("[decode]\nformat = \"json\"\n[decode.json]\nreader_subject = \"s\"\n{registry}")).unwrap();
        for (text, want) in [
            ("[decode]\nformat = \"protobuf\"".to_string(), "`decode.protobuf` is missing"),
            ("[decode]\nformat = \"protobuf\"\n[decode.protobuf]\nmessage = \"m\"".into(), "needs the reader schema once"),
            (
                "[decode]\nformat = \"protobuf\"\nfields = [{ name = \"a\", type = \"long\" }]\n[decode.protobuf]\ndescriptor_file = \"d\"".into(),
                "the reader message (decode.protobuf) gives the columns",
            ),
            ("[decode]\nformat = \"protobuf\"\n[decode.protobuf]\nreader_subject = \"s\"".into(), "needs decode.protobuf.registry"),
            (
                format!("[decode]\nformat = \"protobuf\"\n[decode.protobuf]\nreader_subject = \"s\"\n{registry}"),
                "set framing = \"confluent\"",
            ),
            (format!("[decode]\nformat = \"avro\"\n[decode.avro]\nschema_file = \"a\"\n[decode.json]\nreader_subject = \"s\"\n{registry}"), "`decode.json` is only used with `format = \"json\"`"),
            (
                format!("[decode]\nformat = \"json\"\nfields = [{{ name = \"a\", type = \"long\" }}]\n[decode.json]\nreader_subject = \"s\"\n{registry}"),
                "the registry's JSON Schema gives the columns",
            ),
        ] {
            let e = problem(&text);
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn group_mode_takes_partition_scoped_state_and_delta_sinks_only() {
        let mut c = PipelineConfig::new("p", &["t"]);
        c.sink = SinkConfig::delta(std::path::Path::new("data/t"));
        c.source.group_id = Some("g".into());
        c.validate("x").unwrap();
        let problem = |c: &PipelineConfig| c.validate("x").unwrap_err().to_string();
        let mut stateful = c.clone();
        stateful.aggregate = Some(AggregateConfig::count_by(&["key"], OutputMode::Update, 4));
        stateful.decode.format = DecodeFormat::Text;
        assert!(problem(&stateful).contains("state.scope = \"partition\""), "{}", problem(&stateful));
        stateful.state.scope = StateScope::Partition;
        stateful.validate("x").unwrap();
        let mut complete = stateful.clone();
        complete.aggregate.as_mut().unwrap().output_mode = OutputMode::Complete;
        assert!(problem(&complete).contains("aggregate.output_mode"));
        let mut by_epochs = stateful.clone();
        by_epochs.aggregate = None;
        by_epochs.dedup = Some(DedupConfig::by_epochs(&["key"], 3));
        assert!(problem(&by_epochs).contains("dedup.max_age_epochs"));
        let mut alone = stateful.clone();
        alone.source.group_id = None;
        assert!(problem(&alone).contains("state.scope"));
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
    fn a_topic_pattern_matches_whole_names_and_replaces_the_topic_list() {
        let parse = |source: &str| PipelineConfig::parse(&format!("id = \"p\"\n[source]\n{source}\n"), "x.toml");
        let c = parse("topic_pattern = \"orders-[a-z]+\"").unwrap();
        c.validate("x.toml").unwrap();
        let sub = c.source.subscription();
        assert!(sub.covers("orders-eu") && sub.covers("orders-us"));
        for not in ["orders-eu-1", "my-orders-eu", "orders-", "__orders-eu"] {
            assert!(!sub.covers(not), "{not}");
        }
        assert!(c.source.topic_pattern.as_ref().unwrap().matches("orders-x"));
        assert!(parse("topic_pattern = \".*\"").unwrap().source.subscription().covers("events"));
        assert!(!parse("topic_pattern = \".*\"").unwrap().source.subscription().covers("__consumer_offsets"));
        let e = parse("topic_pattern = \"orders-(\"").unwrap_err().to_string();
        assert!(e.contains("topic_pattern") && e.contains("not a regular expression"), "{e}");
        let both = parse("topics = [\"t\"]\ntopic_pattern = \"t.*\"").unwrap();
        assert!(both.validate("x").unwrap_err().to_string().contains("source.topic_pattern"));
        let mut starts = c.clone();
        starts.source.starting_partition_offsets.insert("orders-eu".into(), [("0".into(), 5)].into());
        starts.validate("x").unwrap();
        starts.source.starting_partition_offsets.insert("payments".into(), [("0".into(), 5)].into());
        assert!(starts.validate("x").unwrap_err().to_string().contains("does not match"));
        // Written back as the pattern the file gave.
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("topic_pattern = \"orders-[a-z]+\""), "{text}");
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
