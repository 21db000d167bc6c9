//! What a commit tells the operators: metrics and the progress report; and the tree's status.

use super::*;

impl SupervisorState {
    pub(super) fn on_commit(&mut self, report: CommitReport) {
        if let Some(p) = &self.persister {
            p.committed(report.epoch);
        }
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
        metrics::counter!(m::CHANGES_SUPERSEDED).increment(report.superseded);
        for (reason, n) in &report.dead_letter_categories {
            metrics::counter!(m::DEAD_LETTERS, "reason" => *reason).increment(*n);
        }
        metrics::gauge!(m::LAST_COMMIT).set(m::unix_now());
        *self.committed_offsets.lock().expect("offsets lock") = offsets.clone();
        metrics::gauge!(m::STATE_KEYS, "kind" => "dedup").set(report.state_size.dedup_keys as f64);
        metrics::gauge!(m::STATE_KEYS, "kind" => "aggregate").set(report.state_size.agg_keys as f64);
        metrics::gauge!(m::STATE_KEYS, "kind" => "upsert").set(report.state_size.upsert_rows as f64);
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
            timestamp: Progress::now(),
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
            restarts: self.restarts.total,
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

    pub(super) fn status(&self) -> PipelineStatus {
        PipelineStatus {
            generation: self.generation,
            restarts: self.restarts.total,
            committed_epoch: self.committed.epoch,
            committed_offsets: self.committed.offsets(),
            consumers: self.current.as_ref().map(|g| g.consumers.clone()).unwrap_or_default(),
            aggregator: self.current.as_ref().map(|g| g.aggregator.clone()),
            committer: self.current.as_ref().map(|g| g.committer.clone()),
            health: crate::telemetry::health::Health {
                running: self.current.is_some(),
                idle: self.current.is_none() && self.group.as_ref().is_some_and(|g| g.active().is_empty()),
                draining: self.shutting_down(),
                restarts_left: self.restarts.remaining(),
                since_resolved: self.resolved_at.map(|t| t.elapsed()),
                resolve_within: crate::telemetry::health::Health::resolve_within(Duration::from_millis(
                    self.args.plan.config.epoch.interval_ms,
                )),
            },
        }
    }
}
