//! The demo producer (the seed's Python producer, in Rust): JSON events `{"id", "value", "ts"}`
//! keyed by id, at a given rate or count. For tests and the chaos suite it can mix in
//! duplicates (an earlier event re-sent as is) and malformed records of every kind the decoder
//! must route to the dead-letter table.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::error::{Error, Result};
use crate::source::Connection;

/// What to produce.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// The brokers and how to reach them.
    pub connection: Connection,
    /// Target topic.
    pub topic: String,
    /// Stop after this many records (all kinds counted); `None`: until shutdown.
    pub count: Option<u64>,
    /// Records per second; `None`: as fast as the broker takes them.
    pub rate: Option<u64>,
    /// First event id.
    pub first_id: u64,
    /// `value` is `event_{id % distinct_values}`: the key space of a `groupBy("value")`.
    pub distinct_values: u64,
    /// Every Nth record re-sends an earlier event unchanged (same key, same bytes).
    pub duplicate_every: Option<u64>,
    /// Every Nth record is malformed (rotating: not JSON, wrong type, missing field, not UTF-8).
    pub malformed_every: Option<u64>,
}

impl ProduceOptions {
    /// `count` well-formed events to `topic`.
    pub fn new(connection: impl Into<Connection>, topic: &str, count: u64) -> Self {
        ProduceOptions {
            connection: connection.into(),
            topic: topic.into(),
            count: Some(count),
            rate: None,
            first_id: 0,
            distinct_values: 10,
            duplicate_every: None,
            malformed_every: None,
        }
    }
}

/// What was produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProduceReport {
    /// Records acknowledged by the broker, all kinds.
    pub sent: u64,
    /// Distinct well-formed events.
    pub events: u64,
    /// Re-sent duplicates.
    pub duplicates: u64,
    /// Malformed records.
    pub malformed: u64,
}

/// The JSON of event `id`.
pub fn event_json(id: u64, distinct_values: u64, ts_ms: i64) -> String {
    format!(r#"{{"id":{id},"value":"event_{}","ts":{ts_ms}}}"#, id % distinct_values.max(1))
}

/// Malformed record number `n`, rotating through the kinds the decoder must reject.
pub fn malformed_record(n: u64) -> Vec<u8> {
    match n % 4 {
        0 => b"this is not json".to_vec(),
        1 => br#"{"id":"not-a-number","value":"event_x","ts":0}"#.to_vec(),
        2 => br#"{"value":"event_x"}"#.to_vec(),
        _ => vec![0xff, 0xfe, 0x7b, 0x00, 0xc3],
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Produces as asked until `count` is reached or `shutdown` resolves; waits for every delivery.
pub async fn produce(opts: &ProduceOptions, shutdown: impl Future<Output = ()>) -> Result<ProduceReport> {
    let producer: FutureProducer = opts
        .connection
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()?;
    tokio::pin!(shutdown);
    let started = Instant::now();
    let mut report = ProduceReport::default();
    let mut inflight: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut recent: VecDeque<(String, String)> = VecDeque::new();
    let mut next_id = opts.first_id;
    let mut n: u64 = 0;
    loop {
        if opts.count.is_some_and(|c| n >= c) {
            break;
        }
        if let Some(rate) = opts.rate {
            let due = started + Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
            let now = Instant::now();
            if due > now {
                tokio::select! {
                    _ = tokio::time::sleep(due - now) => {}
                    _ = &mut shutdown => break,
                }
            }
        } else if n % 1024 == 0 {
            // yield so a shutdown can be seen while producing flat out
            tokio::select! { biased; _ = &mut shutdown => break, _ = tokio::task::yield_now() => {} }
        }
        n += 1;
        let (key, payload): (String, Vec<u8>) = if opts.malformed_every.is_some_and(|k| k > 0 && n % k == 0) {
            report.malformed += 1;
            (format!("malformed-{n}"), malformed_record(report.malformed - 1))
        } else if opts.duplicate_every.is_some_and(|k| k > 0 && n % k == 0) && !recent.is_empty() {
            report.duplicates += 1;
            let (k, v) = recent[(n as usize) % recent.len()].clone();
            (k, v.into_bytes())
        } else {
            let id = next_id;
            next_id += 1;
            report.events += 1;
            let json = event_json(id, opts.distinct_values, now_ms());
            recent.push_back((id.to_string(), json.clone()));
            if recent.len() > 1000 {
                recent.pop_front();
            }
            (id.to_string(), json.into_bytes())
        };
        let mut record = FutureRecord::to(&opts.topic).key(key.as_bytes()).payload(&payload);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    inflight.push_back(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    settle(&mut inflight, &mut report, 1).await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(Error::Kafka(e)),
            }
        }
        if inflight.len() >= 50_000 {
            settle(&mut inflight, &mut report, 10_000).await?;
        }
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(60))).await.map_err(|e| Error::Actor(e.to_string()))??;
    let all = inflight.len();
    settle(&mut inflight, &mut report, all).await?;
    Ok(report)
}

async fn settle(inflight: &mut VecDeque<DeliveryFuture>, report: &mut ProduceReport, n: usize) -> Result<()> {
    for _ in 0..n {
        let Some(f) = inflight.pop_front() else { break };
        match f.await {
            Ok(Ok(_)) => report.sent += 1,
            Ok(Err((e, _))) => return Err(Error::Kafka(e)),
            Err(_) => return Err(Error::Actor("delivery report dropped".into())),
        }
    }
    Ok(())
}
