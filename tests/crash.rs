//! The process dies for real: SIGKILL at random moments while producing, and an abort between
//! the Delta commit and the checkpoint (the seed's failure scenario). Then recovery is checked
//! on the data: the audit, the Delta log, an independent reader. And records deleted from Kafka
//! before their commit stop the pipeline instead of being skipped.

use std::process::{Command, Stdio};
use std::time::Duration;

use exactly::source::producer::{produce, ProduceOptions};

use crate::common::{self, spawn, terminate, write_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_while_producing_stays_exactly_once() {
    let topic = common::topic("sigkill", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    sigkill_while_producing(&config, &topic, dir.path(), &common::kafka()).await;
}

/// 10,000 records (every 101st malformed) produced through `producer` at 2,500/s while
/// `exactly run` on `config` (a Delta table in `dir/table`) is SIGKILLed six times at random
/// moments; then one clean run drains the topic, and the audit, the log and an independent
/// reader find every record exactly once.
pub async fn sigkill_while_producing(
    config: &exactly::PipelineConfig,
    topic: &str,
    dir: &std::path::Path,
    producer: &exactly::source::Connection,
) {
    let mut rng = common::seeded_rng("sigkill test");
    let file = write_config(config, dir);
    let mut opts = ProduceOptions::new(producer, topic, 10_000);
    opts.rate = Some(2_500);
    opts.malformed_every = Some(101);
    let producer = tokio::spawn(async move { produce(&opts, std::future::pending()).await.unwrap() });
    common::sigkill_loop(&file, 6, &mut rng).await;
    producer.await.unwrap();
    let child = spawn(&file, None);
    common::wait_table_drained(&dir.join("table"), &config.id, topic, Duration::from_secs(120)).await;
    terminate(child).await;

    let audit = common::assert_verified(config).await;
    assert_eq!(audit.total(|p| p.expected), 10_000);
    assert_eq!(audit.total(|p| p.dead_lettered), 10_000 / 101);
    common::assert_each_epoch_committed_once(&dir.join("table"), &config.id).await;
    common::assert_each_epoch_committed_once(&dir.join("table_dead_letters"), &config.id).await;
    assert_eq!(common::read_with_python(&dir.join("table"))["rows"].as_u64().unwrap(), audit.total(|p| p.rows));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_delta_commit_before_checkpoint_is_not_committed_again() {
    let topic = common::topic("abort", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let file = write_config(&config, dir.path());
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 1_000);
    opts.malformed_every = Some(50);
    produce(&opts, std::future::pending()).await.unwrap();

    // The process dies right after the data table's commit of epoch 1.
    let mut child = spawn(&file, Some("after-delta-commit=abort"));
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(!status.success(), "the process must have aborted");
    let table = dir.path().join("table");
    assert_eq!(common::txn_versions(&table, &config.id).await, vec![1], "epoch 1 is in the table");
    let cp = exactly::state::checkpoint::CheckpointStore::open(config.checkpoint_dir()).unwrap().load().unwrap().unwrap();
    assert_eq!(cp.epoch, 0, "but not in the checkpoint");

    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 1_000);
    assert_eq!(audit.total(|p| p.dead_lettered), 20, "epoch 1's dead letters were written by the replay");
    assert_eq!(common::txn_versions(&table, &config.id).await, vec![1], "no second commit of epoch 1");
    common::assert_each_epoch_committed_once(&dir.path().join("table_dead_letters"), &config.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_checkpoint_is_refused_then_reset_from_the_table() {
    let topic = common::topic("lostcp", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let file = write_config(&config, dir.path());
    common::produce_events(&topic, 0, 500).await;
    let child = spawn(&file, None);
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;

    std::fs::remove_dir_all(config.checkpoint_dir()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_exactly"))
        .args(["run", "--progress", "off", "--config"])
        .arg(&file)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("no checkpoint") && errors[0].contains("--reset-checkpoint-from-table"), "{stderr}");

    common::produce_events(&topic, 500, 300).await;
    let child = Command::new(env!("CARGO_BIN_EXE_exactly"))
        .args(["run", "--progress", "off", "--reset-checkpoint-from-table", "--config"])
        .arg(&file)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_another_pipeline_is_refused() {
    let topic = common::topic("owner", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    common::produce_events(&topic, 0, 10).await;
    let sink = exactly::pipeline::sink_for(&config, Default::default()).unwrap();
    let p = exactly::pipeline::Pipeline::start(config.clone(), sink).await.unwrap();
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, Duration::from_secs(60)).await;
    p.shutdown().await.unwrap();

    let mut other = config.clone();
    other.id = common::unique("other");
    other.checkpoint.dir = Some(dir.path().join("other-checkpoint"));
    let sink = exactly::pipeline::sink_for(&other, Default::default()).unwrap();
    let err = exactly::pipeline::Pipeline::start(other, sink).await.unwrap().wait().await.unwrap_err();
    assert!(matches!(&err, exactly::Error::OtherPipeline { owner, setting: "sink.path", .. } if *owner == config.id), "{err}");
}

/// Records deleted from Kafka before they were committed (retention, `DeleteRecords`) are never
/// skipped: the pipeline refuses to read past the gap, exits non-zero once its restart budget is
/// spent, and the table and checkpoint keep exactly what was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_before_their_commit_are_refused_not_skipped() {
    let (_dir, config, file, table) = hundred_read_then_fifty_deleted("deleted", |c| c.supervisor.max_restarts = 1).await;

    let child = spawn(&file, None);
    let (status, stderr) =
        common::wait_exit(child, Duration::from_secs(60), "the pipeline gives up once its restart budget is spent").await;
    assert!(!status.success(), "reading past deleted records must fail, not skip them; stderr: {stderr}");

    let cp = exactly::state::checkpoint::CheckpointStore::open(config.checkpoint_dir()).unwrap().load().unwrap().unwrap();
    assert_eq!(cp.offsets().values().copied().collect::<Vec<_>>(), vec![100], "the checkpoint did not move past the gap");
    assert_eq!(common::read_with_python(&table)["rows"].as_u64().unwrap(), 100, "nothing after the gap was committed");
}

/// With `source.on_data_loss = "skip"` (Spark's `failOnDataLoss = false`), records Kafka deleted
/// before they were read are skipped, never silently: the epoch's commit records the skipped
/// offsets, and the audit reports them as skipped by policy — not missing — while every record
/// Kafka still holds is in the table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_before_they_were_read_are_skipped_and_recorded_when_the_config_says_so() {
    let (_dir, config, file, table) =
        hundred_read_then_fifty_deleted("deleted-skip", |c| c.source.on_data_loss = exactly::config::OnDataLoss::Skip).await;
    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &config.source.topics[0], Duration::from_secs(60)).await;
    terminate(child).await;
    let audit = common::assert_verified(&config).await;
    let p = &audit.partitions[0];
    assert_eq!((p.rows, p.skipped, p.missing), (150, 50, 0), "{}", audit.render());
}

/// A one-partition pipeline (`tweak`ed) that read and committed 100 records; then 100 more
/// arrive, of which Kafka deletes the first 50 before the pipeline reads them. The test's
/// directory, the config, its file and the table.
async fn hundred_read_then_fifty_deleted(
    prefix: &str,
    tweak: impl FnOnce(&mut exactly::PipelineConfig),
) -> (tempfile::TempDir, exactly::PipelineConfig, std::path::PathBuf, std::path::PathBuf) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let topic = common::topic(prefix, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    tweak(&mut config);
    let file = write_config(&config, dir.path());
    let table = dir.path().join("table");
    common::produce_events(&topic, 0, 100).await;
    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;
    common::produce_events(&topic, 100, 100).await;
    let admin: AdminClient<DefaultClientContext> = common::kafka().client_config().create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(150)).unwrap();
    let deleted = admin.delete_records(&tpl, &AdminOptions::new()).await.unwrap();
    assert_eq!(deleted.find_partition(&topic, 0).unwrap().offset(), rdkafka::Offset::Offset(150), "low watermark moved");
    (dir, config, file, table)
}
