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
