//! Supervision: a killed or panicking actor aborts the open epoch and the tree restarts from the
//! last committed one — no gap, no repeat. A child that keeps failing spends the restart budget.

use std::sync::Arc;
use std::time::Duration;

use exactly::pipeline::Pipeline;
use exactly::sink::channel::ChannelSink;
use exactly::source::producer::{produce, ProduceOptions};
use exactly::testing::fault::Fault;
use exactly::Error;

use crate::common::{self, Committed};

async fn wait_generation(p: &Pipeline, generation: u64) {
    common::wait_until(Duration::from_secs(60), &format!("generation {generation} running"), || async {
        let s = p.status().await.unwrap();
        s.generation >= generation && !s.consumers.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_panicking_actors_restart_without_gap_or_repeat() {
    let topic = common::topic("kill", 4).await;
    let dir = tempfile::tempdir().unwrap();
    const N: u64 = 6_000;
    // Produce while the pipeline runs, so the faults land mid-stream.
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, N);
    opts.rate = Some(2_000);
    let producer = tokio::spawn(async move { produce(&opts, std::future::pending()).await.unwrap() });

    let (sink, mut rx) = ChannelSink::new();
    let pipeline = Pipeline::start(common::config(&common::unique("p"), &topic, dir.path()), Arc::new(sink)).await.unwrap();
    let mut got = Committed::default();
    let wait_more = |got: &mut Committed, rx: &mut _| {
        got.drain(rx);
        got.records()
    };
    common::wait_until(Duration::from_secs(60), "a first commit", || {
        let n = wait_more(&mut got, &mut rx);
        async move { n > 0 }
    })
    .await;

    // 1. ractor kill (no cleanup) of a consumer, mid-stream.
    let s = pipeline.status().await.unwrap();
    s.consumers[1].1.kill();
    wait_generation(&pipeline, 1).await;
    // 2. A panic inside a consumer's handler.
    let s = pipeline.status().await.unwrap();
    s.consumers[2].1.cast(exactly::runtime::messages::ConsumerMsg::InjectFault(Fault::Panic)).unwrap();
    wait_generation(&pipeline, 2).await;
    // 3. An error returned by the aggregator's handler.
    let s = pipeline.status().await.unwrap();
    s.aggregator.unwrap().cast(exactly::runtime::messages::AggregatorMsg::InjectFault(Fault::Error)).unwrap();
    wait_generation(&pipeline, 3).await;

    let report = producer.await.unwrap();
    assert_eq!(report.sent, N);
    common::wait_until(Duration::from_secs(90), "all records committed", || {
        let n = wait_more(&mut got, &mut rx);
        async move { n as u64 >= N }
    })
    .await;
    let status = pipeline.status().await.unwrap();
    pipeline.shutdown().await.unwrap();
    got.drain(&mut rx);
    assert_eq!(status.restarts, 3);
    got.assert_exactly_once(N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_keeps_failing_spends_the_restart_budget() {
    let topic = common::topic("budget", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(&common::unique("p"), &topic, dir.path());
    config.supervisor.max_restarts = 2;
    config.supervisor.window_secs = 300;
    let (sink, _rx) = ChannelSink::new();
    let pipeline = Pipeline::start(config, Arc::new(sink)).await.unwrap();
    for generation in 0..=2u64 {
        wait_generation(&pipeline, generation).await;
        let s = pipeline.status().await.unwrap();
        s.consumers[0].1.cast(exactly::runtime::messages::ConsumerMsg::InjectFault(Fault::Error)).unwrap();
    }
    let err = tokio::time::timeout(Duration::from_secs(60), pipeline.wait()).await.expect("pipeline stops").unwrap_err();
    match &err {
        Error::RestartBudgetSpent { restarts, last_failure, .. } => {
            assert_eq!(*restarts, 2);
            assert!(last_failure.contains("consumer"), "{last_failure}");
        }
        other => panic!("expected RestartBudgetSpent, got {other}"),
    }
    assert!(!err.to_string().contains('\n'));
}
