//! The committer actor: the only writer.
//!
//! For each closed epoch, in order: (1) commit it to the sink, atomically (an epoch of a
//! catch-up, which every table holds, is not written: `Sink::held`); (2) write the checkpoint
//! (epoch + cut); (3) report to the supervisor. A crash between (1) and (2) leaves the
//! sink one epoch ahead of the checkpoint, which recovery detects and repairs.
//!
//! **Architecture Invariant:** epochs reach the sink in order, each exactly once per run, and the
//! checkpoint is written only after the sink holds the epoch.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::error::Error;
use crate::runtime::messages::SupervisorMsg;
use crate::runtime::messages::{CommitReport, CommitterMsg, StateSize};
use crate::sink::Sink;
use crate::state::checkpoint::{Checkpoint, CheckpointStore};
use crate::state::PartitionStates;
use crate::testing::failpoint::FailPoints;

/// The committer actor.
pub struct CommitterActor;

/// What the committer starts with.
pub struct CommitterArgs {
    /// Pipeline id, recorded in the checkpoint.
    pub pipeline_id: String,
    /// The sink, shared across restarts.
    pub sink: Arc<dyn Sink>,
    /// The checkpoint.
    pub store: CheckpointStore,
    /// `state.scope = "partition"`: the partitions' states, written after the tables hold the
    /// epoch.
    pub partitions: Option<Arc<PartitionStates>>,
    /// The last committed epoch.
    pub committed_epoch: u64,
    /// Epochs up to this one are held by every table already (a catch-up re-runs them for
    /// their state): the sink writes nothing of them.
    pub held_through: u64,
    /// Told about each commit.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Fail points (`after-checkpoint`).
    pub failpoints: Arc<FailPoints>,
    /// Records consumed but not committed; released after each commit.
    pub backpressure: crate::runtime::backpressure::BackPressure,
    /// Told each epoch whose checkpoint is written (the aggregator's stateful stages wait for
    /// the epoch before theirs).
    pub checkpointed: tokio::sync::watch::Sender<u64>,
}

/// The committer's state.
pub struct CommitterState {
    args: CommitterArgs,
    last_epoch: u64,
}

impl Actor for CommitterActor {
    type Msg = CommitterMsg;
    type State = CommitterState;
    type Arguments = CommitterArgs;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, args: CommitterArgs) -> Result<CommitterState, ActorProcessingErr> {
        Ok(CommitterState { last_epoch: args.committed_epoch, args })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: CommitterMsg,
        state: &mut CommitterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CommitterMsg::InjectFault(f) => f.trigger("committer"),
            CommitterMsg::Commit { barrier, mut batch } => {
                if batch.epoch != state.last_epoch + 1 {
                    return Err(format!(
                        "epoch {} arrived after epoch {}; epochs must be contiguous",
                        batch.epoch, state.last_epoch
                    )
                    .into());
                }
                let t0 = Instant::now();
                // The state files of a bulk insert are written while the sink commits (another
                // core); they are ingested only after the sink holds the epoch. A failed sink
                // commit drops them, which removes them.
                let (store, changes, epoch) = (state.args.store.clone(), std::mem::take(&mut batch.state), batch.epoch);
                let staging = tokio::task::spawn_blocking(move || {
                    let staged = store.stage(epoch, &changes);
                    (changes, staged)
                });
                let committed = if batch.epoch <= state.args.held_through {
                    state.args.sink.held(&batch).await
                } else {
                    state.args.sink.commit(&batch).await
                };
                let committed = match committed {
                    Ok(c) => c,
                    Err(Error::Fenced { partitions, detail }) => {
                        // Group mode: another member claimed some of the epoch's partitions;
                        // nothing of the epoch was written. The supervisor decides what next.
                        state.args.supervisor.cast(SupervisorMsg::Fenced { barrier, partitions, detail })?;
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                };
                let sink_time = t0.elapsed();
                count_skipped(&batch.skipped);
                // Offsets and state changes in one RocksDB batch, off the async executor. If this
                // actor is killed meanwhile, the write still completes, and the store's lock makes
                // the next generation's recovery wait for it.
                let t1 = Instant::now();
                let checkpoint = Checkpoint::new(&state.args.pipeline_id, batch.epoch, &batch.end_offsets());
                let (mut changes, staged) = staging.await?;
                let staged = staged?;
                let store = state.args.store.clone();
                let (partitions, partition_state) = (state.args.partitions.clone(), std::mem::take(&mut batch.partition_state));
                let state_size = tokio::task::spawn_blocking(move || -> crate::Result<StateSize> {
                    // An upsert table's compaction moved rows: the index follows, in this write.
                    if let Some(moved) = &committed.relocated {
                        store.relocate(moved, &mut changes)?;
                    }
                    let (mut dedup_keys, mut agg_keys, mut bytes) = (0, 0, 0);
                    if let Some(partitions) = &partitions {
                        partitions.commit(&partition_state)?;
                        (dedup_keys, agg_keys, bytes) = partitions.size()?;
                    }
                    store.commit_staged(&checkpoint, &changes, staged)?;
                    Ok(StateSize {
                        dedup_keys: dedup_keys + store.dedup_key_count()?,
                        agg_keys: agg_keys + store.agg_key_count()?,
                        upsert_rows: store.upsert_row_count()?,
                        bytes: bytes + store.disk_bytes(),
                        memory: store.memory(),
                    })
                })
                .await??;
                let checkpoint_time = t1.elapsed();
                state.last_epoch = batch.epoch;
                state.args.checkpointed.send_replace(batch.epoch);
                state.args.backpressure.release(batch.input_records());
                state.args.failpoints.hit("after-checkpoint").await?;
                let report = CommitReport {
                    epoch: batch.epoch,
                    records: batch.input_records(),
                    rows: batch.row_count() as u64,
                    dead_letters: batch.dead_letters.len() as u64,
                    duplicates: batch.duplicates,
                    superseded: batch.superseded,
                    filtered: batch.filtered,
                    dead_letter_categories: batch.dead_letters.iter().fold(Default::default(), |mut m, d| {
                        *m.entry(d.kind.as_str()).or_default() += 1;
                        m
                    }),
                    min_timestamp_ms: batch.min_timestamp_ms,
                    ranges: batch.ranges,
                    state_time: batch.state_time,
                    sink_time,
                    checkpoint_time,
                    state_size,
                };
                state.args.supervisor.cast(SupervisorMsg::BarrierResolved { barrier, report: Some(report) })?;
                Ok(())
            }
        }
    }
}

/// `exactly_offsets_skipped_total`: the offsets a committed epoch skipped.
fn count_skipped(skipped: &[crate::model::Skipped]) {
    for s in skipped {
        let (topic, partition) = (s.tp.topic.to_string(), s.tp.partition.to_string());
        metrics::counter!(crate::telemetry::metrics::OFFSETS_SKIPPED, "topic" => topic, "partition" => partition)
            .increment((s.to - s.from).max(0) as u64);
    }
}
