//! `[transform]`: SQL projections and filters over the decoded rows (DataFusion's expression
//! dialect). Derived columns read back by Python `deltalake` with their Delta types; the filter's
//! drops are counted and accounted for by the audit; a row whose expression fails is a dead
//! letter naming the expression; an aggregation groups by a derived column; a table partitioned
//! by a derived column; one read fanned out to several tables (`sink.outputs`) through a SIGKILL
//! between their commits.

use std::time::Duration;

use exactly::config::{AggregateConfig, OutputMode, TransformConfig};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common;

async fn send(topic: &str, values: impl IntoIterator<Item = String>) {
    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    for v in values {
        producer.send(FutureRecord::<(), _>::to(topic).payload(&v), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
}

fn transform(select: Option<&[&str]>, filter: Option<&str>) -> Option<TransformConfig> {
    Some(TransformConfig { select: select.map(|s| s.iter().map(|e| e.to_string()).collect()), filter: filter.map(String::from) })
}

/// A projection with derived columns and a filter: the table holds the selected columns with
/// the Delta types of their expressions; the records the filter drops are in neither table,
/// counted by the audit, which evaluates the filter again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_and_a_filter_shape_the_rows() {
    let topic = common::topic("transform", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.transform = transform(
        Some(&[
            "id",
            "upper(value) AS value",
            "to_date(ts) AS date",
            "id * 10 AS id10",
            "_kafka_partition AS part",
            "concat(value, '-', CAST(id AS STRING)) AS label",
        ]),
        Some("value IS NOT NULL AND id < 100"),
    );
    // 2026-11-26T00:00:00Z plus id hours: dates 26th, 27th.
    let day = 1_795_651_200_000i64;
    send(
        &topic,
        (0..30u64).map(|id| {
            let value = if id % 3 == 0 { "null".to_string() } else { format!("\"v{id}\"") };
            format!(r#"{{"id":{id},"value":{value},"ts":{}}}"#, day + id as i64 * 3_600_000)
        }),
    )
    .await;
    send(&topic, [r#"{"id":100,"value":"big","ts":0}"#.to_string()]).await;

    let table = dir.path().join("table");
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    let read = common::read_rows_with_python(&table);
    common::assert_types(&read, &[("id", "long"), ("value", "string"), ("date", "date"), ("id10", "long"), ("part", "int")]);
    let columns: Vec<&str> = read["types"].as_object().unwrap().keys().map(String::as_str).collect();
    assert!(!columns.contains(&"ts"), "only the selected columns (and _kafka_*): {columns:?}");
    let mut rows = common::row_values(&read, &["id", "value", "date", "id10", "label"]);
    rows.sort_by_key(|r| r[0].as_i64());
    let want: Vec<serde_json::Value> = (0..30u64)
        .filter(|id| id % 3 != 0)
        .map(|id| {
            let date = if id < 24 { "2026-11-26" } else { "2026-11-27" };
            serde_json::json!([id, format!("V{id}"), date, id * 10, format!("v{id}-{id}")])
        })
        .collect();
    assert_eq!(rows, want);

    let audit = common::assert_verified(&config).await;
    assert_eq!(
        (audit.total(|p| p.expected), audit.total(|p| p.rows), audit.total(|p| p.filtered), audit.total(|p| p.dead_lettered)),
        (31, 20, 11, 0),
        "10 null values and id 100 filtered"
    );
}

/// A row whose expression fails at run time — a string that does not cast, a division by zero —
/// is a dead letter with its bytes, naming the expression and the error; its batch goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_expression_is_a_dead_letter_with_its_reason() {
    let topic = common::topic("transform-fail", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.transform = transform(Some(&["id", "CAST(value AS INT) AS n", "100 / CAST(value AS INT) AS q"]), None);
    let values = ["4", "x", "0", "50"];
    send(&topic, values.iter().enumerate().map(|(id, v)| format!(r#"{{"id":{id},"value":"{v}","ts":0}}"#))).await;
    let table = dir.path().join("table");
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    let rows = common::row_values(&common::read_rows_with_python(&table), &["id", "n", "q"]);
    assert_eq!(rows, [serde_json::json!([0, 4, 25]), serde_json::json!([3, 50, 2])]);
    let reasons = common::dead_letter_reasons(&dir.path().join("table_dead_letters"));
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("CAST(value AS INT)") && reasons[0].contains("'x'"), "{reasons:?}");
    assert!(
        reasons[1].contains("100 / CAST(value AS INT)") && reasons[1].to_lowercase().contains("divide by zero"),
        "{reasons:?}"
    );
    let audit = common::assert_verified(&config).await;
    assert_eq!((audit.total(|p| p.rows), audit.total(|p| p.dead_lettered)), (2, 2));
}

/// Stateful stages take the transformed rows: a count by a derived `day`, which the audit
/// recomputes from the topic through the same transform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregation_groups_by_a_derived_column() {
    let topic = common::topic("transform-agg", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.transform = transform(Some(&["id", "to_date(ts) AS day"]), Some("id % 5 <> 0"));
    config.aggregate = Some(AggregateConfig::count_by(&["day"], OutputMode::Complete, 4));
    let day = 1_795_651_200_000i64;
    send(&topic, (0..40i64).map(|id| format!(r#"{{"id":{id},"value":"v","ts":{}}}"#, day + id * 3_600_000))).await;
    let table = dir.path().join("table");
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    let read = common::read_rows_with_python(&table);
    let mut rows = common::row_values(&read, &["day", "count"]);
    rows.sort_by(|a, b| a[0].as_str().cmp(&b[0].as_str()));
    // Hours 0..23 on the 26th minus ids 0, 5, 10, 15, 20; hours 24..39 on the 27th minus 25, 30, 35.
    assert_eq!(rows, [serde_json::json!(["2026-11-26", 19]), serde_json::json!(["2026-11-27", 13])]);
    let audit = common::assert_verified(&config).await;
    let keys = audit.keys.as_ref().unwrap();
    assert_eq!((keys.expected, keys.found, keys.mismatched), (2, 2, 0));
}

/// Expressions that would not give the same row twice, or that do not name their column, are
/// refused when the config is loaded, with one line naming the setting and the expression.
#[test]
fn nondeterministic_and_unnamed_expressions_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (t, want) in [
        (transform(Some(&["id", "now() AS at"]), None), "transform.select `now() AS at`: now() is not deterministic"),
        (transform(None, Some("random() < 0.5")), "transform.where `random() < 0.5`: random() is not deterministic"),
        (transform(Some(&["uuid() AS u"]), None), "uuid() is not deterministic"),
        (transform(Some(&["upper(value)"]), None), "name the column it makes: `upper(value) AS <name>`"),
        (transform(Some(&["nope AS x"]), None), "transform.select `nope AS x`"),
        (transform(None, Some("value")), "is Utf8, not a condition"),
        (transform(Some(&["count(id) AS n"]), None), "aggregates belong in [aggregate]"),
    ] {
        let mut config = common::delta_config("p", "t", dir.path());
        config.transform = t;
        let e = config
            .validate("x.toml")
            .and_then(|()| exactly::plan::Plan::of(&config, "x.toml").map(drop))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

/// The partition values of a table's live files, from its Delta log (a file that adds and a
/// later one that removes it cancel out); the table's partition columns.
async fn partitions_in_log(table: &std::path::Path) -> (Vec<String>, std::collections::BTreeSet<String>) {
    use deltalake::kernel::Action;
    let mut files: std::collections::BTreeMap<String, String> = Default::default();
    let mut columns = Vec::new();
    for (_, actions) in common::log(table).await {
        for action in actions {
            match action {
                Action::Metadata(m) => columns = m.partition_columns().to_vec(),
                Action::Add(a) => {
                    let values: std::collections::BTreeMap<_, _> = a.partition_values.into_iter().collect();
                    files.insert(a.path, serde_json::to_string(&values).unwrap());
                }
                Action::Remove(r) => {
                    files.remove(&r.path);
                }
                _ => {}
            }
        }
    }
    (columns, files.into_values().collect())
}

/// A projection, a filter and `sink.partition_by` a derived column: the data table's files are
/// written per value (the values in the Delta log), the dead-letter table stays unpartitioned, Python reads the column
/// back, the audit reads it from the log; a pipeline that would partition the table otherwise
/// is refused with one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_column_partitions_the_table() {
    let topic = common::topic("transform-partition", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.transform = transform(Some(&["id", "value", "to_date(ts) AS date"]), Some("id <> 7"));
    if let exactly::config::SinkConfig::Delta { partition_by, .. } = &mut config.sink {
        *partition_by = vec!["date".into()];
    }
    let day = 1_795_651_200_000i64;
    let mut values: Vec<String> =
        (0..30i64).map(|id| format!(r#"{{"id":{id},"value":"v{id}","ts":{}}}"#, day + id * 7_200_000)).collect();
    values.push("not json".into());
    send(&topic, values).await;
    let table = dir.path().join("table");
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    let (columns, values) = partitions_in_log(&table).await;
    assert_eq!(columns, ["date"]);
    let want: std::collections::BTreeSet<String> =
        ["2026-11-26", "2026-11-27", "2026-11-28"].iter().map(|d| serde_json::json!({ "date": d }).to_string()).collect();
    assert_eq!(values, want, "files per day (ids 0-11, 12-23, 24-29)");
    let (dead_columns, _) = partitions_in_log(&dir.path().join("table_dead_letters")).await;
    assert!(dead_columns.is_empty(), "the dead-letter table is not partitioned");
    let read = common::read_rows_with_python(&table);
    let mut rows = common::row_values(&read, &["id", "date"]);
    rows.sort_by_key(|r| r[0].as_i64());
    let want: Vec<serde_json::Value> =
        (0..30i64).filter(|id| *id != 7).map(|id| serde_json::json!([id, format!("2026-11-{}", 26 + id * 2 / 24)])).collect();
    assert_eq!(rows, want);
    let audit = common::assert_verified(&config).await;
    assert_eq!((audit.total(|p| p.rows), audit.total(|p| p.dead_lettered), audit.total(|p| p.filtered)), (29, 1, 1));

    // The same table, partitioned otherwise: refused at start, naming both.
    if let exactly::config::SinkConfig::Delta { partition_by, .. } = &mut config.sink {
        *partition_by = vec!["value".into()];
    }
    let sink = exactly::pipeline::sink_for(&config, Default::default()).unwrap();
    let p = exactly::pipeline::Pipeline::start(config.clone(), sink).await.unwrap();
    let e = p.wait().await.expect_err("another partitioning is refused").to_string();
    assert!(e.contains("partitioned by [\"date\"]") && e.contains("partitioned by [\"value\"]"), "{e}");
}

/// One read of a topic into three tables: the main one (every row), `errors` (a filter and a
/// projection) and `big` (a filter, a projection with a division, partitioned). The process is
/// SIGKILLed right after the main table's commit of its first epoch, before the outputs': the
/// restart commits that epoch to the outputs only. Then every table holds each of its rows
/// exactly once (the audit checks each one against the topic), each epoch committed once per
/// table; a row an output's expression fails on is a dead letter, in no table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_fans_out_to_several_tables_exactly_once() {
    use crate::common::{spawn, terminate, write_config};
    let topic = common::topic("fan-out", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let output = |name: &str, filter: &str, select: &[&str], partition_by: &[&str]| exactly::config::OutputConfig {
        name: name.into(),
        path: dir.path().join(name).into(),
        select: Some(select.iter().map(|s| s.to_string()).collect()),
        filter: Some(filter.into()),
        partition_by: partition_by.iter().map(|s| s.to_string()).collect(),
    };
    if let exactly::config::SinkConfig::Delta { outputs, .. } = &mut config.sink {
        *outputs = vec![
            output("errors", "value = 'ERROR'", &["id", "lower(value) AS level"], &[]),
            output("big", "id >= 20", &["id", "100 / (id - 25) AS inv", "CAST(id % 2 AS INT) AS parity"], &["parity"]),
        ];
    }
    let value = |id: i64| if id % 3 == 0 { "ERROR" } else { "INFO" };
    send(&topic, (0..30i64).map(|id| format!(r#"{{"id":{id},"value":"{}","ts":0}}"#, value(id)))).await;
    let file = write_config(&config, dir.path());
    let (table, errors, big) = (dir.path().join("table"), dir.path().join("errors"), dir.path().join("big"));

    // SIGKILLed after the main table's first commit (held there by a fail point): the outputs
    // have not got that epoch.
    let epochs = |t: &std::path::Path| common::txn_versions(t.to_path_buf(), &config.id);
    let mut child = spawn(&file, Some("after-delta-commit=sleep(60000)"));
    common::wait_until(Duration::from_secs(60), "the main table's first commit", || async { !epochs(&table).await.is_empty() })
        .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(epochs(&table).await, [1], "the main table got epoch 1");
    assert!(epochs(&errors).await.is_empty() && epochs(&big).await.is_empty(), "the outputs did not");
    // The audit sees the outputs behind the main table: their rows of epoch 1 are missing.
    let behind = exactly::verify::verify(&config).await.unwrap();
    let missing: u64 = behind.outputs.iter().flat_map(|o| &o.partitions).map(|p| p.missing).sum();
    assert!(!behind.ok() && missing > 0, "{}", behind.render());

    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;
    for t in [&table, &errors, &big] {
        common::assert_each_epoch_committed_once(t, &config.id).await;
        assert_eq!(epochs(t).await.first(), Some(&1), "{} holds epoch 1", t.display());
    }

    let ids = |t: &std::path::Path, cols: &[&str]| {
        let mut rows = common::row_values(&common::read_rows_with_python(t), cols);
        rows.sort_by_key(|r| r[0].as_i64());
        rows
    };
    let main: Vec<serde_json::Value> = (0..30i64).filter(|id| *id != 25).map(|id| serde_json::json!([id, value(id)])).collect();
    assert_eq!(ids(&table, &["id", "value"]), main, "id 25 fails in `big`: a dead letter, in no table");
    let want: Vec<serde_json::Value> = (0..30i64).filter(|id| id % 3 == 0).map(|id| serde_json::json!([id, "error"])).collect();
    assert_eq!(ids(&errors, &["id", "level"]), want);
    let want: Vec<serde_json::Value> =
        (20..30i64).filter(|id| *id != 25).map(|id| serde_json::json!([id, 100 / (id - 25), id % 2])).collect();
    assert_eq!(ids(&big, &["id", "inv", "parity"]), want);
    let reasons = common::dead_letter_reasons(&dir.path().join("table_dead_letters"));
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("output `big`") && reasons[0].contains("100 / (id - 25)"), "{reasons:?}");

    let audit = common::assert_verified(&config).await;
    assert_eq!((audit.total(|p| p.rows), audit.total(|p| p.dead_lettered)), (29, 1));
    let outputs: Vec<(String, u64, u64)> = audit
        .outputs
        .iter()
        .map(|o| (o.name.clone(), o.partitions.iter().map(|p| p.rows).sum(), o.partitions.iter().map(|p| p.expected).sum()))
        .collect();
    assert_eq!(outputs, [("errors".to_string(), 10, 10), ("big".to_string(), 9, 9)]);
}

/// `sink.outputs` that cannot work are refused when the config is loaded, naming the output.
#[test]
fn outputs_that_cannot_work_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = |name: &str, path: &str, filter: &str| exactly::config::OutputConfig {
        name: name.into(),
        path: dir.path().join(path).into(),
        select: None,
        filter: Some(filter.into()),
        partition_by: Vec::new(),
    };
    let cases: Vec<(Vec<exactly::config::OutputConfig>, bool, &str)> = vec![
        (vec![output("a", "a", "id > 1"), output("a", "b", "id > 2")], false, "names \"a\" again"),
        (vec![output("a", "table", "id > 1")], false, "which another table of this pipeline uses"),
        (vec![output("a b", "a", "id > 1")], false, "use letters, digits"),
        (
            vec![output("a", "a", "random() > 0.5")],
            false,
            "`sink.outputs[0]` output `a`: where `random() > 0.5`: random() is not deterministic",
        ),
        (vec![output("a", "a", "id > 1")], true, "is for stateless pipelines yet"),
    ];
    for (outputs, dedup, want) in cases {
        let mut config = common::delta_config("p", "t", dir.path());
        if let exactly::config::SinkConfig::Delta { outputs: o, .. } = &mut config.sink {
            *o = outputs;
        }
        if dedup {
            config.dedup = Some(exactly::config::DedupConfig::by_epochs(&["id"], 10));
        }
        let e = config
            .validate("x.toml")
            .and_then(|()| exactly::plan::Plan::of(&config, "x.toml").map(drop))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
    }
}

/// `decode.include_key` and `decode.include_headers`: each row carries its record's key bytes
/// and headers (in order, a repeated key and a null value kept), a transform can read them, an
/// independent reader sees them, and the audit compares them with Kafka's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_key_and_headers_become_columns() {
    use rdkafka::message::{Header, OwnedHeaders};
    let topic = common::topic("key-headers", 2).await;
    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    for id in 0..40i64 {
        let mut headers = OwnedHeaders::new().insert(Header { key: "source", value: Some("crm") });
        if id % 2 == 0 {
            headers = headers.insert(Header { key: "trace", value: Some(&format!("t{id}")) });
            headers = headers.insert(Header { key: "trace", value: None::<&[u8]> });
        }
        let (key, value) = (format!("k{id}"), format!(r#"{{"id":{id},"value":"v","ts":0}}"#));
        let record = FutureRecord::to(&topic).key(&key).payload(&value).headers(headers);
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode.include_key = true;
    config.decode.include_headers = true;
    config.transform = transform(Some(&["id", "CAST(_kafka_key AS VARCHAR) AS key_text"]), None);
    let pipeline = common::start(&config, Default::default()).await;
    let table = dir.path().join("table");
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    let read = common::read_rows_with_python(&table);
    let rows = read["records"].as_array().unwrap();
    assert_eq!(rows.len(), 40);
    for r in rows {
        let id = r["id"].as_i64().unwrap();
        assert_eq!(r["key_text"], format!("k{id}"), "{r}");
        let headers = r["_kafka_headers"].as_array().unwrap_or_else(|| panic!("headers: {r}"));
        let keys: Vec<&str> = headers.iter().map(|h| h["key"].as_str().unwrap()).collect();
        let want: &[&str] = if id % 2 == 0 { &["source", "trace", "trace"] } else { &["source"] };
        assert_eq!(keys, want, "{r}");
        if id % 2 == 0 {
            assert!(headers[2]["value"].is_null(), "{r}");
        }
    }
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 40);
}
