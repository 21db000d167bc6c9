//! Helpers shared by the integration tests.

#![allow(dead_code)]

// A proxy in front of the real S3 server that loses one answer.
pub mod proxy;

use crate::kit;
pub use crate::kit::unique;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deltalake::arrow::array::{Array, Int32Array, Int64Array, StringArray};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::Action;
use exactly::config::{DecodeConfig, PipelineConfig, StorageOptions, TableLocation};
use exactly::model::{OFFSET_COL, PARTITION_COL, TOPIC_COL};
use exactly::sink::EpochBatch;
use exactly::source::producer::{produce, ProduceOptions, ProduceReport};
use tokio::sync::mpsc::UnboundedReceiver;

/// The brokers under test: `KAFKA_BROKERS`, or the broker `scripts/kafka up` starts.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| "127.0.0.1:9092".into())
}

/// A plaintext connection to the brokers under test.
pub fn kafka() -> exactly::source::Connection {
    exactly::source::Connection::plaintext(brokers())
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The body of an HTTP/1.0 GET of `path` on 127.0.0.1:`port` (a metrics endpoint, Prometheus's
/// API); `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf.split_once("\r\n\r\n")?.1.to_string())
}

/// Creates a fresh topic with `partitions` partitions and returns its name.
pub async fn topic(prefix: &str, partitions: i32) -> String {
    let name = unique(prefix);
    assert!(exactly::source::create_topic(&kafka(), &name, partitions, 1).await.expect("create topic"));
    name
}

/// Produces `count` events with ids starting at `first_id`.
pub async fn produce_events(topic: &str, first_id: u64, count: u64) -> ProduceReport {
    let mut opts = ProduceOptions::new(&brokers(), topic, count);
    opts.first_id = first_id;
    produce(&opts, std::future::pending()).await.expect("produce")
}

/// The seed's schema: `{"id": long, "value": string, "ts": timestamp}`.
pub fn seed_decode() -> DecodeConfig {
    DecodeConfig::seed()
}

/// A pipeline config for tests: the seed's schema, short epochs, checkpoint in `dir`.
pub fn config(id: &str, topic: &str, dir: &Path) -> PipelineConfig {
    let mut c = PipelineConfig::new(id, &[topic]);
    c.decode = seed_decode();
    c.source.brokers = brokers();
    c.epoch.interval_ms = 200;
    c.checkpoint.dir = Some(dir.join("checkpoint"));
    c.supervisor.backoff_ms = 10;
    c
}

/// Waits for `cond` to hold, checking every 50 ms, failing the test after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything committed through a channel sink, with the checks every test wants.
#[derive(Default)]
pub struct Committed {
    pub epochs: Vec<EpochBatch>,
}

impl Committed {
    /// Takes whatever epochs have arrived.
    pub fn drain(&mut self, rx: &mut UnboundedReceiver<EpochBatch>) {
        while let Ok(b) = rx.try_recv() {
            self.epochs.push(b);
        }
    }

    /// Records committed so far (rows and dead letters).
    pub fn records(&self) -> usize {
        self.epochs.iter().map(|e| e.row_count() + e.dead_letters.len()).sum()
    }

    /// Asserts the exactly-once properties: epochs numbered 1, 2, 3...; each epoch's ranges start
    /// where the previous ended; each partition's offsets strictly increase across the whole
    /// stream (no repeat) and every record lies inside its epoch's range; every event id
    /// `0..expected` appears exactly once.
    pub fn assert_exactly_once(&self, expected_ids: u64) {
        let mut last_end: BTreeMap<String, i64> = BTreeMap::new();
        let mut last_offset: BTreeMap<String, i64> = BTreeMap::new();
        let mut ids = BTreeMap::new();
        for (i, e) in self.epochs.iter().enumerate() {
            let first = self.epochs[0].epoch;
            assert_eq!(e.epoch, first + i as u64, "epochs must be contiguous");
            for r in &e.ranges {
                let key = r.tp.to_string();
                if let Some(prev) = last_end.get(&key) {
                    assert_eq!(*prev, r.start, "epoch {} range of {key} must start where the previous ended", e.epoch);
                }
                last_end.insert(key, r.end);
            }
            for (key, offset, id) in rows(e.output.rows()) {
                let range = e.ranges.iter().find(|r| r.tp.to_string() == key).expect("range for partition");
                assert!(offset >= range.start && offset < range.end, "offset {offset} outside epoch range");
                if let Some(prev) = last_offset.get(&key) {
                    assert!(offset > *prev, "{key}: offset {offset} after {prev}: repeated or out of order");
                }
                last_offset.insert(key, offset);
                *ids.entry(id).or_insert(0u32) += 1;
            }
        }
        let dups: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
        assert!(dups.is_empty(), "duplicated ids: {dups:?}");
        let missing: Vec<u64> = (0..expected_ids).filter(|id| !ids.contains_key(id)).collect();
        assert!(missing.is_empty(), "missing {} ids, first {:?}", missing.len(), &missing[..missing.len().min(10)]);
        assert_eq!(ids.len() as u64, expected_ids, "unexpected extra ids");
    }
}

/// `(topic/partition, offset, id)` of every row, in order.
pub fn rows(batches: &[RecordBatch]) -> Vec<(String, i64, u64)> {
    let mut out = Vec::new();
    for b in batches {
        let topic = b.column_by_name(TOPIC_COL).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        let part = b.column_by_name(PARTITION_COL).unwrap().as_any().downcast_ref::<Int32Array>().unwrap();
        let off = b.column_by_name(OFFSET_COL).unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        let id = b.column_by_name("id").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push((format!("{}/{}", topic.value(i), part.value(i)), off.value(i), id.value(i) as u64));
        }
    }
    out
}

/// A config writing to a Delta table in `dir/table` (dead letters in `dir/table_dead_letters`).
pub fn delta_config(id: &str, topic: &str, dir: &Path) -> PipelineConfig {
    let mut c = config(id, topic, dir);
    c.sink = exactly::config::SinkConfig::delta(dir.join("table"));
    c
}

/// The Python with the `deltalake` package (`scripts/setup` installs it).
pub fn python() -> String {
    std::env::var("EXACTLY_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/exactly/venv/bin/python")
    })
}

/// The Kafka values an independent writer in `scripts/` (Python, `scripts/setup` installs what
/// it imports) prints as hex lines for `records` (JSON lines on its stdin).
pub fn python_values(script: &str, args: &[&str], records: &[String]) -> Vec<Vec<u8>> {
    use std::io::Write;
    let path = format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new(python())
        .arg(path)
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python {script} (scripts/setup installs what it needs): {e}"));
    child.stdin.take().unwrap().write_all(records.join("\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| (0..l.len()).step_by(2).map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap()).collect())
        .collect()
}

/// Produces `values` to `topic`, in order, without keys.
pub async fn send_values(topic: &str, values: &[Vec<u8>]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka().client_config().create().unwrap();
    for v in values {
        producer.send(FutureRecord::<(), _>::to(topic).payload(v), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
}

/// What Spark (the bench's pyspark and delta-spark) answers for `request` (see
/// scripts/read_spark.py `--many`).
pub fn spark(request: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("EXACTLY_CACHE").unwrap_or_else(|_| format!("{home}/.cache/exactly"));
    let mut child = std::process::Command::new(format!("{cache}/bench-venv/bin/python"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/read_spark.py"))
        .arg("--many")
        .env_remove("LD_LIBRARY_PATH")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run Spark (bench/setup installs it)");
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "Spark failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A reader's records, without `_kafka_timestamp` (Spark's answer leaves it out), in one order.
pub fn canonical(records: &serde_json::Value) -> Vec<String> {
    let mut rows: Vec<String> = records
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("_kafka_timestamp");
            r.to_string()
        })
        .collect();
    rows.sort();
    rows
}

/// Reads a Delta table with Python `deltalake`, an independent implementation.
pub fn read_with_python(table: &Path) -> serde_json::Value {
    python_reader(table, &[])
}

/// [`read_with_python`] with every row under `records` (see scripts/read_delta.py).
pub fn read_rows_with_python(table: &Path) -> serde_json::Value {
    python_reader(table, &["--rows"])
}

/// Asserts that each column's Delta type, as the Python reader names it, contains its `want`.
pub fn assert_types(read: &serde_json::Value, want: &[(&str, &str)]) {
    for (column, want) in want {
        let got = read["types"][column].as_str().unwrap_or_default().to_lowercase();
        assert!(got.contains(want), "{column}: {got}");
    }
}

/// The named columns of every row [`read_rows_with_python`] returned, one JSON array per row.
pub fn row_values(read: &serde_json::Value, columns: &[&str]) -> Vec<serde_json::Value> {
    read["records"]
        .as_array()
        .expect("read with --rows")
        .iter()
        .map(|r| serde_json::Value::Array(columns.iter().map(|c| r[c].clone()).collect()))
        .collect()
}

/// The reasons in a dead-letter table, in partition and offset order (read by Python).
pub fn dead_letter_reasons(table: &Path) -> Vec<String> {
    let read = read_rows_with_python(table);
    read["records"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap().to_string()).collect()
}

fn python_reader(table: &Path, args: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/read_delta.py");
    // cargo's LD_LIBRARY_PATH (build outputs, toolchain libs) must not leak into Python's
    // native extensions.
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(table)
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run python (scripts/setup installs it)");
    assert!(out.status.success(), "python reader failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every `txn` version the Delta log of `table` (any store) holds for `app_id`, one per commit
/// that wrote it (empty: no table).
pub async fn txn_versions(table: impl Into<TableLocation>, app_id: &str) -> Vec<i64> {
    kit::txn_versions(&table.into(), app_id).await.unwrap()
}

/// Every commit of the table's log as delta-rs reads it: `(version, actions)`, oldest first
/// (empty: no table).
pub async fn log(table: impl Into<TableLocation>) -> Vec<(u64, Vec<Action>)> {
    kit::log_commits(&table.into()).await.unwrap()
}

/// The commits of the table's log whose operation is `op` (e.g. `OPTIMIZE`).
pub async fn commits_of(table: impl Into<TableLocation>, op: &str) -> Vec<Vec<Action>> {
    let of_op =
        |actions: &[Action]| actions.iter().any(|a| matches!(a, Action::CommitInfo(i) if i.operation.as_deref() == Some(op)));
    log(table).await.into_iter().map(|(_, a)| a).filter(|a| of_op(a)).collect()
}

/// Asserts no epoch was committed twice to `table`.
pub async fn assert_each_epoch_committed_once(table: impl Into<TableLocation>, pipeline: &str) {
    let table = table.into();
    let versions = txn_versions(table.clone(), pipeline).await;
    let mut dedup = versions.clone();
    dedup.dedup();
    assert_eq!(versions, dedup, "an epoch was committed twice to {table}");
}

/// Sum of the high watermarks of a topic's partitions.
pub async fn high_watermarks(topic: &str) -> i64 {
    exactly::source::high_watermark_sum(&kafka(), topic, Duration::from_secs(10)).await.unwrap()
}

/// The sum of the cut a Delta table recorded for pipeline `id` over `topic`'s partitions.
pub async fn table_cut(table: impl Into<TableLocation>, id: &str, topic: &str) -> i64 {
    let table = table.into();
    let Some(t) = exactly::sink::delta::load_table(table.clone()).await.unwrap() else { return 0 };
    let tps =
        exactly::source::preflight(&kafka(), exactly::config::Subscription::Named(&[topic.to_string()]), Duration::from_secs(10))
            .await
            .unwrap();
    exactly::sink::delta::recorded_cut(&t, &table, id, &tps).await.unwrap().values().sum()
}

/// Waits until the table's recorded cut covers every offset the topic holds.
pub async fn wait_table_drained(table: impl Into<TableLocation>, id: &str, topic: &str, deadline: Duration) {
    let table = table.into();
    let want = high_watermarks(topic).await;
    wait_until(deadline, &format!("table cut reaches {want}"), || async { table_cut(table.clone(), id, topic).await >= want })
        .await;
}

/// Runs the audit and asserts exactly-once; returns it.
pub async fn assert_verified(config: &PipelineConfig) -> exactly::verify::Audit {
    let audit = exactly::verify::verify(config).await.unwrap();
    assert!(audit.ok(), "verify failed:\n{}", audit.render());
    audit
}

/// Starts `config` in-process with its configured sink (sharing the options' fail points).
pub async fn start(config: &PipelineConfig, options: exactly::pipeline::RunOptions) -> exactly::pipeline::Pipeline {
    let sink = exactly::pipeline::sink_for(config, options.failpoints.clone()).unwrap();
    exactly::pipeline::Pipeline::start_with(config.clone(), sink, options).await.unwrap()
}

/// Writes `config` as `dir/pipeline.toml`.
pub fn write_config(config: &exactly::PipelineConfig, dir: &Path) -> std::path::PathBuf {
    kit::write_config(config, dir).unwrap()
}

/// Starts `exactly run` on `config`. The config names its brokers (`KAFKA_BROKERS` would
/// replace them: the secured listeners of the security tests are not the plaintext one).
pub fn spawn(config: &Path, failpoints: Option<&str>) -> Child {
    kit::exactly_run(Path::new(env!("CARGO_BIN_EXE_exactly")), config, failpoints)
        .env("RUST_LOG", "off")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits up to `deadline` for `child` (started by [`spawn`]) to exit; its status and stderr.
/// A child still running at the deadline is SIGKILLed (so a failing test ends).
pub async fn wait_exit(mut child: Child, deadline: Duration, what: &str) -> (std::process::ExitStatus, String) {
    let pid = child.id().to_string();
    let waited = tokio::task::spawn_blocking(move || {
        let s = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        (s, err)
    });
    match tokio::time::timeout(deadline, waited).await {
        Ok(done) => done.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
            panic!("{what}: still running after {deadline:?}");
        }
    }
}

/// The Parquet files at the top of a local table's directory (unpartitioned tables' data files).
pub fn parquet_files(table: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(table)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect()
}

/// Starts `exactly run` on `config` and SIGKILLs it once the epoch it opens with has written its
/// Parquet files to `table` (held before its commit by a fail point): the files are there, the
/// commit is not.
pub async fn kill_with_files_written(config: &Path, table: &Path) {
    let parquet = || parquet_files(table).len();
    let before = parquet();
    let mut child = spawn(config, Some("after-parquet-write=sleep(60000)"));
    wait_until(Duration::from_secs(60), "the epoch's files", || async { parquet() > before }).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// SIGTERM (graceful: commits the open epoch), then waits for a clean exit.
pub async fn terminate(child: Child) {
    kit::sigterm(&child).unwrap();
    let (status, stderr) = wait_exit(child, Duration::from_secs(60), "exits after SIGTERM").await;
    assert!(status.success(), "graceful stop must exit 0: {status}; stderr: {stderr}");
}

/// A random generator seeded from `EXACTLY_SEED`, or at random (printed, so a failure can be
/// replayed with the same fault times).
pub fn seeded_rng(what: &str) -> rand::rngs::StdRng {
    let seed: u64 = std::env::var("EXACTLY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("{what} seed: {seed} (EXACTLY_SEED={seed} reproduces it)");
    rand::SeedableRng::seed_from_u64(seed)
}

/// Starts `exactly run` on `config` and SIGKILLs it `kills` times at random moments (300 ms to
/// 1.5 s after each start; the timing of the faults, not an assertion).
pub async fn sigkill_loop(config: &Path, kills: usize, rng: &mut impl rand::Rng) {
    for _ in 0..kills {
        let mut child = spawn(config, None);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
}

/// Every row of the Delta table at `table` (its current version), read straight from its
/// Parquet files.
pub async fn read_rows(table: &Path) -> Vec<RecordBatch> {
    let Some(t) = exactly::sink::delta::load_table(table).await.unwrap() else { return Vec::new() };
    let files: Vec<String> = t.get_file_uris().unwrap().collect();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for f in files {
            let path = f.strip_prefix("file://").unwrap_or(&f).to_string();
            let file = std::fs::File::open(&path).unwrap();
            let reader =
                deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
            out.extend(reader.map(|b| b.unwrap()));
        }
        out
    })
    .await
    .unwrap()
}

/// Every row of one Parquet file, as written (deletion vectors not applied).
pub fn read_file_rows(file: &Path) -> Vec<RecordBatch> {
    let reader =
        deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
            .unwrap()
            .build()
            .unwrap();
    reader.map(|b| b.unwrap()).collect()
}

/// Deletes `topic` and waits until the broker no longer lists it.
pub async fn delete_topic(topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = kafka().client_config().create().unwrap();
    let res = admin.delete_topics(&[topic], &AdminOptions::new()).await.unwrap();
    assert!(res.into_iter().all(|r| r.is_ok()), "delete {topic}");
    wait_until(Duration::from_secs(60), "the topic is gone", || async {
        exactly::source::preflight(&kafka(), exactly::config::Subscription::Named(&[topic.to_string()]), Duration::from_secs(5))
            .await
            .is_err()
    })
    .await;
}

/// Deletes `topic` and creates it again with `partitions` partitions: a new topic id, offsets
/// starting over.
pub async fn recreate_topic(topic: &str, partitions: i32) {
    delete_topic(topic).await;
    wait_until(Duration::from_secs(60), "the topic is created again", || async {
        exactly::source::create_topic(&kafka(), topic, partitions, 1).await.is_ok_and(|created| created)
    })
    .await;
}

/// Held by the tests that load the machine most — several pipeline processes at once, or a
/// broker restarted — so no two of them run together on a 2-core machine (the suite runs two
/// tests at a time): a broker's start-up or a group's session timeouts then stay what they are
/// meant to measure.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// The local server's endpoint (`scripts/s3 status`).
pub fn endpoint() -> String {
    std::env::var("EXACTLY_S3_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| "http://127.0.0.1:8333".into())
}

/// Storage options reaching the local S3 server (`scripts/s3`) with `secret` (its own is
/// `exactly-local-secret`).
pub fn options(secret: &str) -> StorageOptions {
    options_at(&endpoint(), secret)
}

/// Storage options reaching an S3 server at `endpoint` with `secret`.
pub fn options_at(endpoint: &str, secret: &str) -> StorageOptions {
    StorageOptions(BTreeMap::from([
        ("AWS_ENDPOINT_URL".to_string(), endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID".to_string(), "exactly".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), secret.to_string()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
    ]))
}

/// Storage options reaching the local S3 server with its own credentials.
pub fn s3_options() -> StorageOptions {
    options("exactly-local-secret")
}
