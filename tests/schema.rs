//! Schema evolution (`sink.schema_evolution = "add-columns"`): a field added to the config
//! mid-stream joins the table in the commit of its first values; without the setting, and for
//! drops and retypes, the pipeline refuses to start with one line naming the column; a process
//! SIGKILLed or aborted around the evolving commit leaves the table exactly once; a struct that
//! gained a member compacts.

use std::path::Path;
use std::time::Duration;

use exactly::config::{DecodeConfig, DecodeFormat, FieldConfig, FieldType, SchemaEvolution, SinkConfig};
use exactly::PipelineConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common::{self, spawn, terminate, write_config};

fn fields(config: &mut PipelineConfig, extra: Option<FieldType>, evolution: SchemaEvolution) {
    let mut fields = vec![FieldConfig::new("id", FieldType::Long, false), FieldConfig::new("value", FieldType::String, true)];
    if let Some(t) = extra {
        fields.push(FieldConfig::new("extra", t, true));
    }
    config.decode = DecodeConfig { format: DecodeFormat::Json, fields, ..DecodeConfig::default() };
    if let SinkConfig::Delta { schema_evolution, .. } = &mut config.sink {
        *schema_evolution = evolution;
    }
}

async fn send(topic: &str, ids: std::ops::Range<u64>, with_extra: bool) {
    let values = ids.map(|id| {
        if with_extra {
            format!(r#"{{"id":{id},"value":"v{id}","extra":"e{id}"}}"#)
        } else {
            format!(r#"{{"id":{id},"value":"v{id}"}}"#)
        }
    });
    send_values(topic, values).await;
}

async fn send_values(topic: &str, values: impl IntoIterator<Item = String>) {
    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    for v in values {
        producer.send(FutureRecord::<(), _>::to(topic).payload(&v), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
}

/// Why `config` stops at its start (it must).
async fn refusal(config: &PipelineConfig) -> String {
    let sink = exactly::pipeline::sink_for(config, Default::default()).unwrap();
    let p = exactly::pipeline::Pipeline::start(config.clone(), sink).await.unwrap();
    p.wait().await.expect_err("the pipeline must refuse the table").to_string()
}

/// The Delta log's commits, in order: (version, whether it changes the schema to one with
/// `extra`, files added).
async fn log(table: &Path) -> Vec<(u64, bool, usize)> {
    log_of(table, "\"extra\"").await
}

/// [`log`], for a schema change to one whose text holds `marker`.
pub(crate) async fn log_of(table: &Path, marker: &str) -> Vec<(u64, bool, usize)> {
    use deltalake::kernel::Action;
    common::log(table)
        .await
        .into_iter()
        .map(|(version, actions)| {
            let schema = actions.iter().any(|a| matches!(a, Action::Metadata(m) if m.schema_string().contains(marker)));
            let adds = actions.iter().filter(|a| matches!(a, Action::Add(_))).count();
            (version, schema, adds)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_added_mid_stream_joins_the_table_with_its_first_values() {
    let topic = common::topic("evolve", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    fields(&mut config, None, SchemaEvolution::AddColumns);
    // The producer sends `extra` before the config declares it (producers change first): those
    // rows were written without it, and the audit knows (`exactly.addedAt.extra`).
    send(&topic, 0..20, true).await;
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    let before = log(&table).await;
    assert!(before.iter().all(|(_, schema, _)| !schema), "no `extra` column yet");

    // The producer starts sending `extra`; the config declares it (a restart, as a config
    // change is). Without the setting the pipeline refuses, naming the column.
    send(&topic, 20..40, true).await;
    fields(&mut config, Some(FieldType::String), SchemaEvolution::None);
    let refused = refusal(&config).await;
    assert!(refused.contains("`extra`") && refused.contains("schema_evolution"), "{refused}");
    assert_eq!(log(&table).await, before, "the refusal wrote nothing");

    fields(&mut config, Some(FieldType::String), SchemaEvolution::AddColumns);
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    // One commit changes the schema, and it is the one that adds the first files with values.
    let after = log(&table).await;
    let changes: Vec<&(u64, bool, usize)> = after.iter().filter(|(_, schema, _)| *schema).collect();
    assert_eq!(changes.len(), 1, "{after:?}");
    let (version, _, adds) = *changes[0];
    assert!(adds > 0, "the schema change came with the epoch's files: {after:?}");
    assert_eq!(version, before.last().unwrap().0 + 1, "the first commit after the restart: {after:?}");

    // Older rows read the new column as null; newer rows have their values.
    let read = common::read_rows_with_python(&table);
    let mut got: Vec<(i64, Option<String>)> = read["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_i64().unwrap(), r["extra"].as_str().map(String::from)))
        .collect();
    got.sort();
    let want: Vec<(i64, Option<String>)> = (0..40).map(|id| (id, (id >= 20).then(|| format!("e{id}")))).collect();
    assert_eq!(got, want);
    common::assert_verified(&config).await;

    // Dropping the column, or retyping it, is refused with one line naming it.
    for (extra, want) in [(None, "no longer writes"), (Some(FieldType::Long), "changing a column's type")] {
        fields(&mut config, extra, SchemaEvolution::AddColumns);
        let e = refusal(&config).await;
        assert!(e.contains("`extra`") && e.contains(want), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_around_the_evolving_commit_stays_exactly_once() {
    let topic = common::topic("evolve-kill", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    fields(&mut config, None, SchemaEvolution::AddColumns);
    send(&topic, 0..50, false).await;
    let child = spawn(&write_config(&config, dir.path()), None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;

    send(&topic, 50..100, true).await;
    fields(&mut config, Some(FieldType::String), SchemaEvolution::AddColumns);
    let file = write_config(&config, dir.path());
    // SIGKILLed in the evolving epoch, its files (with the new column) written but not
    // committed: the table is as it was.
    common::kill_with_files_written(&file, &table).await;
    assert!(log(&table).await.iter().all(|(_, schema, _)| !schema), "no schema change without its commit");
    // Killed by an abort with the files written, once more: nothing changes either.
    let (status, _) = common::wait_exit(spawn(&file, Some("after-parquet-write=abort")), Duration::from_secs(60), "abort").await;
    assert!(!status.success());
    assert!(log(&table).await.iter().all(|(_, schema, _)| !schema), "no schema change without its commit");
    // Killed right after the evolving commit, before the checkpoint: the replay must neither
    // write the epoch again nor change the schema again.
    let (status, _) = common::wait_exit(spawn(&file, Some("after-delta-commit=abort")), Duration::from_secs(60), "abort").await;
    assert!(!status.success());
    assert_eq!(log(&table).await.iter().filter(|(_, schema, _)| *schema).count(), 1);
    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;

    assert_eq!(log(&table).await.iter().filter(|(_, schema, _)| *schema).count(), 1, "the schema changed once");
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 100);
    common::assert_each_epoch_committed_once(&table, &config.id).await;
    let read = common::read_rows_with_python(&table);
    let with_extra = read["records"].as_array().unwrap().iter().filter(|r| r["extra"].is_string()).count();
    assert_eq!((read["rows"].as_u64(), with_extra), (Some(100), 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_struct_member_added_mid_stream_survives_compaction() {
    let topic = common::topic("evolve-struct", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let geo = |members: &str| FieldConfig::new("geo", FieldType::parse(members).unwrap(), true);
    let declare = |config: &mut PipelineConfig, members: &str| {
        config.decode = DecodeConfig {
            format: DecodeFormat::Json,
            fields: vec![FieldConfig::new("id", FieldType::Long, false), geo(members)],
            ..DecodeConfig::default()
        };
        if let SinkConfig::Delta { schema_evolution, .. } = &mut config.sink {
            *schema_evolution = SchemaEvolution::AddColumns;
        }
    };
    let value = |id: u64| format!(r#"{{"id":{id},"geo":{{"lat":1.5,"lon":2.5}}}}"#);
    for (ids, members) in [(0..10, "struct<lat: double>"), (10..20, "struct<lat: double, lon: double>")] {
        declare(&mut config, members);
        send_values(&topic, ids.map(value)).await;
        let pipeline = common::start(&config, Default::default()).await;
        common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
        pipeline.shutdown().await.unwrap();
    }
    let changes = log_of(&table, "\"lon\"").await.into_iter().filter(|(_, schema, adds)| *schema && *adds > 0).count();
    assert_eq!(changes, 1, "the member joined in one data commit");

    // Files from before and after the change are compacted together; old rows keep a null member.
    let report = exactly::maintenance::commands::optimize(&table.clone().into(), None, &[]).await.unwrap();
    assert!(report.files_removed >= 2, "{report:?}");
    let read = common::read_rows_with_python(&table);
    let rows = common::row_values(&read, &["id", "geo"]);
    let want: Vec<serde_json::Value> = (0..20)
        .map(|id| serde_json::json!([id, {"lat": 1.5, "lon": if id < 10 { serde_json::Value::Null } else { 2.5.into() }}]))
        .collect();
    assert_eq!(rows, want);
    common::assert_verified(&config).await;
}
