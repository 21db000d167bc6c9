//! Column types beyond the flat basics: timestamps from RFC 3339 / ISO 8601 strings, dates and
//! base64 binary,
//! decoded, committed, read back by an independent reader with the Delta types Spark would
//! write, and audited against Kafka.

use std::time::Duration;

use deltalake::arrow::array::{Array, BinaryArray, Date32Array, Int64Array, TimestampMicrosecondArray};
use exactly::config::{DecodeConfig, DecodeFormat, FieldConfig, FieldType};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iso_timestamps_dates_and_base64_binary_round_trip_with_their_delta_types() {
    let topic = common::topic("types", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let field = |name: &str, kind: FieldType| FieldConfig { name: name.into(), kind, nullable: true };
    config.decode = DecodeConfig {
        format: DecodeFormat::Json,
        fields: vec![
            field("id", FieldType::Long),
            field("at", FieldType::Timestamp),
            field("day", FieldType::Date),
            field("blob", FieldType::Binary),
        ],
        ..DecodeConfig::default()
    };
    let table = dir.path().join("table");
    let pipeline = common::start(&config, Default::default()).await;

    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    let values = [
        r#"{"id":0,"at":"2025-11-26T12:00:00.123456Z","day":"2025-11-26","blob":"AP8="}"#,
        r#"{"id":1,"at":"2025-11-26T14:00:00.5+02:00","day":"1970-01-01","blob":"aGVsbG8"}"#,
        r#"{"id":2,"at":1764158400123,"day":null}"#,
        r#"{"id":3,"at":"2025-11-26 12:00:00Z","day":"2000-02-29"}"#,
        r#"{"id":4,"at":"2025-11-26T12:00:00","day":"2025-11-26"}"#,
        r#"{"id":5,"at":"2025-11-26T12:00:00Z","day":"2025-02-29"}"#,
    ];
    for v in values {
        producer.send(FutureRecord::<(), _>::to(&topic).payload(v), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    // Microseconds since the epoch in UTC; days since 1970-01-01.
    let batches = common::read_rows(&table).await;
    let mut rows = Vec::new();
    for b in &batches {
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        let (id, at, day, blob) = (col("id"), col("at"), col("day"), col("blob"));
        let id = id.as_any().downcast_ref::<Int64Array>().unwrap();
        let at = at.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        let day = day.as_any().downcast_ref::<Date32Array>().unwrap();
        let blob = blob.as_any().downcast_ref::<BinaryArray>().unwrap();
        for i in 0..b.num_rows() {
            rows.push((
                id.value(i),
                at.value(i),
                day.is_valid(i).then(|| day.value(i)),
                blob.is_valid(i).then(|| blob.value(i).to_vec()),
            ));
        }
    }
    rows.sort();
    assert_eq!(
        rows,
        [
            (0, 1_764_158_400_123_456, Some(20_418), Some(vec![0, 255])),
            (1, 1_764_158_400_500_000, Some(0), Some(b"hello".to_vec())),
            (2, 1_764_158_400_123_000, None, None),
            (3, 1_764_158_400_000_000, Some(11_016), None),
        ]
    );
    let read = common::read_with_python(&table);
    assert_eq!(read["rows"].as_u64().unwrap(), 4);
    let types = &read["types"];
    assert!(types["at"].as_str().unwrap().contains("timestamp"), "{types}");
    assert!(types["day"].as_str().unwrap().contains("date"), "{types}");
    assert!(types["blob"].as_str().unwrap().contains("binary"), "{types}");
    // A timestamp without a zone and an impossible date are dead letters, with their reason.
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.dead_lettered), 2);
}

/// The nested-JSON schema of the round trip: a struct with a list and a struct inside, a map,
/// an exact decimal and a list of structs.
const NESTED_FIELDS: &str = r#"
format = "json"
fields = [
  { name = "id", type = "long", nullable = false },
  { name = "user", type = "struct", fields = [
      { name = "name", type = "string", nullable = false },
      { name = "tags", type = "array<string>" },
      { name = "address", type = "struct<city: string, zip: int>" },
  ] },
  { name = "scores", type = "map<string, double>" },
  { name = "price", type = "decimal(12, 2)" },
  { name = "items", type = "array<struct<sku: string not null, qty: int>>" },
]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_json_and_exact_decimals_round_trip_with_their_delta_types() {
    let topic = common::topic("nested", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.decode = toml::from_str(NESTED_FIELDS).unwrap();
    let table = dir.path().join("table");
    let pipeline = common::start(&config, Default::default()).await;

    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    let values = [
        // 0: everything, the decimal as a number whose digits a double would lose.
        r#"{"id":0,"user":{"name":"ada","tags":["a","b"],"address":{"city":"Paris","zip":75001},"extra":[1]},
            "scores":{"math":1.5,"art":null},"price":9999999999.99,"items":[{"sku":"x","qty":2},{"sku":"y"}]}"#,
        // 1: the decimal as a string, null list elements, an empty map and list, a null struct.
        r#"{"id":1,"user":{"name":"bob","tags":[null,"c"],"address":null},"scores":{},"price":"-0.5","items":[]}"#,
        // 2: nothing nested at all; an exponent in the decimal.
        r#"{"id":2,"price":1.5e2}"#,
        // 3-6: dead letters — too many fraction digits, too many digits, a missing non-null
        // member, a wrong type deep in a list.
        r#"{"id":3,"price":12.345}"#,
        r#"{"id":4,"price":"12345678901.00"}"#,
        r#"{"id":5,"user":{"tags":["a"]}}"#,
        r#"{"id":6,"items":[{"sku":"x","qty":1},{"sku":"y","qty":"two"}]}"#,
    ];
    for v in values {
        producer.send(FutureRecord::<(), _>::to(&topic).payload(v), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    // The independent reader sees Spark's Delta types and every value, decimals digit for digit.
    let read = common::read_rows_with_python(&table);
    common::assert_types(&read, &[("user", "struct"), ("scores", "map"), ("price", "decimal(12,2)"), ("items", "array")]);
    let rows = common::row_values(&read, &["id", "user", "scores", "price", "items"]);
    let want: Vec<serde_json::Value> = vec![
        serde_json::json!([0, {"name": "ada", "tags": ["a", "b"], "address": {"city": "Paris", "zip": 75001}},
            {"math": 1.5, "art": null}, "9999999999.99", [{"sku": "x", "qty": 2}, {"sku": "y", "qty": null}]]),
        serde_json::json!([1, {"name": "bob", "tags": [null, "c"], "address": null}, {}, "-0.50", []]),
        serde_json::json!([2, null, null, "150.00", null]),
    ];
    assert_eq!(rows, want);

    // The dead letters say where and why; the audit re-decodes Kafka and finds every row intact.
    let reasons = common::dead_letter_reasons(&dir.path().join("table_dead_letters"));
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].contains("`price`") && reasons[0].contains("more fraction digits"), "{reasons:?}");
    assert!(reasons[1].contains("`price`") && reasons[1].contains("more digits than the precision"), "{reasons:?}");
    assert!(reasons[2].contains("missing field `user.name`"), "{reasons:?}");
    assert!(reasons[3].contains("`items[1].qty`: expected int"), "{reasons:?}");
    let audit = common::assert_verified(&config).await;
    assert_eq!((audit.total(|p| p.rows), audit.total(|p| p.dead_lettered)), (3, 4));
}
