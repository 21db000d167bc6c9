//! The one commit path: every write this project makes to a Delta table — an epoch's append or
//! bucket replacement, an output's and the dead letters' share of it, a group member's claim and
//! commit, a compaction, a table-property change — is committed by [`commit`], and only there.
//!
//! A write is a [`Writer`]: given the table as just read, it decides what it does now. The
//! function commits that decision on exactly the snapshot it was made on (no rebase: delta-rs's
//! conflict checker does not see a rewrite's `dataChange = false` removes, nor who wrote a
//! `txn`), and when anything else landed first, or the store's answer was lost, it reads the
//! table again and asks the writer again. So every attempt, the first and each retry, rests on
//! one decision taken from the table alone:
//!
//! - **held**: the table already holds this write — a commit of this very call landed (its
//!   answer was lost: the retried put found its own file), or the epoch is there with the cut
//!   this write records (a replay) — nothing is written;
//! - **fenced**: another writer holds what this write would claim (the epoch's `txn` by a
//!   commit not of this call, a partition claimed by another member) — the writer returns the
//!   error, nothing is written;
//! - **write**: the table moved on without touching what this write claims — commit the actions
//!   the writer recomputed against this snapshot (the buckets' current files, the offsets the
//!   table records now).
//!
//! **Architecture Invariant:** no commit to a Delta table bypasses [`commit`] (the creation of
//! an empty table excepted: [`create`], version 0 or nothing). Test:
//! `recovery::an_aggregate_pipeline_run_twice_on_one_table_commits_each_epoch_once`.
//!
//! A commit gives up after [`MAX_COMMIT`] from its start (its files were written then), so
//! `exactly vacuum` never deletes a file no version references while it is younger than
//! [`VACUUM_FLOOR`]: a file a commit in flight may still add is at most that old.

use std::time::{Duration, Instant};

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::DeltaOperation;
use deltalake::DeltaTable;
use serde_json::json;

use super::table::delta_err;
use crate::error::{Error, Result};
use crate::model::TableLocation;
use crate::testing::failpoint::FailPoints;

/// How long one commit may take from its start (its files written) to its landing, retries
/// included; past it, the commit gives up (the epoch fails and is cut again).
pub const MAX_COMMIT: Duration = Duration::from_secs(10 * 60);

/// The youngest a file no version references may be for `exactly vacuum` to delete it,
/// whatever the retention asked for: twice [`MAX_COMMIT`].
pub const VACUUM_FLOOR: Duration = Duration::from_secs(2 * 10 * 60);

/// How many times a commit reads the table again after an attempt that did not land (group
/// members committing one table every epoch lose races often; each attempt after the second
/// waits a random pause first, so they fall out of step).
const ATTEMPTS: u32 = 50;

/// The `exactly` commit-info key naming the call a commit belongs to.
const CALL_KEY: &str = "call";

/// What a write does, decided from the table as just read.
pub enum Decision {
    /// The table already holds this write: nothing is committed.
    Held,
    /// Commit this on the snapshot the decision was taken on.
    Write(Box<Proposal>),
}

/// One commit's content.
pub struct Proposal {
    /// Its actions (adds, removes, metadata).
    pub actions: Vec<Action>,
    /// Its `txn` actions (the pipeline's epoch, each partition's next offset, claims).
    pub txns: Vec<Transaction>,
    /// The `exactly` object of its commit info (pipeline, epoch, ranges, ...).
    pub info: serde_json::Value,
    /// The Delta operation it records.
    pub operation: DeltaOperation,
}

/// A write to one table. See the module docs. (Implemented by this crate's writes only: the
/// futures' `Send` is checked where they are used.)
#[allow(async_fn_in_trait)]
pub trait Writer {
    /// Decides what this write does on `table`, read at its latest version. `sent`: an earlier
    /// attempt of this call was sent and did not land (so an epoch found in the table now was
    /// committed by another writer, never by this call). Returns `Err` when fenced.
    async fn decide(&mut self, table: &DeltaTable, sent: bool) -> Result<Decision>;
}

/// What [`commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This call's commit landed at this version.
    Landed(i64),
    /// The table already held the write; nothing was committed.
    Held,
}

/// The properties of every commit: no post-commit Delta checkpoint or log cleanup (table
/// maintenance does those off the commit path), no rebase.
pub fn properties() -> CommitProperties {
    CommitProperties::default().with_create_checkpoint(false).with_cleanup_expired_logs(Some(false)).with_max_retries(0)
}

/// Commits `writer`'s write to `table` (see the module docs); `table` is left at the version
/// the decision was taken on, or the one that landed. `label` names the table in metrics;
/// `failpoint`, the fail point hit before each attempt is sent.
pub async fn commit(
    table: &mut DeltaTable,
    path: &TableLocation,
    label: &'static str,
    failpoint: Option<(&FailPoints, &str)>,
    writer: &mut impl Writer,
) -> Result<Outcome> {
    let call = format!("{:032x}", rand::random::<u128>());
    let started = Instant::now();
    let base = table.version();
    let mut sent = false;
    for attempt in 1..=ATTEMPTS {
        if attempt > 2 {
            let pause = rand::random_range(0..(20 * u64::from(attempt)).min(500));
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        if attempt > 1 {
            table.update_incremental(None).await.map_err(|e| delta_err(path, e))?;
            if sent {
                if let Some(version) = landed_since(table, path, base, &call).await? {
                    tracing::info!(table = %path.display(), version, "a commit whose answer was lost had landed");
                    return Ok(Outcome::Landed(version));
                }
            }
        }
        if started.elapsed() > MAX_COMMIT {
            return Err(delta_err(path, format!("a commit took longer than {} s; given up", MAX_COMMIT.as_secs())));
        }
        let proposal = match writer.decide(table, sent).await? {
            Decision::Held => return Ok(Outcome::Held),
            Decision::Write(p) => *p,
        };
        let mut info = proposal.info;
        if let Some(object) = info.as_object_mut() {
            object.insert(CALL_KEY.into(), json!(call));
        }
        let props = properties().with_application_transactions(proposal.txns).with_metadata([("exactly".to_string(), info)]);
        let snapshot = table.snapshot().map_err(|e| delta_err(path, e))?;
        if let Some((failpoints, name)) = failpoint {
            failpoints.hit(name).await?;
        }
        sent = true;
        let committed = CommitBuilder::from(props)
            .with_actions(proposal.actions)
            .build(Some(snapshot), table.log_store(), proposal.operation)
            .await;
        match committed {
            Ok(finalized) => {
                let version = finalized.version() as i64;
                table.state = Some(finalized.snapshot());
                return Ok(Outcome::Landed(version));
            }
            Err(e) if maybe_elsewhere(&e) => {
                metrics::counter!(crate::telemetry::metrics::DELTA_COMMIT_RETRIES, "table" => label).increment(1);
                tracing::debug!(table = %path.display(), attempt, error = %e, "the commit did not land; reading the table again");
            }
            Err(e) => return Err(delta_err(path, e)),
        }
    }
    Err(Error::Conflict {
        table: path.to_string(),
        detail: format!("{ATTEMPTS} commits in a row did not land (other writers landed first); nothing committed"),
    })
}

/// A commit error after which the table may have moved on, or this very commit may have landed
/// with its answer lost: read the table again and decide again.
fn maybe_elsewhere(e: &deltalake::DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    use deltalake::DeltaTableError as E;
    matches!(
        e,
        E::VersionAlreadyExists(_)
            | E::Transaction { source: TransactionError::MaxCommitAttempts(_) }
            | E::Transaction { source: TransactionError::VersionAlreadyExists(_) }
            | E::Transaction { source: TransactionError::ObjectStore { .. } }
            | E::ObjectStore { .. }
    )
}

/// The version after `base` (`None`: from 0) whose commit info names `call`, if one landed.
async fn landed_since(table: &DeltaTable, path: &TableLocation, base: Option<u64>, call: &str) -> Result<Option<i64>> {
    let Some(latest) = table.version() else { return Ok(None) };
    let store = table.log_store();
    for version in base.map_or(0, |b| b + 1)..=latest {
        let Some(bytes) = store.read_commit_entry(version).await.map_err(|e| delta_err(path, e))? else { continue };
        if bytes.windows(call.len()).any(|w| w == call.as_bytes()) {
            return Ok(Some(version as i64));
        }
    }
    Ok(None)
}

/// Creates an empty table at version 0, or loses the race to the writer that made it (then
/// `None`: load that one). delta-rs retries a create that lost the race for version 0 at
/// version 1: a second CREATE TABLE, with another table id, over the winner's table.
pub async fn create(
    builder: deltalake::operations::create::CreateBuilder,
) -> std::result::Result<DeltaTable, deltalake::DeltaTableError> {
    builder.with_commit_properties(properties()).await
}

/// A write of table properties: the metadata action setting those `want` names that the table
/// does not hold yet (held when it holds them all).
pub struct SetProperties {
    /// The properties.
    pub want: std::collections::HashMap<String, String>,
}

impl Writer for SetProperties {
    async fn decide(&mut self, table: &DeltaTable, _sent: bool) -> Result<Decision> {
        use deltalake::kernel::MetadataExt;
        let snapshot = table.snapshot().map_err(|e| Error::Sink(e.to_string()))?;
        let have = snapshot.metadata().configuration().clone();
        let stale: Vec<(&String, &String)> = self.want.iter().filter(|(k, v)| have.get(*k) != Some(*v)).collect();
        if stale.is_empty() {
            return Ok(Decision::Held);
        }
        let mut metadata = snapshot.metadata().clone();
        for (k, v) in &stale {
            metadata = metadata.add_config_key((*k).clone(), (*v).clone()).map_err(|e| Error::Sink(e.to_string()))?;
        }
        let properties = stale.iter().map(|(k, v)| ((*k).clone(), (*v).clone())).collect();
        Ok(Decision::Write(Box::new(Proposal {
            actions: vec![Action::Metadata(metadata)],
            txns: Vec::new(),
            info: json!({"properties": stale.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()}),
            operation: DeltaOperation::SetTableProperties { properties },
        })))
    }
}
