//! The key audit of an upsert pipeline: the table equals, key for key, the state the topic's
//! committed records imply — each key's row is the row of its last change, no deleted key is
//! present — folded here again, independently of the pipeline's index.
//!
//! The fold applies each epoch's changes in (partition, offset) order, epoch after epoch (what
//! the pipeline does): the epochs' ranges are read from the commits the data table's log
//! still holds. A key whose changes all lie in one partition needs no epochs (its order is the
//! offsets'); a key changed in several partitions in records whose epoch the log no longer
//! says is counted as unordered, not judged. Value for value, each row the table holds equals
//! the decode of its record (the partition audit); here, that record must be the key's last
//! change.

use super::keys::key_of;
use super::read::{cell, column, Tables};
use super::*;

/// Per partition: the epochs' ranges `(start, end, epoch)`, as the data table's commits record
/// them.
pub(super) type EpochRanges = HashMap<TopicPartition, Vec<(i64, i64, u64)>>;

/// The ranges of `pipeline`'s epochs in the commits `table`'s log holds.
pub(super) async fn epoch_ranges(table: &DeltaTable, path: &TableLocation, pipeline: &str) -> Result<EpochRanges> {
    let mut out = EpochRanges::new();
    let Some(latest) = table.version() else { return Ok(out) };
    for (_, actions) in crate::sink::delta::table::commits(table, path, 0..=latest).await? {
        let Some(meta) = crate::sink::delta::table::exactly_info(&actions) else { continue };
        let (Some(epoch), Some(ranges)) = (meta["epoch"].as_u64(), meta["ranges"].as_array()) else { continue };
        if meta["pipeline"].as_str() != Some(pipeline) {
            continue;
        }
        for r in ranges {
            if let (Some(topic), Some(partition), Some(start), Some(end)) =
                (r["topic"].as_str(), r["partition"].as_i64(), r["start"].as_i64(), r["end"].as_i64())
            {
                out.entry(TopicPartition::new(topic, partition as i32)).or_default().push((start, end, epoch));
            }
        }
    }
    for ranges in out.values_mut() {
        ranges.sort_unstable();
        ranges.dedup();
    }
    Ok(out)
}

/// Where a row came from: topic, partition, offset.
type At = (String, i32, i64);

/// One change as the fold sees it.
struct Change {
    key: String,
    /// The epoch its record was committed in (`None`: the log no longer says).
    epoch: Option<u64>,
    partition: i32,
    offset: i64,
    topic: String,
    delete: bool,
    sequence: Option<i64>,
}

/// The committed changes, from the rows the topic's records decode to (per partition, with the
/// change columns), each with its epoch where the log still says.
fn changes_of(u: &crate::config::UpsertConfig, kafka_rows: &[RecordBatch], epochs: &EpochRanges) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    for b in kafka_rows {
        let (topic, part, off) = (column(b, TOPIC_COL)?, column(b, PARTITION_COL)?, column(b, OFFSET_COL)?);
        let delete = column(b, crate::model::CHANGE_DELETE_COL)?;
        let sequence = b.column_by_name(crate::model::CHANGE_SEQUENCE_COL);
        for i in 0..b.num_rows() {
            let tp = TopicPartition::new(&cell(topic, i), cell(part, i).parse().unwrap_or(-1));
            let offset: i64 = cell(off, i).parse().unwrap_or(-1);
            let epoch = epochs.get(&tp).and_then(|r| r.iter().find(|(s, e, _)| *s <= offset && offset < *e)).map(|r| r.2);
            changes.push(Change {
                key: key_of(b, &u.key, i)?,
                epoch,
                partition: tp.partition,
                offset,
                topic: tp.topic.to_string(),
                delete: cell(delete, i) == "true",
                sequence: sequence.filter(|s| !s.is_null(i)).map(|s| cell(s, i).parse().unwrap_or(0)),
            });
        }
    }
    Ok(changes)
}

/// The state `changes` leave per key: the coordinates of its row (`None`: deleted); and the
/// keys whose order is not known (changed in several partitions, some in records of an epoch
/// the log no longer says).
fn fold(mut changes: Vec<Change>) -> (HashMap<String, Option<At>>, HashSet<String>) {
    let mut partitions: HashMap<&str, HashSet<(&str, i32)>> = HashMap::new();
    for c in &changes {
        partitions.entry(&c.key).or_default().insert((&c.topic, c.partition));
    }
    let unordered: HashSet<String> =
        changes.iter().filter(|c| c.epoch.is_none() && partitions[c.key.as_str()].len() > 1).map(|c| c.key.clone()).collect();
    changes.sort_by(|a, b| (a.epoch, &a.topic, a.partition, a.offset).cmp(&(b.epoch, &b.topic, b.partition, b.offset)));
    let mut state: HashMap<String, (Option<At>, Option<i64>)> = HashMap::new();
    for c in changes {
        let (row, held) = state.entry(c.key).or_insert((None, None));
        if let (Some(s), Some(h)) = (c.sequence, *held) {
            if s < h {
                continue;
            }
        }
        *held = c.sequence.or(*held);
        *row = (!c.delete).then_some((c.topic, c.partition, c.offset));
    }
    (state.into_iter().map(|(k, (row, _))| (k, row)).collect(), unordered)
}

/// The upsert key audit: the table's rows per key against the fold of the topic's committed
/// changes.
pub(super) fn audit(
    u: &crate::config::UpsertConfig,
    kafka_rows: &[RecordBatch],
    t: &Tables,
    epochs: &EpochRanges,
) -> Result<KeyAudit> {
    let (state, unordered) = fold(changes_of(u, kafka_rows, epochs)?);
    // The table: each key's row(s).
    let mut have: HashMap<String, Vec<At>> = HashMap::new();
    for b in &t.data_rows {
        let (topic, part, off) = (column(b, TOPIC_COL)?, column(b, PARTITION_COL)?, column(b, OFFSET_COL)?);
        for i in 0..b.num_rows() {
            let at = (cell(topic, i), cell(part, i).parse().unwrap_or(-1), cell(off, i).parse().unwrap_or(-1));
            have.entry(key_of(b, &u.key, i)?).or_default().push(at);
        }
    }
    let live = state.values().filter(|row| row.is_some()).count() as u64;
    let mut k = KeyAudit { kind: "upsert".into(), expected: live, found: have.len() as u64, ..Default::default() };
    let note = |k: &mut KeyAudit, s: String| {
        if k.samples.len() < 10 {
            k.samples.push(s);
        }
    };
    for (key, rows) in &have {
        if rows.len() > 1 {
            k.duplicated += rows.len() as u64 - 1;
            note(&mut k, format!("key {key} is in the table {} times", rows.len()));
        }
        if unordered.contains(key) {
            k.unordered += 1;
            continue;
        }
        match state.get(key) {
            None => {
                k.unexpected += 1;
                note(&mut k, format!("key {key} is in the table but no committed record changes it"));
            }
            Some(None) => {
                k.deleted_present += 1;
                note(&mut k, format!("key {key} is in the table but its last change deletes it"));
            }
            Some(Some(want)) if !rows.contains(want) => {
                k.mismatched += 1;
                let (t, p, o) = &rows[0];
                note(
                    &mut k,
                    format!(
                        "key {key}: the table holds the change at {t}/{p}@{o}, its last change is at {}/{}@{}",
                        want.0, want.1, want.2
                    ),
                );
            }
            Some(Some(_)) => {}
        }
    }
    for key in
        state.iter().filter(|(key, row)| row.is_some() && !have.contains_key(*key) && !unordered.contains(*key)).map(|(k, _)| k)
    {
        k.missing += 1;
        note(&mut k, format!("key {key} is live in the topic but not in the table"));
    }
    Ok(k)
}
