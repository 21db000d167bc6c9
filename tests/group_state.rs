//! Stateful group mode (`state.scope = "partition"`): dedup and counts while several processes
//! share a keyed topic's partitions, each partition's state moving with it — rebuilt from the
//! data table by a member that takes it on a fresh disk. Checked on the data: the audit per
//! partition (every id once, every count right), the log's fencing record, Python's reader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use exactly::config::{DedupConfig, PipelineConfig, StateScope};
use exactly::source::producer::{produce, ProduceOptions};
use rand::Rng;

use crate::common::{self, spawn, terminate, wait_exit, write_config};
use crate::group::{assert_fenced, member_commits, signal, Group, SESSION_MS};

/// What the pipeline keeps per partition.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Event-time dedup by id (an hour's lateness: nothing is late, nothing expires).
    Dedup,
    /// Update-mode count and sum of ids per value.
    Counts,
}

fn keyed(config: &mut PipelineConfig, kind: Kind) {
    config.state.scope = StateScope::Partition;
    match kind {
        Kind::Dedup => config.dedup = Some(DedupConfig::by_watermark(&["id"], "ts", 3_600_000)),
        Kind::Counts => config.aggregate = Some(crate::kit::counts_by_value()),
    }
}

/// A member's config file: the group's config with a checkpoint directory of its own (its disk,
/// `root/member-<n>`).
fn member_file(config: &PipelineConfig, root: &Path, n: usize) -> PathBuf {
    let dir = root.join(format!("member-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = config.clone();
    c.checkpoint.dir = Some(dir.join("checkpoint"));
    write_config(&c, &dir)
}

/// One member reads 5,000 events; then 15,000 more arrive over ~25 s (the first 2,500 ids of
/// them again, every 10th event re-sent, every 101st record malformed) while two more members
/// on fresh disks join and take partitions — rebuilding their state from the table — and eight
/// times either a random member is SIGKILLed and replaced by one on a fresh disk, or one is
/// stopped past the session timeout (a zombie: its partitions move, it is fenced when it
/// wakes) and resumed. The audit per partition stays exact: every id once, every count right.
async fn churn(kind: Kind) {
    let _heavy = common::heavy().await;
    let Group { topic, dir, mut config, table, .. } = Group::new(&format!("gstate-{kind:?}").to_lowercase(), 6).await;
    keyed(&mut config, kind);
    let mut started = 0;
    let mut member = |config: &PipelineConfig| {
        started += 1;
        spawn(&member_file(config, dir.path(), started), None)
    };
    common::produce_events(&topic, 0, 5_000).await;
    let mut members = vec![member(&config)];
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;

    let later = 15_000;
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, later);
    opts.first_id = 2_500;
    opts.rate = Some(600);
    opts.duplicate_every = Some(10);
    opts.malformed_every = Some(101);
    let producer = tokio::spawn(async move { produce(&opts, std::future::pending()).await.unwrap() });
    members.push(member(&config));
    members.push(member(&config));
    let mut rng = common::seeded_rng(&format!("stateful group churn {kind:?}"));
    for round in 1..=8 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2_500))).await;
        let at = rng.random_range(0..members.len());
        if round % 4 == 0 {
            signal(&members[at], "STOP");
            tokio::time::sleep(Duration::from_millis(SESSION_MS + 2_000)).await;
            signal(&members[at], "CONT");
        } else {
            let mut victim = members.swap_remove(at);
            victim.kill().unwrap();
            victim.wait().unwrap();
            members.push(member(&config));
        }
    }
    producer.await.unwrap();
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(180)).await;
    for m in members {
        terminate(m).await;
    }

    let audit = common::assert_verified(&config).await;
    let keys = audit.keys.as_ref().expect("a key audit");
    assert_eq!((keys.missing, keys.duplicated, keys.mismatched), (0, 0, 0), "{}", audit.render());
    assert_eq!(audit.total(|p| p.dead_lettered), later / 101);
    let per_member = assert_fenced(&table).await;
    assert!(per_member.len() >= 3, "several members committed: {per_member:?}");
    // A row per id (dedup), per value in each partition that holds it (counts).
    assert_eq!(common::read_with_python(&table)["rows"].as_u64().unwrap(), keys.found);
    if let Kind::Dedup = kind {
        assert_eq!(keys.found, keys.expected);
        assert!(keys.expected < audit.total(|p| p.expected), "the topic holds duplicates the table does not");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_by_a_keyed_id_stays_exact_under_churn_with_fresh_disks() {
    churn(Kind::Dedup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_under_churn_with_fresh_disks() {
    churn(Kind::Counts).await;
}

/// A member dies between the data table's commit and the dead-letter table's, on a range whose
/// records are too late for the partition's watermark: the next member (on a fresh disk) reads
/// the range again, cut where the data table's record is, against the state rebuilt from the
/// rows before it — so the late records are dead-lettered again, and none is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_data_and_dead_letter_commits_replays_the_range_against_its_state() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let Group { topic, dir, mut config, table, .. } = Group::new("gstate-dead", 2).await;
    keyed(&mut config, Kind::Dedup);
    config.dedup.as_mut().unwrap().allowed_lateness_ms = 60_000;
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 1_000);
    opts.malformed_every = Some(50);
    produce(&opts, std::future::pending()).await.unwrap();
    let first = spawn(&member_file(&config, dir.path(), 1), None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(first).await;

    // An hour old: too late once the watermark stands a minute behind the newest event.
    let hour_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 3_600_000;
    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    for id in 5_000..5_100 {
        let v = exactly::source::producer::event_json(id, 10, hour_ago);
        let k = id.to_string();
        producer.send(FutureRecord::to(&topic).key(&k).payload(&v), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
    let before = member_commits(&table).await.len();
    let child = spawn(&member_file(&config, dir.path(), 2), Some("after-delta-commit=abort"));
    let (status, _) = wait_exit(child, Duration::from_secs(60), "aborts after the data commit").await;
    assert!(!status.success());
    assert!(member_commits(&table).await.len() > before, "the data table holds the late records' range");
    let dead_rows =
        || async { common::read_rows(&dir.path().join("table_dead_letters")).await.iter().map(|b| b.num_rows()).sum::<usize>() };
    assert_eq!(dead_rows().await, 20, "only the malformed records' dead letters are committed");

    // More records behind the range: it must still be cut where the data table's record is.
    common::produce_events(&topic, 10_000, 100).await;
    // The next member starts on a fresh disk: the state is rebuilt from the data table.
    let child = spawn(&member_file(&config, dir.path(), 3), None);
    common::wait_until(Duration::from_secs(60), "the late records dead-lettered", || async { dead_rows().await >= 120 }).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(child).await;
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.dead_lettered), 120, "{}", audit.render());
    assert_eq!(audit.total(|p| p.rows), 1_080);
    let keys = audit.keys.as_ref().expect("a key audit");
    assert_eq!((keys.missing, keys.duplicated), (0, 0), "{}", audit.render());
}
