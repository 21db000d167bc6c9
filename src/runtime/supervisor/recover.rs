//! Recovery's I/O: what the checkpoint and the tables record, read for the pure decision of
//! [`crate::runtime::recovery`], and the topic ids the positions belong to.

use super::*;

impl SupervisorState {
    /// Reconciles the checkpoint with what the sink's tables record, by
    /// [`crate::runtime::recovery::decide`]: where to resume and, when a table lacks the data table's last
    /// epoch, the epoch to replay. See ARCHITECTURE.md, "Recovery".
    pub(super) async fn recover(&mut self) -> Result<(Checkpoint, Vec<CommittedEpoch>), Error> {
        use crate::runtime::recovery::{Found, Inputs, Rebuild, Start};
        let id = self.args.plan.config.id.clone();
        let dir = self.store.dir().display().to_string();
        let found = self.store.load()?;
        if let Some(cp) = &found {
            if cp.pipeline_id != id {
                return Err(Error::OtherPipeline {
                    what: format!("the checkpoint in {dir}"),
                    owner: cp.pipeline_id.clone(),
                    pipeline: id.clone(),
                    setting: "checkpoint.dir",
                });
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
            Start::Resume { epoch, offsets, rebuilt } => (epoch, offsets, Vec::new(), rebuilt),
            Start::Replay { epoch, offsets, through, ends, rebuilt } => {
                let mut replay = self.catch_up(epoch, &offsets, through).await?;
                replay.push(CommittedEpoch { epoch: through, offsets: ends });
                tracing::warn!(
                    checkpoint = epoch,
                    replay = through,
                    "the checkpoint is behind the data table (a crash between commits, or a checkpoint restored from a persisted copy); replaying with the recorded offsets"
                );
                (epoch, offsets, replay, rebuilt)
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
            let timeout = Duration::from_millis(src.connect_timeout_ms);
            let resolved = if cp.epoch == 0 && cp.offsets.is_empty() {
                source::resolve_first_start(&self.args.connection, &missing, src, timeout).await?
            } else {
                let earliest = crate::config::StartingOffsets::Earliest;
                source::resolve_starting_offsets(&self.args.connection, &missing, earliest, timeout).await?
            };
            offsets.extend(resolved);
            cp = Checkpoint::new(&id, cp.epoch, &offsets);
            self.store.store(&cp)?;
        }
        Ok((cp, replay))
    }

    /// The epochs between checkpoint `epoch` (cut `offsets`) and the data table's `through`,
    /// as the table's commits recorded them, checked to link up (`runtime::replay::chain`).
    async fn catch_up(&self, epoch: u64, offsets: &Offsets, through: u64) -> Result<Vec<CommittedEpoch>, Error> {
        if through <= epoch + 1 {
            return Ok(Vec::new());
        }
        let recorded = self.args.sink.epochs(epoch + 1, through - 1).await?;
        crate::runtime::replay::chain(&recorded, epoch, offsets).map_err(|why| {
            Error::Recovery(format!(
                "checkpoint {} (epoch {epoch}) cannot catch up with the table (epoch {through}): {why}; restore a checkpoint that belongs to this table (`exactly checkpoint ls`), or start over by deleting both the table and the checkpoint",
                self.store.dir().display()
            ))
        })
    }

    /// Refuses to resume when a topic of `reading` was deleted and created again since the
    /// checkpoint's positions were taken (a new topic id); records the ids of topics seen the
    /// first time.
    pub(super) async fn check_topic_ids(
        &mut self,
        client: &Arc<PipelineConsumer>,
        reading: &[TopicPartition],
    ) -> Result<(), Error> {
        let src = &self.args.plan.config.source;
        let (client, topics, timeout) =
            (client.clone(), source::topics_of(reading), Duration::from_millis(src.connect_timeout_ms));
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
}
