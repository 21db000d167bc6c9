//! Replay: re-cutting an epoch that the sink holds but the checkpoint missed.
//!
//! A process that dies between an epoch's sink commit and its checkpoint write leaves the table
//! at epoch V = C + 1 and the checkpoint at C. Recovery replays V: every consumer starts at C's
//! cut and cuts V exactly at the end offset the table recorded for its partition, under a barrier
//! of its own; the aggregator commits that barrier as epoch V even if it holds no record; the
//! stateful stages recompute V's state changes against the state at C; the sink skips each table
//! that already holds V (after checking that the cut it recorded is this one) and writes the
//! others; then checkpoint V is written and the stream goes on. The rules each actor follows are
//! here:
//!
//! - [`Replay::plan`] (supervisor): which cut, per partition, from the checkpoint and the table;
//! - [`ReplayCut`] (consumer): where its partition's part of the replayed epoch ends;
//! - [`crate::model::check_recorded_cut`] (sink): a table that already holds V must hold this very cut.
//!
//! **Architecture Invariant:** a replay compares only the partitions the table recorded. A
//! partition added to the topic since V was committed has no recorded end: its part of V is
//! empty (it starts and ends at its start), so a new partition never makes a replay fail — and
//! never a restart loop.
//!
//! Back-pressure never holds a replay back ([`crate::runtime::backpressure`]).

use crate::error::{Error, Result};
use crate::model::CommittedEpoch;
use crate::model::{Offsets, RecordView, TopicPartition};

/// An epoch to replay, and where each partition's part of it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The epoch the sink holds (checkpoint + 1).
    pub epoch: u64,
    /// The barrier the replayed epoch is cut under.
    pub barrier: u64,
    ends: Offsets,
}

impl Replay {
    /// Plans the replay of `committed` (the sink's last epoch) over the partitions of `start`
    /// (the checkpoint's cut, one entry per partition to read), cut under `barrier`.
    pub fn plan(committed: &CommittedEpoch, start: &Offsets, barrier: u64) -> Result<Replay> {
        let mut ends = Offsets::new();
        for (tp, from) in start {
            let end = committed.offsets.get(tp).copied().unwrap_or(*from);
            if end < *from {
                return Err(Error::Recovery(format!(
                    "epoch {} recorded offset {end} for {tp}, before the checkpoint's {from}",
                    committed.epoch
                )));
            }
            ends.insert(tp.clone(), end);
        }
        Ok(Replay { epoch: committed.epoch, barrier, ends })
    }

    /// `tp`'s part of the replay (empty at `start` for a partition the plan does not know).
    pub fn cut(&self, tp: &TopicPartition, start: i64) -> ReplayCut {
        ReplayCut { barrier: self.barrier, end: self.ends.get(tp).copied().unwrap_or(start) }
    }
}

/// One consumer's part of a replayed epoch: forward the records before `end`, then barrier
/// `barrier` with next offset `end`, then the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCut {
    /// The replay's barrier.
    pub barrier: u64,
    /// The end offset the table recorded for this partition.
    pub end: i64,
}

impl ReplayCut {
    /// How many of `records` (in offset order) belong to the replayed epoch.
    pub fn split<R: RecordView>(&self, records: &[R]) -> usize {
        records.partition_point(|r| r.offset() < self.end)
    }

    /// Whether the replayed epoch ends on this partition now: the consumer's next offset reached
    /// the recorded end, or a record at or past it arrived (offsets have gaps: the records just
    /// before the end may be gone, compacted away).
    pub fn reached(&self, next_offset: i64, past_end: bool) -> bool {
        next_offset >= self.end || past_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{check_recorded_cut, PartitionRange};

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    #[test]
    fn a_partition_the_table_never_recorded_replays_an_empty_range() {
        let committed = CommittedEpoch { epoch: 4, offsets: [(tp(0), 10)].into_iter().collect() };
        let start: Offsets = [(tp(0), 5), (tp(1), 0)].into_iter().collect();
        let plan = Replay::plan(&committed, &start, 7).unwrap();
        assert_eq!(plan.cut(&tp(0), 5), ReplayCut { barrier: 7, end: 10 });
        assert_eq!(plan.cut(&tp(1), 0), ReplayCut { barrier: 7, end: 0 });
        let ranges = vec![
            PartitionRange { tp: tp(0), start: 5, end: 10, records: 5 },
            PartitionRange { tp: tp(1), start: 0, end: 0, records: 0 },
        ];
        assert_eq!(check_recorded_cut(&committed.offsets, &ranges), Ok(()));
        let moved = vec![PartitionRange { tp: tp(1), start: 0, end: 3, records: 3 }];
        assert!(check_recorded_cut(&committed.offsets, &moved).is_err(), "rows of an unrecorded partition are a mismatch");
        let other = vec![PartitionRange { tp: tp(0), start: 5, end: 9, records: 4 }];
        assert!(check_recorded_cut(&committed.offsets, &other).is_err());
    }

    #[test]
    fn a_recorded_end_before_the_checkpoint_is_refused() {
        let committed = CommittedEpoch { epoch: 4, offsets: [(tp(0), 3)].into_iter().collect() };
        let start: Offsets = [(tp(0), 5)].into_iter().collect();
        assert!(Replay::plan(&committed, &start, 1).is_err());
    }
}
