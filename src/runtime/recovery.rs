//! Recovery: which epoch is committed, decided once, from what was read.
//!
//! An epoch is committed to several tables one after the other — the data table first, then each
//! `sink.outputs` table, then the dead-letter table — and then to the checkpoint. A crash can
//! fall between any two of those. [`decide`] takes the checkpoint and every table's record (its
//! pipeline `txn` version, its recorded cut; the data table's mark of the last epoch that had
//! dead letters) and returns what the actors do: resume after the checkpoint, or replay one
//! epoch — the data table's — to exactly the tables that lack it; or refuses in one line. It does
//! no I/O; the supervisor reads (`supervisor/recover.rs`), calls it, writes a rebuilt checkpoint
//! and carries the decision out.
//!
//! The rule:
//! - the data table commits first, so it holds the newest epoch V; a table ahead of it means the
//!   data table was deleted or restored from an older copy: refused;
//! - every output holds V or V − 1 (or nothing yet: an output added since, or one whose first
//!   epoch the crash cut off); the dead-letter table holds at least the data table's dead-letter
//!   mark (V − 1 or older marks must be held already);
//! - with a checkpoint at C: V = C resumes (every table must hold what C says), V = C + 1
//!   replays V, V > C + 1 catches up: epochs C + 1 .. V − 1 re-run through the state stage with
//!   the cuts their commits recorded, writing nothing (every table holds them), then V is
//!   replayed — a checkpoint restored from an older copy (`checkpoint.remote`: persisted every
//!   few epochs) becomes the table's. The supervisor checks that the recorded cuts link to the
//!   checkpoint's (else it belongs to another table). V < C is refused;
//! - without one (or with `--reset-checkpoint-from-table`), a stateless pipeline rebuilds it
//!   from the tables at the oldest epoch any of them lacks: V when all hold V, else V − 1 with
//!   V's start offsets (read from the data table's commit of V), and replays V — so the normal
//!   replay repairs the laggards. A stateful pipeline cannot rebuild its keyed state: refused.
//!
//! An epoch also remembers what it meant: its data-table commit records its [`Meaning`] (`plan::meaning`), a
//! fingerprint of everything that decides its rows (the decoding and its reader schema, the
//! transform, the outputs). A replay under another meaning is refused, naming what changed: it
//! would split one epoch's records between tables written two ways.
//!
//! **Architecture Invariant:** no table is ever left without an epoch another table of the
//! pipeline got: tests `recovery::a_checkpoint_rebuilt_after_a_crash_between_tables_repairs_the_laggards`
//! and `recovery::a_deleted_main_table_beside_outputs_is_refused`; the decision table is tested
//! below.

use crate::model::{Meaning, Offsets, Recorded, TopicPartition};

/// What the checkpoint says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its epoch.
    pub epoch: u64,
    /// Its cut.
    pub offsets: Offsets,
}

/// When a checkpoint may be rebuilt from the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// Never.
    Never,
    /// When there is none (`checkpoint.rebuild_from_table`).
    IfMissing,
    /// Now, whatever there is (`--reset-checkpoint-from-table`).
    Now,
}

/// What recovery reads.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The pipeline's id.
    pub pipeline: &'a str,
    /// The checkpoint directory (for messages).
    pub dir: &'a str,
    /// The checkpoint, if any.
    pub checkpoint: Option<Found>,
    /// The tables' records (`None`: the sink is not durable).
    pub tables: Option<&'a Recorded>,
    /// Whether the checkpoint may be rebuilt.
    pub rebuild: Rebuild,
    /// The keyed state the checkpoint holds (`None`: a stateless pipeline), e.g. "dedup keys".
    pub state: Option<&'static str>,
    /// What the pipeline's epochs mean now (the plan's [`Meaning`]).
    pub meaning: &'a Meaning,
}

/// What the actors do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Resume after the checkpoint at `epoch` (`rebuilt`: write it first).
    Resume {
        /// The checkpoint's epoch.
        epoch: u64,
        /// Its cut.
        offsets: Offsets,
        /// Rebuilt from the tables: the checkpoint must be written.
        rebuilt: bool,
    },
    /// From the checkpoint at `epoch`, re-run epochs `epoch + 1 .. through` through the state
    /// stage (every table holds them), then replay epoch `through`, cut at `ends`, to the tables
    /// that lack it.
    Replay {
        /// The checkpoint's epoch.
        epoch: u64,
        /// Its cut.
        offsets: Offsets,
        /// The data table's epoch V, the last one replayed.
        through: u64,
        /// V's cut, as the data table recorded it.
        ends: Offsets,
        /// Rebuilt from the tables: the checkpoint must be written.
        rebuilt: bool,
    },
}

/// Decides recovery from what was read. See the module docs. `Err`: the one line refusing.
pub fn decide(i: &Inputs) -> Result<Start, String> {
    let plan = resume_or_replay(i)?;
    if let (Start::Replay { through, .. }, Some(t)) = (&plan, i.tables) {
        let changed: Vec<&str> = t
            .meaning
            .iter()
            .flatten()
            .filter(|(part, was)| i.meaning.get(*part).is_some_and(|now| now != *was))
            .map(|(part, _)| part.as_str())
            .collect();
        if !changed.is_empty() {
            return Err(format!(
                "epoch {} must be replayed to tables that lack it, but the config's {} changed since it was written: a replay would write one epoch two ways. Run once with the config it was written with (the replay completes the epoch), then change it",
                through,
                changed.join(" and ")
            ));
        }
    }
    Ok(plan)
}

fn resume_or_replay(i: &Inputs) -> Result<Start, String> {
    let (id, dir) = (i.pipeline, i.dir);
    let Some(t) = i.tables else {
        let found = i.checkpoint.clone().unwrap_or(Found { epoch: 0, offsets: Offsets::new() });
        return Ok(Start::Resume { epoch: found.epoch, offsets: found.offsets, rebuilt: false });
    };
    if t.group_written {
        return Err(format!(
            "the table at {} was written in group mode (it records partitions' offsets but no epoch of pipeline '{id}'); run this pipeline with its source.group_id",
            t.data.name
        ));
    }
    let v = t.data.epoch;
    if let Some(ahead) = t.outputs.iter().chain([&t.dead]).find(|o| o.epoch > v) {
        return Err(format!(
            "{} holds epoch {} of pipeline '{id}' but the data table {} holds {}: the data table was deleted or restored from an older copy (restore it, or start over by deleting every table of the pipeline and the checkpoint)",
            ahead.name,
            ahead.epoch,
            t.data.name,
            if v == 0 { "none".to_string() } else { v.to_string() }
        ));
    }
    let rebuild = match (i.rebuild, &i.checkpoint) {
        (Rebuild::Now, _) => true,
        (Rebuild::IfMissing, None) => v > 0,
        _ => false,
    };
    let way_out = match i.state {
        Some(_) => "(the checkpoint holds keyed state the table cannot rebuild: restore the checkpoint directory that belongs to the table, or start over by deleting both the table and the checkpoint)",
        None => "(to resume after the table's last epoch, run once with --reset-checkpoint-from-table; to start over, delete both the table and the checkpoint)",
    };
    if rebuild {
        return rebuilt(i, t);
    }
    let Some(cp) = &i.checkpoint else {
        return match v {
            0 => Ok(Start::Resume { epoch: 0, offsets: Offsets::new(), rebuilt: false }),
            _ => {
                Err(format!("the table already holds epoch {v} of pipeline '{id}' but there is no checkpoint in {dir} {way_out}"))
            }
        };
    };
    let c = cp.epoch;
    match v {
        _ if v == c && v == 0 => Ok(Start::Resume { epoch: 0, offsets: cp.offsets.clone(), rebuilt: false }),
        _ if v == c => {
            // The table's offsets moved past the checkpoint's without a new epoch: members of a
            // group wrote it since (they record offsets, not epochs).
            if let Some((tp, o)) = t.data.cut.iter().find(|(tp, o)| cp.offsets.get(*tp).is_some_and(|at| at != *o)) {
                return Err(format!(
                    "the table records next offset {o} for {tp} but checkpoint {dir} (epoch {c}) says {}: the table was written in group mode since; run this pipeline with its source.group_id",
                    cp.offsets[tp]
                ));
            }
            laggards(t, c, c)?;
            Ok(Start::Resume { epoch: c, offsets: cp.offsets.clone(), rebuilt: false })
        }
        _ if v == c + 1 => {
            laggards(t, c, v)?;
            Ok(Start::Replay { epoch: c, offsets: cp.offsets.clone(), through: v, ends: t.data.cut.clone(), rebuilt: false })
        }
        _ if v > c + 1 => {
            laggards(t, v - 1, v)?;
            Ok(Start::Replay { epoch: c, offsets: cp.offsets.clone(), through: v, ends: t.data.cut.clone(), rebuilt: false })
        }
        0 => Err(format!(
            "checkpoint {dir} is at epoch {c} but the table has no commit of pipeline '{id}': it was deleted or replaced {way_out}"
        )),
        _ => Err(format!(
            "checkpoint {dir} (epoch {c}) is ahead of the table (epoch {v}): the table was restored from an older copy {way_out}"
        )),
    }
}

/// Checks that every table holds what a checkpoint at `held` says was committed, when the data
/// table is at `v` (`held` or `held + 1`): outputs that ever committed hold `held`, and the
/// dead-letter table holds every marked epoch up to `held`.
fn laggards(t: &Recorded, held: u64, v: u64) -> Result<(), String> {
    if let Some(o) = t.outputs.iter().find(|o| o.epoch > 0 && o.epoch < held) {
        return Err(format!(
            "{} holds epoch {} but epoch {held} was committed to every table: it was restored from an older copy (restore it, or delete it to start it over)",
            o.name, o.epoch
        ));
    }
    let must = if t.dead_mark == v && v > held { 0 } else { t.dead_mark.min(held) };
    if t.dead.epoch < must {
        return Err(format!(
            "the dead-letter table {} holds epoch {} but epoch {must} wrote dead letters to it: it was deleted or restored from an older copy",
            t.dead.name,
            if t.dead.epoch == 0 { "none".to_string() } else { t.dead.epoch.to_string() }
        ));
    }
    Ok(())
}

/// A checkpoint rebuilt from the tables: at the data table's epoch V when every table holds it,
/// else at V − 1 (V's start offsets) with V to replay.
fn rebuilt(i: &Inputs, t: &Recorded) -> Result<Start, String> {
    let v = t.data.epoch;
    if v == 0 {
        return Err("--reset-checkpoint-from-table: the table holds no epoch of this pipeline to reset from".into());
    }
    let in_step = i.checkpoint.as_ref().is_some_and(|cp| cp.epoch == v);
    if let (Some(what), false) = (i.state, in_step) {
        // The table records offsets, not dedup keys or running totals: a checkpoint rebuilt
        // from offsets alone would re-emit keys already written, or restart every total from
        // zero and overwrite the table's.
        return Err(format!(
            "--reset-checkpoint-from-table cannot rebuild pipeline '{}''s {what}: the table records offsets, not that state (resuming from offsets alone would duplicate keys or reset totals); restore the checkpoint directory {} that belongs to the table at epoch {v}, or start over by deleting both the table and the checkpoint",
            i.pipeline, i.dir
        ));
    }
    // Tables that lack V (an output at V − 1, or never committed; a dead-letter table the data
    // table marked for V) get it by a replay; anything older cannot be repaired.
    let lacking = t.outputs.iter().any(|o| o.epoch < v) || (t.dead_mark == v && t.dead.epoch < v);
    laggards(t, v - 1, v)?;
    if !lacking {
        return Ok(Start::Resume { epoch: v, offsets: t.data.cut.clone(), rebuilt: true });
    }
    if i.state.is_some() {
        return Err(format!(
            "tables of pipeline '{}' lack epoch {v}, which a replay would repair from the checkpoint at epoch {}, but the checkpoint holds keyed state the table cannot rebuild: restore the checkpoint directory {}",
            i.pipeline,
            v - 1,
            i.dir
        ));
    }
    let starts = t.starts.as_ref().ok_or_else(|| {
        format!(
            "tables of pipeline '{}' lack epoch {v} but the data table {} does not say where it started: restore the checkpoint directory {}",
            i.pipeline, t.data.name, i.dir
        )
    })?;
    let before: Offsets = t
        .data
        .cut
        .iter()
        .map(|(tp, end): (&TopicPartition, &i64)| (tp.clone(), starts.get(tp).copied().unwrap_or(*end)))
        .collect();
    Ok(Start::Replay { epoch: v - 1, offsets: before, through: v, ends: t.data.cut.clone(), rebuilt: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TableRecord;

    fn cut(offsets: &[(i32, i64)]) -> Offsets {
        offsets.iter().map(|(p, o)| (TopicPartition::new("t", *p), *o)).collect()
    }

    fn table(name: &str, epoch: u64, offsets: &[(i32, i64)]) -> TableRecord {
        TableRecord { name: name.into(), epoch, cut: cut(offsets) }
    }

    /// Data at `v` (cut 10·v per partition, started at 10·(v − 1)), outputs at `outs`, the
    /// dead-letter table at `dead` with the data table's mark `mark`.
    fn tables(v: u64, outs: &[u64], dead: u64, mark: u64) -> Recorded {
        let at = |e: u64| [(0, 10 * e as i64), (1, 10 * e as i64)];
        Recorded {
            data: table("data", v, &at(v)),
            outputs: outs.iter().map(|e| table("out", *e, &at(*e))).collect(),
            dead: table("dead", dead, &at(dead)),
            dead_mark: mark,
            starts: (v > 0).then(|| cut(&at(v - 1))),
            group_written: false,
            meaning: None,
        }
    }

    fn run(checkpoint: Option<u64>, t: &Recorded, rebuild: Rebuild, state: Option<&'static str>) -> Result<Start, String> {
        let at = |e: u64| cut(&[(0, 10 * e as i64), (1, 10 * e as i64)]);
        decide(&Inputs {
            rebuild,
            state,
            ..inputs(checkpoint.map(|e| Found { epoch: e, offsets: at(e) }), Some(t), &Meaning::new())
        })
    }

    /// Inputs of pipeline `p` with no rebuild and no keyed state.
    fn inputs<'a>(checkpoint: Option<Found>, tables: Option<&'a Recorded>, meaning: &'a Meaning) -> Inputs<'a> {
        Inputs { pipeline: "p", dir: "cp", checkpoint, tables, rebuild: Rebuild::Never, state: None, meaning }
    }

    fn resume(e: u64, rebuilt: bool) -> Result<Start, String> {
        Ok(Start::Resume { epoch: e, offsets: cut(&[(0, 10 * e as i64), (1, 10 * e as i64)]), rebuilt })
    }

    fn replay(e: u64, rebuilt: bool) -> Result<Start, String> {
        let at = |e: u64| cut(&[(0, 10 * e as i64), (1, 10 * e as i64)]);
        Ok(Start::Replay { epoch: e, offsets: at(e), through: e + 1, ends: at(e + 1), rebuilt })
    }

    #[test]
    fn with_a_checkpoint_every_row_of_the_rule() {
        use Rebuild::IfMissing as R;
        // (checkpoint, data, outputs, dead, mark) -> plan
        assert_eq!(run(Some(0), &tables(0, &[0], 0, 0), R, None), resume(0, false), "first start");
        assert_eq!(run(Some(3), &tables(3, &[3], 2, 2), R, None), resume(3, false), "all in step");
        assert_eq!(run(Some(3), &tables(3, &[0], 0, 0), R, None), resume(3, false), "an output added since");
        assert_eq!(run(Some(2), &tables(3, &[2], 2, 3), R, None), replay(2, false), "crash after the data table");
        assert_eq!(run(Some(2), &tables(3, &[3], 2, 3), R, None), replay(2, false), "crash before the dead letters");
        assert_eq!(run(Some(2), &tables(3, &[3], 3, 3), R, None), replay(2, false), "crash before the checkpoint");
        assert_eq!(run(Some(0), &tables(1, &[0], 0, 1), R, None), replay(0, false), "crash in the first epoch");
        assert!(run(Some(3), &tables(3, &[2], 2, 2), R, None).is_err(), "an output lost an epoch the checkpoint holds");
        assert!(run(Some(3), &tables(3, &[3], 1, 2), R, None).is_err(), "the dead letters lost a marked epoch");
        assert!(run(Some(3), &tables(3, &[3], 0, 3), R, None).is_err(), "the dead-letter table deleted");
        assert!(run(Some(3), &tables(0, &[3], 0, 0), R, None).unwrap_err().contains("data table"), "data table deleted");
        assert!(run(Some(3), &tables(2, &[3], 0, 0), R, None).is_err(), "data table restored behind an output");
        assert!(run(Some(3), &tables(0, &[], 0, 0), R, None).unwrap_err().contains("deleted or replaced"));
        assert!(run(Some(3), &tables(2, &[], 0, 0), R, None).unwrap_err().contains("restored"));
        // A checkpoint behind by more than one epoch (restored from a persisted copy) catches up.
        let catch_up = run(Some(3), &tables(5, &[], 0, 0), R, Some("dedup keys")).unwrap();
        assert!(matches!(catch_up, Start::Replay { epoch: 3, through: 5, rebuilt: false, .. }), "{catch_up:?}");
        assert!(run(Some(3), &tables(5, &[3], 0, 0), R, None).is_err(), "an output lacks an epoch the catch-up skips");
    }

    #[test]
    fn without_a_checkpoint_every_row_of_the_rule() {
        use Rebuild::{IfMissing, Never, Now};
        let fresh = Ok(Start::Resume { epoch: 0, offsets: Offsets::new(), rebuilt: false });
        assert_eq!(run(None, &tables(0, &[0], 0, 0), IfMissing, None), fresh, "first start");
        assert!(run(None, &tables(3, &[3], 0, 0), Never, None).unwrap_err().contains("no checkpoint"));
        assert_eq!(run(None, &tables(3, &[3], 1, 1), IfMissing, None), resume(3, true), "all in step");
        // The crash between tables: the rebuilt checkpoint is V - 1, and V is replayed.
        assert_eq!(run(None, &tables(1, &[0], 0, 1), IfMissing, None), replay(0, true), "killed after the data table");
        assert_eq!(run(None, &tables(3, &[2], 2, 2), IfMissing, None), replay(2, true), "an output behind");
        assert_eq!(run(None, &tables(3, &[3], 2, 3), IfMissing, None), replay(2, true), "the dead letters behind");
        assert!(run(None, &tables(3, &[1], 0, 0), IfMissing, None).is_err(), "an output two epochs behind");
        assert!(run(None, &tables(3, &[3], 1, 2), IfMissing, None).is_err(), "dead letters of an older epoch lost");
        assert!(run(None, &tables(0, &[2], 0, 0), IfMissing, None).unwrap_err().contains("data table"));
        // Stateful: only in step with the table.
        assert!(run(None, &tables(3, &[], 0, 0), Now, Some("dedup keys")).unwrap_err().contains("dedup keys"));
        assert_eq!(run(Some(3), &tables(3, &[], 0, 0), Now, Some("aggregates")), resume(3, true));
        assert!(run(Some(3), &tables(3, &[2], 0, 0), Now, Some("aggregates")).is_err(), "a laggard needs state at V - 1");
        assert!(run(None, &tables(0, &[], 0, 0), Now, None).unwrap_err().contains("no epoch"));
        // Unknown starts: refused rather than guessed.
        let mut t = tables(3, &[2], 0, 0);
        t.starts = None;
        assert!(run(None, &t, IfMissing, None).unwrap_err().contains("where it started"));
    }

    #[test]
    fn a_table_written_in_group_mode_is_refused() {
        let mut t = tables(0, &[], 0, 0);
        t.group_written = true;
        assert!(run(None, &t, Rebuild::IfMissing, None).unwrap_err().contains("group"));
        let t = tables(3, &[], 0, 0);
        let mut moved = cut(&[(0, 30), (1, 30)]);
        moved.insert(TopicPartition::new("t", 0), 35);
        let none = Meaning::new();
        let i = inputs(Some(Found { epoch: 3, offsets: moved }), Some(&t), &none);
        assert!(decide(&i).unwrap_err().contains("group mode"));
    }

    #[test]
    fn a_replay_under_another_meaning_is_refused_naming_what_changed() {
        let was: Meaning = [("decode", "a"), ("transform", "b"), ("outputs", "c")].map(|(k, v)| (k.into(), v.into())).into();
        let mut t = tables(3, &[2], 2, 0);
        t.meaning = Some(was.clone());
        let mut now = was.clone();
        let planned = |now: &Meaning| decide(&inputs(Some(Found { epoch: 2, offsets: cut(&[(0, 20), (1, 20)]) }), Some(&t), now));
        assert_eq!(planned(&now), replay(2, false));
        now.insert("transform".into(), "b2".into());
        let refused = planned(&now).unwrap_err();
        assert!(refused.contains("transform") && !refused.contains("decode"), "{refused}");
        // Nothing to replay: a changed meaning applies from the next epoch on.
        let mut all_in_step = tables(3, &[3], 0, 0);
        all_in_step.meaning = Some(was);
        let i = inputs(Some(Found { epoch: 3, offsets: cut(&[(0, 30), (1, 30)]) }), Some(&all_in_step), &now);
        assert_eq!(decide(&i), resume(3, false));
    }

    #[test]
    fn a_sink_that_is_not_durable_resumes_at_the_checkpoint() {
        let none = Meaning::new();
        let i = Inputs { rebuild: Rebuild::Now, ..inputs(Some(Found { epoch: 4, offsets: cut(&[(0, 7)]) }), None, &none) };
        assert_eq!(decide(&i), Ok(Start::Resume { epoch: 4, offsets: cut(&[(0, 7)]), rebuilt: false }));
    }
}
