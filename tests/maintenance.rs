//! Tables that are maintained while the pipeline writes them: a foreign OPTIMIZE (compaction,
//! Z-order) between epochs must never leave a reader seeing a group twice.

use std::collections::BTreeMap;
use std::time::Duration;

use deltalake::arrow::array::{Array, Int64Array, StringArray};
use exactly::config::{AggregateConfig, OutputMode};
use exactly::pipeline::RunOptions;
use exactly::producer::{produce, ProduceOptions};

use crate::common;

/// `(rows, distinct groups, total count)` of a counts table by `value`, as a reader of its
/// current version sees it.
async fn groups(table: &std::path::Path) -> (usize, usize, i64) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let (mut rows, mut total) = (0, 0);
    for b in common::read_rows(table).await {
        let value = b.column_by_name("value").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        let count = b.column_by_name("count").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        for i in 0..b.num_rows() {
            rows += 1;
            total += count.value(i);
            *seen.entry(value.value(i).to_string()).or_default() += 1;
        }
    }
    (rows, seen.len(), total)
}

/// Z-orders the table with Python `deltalake` (another writer), retrying on a commit conflict
/// with the pipeline.
fn foreign_z_order(table: &std::path::Path) {
    let script = "import sys, time\nfrom deltalake import DeltaTable\nfor attempt in range(20):\n    try:\n        print(DeltaTable(sys.argv[1]).optimize.z_order(['value']))\n        break\n    except Exception as e:\n        print('retry', e, file=sys.stderr); time.sleep(0.2)\nelse:\n    sys.exit(1)\nsys.stdout.flush()\nimport os; os._exit(0)\n";
    let out = std::process::Command::new(common::python())
        .args(["-c", script])
        .arg(table)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run python (scripts/setup installs it)");
    assert!(out.status.success(), "python z-order failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// An update-mode count pipeline; a foreign Z-order rewrites every bucket's file between two
/// epochs. The next epoch's commit must replace the files current at commit time (the rewritten
/// ones), not those of the snapshot it cached: a reader right after it sees each group once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_optimize_between_epochs_never_shows_a_group_twice() {
    let topic = common::topic("optimize", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.aggregate = Some(AggregateConfig::count_by(&["value"], OutputMode::Update, 2));
    let table = dir.path().join("table");
    let send = |first_id: u64, count: u64| {
        let mut opts = ProduceOptions::new(&common::brokers(), &topic, count);
        opts.first_id = first_id;
        opts.distinct_values = 40;
        async move { produce(&opts, std::future::pending()).await.unwrap() }
    };
    send(0, 2_000).await;
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    assert_eq!(groups(&table).await, (40, 40, 2_000));

    for round in 1..=3u64 {
        foreign_z_order(&table);
        assert_eq!(groups(&table).await, (40, 40, 2_000 * round as i64), "the Z-order changes no data");
        send(2_000 * round, 2_000).await;
        common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
        assert_eq!(
            groups(&table).await,
            (40, 40, 2_000 * (round as i64 + 1)),
            "each group once after the next epoch (round {round})"
        );
    }
    pipeline.shutdown().await.unwrap();
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.keys.as_ref().unwrap().duplicated, 0);
}

/// A foreign writer Z-orders the table over and over while the pipeline commits epochs; a reader
/// checks every version it sees: never a group twice. Commits that lose the race to the
/// optimizer are redone against the table's current files, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_optimize_loop_never_shows_a_group_twice() {
    let topic = common::topic("optimizeloop", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 100;
    config.aggregate = Some(AggregateConfig::count_by(&["value"], OutputMode::Update, 2));
    let table = dir.path().join("table");
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 500);
    opts.distinct_values = 40;
    produce(&opts, std::future::pending()).await.unwrap();
    // Each commit stalls 40 ms after reading the table's current files: the optimizer commits
    // into that window again and again.
    let failpoints = std::sync::Arc::new(exactly::failpoint::FailPoints::new());
    failpoints.arm("before-delta-commit", exactly::failpoint::FailAction::Sleep(Duration::from_millis(40)), None);
    let pipeline = common::start(&config, RunOptions { failpoints, ..Default::default() }).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;

    // The optimizer: 25 Z-orders back to back (each retried on a conflict), in its own process.
    let script = "import sys, time\nfrom deltalake import DeltaTable\ndone = 0\nfor attempt in range(200):\n    if done == 25: break\n    try:\n        DeltaTable(sys.argv[1]).optimize.z_order(['value']); done += 1\n    except Exception as e:\n        time.sleep(0.01)\nprint(done)\nsys.stdout.flush()\nimport os; os._exit(0)\n";
    let optimizer = std::process::Command::new(common::python())
        .args(["-c", script])
        .arg(&table)
        .env_remove("LD_LIBRARY_PATH")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    let mut producer_opts = ProduceOptions::new(&common::brokers(), &topic, 6_000);
    producer_opts.first_id = 500;
    producer_opts.distinct_values = 40;
    producer_opts.rate = Some(1_500);
    let producer = tokio::spawn(async move { produce(&producer_opts, std::future::pending()).await.unwrap() });
    let mut checks = 0;
    while !producer.is_finished() {
        let (rows, distinct, _) = groups(&table).await;
        assert_eq!(rows, distinct, "a reader saw a group twice (check {checks})");
        checks += 1;
    }
    let out = tokio::task::spawn_blocking(move || optimizer.wait_with_output().unwrap()).await.unwrap();
    assert!(out.status.success());
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    assert_eq!(groups(&table).await, (40, 40, 6_500));
    assert_eq!(pipeline.status().await.unwrap().restarts, 0, "lost races are retried, not restarted");
    pipeline.shutdown().await.unwrap();
    eprintln!("{checks} reader checks; optimizer Z-orders: {}", String::from_utf8_lossy(&out.stdout).trim());
    common::assert_verified(&config).await;
}
