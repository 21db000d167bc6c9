//! `[sink]`: the tables, their maintenance settings and retentions, `sink.outputs`.

use super::*;

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
        /// How the Parquet files of every table are written (`[sink.parquet]`).
        #[serde(default)]
        parquet: ParquetConfig,
        /// Table properties of the user's own (`[sink.table_properties]`), set on every table
        /// of the pipeline: e.g. `"delta.dataSkippingNumIndexedCols" = "8"` or a team's tag.
        /// The properties the pipeline manages are refused here, naming the setting that sets
        /// them.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        table_properties: BTreeMap<String, String>,
    },
}

/// `[sink.parquet]`: the Parquet writer's settings for the files of every table (an epoch's
/// files and compaction's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// `snappy` (default), `zstd` or `zstd(level)` (1–22), `lz4`, `gzip` or `gzip(level)`
    /// (0–9), `brotli` or `brotli(level)` (0–11), `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Rows per row group at most (the Parquet writer's default: 1,048,576).
    #[serde(default)]
    pub row_group_rows: Option<usize>,
    /// Columns to write a Bloom filter for (point lookups such as `WHERE id = 42` skip the row
    /// groups that cannot hold the value): top-level columns of the table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bloom_filters: Vec<String>,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig { compression: default_compression(), row_group_rows: None, bloom_filters: Vec::new() }
    }
}

fn default_compression() -> String {
    "snappy".into()
}

/// A Parquet compression codec and its level, as `sink.parquet.compression` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// No compression.
    None,
    /// Snappy.
    Snappy,
    /// Zstandard at a level (1–22).
    Zstd(i32),
    /// LZ4 (raw).
    Lz4,
    /// Gzip at a level (0–9).
    Gzip(u32),
    /// Brotli at a level (0–11).
    Brotli(u32),
}

impl ParquetConfig {
    /// The codec `compression` names; `Err` says what is allowed.
    pub fn codec(&self) -> Result<Codec, String> {
        let text = self.compression.trim().to_ascii_lowercase();
        let (name, level) = match text.split_once('(') {
            Some((name, rest)) => {
                let level = rest.strip_suffix(')').and_then(|l| l.trim().parse::<i64>().ok());
                (
                    name.trim().to_string(),
                    Some(level.ok_or_else(|| format!("is {:?}: a level is a number in parentheses", self.compression))?),
                )
            }
            None => (text, None),
        };
        let within = |lo: i64, hi: i64, default: i64| -> Result<i64, String> {
            let l = level.unwrap_or(default);
            (lo..=hi)
                .contains(&l)
                .then_some(l)
                .ok_or_else(|| format!("is {:?}: {name}'s level is {lo} to {hi}", self.compression))
        };
        let flat =
            |c: Codec| if level.is_some() { Err(format!("is {:?}: {name} takes no level", self.compression)) } else { Ok(c) };
        match name.as_str() {
            "none" | "uncompressed" => flat(Codec::None),
            "snappy" => flat(Codec::Snappy),
            "lz4" => flat(Codec::Lz4),
            "zstd" => Ok(Codec::Zstd(within(1, 22, 3)? as i32)),
            "gzip" => Ok(Codec::Gzip(within(0, 9, 6)? as u32)),
            "brotli" => Ok(Codec::Brotli(within(0, 11, 1)? as u32)),
            _ => Err(format!(
                "is {:?}; use snappy, zstd, zstd(1..22), lz4, gzip, gzip(0..9), brotli, brotli(0..11) or none",
                self.compression
            )),
        }
    }
}

/// The table properties the pipeline sets itself, and the setting that sets each.
pub const MANAGED_TABLE_PROPERTIES: &[(&str, &str)] = &[
    ("delta.checkpointInterval", "sink.checkpoint_interval"),
    ("delta.logRetentionDuration", "sink.log_retention"),
    ("delta.deletedFileRetentionDuration", "sink.deleted_file_retention"),
    ("delta.enableExpiredLogCleanup", "the pipeline cleans the log itself, after its checkpoints"),
    ("delta.enableDeletionVectors", "upsert tables (`[upsert]`) enable them"),
];

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
            parquet: ParquetConfig::default(),
            table_properties: BTreeMap::new(),
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

impl PipelineConfig {
    /// `[sink]`, as far as the text tells.
    pub(super) fn check_sink(&self, bad: &Bad) -> Result<(), ConfigError> {
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
            parquet,
            table_properties,
        } = &self.sink
        {
            parquet.codec().map_err(|why| bad("sink.parquet.compression", why))?;
            if parquet.row_group_rows.is_some_and(|r| r < 1_000) {
                return Err(bad("sink.parquet.row_group_rows", "must be at least 1000".into()));
            }
            for key in table_properties.keys() {
                if let Some((_, by)) = MANAGED_TABLE_PROPERTIES.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
                    return Err(bad(&format!("sink.table_properties.\"{key}\""), format!("is managed by the pipeline ({by})")));
                }
                if key.starts_with("exactly.") {
                    return Err(bad(&format!("sink.table_properties.\"{key}\""), "is the pipeline's own record".into()));
                }
            }
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
}
