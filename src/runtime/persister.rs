//! The persister: keeps the checkpoint's persisted copy (`checkpoint.remote`, see
//! [`crate::state::persist`]) recent, off the commit path.
//!
//! The supervisor tells it each committed epoch; when a persist is due ([`due`]) it snapshots the
//! local checkpoint between two checkpoint writes, uploads what the store lacks, writes the
//! manifest, and cleans what the retention lets go. A failed persist is a warning and a metric —
//! the local checkpoint is intact — and is tried again when the next is due. A graceful stop
//! persists the last epoch ([`Persister::finish`]), so a clean restart elsewhere catches up
//! nothing.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::CheckpointConfig;
use crate::state::checkpoint::CheckpointStore;
use crate::state::persist::{Found, Remote, Uploaded};
use crate::telemetry::metrics as m;

/// Files no kept manifest names are deleted once this old (younger ones may be a persist's that
/// is still uploading, in another process).
const ORPHAN_AGE: Duration = Duration::from_secs(600);
/// How often the worker looks at the clock between commits.
const TICK: Duration = Duration::from_millis(500);
/// The local copy a persist uploads from, inside the checkpoint directory.
const SNAPSHOT_DIR: &str = "persist";

/// When to persist: every `every` epochs, or after `interval` with a new epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `checkpoint.persist_every_epochs`.
    pub every: u64,
    /// `checkpoint.persist_interval_ms`.
    pub interval: Duration,
}

impl Policy {
    /// The config's policy.
    pub fn of(c: &CheckpointConfig) -> Self {
        Policy { every: c.persist_every_epochs, interval: Duration::from_millis(c.persist_interval_ms) }
    }
}

/// Whether to persist `epoch` now. `last`: this process's last persist (its epoch, when it was
/// tried); `stored`: the newest epoch the store held at start. The first persist of a process
/// comes as soon as it has an epoch the store lacks, so a stateful pipeline has a persisted
/// checkpoint from its first start on.
pub fn due(last: Option<(u64, Instant)>, stored: Option<u64>, epoch: u64, now: Instant, policy: &Policy) -> bool {
    match last {
        None => stored.is_none_or(|s| epoch > s),
        Some((at, when)) => epoch >= at + policy.every || (epoch > at && now.duration_since(when) >= policy.interval),
    }
}

enum Msg {
    Committed(u64),
    Now(oneshot::Sender<Result<(), String>>),
    Finish(oneshot::Sender<()>),
}

/// The persister's handle.
pub struct Persister {
    tx: mpsc::UnboundedSender<Msg>,
    task: Option<JoinHandle<()>>,
    /// The store held no checkpoint at start, and none was persisted since.
    unpersisted: bool,
}

struct Worker {
    remote: Remote,
    store: CheckpointStore,
    incarnation: String,
    known: Uploaded,
    policy: Policy,
    retain: usize,
    stored: Option<u64>,
    last: Option<(u64, Instant)>,
}

impl Persister {
    /// Starts persisting `store` as start-up found the store (`state::persist::start`).
    pub fn start(found: Found, store: CheckpointStore, config: &CheckpointConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let Found { remote, incarnation, known, stored, .. } = found;
        let worker =
            Worker { remote, store, incarnation, known, policy: Policy::of(config), retain: config.retain, stored, last: None };
        Persister { tx, task: Some(tokio::spawn(worker.run(rx))), unpersisted: stored.is_none() }
    }

    /// Before the first epoch is read: when the store holds no checkpoint of this pipeline yet,
    /// persists the local one now. So once any epoch is in the table, the store holds a
    /// checkpoint at or before it, from which a fresh disk catches up.
    pub async fn ensure_persisted(&mut self) -> crate::Result<()> {
        if !self.unpersisted {
            return Ok(());
        }
        let (reply, done) = oneshot::channel();
        let _ = self.tx.send(Msg::Now(reply));
        let outcome = done.await.unwrap_or_else(|_| Err("the persister stopped".into()));
        outcome.map_err(|detail| crate::Error::Persisted { at: "the first persist".into(), detail })?;
        self.unpersisted = false;
        Ok(())
    }

    /// Epoch `epoch` is committed to the local checkpoint.
    pub fn committed(&self, epoch: u64) {
        let _ = self.tx.send(Msg::Committed(epoch));
    }

    /// Persists the last committed epoch if it is not yet, waiting at most `timeout`.
    pub async fn finish(&mut self, timeout: Duration) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Msg::Finish(reply)).is_ok() && tokio::time::timeout(timeout, done).await.is_err() {
            tracing::warn!("the last epoch was not persisted within the shutdown timeout; the next start catches up from an older persisted checkpoint");
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut latest: Option<u64> = None;
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Committed(e)) => latest = latest.max(Some(e)),
                    Some(Msg::Now(reply)) => {
                        let _ = reply.send(self.persist().await);
                        continue;
                    }
                    Some(Msg::Finish(reply)) => {
                        let persisted = self.last.map(|(at, _)| at).or(self.stored);
                        if latest.is_some_and(|e| persisted.is_none_or(|p| e > p)) {
                            let _ = self.persist().await;
                        }
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => {}
            }
            if let Some(e) = latest {
                if due(self.last, self.stored, e, Instant::now(), &self.policy) {
                    let _ = self.persist().await;
                }
            }
        }
    }

    /// One persist: snapshot, upload, manifest, clean. `Err`: why it failed (counted, logged).
    async fn persist(&mut self) -> Result<(), String> {
        let t0 = Instant::now();
        let snapshot = self.store.dir().join(SNAPSHOT_DIR);
        let (store, at) = (self.store.clone(), snapshot.clone());
        let taken = tokio::task::spawn_blocking(move || store.snapshot(&at)).await;
        let cp = match taken {
            Ok(Ok(Some(cp))) => cp,
            Ok(Ok(None)) => return Err("the local checkpoint holds no epoch yet".into()),
            Ok(Err(e)) => return self.failed(e.to_string()),
            Err(e) => return self.failed(e.to_string()),
        };
        let persisted = self.remote.persist(&snapshot, &cp, &self.incarnation, &mut self.known).await;
        // The copy's hard links would keep table files compaction deleted on disk.
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&snapshot)).await;
        match persisted {
            Ok(p) => {
                self.last = Some((p.epoch, Instant::now()));
                metrics::histogram!(m::CHECKPOINT_PERSIST_SECONDS).record(t0.elapsed().as_secs_f64());
                metrics::counter!(m::CHECKPOINT_PERSIST_BYTES).increment(p.uploaded_bytes);
                metrics::gauge!(m::CHECKPOINT_PERSISTED_EPOCH).set(p.epoch as f64);
                tracing::info!(
                    epoch = p.epoch,
                    uploaded_files = p.uploaded_files,
                    uploaded_bytes = p.uploaded_bytes,
                    state_bytes = p.total_bytes,
                    ms = t0.elapsed().as_millis() as u64,
                    "checkpoint persisted"
                );
                if let Err(e) = self.remote.clean(self.retain, ORPHAN_AGE).await {
                    tracing::warn!(error = %e, "cleaning persisted checkpoints failed; tried again after the next persist");
                }
                Ok(())
            }
            Err(e) => self.failed(e.to_string()),
        }
    }

    fn failed(&mut self, error: String) -> Result<(), String> {
        metrics::counter!(m::CHECKPOINT_PERSIST_FAILURES).increment(1);
        tracing::warn!(%error, "persisting the checkpoint failed; the local checkpoint is intact, tried again when the next persist is due");
        // Not again at once: when the next is due by the policy.
        let epoch = self.last.map_or(self.stored.unwrap_or(0), |(e, _)| e);
        self.last = Some((epoch, Instant::now()));
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persist_is_due_first_for_an_epoch_the_store_lacks_then_by_epochs_or_time() {
        let p = Policy { every: 10, interval: Duration::from_secs(60) };
        let t = Instant::now();
        assert!(due(None, None, 0, t, &p), "first start: epoch 0 persisted at once");
        assert!(!due(None, Some(7), 7, t, &p), "the store holds it");
        assert!(due(None, Some(7), 8, t, &p));
        assert!(!due(Some((8, t)), None, 17, t, &p));
        assert!(due(Some((8, t)), None, 18, t, &p), "every 10 epochs");
        assert!(!due(Some((8, t)), None, 8, t + Duration::from_secs(61), &p), "nothing new");
        assert!(due(Some((8, t)), None, 9, t + Duration::from_secs(61), &p), "after the interval");
    }
}
