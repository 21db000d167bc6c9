//! `exactly verify`: the audit that proves exactly-once. It reads the Delta table, its
//! dead-letter table and the Kafka topic, and reports per partition which offsets are missing,
//! duplicated or unexpected — comparing against the offsets Kafka actually holds, so the gaps
//! real Kafka has (transaction markers, compaction) are never reported as missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deltalake::arrow::array::{Array, Int32Array, Int64Array, StringArray};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::DeltaTable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{PipelineConfig, SinkConfig};
use crate::decode::{OFFSET_COL, PARTITION_COL, TOPIC_COL};
use crate::error::{Error, Result};
use crate::kafka;
use crate::record::TopicPartition;
use crate::sink::delta::{load_table, partition_app_id, start_app_id, txn_version};

/// How long the Kafka read may go without progress before the audit gives up.
const KAFKA_STALL: Duration = Duration::from_secs(30);

/// The audit of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionAudit {
    /// The partition.
    pub tp: Option<TopicPartition>,
    /// First offset the pipeline read (recorded in the table).
    pub start: i64,
    /// The committed cut: next offset after the last committed epoch.
    pub end: i64,
    /// Offsets Kafka holds in `[start, end)` (what must be in the tables once each).
    pub expected: u64,
    /// Rows found in the data table.
    pub rows: u64,
    /// Rows found in the dead-letter table.
    pub dead_lettered: u64,
    /// Expected offsets found in neither table.
    pub missing: u64,
    /// Extra copies of offsets found more than once (across both tables).
    pub duplicated: u64,
    /// Offsets found in a table that Kafka does not hold in the committed range.
    pub unexpected: u64,
    /// Offsets found in a table that Kafka no longer holds (deleted by retention): counted, not
    /// judged.
    pub unverifiable: u64,
    /// A few missing offsets, to look at.
    pub missing_sample: Vec<i64>,
}

/// The whole audit.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// Pipeline id.
    pub pipeline: String,
    /// The data table.
    pub table: PathBuf,
    /// The dead-letter table.
    pub dead_letter_table: PathBuf,
    /// The last committed epoch in the data table.
    pub epoch: u64,
    /// Per partition.
    pub partitions: Vec<PartitionAudit>,
    /// Parquet files in the table directories that no committed version references: written
    /// by an epoch that never committed (or removed by a rewrite); `vacuum` deletes them.
    pub orphan_files: Vec<PathBuf>,
}

impl Audit {
    /// Nothing missing, duplicated or unexpected.
    pub fn ok(&self) -> bool {
        self.partitions.iter().all(|p| p.missing == 0 && p.duplicated == 0 && p.unexpected == 0)
    }

    /// Sum of a field over partitions.
    pub fn total(&self, f: impl Fn(&PartitionAudit) -> u64) -> u64 {
        self.partitions.iter().map(f).sum()
    }

    /// The report `exactly verify` prints.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pipeline '{}': table {} (epoch {}), dead letters {}",
            self.pipeline,
            self.table.display(),
            self.epoch,
            self.dead_letter_table.display()
        );
        let _ = writeln!(
            s,
            "{:<28} {:>22} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10}",
            "partition", "committed range", "expected", "rows", "dead", "missing", "duplicated", "unexpected"
        );
        for p in &self.partitions {
            let tp = p.tp.as_ref().map(|t| t.to_string()).unwrap_or_default();
            let _ = writeln!(
                s,
                "{:<28} {:>22} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10}",
                tp,
                format!("[{}, {})", p.start, p.end),
                p.expected,
                p.rows,
                p.dead_lettered,
                p.missing,
                p.duplicated,
                p.unexpected
            );
            if !p.missing_sample.is_empty() {
                let _ = writeln!(s, "    first missing offsets: {:?}", p.missing_sample);
            }
            if p.unverifiable > 0 {
                let _ = writeln!(s, "    {} rows have offsets Kafka no longer holds (retention); not judged", p.unverifiable);
            }
        }
        let _ = writeln!(
            s,
            "{:<28} {:>22} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10}",
            "total",
            "",
            self.total(|p| p.expected),
            self.total(|p| p.rows),
            self.total(|p| p.dead_lettered),
            self.total(|p| p.missing),
            self.total(|p| p.duplicated),
            self.total(|p| p.unexpected)
        );
        let _ = writeln!(s, "orphan parquet files (uncommitted; `vacuum` removes them): {}", self.orphan_files.len());
        if self.ok() {
            let _ = writeln!(s, "result: OK — every committed offset is in the tables exactly once");
        } else {
            let _ = writeln!(s, "result: FAILED — offsets missing, duplicated or unexpected");
        }
        s
    }
}

/// Where each table row came from, per partition.
type FoundOffsets = HashMap<TopicPartition, Vec<i64>>;

fn file_path(uri: &str) -> Result<PathBuf> {
    match url::Url::parse(uri) {
        Ok(u) if u.scheme() == "file" => u.to_file_path().map_err(|_| Error::Sink(format!("cannot open {uri}"))),
        Ok(u) if u.scheme().len() > 1 => Err(Error::Sink(format!("verify reads local tables only; cannot open {uri}"))),
        _ => Ok(PathBuf::from(uri)),
    }
}

/// The `(topic, partition, offset)` of every row in the table's current version.
fn read_offsets(files: &[PathBuf]) -> Result<FoundOffsets> {
    let mut found = FoundOffsets::new();
    for path in files {
        let err = |e: String| Error::Delta { table: path.display().to_string(), detail: e };
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(e.to_string()))?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), [TOPIC_COL, PARTITION_COL, OFFSET_COL]);
        let reader = builder.with_projection(mask).build().map_err(|e| err(e.to_string()))?;
        for batch in reader {
            let batch = batch.map_err(|e| err(e.to_string()))?;
            let col = |name: &str| batch.column_by_name(name).ok_or_else(|| err(format!("no column {name}")));
            let topics =
                col(TOPIC_COL)?.as_any().downcast_ref::<StringArray>().ok_or_else(|| err("bad topic column".into()))?.clone();
            let parts = col(PARTITION_COL)?
                .as_any()
                .downcast_ref::<Int32Array>()
                .ok_or_else(|| err("bad partition column".into()))?
                .clone();
            let offs =
                col(OFFSET_COL)?.as_any().downcast_ref::<Int64Array>().ok_or_else(|| err("bad offset column".into()))?.clone();
            for i in 0..batch.num_rows() {
                found.entry(TopicPartition::new(topics.value(i), parts.value(i))).or_default().push(offs.value(i));
            }
        }
    }
    Ok(found)
}

fn active_files(table: &DeltaTable) -> Result<Vec<PathBuf>> {
    let uris: Vec<String> = table
        .get_file_uris()
        .map_err(|e| Error::Delta { table: table.table_url().to_string(), detail: e.to_string() })?
        .collect();
    uris.iter().map(|u| file_path(u)).collect()
}

fn parquet_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "_delta_log") {
                parquet_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
}

/// Parquet files under `dir` that the table's current version does not reference.
fn orphans(dir: &Path, active: &[PathBuf]) -> Vec<PathBuf> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let live: HashSet<PathBuf> = active.iter().map(|p| canon(p)).collect();
    let mut all = Vec::new();
    parquet_files(dir, &mut all);
    all.into_iter().filter(|p| !live.contains(&canon(p))).collect()
}

/// The offsets Kafka holds for `tp` in `[from, to)` (read_committed, like the pipeline), and
/// the partition's low watermark.
fn kafka_offsets(brokers: &str, tp: &TopicPartition, from: i64, to: i64) -> Result<(Vec<i64>, i64)> {
    let consumer: BaseConsumer = kafka::base_config(brokers)
        .set("group.id", "exactly-verify")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(10))?;
    let begin = from.max(low);
    let mut out = Vec::new();
    if begin >= to || begin >= high {
        return Ok((out, low));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(begin))?;
    consumer.assign(&tpl)?;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if m.offset() < to {
                    out.push(m.offset());
                }
                if m.offset() >= to - 1 {
                    break;
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => tracing::warn!(%tp, error = %e, "kafka error while auditing; retrying"),
            None => {}
        }
        if last_progress.elapsed() > KAFKA_STALL {
            return Err(Error::BrokerUnreachable {
                brokers: brokers.to_string(),
                detail: format!("reading {tp} stalled for {KAFKA_STALL:?}"),
            });
        }
    }
    Ok((out, low))
}

/// Audits a Delta-sink pipeline's tables against its Kafka topics.
pub async fn verify(config: &PipelineConfig) -> Result<Audit> {
    let SinkConfig::Delta { path, .. } = &config.sink else {
        return Err(Error::Sink("verify audits a Delta table; this pipeline's sink is not `delta`".into()));
    };
    let dead_path = config.dead_letter_path().expect("delta sink");
    let src = &config.source;
    let partitions = kafka::preflight(&src.brokers, &src.topics, Duration::from_millis(src.connect_timeout_ms)).await?;
    let table = load_table(path).await?.ok_or_else(|| Error::Sink(format!("no Delta table at {}", path.display())))?;
    let dead_table = load_table(&dead_path).await?;
    let id = &config.id;
    let epoch = txn_version(&table, path, id).await?.unwrap_or(0).max(0) as u64;
    let mut ranges = BTreeMap::new();
    for tp in &partitions {
        let end = txn_version(&table, path, &partition_app_id(id, tp)).await?;
        let start = txn_version(&table, path, &start_app_id(id, tp)).await?;
        if let (Some(start), Some(end)) = (start, end) {
            ranges.insert(tp.clone(), (start, end));
        }
    }

    let data_files = active_files(&table)?;
    let dead_files = match &dead_table {
        Some(t) => active_files(t)?,
        None => Vec::new(),
    };
    let (rows, dead, orphan_files) = {
        let (path, dead_path) = (path.clone(), dead_path.clone());
        let (data_files, dead_files) = (data_files.clone(), dead_files.clone());
        tokio::task::spawn_blocking(move || -> Result<_> {
            let rows = read_offsets(&data_files)?;
            let dead = read_offsets(&dead_files)?;
            let mut orphan_files = orphans(&path, &data_files);
            orphan_files.extend(orphans(&dead_path, &dead_files));
            Ok((rows, dead, orphan_files))
        })
        .await
        .map_err(|e| Error::Actor(e.to_string()))??
    };

    let mut audits = Vec::new();
    for (tp, (start, end)) in ranges {
        let brokers = src.brokers.clone();
        let tp2 = tp.clone();
        let (expected, low) = tokio::task::spawn_blocking(move || kafka_offsets(&brokers, &tp2, start, end))
            .await
            .map_err(|e| Error::Actor(e.to_string()))??;
        let row_offsets = rows.get(&tp).cloned().unwrap_or_default();
        let dead_offsets = dead.get(&tp).cloned().unwrap_or_default();
        let mut counts: HashMap<i64, u64> = HashMap::new();
        for o in row_offsets.iter().chain(&dead_offsets) {
            *counts.entry(*o).or_default() += 1;
        }
        let expected_set: HashSet<i64> = expected.iter().copied().collect();
        let mut missing: Vec<i64> = expected.iter().copied().filter(|o| !counts.contains_key(o)).collect();
        missing.sort_unstable();
        let duplicated = counts.values().filter(|n| **n > 1).map(|n| n - 1).sum();
        let unverifiable = counts.keys().filter(|o| **o < low && **o >= start).count() as u64;
        let unexpected = counts.keys().filter(|o| !expected_set.contains(o) && !(**o < low && **o >= start)).count() as u64;
        audits.push(PartitionAudit {
            tp: Some(tp),
            start,
            end,
            expected: expected.len() as u64,
            rows: row_offsets.len() as u64,
            dead_lettered: dead_offsets.len() as u64,
            missing: missing.len() as u64,
            duplicated,
            unexpected,
            unverifiable,
            missing_sample: missing.into_iter().take(10).collect(),
        });
    }
    Ok(Audit { pipeline: id.clone(), table: path.clone(), dead_letter_table: dead_path, epoch, partitions: audits, orphan_files })
}
