//! `exactly-bench`: the physical limits the benchmark compares against, on the same topic.
//!
//! - `consume`: librdkafka reading the topic to nothing (one client, all partitions assigned,
//!   read_committed, the pipeline's fetch settings unless `--set` overrides them, batches from
//!   the consumer queue) — the ceiling no Kafka pipeline can pass here.
//! - `parquet`: the same records decoded to Arrow with the seed's schema, then encoded to
//!   Parquet in memory — decode and encode timed separately, and the decode's allocations
//!   counted (jemalloc's counters).
//!
//! - `changes`: produces the upsert benchmark's keyed changes (the seed's events keyed by id):
//!   `--initial` ids 0..keys in order, else `--count` changes of ids drawn at random from
//!   0..keys (seeded), each with a new value.
//!
//! - `restore`: rebuilds a partition-scoped dedup state (`state.scope = "partition"`) from a
//!   dedup table's rows, every partition of it, as a group member taking them does: the read
//!   and the rebuild timed separately.
//!
//! - `json` (feature `json-candidates`): JSON parser candidates against the decoder, on the
//!   topic's records in memory (`bench/json.rs`).
//!
//! Each prints one JSON object on stdout.

#[cfg(feature = "json-candidates")]
mod json;

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use deltalake::parquet::arrow::ArrowWriter;
use exactly::config::DecodeConfig;
use exactly::decode::Decoder;
use exactly::model::{Record, TopicPartition};
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092", global = true)]
    brokers: String,
    /// The topic.
    #[arg(long, global = true, default_value = "bench")]
    topic: String,
    /// Extra librdkafka properties, `key=value` (repeatable), applied after the defaults — the
    /// same tuning and security settings the pipeline gets through `source.properties`.
    #[arg(long = "set", global = true, value_parser = parse_property)]
    properties: Vec<(String, String)>,
}

impl Args {
    /// The brokers with the `--set` properties (security settings included: `--set
    /// security.protocol=SASL_SSL --set sasl.mechanism=…`).
    fn connection(&self) -> exactly::source::Connection {
        exactly::source::Connection::plaintext(self.brokers.as_str()).with_properties(self.properties.iter().cloned())
    }
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected key=value, got `{s}`"))?;
    Ok((k.to_string(), v.to_string()))
}

#[derive(Subcommand)]
enum Cmd {
    /// Read the whole topic to nothing.
    Consume,
    /// Decode and Parquet-encode the whole topic in memory.
    Parquet,
    /// Print the sum of the topic's high watermarks (0 if the topic does not exist).
    Watermarks,
    /// JSON parser candidates against the decoder on the topic's records, one core.
    #[cfg(feature = "json-candidates")]
    Json {
        /// Passes per candidate; the best counts.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Rebuild each partition's dedup state (by `id`, event time `ts`) from a table's rows.
    Restore {
        /// The dedup table.
        #[arg(long)]
        table: std::path::PathBuf,
        /// Its partitions: 0..partitions.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Produce keyed changes: every id of 0..keys once (`--initial`), or `count` random ones.
    Changes {
        /// The key space: ids 0..keys.
        #[arg(long)]
        keys: u64,
        /// Changes of random ids (without `--initial`).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Every id once, in order.
        #[arg(long)]
        initial: bool,
        /// The seed of the random ids and values.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Produces keyed changes (see [`Cmd::Changes`]) as fast as the broker takes them.
fn produce_changes(args: &Args, keys: u64, count: u64, initial: bool, seed: u64) -> u64 {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = args
        .connection()
        .client_config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        // xorshift64*: the same ids for the same seed, whatever the machine.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let n = if initial { keys } else { count };
    for i in 0..n {
        let id = if initial { i } else { next() % keys };
        let key = id.to_string();
        let value = exactly::source::producer::event_json(id, 1_000 + next() % 1_000_000, 1_700_000_000_000 + i as i64);
        let mut record = BaseRecord::to(&args.topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    n
}

/// Reads every record of the topic; `keep` decides whether they are kept in memory.
fn read_all(args: &Args, keep: bool) -> (u64, u64, Duration, Vec<Record>) {
    let topic = &args.topic;
    let mut config = args.connection().client_config_with(exactly::source::FETCH_DEFAULTS);
    config.set("group.id", "exactly-bench-limit").set("enable.auto.commit", "false").set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config.create().expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut ends = std::collections::HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        let (lo, hi) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10)).expect("watermarks");
        if hi > lo {
            ends.insert(*p, hi);
            tpl.add_partition_offset(topic, *p, Offset::Offset(lo)).unwrap();
        }
    }
    consumer.assign(&tpl).expect("assign");
    // librdkafka's fastest read path: batches from the consumer queue (the pipeline reads its
    // partition queues the same way).
    // SAFETY: the client outlives the queue and every message below; each message is destroyed once.
    let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
    let mut buf: Vec<*mut rdsys::rd_kafka_message_t> = vec![std::ptr::null_mut(); 10_000];
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut kept = Vec::new();
    let start = Instant::now();
    while !ends.is_empty() {
        let got = unsafe { rdsys::rd_kafka_consume_batch_queue(queue, 5_000, buf.as_mut_ptr(), buf.len()) };
        assert!(got > 0, "no record for 5 s before the end of the topic");
        for &ptr in &buf[..got as usize] {
            let m = unsafe { &*ptr };
            assert_eq!(m.err, rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR, "consume error");
            n += 1;
            bytes += (m.len + m.key_len) as u64;
            if keep {
                let bytes_of = |p: *mut std::ffi::c_void, len: usize| {
                    (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p as *const u8, len) }.to_vec())
                };
                let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
                let ts = unsafe { rdsys::rd_kafka_message_timestamp(ptr, &mut kind) };
                kept.push(Record {
                    tp: TopicPartition::new(topic, m.partition),
                    offset: m.offset,
                    timestamp_ms: (ts != -1).then_some(ts),
                    key: bytes_of(m.key, m.key_len),
                    payload: bytes_of(m.payload, m.len),
                    headers: Vec::new(),
                });
            }
            if ends.get(&m.partition).is_some_and(|hi| m.offset + 1 >= *hi) {
                ends.remove(&m.partition);
            }
            unsafe { rdsys::rd_kafka_message_destroy(ptr) };
        }
    }
    unsafe { rdsys::rd_kafka_queue_destroy(queue) };
    (n, bytes, start.elapsed(), kept)
}

/// CPU seconds (user + system) of this process so far: what reading costs, beside how fast.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// See [`Cmd::Restore`].
fn restore(topic: &str, table: &std::path::Path, partitions: i32) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("exactly-bench-restore-{}", std::process::id()));
    let decoded = Decoder::new(&DecodeConfig::seed()).expect("the seed's decoder").schema();
    let dedup = exactly::config::DedupConfig::by_watermark(&["id"], "ts", 86_400_000);
    let states = std::sync::Arc::new(exactly::state::PartitionStates::new(
        "bench",
        dir.clone(),
        &Default::default(),
        decoded,
        Some(&dedup),
        None,
    ));
    let targets: Vec<(TopicPartition, i64)> = (0..partitions).map(|p| (TopicPartition::new(topic, p), i64::MAX)).collect();
    let tps: Vec<TopicPartition> = targets.iter().map(|(tp, _)| tp.clone()).collect();
    let read = states.restore_read(&tps).expect("read");
    let mut rebuild = states.rebuild(&targets).expect("rebuild");
    let t0 = Instant::now();
    let mut rows = 0;
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let table = exactly::sink::delta::load_table(table).await.expect("load").expect("a table");
        let files: Vec<_> = table.snapshot().expect("snapshot").log_data().iter().map(|f| f.object_store_path()).collect();
        let names: Vec<&str> = read.columns.iter().map(String::as_str).collect();
        exactly::sink::delta::rows::for_each_batch(&table, &files, &names, &mut |b| {
            rows += b.num_rows();
            rebuild.add(&b)
        })
        .await
        .expect("rows")
    });
    let keys = rebuild.finish().expect("finish");
    let secs = t0.elapsed().as_secs_f64();
    drop(states);
    let _ = std::fs::remove_dir_all(&dir);
    serde_json::json!({"rows": rows, "keys": keys, "partitions": partitions, "seconds": secs, "keys_per_s": keys as f64 / secs})
}

/// Allocations this process asked jemalloc for so far (its counters; the calling thread's cache
/// flushed into them first). `None` without jemalloc.
fn allocations() -> Option<u64> {
    #[cfg(feature = "jemalloc")]
    {
        use std::ffi::{c_void, CStr};
        use tikv_jemalloc_sys::mallctl;
        // SAFETY: jemalloc's documented controls, with buffers of the types it documents
        // (`epoch` and the counters: uint64_t; `thread.tcache.flush`: no data).
        unsafe {
            let flushed =
                mallctl(c"thread.tcache.flush".as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0);
            let mut epoch: u64 = 1;
            let mut len = std::mem::size_of::<u64>();
            let refreshed = mallctl(
                c"epoch".as_ptr(),
                &mut epoch as *mut u64 as *mut c_void,
                &mut len,
                &mut epoch as *mut u64 as *mut c_void,
                len,
            );
            let read = |name: &CStr| -> Option<u64> {
                let (mut v, mut len) = (0u64, std::mem::size_of::<u64>());
                (mallctl(name.as_ptr(), &mut v as *mut u64 as *mut c_void, &mut len, std::ptr::null_mut(), 0) == 0).then_some(v)
            };
            // 4096: every arena (`MALLCTL_ARENAS_ALL`).
            let small = read(c"stats.arenas.4096.small.nrequests")?;
            let large = read(c"stats.arenas.4096.large.nrequests")?;
            (flushed == 0 && refreshed == 0).then_some(small + large)
        }
    }
    #[cfg(not(feature = "jemalloc"))]
    None
}

fn main() {
    let args = Args::parse();
    match args.cmd {
        Cmd::Consume => {
            let cpu0 = cpu_seconds();
            let (n, bytes, t, _) = read_all(&args, false);
            let (s, cpu) = (t.as_secs_f64(), cpu_seconds() - cpu0);
            println!(
                "{}",
                serde_json::json!({"records": n, "bytes": bytes, "seconds": s, "records_per_s": n as f64 / s, "mb_per_s": bytes as f64 / s / 1e6,
                    "cpu_s_per_million": cpu / n as f64 * 1e6})
            );
        }
        #[cfg(feature = "json-candidates")]
        Cmd::Json { rounds } => {
            let (n, _, _, records) = read_all(&args, true);
            println!("{}", serde_json::json!({"records": n, "candidates": json::measure(&records, rounds)}));
        }
        Cmd::Restore { table, partitions } => println!("{}", restore(&args.topic, &table, partitions)),
        Cmd::Changes { keys, count, initial, seed } => {
            let t0 = Instant::now();
            let n = produce_changes(&args, keys, count, initial, seed);
            println!("{}", serde_json::json!({"records": n, "seconds": t0.elapsed().as_secs_f64()}));
        }
        Cmd::Watermarks => {
            let consumer: BaseConsumer = args.connection().client_config().create().expect("consumer");
            let md = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10)).expect("metadata");
            let sum: i64 = md.topics()[0]
                .partitions()
                .iter()
                .map(|p| consumer.fetch_watermarks(&args.topic, p.id(), Duration::from_secs(10)).map(|w| w.1).unwrap_or(0))
                .sum();
            println!("{sum}");
        }
        Cmd::Parquet => {
            let (n, _, _, records) = read_all(&args, true);
            let decoder = Decoder::new(&DecodeConfig::seed()).expect("the seed's JSON decoder");
            let allocations0 = allocations();
            let t0 = Instant::now();
            let batches: Vec<_> = records.chunks(8192).map(|c| decoder.decode(c).rows).collect();
            let decode = t0.elapsed().as_secs_f64();
            let decode_allocations = allocations().zip(allocations0).map(|(a, b)| a.saturating_sub(b));
            let encode_with =
                |batches: &[deltalake::arrow::record_batch::RecordBatch],
                 props: Option<deltalake::parquet::file::properties::WriterProperties>| {
                    let t1 = Instant::now();
                    let mut out = Vec::new();
                    let mut w = ArrowWriter::try_new(&mut out, batches[0].schema(), props).expect("writer");
                    for b in batches {
                        w.write(b).expect("write");
                    }
                    w.close().expect("close");
                    (t1.elapsed().as_secs_f64(), out.len())
                };
            let (encode, bytes) = encode_with(&batches, None);
            // As the sink writes them: with the `_epoch` column and its writer properties.
            let sink_batches: Vec<_> = batches.iter().map(|b| exactly::decode::with_epoch(b, 7).expect("epoch")).collect();
            let props = exactly::sink::parquet::writer_properties(&sink_batches, &Default::default());
            let allocations1 = allocations();
            let (sink_encode, sink_bytes) = encode_with(&sink_batches, Some(props));
            let sink_encode_allocations = allocations().zip(allocations1).map(|(a, b)| a.saturating_sub(b));
            println!(
                "{}",
                serde_json::json!({"records": n, "decode_seconds": decode, "encode_seconds": encode, "parquet_bytes": bytes,
                    "decode_records_per_s": n as f64 / decode, "encode_records_per_s": n as f64 / encode,
                    "sink_encode_records_per_s": n as f64 / sink_encode, "sink_parquet_bytes": sink_bytes,
                    "decode_allocations": decode_allocations, "decode_batches": n.div_ceil(8192),
                    "decode_allocations_per_record": decode_allocations.map(|a| a as f64 / n as f64),
                    "sink_encode_allocations_per_record": sink_encode_allocations.map(|a| a as f64 / n as f64)})
            );
        }
    }
}
