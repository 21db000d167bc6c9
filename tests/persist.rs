//! Checkpoints persisted to object storage (`checkpoint.remote` on the S3 server `just test`
//! starts): a stateful pipeline that loses its disk restores the newest persisted checkpoint and
//! catches up with the table by re-running the epochs between them through the state stage;
//! SIGKILLs with a fresh disk every time stay exact; a persisted checkpoint that cannot be
//! restored is one clear error and nothing is written.

use std::time::Duration;

use deltalake::logstore::object_store::path::Path as StorePath;
use deltalake::logstore::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use exactly::config::{DedupConfig, PipelineConfig, TableLocation};
use exactly::source::producer::{produce, ProduceOptions};
use exactly::state::persist::Remote;

use crate::common;

/// Dedup by id, and update-mode counts and sums per value.
fn stateful(config: &mut PipelineConfig) {
    config.dedup = Some(DedupConfig::by_epochs(&["id"], 100_000));
    config.aggregate = Some(crate::kit::counts_by_value());
}

/// Persists `config`'s checkpoint to a unique prefix of the local S3 server; its remote root.
fn persisted(config: &mut PipelineConfig, every: u64, interval_ms: u64) -> TableLocation {
    let at = TableLocation::parse(&format!("s3://exactly/{}/checkpoint", common::unique("cp"))).unwrap();
    config.checkpoint.remote = Some(at.clone());
    config.checkpoint.storage = Some(common::s3_options());
    config.checkpoint.persist_every_epochs = every;
    config.checkpoint.persist_interval_ms = interval_ms;
    config.checkpoint_remote().unwrap()
}

/// A stateful pipeline (epochs of 200 ms) over a new topic, persisted as `persisted` says: the
/// topic, the test's directory, the config, its file, the remote root.
async fn setup(prefix: &str, partitions: i32, every: u64, interval_ms: u64) -> Setup {
    let topic = common::topic(prefix, partitions).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    config.epoch.interval_ms = 200;
    stateful(&mut config);
    let at = persisted(&mut config, every, interval_ms);
    let file = common::write_config(&config, dir.path());
    Setup { topic, _dir: dir, config, file, at }
}

struct Setup {
    topic: String,
    /// Kept until the test ends (the table and the checkpoint live in it).
    _dir: tempfile::TempDir,
    config: PipelineConfig,
    file: std::path::PathBuf,
    at: TableLocation,
}

/// Starts the pipeline, waits until the table holds every record, stops it gracefully.
async fn run_until_drained(s: &Setup) {
    let child = common::spawn(&s.file, None);
    drained(&s.config, &s.topic).await;
    common::terminate(child).await;
}

/// [`run_until_drained`], then the audit: every offset and every id once, every count right.
async fn run_to_the_end_and_audit(s: &Setup) {
    run_until_drained(s).await;
    let audit = common::assert_verified(&s.config).await;
    let keys = audit.keys.as_ref().unwrap();
    assert_eq!((keys.missing, keys.duplicated, keys.mismatched), (0, 0, 0), "{}", audit.render());
    common::assert_each_epoch_committed_once(&table(&s.config), &s.config.id).await;
}

fn remote(at: &TableLocation) -> (Remote, std::sync::Arc<dyn ObjectStore>) {
    let store = exactly::sink::storage::root_store(at).unwrap();
    (Remote::new(store.clone(), at.to_string()), store)
}

fn table(config: &PipelineConfig) -> std::path::PathBuf {
    config.checkpoint_dir().parent().unwrap().join("table")
}

async fn drained(config: &PipelineConfig, topic: &str) {
    common::wait_table_drained(&table(config), &config.id, topic, Duration::from_secs(120)).await;
}

/// Produces `count` events from id `first`, every 10th sent twice.
async fn events(topic: &str, first: u64, count: u64) {
    let mut opts = ProduceOptions::new(&common::brokers(), topic, count);
    opts.first_id = first;
    opts.duplicate_every = Some(10);
    produce(&opts, std::future::pending()).await.unwrap();
}

/// The disk is lost after many epochs with only the first checkpoint persisted: the next start
/// restores it (epoch 0) and re-runs every epoch the table holds through dedup and the counts,
/// writing nothing, so ids already written are still known (their duplicates dropped) and the
/// counts go on from the right totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_disk_catches_up_from_an_old_persisted_checkpoint() {
    // Never due again after the first persist: the store keeps epoch 0 while the table moves on.
    let s = setup("catchup", 3, 1_000_000, 3_600_000).await;
    let (topic, config, file) = (&s.topic, &s.config, &s.file);
    let (remote, _) = remote(&s.at);

    let child = common::spawn(file, None);
    for round in 0..3 {
        events(topic, round * 1_000, 1_000).await;
        drained(config, topic).await;
    }
    let mut child = child;
    child.kill().unwrap(); // SIGKILL: no last persist
    child.wait().unwrap();
    assert_eq!(remote.epochs().await.unwrap(), vec![0], "only the first start's checkpoint is persisted");
    let before = common::txn_versions(&table(config), &config.id).await;
    assert!(before.iter().max().is_some_and(|v| *v >= 3), "several epochs to catch up: {before:?}");

    std::fs::remove_dir_all(config.checkpoint_dir()).unwrap();
    // Old ids again (duplicates the restored state must know) and new ones.
    events(topic, 500, 3_000).await;
    run_to_the_end_and_audit(&s).await;
    let epochs = remote.epochs().await.unwrap();
    let last = *common::txn_versions(&table(config), &config.id).await.iter().max().unwrap() as u64;
    assert_eq!(epochs.last(), Some(&last), "a graceful stop persists its last epoch: {epochs:?}");
}

/// SIGKILLs at random moments while records arrive, the local checkpoint directory deleted
/// after each (a fresh disk every time): every id once, every count right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_pipeline_on_fresh_disks_with_its_checkpoint_on_s3_stays_exact() {
    let mut rng = common::seeded_rng("fresh disks");
    let s = setup("freshdisk", 4, 3, 500).await;
    let mut opts = ProduceOptions::new(&common::brokers(), &s.topic, 8_000);
    opts.rate = Some(2_000);
    opts.duplicate_every = Some(20);
    let producer = tokio::spawn(async move { produce(&opts, std::future::pending()).await.unwrap() });
    for _ in 0..5 {
        let mut child = common::spawn(&s.file, None);
        tokio::time::sleep(Duration::from_millis(rand::Rng::random_range(&mut rng, 700..2_500))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        std::fs::remove_dir_all(s.config.checkpoint_dir()).ok();
    }
    producer.await.unwrap();
    run_to_the_end_and_audit(&s).await;
    assert!(!remote(&s.at).0.epochs().await.unwrap().is_empty());
}

/// The newest persisted checkpoint with a file missing, then with a manifest that is not one:
/// each start on a fresh disk fails with one error naming the manifest, and writes nothing. Once
/// the operator deletes it (`exactly checkpoint rm`), the next start restores the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_checkpoint_that_cannot_be_restored_is_refused_naming_its_manifest() {
    let s = setup("badcp", 2, 1, 100).await;
    let (topic, config, file) = (&s.topic, &s.config, &s.file);
    let (remote, store) = remote(&s.at);
    events(topic, 0, 2_000).await;
    run_until_drained(&s).await;
    let epochs = remote.epochs().await.unwrap();
    assert!(epochs.len() >= 2, "{epochs:?}");
    let newest = *epochs.last().unwrap();
    let manifest = remote.manifest(newest).await.unwrap();
    let name = format!("manifests/{newest:020}.json");
    let version = common::txn_versions(&table(config), &config.id).await;

    events(topic, 2_000, 500).await;
    let refused = |what: &'static str| {
        let file = file.clone();
        let config = config.clone();
        let name = name.clone();
        async move {
            std::fs::remove_dir_all(config.checkpoint_dir()).ok();
            let (status, stderr) = common::wait_exit(common::spawn(&file, None), Duration::from_secs(60), what).await;
            assert!(!status.success(), "{what}: must not start");
            assert!(stderr.contains(&name), "{what}: the error names the manifest: {stderr}");
        }
    };
    // A file the manifest names is gone.
    let sst = manifest.files.iter().find(|f| f.name.ends_with(".sst")).unwrap();
    let sst_bytes = store.get(&StorePath::from(sst.key.as_str())).await.unwrap().bytes().await.unwrap();
    store.delete(&StorePath::from(sst.key.as_str())).await.unwrap();
    refused("a missing file").await;
    store.put(&StorePath::from(sst.key.as_str()), PutPayload::from(sst_bytes)).await.unwrap();
    // The manifest itself is garbage.
    store.put(&StorePath::from(name.as_str()), PutPayload::from_static(b"{\"format\": 1, \"epoch\":")).await.unwrap();
    refused("a corrupt manifest").await;
    assert_eq!(common::txn_versions(&table(config), &config.id).await, version, "nothing written");

    // `exactly checkpoint rm` drops it; the one before is restored and catches up.
    let rm = std::process::Command::new(env!("CARGO_BIN_EXE_exactly"))
        .args(["checkpoint", "rm", "--config"])
        .arg(file)
        .args(["--epoch", &newest.to_string()])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    assert!(!remote.epochs().await.unwrap().contains(&newest));
    std::fs::remove_dir_all(config.checkpoint_dir()).ok();
    run_to_the_end_and_audit(&s).await;
}

/// Wrong credentials for the checkpoint's store: the start fails with one line naming the
/// checkpoint's location and settings, before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_for_the_checkpoint_store_are_one_clear_error_before_anything_is_written() {
    let topic = common::topic("badcreds", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    stateful(&mut config);
    persisted(&mut config, 1, 100);
    config.checkpoint.storage = Some(common::options("not-the-secret"));
    let sink = exactly::pipeline::sink_for(&config, Default::default()).unwrap();
    let refused = match exactly::pipeline::Pipeline::start_with(config.clone(), sink, Default::default()).await {
        Ok(p) => p.wait().await.unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("persisted checkpoint s3://exactly/") && refused.contains("[checkpoint.storage]"), "{refused}");
    assert!(!table(&config).exists(), "no table was created");
    assert!(!config.checkpoint_dir().exists(), "no checkpoint was created");
}
