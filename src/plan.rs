//! A config turned into the pieces a pipeline runs with, once: the reader schema fetched from
//! the registry, the decoder (with the transform applied), the fan-out to `sink.outputs`, the
//! schemas of the tables, and what decides an epoch's rows ([`Meaning`]).
//!
//! Every check that needs those pieces (or a file: the TLS files the config names) lives here — a
//! key column's type, an output's expression, a partition column of the rows written — so
//! nothing later re-checks, and nothing panics on what was "checked at start": a [`Plan`] that
//! exists is one the pipeline can run.
//! What the text alone can tell is checked before, by [`PipelineConfig::validate`].

use std::sync::Arc;

use deltalake::arrow::datatypes::{DataType, SchemaRef};

use crate::config::{AggregateOp, ConfigError, OutputConfig, PipelineConfig, SinkConfig};
use crate::decode::Decoder;
use crate::model::{Meaning, BUCKET_COL};
use crate::transform::Outputs;

/// A pipeline's built pieces.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The config, with the reader schema a registry subject names fetched into it.
    pub config: Arc<PipelineConfig>,
    /// The decoder the consumers run: it keeps each row's bytes when a later stage can still
    /// reject the row (dedup by event time, an output's expression).
    pub decoder: Arc<Decoder>,
    /// The decoder whose rows the data table holds (the audit's): transform applied, the writer
    /// schemas' columns when the pipeline takes them.
    pub table_decoder: Arc<Decoder>,
    /// The data table's schema (with `_epoch`) and partition columns.
    pub table: (SchemaRef, Vec<String>),
    /// `sink.outputs`: the fan-out and each output table's schema (with `_epoch`).
    pub outputs: Option<(Outputs, Vec<SchemaRef>)>,
    /// What decides an epoch's rows (`runtime::recovery` compares it with a table's).
    pub meaning: Meaning,
}

/// The scalar types a key column may have.
const KEY_TYPES: &str = "keys are columns of a scalar type (string, long, int, double, boolean, timestamp, date, binary)";

impl Plan {
    /// Plans `config` (already [`PipelineConfig::validate`]d); `origin` names the file in errors.
    /// Reads the Avro schema files and asks the registry for a reader subject.
    pub fn of(config: &PipelineConfig, origin: &str) -> Result<Plan, ConfigError> {
        let bad =
            |field: &str, problem: String| ConfigError::Invalid { path: origin.to_string(), field: field.to_string(), problem };
        crate::source::security::files_readable(&config.source.security).map_err(|p| bad(&p.field, p.problem))?;
        let mut config = config.clone();
        fetch_reader_schema(&mut config, &bad)?;
        let schemas = match config.decode.format {
            crate::config::DecodeFormat::Avro => "decode.avro",
            crate::config::DecodeFormat::Protobuf => "decode.protobuf",
            _ if config.decode.json.is_some() => "decode.json",
            _ => "decode",
        };
        let table_decoder = Decoder::new(&config.decode)
            .map_err(|e| bad(schemas, e))?
            .changing(config.upsert.as_ref(), config.decode.envelope)
            .map_err(|e| bad("upsert", e))?
            .taking_writer_columns(config.takes_writer_columns())
            .transforming(config.transform.as_ref())
            .map_err(|e| bad(if e.starts_with("transform.where") { "transform.where" } else { "transform.select" }, e))?;
        let plan = Planner { config: &config, decoder: &table_decoder, bad: &bad };
        plan.keys()?;
        let outputs = plan.outputs()?;
        plan.partition_by()?;
        let table = match &config.aggregate {
            Some(a) => {
                let result = crate::state::result_schema(&table_decoder.schema(), a).map_err(|e| bad("aggregate.group_by", e))?;
                (crate::decode::with_epoch_field(&result), vec![BUCKET_COL.to_string()])
            }
            None => (table_decoder.output_schema(), config.sink.partition_by().to_vec()),
        };
        if let SinkConfig::Delta { parquet, table_properties, .. } = &config.sink {
            if let Some(key) =
                table_properties.keys().find(|k| k.starts_with("delta.") && k.parse::<deltalake::TableProperty>().is_err())
            {
                return Err(bad(
                    &format!("sink.table_properties.\"{key}\""),
                    "is not a Delta table property this writer knows (check its spelling)".into(),
                ));
            }
            if let Some(c) = parquet.bloom_filters.iter().find(|c| table.0.field_with_name(c).is_err()) {
                return Err(bad("sink.parquet.bloom_filters", format!("names {c:?}, which is not a column of the table")));
            }
        }
        let rejects_later =
            config.dedup.as_ref().is_some_and(|d| d.watermark_field.is_some()) || !config.sink.outputs().is_empty();
        let decoder = table_decoder.clone().keeping_raw(rejects_later);
        let meaning = meaning(&config);
        Ok(Plan {
            config: Arc::new(config),
            decoder: Arc::new(decoder),
            table_decoder: Arc::new(table_decoder),
            table,
            outputs,
            meaning,
        })
    }

    /// [`Plan::of`] a config that names no file (built in code).
    pub fn new(config: &PipelineConfig) -> Result<Plan, ConfigError> {
        Self::of(config, "(in code)")
    }
}

/// Fetches what the config names in a schema registry: the reader schema of
/// `decode.avro.reader_subject`, `decode.protobuf.reader_subject` (compiled, with the files it
/// imports) or `decode.json.reader_subject` (once: the process decodes with this one until it
/// stops).
fn fetch_reader_schema(config: &mut PipelineConfig, bad: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
    use crate::decode::registry::{inlined, subject_version_now, SchemaType};
    let d = &mut config.decode;
    if let Some(avro) = d.avro.as_mut().filter(|a| a.reader_text.is_none() && a.reader_subject.is_some()) {
        let subject = avro.reader_subject.clone().unwrap_or_default();
        let Some(registry) = &avro.registry else {
            return Err(bad("decode.avro.reader_subject", "needs decode.avro.registry, the registry to read it from".into()));
        };
        let text = subject_version_now(registry, &subject, avro.reader_version, SchemaType::Avro)
            .and_then(|fetched| inlined(&fetched))
            .map_err(|e| bad("decode.avro.reader_subject", e))?;
        avro.reader_text = Some(text.into());
    }
    if let Some(proto) = d.protobuf.as_mut().filter(|p| p.reader_descriptor.is_none() && p.reader_subject.is_some()) {
        let subject = proto.reader_subject.clone().unwrap_or_default();
        // (`validate` requires the registry with a reader subject.)
        let Some(registry) = &proto.registry else {
            return Err(bad(
                "decode.protobuf.reader_subject",
                "needs decode.protobuf.registry, the registry to read it from".into(),
            ));
        };
        let set = subject_version_now(registry, &subject, proto.reader_version, SchemaType::Protobuf)
            .and_then(|fetched| crate::decode::protobuf::reader_descriptor(&fetched, &subject))
            .map_err(|e| bad("decode.protobuf.reader_subject", e))?;
        proto.reader_descriptor = Some(set.into());
    }
    if let Some(json) = d.json.as_mut().filter(|j| j.reader_text.is_none()) {
        let fetched = subject_version_now(&json.registry, &json.reader_subject, json.reader_version, SchemaType::Json)
            .map_err(|e| bad("decode.json.reader_subject", e))?;
        if !fetched.references.is_empty() {
            return Err(bad(
                "decode.json.reader_subject",
                format!("{:?} references other subjects' schemas, which JSON Schema columns do not follow", json.reader_subject),
            ));
        }
        json.reader_text = Some(fetched.text.into());
    }
    Ok(())
}

/// The checks that need the decoder's rows.
struct Planner<'a> {
    config: &'a PipelineConfig,
    decoder: &'a Decoder,
    bad: &'a dyn Fn(&str, String) -> ConfigError,
}

impl Planner<'_> {
    fn has(&self, name: &str) -> bool {
        self.decoder.schema().field_with_name(name).is_ok()
    }

    /// Whether `name` may be a key: a decoded column of a scalar type (a selected column's type
    /// is its expression's).
    fn key_type(&self, name: &str) -> Result<(), String> {
        if self.config.transform.as_ref().is_some_and(|t| t.select.is_some()) {
            return match self.decoder.schema().field_with_name(name).map(|f| f.data_type().clone()) {
                Ok(
                    DataType::Utf8
                    | DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::Float64
                    | DataType::Boolean
                    | DataType::Timestamp(..)
                    | DataType::Date32
                    | DataType::Binary,
                )
                | Err(_) => Ok(()),
                Ok(t) => Err(format!("names {name:?}, a {t} column; {KEY_TYPES}")),
            };
        }
        match self.decoder.fields().iter().find(|f| f.name == name) {
            Some(f) if !f.kind.is_key_type() => Err(format!("names {name:?}, a {} column; {KEY_TYPES}", f.kind)),
            _ => Ok(()),
        }
    }

    /// Whether `name` is a column a sum, min or max can take.
    fn numeric(&self, name: &str) -> bool {
        self.decoder.schema().field_with_name(name).is_ok_and(|f| {
            let t = f.data_type();
            (t.is_numeric() && !matches!(t, DataType::Decimal128(..))) || matches!(t, DataType::Timestamp(..))
        })
    }

    /// `dedup.key`, `dedup.watermark_field`, `aggregate.group_by`, `aggregate.aggregates`.
    fn keys(&self) -> Result<(), ConfigError> {
        let bad = self.bad;
        let keyed = [
            self.config.dedup.as_ref().map(|d| ("dedup.key", &d.key)),
            self.config.aggregate.as_ref().map(|a| ("aggregate.group_by", &a.group_by)),
        ];
        for (field, keys) in keyed.into_iter().flatten() {
            if let Some(k) = keys.iter().find(|k| !self.has(k)) {
                return Err(bad(field, format!("names {k:?}, which is not a decoded column")));
            }
            keys.iter().try_for_each(|k| self.key_type(k)).map_err(|e| bad(field, e))?;
        }
        if let Some(w) = self.config.dedup.as_ref().and_then(|d| d.watermark_field.as_ref()) {
            let is_ts = self.decoder.schema().field_with_name(w).is_ok_and(|f| matches!(f.data_type(), DataType::Timestamp(..)));
            if !is_ts {
                return Err(bad("dedup.watermark_field", format!("names {w:?}, which is not a decoded timestamp column")));
            }
        }
        for spec in self.config.aggregate.iter().flat_map(|a| &a.aggregates) {
            if let (op, Some(f)) = (spec.op, &spec.field) {
                if op != AggregateOp::Count && !self.numeric(f) {
                    return Err(bad(
                        "aggregate.aggregates",
                        format!("`{}` of {f:?}: not a decoded numeric or timestamp column", op.as_str()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `sink.outputs`: each output's expressions over the rows, and its partition columns.
    fn outputs(&self) -> Result<Option<(Outputs, Vec<SchemaRef>)>, ConfigError> {
        let outputs: &[OutputConfig] = self.config.sink.outputs();
        if outputs.is_empty() {
            return Ok(None);
        }
        let rows = self.decoder.schema();
        for (i, o) in outputs.iter().enumerate() {
            let field = format!("sink.outputs[{i}]");
            let planned =
                Outputs::new(std::slice::from_ref(o), &rows).map_err(|e| (self.bad)(&field, e.replace("transform.", "")))?;
            let out = planned.schemas(&rows).remove(0);
            if let Some(c) = o.partition_by.iter().find(|c| out.field_with_name(c).is_err()) {
                return Err((self.bad)(&field, format!("partition_by names {c:?}, which is not one of its columns")));
            }
        }
        let fan_out = Outputs::new(outputs, &rows).map_err(|e| (self.bad)("sink.outputs", e))?;
        let schemas = fan_out.schemas(&rows).iter().map(|s| crate::decode::with_epoch_field(s)).collect();
        Ok(Some((fan_out, schemas)))
    }

    /// `sink.partition_by`: columns of the rows written, of a type a partition value can be.
    fn partition_by(&self) -> Result<(), ConfigError> {
        let SinkConfig::Delta { partition_by, .. } = &self.config.sink else { return Ok(()) };
        if partition_by.is_empty() {
            return Ok(());
        }
        let bad = |problem: String| (self.bad)("sink.partition_by", problem);
        let schema = self.decoder.output_schema();
        for c in partition_by {
            match schema.field_with_name(c).map(|f| f.data_type().clone()) {
                Err(_) => {
                    return Err(bad(format!(
                        "names {c:?}, which is not a column of the rows written (derive one with [transform] select)"
                    )))
                }
                Ok(
                    DataType::Utf8
                    | DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::Boolean
                    | DataType::Date32
                    | DataType::Timestamp(..),
                ) => {}
                Ok(t) => {
                    return Err(bad(format!(
                        "names {c:?}, a {t} column; partition by a string, integer, boolean, date or timestamp"
                    )))
                }
            }
        }
        if partition_by.len() == schema.fields().len() {
            return Err(bad("names every column; keep at least one out of the partitioning".into()));
        }
        Ok(())
    }
}

/// The [`Meaning`] of `config`'s epochs: the decoding (format, columns, record size limit,
/// framing, the reader schema's text), the transform, the outputs. Connection settings, paths
/// and intervals change no row.
pub fn meaning(config: &PipelineConfig) -> Meaning {
    let d = &config.decode;
    let reader = d.avro.as_ref().and_then(|a| match (&a.reader_text, &a.schema_file) {
        (Some(text), _) => Some(text.to_string()),
        (None, Some(file)) => std::fs::read_to_string(file).ok(),
        (None, None) => None,
    });
    let mut decode = serde_json::json!({
        "format": d.format,
        "fields": d.fields,
        "max_record_bytes": d.max_record_bytes,
        "framing": d.avro.as_ref().map(|a| a.framing),
        "reader": reader,
    });
    // (Only when set: the meaning of every other table stays as it was.)
    if let Some(p) = &d.protobuf {
        let set = match (&p.reader_descriptor, &p.descriptor_file) {
            (Some(set), _) => Some(set.to_vec()),
            (None, Some(file)) => std::fs::read(file).ok(),
            (None, None) => None,
        };
        decode["protobuf"] = serde_json::json!({
            "framing": p.framing,
            "message": p.message,
            "reader": set.map(|s| format!("{:016x}", fnv1a(&s))),
            "emit_default_values": p.emit_default_values,
        });
    }
    if let Some(j) = &d.json {
        decode["json"] = serde_json::json!({"framing": j.framing, "reader": j.reader_text.as_deref()});
    }
    for (name, set) in [("include_key", d.include_key), ("include_headers", d.include_headers)] {
        if set {
            decode[name] = serde_json::json!(true);
        }
    }
    let outputs = match &config.sink {
        SinkConfig::Delta { outputs, .. } => {
            outputs.iter().map(|o| serde_json::json!([o.name, o.select, o.filter, o.partition_by])).collect::<Vec<_>>()
        }
        _ => Vec::new(),
    };
    let mut parts =
        vec![("decode", decode), ("transform", serde_json::json!(config.transform)), ("outputs", serde_json::json!(outputs))];
    // Only upsert pipelines record their key: the meaning of every other table stays as it was.
    if let Some(u) = &config.upsert {
        parts.push(("upsert", serde_json::json!({"key": u.key, "sequence_by": u.sequence_by, "envelope": d.envelope})));
    }
    parts.into_iter().map(|(k, v)| (k.to_string(), format!("{:016x}", fnv1a(v.to_string().as_bytes())))).collect()
}

/// FNV-1a, 64 bits: a fingerprint that stays the same across builds and Rust versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{DecodeConfig, TransformConfig};

    /// The sample in docs/config.md and every file in examples/ parse, validate and plan: the
    /// reference never shows a key the code does not take.
    #[test]
    fn documented_and_example_configs_plan() {
        let doc = include_str!("../docs/config.md");
        let sample = doc.split("```toml\n").nth(1).and_then(|s| s.split("\n```").next()).expect("a toml sample");
        let config = PipelineConfig::parse(sample, "docs/config.md").unwrap();
        config.validate("docs/config.md").unwrap();
        Plan::of(&config, "docs/config.md").unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
        files.extend(std::fs::read_dir(dir.join("secured")).unwrap().flatten().map(|e| e.path()));
        for path in files {
            if path.extension().is_some_and(|x| x == "toml") {
                let origin = path.display().to_string();
                let config = PipelineConfig::parse(&std::fs::read_to_string(&path).unwrap(), &origin).unwrap();
                config.validate(&origin).unwrap();
                Plan::of(&config, &origin).unwrap();
            }
        }
    }

    #[test]
    fn a_schema_that_does_not_load_names_its_format_s_table() {
        let mut c = PipelineConfig::new("p", &["t"]);
        c.decode = DecodeConfig {
            format: crate::config::DecodeFormat::Protobuf,
            protobuf: Some(crate::config::ProtobufConfig { descriptor_file: Some("no/such.desc".into()), ..Default::default() }),
            ..Default::default()
        };
        let Err(e) = Plan::new(&c) else { panic!("a missing descriptor file is refused") };
        let e = e.to_string();
        assert!(e.contains("`decode.protobuf`") && e.contains("descriptor_file no/such.desc"), "{e}");
    }

    #[test]
    fn meanings_change_with_what_decides_rows_only() {
        let mut c = PipelineConfig::new("p", &["t"]);
        c.decode = DecodeConfig::seed();
        let before = meaning(&c);
        c.epoch.interval_ms += 1;
        c.source.brokers = "elsewhere:9092".into();
        assert_eq!(meaning(&c), before, "intervals and connections change no row");
        c.transform = Some(TransformConfig { select: None, filter: Some("id > 0".into()) });
        let after = meaning(&c);
        assert_ne!(after["transform"], before["transform"]);
        assert_eq!(after["decode"], before["decode"]);
    }
}
