//! Whether the pipeline is ready (`/readyz`): the decision, from what the supervisor reports.

use std::time::Duration;

/// What the supervisor reports of its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// A generation of the actor tree is running.
    pub running: bool,
    /// Group mode: the group assigned this member nothing (it waits, ready to take partitions).
    pub idle: bool,
    /// A stop is committing the open epoch.
    pub draining: bool,
    /// Restarts left in the budget's window.
    pub restarts_left: usize,
    /// Since an epoch was last resolved — committed, or cut empty because there was nothing to
    /// read (`None`: none yet in this generation).
    pub since_resolved: Option<Duration>,
    /// How long an epoch may take to resolve before the pipeline is no longer ready: ten epoch
    /// intervals, at least [`READY_FLOOR`].
    pub resolve_within: Duration,
}

/// The least [`Health::resolve_within`]: a commit to a slow store may take this long.
pub const READY_FLOOR: Duration = Duration::from_secs(30);

impl Health {
    /// How long epochs may take to resolve with `interval` between cuts.
    pub fn resolve_within(interval: Duration) -> Duration {
        (interval * 10).max(READY_FLOOR)
    }
}

/// `Ok` when the pipeline is ready: its tree runs, no stop drains it, the restart budget is not
/// spent, and an epoch resolved within [`Health::resolve_within`] (an empty cut counts: nothing
/// to read is not a fault) — or it is a group member the group assigned nothing. Else why not,
/// in one line.
pub fn readiness(h: &Health) -> Result<(), String> {
    if h.draining {
        return Err("draining: the stop is committing the open epoch".into());
    }
    if h.restarts_left == 0 {
        return Err("the restart budget is spent".into());
    }
    if h.idle {
        return Ok(());
    }
    if !h.running {
        return Err("the actor tree is (re)starting".into());
    }
    match h.since_resolved {
        None => Err("no epoch resolved yet".into()),
        Some(d) if d > h.resolve_within => {
            Err(format!("no epoch resolved for {} s (more than {} s)", d.as_secs(), h.resolve_within.as_secs()))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_running_resolving_and_within_the_budget() {
        let ok = Health {
            running: true,
            idle: false,
            draining: false,
            restarts_left: 3,
            since_resolved: Some(Duration::from_secs(1)),
            resolve_within: Health::resolve_within(Duration::from_millis(200)),
        };
        assert_eq!(ok.resolve_within, READY_FLOOR);
        assert_eq!(Health::resolve_within(Duration::from_secs(10)), Duration::from_secs(100));
        assert_eq!(readiness(&ok), Ok(()));
        let not = |h: Health, says: &str| assert!(readiness(&h).unwrap_err().contains(says), "{h:?}");
        not(Health { draining: true, ..ok.clone() }, "draining");
        not(Health { restarts_left: 0, ..ok.clone() }, "budget");
        not(Health { running: false, ..ok.clone() }, "starting");
        assert_eq!(
            readiness(&Health { running: false, idle: true, since_resolved: None, ..ok.clone() }),
            Ok(()),
            "an idle member"
        );
        not(Health { since_resolved: None, ..ok.clone() }, "yet");
        not(Health { since_resolved: Some(Duration::from_secs(31)), ..ok.clone() }, "31 s");
    }
}
