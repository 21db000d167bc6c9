//! Dedup by key within a bounded retention (event-time watermark or a number of epochs): the
//! epoch's keys sorted once, looked up in key order, the first record of each new key kept.

use super::*;

/// What the dedup retention keeps after an epoch: the watermark (event-time dedup) or the
/// oldest epoch whose keys are held (`max_age_epochs`).
pub(super) fn retention(d: &Dedup, epoch: u64, prev_watermark: Option<i64>, max_ms: Option<i64>, changes: &mut StateChanges) {
    match (d.watermark, d.max_age) {
        (Some(_), _) => {
            let w = match (prev_watermark, max_ms) {
                (p, Some(m)) => Some(p.unwrap_or(i64::MIN).max(m.saturating_sub(d.lateness_ms))),
                (p, None) => p,
            };
            changes.watermark = w;
            changes.dedup_expire_before = w;
        }
        (None, Some(age)) => {
            let before = epoch as i64 - age as i64 + 1;
            if before > 0 {
                changes.dedup_expire_before = Some(before);
            }
        }
        (None, None) => {}
    }
}

/// Every row's dedup key of an epoch, in one buffer (row i's key ends at `ends[i]`), its stamp,
/// and whether it is rejected (late or future), in canonical order over the epoch's batches.
pub(super) struct EpochKeys {
    keys: Vec<u8>,
    ends: Vec<usize>,
    stamps: Vec<Option<i64>>,
    rejected: Vec<bool>,
}

impl EpochKeys {
    pub(super) fn of(
        d: &Dedup,
        epoch: u64,
        rows: &[RecordBatch],
        prev_watermark: Option<i64>,
        late: &mut Vec<DeadLetter>,
    ) -> Result<EpochKeys> {
        let total: usize = rows.iter().map(RecordBatch::num_rows).sum();
        let mut k = EpochKeys {
            keys: Vec::with_capacity(total * 10),
            ends: Vec::with_capacity(total),
            stamps: Vec::with_capacity(total),
            rejected: Vec::with_capacity(total),
        };
        for batch in rows {
            let n = batch.num_rows();
            let batch_stamps = match d.watermark {
                Some(w) => event_ms(batch.column(w))?,
                None => vec![Some(epoch as i64); n],
            };
            // The Kafka timestamps bound future event times (event-time dedup only).
            let produced_ms = match batch.column_by_name(crate::model::TIMESTAMP_COL) {
                Some(c) if d.watermark.is_some() => event_ms(c)?,
                _ => vec![None; n],
            };
            let key_cols = KeyCol::of(batch, &d.key)?;
            for i in 0..n {
                for c in &key_cols {
                    c.encode(i, &mut k.keys);
                }
                k.ends.push(k.keys.len());
                let rejection = rejection(d, batch_stamps[i], prev_watermark, produced_ms[i]);
                k.rejected.push(rejection.is_some());
                if let Some((kind, reason)) = rejection {
                    late.push(DeadLetter::of_row(batch, i, kind, reason));
                }
            }
            k.stamps.extend(batch_stamps);
        }
        Ok(k)
    }

    pub(super) fn key(&self, i: usize) -> &[u8] {
        &self.keys[if i == 0 { 0 } else { self.ends[i - 1] }..self.ends[i]]
    }

    /// Rows sorted by key, ties in canonical order, and where each distinct key's run starts:
    /// equal keys are neighbours, the first of each run is the earliest record. One sort
    /// replaces a hash set of the epoch's keys and puts the lookups and the new keys in the
    /// order RocksDB reads and writes fastest. Rows are compared by their keys' first 16 bytes
    /// as one integer (zero-padded, so in byte order), and by the whole keys only where those
    /// are equal.
    pub(super) fn runs(&self) -> (Vec<(u128, u32)>, Vec<usize>) {
        let prefix = |i: usize| {
            let (k, mut b) = (self.key(i), [0u8; 16]);
            let n = k.len().min(16);
            b[..n].copy_from_slice(&k[..n]);
            u128::from_be_bytes(b)
        };
        let mut sorted: Vec<(u128, u32)> = (0..self.stamps.len()).map(|i| (prefix(i), i as u32)).collect();
        sorted.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| self.key(a.1 as usize).cmp(self.key(b.1 as usize))).then(a.1.cmp(&b.1))
        });
        let mut runs: Vec<usize> = Vec::new();
        for pos in 0..sorted.len() {
            let (p, i) = sorted[pos];
            if pos == 0 || sorted[pos - 1].0 != p || self.key(sorted[pos - 1].1 as usize) != self.key(i as usize) {
                runs.push(pos);
            }
        }
        (sorted, runs)
    }
}

/// A timestamp column's values in milliseconds (`None` where null).
pub(super) fn event_ms(c: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let col = c
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| Error::Sink(format!("a dedup timestamp column is {}, not a timestamp", c.data_type())))?;
    Ok((0..col.len()).map(|i| (!col.is_null(i)).then(|| col.value(i).div_euclid(1000))).collect())
}

/// Why event-time dedup rejects a row: no event time, an event time too far ahead of its Kafka
/// timestamp, or one older than the watermark.
pub(super) fn rejection(
    d: &Dedup,
    stamp: Option<i64>,
    watermark: Option<i64>,
    produced: Option<i64>,
) -> Option<(Rejection, String)> {
    match (d.watermark, stamp, watermark, produced) {
        (Some(_), None, _, _) => Some((Rejection::Late, "has no event time (null watermark column)".to_string())),
        (Some(_), Some(ts), _, Some(at)) if ts.saturating_sub(at) > d.max_future_ms => Some((
            Rejection::Future,
            format!(
                "event time {ts} ms is {} ms ahead of the record's Kafka timestamp {at} ms, more than dedup.max_future_ms = {}; it would push the watermark past every later record",
                ts.saturating_sub(at),
                d.max_future_ms
            ),
        )),
        (Some(_), Some(ts), Some(w), _) if ts < w => {
            Some((Rejection::Late, format!("event time {ts} ms is older than the watermark {w} ms; too late to deduplicate")))
        }
        _ => None,
    }
}

impl Processor {
    pub(super) fn dedup(
        &self,
        d: &Dedup,
        epoch: u64,
        rows: Vec<RecordBatch>,
        changes: &mut StateChanges,
        late: &mut Vec<DeadLetter>,
        duplicates: &mut u64,
    ) -> Result<Vec<RecordBatch>> {
        let prev_watermark = self.store.watermark()?;
        let keyed = EpochKeys::of(d, epoch, &rows, prev_watermark, late)?;
        let total = keyed.stamps.len();
        let (sorted, runs) = keyed.runs();
        let distinct: Vec<&[u8]> = runs.iter().map(|pos| keyed.key(sorted[*pos].1 as usize)).collect();
        let present = self.store.dedup_contains(&distinct, epoch)?;
        let mut keep = vec![false; total];
        for (r, start) in runs.iter().enumerate() {
            let end = runs.get(r + 1).copied().unwrap_or(total);
            // Rejected rows are neither kept nor duplicates; the first other one is kept unless
            // the key is held already.
            let mut first = !present[r];
            for i in sorted[*start..end].iter().map(|(_, i)| *i as usize).filter(|i| !keyed.rejected[*i]) {
                if first {
                    keep[i] = true;
                    first = false;
                    changes.dedup_insert.push((keyed.key(i).to_vec(), keyed.stamps[i].expect("a kept row has a stamp")));
                } else {
                    *duplicates += 1;
                }
            }
        }
        let max_ms = (0..total).filter(|i| keep[*i]).filter_map(|i| keyed.stamps[i]).max();
        let mut out = Vec::with_capacity(rows.len());
        let mut at = 0;
        for batch in rows {
            let n = batch.num_rows();
            let mask = BooleanArray::from(keep[at..at + n].to_vec());
            at += n;
            out.push(filter_record_batch(&batch, &mask).map_err(|e| Error::Sink(e.to_string()))?);
        }
        // The new keys are in key order (see `EpochKeys::runs`): RocksDB's memtable inserts walk
        // its skip list from where the previous one ended, and a bulk insert writes them as
        // they are.
        retention(d, epoch, prev_watermark, max_ms, changes);
        Ok(out)
    }
}
