//! What a table records of a pipeline: who owns it, the txn app ids that carry each
//! partition's cut and the epoch, and the `exactly` commit info of an epoch's commit.

use deltalake::DeltaTable;

use super::table::delta_err;
use crate::error::Result;
use crate::model::{Offsets, TableLocation, TopicPartition};

/// Tables created by a pipeline say so in their description, which starts with this.
pub const OWNER_PREFIX: &str = "exactly pipeline '";

/// The description of a table created by `pipeline`.
pub fn owner_description(pipeline: &str, what: &str) -> String {
    format!("{OWNER_PREFIX}{pipeline}' ({what})")
}

/// The pipeline that created a table, from its description.
pub fn owner_of(description: Option<&str>) -> Option<&str> {
    description?.strip_prefix(OWNER_PREFIX)?.split('\'').next()
}

/// The txn appId holding a partition's next offset.
pub fn partition_app_id(pipeline: &str, tp: &TopicPartition) -> String {
    format!("{pipeline}-{}-{}", tp.topic, tp.partition)
}

/// The txn appId holding the offset a partition started at.
pub fn start_app_id(pipeline: &str, tp: &TopicPartition) -> String {
    format!("{pipeline}-{}-{}-start", tp.topic, tp.partition)
}

/// The txn appId of group mode's dead-letter mark for a partition: the data table's commit of a
/// range with dead letters sets it to the offset the dead-letter table must get past (see
/// ARCHITECTURE.md, "Group mode").
pub fn dead_mark_app_id(pipeline: &str, tp: &TopicPartition) -> String {
    format!("{pipeline}-{}-{}-dead", tp.topic, tp.partition)
}

/// The txn appId marking, in the data table, the last epoch that had dead letters: the
/// dead-letter table must hold that epoch (recovery replays it to a dead-letter table that
/// lacks it; see `runtime::recovery`).
pub fn dead_letters_app_id(pipeline: &str) -> String {
    format!("{pipeline}-dead-letters")
}

/// The txn appId of group mode's claim on a partition: its version is the fencing token of the
/// member that owns the partition (see ARCHITECTURE.md, "Group mode").
pub fn owner_app_id(pipeline: &str, tp: &TopicPartition) -> String {
    format!("{pipeline}-{}-{}-owner", tp.topic, tp.partition)
}

/// Group mode: the table property (`<prefix><topic>` = Kafka topic id) recording which topic the
/// table's offsets belong to; members keep no checkpoint of their own to hold it.
pub const TOPIC_ID_PROPERTY: &str = "exactly.topicId.";

/// The version of `app_id`'s txn in the table, if any.
pub async fn txn_version(table: &DeltaTable, path: &TableLocation, app_id: &str) -> Result<Option<i64>> {
    let snapshot = table.snapshot().map_err(|e| delta_err(path, e))?;
    snapshot.transaction_version(table.log_store().as_ref(), app_id).await.map_err(|e| delta_err(path, e))
}

/// The cut recorded in a table for `partitions` (partitions it never recorded are left out).
pub async fn recorded_cut(
    table: &DeltaTable,
    path: &TableLocation,
    pipeline: &str,
    partitions: &[TopicPartition],
) -> Result<Offsets> {
    let mut cut = Offsets::new();
    for tp in partitions {
        if let Some(v) = txn_version(table, path, &partition_app_id(pipeline, tp)).await? {
            cut.insert(tp.clone(), v);
        }
    }
    Ok(cut)
}

/// How many of a table's newest commits [`epoch_commit`] reads looking for an epoch's commit
/// (maintenance commits may follow it).
const EPOCH_SCAN: usize = 100;

/// What an epoch's commit recorded of itself in its `exactly` commit info.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCommit {
    /// Where the epoch started per partition (`None`: not recorded).
    pub starts: Option<Offsets>,
    /// What it meant (`plan::meaning`; `None`: not recorded).
    pub meaning: Option<crate::model::Meaning>,
}

/// The `exactly` commit info of epoch `epoch` of `pipeline` in `table` (`None`: not among the
/// newest commits).
pub async fn epoch_commit(table: &DeltaTable, path: &TableLocation, pipeline: &str, epoch: u64) -> Result<Option<EpochCommit>> {
    let Some(latest) = table.version() else { return Ok(None) };
    // Newest first, a few at a time: the epoch's commit is the newest but for maintenance
    // commits after it.
    let newest: Vec<u64> = (0..=latest).rev().take(EPOCH_SCAN).collect();
    for chunk in newest.chunks(4) {
        if let Some(found) = epoch_commit_among(super::table::commits(table, path, chunk.iter().copied()).await?, pipeline, epoch)
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// What the commits of `pipeline`'s epochs `from ..= to` in `table` recorded of their ranges,
/// oldest first: the log read newest first until epoch `from` (or an older one, or the start of
/// what log cleanup left). Epochs not found are left out.
pub async fn epoch_ranges(
    table: &DeltaTable,
    path: &TableLocation,
    pipeline: &str,
    from: u64,
    to: u64,
) -> Result<Vec<crate::model::EpochRanges>> {
    let Some(latest) = table.version() else { return Ok(Vec::new()) };
    let mut found = std::collections::BTreeMap::new();
    let newest: Vec<u64> = (0..=latest).rev().collect();
    'scan: for chunk in newest.chunks(16) {
        let commits = super::table::commits(table, path, chunk.iter().copied()).await?;
        if commits.is_empty() {
            break; // log cleanup removed everything older
        }
        for (_, actions) in commits {
            let Some(meta) = super::table::exactly_info(&actions) else { continue };
            if meta["pipeline"].as_str() != Some(pipeline) || meta.get("member").is_some() {
                continue;
            }
            let Some(epoch) = meta["epoch"].as_u64() else { continue };
            if (from..=to).contains(&epoch) {
                found.insert(epoch, ranges_of(meta));
            }
            if epoch <= from {
                break 'scan;
            }
        }
    }
    Ok(found.into_iter().map(|(epoch, ranges)| crate::model::EpochRanges { epoch, ranges }).collect())
}

/// An epoch commit's ranges, as `write::ranges_json` records them.
fn ranges_of(meta: &serde_json::Value) -> Vec<crate::model::PartitionRange> {
    meta["ranges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(crate::model::PartitionRange {
                tp: TopicPartition::new(r["topic"].as_str()?, r["partition"].as_i64()? as i32),
                start: r["start"].as_i64()?,
                end: r["end"].as_i64()?,
                records: r["records"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// The `exactly` commit info of `pipeline`'s epoch `epoch` among `commits`.
fn epoch_commit_among(commits: Vec<(u64, Vec<deltalake::kernel::Action>)>, pipeline: &str, epoch: u64) -> Option<EpochCommit> {
    for (_, actions) in commits {
        let Some(meta) = super::table::exactly_info(&actions) else { continue };
        if meta["pipeline"].as_str() != Some(pipeline) || meta["epoch"].as_u64() != Some(epoch) || meta.get("member").is_some() {
            continue;
        }
        let starts = meta["ranges"].is_array().then(|| ranges_of(meta).into_iter().map(|r| (r.tp, r.start)).collect());
        let meaning = serde_json::from_value(meta["meaning"].clone()).ok();
        return Some(EpochCommit { starts, meaning });
    }
    None
}
