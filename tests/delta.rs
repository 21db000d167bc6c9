//! The exactly-once Delta Lake sink: real broker, real Delta tables on local disk, the audit,
//! an independent reader, fail points in the commit path, and recovery.

use std::sync::Arc;
use std::time::Duration;

use exactly::pipeline::{Pipeline, RunOptions};
use exactly::source::producer::{produce, ProduceOptions};
use exactly::testing::failpoint::{FailAction, FailPoints};

use crate::common;

async fn run_until_drained(config: &exactly::PipelineConfig, options: RunOptions, topic: &str) {
    let sink = exactly::pipeline::sink_for(config, options.failpoints.clone()).unwrap();
    let pipeline = Pipeline::start_with(config.clone(), sink, options).await.unwrap();
    let table = config.checkpoint_dir().parent().unwrap().join("table");
    common::wait_table_drained(&table, &config.id, topic, Duration::from_secs(90)).await;
    pipeline.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_events_verify_exactly_n_and_an_independent_reader_agrees() {
    let topic = common::topic("delta", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    common::produce_events(&topic, 0, 3_000).await;
    run_until_drained(&config, RunOptions::default(), &topic).await;

    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 3_000);
    assert_eq!(audit.total(|p| p.rows), 3_000);
    assert_eq!(audit.partitions.len(), 4);
    let read = common::read_with_python(&dir.path().join("table"));
    assert_eq!(read["rows"], 3_000);
    assert_eq!(read["distinct_coordinates"], 3_000);
    let cols: Vec<&str> = read["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(cols, ["id", "value", "ts", "_kafka_topic", "_kafka_partition", "_kafka_offset", "_kafka_timestamp", "_epoch"]);
    common::assert_each_epoch_committed_once(&dir.path().join("table"), &config.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_restart_while_producing_stays_exactly_once() {
    let topic = common::topic("restarts", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 6_000);
    opts.rate = Some(3_000);
    opts.malformed_every = Some(97);
    let producer = tokio::spawn(async move { produce(&opts, std::future::pending()).await.unwrap() });
    let table = dir.path().join("table");
    for _ in 0..4 {
        let sink = exactly::pipeline::sink_for(&config, Default::default()).unwrap();
        let pipeline = Pipeline::start(config.clone(), sink).await.unwrap();
        let before = pipeline.status().await.unwrap().committed_epoch;
        // A new epoch, or nothing left to commit (the producer may finish first on a busy machine).
        common::wait_until(Duration::from_secs(60), "a new epoch or a drained topic", || async {
            pipeline.status().await.unwrap().committed_epoch > before
                || common::table_cut(&table, &config.id, &topic).await >= common::high_watermarks(&topic).await
        })
        .await;
        pipeline.shutdown().await.unwrap();
    }
    producer.await.unwrap();
    run_until_drained(&config, RunOptions::default(), &topic).await;
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 6_000);
    assert!(audit.total(|p| p.dead_lettered) > 0);
    common::assert_each_epoch_committed_once(&table, &config.id).await;
    assert_eq!(common::read_with_python(&table)["rows"].as_u64().unwrap(), audit.total(|p| p.rows));
}

/// Arms `failpoint` to fail once, runs to the end, and checks exactly-once and that no epoch
/// was committed twice to either table.
async fn failpoint_case(failpoint: &str, action: FailAction) -> exactly::verify::Audit {
    let topic = common::topic("fail", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 2_000);
    opts.malformed_every = Some(40);
    produce(&opts, std::future::pending()).await.unwrap();

    let failpoints = Arc::new(FailPoints::new());
    failpoints.arm(failpoint, action, Some(1));
    let options = RunOptions { failpoints: failpoints.clone(), ..Default::default() };
    let sink = exactly::pipeline::sink_for(&config, failpoints.clone()).unwrap();
    let pipeline = Pipeline::start_with(config.clone(), sink, options).await.unwrap();
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, Duration::from_secs(90)).await;
    // The fail point fired and the tree restarted (the restart may trail the commit that drained).
    common::wait_until(Duration::from_secs(30), "a restart", || async { pipeline.status().await.unwrap().restarts >= 1 }).await;
    common::wait_until(Duration::from_secs(30), "the restarted tree", || async {
        !pipeline.status().await.unwrap().consumers.is_empty()
    })
    .await;
    pipeline.shutdown().await.unwrap();

    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 2_000);
    assert_eq!(audit.total(|p| p.dead_lettered), 50);
    common::assert_each_epoch_committed_once(&dir.path().join("table"), &config.id).await;
    common::assert_each_epoch_committed_once(&dir.path().join("table_dead_letters"), &config.id).await;
    audit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_after_parquet_write_before_commit() {
    let audit = failpoint_case("after-parquet-write", FailAction::Error).await;
    assert!(!audit.orphan_files.is_empty(), "the failed attempt's files are uncommitted orphans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_after_delta_commit_before_checkpoint() {
    failpoint_case("after-delta-commit", FailAction::Error).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_mid_checkpoint_write() {
    failpoint_case("mid-checkpoint-write", FailAction::Error).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_after_checkpoint_in_the_committer() {
    failpoint_case("after-checkpoint", FailAction::Panic).await;
}

/// A pipeline on a new topic of 500 records whose epochs close only at the stop, started with
/// `failpoints` and holding all 500 in its open epoch, nothing committed.
async fn holding_an_open_epoch(failpoints: Arc<FailPoints>) -> (Pipeline, exactly::PipelineConfig, tempfile::TempDir) {
    let topic = common::topic("shutdown", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 3_600_000; // no epoch closes by time: only the shutdown cuts one
    common::produce_events(&topic, 0, 500).await;
    let sink = exactly::pipeline::sink_for(&config, failpoints.clone()).unwrap();
    let options = RunOptions { failpoints, ..Default::default() };
    let pipeline = Pipeline::start_with(config.clone(), sink, options).await.unwrap();
    common::wait_until(Duration::from_secs(60), "500 records buffered in the open epoch", || async {
        let Some(agg) = pipeline.status().await.unwrap().aggregator else { return false };
        ractor::call_t!(agg, exactly::runtime::messages::AggregatorMsg::Buffered, 5_000).unwrap() == 500
    })
    .await;
    assert_eq!(common::table_cut(&dir.path().join("table"), &config.id, &topic).await, 0, "nothing committed yet");
    (pipeline, config, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_the_open_epoch() {
    let (pipeline, config, _dir) = holding_an_open_epoch(Default::default()).await;
    pipeline.shutdown().await.unwrap();
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 500, "the stop committed everything consumed");
    assert_eq!(audit.epoch, 1);
}

/// A failure while the stop commits its epoch — before the table commit, or after it and before
/// the checkpoint (the restarted tree replays that epoch) — is retried by a restarted tree: the
/// stop succeeds with every record committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_while_the_stop_commits_is_retried_and_the_stop_succeeds() {
    for failpoint in ["after-parquet-write", "after-delta-commit"] {
        let failpoints = Arc::new(FailPoints::new());
        let (pipeline, config, dir) = holding_an_open_epoch(failpoints.clone()).await;
        failpoints.arm(failpoint, FailAction::Error, Some(1));
        pipeline.shutdown().await.unwrap_or_else(|e| panic!("{failpoint}: the stop failed: {e}"));
        assert!(!failpoints.is_armed(failpoint), "{failpoint}: the fail point fired");
        let audit = common::assert_verified(&config).await;
        assert_eq!(audit.total(|p| p.rows), 500, "{failpoint}: the stop committed everything consumed");
        common::assert_each_epoch_committed_once(&dir.path().join("table"), &config.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_applies_back_pressure_and_memory_stays_bounded() {
    let topic = common::topic("slow", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.source.max_buffered_records = 500;
    config.source.max_batch_records = 100;
    common::produce_events(&topic, 0, 4_000).await;
    // Every commit stalls far beyond the 200 ms epoch interval.
    let failpoints = Arc::new(FailPoints::new());
    failpoints.arm("after-parquet-write", FailAction::Sleep(Duration::from_millis(700)), None);
    let options = RunOptions { failpoints: failpoints.clone(), ..Default::default() };
    let sink = exactly::pipeline::sink_for(&config, failpoints.clone()).unwrap();
    let pipeline = Pipeline::start_with(config.clone(), sink, options).await.unwrap();
    let table = dir.path().join("table");
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let want = common::high_watermarks(&topic).await;
    common::wait_until(Duration::from_secs(120), "all records committed through the slow sink", || {
        let (pipeline, table, id, topic, peak) = (&pipeline, &table, &config.id, &topic, peak.clone());
        async move {
            if let Some(agg) = pipeline.status().await.unwrap().aggregator {
                let buffered = ractor::call_t!(agg, exactly::runtime::messages::AggregatorMsg::Buffered, 5_000).unwrap_or(0);
                peak.fetch_max(buffered, std::sync::atomic::Ordering::Relaxed);
            }
            common::table_cut(table, id, topic).await >= want
        }
    })
    .await;
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    pipeline.shutdown().await.unwrap();
    // Bounded by the limit plus one batch per consumer in flight when it was reached.
    assert!(peak <= 500 + 4 * 100, "buffered peaked at {peak}");
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 4_000);
    assert!(audit.epoch >= 4, "several slow epochs, not one big one");
}

/// Processes that open a table nobody created yet at the same moment (group members starting
/// together) leave one CREATE TABLE in the log: the losers use the winner's table. (delta-rs
/// retries a conflicting create at the next version, which wrote a second CREATE TABLE with
/// another table id over the first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_creating_one_table_at_once_leave_one_create() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let config = common::delta_config(&common::unique("p"), "no-topic", dir.path());
        let sinks: Vec<_> = (0..6).map(|_| exactly::pipeline::sink_for(&config, Default::default()).unwrap()).collect();
        let opened = futures::future::join_all(sinks.iter().map(|s| s.recorded(&[]))).await;
        assert!(opened.iter().all(Result::is_ok), "round {round}: {opened:?}");
        let creates = common::commits_of(dir.path().join("table"), "CREATE TABLE").await.len();
        assert_eq!(creates, 1, "round {round}: one CREATE TABLE");
    }
}

/// `[sink.parquet]` and `[sink.table_properties]`: the files are written with the codec, the
/// row-group size and the Bloom filters asked for, the table carries the user's properties,
/// and an independent reader reads every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_settings_and_table_properties_reach_the_files_and_the_table() {
    use deltalake::parquet::basic::Compression;
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
    let topic = common::topic("parquet-settings", 2).await;
    common::produce_events(&topic, 0, 5_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.max_records = 100_000;
    if let exactly::config::SinkConfig::Delta { parquet, table_properties, compaction, .. } = &mut config.sink {
        parquet.compression = "zstd(5)".into();
        parquet.row_group_rows = Some(1_000);
        parquet.bloom_filters = vec!["id".into()];
        table_properties.insert("delta.dataSkippingNumIndexedCols".into(), "5".into());
        table_properties.insert("owner.team".into(), "payments".into());
        compaction.enabled = false;
    }
    run_until_drained(&config, RunOptions::default(), &topic).await;

    let table = dir.path().join("table");
    let files = common::parquet_files(&table);
    assert!(!files.is_empty());
    let (mut rows, mut groups) = (0i64, 0usize);
    for f in &files {
        let reader = SerializedFileReader::new(std::fs::File::open(f).unwrap()).unwrap();
        for g in reader.metadata().row_groups() {
            groups += 1;
            rows += g.num_rows();
            assert!(g.num_rows() <= 1_000, "{}: a row group of {} rows", f.display(), g.num_rows());
            for c in g.columns() {
                assert!(matches!(c.compression(), Compression::ZSTD(_)), "{}: {:?}", c.column_path(), c.compression());
                let bloom = c.bloom_filter_offset().is_some();
                assert_eq!(bloom, c.column_path().string() == "id", "{}: a Bloom filter only for id", c.column_path());
            }
        }
    }
    assert_eq!(rows, 5_000);
    assert!(groups >= 5, "{groups} row groups");
    let t = exactly::sink::delta::load_table(&table).await.unwrap().unwrap();
    let configuration = t.snapshot().unwrap().metadata().configuration().clone();
    assert_eq!(configuration.get("owner.team").map(String::as_str), Some("payments"));
    assert_eq!(configuration.get("delta.dataSkippingNumIndexedCols").map(String::as_str), Some("5"));
    assert_eq!(common::read_with_python(&table)["rows"].as_u64(), Some(5_000));
    common::assert_verified(&config).await;
}
