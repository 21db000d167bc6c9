//! One commit protocol, one recovery rule: the holes that several tables per epoch, rebuilt
//! checkpoints, second writers and table maintenance opened, each shown on real processes, a
//! real broker and real tables, audited by `verify` and the independent Python reader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use exactly::config::{AggregateConfig, OutputConfig, OutputMode, SinkConfig};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common::{self, spawn, terminate, wait_exit, write_config};

/// Sends `values` keyed by their index (so they spread over the partitions).
async fn send(topic: &str, values: &[String]) {
    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    let sends = values.iter().enumerate().map(|(i, v)| {
        let key = i.to_string();
        let producer = producer.clone();
        async move {
            producer
                .send(FutureRecord::to(topic).key(&key).payload(v), Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });
    futures::future::join_all(sends).await;
}

/// Record `i` of a topic: every tenth does not decode (a dead letter), every third is an ERROR.
fn record(i: u64) -> String {
    match i {
        _ if i % 10 == 7 => format!("not json {i}"),
        _ if i % 3 == 0 => format!(r#"{{"id":{i},"value":"ERROR","ts":0}}"#),
        _ => format!(r#"{{"id":{i},"value":"INFO","ts":0}}"#),
    }
}

/// A pipeline of `topic` into `dir/table` with one output, `dir/errors`: the ERROR rows.
fn with_errors_output(topic: &str, dir: &Path) -> exactly::PipelineConfig {
    let mut config = common::delta_config(&common::unique("p"), topic, dir);
    if let SinkConfig::Delta { outputs, .. } = &mut config.sink {
        outputs.push(OutputConfig {
            name: "errors".into(),
            path: dir.join("errors").into(),
            select: Some(vec!["id".into()]),
            filter: Some("value = 'ERROR'".into()),
            partition_by: Vec::new(),
        });
    }
    config
}

/// Rows of the table at `path`, read by the independent Python reader.
fn python_rows(path: &Path) -> usize {
    if !path.join("_delta_log").exists() {
        return 0;
    }
    common::read_with_python(path)["rows"].as_u64().unwrap() as usize
}

/// The pipeline's epochs in the log of `table` (one entry per commit that recorded one).
async fn epochs(table: &Path, id: &str) -> Vec<i64> {
    common::txn_versions(table, id).await
}

/// Killed after the data table's first commit, before the output's and the dead letters';
/// the checkpoint directory is then lost, and `checkpoint.rebuild_from_table` rebuilds it. The
/// rebuilt checkpoint starts at the oldest epoch a table lacks, so the replay gives the output
/// and the dead-letter table the epoch they missed: every table holds each record once. (The
/// checkpoint was set to the newest epoch before: the output's and the dead letters' share of
/// epoch 1 was in no table, ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_rebuilt_after_a_crash_between_tables_repairs_the_laggards() {
    let topic = common::topic("rebuild-laggards", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_errors_output(&topic, dir.path());
    config.checkpoint.rebuild_from_table = true;
    config.epoch.interval_ms = 2_000; // the first epoch holds what was sent before the start
    let values: Vec<String> = (0..3_000).map(record).collect();
    send(&topic, &values).await;
    let file = write_config(&config, dir.path());
    let (table, errors, dead) = (dir.path().join("table"), dir.path().join("errors"), dir.path().join("table_dead_letters"));

    let child = spawn(&file, Some("after-delta-commit=1*abort"));
    let (status, _) = wait_exit(child, Duration::from_secs(120), "the process aborts after the data table's commit").await;
    assert!(!status.success());
    assert_eq!(epochs(&table, &config.id).await, [1], "the data table got epoch 1");
    assert!(epochs(&errors, &config.id).await.is_empty() && epochs(&dead, &config.id).await.is_empty(), "the others did not");
    // The audit sees the dead letters the crash cut off.
    let behind = exactly::verify::verify(&config).await.unwrap();
    assert!(!behind.ok() && behind.total(|p| p.missing) > 0, "{}", behind.render());

    std::fs::remove_dir_all(config.checkpoint_dir()).unwrap(); // a pod's lost volume
    let mut restarted = config.clone();
    restarted.epoch.interval_ms = 200;
    let file = write_config(&restarted, dir.path());
    let child = spawn(&file, None);
    common::wait_until(Duration::from_secs(90), "the dead letters of epoch 1", || async {
        epochs(&dead, &config.id).await.contains(&1) && epochs(&errors, &config.id).await.contains(&1)
    })
    .await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;

    let bad = (0..3_000u64).filter(|i| i % 10 == 7).count();
    let errors_want = (0..3_000u64).filter(|i| i % 10 != 7 && i % 3 == 0).count();
    assert_eq!(python_rows(&table), 3_000 - bad);
    assert_eq!(python_rows(&errors), errors_want, "the output got epoch 1 by the replay");
    assert_eq!(python_rows(&dead), bad, "the dead-letter table got epoch 1 by the replay");
    for t in [&table, &errors, &dead] {
        common::assert_each_epoch_committed_once(t, &config.id).await;
    }
    let audit = common::assert_verified(&config).await;
    assert_eq!((audit.total(|p| p.rows), audit.total(|p| p.dead_lettered)), ((3_000 - bad) as u64, bad as u64));
    assert_eq!(audit.outputs[0].total(|p| p.rows), errors_want as u64);
}

/// With `sink.outputs`, a deleted main table is refused like without: recovery sees the output
/// ahead of the data table (it took the newest epoch of any table before, and started a new
/// main table mid-topic). Nothing is written; `verify` fails and its closing line counts the
/// output's problems.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_main_table_beside_outputs_is_refused() {
    let topic = common::topic("deleted-main", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = with_errors_output(&topic, dir.path());
    let file = write_config(&config, dir.path());
    let (table, errors) = (dir.path().join("table"), dir.path().join("errors"));
    send(&topic, &(0..2_000).map(record).collect::<Vec<_>>()).await;
    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;
    let errors_before = python_rows(&errors);
    assert!(errors_before > 0);

    std::fs::remove_dir_all(&table).unwrap();
    send(&topic, &(2_000..2_500).map(record).collect::<Vec<_>>()).await;
    let (status, stderr) = wait_exit(spawn(&file, None), Duration::from_secs(60), "a refused start exits").await;
    assert!(!status.success(), "a deleted main table must be refused");
    assert!(!table.join("_delta_log").exists(), "no new main table was started: {stderr}");
    assert_eq!(python_rows(&errors), errors_before, "the output got nothing");

    // `exactly verify` fails, naming the output's rows in its closing count.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exactly"))
        .args(["verify", "--config"])
        .arg(&file)
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Two processes of one aggregate pipeline on one table, each with a checkpoint of its own (a
/// failover that copied no volume): every epoch lands in the table once. The bucket-replacing
/// commit retried past a lost race without asking whose epoch the table now held, so both
/// processes committed every epoch (41 of 41 twice); now a commit that finds its epoch written
/// by another writer is refused, and the loser can only replay the winner's epochs. The table
/// ends with the topic's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_pipeline_run_twice_on_one_table_commits_each_epoch_once() {
    let _heavy = common::heavy().await;
    let topic = common::topic("twice", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.aggregate = Some(AggregateConfig::count_by(&["value"], OutputMode::Update, 4));
    config.supervisor.max_restarts = 1_000;
    let table = dir.path().join("table");
    let second_dir = dir.path().join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    let mut second = config.clone();
    second.checkpoint.dir = Some(second_dir.join("checkpoint"));
    let (first_file, second_file) = (write_config(&config, dir.path()), write_config(&second, &second_dir));

    let mut opts = exactly::source::producer::ProduceOptions::new(&common::brokers(), &topic, 8_000);
    opts.rate = Some(2_000);
    let producer = tokio::spawn(async move { exactly::source::producer::produce(&opts, std::future::pending()).await.unwrap() });
    let (a, b) = (spawn(&first_file, None), spawn(&second_file, None));
    producer.await.unwrap();
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(120)).await;
    for child in [a, b] {
        // Either may have given up (a spent restart budget); the table is what is judged.
        let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let _ = wait_exit(child, Duration::from_secs(60), "exits after SIGTERM").await;
    }
    common::assert_each_epoch_committed_once(&table, &config.id).await;
    assert!(epochs(&table, &config.id).await.len() > 1, "several epochs");
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.keys.as_ref().unwrap().mismatched, 0);

    // The break this prevents, made on purpose: the last epoch's commit once more on top of
    // itself. `verify` fails, naming it.
    let log = table.join("_delta_log");
    let mut commits: Vec<PathBuf> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    let last_epoch = commits
        .iter()
        .rev()
        .find(|p| std::fs::read_to_string(p).unwrap().contains(&format!(r#""appId":"{}""#, config.id)))
        .unwrap();
    let next: u64 = commits.last().unwrap().file_stem().unwrap().to_str().unwrap().parse::<u64>().unwrap() + 1;
    std::fs::copy(last_epoch, log.join(format!("{next:020}.json"))).unwrap();
    let broken = exactly::verify::verify(&config).await.unwrap();
    assert!(!broken.ok() && broken.twice.len() == 1, "{}", broken.render());
}

/// `exactly vacuum` never deletes a file no version references while it is younger than the
/// longest a commit may take, whatever the retention asked for: an epoch's files are written
/// before its commit, and a commit that stalls re-reading the table would find them gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_keeps_files_a_commit_in_flight_may_still_reference() {
    let topic = common::topic("vacuum-floor", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let file = write_config(&config, dir.path());
    let table = dir.path().join("table");
    common::produce_events(&topic, 0, 100).await;
    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;
    // An epoch's file, written and not committed yet (its process is still deciding).
    let pending: PathBuf = table.join("part-00000-in-flight.parquet");
    let some_file = common::parquet_files(&table).remove(0);
    std::fs::copy(&some_file, &pending).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exactly"))
        .args(["vacuum", "--execute", "--force", "--retention-hours", "0", "--path"])
        .arg(&table)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(pending.exists(), "a file younger than a commit may take was deleted");
    assert_eq!(python_rows(&table), 100);
}

/// Group mode claims a partition added to the topic from its earliest offset, as one process
/// reads a new partition; `starting_offsets` applies only to a topic the table never recorded.
/// (Claimed at `latest`, the records written to a new partition before its claim were never
/// read, and `verify` said OK.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_at_latest_read_partitions_added_to_the_topic_from_earliest() {
    use exactly::config::StartingOffsets;
    use exactly::model::TopicPartition;
    let _heavy = common::heavy().await;
    let crate::group::Group { topic, dir, mut config, table, .. } = crate::group::Group::new("group-grow", 2).await;
    config.source.starting_offsets = StartingOffsets::Latest;
    config.source.properties.insert("topic.metadata.refresh.interval.ms".into(), "1000".into());
    let file = write_config(&config, dir.path());
    common::produce_events(&topic, 0, 100).await; // before the start: not read, at latest

    let members = [spawn(&file, None), spawn(&file, None)];
    common::wait_until(Duration::from_secs(60), "both partitions claimed", || async {
        let claimed: std::collections::BTreeSet<String> =
            crate::group::member_commits(&table).await.into_iter().flat_map(|c| c.claim).collect();
        claimed.len() == 2
    })
    .await;
    common::produce_events(&topic, 100, 200).await;
    exactly::source::add_partitions(&common::kafka(), &topic, 4).await.unwrap();
    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    let sends = (0..500).map(|i: i32| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            let value = format!(r#"{{"id":{},"value":"new","ts":0}}"#, 1_000 + i);
            let record = FutureRecord::<(), _>::to(&topic).partition(2 + i % 2).payload(&value);
            producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
        }
    });
    futures::future::join_all(sends).await;
    common::wait_until(Duration::from_secs(90), "the new partitions' records in the table", || async {
        let tps = [TopicPartition::new(&topic, 2), TopicPartition::new(&topic, 3)];
        let location: exactly::config::TableLocation = table.as_path().into();
        let Some(t) = exactly::sink::delta::load_table(location.clone()).await.unwrap() else { return false };
        let cut = exactly::sink::delta::recorded_cut(&t, &location, &config.id, &tps).await.unwrap();
        cut.values().sum::<i64>() >= 500
    })
    .await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    for member in members {
        terminate(member).await;
    }
    let audit = common::assert_verified(&config).await;
    let new: u64 = audit.partitions.iter().filter(|p| p.tp.as_ref().is_some_and(|tp| tp.partition >= 2)).map(|p| p.rows).sum();
    assert_eq!(new, 500, "every record of the new partitions, those written before their claim included");
    assert_eq!(audit.total(|p| p.rows), 700, "at latest: the 100 records before the start are not read");
}

/// `exactly optimize --zorder` with a pipeline's config rewrites its data table only: the
/// dead-letter table has none of the pipeline's columns, and its auto-compaction must not race
/// a Z-order of the same files (which landed each dead letter twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_zorder_of_a_pipeline_rewrites_its_data_table_only() {
    let topic = common::topic("zorder-scope", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 100;
    let file = write_config(&config, dir.path());
    let (table, dead) = (dir.path().join("table"), dir.path().join("table_dead_letters"));
    for chunk in 0..4u64 {
        send(&topic, &(chunk * 100..chunk * 100 + 100).map(record).collect::<Vec<_>>()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;
    let optimizes = |t: &Path| {
        let t = t.to_path_buf();
        async move { common::commits_of(t, "OPTIMIZE").await.len() }
    };
    let (dead_before, dead_rows) = (optimizes(&dead).await, python_rows(&dead));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exactly"))
        .args(["optimize", "--zorder", "_kafka_offset", "--config"])
        .arg(&file)
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(optimizes(&dead).await, dead_before, "the dead-letter table was not rewritten");
    assert_eq!(python_rows(&dead), dead_rows);
    common::assert_verified(&config).await;
}

/// Killed between the data table's commit of an epoch and the checkpoint, then started with a
/// changed `[transform]`: the replay would write the epoch's rows to the other tables under the
/// new transform, the data table's under the old. Refused, naming the transform; started again
/// with the config the epoch was written with, the replay completes and the audit is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_under_a_changed_transform_is_refused() {
    let topic = common::topic("meaning", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_errors_output(&topic, dir.path());
    config.transform = Some(exactly::config::TransformConfig { select: None, filter: Some("id >= 0".into()) });
    send(&topic, &(0..500).map(record).collect::<Vec<_>>()).await;
    let file = write_config(&config, dir.path());
    let (table, errors) = (dir.path().join("table"), dir.path().join("errors"));
    let (status, _) = wait_exit(spawn(&file, Some("after-delta-commit=1*abort")), Duration::from_secs(60), "aborts").await;
    assert!(!status.success());
    assert_eq!(epochs(&table, &config.id).await, [1]);

    let mut changed = config.clone();
    changed.transform = Some(exactly::config::TransformConfig { select: None, filter: Some("id >= 100".into()) });
    let changed_file = write_config(&changed, dir.path());
    let (status, stderr) = wait_exit(spawn(&changed_file, None), Duration::from_secs(60), "a refused start exits").await;
    assert!(!status.success(), "a replay under another transform must be refused");
    assert!(epochs(&errors, &config.id).await.is_empty(), "nothing written under the new transform: {stderr}");
    assert_eq!(epochs(&table, &config.id).await, [1]);

    let file = write_config(&config, dir.path());
    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;
    common::assert_verified(&config).await;
    assert_eq!(epochs(&errors, &config.id).await.first(), Some(&1), "the replay gave the output epoch 1");
}
