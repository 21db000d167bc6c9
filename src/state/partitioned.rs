//! `state.scope = "partition"` (group mode): each Kafka partition's keyed state is its own, so
//! it moves with the partition from member to member.
//!
//! A member keeps one RocksDB per partition it reads, under `checkpoint.dir/partitions/`, at
//! the offset whose state it holds (its checkpoint's one entry; dedup entries carry the end
//! offset of the range that wrote them as their "epoch"). Its durable copy is the data table:
//! the rows a partition's commits kept (dedup) and the current rows of the buckets it owns
//! (aggregates) are its state at the offset the same commits record — one Delta commit holds
//! both, so no copy can be behind. A member taking a partition whose local state is not at the
//! partition's resume point rebuilds it from those rows ([`PartitionStates::rebuild`]).
//!
//! Event-time dedup's state at a range boundary X is a function of the rows kept before X:
//! the watermark is the newest kept event time minus the lateness, and a key is held with the
//! event time of its last kept row unless that is older than the watermark (expired). An
//! aggregate's state is its row. Aggregate buckets are owned by partitions: partition p's keys
//! hash into `_bucket`s `p * buckets .. (p + 1) * buckets`, so members never rewrite each
//! other's rows.

use std::path::PathBuf;
use std::sync::Mutex;

use deltalake::arrow::array::Int32Array;

use super::aggregate::{self, AggState, Num};
use super::dedup::event_ms;
use super::*;
use crate::config::StateConfig;
use crate::model::{PartitionRange, TopicPartition};
use crate::state::checkpoint::Checkpoint;

/// What a rebuild reads of the data table: these columns (rows of the partitions: dedup by
/// `_kafka_topic`/`_kafka_partition`, aggregates by their `_bucket`s).
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreRead {
    /// The columns.
    pub columns: Vec<String>,
    /// Aggregates: only files of these `_bucket`s (empty: every file).
    pub buckets: Vec<std::ops::Range<u32>>,
    /// Dedup: only files whose `_kafka_partition` statistics may hold one of these partition
    /// numbers (empty: every file).
    pub partitions: Vec<i32>,
}

/// Partitions' states rebuilt from the data table's rows — read from a snapshot that records
/// each partition's commits up to at least its offset — fed batch by batch: only the states are
/// held, never the rows.
pub struct Rebuild {
    states: Arc<PartitionStates>,
    targets: BTreeMap<TopicPartition, Target>,
}

/// One partition's rebuild.
struct Target {
    /// The offset the state is rebuilt at.
    at: i64,
    /// The `_bucket`s it owns (aggregates).
    buckets: std::ops::Range<u32>,
    /// Dedup: each key kept before `at`, with the event time of its last kept row.
    keys: BTreeMap<Vec<u8>, i64>,
    /// Aggregates: each group's state.
    agg: Vec<(Vec<u8>, Vec<u8>, bool)>,
}

impl Rebuild {
    /// Folds rows of the data table in.
    pub fn add(&mut self, b: &RecordBatch) -> Result<()> {
        let states = self.states.clone();
        if let Some(cfg) = &states.dedup {
            self.add_kept(&states, cfg, b)?;
        }
        if let Some(cfg) = &states.aggregate {
            self.add_groups(&states, cfg, b)?;
        }
        Ok(())
    }

    /// Dedup: the keys of the rows kept before each target's offset.
    fn add_kept(&mut self, states: &PartitionStates, cfg: &DedupConfig, b: &RecordBatch) -> Result<()> {
        let b = states.typed(b, cfg.key.iter().chain(&cfg.watermark_field))?;
        let (topics, parts, offsets) = coordinates(&b)?;
        let stamps = match cfg.watermark_field.as_deref() {
            Some(w) => event_ms(b.column_by_name(w).ok_or_else(|| missing(w))?)?,
            None => vec![Some(0); b.num_rows()],
        };
        let cols: Vec<usize> = cfg.key.iter().map(|k| b.schema().index_of(k).map_err(|_| missing(k))).collect::<Result<_>>()?;
        let keys = KeyCol::of(&b, &cols)?;
        // Rows come in runs of one partition: its target is looked up once per run.
        let mut run: Option<(&str, i32, Option<TopicPartition>)> = None;
        let mut key = Vec::new();
        for (i, stamp) in stamps.into_iter().enumerate() {
            let (topic, part) = (topics.value(i), parts.value(i));
            if !run.as_ref().is_some_and(|(t, p, _)| *t == topic && *p == part) {
                let tp = Some(TopicPartition::new(topic, part)).filter(|tp| self.targets.contains_key(tp));
                run = Some((topic, part, tp));
            }
            let (Some((_, _, Some(tp))), Some(stamp)) = (run.as_ref(), stamp) else { continue };
            let target = self.targets.get_mut(tp).expect("a target");
            if offsets.value(i) >= target.at {
                continue;
            }
            key.clear();
            keys.iter().for_each(|k| k.encode(i, &mut key));
            match target.keys.get_mut(key.as_slice()) {
                Some(held) => *held = (*held).max(stamp),
                None => {
                    target.keys.insert(key.clone(), stamp);
                }
            }
        }
        Ok(())
    }

    /// Aggregates: the state of each group in a target's buckets.
    fn add_groups(&mut self, states: &PartitionStates, cfg: &AggregateConfig, b: &RecordBatch) -> Result<()> {
        let b = states.typed(b, cfg.group_by.iter())?;
        let bucket = b
            .column_by_name(crate::model::BUCKET_COL)
            .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
            .ok_or_else(|| missing(crate::model::BUCKET_COL))?;
        let cols: Vec<usize> =
            cfg.group_by.iter().map(|k| b.schema().index_of(k).map_err(|_| missing(k))).collect::<Result<_>>()?;
        let keys = KeyCol::of(&b, &cols)?;
        let values: Vec<&ArrayRef> = cfg
            .aggregates
            .iter()
            .map(|s| b.column_by_name(&s.column()).ok_or_else(|| missing(&s.column())))
            .collect::<Result<_>>()?;
        let values: Vec<Option<aggregate::NumCol>> = values.into_iter().map(aggregate::NumCol::new).collect();
        for i in 0..b.num_rows() {
            let at = bucket.value(i).max(0) as u32;
            let Some(target) = self.targets.values_mut().find(|t| t.buckets.contains(&at)) else { continue };
            let mut key = (at as u16).to_be_bytes().to_vec();
            keys.iter().for_each(|k| k.encode(i, &mut key));
            let mut state = AggState { count: 0, vals: vec![None; cfg.aggregates.len()] };
            for (j, spec) in cfg.aggregates.iter().enumerate() {
                let v = values[j].as_ref().and_then(|c| c.get(i));
                match (spec.op, v) {
                    (AggregateOp::Count, Some(Num::I(n))) => state.count = n,
                    (AggregateOp::Count, _) => {}
                    _ => state.vals[j] = v,
                }
            }
            target.agg.push((key, state.encode(), true));
        }
        Ok(())
    }

    /// Writes each target's state at its offset, replacing what its directory held; the keys
    /// they hold. Blocking.
    pub fn finish(self) -> Result<usize> {
        let mut n = 0;
        for (tp, t) in self.targets {
            let mut changes = StateChanges { agg_put: t.agg, ..Default::default() };
            if let Some(d) = &self.states.dedup {
                // The watermark: the newest kept event time minus the lateness; keys older
                // than it have expired.
                let watermark = d.watermark_field.as_ref().and_then(|_| {
                    t.keys.values().max().map(|m| m.saturating_sub(d.allowed_lateness_ms.min(i64::MAX as u64) as i64))
                });
                changes.watermark = watermark;
                changes.dedup_insert = t.keys.into_iter().filter(|(_, s)| watermark.is_none_or(|w| *s >= w)).collect();
            }
            n += changes.dedup_insert.len() + changes.agg_put.len();
            self.states.replace(&tp, t.at, &changes)?;
        }
        Ok(n)
    }
}

/// What a partition-scoped epoch made: the merged output and, per partition, the state
/// changes to write once the tables hold the epoch.
pub struct PartitionProcessed {
    /// The merged result.
    pub processed: Processed,
    /// Per partition: the range's end and its changes.
    pub changes: BTreeMap<TopicPartition, (i64, StateChanges)>,
}

/// The keyed state of the partitions a group member reads, one RocksDB each.
pub struct PartitionStates {
    pipeline: String,
    dir: PathBuf,
    config: StateConfig,
    decoded: SchemaRef,
    dedup: Option<DedupConfig>,
    aggregate: Option<AggregateConfig>,
    open: Mutex<BTreeMap<TopicPartition, Arc<Processor>>>,
}

impl PartitionStates {
    /// The states of `pipeline`'s partitions under `dir` (`checkpoint.dir/partitions`).
    pub fn new(
        pipeline: &str,
        dir: PathBuf,
        config: &StateConfig,
        decoded: SchemaRef,
        dedup: Option<&DedupConfig>,
        aggregate: Option<&AggregateConfig>,
    ) -> Self {
        PartitionStates {
            pipeline: pipeline.to_string(),
            dir,
            config: config.clone(),
            decoded,
            dedup: dedup.cloned(),
            aggregate: aggregate.cloned(),
            open: Mutex::new(BTreeMap::new()),
        }
    }

    fn dir_of(&self, tp: &TopicPartition) -> PathBuf {
        self.dir.join(format!("{}-{}", tp.topic, tp.partition))
    }

    /// Partition `tp`'s `_bucket`s.
    fn buckets(&self, tp: &TopicPartition) -> Result<std::ops::Range<u32>> {
        let per = self.aggregate.as_ref().map_or(1, |a| a.buckets);
        let base = tp.partition.max(0) as u32 * per;
        if base + per > u16::MAX as u32 + 1 {
            return Err(Error::Sink(format!(
                "{tp}: partition {} times aggregate.buckets = {per} passes the 65536 buckets a table can have",
                tp.partition
            )));
        }
        Ok(base..base + per)
    }

    fn open(&self, tp: &TopicPartition) -> Result<Arc<Processor>> {
        if let Some(p) = self.open.lock().expect("states lock").get(tp) {
            return Ok(p.clone());
        }
        let store = CheckpointStore::open_with(self.dir_of(tp), &self.config)?;
        let processor = Processor::new(&self.decoded, self.dedup.as_ref(), self.aggregate.as_ref(), None, store)?
            .ok_or_else(|| Error::Sink("state.scope = \"partition\" without dedup or aggregation".into()))?;
        let processor = Arc::new(processor.with_bucket_base(self.buckets(tp)?.start));
        self.open.lock().expect("states lock").insert(tp.clone(), processor.clone());
        Ok(processor)
    }

    /// The offset whose state this member holds for `tp` (`None`: none). Blocking.
    fn holds(&self, tp: &TopicPartition) -> Result<Option<i64>> {
        let p = self.open(tp)?;
        Ok(p.store.load()?.and_then(|cp| cp.offsets().get(tp).copied()))
    }

    /// Of `wanted` (each partition with the offset its state must be at), those whose state
    /// this member does not hold there. Blocking.
    pub fn lacking(&self, wanted: &[(TopicPartition, i64)]) -> Result<Vec<(TopicPartition, i64)>> {
        let mut out = Vec::new();
        for (tp, at) in wanted {
            if self.holds(tp)? != Some(*at) {
                out.push((tp.clone(), *at));
            }
        }
        Ok(out)
    }

    /// The offset `tp`'s state must be at for a member that reads it from `from` while the
    /// data table records `recorded` (more, when a table written after it lacks the range in
    /// between, which is read again): dedup runs that range again against the state before
    /// it, for its late records; an aggregate's state is its rows, at `recorded`, and that
    /// range adds nothing to it.
    pub fn state_at(&self, from: i64, recorded: i64) -> i64 {
        if self.dedup.is_some() {
            from
        } else {
            recorded
        }
    }

    /// What [`PartitionStates::rebuild`] of `partitions` needs of the data table.
    pub fn restore_read(&self, partitions: &[TopicPartition]) -> Result<RestoreRead> {
        use crate::model::{BUCKET_COL, OFFSET_COL, PARTITION_COL, TOPIC_COL};
        let mut columns: Vec<String> = Vec::new();
        let (mut buckets, mut numbers) = (Vec::new(), Vec::new());
        if let Some(d) = &self.dedup {
            numbers = partitions.iter().map(|tp| tp.partition).collect();
            columns.extend(d.key.iter().cloned());
            columns.extend(d.watermark_field.iter().cloned());
            columns.extend([TOPIC_COL, PARTITION_COL, OFFSET_COL].map(String::from));
        }
        if let Some(a) = &self.aggregate {
            columns.extend(a.group_by.iter().cloned());
            columns.extend(a.aggregates.iter().map(|s| s.column()));
            columns.push(BUCKET_COL.to_string());
            buckets = partitions.iter().map(|tp| self.buckets(tp)).collect::<Result<_>>()?;
        }
        columns.dedup();
        Ok(RestoreRead { columns, buckets, partitions: numbers })
    }

    /// A rebuild of `targets`' states (each partition at the offset its state must be at),
    /// fed the rows [`PartitionStates::restore_read`] names.
    pub fn rebuild(self: &Arc<Self>, targets: &[(TopicPartition, i64)]) -> Result<Rebuild> {
        let targets = targets
            .iter()
            .map(|(tp, at)| {
                Ok((tp.clone(), Target { at: *at, buckets: self.buckets(tp)?, keys: BTreeMap::new(), agg: Vec::new() }))
            })
            .collect::<Result<_>>()?;
        Ok(Rebuild { states: self.clone(), targets })
    }

    /// Replaces `tp`'s local state with `changes` at offset `at`. Blocking.
    fn replace(&self, tp: &TopicPartition, at: i64, changes: &StateChanges) -> Result<()> {
        let dir = self.dir_of(tp);
        drop(self.open.lock().expect("states lock").remove(tp));
        // A killed committer's last write may still hold the database for a moment.
        let mut tries = 0;
        let p = loop {
            let _ = std::fs::remove_dir_all(&dir);
            match self.open(tp) {
                Ok(p) => break p,
                Err(e) if tries < 50 && e.to_string().contains("in use") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        };
        let cut: crate::model::Offsets = [(tp.clone(), at)].into_iter().collect();
        p.store.commit(&Checkpoint::new(&self.pipeline, at.max(0) as u64, &cut), changes)
    }

    /// `b` with the named columns cast to their decoded types (a file rewritten by another
    /// writer may hold the same values under another Arrow type).
    fn typed<'a>(&self, b: &RecordBatch, names: impl Iterator<Item = &'a String>) -> Result<RecordBatch> {
        let mut fields: Vec<Field> = b.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut cols = b.columns().to_vec();
        for name in names {
            let (Ok(at), Ok(want)) = (b.schema().index_of(name), self.decoded.field_with_name(name)) else { continue };
            if cols[at].data_type() != want.data_type() {
                cols[at] =
                    deltalake::arrow::compute::cast(&cols[at], want.data_type()).map_err(|e| Error::Sink(e.to_string()))?;
                fields[at] = Field::new(name, want.data_type().clone(), true);
            }
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(|e| Error::Sink(e.to_string()))
    }

    /// Runs the epoch's ranges, each against its own partition's state at the range's start;
    /// a range an aggregate's state holds already (read again for a table that lacks it) adds
    /// nothing. Blocking.
    pub fn process(
        &self,
        ranges: &[PartitionRange],
        mut rows: BTreeMap<TopicPartition, Vec<RecordBatch>>,
    ) -> Result<PartitionProcessed> {
        let mut out = Processed {
            output: Output::Append(Vec::new()),
            late: Vec::new(),
            changes: StateChanges::default(),
            duplicates: 0,
            superseded: 0,
        };
        let mut appended = Vec::new();
        let (mut buckets, mut replaced) = (Vec::new(), Vec::new());
        let mut changes = BTreeMap::new();
        for r in ranges {
            let batches = rows.remove(&r.tp).unwrap_or_default();
            if r.start == r.end && batches.is_empty() {
                continue;
            }
            let p = self.open(&r.tp)?;
            let held = p.store.load()?.and_then(|cp| cp.offsets().get(&r.tp).copied());
            match held {
                Some(h) if h == r.start => {}
                Some(h) if p.agg.is_some() && p.dedup.is_none() && r.end <= h => continue,
                h => {
                    return Err(Error::Recovery(format!(
                        "the state of {} is at offset {}, but the epoch's range starts at {}; it is restored from the table at the next start",
                        r.tp,
                        h.map_or("none".into(), |h| h.to_string()),
                        r.start
                    )))
                }
            }
            let done = p.process(r.end.max(0) as u64, batches)?;
            out.late.extend(done.late);
            out.duplicates += done.duplicates;
            match done.output {
                Output::Append(r) => appended.extend(r),
                Output::Replace { buckets: b, rows, .. } => {
                    buckets.extend(b.unwrap_or_default());
                    replaced.extend(rows);
                }
                Output::Upsert { .. } => return Err(Error::Sink("upserts are not partition-scoped".into())),
            }
            changes.insert(r.tp.clone(), (r.end, done.changes));
        }
        out.output = match &self.aggregate {
            Some(a) => Output::Replace { buckets: Some(buckets), rows: replaced, mode: a.output_mode },
            None => Output::Append(appended),
        };
        Ok(PartitionProcessed { processed: out, changes })
    }

    /// Writes each partition's changes with its new offset, once the tables hold the epoch.
    /// Blocking.
    pub fn commit(&self, changes: &BTreeMap<TopicPartition, (i64, StateChanges)>) -> Result<()> {
        for (tp, (end, c)) in changes {
            let cut: crate::model::Offsets = [(tp.clone(), *end)].into_iter().collect();
            self.open(tp)?.store.commit(&Checkpoint::new(&self.pipeline, end.max(&0).to_owned() as u64, &cut), c)?;
        }
        Ok(())
    }

    /// Closes the states of partitions this member no longer reads (their directories stay:
    /// a partition that comes back with its state at the offset it resumes at skips the
    /// restore).
    pub fn keep_only(&self, partitions: &[TopicPartition]) {
        self.open.lock().expect("states lock").retain(|tp, _| partitions.contains(tp));
    }

    /// Keys held over the open partitions: (dedup keys, aggregate groups, bytes on disk).
    pub fn size(&self) -> Result<(u64, u64, u64)> {
        let open: Vec<Arc<Processor>> = self.open.lock().expect("states lock").values().cloned().collect();
        let mut size = (0, 0, 0);
        for p in open {
            size.0 += p.store.dedup_key_count()?;
            size.1 += p.store.agg_key_count()?;
            size.2 += p.store.disk_bytes();
        }
        Ok(size)
    }
}

fn missing(name: &str) -> Error {
    Error::Sink(format!("the data table's rows have no column {name} to restore the state from"))
}

/// The `_kafka_topic`, `_kafka_partition` and `_kafka_offset` columns.
fn coordinates(b: &RecordBatch) -> Result<(&StringArray, &Int32Array, &Int64Array)> {
    use crate::model::{OFFSET_COL, PARTITION_COL, TOPIC_COL};
    let topics =
        b.column_by_name(TOPIC_COL).and_then(|c| c.as_any().downcast_ref::<StringArray>()).ok_or_else(|| missing(TOPIC_COL))?;
    let parts = b
        .column_by_name(PARTITION_COL)
        .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
        .ok_or_else(|| missing(PARTITION_COL))?;
    let offsets =
        b.column_by_name(OFFSET_COL).and_then(|c| c.as_any().downcast_ref::<Int64Array>()).ok_or_else(|| missing(OFFSET_COL))?;
    Ok((topics, parts, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OFFSET_COL, PARTITION_COL, TOPIC_COL};

    /// `tp`'s state at offset `at` rebuilt from `rows`, as a member taking it does.
    fn restore(states: &Arc<PartitionStates>, tp: &TopicPartition, at: i64, rows: &[RecordBatch]) {
        let mut rebuild = states.rebuild(&[(tp.clone(), at)]).unwrap();
        for b in rows {
            rebuild.add(b).unwrap();
        }
        rebuild.finish().unwrap();
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("value", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new(TOPIC_COL, DataType::Utf8, false),
            Field::new(PARTITION_COL, DataType::Int32, false),
            Field::new(OFFSET_COL, DataType::Int64, false),
        ]))
    }

    /// Records of `tp` at offsets `from..`: (id, event time in ms); the value is `v<id % 3>`.
    fn records(tp: &TopicPartition, from: i64, events: &[(i64, i64)]) -> RecordBatch {
        let n = events.len();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(events.iter().map(|e| e.0).collect::<Vec<_>>())),
                Arc::new(StringArray::from(events.iter().map(|e| format!("v{}", e.0 % 3)).collect::<Vec<_>>())),
                Arc::new(TimestampMicrosecondArray::from(events.iter().map(|e| e.1 * 1000).collect::<Vec<_>>())),
                Arc::new(StringArray::from(vec![tp.topic.to_string(); n])),
                Arc::new(Int32Array::from(vec![tp.partition; n])),
                Arc::new(Int64Array::from((from..from + n as i64).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    /// Runs `events` as the range starting at `from` through `states`, committing its changes.
    fn run(states: &PartitionStates, tp: &TopicPartition, from: i64, events: &[(i64, i64)]) -> Processed {
        let range = PartitionRange { tp: tp.clone(), start: from, end: from + events.len() as i64, records: events.len() as u64 };
        let done = states.process(&[range], [(tp.clone(), vec![records(tp, from, events)])].into_iter().collect()).unwrap();
        states.commit(&done.changes).unwrap();
        done.processed
    }

    fn ids(rows: &[RecordBatch]) -> Vec<i64> {
        rows.iter()
            .flat_map(|b| {
                b.column_by_name("id").unwrap().as_primitive::<deltalake::arrow::datatypes::Int64Type>().values().to_vec()
            })
            .collect()
    }

    fn late(p: &Processed) -> Vec<i64> {
        p.late.iter().map(|d| d.offset).collect()
    }

    /// The state a member rebuilds from the rows the table kept decides the next range exactly
    /// as the state kept through the ranges: duplicates, late records, expired keys kept again.
    #[test]
    fn dedup_state_rebuilt_from_the_kept_rows_decides_as_the_kept_one() {
        let (kept_dir, rebuilt_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let d = DedupConfig::by_watermark(&["id"], "ts", 10_000);
        let states = |dir: &std::path::Path| {
            Arc::new(PartitionStates::new("p", dir.to_path_buf(), &StateConfig::default(), schema(), Some(&d), None))
        };
        let (kept, rebuilt) = (states(kept_dir.path()), states(rebuilt_dir.path()));
        let tp = TopicPartition::new("t", 3);
        restore(&kept, &tp, 0, &[]);
        let mut table = Vec::new();
        // 1 and 2 kept, 1 again a duplicate; 4 late (the watermark stands at 95 s); 1, 2 and 3
        // expire as the watermark passes them.
        for (from, events) in [
            (0, vec![(1, 100_000), (2, 105_000), (1, 106_000)]),
            (3, vec![(3, 120_000), (2, 121_000), (4, 90_000)]),
            (6, vec![(5, 200_000), (3, 201_000)]),
        ] {
            let done = run(&kept, &tp, from, &events);
            table.extend(done.output.rows().to_vec());
        }
        assert_eq!(ids(&table), vec![1, 2, 3, 5]);
        restore(&rebuilt, &tp, 8, &table);
        let next = [(1, 205_000), (6, 150_000), (5, 210_000), (7, 195_000), (8, 300_000)];
        let (a, b) = (run(&kept, &tp, 8, &next), run(&rebuilt, &tp, 8, &next));
        assert_eq!(ids(a.output.rows()), vec![1, 7, 8], "1 expired, 6 late, 5 held");
        assert_eq!((ids(b.output.rows()), late(&b), b.duplicates), (ids(a.output.rows()), late(&a), a.duplicates));
        // Rebuilt before the last range (a table that lacks it reads it again): the state then.
        let again = tempfile::tempdir().unwrap();
        let before = states(again.path());
        restore(&before, &tp, 6, &table);
        assert_eq!(ids(run(&before, &tp, 6, &[(5, 200_000), (3, 201_000)]).output.rows()), vec![5]);
    }

    /// An aggregate's state rebuilt from its buckets' rows goes on counting from the totals; the
    /// partition's keys stay in its own buckets.
    #[test]
    fn aggregate_state_rebuilt_from_its_buckets_goes_on_from_the_totals() {
        use crate::config::{AggregateSpec, OutputMode};
        let (kept_dir, rebuilt_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = AggregateConfig {
            group_by: vec!["value".into()],
            aggregates: vec![
                AggregateSpec { op: AggregateOp::Count, field: None, name: None },
                AggregateSpec { op: AggregateOp::Max, field: Some("id".into()), name: None },
            ],
            output_mode: OutputMode::Update,
            buckets: 4,
        };
        let states = |dir: &std::path::Path| {
            Arc::new(PartitionStates::new("p", dir.to_path_buf(), &StateConfig::default(), schema(), None, Some(&a)))
        };
        let (kept, rebuilt) = (states(kept_dir.path()), states(rebuilt_dir.path()));
        let tp = TopicPartition::new("t", 2);
        restore(&kept, &tp, 0, &[]);
        // The table: each range's rows replace those of the buckets it touched.
        let mut table: Vec<RecordBatch> = Vec::new();
        for (from, events) in [(0, vec![(1, 0), (2, 0), (4, 0)]), (3, vec![(7, 0), (5, 0)])] {
            let Output::Replace { buckets: Some(touched), rows, .. } = run(&kept, &tp, from, &events).output else { panic!() };
            assert!(touched.iter().all(|b| (8..12).contains(b)), "partition 2's buckets: {touched:?}");
            table = table
                .iter()
                .map(|b| {
                    let bucket = b
                        .column_by_name(crate::model::BUCKET_COL)
                        .unwrap()
                        .as_primitive::<deltalake::arrow::datatypes::Int32Type>();
                    let keep: BooleanArray = bucket.iter().map(|v| Some(!touched.contains(&(v.unwrap() as u32)))).collect();
                    filter_record_batch(b, &keep).unwrap()
                })
                .chain(rows)
                .collect();
        }
        restore(&rebuilt, &tp, 5, &table);
        let next = [(10, 0), (3, 0)];
        let (x, y) = (run(&kept, &tp, 5, &next), run(&rebuilt, &tp, 5, &next));
        let text = |p: &Processed| deltalake::arrow::util::pretty::pretty_format_batches(p.output.rows()).unwrap().to_string();
        assert_eq!(text(&y), text(&x));
        assert!(text(&x).contains("| v1    | 4     | 10     |"), "v1: 1, 4, 7, 10\n{}", text(&x));
        // A range the state holds already (read again for a later table) adds nothing.
        let held = PartitionRange { tp: tp.clone(), start: 3, end: 5, records: 2 };
        let again =
            rebuilt.process(&[held], [(tp.clone(), vec![records(&tp, 3, &[(7, 0), (5, 0)])])].into_iter().collect()).unwrap();
        assert!(again.changes.is_empty() && again.processed.output.rows().is_empty());
    }
}
