//! Tables that are maintained while the pipeline writes them: a foreign OPTIMIZE (compaction,
//! Z-order) between epochs must never leave a reader seeing a group twice.

use std::collections::BTreeMap;
use std::time::Duration;

use deltalake::arrow::array::{Array, Int64Array, StringArray};
use exactly::config::{AggregateConfig, OutputMode};
use exactly::pipeline::RunOptions;
use exactly::source::producer::{produce, ProduceOptions};

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
    let failpoints = std::sync::Arc::new(exactly::testing::failpoint::FailPoints::new());
    failpoints.arm("before-delta-commit", exactly::testing::failpoint::FailAction::Sleep(Duration::from_millis(40)), None);
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

/// Asserts a rewrite commit adds and removes files only with `dataChange = false` (a Spark-style
/// streaming reader of the table sees no new data in it) and carries no `txn`.
fn assert_no_data_change(actions: &[deltalake::kernel::Action]) {
    use deltalake::kernel::Action;
    let mut files = 0;
    for a in actions {
        match a {
            Action::Add(add) => assert!(!add.data_change, "an add with dataChange: {add:?}"),
            Action::Remove(remove) => assert!(!remove.data_change, "a remove with dataChange: {remove:?}"),
            Action::Txn(t) => panic!("a rewrite carries no txn: {t:?}"),
            _ => continue,
        }
        files += 1;
    }
    assert!(files > 0, "a rewrite commit with no files");
}

/// Rows of a table, as a reader of its current version sees them.
async fn row_count(table: &std::path::Path) -> usize {
    common::read_rows(table).await.iter().map(|b| b.num_rows()).sum()
}

/// Live files of a table's current version.
async fn live_files(table: &std::path::Path) -> usize {
    exactly::sink::delta::load_table(table).await.unwrap().map(|t| t.get_file_uris().unwrap().count()).unwrap_or(0)
}

fn set_maintenance(config: &mut exactly::PipelineConfig, compaction: bool, min_files: usize, checkpoint_interval: u64) {
    let exactly::config::SinkConfig::Delta { compaction: c, checkpoint_interval: ci, .. } = &mut config.sink else {
        unreachable!()
    };
    c.enabled = compaction;
    c.min_files = min_files;
    *ci = checkpoint_interval;
}

/// `exactly optimize` and `vacuum` on an append table, its dead-letter table and an aggregate
/// table: the files are compacted (Z-ordered for the aggregate) in commits that change no data,
/// vacuum lists and then deletes exactly the files they removed, and the audit stays clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_and_vacuum_append_dead_letter_and_aggregate_tables() {
    use exactly::maintenance::commands::{optimize, vacuum};
    let topic = common::topic("optvac", 2).await;
    let mut sent = 0;
    for aggregate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
        config.epoch.interval_ms = 100;
        set_maintenance(&mut config, false, 10, 100);
        if aggregate {
            config.aggregate = Some(AggregateConfig::count_by(&["value"], OutputMode::Update, 2));
        }
        let table = dir.path().join("table");
        let dead = dir.path().join("table_dead_letters");
        let pipeline = common::start(&config, RunOptions::default()).await;
        // Eight rounds, each committed before the next: eight epochs, small files.
        for _ in 0..8 {
            let mut opts = ProduceOptions::new(&common::brokers(), &topic, 350);
            opts.first_id = sent;
            opts.malformed_every = Some(7);
            opts.distinct_values = 40;
            produce(&opts, std::future::pending()).await.unwrap();
            sent += 350;
            common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
        }
        pipeline.shutdown().await.unwrap();

        // An aggregate table keeps the files its epochs replaced for 5 minutes by default,
        // other tables for 7 days.
        for (t, retention) in
            [(&table, if aggregate { "interval 5 minutes" } else { "interval 7 days" }), (&dead, "interval 7 days")]
        {
            let props = exactly::sink::delta::load_table(t)
                .await
                .unwrap()
                .unwrap()
                .snapshot()
                .unwrap()
                .metadata()
                .configuration()
                .clone();
            assert_eq!(props.get("delta.deletedFileRetentionDuration").map(String::as_str), Some(retention), "{}", t.display());
        }

        let tables = if aggregate { vec![table.clone()] } else { vec![table.clone(), dead.clone()] };
        for t in &tables {
            let at = exactly::config::TableLocation::from(t);
            let (rows, files) = (row_count(t).await, live_files(t).await);
            let zorder = if aggregate { vec!["value".to_string()] } else { Vec::new() };
            let report = optimize(&at, None, &zorder).await.unwrap();
            if !aggregate {
                assert!(files > 5, "{}: {files} files before optimize", t.display());
                assert_eq!((report.files_removed as usize, report.live_files), (files, 1), "{}", t.display());
            }
            assert!(report.version.is_some(), "{}: optimize committed nothing", t.display());
            assert_eq!(row_count(t).await, rows, "optimize changes no rows");
            let optimizes = common::commits_of(t, "OPTIMIZE").await;
            assert_eq!(optimizes.len(), 1);
            assert_no_data_change(&optimizes[0]);

            // Dry run by default: lists what a vacuum with no retention would delete, deletes nothing.
            let removed = report.files_removed as usize;
            let listed = vacuum(&at, Some(Duration::ZERO), true, true).await.unwrap();
            assert!(listed.dry_run);
            assert!(listed.files.len() >= removed, "{}: lists {} of {removed} removed files", t.display(), listed.files.len());
            assert_eq!(row_count(t).await, rows);
            // The table's own retention (minutes or days) keeps every file; a shorter one needs force.
            assert!(vacuum(&at, None, false, false).await.unwrap().files.is_empty());
            assert!(vacuum(&at, Some(Duration::ZERO), false, false).await.is_err(), "a retention below the table's is refused");
            let deleted = vacuum(&at, Some(Duration::ZERO), false, true).await.unwrap();
            assert_eq!(deleted.files.len(), listed.files.len());
            assert_eq!(row_count(t).await, rows, "vacuum deletes no live file");
        }
        let audit = common::assert_verified(&config).await;
        assert!(audit.orphan_files.is_empty(), "vacuum left {:?}", audit.orphan_files);
    }
}

/// Auto-compaction keeps the live files bounded while epochs land every 100 ms: the data and
/// dead-letter tables end with at most `(min_files - 1)` files per size tier, every compaction
/// commit changes no data, Delta checkpoints are written every `checkpoint_interval` commits,
/// and the table carries the configured properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_bounds_live_files_without_changing_data() {
    let topic = common::topic("autocompact", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 100;
    set_maintenance(&mut config, true, 3, 10);
    let table = dir.path().join("table");
    let dead = dir.path().join("table_dead_letters");
    let pipeline = common::start(&config, RunOptions::default()).await;
    let mut progress = pipeline.progress();
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 6_000);
    // 10 s of producing: an epoch lasts as long as its commit on a loaded machine (250 ms and
    // more while the suite runs), so this is what makes many epochs.
    opts.rate = Some(600);
    opts.malformed_every = Some(50);
    produce(&opts, std::future::pending()).await.unwrap();
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    // Compaction runs after commits: once the last epoch landed, the last round finishes.
    let policy = exactly::maintenance::compaction::Policy { target_bytes: 128 << 20, min_files: 3, parquet: Default::default() };
    let bound = (policy.min_files - 1) * (policy.tier(4 << 20) as usize + 1);
    let epochs = common::txn_versions(&table, &config.id).await.len();
    assert!(epochs > bound + 5, "{epochs} epochs: too few for the bound of {bound} files to show compaction");
    for t in [&table, &dead] {
        common::wait_until(Duration::from_secs(30), &format!("{} compacted to {bound} files", t.display()), || async {
            live_files(t).await <= bound
        })
        .await;
    }
    // Progress reports the data table's files and compactions.
    let mut compacted = 0;
    loop {
        match progress.try_recv() {
            Ok(p) => {
                assert!(p.table_files.is_some(), "a Delta sink reports its table's files");
                compacted = compacted.max(p.files_compacted.unwrap_or(0));
            }
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    assert!(compacted > 0, "progress counts compacted files");
    pipeline.shutdown().await.unwrap();
    for t in [&table, &dead] {
        let compactions = common::commits_of(t, "OPTIMIZE").await;
        assert!(!compactions.is_empty(), "{}: no compaction", t.display());
        for c in &compactions {
            assert_no_data_change(c);
        }
        assert!(t.join("_delta_log/_last_checkpoint").exists(), "{}: no Delta checkpoint", t.display());
        // Checkpoints are thinned: of this run's (one every 10 commits) the first and the two
        // newest remain, and every version is still readable by another reader.
        let version = common::log(t).await.last().unwrap().0;
        let checkpoints = checkpoint_versions(t);
        if t == &table {
            assert!(version >= 40, "{}: {version} versions, too few to thin", t.display());
            assert_eq!(checkpoints.len(), 3, "{}: checkpoints {checkpoints:?}", t.display());
        }
        assert!(checkpoints.len() <= 3, "{}: checkpoints {checkpoints:?}", t.display());
        assert_every_version_readable(t, version);
    }
    let props =
        exactly::sink::delta::load_table(&table).await.unwrap().unwrap().snapshot().unwrap().metadata().configuration().clone();
    assert_eq!(props.get("delta.checkpointInterval").map(String::as_str), Some("10"));
    assert_eq!(props.get("delta.logRetentionDuration").map(String::as_str), Some("interval 7 days"));
    assert_eq!(props.get("delta.deletedFileRetentionDuration").map(String::as_str), Some("interval 7 days"));
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 6_000);

    // A changed retention reaches the table when the pipeline opens it again.
    let exactly::config::SinkConfig::Delta { log_retention, .. } = &mut config.sink else { unreachable!() };
    *log_retention = exactly::config::Retention::parse("30 days").unwrap();
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::produce_events(&topic, 6_000, 100).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    let props =
        exactly::sink::delta::load_table(&table).await.unwrap().unwrap().snapshot().unwrap().metadata().configuration().clone();
    assert_eq!(props.get("delta.logRetentionDuration").map(String::as_str), Some("interval 30 days"));
    common::assert_verified(&config).await;
}

/// Auto-compaction of files whose row groups are big copies the row groups as they are and
/// gives the merged file its inputs' statistics: every file a compaction added holds exactly the
/// rows, the offset and id bounds and the null count its statistics say; some hold the epochs'
/// row groups uncut (a rewrite would have packed them into 1,000-row groups); the audit is
/// clean and Python `deltalake` reads every row of every version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_copies_big_row_groups_and_merges_their_statistics() {
    use deltalake::arrow::array::AsArray;
    use deltalake::arrow::datatypes::Int64Type;
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let topic = common::topic("stitch", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 100;
    set_maintenance(&mut config, true, 3, 10);
    // Row groups of up to 1,000 rows: those of 125 rows and more are copied.
    let exactly::config::SinkConfig::Delta { parquet, .. } = &mut config.sink else { unreachable!() };
    parquet.row_group_rows = Some(1_000);
    let table = dir.path().join("table");
    let pipeline = common::start(&config, RunOptions::default()).await;
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 12_000);
    opts.rate = Some(3_000);
    produce(&opts, std::future::pending()).await.unwrap();
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();

    let (mut added, mut copied) = (0, 0);
    for commit in common::commits_of(&table, "OPTIMIZE").await {
        for action in commit {
            let deltalake::kernel::Action::Add(add) = action else { continue };
            added += 1;
            let file = std::fs::File::open(table.join(&add.path)).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            let groups = reader.metadata().num_row_groups();
            let (mut rows, mut nulls) = (0usize, 0usize);
            let (mut offsets, mut ids) = (Vec::new(), Vec::new());
            for b in reader.build().unwrap() {
                let b = b.unwrap();
                rows += b.num_rows();
                nulls += b.column_by_name("value").unwrap().null_count();
                offsets.extend(b.column_by_name("_kafka_offset").unwrap().as_primitive::<Int64Type>().values().iter().copied());
                ids.extend(b.column_by_name("id").unwrap().as_primitive::<Int64Type>().values().iter().copied());
            }
            let stats: serde_json::Value = serde_json::from_str(add.stats.as_deref().unwrap()).unwrap();
            let at = |kind: &str, col: &str| stats[kind][col].as_i64();
            assert_eq!(stats["numRecords"].as_u64(), Some(rows as u64), "{}", add.path);
            assert_eq!(at("nullCount", "value"), Some(nulls as i64), "{}", add.path);
            assert_eq!(at("minValues", "_kafka_offset"), offsets.iter().min().copied(), "{}", add.path);
            assert_eq!(at("maxValues", "_kafka_offset"), offsets.iter().max().copied(), "{}", add.path);
            assert_eq!(at("minValues", "id"), ids.iter().min().copied(), "{}", add.path);
            assert_eq!(at("maxValues", "id"), ids.iter().max().copied(), "{}", add.path);
            assert!(!add.data_change);
            if groups > rows.div_ceil(1_000) {
                copied += 1;
            }
        }
    }
    assert!(added > 0, "no compaction");
    assert!(copied > 0, "no compaction copied row groups ({added} files added)");
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 12_000);
    assert_every_version_readable(&table, common::log(&table).await.last().unwrap().0);
}

/// The versions of the Delta checkpoints in a table's log.
fn checkpoint_versions(table: &std::path::Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".checkpoint.parquet")?.parse().ok())
        .collect();
    v.sort();
    v
}

/// Python `deltalake` reads every version `0..=last` of the table (time travel), each with the
/// rows of the version before it or more.
fn assert_every_version_readable(table: &std::path::Path, last: u64) {
    let script = "import sys\nfrom deltalake import DeltaTable\nrows = -1\nfor v in range(int(sys.argv[2]) + 1):\n    n = DeltaTable(sys.argv[1], version=v).to_pyarrow_table().num_rows\n    assert n >= rows, (v, n, rows)\n    rows = n\nprint(rows)\nsys.stdout.flush()\nimport os; os._exit(0)\n";
    let out = std::process::Command::new(common::python())
        .args(["-c", script])
        .arg(table)
        .arg(last.to_string())
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run python (scripts/setup installs it)");
    assert!(out.status.success(), "{}: time travel failed: {}", table.display(), String::from_utf8_lossy(&out.stderr));
}

/// SIGKILL while auto-compaction has written its merged file but not committed it: nothing
/// live is lost (every row is read back from the current version), the merged file is only an
/// unreferenced file, and the next run goes on exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_auto_compaction_loses_nothing() {
    let topic = common::topic("killcompact", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 100;
    set_maintenance(&mut config, true, 2, 100);
    let table = dir.path().join("table");
    let path = common::write_config(&config, dir.path());
    let mut child = common::spawn(&path, Some("compaction-before-commit=abort"));
    // Epochs of 200 records, one after the other, until the second file makes the first
    // compaction due and the fail point aborts the process in it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("no compaction within 60 s ({sent} records sent)");
        }
        if sent < 2_000 && common::table_cut(&table, &config.id, &topic).await >= sent as i64 {
            common::produce_events(&topic, sent, 200).await;
            sent += 200;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "the fail point aborts the process");
    assert!(common::commits_of(&table, "OPTIMIZE").await.is_empty(), "the compaction never committed");
    let committed = row_count(&table).await;
    assert!(committed > 0);
    let audit = exactly::verify::verify(&config).await.unwrap();
    assert!(!audit.orphan_files.is_empty(), "the merged file was written");
    assert_eq!(audit.total(|p| p.duplicated), 0);

    let child = common::spawn(&path, None);
    for round in 0..3 {
        common::produce_events(&topic, sent + round * 200, 200).await;
        common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    }
    common::terminate(child).await;
    assert!(!common::commits_of(&table, "OPTIMIZE").await.is_empty(), "compaction runs after the restart");
    assert_eq!(row_count(&table).await as u64, sent + 600);
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), sent + 600);
}

/// With a short log retention, expired log entries are deleted after a checkpoint — version 0
/// included — and recovery and `verify` still find every partition's progress: they read it
/// from the latest Delta checkpoint, never by replaying the log from its first version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_and_verify_read_progress_from_the_checkpoint_after_log_cleanup() {
    let topic = common::topic("logclean", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 100;
    set_maintenance(&mut config, false, 10, 5);
    let exactly::config::SinkConfig::Delta { log_retention, .. } = &mut config.sink else { unreachable!() };
    *log_retention = exactly::config::Retention::parse("1 second").unwrap();
    let table = dir.path().join("table");
    let mut sent = 0;
    // Two runs of eight epochs each; the second run's first checkpoint cleans the log (a new
    // process cleans at its first checkpoint, then at most once an hour).
    for _run in 0..2 {
        let pipeline = common::start(&config, RunOptions::default()).await;
        for _ in 0..8 {
            common::produce_events(&topic, sent, 100).await;
            sent += 100;
            common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
        }
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        pipeline.shutdown().await.unwrap();
    }
    let pipeline = common::start(&config, RunOptions::default()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while table.join("_delta_log/00000000000000000000.json").exists() {
        assert!(std::time::Instant::now() < deadline, "version 0 of the log was never cleaned");
        common::produce_events(&topic, sent, 100).await;
        sent += 100;
        common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    }
    pipeline.shutdown().await.unwrap();
    // Recovery from the checkpointed log: the next run resumes after the last epoch.
    let pipeline = common::start(&config, RunOptions::default()).await;
    common::produce_events(&topic, sent, 100).await;
    sent += 100;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    assert_eq!(row_count(&table).await as u64, sent);
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), sent);
}

/// Two compactions planned from the same version merge the same files (two group members'
/// maintenance, or one and `exactly optimize`): the first commits, the second finds its inputs
/// gone and commits nothing. delta-rs alone would let both land, since it does not count a
/// `dataChange = false` remove as a conflict: every row would then be in the table twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_compactions_of_the_same_files_commit_once() {
    let topic = common::topic("compact-race", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    set_maintenance(&mut config, false, 3, 10);
    let table = dir.path().join("table");
    let pipeline = common::start(&config, RunOptions::default()).await;
    for i in 0..4 {
        common::produce_events(&topic, i * 100, 100).await;
        common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    }
    pipeline.shutdown().await.unwrap();
    let rows = row_count(&table).await;
    assert_eq!(rows, 400);

    use exactly::maintenance::compaction::{live_files as files_of, rewrite, Policy};
    let location = exactly::config::TableLocation::from(table.as_path());
    let policy = Policy { target_bytes: 128 << 20, min_files: 3, parquet: Default::default() };
    let mut first = exactly::sink::delta::load_table(&table).await.unwrap().unwrap();
    let mut second = exactly::sink::delta::load_table(&table).await.unwrap().unwrap();
    let group = policy.plan(&files_of(first.snapshot().unwrap())).into_iter().next().expect("files to merge");
    let failpoints = exactly::testing::failpoint::FailPoints::new();
    let done = rewrite(&mut first, &location, &group, &policy, &failpoints).await.unwrap();
    assert!(done.is_some(), "the first compaction commits");
    let again = rewrite(&mut second, &location, &group, &policy, &failpoints).await.unwrap();
    assert!(again.is_none(), "the second finds its inputs compacted and commits nothing");
    assert_eq!(row_count(&table).await, rows, "every row once");
    common::assert_verified(&config).await;
}
