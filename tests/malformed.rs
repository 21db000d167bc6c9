//! Bad input never crashes the pipeline and is never dropped: every kind of malformed record
//! lands in the dead-letter table with its raw bytes, coordinates and reason.

use std::time::Duration;

use deltalake::arrow::array::{Array, BinaryArray, Int64Array, StringArray};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use exactly::pipeline::Pipeline;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common;

/// `(offset, value bytes, reason)` of every dead letter in the table.
async fn dead_letters(path: &std::path::Path) -> Vec<(i64, Vec<u8>, String)> {
    let table = exactly::sink::delta::load_table(path).await.unwrap().expect("dead-letter table");
    let files: Vec<String> = table.get_file_uris().unwrap().collect();
    let mut out = Vec::new();
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap().build().unwrap();
        for b in reader {
            let b = b.unwrap();
            let off = b.column_by_name("_kafka_offset").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
            let val = b.column_by_name("value").unwrap().as_any().downcast_ref::<BinaryArray>().unwrap().clone();
            let why = b.column_by_name("reason").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
            for i in 0..b.num_rows() {
                out.push((off.value(i), if val.is_null(i) { vec![] } else { val.value(i).to_vec() }, why.value(i).to_string()));
            }
        }
    }
    out.sort_by_key(|d| d.0);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_record_is_dead_lettered_and_the_pipeline_keeps_running() {
    let brokers = common::brokers();
    let topic = common::unique("malformed");
    exactly::source::create_topic_with_config(&brokers.as_str().into(), &topic, 1, 1, &[("max.message.bytes", "4194304")])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let sink = exactly::pipeline::sink_for(&config, Default::default()).unwrap();
    let pipeline = Pipeline::start(config.clone(), sink).await.unwrap();

    let producer: FutureProducer = exactly::source::Connection::plaintext(brokers.as_str())
        .client_config()
        .set("message.max.bytes", "4194304")
        .create()
        .unwrap();
    let big = vec![b'x'; 1024 * 1024 + 1];
    let bad: Vec<(&str, &[u8])> = vec![
        ("not json", b"{\"id\": 1, \"value\": "),
        ("wrong type", br#"{"id":"seven","value":"v","ts":1}"#),
        ("missing field", br#"{"value":"v","ts":1}"#),
        ("not utf-8", &[0xc3, 0x28, 0xff]),
        ("1 MiB", &big),
        ("not an object", b"[1,2,3]"),
    ];
    let send = |key: String, value: Vec<u8>| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            producer
                .send(FutureRecord::to(&topic).key(&key).payload(&value), Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    send("0".into(), br#"{"id":0,"value":"ok","ts":1}"#.to_vec()).await;
    for (name, value) in &bad {
        send(name.to_string(), value.to_vec()).await;
    }
    send("1".into(), br#"{"id":1,"value":"ok","ts":1}"#.to_vec()).await;
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, Duration::from_secs(60)).await;
    // Still running: records after the bad ones keep flowing.
    send("2".into(), br#"{"id":2,"value":"ok","ts":1}"#.to_vec()).await;
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, Duration::from_secs(60)).await;
    let status = pipeline.status().await.unwrap();
    pipeline.shutdown().await.unwrap();
    assert_eq!(status.restarts, 0, "bad records never fail an actor");

    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 3);
    assert_eq!(audit.total(|p| p.dead_lettered), bad.len() as u64);
    let dead = dead_letters(&dir.path().join("table_dead_letters")).await;
    assert_eq!(dead.iter().map(|d| d.0).collect::<Vec<_>>(), (1..=6).collect::<Vec<i64>>());
    let expect = [
        "not valid JSON",
        "field `id`: expected long, got string",
        "missing field `id`",
        "not valid UTF-8",
        "exceeds decode.max_record_bytes",
        "expected a JSON object, got array",
    ];
    for ((offset, value, reason), (want, (_, sent))) in dead.iter().zip(expect.iter().zip(&bad)) {
        assert!(reason.contains(want), "offset {offset}: reason {reason:?} should mention {want:?}");
        assert_eq!(value.as_slice(), *sent, "offset {offset}: the raw bytes are kept");
    }
}
