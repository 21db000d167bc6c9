//! `exactly run --until-caught-up` (Spark's `Trigger.AvailableNow`, kafka-delta-ingest's
//! `--ends_at_latest_offsets`): read every partition up to the offsets that were latest at the
//! start, commit, stop.
//!
//! A partition is caught up once a committed cut reaches its target, or once an epoch resolves
//! whose barrier was cut after the consumer had read past the target: librdkafka's application
//! offset steps over transaction markers and aborted records, which a cut (the offset after
//! the last record) never does, so a partition that ends with a marker still finishes.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Offsets, TopicPartition};

/// What `--until-caught-up` waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Until {
    /// Where each partition is caught up: its high watermark at the start.
    targets: Offsets,
    /// Partitions caught up.
    done: BTreeSet<TopicPartition>,
    /// Per barrier in flight: the partitions read past their target when it was cut.
    passed: BTreeMap<u64, Vec<TopicPartition>>,
}

impl Until {
    /// Waiting for `targets`, from the committed cut `committed`.
    pub(crate) fn new(targets: Offsets, committed: &Offsets) -> Until {
        let mut until = Until { targets, done: BTreeSet::new(), passed: BTreeMap::new() };
        until.reached(committed);
        until
    }

    /// Barrier `barrier` is cut; `read` says how far the consumer has read a partition (its
    /// application offset, when known).
    pub(crate) fn cut(&mut self, barrier: u64, read: impl Fn(&TopicPartition) -> Option<i64>) {
        let passed = self.targets.iter().filter(|(tp, t)| read(tp).is_some_and(|r| r >= **t)).map(|(tp, _)| tp.clone()).collect();
        self.passed.insert(barrier, passed);
    }

    /// Barrier `barrier` resolved (its epoch committed, or it was empty) with the committed cut
    /// `committed`: whether every partition is caught up.
    pub(crate) fn resolved(&mut self, barrier: u64, committed: &Offsets) -> bool {
        let passed: Vec<TopicPartition> = self.passed.range(..=barrier).flat_map(|(_, p)| p.clone()).collect();
        self.passed.retain(|b, _| *b > barrier);
        self.done.extend(passed);
        self.reached(committed)
    }

    fn reached(&mut self, committed: &Offsets) -> bool {
        for (tp, target) in &self.targets {
            if committed.get(tp).is_some_and(|c| c >= target) {
                self.done.insert(tp.clone());
            }
        }
        self.done.len() == self.targets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_up_by_the_cut_or_by_an_epoch_cut_after_reading_past_the_target() {
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let targets: Offsets = [(a.clone(), 10), (b.clone(), 20)].into();
        let mut until = Until::new(targets.clone(), &[(a.clone(), 10), (b.clone(), 0)].into());
        assert!(!until.resolved(1, &[(a.clone(), 10), (b.clone(), 5)].into()));
        // b ends with a transaction marker at 19: its cut stays at 19, its reader passes 20.
        until.cut(2, |tp| Some(if *tp == b { 18 } else { 10 }));
        assert!(!until.resolved(2, &[(a.clone(), 10), (b.clone(), 19)].into()), "read only to 18 at that cut");
        until.cut(3, |tp| Some(if *tp == b { 20 } else { 10 }));
        assert!(until.resolved(3, &[(a.clone(), 10), (b.clone(), 19)].into()), "read past it before the cut");
        // Nothing to read at all.
        assert!(Until::new(targets, &[(a, 10), (b, 20)].into()).resolved(0, &Offsets::new()));
    }
}
