//! Back-pressure: how many records one generation has consumed but not yet committed, and when a
//! consumer may read more.
//!
//! Consumers [`admit`](BackPressure::admit) the records they forward; the committer
//! [`release`](BackPressure::release)s an epoch's records once its checkpoint is written. A
//! consumer reads only while the count is below `source.max_buffered_records`, so memory is
//! bounded by the limit plus one batch per consumer however slow the sink. Barriers are never held
//! back, so the open epoch still closes and commits, which releases the count.
//!
//! **Architecture Invariant:** back-pressure never blocks a replay. A replayed epoch must end
//! exactly at the cut the table recorded; if its partition stopped reading because the other
//! partitions' backlog filled the buffer, the epoch could never close and nothing would ever
//! commit again. A consumer still inside its replayed range therefore reads whatever the count
//! (the overshoot is bounded by the replayed epoch, which was committed once already).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The count of consumed-but-uncommitted records of one generation, and its limit. Cloning
/// shares the count.
#[derive(Debug, Clone)]
pub struct BackPressure {
    buffered: Arc<AtomicU64>,
    limit: u64,
}

impl BackPressure {
    /// A fresh count (a new generation starts with nothing buffered) with this limit.
    pub fn new(limit: u64) -> Self {
        BackPressure { buffered: Arc::new(AtomicU64::new(0)), limit }
    }

    /// Whether a consumer may read another batch now; `replaying`: it is still inside a replayed
    /// epoch's range, which is never held back.
    pub fn may_read(&self, replaying: bool) -> bool {
        replaying || self.buffered() < self.limit
    }

    /// `n` records were consumed and forwarded.
    pub fn admit(&self, n: u64) {
        self.buffered.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` records were committed (sink and checkpoint).
    pub fn release(&self, n: u64) {
        self.buffered.fetch_sub(n, Ordering::Relaxed);
    }

    /// Records consumed but not yet committed.
    pub fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_stops_reading_but_never_a_replay() {
        let bp = BackPressure::new(10);
        assert!(bp.may_read(false));
        bp.admit(10);
        assert!(!bp.may_read(false), "at the limit, ordinary reading waits");
        assert!(bp.may_read(true), "a replayed epoch must always be able to reach its recorded end");
        bp.release(4);
        assert!(bp.may_read(false));
        assert_eq!(bp.clone().buffered(), 6, "clones share the count");
    }
}
