//! Group mode's writes: a member's claim, and data and dead-letter commits that keep only the
//! rows past each table's own record, decided again on every attempt.

use super::*;

/// The rows of `rows` at or past `from`'s offset for their partition (partitions `from` does not
/// name keep every row).
pub(super) fn rows_from(rows: &[RecordBatch], from: &Offsets) -> Result<Vec<RecordBatch>> {
    use deltalake::arrow::array::{Array, BooleanArray, Int32Array, StringArray};
    let bad = |what: &str| Error::Sink(format!("rows without a {what} column"));
    let mut out = Vec::with_capacity(rows.len());
    for b in rows {
        let offsets = crate::decode::offsets(b).ok_or_else(|| bad(crate::model::OFFSET_COL))?;
        let parts = b
            .column_by_name(crate::model::PARTITION_COL)
            .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
            .ok_or_else(|| bad(crate::model::PARTITION_COL))?;
        let topics = b
            .column_by_name(crate::model::TOPIC_COL)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| bad(crate::model::TOPIC_COL))?;
        let keep: BooleanArray = (0..b.num_rows())
            .map(|i| {
                let tp = TopicPartition::new(topics.value(i), parts.value(i));
                Some(from.get(&tp).is_none_or(|f| offsets.value(i) >= *f))
            })
            .collect();
        if keep.true_count() == b.num_rows() {
            out.push(b.clone());
        } else if keep.true_count() > 0 {
            out.push(deltalake::arrow::compute::filter_record_batch(b, &keep).map_err(|e| Error::Sink(e.to_string()))?);
        }
    }
    Ok(out)
}

/// Group mode's claim of partitions, as a [`commit::Writer`]: a token above every claim the
/// table holds, and where each partition resumes by the table's record as just read (a
/// partition it never recorded is pinned at its `unrecorded` offset).
pub(super) struct Claim<'a> {
    sink: &'a DeltaSink,
    dead: Option<&'a DeltaTable>,
    outputs: Vec<&'a DeltaTable>,
    partitions: &'a [TopicPartition],
    unrecorded: &'a crate::sink::Unrecorded,
    member: &'a str,
    /// The token and starts of the last decision (those of the claim that landed).
    token: i64,
    start: Offsets,
}

impl commit::Writer for Claim<'_> {
    async fn decide(&mut self, table: &DeltaTable, _sent: bool) -> Result<commit::Decision> {
        let pipeline = &self.sink.pipeline;
        // A token above every claim committed before this snapshot; a claim committed after
        // it lands first, and this one is decided again.
        let token = table.version().unwrap_or(0) as i64 + 1;
        let mut start = Offsets::new();
        let mut txns = Vec::new();
        let mut pinned: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for tp in self.partitions {
            txns.push(Transaction::new(owner_app_id(pipeline, tp), token));
            let from = match self.sink.resume_at(table, self.dead, &self.outputs, tp).await? {
                Some(from) => from,
                None => {
                    // Never committed: pinned by this claim, at `starting_offsets` for a topic the
                    // table never recorded, at the earliest offset for a partition added to a
                    // topic it did (its lower partitions are recorded: a topic's partitions are
                    // numbered from 0, and the first claim of a topic pins all it assigns).
                    let mut known = false;
                    for q in 0..tp.partition {
                        let lower = TopicPartition::new(&tp.topic, q);
                        if txn_version(table, &self.sink.data.path, &partition_app_id(pipeline, &lower)).await?.is_some() {
                            known = true;
                            break;
                        }
                    }
                    let offsets = if known { &self.unrecorded.earliest } else { &self.unrecorded.starting };
                    let from = *offsets.get(tp).ok_or_else(|| Error::Sink(format!("no starting offset for {tp}")))?;
                    txns.push(Transaction::new(partition_app_id(pipeline, tp), from));
                    txns.push(Transaction::new(start_app_id(pipeline, tp), from));
                    if !known && pinned.insert(&tp.topic) {
                        // The topic's first claim pins its other partitions too: another member
                        // claiming one later must start at `starting_offsets` as well.
                        for (other, at) in self.unrecorded.starting.iter().filter(|(o, _)| o.topic == tp.topic) {
                            if !self.partitions.contains(other)
                                && self.sink.resume_at(table, self.dead, &self.outputs, other).await?.is_none()
                            {
                                txns.push(Transaction::new(partition_app_id(pipeline, other), *at));
                                txns.push(Transaction::new(start_app_id(pipeline, other), *at));
                            }
                        }
                    }
                    from
                }
            };
            start.insert(tp.clone(), from);
        }
        (self.token, self.start) = (token, start);
        let names: Vec<String> = self.partitions.iter().map(ToString::to_string).collect();
        Ok(commit::Decision::Write(Box::new(commit::Proposal {
            actions: Vec::new(),
            txns,
            info: json!({"pipeline": pipeline, "member": self.member, "claim": names, "token": token}),
            operation: self.sink.member_operation(self.member, 0),
        })))
    }
}

/// The files a write made for the offsets a table recorded, kept across attempts while those
/// stay the same (written again when another commit moved them).
#[derive(Default)]
pub(super) struct FilesAt(Option<(Offsets, Vec<deltalake::kernel::Add>)>);

impl FilesAt {
    /// The files for `cut`: those kept, or what `write` makes now.
    async fn for_cut(
        &mut self,
        cut: Offsets,
        write: impl AsyncFnOnce() -> Result<Vec<deltalake::kernel::Add>>,
    ) -> Result<Vec<deltalake::kernel::Add>> {
        let adds = match self.0.take() {
            Some((kept, adds)) if kept == cut => adds,
            _ => write().await?,
        };
        self.0 = Some((cut, adds.clone()));
        Ok(adds)
    }
}

/// Group mode's data-table commit of an epoch, as a [`commit::Writer`]: fenced unless every
/// partition is still this member's; only the rows at or past the offsets the table records
/// now (files written again when those moved since the last attempt); held when the table
/// already records every range's end.
pub(super) struct GroupWrite<'a> {
    sink: &'a DeltaSink,
    batch: &'a EpochBatch,
    keyed: StatefulWrite,
    tokens: &'a std::collections::HashMap<TopicPartition, i64>,
    rows: Vec<RecordBatch>,
    dead_letters: &'a [crate::decode::DeadLetter],
    dead_recorded: &'a Offsets,
    written: FilesAt,
    info: serde_json::Value,
    operation: DeltaOperation,
}

impl commit::Writer for GroupWrite<'_> {
    async fn decide(&mut self, table: &DeltaTable, _sent: bool) -> Result<commit::Decision> {
        let (sink, batch) = (self.sink, self.batch);
        let pipeline = &sink.pipeline;
        let recorded = sink.fence(table, self.tokens, batch).await?;
        if batch.ranges.iter().all(|r| recorded.get(&r.tp).is_some_and(|next| *next >= r.end)) {
            return Ok(commit::Decision::Held);
        }
        if !matches!(self.keyed, StatefulWrite::No) {
            // The state the rows were computed from is at each range's start (a range the table
            // holds already adds no row).
            if let Some(r) = batch.ranges.iter().find(|r| recorded.get(&r.tp).is_some_and(|at| *at != r.start && *at < r.end)) {
                return Err(Error::Recovery(format!(
                    "{} records {} at offset {}, inside the epoch's range {}..{} computed from the state at {}; the member restarts from the table",
                    sink.data.path.display(),
                    r.tp,
                    recorded[&r.tp],
                    r.start,
                    r.end,
                    r.start
                )));
            }
        }
        let mut txns = Vec::new();
        for r in &batch.ranges {
            let next = recorded.get(&r.tp).copied();
            txns.push(Transaction::new(partition_app_id(pipeline, &r.tp), next.map_or(r.end, |n| n.max(r.end))));
            if next.is_none() {
                txns.push(Transaction::new(start_app_id(pipeline, &r.tp), r.start));
            }
            txns.push(Transaction::new(owner_app_id(pipeline, &r.tp), self.tokens[&r.tp]));
            if self.dead_letters.iter().any(|d| d.tp == r.tp) {
                let from = self.dead_recorded.get(&r.tp).map_or(r.start, |l| r.start.max(*l));
                txns.push(Transaction::new(dead_mark_app_id(pipeline, &r.tp), from));
            }
        }
        // The table's schema is what the members agree on: a member whose rows have columns it
        // lacks grows it in this commit (one racing another reads again and decides again), one
        // whose config lacks a column another member added is refused.
        let path = &sink.data.path;
        let evolve = sink.growth(&sink.data, &table_fields(table, path)?, &self.rows).map_err(|e| match e {
            Error::Schema(why) => sink.schema_refused(why),
            other => other,
        })?;
        let mut actions: Vec<Action> =
            group_evolution(table, path, evolve.as_ref(), &batch.ranges, &recorded)?.into_iter().collect();
        if let StatefulWrite::Replaces(buckets) = &self.keyed {
            actions.extend(bucket_removes(table, path, Some(buckets))?);
        }
        let replacing = matches!(self.keyed, StatefulWrite::Replaces(_));
        let rows = &self.rows;
        let adds = self
            .written
            .for_cut(recorded.clone(), async || {
                let rows = if replacing { rows.clone() } else { rows_from(rows, &recorded)? };
                let adds = write_files(&sink.data, table, evolve.is_some(), rows).await?;
                sink.failpoints.hit("after-parquet-write").await?;
                Ok(adds)
            })
            .await?;
        actions.extend(adds.into_iter().map(Action::Add));
        Ok(commit::Decision::Write(Box::new(commit::Proposal {
            actions,
            txns,
            info: self.info.clone(),
            operation: self.operation.clone(),
        })))
    }
}

/// What a group member appends to a table after the data table: an output's rows, or dead
/// letters.
pub(super) enum Appended {
    /// An output's rows (with their `_kafka_*` columns).
    Rows(Vec<RecordBatch>),
    /// Dead letters.
    DeadLetters(Vec<crate::decode::DeadLetter>),
}

/// Group mode's commit of an epoch to an output or the dead-letter table, as a
/// [`commit::Writer`]: the rows at or past the offsets that table records now, and the ends
/// of the ranges past them; held when it records every range's end (dead letters: when none
/// of them is past its record). Not fenced: what a table gets for an offset is the same
/// whichever member writes it, and each takes only what the table lacks.
pub(super) struct GroupAppend<'a> {
    sink: &'a DeltaSink,
    spec: &'a Spec,
    batch: &'a EpochBatch,
    rows: Appended,
    written: FilesAt,
    info: serde_json::Value,
    operation: DeltaOperation,
}

impl commit::Writer for GroupAppend<'_> {
    async fn decide(&mut self, table: &DeltaTable, _sent: bool) -> Result<commit::Decision> {
        let (sink, spec, batch) = (self.sink, self.spec, self.batch);
        let tps: Vec<TopicPartition> = batch.ranges.iter().map(|r| r.tp.clone()).collect();
        let held = recorded_cut(table, &spec.path, &sink.pipeline, &tps).await?;
        let txns: Vec<Transaction> = batch
            .ranges
            .iter()
            .filter(|r| held.get(&r.tp).is_none_or(|l| r.end > *l))
            .map(|r| Transaction::new(partition_app_id(&sink.pipeline, &r.tp), r.end))
            .collect();
        let rows = match &self.rows {
            Appended::Rows(rows) if !txns.is_empty() => rows_from(rows, &held)?,
            Appended::DeadLetters(letters) => {
                let letters: Vec<crate::decode::DeadLetter> =
                    letters.iter().filter(|d| held.get(&d.tp).is_none_or(|l| d.offset >= *l)).cloned().collect();
                if letters.is_empty() {
                    return Ok(commit::Decision::Held);
                }
                vec![dead_letter_batch(&letters, batch.epoch).map_err(|e| Error::Sink(e.to_string()))?]
            }
            Appended::Rows(_) => return Ok(commit::Decision::Held),
        };
        let adds = self.written.for_cut(held, async || write_files(spec, table, false, rows).await).await?;
        Ok(commit::Decision::Write(Box::new(commit::Proposal {
            actions: adds.into_iter().map(Action::Add).collect(),
            txns,
            info: self.info.clone(),
            operation: self.operation.clone(),
        })))
    }
}

/// Group mode's claim in an output table, as a [`commit::Writer`]: each claimed partition the
/// output never recorded starts there where the member starts reading it (so an output added
/// since starts now, and a crash between the data table's first commit and the output's is
/// read again for the output).
pub(super) struct OutputClaim<'a> {
    sink: &'a DeltaSink,
    spec: &'a Spec,
    start: &'a Offsets,
    member: &'a str,
}

impl commit::Writer for OutputClaim<'_> {
    async fn decide(&mut self, table: &DeltaTable, _sent: bool) -> Result<commit::Decision> {
        let pipeline = &self.sink.pipeline;
        let mut txns = Vec::new();
        for (tp, from) in self.start {
            if txn_version(table, &self.spec.path, &partition_app_id(pipeline, tp)).await?.is_none() {
                txns.push(Transaction::new(partition_app_id(pipeline, tp), *from));
                txns.push(Transaction::new(start_app_id(pipeline, tp), *from));
            }
        }
        if txns.is_empty() {
            return Ok(commit::Decision::Held);
        }
        let names: Vec<String> = self.start.keys().map(ToString::to_string).collect();
        Ok(commit::Decision::Write(Box::new(commit::Proposal {
            actions: Vec::new(),
            txns,
            info: json!({"pipeline": pipeline, "member": self.member, "claim": names}),
            operation: self.sink.member_operation(self.member, 0),
        })))
    }
}

/// Whether a file whose statistics are `stats` (its Add's JSON) may hold rows of one of
/// `partitions` (empty: any), by its `_kafka_partition` minimum and maximum; a file without
/// them may.
fn may_hold_partitions(stats: Option<&str>, partitions: &[i32]) -> bool {
    let range = stats.and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()).and_then(|v| {
        let column = crate::model::PARTITION_COL;
        Some((v["minValues"][column].as_i64()?, v["maxValues"][column].as_i64()?))
    });
    match range {
        Some((low, high)) if !partitions.is_empty() => partitions.iter().any(|p| (low..=high).contains(&(*p as i64))),
        _ => true,
    }
}

/// What partition-scoped state (`state.scope = "partition"`) asks of a group member's data
/// commit: its rows were computed from each partition's state at its range's start, so each
/// range must start where the table records it (or be held already).
pub(super) enum StatefulWrite {
    /// A stateless pipeline.
    No,
    /// Dedup: rows to append.
    Appends,
    /// Aggregates: the rows of these `_bucket`s, replaced.
    Replaces(std::collections::HashSet<u32>),
}

/// What a group member's epoch writes to the data table: its rows, and how they were kept.
fn group_output(batch: &EpochBatch) -> Result<(&[RecordBatch], StatefulWrite)> {
    let keyed = !batch.partition_state.is_empty();
    match &batch.output {
        Output::Append(rows) if keyed => Ok((rows, StatefulWrite::Appends)),
        Output::Append(rows) => Ok((rows, StatefulWrite::No)),
        Output::Replace { buckets: Some(buckets), rows, .. } => {
            Ok((rows, StatefulWrite::Replaces(buckets.iter().copied().collect())))
        }
        _ => Err(Error::Sink("group mode writes appends and partition-scoped aggregates only".into())),
    }
}

impl DeltaSink {
    /// The Delta operation of a group member's commit (Spark's streaming idiom, one query per
    /// member).
    pub(super) fn member_operation(&self, member: &str, epoch: u64) -> DeltaOperation {
        DeltaOperation::StreamingUpdate {
            output_mode: OutputMode::Append,
            query_id: format!("{}/{member}", self.pipeline),
            epoch_id: epoch as i64,
        }
    }

    /// Group mode: where `tp` resumes by the tables' record (`None`: the data table never
    /// recorded it). Each table keeps only rows past its own record, so the partition resumes
    /// at the least of them: an output's record (outputs commit after the data table), and the
    /// dead letters of the last range that had some, which go to the dead-letter table after
    /// the data table's commit (if that second commit never happened, the range is read again:
    /// the data table keeps none of its rows, the dead-letter table gets what it missed).
    pub(super) async fn resume_at(
        &self,
        data: &DeltaTable,
        dead: Option<&DeltaTable>,
        outputs: &[&DeltaTable],
        tp: &TopicPartition,
    ) -> Result<Option<i64>> {
        let path = &self.data.path;
        let app_id = partition_app_id(&self.pipeline, tp);
        let Some(next) = txn_version(data, path, &app_id).await? else { return Ok(None) };
        let mark = txn_version(data, path, &dead_mark_app_id(&self.pipeline, tp)).await?;
        let held = match (dead, mark) {
            (Some(dead), Some(_)) => txn_version(dead, &self.dead.path, &app_id).await?,
            _ => None,
        };
        let mut from = match mark {
            Some(mark) if held.is_none_or(|h| h <= mark) => mark.min(next),
            _ => next,
        };
        for (table, spec) in outputs.iter().zip(&self.outputs) {
            if let Some(at) = txn_version(table, &spec.path, &app_id).await? {
                from = from.min(at);
            }
        }
        Ok(Some(from))
    }

    /// Group mode: where partitions this member claimed before resume, without claiming them
    /// again (a member that lost them meanwhile is fenced at its next commit, and must not take
    /// them back from their new owner). Partitions it never claimed are claimed.
    pub(super) async fn reposition(&self, tables: &mut Tables, partitions: &[TopicPartition], member: &str) -> Result<Offsets> {
        self.refresh(tables, partitions).await?;
        let unclaimed: Vec<TopicPartition> = partitions.iter().filter(|tp| !tables.tokens.contains_key(*tp)).cloned().collect();
        if !unclaimed.is_empty() {
            return Err(Error::Sink(format!(
                "{member} repositions partitions it never claimed: {}",
                unclaimed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )));
        }
        let mut start = Offsets::new();
        let data = tables.data.as_ref().ok_or_else(|| Error::Sink("the data table is not open".into()))?;
        let outputs: Vec<&DeltaTable> = tables.outputs.iter().flatten().map(|o| &o.table).collect();
        for tp in partitions {
            let from = self
                .resume_at(&data.table, tables.dead.as_ref().map(|d| &d.table), &outputs, tp)
                .await?
                .ok_or_else(|| Error::Sink(format!("{tp} was claimed but the table records no offset for it")))?;
            start.insert(tp.clone(), from);
        }
        Ok(start)
    }

    /// Group mode: claims `partitions` for this member and says where each resumes. See
    /// [`Sink::group_claim`] and ARCHITECTURE.md, "Group mode".
    pub(super) async fn claim(
        &self,
        tables: &mut Tables,
        partitions: &[TopicPartition],
        unrecorded: &crate::sink::Unrecorded,
        member: &str,
    ) -> Result<Offsets> {
        self.refresh(tables, partitions).await?;
        let Tables { data, dead, outputs, tokens, .. } = tables;
        let data = data.as_mut().ok_or_else(|| Error::Sink("the data table is not open".into()))?;
        let mut claim = Claim {
            sink: self,
            dead: dead.as_ref().map(|d| &d.table),
            outputs: outputs.iter().flatten().map(|o| &o.table).collect(),
            partitions,
            unrecorded,
            member,
            token: 0,
            start: Offsets::new(),
        };
        if let commit::Outcome::Landed(version) =
            commit::commit(&mut data.table, &self.data.path, self.data.label(), None, &mut claim).await?
        {
            data.landed(version);
        }
        let (token, start) = (claim.token, claim.start);
        for tp in partitions {
            tokens.insert(tp.clone(), token);
        }
        for (spec, open) in self.outputs.iter().zip(outputs.iter_mut()) {
            let open = open.as_mut().ok_or_else(|| Error::Sink(format!("the table at {} is not open", spec.path.display())))?;
            let mut write = OutputClaim { sink: self, spec, start: &start, member };
            if let commit::Outcome::Landed(version) =
                commit::commit(&mut open.table, &spec.path, spec.label(), None, &mut write).await?
            {
                open.landed(version);
            }
        }
        Ok(start)
    }

    /// Group mode, `state.scope = "partition"`: the data table's record of `partitions` as read
    /// now, and the columns `read` names of its rows (of the files of `read.buckets` only).
    pub(super) async fn state_rows(
        &self,
        tables: &mut Tables,
        partitions: &[TopicPartition],
        read: Option<(&crate::state::RestoreRead, crate::sink::EachBatch<'_>)>,
    ) -> Result<Offsets> {
        if tables.data.is_none() {
            self.refresh(tables, partitions).await?;
        }
        let data = tables.data.as_mut().ok_or_else(|| Error::Sink("the data table is not open".into()))?;
        let path = &self.data.path;
        take_fresh_snapshot(&self.data, data).await?;
        data.table.update_incremental(None).await.map_err(|e| delta_err(path, e))?;
        let recorded = recorded_cut(&data.table, path, &self.pipeline, partitions).await?;
        let Some((read, each)) = read else { return Ok(recorded) };
        let snapshot = data.table.snapshot().map_err(|e| delta_err(path, e))?;
        let files: Vec<_> = snapshot
            .log_data()
            .iter()
            .filter(|f| {
                let bucket = f.partition_values_map().get(crate::model::BUCKET_COL).cloned().flatten();
                let of_buckets = match bucket.and_then(|b| b.parse::<u32>().ok()) {
                    _ if read.buckets.is_empty() => true,
                    Some(b) => read.buckets.iter().any(|owned| owned.contains(&b)),
                    None => false,
                };
                of_buckets && may_hold_partitions(f.stats().as_deref(), &read.partitions)
            })
            .map(|f| f.object_store_path())
            .collect();
        let names: Vec<&str> = read.columns.iter().map(String::as_str).collect();
        rows::for_each_batch(&data.table, &files, &names, each).await?;
        Ok(recorded)
    }

    /// Group mode: the recorded next offsets of the batch's partitions in `table` (the data
    /// table), after checking that each is still claimed by this member's token.
    pub(super) async fn fence(
        &self,
        table: &DeltaTable,
        tokens: &std::collections::HashMap<TopicPartition, i64>,
        batch: &EpochBatch,
    ) -> Result<Offsets> {
        let tps: Vec<TopicPartition> = batch.ranges.iter().map(|r| r.tp.clone()).collect();
        let mut lost = Vec::new();
        for tp in &tps {
            let owner = txn_version(table, &self.data.path, &owner_app_id(&self.pipeline, tp)).await?;
            if owner.is_none() || owner != tokens.get(tp).copied() {
                lost.push(tp.clone());
            }
        }
        if !lost.is_empty() {
            let names: Vec<String> = lost.iter().map(ToString::to_string).collect();
            return Err(Error::Fenced {
                detail: format!(
                    "{} claimed by another member since this one did (partitions {}); epoch {} is dropped",
                    self.data.path.display(),
                    names.join(", "),
                    batch.epoch
                ),
                partitions: lost,
            });
        }
        recorded_cut(table, &self.data.path, &self.pipeline, &tps).await
    }

    /// Group mode's commit of an epoch (ARCHITECTURE.md, "Group mode"): the data table first —
    /// fenced, only rows at or past its recorded offsets, marking ranges whose dead letters are
    /// still to be written —, then each output, then the dead-letter table, each with only what
    /// is at or past its own recorded offsets. No pipeline epoch txn: epochs are numbered per
    /// member. Each commit is decided again from its table at every attempt ([`GroupWrite`],
    /// [`GroupAppend`]).
    pub(super) async fn commit_group(&self, tables: &mut Tables, batch: &EpochBatch, member: &str) -> Result<()> {
        let epoch = batch.epoch;
        let (rows, keyed) = group_output(batch)?;
        let stamp = |rows: &[RecordBatch]| stamped(rows, epoch);
        let fanned = self.fan_out(rows);
        let rows = stamp(&fanned.main)?;
        let all_dead: Vec<crate::decode::DeadLetter> = batch.dead_letters.iter().cloned().chain(fanned.dead).collect();
        let tps: Vec<TopicPartition> = batch.ranges.iter().map(|r| r.tp.clone()).collect();
        let Tables { data, dead, outputs, tokens, .. } = tables;
        let data = data.as_mut().ok_or_else(|| Error::Sink("the data table is not open".into()))?;
        let info = with_skipped(
            json!({"pipeline": &self.pipeline, "member": member, "epoch": epoch, "ranges": ranges_json(&batch.ranges)}),
            &batch.skipped,
        );
        let operation = self.member_operation(member, epoch);

        // Where the dead-letter table is for these partitions: the data table's marks say what
        // it must still get.
        let dead_recorded = match dead.as_mut() {
            Some(open) if !all_dead.is_empty() => {
                take_fresh_snapshot(&self.dead, open).await?;
                open.table.update_incremental(None).await.map_err(|e| delta_err(&self.dead.path, e))?;
                recorded_cut(&open.table, &self.dead.path, &self.pipeline, &tps).await?
            }
            _ => Offsets::new(),
        };
        let dead_letters: Vec<crate::decode::DeadLetter> =
            all_dead.into_iter().filter(|d| dead_recorded.get(&d.tp).is_none_or(|l| d.offset >= *l)).collect();

        // The data table.
        take_fresh_snapshot(&self.data, data).await?;
        let t_delta = std::time::Instant::now();
        let mut write = GroupWrite {
            sink: self,
            batch,
            keyed,
            tokens,
            rows,
            dead_letters: &dead_letters,
            dead_recorded: &dead_recorded,
            written: FilesAt::default(),
            info: info.clone(),
            operation: operation.clone(),
        };
        if let commit::Outcome::Landed(version) =
            commit::commit(&mut data.table, &self.data.path, self.data.label(), self.before_commit(), &mut write).await?
        {
            data.landed(version);
            metrics::histogram!(crate::telemetry::metrics::COMMIT_SECONDS, "phase" => "delta")
                .record(t_delta.elapsed().as_secs_f64());
        }
        self.failpoints.hit("after-delta-commit").await?;

        // Each output: every range it does not record yet (its record moves even without rows).
        for ((spec, open), rows) in self.outputs.iter().zip(outputs.iter_mut()).zip(fanned.outputs) {
            let open = open.as_mut().ok_or_else(|| Error::Sink(format!("the table at {} is not open", spec.path.display())))?;
            take_fresh_snapshot(spec, open).await?;
            let mut write = GroupAppend {
                sink: self,
                spec,
                batch,
                rows: Appended::Rows(stamp(&rows)?),
                written: FilesAt::default(),
                info: info.clone(),
                operation: operation.clone(),
            };
            if let commit::Outcome::Landed(version) =
                commit::commit(&mut open.table, &spec.path, spec.label(), None, &mut write).await?
            {
                open.landed(version);
            }
        }

        // The dead-letter table: what it does not hold yet.
        if dead_letters.is_empty() {
            return Ok(());
        }
        if dead.is_none() {
            *dead = self.open(&self.dead, &tps, true).await?;
        }
        let open = dead.as_mut().ok_or_else(|| Error::Sink("the dead-letter table is not open".into()))?;
        take_fresh_snapshot(&self.dead, open).await?;
        let mut write = GroupAppend {
            sink: self,
            spec: &self.dead,
            batch,
            rows: Appended::DeadLetters(dead_letters),
            written: FilesAt::default(),
            info,
            operation,
        };
        if let commit::Outcome::Landed(version) =
            commit::commit(&mut open.table, &self.dead.path, self.dead.label(), None, &mut write).await?
        {
            open.landed(version);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_skips_only_files_whose_statistics_exclude_its_partitions() {
        let stats = r#"{"numRecords":3,"minValues":{"_kafka_partition":2},"maxValues":{"_kafka_partition":4}}"#;
        assert!(may_hold_partitions(Some(stats), &[0, 3]));
        assert!(!may_hold_partitions(Some(stats), &[0, 1, 5]));
        assert!(may_hold_partitions(Some(stats), &[]), "no partitions named: every file");
        assert!(may_hold_partitions(None, &[0]), "no statistics: read it");
        assert!(may_hold_partitions(Some(r#"{"numRecords":3}"#), &[0]));
    }
}
