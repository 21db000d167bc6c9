//! One partition against Kafka: every offset of the recorded range in the tables once, each row
//! equal to the decode of its record, each dead letter with its record's bytes.

use super::outputs::OutputTable;
use super::read::{row_text_masked, Tables};
use super::*;

/// The audit of `tp` (`None`: nothing to audit there), and the rows its records decode to now
/// (for the key audit of a dedup or aggregate pipeline).
pub(super) async fn audit(
    config: &PipelineConfig,
    t: &Tables,
    outputs: &mut [OutputTable],
    tp: TopicPartition,
) -> Result<Option<(PartitionAudit, Option<RecordBatch>)>> {
    let row_offsets = t.rows.get(&tp).cloned().unwrap_or_default();
    let dead_offsets = t.dead.get(&tp).cloned().unwrap_or_default();
    let Some((start, end)) = t.ranges.get(&tp).copied() else {
        return unread(t, tp, &row_offsets, &dead_offsets).await;
    };
    if t.gone.contains(&tp) {
        return Ok(Some((gone(tp, (start, end), &row_offsets, &dead_offsets), None)));
    }
    let (records, low) = t.records(&tp, start, end).await?;
    let expected: Vec<i64> = records.iter().map(|r| r.offset).collect();
    let now = Decided::of(t, &records).await?;
    for (output, kept) in outputs.iter_mut().zip(&now.fanned) {
        output.check(&tp, kept, &expected, (start, end))?;
    }
    let found = Found { tp: &tp, rows: &row_offsets, dead: &dead_offsets };
    let mismatches = mismatches(config, t, &found, &records, &now)?;
    let counts = offset_counts(&row_offsets, &dead_offsets);
    let expected_set: HashSet<i64> = expected.iter().copied().collect();
    // Offset-level completeness holds for append pipelines; dedup drops duplicates on purpose,
    // aggregation keeps groups and upserts the last change per key, so theirs is checked key by
    // key.
    let mut missing: Vec<i64> = if config.dedup.is_none() && config.upsert.is_none() && t.per_record {
        expected.iter().copied().filter(|o| !counts.contains_key(o) && !now.filtered.contains(o)).collect()
    } else {
        Vec::new()
    };
    missing.sort_unstable();
    let skipped = t.skipped.get(&tp).copied().unwrap_or(0);
    let audit = PartitionAudit {
        tp: Some(tp),
        start,
        end,
        expected: expected.len() as u64,
        rows: row_offsets.len() as u64,
        dead_lettered: dead_offsets.len() as u64,
        filtered: now.filtered.len() as u64,
        missing: missing.len() as u64,
        duplicated: duplicates(&counts),
        unexpected: counts.keys().filter(|o| !expected_set.contains(o) && (**o >= low || **o < start)).count() as u64,
        mismatched: mismatches.len() as u64,
        unverifiable: counts.keys().filter(|o| **o < low && **o >= start).count() as u64,
        unread: false,
        skipped,
        missing_sample: missing.into_iter().take(10).collect(),
        mismatch_sample: mismatches.into_iter().take(10).collect(),
    };
    let keyed = config.dedup.is_some() || config.aggregate.is_some() || config.upsert.is_some();
    Ok(Some((audit, keyed.then_some(now.main_rows))))
}

/// A partition the table recorded no progress for. If the topic holds records in it, the
/// pipeline never read them: all missing. Rows of it are unexpected either way.
async fn unread(
    t: &Tables,
    tp: TopicPartition,
    rows: &[i64],
    dead: &[i64],
) -> Result<Option<(PartitionAudit, Option<RecordBatch>)>> {
    let unread: Vec<i64> = if t.partitions.contains(&tp) && (t.epoch > 0 || !t.ranges.is_empty()) {
        t.records(&tp, 0, i64::MAX).await?.0.iter().map(|r| r.offset).collect()
    } else {
        Vec::new()
    };
    if unread.is_empty() && rows.is_empty() && dead.is_empty() {
        return Ok(None);
    }
    let audit = PartitionAudit {
        tp: Some(tp),
        expected: unread.len() as u64,
        rows: rows.len() as u64,
        dead_lettered: dead.len() as u64,
        missing: unread.len() as u64,
        unexpected: (rows.len() + dead.len()) as u64,
        unread: !unread.is_empty(),
        missing_sample: unread.into_iter().take(10).collect(),
        ..Default::default()
    };
    Ok(Some((audit, None)))
}

/// A partition of a matched topic the brokers no longer have: its records cannot be read, so
/// the rows within the range the table recorded are not judged (as records retention deleted);
/// duplicates and rows outside that range are still errors.
fn gone(tp: TopicPartition, (start, end): (i64, i64), rows: &[i64], dead: &[i64]) -> PartitionAudit {
    let counts = offset_counts(rows, dead);
    PartitionAudit {
        tp: Some(tp),
        start,
        end,
        rows: rows.len() as u64,
        dead_lettered: dead.len() as u64,
        duplicated: duplicates(&counts),
        unexpected: counts.keys().filter(|o| **o < start || **o >= end).count() as u64,
        unverifiable: counts.keys().filter(|o| **o >= start && **o < end).count() as u64,
        ..Default::default()
    }
}

/// How many times each offset is in the tables (data rows and dead letters).
fn offset_counts(rows: &[i64], dead: &[i64]) -> HashMap<i64, u64> {
    let mut counts: HashMap<i64, u64> = HashMap::new();
    for o in rows.iter().chain(dead) {
        *counts.entry(*o).or_default() += 1;
    }
    counts
}

/// The copies beyond the first of every offset.
fn duplicates(counts: &HashMap<i64, u64>) -> u64 {
    counts.values().filter(|n| **n > 1).map(|n| n - 1).sum()
}

/// What the tables hold of one partition.
struct Found<'a> {
    tp: &'a TopicPartition,
    rows: &'a [i64],
    dead: &'a [i64],
}

/// A partition's records decided again now, as the pipeline decides them.
struct Decided {
    /// Offsets `transform.where` drops.
    filtered: HashSet<i64>,
    /// Offsets that decode to a dead letter.
    dead: HashSet<i64>,
    /// Offsets that decode to a row (an output's failed expression makes it a dead letter).
    rows: HashSet<i64>,
    /// The data table's rows.
    main_rows: RecordBatch,
    /// Each output's rows.
    fanned: Vec<RecordBatch>,
}

impl Decided {
    async fn of(t: &Tables, records: &[Record]) -> Result<Decided> {
        t.decoder.prepare(records).await?;
        let decoded = t.decoder.decode(records);
        let filtered = decoded.filtered.iter().map(|(_, o)| *o).collect();
        let dead = decoded.dead.iter().map(|d| d.offset).collect();
        let mut rows: HashSet<i64> =
            crate::decode::offsets(&decoded.rows).map(|o| o.values().iter().copied().collect()).unwrap_or_default();
        // `sink.outputs`: the rows fan out as the sink fans them (a row an output fails on is a
        // dead letter, in no table).
        let (main_rows, fanned) = if t.fan_out.is_empty() {
            (decoded.rows, Vec::new())
        } else {
            let f = t.fan_out.fan_out(&decoded.rows);
            if let Some(offs) = crate::decode::offsets(&decoded.rows) {
                for (i, _) in &f.failed {
                    rows.remove(&offs.value(*i));
                }
            }
            (crate::decode::without_raw(&f.main), f.outputs)
        };
        Ok(Decided { filtered, dead, rows, main_rows, fanned })
    }
}

/// Content: each row equals the decode of its record; each dead letter carries its record's
/// bytes; nothing the filter drops is in a table; nothing was decided otherwise than its record
/// decides it now.
fn mismatches(config: &PipelineConfig, t: &Tables, found: &Found, records: &[Record], now: &Decided) -> Result<Vec<String>> {
    let mut mismatches = Vec::new();
    if t.per_record {
        let contents = t.row_content.get(found.tp);
        let main = &now.main_rows;
        let offs = crate::decode::offsets(main).ok_or_else(|| Error::Sink("decoded rows without offsets".into()))?;
        for i in 0..main.num_rows() {
            let Some((have, epoch)) = contents.and_then(|m| m.get(&offs.value(i))) else { continue };
            // Columns added after the row was written are not in it.
            let masked: Vec<&[String]> = t
                .added
                .iter()
                .filter(|(_, at)| at.before(*epoch as u64, found.tp, offs.value(i)))
                .map(|(p, _)| p.as_slice())
                .collect();
            let want = row_text_masked(main, &t.content_cols, i, &masked)?;
            if *have != want {
                mismatches.push(format!("row at offset {}: table ({have}), Kafka's record decodes to ({want})", offs.value(i)));
            }
        }
    }
    for o in found.rows.iter().chain(found.dead).filter(|o| now.filtered.contains(o)) {
        mismatches.push(format!("offset {o} is in a table, but transform.where drops its record"));
    }
    if let Some(bytes) = t.dead_bytes.get(found.tp) {
        for r in records {
            let Some(have) = bytes.get(&r.offset) else { continue };
            if have.0.as_deref() != r.key.as_deref() || have.1.as_deref() != r.payload.as_deref() {
                mismatches.push(format!("dead letter at offset {}: its key/value are not the record's bytes", r.offset));
            }
        }
    }
    // Decoded again now: a row whose record fails, or a dead letter whose record decodes to a
    // row (a schema id the registry did not know yet when the pipeline asked), means the epoch
    // was decided differently than its records decide it. (A dedup watermark's late and future
    // dead letters are rows that decode: not comparable here.)
    for o in found.rows.iter().filter(|o| now.dead.contains(o)) {
        mismatches.push(format!("row at offset {o}: Kafka's record does not decode now (a dead letter)"));
    }
    if config.dedup.as_ref().is_none_or(|d| d.watermark_field.is_none()) {
        for o in found.dead.iter().filter(|o| now.rows.contains(o)) {
            mismatches.push(format!("dead letter at offset {o}: Kafka's record decodes to a row now"));
        }
    }
    Ok(mismatches)
}
