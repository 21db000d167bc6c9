//! Delta tables on real object stores — an S3-compatible server (SeaweedFS, `scripts/s3`) and
//! Azure Blob Storage (Azurite, `scripts/azurite`), both started by `just test` through
//! `scripts/with-stores`: exactly once, audited from the store, read by Python `deltalake` from
//! the store; wrong credentials and a missing bucket give one clear error.

use std::collections::BTreeMap;
use std::time::Duration;

use exactly::config::{AggregateConfig, OutputMode, PipelineConfig, SinkConfig, StorageOptions, TableLocation};
use exactly::pipeline::RunOptions;
use exactly::source::producer::{produce, ProduceOptions};

use crate::common;
use crate::common::{endpoint, options, options_at};

/// `scripts/s3 <cmd>` for a server of its own on `port` (data kept between down and up).
fn own_server(cmd: &str, port: u16) {
    let status = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3"))
        .arg(cmd)
        .env("S3_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run scripts/s3");
    assert!(status.success(), "scripts/s3 {cmd} on port {port} failed");
}

/// A pipeline writing to `s3://<bucket>/<unique>/table` (dead letters beside it).
fn s3_config(id: &str, topic: &str, dir: &std::path::Path, bucket: &str, secret: &str) -> (PipelineConfig, TableLocation) {
    let mut config = common::delta_config(id, topic, dir);
    let table = TableLocation::parse(&format!("s3://{bucket}/{}/table", common::unique("t"))).unwrap();
    let SinkConfig::Delta { path, storage, .. } = &mut config.sink else { unreachable!() };
    *path = table.clone();
    *storage = options(secret);
    let table = config.table_path().unwrap();
    (config, table)
}

/// Rows and distinct coordinates Python `deltalake` reads from the table in the store.
fn read_with_python(table: &TableLocation) -> serde_json::Value {
    let script = "import json, sys\nfrom deltalake import DeltaTable\nopts = json.loads(sys.argv[2])\nt = DeltaTable(sys.argv[1], storage_options=opts).to_pyarrow_table()\ncoords = set(zip(t.column('_kafka_partition').to_pylist(), t.column('_kafka_offset').to_pylist()))\nprint(json.dumps({'rows': t.num_rows, 'distinct_coordinates': len(coords)}))\nsys.stdout.flush()\nimport os; os._exit(0)\n";
    let opts: BTreeMap<String, String> = table.options().0.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
    let out = std::process::Command::new(common::python())
        .args(["-c", script])
        .arg(table.url().as_str())
        .arg(serde_json::to_string(&opts).unwrap())
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run python (scripts/setup installs it)");
    assert!(out.status.success(), "python read of {table} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Append with dead letters to S3 across a restart: the audit (reading the tables from the
/// store) is clean, every record is a row or a dead letter once, and Python `deltalake` reads
/// the same rows from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_and_dead_letters_on_s3_exactly_once() {
    let topic = common::topic("s3append", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut config, table) = s3_config(&common::unique("p"), &topic, dir.path(), "exactly", "exactly-local-secret");
    config.epoch.interval_ms = 200;
    let mut sent = 0;
    for _run in 0..2 {
        let pipeline = common::start(&config, RunOptions::default()).await;
        let mut opts = ProduceOptions::new(&common::brokers(), &topic, 1_500);
        opts.first_id = sent;
        opts.malformed_every = Some(50);
        produce(&opts, std::future::pending()).await.unwrap();
        sent += 1_500;
        common::wait_table_drained(table.clone(), &config.id, &topic, Duration::from_secs(90)).await;
        pipeline.shutdown().await.unwrap();
    }
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), sent);
    let dead = audit.total(|p| p.dead_lettered);
    assert!(dead > 0, "malformed records reach the dead-letter table on S3");
    assert_eq!(audit.total(|p| p.rows) + dead, sent);
    let read = read_with_python(&table);
    assert_eq!(read["rows"], audit.total(|p| p.rows));
    assert_eq!(read["distinct_coordinates"], audit.total(|p| p.rows));
}

/// An update-mode count on S3: each epoch replaces its buckets' files in the store; the audit
/// recomputes every group from the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_mode_counts_on_s3_match_the_topic() {
    let topic = common::topic("s3counts", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut config, table) = s3_config(&common::unique("p"), &topic, dir.path(), "exactly", "exactly-local-secret");
    config.epoch.interval_ms = 200;
    config.aggregate = Some(AggregateConfig::count_by(&["value"], OutputMode::Update, 2));
    let pipeline = common::start(&config, RunOptions::default()).await;
    for round in 0..3 {
        let mut opts = ProduceOptions::new(&common::brokers(), &topic, 500);
        opts.first_id = round * 500;
        opts.distinct_values = 20;
        produce(&opts, std::future::pending()).await.unwrap();
        common::wait_table_drained(table.clone(), &config.id, &topic, Duration::from_secs(90)).await;
    }
    pipeline.shutdown().await.unwrap();
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 1_500);
    let keys = audit.keys.as_ref().expect("an aggregation audit");
    assert_eq!(keys.expected, 20, "{keys:?}");
}

/// A wrong secret and a missing bucket: the pipeline does not start, with one line naming the
/// problem and the table, never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_a_missing_bucket_are_one_clear_error() {
    let topic = common::topic("s3bad", 1).await;
    common::produce_events(&topic, 0, 10).await;
    use exactly::error::StoreProblem;
    for (bucket, secret, want) in [
        ("exactly", "not-the-secret", StoreProblem::Refused),
        ("no-such-bucket-for-exactly", "exactly-local-secret", StoreProblem::Missing),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (config, table) = s3_config(&common::unique("p"), &topic, dir.path(), bucket, secret);
        let sink = exactly::pipeline::sink_for(&config, Default::default()).unwrap();
        let err = match exactly::pipeline::Pipeline::start_with(config.clone(), sink, RunOptions::default()).await {
            Ok(p) => {
                let _ = p.shutdown().await;
                panic!("a pipeline on {table} started despite {want:?}");
            }
            Err(e) => e,
        };
        assert!(
            matches!(&err, exactly::Error::Store { table: t, problem } if *problem == want && *t == table.display()),
            "{err}"
        );
        let text = err.to_string();
        assert!(!text.contains(secret) && !text.contains('\n'), "{text}");
    }
}

/// A fresh disk: the checkpoint directory is lost with the pod, the table lives on S3. Without
/// `checkpoint.rebuild_from_table` the pipeline refuses; with it, it rebuilds the checkpoint
/// from the table and resumes after the last epoch: every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_disk_resumes_from_the_table_exactly_once() {
    let topic = common::topic("s3fresh", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut config, table) = s3_config(&common::unique("p"), &topic, dir.path(), "exactly", "exactly-local-secret");
    config.epoch.interval_ms = 200;
    common::produce_events(&topic, 0, 1_000).await;
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_table_drained(table.clone(), &config.id, &topic, Duration::from_secs(90)).await;
    pipeline.shutdown().await.unwrap();

    std::fs::remove_dir_all(config.checkpoint_dir()).unwrap();
    common::produce_events(&topic, 1_000, 1_000).await;
    let sink = exactly::pipeline::sink_for(&config, Default::default()).unwrap();
    let refused = match exactly::pipeline::Pipeline::start_with(config.clone(), sink, RunOptions::default()).await {
        Ok(p) => p.wait().await.unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("reset-checkpoint-from-table"), "{refused}");

    std::fs::remove_dir_all(config.checkpoint_dir()).ok();
    config.checkpoint.rebuild_from_table = true;
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_table_drained(table.clone(), &config.id, &topic, Duration::from_secs(90)).await;
    pipeline.shutdown().await.unwrap();
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 2_000);
    assert_eq!(audit.total(|p| p.rows), 2_000);
}

/// The store goes away for 10 s in the middle of a run, and comes back: commits fail, the
/// pipeline backs off and restarts within its budget, and the table ends with every record
/// exactly once. The server is one of the test's own, so stopping it touches no other test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_down_for_ten_seconds_loses_and_repeats_nothing() {
    const PORT: u16 = 8433;
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            own_server("down", PORT);
        }
    }
    own_server("up", PORT);
    let _stop = Stop;
    let topic = common::topic("s3outage", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut config, table) = s3_config(&common::unique("p"), &topic, dir.path(), "exactly", "exactly-local-secret");
    let SinkConfig::Delta { storage, .. } = &mut config.sink else { unreachable!() };
    *storage = options_at(&format!("http://127.0.0.1:{PORT}"), "exactly-local-secret");
    let table = table.with_options(storage.clone());
    config.epoch.interval_ms = 200;
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 8_000);
    opts.rate = Some(500);
    let producer = tokio::spawn(async move { produce(&opts, std::future::pending()).await.unwrap() });
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_until(Duration::from_secs(60), "a first epoch on the store", || async {
        common::table_cut(table.clone(), &config.id, &topic).await > 0
    })
    .await;
    own_server("down", PORT);
    tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself
    own_server("up", PORT);
    producer.await.unwrap();
    common::wait_table_drained(table.clone(), &config.id, &topic, Duration::from_secs(120)).await;
    let restarts = pipeline.status().await.unwrap().restarts;
    pipeline.shutdown().await.unwrap();
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 8_000);
    assert_eq!(audit.total(|p| p.rows), 8_000);
    assert!(restarts > 0, "the outage failed no commit: it was not an outage");
}

/// Two processes run the same pipeline (one id, each its own checkpoint) against one table on
/// S3 — a zombie and its replacement. Every commit file is written with put-if-absent, so one
/// of two commits of a version fails, and the `txn` of the pipeline id makes the loser a
/// conflict, never a rebase: it restarts, finds the epoch committed, and goes on after it (or
/// runs out of restarts). Every record is in the table exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_of_one_pipeline_on_s3_never_duplicate() {
    let topic = common::topic("s3race", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut config, table) = s3_config(&common::unique("p"), &topic, dir.path(), "exactly", "exactly-local-secret");
    config.epoch.interval_ms = 100;
    let mut second = config.clone();
    second.checkpoint.dir = Some(dir.path().join("second-checkpoint"));
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 6_000);
    opts.rate = Some(1_000);
    let producer = tokio::spawn(async move { produce(&opts, std::future::pending()).await.unwrap() });
    let a = common::start(&config, RunOptions::default()).await;
    let b = common::start(&second, RunOptions::default()).await;
    producer.await.unwrap();
    common::wait_table_drained(table.clone(), &config.id, &topic, Duration::from_secs(120)).await;
    let mut lost = 0;
    for p in [a, b] {
        match p.status().await {
            Ok(s) => lost += s.restarts,
            Err(_) => lost += 1, // stopped: out of restarts
        }
        let _ = p.shutdown().await; // the loser may have stopped with an error
    }
    assert!(lost > 0, "the two writers never raced for a version");
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 6_000);
    assert_eq!(audit.total(|p| p.rows), 6_000);
    assert_eq!(audit.total(|p| p.duplicated), 0);
}

/// The process is SIGKILLed at random moments while producing, its tables on S3 (the storage
/// options in its TOML config): recovery from the store leaves every record exactly once, and
/// each epoch is one commit of each table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_with_tables_on_s3_stays_exactly_once() {
    let mut rng = common::seeded_rng("s3 sigkill test");
    let topic = common::topic("s3sigkill", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, table) = s3_config(&common::unique("p"), &topic, dir.path(), "exactly", "exactly-local-secret");
    let file = common::write_config(&config, dir.path());
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 8_000);
    opts.rate = Some(2_000);
    opts.malformed_every = Some(101);
    let producer = tokio::spawn(async move { produce(&opts, std::future::pending()).await.unwrap() });
    common::sigkill_loop(&file, 5, &mut rng).await;
    producer.await.unwrap();
    let child = common::spawn(&file, None);
    common::wait_table_drained(table.clone(), &config.id, &topic, Duration::from_secs(120)).await;
    common::terminate(child).await;
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 8_000);
    assert_eq!(audit.total(|p| p.dead_lettered), 8_000 / 101);
    assert_eq!(read_with_python(&table)["rows"].as_u64().unwrap(), audit.total(|p| p.rows));
}

/// Append with dead letters to Azure Blob Storage (Azurite, the emulator account), across a
/// restart: the audit reads the tables from the store and Python `deltalake` reads the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_and_dead_letters_on_azure_exactly_once() {
    let topic = common::topic("azappend", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 200;
    let SinkConfig::Delta { path, storage, .. } = &mut config.sink else { unreachable!() };
    *path = TableLocation::parse(&format!("az://exactly/{}/table", common::unique("t"))).unwrap();
    *storage = StorageOptions(BTreeMap::from([("AZURE_STORAGE_USE_EMULATOR".to_string(), "true".to_string())]));
    let table = config.table_path().unwrap();
    let mut sent = 0;
    for _run in 0..2 {
        let pipeline = common::start(&config, RunOptions::default()).await;
        let mut opts = ProduceOptions::new(&common::brokers(), &topic, 1_000);
        opts.first_id = sent;
        opts.malformed_every = Some(40);
        produce(&opts, std::future::pending()).await.unwrap();
        sent += 1_000;
        common::wait_table_drained(table.clone(), &config.id, &topic, Duration::from_secs(90)).await;
        pipeline.shutdown().await.unwrap();
    }
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), sent);
    let dead = audit.total(|p| p.dead_lettered);
    assert!(dead > 0, "malformed records reach the dead-letter table on Azure");
    assert_eq!(audit.total(|p| p.rows) + dead, sent);
    let read = read_with_python(&table);
    assert_eq!(read["rows"], audit.total(|p| p.rows));
}

/// An epoch's bucket-replacing commit whose answer is lost after the store took it (a 503 for
/// a put that landed; the client's retried put then finds the file there): the commit reads the
/// table again, finds its own commit, and the epoch lands once. (It retried the replacement on
/// top of itself before: the epoch twice in the log, its files removed and added again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_lands_once() {
    let topic = common::topic("s3lost", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let upstream = endpoint().trim_start_matches("http://").trim_end_matches('/').to_string();
    let proxy = common::proxy::lose_one_answer(upstream, |method, path| {
        method == "PUT" && path.contains("/table/_delta_log/00000000000000000001.json")
    })
    .await;
    let (mut config, _) = s3_config(&common::unique("p"), &topic, dir.path(), "exactly", "exactly-local-secret");
    if let SinkConfig::Delta { storage, .. } = &mut config.sink {
        *storage = options_at(&format!("http://{}", proxy.addr), "exactly-local-secret");
    }
    let table = config.table_path().unwrap();
    config.epoch.interval_ms = 200;
    config.aggregate = Some(AggregateConfig::count_by(&["value"], OutputMode::Update, 2));
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 1_000);
    opts.distinct_values = 20;
    produce(&opts, std::future::pending()).await.unwrap();
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_table_drained(table.clone(), &config.id, &topic, Duration::from_secs(90)).await;
    pipeline.shutdown().await.unwrap();
    assert!(proxy.fired.load(std::sync::atomic::Ordering::SeqCst), "the answer to epoch 1's commit was lost");
    let epochs = common::txn_versions(table.clone(), &config.id).await;
    let mut once = epochs.clone();
    once.dedup();
    assert_eq!(epochs, once, "an epoch was committed twice");
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.keys.as_ref().expect("an aggregation audit").mismatched, 0);
}
