//! Every message between the actors of the tree, and what they report. The children name the
//! supervisor's messages from here, never the supervisor itself.

use std::collections::BTreeMap;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use crate::decode::Decoded;
use crate::model::{Offsets, PartitionRange, TopicPartition};
use crate::sink::EpochBatch;
use crate::source::group::GroupRequest;
use crate::state::checkpoint::StateMemory;
use crate::testing::fault::Fault;

/// Messages a consumer handles.
pub enum ConsumerMsg {
    /// Read what is available and forward it (sent to itself in a loop).
    Poll,
    /// Cut the epoch: forward barrier `n` with the next offset.
    Barrier(u64),
    /// Fail on purpose (chaos suite, tests).
    InjectFault(Fault),
}

/// Messages the aggregator handles.
pub enum AggregatorMsg {
    /// Decoded records of one partition, in offset order.
    Records {
        /// Their partition.
        tp: TopicPartition,
        /// How many records were consumed (rows + dead letters).
        input: u64,
        /// Rows and dead letters.
        decoded: Decoded,
        /// Oldest Kafka timestamp among them.
        min_timestamp_ms: Option<i64>,
    },
    /// A consumer passed barrier `barrier`; its next offset is `next_offset`.
    Barrier {
        /// Barrier number (cut by the supervisor).
        barrier: u64,
        /// The consumer's partition.
        tp: TopicPartition,
        /// Next offset after the records sent before this barrier.
        next_offset: i64,
    },
    /// A consumer reached its partition's end (after the records it forwarded before this).
    ReadToEnd(TopicPartition),
    /// How many records are buffered in epochs not yet handed to the committer.
    Buffered(RpcReplyPort<u64>),
    /// Fail on purpose (chaos suite, tests).
    InjectFault(Fault),
}

/// Messages the committer handles.
pub enum CommitterMsg {
    /// Commit a closed epoch (cut by barrier `barrier`).
    Commit {
        /// The barrier that closed it.
        barrier: u64,
        /// The epoch (boxed: it is large, and the other variant small).
        batch: Box<EpochBatch>,
    },
    /// Fail on purpose (chaos suite, tests).
    InjectFault(Fault),
}

/// What one commit did, for progress and metrics.
#[derive(Debug, Clone)]
pub struct CommitReport {
    /// Epoch committed.
    pub epoch: u64,
    /// Records consumed in the epoch (rows, dead letters, duplicates and filtered records).
    pub records: u64,
    /// Rows written to the table.
    pub rows: u64,
    /// Records written to the dead-letter table.
    pub dead_letters: u64,
    /// Records dropped as duplicates.
    pub duplicates: u64,
    /// Changes ignored as older than what their key holds (`upsert.sequence_by`).
    pub superseded: u64,
    /// Records the transform's filter dropped.
    pub filtered: u64,
    /// Dead letters per category.
    pub dead_letter_categories: std::collections::BTreeMap<&'static str, u64>,
    /// Per-partition ranges.
    pub ranges: Vec<PartitionRange>,
    /// Time the stateful stages took (before the commit, in the aggregator).
    pub state_time: Duration,
    /// Time spent in the sink commit.
    pub sink_time: Duration,
    /// Time spent writing the checkpoint.
    pub checkpoint_time: Duration,
    /// Oldest Kafka timestamp in the epoch (for end-to-end latency).
    pub min_timestamp_ms: Option<i64>,
    /// The keyed state after this epoch.
    pub state_size: StateSize,
}

/// How big the keyed state is, read right after the checkpoint write.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateSize {
    /// Dedup keys held.
    pub dedup_keys: u64,
    /// Aggregation keys held.
    pub agg_keys: u64,
    /// Rows the upsert table holds.
    pub upsert_rows: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// RocksDB's memory by kind.
    pub memory: StateMemory,
}

/// Messages the supervisor handles.
pub enum SupervisorMsg {
    /// Build a new generation of the tree from the checkpoint.
    StartGeneration,
    /// The epoch timer fired.
    Tick,
    /// The aggregator asks for the open epoch to be cut now, before the interval's tick: it is
    /// full, or it ends a backlog (the aggregator module says when).
    CutNow,
    /// Barrier `barrier` is resolved: committed (`Some`) or empty (`None`).
    BarrierResolved {
        /// Which barrier.
        barrier: u64,
        /// What the commit did.
        report: Option<CommitReport>,
    },
    /// The aggregator cut an epoch at these end offsets and handed it to the committer.
    EpochCut(Offsets),
    /// Commit the open epoch, then stop.
    Shutdown,
    /// `supervisor.shutdown_timeout_ms` after `Shutdown`: stop now, without the open epoch.
    ShutdownDeadline,
    /// Partition discovery described the topics.
    TopicsDescribed {
        /// Every partition of the topics, in order.
        partitions: Vec<TopicPartition>,
        /// Every topic's id.
        topic_ids: BTreeMap<String, String>,
    },
    /// Report the tree's current state.
    Status(RpcReplyPort<PipelineStatus>),
    /// Group mode: the consumer group is changing this member's partitions.
    Group(GroupRequest),
    /// Group mode: barrier `barrier`'s epoch was not committed because another member claimed
    /// `partitions`.
    Fenced {
        /// Which barrier.
        barrier: u64,
        /// The partitions claimed by another member.
        partitions: Vec<TopicPartition>,
        /// What the table holds.
        detail: String,
    },
    /// Group mode: the wait after a fence is over; read the fenced partitions again if the
    /// group still assigns them here.
    Unsuspend,
}

/// A snapshot of the tree, for tests, the chaos suite and operators.
#[derive(Clone)]
pub struct PipelineStatus {
    /// Current generation (0 until the first restart).
    pub generation: u64,
    /// Restarts since start.
    pub restarts: u64,
    /// Last committed epoch.
    pub committed_epoch: u64,
    /// The cut of the last committed epoch.
    pub committed_offsets: Offsets,
    /// The consumers of the current generation (empty between generations).
    pub consumers: Vec<(TopicPartition, ActorRef<ConsumerMsg>)>,
    /// The aggregator of the current generation.
    pub aggregator: Option<ActorRef<AggregatorMsg>>,
    /// The committer of the current generation.
    pub committer: Option<ActorRef<CommitterMsg>>,
    /// What readiness is decided on (`/readyz`).
    pub health: crate::telemetry::health::Health,
}
