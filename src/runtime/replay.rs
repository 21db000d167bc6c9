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

use std::collections::VecDeque;
use std::ops::RangeInclusive;

use crate::error::{Error, Result};
use crate::model::{CommittedEpoch, EpochRanges};
use crate::model::{Offsets, RecordView, TopicPartition};

/// The epochs to replay, each under a barrier of its own (consecutive), and where each
/// partition's part of each ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Per epoch, oldest first: (epoch, barrier, ends).
    epochs: Vec<(u64, u64, Offsets)>,
}

impl Replay {
    /// Plans the replay of `committed` (consecutive epochs the sink holds, oldest first) over the
    /// partitions of `start` (the checkpoint's cut, one entry per partition to read), cut under
    /// consecutive barriers from `first_barrier`. A partition an epoch did not record has an
    /// empty part in it.
    pub fn plan(committed: &[CommittedEpoch], start: &Offsets, first_barrier: u64) -> Result<Replay> {
        let mut from = start.clone();
        let mut epochs = Vec::with_capacity(committed.len());
        for (i, c) in committed.iter().enumerate() {
            let mut ends = Offsets::new();
            for (tp, at) in &from {
                let end = c.offsets.get(tp).copied().unwrap_or(*at);
                if end < *at {
                    return Err(Error::Recovery(format!(
                        "epoch {} recorded offset {end} for {tp}, before the checkpoint's {at}",
                        c.epoch
                    )));
                }
                ends.insert(tp.clone(), end);
            }
            from = ends.clone();
            epochs.push((c.epoch, first_barrier + i as u64, ends));
        }
        Ok(Replay { epochs })
    }

    /// The barriers the replay cuts under (barrier 0, never cut, for a plan of no epoch).
    pub fn barriers(&self) -> RangeInclusive<u64> {
        let first = self.epochs.first().map_or(0, |e| e.1);
        first..=self.epochs.last().map_or(first, |e| e.1)
    }

    /// The epochs every table holds (all replayed ones but the last): the committer writes
    /// nothing of them.
    pub fn held_through(&self) -> u64 {
        self.epochs.last().map_or(0, |e| e.0.saturating_sub(1))
    }

    /// `tp`'s parts of the replay, in order (empty at `start` for a partition the plan does not
    /// know).
    pub fn cuts(&self, tp: &TopicPartition, start: i64) -> VecDeque<ReplayCut> {
        self.epochs
            .iter()
            .map(|(_, barrier, ends)| ReplayCut { barrier: *barrier, end: ends.get(tp).copied().unwrap_or(start) })
            .collect()
    }
}

/// The epochs a catch-up re-runs, from what the data table's commits recorded of epochs
/// `checkpoint + 1 ..` (oldest first), each checked to start where the one before it ended — the
/// first where the checkpoint's cut does, over the partitions both know. `Err`: the checkpoint
/// and the table are not one history.
pub fn chain(recorded: &[EpochRanges], checkpoint: u64, cut: &Offsets) -> std::result::Result<Vec<CommittedEpoch>, String> {
    let mut before = cut.clone();
    let mut chain = Vec::with_capacity(recorded.len());
    for (k, e) in recorded.iter().enumerate() {
        let want = checkpoint + 1 + k as u64;
        if e.epoch != want {
            return Err(format!("the table's log holds no commit of epoch {want} (cleaned up?)"));
        }
        for r in &e.ranges {
            if let Some(end) = before.get(&r.tp).filter(|end| **end != r.start) {
                return Err(format!(
                    "epoch {} starts {} at offset {}, but {} ends it at {end}",
                    e.epoch,
                    r.tp,
                    r.start,
                    if k == 0 { format!("the checkpoint (epoch {checkpoint})") } else { format!("epoch {}", e.epoch - 1) }
                ));
            }
        }
        before.extend(e.ranges.iter().map(|r| (r.tp.clone(), r.end)));
        chain.push(CommittedEpoch { epoch: e.epoch, offsets: e.ranges.iter().map(|r| (r.tp.clone(), r.end)).collect() });
    }
    Ok(chain)
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
        let plan = Replay::plan(std::slice::from_ref(&committed), &start, 7).unwrap();
        assert_eq!(plan.cuts(&tp(0), 5), [ReplayCut { barrier: 7, end: 10 }]);
        assert_eq!(plan.cuts(&tp(1), 0), [ReplayCut { barrier: 7, end: 0 }]);
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
        assert!(Replay::plan(&[committed], &start, 1).is_err());
    }

    #[test]
    fn a_catch_up_chains_epochs_that_link_and_refuses_a_gap_or_a_broken_link() {
        let range = |p: i32, start: i64, end: i64| PartitionRange { tp: tp(p), start, end, records: (end - start) as u64 };
        let cut: Offsets = [(tp(0), 5), (tp(1), 0)].into_iter().collect();
        let recorded = vec![
            EpochRanges { epoch: 4, ranges: vec![range(0, 5, 8), range(1, 0, 2)] },
            // Partition 1 did not move (or is unrecorded): its part is empty.
            EpochRanges { epoch: 5, ranges: vec![range(0, 8, 9)] },
            EpochRanges { epoch: 6, ranges: vec![range(0, 9, 12), range(1, 2, 7)] },
        ];
        let chained = chain(&recorded, 3, &cut).unwrap();
        let plan = Replay::plan(&chained, &cut, 10).unwrap();
        assert_eq!(plan.barriers(), 10..=12);
        let ends = |cuts: VecDeque<ReplayCut>| cuts.into_iter().map(|c| (c.barrier, c.end)).collect::<Vec<_>>();
        assert_eq!(ends(plan.cuts(&tp(0), 5)), [(10, 8), (11, 9), (12, 12)]);
        assert_eq!(ends(plan.cuts(&tp(1), 0)), [(10, 2), (11, 2), (12, 7)]);
        assert!(chain(&recorded[1..], 3, &cut).unwrap_err().contains("no commit of epoch 4"));
        let mut broken = recorded.clone();
        broken[2].ranges[0].start = 10;
        assert!(chain(&broken, 3, &cut).unwrap_err().contains("epoch 6 starts t/0 at offset 10, but epoch 5 ends it at 9"));
        let other: Offsets = [(tp(0), 6)].into_iter().collect();
        assert!(chain(&recorded, 3, &other).unwrap_err().contains("the checkpoint (epoch 3)"));
    }
}
