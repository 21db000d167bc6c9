//! Everything Kafka: the connection every client is made from ([`Connection`]: brokers, security,
//! raw properties), the start-up pre-flight check, topic admin, starting offsets,
//! per-partition statistics (high watermarks, for lag); reading a partition ([`fetch`]), the
//! consumer-group membership ([`group`]) and the demo producer ([`producer`]).

pub mod fetch;
pub mod group;
pub mod producer;
pub mod security;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::security::{self as sec, SecurityConfig};
use crate::config::{SourceConfig, StartingOffsets, Subscription};
use crate::error::{Error, Result};
use crate::model::{Offsets, TopicPartition};

/// The consumer type the pipeline uses: one client, one split queue per partition.
pub type PipelineConsumer = StreamConsumer<StatsContext>;

/// The latest high watermark and last stable offset seen per partition, from librdkafka's
/// statistics callback (no extra requests to the broker).
#[derive(Debug, Default, Clone)]
pub struct PartitionStats {
    inner: Arc<Mutex<HashMap<TopicPartition, Watermarks>>>,
}

/// Broker-side offsets of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// High watermark: offset of the next record to be written.
    pub high: i64,
    /// Last stable offset (what a read_committed consumer can reach).
    pub last_stable: i64,
    /// How far the application has read (librdkafka's `app_offset`: past the last record it
    /// was given, and past transaction markers and aborted records it skipped).
    pub read: Option<i64>,
}

impl PartitionStats {
    /// The last known watermarks of a partition.
    pub fn get(&self, tp: &TopicPartition) -> Option<Watermarks> {
        self.inner.lock().expect("stats lock").get(tp).copied()
    }
}

/// Client context that records partition statistics, publishes consumer lag (against the last
/// committed cut) every statistics interval, and routes librdkafka logs to `tracing`.
#[derive(Clone, Default)]
pub struct StatsContext {
    stats: PartitionStats,
    committed: Arc<Mutex<Offsets>>,
    /// Group mode: who is told when the group changes this member's partitions.
    group: Option<Arc<dyn GroupListener>>,
}

impl StatsContext {
    /// A context sharing `stats` and reading the committed cut from `committed`.
    pub fn new(stats: PartitionStats, committed: Arc<Mutex<Offsets>>) -> Self {
        StatsContext { stats, committed, group: None }
    }

    /// The same context for a group member: rebalances go to `listener`.
    pub fn with_group(mut self, listener: Arc<dyn GroupListener>) -> Self {
        self.group = Some(listener);
        self
    }
}

/// Group mode: what the pipeline does when the consumer group changes this member's
/// partitions. Called from librdkafka's rebalance callback, on the thread that polls the
/// group client (never an async executor thread), so the calls may block.
pub trait GroupListener: Send + Sync {
    /// `partitions` are about to be assigned to this member: where each starts reading.
    fn assigning(&self, partitions: &[TopicPartition]) -> Result<Offsets>;
    /// `partitions` are about to be taken away (`lost`: the member was already out of the
    /// group, e.g. paused past the session timeout). Returns once nothing of them is
    /// uncommitted.
    fn revoking(&self, partitions: &[TopicPartition], lost: bool);
    /// The assignment changed: partitions `added` are assigned, `removed` are not any more.
    fn changed(&self, added: Vec<TopicPartition>, removed: Vec<TopicPartition>);
}

fn partitions_in(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements().iter().map(|e| TopicPartition::new(e.topic(), e.partition())).collect()
}

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        let mut map = self.stats.inner.lock().expect("stats lock");
        for (topic, t) in &statistics.topics {
            for (p, s) in &t.partitions {
                if *p < 0 || s.hi_offset < 0 {
                    continue; // the internal UA partition, or not fetched yet
                }
                let ls = if s.ls_offset >= 0 { s.ls_offset } else { s.hi_offset };
                let tp = TopicPartition::new(topic, *p);
                if let Some(next) = self.committed.lock().expect("offsets lock").get(&tp) {
                    metrics::gauge!(crate::telemetry::metrics::CONSUMER_LAG, "topic" => topic.clone(), "partition" => p.to_string())
                        .set((ls - next).max(0) as f64);
                }
                let read = (s.app_offset >= 0).then_some(s.app_offset);
                map.insert(tp, Watermarks { high: s.hi_offset, last_stable: ls, read });
            }
        }
        crate::telemetry::process::record();
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility = fac, "{log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Transport errors are normal while a broker restarts; librdkafka reconnects by itself.
        tracing::warn!(target: "librdkafka", %error, reason, "kafka client error");
    }
}

impl ConsumerContext for StatsContext {
    /// Group mode's side of a rebalance: an assigned partition starts where the listener says
    /// (the table's record, never Kafka's committed offsets), its queue is split from the main
    /// queue before any record is fetched, and a revoked partition is unassigned only after its
    /// open epoch is aborted.
    fn rebalance(&self, base: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let tps = partitions_in(tpl);
        let cooperative = matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Some(group) = &self.group {
                    match group.assigning(&tps) {
                        Ok(offsets) => {
                            for tp in &tps {
                                if let Some(o) = offsets.get(tp) {
                                    let _ = tpl.set_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o));
                                }
                                detach_queue(base, tp);
                            }
                        }
                        Err(e) => {
                            // The listener has stopped the pipeline; assign nothing it cannot
                            // position.
                            tracing::error!(error = %e, "cannot position the partitions assigned by the group");
                            return;
                        }
                    }
                }
                let assigned = if cooperative { base.incremental_assign(tpl) } else { base.assign(tpl) };
                if let Err(e) = assigned {
                    tracing::error!(error = %e, "assigning the group's partitions failed");
                }
                if let Some(group) = &self.group {
                    group.changed(tps, Vec::new());
                }
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::error!(error = ?err, "consumer group rebalance error");
                }
                if let Some(group) = &self.group {
                    group.revoking(&tps, base.assignment_lost());
                }
                let unassigned = if cooperative { base.incremental_unassign(tpl) } else { base.unassign() };
                if let Err(e) = unassigned {
                    tracing::warn!(error = %e, "unassigning revoked partitions failed");
                }
                if let Some(group) = &self.group {
                    group.changed(Vec::new(), tps);
                }
            }
        }
    }
}

/// How every client of a pipeline reaches the brokers: the bootstrap servers, the security
/// settings and the raw properties of `[source]`. `run`, `verify`, `produce`, `topics`, `check`
/// and the pre-flight all make their clients from one, so a secured cluster works for each.
/// `Debug` shows the brokers and the security summary, never a secret.
#[derive(Clone)]
pub struct Connection {
    brokers: String,
    security: SecurityConfig,
    /// librdkafka properties of every client: the security section's, then `source.properties`.
    properties: Vec<(String, String)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.brokers, self.security.summary())
    }
}

impl Connection {
    /// Plaintext brokers with librdkafka's defaults (tests, a local broker).
    pub fn plaintext(brokers: impl Into<String>) -> Connection {
        Connection { brokers: brokers.into(), security: SecurityConfig::default(), properties: Vec::new() }
    }

    /// The connection `[source]` describes; secrets are read now, from where they are kept.
    pub fn of(source: &SourceConfig) -> Result<Connection> {
        let invalid = |p: sec::Problem| {
            Error::Config(crate::config::ConfigError::Invalid { path: "[source]".into(), field: p.field, problem: p.problem })
        };
        source.security.check(&source.properties).map_err(invalid)?;
        security::files_readable(&source.security).map_err(invalid)?;
        let mut properties = source
            .security
            .properties()
            .map_err(|p| Error::Config(crate::config::ConfigError::Secret { field: p.field, problem: p.problem }))?;
        properties.extend(source.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(Connection { brokers: source.brokers.clone(), security: source.security.clone(), properties })
    }

    /// The same connection with these raw librdkafka properties added (the bench tool's
    /// `--set`).
    pub fn with_properties(mut self, properties: impl IntoIterator<Item = (String, String)>) -> Connection {
        self.properties.extend(properties);
        self
    }

    /// The bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The security settings.
    pub fn security(&self) -> &SecurityConfig {
        &self.security
    }

    /// A client config: bootstrap servers, then `defaults` (which the connection's properties
    /// override), then the connection's properties.
    pub fn client_config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("client.id", "exactly").set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// A client config with the connection's properties.
    pub fn client_config(&self) -> ClientConfig {
        self.client_config_with(&[])
    }
}

impl From<&str> for Connection {
    fn from(brokers: &str) -> Connection {
        Connection::plaintext(brokers)
    }
}

impl From<&String> for Connection {
    fn from(brokers: &String) -> Connection {
        Connection::plaintext(brokers.as_str())
    }
}

impl From<&Connection> for Connection {
    fn from(c: &Connection) -> Connection {
        c.clone()
    }
}

/// librdkafka fetch settings the pipeline changes from librdkafka's defaults (a
/// `source.properties` entry overrides each). By default librdkafka stops fetching a partition
/// for `fetch.queue.backoff.ms` = 1 s whenever its prefetch queue is over `queued.min.messages`
/// (100,000 records, per partition with split queues): a consumer draining a backlog faster than
/// that empties its queue and waits, which capped reading at about 400,000 records/s here
/// (bench/README.md). A short backoff keeps the queue fed; a smaller prefetch bounds memory.
/// librdkafka keeps one fetch request in flight per broker: when it names only partitions with
/// nothing new (the others' queues were full), the broker holds it for `fetch.wait.max.ms`
/// (500 ms) while the busy partitions run dry, so a shorter wait keeps skewed partitions moving.
pub const FETCH_DEFAULTS: &[(&str, &str)] =
    &[("fetch.queue.backoff.ms", "10"), ("queued.min.messages", "20000"), ("fetch.wait.max.ms", "50")];

/// The pipeline's consumer config: manual assignment, no auto-commit, read_committed, and a
/// position Kafka no longer holds is an error (never a silent reset). The managed properties are
/// set after the user's, so nothing overrides them.
pub fn consumer_config(connection: &Connection, pipeline_id: &str) -> ClientConfig {
    managed_consumer_config(connection.client_config_with(FETCH_DEFAULTS), &format!("exactly-{pipeline_id}"))
}

/// Group mode's defaults (before the user's properties, which may change them): a member that
/// stops heartbeating loses its partitions after 10 s (Kafka's default is 45 s), and new
/// partitions of the topics are seen as often as `source.partition_discovery_ms`.
const GROUP_DEFAULTS: &[(&str, &str)] = &[("session.timeout.ms", "10000"), ("heartbeat.interval.ms", "1000")];

/// The config of a group member's consumer: [`consumer_config`]'s managed settings, the group
/// `group_id`, the cooperative-sticky assignor, and metadata refreshed every `discovery_ms`.
pub fn group_consumer_config(connection: &Connection, group_id: &str, discovery_ms: u64) -> ClientConfig {
    let defaults: Vec<(&str, &str)> = FETCH_DEFAULTS.iter().chain(GROUP_DEFAULTS).copied().collect();
    let mut c = managed_consumer_config(connection.client_config_with(&defaults), group_id);
    c.set("partition.assignment.strategy", "cooperative-sticky")
        .set("topic.metadata.refresh.interval.ms", discovery_ms.to_string());
    c
}

/// The session timeout a group member runs with (the user's `session.timeout.ms`, or ours).
pub fn session_timeout(connection: &Connection) -> Duration {
    let c = connection.client_config_with(GROUP_DEFAULTS);
    let ms = c.get("session.timeout.ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(10_000);
    Duration::from_millis(ms)
}

fn managed_consumer_config(mut c: ClientConfig, group_id: &str) -> ClientConfig {
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Off: a batch read moves a partition's position past the end-of-partition event, and a
        // re-fetch from there skips a record (`fetch::PartitionFetch::read_to_end` says more).
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "error")
        .set("statistics.interval.ms", "1000");
    c
}

fn is_unreachable(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::BrokerTransportFailure)
            | Some(RDKafkaErrorCode::AllBrokersDown)
            | Some(RDKafkaErrorCode::OperationTimedOut)
            | Some(RDKafkaErrorCode::Resolve)
            | Some(RDKafkaErrorCode::RequestTimedOut)
    )
}

/// A client context that keeps the connection errors librdkafka reports, so a metadata request
/// that times out can say why (a refused password, an untrusted certificate) instead of only
/// that no broker answered.
#[derive(Clone, Default)]
struct Diagnosing {
    errors: Arc<Mutex<Vec<String>>>,
}

impl ClientContext for Diagnosing {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // Some refusals are only logged, at info level: a broker hanging up on the first request.
        if (level as i32) <= (RDKafkaLogLevel::Info as i32) {
            self.errors.lock().expect("errors lock").push(log_message.to_string());
        }
        tracing::debug!(target: "librdkafka", facility = fac, "{log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, reason, "kafka client error during the pre-flight");
        self.errors.lock().expect("errors lock").push(reason.to_string());
    }
}

impl ConsumerContext for Diagnosing {}

impl Diagnosing {
    /// The first reported error that is about security, as one sentence.
    fn refusal(&self, security: &SecurityConfig) -> Option<String> {
        self.errors.lock().expect("errors lock").iter().find_map(|r| security::diagnose(r, security))
    }

    /// The latest reported error, whatever it is.
    fn last(&self) -> Option<String> {
        self.errors.lock().expect("errors lock").last().cloned()
    }
}

/// What the brokers said to a connection check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// How many brokers the cluster has.
    pub brokers: usize,
    /// Each asked topic's partitions, in order.
    pub partitions: Vec<TopicPartition>,
}

/// Connects as `connection` says, and checks that the brokers answer, accept the connection's
/// security and hold every topic; returns every partition to read. A refused connection (wrong
/// password, untrusted certificate, TLS against a plaintext listener) is one line naming the
/// problem and the setting that fixes it, as soon as librdkafka reports it. This is what turns
/// "nothing happens" into one clear line at start-up.
pub async fn preflight(
    connection: &Connection,
    subscription: Subscription<'_>,
    timeout: Duration,
) -> Result<Vec<TopicPartition>> {
    Ok(check(connection, subscription, timeout).await?.partitions)
}

/// [`preflight`], with the cluster's size (`exactly check`).
pub async fn check(connection: &Connection, subscription: Subscription<'_>, timeout: Duration) -> Result<Cluster> {
    let connection = connection.clone();
    let (topics, pattern) = match subscription {
        Subscription::Named(topics) => (topics.to_vec(), None),
        Subscription::Matching(p) => (Vec::new(), Some(p.clone())),
    };
    tokio::task::spawn_blocking(move || -> Result<Cluster> {
        let context = Diagnosing::default();
        let brokers = connection.brokers().to_string();
        let refused = |problem: String| Error::KafkaRefused { brokers: brokers.clone(), problem };
        let consumer: BaseConsumer<Diagnosing> =
            connection.client_config().set_log_level(RDKafkaLogLevel::Info).create_with_context(context.clone()).map_err(
                |e| match e {
                    KafkaError::ClientCreation(detail) => refused(format!("the client settings were refused: {detail}")),
                    e => Error::BrokerUnreachable { brokers: brokers.clone(), detail: e.to_string() },
                },
            )?;
        // Ask in short rounds, so a refusal is reported as soon as librdkafka sees it.
        let deadline = std::time::Instant::now() + timeout;
        let metadata = loop {
            let round = deadline.saturating_duration_since(std::time::Instant::now()).min(Duration::from_millis(500));
            // One topic's metadata, not the whole cluster's topic list (with no topic asked,
            // as `topics create` does, every topic's).
            let failed = match consumer.fetch_metadata(topics.first().map(String::as_str), round) {
                Ok(m) if !m.brokers().is_empty() => break m,
                Ok(_) => None,
                Err(e) => Some(e),
            };
            // librdkafka hands its logs and errors to the context only when the client is polled
            // (a poll returns at each error, and keeps serving logs until its timeout).
            let served = std::time::Instant::now() + Duration::from_millis(50);
            while let Some(left) = served.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) {
                consumer.poll(left);
            }
            if let Some(problem) = context.refusal(connection.security()) {
                return Err(refused(problem));
            }
            if let Some(e) = failed.filter(|e| !is_unreachable(e)) {
                return Err(match security::diagnose(&e.to_string(), connection.security()) {
                    Some(problem) => refused(problem),
                    None => Error::BrokerUnreachable { brokers: brokers.clone(), detail: e.to_string() },
                });
            }
            if std::time::Instant::now() >= deadline {
                let why = context.last().map(|r| format!(" (last error: {r})")).unwrap_or_default();
                return Err(Error::BrokerUnreachable {
                    brokers: brokers.clone(),
                    detail: format!("no broker answered within {} ms{why}", timeout.as_millis()),
                });
            }
        };
        let subscription = match &pattern {
            Some(p) => Subscription::Matching(p),
            None => Subscription::Named(&topics),
        };
        let partitions = partitions_of(&consumer, &brokers, subscription, timeout)?;
        Ok(Cluster { brokers: metadata.brokers().len(), partitions })
    })
    .await
    .map_err(|e| Error::Actor(format!("pre-flight task failed: {e}")))?
}

/// Every partition of the topics `subscription` reads, in order, from a metadata request on
/// `consumer` (blocking, at most `timeout`): the named topics, or every topic the pattern
/// matches (one request for the cluster's topic list). The pre-flight check and the running
/// pipeline's partition discovery both ask this way.
pub fn partitions_of<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    brokers: &str,
    subscription: Subscription<'_>,
    timeout: Duration,
) -> Result<Vec<TopicPartition>> {
    let unreachable = |e: KafkaError| {
        let detail =
            if is_unreachable(&e) { format!("no broker answered within {} ms", timeout.as_millis()) } else { e.to_string() };
        Error::BrokerUnreachable { brokers: brokers.to_string(), detail }
    };
    let partitions = |t: &rdkafka::metadata::MetadataTopic| {
        let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ps.sort_unstable();
        ps.into_iter().map(|p| TopicPartition::new(t.name(), p)).collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    match subscription {
        Subscription::Named(topics) => {
            for topic in topics {
                let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(unreachable)?;
                match metadata.topics().iter().find(|t| t.name() == topic) {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => out.extend(partitions(t)),
                    Some(t) if t.error().is_some_and(|e| e != RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
                        return Err(Error::Kafka(KafkaError::MetadataFetch(t.error().unwrap().into())));
                    }
                    _ => return Err(Error::TopicMissing { topic: topic.clone(), brokers: brokers.to_string() }),
                }
            }
        }
        Subscription::Matching(pattern) => {
            let metadata = consumer.fetch_metadata(None, timeout).map_err(unreachable)?;
            let mut matched: Vec<_> = metadata
                .topics()
                .iter()
                .filter(|t| pattern.matches(t.name()) && t.error().is_none() && !t.partitions().is_empty())
                .collect();
            matched.sort_by_key(|t| t.name());
            if matched.is_empty() {
                return Err(Error::NoTopicMatches { pattern: pattern.as_str().to_string(), brokers: brokers.to_string() });
            }
            out.extend(matched.into_iter().flat_map(partitions));
        }
    }
    Ok(out)
}

/// The topics of `partitions`, each once, in order.
pub fn topics_of(partitions: &[TopicPartition]) -> Vec<String> {
    let mut topics: Vec<String> = partitions.iter().map(|tp| tp.topic.to_string()).collect();
    topics.dedup();
    topics
}

/// Low and high watermarks of one partition, asked of the broker.
pub fn fetch_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tp: &TopicPartition,
    timeout: Duration,
) -> Result<(i64, i64)> {
    Ok(consumer.fetch_watermarks(&tp.topic, tp.partition, timeout)?)
}

/// The offsets of `offsets` Kafka no longer holds (deleted by retention or a delete before they
/// were read): per partition whose next offset is below the oldest it holds, `[next, oldest)`.
pub async fn lost_ranges(connection: &Connection, offsets: &Offsets, timeout: Duration) -> Result<Vec<crate::model::Skipped>> {
    let connection = connection.clone();
    let offsets = offsets.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<crate::model::Skipped>> {
        let consumer: BaseConsumer = connection.client_config().create()?;
        let mut out = Vec::new();
        for (tp, next) in offsets {
            let (low, _) = fetch_watermarks(&consumer, &tp, timeout)?;
            if next < low {
                out.push(crate::model::Skipped { tp, from: next, to: low });
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Actor(format!("watermark task failed: {e}")))?
}

/// The sum of the high watermarks of every partition of `topic`: how many offsets it has used.
pub async fn high_watermark_sum(connection: &Connection, topic: &str, timeout: Duration) -> Result<i64> {
    let tps = preflight(connection, Subscription::Named(&[topic.to_string()]), timeout).await?;
    let connection = connection.clone();
    tokio::task::spawn_blocking(move || -> Result<i64> {
        let consumer: BaseConsumer = connection.client_config().create()?;
        tps.iter().map(|tp| fetch_watermarks(&consumer, tp, timeout).map(|(_, high)| high)).sum()
    })
    .await
    .map_err(|e| Error::Actor(format!("watermark task failed: {e}")))?
}

/// Turns `earliest`/`latest` into concrete offsets, so the first checkpoint pins the start and
/// a restart before the first commit does not move it.
pub async fn resolve_starting_offsets(
    connection: &Connection,
    tps: &[TopicPartition],
    mode: StartingOffsets,
    timeout: Duration,
) -> Result<Offsets> {
    let connection = connection.clone();
    let tps = tps.to_vec();
    tokio::task::spawn_blocking(move || -> Result<Offsets> {
        let consumer: BaseConsumer = connection.client_config().create()?;
        let mut out = Offsets::new();
        for tp in tps {
            let (low, high) = fetch_watermarks(&consumer, &tp, timeout)?;
            out.insert(tp, if mode == StartingOffsets::Earliest { low } else { high });
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Actor(format!("offset lookup task failed: {e}")))?
}

/// Where partitions the pipeline never read start at its first start: `starting_partition_offsets`
/// for the partitions it names (checked to be held by Kafka), else the first offset at or after
/// `starting_timestamp_ms` (the end where there is none), else `starting_offsets`.
pub async fn resolve_first_start(
    connection: &Connection,
    tps: &[TopicPartition],
    src: &crate::config::SourceConfig,
    timeout: Duration,
) -> Result<Offsets> {
    let named = |tp: &TopicPartition| src.starting_partition_offsets.get(&*tp.topic)?.get(&tp.partition.to_string()).copied();
    let (explicit, rest): (Vec<TopicPartition>, Vec<TopicPartition>) = tps.iter().cloned().partition(|tp| named(tp).is_some());
    let mut out = match src.starting_timestamp_ms {
        None => resolve_starting_offsets(connection, &rest, src.starting_offsets, timeout).await?,
        Some(at) => offsets_at_time(connection, &rest, at, timeout).await?,
    };
    let wanted: Vec<(TopicPartition, i64)> = explicit.iter().map(|tp| (tp.clone(), named(tp).unwrap_or(-2))).collect();
    let connection = connection.clone();
    let checked = tokio::task::spawn_blocking(move || -> Result<Offsets> {
        let consumer: BaseConsumer = connection.client_config().create()?;
        let mut out = Offsets::new();
        for (tp, want) in wanted {
            let (low, high) = fetch_watermarks(&consumer, &tp, timeout)?;
            let at = match want {
                -2 => low,
                -1 => high,
                o if (low..=high).contains(&o) => o,
                o => {
                    return Err(Error::Config(crate::error::ConfigError::Invalid {
                        path: "the config".into(),
                        field: format!("source.starting_partition_offsets.{}", tp.topic),
                        problem: format!(
                            "starts partition {} at {o}, but Kafka holds offsets {low} to {high} of it",
                            tp.partition
                        ),
                    }))
                }
            };
            out.insert(tp, at);
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Actor(format!("offset lookup task failed: {e}")))??;
    out.extend(checked);
    Ok(out)
}

/// Per partition, the first offset whose record's timestamp is at or after `at_ms` (Kafka's
/// ListOffsets by time); the partition's end where there is none.
async fn offsets_at_time(connection: &Connection, tps: &[TopicPartition], at_ms: i64, timeout: Duration) -> Result<Offsets> {
    if tps.is_empty() {
        return Ok(Offsets::new());
    }
    let connection = connection.clone();
    let tps = tps.to_vec();
    tokio::task::spawn_blocking(move || -> Result<Offsets> {
        let consumer: BaseConsumer = connection.client_config().create()?;
        let mut tpl = TopicPartitionList::new();
        for tp in &tps {
            tpl.add_partition_offset(&tp.topic, tp.partition, rdkafka::Offset::Offset(at_ms))?;
        }
        let found = consumer.offsets_for_times(tpl, timeout)?;
        let mut out = Offsets::new();
        for tp in tps {
            let at = match found.find_partition(&tp.topic, tp.partition).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => o,
                _ => fetch_watermarks(&consumer, &tp, timeout)?.1,
            };
            out.insert(tp, at);
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Actor(format!("offset lookup task failed: {e}")))?
}

/// Creates a topic; `Ok(false)` when it already existed (idempotent).
pub async fn create_topic(connection: &Connection, topic: &str, partitions: i32, replication: i32) -> Result<bool> {
    create_topic_with_config(connection, topic, partitions, replication, &[]).await
}

/// Grows `topic` to `total` partitions (Kafka never shrinks a topic).
pub async fn add_partitions(connection: &Connection, topic: &str, total: usize) -> Result<()> {
    use rdkafka::admin::NewPartitions;
    let admin: AdminClient<DefaultClientContext> = connection.client_config().create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_partitions([&NewPartitions::new(topic, total)], &opts).await?;
    match results.into_iter().next() {
        Some(Err((name, code))) => Err(Error::Admin(format!("growing topic '{name}' to {total} partitions: {code}"))),
        _ => Ok(()),
    }
}

/// Creates a topic with topic-level configs (e.g. `max.message.bytes`); `Ok(false)` when it
/// already existed.
pub async fn create_topic_with_config(
    connection: &Connection,
    topic: &str,
    partitions: i32,
    replication: i32,
    config: &[(&str, &str)],
) -> Result<bool> {
    let brokers = connection.brokers();
    let admin: AdminClient<DefaultClientContext> = connection.client_config().create()?;
    let opts =
        AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))).request_timeout(Some(Duration::from_secs(30)));
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    for (k, v) in config {
        new = new.set(k, v);
    }
    let results = admin.create_topics([&new], &opts).await.map_err(|e| {
        if is_unreachable(&e) {
            Error::BrokerUnreachable { brokers: brokers.to_string(), detail: e.to_string() }
        } else {
            Error::Kafka(e)
        }
    })?;
    match results.into_iter().next() {
        Some(Ok(_)) => {
            // The controller answers before every broker's metadata has the topic: a pipeline
            // started at once would be refused for a missing topic.
            let start = std::time::Instant::now();
            while let Err(e) = preflight(connection, Subscription::Named(&[topic.to_string()]), Duration::from_secs(5)).await {
                if start.elapsed() > Duration::from_secs(30) {
                    return Err(Error::Admin(format!("topic '{topic}' was created but is not in the metadata after 30 s: {e}")));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(true)
        }
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((name, code))) => Err(Error::Admin(format!("creating topic '{name}': {code}"))),
        None => Ok(false),
    }
}

/// Each topic's id: Kafka gives a topic a new id when it is deleted and created again under the
/// same name, whose offsets start over. Asked with the DescribeTopics admin request (which
/// librdkafka has, and the `rdkafka` crate does not wrap). Blocking, at most `timeout`.
pub fn topic_ids<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topics: &[String],
    timeout: Duration,
) -> Result<std::collections::BTreeMap<String, String>> {
    use rdkafka::bindings as rd;
    use std::ffi::{CStr, CString};

    let names: Vec<CString> = topics
        .iter()
        .map(|t| CString::new(t.as_str()).map_err(|_| Error::Admin(format!("topic name {t:?} has a NUL byte"))))
        .collect::<Result<_>>()?;
    let mut ptrs: Vec<*const std::os::raw::c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let rk = client.native_ptr();
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: every pointer handed to librdkafka lives until the call that uses it returns
    // (`names`/`ptrs` outlive the request; the collection, options, queue and event are
    // destroyed exactly once below). The result's strings are copied before the event is freed.
    unsafe {
        let collection = rd::rd_kafka_TopicCollection_of_topic_names(ptrs.as_mut_ptr(), ptrs.len());
        let options = rd::rd_kafka_AdminOptions_new(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS);
        let queue = rd::rd_kafka_queue_new(rk);
        let mut errstr = [0 as std::os::raw::c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(options, timeout_ms, errstr.as_mut_ptr(), errstr.len());
        rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(1_000));
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_TopicCollection_destroy(collection);
        rd::rd_kafka_queue_destroy(queue);
        if event.is_null() {
            return Err(Error::Admin(format!("describing topics {topics:?}: no answer within {} ms", timeout.as_millis())));
        }
        let result = (|| {
            if rd::rd_kafka_event_error(event) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let msg = CStr::from_ptr(rd::rd_kafka_event_error_string(event)).to_string_lossy().into_owned();
                return Err(Error::Admin(format!("describing topics {topics:?}: {msg}")));
            }
            let res = rd::rd_kafka_event_DescribeTopics_result(event);
            if res.is_null() {
                return Err(Error::Admin("describing topics: unexpected answer".into()));
            }
            let mut n = 0usize;
            let descs = rd::rd_kafka_DescribeTopics_result_topics(res, &mut n);
            let mut out = std::collections::BTreeMap::new();
            for i in 0..n {
                let d = *descs.add(i);
                let name = CStr::from_ptr(rd::rd_kafka_TopicDescription_name(d)).to_string_lossy().into_owned();
                let err = rd::rd_kafka_TopicDescription_error(d);
                if !err.is_null() && rd::rd_kafka_error_code(err) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    continue; // a missing topic: the pre-flight check and the consumers report it
                }
                let id = rd::rd_kafka_TopicDescription_topic_id(d);
                if !id.is_null() {
                    let text = CStr::from_ptr(rd::rd_kafka_Uuid_base64str(id)).to_string_lossy().into_owned();
                    out.insert(name, text);
                }
            }
            Ok(out)
        })();
        rd::rd_kafka_event_destroy(event);
        result
    }
}

/// The error for a topic whose id is not the one recorded with the checkpoint (or, in group
/// mode, in the table: `recorded_by`): it was deleted and created again, its offsets start over,
/// and the recorded offsets mean nothing in it. `None` when every recorded topic still has its
/// id (topics not recorded yet are not judged).
pub fn recreated_topic(
    recorded: &std::collections::BTreeMap<String, String>,
    current: &std::collections::BTreeMap<String, String>,
    recorded_by: &str,
) -> Option<Error> {
    recorded.iter().find_map(|(topic, id)| {
        let now = current.get(topic).filter(|now| *now != id)?;
        Some(Error::TopicRecreated {
            topic: topic.clone(),
            was: id.clone(),
            now: now.clone(),
            recorded_by: recorded_by.to_string(),
        })
    })
}

/// Routes `tp`'s messages away from the client's main queue before the partition is assigned,
/// so no record lands there between a group assignment and the consumer that splits the queue
/// (librdkafka keeps a forwarding the application set when it starts fetching).
pub fn detach_queue<C: rdkafka::consumer::ConsumerContext>(consumer: &rdkafka::consumer::BaseConsumer<C>, tp: &TopicPartition) {
    let Ok(topic) = std::ffi::CString::new(tp.topic.as_bytes()) else { return };
    // SAFETY: the client pointer is valid during the call; the queue handle is ours to destroy,
    // and destroying it keeps the forwarding.
    unsafe {
        let queue = rdkafka::bindings::rd_kafka_queue_get_partition(consumer.client().native_ptr(), topic.as_ptr(), tp.partition);
        if !queue.is_null() {
            rdkafka::bindings::rd_kafka_queue_forward(queue, std::ptr::null_mut());
            rdkafka::bindings::rd_kafka_queue_destroy(queue);
        }
    }
}
