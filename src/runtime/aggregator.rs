//! The aggregator actor: aligns barriers from every consumer and closes epochs.
//!
//! Records from partition p belong to the oldest barrier p has not yet passed. When barrier `b`
//! has arrived from every partition, the cut is complete: if anything moved, the epoch gets the
//! next epoch number and goes to the committer; an empty cut is dropped without using a number,
//! so committed epochs are contiguous (1, 2, 3, ...).
//!
//! Then the stateful stages ([`crate::state`]) run over the closed epoch.
//!
//! Epochs are cut on the supervisor's interval tick, or earlier when the aggregator asks
//! ([`early_cut`]): once the open epoch holds `epoch.max_records` records, and once a backlog
//! has been read: the epoch before was full, records are held, and every consumer has reached
//! its partition's end ([`crate::source::fetch::PartitionFetch::read_to_end`]). So the last
//! records of a catch-up are committed at once rather than on the next tick. A steady stream
//! never ends a backlog (its epochs are cut as before), and neither do records arriving after
//! a full epoch that took everything there was.

use std::collections::{BTreeMap, HashMap, HashSet};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::runtime::messages::AggregatorMsg;
use crate::runtime::messages::CommitterMsg;
use crate::state::checkpoint::StateChanges;
use crate::state::{Keyed, Output};
use deltalake::arrow::record_batch::RecordBatch;

use crate::decode::{DeadLetter, Decoded};
use crate::model::{Offsets, PartitionRange, TopicPartition};
use crate::runtime::messages::SupervisorMsg;
use crate::sink::EpochBatch;

/// The aggregator actor.
pub struct AggregatorActor;

/// What the aggregator starts with.
pub struct AggregatorArgs {
    /// The cut the first epoch starts at (the last committed epoch's end).
    pub start: Offsets,
    /// The last committed epoch; the next non-empty cut becomes `committed_epoch + 1`.
    pub committed_epoch: u64,
    /// Where closed epochs go.
    pub committer: ActorRef<CommitterMsg>,
    /// Told about empty cuts and full epochs.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Records after which the open epoch asks to be closed early.
    pub max_records: usize,
    /// The barriers of epochs being replayed: committed even if they hold no records, because
    /// the sink already has them.
    pub replay_barriers: Option<std::ops::RangeInclusive<u64>>,
    /// Dedup and aggregation, if the pipeline has them.
    pub processor: Option<Keyed>,
    /// The last epoch whose checkpoint is written (the committer's).
    pub checkpointed: tokio::sync::watch::Receiver<u64>,
    /// Offsets Kafka deleted before they were read (`source.on_data_loss = "skip"`): the
    /// consumers start after them, and each epoch records the part within its ranges.
    pub skipped: Vec<crate::model::Skipped>,
}

/// Records and barriers collected for one barrier number.
#[derive(Default)]
struct Pending {
    rows: BTreeMap<TopicPartition, Vec<RecordBatch>>,
    dead: BTreeMap<TopicPartition, Vec<DeadLetter>>,
    input: BTreeMap<TopicPartition, u64>,
    ends: BTreeMap<TopicPartition, i64>,
    count: u64,
    /// Records the transform's filter dropped.
    filtered: u64,
    min_timestamp_ms: Option<i64>,
}

/// The aggregator's state.
pub struct AggregatorState {
    args: AggregatorArgs,
    /// The cut the next epoch starts at.
    last_cut: Offsets,
    /// Next epoch number to assign.
    next_epoch: u64,
    /// Per partition: the barrier its next records belong before.
    current: HashMap<TopicPartition, u64>,
    pending: BTreeMap<u64, Pending>,
    /// Barrier number that records arriving before any barrier belong to.
    first_barrier: Option<u64>,
    /// Whether (and why) the records held have asked for a cut already.
    asked: Option<EarlyCut>,
    /// The last epoch closed was cut because it was full: the next one may end a backlog.
    backlog: bool,
    /// Partitions whose consumer found nothing more to read since its last records.
    read_to_end: HashSet<TopicPartition>,
}

/// Why the open epoch asks to be cut before the interval's tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EarlyCut {
    /// It holds `epoch.max_records` records.
    Full,
    /// It ends a backlog: the epoch before it was full, and every partition is read to its end.
    BacklogRead,
}

/// Whether a backlog (a full epoch was cut) goes on: not once everything is read and nothing
/// held — it ended with that full epoch, and records arriving later are a new stretch, cut by
/// the tick or when full.
fn in_backlog(backlog: bool, open: u64, all_read: bool) -> bool {
    backlog && !(all_read && open == 0)
}

/// Whether records held (`open`) ask for a cut now: at `max_records`, or — after a full
/// epoch (`backlog`) — once every partition is read to its end (`all_read`).
fn early_cut(open: u64, max_records: u64, backlog: bool, all_read: bool) -> Option<EarlyCut> {
    if open >= max_records {
        Some(EarlyCut::Full)
    } else if open > 0 && backlog && all_read {
        Some(EarlyCut::BacklogRead)
    } else {
        None
    }
}

impl AggregatorState {
    fn slot(&mut self, tp: &TopicPartition) -> &mut Pending {
        let b = match self.current.get(tp) {
            Some(b) => *b,
            // Before the first barrier reaches this partition, records belong to the oldest
            // open barrier; `u64::MAX` is a placeholder renumbered when that barrier arrives.
            None => self.first_barrier.unwrap_or(u64::MAX),
        };
        self.pending.entry(b).or_default()
    }

    fn on_records(
        &mut self,
        tp: TopicPartition,
        input: u64,
        decoded: Decoded,
        min_ts: Option<i64>,
    ) -> Result<(), ActorProcessingErr> {
        if !self.last_cut.contains_key(&tp) {
            return Err(format!("records from unassigned partition {tp}").into());
        }
        let slot = self.slot(&tp);
        slot.count += input;
        slot.filtered += decoded.filtered.len() as u64;
        *slot.input.entry(tp.clone()).or_default() += input;
        slot.min_timestamp_ms = match (slot.min_timestamp_ms, min_ts) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if decoded.rows.num_rows() > 0 {
            slot.rows.entry(tp.clone()).or_default().push(decoded.rows);
        }
        if !decoded.dead.is_empty() {
            slot.dead.entry(tp.clone()).or_default().extend(decoded.dead);
        }
        self.read_to_end.remove(&tp);
        self.ask_for_cut()
    }

    /// Asks the supervisor to cut now if [`early_cut`] says so (once per epoch).
    fn ask_for_cut(&mut self) -> Result<(), ActorProcessingErr> {
        if self.asked.is_some() {
            return Ok(());
        }
        let open: u64 = self.pending.values().map(|p| p.count).sum();
        let all_read = self.read_to_end.len() == self.last_cut.len();
        self.backlog = in_backlog(self.backlog, open, all_read);
        self.asked = early_cut(open, self.args.max_records as u64, self.backlog, all_read);
        if self.asked.is_some() {
            self.args.supervisor.cast(SupervisorMsg::CutNow)?;
        }
        Ok(())
    }

    async fn on_barrier(&mut self, barrier: u64, tp: TopicPartition, next_offset: i64) -> Result<(), ActorProcessingErr> {
        if self.first_barrier.is_none() {
            // Records that arrived before the first barrier was known belong to it.
            if let Some(p) = self.pending.remove(&u64::MAX) {
                self.pending.insert(barrier, p);
            }
            self.first_barrier = Some(barrier);
        }
        if let Some(cur) = self.current.get(&tp) {
            if *cur != barrier {
                return Err(format!("barrier {barrier} from {tp} out of order (expected {cur})").into());
            }
        }
        self.current.insert(tp.clone(), barrier + 1);
        let pending = self.pending.entry(barrier).or_default();
        pending.ends.insert(tp, next_offset);
        if pending.ends.len() == self.last_cut.len() {
            let done = self.pending.remove(&barrier).expect("pending barrier");
            self.close(barrier, done).await?;
        }
        Ok(())
    }

    /// The skipped offsets within `ranges` (an epoch's), taken from those still to record.
    fn skipped_within(&mut self, ranges: &[PartitionRange]) -> Vec<crate::model::Skipped> {
        let mut out = Vec::new();
        for s in self.args.skipped.iter_mut() {
            let Some(r) = ranges.iter().find(|r| r.tp == s.tp) else { continue };
            let (from, to) = (s.from.max(r.start), s.to.min(r.end));
            if from < to {
                out.push(crate::model::Skipped { tp: s.tp.clone(), from, to });
                s.from = to;
            }
        }
        self.args.skipped.retain(|s| s.from < s.to);
        out
    }

    async fn close(&mut self, barrier: u64, mut done: Pending) -> Result<(), ActorProcessingErr> {
        let mut ranges = Vec::with_capacity(self.last_cut.len());
        let mut by_partition = BTreeMap::new();
        let mut dead_letters = Vec::new();
        for (tp, start) in &self.last_cut {
            let end = done.ends[tp];
            ranges.push(PartitionRange { tp: tp.clone(), start: *start, end, records: done.input.get(tp).copied().unwrap_or(0) });
            by_partition.insert(tp.clone(), done.rows.remove(tp).unwrap_or_default());
            dead_letters.extend(done.dead.remove(tp).unwrap_or_default());
        }
        // The next epoch's records that arrived while this one was closing may fill it (or
        // end the backlog) already: with no record arriving after them (all read, or held back
        // by back-pressure), nothing else would ask for its cut before `epoch.interval_ms`.
        self.backlog = self.asked == Some(EarlyCut::Full);
        self.asked = None;
        self.ask_for_cut()?;
        let moved = ranges.iter().any(|r| r.start != r.end || r.records > 0);
        if !moved && !self.args.replay_barriers.as_ref().is_some_and(|r| r.contains(&barrier)) {
            self.args.supervisor.cast(SupervisorMsg::BarrierResolved { barrier, report: None })?;
            return Ok(());
        }
        let epoch = self.next_epoch;
        // Stateful stages run over the epoch in canonical order (partition, offset), against the
        // state of the last committed epoch, off the async executor.
        let t0 = std::time::Instant::now();
        let (processed, partition_state, stateless) = match &self.args.processor {
            None => (None, BTreeMap::new(), by_partition.into_values().flatten().collect()),
            Some(keyed) => {
                // Against the state of the epoch before: a replay cuts several epochs at once,
                // so this one may close before the one before it is checkpointed.
                self.args
                    .checkpointed
                    .wait_for(|c| *c + 1 >= epoch)
                    .await
                    .map_err(|_| "the committer stopped before the previous epoch was checkpointed")?;
                match keyed.clone() {
                    Keyed::Process(p) => {
                        let rows = by_partition.into_values().flatten().collect();
                        (Some(tokio::task::spawn_blocking(move || p.process(epoch, rows)).await??), BTreeMap::new(), Vec::new())
                    }
                    Keyed::Partition(states) => {
                        let ranges = ranges.clone();
                        let done = tokio::task::spawn_blocking(move || states.process(&ranges, by_partition)).await??;
                        (Some(done.processed), done.changes, Vec::new())
                    }
                }
            }
        };
        let (output, state, duplicates, superseded) = match processed {
            None => (Output::Append(stateless), StateChanges::default(), 0, 0),
            Some(processed) => {
                dead_letters.extend(processed.late);
                (processed.output, processed.changes, processed.duplicates, processed.superseded)
            }
        };
        let skipped = self.skipped_within(&ranges);
        let batch = EpochBatch {
            epoch,
            skipped,
            ranges,
            output,
            dead_letters,
            min_timestamp_ms: done.min_timestamp_ms,
            state,
            partition_state,
            duplicates,
            superseded,
            filtered: done.filtered,
            state_time: t0.elapsed(),
        };
        self.last_cut = batch.end_offsets();
        self.args.supervisor.cast(SupervisorMsg::EpochCut(self.last_cut.clone()))?;
        self.next_epoch += 1;
        self.args.committer.cast(CommitterMsg::Commit { barrier, batch: Box::new(batch) })?;
        Ok(())
    }
}

impl Actor for AggregatorActor {
    type Msg = AggregatorMsg;
    type State = AggregatorState;
    type Arguments = AggregatorArgs;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, args: AggregatorArgs) -> Result<AggregatorState, ActorProcessingErr> {
        Ok(AggregatorState {
            last_cut: args.start.clone(),
            next_epoch: args.committed_epoch + 1,
            args,
            current: HashMap::new(),
            pending: BTreeMap::new(),
            first_barrier: None,
            asked: None,
            backlog: false,
            read_to_end: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: AggregatorMsg,
        state: &mut AggregatorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AggregatorMsg::Records { tp, input, decoded, min_timestamp_ms } => {
                state.on_records(tp, input, decoded, min_timestamp_ms)
            }
            AggregatorMsg::Barrier { barrier, tp, next_offset } => state.on_barrier(barrier, tp, next_offset).await,
            AggregatorMsg::ReadToEnd(tp) => {
                state.read_to_end.insert(tp);
                state.ask_for_cut()
            }
            AggregatorMsg::Buffered(reply) => {
                let _ = reply.send(state.pending.values().map(|p| p.count).sum());
                Ok(())
            }
            AggregatorMsg::InjectFault(f) => f.trigger("aggregator"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{early_cut, in_backlog, EarlyCut};

    #[test]
    fn an_epoch_is_cut_early_when_full_or_when_it_ends_a_backlog() {
        assert_eq!(early_cut(100, 100, false, false), Some(EarlyCut::Full));
        assert_eq!(early_cut(100, 100, true, true), Some(EarlyCut::Full));
        // After a full epoch, the rest of the backlog is cut once every partition is read.
        assert_eq!(early_cut(40, 100, true, true), Some(EarlyCut::BacklogRead));
        assert_eq!(early_cut(40, 100, true, false), None, "a partition still has records");
        assert_eq!(early_cut(0, 100, true, true), None, "nothing to commit");
        // A steady stream (the epoch before was cut by the tick) waits for the tick.
        assert_eq!(early_cut(40, 100, false, true), None);
        // A full epoch that took everything there was ends the backlog: records arriving later
        // (a new round of exactly `max_records`) are not cut short.
        assert!(!in_backlog(true, 0, true));
        assert!(in_backlog(true, 0, false), "more to read");
        assert!(in_backlog(true, 40, true), "the backlog's tail, held");
        assert!(!in_backlog(false, 40, true));
    }
}
