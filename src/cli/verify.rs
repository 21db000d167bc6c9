//! `exactly verify`: the audit of a pipeline's tables against its topics; exit 0 only when
//! every committed offset is in the tables exactly once.

use std::path::Path;

use super::plan;

/// Audits the pipeline `config` names and prints the report.
pub(crate) async fn verify(config: &Path) -> anyhow::Result<()> {
    let plan = plan(config)?;
    let audit = exactly::verify::verify(&plan.config).await.map_err(|e| super::exit::Audit::NotRun(e.into()))?;
    print!("{}", audit.render());
    if audit.ok() {
        Ok(())
    } else {
        let keys = audit.keys.as_ref().map(|k| k.missing + k.duplicated + k.mismatched).unwrap_or(0);
        // The data table's partitions and every output's.
        let total = |f: fn(&exactly::verify::PartitionAudit) -> u64| {
            audit.total(f) + audit.outputs.iter().map(|o| o.total(f)).sum::<u64>()
        };
        Err(super::exit::Audit::Failed(format!(
                "verify: {} missing, {} duplicated, {} unexpected offsets, {} rows or dead letters unlike Kafka's record, {} key problems, {} commits by a fenced group member, {} epochs committed twice (in the data table and its outputs)",
                total(|p| p.missing),
                total(|p| p.duplicated),
                total(|p| p.unexpected),
                total(|p| p.mismatched),
                keys,
                audit.fencing.len(),
                audit.twice.len()
            ))
        .into())
    }
}
