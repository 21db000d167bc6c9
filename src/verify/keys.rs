//! Key-level checks of dedup and aggregate pipelines: every key once, every group equal to its
//! recomputation from the topic.

use super::read::{cell, column, Tables};
use super::*;
use crate::model::BUCKET_COL;

/// The key of row `i`: the named columns' cells, joined.
pub(super) fn key_of(b: &RecordBatch, cols: &[String], i: usize) -> Result<String> {
    let mut k = Vec::with_capacity(cols.len());
    for c in cols {
        k.push(cell(column(b, c)?, i));
    }
    Ok(k.join("|"))
}

/// Whose key a row's key is: every partition's own (`state.scope = "partition"`: the key is
/// prefixed with the row's partition) or the pipeline's.
#[derive(Clone, Copy)]
pub(super) enum Scope {
    Process,
    /// Aggregate rows name their partition by their `_bucket` (this many per partition).
    Partition {
        buckets: u32,
    },
}

impl Scope {
    fn of(config: &PipelineConfig) -> Scope {
        match config.state.scope {
            crate::config::StateScope::Process => Scope::Process,
            crate::config::StateScope::Partition => {
                Scope::Partition { buckets: config.aggregate.as_ref().map_or(1, |a| a.buckets) }
            }
        }
    }

    /// Row `i`'s key in this scope, of a topic's rows (with `_kafka_partition`) or of an
    /// aggregate table's (`table`: with `_bucket`).
    fn key(&self, b: &RecordBatch, cols: &[String], i: usize, table: bool) -> Result<String> {
        let key = key_of(b, cols, i)?;
        Ok(match self {
            Scope::Process => key,
            Scope::Partition { buckets } => {
                let partition = match table {
                    true => cell(column(b, BUCKET_COL)?, i).parse::<u32>().unwrap_or(0) / buckets,
                    false => cell(column(b, PARTITION_COL)?, i).parse::<u32>().unwrap_or(0),
                };
                format!("p{partition}|{key}")
            }
        })
    }
}

/// Recomputes the configured aggregates per group (in `scope`) from decoded rows; values as
/// [`cell`] text.
fn recompute(rows: &[RecordBatch], config: &AggregateConfig, scope: Scope) -> Result<BTreeMap<String, Vec<String>>> {
    #[derive(Clone, Copy)]
    enum V {
        I(i64),
        F(f64),
    }
    let mut groups: BTreeMap<String, (i64, Vec<Option<V>>)> = BTreeMap::new();
    for b in rows {
        for i in 0..b.num_rows() {
            let g = groups
                .entry(scope.key(b, &config.group_by, i, false)?)
                .or_insert_with(|| (0, vec![None; config.aggregates.len()]));
            g.0 += 1;
            for (j, spec) in config.aggregates.iter().enumerate() {
                let Some(f) = &spec.field else { continue };
                let col = column(b, f)?;
                if col.is_null(i) {
                    continue;
                }
                let v = match col.data_type() {
                    DataType::Float64 => V::F(col.as_any().downcast_ref::<Float64Array>().unwrap().value(i)),
                    DataType::Float32 => V::F(col.as_any().downcast_ref::<Float32Array>().unwrap().value(i) as f64),
                    _ => V::I(cell(col, i).parse().unwrap_or(0)),
                };
                g.1[j] = Some(match (spec.op, g.1[j], v) {
                    (_, None, v) => v,
                    (AggregateOp::Sum, Some(V::I(a)), V::I(b)) => V::I(a.wrapping_add(b)),
                    (AggregateOp::Sum, Some(V::F(a)), V::F(b)) => V::F(a + b),
                    (AggregateOp::Min, Some(V::I(a)), V::I(b)) => V::I(a.min(b)),
                    (AggregateOp::Min, Some(V::F(a)), V::F(b)) => V::F(a.min(b)),
                    (AggregateOp::Max, Some(V::I(a)), V::I(b)) => V::I(a.max(b)),
                    (AggregateOp::Max, Some(V::F(a)), V::F(b)) => V::F(a.max(b)),
                    (_, Some(a), _) => a,
                });
            }
        }
    }
    Ok(groups
        .into_iter()
        .map(|(k, (count, vals))| {
            let cells = config
                .aggregates
                .iter()
                .zip(vals)
                .map(|(spec, v)| match (spec.op, v) {
                    (AggregateOp::Count, _) => count.to_string(),
                    (_, None) => "null".into(),
                    (_, Some(V::I(x))) => x.to_string(),
                    (_, Some(V::F(x))) => format!("{x:.6}"),
                })
                .collect();
            (k, cells)
        })
        .collect())
}

/// The key audit of a dedup or aggregate pipeline (`None`: an append pipeline), from the rows
/// the topic's committed records decode to.
pub(super) fn audit(config: &PipelineConfig, kafka_rows: &[RecordBatch], t: &Tables) -> Result<Option<KeyAudit>> {
    match (&config.aggregate, &config.dedup) {
        (Some(a), dedup) => aggregate(a, dedup.as_ref(), kafka_rows, &t.data_rows, Scope::of(config)).map(Some),
        (None, Some(d)) => dedup(d, kafka_rows, t, Scope::of(config)).map(Some),
        (None, None) => Ok(None),
    }
}

/// Every group's aggregates equal to a recomputation from the topic (deduplicated first when
/// the pipeline dedups).
fn aggregate(
    a: &AggregateConfig,
    dedup: Option<&crate::config::DedupConfig>,
    kafka_rows: &[RecordBatch],
    data_rows: &[RecordBatch],
    scope: Scope,
) -> Result<KeyAudit> {
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for b in kafka_rows {
        let mut keep = Vec::with_capacity(b.num_rows());
        for i in 0..b.num_rows() {
            keep.push(match dedup {
                Some(d) => seen.insert(scope.key(b, &d.key, i, false)?),
                None => true,
            });
        }
        rows.push(
            deltalake::arrow::compute::filter_record_batch(b, &BooleanArray::from(keep))
                .map_err(|e| Error::Sink(e.to_string()))?,
        );
    }
    let want = recompute(&rows, a, scope)?;
    let mut have: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut duplicated = 0;
    for b in data_rows {
        for i in 0..b.num_rows() {
            let vals = a.aggregates.iter().map(|s| Ok(cell(column(b, &s.column())?, i))).collect::<Result<Vec<_>>>()?;
            if have.insert(scope.key(b, &a.group_by, i, true)?, vals).is_some() {
                duplicated += 1;
            }
        }
    }
    let mut k = KeyAudit {
        kind: "aggregate".into(),
        expected: want.len() as u64,
        found: have.len() as u64,
        duplicated,
        ..Default::default()
    };
    for (g, vals) in &want {
        let problem = match have.get(g) {
            None => {
                k.missing += 1;
                format!("group {g} missing from the table (expected {vals:?})")
            }
            Some(h) if h != vals => {
                k.mismatched += 1;
                format!("group {g}: table {h:?}, recomputed {vals:?}")
            }
            _ => continue,
        };
        if k.samples.len() < 10 {
            k.samples.push(problem);
        }
    }
    Ok(k)
}

/// Every key of the topic in the data table once. Records dead-lettered (too late for the
/// watermark, or too far ahead) are accounted for by the dead-letter table.
fn dedup(d: &crate::config::DedupConfig, kafka_rows: &[RecordBatch], t: &Tables, scope: Scope) -> Result<KeyAudit> {
    let dead_set: HashSet<(String, i64)> =
        t.dead.iter().flat_map(|(tp, offs)| offs.iter().map(move |o| (tp.to_string(), *o))).collect();
    let mut want = HashSet::new();
    for b in kafka_rows {
        let (topic, part, off) = (column(b, TOPIC_COL)?, column(b, PARTITION_COL)?, column(b, OFFSET_COL)?);
        for i in 0..b.num_rows() {
            let tp = TopicPartition::new(&cell(topic, i), cell(part, i).parse().unwrap_or(-1));
            if dead_set.contains(&(tp.to_string(), cell(off, i).parse().unwrap_or(-1))) {
                continue;
            }
            want.insert(scope.key(b, &d.key, i, false)?);
        }
    }
    let mut have: HashMap<String, u64> = HashMap::new();
    for b in &t.data_rows {
        for i in 0..b.num_rows() {
            *have.entry(scope.key(b, &d.key, i, false)?).or_default() += 1;
        }
    }
    let mut k = KeyAudit { kind: "dedup".into(), expected: want.len() as u64, found: have.len() as u64, ..Default::default() };
    for (key, n) in &have {
        if *n > 1 {
            k.duplicated += n - 1;
            if k.samples.len() < 10 {
                k.samples.push(format!("key {key} is in the table {n} times"));
            }
        }
    }
    for key in want.iter().filter(|key| !have.contains_key(*key)) {
        k.missing += 1;
        if k.samples.len() < 10 {
            k.samples.push(format!("key {key} is in the topic but not in the table"));
        }
    }
    Ok(k)
}
