//! Every record is committed once, in per-partition offset order, across clean restarts.

use std::sync::Arc;
use std::time::Duration;

use exactly::pipeline::Pipeline;
use exactly::sink::channel::ChannelSink;
use exactly::state::checkpoint::CheckpointStore;

use crate::common::{self, Committed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_committed_once_in_partition_order() {
    let topic = common::topic("consume", 4).await;
    let dir = tempfile::tempdir().unwrap();
    common::produce_events(&topic, 0, 2_000).await;

    let (sink, mut rx) = ChannelSink::new();
    let pipeline = Pipeline::start(common::config(&common::unique("p"), &topic, dir.path()), Arc::new(sink)).await.unwrap();
    let mut got = Committed::default();
    common::wait_until(Duration::from_secs(60), "2000 records committed", || {
        got.drain(&mut rx);
        let n = got.records();
        async move { n >= 2_000 }
    })
    .await;
    let status = pipeline.status().await.unwrap();
    pipeline.shutdown().await.unwrap();
    got.drain(&mut rx);

    got.assert_exactly_once(2_000);
    assert_eq!(got.epochs[0].epoch, 1, "the first epoch is 1");
    assert_eq!(status.restarts, 0);
    // Every partition got some of the keyed events, and the checkpoint holds the final cut.
    let last = got.epochs.last().unwrap();
    assert_eq!(last.ranges.len(), 4);
    let cp = CheckpointStore::open(dir.path().join("checkpoint")).unwrap().load().unwrap().unwrap();
    assert_eq!(cp.epoch, last.epoch);
    let total: i64 = cp.offsets.iter().map(|p| p.next_offset).sum();
    assert_eq!(total, 2_000, "the checkpoint's cut covers all 2000 offsets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_after_the_last_committed_epoch() {
    let topic = common::topic("resume", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let id = common::unique("p");
    let mut got = Committed::default();
    let mut produced = 0u64;
    for round in 0..3u64 {
        common::produce_events(&topic, produced, 500).await;
        produced += 500;
        let (sink, mut rx) = ChannelSink::new();
        let pipeline = Pipeline::start(common::config(&id, &topic, dir.path()), Arc::new(sink)).await.unwrap();
        let want = produced as usize;
        common::wait_until(Duration::from_secs(60), "this round's records committed", || {
            got.drain(&mut rx);
            let n = got.records();
            async move { n >= want }
        })
        .await;
        pipeline.shutdown().await.unwrap();
        got.drain(&mut rx);
        assert_eq!(got.records() as u64, produced, "round {round}: nothing re-delivered after a restart");
    }
    got.assert_exactly_once(produced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_starts_at_the_end_and_is_pinned_by_the_checkpoint() {
    let topic = common::topic("latest", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let id = common::unique("p");
    common::produce_events(&topic, 0, 100).await; // before the first start: not read
    let mut config = common::config(&id, &topic, dir.path());
    config.source.starting_offsets = exactly::config::StartingOffsets::Latest;

    // First start pins the end of each partition, then stops with nothing to commit.
    let (sink, _rx) = ChannelSink::new();
    Pipeline::start(config.clone(), Arc::new(sink)).await.unwrap().shutdown().await.unwrap();
    // Produced while stopped: must be read on the next start, not skipped by "latest".
    common::produce_events(&topic, 100, 50).await;
    let (sink, mut rx) = ChannelSink::new();
    let pipeline = Pipeline::start(config, Arc::new(sink)).await.unwrap();
    let mut got = Committed::default();
    common::wait_until(Duration::from_secs(60), "50 records committed", || {
        got.drain(&mut rx);
        let n = got.records();
        async move { n >= 50 }
    })
    .await;
    pipeline.shutdown().await.unwrap();
    got.drain(&mut rx);
    assert_eq!(got.records(), 50);
    let mut ids: Vec<u64> = got.epochs.iter().flat_map(|e| common::rows(e.output.rows())).map(|(_, _, id)| id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (100..150).collect::<Vec<_>>());
}

/// `starting_partition_offsets` and `starting_timestamp_ms`: a fresh pipeline starts a named
/// partition at its offset (or at its end, -1), and the others at their first record produced
/// at or after the timestamp; a named offset Kafka does not hold is refused with one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_pipeline_starts_at_named_offsets_and_at_a_time() {
    use exactly::model::TopicPartition;
    let topic = common::topic("start-at", 3).await;
    common::produce_events(&topic, 0, 300).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let at = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(100)).await;
    common::produce_events(&topic, 300, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.source.starting_partition_offsets = [(topic.clone(), [("0".to_string(), 10i64), ("1".to_string(), -1)].into())].into();
    config.source.starting_timestamp_ms = Some(at);

    let kafka = common::kafka();
    let tps: Vec<TopicPartition> = (0..3).map(|p| TopicPartition::new(&topic, p)).collect();
    let ends = exactly::source::resolve_starting_offsets(
        &kafka,
        &tps,
        exactly::config::StartingOffsets::Latest,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let pipeline = common::start(&config, Default::default()).await;
    let table = dir.path().join("table");
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    let t = exactly::sink::delta::load_table(&table).await.unwrap().unwrap();
    let start = |p: i32| {
        let t = t.clone();
        let app = exactly::sink::delta::start_app_id(&config.id, &TopicPartition::new(&topic, p));
        async move { exactly::sink::delta::txn_version(&t, &table_location(&t), &app).await.unwrap() }
    };
    assert_eq!(start(0).await, Some(10));
    assert_eq!(start(1).await, Some(ends[&tps[1]]), "-1: at its end");
    let s2 = start(2).await.unwrap();
    assert!(s2 > 0 && s2 < ends[&tps[2]], "partition 2 starts inside: {s2}");
    let read = common::read_rows_with_python(&table);
    let rows = read["records"].as_array().unwrap();
    let of = |p: i64| rows.iter().filter(move |r| r["_kafka_partition"].as_i64() == Some(p));
    assert_eq!(of(0).count() as i64, ends[&tps[0]] - 10);
    assert_eq!(of(1).count(), 0);
    assert!(of(2).all(|r| r["id"].as_u64().unwrap() >= 300), "only what was produced after the time");
    assert_eq!(of(2).count() as i64, ends[&tps[2]] - s2);
    common::assert_verified(&config).await;

    // An offset Kafka does not hold: one line, nothing written.
    let other = tempfile::tempdir().unwrap();
    let mut bad = common::delta_config(&common::unique("p"), &topic, other.path());
    bad.source.starting_partition_offsets = [(topic.clone(), [("0".to_string(), 1_000_000i64)].into())].into();
    let sink = exactly::pipeline::sink_for(&bad, Default::default()).unwrap();
    let e = exactly::pipeline::Pipeline::start(bad, sink).await.unwrap().wait().await.unwrap_err().to_string();
    assert!(e.contains("starts partition 0 at 1000000") && e.contains("holds offsets"), "{e}");
}

fn table_location(t: &deltalake::DeltaTable) -> exactly::model::TableLocation {
    exactly::model::TableLocation::parse(t.table_url().as_str()).unwrap()
}
