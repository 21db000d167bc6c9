//! Protobuf and JSON Schema values written by Confluent's own serializers (`confluent-kafka`'s
//! ProtobufSerializer and JSONSerializer, scripts/registry_encode.py) against the real registry:
//! every kind of Protobuf field, two writer schema versions with a field added, a descriptor set
//! from protoc, a JSON Schema's columns, and every kind of bad value a dead letter with its
//! reason.

use std::path::Path;
use std::time::Duration;

use exactly::config::{DecodeConfig, DecodeFormat, JsonSchemaConfig, ProtobufConfig, WireFraming};
use serde_json::json;

use crate::avro::{registry, registry_url, REGISTRATIONS};
use crate::common;

/// Version 1 of the writer schema: scalars of each width, a nested message, an enum, a
/// Timestamp, a wrapper, a map, a oneof.
const ORDER_V1: &str = r#"syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
enum Status { NEW = 0; PAID = 1; }
message Customer { string name = 1; repeated string tags = 2; }
message Order {
  int64 id = 1;
  Customer customer = 2;
  Status status = 3;
  google.protobuf.Timestamp at = 4;
  google.protobuf.StringValue coupon = 5;
  map<string, double> attrs = 6;
  oneof pay { string card = 7; bytes token = 8; }
  uint64 big = 9;
  sint32 delta = 10;
}
"#;

/// Version 2 adds two fields.
fn order_v2() -> String {
    ORDER_V1.replace("  sint32 delta = 10;\n", "  sint32 delta = 10;\n  string note = 11;\n  repeated int32 qty = 12;\n")
}

/// The values `scripts/registry_encode.py` writes for `records`, its schema registered in the
/// registry at `url` under `<topic>-value`. `args`: the kind and what it takes after the topic
/// (see the script).
async fn encode(url: &str, topic: &str, args: &[&str], records: &[serde_json::Value]) -> Vec<Vec<u8>> {
    // Registrations of parallel tests collide in the registry's in-memory store: one at a time.
    let _turn = REGISTRATIONS.lock().await;
    let args: Vec<&str> = [args[0], url, topic].into_iter().chain(args[1..].iter().copied()).collect();
    let records: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    common::python_values("registry_encode.py", &args, &records)
}

/// Runs the pipeline of `config` until its table holds the whole topic; the table's rows, read
/// by Python `deltalake`, after `verify` passed.
async fn run(config: &exactly::PipelineConfig, dir: &Path) -> serde_json::Value {
    let table = dir.join("table");
    let pipeline = common::start(config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &config.source.topics[0], Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    common::assert_verified(config).await;
    common::read_rows_with_python(&table)
}

/// Writer schemas by id from the real registry, as Confluent's Python serializer registers them
/// (a base64 descriptor, the message indexes in each value): every kind of field reads as Spark's
/// `from_protobuf` types it, a second version's new fields join the table
/// (`schema_evolution = "add-columns"`), and bad values are dead letters with their reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_from_confluent_s_serializer_and_the_registry() {
    let url = registry_url();
    let topic = common::topic("protobuf", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (dir.path().join("v1/order.proto"), dir.path().join("v2/order.proto"));
    for (path, text) in [(&v1, ORDER_V1.to_string()), (&v2, order_v2())] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let first = encode(
        &url,
        &topic,
        &["protobuf", v1.to_str().unwrap(), "shop.Order"],
        &[
            json!({"id": "5", "customer": {"name": "ada", "tags": ["vip"]}, "status": "PAID",
                   "at": "2025-11-26T12:00:00.123456Z", "coupon": "XMAS", "attrs": {"b": -2, "a": 1.5},
                   "card": "visa", "big": "18446744073709551615", "delta": -3}),
            json!({"id": "6", "token": "AQI="}),
        ],
    )
    .await;
    let second = encode(
        &url,
        &topic,
        &["protobuf", v2.to_str().unwrap(), "shop.Order"],
        &[json!({"id": "7", "customer": {"name": "bo"}, "coupon": "", "note": "hi", "qty": [1, 2]})],
    )
    .await;
    let mut values = vec![first[0].clone(), second[0].clone(), first[1].clone()];
    // Dead letters: an unknown schema id, a wrong magic byte, a body cut short, a message of
    // another type (the indexes point at Customer, the file's first message).
    let mut unknown = second[0].clone();
    unknown[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut magic = first[1].clone();
    magic[0] = 1;
    let short = first[0][..first[0].len() - 3].to_vec();
    assert_eq!(&first[1][5..7], &[2, 2], "one index, 1: Order is the file's second message");
    let customer = [&first[1][..5], &[0], &first[1][7..]].concat();
    values.extend([unknown, magic, short, customer]);
    common::send_values(&topic, &values).await;

    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode = DecodeConfig {
        format: DecodeFormat::Protobuf,
        protobuf: Some(ProtobufConfig {
            reader_subject: Some(format!("{topic}-value")),
            reader_version: Some(1),
            // (Absent: the file's first message, Customer — the Confluent convention.)
            message: Some("shop.Order".into()),
            framing: WireFraming::Confluent,
            registry: Some(registry(url)),
            ..ProtobufConfig::default()
        }),
        ..DecodeConfig::default()
    };
    if let exactly::config::SinkConfig::Delta { schema_evolution, .. } = &mut config.sink {
        *schema_evolution = exactly::config::SchemaEvolution::AddColumns;
    }
    let read = run(&config, dir.path()).await;
    common::assert_types(
        &read,
        &[
            ("id", "long"),
            ("customer", "struct"),
            ("status", "string"),
            ("at", "timestamp"),
            ("coupon", "string"),
            ("attrs", "map"),
            ("token", "binary"),
            ("big", "decimal(20,0)"),
            ("delta", "integer"),
            ("note", "string"),
            ("qty", "array"),
        ],
    );
    let columns = ["id", "customer", "status", "at", "coupon", "attrs", "card", "token", "big", "delta", "note", "qty"];
    assert_eq!(
        common::row_values(&read, &columns),
        [
            json!([5, {"name": "ada", "tags": ["vip"]}, "PAID", "2025-11-26T12:00:00.123456+00:00", "XMAS",
                   {"a": 1.5, "b": -2.0}, "visa", null, "18446744073709551615", -3, null, null]),
            json!([7, {"name": "bo", "tags": []}, null, null, "", {}, null, null, null, null, "hi", [1, 2]]),
            json!([6, null, null, null, null, {}, null, "AQI=", null, null, null, null]),
        ],
        "unset fields are null (Spark's default), a set wrapper holding \"\" is \"\"; version 1's rows have no note"
    );
    let reasons = common::dead_letter_reasons(&dir.path().join("table_dead_letters"));
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    // The audit decodes the records again through the registry: an edited value FAILS it.
    crate::holes::tamper(&dir.path().join("table"), |b| {
        use deltalake::arrow::array::{Array, Int32Array};
        let delta = b.column_by_name("delta").unwrap().as_any().downcast_ref::<Int32Array>().unwrap();
        let edited: Int32Array =
            (0..b.num_rows()).map(|i| if i == 0 { Some(99) } else { delta.is_valid(i).then(|| delta.value(i)) }).collect();
        crate::holes::replace_column(b, "delta", std::sync::Arc::new(edited))
    })
    .await;
    let audit = exactly::verify::verify(&config).await.unwrap();
    assert_eq!(audit.total(|p| p.mismatched), 1, "{}", audit.render());
    for (reason, want) in reasons.iter().zip([
        "unknown writer schema id 4294967295",
        "not in the Confluent wire format",
        "does not decode with writer schema id",
        "the value is a shop.Customer, not a shop.Order",
    ]) {
        assert!(reason.contains(want), "{reason} (want {want})");
    }
}

/// The reader message from a descriptor set protoc wrote, no registry: every value is read with
/// it (the wire format's id and indexes skipped, as Spark's `from_protobuf` reads with the
/// descriptor it is given), and `emit_default_values` reads unset proto3 scalars as their
/// defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_from_a_descriptor_set_file() {
    let url = registry_url();
    let topic = common::topic("protobuf-desc", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let (proto, set) = (dir.path().join("order.proto"), dir.path().join("order.desc"));
    std::fs::write(&proto, ORDER_V1).unwrap();
    let values = encode(
        &url,
        &topic,
        &["protobuf", proto.to_str().unwrap(), "shop.Order", set.to_str().unwrap()],
        &[json!({"id": "1", "status": "PAID", "customer": {"name": "cy"}}), json!({})],
    )
    .await;
    common::send_values(&topic, &values).await;
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode = DecodeConfig {
        format: DecodeFormat::Protobuf,
        protobuf: Some(ProtobufConfig {
            descriptor_file: Some(set),
            message: Some("shop.Order".into()),
            framing: WireFraming::Confluent,
            emit_default_values: true,
            ..ProtobufConfig::default()
        }),
        ..DecodeConfig::default()
    };
    let read = run(&config, dir.path()).await;
    assert_eq!(
        common::row_values(&read, &["id", "status", "customer", "coupon", "big", "card"]),
        [json!([1, "PAID", {"name": "cy", "tags": []}, null, "0", null]), json!([0, "NEW", null, null, "0", null]),],
        "defaults for proto3 scalars; messages, wrappers and oneof members without a value stay null"
    );
}

/// A JSON Schema from the registry gives the columns (its properties in order, `required` and
/// not nullable is not null, `date-time` a timestamp), values in the Confluent wire format from
/// Confluent's JSONSerializer decode against them, and values its rules refuse are dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_from_confluent_s_serializer_and_the_registry() {
    let url = registry_url();
    let topic = common::topic("json-schema", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("order.json");
    std::fs::write(
        &schema,
        r#"{"$schema": "http://json-schema.org/draft-07/schema#", "title": "Order", "type": "object",
            "properties": {
              "id": {"type": "integer"},
              "name": {"type": "string"},
              "at": {"type": "string", "format": "date-time"},
              "tags": {"type": "array", "items": {"type": "string"}},
              "ship": {"type": "object", "properties": {"zip": {"type": ["null", "string"]}, "city": {"type": "string"}}, "required": ["city"]},
              "score": {"type": "number"}
            },
            "required": ["id", "name"]}"#,
    )
    .unwrap();
    let good = encode(
        &url,
        &topic,
        &["json", schema.to_str().unwrap()],
        &[
            json!({"id": 1, "name": "ada", "at": "2025-11-26T12:00:00Z", "tags": ["a"], "ship": {"city": "Oslo"}, "score": 2.5}),
            json!({"id": 2, "name": "bo"}),
        ],
    )
    .await;
    let frame = |json: &str| [&good[0][..5], json.as_bytes()].concat();
    let mut unknown = good[1].clone();
    unknown[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut values = good.clone();
    values.extend([
        frame(r#"{"name": "no id"}"#),
        frame(r#"{"id": "x", "name": "wrong type"}"#),
        unknown,
        br#"{"id": 3, "name": "not framed"}"#.to_vec(),
    ]);
    common::send_values(&topic, &values).await;
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode = DecodeConfig {
        format: DecodeFormat::Json,
        json: Some(JsonSchemaConfig {
            reader_subject: format!("{topic}-value"),
            reader_version: None,
            reader_text: None,
            framing: WireFraming::Confluent,
            registry: registry(url),
        }),
        ..DecodeConfig::default()
    };
    let read = run(&config, dir.path()).await;
    let names: Vec<&str> = read["columns"].as_array().unwrap().iter().filter_map(|c| c.as_str()).collect();
    assert_eq!(&names[..6], ["id", "name", "at", "tags", "ship", "score"], "the schema's order");
    common::assert_types(
        &read,
        &[("id", "long"), ("at", "timestamp"), ("tags", "array"), ("ship", "struct"), ("score", "double")],
    );
    assert_eq!(
        common::row_values(&read, &["id", "name", "at", "tags", "ship", "score"]),
        [
            json!([1, "ada", "2025-11-26T12:00:00+00:00", ["a"], {"zip": null, "city": "Oslo"}, 2.5]),
            json!([2, "bo", null, null, null, null]),
        ]
    );
    let reasons = common::dead_letter_reasons(&dir.path().join("table_dead_letters"));
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    // The audit reads the framed values again: an edited value FAILS it.
    crate::holes::tamper(&dir.path().join("table"), |b| {
        use deltalake::arrow::array::StringArray;
        let name = b.column_by_name("name").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        let edited: StringArray = (0..b.num_rows()).map(|i| Some(if i == 0 { "tampered" } else { name.value(i) })).collect();
        crate::holes::replace_column(b, "name", std::sync::Arc::new(edited))
    })
    .await;
    assert_eq!(exactly::verify::verify(&config).await.unwrap().total(|p| p.mismatched), 1);
    for (reason, want) in reasons.iter().zip([
        "missing field `id`",
        "field `id`: expected long, got string",
        "unknown writer schema id 4294967295",
        "not in the Confluent wire format",
    ]) {
        assert!(reason.contains(want), "{reason} (want {want})");
    }
}

/// With `sink.schema_evolution = "add-columns"`, a later JSON Schema's new properties join the
/// table while the pipeline runs, as for Avro and Protobuf; each row holds what its own writer
/// schema declares (a property a version-1 record carries that version 1 does not declare stays
/// null).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_writer_properties_join_the_table() {
    let url = registry_url();
    let topic = common::topic("json-schema-grow", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = |extra: &str| {
        format!(
            r#"{{"type": "object", "title": "Person", "properties": {{"id": {{"type": "integer"}}, "name": {{"type": "string"}}{extra}}}, "required": ["id"]}}"#
        )
    };
    let (v1, v2) = (dir.path().join("v1.json"), dir.path().join("v2.json"));
    std::fs::write(&v1, schema("")).unwrap();
    std::fs::write(&v2, schema(r#", "email": {"type": "string"}, "score": {"type": "integer"}"#)).unwrap();
    let first = encode(&url, &topic, &["json", v1.to_str().unwrap()], &[json!({"id": 1, "name": "a"})]).await;
    let second =
        encode(&url, &topic, &["json", v2.to_str().unwrap()], &[json!({"id": 2, "name": "b", "email": "b@x", "score": 7})]).await;
    let sneaky = [&first[0][..5], br#"{"id": 3, "name": "c", "email": "not declared in version 1"}"#].concat();
    common::send_values(&topic, &[first[0].clone(), second[0].clone(), sneaky]).await;
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode = DecodeConfig {
        format: DecodeFormat::Json,
        json: Some(JsonSchemaConfig {
            reader_subject: format!("{topic}-value"),
            reader_version: Some(1),
            reader_text: None,
            framing: WireFraming::Confluent,
            registry: registry(url),
        }),
        ..DecodeConfig::default()
    };
    if let exactly::config::SinkConfig::Delta { schema_evolution, .. } = &mut config.sink {
        *schema_evolution = exactly::config::SchemaEvolution::AddColumns;
    }
    let read = run(&config, dir.path()).await;
    common::assert_types(&read, &[("email", "string"), ("score", "long")]);
    assert_eq!(
        common::row_values(&read, &["id", "name", "email", "score"]),
        [json!([1, "a", null, null]), json!([2, "b", "b@x", 7]), json!([3, "c", null, null])]
    );
}
