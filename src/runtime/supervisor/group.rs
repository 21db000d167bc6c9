//! Group mode: this member's partitions, positioned from the table's record as the group
//! assigns them, suspended when another member fenced them.

use super::*;

/// A group member's side of the assignment (see `source::group`).
pub(super) struct GroupState {
    pub(super) member: GroupMember,
    /// The partitions the group assigned to this member.
    pub(super) assigned: Vec<TopicPartition>,
    /// Partitions assigned at these offsets by the last rebalance and not read since (the next
    /// generation need not seek them).
    pub(super) fresh: Offsets,
    /// Partitions another member claimed (this member was fenced on them): left out of the
    /// generations until the group revokes them, or until a session timeout has passed.
    pub(super) suspended: Vec<TopicPartition>,
    /// Partitions whose suspension ended while the group still assigns them here: the next
    /// generation claims them again (a newer token).
    pub(super) reclaim: Vec<TopicPartition>,
    /// When this member stopped committing for a rebalance (for the pause metric).
    pub(super) paused_since: Option<Instant>,
}

impl GroupState {
    /// The partitions the next generation reads.
    pub(super) fn active(&self) -> Vec<TopicPartition> {
        let mut v: Vec<TopicPartition> = self.assigned.iter().filter(|tp| !self.suspended.contains(tp)).cloned().collect();
        v.sort();
        v
    }

    /// Forgets `partitions` (revoked): no longer assigned, suspended, to claim or fresh.
    pub(super) fn forget(&mut self, partitions: &[TopicPartition]) {
        self.assigned.retain(|tp| !partitions.contains(tp));
        self.suspended.retain(|tp| !partitions.contains(tp));
        self.reclaim.retain(|tp| !partitions.contains(tp));
        self.fresh.retain(|tp, _| !partitions.contains(tp));
    }

    pub(super) fn pause(&mut self) {
        metrics::counter!(m::REBALANCES).increment(1);
        self.paused_since.get_or_insert_with(Instant::now);
    }
}

/// How the next generation positions each partition it reads.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Positioning {
    /// Assigned at these offsets by the last rebalance and not read since: read from there.
    pub(super) fresh: Offsets,
    /// Suspended until now and still assigned here: claimed again (a newer token).
    pub(super) claim: Vec<TopicPartition>,
    /// Kept from the last generation, whose open epoch was aborted: back to the table's offsets,
    /// under the claim this member already holds (taken away meanwhile, they are fenced at the
    /// next commit, never taken back).
    pub(super) reposition: Vec<TopicPartition>,
}

/// The positioning of `active` partitions, given those a rebalance just assigned (`fresh`) and
/// those whose suspension ended (`reclaim`).
pub(super) fn positioning(active: &[TopicPartition], fresh: Offsets, reclaim: &[TopicPartition]) -> Positioning {
    let fresh: Offsets = fresh.into_iter().filter(|(tp, _)| active.contains(tp)).collect();
    let others = active.iter().filter(|tp| !fresh.contains_key(*tp)).cloned();
    let (claim, reposition) = others.partition(|tp| reclaim.contains(tp));
    Positioning { fresh, claim, reposition }
}

impl SupervisorState {
    /// Group mode: where the assigned partitions start, claimed for this member (`None`: the
    /// group assigned nothing here yet). Partitions read by an earlier generation are sought
    /// back to the table's offsets: that generation's open epoch was aborted.
    pub(super) async fn group_positions(&mut self) -> Result<Option<(Offsets, Arc<PipelineConsumer>)>, Error> {
        let Some(group) = self.group.as_mut() else { return Ok(None) };
        let active = group.active();
        if active.is_empty() {
            return Ok(None);
        }
        let client = group.member.client().clone();
        let Positioning { fresh, claim, reposition } = positioning(&active, std::mem::take(&mut group.fresh), &group.reclaim);
        let mut offsets = fresh;
        if !claim.is_empty() || !reposition.is_empty() {
            group.reclaim.clear();
            let mut found = if claim.is_empty() { Offsets::new() } else { self.claim(&claim).await? };
            if !reposition.is_empty() {
                found.extend(self.args.sink.group_reposition(&reposition).await?);
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

    /// `state.scope = "partition"`: brings the state of each partition read from `offsets` to
    /// the offset [`PartitionStates::state_at`] names — kept when this member holds it there,
    /// rebuilt from the data table otherwise (`PartitionStates::rebuild`). `Some`: the ends of
    /// a range to read again first, cut at the data table's record (a table written after it
    /// lacks that range: a crash between the two commits).
    pub(super) async fn partition_states(&mut self, offsets: &Offsets) -> Result<Option<Offsets>, Error> {
        let Some(Keyed::Partition(states)) = self.processor.clone() else { return Ok(None) };
        let partitions: Vec<TopicPartition> = offsets.keys().cloned().collect();
        states.keep_only(&partitions);
        let recorded = self.args.sink.group_state(&partitions, None).await?;
        let blocking = |e: tokio::task::JoinError| Error::Actor(format!("state task failed: {e}"));
        let (mut ends, mut wanted) = (Offsets::new(), Vec::new());
        for (tp, from) in offsets {
            let table = recorded.get(tp).copied().unwrap_or(*from).max(*from);
            ends.insert(tp.clone(), table);
            wanted.push((tp.clone(), states.state_at(*from, table)));
        }
        let s = states.clone();
        let targets = tokio::task::spawn_blocking(move || s.lacking(&wanted)).await.map_err(blocking)??;
        if !targets.is_empty() {
            // One read of the table for every partition whose state this member lacks.
            let t0 = Instant::now();
            let tps: Vec<TopicPartition> = targets.iter().map(|(tp, _)| tp.clone()).collect();
            let read = states.restore_read(&tps)?;
            let mut rebuild = states.rebuild(&targets)?;
            self.args.sink.group_state(&tps, Some((&read, &mut |b| rebuild.add(&b)))).await?;
            let keys = tokio::task::spawn_blocking(move || rebuild.finish()).await.map_err(blocking)??;
            metrics::histogram!(m::PARTITION_STATE_RESTORE_SECONDS).record(t0.elapsed().as_secs_f64());
            let names: Vec<String> = tps.iter().map(ToString::to_string).collect();
            tracing::info!(partitions = %names.join(","), keys, ms = t0.elapsed().as_millis() as u64, "rebuilt the partitions' state from the data table");
        }
        Ok(offsets.iter().any(|(tp, from)| ends[tp] > *from).then_some(ends))
    }

    /// Group mode: claims `partitions` in the table for this member; where each starts.
    /// `starting_offsets` is resolved for every known partition of their topics: the first
    /// claim of a topic pins them all, so a member claiming another of them later starts where
    /// it was pinned, not at the earliest offset of a "partition added since".
    pub(super) async fn claim(&self, partitions: &[TopicPartition]) -> Result<Offsets, Error> {
        let src = &self.args.plan.config.source;
        let timeout = Duration::from_millis(src.connect_timeout_ms);
        let connection = &self.args.connection;
        let earliest =
            source::resolve_starting_offsets(connection, partitions, crate::config::StartingOffsets::Earliest, timeout).await?;
        let mut topics: Vec<TopicPartition> =
            self.partitions.iter().filter(|tp| partitions.iter().any(|p| p.topic == tp.topic)).cloned().collect();
        topics.extend(partitions.iter().filter(|tp| !topics.contains(tp)).cloned().collect::<Vec<_>>());
        let unrecorded =
            crate::sink::Unrecorded { starting: source::resolve_first_start(connection, &topics, src, timeout).await?, earliest };
        self.args.sink.group_claim(partitions, &unrecorded).await
    }

    /// Group mode: a rebalance callback, or the assignment it made. See `source::group`.
    pub(super) async fn on_group(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        request: GroupRequest,
    ) -> Result<(), ActorProcessingErr> {
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
    pub(super) async fn on_fenced(&mut self, myself: &ActorRef<SupervisorMsg>, partitions: Vec<TopicPartition>, detail: String) {
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
    pub(super) fn suspend(&mut self, myself: &ActorRef<SupervisorMsg>, partitions: Vec<TopicPartition>) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_partitions_start_where_assigned_kept_ones_go_back_to_the_table_and_unsuspended_ones_are_claimed() {
        let tp = |p| TopicPartition::new("t", p);
        let active = [tp(0), tp(1), tp(2)];
        let fresh: Offsets = [(tp(0), 5), (tp(3), 9)].into_iter().collect();
        let p = positioning(&active, fresh, &[tp(1), tp(3)]);
        assert_eq!(p.fresh, [(tp(0), 5)].into_iter().collect(), "a partition no longer active is not read");
        assert_eq!(p.claim, [tp(1)]);
        assert_eq!(p.reposition, [tp(2)]);
    }
}
