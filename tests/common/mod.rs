//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use exactly::config::PipelineConfig;
use exactly::producer::{produce, ProduceOptions, ProduceReport};
use exactly::record::EpochBatch;
use tokio::sync::mpsc::UnboundedReceiver;

/// The brokers under test: `KAFKA_BROKERS`, or the broker `scripts/kafka up` starts.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    )
}

/// Creates a fresh topic with `partitions` partitions and returns its name.
pub async fn topic(prefix: &str, partitions: i32) -> String {
    let name = unique(prefix);
    assert!(
        exactly::kafka::create_topic(&brokers(), &name, partitions, 1)
            .await
            .expect("create topic")
    );
    name
}

/// Produces `count` events with ids starting at `first_id`.
pub async fn produce_events(topic: &str, first_id: u64, count: u64) -> ProduceReport {
    let mut opts = ProduceOptions::new(&brokers(), topic, count);
    opts.first_id = first_id;
    produce(&opts, std::future::pending())
        .await
        .expect("produce")
}

/// A pipeline config for tests: short epochs, checkpoint in `dir`.
pub fn config(id: &str, topic: &str, dir: &Path) -> PipelineConfig {
    let mut c = PipelineConfig::new(id, &[topic]);
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
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
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

    /// Records committed so far.
    pub fn records(&self) -> usize {
        self.epochs.iter().map(|e| e.records.len()).sum()
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
                    assert_eq!(
                        *prev, r.start,
                        "epoch {} range of {key} must start where the previous ended",
                        e.epoch
                    );
                }
                last_end.insert(key, r.end);
            }
            for rec in &e.records {
                let key = rec.tp.to_string();
                let range = e
                    .ranges
                    .iter()
                    .find(|r| r.tp == rec.tp)
                    .expect("range for partition");
                assert!(
                    rec.offset >= range.start && rec.offset < range.end,
                    "offset {} outside epoch range",
                    rec.offset
                );
                if let Some(prev) = last_offset.get(&key) {
                    assert!(
                        rec.offset > *prev,
                        "{key}: offset {} after {prev}: repeated or out of order",
                        rec.offset
                    );
                }
                last_offset.insert(key, rec.offset);
                let v: serde_json::Value =
                    serde_json::from_slice(rec.payload.as_ref().unwrap()).unwrap();
                *ids.entry(v["id"].as_u64().unwrap()).or_insert(0u32) += 1;
            }
        }
        let dups: Vec<_> = ids
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| *id)
            .collect();
        assert!(dups.is_empty(), "duplicated ids: {dups:?}");
        let missing: Vec<u64> = (0..expected_ids)
            .filter(|id| !ids.contains_key(id))
            .collect();
        assert!(
            missing.is_empty(),
            "missing {} ids, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        assert_eq!(ids.len() as u64, expected_ids, "unexpected extra ids");
    }
}
