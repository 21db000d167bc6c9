//! A `sink.outputs` table as the audit reads it, checked partition by partition beside the data
//! table.

use super::read::{active_files, contents, coordinates, read_columns, row_text_masked, FoundOffsets, RowContents};
use super::*;

/// An output table as the audit reads it.
pub(super) struct OutputTable {
    pub audit: OutputAudit,
    ranges: BTreeMap<TopicPartition, (i64, i64)>,
    content_cols: Vec<String>,
    rows: FoundOffsets,
    contents: RowContents,
}

impl OutputTable {
    pub(super) async fn read(
        config: &PipelineConfig,
        o: &crate::config::OutputConfig,
        schema: &deltalake::arrow::datatypes::Schema,
        partitions: &[TopicPartition],
    ) -> Result<OutputTable> {
        let location = config.output_path(o);
        let content_cols: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut ranges = BTreeMap::new();
        let (mut found, mut contents) = (FoundOffsets::new(), RowContents::new());
        if let Some(table) = load_table(location.clone()).await? {
            for tp in partitions {
                let end = txn_version(&table, &location, &partition_app_id(&config.id, tp)).await?;
                let start = txn_version(&table, &location, &start_app_id(&config.id, tp)).await?;
                if let (Some(start), Some(end)) = (start, end) {
                    ranges.insert(tp.clone(), (start, end));
                }
            }
            let mut names: Vec<&str> = content_cols.iter().map(String::as_str).collect();
            names.push(EPOCH_COL);
            let batches = read_columns(&table, &active_files(&table)?, &names).await?;
            found = coordinates(&batches)?;
            contents = self::contents(&batches, &content_cols)?;
        }
        let audit = OutputAudit { name: o.name.clone(), table: location, partitions: Vec::new() };
        Ok(OutputTable { audit, ranges, content_cols, rows: found, contents })
    }

    /// Checks partition `tp` against the main table's committed range `[main_start, main_end)`
    /// (an output is committed right after the main table in every epoch, so it must hold the
    /// same range — from where it started, if it was added later): `kept` are the output's rows
    /// of the records read for it, `read` those records' offsets.
    pub(super) fn check(
        &mut self,
        tp: &TopicPartition,
        kept: &RecordBatch,
        read: &[i64],
        (main_start, main_end): (i64, i64),
    ) -> Result<()> {
        let found = self.rows.get(tp).cloned().unwrap_or_default();
        let start = self.ranges.get(tp).map_or(main_start, |(s, _)| (*s).max(main_start));
        let end = main_end;
        let offs = crate::decode::offsets(kept).ok_or_else(|| Error::Sink("output rows without offsets".into()))?;
        let mut want: HashMap<i64, usize> = HashMap::new();
        for i in 0..kept.num_rows() {
            let o = offs.value(i);
            if o >= start && o < end {
                want.insert(o, i);
            }
        }
        let mut counts: HashMap<i64, u64> = HashMap::new();
        for o in &found {
            *counts.entry(*o).or_default() += 1;
        }
        let mut missing: Vec<i64> = want.keys().copied().filter(|o| !counts.contains_key(o)).collect();
        missing.sort_unstable();
        let mut mismatches = Vec::new();
        for (o, i) in &want {
            let Some((have, _)) = self.contents.get(tp).and_then(|m| m.get(o)) else { continue };
            let text = row_text_masked(kept, &self.content_cols, *i, &[])?;
            if *have != text {
                mismatches.push(format!("output row at offset {o}: table ({have}), Kafka's record gives ({text})"));
            }
        }
        self.audit.partitions.push(PartitionAudit {
            tp: Some(tp.clone()),
            start,
            end,
            expected: want.len() as u64,
            rows: found.len() as u64,
            filtered: (read.iter().filter(|o| **o >= start && **o < end).count() as u64).saturating_sub(want.len() as u64),
            missing: missing.len() as u64,
            duplicated: counts.values().filter(|n| **n > 1).map(|n| n - 1).sum(),
            unexpected: counts.keys().filter(|o| !want.contains_key(o)).count() as u64,
            mismatched: mismatches.len() as u64,
            missing_sample: missing.into_iter().take(10).collect(),
            mismatch_sample: mismatches.into_iter().take(10).collect(),
            ..Default::default()
        });
        Ok(())
    }
}
