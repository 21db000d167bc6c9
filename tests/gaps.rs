//! Real Kafka has offset gaps: transaction markers, and records of aborted transactions that a
//! read_committed consumer never sees. Nothing may count them as missing.

use std::time::Duration;

use exactly::pipeline::Pipeline;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_markers_and_aborted_records_are_gaps_not_losses() {
    let brokers = common::brokers();
    let topic = common::topic("gaps", 2).await;
    let txn_id = common::unique("txn");
    let (b, t) = (brokers.clone(), topic.clone());
    // 3 transactions: commit 100 events, abort 50, commit 100. Offsets then hold commit markers
    // and 50 aborted records between the committed ones.
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> =
            exactly::kafka::Connection::plaintext(b.as_str()).client_config().set("transactional.id", &txn_id).create().unwrap();
        producer.init_transactions(Duration::from_secs(30)).unwrap();
        let mut id = 0u64;
        for (n, commit) in [(100, true), (50, false), (100, true)] {
            producer.begin_transaction().unwrap();
            for _ in 0..n {
                let json = exactly::producer::event_json(if commit { id } else { 1_000_000 + id }, 10, 0);
                let key = id.to_string();
                producer.send(BaseRecord::to(&t).key(&key).payload(&json)).unwrap();
                id += 1;
            }
            if commit {
                producer.commit_transaction(Duration::from_secs(30)).unwrap();
            } else {
                producer.abort_transaction(Duration::from_secs(30)).unwrap();
                id -= n;
            }
        }
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let delta = exactly::sink::from_config(&config, Default::default());
    let pipeline = Pipeline::start(config.clone(), delta).await.unwrap();
    common::wait_until(Duration::from_secs(60), "200 committed rows", || async {
        exactly::verify::verify(&config).await.map(|a| a.total(|p| p.rows) == 200).unwrap_or(false)
    })
    .await;
    pipeline.shutdown().await.unwrap();

    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 200, "Kafka holds 200 committed records");
    assert_eq!(audit.total(|p| p.rows), 200);
    let high = common::high_watermarks(&topic).await;
    assert!(high > 200, "the topic has gaps: high watermarks {high} > 200 records");
}
