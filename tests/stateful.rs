//! Stateful processing on RocksDB: dedup across partitions and epochs, bounded retention,
//! keyed counts equal to a recomputation from the topic in both output modes through restarts,
//! fail points and SIGKILL, and a reader of the complete table never seeing a partial result.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deltalake::arrow::array::{Array, Int64Array};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use exactly::config::{AggregateConfig, AggregateOp, AggregateSpec, DedupConfig, OutputMode};
use exactly::pipeline::RunOptions;
use exactly::source::producer::{produce, ProduceOptions};
use exactly::state::checkpoint::CheckpointStore;
use exactly::testing::failpoint::{FailAction, FailPoints};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common;

fn dedup(max_age_epochs: Option<u64>, watermark: Option<u64>) -> DedupConfig {
    match (max_age_epochs, watermark) {
        (Some(age), _) => DedupConfig::by_epochs(&["id"], age),
        (None, lateness) => DedupConfig::by_watermark(&["id"], "ts", lateness.unwrap_or(0)),
    }
}

fn counts(mode: OutputMode) -> AggregateConfig {
    AggregateConfig {
        group_by: vec!["value".into()],
        aggregates: vec![
            AggregateSpec { op: AggregateOp::Count, field: None, name: None },
            AggregateSpec { op: AggregateOp::Sum, field: Some("id".into()), name: None },
            AggregateSpec { op: AggregateOp::Min, field: Some("id".into()), name: None },
            AggregateSpec { op: AggregateOp::Max, field: Some("ts".into()), name: Some("last_ts".into()) },
        ],
        output_mode: mode,
        buckets: 4,
    }
}

/// Sends `(kafka key, json)` records and waits for each delivery.
async fn send_json(topic: &str, records: &[(String, String)]) {
    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    for (k, v) in records {
        producer.send(FutureRecord::to(topic).key(k).payload(v), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
}

fn event(id: u64, ts: i64) -> String {
    exactly::source::producer::event_json(id, 10, ts)
}

async fn drained(config: &exactly::PipelineConfig, topic: &str) {
    common::wait_table_drained(
        &config.checkpoint_dir().parent().unwrap().join("table"),
        &config.id,
        topic,
        Duration::from_secs(90),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_partitions_and_epochs_are_removed() {
    duplicates_removed(false).await;
}

/// The same with every epoch's keys ingested as table files, and the checkpoint write after an
/// ingestion failing once: the keys are in RocksDB, the checkpoint is not; the replay must
/// neither take them for duplicates nor count them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_removed_through_bulk_ingestion_and_a_failure_after_it() {
    duplicates_removed(true).await;
}

async fn duplicates_removed(bulk_and_failure: bool) {
    let topic = common::topic("dedup", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.dedup = Some(dedup(Some(1_000), None));
    let failpoints = Arc::new(FailPoints::new());
    if bulk_and_failure {
        config.state.bulk_insert_min_keys = 1;
    }
    // Epoch(s) 1..: ids 0..1000, keyed by id.
    send_json(&topic, &(0..1_000).map(|i| (i.to_string(), event(i, 0))).collect::<Vec<_>>()).await;
    let pipeline = common::start(&config, RunOptions { failpoints: failpoints.clone(), ..Default::default() }).await;
    drained(&config, &topic).await;
    if bulk_and_failure {
        failpoints.arm("mid-checkpoint-write", FailAction::Error, Some(1));
    }
    // Later epochs: every third old id again under another Kafka key (so another partition),
    // new ids 1000..1500, each of them twice in this phase (same epoch or the next).
    // New ids first: the epoch whose checkpoint write fails has new keys.
    let mut later = Vec::new();
    for i in 1_000..1_500 {
        later.push((i.to_string(), event(i, 0)));
        later.push((format!("again-{i}"), event(i, 0)));
    }
    for i in (0..1_000).step_by(3) {
        later.push((format!("dup-{i}"), event(i, 0)));
    }
    send_json(&topic, &later).await;
    drained(&config, &topic).await;
    pipeline.shutdown().await.unwrap();

    let audit = common::assert_verified(&config).await;
    let keys = audit.keys.as_ref().unwrap();
    assert_eq!((keys.expected, keys.found, keys.duplicated, keys.missing), (1_500, 1_500, 0, 0));
    assert_eq!(audit.total(|p| p.rows), 1_500);
    assert_eq!(audit.total(|p| p.expected), 1_000 + later.len() as u64);
    let store = CheckpointStore::open(config.checkpoint_dir()).unwrap();
    assert_eq!(store.dedup_key_count().unwrap(), 1_500);
    if bulk_and_failure {
        assert!(!failpoints.is_armed("mid-checkpoint-write"), "the checkpoint write failed once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_retention_keeps_only_live_ids() {
    let topic = common::topic("retention", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.dedup = Some(dedup(Some(2), None));
    // Every epoch's keys go through bulk ingestion here (the other dedup tests use the batch).
    config.state.bulk_insert_min_keys = 1;
    let pipeline = common::start(&config, RunOptions::default()).await;
    let mut progress = pipeline.progress();
    let mut per_epoch = Vec::new();
    for phase in 0..5u64 {
        send_json(&topic, &(phase * 100..phase * 100 + 100).map(|i| (i.to_string(), event(i, 0))).collect::<Vec<_>>()).await;
        drained(&config, &topic).await;
        while let Ok(p) = progress.try_recv() {
            per_epoch.push(p.output_rows);
        }
    }
    pipeline.shutdown().await.unwrap();
    while let Ok(p) = progress.try_recv() {
        per_epoch.push(p.output_rows);
    }
    // Keys live = those first seen in the last 2 epochs; everything older expired.
    let live: u64 = per_epoch.iter().rev().take(2).sum();
    let store = CheckpointStore::open(config.checkpoint_dir()).unwrap();
    assert!(per_epoch.len() >= 5, "{per_epoch:?}");
    assert_eq!(store.dedup_key_count().unwrap(), live, "epochs {per_epoch:?}");
    assert!(live < 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_retention_expires_old_ids_and_dead_letters_late_records() {
    let topic = common::topic("watermark", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.dedup = Some(dedup(None, Some(1_000)));
    let t0: i64 = 1_000_000_000;
    let pipeline = common::start(&config, RunOptions::default()).await;
    send_json(&topic, &(0..100).map(|i| (i.to_string(), event(i, t0 + i as i64))).collect::<Vec<_>>()).await;
    drained(&config, &topic).await;
    // Far later event times: the watermark passes every earlier id, which expire.
    send_json(&topic, &(100..200).map(|i| (i.to_string(), event(i, t0 + 10_000_000))).collect::<Vec<_>>()).await;
    drained(&config, &topic).await;
    // One record far behind the watermark (dead-lettered), one duplicate of a live id (dropped).
    send_json(&topic, &[("late".to_string(), event(5_000, t0)), ("dup".to_string(), event(150, t0 + 10_000_000))]).await;
    drained(&config, &topic).await;
    pipeline.shutdown().await.unwrap();

    let store = CheckpointStore::open(config.checkpoint_dir()).unwrap();
    assert_eq!(store.dedup_key_count().unwrap(), 100, "only the ids within the watermark are held");
    assert_eq!(store.watermark().unwrap(), Some(t0 + 10_000_000 - 1_000));
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 200);
    assert_eq!(audit.total(|p| p.dead_lettered), 1, "the late record is dead-lettered, not dropped");
}

/// Counts (and sum/min/max) equal a recomputation from the topic after restarts while producing
/// and a failure between the Delta commit and the state checkpoint.
async fn counts_through_restarts_and_a_failure(mode: OutputMode) {
    let topic = common::topic("counts", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.aggregate = Some(counts(mode));
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 1_000);
    opts.malformed_every = Some(200);
    opts.duplicate_every = Some(25);
    for round in 0..3u64 {
        // Each round has new records to commit, however slow the machine.
        opts.first_id = round * 1_000;
        produce(&opts, std::future::pending()).await.unwrap();
        let failpoints = Arc::new(FailPoints::new());
        if round == 1 {
            failpoints.arm("after-delta-commit", FailAction::Error, Some(1));
        }
        // The table's epoch before the start: read after it, a fast first commit of all the
        // round's records could already be in it, and no later epoch would come.
        let before = common::txn_versions(&dir.path().join("table"), &config.id).await.into_iter().max().unwrap_or(0) as u64;
        let pipeline = common::start(&config, RunOptions { failpoints, ..Default::default() }).await;
        common::wait_until(Duration::from_secs(60), "a new epoch", || async {
            pipeline.status().await.unwrap().committed_epoch > before
        })
        .await;
        if round == 1 {
            // The fail point fired after the Delta commit, before the state checkpoint; the tree
            // restarted and replayed that epoch.
            common::wait_until(Duration::from_secs(60), "the restart", || async {
                pipeline.status().await.unwrap().restarts >= 1
            })
            .await;
        }
        pipeline.shutdown().await.unwrap();
    }
    opts.first_id = 3_000;
    produce(&opts, std::future::pending()).await.unwrap();
    let pipeline = common::start(&config, RunOptions::default()).await;
    drained(&config, &topic).await;
    pipeline.shutdown().await.unwrap();
    let audit = common::assert_verified(&config).await;
    let keys = audit.keys.as_ref().unwrap();
    assert_eq!((keys.expected, keys.found, keys.mismatched), (10, 10, 0));
    common::assert_each_epoch_committed_once(&dir.path().join("table"), &config.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_mode_counts_survive_restarts_and_a_kill_between_commit_and_checkpoint() {
    counts_through_restarts_and_a_failure(OutputMode::Complete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_mode_counts_survive_restarts_and_a_kill_between_commit_and_checkpoint() {
    counts_through_restarts_and_a_failure(OutputMode::Update).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_sigkill_at_random_moments() {
    let mut rng = common::seeded_rng("counts sigkill");
    let topic = common::topic("counts-kill", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.aggregate = Some(counts(OutputMode::Update));
    config.dedup = Some(dedup(Some(10_000), None));
    let file = common::write_config(&config, dir.path());
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 6_000);
    opts.rate = Some(2_000);
    opts.duplicate_every = Some(20);
    let producer = tokio::spawn(async move { produce(&opts, std::future::pending()).await.unwrap() });
    common::sigkill_loop(&file, 5, &mut rng).await;
    producer.await.unwrap();
    let child = common::spawn(&file, None);
    drained(&config, &topic).await;
    common::terminate(child).await;
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.keys.as_ref().unwrap().mismatched, 0);
    common::assert_each_epoch_committed_once(&dir.path().join("table"), &config.id).await;
}

/// Sum of the `count` column of the table's latest snapshot, and its version.
async fn snapshot_total(table: &std::path::Path) -> Option<(i64, i64)> {
    let t = exactly::sink::delta::load_table(table).await.ok()??;
    let version = t.version()?;
    let files: Vec<String> = t.get_file_uris().ok()?.collect();
    let total = tokio::task::spawn_blocking(move || {
        let mut total = 0i64;
        for f in files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap().build().unwrap();
            for b in reader {
                let b = b.unwrap();
                let c = b.column_by_name("count").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
                total += (0..c.len()).map(|i| c.value(i)).sum::<i64>();
            }
        }
        total
    })
    .await
    .ok()?;
    Some((version as i64, total))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_the_complete_table_never_sees_a_partial_result() {
    let topic = common::topic("reader", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.aggregate = Some(counts(OutputMode::Complete));
    config.epoch.interval_ms = 100;
    config.epoch.max_records = 400; // at least 10 epochs, however fast the records come
    let table = dir.path().join("table");
    let pipeline = common::start(&config, RunOptions::default()).await;
    let mut progress = pipeline.progress();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (seen, stop, table) = (seen.clone(), stop.clone(), table.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(s) = snapshot_total(&table).await {
                    seen.lock().unwrap().push(s);
                }
            }
        })
    };
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 4_000);
    opts.rate = Some(2_000);
    produce(&opts, std::future::pending()).await.unwrap();
    drained(&config, &topic).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.await.unwrap();
    pipeline.shutdown().await.unwrap();

    // Every committed epoch's total: the running sum of its rows.
    let mut totals = BTreeSet::from([0i64]);
    let mut sum = 0i64;
    while let Ok(p) = progress.try_recv() {
        sum += (p.input_rows - p.dead_letters) as i64;
        totals.insert(sum);
    }
    assert_eq!(sum, 4_000);
    let seen = seen.lock().unwrap();
    let versions: BTreeSet<i64> = seen.iter().map(|(v, _)| *v).collect();
    assert!(versions.len() >= 2, "the reader saw several versions: {versions:?}");
    for (version, total) in seen.iter() {
        assert!(totals.contains(total), "version {version}: total {total} is not what any committed epoch produced ({totals:?})");
    }
}
