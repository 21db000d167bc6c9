//! The restart budget: at most `supervisor.max_restarts` restarts within
//! `supervisor.window_secs`, each after a backoff doubling from `supervisor.backoff_ms` up to
//! [`MAX_BACKOFF`]. A decision over the times of the restarts so far and the time now.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::SupervisorConfig;

/// The longest wait between restarts, however many came before.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the budget allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Restart after this backoff.
    After(Duration),
    /// The budget is spent: this many restarts within the window.
    Spent { restarts: usize },
}

/// The restarts of the window, and how many in all.
#[derive(Debug)]
pub(super) struct RestartBudget {
    max: usize,
    window: Duration,
    backoff: Duration,
    recent: VecDeque<Instant>,
    /// Restarts since start (progress, status).
    pub(super) total: u64,
}

impl RestartBudget {
    pub(super) fn new(c: &SupervisorConfig) -> RestartBudget {
        RestartBudget {
            max: c.max_restarts,
            window: Duration::from_secs(c.window_secs),
            backoff: Duration::from_millis(c.backoff_ms),
            recent: VecDeque::new(),
            total: 0,
        }
    }

    /// Whether a restart at `now` is within the budget (and then counts it), and after which
    /// backoff.
    pub(super) fn admit(&mut self, now: Instant) -> Admit {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            return Admit::Spent { restarts: self.recent.len() };
        }
        let backoff = self.backoff.saturating_mul(1 << self.recent.len().min(10)).min(MAX_BACKOFF);
        self.recent.push_back(now);
        self.total += 1;
        Admit::After(backoff)
    }

    /// Restarts left in the window.
    pub(super) fn remaining(&self) -> usize {
        self.max.saturating_sub(self.recent.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max: usize) -> RestartBudget {
        RestartBudget::new(&SupervisorConfig { max_restarts: max, window_secs: 60, backoff_ms: 100, ..Default::default() })
    }

    #[test]
    fn restarts_back_off_doubling_until_the_window_s_budget_is_spent() {
        let (mut b, t0) = (budget(3), Instant::now());
        assert_eq!(b.admit(t0), Admit::After(Duration::from_millis(100)));
        assert_eq!(b.admit(t0), Admit::After(Duration::from_millis(200)));
        assert_eq!(b.admit(t0), Admit::After(Duration::from_millis(400)));
        assert_eq!(b.remaining(), 0);
        assert_eq!(b.admit(t0), Admit::Spent { restarts: 3 });
        assert_eq!(b.total, 3);
    }

    #[test]
    fn restarts_older_than_the_window_no_longer_count() {
        let (mut b, t0) = (budget(2), Instant::now());
        b.admit(t0);
        b.admit(t0);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(b.admit(later), Admit::After(Duration::from_millis(100)), "the window emptied: the backoff starts over");
        assert_eq!(b.total, 3);
    }

    #[test]
    fn the_backoff_never_exceeds_its_cap() {
        let (mut b, t0) = (budget(100), Instant::now());
        let last = (0..30).map(|_| b.admit(t0)).last();
        assert_eq!(last, Some(Admit::After(MAX_BACKOFF)));
    }
}
