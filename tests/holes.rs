//! Situations a production pipeline meets within weeks, each of which once lost a record, wedged
//! the pipeline, or left an audit saying OK over a wrong table: topics that grow partitions,
//! replays larger than the back-pressure limit, stops while the sink is stuck, an epoch that
//! filled while the previous one closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exactly::pipeline::{Pipeline, RunOptions};
use exactly::testing::failpoint::{FailAction, FailPoints};

use crate::common::{self, spawn, write_config};

/// Grows `topic` to `total` partitions.
async fn add_partitions(topic: &str, total: usize) {
    exactly::source::add_partitions(&common::kafka(), topic, total).await.unwrap();
}

/// Partitions added to a topic while the pipeline runs are read from their earliest offset, go
/// through the epoch protocol like the others, and the audit covers them — without a restart of
/// the process and without spending the restart budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_while_running_are_read_and_audited() {
    let topic = common::topic("grow", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.source.partition_discovery_ms = 300;
    let table = dir.path().join("table");
    common::produce_events(&topic, 0, 3_000).await;
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;

    add_partitions(&topic, 4).await;
    common::produce_events(&topic, 3_000, 10_000).await;
    // `wait_table_drained` sums every partition the topic has now, the new ones included.
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(90)).await;
    let status = pipeline.status().await.unwrap();
    assert_eq!(status.consumers.len(), 4, "a consumer actor for each partition, the new ones included");
    assert_eq!(status.restarts, 0, "picking up partitions spends no restart budget");
    pipeline.shutdown().await.unwrap();

    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.partitions.len(), 4, "the audit covers the new partitions");
    assert_eq!(audit.total(|p| p.expected), 13_000);
    assert_eq!(audit.total(|p| p.rows), 13_000);
    for p in &audit.partitions {
        assert!(p.rows > 0, "{:?} has rows", p.tp);
    }
    common::assert_each_epoch_committed_once(&table, &config.id).await;
}

/// `source.topic_pattern` reads every topic whose whole name it matches, and a matching topic
/// created while the pipeline runs is read from its earliest offset, audited like the others;
/// a topic the pattern matches only in part is not read; a matching topic deleted while it runs
/// is dropped from the actor tree (no restart budget spent) and the others are read on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_pattern_reads_the_matching_topics_those_created_and_not_those_deleted_while_running() {
    let prefix = common::unique("pattern");
    let create = |name: String, partitions: i32| async move {
        assert!(exactly::source::create_topic(&common::kafka(), &name, partitions, 1).await.unwrap());
        name
    };
    let (a, b) = (create(format!("{prefix}-a"), 2).await, create(format!("{prefix}-b"), 1).await);
    // `[a-z]+` matches "skip" but not "skip-1": the pattern must match the whole name.
    let skipped = create(format!("{prefix}-skip-1"), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &a, dir.path());
    config.source.topics = Vec::new();
    let pattern = format!("{}-[a-z]+", regex::escape(&prefix));
    config.source.topic_pattern = Some(exactly::config::TopicPattern::new(&pattern).unwrap());
    config.source.partition_discovery_ms = 300;
    let table = dir.path().join("table");
    common::produce_events(&a, 0, 2_000).await;
    common::produce_events(&b, 2_000, 1_000).await;
    common::produce_events(&skipped, 9_000, 500).await;
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_table_drained(&table, &config.id, &a, Duration::from_secs(60)).await;
    common::wait_table_drained(&table, &config.id, &b, Duration::from_secs(60)).await;

    let later = create(format!("{prefix}-later"), 2).await;
    common::produce_events(&later, 3_000, 4_000).await;
    common::wait_table_drained(&table, &config.id, &later, Duration::from_secs(90)).await;
    let status = pipeline.status().await.unwrap();
    assert_eq!(status.consumers.len(), 5, "a consumer for each matching topic's partitions, the new topic's included");
    assert_eq!(status.restarts, 0, "picking up a topic spends no restart budget");
    let audit = common::assert_verified(&config).await;
    let topics: std::collections::BTreeSet<String> =
        audit.partitions.iter().filter_map(|p| p.tp.as_ref().map(|tp| tp.topic.to_string())).collect();
    assert_eq!(topics, [a.clone(), b.clone(), later.clone()].into_iter().collect(), "the matching topics, not {skipped}");
    assert_eq!(audit.total(|p| p.expected), 7_000);
    assert_eq!(audit.total(|p| p.rows), 7_000);

    // A matching topic deleted: the pipeline reads on without it.
    common::delete_topic(&b).await;
    common::wait_until(Duration::from_secs(60), "the deleted topic's consumer gone", || async {
        pipeline.status().await.unwrap().consumers.len() == 4
    })
    .await;
    common::produce_events(&a, 7_000, 1_000).await;
    common::wait_table_drained(&table, &config.id, &a, Duration::from_secs(60)).await;
    assert_eq!(pipeline.status().await.unwrap().restarts, 0, "a deleted topic spends no restart budget");
    pipeline.shutdown().await.unwrap();
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 7_000, "a's 3,000 and the later topic's 4,000: b is gone from Kafka");
    let gone: Vec<_> = audit.partitions.iter().filter(|p| p.tp.as_ref().is_some_and(|tp| *tp.topic == *b)).collect();
    assert_eq!((gone.len(), gone[0].rows, gone[0].unverifiable), (1, 1_000, 1_000), "b's rows, within its recorded range");
    assert_eq!(audit.total(|p| p.rows), 8_000);
    common::assert_each_epoch_committed_once(&table, &config.id).await;
}

/// A crash between the Delta commit and the checkpoint leaves an epoch to replay; partitions
/// added meanwhile have no recorded end in the table. The replay must treat their part as empty
/// instead of failing on the cut comparison (and restarting forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_added_while_a_replay_is_pending_does_not_loop() {
    let topic = common::topic("growreplay", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.supervisor.max_restarts = 2;
    let file = write_config(&config, dir.path());
    let table = dir.path().join("table");
    common::produce_events(&topic, 0, 1_000).await;

    // Epoch 1 is committed to the table, then the process dies before its checkpoint.
    let mut child = spawn(&file, Some("after-delta-commit=abort"));
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(!status.success(), "the process must have aborted");
    assert_eq!(common::txn_versions(&table, &config.id).await, vec![1]);

    add_partitions(&topic, 3).await;
    common::produce_events(&topic, 1_000, 2_000).await;
    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(90)).await;
    common::terminate(child).await;
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 3_000);
    assert_eq!(audit.partitions.len(), 3);
    common::assert_each_epoch_committed_once(&table, &config.id).await;
}

/// A replayed epoch holding more records than `source.max_buffered_records` must still close:
/// the replaying partitions keep reading to their recorded end whatever the buffer holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_larger_than_the_buffer_limit_is_not_blocked() {
    let topic = common::topic("replaybp", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    // Small batches, a small limit: the first epoch already holds more than the limit (the
    // limit is checked before each batch), so its replay does too.
    config.source.max_batch_records = 100;
    config.source.max_buffered_records = 250;
    config.epoch.interval_ms = 1_000;
    let table = dir.path().join("table");
    common::produce_events(&topic, 0, 4_000).await;

    // The first commit fails once after the data table holds it: the next generation replays it.
    let failpoints = Arc::new(FailPoints::new());
    failpoints.arm("after-delta-commit", FailAction::Error, Some(1));
    let pipeline = common::start(&config, RunOptions { failpoints, ..Default::default() }).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(90)).await;
    let status = pipeline.status().await.unwrap();
    assert_eq!(status.restarts, 1, "one restart, for the fail point");
    pipeline.shutdown().await.unwrap();

    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 4_000);
    common::assert_each_epoch_committed_once(&table, &config.id).await;
}

/// Records forwarded to the aggregator and not yet in a closed epoch.
async fn buffered(p: &Pipeline) -> u64 {
    let Some(agg) = p.status().await.unwrap().aggregator else { return 0 };
    ractor::call_t!(agg, exactly::runtime::messages::AggregatorMsg::Buffered, 5_000).unwrap_or(0)
}

/// A stop while the sink is stuck ends within `supervisor.shutdown_timeout_ms` (plus the
/// teardown), reports failure, and leaves the checkpoint where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_a_stuck_sink_ends_within_the_timeout_and_fails() {
    let topic = common::topic("stuck", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 600_000; // only the stop cuts an epoch
    config.supervisor.shutdown_timeout_ms = 1_000;
    common::produce_events(&topic, 0, 200).await;
    let failpoints = Arc::new(FailPoints::new());
    failpoints.arm("after-parquet-write", FailAction::Sleep(Duration::from_secs(600)), None);
    let pipeline = common::start(&config, RunOptions { failpoints, ..Default::default() }).await;
    common::wait_until(Duration::from_secs(30), "200 records read", || async { buffered(&pipeline).await == 200 }).await;

    let t0 = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), pipeline.shutdown()).await.expect("the stop must not hang");
    let err = result.expect_err("a stop that could not commit the open epoch is a failure");
    assert!(matches!(err, exactly::Error::Shutdown(_)), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    let cp = exactly::state::checkpoint::CheckpointStore::open(config.checkpoint_dir()).unwrap().load().unwrap().unwrap();
    assert_eq!(cp.epoch, 0, "the checkpoint is intact");
    assert!(common::txn_versions(dir.path().join("table"), &config.id).await.is_empty(), "nothing was committed");
}

/// An actor failing every time the stop commits the open epoch: the tree is restarted to try
/// again until the restart budget is spent, and the stop fails (non-zero exit in the CLI), never a
/// silent success. (A failure that passes is retried: `delta::a_failure_while_the_stop_commits_*`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_during_the_stop_is_reported() {
    let topic = common::topic("stopfail", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 600_000;
    common::produce_events(&topic, 0, 100).await;
    let failpoints = Arc::new(FailPoints::new());
    failpoints.arm("after-parquet-write", FailAction::Error, None);
    let pipeline = common::start(&config, RunOptions { failpoints, ..Default::default() }).await;
    common::wait_until(Duration::from_secs(30), "100 records read", || async { buffered(&pipeline).await == 100 }).await;
    let err = pipeline.shutdown().await.expect_err("the open epoch failed to commit during the stop");
    assert!(matches!(err, exactly::Error::Shutdown(_)), "{err}");
    let cp = exactly::state::checkpoint::CheckpointStore::open(config.checkpoint_dir()).unwrap().load().unwrap().unwrap();
    assert_eq!(cp.epoch, 0);
}

/// SIGTERM to the process while the sink is stuck: the process exits, non-zero, within the
/// configured timeout (plus teardown), and the checkpoint is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stuck_sink_exits_non_zero_in_bounded_time() {
    let topic = common::topic("stucksig", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.supervisor.shutdown_timeout_ms = 1_000;
    let file = write_config(&config, dir.path());
    let table = dir.path().join("table");
    common::produce_events(&topic, 0, 100).await;
    let child = spawn(&file, Some("after-parquet-write=sleep(600000)"));
    // The first epoch's Parquet file is written, its commit is stuck.
    common::wait_until(Duration::from_secs(60), "a parquet file in the table", || async {
        std::fs::read_dir(&table)
            .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "parquet")))
            .unwrap_or(false)
    })
    .await;
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let (status, stderr) = common::wait_exit(child, Duration::from_secs(40), "exits after SIGTERM despite the stuck sink").await;
    assert!(!status.success(), "a stop that could not commit must exit non-zero; stderr: {stderr}");
    let cp = exactly::state::checkpoint::CheckpointStore::open(config.checkpoint_dir()).unwrap().load().unwrap().unwrap();
    assert_eq!(cp.epoch, 0, "the checkpoint is intact");
}

/// `--reset-checkpoint-from-table` rebuilds offsets only. For a pipeline whose checkpoint holds
/// keyed state (here: counts), resuming from offsets alone would restart every total from zero
/// and overwrite the table's: the reset is refused with one error, and the table is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_that_cannot_rebuild_keyed_state_is_refused() {
    use exactly::config::{AggregateConfig, OutputMode};
    let topic = common::topic("statereset", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.aggregate = Some(AggregateConfig::count_by(&["value"], OutputMode::Update, 4));
    let table = dir.path().join("table");
    common::produce_events(&topic, 0, 500).await;
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    let versions = common::txn_versions(&table, &config.id).await;

    std::fs::remove_dir_all(config.checkpoint_dir()).unwrap();
    common::produce_events(&topic, 500, 100).await;
    let options = RunOptions { reset_checkpoint_from_table: true, ..Default::default() };
    let pipeline = common::start(&config, options).await;
    let err = tokio::time::timeout(Duration::from_secs(30), pipeline.wait())
        .await
        .expect("the reset must be refused, not run")
        .expect_err("a reset that cannot rebuild the counts is refused");
    let msg = err.to_string();
    assert!(matches!(err, exactly::Error::Recovery(_)) && msg.contains("aggregates") && !msg.contains('\n'), "{msg}");
    assert_eq!(common::txn_versions(&table, &config.id).await, versions, "the table is untouched");
    common::assert_verified(&config).await;
}

/// A topic deleted and created again under the same name has a new topic id and offsets that
/// start over. The pipeline must refuse it with one error naming the topic — at start-up and
/// while running — never resume mid-topic at the old positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_is_refused_not_resumed_mid_topic() {
    let topic = common::topic("recreated", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.source.partition_discovery_ms = 300;
    let table = dir.path().join("table");
    common::produce_events(&topic, 0, 200).await;
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    let before = exactly::state::checkpoint::CheckpointStore::open(config.checkpoint_dir()).unwrap().load().unwrap().unwrap();

    // Recreated with more records than the old positions: reading on at them would "work".
    common::recreate_topic(&topic, 2).await;
    common::produce_events(&topic, 1_000, 600).await;
    let pipeline = common::start(&config, RunOptions::default()).await;
    let err = tokio::time::timeout(Duration::from_secs(30), pipeline.wait())
        .await
        .expect("the pipeline must refuse, not run")
        .expect_err("a recreated topic is refused");
    assert!(matches!(&err, exactly::Error::TopicRecreated { topic: t, .. } if *t == topic), "{err}");
    let after = exactly::state::checkpoint::CheckpointStore::open(config.checkpoint_dir()).unwrap().load().unwrap().unwrap();
    assert_eq!(after, before, "the checkpoint is untouched");

    // While running: a pipeline on a fresh checkpoint reads the topic; the topic is recreated
    // under it; the pipeline stops by itself with the same error.
    let mut fresh = common::delta_config(&common::unique("p"), &topic, &dir.path().join("second"));
    fresh.source.partition_discovery_ms = 300;
    let pipeline = common::start(&fresh, RunOptions::default()).await;
    common::wait_table_drained(&dir.path().join("second/table"), &fresh.id, &topic, Duration::from_secs(60)).await;
    common::recreate_topic(&topic, 2).await;
    common::produce_events(&topic, 5_000, 1_000).await;
    let err = tokio::time::timeout(Duration::from_secs(60), pipeline.wait())
        .await
        .expect("the running pipeline must stop by itself")
        .expect_err("a topic recreated under a running pipeline stops it");
    assert!(matches!(&err, exactly::Error::TopicRecreated { topic: t, .. } if *t == topic), "{err}");
}

/// Dedup by event time: a record stamped far in the future (year 2100) is dead-lettered as
/// `future` instead of advancing the watermark — so later records are not all "too late" — and
/// every dead letter (future and late) keeps the record's key and value bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_and_late_events_are_dead_lettered_with_their_bytes() {
    use deltalake::arrow::array::{Array, BinaryArray, StringArray};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let topic = common::topic("future", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.dedup = Some(exactly::config::DedupConfig::by_watermark(&["id"], "ts", 60_000));
    let pipeline = common::start(&config, RunOptions::default()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let year_2100 = 4_102_444_800_000i64;
    let future = exactly::source::producer::event_json(10_000, 10, year_2100);
    let late = exactly::source::producer::event_json(20_000, 10, now - 3_600_000);
    let mut records: Vec<(String, String)> =
        (0..50).map(|i| (i.to_string(), exactly::source::producer::event_json(i, 10, now))).collect();
    records.push(("future-key".into(), future.clone()));
    records.extend((50..100).map(|i| (i.to_string(), exactly::source::producer::event_json(i, 10, now + 1_000))));
    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    for (k, v) in &records {
        producer.send(FutureRecord::to(&topic).key(k).payload(v), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, Duration::from_secs(60)).await;
    // Once the watermark stands at now + 1 s − 60 s, a record an hour old is too late.
    producer
        .send(FutureRecord::to(&topic).key("late-key").payload(&late), Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 100, "the records after the future one are not late");
    let mut dead = Vec::new();
    for b in common::read_rows(&dir.path().join("table_dead_letters")).await {
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        let (key, value, reason) = (col("key"), col("value"), col("reason"));
        let key = key.as_any().downcast_ref::<BinaryArray>().unwrap();
        let value = value.as_any().downcast_ref::<BinaryArray>().unwrap();
        let reason = reason.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            assert!(!key.is_null(i) && !value.is_null(i), "a dead letter keeps its bytes");
            dead.push((key.value(i).to_vec(), value.value(i).to_vec(), reason.value(i).to_string()));
        }
    }
    dead.sort();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!((dead[0].0.as_slice(), dead[0].1.as_slice()), (b"future-key".as_slice(), future.as_bytes()));
    assert!(dead[0].2.contains("ahead of the record's Kafka timestamp"), "{}", dead[0].2);
    assert_eq!((dead[1].0.as_slice(), dead[1].1.as_slice()), (b"late-key".as_slice(), late.as_bytes()));
    assert!(dead[1].2.contains("older than the watermark"), "{}", dead[1].2);
}

/// Rewrites the first Parquet file of `table` with `edit` applied to its rows (in place, the
/// Delta log untouched: what a buggy writer or a bit flip would leave).
pub(crate) async fn tamper(
    table: &std::path::Path,
    edit: impl Fn(&deltalake::arrow::record_batch::RecordBatch) -> deltalake::arrow::record_batch::RecordBatch,
) {
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use deltalake::parquet::arrow::ArrowWriter;
    let t = exactly::sink::delta::load_table(table).await.unwrap().unwrap();
    let uri = t.get_file_uris().unwrap().next().unwrap();
    let path = uri.strip_prefix("file://").unwrap_or(&uri).to_string();
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap().build().unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let schema = batches[0].schema();
    let all = deltalake::arrow::compute::concat_batches(&schema, &batches).unwrap();
    let edited = edit(&all);
    let mut w = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None).unwrap();
    w.write(&edited).unwrap();
    w.close().unwrap();
}

/// `batch` with column `name` replaced.
pub(crate) fn replace_column(
    batch: &deltalake::arrow::record_batch::RecordBatch,
    name: &str,
    col: deltalake::arrow::array::ArrayRef,
) -> deltalake::arrow::record_batch::RecordBatch {
    let i = batch.schema().index_of(name).unwrap();
    let mut cols = batch.columns().to_vec();
    cols[i] = col;
    deltalake::arrow::record_batch::RecordBatch::try_new(batch.schema(), cols).unwrap()
}

/// The audit reads content, not only offsets: one edited value in a committed Parquet file, a
/// row moved to a partition the table recorded no range for, and a dead letter whose bytes are
/// not the record's each make it FAIL; and a partition of the topic the pipeline never read is
/// reported as unread, with its records missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_reads_content_and_reports_unread_partitions() {
    use deltalake::arrow::array::{Array, BinaryArray, Int32Array, StringArray};
    use exactly::source::producer::ProduceOptions;

    let topic = common::topic("content", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let table = dir.path().join("table");
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 600);
    opts.malformed_every = Some(20);
    exactly::source::producer::produce(&opts, std::future::pending()).await.unwrap();
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    common::assert_verified(&config).await;

    // One value edited, one row moved to partition 7 (which the topic does not have).
    tamper(&table, |b| {
        let value = b.column_by_name("value").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        let edited: StringArray = (0..b.num_rows()).map(|i| Some(if i == 0 { "tampered" } else { value.value(i) })).collect();
        let part = b.column_by_name("_kafka_partition").unwrap().as_any().downcast_ref::<Int32Array>().unwrap();
        let moved: Int32Array = (0..b.num_rows()).map(|i| Some(if i == 1 { 7 } else { part.value(i) })).collect();
        replace_column(&replace_column(b, "value", Arc::new(edited)), "_kafka_partition", Arc::new(moved))
    })
    .await;
    // One dead letter's value bytes replaced.
    tamper(&dir.path().join("table_dead_letters"), |b| {
        let value = b.column_by_name("value").unwrap().as_any().downcast_ref::<BinaryArray>().unwrap();
        let edited: BinaryArray = (0..b.num_rows())
            .map(|i| if i == 0 { Some(b"not what Kafka holds".as_slice()) } else { value.is_valid(i).then(|| value.value(i)) })
            .collect();
        replace_column(b, "value", Arc::new(edited))
    })
    .await;
    let audit = exactly::verify::verify(&config).await.unwrap();
    assert!(!audit.ok());
    assert!(audit.render().contains("result: FAILED"), "{}", audit.render());
    assert_eq!(audit.total(|p| p.mismatched), 2, "the edited row and the edited dead letter:\n{}", audit.render());
    let moved =
        audit.partitions.iter().find(|p| p.tp.as_ref().is_some_and(|tp| tp.partition == 7)).expect("partition 7 reported");
    assert_eq!((moved.rows, moved.unexpected), (1, 1), "{}", audit.render());
    assert_eq!(audit.total(|p| p.missing), 1, "the moved row's offset is missing from its partition");

    // A partition the pipeline never read (added after it stopped) is unread, its records missing.
    let fresh = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, fresh.path());
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_table_drained(&fresh.path().join("table"), &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    add_partitions(&topic, 3).await;
    common::produce_events(&topic, 10_000, 300).await;
    let audit = exactly::verify::verify(&config).await.unwrap();
    let unread =
        audit.partitions.iter().find(|p| p.tp.as_ref().is_some_and(|tp| tp.partition == 2)).expect("partition 2 reported");
    assert!(unread.unread && unread.missing > 0 && unread.missing == unread.expected, "{}", audit.render());
    assert!(!audit.ok(), "{}", audit.render());
}

/// An epoch that fills while the previous one closes is cut at once: with every record already
/// read (nothing more arriving to notice it), it used to wait for `epoch.interval_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_full_before_the_previous_one_closed_is_cut_without_waiting_for_the_interval() {
    let topic = common::topic("full", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    // Far longer than the deadline below: only `max_records` may cut these epochs.
    config.epoch.interval_ms = 300_000;
    config.epoch.max_records = 1_000;
    // Back-pressure holds the consumers at 20,000 uncommitted records, so the first epoch can
    // never take the whole topic: cuts land while records are still arriving.
    config.source.max_buffered_records = 20_000;
    let table = dir.path().join("table");
    common::produce_events(&topic, 0, 100_000).await;
    let pipeline = common::start(&config, RunOptions::default()).await;
    // Once every record is read, only the open epoch's tail (fewer than `max_records`, which
    // only the interval or a shutdown cuts) may be uncommitted; a full epoch left waiting for the
    // interval would hold at least `max_records`.
    let total = common::high_watermarks(&topic).await;
    let tail = config.epoch.max_records as i64;
    common::wait_until(Duration::from_secs(60), "all but a partial epoch committed", || async {
        common::table_cut(&table, &config.id, &topic).await > total - tail
    })
    .await;
    pipeline.shutdown().await.unwrap();
    assert_eq!(common::table_cut(&table, &config.id, &topic).await, total, "the shutdown commits the tail");
    let epochs = common::txn_versions(&table, &config.id).await;
    assert!(epochs.iter().max().is_some_and(|e| *e >= 2), "cut by max_records: {epochs:?}");
    common::assert_verified(&config).await;
}

/// A backlog's last epoch (fewer than `max_records`) is cut once every partition is read to its
/// end, not on the interval's tick: a catch-up ends committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogs_last_partial_epoch_is_cut_once_every_partition_is_read() {
    let topic = common::topic("backlog-tail", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 300_000; // far beyond the deadline below: no tick cuts an epoch
    config.epoch.max_records = 1_000;
    // Back-pressure holds the consumer at 1,000-1,099 uncommitted records: the first two epochs
    // are full ones of at most 1,099, leaving a tail of 302-500 records.
    config.source.max_buffered_records = 1_000;
    config.source.max_batch_records = 100;
    let table = dir.path().join("table");
    common::produce_events(&topic, 0, 2_500).await;
    let total = common::high_watermarks(&topic).await;
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_until(Duration::from_secs(60), "every record committed, the tail too", || async {
        common::table_cut(&table, &config.id, &topic).await == total
    })
    .await;
    let epochs = common::txn_versions(&table, &config.id).await;
    assert_eq!(epochs, vec![1, 2, 3], "two full epochs and the tail");
    pipeline.shutdown().await.unwrap();
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 2_500);
}
