//! Avro values written by an independent encoder (Python `fastavro`): two writer schema
//! versions in the Confluent wire format resolved into one table, single-object and bare
//! framing, and every kind of bad value a dead letter with its reason.

use std::path::Path;
use std::time::Duration;

use exactly::config::{AvroConfig, AvroFraming, DecodeConfig, DecodeFormat};

use crate::common;

/// Version 1 of the writer schema.
const V1: &str = r#"{"type": "record", "name": "Order", "namespace": "shop", "fields": [
  {"name": "id", "type": "long"},
  {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
    {"name": "name", "type": "string"},
    {"name": "tags", "type": {"type": "array", "items": "string"}}
  ]}},
  {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
  {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "qty", "type": "int"},
  {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}}
]}"#;

/// Version 2 adds a field with a default, a map, and promotes `qty` from int to long; it is also
/// the reader schema (the table's columns).
const V2: &str = r#"{"type": "record", "name": "Order", "namespace": "shop", "fields": [
  {"name": "id", "type": "long"},
  {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
    {"name": "name", "type": "string"},
    {"name": "tags", "type": {"type": "array", "items": "string"}}
  ]}},
  {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
  {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "qty", "type": "long"},
  {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
  {"name": "coupon", "type": ["null", "string"], "default": null},
  {"name": "attrs", "type": {"type": "map", "values": "double"}, "default": {}}
]}"#;

/// The Kafka values `scripts/avro_encode.py` writes for `records` (JSON lines).
fn encode(framing: &str, schema: &Path, id: u32, records: &[&str]) -> Vec<Vec<u8>> {
    let records: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    common::python_values("avro_encode.py", &[framing, schema.to_str().unwrap(), &id.to_string()], &records)
}

/// A directory `schemas` under `dir` holding `files` (name, schema text).
fn schemas_dir(dir: &Path, files: &[(&str, &str)]) -> std::path::PathBuf {
    let schemas = dir.join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    for (name, text) in files {
        std::fs::write(schemas.join(name), text).unwrap();
    }
    schemas
}

/// `decode` for Avro values with the reader schema `reader`, framed as `framing`, writer schemas
/// from `schemas_dir` (no registry).
fn avro_decode(reader: std::path::PathBuf, framing: AvroFraming, schemas_dir: Option<std::path::PathBuf>) -> DecodeConfig {
    DecodeConfig {
        format: DecodeFormat::Avro,
        avro: Some(AvroConfig { schema_file: Some(reader), framing, schemas_dir, ..AvroConfig::default() }),
        ..DecodeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writer_schema_versions_resolve_into_one_table() {
    let topic = common::topic("avro", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let schemas = schemas_dir(dir.path(), &[("1.avsc", V1), ("2.avsc", V2)]);
    let reader = dir.path().join("order.avsc");
    std::fs::write(&reader, V2).unwrap();

    let v1 = encode(
        "confluent",
        &schemas.join("1.avsc"),
        1,
        &[
            r#"{"id": 0, "customer": {"name": "ada", "tags": ["vip"]}, "price": "9999999999.99", "at": 1764158400123, "qty": 2, "status": "NEW"}"#,
            r#"{"id": 1, "customer": {"name": "bob", "tags": []}, "price": "-0.50", "at": 0, "qty": 1, "status": "PAID"}"#,
        ],
    );
    let v2 = encode(
        "confluent",
        &schemas.join("2.avsc"),
        2,
        &[
            r#"{"id": 2, "customer": {"name": "cy", "tags": ["a", "b"]}, "price": "1.00", "at": 1, "qty": 5000000000, "status": "NEW", "coupon": "XMAS", "attrs": {"b": 2.5, "a": 1.0}}"#,
            r#"{"id": 3, "customer": {"name": "di", "tags": []}, "price": "3.10", "at": 2, "qty": 3, "status": "PAID", "coupon": null, "attrs": {}}"#,
        ],
    );
    let mut values = vec![v1[0].clone(), v2[0].clone(), v1[1].clone(), v2[1].clone()];
    // Dead letters: an unknown schema id, a wrong magic byte, a body cut short, trailing bytes.
    let mut unknown = v2[1].clone();
    unknown[4] = 99;
    let mut magic = v2[1].clone();
    magic[0] = 1;
    let short = v2[1][..v2[1].len() - 3].to_vec();
    let mut long = v2[1].clone();
    long.extend([0, 0]);
    values.extend([unknown, magic, short, long]);

    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode = avro_decode(reader, AvroFraming::Confluent, Some(schemas));
    common::send_values(&topic, &values).await;
    let table = dir.path().join("table");
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    let read = common::read_rows_with_python(&table);
    common::assert_types(
        &read,
        &[("customer", "struct"), ("price", "decimal(12,2)"), ("at", "timestamp"), ("qty", "long"), ("attrs", "map")],
    );
    let rows = common::row_values(&read, &["id", "customer", "price", "at", "qty", "status", "coupon", "attrs"]);
    let want = vec![
        serde_json::json!([0, {"name": "ada", "tags": ["vip"]}, "9999999999.99", "2025-11-26T12:00:00.123000+00:00", 2, "NEW", null, {}]),
        serde_json::json!([2, {"name": "cy", "tags": ["a", "b"]}, "1.00", "1970-01-01T00:00:00.001000+00:00", 5_000_000_000i64, "NEW", "XMAS", {"a": 1.0, "b": 2.5}]),
        serde_json::json!([1, {"name": "bob", "tags": []}, "-0.50", "1970-01-01T00:00:00+00:00", 1, "PAID", null, {}]),
        serde_json::json!([3, {"name": "di", "tags": []}, "3.10", "1970-01-01T00:00:00.002000+00:00", 3, "PAID", null, {}]),
    ];
    let reasons = common::dead_letter_reasons(&dir.path().join("table_dead_letters"));
    assert_eq!(rows, want, "dead letters: {reasons:?}");
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].contains("unknown writer schema id 99"), "{reasons:?}");
    assert!(reasons[1].contains("not in the Confluent wire format"), "{reasons:?}");
    assert!(reasons[2].contains("does not decode"), "{reasons:?}");
    assert!(reasons[3].contains("2 bytes follow the Avro record"), "{reasons:?}");
    let audit = common::assert_verified(&config).await;
    assert_eq!((audit.total(|p| p.rows), audit.total(|p| p.dead_lettered)), (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_object_and_bare_avro_values_decode() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = schemas_dir(dir.path(), &[("order-v1.avsc", V1)]);
    let reader = dir.path().join("order.avsc");
    std::fs::write(&reader, V2).unwrap();
    let record = r#"{"id": 7, "customer": {"name": "ed", "tags": []}, "price": "0.01", "at": 3, "qty": 4, "status": "NEW"}"#;
    for (framing, writer, schemas_dir) in [
        (AvroFraming::SingleObject, schemas.join("order-v1.avsc"), Some(schemas.clone())),
        (AvroFraming::None, reader.clone(), None),
    ] {
        let topic = common::topic("avro-framing", 1).await;
        let name = if framing == AvroFraming::None { "none" } else { "single-object" };
        let mut values = encode(name, &writer, 0, &[record]);
        values.push(b"\xc3\x01not avro".to_vec());
        let mut config = common::delta_config(&common::unique("p"), &topic, &dir.path().join(name));
        config.decode = avro_decode(reader.clone(), framing, schemas_dir);
        common::send_values(&topic, &values).await;
        let table = dir.path().join(name).join("table");
        let pipeline = common::start(&config, Default::default()).await;
        common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
        pipeline.shutdown().await.unwrap();
        let read = common::read_rows_with_python(&table);
        let dead = common::dead_letter_reasons(&dir.path().join(name).join("table_dead_letters"));
        assert_eq!(read["rows"].as_u64(), Some(1), "{name}: dead letters {dead:?}");
        let row = &read["records"][0];
        assert_eq!(
            (row["id"].as_i64(), row["price"].as_str(), read["rows"].as_u64()),
            (Some(7), Some("0.01"), Some(1)),
            "{name}"
        );
        let audit = common::assert_verified(&config).await;
        assert_eq!(audit.total(|p| p.dead_lettered), 1, "{name}");
    }
}

/// Held while a test registers schemas. The registry's in-memory (H2) store answers 500 (and
/// then 409 for the half-made subject) when registrations of tests running in parallel collide on
/// its id sequence: one at a time. A test that must know the next id holds it longer.
pub(crate) static REGISTRATIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Registers `schema` under `subject` in the registry at `url`; its id.
async fn register(url: &str, subject: &str, schema: &str) -> u32 {
    let _turn = REGISTRATIONS.lock().await;
    register_in_turn(url, subject, schema).await
}

/// [`register`], for a test holding [`REGISTRATIONS`].
async fn register_in_turn(url: &str, subject: &str, schema: &str) -> u32 {
    let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" });
    for attempt in 1.. {
        let response = reqwest::Client::new()
            .post(format!("{url}/subjects/{subject}/versions"))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        if response.status().is_server_error() && attempt < 10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let answer: serde_json::Value =
            serde_json::from_str(&response.error_for_status().unwrap().text().await.unwrap()).unwrap();
        return answer["id"].as_u64().unwrap() as u32;
    }
    unreachable!()
}

/// The Confluent API of the real schema registry `scripts/with-registry` started (Apicurio
/// Registry's `ccompat`, built from Maven Central by `scripts/schema-registry`).
pub(crate) fn registry_url() -> String {
    std::env::var("EXACTLY_SCHEMA_REGISTRY")
        .expect("EXACTLY_SCHEMA_REGISTRY is not set: run the suite with `just test` (scripts/with-registry starts the registry)")
}

/// `decode.avro.registry` for the registry at `url`.
pub(crate) fn registry(url: String) -> exactly::config::RegistryConfig {
    exactly::config::RegistryConfig { url, username: None, password: None, ca_file: None, timeout_ms: 5_000, attempts: 3 }
}

/// Writer schemas by id from a real registry: two versions of a subject resolve into one table;
/// an id the registry does not know is a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_schemas_from_a_schema_registry() {
    let url = registry_url();
    let topic = common::topic("avro-registry", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let subject = format!("{topic}-value");
    let (id1, id2) = (register(&url, &subject, V1).await, register(&url, &subject, V2).await);
    let (v1_file, reader) = (dir.path().join("v1.avsc"), dir.path().join("order.avsc"));
    std::fs::write(&v1_file, V1).unwrap();
    std::fs::write(&reader, V2).unwrap();
    let record = r#"{"id": 9, "customer": {"name": "fay", "tags": []}, "price": "2.50", "at": 4, "qty": 1, "status": "NEW"}"#;
    let mut values = encode("confluent", &v1_file, id1, &[record]);
    values.extend(encode("confluent", &reader, id2, &[record]));
    let mut unknown = values[1].clone();
    unknown[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    values.push(unknown);
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode = DecodeConfig {
        format: DecodeFormat::Avro,
        avro: Some(AvroConfig {
            schema_file: Some(reader),
            framing: AvroFraming::Confluent,
            registry: Some(registry(url)),
            ..AvroConfig::default()
        }),
        ..DecodeConfig::default()
    };
    common::send_values(&topic, &values).await;
    let table = dir.path().join("table");
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    let audit = common::assert_verified(&config).await;
    assert_eq!((audit.total(|p| p.rows), audit.total(|p| p.dead_lettered)), (2, 1));
    let read = common::read_rows_with_python(&table);
    let prices: Vec<&str> = read["records"].as_array().unwrap().iter().map(|r| r["price"].as_str().unwrap()).collect();
    assert_eq!(prices, ["2.50", "2.50"]);
}

/// A registry that does not answer never costs a record: the batch is not decoded, the consumer
/// restarts until the restart budget is spent, the pipeline stops naming the registry, and
/// nothing was committed or dead-lettered for those records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_stops_the_pipeline_and_skips_nothing() {
    let topic = common::topic("avro-no-registry", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let reader = dir.path().join("order.avsc");
    std::fs::write(&reader, V2).unwrap();
    let record = r#"{"id": 1, "customer": {"name": "gus", "tags": []}, "price": "1.00", "at": 0, "qty": 1, "status": "NEW"}"#;
    common::send_values(&topic, &encode("confluent", &reader, 77, &[record, record])).await;
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let port = common::free_port();
    config.decode = avro_decode(reader, AvroFraming::Confluent, None);
    config.decode.avro.as_mut().unwrap().registry =
        Some(exactly::config::RegistryConfig { timeout_ms: 300, attempts: 2, ..registry(format!("http://127.0.0.1:{port}")) });
    config.supervisor.max_restarts = 2;
    config.supervisor.backoff_ms = 10;
    let sink = exactly::pipeline::sink_for(&config, Default::default()).unwrap();
    let pipeline = exactly::pipeline::Pipeline::start(config.clone(), sink).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(60), pipeline.wait()).await.expect("the pipeline stops").unwrap_err();
    assert!(
        err.to_string().contains(&format!("schema registry http://127.0.0.1:{port} did not answer for schema id 77")),
        "{err}"
    );
    for table in ["table", "table_dead_letters"] {
        let rows: usize = common::read_rows(&dir.path().join(table)).await.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 0, "{table}: nothing committed for records the registry could not resolve");
    }
}

/// The reader schema of [`writer_schema_fields_join_the_table_without_a_restart`], also the
/// first writer schema (id 1).
const PERSON: &str = r#"{"type": "record", "name": "Person", "fields": [
  {"name": "id", "type": "long"},
  {"name": "name", "type": "string"}
]}"#;

/// A later writer schema (id 2): two fields the reader schema lacks.
const PERSON_EMAIL: &str = r#"{"type": "record", "name": "Person", "fields": [
  {"name": "id", "type": "long"},
  {"name": "name", "type": "string"},
  {"name": "email", "type": ["null", "string"], "default": null},
  {"name": "score", "type": "int"}
]}"#;

/// Another (id 3): yet another field, and none of id 2's.
const PERSON_PHONE: &str = r#"{"type": "record", "name": "Person", "fields": [
  {"name": "id", "type": "long"},
  {"name": "name", "type": "string"},
  {"name": "phone", "type": "string"}
]}"#;

/// With `sink.schema_evolution = "add-columns"`, the fields a writer schema adds become
/// columns while the pipeline runs: the first epoch with such records grows the table in its
/// own commit; rows of other writer schemas read null there. A process SIGKILLed with the
/// growing epoch's files written, or aborted right after its commit, leaves the table exactly
/// once, the schema changed once; a restart keeps the columns the records of the moment lack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_schema_fields_join_the_table_without_a_restart() {
    use crate::common::{spawn, terminate, write_config};
    use crate::schema::log_of;
    let topic = common::topic("avro-evolve", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let schemas = schemas_dir(dir.path(), &[("1.avsc", PERSON), ("2.avsc", PERSON_EMAIL), ("3.avsc", PERSON_PHONE)]);
    let reader = dir.path().join("person.avsc");
    std::fs::write(&reader, PERSON).unwrap();
    let person = |id: u32, ids: std::ops::Range<u64>| {
        let records: Vec<String> = ids
            .map(|i| match id {
                1 => format!(r#"{{"id": {i}, "name": "n{i}"}}"#),
                2 if i % 2 == 0 => format!(r#"{{"id": {i}, "name": "n{i}", "email": "e{i}", "score": {}}}"#, i * 10),
                2 => format!(r#"{{"id": {i}, "name": "n{i}", "email": null, "score": {}}}"#, i * 10),
                _ => format!(r#"{{"id": {i}, "name": "n{i}", "phone": "p{i}"}}"#),
            })
            .collect();
        let records: Vec<&str> = records.iter().map(String::as_str).collect();
        encode("confluent", &schemas.join(format!("{id}.avsc")), id, &records)
    };

    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode = avro_decode(reader, AvroFraming::Confluent, Some(schemas.clone()));
    if let exactly::config::SinkConfig::Delta { schema_evolution, .. } = &mut config.sink {
        *schema_evolution = exactly::config::SchemaEvolution::AddColumns;
    }
    let table = dir.path().join("table");
    let file = write_config(&config, dir.path());

    // Written with the reader schema only: its columns.
    common::send_values(&topic, &person(1, 0..5)).await;
    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    let before = log_of(&table, "\"email\"").await;
    assert!(before.iter().all(|(_, schema, _)| !schema), "no `email` column yet: {before:?}");

    // The producer moves to writer schema 2 (and back) while the pipeline runs.
    let mut values = person(2, 5..10);
    values.extend(person(1, 10..12));
    common::send_values(&topic, &values).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;
    let after = log_of(&table, "\"email\"").await;
    let changes: Vec<&(u64, bool, usize)> = after.iter().filter(|(_, schema, _)| *schema).collect();
    assert_eq!(changes.len(), 1, "one commit adds `email`: {after:?}");
    assert!(changes[0].2 > 0 && changes[0].0 > before.last().unwrap().0, "with the epoch's files: {after:?}");

    // Writer schema 3 arrives at a restart: killed with the growing epoch's files written, then
    // aborted right after its commit (before the checkpoint), then run to the end.
    common::send_values(&topic, &person(3, 12..15)).await;
    let phone = || async { log_of(&table, "\"phone\"").await.iter().filter(|(_, schema, _)| *schema).count() };
    common::kill_with_files_written(&file, &table).await;
    assert_eq!(phone().await, 0, "no schema change without its commit");
    let (status, _) = common::wait_exit(spawn(&file, Some("after-delta-commit=abort")), Duration::from_secs(60), "abort").await;
    assert!(!status.success());
    assert_eq!(phone().await, 1);
    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;
    assert_eq!(phone().await, 1, "the schema changed once");
    common::assert_each_epoch_committed_once(&table, &config.id).await;

    let read = common::read_rows_with_python(&table);
    common::assert_types(&read, &[("email", "string"), ("score", "int"), ("phone", "string")]);
    let mut rows = common::row_values(&read, &["id", "name", "email", "score", "phone"]);
    rows.sort_by_key(|r| r[0].as_i64());
    let want: Vec<serde_json::Value> = (0..15u64)
        .map(|i| match i {
            5..10 => serde_json::json!([i, format!("n{i}"), (i % 2 == 0).then(|| format!("e{i}")), i * 10, null]),
            12.. => serde_json::json!([i, format!("n{i}"), null, null, format!("p{i}")]),
            _ => serde_json::json!([i, format!("n{i}"), null, null, null]),
        })
        .collect();
    assert_eq!(rows, want, "dead letters: {:?}", common::dead_letter_reasons(&dir.path().join("table_dead_letters")));
    let audit = common::assert_verified(&config).await;
    assert_eq!((audit.total(|p| p.rows), audit.total(|p| p.dead_lettered)), (15, 0));
}

/// With a registry and `add-columns`, a writer schema registered while the pipeline runs grows
/// the table with its first records: the id is fetched when its first record arrives, its new
/// fields become columns in that epoch's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_schema_registered_mid_stream_grows_the_table() {
    let url = registry_url();
    let topic = common::topic("avro-registry-evolve", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let subject = format!("{topic}-value");
    let (reader, v2_file) = (dir.path().join("person.avsc"), dir.path().join("person-email.avsc"));
    std::fs::write(&reader, PERSON).unwrap();
    std::fs::write(&v2_file, PERSON_EMAIL).unwrap();
    let id1 = register(&url, &subject, PERSON).await;
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode = avro_decode(reader.clone(), AvroFraming::Confluent, None);
    config.decode.avro.as_mut().unwrap().registry = Some(registry(url.clone()));
    if let exactly::config::SinkConfig::Delta { schema_evolution, .. } = &mut config.sink {
        *schema_evolution = exactly::config::SchemaEvolution::AddColumns;
    }
    let table = dir.path().join("table");
    common::send_values(&topic, &encode("confluent", &reader, id1, &[r#"{"id": 1, "name": "a"}"#])).await;
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;

    // Registered after the pipeline started: it learns the id from the records.
    let id2 = register(&url, &subject, PERSON_EMAIL).await;
    assert_ne!(id1, id2);
    common::send_values(&topic, &encode("confluent", &v2_file, id2, &[r#"{"id": 2, "name": "b", "email": "b@x", "score": 7}"#]))
        .await;
    common::send_values(&topic, &encode("confluent", &reader, id1, &[r#"{"id": 3, "name": "c"}"#])).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    let read = common::read_rows_with_python(&table);
    let rows = common::row_values(&read, &["id", "name", "email", "score"]);
    let want = vec![
        serde_json::json!([1, "a", null, null]),
        serde_json::json!([2, "b", "b@x", 7]),
        serde_json::json!([3, "c", null, null]),
    ];
    assert_eq!(rows, want, "dead letters: {:?}", common::dead_letter_reasons(&dir.path().join("table_dead_letters")));
    let changes =
        crate::schema::log_of(&table, "\"email\"").await.iter().filter(|(_, schema, adds)| *schema && *adds > 0).count();
    assert_eq!(changes, 1, "`email` joined with its first values, in one commit");
    let audit = common::assert_verified(&config).await;
    assert_eq!((audit.total(|p| p.rows), audit.total(|p| p.dead_lettered)), (3, 0));
}

/// The reader schema can come from the registry by subject and version (absent: the latest when
/// the config is loaded) instead of a file; a subject the registry lacks stops the load with one
/// line naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_schema_from_the_registry_by_subject() {
    const PERSON_NOTE: &str = r#"{"type": "record", "name": "Person", "fields": [
      {"name": "id", "type": "long"},
      {"name": "name", "type": "string"},
      {"name": "note", "type": ["null", "string"], "default": null}
    ]}"#;
    let url = registry_url();
    let topic = common::topic("avro-reader-subject", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let subject = format!("{topic}-value");
    let (v1_file, v2_file) = (dir.path().join("v1.avsc"), dir.path().join("v2.avsc"));
    std::fs::write(&v1_file, PERSON).unwrap();
    std::fs::write(&v2_file, PERSON_NOTE).unwrap();
    let (id1, id2) = (register(&url, &subject, PERSON).await, register(&url, &subject, PERSON_NOTE).await);
    let mut values = encode("confluent", &v1_file, id1, &[r#"{"id": 1, "name": "a"}"#]);
    values.extend(encode("confluent", &v2_file, id2, &[r#"{"id": 2, "name": "b", "note": "hi"}"#]));
    common::send_values(&topic, &values).await;

    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode = DecodeConfig {
        format: DecodeFormat::Avro,
        avro: Some(AvroConfig {
            reader_subject: Some(subject.clone()),
            framing: AvroFraming::Confluent,
            registry: Some(registry(url.clone())),
            ..AvroConfig::default()
        }),
        ..DecodeConfig::default()
    };
    // The config as planned: the reader schema fetched from the registry into it.
    let load = |config: &exactly::PipelineConfig| {
        let path = common::write_config(config, dir.path());
        let loaded = exactly::PipelineConfig::load(&path).map_err(|e| e.to_string())?;
        let plan = exactly::plan::Plan::of(&loaded, &path.display().to_string()).map_err(|e| e.to_string())?;
        Ok::<_, String>((*plan.config).clone())
    };
    let columns = |config: &exactly::PipelineConfig| -> Vec<String> {
        exactly::decode::Decoder::new(&config.decode).unwrap().fields().iter().map(|f| f.name.clone()).collect()
    };
    // Version 1, then the latest (2).
    config.decode.avro.as_mut().unwrap().reader_version = Some(1);
    assert_eq!(columns(&load(&config).unwrap()), ["id", "name"]);
    config.decode.avro.as_mut().unwrap().reader_version = None;
    let loaded = load(&config).unwrap();
    assert_eq!(columns(&loaded), ["id", "name", "note"]);

    let table = dir.path().join("table");
    let pipeline = common::start(&loaded, Default::default()).await;
    common::wait_table_drained(&table, &loaded.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    let rows = common::row_values(&common::read_rows_with_python(&table), &["id", "name", "note"]);
    assert_eq!(rows, [serde_json::json!([1, "a", null]), serde_json::json!([2, "b", "hi"])]);
    common::assert_verified(&loaded).await;

    config.decode.avro.as_mut().unwrap().reader_subject = Some(format!("{subject}-missing"));
    let e = load(&config).unwrap_err();
    assert!(e.contains("decode.avro.reader_subject") && e.contains(&format!("has no subject \"{subject}-missing\"")), "{e}");
}

/// Over HTTPS: the registry's certificate is trusted through `ca_file` (a private CA), and
/// refused without it — `exactly check`'s question names the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_over_https_is_trusted_through_its_ca_file() {
    let https = std::env::var("EXACTLY_SCHEMA_REGISTRY_TLS").expect("EXACTLY_SCHEMA_REGISTRY_TLS: run through `just test`");
    let ca = std::path::PathBuf::from(std::env::var("EXACTLY_SCHEMA_REGISTRY_CA").expect("EXACTLY_SCHEMA_REGISTRY_CA"));
    let topic = common::topic("avro-registry-tls", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let reader = dir.path().join("person.avsc");
    std::fs::write(&reader, PERSON).unwrap();
    let id = register(&registry_url(), &format!("{topic}-value"), PERSON).await;
    common::send_values(&topic, &encode("confluent", &reader, id, &[r#"{"id": 1, "name": "a"}"#])).await;

    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode = avro_decode(reader, AvroFraming::Confluent, None);
    config.decode.avro.as_mut().unwrap().registry = Some(registry(https.clone()));
    let refused = exactly::decode::Decoder::new(&config.decode).unwrap().check_registry().await.unwrap_err().to_string();
    assert!(refused.contains(&format!("schema registry {https} did not answer")), "{refused}");

    config.decode.avro.as_mut().unwrap().registry.as_mut().unwrap().ca_file = Some(ca);
    assert_eq!(
        exactly::decode::Decoder::new(&config.decode).unwrap().check_registry().await.unwrap().as_deref(),
        Some(https.as_str())
    );
    let table = dir.path().join("table");
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    let rows = common::row_values(&common::read_rows_with_python(&table), &["id", "name"]);
    assert_eq!(rows, [serde_json::json!([1, "a"])]);
    common::assert_verified(&config).await;
}

/// A schema id the registry did not have yet when the pipeline first met it (a replica behind,
/// a registry restarted from an empty store) is asked again: once the schema is registered, its
/// records become rows. The records met before are dead letters, and `verify` re-decodes every
/// dead letter and flags those that now decode to a row. (The 404 was kept for the life of the
/// process: 0 of 1,000 later records were rows, and `verify` said OK.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_id_the_registry_learns_later_is_asked_again() {
    let url = registry_url();
    let topic = common::topic("avro-registry-later", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let reader = dir.path().join("person.avsc");
    std::fs::write(&reader, PERSON).unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode.format = DecodeFormat::Avro;
    config.decode.fields = Vec::new();
    config.decode.avro = Some(AvroConfig {
        schema_file: Some(reader.clone()),
        framing: AvroFraming::Confluent,
        registry: Some(registry(url.clone())),
        ..AvroConfig::default()
    });
    let person = |id: u32, ids: std::ops::Range<u64>| {
        let records: Vec<String> = ids.map(|i| format!(r#"{{"id": {i}, "name": "n{i}"}}"#)).collect();
        let records: Vec<&str> = records.iter().map(String::as_str).collect();
        encode("confluent", &reader, id, &records)
    };
    let table = dir.path().join("table");
    let dead = dir.path().join("table_dead_letters");

    // The next id, held for this test: nothing else registers until it does. (The registry
    // gives equal schema texts one id: both texts are new, named after the topic.)
    let turn = REGISTRATIONS.lock().await;
    let unique = |name: &str| PERSON.replace("\"Person\"", &format!("\"{name}\", \"doc\": \"{topic}\""));
    let next = register_in_turn(&url, &format!("{topic}-probe"), &unique("Probe")).await + 1;
    common::send_values(&topic, &person(next, 0..10)).await;
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    // The dead-letter table commits after the data table.
    common::wait_until(Duration::from_secs(30), "the dead letters", || async {
        common::read_rows(&dead).await.iter().map(|b| b.num_rows()).sum::<usize>() >= 10
    })
    .await;
    assert_eq!(common::read_with_python(&dead)["rows"], 10, "unknown when met: dead letters");
    let id = register_in_turn(&url, &format!("{topic}-value"), &unique("Person")).await;
    drop(turn);
    assert_eq!(id, next, "the registry gave the schema the id the records carry");
    common::send_values(&topic, &person(id, 10..1_010)).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    assert_eq!(common::read_with_python(&table)["rows"], 1_000, "every record after the registration is a row");

    let audit = exactly::verify::verify(&config).await.unwrap();
    assert!(!audit.ok(), "the early dead letters decode now: {}", audit.render());
    assert_eq!((audit.total(|p| p.mismatched), audit.total(|p| p.dead_lettered)), (10, 10), "{}", audit.render());
}
