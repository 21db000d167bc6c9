//! The supervisor: root of the actor tree.
//!
//! ```text
//! Supervisor  (cuts epochs; restart budget; on any child failure: abort the open epoch and
//!  │           restart the whole tree from the last committed epoch)
//!  ├─ Consumer[p]   one per Kafka partition
//!  ├─ Aggregator    aligns barriers, closes epochs
//!  └─ Committer     the only writer: sink commit, then checkpoint
//! ```
//!
//! A *generation* is one incarnation of the tree: one Kafka client assigned at the last
//! committed cut, and fresh children. Any child failure ends the generation: its uncommitted
//! records are dropped and a new generation re-reads them from the checkpoint. One-for-all is
//! the simple strategy that is correct by construction: no actor survives holding state from an
//! aborted epoch.
//!
//! **Architecture Invariant:** at most one barrier is in flight. The next epoch is cut only after
//! the previous cut is resolved (committed, or found empty), so epoch numbers are contiguous and
//! a restart never races a commit of the same epoch.

mod budget;
mod generation;
mod group;
mod recover;
mod report;
pub(crate) mod until;

use budget::{Admit, RestartBudget};
use generation::Generation;
use group::GroupState;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::model::CommittedEpoch;
use crate::model::{Offsets, TopicPartition};
use crate::plan::Plan;
use crate::runtime::aggregator::{AggregatorActor, AggregatorArgs};
use crate::runtime::backpressure::BackPressure;
use crate::runtime::committer::{CommitterActor, CommitterArgs};
use crate::runtime::consumer::{ConsumerActor, ConsumerArgs};
use crate::runtime::messages::{AggregatorMsg, CommitReport, CommitterMsg, ConsumerMsg, PipelineStatus, SupervisorMsg};
use crate::runtime::persister::Persister;
use crate::runtime::replay::Replay;
use crate::sink::Sink;
use crate::source::fetch::PartitionFetch;
use crate::source::group::{GroupMember, GroupRequest};
use crate::source::{self, PartitionStats, PipelineConsumer, StatsContext};
use crate::state::checkpoint::{Checkpoint, CheckpointStore};
use crate::state::{Keyed, PartitionStates, Processor};
use crate::telemetry::metrics as m;
use crate::telemetry::progress::{PartitionProgress, Progress};
use crate::testing::failpoint::FailPoints;

/// How long a graceful stop of a child may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The supervisor actor.
pub struct SupervisorActor;

/// What the supervisor starts with.
pub struct SupervisorArgs {
    /// The pipeline, planned: its config and built pieces (the decoder, what an epoch means).
    pub plan: Plan,
    /// How its clients reach the brokers (made once, at start: secrets are read then).
    pub connection: source::Connection,
    /// The sink, shared by every generation's committer.
    pub sink: Arc<dyn Sink>,
    /// Every partition to read at start (from the pre-flight check); partitions added to the
    /// topics later are found by partition discovery.
    pub partitions: Vec<TopicPartition>,
    /// Where the reason for a fatal stop is left for `pipeline`.
    pub outcome: Arc<Mutex<Option<Error>>>,
    /// Set when the supervisor stops by itself (`post_stop`): a supervisor that failed (an
    /// error or a panic in its own handlers) never sets it, so the pipeline reports a failure
    /// even without a recorded reason.
    pub stopped_cleanly: Arc<std::sync::atomic::AtomicBool>,
    /// Progress reports go here.
    pub progress: broadcast::Sender<Progress>,
    /// Fail points (tests and the chaos suite).
    pub failpoints: Arc<FailPoints>,
    /// Rebuild the checkpoint from the sink's last epoch before the first start.
    pub reset_checkpoint_from_table: bool,
    /// `checkpoint.remote`: what start-up found there (a restore already done).
    pub persisted: Option<crate::state::persist::Found>,
    /// `--until-caught-up`: the offsets to read to (the high watermarks at the start), then
    /// stop.
    pub until: Option<crate::model::Offsets>,
}

/// The supervisor's lifecycle. Each phase carries its own data, so a combination that means
/// nothing (a last barrier while running, a failed stop while regenerating) cannot be written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Reading; an epoch is cut every `epoch.interval_ms`, or when the aggregator is full.
    Running,
    /// Partitions were added to a topic: the open epoch is cut one last time (`last`, once cut);
    /// when it commits, a generation that reads the new partitions too starts.
    Regenerating {
        /// The generation's last barrier, once cut.
        last: Option<u64>,
    },
    /// Ctrl-C / SIGTERM / `pipeline::Pipeline::shutdown`: the open epoch is cut one
    /// last time; when it commits, the supervisor stops.
    Stopping {
        /// The generation's last barrier, once cut.
        last: Option<u64>,
        /// An actor failed while the stop's last epoch was being committed: the tree restarts
        /// (within the restart budget and the shutdown deadline) to commit it.
        failure: Option<String>,
    },
}

impl Phase {
    /// The last barrier of a generation being wound down.
    fn last(&self) -> Option<u64> {
        match self {
            Phase::Running => None,
            Phase::Regenerating { last } | Phase::Stopping { last, .. } => *last,
        }
    }

    /// Records `barrier` as the last one of a generation being wound down (`None`: forgets it,
    /// the generation is gone).
    fn set_last(&mut self, barrier: Option<u64>) {
        match self {
            Phase::Running => {}
            Phase::Regenerating { last } | Phase::Stopping { last, .. } => *last = barrier,
        }
    }
}

/// The barrier cut and not yet resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    /// The first barrier it resolves: a replay of several epochs cuts them all at once, and
    /// each earlier one is reported as it commits.
    from: u64,
    barrier: u64,
    /// The aggregator filled up meanwhile: cut again as soon as this one resolves.
    cut_next: bool,
}

/// The supervisor's state.
pub struct SupervisorState {
    args: SupervisorArgs,
    store: CheckpointStore,
    stats: PartitionStats,
    generation: u64,
    current: Option<Generation>,
    committed: Checkpoint,
    next_barrier: u64,
    /// The epoch cut and not yet resolved (one at a time).
    in_flight: Option<InFlight>,
    /// The barrier in flight when the last generation was torn down: its commit may still have
    /// completed (a graceful teardown waits for it), and is then reported, not ignored.
    orphaned: Option<u64>,
    ticker: Option<JoinHandle<()>>,
    /// Restarts within the window, and in all.
    restarts: RestartBudget,
    /// Partitions read by this and later generations (grows when partitions are added).
    partitions: Vec<TopicPartition>,
    /// The topic ids the checkpoint's positions belong to.
    topic_ids: BTreeMap<String, String>,
    /// Running, or winding the generation down to regenerate or to stop.
    phase: Phase,
    /// The end offsets of the last epoch handed to the committer and not reported committed: a
    /// stop that failed to commit it cuts its retry there.
    uncommitted_cut: Option<Offsets>,
    last_commit_at: Instant,
    /// When this generation last resolved an epoch (committed, or cut empty): readiness.
    resolved_at: Option<Instant>,
    /// `--until-caught-up`: what is still to be read.
    until: Option<until::Until>,
    reset_from_sink: bool,
    processor: Option<Keyed>,
    /// The last committed cut, shared with the Kafka statistics callback (lag per partition).
    committed_offsets: Arc<Mutex<Offsets>>,
    /// Group mode: this process's membership and the partitions the group gave it.
    group: Option<GroupState>,
    /// Keeps the persisted copy of the checkpoint recent (`checkpoint.remote`).
    persister: Option<Persister>,
}

impl SupervisorState {
    fn fatal(&mut self, myself: &ActorRef<SupervisorMsg>, error: Error) {
        tracing::error!(%error, "pipeline stopping");
        let reason = error.to_string();
        self.args.outcome.lock().expect("outcome lock").get_or_insert(error);
        myself.stop(Some(reason));
    }

    fn shutting_down(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    async fn on_child_failure(&mut self, myself: &ActorRef<SupervisorMsg>, kind: String, reason: String, how: &'static str) {
        tracing::warn!(actor = %kind, %reason, generation = self.generation, "actor failed; aborting the open epoch and restarting from the last committed one");
        let actor_kind = kind.split(' ').next().unwrap_or("actor").to_string();
        metrics::counter!(m::ACTOR_RESTARTS, "actor" => actor_kind, "reason" => how).increment(1);
        self.teardown(true).await;
        if !self.shutting_down() {
            // A restart reads the partitions found so far anyway. (A stop stays: the restarted
            // tree commits one epoch and stops.)
            self.phase = Phase::Running;
        }
        self.schedule_restart(myself, format!("{kind}: {reason}"));
    }

    /// Restarts the tree after a backoff, or stops the pipeline when the restart budget is spent.
    /// During a stop the restart retries the stop's last epoch: the stop promised to commit what
    /// was read, and a transient failure (a store's dropped connection) is retried like any other
    /// — bounded by the budget and `supervisor.shutdown_timeout_ms`.
    fn schedule_restart(&mut self, myself: &ActorRef<SupervisorMsg>, failure: String) {
        if let Phase::Stopping { failure: last_failure, .. } = &mut self.phase {
            *last_failure = Some(failure.clone());
        }
        let window_secs = self.args.plan.config.supervisor.window_secs;
        let backoff = match self.restarts.admit(Instant::now()) {
            Admit::After(backoff) => backoff,
            Admit::Spent { restarts } => {
                let e = if self.shutting_down() {
                    // The stop failed, whatever made it: say it as one.
                    Error::Shutdown(format!(
                        "the open epoch was not committed: {restarts} restarts within {window_secs} s spent the restart budget (last failure: {failure}); stopped without it"
                    ))
                } else {
                    Error::RestartBudgetSpent { restarts, window_secs, last_failure: failure }
                };
                self.fatal(myself, e);
                return;
            }
        };
        metrics::gauge!(m::RESTART_BUDGET_REMAINING).set(self.restarts.remaining() as f64);
        self.generation += 1;
        myself.send_after(backoff, || SupervisorMsg::StartGeneration);
    }
}

impl SupervisorState {
    /// Starts a generation: after a restart's backoff, after a wind-down, or to retry a stop's
    /// last epoch.
    async fn on_start_generation(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        if self.current.is_some() {
            return Ok(());
        }
        if matches!(self.phase, Phase::Stopping { failure: None, .. }) {
            myself.stop(None);
            return Ok(());
        }
        match self.start_generation(myself).await {
            Err(e) => {
                self.teardown(true).await;
                match e {
                    // What a restart cannot change stops the pipeline.
                    Error::Recovery(_)
                    | Error::Config(_)
                    | Error::TopicRecreated { .. }
                    | Error::OtherPipeline { .. }
                    | Error::Checkpoint { .. } => self.fatal(myself, e),
                    other => {
                        tracing::warn!(error = %other, "could not start the actor tree");
                        self.schedule_restart(myself, format!("start-up: {other}"));
                    }
                }
            }
            // Retrying the stop's last epoch: this tree commits the epoch it replays (the
            // stop's cut, or the epoch the sink holds beyond the checkpoint) — or, with
            // no such cut (the failure came before it), what it reads until a cut now —
            // and stops.
            Ok(()) if self.shutting_down() => {
                if self.current.is_none() {
                    myself.stop(None);
                } else if let Some(f) = self.in_flight {
                    self.phase.set_last(Some(f.barrier));
                } else {
                    self.cut()?;
                }
            }
            Ok(()) => {}
        }
        Ok(())
    }

    /// Barrier `barrier` is resolved: a commit is reported; a wind-down whose last barrier this
    /// was ends (stop, or a new generation); otherwise the next epoch may be cut.
    async fn on_barrier_resolved(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        barrier: u64,
        report: Option<CommitReport>,
    ) -> Result<(), ActorProcessingErr> {
        if self.in_flight.is_some_and(|f| (f.from..f.barrier).contains(&barrier)) {
            if let Some(report) = report {
                self.on_commit(report);
            }
            return Ok(());
        }
        let Some(resolved) = self.in_flight.filter(|f| f.barrier == barrier) else {
            // From a generation that was torn down: a commit that completed still counts
            // (progress, metrics), but cuts nothing.
            if self.orphaned == Some(barrier) {
                self.orphaned = None;
                if let Some(report) = report {
                    self.on_commit(report);
                }
            }
            return Ok(());
        };
        self.in_flight = None;
        self.resolved_at = Some(Instant::now());
        if let Some(report) = report {
            self.on_commit(report);
        }
        let caught_up = self.until.as_mut().is_some_and(|u| u.resolved(barrier, &self.committed.offsets()));
        if caught_up && !self.shutting_down() {
            tracing::info!(epoch = self.committed.epoch, "caught up with the offsets that were latest at the start; stopping");
            self.on_shutdown(myself)?;
            return Ok(());
        }
        match &self.phase {
            Phase::Stopping { last: Some(last), .. } if *last == barrier => {
                self.teardown(true).await;
                tracing::info!(epoch = self.committed.epoch, "open epoch committed; stopping");
                myself.stop(None);
            }
            Phase::Regenerating { last: Some(last) } if *last == barrier => {
                self.teardown(true).await;
                self.phase = Phase::Running;
                self.generation += 1;
                myself.cast(SupervisorMsg::StartGeneration)?;
            }
            // The barrier in flight when the wind-down began was not the last: cut it now.
            Phase::Stopping { .. } | Phase::Regenerating { .. } => self.cut()?,
            Phase::Running if resolved.cut_next => self.cut()?,
            Phase::Running => {}
        }
        Ok(())
    }

    /// Ctrl-C: commit the open epoch, then stop (within `supervisor.shutdown_timeout_ms`).
    fn on_shutdown(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        if self.shutting_down() {
            return Ok(());
        }
        // A wind-down for new partitions already cut its last barrier: that one stops now.
        self.phase = Phase::Stopping { last: self.phase.last(), failure: None };
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        let deadline = Duration::from_millis(self.args.plan.config.supervisor.shutdown_timeout_ms);
        myself.send_after(deadline, || SupervisorMsg::ShutdownDeadline);
        if self.current.is_none() {
            myself.stop(None);
        } else if self.in_flight.is_none() {
            self.cut()?;
        }
        Ok(())
    }
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        mut args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        // A group member keeps no checkpoint on disk: the table records every partition's
        // position, and group mode runs stateless pipelines only.
        let store = match &args.plan.config.source.group_id {
            Some(_) => CheckpointStore::in_memory(&args.plan.config.state)?,
            None => CheckpointStore::open_with(args.plan.config.checkpoint_dir(), &args.plan.config.state)?,
        }
        .with_failpoints(args.failpoints.clone());
        let until = args.until.take().map(|targets| until::Until::new(targets, &Default::default()));
        let persister = args.persisted.take().map(|found| Persister::start(found, store.clone(), &args.plan.config.checkpoint));
        let decoded = args.plan.decoder.schema();
        let config = &args.plan.config;
        let upsert = config.upsert.as_ref().map(|u| (u, args.plan.table.0.as_ref()));
        let processor = match (&config.source.group_id, config.state.scope) {
            (Some(_), crate::config::StateScope::Partition) if config.dedup.is_some() || config.aggregate.is_some() => {
                Some(Keyed::Partition(Arc::new(PartitionStates::new(
                    &config.id,
                    config.checkpoint_dir().join("partitions"),
                    &config.state,
                    decoded.clone(),
                    config.dedup.as_ref(),
                    config.aggregate.as_ref(),
                ))))
            }
            _ => Processor::new(&decoded, config.dedup.as_ref(), config.aggregate.as_ref(), upsert, store.clone())?
                .map(|p| Keyed::Process(Arc::new(p))),
        };
        let reset_from_sink = args.reset_checkpoint_from_table;
        let partitions = args.partitions.clone();
        m::register_zeros();
        crate::telemetry::process::record_build();
        metrics::gauge!(m::LAST_COMMIT).set(m::unix_now());
        metrics::gauge!(m::EPOCH_INTERVAL).set(args.plan.config.epoch.interval().as_secs_f64());
        metrics::gauge!(m::RESTART_BUDGET_REMAINING).set(args.plan.config.supervisor.max_restarts as f64);
        let stats = PartitionStats::default();
        let committed_offsets = Arc::new(Mutex::new(Offsets::new()));
        let group = match &args.plan.config.source.group_id {
            None => None,
            Some(group_id) => {
                let src = &args.plan.config.source;
                let member = GroupMember::join(
                    &args.connection,
                    group_id,
                    src.subscription(),
                    src.partition_discovery_ms,
                    StatsContext::new(stats.clone(), committed_offsets.clone()),
                    {
                        let supervisor = myself.clone();
                        Box::new(move |request| supervisor.cast(SupervisorMsg::Group(request)).is_ok())
                    },
                )?;
                tracing::info!(group = %group_id, member = %crate::source::group::member_name(), "joined the consumer group; waiting for partitions");
                Some(GroupState {
                    member,
                    assigned: Vec::new(),
                    fresh: Offsets::new(),
                    suspended: Vec::new(),
                    reclaim: Vec::new(),
                    paused_since: None,
                })
            }
        };
        myself.cast(SupervisorMsg::StartGeneration)?;
        let restarts = RestartBudget::new(&args.plan.config.supervisor);
        Ok(SupervisorState {
            committed: Checkpoint::new(&args.plan.config.id, 0, &Offsets::new()),
            args,
            store,
            stats,
            generation: 0,
            current: None,
            next_barrier: 1,
            in_flight: None,
            orphaned: None,
            ticker: None,
            restarts,
            partitions,
            topic_ids: BTreeMap::new(),
            phase: Phase::Running,
            uncommitted_cut: None,
            last_commit_at: Instant::now(),
            resolved_at: None,
            until,
            reset_from_sink,
            processor,
            committed_offsets,
            group,
            persister,
        })
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut SupervisorState) -> Result<(), ActorProcessingErr> {
        state.args.stopped_cleanly.store(true, std::sync::atomic::Ordering::SeqCst);
        state.teardown(true).await;
        if let Some(mut persister) = state.persister.take() {
            persister.finish(Duration::from_millis(state.args.plan.config.supervisor.shutdown_timeout_ms)).await;
        }
        if let Some(group) = state.group.take() {
            // Leaving the group closes the client, which blocks briefly: never on the executor.
            let _ = tokio::task::spawn_blocking(move || group.member.leave()).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // An error of the supervisor's own stops the pipeline with that reason: never a
        // supervisor gone silently (the pipeline would look as if it had stopped cleanly).
        if let Err(e) = self.dispatch(myself.clone(), msg, state).await {
            state.fatal(&myself, Error::Actor(format!("the supervisor failed: {e}")));
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason, how): (ActorCell, String, &'static str) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string(), "failed"),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into()), "stopped"),
            _ => return Ok(()),
        };
        let Some(gen) = &state.current else {
            return Ok(());
        };
        if !gen.ids.contains(&cell.get_id()) {
            return Ok(()); // an actor of a generation already torn down
        }
        let kind = gen.kind_of(cell.get_id()).unwrap_or_else(|| "actor".into());
        state.on_child_failure(&myself, kind, reason, how).await;
        Ok(())
    }
}

impl SupervisorActor {
    /// The supervisor's messages (see [`Actor::handle`], which turns an error here into a
    /// fatal stop).
    async fn dispatch(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartGeneration => state.on_start_generation(&myself).await?,
            SupervisorMsg::Tick => {
                if state.in_flight.is_none() && state.phase == Phase::Running {
                    state.cut()?;
                }
            }
            SupervisorMsg::CutNow => match &mut state.in_flight {
                None => state.cut()?,
                Some(f) => f.cut_next = true,
            },
            SupervisorMsg::BarrierResolved { barrier, report } => state.on_barrier_resolved(&myself, barrier, report).await?,
            SupervisorMsg::EpochCut(ends) => state.uncommitted_cut = Some(ends),
            SupervisorMsg::Shutdown => state.on_shutdown(&myself)?,
            SupervisorMsg::ShutdownDeadline => {
                let timeout = state.args.plan.config.supervisor.shutdown_timeout_ms;
                state.teardown(false).await;
                let last = match &state.phase {
                    Phase::Stopping { failure: Some(f), .. } => format!(" (last failure: {f})"),
                    _ => String::new(),
                };
                state.fatal(
                    &myself,
                    Error::Shutdown(format!(
                        "the open epoch was not committed within supervisor.shutdown_timeout_ms = {timeout}; stopped without it{last}"
                    )),
                );
            }
            SupervisorMsg::TopicsDescribed { partitions, topic_ids } => {
                state.on_topics_described(&myself, partitions, topic_ids)?
            }
            SupervisorMsg::Status(reply) => {
                let _ = reply.send(state.status());
            }
            SupervisorMsg::Group(request) => state.on_group(&myself, request).await?,
            SupervisorMsg::Fenced { barrier, partitions, detail } => {
                if state.in_flight.is_some_and(|f| f.barrier == barrier) {
                    state.on_fenced(&myself, partitions, detail).await;
                } else if state.orphaned == Some(barrier) {
                    // Fenced in a generation torn down meanwhile (a rebalance): the next one must
                    // not claim these partitions back.
                    state.orphaned = None;
                    state.suspend(&myself, partitions);
                }
            }
            SupervisorMsg::Unsuspend => {
                let resume = state.group.as_mut().is_some_and(|g| {
                    let still: Vec<TopicPartition> = g.suspended.drain(..).filter(|tp| g.assigned.contains(tp)).collect();
                    g.reclaim.extend(still);
                    !g.reclaim.is_empty()
                });
                if resume && !state.shutting_down() {
                    // The group still assigns them here after a session timeout: claim them again.
                    state.teardown(true).await;
                    myself.cast(SupervisorMsg::StartGeneration)?;
                }
            }
        }
        Ok(())
    }
}
