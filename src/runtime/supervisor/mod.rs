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

use std::collections::{BTreeMap, HashSet, VecDeque};
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
use crate::runtime::replay::Replay;
use crate::sink::Sink;
use crate::source::fetch::PartitionFetch;
use crate::source::group::{GroupMember, GroupRequest};
use crate::source::{self, PartitionStats, PipelineConsumer, StatsContext};
use crate::state::checkpoint::{Checkpoint, CheckpointStore};
use crate::state::Processor;
use crate::telemetry::metrics as m;
use crate::telemetry::progress::{PartitionProgress, Progress};
use crate::testing::failpoint::FailPoints;

/// How long a graceful stop of a child may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest wait between restarts, however many came before.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

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
}

/// One incarnation of the tree.
struct Generation {
    client: Arc<PipelineConsumer>,
    /// Serves the client's main queue (single-process mode; a group member's is served by its
    /// [`GroupMember`]).
    poller: Option<JoinHandle<()>>,
    /// Partition discovery (single-process mode; the group protocol finds a group's).
    discovery: Option<JoinHandle<()>>,
    consumers: Vec<(TopicPartition, ActorRef<ConsumerMsg>)>,
    aggregator: ActorRef<AggregatorMsg>,
    committer: ActorRef<CommitterMsg>,
    ids: HashSet<ActorId>,
}

impl Generation {
    fn kind_of(&self, id: ActorId) -> Option<String> {
        if self.aggregator.get_id() == id {
            return Some("aggregator".into());
        }
        if self.committer.get_id() == id {
            return Some("committer".into());
        }
        self.consumers.iter().find(|(_, c)| c.get_id() == id).map(|(tp, _)| format!("consumer {tp}"))
    }
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
    restarts: VecDeque<Instant>,
    restarts_total: u64,
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
    reset_from_sink: bool,
    processor: Option<Arc<Processor>>,
    /// The last committed cut, shared with the Kafka statistics callback (lag per partition).
    committed_offsets: Arc<Mutex<Offsets>>,
    /// Group mode: this process's membership and the partitions the group gave it.
    group: Option<GroupState>,
}

/// A group member's side of the assignment (see `group.rs`).
struct GroupState {
    member: GroupMember,
    /// The partitions the group assigned to this member.
    assigned: Vec<TopicPartition>,
    /// Partitions assigned at these offsets by the last rebalance and not read since (the next
    /// generation need not seek them).
    fresh: Offsets,
    /// Partitions another member claimed (this member was fenced on them): left out of the
    /// generations until the group revokes them, or until a session timeout has passed.
    suspended: Vec<TopicPartition>,
    /// Partitions whose suspension ended while the group still assigns them here: the next
    /// generation claims them again (a newer token).
    reclaim: Vec<TopicPartition>,
    /// When this member stopped committing for a rebalance (for the pause metric).
    paused_since: Option<Instant>,
}

impl GroupState {
    /// The partitions the next generation reads.
    fn active(&self) -> Vec<TopicPartition> {
        let mut v: Vec<TopicPartition> = self.assigned.iter().filter(|tp| !self.suspended.contains(tp)).cloned().collect();
        v.sort();
        v
    }

    /// Forgets `partitions` (revoked): no longer assigned, suspended, to claim or fresh.
    fn forget(&mut self, partitions: &[TopicPartition]) {
        self.assigned.retain(|tp| !partitions.contains(tp));
        self.suspended.retain(|tp| !partitions.contains(tp));
        self.reclaim.retain(|tp| !partitions.contains(tp));
        self.fresh.retain(|tp, _| !partitions.contains(tp));
    }

    fn pause(&mut self) {
        metrics::counter!(m::REBALANCES).increment(1);
        self.paused_since.get_or_insert_with(Instant::now);
    }
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

    /// Reconciles the checkpoint with what the sink's tables record, by
    /// [`crate::runtime::recovery::decide`]: where to resume and, when a table lacks the data table's last
    /// epoch, the epoch to replay. See ARCHITECTURE.md, "Recovery".
    async fn recover(&mut self) -> Result<(Checkpoint, Option<CommittedEpoch>), Error> {
        use crate::runtime::recovery::{Found, Inputs, Rebuild, Start};
        let id = self.args.plan.config.id.clone();
        let dir = self.store.dir().display().to_string();
        let found = self.store.load()?;
        if let Some(cp) = &found {
            if cp.pipeline_id != id {
                return Err(Error::Recovery(format!(
                    "checkpoint in {dir} belongs to pipeline '{}', not '{id}'; give each pipeline its own checkpoint.dir",
                    cp.pipeline_id
                )));
            }
        }
        let tables = self.args.sink.recorded(&self.partitions).await?;
        let rebuild = match (std::mem::take(&mut self.reset_from_sink), self.args.plan.config.checkpoint.rebuild_from_table) {
            (true, _) => Rebuild::Now,
            (false, true) => Rebuild::IfMissing,
            (false, false) => Rebuild::Never,
        };
        let state = match (&self.args.plan.config.dedup, &self.args.plan.config.aggregate) {
            _ if self.processor.is_none() => None,
            (Some(_), Some(_)) => Some("dedup keys and aggregates"),
            (Some(_), None) => Some("dedup keys"),
            _ => Some("aggregates"),
        };
        let meaning = self.args.plan.meaning.clone();
        let inputs = Inputs {
            meaning: &meaning,
            pipeline: &id,
            dir: &dir,
            checkpoint: found.as_ref().map(|cp| Found { epoch: cp.epoch, offsets: cp.offsets() }),
            tables: tables.as_ref(),
            rebuild,
            state,
        };
        let (epoch, offsets, replay, rebuilt) = match crate::runtime::recovery::decide(&inputs).map_err(Error::Recovery)? {
            Start::Resume { epoch, offsets, rebuilt } => (epoch, offsets, None, rebuilt),
            Start::Replay { epoch, offsets, ends, rebuilt } => {
                tracing::warn!(
                    checkpoint = epoch,
                    replay = epoch + 1,
                    "tables lack an epoch the data table holds (a crash between commits); replaying it with its recorded offsets"
                );
                (epoch, offsets, Some(CommittedEpoch { epoch: epoch + 1, offsets: ends }), rebuilt)
            }
        };
        let mut cp = match found {
            Some(cp) if !rebuilt && cp.epoch == epoch => cp,
            _ => Checkpoint::new(&id, epoch, &offsets),
        };
        if rebuilt {
            tracing::warn!(epoch, checkpoint = %dir, "checkpoint rebuilt from the tables");
            self.store.store(&cp)?;
        }
        // Partitions with no position yet (first start, or partitions added to a topic) start
        // where `starting_offsets` says, and that position is pinned in the checkpoint at once.
        let mut offsets = cp.offsets();
        let missing: Vec<TopicPartition> = self.partitions.iter().filter(|tp| !offsets.contains_key(*tp)).cloned().collect();
        if !missing.is_empty() {
            let src = &self.args.plan.config.source;
            let mode = if cp.epoch == 0 && cp.offsets.is_empty() {
                src.starting_offsets
            } else {
                crate::config::StartingOffsets::Earliest
            };
            let resolved = source::resolve_starting_offsets(
                &self.args.connection,
                &missing,
                mode,
                Duration::from_millis(src.connect_timeout_ms),
            )
            .await?;
            offsets.extend(resolved);
            cp = Checkpoint::new(&id, cp.epoch, &offsets);
            self.store.store(&cp)?;
        }
        Ok((cp, replay))
    }

    /// Refuses to resume when a topic was deleted and created again since the checkpoint's
    /// positions were taken (a new topic id); records the ids of topics seen the first time.
    async fn check_topic_ids(&mut self, client: &Arc<PipelineConsumer>) -> Result<(), Error> {
        let src = &self.args.plan.config.source;
        let (client, topics, timeout) = (client.clone(), src.topics.clone(), Duration::from_millis(src.connect_timeout_ms));
        let current = tokio::task::spawn_blocking(move || source::topic_ids(client.client(), &topics, timeout))
            .await
            .map_err(|e| Error::Actor(format!("topic id lookup task failed: {e}")))??;
        let mut recorded = self.store.topic_ids()?;
        if let Some(e) = source::recreated_topic(&recorded, &current, "the checkpoint") {
            return Err(e);
        }
        if self.group.is_some() {
            // A member's checkpoint lives in memory: the table keeps the group's record.
            self.args.sink.check_topic_ids(&current).await?;
        }
        let before = recorded.len();
        for (topic, id) in &current {
            recorded.entry(topic.clone()).or_insert_with(|| id.clone());
        }
        if recorded.len() != before {
            self.store.set_topic_ids(&recorded)?;
        }
        self.topic_ids = recorded;
        Ok(())
    }

    /// Group mode: where the assigned partitions start, claimed for this member (`None`: the
    /// group assigned nothing here yet). Partitions read by an earlier generation are sought
    /// back to the table's offsets: that generation's open epoch was aborted.
    async fn group_positions(&mut self) -> Result<Option<(Offsets, Arc<PipelineConsumer>)>, Error> {
        let Some(group) = self.group.as_mut() else { return Ok(None) };
        let active = group.active();
        if active.is_empty() {
            return Ok(None);
        }
        let fresh = std::mem::take(&mut group.fresh);
        let client = group.member.client().clone();
        let others: Vec<TopicPartition> = active.iter().filter(|tp| !fresh.contains_key(*tp)).cloned().collect();
        let mut offsets: Offsets = fresh.into_iter().filter(|(tp, _)| active.contains(tp)).collect();
        if !others.is_empty() {
            // Partitions kept from the last generation resume where the table says, under the
            // claim this member already holds (taken away meanwhile, they are fenced at the
            // next commit, never taken back); those whose suspension ended are claimed again.
            let reclaim = std::mem::take(&mut group.reclaim);
            let (again, kept): (Vec<TopicPartition>, Vec<TopicPartition>) =
                others.into_iter().partition(|tp| reclaim.contains(tp));
            let mut found = if again.is_empty() { Offsets::new() } else { self.claim(&again).await? };
            if !kept.is_empty() {
                found.extend(self.args.sink.group_reposition(&kept).await?);
            }
            let (seeker, seeks) = (client.clone(), found.clone());
            tokio::task::spawn_blocking(move || -> Result<(), Error> {
                for (tp, o) in seeks {
                    seeker.seek(&tp.topic, tp.partition, Offset::Offset(o), Duration::from_secs(10))?;
                }
                Ok(())
            })
            .await
            .map_err(|e| Error::Actor(format!("seek task failed: {e}")))??;
            offsets.extend(found);
        }
        Ok(Some((offsets, client)))
    }

    /// Group mode: claims `partitions` in the table for this member; where each starts.
    async fn claim(&self, partitions: &[TopicPartition]) -> Result<Offsets, Error> {
        let src = &self.args.plan.config.source;
        let timeout = Duration::from_millis(src.connect_timeout_ms);
        let resolve = |mode| source::resolve_starting_offsets(&self.args.connection, partitions, mode, timeout);
        let earliest = resolve(crate::config::StartingOffsets::Earliest).await?;
        let unrecorded = match src.starting_offsets {
            crate::config::StartingOffsets::Earliest => crate::sink::Unrecorded::same(earliest),
            mode => crate::sink::Unrecorded { starting: resolve(mode).await?, earliest },
        };
        self.args.sink.group_claim(partitions, &unrecorded).await
    }

    async fn start_generation(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), Error> {
        let config = self.args.plan.config.clone();
        let (cp, offsets, replay, client) = if self.group.is_some() {
            let Some((offsets, client)) = self.group_positions().await? else {
                return Ok(()); // nothing assigned here: idle until the group assigns partitions
            };
            // Epochs are numbered per member; the in-memory checkpoint holds the last one this
            // member committed (a commit that finished while its generation was torn down too).
            let epoch = self.store.load()?.map_or(0, |c| c.epoch);
            (Checkpoint::new(&config.id, epoch, &offsets), offsets, None, client)
        } else {
            let (cp, replay) = self.recover().await?;
            let offsets: Offsets = cp.offsets().into_iter().filter(|(tp, _)| self.partitions.contains(tp)).collect();
            // A replayed epoch is cut by its recorded offsets, under a barrier of its own: the
            // epoch the sink holds beyond the checkpoint, or, retrying a stop, the epoch the stop
            // had cut (so the retry commits no less than what the stop had read).
            let retried = self.uncommitted_cut.take().filter(|_| self.shutting_down()).and_then(|ends| {
                let ahead = offsets.iter().all(|(tp, from)| ends.get(tp).is_none_or(|end| end >= from));
                let moved = offsets.iter().any(|(tp, from)| ends.get(tp).is_some_and(|end| end > from));
                (ahead && moved).then(|| CommittedEpoch { epoch: cp.epoch + 1, offsets: ends })
            });
            let replay = match replay.or(retried) {
                None => None,
                Some(v) => {
                    let plan = Replay::plan(&v, &offsets, self.next_barrier)?;
                    self.next_barrier += 1;
                    Some(plan)
                }
            };
            let client: PipelineConsumer = source::consumer_config(&self.args.connection, &config.id)
                .create_with_context(StatsContext::new(self.stats.clone(), self.committed_offsets.clone()))?;
            let client = Arc::new(client);
            let mut tpl = TopicPartitionList::new();
            for (tp, off) in &offsets {
                tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*off))?;
            }
            client.assign(&tpl)?;
            (cp, offsets, replay, client)
        };
        let mut queues = Vec::new();
        for tp in offsets.keys() {
            let q = PartitionFetch::split(&client, tp).ok_or_else(|| Error::Actor(format!("cannot split the queue of {tp}")))?;
            queues.push((tp.clone(), q));
        }
        // Before anything is read: the topics must still be the ones the checkpoint's positions
        // belong to (asked on this generation's client; a second client would cost its buffers).
        if let Err(e) = self.check_topic_ids(&client).await {
            drop(queues);
            // Closing a Kafka client blocks briefly: never on the executor.
            let _ = tokio::task::spawn_blocking(move || drop(client)).await;
            return Err(e);
        }
        // The main queue carries errors and statistics only; it must be served (a group
        // member's is served by its `GroupMember`).
        let poll_client = client.clone();
        let poller = self.group.is_none().then(|| {
            tokio::spawn(async move {
                loop {
                    match poll_client.recv().await {
                        Ok(m) => {
                            tracing::error!(topic = rdkafka::Message::topic(&m), "record on the main queue (partition not split)")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "kafka client error");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        });
        let discovery = self.group.is_none().then(|| self.spawn_discovery(myself, &client));
        let cell = myself.get_cell();
        let backpressure = BackPressure::new(config.source.max_buffered_records);
        let spawn_err = |e: ractor::SpawnErr| Error::Actor(e.to_string());
        let (committer, _) = Actor::spawn_linked(
            None,
            CommitterActor,
            CommitterArgs {
                pipeline_id: config.id.clone(),
                sink: self.args.sink.clone(),
                store: self.store.clone(),
                committed_epoch: cp.epoch,
                supervisor: myself.clone(),
                failpoints: self.args.failpoints.clone(),
                backpressure: backpressure.clone(),
            },
            cell.clone(),
        )
        .await
        .map_err(spawn_err)?;
        let (aggregator, _) = Actor::spawn_linked(
            None,
            AggregatorActor,
            AggregatorArgs {
                start: offsets.clone(),
                committed_epoch: cp.epoch,
                committer: committer.clone(),
                supervisor: myself.clone(),
                max_records: config.epoch.max_records,
                replay_barrier: replay.as_ref().map(|r| r.barrier),
                processor: self.processor.clone(),
            },
            cell.clone(),
        )
        .await
        .map_err(spawn_err)?;
        let mut ids: HashSet<ActorId> = [committer.get_id(), aggregator.get_id()].into_iter().collect();
        let decoder = self.args.plan.decoder.clone();
        let mut consumers = Vec::new();
        for (tp, queue) in queues {
            let start = offsets[&tp];
            let (c, _) = Actor::spawn_linked(
                None,
                ConsumerActor,
                ConsumerArgs {
                    decoder: decoder.clone(),
                    replay: replay.as_ref().map(|r| r.cut(&tp, start)),
                    tp: tp.clone(),
                    start,
                    queue,
                    aggregator: aggregator.clone(),
                    max_batch: config.source.max_batch_records,
                    backpressure: backpressure.clone(),
                },
                cell.clone(),
            )
            .await
            .map_err(spawn_err)?;
            ids.insert(c.get_id());
            consumers.push((tp, c));
        }
        tracing::info!(pipeline = %config.id, generation = self.generation, epoch = cp.epoch, partitions = consumers.len(), "actor tree started from the last committed epoch");
        if let Some(group) = self.group.as_mut() {
            if let Some(t) = group.paused_since.take() {
                metrics::histogram!(m::REBALANCE_PAUSE_SECONDS).record(t.elapsed().as_secs_f64());
            }
        }
        metrics::gauge!(m::ASSIGNED_PARTITIONS).set(consumers.len() as f64);
        metrics::gauge!(m::GENERATION).set(self.generation as f64);
        metrics::gauge!(m::EPOCH_COMMITTED).set(cp.epoch as f64);
        *self.committed_offsets.lock().expect("offsets lock") = offsets.clone();
        self.committed = cp;
        self.in_flight = replay.as_ref().map(|r| InFlight { barrier: r.barrier, cut_next: false });
        self.current = Some(Generation { client, poller, discovery, consumers, aggregator, committer, ids });
        if !self.shutting_down() {
            self.ticker = Some(myself.send_interval(config.epoch.interval(), || SupervisorMsg::Tick));
        }
        Ok(())
    }

    /// Group mode: a rebalance callback, or the assignment it made. See `group.rs`.
    async fn on_group(&mut self, myself: &ActorRef<SupervisorMsg>, request: GroupRequest) -> Result<(), ActorProcessingErr> {
        if self.group.is_none() {
            return Ok(());
        }
        match request {
            GroupRequest::Assigning(partitions, reply) if partitions.is_empty() => {
                let _ = reply.send(Ok(Offsets::new())); // a rebalance that gives this member nothing new
            }
            GroupRequest::Revoking(partitions, _, reply) if partitions.is_empty() => {
                let _ = reply.send(());
            }
            GroupRequest::Assigning(partitions, reply) => {
                // The open epoch is aborted (a commit in progress completes first); the new
                // partitions are claimed in the table and start where it says.
                self.group.as_mut().expect("group").pause();
                self.teardown(true).await;
                match self.claim(&partitions).await {
                    Ok(offsets) => {
                        let group = self.group.as_mut().expect("group");
                        group.fresh.extend(offsets.clone());
                        group.suspended.retain(|tp| !partitions.contains(tp));
                        let _ = reply.send(Ok(offsets));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::Actor(e.to_string())));
                        self.fatal(myself, e);
                    }
                }
            }
            GroupRequest::Revoking(partitions, lost, reply) => {
                self.group.as_mut().expect("group").pause();
                self.teardown(true).await;
                self.group.as_mut().expect("group").forget(&partitions);
                let names: Vec<String> = partitions.iter().map(ToString::to_string).collect();
                tracing::info!(partitions = %names.join(","), lost, "partitions revoked; their open epoch is aborted");
                let _ = reply.send(());
            }
            GroupRequest::Changed { added, removed } => {
                let group = self.group.as_mut().expect("group");
                group.assigned.retain(|tp| !removed.contains(tp));
                for tp in added {
                    if !group.assigned.contains(&tp) {
                        group.assigned.push(tp);
                    }
                }
                group.assigned.sort();
                let names: Vec<String> = group.assigned.iter().map(ToString::to_string).collect();
                tracing::info!(partitions = %names.join(","), "this member's partitions");
                metrics::gauge!(m::ASSIGNED_PARTITIONS).set(group.assigned.len() as f64);
                if self.current.is_none() {
                    myself.cast(SupervisorMsg::StartGeneration)?;
                }
            }
        }
        Ok(())
    }

    /// Group mode: another member claimed some of this generation's partitions. The epoch is
    /// dropped (nothing of it was written), the claimed partitions are left alone until the group
    /// revokes them or a session timeout passes, and the others go on at once.
    async fn on_fenced(&mut self, myself: &ActorRef<SupervisorMsg>, partitions: Vec<TopicPartition>, detail: String) {
        tracing::warn!(%detail, "fenced: another member owns these partitions now");
        self.teardown(true).await;
        if self.shutting_down() {
            myself.stop(None);
            return;
        }
        self.suspend(myself, partitions);
        let _ = myself.cast(SupervisorMsg::StartGeneration);
    }

    /// Leaves `partitions` out of the generations until the group revokes them or a session
    /// timeout (and [`crate::source::group::FENCE_WAIT`]) has passed.
    fn suspend(&mut self, myself: &ActorRef<SupervisorMsg>, partitions: Vec<TopicPartition>) {
        metrics::counter!(m::FENCED).increment(1);
        let Some(group) = self.group.as_mut() else { return };
        group.paused_since.get_or_insert_with(Instant::now);
        for tp in partitions {
            if !group.suspended.contains(&tp) {
                group.suspended.push(tp);
            }
        }
        myself.send_after(group.member.session_timeout + crate::source::group::FENCE_WAIT, || SupervisorMsg::Unsuspend);
    }

    fn cut(&mut self) -> Result<(), ActorProcessingErr> {
        let Some(gen) = &self.current else {
            return Ok(());
        };
        let b = self.next_barrier;
        self.next_barrier += 1;
        self.in_flight = Some(InFlight { barrier: b, cut_next: false });
        for (_, c) in &gen.consumers {
            c.cast(ConsumerMsg::Barrier(b))?;
        }
        self.phase.set_last(Some(b));
        Ok(())
    }

    /// Looks up the topics' partitions and ids every `source.partition_discovery_ms` on the
    /// generation's own client (no extra connection) and reports them; the supervisor decides
    /// what is new, and stops when a topic was recreated.
    fn spawn_discovery(&self, myself: &ActorRef<SupervisorMsg>, client: &Arc<PipelineConsumer>) -> JoinHandle<()> {
        let src = &self.args.plan.config.source;
        let every = Duration::from_millis(src.partition_discovery_ms);
        let timeout = Duration::from_millis(src.connect_timeout_ms);
        let (brokers, topics) = (src.brokers.clone(), src.topics.clone());
        let (client, me) = (client.clone(), myself.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (client, brokers, topics) = (client.clone(), brokers.clone(), topics.clone());
                let found = tokio::task::spawn_blocking(move || -> crate::Result<_> {
                    let partitions = source::partitions_of(client.as_ref(), &brokers, &topics, timeout)?;
                    let topic_ids = source::topic_ids(client.client(), &topics, timeout)?;
                    Ok((partitions, topic_ids))
                })
                .await;
                match found {
                    Ok(Ok((partitions, topic_ids))) => {
                        if me.cast(SupervisorMsg::TopicsDescribed { partitions, topic_ids }).is_err() {
                            return;
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "partition discovery failed; trying again"),
                    Err(_) => return,
                }
            }
        })
    }

    /// Partition discovery reported the topics. A topic whose id changed stops the pipeline.
    /// Partitions this pipeline does not read yet wind the generation down (its open epoch
    /// commits first) and start one that reads them too, from their earliest offset. Partitions
    /// never disappear from a Kafka topic; a deleted topic is left to the consumers' errors and
    /// to recovery.
    fn on_topics_described(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        found: Vec<TopicPartition>,
        topic_ids: BTreeMap<String, String>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(e) = source::recreated_topic(&self.topic_ids, &topic_ids, "the checkpoint") {
            // The consumers would go on reading the new topic at the old positions: stop now.
            self.fatal(myself, e);
            return Ok(());
        }
        let added: Vec<TopicPartition> = found.into_iter().filter(|tp| !self.partitions.contains(tp)).collect();
        if added.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = added.iter().map(ToString::to_string).collect();
        tracing::info!(partitions = %names.join(","), "partitions added to the topics; committing the open epoch, then restarting the actor tree to read them");
        self.partitions.extend(added);
        self.partitions.sort();
        if self.phase == Phase::Running && self.current.is_some() {
            self.phase = Phase::Regenerating { last: None };
            if self.in_flight.is_none() {
                self.cut()?;
            }
        }
        Ok(())
    }

    /// Ends the current generation. Consumers and the aggregator hold nothing durable and are
    /// killed; the committer is stopped gracefully so a commit in progress completes (or fails)
    /// before anything restarts.
    ///
    /// `graceful = false` (the shutdown deadline passed) kills the committer too: a sink commit is
    /// atomic and a checkpoint write already started runs to completion in its blocking task, so
    /// nothing is left half-done.
    async fn teardown(&mut self, graceful: bool) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        self.orphaned = self.in_flight.take().map(|f| f.barrier).or(self.orphaned);
        self.phase.set_last(None);
        if let Some(gen) = self.current.take() {
            if let Some(d) = &gen.discovery {
                d.abort();
            }
            for (_, c) in &gen.consumers {
                let _ = c.kill_and_wait(Some(STOP_TIMEOUT)).await;
            }
            let _ = gen.aggregator.kill_and_wait(Some(STOP_TIMEOUT)).await;
            if !graceful || gen.committer.stop_and_wait(None, Some(STOP_TIMEOUT)).await.is_err() {
                let _ = gen.committer.kill_and_wait(Some(STOP_TIMEOUT)).await;
            }
            if let Some(p) = &gen.poller {
                p.abort();
            }
            // Dropping the last handle closes the Kafka client; that blocks briefly.
            let client = gen.client;
            let _ = tokio::task::spawn_blocking(move || drop(client)).await;
        }
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
        let cfg = &self.args.plan.config.supervisor;
        let now = Instant::now();
        let window = Duration::from_secs(cfg.window_secs);
        while self.restarts.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= cfg.max_restarts {
            let (restarts, window_secs) = (self.restarts.len(), cfg.window_secs);
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
        let backoff = Duration::from_millis(cfg.backoff_ms.saturating_mul(1 << self.restarts.len().min(10))).min(MAX_BACKOFF);
        self.restarts.push_back(now);
        self.restarts_total += 1;
        metrics::gauge!(m::RESTART_BUDGET_REMAINING).set(cfg.max_restarts.saturating_sub(self.restarts.len()) as f64);
        self.generation += 1;
        myself.send_after(backoff, || SupervisorMsg::StartGeneration);
    }

    fn on_commit(&mut self, report: CommitReport) {
        self.uncommitted_cut = None;
        let now = Instant::now();
        let secs = now.duration_since(self.last_commit_at).as_secs_f64().max(1e-6);
        self.last_commit_at = now;
        let mut offsets = self.committed.offsets();
        let mut partitions = Vec::with_capacity(report.ranges.len());
        let mut total_lag = Some(0i64);
        for r in &report.ranges {
            offsets.insert(r.tp.clone(), r.end);
            let lag = self.stats.get(&r.tp).map(|w| (w.last_stable - r.end).max(0));
            total_lag = total_lag.zip(lag).map(|(a, b)| a + b);
            if let Some(l) = lag {
                metrics::gauge!(m::CONSUMER_LAG, "topic" => r.tp.topic.to_string(), "partition" => r.tp.partition.to_string())
                    .set(l as f64);
            }
            partitions.push(PartitionProgress {
                topic: r.tp.topic.to_string(),
                partition: r.tp.partition,
                start_offset: r.start,
                end_offset: r.end,
                records: r.records,
                lag,
            });
        }
        self.committed = Checkpoint::new(&self.args.plan.config.id, report.epoch, &offsets);
        metrics::counter!(m::RECORDS_COMMITTED).increment(report.records);
        metrics::counter!(m::DUPLICATES_DROPPED).increment(report.duplicates);
        metrics::counter!(m::RECORDS_FILTERED).increment(report.filtered);
        for (reason, n) in &report.dead_letter_categories {
            metrics::counter!(m::DEAD_LETTERS, "reason" => *reason).increment(*n);
        }
        metrics::gauge!(m::LAST_COMMIT).set(m::unix_now());
        *self.committed_offsets.lock().expect("offsets lock") = offsets.clone();
        metrics::gauge!(m::STATE_KEYS, "kind" => "dedup").set(report.state_size.dedup_keys as f64);
        metrics::gauge!(m::STATE_KEYS, "kind" => "aggregate").set(report.state_size.agg_keys as f64);
        metrics::gauge!(m::STATE_BYTES).set(report.state_size.bytes as f64);
        let mem = report.state_size.memory;
        for (kind, v) in [
            ("memtables", mem.memtables),
            ("table_readers", mem.table_readers),
            ("block_cache", mem.block_cache),
            ("block_cache_pinned", mem.block_cache_pinned),
        ] {
            metrics::gauge!(m::STATE_MEMORY, "kind" => kind).set(v as f64);
        }
        metrics::gauge!(m::EPOCH_COMMITTED).set(report.epoch as f64);
        if report.state_time > std::time::Duration::ZERO {
            metrics::histogram!(m::COMMIT_SECONDS, "phase" => "state").record(report.state_time.as_secs_f64());
        }
        metrics::histogram!(m::COMMIT_SECONDS, "phase" => "sink").record(report.sink_time.as_secs_f64());
        metrics::histogram!(m::COMMIT_SECONDS, "phase" => "checkpoint").record(report.checkpoint_time.as_secs_f64());
        if let Some(ts) = report.min_timestamp_ms {
            let now_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(ts);
            metrics::histogram!(m::END_TO_END_SECONDS).record(((now_ms - ts).max(0) as f64) / 1000.0);
        }
        let table = self.args.sink.table_stats();
        let progress = Progress {
            pipeline: self.args.plan.config.id.clone(),
            epoch: report.epoch,
            generation: self.generation,
            input_rows: report.records,
            output_rows: report.rows,
            dead_letters: report.dead_letters,
            filtered: report.filtered,
            rows_per_second: report.records as f64 / secs,
            state_ms: Progress::millis(report.state_time),
            sink_ms: Progress::millis(report.sink_time),
            checkpoint_ms: Progress::millis(report.checkpoint_time),
            lag: total_lag,
            restarts: self.restarts_total,
            table_files: table.map(|t| t.live_files),
            files_compacted: table.map(|t| t.files_compacted),
            partitions,
            member: self.group.as_ref().map(|_| crate::source::group::member_name()),
        };
        tracing::debug!(
            pipeline = %progress.pipeline,
            epoch = progress.epoch,
            rows = progress.input_rows,
            rows_per_second = progress.rows_per_second as u64,
            lag = ?progress.lag,
            state_ms = progress.state_ms,
            sink_ms = progress.sink_ms,
            checkpoint_ms = progress.checkpoint_ms,
            "epoch committed"
        );
        let _ = self.args.progress.send(progress);
    }

    fn status(&self) -> PipelineStatus {
        PipelineStatus {
            generation: self.generation,
            restarts: self.restarts_total,
            committed_epoch: self.committed.epoch,
            committed_offsets: self.committed.offsets(),
            consumers: self.current.as_ref().map(|g| g.consumers.clone()).unwrap_or_default(),
            aggregator: self.current.as_ref().map(|g| g.aggregator.clone()),
            committer: self.current.as_ref().map(|g| g.committer.clone()),
        }
    }
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: SupervisorArgs) -> Result<SupervisorState, ActorProcessingErr> {
        // A group member keeps no checkpoint on disk: the table records every partition's
        // position, and group mode runs stateless pipelines only.
        let store = match &args.plan.config.source.group_id {
            Some(_) => CheckpointStore::in_memory(&args.plan.config.state)?,
            None => CheckpointStore::open_with(args.plan.config.checkpoint_dir(), &args.plan.config.state)?,
        }
        .with_failpoints(args.failpoints.clone());
        let decoded = args.plan.decoder.schema();
        let processor =
            Processor::new(&decoded, args.plan.config.dedup.as_ref(), args.plan.config.aggregate.as_ref(), store.clone())?
                .map(Arc::new);
        let reset_from_sink = args.reset_checkpoint_from_table;
        let partitions = args.partitions.clone();
        m::register_zeros();
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
                    &src.topics,
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
            restarts: VecDeque::new(),
            restarts_total: 0,
            partitions,
            topic_ids: BTreeMap::new(),
            phase: Phase::Running,
            uncommitted_cut: None,
            last_commit_at: Instant::now(),
            reset_from_sink,
            processor,
            committed_offsets,
            group,
        })
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut SupervisorState) -> Result<(), ActorProcessingErr> {
        state.args.stopped_cleanly.store(true, std::sync::atomic::Ordering::SeqCst);
        state.teardown(true).await;
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
            SupervisorMsg::StartGeneration => {
                if state.current.is_some() {
                    return Ok(());
                }
                if matches!(state.phase, Phase::Stopping { failure: None, .. }) {
                    myself.stop(None);
                    return Ok(());
                }
                match state.start_generation(&myself).await {
                    Err(e) => {
                        state.teardown(true).await;
                        match e {
                            Error::Recovery(_) | Error::Checkpoint { .. } => state.fatal(&myself, e),
                            other => {
                                tracing::warn!(error = %other, "could not start the actor tree");
                                state.schedule_restart(&myself, format!("start-up: {other}"));
                            }
                        }
                    }
                    // Retrying the stop's last epoch: this tree commits the epoch it replays (the
                    // stop's cut, or the epoch the sink holds beyond the checkpoint) — or, with
                    // no such cut (the failure came before it), what it reads until a cut now —
                    // and stops.
                    Ok(()) if state.shutting_down() => {
                        if state.current.is_none() {
                            myself.stop(None);
                        } else if let Some(f) = state.in_flight {
                            state.phase.set_last(Some(f.barrier));
                        } else {
                            state.cut()?;
                        }
                    }
                    Ok(()) => {}
                }
            }
            SupervisorMsg::Tick => {
                if state.in_flight.is_none() && state.phase == Phase::Running {
                    state.cut()?;
                }
            }
            SupervisorMsg::EpochFull => match &mut state.in_flight {
                None => state.cut()?,
                Some(f) => f.cut_next = true,
            },
            SupervisorMsg::BarrierResolved { barrier, report } => {
                let Some(resolved) = state.in_flight.filter(|f| f.barrier == barrier) else {
                    // From a generation that was torn down: a commit that completed still counts
                    // (progress, metrics), but cuts nothing.
                    if state.orphaned == Some(barrier) {
                        state.orphaned = None;
                        if let Some(report) = report {
                            state.on_commit(report);
                        }
                    }
                    return Ok(());
                };
                state.in_flight = None;
                if let Some(report) = report {
                    state.on_commit(report);
                }
                match &state.phase {
                    Phase::Stopping { last: Some(last), .. } if *last == barrier => {
                        state.teardown(true).await;
                        tracing::info!(epoch = state.committed.epoch, "open epoch committed; stopping");
                        myself.stop(None);
                    }
                    Phase::Regenerating { last: Some(last) } if *last == barrier => {
                        state.teardown(true).await;
                        state.phase = Phase::Running;
                        state.generation += 1;
                        myself.cast(SupervisorMsg::StartGeneration)?;
                    }
                    // The barrier in flight when the wind-down began was not the last: cut it now.
                    Phase::Stopping { .. } | Phase::Regenerating { .. } => state.cut()?,
                    Phase::Running if resolved.cut_next => state.cut()?,
                    Phase::Running => {}
                }
            }
            SupervisorMsg::EpochCut(ends) => state.uncommitted_cut = Some(ends),
            SupervisorMsg::Shutdown => {
                if state.shutting_down() {
                    return Ok(());
                }
                // A wind-down for new partitions already cut its last barrier: that one stops now.
                state.phase = Phase::Stopping { last: state.phase.last(), failure: None };
                if let Some(t) = state.ticker.take() {
                    t.abort();
                }
                let deadline = Duration::from_millis(state.args.plan.config.supervisor.shutdown_timeout_ms);
                myself.send_after(deadline, || SupervisorMsg::ShutdownDeadline);
                if state.current.is_none() {
                    myself.stop(None);
                } else if state.in_flight.is_none() {
                    state.cut()?;
                }
            }
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
