//! The chaos harness: real Apache Kafka, real Delta tables, real RocksDB; one kind of fault per
//! case, injected at seeded random moments while a producer writes a known stream (with
//! duplicates and malformed records), then the audit. Shared by `chaos/main.rs` (`just chaos`)
//! and the CI subset in `tests/chaos.rs`.
//!
//! Adding a case: add its name to [`CASES`], and either a branch in [`inject`] (a fault against
//! a running in-process pipeline) or a flow of its own in [`run_case`]. Every case ends with
//! [`exactly::verify::verify`]; a case passes only with nothing missing, duplicated or
//! mismatched.

#![allow(dead_code)]

use crate::kit;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exactly::config::{DecodeConfig, DedupConfig, PipelineConfig, SinkConfig};
use exactly::pipeline::{Pipeline, RunOptions};
use exactly::runtime::messages::ConsumerMsg;
use exactly::source::producer::{produce, ProduceOptions};
use exactly::telemetry::progress::Progress;
use exactly::testing::failpoint::{FailAction, FailPoints};
use exactly::testing::fault::Fault;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::broadcast;

/// Every case, in the order `just chaos` runs them.
pub const CASES: &[&str] = &[
    "kill-consumer",
    "kill-aggregator",
    "kill-committer",
    "panic-consumer",
    "panic-aggregator",
    "panic-committer",
    "fail-after-parquet-write",
    "fail-after-delta-commit",
    "fail-mid-checkpoint-write",
    "fail-after-checkpoint",
    "sigkill-process",
    "broker-restart",
    "delta-conflict",
    "checkpoint-unwritable",
    "slow-sink",
    "grow-topic",
    "store-restart",
    "group-members",
    "fresh-disk",
];

/// Every pipeline kind an iteration may run.
pub const KINDS: &[&str] = &["append", "dedup", "counts", "upsert"];

/// The kinds iterations rotate through unless told otherwise: all of them.
pub const DEFAULT_KINDS: &[&str] = KINDS;

/// How to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The pipeline kinds iterations rotate through (see [`KINDS`]).
    pub kinds: Vec<String>,
    /// Cases to run.
    pub cases: Vec<String>,
    /// Iterations per case (each with a fresh topic, table and checkpoint).
    pub iterations: u32,
    /// Faults per iteration.
    pub faults: u32,
    /// The seed everything random derives from.
    pub seed: u64,
    /// Produce rate, events per second.
    pub rate: u64,
    /// Brokers of the shared broker.
    pub brokers: String,
    /// The `exactly` binary (for the process-level cases).
    pub exactly_bin: PathBuf,
    /// `scripts/kafka` (for the broker-restart case's own broker).
    pub kafka_script: PathBuf,
    /// `scripts/s3` (for the store-restart case's own S3-compatible server).
    pub s3_script: PathBuf,
    /// Where tables and checkpoints go.
    pub work_dir: PathBuf,
}

/// The outcome of one iteration of one case.
#[derive(Debug, Clone, Default)]
pub struct CaseReport {
    /// Case name.
    pub case: String,
    /// Pipeline kind: append, dedup, counts or upsert.
    pub kind: String,
    /// Faults injected.
    pub faults: u64,
    /// Actor-tree restarts and process restarts.
    pub restarts: u64,
    /// Records produced.
    pub produced: u64,
    /// Records committed (rows + dead letters + records the filter dropped; groups for counts).
    pub committed: u64,
    /// Offsets or keys missing.
    pub missing: u64,
    /// Offsets or keys duplicated.
    pub duplicated: u64,
    /// Groups whose aggregates differ from the recomputation.
    pub mismatched: u64,
    /// Fault -> first commit after it.
    pub recovery: Vec<Duration>,
    /// Passed?
    pub ok: bool,
    /// What went wrong, or a note.
    pub detail: String,
}

/// The pipeline of one iteration: append, dedup, counts or upsert, rotating. The append one also
/// shapes its rows (`[transform]`: a derived column and a filter dropping about one record in
/// seven) and partitions its table by the derived column, so faults meet filtered records and
/// partitioned writes too; the audit accounts for both. The upsert one keeps each id's last row:
/// the stream's duplicates supersede rows (deletion vectors), and its epochs compact.
fn pipeline_config(kind: &str, topic: &str, dir: &Path, brokers: &str) -> PipelineConfig {
    let mut c = PipelineConfig::new(kit::unique("chaos"), &[topic]);
    c.source.brokers = brokers.to_string();
    c.decode = DecodeConfig::seed();
    c.epoch.interval_ms = 200;
    c.checkpoint.dir = Some(dir.join("checkpoint"));
    c.sink = SinkConfig::delta(dir.join("table"));
    c.supervisor.backoff_ms = 20;
    c.supervisor.max_restarts = 1_000;
    match kind {
        "dedup" => {
            c.dedup = Some(DedupConfig::by_epochs(&["id"], 1_000_000));
            // Most epochs here (about 200 records) write their keys as ingested table files, the
            // smaller ones (after a restart) through the write batch: faults meet both.
            c.state.bulk_insert_min_keys = 100;
        }
        "upsert" => c.upsert = Some(exactly::config::UpsertConfig { key: vec!["id".into()], sequence_by: None }),
        "counts" => c.aggregate = Some(kit::counts_by_value()),
        _ => {
            c.transform = Some(exactly::config::TransformConfig {
                select: Some(vec!["id".into(), "value".into(), "ts".into(), "CAST(id % 4 AS INT) AS shard".into()]),
                filter: Some("id % 7 <> 3".into()),
            });
            if let SinkConfig::Delta { partition_by, .. } = &mut c.sink {
                *partition_by = vec!["shard".into()];
            }
        }
    }
    c
}

/// The cut the table recorded, summed over partitions, and its epoch (0, 0 while it cannot be
/// read: a fault may be in the way).
async fn table_progress(config: &PipelineConfig) -> (i64, u64) {
    kit::table_progress(config).await.unwrap_or((0, 0))
}

async fn wait_drained(config: &PipelineConfig, topic: &str, deadline: Duration) -> Result<(), String> {
    let want = exactly::source::high_watermark_sum(
        &exactly::source::Connection::of(&config.source).map_err(|e| e.to_string())?,
        topic,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| e.to_string())?;
    let start = Instant::now();
    while table_progress(config).await.0 < want {
        if start.elapsed() > deadline {
            return Err(format!("the table did not reach the topic's end ({want}) within {deadline:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Waits for the first epoch committed with records after a fault (by a generation newer than
/// `generation` when the fault restarts the tree).
async fn wait_recovered(
    progress: &mut broadcast::Receiver<Progress>,
    since: Instant,
    generation: Option<u64>,
) -> Option<Duration> {
    let deadline = since + Duration::from_secs(90);
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, progress.recv()).await {
            Ok(Ok(p)) if p.input_rows > 0 && generation.is_none_or(|g| p.generation > g) => return Some(since.elapsed()),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            _ => return None,
        }
    }
}

/// Discards the progress reports received so far.
fn drain(progress: &mut broadcast::Receiver<Progress>) {
    while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = progress.try_recv() {}
}

/// Injects one fault of `case` into a running pipeline; returns whether it restarts the tree.
async fn inject(
    case: &str,
    topic: &str,
    brokers: &str,
    pipeline: &Pipeline,
    failpoints: &FailPoints,
    rng: &mut StdRng,
    interval: Duration,
) -> Result<bool, String> {
    let s = pipeline.status().await.map_err(|e| e.to_string())?;
    let pick = rng.random_range(0..s.consumers.len().max(1));
    let consumer = || s.consumers.get(pick).map(|(_, c)| c.clone());
    let missing = || "no actor to fault (between generations)".to_string();
    match case {
        "kill-consumer" => consumer().ok_or_else(missing)?.kill(),
        "kill-aggregator" => s.aggregator.ok_or_else(missing)?.kill(),
        "kill-committer" => s.committer.ok_or_else(missing)?.kill(),
        "panic-consumer" => {
            consumer().ok_or_else(missing)?.cast(ConsumerMsg::InjectFault(Fault::Panic)).map_err(|e| e.to_string())?
        }
        "panic-aggregator" => s
            .aggregator
            .ok_or_else(missing)?
            .cast(exactly::runtime::messages::AggregatorMsg::InjectFault(Fault::Panic))
            .map_err(|e| e.to_string())?,
        "panic-committer" => s
            .committer
            .ok_or_else(missing)?
            .cast(exactly::runtime::messages::CommitterMsg::InjectFault(Fault::Panic))
            .map_err(|e| e.to_string())?,
        "fail-after-parquet-write" => failpoints.arm("after-parquet-write", FailAction::Error, Some(1)),
        "fail-after-delta-commit" => failpoints.arm("after-delta-commit", FailAction::Error, Some(1)),
        "fail-mid-checkpoint-write" => failpoints.arm("mid-checkpoint-write", FailAction::Error, Some(1)),
        "fail-after-checkpoint" => failpoints.arm("after-checkpoint", FailAction::Panic, Some(1)),
        "delta-conflict" => {
            // Widen the window between the snapshot read and the commit; the foreign writer
            // commits into it.
            failpoints.arm("after-parquet-write", FailAction::Sleep(Duration::from_millis(150)), Some(1));
            return Ok(false);
        }
        "slow-sink" => {
            failpoints.arm("after-parquet-write", FailAction::Sleep(interval * 5), Some(2));
            return Ok(false);
        }
        "grow-topic" => {
            // One more partition, and a burst of records that lands on every partition (the
            // stream's producer learns of the new one only at its next metadata refresh). The
            // pipeline commits its open epoch and restarts the tree to read it.
            exactly::source::add_partitions(&brokers.into(), topic, s.consumers.len() + 1).await.map_err(|e| e.to_string())?;
            let mut burst = ProduceOptions::new(brokers, topic, 300);
            burst.first_id = 1_000_000_000 + rng.random_range(0..1_000_000) * 1_000;
            produce(&burst, std::future::pending()).await.map_err(|e| e.to_string())?;
        }
        other => return Err(format!("unknown in-process case {other}")),
    }
    Ok(true)
}

/// A second writer committing to the table (its own txn appId, no data) every 30 ms.
fn foreign_writer(table: PathBuf, stop: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
        use deltalake::kernel::Transaction;
        use deltalake::protocol::{DeltaOperation, SaveMode};
        let mut commits = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let Ok(Some(t)) = exactly::sink::delta::load_table(&table).await else { continue };
            let Ok(snapshot) = t.snapshot() else { continue };
            let props = CommitProperties::default()
                .with_application_transaction(Transaction::new("chaos-foreign-writer", commits as i64 + 1));
            let op = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
            if CommitBuilder::from(props).with_actions(Vec::new()).build(Some(snapshot), t.log_store(), op).await.is_ok() {
                commits += 1;
            }
        }
        commits
    })
}

fn audit_into(report: &mut CaseReport, audit: &exactly::verify::Audit) {
    report.missing = audit.total(|p| p.missing) + audit.keys.as_ref().map_or(0, |k| k.missing);
    report.duplicated = audit.total(|p| p.duplicated) + audit.keys.as_ref().map_or(0, |k| k.duplicated);
    report.mismatched =
        audit.keys.as_ref().map_or(0, |k| k.mismatched) + audit.total(|p| p.unexpected) + audit.total(|p| p.mismatched);
    report.committed = match audit.keys.as_ref() {
        Some(k) if k.kind == "aggregate" => k.found,
        _ => audit.total(|p| p.rows + p.dead_lettered + p.filtered),
    };
    report.ok = audit.ok();
    if !report.ok {
        report.detail = audit
            .render()
            .lines()
            .filter(|l| l.contains("missing") || l.starts_with("    "))
            .take(5)
            .collect::<Vec<_>>()
            .join("; ");
    }
}

/// Runs one iteration of one case.
pub async fn run_case(case: &str, iteration: u32, opts: &ChaosOptions) -> CaseReport {
    let kinds = &opts.kinds;
    let case_index = CASES.iter().position(|c| *c == case).unwrap_or(0);
    // Group mode runs stateless pipelines only; a fresh disk matters to stateful ones.
    let stateful: Vec<&str> = kinds.iter().map(String::as_str).filter(|k| *k != "append").collect();
    let kind = match case {
        "group-members" => "append",
        "fresh-disk" if stateful.is_empty() => "dedup",
        "fresh-disk" => stateful[(iteration as usize + case_index) % stateful.len()],
        _ => kinds[(iteration as usize + case_index) % kinds.len()].as_str(),
    };
    let seed = opts.seed ^ ((case_index as u64) << 32) ^ iteration as u64;
    let mut report = CaseReport { case: case.to_string(), kind: kind.to_string(), ..Default::default() };
    let result = match case {
        "sigkill-process" => sigkill_case(kind, seed, opts, &mut report, false).await,
        "fresh-disk" => sigkill_case(kind, seed, opts, &mut report, true).await,
        "broker-restart" => broker_case(kind, seed, opts, &mut report).await,
        "store-restart" => store_case(kind, seed, opts, &mut report).await,
        "checkpoint-unwritable" => unwritable_case(kind, seed, opts, &mut report).await,
        "group-members" => group_case(kind, seed, opts, &mut report).await,
        _ => in_process_case(case, kind, seed, opts, &mut report).await,
    };
    if let Err(e) = result {
        report.ok = false;
        report.detail = e;
    }
    report
}

struct Stream {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<Streamed>,
}

/// What a stream produced: records acknowledged, and the producer errors it started over after.
#[derive(Debug, Default)]
struct Streamed {
    sent: u64,
    errors: Vec<String>,
}

/// A producer writing events (every 20th a duplicate, every 97th malformed) until stopped. The
/// producer is the load, not what is under test: when it fails (an idempotent producer can
/// fail fatally across a broker restart) it starts over with new ids, and the audit still
/// compares the tables with what Kafka holds.
fn start_stream(brokers: &str, topic: &str, rate: u64) -> Stream {
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut p = ProduceOptions::new(brokers, topic, 0);
    p.count = None;
    p.rate = Some(rate);
    p.duplicate_every = Some(20);
    p.malformed_every = Some(97);
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut streamed = Streamed::default();
        loop {
            let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stopped.clone();
            let signal = s.clone();
            let shutdown = async move {
                signal.notified().await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            };
            match produce(&p, shutdown).await {
                Ok(r) => {
                    streamed.sent += r.sent;
                    return streamed;
                }
                Err(e) if stopped.load(std::sync::atomic::Ordering::SeqCst) => {
                    streamed.errors.push(e.to_string());
                    return streamed;
                }
                Err(e) => {
                    streamed.errors.push(e.to_string());
                    p.first_id += 1_000_000_000;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    Stream { stop, task }
}

impl Stream {
    async fn finish(self) -> Result<u64, String> {
        self.stop.notify_one();
        let streamed = self.task.await.map_err(|e| e.to_string())?;
        if !streamed.errors.is_empty() {
            eprintln!("chaos: the load producer started over after: {}", streamed.errors.join("; "));
        }
        Ok(streamed.sent)
    }

    /// Whether the producer is still producing, or why it is not.
    fn state(&self) -> &'static str {
        if self.task.is_finished() {
            "the load producer has stopped"
        } else {
            "the load producer is running"
        }
    }
}

async fn setup(kind: &str, opts: &ChaosOptions, brokers: &str) -> Result<(String, PathBuf, PipelineConfig), String> {
    let topic = kit::unique("chaos");
    exactly::source::create_topic(&brokers.into(), &topic, 4, 1).await.map_err(|e| e.to_string())?;
    let dir = opts.work_dir.join(&topic);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = pipeline_config(kind, &topic, &dir, brokers);
    Ok((topic, dir, config))
}

async fn finish_audit(config: &PipelineConfig, report: &mut CaseReport) -> Result<(), String> {
    let audit = exactly::verify::verify(config).await.map_err(|e| e.to_string())?;
    audit_into(report, &audit);
    Ok(())
}

async fn in_process_case(case: &str, kind: &str, seed: u64, opts: &ChaosOptions, report: &mut CaseReport) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (topic, dir, mut config) = setup(kind, opts, &opts.brokers).await?;
    if case == "slow-sink" {
        config.source.max_buffered_records = 2_000;
        config.source.max_batch_records = 200;
    }
    if case == "grow-topic" {
        config.source.partition_discovery_ms = 300;
    }
    let failpoints = Arc::new(FailPoints::new());
    let stream = start_stream(&opts.brokers, &topic, opts.rate);
    let sink = exactly::pipeline::sink_for(&config, failpoints.clone()).map_err(|e| e.to_string())?;
    let options = RunOptions { failpoints: failpoints.clone(), ..Default::default() };
    let pipeline = Pipeline::start_with(config.clone(), sink, options).await.map_err(|e| e.to_string())?;
    let mut progress = pipeline.progress();
    let stop_foreign = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let foreign = (case == "delta-conflict").then(|| foreign_writer(dir.join("table"), stop_foreign.clone()));
    let mut peak_buffered = 0;
    for _ in 0..opts.faults {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
        let generation = pipeline.status().await.map_err(|e| e.to_string())?.generation;
        drain(&mut progress); // only commits after the fault count
        let restarts = match inject(case, &topic, &opts.brokers, &pipeline, &failpoints, &mut rng, config.epoch.interval()).await
        {
            Ok(r) => r,
            Err(_) => continue, // between generations: try again at the next moment
        };
        report.faults += 1;
        let t0 = Instant::now();
        if case == "slow-sink" {
            if let Some(agg) = pipeline.status().await.map_err(|e| e.to_string())?.aggregator {
                if let Ok(b) = ractor::call_t!(agg, exactly::runtime::messages::AggregatorMsg::Buffered, 5_000) {
                    peak_buffered = peak_buffered.max(b);
                }
            }
        }
        match wait_recovered(&mut progress, t0, restarts.then_some(generation)).await {
            Some(d) => report.recovery.push(d),
            None => return Err(format!("no commit within 90 s after fault {}", report.faults)),
        }
    }
    report.produced = stream.finish().await?;
    wait_drained(&config, &topic, Duration::from_secs(180)).await?;
    stop_foreign.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(f) = foreign {
        let commits = f.await.map_err(|e| e.to_string())?;
        report.detail = format!("{commits} foreign commits");
    }
    report.restarts = pipeline.status().await.map_err(|e| e.to_string())?.restarts;
    pipeline.shutdown().await.map_err(|e| e.to_string())?;
    finish_audit(&config, report).await?;
    if case == "slow-sink" && peak_buffered > 2_000 + 4 * 200 {
        report.ok = false;
        report.detail = format!("buffer grew to {peak_buffered} records under back-pressure");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Starts `exactly run`; its warnings and errors go to `<config's dir>/exactly-<n>.log`, kept for a
/// failed case's post-mortem.
fn spawn_exactly(opts: &ChaosOptions, config_file: &Path) -> Result<std::process::Child, String> {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = config_file.with_file_name(format!("exactly-{n}.log"));
    let log = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    kit::exactly_run(&opts.exactly_bin, config_file, None)
        .env("RUST_LOG", "warn")
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", opts.exactly_bin.display()))
}

/// SIGTERM (the open epoch is committed), then the exit status must be 0.
async fn stop_gracefully(mut child: std::process::Child) -> Result<(), String> {
    kit::sigterm(&child)?;
    let status =
        tokio::task::spawn_blocking(move || child.wait()).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("graceful stop exited with {status}"));
    }
    Ok(())
}

async fn wait_epoch_beyond(config: &PipelineConfig, epoch: u64, since: Instant) -> Option<Duration> {
    while since.elapsed() < Duration::from_secs(90) {
        if table_progress(config).await.1 > epoch {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// The end of a case whose pipelines run as processes: the stream stops, the table drains,
/// every process stops gracefully, the audit runs, the case's files go.
async fn finish_processes(
    stream: Stream,
    config: &PipelineConfig,
    topic: &str,
    dir: &Path,
    children: Vec<std::process::Child>,
    report: &mut CaseReport,
) -> Result<(), String> {
    report.produced = stream.finish().await?;
    wait_drained(config, topic, Duration::from_secs(180)).await?;
    for child in children {
        stop_gracefully(child).await?;
    }
    finish_audit(config, report).await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// `exactly run` SIGKILLed at random moments and started again; with `fresh_disk`, its
/// checkpoint is persisted (`checkpoint.remote`, a directory standing for the object store) and
/// the local checkpoint directory is deleted after each kill: every restart restores and
/// catches up.
async fn sigkill_case(
    kind: &str,
    seed: u64,
    opts: &ChaosOptions,
    report: &mut CaseReport,
    fresh_disk: bool,
) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (topic, dir, mut config) = setup(kind, opts, &opts.brokers).await?;
    if fresh_disk {
        config.checkpoint.remote = Some(exactly::config::TableLocation::local(&dir.join("remote")));
        config.checkpoint.persist_every_epochs = 3;
        config.checkpoint.persist_interval_ms = 500;
    }
    let file = kit::write_config(&config, &dir)?;
    let stream = start_stream(&opts.brokers, &topic, opts.rate);
    let mut child = spawn_exactly(opts, &file)?;
    for _ in 0..opts.faults {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
        let epoch = table_progress(&config).await.1;
        child.kill().map_err(|e| e.to_string())?; // SIGKILL
        child.wait().map_err(|e| e.to_string())?;
        if fresh_disk {
            match std::fs::remove_dir_all(config.checkpoint_dir()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("cannot delete the checkpoint: {e}")),
                _ => {}
            }
        }
        report.faults += 1;
        report.restarts += 1;
        let t0 = Instant::now();
        child = spawn_exactly(opts, &file)?;
        match wait_epoch_beyond(&config, epoch, t0).await {
            Some(d) => report.recovery.push(d),
            None => return Err("no commit within 90 s after a restart".into()),
        }
    }
    finish_processes(stream, &config, &topic, &dir, vec![child], report).await
}

/// Three group members (`source.group_id`) share the topic; a random one is SIGKILLed mid-epoch
/// and replaced. Recovery is the pause from the kill to the first commit of one of its
/// partitions by another member (the group waits a session timeout for the silent member). The
/// audit also checks that no member committed a partition after another claimed it.
async fn group_case(kind: &str, seed: u64, opts: &ChaosOptions, report: &mut CaseReport) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (topic, dir, mut config) = setup(kind, opts, &opts.brokers).await?;
    config.source.group_id = Some(format!("{}-group", config.id));
    config.source.properties.insert("session.timeout.ms".into(), "6000".into());
    let file = kit::write_config(&config, &dir)?;
    let table = config.table_path().ok_or("a delta sink")?;
    let commits = || async {
        match exactly::sink::delta::load_table(table.clone()).await {
            Ok(Some(t)) => exactly::verify::member_commits(&t).await.unwrap_or_default(),
            _ => Vec::new(),
        }
    };
    let stream = start_stream(&opts.brokers, &topic, opts.rate);
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(spawn_exactly(opts, &file)?);
    }
    for _ in 0..opts.faults {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
        let mut victim = members.swap_remove(rng.random_range(0..members.len()));
        let name = exactly::source::group::member_name_for(victim.id());
        let _ = victim.kill(); // SIGKILL, mid-epoch
        victim.wait().map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        report.faults += 1;
        report.restarts += 1;
        members.push(spawn_exactly(opts, &file)?);
        let log = commits().await;
        let since = log.last().map_or(0, |c| c.version);
        let mut owner = std::collections::BTreeMap::new();
        for c in &log {
            for p in &c.claim {
                owner.insert(p.clone(), c.member.clone());
            }
        }
        let lost: Vec<String> = owner.into_iter().filter(|(_, m)| *m == name).map(|(p, _)| p).collect();
        if lost.is_empty() {
            continue; // it held no partition yet
        }
        let mut recovered = None;
        while t0.elapsed() < Duration::from_secs(90) {
            let taken = commits()
                .await
                .iter()
                .any(|c| c.version > since && c.member != name && c.ranges.iter().any(|(p, _, _, _)| lost.contains(p)));
            if taken {
                recovered = Some(t0.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match recovered {
            Some(d) => report.recovery.push(d),
            None => return Err("no other member committed the killed member's partitions within 90 s".into()),
        }
    }
    finish_processes(stream, &config, &topic, &dir, members, report).await
}

async fn unwritable_case(kind: &str, seed: u64, opts: &ChaosOptions, report: &mut CaseReport) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (topic, dir, mut config) = setup(kind, opts, &opts.brokers).await?;
    config.supervisor.max_restarts = 3;
    config.supervisor.window_secs = 300;
    let stream = start_stream(&opts.brokers, &topic, opts.rate);
    for _ in 0..opts.faults.min(2) {
        // The checkpoint write fails every time (a full disk or a read-only volume; the fail
        // point stands in because root ignores file permissions): the pipeline must stop with
        // a clear error after its restart budget, having lost nothing.
        let failpoints = Arc::new(FailPoints::new());
        let sink = exactly::pipeline::sink_for(&config, failpoints.clone()).map_err(|e| e.to_string())?;
        let pipeline =
            Pipeline::start_with(config.clone(), sink, RunOptions { failpoints: failpoints.clone(), ..Default::default() })
                .await
                .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
        failpoints.arm("mid-checkpoint-write", FailAction::Error, None);
        report.faults += 1;
        let outcome = tokio::time::timeout(Duration::from_secs(120), pipeline.wait())
            .await
            .map_err(|_| "the pipeline did not stop".to_string())?;
        match outcome {
            Err(exactly::Error::RestartBudgetSpent { last_failure, restarts, .. }) if last_failure.contains("fail point") => {
                report.restarts += restarts as u64;
            }
            other => return Err(format!("expected a stop on the restart budget naming the checkpoint failure, got {other:?}")),
        }
        // Fixed: a restart resumes exactly once.
        let t0 = Instant::now();
        let epoch = table_progress(&config).await.1;
        let sink = exactly::pipeline::sink_for(&config, Default::default()).map_err(|e| e.to_string())?;
        let pipeline = Pipeline::start(config.clone(), sink).await.map_err(|e| e.to_string())?;
        match wait_epoch_beyond(&config, epoch, t0).await {
            Some(d) => report.recovery.push(d),
            None => return Err("no commit within 90 s after the fix".into()),
        }
        pipeline.shutdown().await.map_err(|e| e.to_string())?;
    }
    report.produced = stream.finish().await?;
    let sink = exactly::pipeline::sink_for(&config, Default::default()).map_err(|e| e.to_string())?;
    let pipeline = Pipeline::start(config.clone(), sink).await.map_err(|e| e.to_string())?;
    wait_drained(&config, &topic, Duration::from_secs(180)).await?;
    pipeline.shutdown().await.map_err(|e| e.to_string())?;
    finish_audit(&config, report).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The broker-restart case runs its own broker (port 19092), so restarting it never disturbs
/// anything else using the shared one.
async fn broker_case(kind: &str, seed: u64, opts: &ChaosOptions, report: &mut CaseReport) -> Result<(), String> {
    if std::env::var("KAFKA_BROKERS").is_ok_and(|b| !b.starts_with("127.0.0.1")) {
        report.ok = true;
        report.detail = "skipped: an external cluster is configured".into();
        return Ok(());
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let kafka = |cmd: &str| {
        let out = std::process::Command::new(&opts.kafka_script)
            .arg(cmd)
            .env("KAFKA_PORT", "19092")
            .env_remove("KAFKA_BROKERS")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!("scripts/kafka {cmd}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    let brokers = tokio::task::block_in_place(|| kafka("up"))?;
    let (topic, dir, config) = setup(kind, opts, &brokers).await?;
    let stream = start_stream(&brokers, &topic, opts.rate);
    let sink = exactly::pipeline::sink_for(&config, Default::default()).map_err(|e| e.to_string())?;
    let pipeline = Pipeline::start(config.clone(), sink).await.map_err(|e| e.to_string())?;
    let mut progress = pipeline.progress();
    for _ in 0..opts.faults.min(2) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1_500))).await;
        tokio::task::block_in_place(|| kafka("down"))?;
        report.faults += 1;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2_000))).await;
        tokio::task::block_in_place(|| kafka("up"))?;
        drain(&mut progress); // only commits after the broker is back count
        match wait_recovered(&mut progress, Instant::now(), None).await {
            Some(_) => report.recovery.push(t0.elapsed()),
            None => return Err(format!("no commit within 90 s after the broker came back ({})", stream.state())),
        }
    }
    report.produced = stream.finish().await?;
    wait_drained(&config, &topic, Duration::from_secs(180)).await?;
    report.restarts = pipeline.status().await.map_err(|e| e.to_string())?.restarts;
    pipeline.shutdown().await.map_err(|e| e.to_string())?;
    finish_audit(&config, report).await?;
    // The case's own broker is not left running.
    let _ = tokio::task::block_in_place(|| kafka("down"));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The object store holding the tables is stopped mid-epoch and started again (a SeaweedFS of
/// the case's own on port 8533, so nothing else is disturbed): commits fail while it is away,
/// the pipeline restarts within its budget, and the tables end exactly once.
async fn store_case(kind: &str, seed: u64, opts: &ChaosOptions, report: &mut CaseReport) -> Result<(), String> {
    const PORT: &str = "8533";
    let mut rng = StdRng::seed_from_u64(seed);
    let s3 = |cmd: &str| {
        let out =
            std::process::Command::new(&opts.s3_script).arg(cmd).env("S3_PORT", PORT).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!("scripts/s3 {cmd}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    let endpoint = tokio::task::block_in_place(|| s3("up"))?;
    let (topic, dir, mut config) = setup(kind, opts, &opts.brokers).await?;
    let location = exactly::config::TableLocation::parse(&format!("s3://exactly/{topic}/table"))?;
    let SinkConfig::Delta { path, storage, .. } = &mut config.sink else { unreachable!() };
    *path = location;
    *storage = exactly::config::StorageOptions(
        [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "exactly"),
            ("AWS_SECRET_ACCESS_KEY", "exactly-local-secret"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let stream = start_stream(&opts.brokers, &topic, opts.rate);
    let sink = exactly::pipeline::sink_for(&config, Default::default()).map_err(|e| e.to_string())?;
    let pipeline = Pipeline::start(config.clone(), sink).await.map_err(|e| e.to_string())?;
    let mut progress = pipeline.progress();
    for _ in 0..opts.faults.min(2) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1_500))).await;
        tokio::task::block_in_place(|| s3("down"))?;
        report.faults += 1;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..3_000))).await;
        tokio::task::block_in_place(|| s3("up"))?;
        drain(&mut progress); // only commits after the store is back count
        match wait_recovered(&mut progress, Instant::now(), None).await {
            Some(_) => report.recovery.push(t0.elapsed()),
            None => return Err(format!("no commit within 90 s after the store came back ({})", stream.state())),
        }
    }
    report.produced = stream.finish().await?;
    wait_drained(&config, &topic, Duration::from_secs(180)).await?;
    report.restarts = pipeline.status().await.map_err(|e| e.to_string())?.restarts;
    pipeline.shutdown().await.map_err(|e| e.to_string())?;
    finish_audit(&config, report).await?;
    let _ = tokio::task::block_in_place(|| s3("down"));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{}", d.as_millis())
}

fn median_max(all: &[Duration]) -> (String, String) {
    if all.is_empty() {
        return ("-".into(), "-".into());
    }
    let mut v = all.to_vec();
    v.sort();
    (ms(v[v.len() / 2]), ms(*v.last().unwrap()))
}

/// One line of the report: the name, then the reports' sums, recovery and verdict.
fn row(name: &str, rs: &[&CaseReport]) -> String {
    let sum = |f: fn(&CaseReport) -> u64| rs.iter().map(|r| f(r)).sum::<u64>();
    let rec: Vec<Duration> = rs.iter().flat_map(|r| r.recovery.clone()).collect();
    let (p50, max) = median_max(&rec);
    format!(
        "{:<26} {:>6} {:>8} {:>9} {:>10} {:>8} {:>8} {:>10} {:>15} {:>8}\n",
        name,
        sum(|r| r.faults),
        sum(|r| r.restarts),
        sum(|r| r.produced),
        sum(|r| r.committed),
        sum(|r| r.missing),
        sum(|r| r.duplicated),
        sum(|r| r.mismatched),
        format!("{p50}/{max}"),
        if rs.iter().all(|r| r.ok) { "PASS" } else { "FAIL" }
    )
}

/// The report table: one line per case (iterations summed), then the totals.
pub fn render(reports: &[CaseReport]) -> String {
    let mut s = format!(
        "{:<26} {:>6} {:>8} {:>9} {:>10} {:>8} {:>8} {:>10} {:>15} {:>8}\n",
        "case", "faults", "restarts", "produced", "committed", "missing", "dup", "mismatch", "recovery ms p50/max", "verdict"
    );
    let mut cases: Vec<&str> = Vec::new();
    for r in reports {
        if !cases.contains(&r.case.as_str()) {
            cases.push(&r.case);
        }
    }
    for case in cases {
        let rs: Vec<&CaseReport> = reports.iter().filter(|r| r.case == case).collect();
        s.push_str(&row(case, &rs));
        for r in rs.iter().filter(|r| !r.ok) {
            s.push_str(&format!("    {} ({}): {}\n", r.case, r.kind, r.detail));
        }
    }
    s.push_str(&row("total", &reports.iter().collect::<Vec<_>>()));
    s
}
