//! The consumer actor: one per Kafka partition.
//!
//! It reads its partition's queue (split from the pipeline's single Kafka client) and forwards
//! records to the aggregator in offset order. When the supervisor cuts an epoch it forwards a
//! barrier carrying its next offset. Because one actor handles its messages one at a time, the
//! barrier lands in the aggregator's mailbox after exactly the records it follows.
//!
//! **Architecture Invariant:** a consumer never commits offsets to Kafka and never decides where
//! to start: it starts where the supervisor assigned it (the last committed epoch's cut).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::decode::Decoder;
use crate::model::{Record, RecordView, TopicPartition};
use crate::runtime::backpressure::BackPressure;
use crate::runtime::messages::AggregatorMsg;
use crate::runtime::messages::ConsumerMsg;
use crate::runtime::replay::ReplayCut;
use crate::source::fetch::{Msg, PartitionFetch};
use crate::telemetry::metrics as m;

/// How long one poll waits for a first record before yielding to other messages (barriers).
const POLL_WAIT: Duration = Duration::from_millis(50);

/// How long a consumer under back-pressure waits before looking again.
const BACKPRESSURE_WAIT: Duration = Duration::from_millis(20);

/// The consumer actor (stateless behaviour; see [`ConsumerState`]).
pub struct ConsumerActor;

/// What a consumer starts with.
pub struct ConsumerArgs {
    /// The decode stage (shared by all consumers).
    pub decoder: Arc<Decoder>,
    /// This partition's part of a replayed epoch (after a crash between the sink commit and the
    /// checkpoint), cut exactly at the end the table recorded.
    pub replay: VecDeque<ReplayCut>,
    /// Its partition.
    pub tp: TopicPartition,
    /// The offset it was assigned at (the last committed cut).
    pub start: i64,
    /// The partition's queue, split from the shared client.
    pub queue: PartitionFetch,
    /// Where records and barriers go.
    pub aggregator: ActorRef<AggregatorMsg>,
    /// Most records per forwarded message.
    pub max_batch: usize,
    /// The generation's consumed-but-uncommitted count (read only while it allows).
    pub backpressure: BackPressure,
}

/// A consumer's state: its queue, and what it forwards records with (split so records borrowed
/// from the queue can be forwarded without copying them).
pub struct ConsumerState {
    queue: PartitionFetch,
    out: Forwarder,
}

/// Everything but the queue.
struct Forwarder {
    decoder: Arc<Decoder>,
    replay: VecDeque<ReplayCut>,
    tp: TopicPartition,
    next_offset: i64,
    aggregator: ActorRef<AggregatorMsg>,
    max_batch: usize,
    backpressure: BackPressure,
    /// Whether the aggregator was told the partition is read to its end, since the last
    /// records.
    told_end: bool,
}

/// Errors after which reading on would lose data: the partition no longer holds our offset.
fn is_data_loss(e: &KafkaError) -> bool {
    matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::OffsetOutOfRange) | Some(RDKafkaErrorCode::AutoOffsetReset))
}

impl Forwarder {
    /// Decodes and forwards records; during a replay, cuts each replayed epoch exactly at its
    /// recorded end.
    fn forward<R: RecordView>(&mut self, mut records: &[R]) -> Result<(), ActorProcessingErr> {
        while let Some(cut) = self.replay.front().copied() {
            let (before, after) = records.split_at(cut.split(records));
            self.send(before)?;
            records = after;
            if !cut.reached(self.next_offset, !after.is_empty()) {
                return Ok(());
            }
            self.aggregator.cast(AggregatorMsg::Barrier { barrier: cut.barrier, tp: self.tp.clone(), next_offset: cut.end })?;
            self.replay.pop_front();
        }
        self.send(records)
    }

    fn send<R: RecordView>(&mut self, records: &[R]) -> Result<(), ActorProcessingErr> {
        if records.is_empty() {
            return Ok(());
        }
        let input = records.len() as u64;
        self.backpressure.admit(input);
        metrics::counter!(m::RECORDS_CONSUMED, "topic" => self.tp.topic.to_string(), "partition" => self.tp.partition.to_string())
            .increment(input);
        let decoded = self.decoder.decode(records);
        let min_timestamp_ms = decoded.min_timestamp_ms;
        self.aggregator.cast(AggregatorMsg::Records { tp: self.tp.clone(), input, decoded, min_timestamp_ms })?;
        Ok(())
    }

    /// Reads what the queue holds (waiting a little for the first record), at most `max_batch`,
    /// keeping only records past what was already forwarded.
    async fn poll<'q>(&mut self, queue: &'q PartitionFetch) -> Result<Vec<Msg<'q>>, ActorProcessingErr> {
        let mut batch = queue.next_batch(self.max_batch, POLL_WAIT).await;
        if batch.iter().any(|m| m.error().is_some()) {
            for e in batch.iter().filter_map(Msg::error) {
                if is_data_loss(&e) {
                    return Err(format!(
                        "partition {} cannot be read from offset {}: {e} (the records were deleted by retention or compaction before they were committed; refusing to skip them)",
                        self.tp, self.next_offset
                    )
                    .into());
                }
                tracing::warn!(tp = %self.tp, error = %e, "kafka consume error; reading on");
            }
            batch.retain(|m| m.error().is_none());
        }
        let (next, mut ignored) = (&mut self.next_offset, 0usize);
        batch.retain(|m| {
            if m.offset() < *next {
                ignored += 1;
                return false;
            }
            *next = m.offset() + 1;
            true
        });
        if ignored > 0 {
            tracing::warn!(tp = %self.tp, records = ignored, next = self.next_offset, "ignoring records before the consumer's position");
        }
        Ok(batch)
    }
}

impl Actor for ConsumerActor {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: ConsumerArgs) -> Result<ConsumerState, ActorProcessingErr> {
        let mut state = ConsumerState {
            queue: args.queue,
            out: Forwarder {
                decoder: args.decoder,
                replay: args.replay,
                tp: args.tp,
                next_offset: args.start,
                aggregator: args.aggregator,
                max_batch: args.max_batch,
                backpressure: args.backpressure,
                told_end: false,
            },
        };
        // A replayed epoch that never moved this partition ends where it starts.
        state.out.forward::<Record>(&[])?;
        myself.cast(ConsumerMsg::Poll)?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ConsumerMsg,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMsg::Poll => {
                let out = &mut state.out;
                if !out.backpressure.may_read(!out.replay.is_empty()) {
                    // Wait for commits to release buffered records. Barriers still get through,
                    // so the open epoch can close and commit.
                    myself.send_after(BACKPRESSURE_WAIT, || ConsumerMsg::Poll);
                    return Ok(());
                }
                let batch = out.poll(&state.queue).await?;
                let drained = batch.len() < out.max_batch;
                out.told_end &= batch.is_empty();
                out.decoder.prepare(&batch).await?;
                out.forward(&batch)?;
                if drained && !out.told_end && state.queue.read_to_end(out.next_offset) {
                    // After the records: the aggregator may end a backlog's epoch now.
                    out.told_end = true;
                    out.aggregator.cast(AggregatorMsg::ReadToEnd(out.tp.clone()))?;
                }
                myself.cast(ConsumerMsg::Poll)?;
            }
            ConsumerMsg::Barrier(barrier) => {
                let out = &state.out;
                if !out.replay.is_empty() {
                    return Err(format!("barrier {barrier} arrived before the replayed epoch ended on {}", out.tp).into());
                }
                out.aggregator.cast(AggregatorMsg::Barrier { barrier, tp: out.tp.clone(), next_offset: out.next_offset })?;
            }
            ConsumerMsg::InjectFault(f) => f.trigger(&format!("consumer {}", state.out.tp))?,
        }
        Ok(())
    }
}
