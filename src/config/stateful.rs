//! `[dedup]`, `[aggregate]`, `[upsert]` and `[state]`: the keyed stages and their RocksDB.

use super::*;

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

/// `[upsert]`: the table holds the current state per key — the last change of each key wins, a
/// delete removes it (change data capture: a Debezium topic, or a keyed topic where a null value
/// deletes). Superseded rows are marked deleted in the files that hold them (Delta deletion
/// vectors), found through a key -> row index in the RocksDB state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpsertConfig {
    /// Columns whose values together identify a row (a database table's primary key).
    pub key: Vec<String>,
    /// Orders the changes of one key instead of their (partition, offset): a change whose value
    /// here is lower than the one the table holds for its key is ignored (Databricks'
    /// `SEQUENCE BY`). A column (long, int or timestamp) or, with `decode.envelope =
    /// "debezium"`, a field of the envelope such as `source.lsn` or `ts_ms`. Deleted keys are
    /// then remembered with their sequence, so an older change arriving later cannot bring
    /// them back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_by: Option<String>,
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
    /// `process`: one state over every partition; `partition`: each Kafka partition's state is
    /// its own and moves with it (group mode's dedup and aggregation; exact when records with
    /// the same key are in the same partition).
    pub scope: StateScope,
}

/// Whose keyed state is whose (`state.scope`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StateScope {
    /// One state for every partition the process reads.
    #[default]
    Process,
    /// Each partition's own state: a key is deduplicated, or aggregated, within its partition.
    Partition,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { block_cache_mb: 64, write_buffer_mb: 16, bulk_insert_min_keys: 20_000, scope: StateScope::Process }
    }
}

impl PipelineConfig {
    /// `[dedup]`, `[aggregate]`, `[state]`, as far as the text tells.
    pub(super) fn check_stateful(&self, bad: &Bad) -> Result<(), ConfigError> {
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
        if let Some(u) = &self.upsert {
            self.check_upsert(u, bad)?;
        }
        if self.checkpoint.rebuild_from_table && (self.dedup.is_some() || self.aggregate.is_some() || self.upsert.is_some()) {
            return Err(bad(
                "checkpoint.rebuild_from_table",
                "works for stateless pipelines only: the table records offsets, not the dedup keys, running totals or upsert index in the checkpoint".into(),
            ));
        }
        if self.decode.envelope == Envelope::Debezium && self.upsert.is_none() {
            return Err(bad(
                "decode.envelope",
                "is \"debezium\", whose changes need [upsert] (key = [\"<primary key columns>\"]) to become the table's current state".into(),
            ));
        }
        if self.state.block_cache_mb == 0 || self.state.write_buffer_mb == 0 || self.state.bulk_insert_min_keys == 0 {
            return Err(bad("state", "block_cache_mb, write_buffer_mb and bulk_insert_min_keys must be at least 1".into()));
        }
        Ok(())
    }
}

impl PipelineConfig {
    /// `[upsert]` and what it cannot be combined with (yet).
    fn check_upsert(&self, u: &UpsertConfig, bad: &Bad) -> Result<(), ConfigError> {
        if u.key.is_empty() {
            return Err(bad("upsert.key", "is empty; name the key columns, e.g. key = [\"id\"]".into()));
        }
        if let Some(dup) = u.key.iter().enumerate().find(|(i, k)| u.key[..*i].contains(k)).map(|(_, k)| k) {
            return Err(bad("upsert.key", format!("names {dup:?} twice")));
        }
        if !matches!(self.decode.format, DecodeFormat::Json | DecodeFormat::Avro) {
            return Err(bad(
                "upsert",
                "needs `decode.format = \"json\"` or `\"avro\"` (plain keyed topics or the Debezium envelope)".into(),
            ));
        }
        let refuse = |what: &str, why: &str| Err(bad("upsert", format!("cannot be combined with {what}: {why}")));
        if self.decode.json.is_some() {
            return refuse(
                "decode.json",
                "changes are read from decode.fields (or Avro); a registry's JSON Schema types plain rows only",
            );
        }
        if self.aggregate.is_some() {
            return refuse("[aggregate]", "an upsert table holds rows, an aggregate table results");
        }
        if self.dedup.is_some() {
            return refuse("[dedup]", "the last change of each key wins already");
        }
        if self.transform.is_some() {
            return refuse("[transform]", "a delete carries only its key, which the transform's expressions would see as nulls");
        }
        if !matches!(self.sink, SinkConfig::Delta { .. }) {
            return refuse("this sink", "upserts need a Delta table (`sink.kind = \"delta\"`)");
        }
        if !self.sink.partition_by().is_empty() {
            return refuse("sink.partition_by", "upsert tables are not partitioned yet");
        }
        if !self.sink.outputs().is_empty() {
            return refuse("sink.outputs", "the fan-out tables would receive changes, not the current state");
        }
        if self.source.group_id.is_some() {
            return refuse("source.group_id", "the key index is per process: group members would mark each other's rows");
        }
        if self.sink.schema_evolution() != SchemaEvolution::None {
            return refuse("sink.schema_evolution", "the upsert table's columns are the declared ones");
        }
        Ok(())
    }
}
