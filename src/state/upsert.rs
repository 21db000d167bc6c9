//! Upserts (`[upsert]`): an epoch's changes folded into the table's current state per key.
//!
//! The index (the `upsert` column family) maps each key to where its current row lives — the
//! file of the epoch that wrote it and the row's position there — or, with
//! `upsert.sequence_by`, to its deletion and the sequence that deleted it. An epoch's changes
//! are read in canonical order (partition, then offset) and folded per key, starting from the
//! key's entry at the last committed epoch C:
//!
//! - a change whose sequence is below the one the key holds is superseded (ignored);
//! - otherwise it replaces what the key holds: an upsert makes it the key's row, a delete
//!   removes it (a tombstone, without a sequence, applies at its place in the order);
//! - the row the key held at C, if it is no longer the key's row, is marked deleted in its file
//!   (a deletion vector), and the key's new row goes into this epoch's file, whose id is the
//!   epoch number, at a position given by the canonical order of the rows it takes.
//!
//! So the output and the index changes depend only on the records and the state at C, like
//! every stateful stage: a replayed epoch writes the same file positions, and an index written
//! with the checkpoint after the commit always names rows the table holds.

use super::*;

/// A key's index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Entry {
    /// Its row is row `row` of the file of epoch `file`; `sequence`: the change that wrote it.
    Live { file: u64, row: u32, sequence: Option<i64> },
    /// Deleted by a change of this sequence (kept only with `sequence_by`).
    Deleted { sequence: i64 },
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(22);
        match self {
            Entry::Live { file, row, sequence } => {
                out.push(1);
                out.extend(file.to_be_bytes());
                out.extend(row.to_be_bytes());
                if let Some(s) = sequence {
                    out.extend(s.to_be_bytes());
                }
            }
            Entry::Deleted { sequence } => {
                out.push(2);
                out.extend(sequence.to_be_bytes());
            }
        }
        out
    }

    fn decode(b: &[u8]) -> Result<Entry> {
        let bad = || Error::Sink(format!("corrupt upsert index entry {b:?}"));
        let i64_at = |at: usize| b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(i64::from_be_bytes);
        match b.first() {
            Some(1) if b.len() == 13 || b.len() == 21 => Ok(Entry::Live {
                file: i64_at(1).ok_or_else(bad)? as u64,
                row: u32::from_be_bytes(b[9..13].try_into().map_err(|_| bad())?),
                sequence: if b.len() == 21 { i64_at(13) } else { None },
            }),
            Some(2) if b.len() == 9 => Ok(Entry::Deleted { sequence: i64_at(1).ok_or_else(bad)? }),
            _ => Err(bad()),
        }
    }

    fn sequence(&self) -> Option<i64> {
        match self {
            Entry::Live { sequence, .. } => *sequence,
            Entry::Deleted { sequence } => Some(*sequence),
        }
    }
}

/// What the upsert stage made of an epoch.
pub(super) struct Folded {
    pub(super) output: Output,
    /// Changes ignored: older (by sequence) than what their key holds.
    pub(super) superseded: u64,
}

/// The state a key's changes leave, as the fold goes.
#[derive(Clone, Copy)]
enum Now {
    /// What the index holds (at C).
    Stored(Option<Entry>),
    /// Row `i` of the epoch's rows (an upsert) with its sequence.
    Row(usize, Option<i64>),
    /// Deleted, with the sequence of the delete (or the one it replaced).
    Gone(Option<i64>),
}

impl Now {
    fn sequence(&self) -> Option<i64> {
        match self {
            Now::Stored(e) => e.and_then(|e| e.sequence()),
            Now::Row(_, s) | Now::Gone(s) => *s,
        }
    }
}

/// An epoch's changes in canonical order: each row's key (in one buffer: row i's ends at
/// `ends[i]`), whether it deletes, its sequence.
struct EpochChanges {
    keys: Vec<u8>,
    ends: Vec<usize>,
    deletes: Vec<bool>,
    sequences: Vec<Option<i64>>,
}

impl EpochChanges {
    fn of(u: &Upsert, rows: &[RecordBatch]) -> Result<EpochChanges> {
        let total: usize = rows.iter().map(RecordBatch::num_rows).sum();
        let mut c = EpochChanges {
            keys: Vec::with_capacity(total * 10),
            ends: Vec::with_capacity(total),
            deletes: Vec::with_capacity(total),
            sequences: Vec::with_capacity(total),
        };
        for batch in rows {
            let key_cols = KeyCol::of(batch, &u.key)?;
            let delete = batch.column(u.delete).as_boolean();
            let sequence = u.sequence.map(|c| batch.column(c).as_primitive::<deltalake::arrow::datatypes::Int64Type>());
            for i in 0..batch.num_rows() {
                for col in &key_cols {
                    col.encode(i, &mut c.keys);
                }
                c.ends.push(c.keys.len());
                c.deletes.push(delete.value(i));
                c.sequences.push(sequence.and_then(|s| s.is_valid(i).then(|| s.value(i))));
            }
        }
        Ok(c)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn key(&self, i: usize) -> &[u8] {
        &self.keys[if i == 0 { 0 } else { self.ends[i - 1] }..self.ends[i]]
    }

    /// Rows sorted by key, each key's rows in canonical order, and where each key's run starts.
    fn runs(&self) -> (Vec<u32>, Vec<usize>) {
        let mut sorted: Vec<u32> = (0..self.len() as u32).collect();
        sorted.sort_unstable_by(|a, b| self.key(*a as usize).cmp(self.key(*b as usize)).then(a.cmp(b)));
        let runs =
            (0..sorted.len()).filter(|p| *p == 0 || self.key(sorted[p - 1] as usize) != self.key(sorted[*p] as usize)).collect();
        (sorted, runs)
    }

    /// What one key's changes (rows `run`, in canonical order) leave of what it held at C, and
    /// how many of them were superseded. A pure function of its inputs.
    fn fold(&self, before: Option<Entry>, run: &[u32]) -> (Now, u64) {
        let mut now = Now::Stored(before);
        let mut superseded = 0;
        for i in run.iter().map(|i| *i as usize) {
            let held = now.sequence();
            if let (Some(s), Some(h)) = (self.sequences[i], held) {
                if s < h {
                    superseded += 1;
                    continue;
                }
            }
            let sequence = self.sequences[i].or(held);
            now = if self.deletes[i] { Now::Gone(sequence) } else { Now::Row(i, sequence) };
        }
        (now, superseded)
    }
}

impl Processor {
    /// Folds an epoch's changes into the table's state: the rows it writes, the rows of earlier
    /// files it deletes, the index changes. Blocking: reads RocksDB.
    pub(super) fn upsert(&self, u: &Upsert, epoch: u64, rows: Vec<RecordBatch>, changes: &mut StateChanges) -> Result<Folded> {
        let epoch_changes = EpochChanges::of(u, &rows)?;
        let total = epoch_changes.len();
        let (sorted, runs) = epoch_changes.runs();
        let distinct: Vec<&[u8]> = runs.iter().map(|p| epoch_changes.key(sorted[*p] as usize)).collect();
        let stored = self.store.upsert_get(&distinct)?;
        let mut superseded = 0u64;
        let mut keep = vec![false; total];
        let mut deleted: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        // Where each key ends up (the row kept: its position is known once all are), and
        // whether it held a row at C.
        let mut placed: Vec<(usize, Now, bool)> = Vec::with_capacity(runs.len());
        for (r, start) in runs.iter().enumerate() {
            let end = runs.get(r + 1).copied().unwrap_or(total);
            let before = stored[r].as_deref().map(Entry::decode).transpose()?;
            let (now, dropped) = epoch_changes.fold(before, &sorted[*start..end]);
            superseded += dropped;
            if let Now::Stored(_) = now {
                continue;
            }
            if let Some(Entry::Live { file, row, .. }) = before {
                deleted.entry(file).or_default().push(row);
            }
            if let Now::Row(i, _) = now {
                keep[i] = true;
            }
            placed.push((r, now, matches!(before, Some(Entry::Live { .. }))));
        }
        // The kept rows take positions in canonical order.
        let mut position = vec![0u32; total];
        for (next, i) in (0..total).filter(|i| keep[*i]).enumerate() {
            position[i] = next as u32;
        }
        for (r, now, was_live) in placed {
            let k = distinct[r].to_vec();
            match now {
                Now::Row(i, sequence) => {
                    changes.upsert_put.push((k, Entry::Live { file: epoch, row: position[i], sequence }.encode()));
                    changes.upsert_rows += i64::from(!was_live);
                }
                Now::Gone(sequence) => {
                    match (u.sequence, sequence) {
                        (Some(_), Some(sequence)) => changes.upsert_put.push((k, Entry::Deleted { sequence }.encode())),
                        _ if stored[r].is_some() => changes.upsert_delete.push(k),
                        _ => {}
                    }
                    changes.upsert_rows -= i64::from(was_live);
                }
                Now::Stored(_) => unreachable!("unchanged keys are not placed"),
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        let mut at = 0;
        for batch in rows {
            let n = batch.num_rows();
            let kept = filter_record_batch(&batch, &BooleanArray::from(keep[at..at + n].to_vec()))
                .map_err(|e| Error::Sink(e.to_string()))?;
            at += n;
            if kept.num_rows() > 0 {
                out.push(u.table_rows(&kept)?);
            }
        }
        let deletes = deleted
            .into_iter()
            .map(|(file, mut rows)| {
                rows.sort_unstable();
                (file, rows)
            })
            .collect();
        Ok(Folded { output: Output::Upsert { rows: out, deletes }, superseded })
    }
}

impl Upsert {
    /// A decoded batch's rows as the table holds them: without the change columns, with the
    /// declared nullability.
    fn table_rows(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = self.columns.iter().map(|c| batch.column(*c).clone()).collect();
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::Sink(format!("an upserted row does not fit the table's columns: {e}")))
    }
}

/// Rows an epoch's commit moved to another file (an upsert table's compaction, see
/// `sink::delta::purge`): the key columns (in `upsert.key` order) of every row of file `file`,
/// in row order. Each key's current row is now row i of that file.
#[derive(Debug, Clone)]
pub struct Relocated {
    /// The id of the file the rows moved to.
    pub file: u64,
    /// Their key columns, in row order.
    pub keys: Vec<RecordBatch>,
    /// Whether index entries carry a sequence (`upsert.sequence_by`), which the new ones keep.
    pub sequenced: bool,
}

impl CheckpointStore {
    /// Adds to `changes` the index entries of the rows `moved` names: each key's entry keeps its
    /// sequence and now names its new place. With sequences, the keys must hold live rows in the
    /// index (their old places, read for their sequences): anything else means the index and
    /// the table disagree. Blocking.
    pub fn relocate(&self, moved: &Relocated, changes: &mut StateChanges) -> Result<()> {
        let total: usize = moved.keys.iter().map(RecordBatch::num_rows).sum();
        let mut keys: Vec<(Vec<u8>, u32)> = Vec::with_capacity(total);
        for batch in &moved.keys {
            let cols: Vec<usize> = (0..batch.num_columns()).collect();
            let key_cols = KeyCol::of(batch, &cols)?;
            for i in 0..batch.num_rows() {
                let mut k = Vec::new();
                for col in &key_cols {
                    col.encode(i, &mut k);
                }
                keys.push((k, keys.len() as u32));
            }
        }
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(Error::Recovery(format!("file {} holds a key twice; the index and the table disagree", moved.file)));
        }
        // The epoch's own changes never name a moved row: a key it changed had its row marked
        // deleted (so not moved) or holds it in the epoch's new file.
        let changed: HashSet<&[u8]> =
            changes.upsert_put.iter().map(|(k, _)| k.as_slice()).chain(changes.upsert_delete.iter().map(Vec::as_slice)).collect();
        if keys.iter().any(|(k, _)| changed.contains(k.as_slice())) {
            return Err(Error::Recovery(format!("a row moved to file {} has a key the epoch changed", moved.file)));
        }
        if !moved.sequenced {
            // Nothing of the old entries survives the move: no need to read them.
            let entry = |row| Entry::Live { file: moved.file, row, sequence: None }.encode();
            changes.upsert_put.extend(keys.into_iter().map(|(k, row)| (k, entry(row))));
            return Ok(());
        }
        let refs: Vec<&[u8]> = keys.iter().map(|(k, _)| k.as_slice()).collect();
        let stored = self.upsert_get(&refs)?;
        let mut puts = Vec::with_capacity(stored.len());
        for ((key, row), entry) in keys.into_iter().zip(stored) {
            match entry.as_deref().map(Entry::decode).transpose()? {
                Some(Entry::Live { sequence, .. }) => puts.push((key, Entry::Live { file: moved.file, row, sequence }.encode())),
                _ => {
                    return Err(Error::Recovery(format!(
                        "a row moved to file {} has a key the index holds no row for; the index and the table disagree",
                        moved.file
                    )))
                }
            }
        }
        changes.upsert_put.extend(puts);
        Ok(())
    }
}
