//! Fail points: named places in the commit path where a test or the chaos suite can make the
//! pipeline fail on purpose — return an error, panic, abort the whole process, or stall.
//!
//! Unlike a process-global registry, each pipeline owns its [`FailPoints`], so tests running in
//! parallel never trip each other's. The CLI reads `EXACTLY_FAILPOINTS`, e.g.
//! `EXACTLY_FAILPOINTS="after-delta-commit=1*abort"`. Unset, a fail point costs one lock of an
//! empty map.
//!
//! Fail points in the commit path, in order: `after-parquet-write` (files written, not
//! committed), `before-delta-commit` (a bucket-replacing commit has read the table's current
//! files, before it commits: stalling here widens the race with another writer), `after-delta-commit` (data table committed, dead letters and checkpoint not yet),
//! `mid-checkpoint-write` (temp file written, not renamed), `after-checkpoint` (checkpoint
//! written, the supervisor not yet told). In table maintenance: `compaction-before-commit`
//! (merged files written, the compaction not committed).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};

/// What a fail point does when reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAction {
    /// Return an error from the surrounding operation.
    Error,
    /// Panic.
    Panic,
    /// Abort the process at once (like SIGKILL: no cleanup, no flush).
    Abort,
    /// Sleep, then go on.
    Sleep(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Armed {
    action: FailAction,
    /// How many more times it fires; `None`: every time.
    remaining: Option<u32>,
}

/// The fail points of one pipeline.
#[derive(Debug, Default)]
pub struct FailPoints {
    armed: Mutex<HashMap<String, Armed>>,
}

impl FailPoints {
    /// No fail points armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `name=[N*]action[,...]`; actions: `error`, `panic`, `abort`, `sleep(MS)`.
    pub fn parse(spec: &str) -> Result<Self> {
        let fp = FailPoints::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, rest) = item.split_once('=').ok_or_else(|| Error::FailPoint(format!("'{item}': expected name=action")))?;
            let (count, action) = match rest.split_once('*') {
                Some((n, a)) => (Some(n.parse::<u32>().map_err(|_| Error::FailPoint(format!("'{item}': bad count")))?), a),
                None => (None, rest),
            };
            let action = match action {
                "error" => FailAction::Error,
                "panic" => FailAction::Panic,
                "abort" => FailAction::Abort,
                a if a.starts_with("sleep(") && a.ends_with(')') => {
                    let ms = a[6..a.len() - 1].parse::<u64>().map_err(|_| Error::FailPoint(format!("'{item}': bad sleep")))?;
                    FailAction::Sleep(Duration::from_millis(ms))
                }
                other => return Err(Error::FailPoint(format!("'{item}': unknown action '{other}'"))),
            };
            fp.armed.lock().expect("failpoints lock").insert(name.to_string(), Armed { action, remaining: count });
        }
        Ok(fp)
    }

    /// From `EXACTLY_FAILPOINTS`, if set.
    pub fn from_env() -> Result<Self> {
        match std::env::var("EXACTLY_FAILPOINTS") {
            Ok(spec) => Self::parse(&spec),
            Err(_) => Ok(Self::new()),
        }
    }

    /// Arms `name` to fire `times` times (`None`: until removed).
    pub fn arm(&self, name: &str, action: FailAction, times: Option<u32>) {
        self.armed.lock().expect("failpoints lock").insert(name.to_string(), Armed { action, remaining: times });
    }

    /// Whether `name` is armed (has fires left).
    pub fn is_armed(&self, name: &str) -> bool {
        self.armed.lock().expect("failpoints lock").contains_key(name)
    }

    /// Disarms `name`.
    pub fn disarm(&self, name: &str) {
        self.armed.lock().expect("failpoints lock").remove(name);
    }

    /// The action armed at `name`, counting down its remaining fires.
    fn take(&self, name: &str) -> Option<FailAction> {
        let mut armed = self.armed.lock().expect("failpoints lock");
        let a = armed.get_mut(name)?;
        let action = a.action;
        if let Some(n) = a.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                armed.remove(name);
            }
        }
        tracing::warn!(failpoint = name, ?action, "fail point reached");
        Some(action)
    }

    /// Called at the fail point `name`.
    pub async fn hit(&self, name: &str) -> Result<()> {
        match self.take(name) {
            Some(FailAction::Sleep(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            other => fire(name, other),
        }
    }

    /// The blocking form of [`FailPoints::hit`], for synchronous code.
    pub fn hit_sync(&self, name: &str) -> Result<()> {
        match self.take(name) {
            Some(FailAction::Sleep(d)) => {
                std::thread::sleep(d);
                Ok(())
            }
            other => fire(name, other),
        }
    }
}

/// Performs a non-sleeping action.
fn fire(name: &str, action: Option<FailAction>) -> Result<()> {
    match action {
        None | Some(FailAction::Sleep(_)) => Ok(()),
        Some(FailAction::Error) => Err(Error::FailPoint(format!("fail point '{name}'"))),
        Some(FailAction::Panic) => panic!("fail point '{name}'"),
        Some(FailAction::Abort) => std::process::abort(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_fire_n_times() {
        let fp = FailPoints::parse("a=2*error, b=sleep(1)").unwrap();
        assert!(fp.hit_sync("a").is_err());
        assert!(fp.hit_sync("a").is_err());
        assert!(fp.hit_sync("a").is_ok(), "disarmed after 2");
        assert!(fp.hit_sync("b").is_ok());
        assert!(fp.hit_sync("zzz").is_ok());
        assert!(FailPoints::parse("a=explode").is_err());
    }
}
