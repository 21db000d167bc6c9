//! The log's rules: each epoch of the pipeline committed once per table, and in group mode no
//! commit by a member that had lost the partition.

use super::*;

/// How many of a table's newest commits the audit reads for epochs committed twice.
pub const EPOCH_SCAN: u64 = 2_000;

/// Epochs of `pipeline` that more than one commit of `table` (among its newest [`EPOCH_SCAN`])
/// recorded, as "<table>: epoch E committed N times".
pub(super) async fn epochs_committed_twice(table: &DeltaTable, path: &TableLocation, pipeline: &str) -> Result<Vec<String>> {
    let Some(latest) = table.version() else { return Ok(Vec::new()) };
    let versions = latest.saturating_sub(EPOCH_SCAN - 1)..=latest;
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, actions) in crate::sink::delta::table::commits(table, path, versions).await? {
        for v in crate::sink::delta::table::txn_versions(&actions, pipeline) {
            *counts.entry(v).or_default() += 1;
        }
    }
    Ok(counts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(e, n)| format!("{}: epoch {e} committed {n} times", path.display()))
        .collect())
}

/// One commit of a group member, from the `exactly` metadata it carries in the Delta log.
#[derive(Debug, Clone)]
pub struct MemberCommit {
    /// Table version.
    pub version: i64,
    /// The member (`host-pid`).
    pub member: String,
    /// Partitions this commit claims (`topic/partition`).
    pub claim: Vec<String>,
    /// The ranges this commit writes: partition, start, end, records.
    pub ranges: Vec<(String, i64, i64, u64)>,
}

/// The commits of group members the table's log still holds, oldest first.
pub async fn member_commits(table: &DeltaTable) -> Result<Vec<MemberCommit>> {
    use futures::TryStreamExt;
    let newest = table.version().unwrap_or(0);
    let infos: Vec<deltalake::kernel::CommitInfo> =
        table.history(None).try_collect().await.map_err(|e| Error::Sink(format!("reading the table's history: {e}")))?;
    let mut out = Vec::new();
    // Newest first, one per commit still in the log.
    for (i, info) in infos.iter().enumerate() {
        let Some(meta) = info.info.get("exactly") else { continue };
        let Some(member) = meta["member"].as_str() else { continue };
        let claim =
            meta["claim"].as_array().map(|a| a.iter().filter_map(|p| p.as_str().map(String::from)).collect()).unwrap_or_default();
        let ranges = meta["ranges"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            format!("{}/{}", r["topic"].as_str().unwrap_or("?"), r["partition"]),
                            r["start"].as_i64().unwrap_or(-1),
                            r["end"].as_i64().unwrap_or(-1),
                            r["records"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(MemberCommit { version: newest as i64 - i as i64, member: member.to_string(), claim, ranges });
    }
    out.reverse();
    Ok(out)
}

/// The fencing rule, checked on the log: every commit of a partition comes from the member that
/// claimed it last. Returns the data commits per member and the commits that broke the rule.
pub fn check_fencing(commits: &[MemberCommit]) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut claimant: BTreeMap<&str, &str> = BTreeMap::new();
    let mut members: BTreeMap<String, u64> = BTreeMap::new();
    let mut broken = Vec::new();
    for c in commits {
        for p in &c.claim {
            claimant.insert(p, &c.member);
        }
        for (p, start, end, _) in &c.ranges {
            match claimant.get(p.as_str()) {
                Some(owner) if *owner == c.member => {}
                // The claim fell out of the log (cleaned up): nothing to check against.
                None => {}
                Some(owner) => broken.push(format!(
                    "version {}: {} committed {p} [{start}, {end}) after {owner} had claimed it",
                    c.version, c.member
                )),
            }
        }
        if !c.ranges.is_empty() {
            *members.entry(c.member.clone()).or_default() += 1;
        }
    }
    (members, broken)
}
