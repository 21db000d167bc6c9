//! Group mode: several `exactly run` processes share a pipeline's partitions through a Kafka
//! consumer group and write one table. Checked on the data: the audit, an independent reader,
//! and the Delta log's own record of who claimed and committed each partition.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use exactly::config::{FieldConfig, FieldType, PipelineConfig};
use exactly::source::producer::{produce, ProduceOptions};
use exactly::verify::MemberCommit;
use rand::Rng;

use crate::common::{self, spawn, terminate, wait_exit, write_config};

/// The session timeout the tests' members run with (Kafka's smallest by default).
pub const SESSION_MS: u64 = 6_000;

/// A group-mode config writing to `dir/table`: every process started with it joins one group.
pub fn group_config(id: &str, topic: &str, dir: &Path) -> PipelineConfig {
    let mut c = common::delta_config(id, topic, dir);
    c.source.group_id = Some(format!("{id}-group"));
    c.source.properties.insert("session.timeout.ms".into(), SESSION_MS.to_string());
    c
}

/// A fresh topic and a group's config writing to a table in a temp dir.
pub struct Group {
    /// The topic.
    pub topic: String,
    /// Where the table and the config live.
    pub dir: tempfile::TempDir,
    /// The group's config.
    pub config: PipelineConfig,
    /// The config as a file, for `exactly run`.
    pub file: std::path::PathBuf,
    /// The data table.
    pub table: std::path::PathBuf,
}

impl Group {
    /// A topic named after `prefix` with `partitions` partitions, and its group's config.
    pub async fn new(prefix: &str, partitions: i32) -> Group {
        let topic = common::topic(prefix, partitions).await;
        let dir = tempfile::tempdir().unwrap();
        let config = group_config(&common::unique("g"), &topic, dir.path());
        let file = write_config(&config, dir.path());
        let table = dir.path().join("table");
        Group { topic, dir, config, file, table }
    }
}

/// Every commit of the data table at `table` written by a group member, oldest first.
pub async fn member_commits(table: &Path) -> Vec<MemberCommit> {
    match exactly::sink::delta::load_table(table).await.unwrap() {
        Some(t) => exactly::verify::member_commits(&t).await.unwrap(),
        None => Vec::new(),
    }
}

/// The fencing rule, checked on the log (as `exactly verify` checks it): every data commit of a
/// partition comes from the member that claimed it last, so a member that lost a partition
/// never committed it again. Returns the data commits per member.
pub async fn assert_fenced(table: &Path) -> BTreeMap<String, u64> {
    let (members, broken) = exactly::verify::check_fencing(&member_commits(table).await);
    assert!(broken.is_empty(), "commits by fenced members:\n{}", broken.join("\n"));
    members
}

/// The name a member started as `child` commits under.
fn member_of(child: &Child) -> String {
    exactly::source::group::member_name_for(child.id())
}

/// Sends `sig` (`STOP`, `CONT`, ...) to `child`.
pub fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap().success());
}

async fn wait_for_data_commit(table: &Path, member: &str) {
    common::wait_until(Duration::from_secs(60), &format!("a data commit by {member}"), || async {
        member_commits(table).await.iter().any(|c| c.member == member && c.ranges.iter().any(|r| r.3 > 0))
    })
    .await;
}

fn producing(topic: &str, count: u64, rate: u64, malformed_every: u64) -> tokio::task::JoinHandle<()> {
    let mut opts = ProduceOptions::new(&common::brokers(), topic, count);
    opts.rate = Some(rate);
    opts.malformed_every = Some(malformed_every);
    tokio::spawn(async move {
        produce(&opts, std::future::pending()).await.unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_under_churn_write_every_offset_exactly_once() {
    let _heavy = common::heavy().await;
    let Group { topic, dir: _dir, config, file, table } = Group::new("group-churn", 6).await;
    let total = 40_000;
    let producer = producing(&topic, total, 1_000, 101);

    // Three members; 20 times a random one is SIGKILLed at a random moment and replaced; a
    // member is added every 7th kill and one leaves gracefully every 9th.
    let mut rng = common::seeded_rng("group churn");
    let mut members: Vec<Child> = (0..3).map(|_| spawn(&file, None)).collect();
    for kill in 1..=20 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_000))).await;
        let mut victim = members.swap_remove(rng.random_range(0..members.len()));
        victim.kill().unwrap();
        victim.wait().unwrap();
        members.push(spawn(&file, None));
        if kill % 7 == 0 {
            members.push(spawn(&file, None));
        }
        if kill % 9 == 0 && members.len() > 2 {
            terminate(members.remove(0)).await;
        }
    }
    producer.await.unwrap();
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(180)).await;
    for m in members {
        terminate(m).await;
    }

    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), total);
    assert_eq!(audit.total(|p| p.dead_lettered), total / 101);
    assert_eq!(common::read_with_python(&table)["rows"].as_u64().unwrap(), audit.total(|p| p.rows));
    let per_member = assert_fenced(&table).await;
    assert!(per_member.len() >= 3, "several members committed: {per_member:?}");
}

/// Group mode with `source.topic_pattern`: librdkafka matches the pattern as the config check
/// does (whole names), the members share the matching topics' partitions, and a matching topic
/// created while they run joins the assignment and is read from its earliest offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_reading_a_topic_pattern_share_the_matching_topics_and_those_created_later() {
    let _heavy = common::heavy().await;
    let Group { topic, dir, mut config, table, .. } = Group::new("group-pattern", 2).await;
    let create = |name: String, partitions: i32| async move {
        assert!(exactly::source::create_topic(&common::kafka(), &name, partitions, 1).await.unwrap());
        name
    };
    let skipped = create(format!("{topic}-skip-1"), 1).await;
    config.source.topics = Vec::new();
    let pattern = format!("{}(-[a-z]+)?", regex::escape(&topic));
    config.source.topic_pattern = Some(exactly::config::TopicPattern::new(&pattern).unwrap());
    config.source.partition_discovery_ms = 1_000;
    let file = write_config(&config, dir.path());
    common::produce_events(&topic, 0, 1_000).await;
    common::produce_events(&skipped, 9_000, 500).await;
    let members = [spawn(&file, None), spawn(&file, None)];
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(90)).await;

    let later = create(format!("{topic}-later"), 2).await;
    common::produce_events(&later, 1_000, 2_000).await;
    common::wait_table_drained(&table, &config.id, &later, Duration::from_secs(90)).await;
    for m in members {
        terminate(m).await;
    }
    let audit = common::assert_verified(&config).await;
    let topics: std::collections::BTreeSet<String> =
        audit.partitions.iter().filter_map(|p| p.tp.as_ref().map(|tp| tp.topic.to_string())).collect();
    assert_eq!(topics, [topic, later].into_iter().collect(), "the matching topics, not {skipped}");
    assert_eq!(audit.total(|p| p.rows), 3_000);
    assert_fenced(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_member_never_commits_a_partition_it_lost() {
    let _heavy = common::heavy().await;
    let Group { topic, dir: _dir, config, file, table } = Group::new("group-pause", 4).await;
    let total = 30_000;
    let producer = producing(&topic, total, 1_500, 97);

    let a = spawn(&file, None);
    wait_for_data_commit(&table, &member_of(&a)).await;
    let b = spawn(&file, None);
    wait_for_data_commit(&table, &member_of(&b)).await;
    // A stops past the session timeout (a GC pause, a network split): the group gives its
    // partitions to B, which claims them. Then A resumes, its open epoch still in hand.
    let paused_at = member_commits(&table).await.last().unwrap().version;
    signal(&a, "STOP");
    tokio::time::sleep(Duration::from_millis(SESSION_MS)).await;
    let b_name = member_of(&b);
    common::wait_until(Duration::from_secs(60), "B claims the paused member's partitions", || async {
        member_commits(&table).await.iter().any(|c| c.version > paused_at && c.member == b_name && !c.claim.is_empty())
    })
    .await;
    signal(&a, "CONT");
    producer.await.unwrap();
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(120)).await;
    terminate(a).await;
    terminate(b).await;

    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), total);
    assert_eq!(audit.total(|p| p.duplicated), 0);
    assert_fenced(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_data_and_dead_letter_commits_loses_no_dead_letter() {
    let Group { topic, dir, config, file, table } = Group::new("group-dead", 2).await;
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 2_000);
    opts.malformed_every = Some(10);
    produce(&opts, std::future::pending()).await.unwrap();

    // The process dies right after the data table's first commit, before its dead letters are
    // committed to the dead-letter table.
    let child = spawn(&file, Some("after-delta-commit=abort"));
    let (status, _) = wait_exit(child, Duration::from_secs(60), "aborts after the data commit").await;
    assert!(!status.success());
    let committed: u64 = member_commits(&table).await.iter().flat_map(|c| c.ranges.iter().map(|r| r.3)).sum();
    assert!(committed > 0, "the data table holds the epoch");
    assert!(!dir.path().join("table_dead_letters/_delta_log").exists(), "the dead letters were not committed");

    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    common::wait_until(Duration::from_secs(30), "dead letters committed", || async {
        common::read_rows(&dir.path().join("table_dead_letters")).await.iter().map(|b| b.num_rows()).sum::<usize>() >= 200
    })
    .await;
    terminate(child).await;
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.dead_lettered), 200);
    assert_eq!(audit.total(|p| p.rows), 1_800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_schema_or_one_process_mode_is_refused_on_a_group_table() {
    let Group { topic, dir: _dir, config, file, table } = Group::new("group-refuse", 4).await;
    common::produce_events(&topic, 0, 2_000).await;
    let a = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;

    // The same pipeline and group with another schema: refused when it opens the table, and it
    // writes nothing.
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = config.clone();
    other.decode.fields.push(FieldConfig { name: "extra".into(), kind: FieldType::Long, nullable: true });
    let b = spawn(&write_config(&other, other_dir.path()), None);
    let b_name = member_of(&b);
    let (status, stderr) = wait_exit(b, Duration::from_secs(60), "the member with another schema stops").await;
    assert!(!status.success());
    assert!(stderr.contains("columns"), "one line naming the schema difference: {stderr}");
    assert!(member_commits(&table).await.iter().all(|c| c.member != b_name), "the refused member wrote nothing");

    // The same pipeline as one process (no group_id) on the group's table: refused, since its
    // checkpoint cannot know where the group left each partition.
    let single_dir = tempfile::tempdir().unwrap();
    let mut single = config.clone();
    single.source.group_id = None;
    single.checkpoint.dir = Some(single_dir.path().join("checkpoint"));
    let s = spawn(&write_config(&single, single_dir.path()), None);
    let (status, stderr) = wait_exit(s, Duration::from_secs(60), "the one-process run stops").await;
    assert!(!status.success());
    assert!(stderr.contains("group mode"), "one line saying the table was written in group mode: {stderr}");

    // The group goes on, exactly once.
    common::produce_events(&topic, 2_000, 1_000).await;
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(a).await;
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 3_000);
    assert_fenced(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_is_refused_by_a_group() {
    let Group { topic, dir: _dir, config, file, table } = Group::new("group-recreated", 2).await;
    common::produce_events(&topic, 0, 200).await;
    let a = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    terminate(a).await;
    let rows = common::read_rows(&table).await.iter().map(|b| b.num_rows()).sum::<usize>();

    // Recreated with more records than the table's positions: reading on at them would "work"
    // and skip the new topic's first records. The members keep no checkpoint; the table holds
    // the topic's id.
    common::recreate_topic(&topic, 2).await;
    common::produce_events(&topic, 1_000, 600).await;
    let b = spawn(&file, None);
    let (status, stderr) = wait_exit(b, Duration::from_secs(60), "the member refuses the recreated topic").await;
    assert!(!status.success());
    assert!(stderr.contains(&format!("topic '{topic}' was deleted and created again")), "{stderr}");
    assert_eq!(common::read_rows(&table).await.iter().map(|b| b.num_rows()).sum::<usize>(), rows, "nothing written");
}

/// The conflict check itself: member A has read the table and its token and written its file,
/// and pauses just before its commit; member B claims the partition meanwhile. A's commit must
/// not land on top of B's claim — Delta's conflict check on the partition's claim `txn` refuses
/// it, and A, reading the table again, finds itself fenced. B then commits the range once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_racing_a_newer_claim_is_refused_by_the_conflict_check() {
    use exactly::model::{Offsets, TopicPartition};
    use exactly::testing::failpoint::{FailAction, FailPoints};
    let dir = tempfile::tempdir().unwrap();
    let topic = common::unique("race");
    let config = group_config(&common::unique("g"), &topic, dir.path());
    let table = dir.path().join("table");
    let paused = std::sync::Arc::new(FailPoints::new());
    let a = exactly::pipeline::sink_for(&config, paused.clone()).unwrap();
    let b = exactly::pipeline::sink_for(&config, std::sync::Arc::new(FailPoints::new())).unwrap();
    let tp = TopicPartition::new(&topic, 0);
    let from: Offsets = [(tp.clone(), 0)].into_iter().collect();
    assert_eq!(a.group_claim(std::slice::from_ref(&tp), &exactly::sink::Unrecorded::same(from.clone())).await.unwrap(), from);

    let batch = epoch_of_three(&config, &tp);
    paused.arm("before-delta-commit", FailAction::Sleep(Duration::from_secs(2)), Some(1));
    let (a2, batch2) = (a.clone(), batch.clone());
    let racing = tokio::spawn(async move { a2.commit(&batch2).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        b.group_claim(std::slice::from_ref(&tp), &exactly::sink::Unrecorded::same(from.clone())).await.unwrap(),
        from,
        "B resumes where the table says"
    );
    let err = racing.await.unwrap().expect_err("A's commit is refused");
    assert!(matches!(err, exactly::Error::Fenced { .. }), "{err}");
    let rows = || async { common::read_rows(&table).await.iter().map(|b| b.num_rows()).sum::<usize>() };
    assert_eq!(rows().await, 0, "nothing of A's epoch is in the table");

    b.commit(&batch).await.unwrap();
    assert_eq!(rows().await, 3);
    assert!(matches!(a.commit(&batch).await, Err(exactly::Error::Fenced { .. })), "A stays fenced");
    assert_eq!(rows().await, 3);
}

/// Epoch 1 of three seed records of `tp` (offsets 0-2), decoded as `config` decodes them.
fn epoch_of_three(config: &exactly::PipelineConfig, tp: &exactly::model::TopicPartition) -> exactly::sink::EpochBatch {
    use exactly::model::{PartitionRange, Record};
    use exactly::sink::EpochBatch;
    let records: Vec<Record> = (0..3)
        .map(|i| Record {
            tp: tp.clone(),
            offset: i,
            timestamp_ms: Some(0),
            key: None,
            payload: Some(format!(r#"{{"id":{i},"value":"v","ts":0}}"#).into_bytes()),
            headers: Vec::new(),
        })
        .collect();
    let decoded = exactly::plan::Plan::new(config).unwrap().decoder.decode(&records);
    EpochBatch {
        epoch: 1,
        ranges: vec![PartitionRange { tp: tp.clone(), start: 0, end: 3, records: 3 }],
        output: exactly::state::Output::Append(vec![decoded.rows]),
        dead_letters: decoded.dead,
        min_timestamp_ms: None,
        state: Default::default(),
        partition_state: Default::default(),
        skipped: Vec::new(),
        duplicates: 0,
        superseded: 0,
        filtered: 0,
        state_time: Default::default(),
    }
}

/// A member's commit (or claim) that loses to a metadata change — another member recording the
/// topic's id as a table property when it starts — reads the table again and commits; it used to
/// fail, and a member whose claim failed so stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_racing_a_metadata_change_commits_after_reading_again() {
    use exactly::model::{Offsets, TopicPartition};
    use exactly::testing::failpoint::{FailAction, FailPoints};
    let dir = tempfile::tempdir().unwrap();
    let topic = common::unique("meta-race");
    let config = group_config(&common::unique("g"), &topic, dir.path());
    let table = dir.path().join("table");
    let paused = std::sync::Arc::new(FailPoints::new());
    let a = exactly::pipeline::sink_for(&config, paused.clone()).unwrap();
    let tp = TopicPartition::new(&topic, 0);
    let from: Offsets = [(tp.clone(), 0)].into_iter().collect();
    assert_eq!(a.group_claim(std::slice::from_ref(&tp), &exactly::sink::Unrecorded::same(from.clone())).await.unwrap(), from);
    let batch = epoch_of_three(&config, &tp);
    paused.arm("before-delta-commit", FailAction::Sleep(Duration::from_secs(2)), Some(1));
    let (a2, batch2) = (a.clone(), batch.clone());
    let racing = tokio::spawn(async move { a2.commit(&batch2).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = exactly::sink::delta::load_table(&table).await.unwrap().unwrap();
    t.set_tbl_properties()
        .with_properties([("exactly.topicId.other".to_string(), "x".to_string())].into_iter().collect())
        .with_raise_if_not_exists(false)
        .await
        .unwrap();
    racing.await.unwrap().expect("A's commit lands after reading the table again");
    let rows: usize = common::read_rows(&table).await.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 3);
}

/// A member's commit that loses to a commit of its own — the put of a committer torn down
/// (stop timeout, rebalance) that lands after the member read the table — decides again from
/// the offsets the table records now: only the rows past them are written. (The retry re-checked
/// the claims and reused its stale cut: the rows of the earlier commit twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_retried_after_its_own_member_committed_writes_only_what_is_missing() {
    use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
    use deltalake::kernel::{Action, Transaction};
    use deltalake::writer::DeltaWriter;
    use exactly::model::{Offsets, TopicPartition};
    use exactly::sink::delta::{owner_app_id, partition_app_id, txn_version};
    use exactly::testing::failpoint::{FailAction, FailPoints};
    let dir = tempfile::tempdir().unwrap();
    let topic = common::unique("own-race");
    let config = group_config(&common::unique("g"), &topic, dir.path());
    let table = dir.path().join("table");
    let location: exactly::config::TableLocation = table.as_path().into();
    let paused = std::sync::Arc::new(FailPoints::new());
    let a = exactly::pipeline::sink_for(&config, paused.clone()).unwrap();
    let tp = TopicPartition::new(&topic, 0);
    let from: Offsets = [(tp.clone(), 0)].into_iter().collect();
    a.group_claim(std::slice::from_ref(&tp), &exactly::sink::Unrecorded::same(from)).await.unwrap();
    let batch = epoch_of_three(&config, &tp);
    paused.arm("before-delta-commit", FailAction::Sleep(Duration::from_secs(2)), Some(1));
    let (a2, batch2) = (a.clone(), batch.clone());
    let racing = tokio::spawn(async move { a2.commit(&batch2).await });
    tokio::time::sleep(Duration::from_millis(700)).await;

    // The earlier put lands now: offsets 0-1 under the member's own claim.
    let mut t = exactly::sink::delta::load_table(location.clone()).await.unwrap().unwrap();
    let token = txn_version(&t, &location, &owner_app_id(&config.id, &tp)).await.unwrap().unwrap();
    let exactly::state::Output::Append(rows) = &batch.output else { unreachable!() };
    let early = exactly::decode::with_epoch(&rows[0].slice(0, 2), 1).unwrap();
    let mut writer = deltalake::writer::RecordBatchWriter::for_table(&t).unwrap();
    writer.write(early).await.unwrap();
    let adds = writer.flush().await.unwrap();
    let txns =
        vec![Transaction::new(partition_app_id(&config.id, &tp), 2), Transaction::new(owner_app_id(&config.id, &tp), token)];
    let operation = deltalake::protocol::DeltaOperation::Write {
        mode: deltalake::protocol::SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    CommitBuilder::from(CommitProperties::default().with_application_transactions(txns))
        .with_actions(adds.into_iter().map(Action::Add).collect())
        .build(Some(t.snapshot().unwrap()), t.log_store(), operation)
        .await
        .unwrap();
    t.update_incremental(None).await.unwrap();

    racing.await.unwrap().expect("A's commit lands after deciding again");
    let mut offsets: Vec<i64> = common::rows(&common::read_rows(&table).await).into_iter().map(|(_, o, _)| o).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 1, 2], "each record once");
}

/// `sink.outputs` in group mode: three members under churn, some of them dying right after
/// their first data commit (before the outputs'); every table holds each of its rows once,
/// checked by the audit against the topic, and a row an output's expression fails on is a dead
/// letter, in no table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_under_churn_hold_every_row_once() {
    let _heavy = common::heavy().await;
    let Group { topic, dir, mut config, file: _, table } = Group::new("group-outputs", 4).await;
    let output = |name: &str, filter: &str, select: &[&str]| exactly::config::OutputConfig {
        name: name.into(),
        path: dir.path().join(name).into(),
        select: Some(select.iter().map(|s| s.to_string()).collect()),
        filter: Some(filter.into()),
        partition_by: Vec::new(),
    };
    if let exactly::config::SinkConfig::Delta { outputs, .. } = &mut config.sink {
        *outputs = vec![
            output("sevens", "id % 7 = 0", &["id", "upper(value) AS value"]),
            output("inverse", "id % 5 = 0", &["id", "1000 / (id % 1000 - 500) AS inv"]),
        ];
    }
    let file = write_config(&config, dir.path());
    let total = 20_000;
    let producer = producing(&topic, total, 1_000, 101);

    let mut rng = common::seeded_rng("group outputs");
    // (member, whether it dies after its first data commit)
    let mut members: Vec<(Child, bool)> = (0..3).map(|_| (spawn(&file, None), false)).collect();
    for kill in 1..=10 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_000))).await;
        let (mut victim, _) = members.swap_remove(rng.random_range(0..members.len()));
        victim.kill().unwrap();
        victim.wait().unwrap();
        // Every third replacement dies after its first data commit, before the outputs get it.
        let dies = kill % 3 == 0;
        members.push((spawn(&file, dies.then_some("after-delta-commit=abort")), dies));
    }
    members.push((spawn(&file, None), false));
    producer.await.unwrap();
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(180)).await;
    common::wait_until(Duration::from_secs(60), "the outputs hold every epoch", || async {
        exactly::verify::verify(&config).await.unwrap().ok()
    })
    .await;
    for (mut m, dies) in members {
        if dies {
            m.kill().unwrap();
            m.wait().unwrap();
        } else {
            terminate(m).await;
        }
    }

    let audit = common::assert_verified(&config).await;
    let events = total - total / 101;
    let failing = (0..events).filter(|id| id % 1000 == 500).count() as u64;
    assert_eq!(audit.total(|p| p.expected), total);
    assert_eq!(audit.total(|p| p.dead_lettered), total / 101 + failing);
    assert_eq!(audit.total(|p| p.rows), events - failing);
    let outputs: Vec<(String, u64, u64, u64)> = audit
        .outputs
        .iter()
        .map(|o| (o.name.clone(), o.total(|p| p.rows), o.total(|p| p.expected), o.total(|p| p.duplicated)))
        .collect();
    let sevens = (0..events).filter(|id| id % 7 == 0 && id % 1000 != 500).count() as u64;
    let fives = (0..events).filter(|id| id % 5 == 0 && id % 1000 != 500).count() as u64;
    assert_eq!(outputs, [("sevens".into(), sevens, sevens, 0), ("inverse".into(), fives, fives, 0)]);
    assert_eq!(common::read_with_python(&dir.path().join("sevens"))["rows"].as_u64().unwrap(), sevens);
    assert_fenced(&table).await;
}

/// A member dying between the data table's commit and an output's: the output records less
/// than the data table, and the partition resumes at the output's record — the data table
/// keeps none of the rows read again, the output gets what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_data_and_output_commits_loses_no_output_row() {
    let Group { topic, dir, mut config, file: _, table } = Group::new("group-output-crash", 2).await;
    if let exactly::config::SinkConfig::Delta { outputs, .. } = &mut config.sink {
        outputs.push(exactly::config::OutputConfig {
            name: "evens".into(),
            path: dir.path().join("evens").into(),
            select: Some(vec!["id".into()]),
            filter: Some("id % 2 = 0".into()),
            partition_by: Vec::new(),
        });
    }
    let file = write_config(&config, dir.path());
    common::produce_events(&topic, 0, 2_000).await;

    let child = spawn(&file, Some("after-delta-commit=abort"));
    let (status, _) = wait_exit(child, Duration::from_secs(60), "aborts after the data commit").await;
    assert!(!status.success());
    let committed: u64 = member_commits(&table).await.iter().flat_map(|c| c.ranges.iter().map(|r| r.3)).sum();
    assert!(committed > 0, "the data table holds the epoch");
    // The audit sees the output behind the data table.
    let behind = exactly::verify::verify(&config).await.unwrap();
    assert!(!behind.ok() && behind.outputs[0].total(|p| p.missing) > 0, "{}", behind.render());

    let child = spawn(&file, None);
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    common::wait_until(Duration::from_secs(30), "the output holds every even id", || async {
        common::read_rows(&dir.path().join("evens")).await.iter().map(|b| b.num_rows()).sum::<usize>() >= 1_000
    })
    .await;
    terminate(child).await;
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 2_000);
    assert_eq!((audit.outputs[0].total(|p| p.rows), audit.outputs[0].total(|p| p.duplicated)), (1_000, 0));
}

/// Schema evolution in group mode, through the table: a rolling restart gives the members a
/// config with one more column. The first member restarted grows the table's schema in its
/// commit; a member still on the old config is refused at its next commit (one line naming the
/// column, a non-zero exit: its partitions go to the others) rather than writing rows without
/// it; restarted on the new config it goes on. Each partition records the first offset written
/// with the column, and the audit compares the rows before it without the column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_adds_a_column_the_members_agree_on_through_the_table() {
    use exactly::config::SchemaEvolution;
    let _heavy = common::heavy().await;
    let Group { topic, dir, mut config, file: _, table } = Group::new("group-evolve", 4).await;
    if let exactly::config::SinkConfig::Delta { schema_evolution, .. } = &mut config.sink {
        *schema_evolution = SchemaEvolution::AddColumns;
    }
    let mut old = config.clone();
    old.decode.fields.retain(|f| f.name != "ts");
    let (old_dir, new_dir) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let (old_file, new_file) = (write_config(&old, &old_dir), write_config(&config, &new_dir));
    let total = 12_000;
    let producer = producing(&topic, total, 1_000, 97);

    let a = spawn(&old_file, None);
    let b = spawn(&old_file, None);
    wait_for_data_commit(&table, &member_of(&a)).await;
    wait_for_data_commit(&table, &member_of(&b)).await;
    let has_ts = || async {
        let t = exactly::sink::delta::load_table(&table).await.unwrap().unwrap();
        t.snapshot().unwrap().schema().fields().any(|f| f.name() == "ts")
    };
    assert!(!has_ts().await);

    // A restarts on the new config: its commits grow the table.
    terminate(a).await;
    let a = spawn(&new_file, None);
    common::wait_until(Duration::from_secs(60), "the table takes `ts`", || async { has_ts().await }).await;
    // B, still on the old config, is refused at its next commit and stops.
    let b_name = member_of(&b);
    let (status, stderr) = wait_exit(b, Duration::from_secs(120), "the member on the old config stops").await;
    assert!(!status.success());
    assert!(stderr.contains("`ts`") && stderr.contains("group mode"), "one line naming the column: {stderr}");
    // Restarted on the new config, B goes on.
    let b = spawn(&new_file, None);
    producer.await.unwrap();
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(120)).await;
    terminate(a).await;
    terminate(b).await;

    // Every partition records where its rows begin to carry `ts`; none of B's old-config
    // commits came after the growth.
    let t = exactly::sink::delta::load_table(&table).await.unwrap().unwrap();
    let snapshot = t.snapshot().unwrap();
    let at = snapshot.metadata().configuration().get("exactly.addedAt.ts").cloned().expect("exactly.addedAt.ts");
    let Some(exactly::sink::schema::AddedAt::Offsets(starts)) = exactly::sink::schema::AddedAt::parse(&at) else {
        panic!("offsets per partition: {at}")
    };
    assert_eq!(starts.len(), 4, "{at}");
    let growth = common::log(&table)
        .await
        .into_iter()
        .find(|(_, actions)| {
            actions.iter().any(|a| matches!(a, deltalake::kernel::Action::Metadata(m) if m.schema_string().contains("\"ts\"")))
        })
        .map(|(v, _)| v)
        .unwrap();
    assert!(
        member_commits(&table).await.iter().all(|c| c.member != b_name || c.version < growth as i64),
        "the member on the old config wrote nothing after the growth"
    );
    // Rows past each partition's start have their `ts`, rows before it none.
    let read = common::read_rows_with_python(&table);
    let rows = read["records"].as_array().unwrap();
    let (mut with, mut without) = (0u64, 0u64);
    for r in rows {
        let tp = exactly::model::TopicPartition::new(&topic, r["_kafka_partition"].as_i64().unwrap() as i32);
        let after = r["_kafka_offset"].as_i64().unwrap() >= starts[&tp];
        assert_eq!(r["ts"].is_null(), !after, "{r}");
        if after {
            with += 1
        } else {
            without += 1
        }
    }
    assert!(with > 0 && without > 0, "rows on both sides: {with} with, {without} without");
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), total);
    assert_eq!(audit.total(|p| p.rows), with + without);
    assert_fenced(&table).await;
}
