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
