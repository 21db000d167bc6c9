//! One incarnation of the actor tree: started from where recovery (or the group) positions it,
//! cut into epochs, torn down; partition discovery, which ends a generation when partitions are added.

use super::*;

/// One incarnation of the tree.
pub(super) struct Generation {
    pub(super) client: Arc<PipelineConsumer>,
    /// Serves the client's main queue (single-process mode; a group member's is served by its
    /// [`GroupMember`]).
    pub(super) poller: Option<JoinHandle<()>>,
    /// Partition discovery (single-process mode; the group protocol finds a group's).
    pub(super) discovery: Option<JoinHandle<()>>,
    pub(super) consumers: Vec<(TopicPartition, ActorRef<ConsumerMsg>)>,
    pub(super) aggregator: ActorRef<AggregatorMsg>,
    pub(super) committer: ActorRef<CommitterMsg>,
    pub(super) ids: HashSet<ActorId>,
}

impl Generation {
    pub(super) fn kind_of(&self, id: ActorId) -> Option<String> {
        if self.aggregator.get_id() == id {
            return Some("aggregator".into());
        }
        if self.committer.get_id() == id {
            return Some("committer".into());
        }
        self.consumers.iter().find(|(_, c)| c.get_id() == id).map(|(tp, _)| format!("consumer {tp}"))
    }
}

impl SupervisorState {
    /// Starts a generation of the tree where recovery (or, in group mode, the group) positions
    /// it. `Ok` without a tree: a group member with nothing assigned.
    pub(super) async fn start_generation(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), Error> {
        let config = self.args.plan.config.clone();
        let Some(Positioned { cp, offsets, replay, client, skipped }) = self.position().await? else {
            return Ok(()); // nothing assigned here: idle until the group assigns partitions
        };
        let mut queues = Vec::new();
        for tp in offsets.keys() {
            let q = PartitionFetch::split(&client, tp).ok_or_else(|| Error::Actor(format!("cannot split the queue of {tp}")))?;
            queues.push((tp.clone(), q));
        }
        // Before anything is read: the topics must still be the ones the checkpoint's positions
        // belong to (asked on this generation's client; a second client would cost its buffers).
        let reading: Vec<TopicPartition> = offsets.keys().cloned().collect();
        if let Err(e) = self.check_topic_ids(&client, &reading).await {
            drop(queues);
            // Closing a Kafka client blocks briefly: never on the executor.
            let _ = tokio::task::spawn_blocking(move || drop(client)).await;
            return Err(e);
        }
        // The main queue carries errors and statistics only; it must be served (a group
        // member's is served by its `GroupMember`).
        let poller = self.group.is_none().then(|| serve_main_queue(client.clone()));
        let discovery = self.group.is_none().then(|| self.spawn_discovery(myself, &client));
        let (committer, aggregator, consumers, ids) =
            self.spawn_tree(myself, &cp, &offsets, replay.as_ref(), queues, skipped).await?;
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
        if let Some(p) = &self.persister {
            p.committed(cp.epoch);
        }
        self.committed = cp;
        self.in_flight =
            replay.as_ref().map(|r| InFlight { from: *r.barriers().start(), barrier: *r.barriers().end(), cut_next: false });
        self.current = Some(Generation { client, poller, discovery, consumers, aggregator, committer, ids });
        if !self.shutting_down() {
            self.ticker = Some(myself.send_interval(config.epoch.interval(), || SupervisorMsg::Tick));
        }
        Ok(())
    }

    /// Spawns the committer, the aggregator and a consumer per partition queue, linked to the
    /// supervisor.
    async fn spawn_tree(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        cp: &Checkpoint,
        offsets: &Offsets,
        replay: Option<&Replay>,
        queues: Vec<(TopicPartition, PartitionFetch)>,
        skipped: Vec<crate::model::Skipped>,
    ) -> Result<Tree, Error> {
        let config = &self.args.plan.config;
        let cell = myself.get_cell();
        let backpressure = BackPressure::new(config.source.max_buffered_records);
        let (checkpointed, checkpointed_rx) = tokio::sync::watch::channel(cp.epoch);
        let spawn_err = |e: ractor::SpawnErr| Error::Actor(e.to_string());
        let (committer, _) = Actor::spawn_linked(
            None,
            CommitterActor,
            CommitterArgs {
                pipeline_id: config.id.clone(),
                sink: self.args.sink.clone(),
                store: self.store.clone(),
                partitions: match &self.processor {
                    Some(Keyed::Partition(states)) => Some(states.clone()),
                    _ => None,
                },
                committed_epoch: cp.epoch,
                held_through: replay.map_or(0, Replay::held_through),
                supervisor: myself.clone(),
                failpoints: self.args.failpoints.clone(),
                backpressure: backpressure.clone(),
                checkpointed,
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
                replay_barriers: replay.map(Replay::barriers),
                processor: self.processor.clone(),
                checkpointed: checkpointed_rx,
                skipped: skipped.clone(),
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
            // Past offsets Kafka deleted before they were read, when the config skips them.
            let read_from = crate::model::Skipped::read_from(&skipped, &tp, start);
            let (c, _) = Actor::spawn_linked(
                None,
                ConsumerActor,
                ConsumerArgs {
                    decoder: decoder.clone(),
                    replay: replay.map(|r| r.cuts(&tp, start)).unwrap_or_default(),
                    tp: tp.clone(),
                    start: read_from,
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
        Ok((committer, aggregator, consumers, ids))
    }

    /// Where a one-process generation starts: the recovered checkpoint (and the epoch to replay,
    /// if a table holds one beyond it), on a new client assigned there; in group mode, the
    /// group's positions (`None`: nothing assigned).
    async fn position(&mut self) -> Result<Option<Positioned>, Error> {
        if self.group.is_some() {
            let Some((offsets, client)) = self.group_positions().await? else { return Ok(None) };
            // Epochs are numbered per member; the in-memory checkpoint holds the last one this
            // member committed (a commit that finished while its generation was torn down too).
            let epoch = self.store.load()?.map_or(0, |c| c.epoch);
            let cp = Checkpoint::new(&self.args.plan.config.id, epoch, &offsets);
            // Partition-scoped state: each partition's at its start; a range a table after the
            // data table lacks is read again cut where the data table's record is.
            let replay = match self.partition_states(&offsets).await? {
                Some(ends) => {
                    let plan = Replay::plan(&[CommittedEpoch { epoch: epoch + 1, offsets: ends }], &offsets, self.next_barrier)?;
                    self.next_barrier += 1;
                    Some(plan)
                }
                None => None,
            };
            let skipped = self.lost(&offsets).await?;
            if !skipped.is_empty() {
                let (seeker, seeks) = (client.clone(), skipped.clone());
                tokio::task::spawn_blocking(move || -> Result<(), Error> {
                    for s in seeks {
                        seeker.seek(&s.tp.topic, s.tp.partition, Offset::Offset(s.to), Duration::from_secs(10))?;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| Error::Actor(format!("seek task failed: {e}")))??;
            }
            return Ok(Some(Positioned { cp, offsets, replay, client, skipped }));
        }
        let (cp, replay) = self.recover().await?;
        // With `checkpoint.remote`, no epoch is read before the store holds a checkpoint.
        if let Some(p) = self.persister.as_mut() {
            p.ensure_persisted().await?;
        }
        let offsets: Offsets = cp.offsets().into_iter().filter(|(tp, _)| self.partitions.contains(tp)).collect();
        // A replayed epoch is cut by its recorded offsets, under a barrier of its own: the epoch
        // the sink holds beyond the checkpoint, or, retrying a stop, the epoch the stop had cut
        // (so the retry commits no less than what the stop had read).
        let retried = self.uncommitted_cut.take().filter(|_| self.shutting_down()).and_then(|ends| {
            let ahead = offsets.iter().all(|(tp, from)| ends.get(tp).is_none_or(|end| end >= from));
            let moved = offsets.iter().any(|(tp, from)| ends.get(tp).is_some_and(|end| end > from));
            (ahead && moved).then(|| CommittedEpoch { epoch: cp.epoch + 1, offsets: ends })
        });
        let replay = if replay.is_empty() { retried.into_iter().collect() } else { replay };
        let replay = match replay.len() {
            0 => None,
            n => {
                let plan = Replay::plan(&replay, &offsets, self.next_barrier)?;
                self.next_barrier += n as u64;
                Some(plan)
            }
        };
        let client: PipelineConsumer = source::consumer_config(&self.args.connection, &self.args.plan.config.id)
            .create_with_context(StatsContext::new(self.stats.clone(), self.committed_offsets.clone()))?;
        let client = Arc::new(client);
        let skipped = self.lost(&offsets).await?;
        let mut tpl = TopicPartitionList::new();
        for (tp, off) in &offsets {
            let read_from = crate::model::Skipped::read_from(&skipped, tp, *off);
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(read_from))?;
        }
        client.assign(&tpl)?;
        Ok(Some(Positioned { cp, offsets, replay, client, skipped }))
    }

    /// With `source.on_data_loss = "skip"`, the offsets of `offsets` Kafka deleted before they
    /// were read: the consumers start after them, the epochs record them. (With `fail`, none:
    /// the consumers stop at them.)
    async fn lost(&self, offsets: &Offsets) -> Result<Vec<crate::model::Skipped>, Error> {
        let src = &self.args.plan.config.source;
        if src.on_data_loss != crate::config::OnDataLoss::Skip {
            return Ok(Vec::new());
        }
        let lost = source::lost_ranges(&self.args.connection, offsets, Duration::from_millis(src.connect_timeout_ms)).await?;
        for s in &lost {
            tracing::warn!(partition = %s.tp, from = s.from, to = s.to, "Kafka deleted these records before they were read; skipping them (source.on_data_loss = \"skip\"), the epoch's commit records them");
        }
        Ok(lost)
    }

    pub(super) fn cut(&mut self) -> Result<(), ActorProcessingErr> {
        let Some(gen) = &self.current else {
            return Ok(());
        };
        let b = self.next_barrier;
        self.next_barrier += 1;
        self.in_flight = Some(InFlight { from: b, barrier: b, cut_next: false });
        if let Some(until) = self.until.as_mut() {
            let stats = &self.stats;
            until.cut(b, |tp| stats.get(tp).and_then(|w| w.read));
        }
        for (_, c) in &gen.consumers {
            c.cast(ConsumerMsg::Barrier(b))?;
        }
        self.phase.set_last(Some(b));
        Ok(())
    }

    /// Looks up the topics' partitions and ids every `source.partition_discovery_ms` on the
    /// generation's own client (no extra connection) and reports them; the supervisor decides
    /// what is new, and stops when a topic was recreated.
    pub(super) fn spawn_discovery(&self, myself: &ActorRef<SupervisorMsg>, client: &Arc<PipelineConsumer>) -> JoinHandle<()> {
        let src = &self.args.plan.config.source;
        let every = Duration::from_millis(src.partition_discovery_ms);
        let timeout = Duration::from_millis(src.connect_timeout_ms);
        let src = Arc::new(src.clone());
        let (client, me) = (client.clone(), myself.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (client, src) = (client.clone(), src.clone());
                let found = tokio::task::spawn_blocking(move || -> crate::Result<_> {
                    let partitions = source::partitions_of(client.as_ref(), &src.brokers, src.subscription(), timeout)?;
                    let topic_ids = source::topic_ids(client.client(), &source::topics_of(&partitions), timeout)?;
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
    /// commits first) and start one that reads them too, from their earliest offset; so does a
    /// topic `source.topic_pattern` matched and the brokers no longer have (deleted), with a
    /// generation that no longer reads it. Partitions never disappear from a Kafka topic; a
    /// deleted named topic is left to the consumers' errors and to recovery.
    pub(super) fn on_topics_described(
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
        let matched = matches!(self.args.plan.config.source.subscription(), crate::config::Subscription::Matching(_));
        let topics: std::collections::BTreeSet<&str> = found.iter().map(|tp| &*tp.topic).collect();
        let gone: Vec<TopicPartition> =
            self.partitions.iter().filter(|tp| matched && !topics.contains(&*tp.topic)).cloned().collect();
        let added: Vec<TopicPartition> = found.iter().filter(|tp| !self.partitions.contains(tp)).cloned().collect();
        if added.is_empty() && gone.is_empty() {
            return Ok(());
        }
        if !added.is_empty() {
            let names: Vec<String> = added.iter().map(ToString::to_string).collect();
            tracing::info!(partitions = %names.join(","), "partitions added to the topics; committing the open epoch, then restarting the actor tree to read them");
        }
        if !gone.is_empty() {
            let names: Vec<String> = source::topics_of(&gone);
            tracing::warn!(topics = %names.join(","), "topics source.topic_pattern matched are gone from the brokers (deleted); committing the open epoch, then restarting the actor tree without them");
        }
        self.partitions.retain(|tp| !gone.contains(tp));
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
    pub(super) async fn teardown(&mut self, graceful: bool) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        self.orphaned = self.in_flight.take().map(|f| f.barrier).or(self.orphaned);
        self.resolved_at = None;
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
}

/// Where a generation starts.
struct Positioned {
    cp: Checkpoint,
    offsets: Offsets,
    replay: Option<Replay>,
    client: Arc<PipelineConsumer>,
    /// Offsets Kafka deleted before they were read, skipped (`source.on_data_loss`).
    skipped: Vec<crate::model::Skipped>,
}

/// A generation's actors: committer, aggregator, consumers, and their ids.
type Tree = (ActorRef<CommitterMsg>, ActorRef<AggregatorMsg>, Vec<(TopicPartition, ActorRef<ConsumerMsg>)>, HashSet<ActorId>);

/// Serves a one-process client's main queue, which carries errors and statistics only.
fn serve_main_queue(client: Arc<PipelineConsumer>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match client.recv().await {
                Ok(m) => tracing::error!(topic = rdkafka::Message::topic(&m), "record on the main queue (partition not split)"),
                Err(e) => {
                    tracing::warn!(error = %e, "kafka client error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}
