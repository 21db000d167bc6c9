//! `[source]`: the topics, the brokers, where to start, group mode, and the consumer properties the pipeline manages.

use super::*;

/// Consumer properties the pipeline sets itself, which `source.properties` may not change, and
/// why (the config check quotes the reason).
pub const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    ("enable.auto.commit", "progress lives in the checkpoint and the sink, not in Kafka"),
    ("enable.auto.offset.store", "progress lives in the checkpoint and the sink, not in Kafka"),
    ("group.id", "progress lives in the checkpoint and the sink, not in Kafka"),
    ("isolation.level", "the pipeline reads read_committed, so records of aborted or open transactions never reach a table"),
    (
        "auto.offset.reset",
        "a committed position that Kafka no longer holds stops the pipeline instead of silently skipping records",
    ),
];

/// Consumer properties group mode sets itself (beyond [`MANAGED_PROPERTIES`]).
pub const GROUP_MANAGED_PROPERTIES: &[(&str, &str)] = &[(
    "partition.assignment.strategy",
    "group mode uses cooperative-sticky: a rebalance moves only the partitions that change owner",
)];

/// Where records come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Kafka bootstrap servers, comma separated. Replaced by `KAFKA_BROKERS` when that is set.
    pub brokers: String,
    /// Topics to read; every partition of each is read by its own consumer actor.
    pub topics: Vec<String>,
    /// Instead of `topics`: read every topic whose whole name this regular expression matches
    /// (Spark's `subscribePattern`), e.g. `"orders-.*"`. Topics created later that match are
    /// found by partition discovery and read from their earliest offset. Names starting with
    /// `__` (Kafka's internal topics) never match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<TopicPattern>,
    /// Where a pipeline with no checkpoint starts: `earliest` (the whole retained topic) or
    /// `latest` (only records produced after the first start). Ignored once a checkpoint exists.
    pub starting_offsets: StartingOffsets,
    /// Where named partitions start instead (Spark's `startingOffsets` JSON), per topic and
    /// partition: an offset, `-2` for the earliest, `-1` for the latest. Like
    /// `starting_offsets`, only for partitions the pipeline never read.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub starting_partition_offsets: BTreeMap<String, BTreeMap<String, i64>>,
    /// Start each partition (not named in `starting_partition_offsets`) at its first record
    /// with a Kafka timestamp at or after this, in Unix milliseconds (Spark's
    /// `startingTimestamp`); a partition without one starts at its end. Replaces
    /// `starting_offsets`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting_timestamp_ms: Option<i64>,
    /// When Kafka deleted records before the pipeline read them (retention, or a delete): `fail`
    /// (stop: the records are lost) or `skip` (read on from the oldest record Kafka holds,
    /// recording the skipped offsets in the epoch's commit; Spark's `failOnDataLoss = false`).
    pub on_data_loss: OnDataLoss,
    /// Most records a consumer forwards in one message to the aggregator.
    pub max_batch_records: usize,
    /// Back-pressure: consumers stop reading while this many records are consumed but not yet
    /// committed (a slow sink then bounds memory instead of growing it).
    pub max_buffered_records: u64,
    /// TLS and authentication of every connection to the brokers (`[source.security]`; see
    /// docs/config.md and the README's "Secured Kafka").
    pub security: security::SecurityConfig,
    /// Extra librdkafka client properties (fetch sizes, rarer security settings, ...), given to
    /// every client the pipeline, `verify`, `produce` and `topics` make. The properties in
    /// [`MANAGED_PROPERTIES`] (`enable.auto.commit`, `group.id`, `isolation.level`, ...)
    /// are managed by the pipeline and refused here: Kafka's committed offsets are never the
    /// source of truth, and records of aborted transactions never reach a table.
    pub properties: BTreeMap<String, String>,
    /// How long to wait for the brokers at start-up before giving up, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How often the topics' partition lists are looked up while running, in milliseconds.
    /// Partitions added to a topic are read from their earliest offset within this delay (the
    /// open epoch is committed, then the actor tree restarts with a consumer for each new
    /// partition; no restart budget is spent).
    pub partition_discovery_ms: u64,
    /// Group mode: the Kafka consumer group several processes of this pipeline share. Every
    /// process started with the same config (same `id`, same `group_id`) owns a share of the
    /// topics' partitions (cooperative-sticky assignment), runs the actor tree for them and
    /// commits its own epochs to the shared tables; the table, not the checkpoint, says where
    /// each partition resumes (ARCHITECTURE.md, "Group mode"). Unset: one process reads every
    /// partition (the default). Stateless pipelines only, for now.
    pub group_id: Option<String>,
}

impl SourceConfig {
    /// Which topics the pipeline reads.
    pub fn subscription(&self) -> Subscription<'_> {
        match &self.topic_pattern {
            Some(p) => Subscription::Matching(p),
            None => Subscription::Named(&self.topics),
        }
    }
}

/// Which topics a pipeline reads: the ones `source.topics` names, or every one
/// `source.topic_pattern` matches (resolved against the brokers' topic list when the pipeline
/// starts and at every partition discovery).
#[derive(Debug, Clone, Copy)]
pub enum Subscription<'a> {
    /// `source.topics`.
    Named(&'a [String]),
    /// `source.topic_pattern`.
    Matching(&'a TopicPattern),
}

impl Subscription<'_> {
    /// Whether the pipeline reads `topic`.
    pub fn covers(&self, topic: &str) -> bool {
        match self {
            Subscription::Named(topics) => topics.iter().any(|t| t == topic),
            Subscription::Matching(p) => p.matches(topic),
        }
    }
}

impl std::fmt::Display for Subscription<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subscription::Named(topics) => write!(f, "{}", topics.join(",")),
            Subscription::Matching(p) => write!(f, "topics matching /{}/", p.as_str()),
        }
    }
}

/// `source.topic_pattern`: a regular expression compiled when the config is read, matching
/// whole topic names (as Spark's `subscribePattern` and the Java consumer do).
#[derive(Debug, Clone)]
pub struct TopicPattern {
    written: String,
    whole: regex::Regex,
}

impl TopicPattern {
    /// Compiles `written`; the error says why it is not a regular expression.
    pub fn new(written: &str) -> Result<Self, String> {
        if written.is_empty() {
            return Err("is empty; e.g. topic_pattern = \"orders-.*\"".into());
        }
        let whole = regex::Regex::new(&format!("^(?:{written})$")).map_err(|e| format!("is not a regular expression: {e}"))?;
        Ok(TopicPattern { written: written.to_string(), whole })
    }

    /// The pattern as the config writes it.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// Whether the pipeline reads `topic`: the pattern matches its whole name, and it is not
    /// one of Kafka's internal topics.
    pub fn matches(&self, topic: &str) -> bool {
        !topic.starts_with("__") && self.whole.is_match(topic)
    }
}

impl PartialEq for TopicPattern {
    fn eq(&self, other: &Self) -> bool {
        self.written == other.written
    }
}

impl Serialize for TopicPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.written)
    }
}

impl<'de> Deserialize<'de> for TopicPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let written = String::deserialize(d)?;
        TopicPattern::new(&written).map_err(|why| serde::de::Error::custom(format!("topic_pattern {written:?} {why}")))
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            brokers: "127.0.0.1:9092".into(),
            topics: Vec::new(),
            topic_pattern: None,
            starting_offsets: StartingOffsets::Earliest,
            starting_partition_offsets: BTreeMap::new(),
            starting_timestamp_ms: None,
            on_data_loss: OnDataLoss::Fail,
            max_batch_records: 5_000,
            max_buffered_records: 1_000_000,
            security: Default::default(),
            properties: BTreeMap::new(),
            connect_timeout_ms: 10_000,
            partition_discovery_ms: 10_000,
            group_id: None,
        }
    }
}

/// What a pipeline does when Kafka deleted records it had not read (`source.on_data_loss`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnDataLoss {
    /// Stop, saying which partition and offsets.
    #[default]
    Fail,
    /// Read on from the oldest record Kafka holds; the commit records the skipped offsets.
    Skip,
}

/// Where a fresh pipeline starts reading.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartingOffsets {
    /// From the oldest retained record.
    Earliest,
    /// From the end of each partition at first start.
    Latest,
}

impl PipelineConfig {
    /// `[source]`.
    pub(super) fn check_source(&self, bad: &Bad, origin: &str) -> Result<(), ConfigError> {
        if self.source.brokers.trim().is_empty() {
            return Err(bad("source.brokers", "is empty; give host:port[,host:port] or set KAFKA_BROKERS".into()));
        }
        match (self.source.topics.is_empty(), &self.source.topic_pattern) {
            (true, None) => {
                return Err(bad(
                    "source.topics",
                    "is empty; name at least one topic, e.g. topics = [\"events\"], or give source.topic_pattern".into(),
                ))
            }
            (false, Some(_)) => {
                return Err(bad(
                    "source.topic_pattern",
                    "cannot be given with source.topics: name the topics or match them, not both".into(),
                ))
            }
            _ => {}
        }
        if let Some(t) = self
            .source
            .topics
            .iter()
            .find(|t| t.is_empty() || t.len() > 249 || !t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return Err(bad("source.topics", format!("has {t:?}, which is not a valid Kafka topic name")));
        }
        if self.source.max_buffered_records == 0 {
            return Err(bad("source.max_buffered_records", "must be at least 1".into()));
        }
        if self.source.max_batch_records == 0 {
            return Err(bad("source.max_batch_records", "must be at least 1".into()));
        }
        for (key, why) in MANAGED_PROPERTIES {
            if self.source.properties.contains_key(*key) {
                return Err(bad(
                    &format!("source.properties.\"{key}\""),
                    format!("is managed by the pipeline and cannot be set: {why}"),
                ));
            }
        }
        self.source.security.check(&self.source.properties).map_err(|p| ConfigError::Invalid {
            path: origin.to_string(),
            field: p.field,
            problem: p.problem,
        })?;
        if self.source.connect_timeout_ms == 0 {
            return Err(bad("source.connect_timeout_ms", "must be at least 1".into()));
        }
        for (topic, partitions) in &self.source.starting_partition_offsets {
            let field = format!("source.starting_partition_offsets.{topic}");
            if !self.source.subscription().covers(topic) {
                let read = match self.source.topic_pattern {
                    Some(_) => "source.topic_pattern does not match it",
                    None => "it is not in source.topics",
                };
                return Err(bad(&field, format!("names {topic:?}, but {read}")));
            }
            for (p, offset) in partitions {
                if p.parse::<u32>().is_err() {
                    return Err(bad(&field, format!("has the partition {p:?}; partitions are numbers from 0")));
                }
                if *offset < -2 {
                    return Err(bad(
                        &field,
                        format!("starts partition {p} at {offset}: an offset, -2 (earliest) or -1 (latest)"),
                    ));
                }
            }
        }
        if self.source.starting_timestamp_ms.is_some_and(|t| t < 0) {
            return Err(bad("source.starting_timestamp_ms", "must be a Unix time in milliseconds (0 or more)".into()));
        }
        if self.source.partition_discovery_ms < 100 {
            return Err(bad("source.partition_discovery_ms", "must be at least 100 (milliseconds)".into()));
        }
        Ok(())
    }

    /// Group mode (`source.group_id`) and what it cannot be combined with.
    /// Keyed state in group mode: `state.scope = "partition"` and what it cannot hold (yet);
    /// that scope outside group mode.
    fn check_group_state(&self, bad: &Bad) -> Result<(), ConfigError> {
        let partition = self.state.scope == StateScope::Partition;
        let stateful = match (&self.dedup, &self.aggregate) {
            (Some(_), _) => Some("dedup"),
            (None, Some(_)) => Some("aggregate"),
            _ => None,
        };
        if self.source.group_id.is_none() {
            return match partition {
                true => Err(bad(
                    "state.scope",
                    "is \"partition\", which is for group mode (source.group_id); one process keeps one state".into(),
                )),
                false => Ok(()),
            };
        }
        let Some(section) = stateful else { return Ok(()) };
        let refuse = |field: &str, why: &str| Err(bad(field, why.into()));
        if !partition {
            return Err(bad(
                "source.group_id",
                format!("with [{section}] needs state.scope = \"partition\": each partition's state is then its own and moves with it, which is exact when records with the same key are in the same partition (a keyed topic); README, \"Group mode\""),
            ));
        }
        if self.dedup.is_some() && self.aggregate.is_some() {
            return refuse("state.scope", "\"partition\" takes [dedup] or [aggregate], not both yet: an aggregate table does not hold the rows the dedup state is rebuilt from");
        }
        if self.dedup.as_ref().is_some_and(|d| d.watermark_field.is_none()) {
            return refuse(
                "dedup.max_age_epochs",
                "has no meaning in group mode, where members number their own epochs: use dedup.watermark_field",
            );
        }
        if !self.sink.outputs().is_empty() {
            return refuse("sink.outputs", "cannot be combined with keyed state in group mode yet: a row an output's expression fails on leaves the data table, from whose rows a partition's state is rebuilt");
        }
        if let Some(a) = &self.aggregate {
            if a.output_mode != OutputMode::Update {
                return refuse("aggregate.output_mode", "must be \"update\" in group mode: \"complete\" rewrites the whole table, members write only their partitions' buckets");
            }
            if self.source.topics.len() != 1 {
                return refuse("aggregate", "in group mode reads one topic (source.topics, not a pattern): a partition owns the _bucket range its number gives");
            }
        }
        Ok(())
    }

    pub(super) fn check_group(&self, bad: &Bad) -> Result<(), ConfigError> {
        self.check_group_state(bad)?;
        if let Some(group) = &self.source.group_id {
            for (key, why) in GROUP_MANAGED_PROPERTIES {
                if self.source.properties.contains_key(*key) {
                    return Err(bad(
                        &format!("source.properties.\"{key}\""),
                        format!("is managed in group mode and cannot be set: {why}"),
                    ));
                }
            }
            if group.is_empty() || !group.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                return Err(bad("source.group_id", format!("is {group:?}; use letters, digits, '.', '_' or '-'")));
            }
            if !matches!(self.sink, SinkConfig::Delta { .. }) {
                return Err(bad(
                    "source.group_id",
                    "needs a Delta sink: in group mode the table records where each partition resumes".into(),
                ));
            }
            if self.checkpoint.remote.is_some() {
                return Err(bad(
                    "checkpoint.remote",
                    "has no meaning in group mode: the data table records where each partition resumes, and with it the partition's keyed state (state.scope = \"partition\")".into(),
                ));
            }
            if self.checkpoint.rebuild_from_table {
                return Err(bad(
                    "checkpoint.rebuild_from_table",
                    "has no meaning in group mode: members keep no checkpoint, the table records where each partition resumes"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}
