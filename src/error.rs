//! The crate-level error. Every variant a user can cause renders as one line that says what was
//! wrong, where, and what to do.

use std::path::PathBuf;

use crate::model::TopicPartition;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a pipeline or a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is missing, unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// No Kafka broker answered within the timeout.
    #[error("cannot reach Kafka at {brokers}: {detail} (is the broker running? `just kafka-up` starts one; set KAFKA_BROKERS to use another)")]
    BrokerUnreachable {
        /// The bootstrap servers that were tried.
        brokers: String,
        /// What librdkafka reported.
        detail: String,
    },

    /// The brokers answered but refused the connection's security: a wrong password, an
    /// untrusted certificate, TLS against a plaintext listener (or the reverse).
    #[error("Kafka at {brokers} refused the connection: {problem}")]
    KafkaRefused {
        /// The bootstrap servers that were tried.
        brokers: String,
        /// What was refused and the setting that fixes it (never a secret).
        problem: String,
    },

    /// A configured source topic does not exist.
    #[error("topic '{topic}' does not exist on {brokers} (create it: `exactly topics create --topic {topic} --partitions 4`)")]
    TopicMissing {
        /// The missing topic.
        topic: String,
        /// The bootstrap servers asked.
        brokers: String,
    },

    /// `source.topic_pattern` matches none of the brokers' topics.
    #[error("source.topic_pattern /{pattern}/ matches no topic on {brokers} (it must match a whole name; internal topics, starting with `__`, never match)")]
    NoTopicMatches {
        /// The pattern as the config writes it.
        pattern: String,
        /// The bootstrap servers asked.
        brokers: String,
    },

    /// Any other Kafka client error.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    /// A topic admin operation failed.
    #[error("kafka admin: {0}")]
    Admin(String),

    /// Reading or writing the checkpoint failed.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },

    /// A checkpoint persisted to its remote store (`checkpoint.remote`) cannot be read, written
    /// or restored.
    #[error("persisted checkpoint {at}: {detail}")]
    Persisted {
        /// The manifest or store location.
        at: String,
        /// What went wrong.
        detail: String,
    },

    /// The checkpoint and the sink disagree in a way that cannot be repaired automatically.
    #[error("recovery: {0}")]
    Recovery(String),

    /// A topic was deleted and created again since its positions were recorded: its offsets
    /// started over, so the recorded positions mean nothing in it.
    #[error("recovery: topic '{topic}' was deleted and created again (topic id {was} when {recorded_by} recorded it, {now} now): its offsets started over, so the recorded positions in it mean nothing; refusing to resume mid-topic (to read the new topic, give the pipeline a new id, or delete both its table and its checkpoint)")]
    TopicRecreated {
        /// The topic.
        topic: String,
        /// Its id when its positions were recorded.
        was: String,
        /// Its id now.
        now: String,
        /// What recorded them (the checkpoint, a table).
        recorded_by: String,
    },

    /// A table or a checkpoint belongs to another pipeline (another `id`).
    #[error("recovery: {what} belongs to pipeline '{owner}', not '{pipeline}'; give each pipeline its own {setting}")]
    OtherPipeline {
        /// The table or checkpoint.
        what: String,
        /// The pipeline it belongs to.
        owner: String,
        /// This pipeline.
        pipeline: String,
        /// The setting that separates them.
        setting: &'static str,
    },

    /// The sink failed to commit an epoch.
    #[error("sink: {0}")]
    Sink(String),

    /// The schema registry could not be asked for a writer schema (after its retries), or
    /// refused the credentials.
    #[error("{0}")]
    SchemaRegistry(String),

    /// The topic's writer schemas disagree on a column (`sink.schema_evolution` takes their
    /// fields as columns).
    #[error("schema: {0}")]
    Schema(String),

    /// Actors kept failing: the restart budget was spent.
    #[error("restart budget spent: {restarts} restarts within {window_secs} s, last failure: {last_failure}")]
    RestartBudgetSpent {
        /// Restarts counted inside the window.
        restarts: usize,
        /// The window's length in seconds.
        window_secs: u64,
        /// The failure that spent the budget.
        last_failure: String,
    },

    /// A graceful stop could not commit the open epoch. The checkpoint is intact: the next start
    /// reads those records again.
    #[error("shutdown: {0} (the checkpoint is intact; the next start reads the uncommitted records again)")]
    Shutdown(String),

    /// A fail point fired (tests and the chaos suite only).
    #[error("{0}")]
    FailPoint(String),

    /// A Delta Lake operation failed.
    #[error("delta table {table}: {detail}")]
    Delta {
        /// The table's location.
        table: String,
        /// What went wrong.
        detail: String,
    },

    /// Group mode: another member committed a partition this one thought it owned (it lost the
    /// partition in a rebalance, or was paused past the session timeout). Nothing was written.
    #[error("fenced: {detail}")]
    Fenced {
        /// The partitions another member claimed.
        partitions: Vec<TopicPartition>,
        /// What the table holds.
        detail: String,
    },

    /// Another writer holds what a commit would write (an epoch of this pipeline that no
    /// commit of this process wrote: a second process runs the pipeline), or kept landing first
    /// until the commit gave up. Nothing was written.
    #[error("delta table {table}: {detail}")]
    Conflict {
        /// The table's location.
        table: String,
        /// What the table holds.
        detail: String,
    },

    /// The store a table lives in cannot be written (the pre-flight check): it does not answer,
    /// refuses the credentials, lacks the bucket, or cannot write an object only if absent.
    #[error("cannot write to the table at {table}: {problem}")]
    Store {
        /// The table's location.
        table: String,
        /// What the store said.
        problem: StoreProblem,
    },

    /// An actor could not be spawned or messaged.
    #[error("actor system: {0}")]
    Actor(String),

    /// File-system error outside the checkpoint.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

/// A configuration problem, rendered as one line naming the file, the field and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type.
    #[error("config {path}: {location}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// `line N (`the line`)`.
        location: String,
        /// The parser's message.
        message: String,
    },
    /// A secret (a password, a key) that cannot be read from where the config says it is.
    #[error("`{field}` {problem}")]
    Secret {
        /// Dotted field name.
        field: String,
        /// Where it was looked for and why it is not there (never a value).
        problem: String,
    },
    /// A value that parses but is not allowed.
    #[error("config {path}: `{field}` {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// Dotted field name.
        field: String,
        /// What is wrong and what is allowed.
        problem: String,
    },
}

/// Why a store cannot hold a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreProblem {
    /// No answer (a wrong endpoint, the store down).
    #[error("the store does not answer (is the endpoint right and the store up?): {0}")]
    Unreachable(String),
    /// The credentials were refused.
    #[error(
        "the store refused the credentials (access denied); check the access key and secret in [sink.storage] or the environment"
    )]
    Refused,
    /// The bucket or container does not exist.
    #[error("the bucket or container does not exist")]
    Missing,
    /// A put-if-absent overwrote the object: a second writer could overwrite a Delta commit.
    #[error("the store overwrote an existing object on a put-if-absent: it cannot do conditional writes, so a second writer could overwrite a Delta commit; use a store that can, or set sink.storage.{0} = \"true\" if this pipeline is the table's only writer")]
    NoConditionalWrites(&'static str),
    /// Anything else the store said.
    #[error("{0}")]
    Other(String),
}
