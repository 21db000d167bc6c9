//! `exactly adopt`: where a pipeline taking over from kafka-delta-ingest or Spark Structured
//! Streaming starts, as the `[source.starting_partition_offsets]` section to put in its config
//! (a first start reads from there, checked against what Kafka holds).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use exactly::config::TableLocation;
use exactly::PipelineConfig;

#[derive(Subcommand)]
pub(crate) enum AdoptCommand {
    /// From a table kafka-delta-ingest wrote: its `txn` actions `<app_id>-<partition>` hold the
    /// last offset it wrote of each partition.
    KafkaDeltaIngest {
        /// The pipeline's TOML config (its brokers and topic; its `[sink.storage]` reaches the
        /// table when it is on the same store).
        #[arg(long, short)]
        config: PathBuf,
        /// The kafka-delta-ingest table (a path or a URL).
        #[arg(long)]
        table: String,
        /// kafka-delta-ingest's `--app_id`.
        #[arg(long)]
        app_id: String,
    },
    /// From a Spark Structured Streaming checkpoint directory (`checkpointLocation`, on local
    /// disk): the end offsets of its newest batch that has a commit.
    SparkCheckpoint {
        /// The checkpoint directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Topic -> partition -> the offset to start at.
type Starts = BTreeMap<String, BTreeMap<i32, i64>>;

pub(crate) async fn adopt(command: AdoptCommand) -> anyhow::Result<()> {
    let (from, starts) = match command {
        AdoptCommand::KafkaDeltaIngest { config, table, app_id } => {
            let config = PipelineConfig::load(&config)?;
            let [topic] = config.source.topics.as_slice() else {
                bail!(
                    "kafka-delta-ingest reads one topic; the config names {} (source.topics, not a pattern)",
                    config.source.topics.len()
                )
            };
            let connection = exactly::source::Connection::of(&config.source)?;
            let timeout = Duration::from_millis(config.source.connect_timeout_ms);
            let partitions = exactly::source::preflight(&connection, config.source.subscription(), timeout).await?;
            let mut location = TableLocation::parse(&table).map_err(anyhow::Error::msg)?;
            if let exactly::config::SinkConfig::Delta { storage, .. } = &config.sink {
                location = location.with_options(storage.clone());
            }
            let loaded = exactly::sink::delta::load_table(location.clone()).await?;
            let loaded = loaded.with_context(|| format!("no Delta table at {table}"))?;
            let mut written = BTreeMap::new();
            for tp in &partitions {
                let id = format!("{app_id}-{}", tp.partition);
                if let Some(v) = exactly::sink::delta::txn_version(&loaded, &location, &id).await? {
                    written.insert(tp.partition, v);
                }
            }
            if written.is_empty() {
                bail!("the table at {table} records no offset for app_id {app_id:?} (txn actions \"{app_id}-<partition>\")");
            }
            let from = format!(
                "kafka-delta-ingest's table {table}, app_id {app_id:?}: each partition's last written offset + 1{}",
                if written.len() < partitions.len() { " (partitions it never wrote start as starting_offsets says)" } else { "" }
            );
            (from, BTreeMap::from([(topic.clone(), kdi_starts(&written))]))
        }
        AdoptCommand::SparkCheckpoint { dir } => {
            let (batch, starts) = spark_starts(&dir)?;
            (format!("the Spark checkpoint {}, batch {batch} (committed): its end offsets", dir.display()), starts)
        }
    };
    print!("{}", render(&from, &starts));
    Ok(())
}

/// kafka-delta-ingest records the last offset it wrote: a partition resumes after it.
fn kdi_starts(written: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
    written.iter().map(|(p, last)| (*p, last + 1)).collect()
}

/// The newest batch of a Spark checkpoint with both its offsets (`offsets/<batch>`) and its
/// commit (`commits/<batch>`), and its end offsets per topic: the file's lines after the
/// version and the metadata line, one JSON object per source (`{"topic": {"0": 123}}`).
fn spark_starts(dir: &Path) -> anyhow::Result<(u64, Starts)> {
    let batches = |sub: &str| -> anyhow::Result<Vec<u64>> {
        let path = dir.join(sub);
        let entries = std::fs::read_dir(&path).with_context(|| format!("{} is not a Spark checkpoint", path.display()))?;
        Ok(entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
    };
    let committed = batches("commits")?;
    let Some(batch) = batches("offsets")?.into_iter().filter(|b| committed.contains(b)).max() else {
        bail!("the Spark checkpoint {} has no committed batch", dir.display())
    };
    let file = dir.join("offsets").join(batch.to_string());
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let starts = spark_offsets(&text).with_context(|| format!("{} is not a Spark offsets file", file.display()))?;
    Ok((batch, starts))
}

/// The end offsets an offsets file of a Spark checkpoint records (Kafka sources' lines).
fn spark_offsets(text: &str) -> anyhow::Result<Starts> {
    let mut lines = text.lines();
    match lines.next() {
        Some(v) if v.starts_with('v') => {}
        other => bail!("it starts with {other:?}, not a version"),
    }
    lines.next().context("it has no metadata line")?;
    let mut starts = Starts::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let source: BTreeMap<String, BTreeMap<String, i64>> =
            serde_json::from_str(line).with_context(|| format!("a source's offsets are not Kafka's: {line}"))?;
        for (topic, partitions) in source {
            let entry = starts.entry(topic).or_default();
            for (p, offset) in partitions {
                entry.insert(p.parse().with_context(|| format!("partition {p:?}"))?, offset);
            }
        }
    }
    if starts.is_empty() {
        bail!("it records no Kafka offsets");
    }
    Ok(starts)
}

/// The config section, with a comment saying where it came from.
fn render(from: &str, starts: &Starts) -> String {
    let mut out = format!("# From {from}.\n[source.starting_partition_offsets]\n");
    for (topic, partitions) in starts {
        let cells: Vec<String> = partitions.iter().map(|(p, o)| format!("\"{p}\" = {o}")).collect();
        out.push_str(&format!("\"{topic}\" = {{ {} }}\n", cells.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_delta_ingest_resumes_after_its_last_written_offset() {
        assert_eq!(kdi_starts(&BTreeMap::from([(0, 41), (2, 0)])), BTreeMap::from([(0, 42), (2, 1)]));
    }

    #[test]
    fn a_spark_offsets_file_gives_each_source_s_end_offsets() {
        let text = "v1\n{\"batchWatermarkMs\":0,\"batchTimestampMs\":1,\"conf\":{}}\n{\"orders\":{\"1\":77,\"0\":1521}}\n";
        let starts = spark_offsets(text).unwrap();
        assert_eq!(starts["orders"], BTreeMap::from([(0, 1521), (1, 77)]));
        let section = render("x", &starts);
        let parsed: toml::Value = toml::from_str(&section).unwrap();
        assert_eq!(parsed["source"]["starting_partition_offsets"]["orders"]["0"].as_integer(), Some(1521));
        assert!(spark_offsets("{}\n").is_err(), "no version line");
    }
}
