//! Upserts and deletes (`[upsert]`): a keyed topic and Debezium change events become a Delta
//! table holding each key's last row — superseded rows marked deleted through deletion vectors,
//! read back by Python `deltalake` — exactly once through a failure between the Delta commit
//! and the checkpoint; `sequence_by` orders changes that arrive out of order; `verify` catches
//! a stale row and a deleted key left in the table; compaction in the epochs' commits purges
//! deleted rows and the index follows the rows it moves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deltalake::kernel::Action;
use exactly::config::{Envelope, FieldConfig, FieldType, UpsertConfig};
use exactly::pipeline::RunOptions;
use exactly::testing::failpoint::{FailAction, FailPoints};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use crate::common;

/// A record to send: Kafka key and value (`None`: a tombstone).
type Change = (String, Option<String>);

async fn send(topic: &str, records: &[Change]) {
    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    for (k, v) in records {
        let mut r = FutureRecord::to(topic).key(k);
        if let Some(v) = v {
            r = r.payload(v);
        }
        producer.send(r, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
}

/// An upsert pipeline over `topic` keyed by `id`, rows `{id, name, n}`.
fn config(topic: &str, dir: &std::path::Path, envelope: Envelope, sequence_by: Option<&str>) -> exactly::PipelineConfig {
    let mut c = common::delta_config(&common::unique("p"), topic, dir);
    c.decode.fields = vec![
        FieldConfig::new("id", FieldType::Long, false),
        FieldConfig::new("name", FieldType::String, true),
        FieldConfig::new("n", FieldType::Long, true),
    ];
    c.decode.envelope = envelope;
    c.upsert = Some(UpsertConfig { key: vec!["id".into()], sequence_by: sequence_by.map(str::to_string) });
    c
}

fn row(id: u64, name: &str) -> String {
    json!({"id": id, "name": name, "n": id * 10}).to_string()
}

async fn drained(config: &exactly::PipelineConfig, topic: &str) {
    common::wait_table_drained(&table_of(config), &config.id, topic, Duration::from_secs(90)).await;
}

fn table_of(config: &exactly::PipelineConfig) -> std::path::PathBuf {
    config.checkpoint_dir().parent().unwrap().join("table")
}

/// The table as Python `deltalake` reads it (deletion vectors applied): id -> name, and how
/// many rows it holds.
fn read_back(config: &exactly::PipelineConfig) -> (BTreeMap<u64, String>, usize) {
    let read = common::read_rows_with_python(&table_of(config));
    let records = read["records"].as_array().unwrap();
    let rows = records.iter().map(|r| (r["id"].as_u64().unwrap(), r["name"].as_str().unwrap_or("null").to_string())).collect();
    (rows, records.len())
}

/// Files of the table's log that carry a deletion vector.
async fn deletion_vectors(config: &exactly::PipelineConfig) -> usize {
    common::log(table_of(config))
        .await
        .iter()
        .flat_map(|(_, actions)| actions)
        .filter(|a| matches!(a, Action::Add(add) if add.deletion_vector.is_some()))
        .count()
}

/// A keyed topic: the last value per key wins, a tombstone deletes, a key deleted and written
/// again is back; a failure between the Delta commit and the checkpoint of an epoch that
/// deletes rows is replayed without marking anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_topic_becomes_its_last_value_per_key_through_a_failure_after_the_commit() {
    let topic = common::topic("upsert-keyed", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&topic, dir.path(), Envelope::None, None);
    let mut want: BTreeMap<u64, String> = BTreeMap::new();
    let mut first = Vec::new();
    for id in 0..300u64 {
        first.push((id.to_string(), Some(row(id, &format!("v0-{id}")))));
        want.insert(id, format!("v0-{id}"));
    }
    send(&topic, &first).await;
    let failpoints = Arc::new(FailPoints::new());
    let pipeline = common::start(&config, RunOptions { failpoints: failpoints.clone(), ..Default::default() }).await;
    drained(&config, &topic).await;
    // The next epoch to commit fails after its Delta commit, before its checkpoint.
    failpoints.arm("after-delta-commit", FailAction::Error, Some(1));
    let mut second = Vec::new();
    for id in 0..300u64 {
        if id % 3 == 0 {
            for version in 1..=3 {
                second.push((id.to_string(), Some(row(id, &format!("v{version}-{id}")))));
            }
            want.insert(id, format!("v3-{id}"));
        }
        if id % 5 == 0 {
            second.push((id.to_string(), None));
            want.remove(&id);
        }
        if id % 10 == 0 {
            second.push((id.to_string(), Some(row(id, &format!("back-{id}")))));
            want.insert(id, format!("back-{id}"));
        }
    }
    // A key never written, deleted: nothing to delete.
    second.push(("1000".into(), None));
    send(&topic, &second).await;
    drained(&config, &topic).await;
    assert!(!failpoints.is_armed("after-delta-commit"), "the failure happened");
    pipeline.shutdown().await.unwrap();

    let (rows, count) = read_back(&config);
    assert_eq!(count, want.len(), "one row per live key");
    assert_eq!(rows, want);
    assert!(deletion_vectors(&config).await > 0, "superseded rows are marked deleted, not rewritten");
    let audit = common::assert_verified(&config).await;
    let keys = audit.keys.as_ref().unwrap();
    assert_eq!((keys.expected, keys.found), (want.len() as u64, want.len() as u64));
    common::assert_each_epoch_committed_once(table_of(&config), &config.id).await;
    // The index agrees with the table.
    let store = exactly::state::checkpoint::CheckpointStore::open(config.checkpoint_dir()).unwrap();
    assert_eq!(store.upsert_row_count().unwrap(), want.len() as u64);
    // A compaction from outside would move the rows the index names: refused, the table
    // untouched.
    let version = common::log(table_of(&config)).await.len();
    let table = exactly::config::TableLocation::from(table_of(&config));
    let refused = exactly::maintenance::commands::optimize(&table, None, &[]).await;
    assert!(refused.is_err(), "optimize of an upsert table must be refused");
    assert_eq!(common::log(table_of(&config)).await.len(), version);
}

/// The live files of the table, by their `exactly.file` id: (path, whether it has a deletion
/// vector).
async fn live_files(config: &exactly::PipelineConfig) -> BTreeMap<u64, (String, bool)> {
    let mut live: BTreeMap<String, (u64, bool)> = BTreeMap::new();
    for (_, actions) in common::log(table_of(config)).await {
        for a in actions {
            match a {
                Action::Remove(r) => {
                    live.remove(&r.path);
                }
                Action::Add(add) => {
                    let id = add.tags.as_ref().and_then(|t| t.get("exactly.file")).cloned().flatten().unwrap().parse().unwrap();
                    live.insert(add.path.clone(), (id, add.deletion_vector.is_some()));
                }
                _ => {}
            }
        }
    }
    live.into_iter().map(|(path, (id, dv))| (id, (path, dv))).collect()
}

/// Compaction in the epochs' commits: a file at least half deleted is purged — its live rows
/// move to the epoch's compacted file, and the index follows — through a failure between the
/// Delta commit and the checkpoint of the compacting epoch (the replay reads the moved keys back
/// from the table); a later epoch then deletes rows of the compacted file by their new places
/// and purges it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_purges_deleted_rows_and_the_index_follows_the_moved_rows_through_a_failure() {
    compaction(None).await;
}

/// The same with `sequence_by`: the moved keys keep their sequences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_moved_keys_sequences() {
    compaction(Some("n")).await;
}

/// A round of changes to ids 0..200: `update`d ids get a row named `<version>-<id>`, `delete`d
/// ones a tombstone; `want` follows.
fn changes(
    want: &mut BTreeMap<u64, String>,
    version: &str,
    update: impl Fn(u64) -> bool,
    delete: impl Fn(u64) -> bool,
) -> Vec<Change> {
    let mut round = Vec::new();
    for id in 0..200u64 {
        if update(id) {
            round.push((id.to_string(), Some(row(id, &format!("{version}-{id}")))));
            want.insert(id, format!("{version}-{id}"));
        } else if delete(id) {
            round.push((id.to_string(), None));
            want.remove(&id);
        }
    }
    round
}

async fn compaction(sequence_by: Option<&str>) {
    let compacted = exactly::sink::delta::upsert::COMPACTED;
    let topic = common::topic("upsert-compact", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&topic, dir.path(), Envelope::None, sequence_by);
    // A backlog is one epoch: it is all fetched well within the interval.
    config.epoch.interval_ms = 3_000;
    let mut want: BTreeMap<u64, String> = BTreeMap::new();
    let mut round = Vec::new();
    for id in 0..200u64 {
        round.push((id.to_string(), Some(row(id, &format!("v0-{id}")))));
        want.insert(id, format!("v0-{id}"));
    }
    send(&topic, &round).await;
    let pipeline = common::start(&config, RunOptions::default()).await;
    drained(&config, &topic).await;
    pipeline.shutdown().await.unwrap();
    let first = live_files(&config).await;
    assert!(first.keys().all(|id| *id < compacted));

    // Two thirds of the keys change, a ninth are deleted: every file is at least half deleted.
    // The epoch fails after its Delta commit.
    send(&topic, &changes(&mut want, "v1", |id| id % 3 != 0, |id| id % 9 == 0)).await;
    let failpoints = Arc::new(FailPoints::new());
    failpoints.arm("after-delta-commit", FailAction::Error, Some(1));
    let pipeline = common::start(&config, RunOptions { failpoints: failpoints.clone(), ..Default::default() }).await;
    drained(&config, &topic).await;
    assert!(!failpoints.is_armed("after-delta-commit"), "the failure happened");
    let second = live_files(&config).await;
    assert!(first.keys().all(|id| !second.contains_key(id)), "the purged files are gone: {second:?}");
    let moved: Vec<u64> = second.keys().copied().filter(|id| *id >= compacted).collect();
    assert_eq!(moved.len(), 1, "one compacted file holds the live rows: {second:?}");
    assert!(second.values().all(|(_, dv)| !dv), "nothing deleted is left in a file");

    // The moved rows change by their new places: the compacted file is marked, three quarters
    // deleted, and purged in turn.
    send(&topic, &changes(&mut want, "v2", |id| id % 9 == 3, |id| id % 18 == 6)).await;
    drained(&config, &topic).await;
    pipeline.shutdown().await.unwrap();
    let third = live_files(&config).await;
    assert!(!third.contains_key(&moved[0]), "the compacted file was purged in turn: {third:?}");
    assert_eq!(third.keys().filter(|id| **id >= compacted).count(), 1);

    let (rows, count) = read_back(&config);
    assert_eq!(count, want.len(), "one row per live key");
    assert_eq!(rows, want);
    let audit = common::assert_verified(&config).await;
    let keys = audit.keys.as_ref().unwrap();
    assert_eq!((keys.expected, keys.found), (want.len() as u64, want.len() as u64));
    common::assert_each_epoch_committed_once(table_of(&config), &config.id).await;
    let store = exactly::state::checkpoint::CheckpointStore::open(config.checkpoint_dir()).unwrap();
    assert_eq!(store.upsert_row_count().unwrap(), want.len() as u64);
}

/// The disk is lost after epochs that compacted the table, with only the first checkpoint
/// persisted (`checkpoint.remote`, a directory here): the catch-up re-runs those epochs through
/// the index without writing, re-pointing the keys each compaction moved, so later changes to
/// moved keys mark the rows where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_disk_catches_up_the_index_through_compactions() {
    let compacted = exactly::sink::delta::upsert::COMPACTED;
    let topic = common::topic("upsert-catchup", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&topic, dir.path(), Envelope::None, None);
    config.epoch.interval_ms = 300;
    config.checkpoint.remote = Some(exactly::config::TableLocation::local(&dir.path().join("remote")));
    config.checkpoint.persist_every_epochs = 1_000_000;
    config.checkpoint.persist_interval_ms = 3_600_000;
    let file = common::write_config(&config, dir.path());
    let mut want: BTreeMap<u64, String> = BTreeMap::new();
    let mut child = common::spawn(&file, None);
    send(&topic, &changes(&mut want, "v0", |_| true, |_| false)).await;
    drained(&config, &topic).await;
    send(&topic, &changes(&mut want, "v1", |id| id % 3 != 0, |id| id % 9 == 0)).await;
    drained(&config, &topic).await;
    assert!(live_files(&config).await.keys().any(|id| *id >= compacted), "an epoch compacted");
    // Two small epochs after it, touching none of the moved rows and compacting nothing: the
    // compaction's epoch is one the catch-up re-runs without writing.
    for version in ["v2", "v3"] {
        send(&topic, &changes(&mut want, version, |id| id % 3 == 1 && id % 10 == 1, |_| false)).await;
        drained(&config, &topic).await;
    }
    child.kill().unwrap(); // SIGKILL: the store holds the first start's checkpoint only
    child.wait().unwrap();

    std::fs::remove_dir_all(config.checkpoint_dir()).unwrap();
    // Every live key changes or goes: each is marked where the catch-up says it lives.
    send(&topic, &changes(&mut want, "v4", |id| id % 2 == 0, |id| id % 2 == 1)).await;
    let child = common::spawn(&file, None);
    drained(&config, &topic).await;
    common::terminate(child).await;
    let (rows, count) = read_back(&config);
    assert_eq!(count, want.len(), "one row per live key");
    assert_eq!(rows, want);
    common::assert_verified(&config).await;
    common::assert_each_epoch_committed_once(table_of(&config), &config.id).await;
    let store = exactly::state::checkpoint::CheckpointStore::open(config.checkpoint_dir()).unwrap();
    assert_eq!(store.upsert_row_count().unwrap(), want.len() as u64);
}

/// A Debezium change event as the JSON converter writes it (`schemas`: with its schema
/// wrapper), and its key.
fn debezium(id: u64, op: &str, name: Option<&str>, lsn: i64, schemas: bool) -> Change {
    let after = name.map(|n| json!({"id": id, "name": n, "n": id * 10}));
    let before = (op == "d" || op == "u").then(|| json!({"id": id, "name": null, "n": null}));
    let payload = json!({
        "before": before,
        "after": if op == "d" { None } else { after },
        "source": {"version": "3.6.1.Final", "connector": "postgresql", "name": "db", "db": "shop",
                   "schema": "public", "table": "items", "lsn": lsn, "txId": 7, "ts_ms": 1_700_000_000_000i64},
        "op": op,
        "ts_ms": 1_700_000_000_000i64 + lsn,
    });
    let key = json!({"id": id});
    if schemas {
        let schema = json!({"type": "struct", "name": "db.public.items.Envelope", "fields": []});
        let key_schema = json!({"type": "struct", "fields": [{"field": "id", "type": "int64"}]});
        (
            json!({"schema": key_schema, "payload": key}).to_string(),
            Some(json!({"schema": schema, "payload": payload}).to_string()),
        )
    } else {
        (key.to_string(), Some(payload.to_string()))
    }
}

/// Debezium change events (with and without schemas), ordered by `source.lsn`: a change that
/// arrives after a newer one of its key — in another partition — is superseded, a delete older
/// than the key's row is ignored, a deleted key does not come back through an older change;
/// tombstones after deletes change nothing; malformed events are dead letters. And `verify`
/// fails when a stale row or a deleted key's row is put back into the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_changes_ordered_by_sequence_and_verify_catches_stale_and_deleted_rows() {
    let topic = common::topic("upsert-debezium", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&topic, dir.path(), Envelope::Debezium, Some("source.lsn"));
    // No compaction: the superseded rows stay in their files (deleted through vectors) for the
    // breaks below.
    let exactly::config::SinkConfig::Delta { compaction, .. } = &mut config.sink else { unreachable!() };
    compaction.enabled = false;
    let mut want: BTreeMap<u64, String> = BTreeMap::new();
    let mut first = Vec::new();
    for id in 0..100u64 {
        first.push(debezium(id, "r", Some(&format!("snap-{id}")), 100, id % 2 == 0));
        want.insert(id, format!("snap-{id}"));
    }
    send(&topic, &first).await;
    let pipeline = common::start(&config, RunOptions::default()).await;
    drained(&config, &topic).await;
    let mut second = Vec::new();
    for id in 0..100u64 {
        let schemas = id % 2 == 1;
        match id % 4 {
            // Updated at lsn 300, then an older update (lsn 200) arrives under another Kafka
            // key, so in another partition: superseded.
            0 => {
                second.push(debezium(id, "u", Some(&format!("new-{id}")), 300, schemas));
                let (_, value) = debezium(id, "u", Some(&format!("old-{id}")), 200, schemas);
                second.push((format!("moved-{id}"), value));
                want.insert(id, format!("new-{id}"));
            }
            // Deleted at lsn 300 (then its tombstone); an older update (lsn 250) arrives after:
            // it stays deleted.
            1 => {
                second.push(debezium(id, "d", None, 300, schemas));
                second.push((debezium(id, "d", None, 300, schemas).0, None));
                second.push(debezium(id, "u", Some(&format!("late-{id}")), 250, schemas));
                want.remove(&id);
            }
            // A delete older than the row (lsn 50 < 100): ignored.
            2 => second.push(debezium(id, "d", None, 50, schemas)),
            _ => {}
        }
    }
    // Not changes: a truncate, an event without `op`, a create without `after`, bad JSON.
    second.push(("{\"id\":1}".into(), Some(json!({"op": "t", "source": {"lsn": 400}}).to_string())));
    second.push(("{\"id\":2}".into(), Some(json!({"after": {"id": 2}}).to_string())));
    second.push(("{\"id\":3}".into(), Some(json!({"op": "c", "after": null, "source": {"lsn": 400}}).to_string())));
    second.push(("{\"id\":4}".into(), Some("{not json".into())));
    send(&topic, &second).await;
    drained(&config, &topic).await;
    pipeline.shutdown().await.unwrap();

    let (rows, count) = read_back(&config);
    assert_eq!(count, want.len());
    assert_eq!(rows, want);
    let reasons = common::dead_letter_reasons(&dir.path().join("table_dead_letters"));
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("truncate")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("no `op`")), "{reasons:?}");
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.keys.as_ref().unwrap().expected, want.len() as u64);

    // Break the table on purpose: append the superseded row of an updated key (id 0: its
    // snapshot row) and the row of a deleted key (id 1), as another writer could.
    let old = common::read_rows(&table_of(&config)).await; // every row, deletion vectors ignored
    let stale: Vec<_> = old
        .iter()
        .map(|b| {
            let ids = b.column_by_name("id").unwrap().as_any().downcast_ref::<deltalake::arrow::array::Int64Array>().unwrap();
            let names =
                b.column_by_name("name").unwrap().as_any().downcast_ref::<deltalake::arrow::array::StringArray>().unwrap();
            let keep: Vec<bool> = (0..b.num_rows()).map(|i| (ids.value(i) <= 1) && names.value(i).starts_with("snap")).collect();
            deltalake::arrow::compute::filter_record_batch(b, &keep.into()).unwrap()
        })
        .filter(|b| b.num_rows() > 0)
        .collect();
    assert_eq!(stale.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    let mut table = exactly::sink::delta::load_table(table_of(&config)).await.unwrap().unwrap();
    let mut writer = deltalake::writer::RecordBatchWriter::for_table(&table).unwrap();
    for b in stale {
        deltalake::writer::DeltaWriter::write(&mut writer, b).await.unwrap();
    }
    deltalake::writer::DeltaWriter::flush_and_commit(&mut writer, &mut table).await.unwrap();
    let audit = exactly::verify::verify(&config).await.unwrap();
    assert!(!audit.ok(), "verify must fail:\n{}", audit.render());
    let keys = audit.keys.as_ref().unwrap();
    assert_eq!((keys.deleted_present, keys.duplicated, keys.mismatched), (1, 1, 0), "{}", audit.render());

    // Break it further, as a writer that lost the second phase could: the files of updated rows
    // gone, the other files' deletion vectors dropped. Updated keys then hold their superseded
    // snapshot row (stale), deleted keys their old row.
    let mut table = exactly::sink::delta::load_table(table_of(&config)).await.unwrap().unwrap();
    let mut actions = Vec::new();
    for f in table.snapshot().unwrap().log_data().iter() {
        #[allow(deprecated)]
        let add = f.add_action();
        let holds_new = common::read_file_rows(&table_of(&config).join(&add.path)).iter().any(|b| {
            b.column_by_name("name")
                .unwrap()
                .as_any()
                .downcast_ref::<deltalake::arrow::array::StringArray>()
                .unwrap()
                .iter()
                .any(|n| n.is_some_and(|n| n.starts_with("new-")))
        });
        if holds_new {
            actions.push(Action::Remove(f.remove_action(true)));
        } else if add.deletion_vector.is_some() {
            actions.push(Action::Remove(f.remove_action(true)));
            actions.push(Action::Add(deltalake::kernel::Add { deletion_vector: None, ..add }));
        }
    }
    let op = deltalake::protocol::DeltaOperation::Delete { predicate: None };
    deltalake::kernel::transaction::CommitBuilder::default()
        .with_actions(actions)
        .build(Some(table.snapshot().unwrap()), table.log_store(), op)
        .await
        .unwrap();
    table.update_incremental(None).await.unwrap();
    let audit = exactly::verify::verify(&config).await.unwrap();
    assert!(!audit.ok(), "verify must fail:\n{}", audit.render());
    let keys = audit.keys.as_ref().unwrap();
    // Ids 0, 4, ..., 96 were updated (25 keys), ids 1, 5, ..., 97 deleted (25, one of them also
    // put back by the first break).
    assert_eq!(keys.mismatched, 25, "{}", audit.render());
    assert_eq!(keys.deleted_present, 25, "{}", audit.render());
}
