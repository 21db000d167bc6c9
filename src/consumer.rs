//! The consumer actor: one per Kafka partition.
//!
//! It reads its partition's queue (split from the pipeline's single Kafka client) and forwards
//! records to the aggregator in offset order. When the supervisor cuts an epoch it forwards a
//! barrier carrying its next offset. Because one actor handles its messages one at a time, the
//! barrier lands in the aggregator's mailbox after exactly the records it follows.
//!
//! **Architecture Invariant:** a consumer never commits offsets to Kafka and never decides where
//! to start: it starts where the supervisor assigned it (the last committed epoch's cut).

use std::time::Duration;

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};

use crate::aggregator::AggregatorMsg;
use crate::fault::Fault;
use crate::kafka::StatsContext;
use crate::metrics as m;
use crate::record::{Record, TopicPartition};

/// How long one poll waits for a first record before yielding to other messages (barriers).
const POLL_WAIT: Duration = Duration::from_millis(50);

/// The consumer actor (stateless behaviour; see [`ConsumerState`]).
pub struct ConsumerActor;

/// Messages a consumer handles.
pub enum ConsumerMsg {
    /// Read what is available and forward it (sent to itself in a loop).
    Poll,
    /// Cut the epoch: forward barrier `n` with the next offset.
    Barrier(u64),
    /// Fail on purpose (chaos suite, tests).
    InjectFault(Fault),
}

/// What a consumer starts with.
pub struct ConsumerArgs {
    /// Its partition.
    pub tp: TopicPartition,
    /// The offset it was assigned at (the last committed cut).
    pub start: i64,
    /// The partition's queue, split from the shared client.
    pub queue: StreamPartitionQueue<StatsContext>,
    /// Where records and barriers go.
    pub aggregator: ActorRef<AggregatorMsg>,
    /// Most records per forwarded message.
    pub max_batch: usize,
}

/// A consumer's state.
pub struct ConsumerState {
    tp: TopicPartition,
    next_offset: i64,
    queue: StreamPartitionQueue<StatsContext>,
    aggregator: ActorRef<AggregatorMsg>,
    max_batch: usize,
}

fn to_record(tp: &TopicPartition, m: &BorrowedMessage<'_>) -> Record {
    Record {
        tp: tp.clone(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
    }
}

/// Errors after which reading on would lose data: the partition no longer holds our offset.
fn is_data_loss(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::OffsetOutOfRange) | Some(RDKafkaErrorCode::AutoOffsetReset)
    )
}

/// Accepts a record if it is past what was already forwarded.
fn accept(
    tp: &TopicPartition,
    next_offset: &mut i64,
    batch: &mut Vec<Record>,
    m: &BorrowedMessage<'_>,
) {
    if m.offset() < *next_offset {
        tracing::warn!(%tp, offset = m.offset(), next = *next_offset, "ignoring a record before the consumer's position");
        return;
    }
    *next_offset = m.offset() + 1;
    batch.push(to_record(tp, m));
}

impl ConsumerState {
    async fn poll(&mut self) -> Result<Vec<Record>, ActorProcessingErr> {
        let mut batch = Vec::new();
        let first = match tokio::time::timeout(POLL_WAIT, self.queue.recv()).await {
            Err(_) => return Ok(batch),
            Ok(r) => r,
        };
        match first {
            Ok(msg) => accept(&self.tp, &mut self.next_offset, &mut batch, &msg),
            Err(e) if is_data_loss(&e) => {
                return Err(format!(
                    "partition {} cannot be read from offset {}: {e} (the records were deleted by retention or compaction before they were committed; refusing to skip them)",
                    self.tp, self.next_offset
                )
                .into())
            }
            Err(e) => {
                tracing::warn!(tp = %self.tp, error = %e, "kafka consume error; retrying");
                return Ok(batch);
            }
        }
        while batch.len() < self.max_batch {
            match self.queue.recv().now_or_never() {
                Some(Ok(msg)) => accept(&self.tp, &mut self.next_offset, &mut batch, &msg),
                _ => break,
            }
        }
        Ok(batch)
    }
}

impl Actor for ConsumerActor {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ConsumerArgs,
    ) -> Result<ConsumerState, ActorProcessingErr> {
        myself.cast(ConsumerMsg::Poll)?;
        Ok(ConsumerState {
            tp: args.tp,
            next_offset: args.start,
            queue: args.queue,
            aggregator: args.aggregator,
            max_batch: args.max_batch,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ConsumerMsg,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMsg::Poll => {
                let batch = state.poll().await?;
                if !batch.is_empty() {
                    metrics::counter!(m::RECORDS_CONSUMED, "topic" => state.tp.topic.to_string(), "partition" => state.tp.partition.to_string())
                        .increment(batch.len() as u64);
                    state.aggregator.cast(AggregatorMsg::Records {
                        tp: state.tp.clone(),
                        records: batch,
                    })?;
                }
                myself.cast(ConsumerMsg::Poll)?;
            }
            ConsumerMsg::Barrier(barrier) => {
                state.aggregator.cast(AggregatorMsg::Barrier {
                    barrier,
                    tp: state.tp.clone(),
                    next_offset: state.next_offset,
                })?;
            }
            ConsumerMsg::InjectFault(f) => f.trigger(&format!("consumer {}", state.tp))?,
        }
        Ok(())
    }
}
