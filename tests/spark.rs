//! Spark (pyspark and delta-spark from the bench's virtualenv, scripts/read_spark.py) reads every
//! kind of table the pipeline writes — append and its dead letters, a filtered and partitioned
//! output of a fan-out, aggregates in complete and update mode, a table whose schema grew — and
//! its rows are the rows Python `deltalake` reads of tables `verify` passed; Spark's streaming
//! reader (`readStream.format("delta")`) takes the append table exactly once across two runs and
//! the compactions between them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use exactly::config::{
    AggregateConfig, AggregateOp, AggregateSpec, DecodeConfig, FieldConfig, FieldType, OutputConfig, OutputMode, SchemaEvolution,
    SinkConfig,
};
use exactly::source::producer::{produce, ProduceOptions};
use exactly::PipelineConfig;
use serde_json::{json, Value};

use crate::common;

/// Spark's rows of table `name` equal Python's, and there are `at_least` of them.
fn same_rows(answer: &Value, name: &str, table: &Path, at_least: usize) {
    let python = common::canonical(&common::read_rows_with_python(table)["records"]);
    let spark = common::canonical(&answer["tables"][name]["records"]);
    assert!(python.len() >= at_least, "{name}: {} rows", python.len());
    assert_eq!(spark.len(), python.len(), "{name}: Spark and Python read as many rows");
    assert_eq!(spark, python, "{name}: Spark reads Python's rows");
}

/// Runs every config until its table holds the whole topic and `also` holds, then stops them;
/// each passes `verify`.
async fn run_all<F, Fut>(configs: &[&PipelineConfig], topic: &str, also: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut running = Vec::new();
    for c in configs {
        running.push(common::start(c, Default::default()).await);
    }
    for c in configs {
        let path = PathBuf::from(c.table_path().expect("a Delta sink").to_string());
        common::wait_table_drained(&path, &c.id, topic, Duration::from_secs(120)).await;
    }
    common::wait_until(Duration::from_secs(120), "the condition of the run", also).await;
    for p in running {
        p.shutdown().await.unwrap();
    }
    for c in configs {
        common::assert_verified(c).await;
    }
}

fn counts(mode: OutputMode) -> AggregateConfig {
    AggregateConfig {
        group_by: vec!["value".into()],
        aggregates: vec![
            AggregateSpec { op: AggregateOp::Count, field: None, name: None },
            AggregateSpec { op: AggregateOp::Max, field: Some("ts".into()), name: Some("last_ts".into()) },
        ],
        output_mode: mode,
        buckets: 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_reads_every_kind_of_table_and_streams_the_append_table_exactly_once() {
    let _heavy = common::heavy().await;
    let topic = common::topic("spark", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let produce_batch = |first_id: u64| {
        let mut opts = ProduceOptions::new(&common::brokers(), &topic, 600);
        opts.first_id = first_id;
        opts.malformed_every = Some(40);
        opts
    };
    produce(&produce_batch(0), std::future::pending()).await.unwrap();

    // Append, its dead letters, and an output of the even ids partitioned by value; small epochs
    // and eager compaction, so the stream meets many commits and compactions.
    let mut append = common::delta_config(&common::unique("append"), &topic, &dir.path().join("append"));
    append.epoch.max_records = 100;
    if let SinkConfig::Delta { compaction, outputs, .. } = &mut append.sink {
        compaction.min_files = 2;
        outputs.push(OutputConfig {
            name: "evens".into(),
            path: dir.path().join("append/evens").into(),
            select: Some(vec!["id".into(), "value".into(), "ts".into()]),
            filter: Some("id % 2 = 0".into()),
            partition_by: vec!["value".into()],
        });
    }
    let mut complete = common::delta_config(&common::unique("complete"), &topic, &dir.path().join("complete"));
    complete.aggregate = Some(counts(OutputMode::Complete));
    let mut update = common::delta_config(&common::unique("update"), &topic, &dir.path().join("update"));
    update.aggregate = Some(counts(OutputMode::Update));
    // A table whose schema grows: `ts` joins it in the second run.
    let mut evolved = common::delta_config(&common::unique("evolved"), &topic, &dir.path().join("evolved"));
    let declared = |with_ts: bool| {
        let mut fields = vec![FieldConfig::new("id", FieldType::Long, false), FieldConfig::new("value", FieldType::String, true)];
        if with_ts {
            fields.push(FieldConfig::new("ts", FieldType::Timestamp, true));
        }
        DecodeConfig { fields, ..DecodeConfig::seed() }
    };
    evolved.decode = declared(false);
    if let SinkConfig::Delta { schema_evolution, .. } = &mut evolved.sink {
        *schema_evolution = SchemaEvolution::AddColumns;
    }
    run_all(&[&append, &complete, &update, &evolved], &topic, || async { true }).await;

    let table = |config: &PipelineConfig| PathBuf::from(config.table_path().unwrap().to_string());
    let (append_table, dead) = (table(&append), dir.path().join("append/table_dead_letters"));
    let stream = json!({
        "table": append_table,
        "checkpoint": dir.path().join("spark/checkpoint"),
        "out": dir.path().join("spark/out"),
    });
    let answer = common::spark(&json!({
        "tables": {
            "append": append_table,
            "dead": dead,
            "evens": dir.path().join("append/evens"),
            "complete": table(&complete),
            "update": table(&update),
        },
        "stream": stream,
    }));
    same_rows(&answer, "append", &append_table, 500);
    same_rows(&answer, "dead", &dead, 10);
    same_rows(&answer, "evens", &dir.path().join("append/evens"), 250);
    same_rows(&answer, "complete", &table(&complete), 10);
    same_rows(&answer, "update", &table(&update), 10);
    let appended = answer["tables"]["append"]["rows"].as_u64().unwrap();
    let counted: u64 =
        answer["tables"]["complete"]["records"].as_array().unwrap().iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, appended, "the complete counts add up to the rows appended");
    let evens = answer["tables"]["evens"]["records"].as_array().unwrap();
    assert!(evens.iter().all(|r| r["id"].as_i64().unwrap() % 2 == 0));

    // More records; the append pipeline and the evolved one (now declaring `ts`) run again, and
    // the stream continues from its checkpoint.
    produce(&produce_batch(600), std::future::pending()).await.unwrap();
    evolved.decode = declared(true);
    // The append table is compacted again (in the background) before the stream goes on: the
    // stream must skip the compaction's rewritten rows.
    let before = common::commits_of(&append_table, "OPTIMIZE").await.len();
    let append_table_now = table(&append);
    let compacted = || {
        let t = append_table_now.clone();
        async move { common::commits_of(&t, "OPTIMIZE").await.len() > before }
    };
    run_all(&[&append, &evolved], &topic, compacted).await;
    let answer = common::spark(&json!({"tables": {"evolved": table(&evolved), "append": append_table}, "stream": stream}));
    same_rows(&answer, "evolved", &table(&evolved), 1_000);
    let evolved_rows = common::read_rows_with_python(&table(&evolved));
    let with_ts = evolved_rows["records"].as_array().unwrap().iter().filter(|r| !r["ts"].is_null()).count();
    assert!(with_ts >= 500, "the second run's rows carry the new column ({with_ts})");

    // The stream took every row of the append table exactly once.
    let mut seen: BTreeMap<(String, i64, i64), usize> = BTreeMap::new();
    for r in answer["stream"]["rows"].as_array().unwrap() {
        *seen.entry((r[0].as_str().unwrap().into(), r[1].as_i64().unwrap(), r[2].as_i64().unwrap())).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "the stream repeated rows: {twice:?}");
    let in_table: BTreeSet<(String, i64, i64)> = answer["tables"]["append"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["_kafka_topic"].as_str().unwrap().into(),
                r["_kafka_partition"].as_i64().unwrap(),
                r["_kafka_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let streamed: BTreeSet<_> = seen.into_keys().collect();
    assert_eq!(streamed.len(), in_table.len(), "the stream took as many rows as the table holds");
    assert_eq!(streamed, in_table, "the stream took the table's rows");
    assert!(in_table.len() > 1_000, "both runs' rows ({})", in_table.len());
}
