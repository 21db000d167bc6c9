//! The report `exactly verify` prints.

use super::*;

impl Audit {
    /// The report `exactly verify` prints.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // A table written by a group records no pipeline epoch: each member numbers its own.
        let epoch = if self.epoch == 0 && !self.partitions.is_empty() {
            "written by a group".to_string()
        } else {
            format!("epoch {}", self.epoch)
        };
        let _ = writeln!(
            s,
            "pipeline '{}': table {} ({epoch}), dead letters {}",
            self.pipeline,
            self.table.display(),
            self.dead_letter_table.display()
        );
        let _ = writeln!(
            s,
            "{:<28} {:>22} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10}",
            "partition", "committed range", "expected", "rows", "dead", "missing", "duplicated", "unexpected", "mismatched"
        );
        for p in &self.partitions {
            let tp = p.tp.as_ref().map(|t| t.to_string()).unwrap_or_default();
            let range = if p.unread { "never read".to_string() } else { format!("[{}, {})", p.start, p.end) };
            let _ = writeln!(
                s,
                "{:<28} {:>22} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10}",
                tp, range, p.expected, p.rows, p.dead_lettered, p.missing, p.duplicated, p.unexpected, p.mismatched
            );
            if p.unread {
                let _ = writeln!(
                    s,
                    "    the topic holds records here but the table recorded no progress: the pipeline never read this partition"
                );
            }
            if !p.missing_sample.is_empty() {
                let _ = writeln!(s, "    first missing offsets: {:?}", p.missing_sample);
            }
            if p.filtered > 0 {
                let _ = writeln!(s, "    {} records dropped by transform.where (evaluated again here)", p.filtered);
            }
            for m in &p.mismatch_sample {
                let _ = writeln!(s, "    {m}");
            }
            if p.skipped > 0 {
                let _ = writeln!(
                    s,
                    "    {} offsets skipped by policy (source.on_data_loss = \"skip\": Kafka deleted them before they were read; the commits record them)",
                    p.skipped
                );
            }
            if p.unverifiable > 0 {
                let _ = writeln!(
                    s,
                    "    {} rows have offsets Kafka no longer holds (retention, or a matched topic deleted); not judged",
                    p.unverifiable
                );
            }
        }
        self.render_totals(&mut s);
        self.render_rules(&mut s);
        s
    }

    /// The totals row, and the key audit.
    fn render_totals(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "{:<28} {:>22} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10}",
            "total",
            "",
            self.total(|p| p.expected),
            self.total(|p| p.rows),
            self.total(|p| p.dead_lettered),
            self.total(|p| p.missing),
            self.total(|p| p.duplicated),
            self.total(|p| p.unexpected),
            self.total(|p| p.mismatched)
        );
        if let Some(k) = &self.keys {
            let _ = writeln!(
                s,
                "{} keys: expected {}, in table {}, missing {}, duplicated {}, mismatched {}",
                k.kind, k.expected, k.found, k.missing, k.duplicated, k.mismatched
            );
            if k.kind == "upsert" {
                let _ = writeln!(
                    s,
                    "    deleted keys present {}, keys no record changes {}, keys of unknown order (not judged) {}",
                    k.deleted_present, k.unexpected, k.unordered
                );
            }
            for sample in &k.samples {
                let _ = writeln!(s, "    {sample}");
            }
        }
        if !self.members.is_empty() {
            let counts: Vec<String> = self.members.iter().map(|(m, n)| format!("{m}: {n}")).collect();
            let _ = writeln!(
                s,
                "group: {} members committed ({}); commits by a member that had lost the partition: {}",
                self.members.len(),
                counts.join(", "),
                self.fencing.len()
            );
            for f in self.fencing.iter().take(10) {
                let _ = writeln!(s, "    {f}");
            }
        }
    }

    /// The group's members, the commit rule, the outputs, and the verdict.
    fn render_rules(&self, s: &mut String) {
        for t in self.twice.iter().take(10) {
            let _ = writeln!(s, "commit rule broken: {t}");
        }
        for o in &self.outputs {
            let _ = writeln!(
                s,
                "output `{}` ({}): expected {}, rows {}, filtered {}, missing {}, duplicated {}, unexpected {}, mismatched {}",
                o.name,
                o.table.display(),
                o.total(|p| p.expected),
                o.total(|p| p.rows),
                o.total(|p| p.filtered),
                o.total(|p| p.missing),
                o.total(|p| p.duplicated),
                o.total(|p| p.unexpected),
                o.total(|p| p.mismatched)
            );
            for p in &o.partitions {
                if !p.missing_sample.is_empty() {
                    let tp = p.tp.as_ref().map(|t| t.to_string()).unwrap_or_default();
                    let _ = writeln!(s, "    {tp}: first missing offsets: {:?}", p.missing_sample);
                }
                for m in &p.mismatch_sample {
                    let _ = writeln!(s, "    {m}");
                }
            }
        }
        let _ = writeln!(s, "parquet files not in the current version (compacted away or never committed; `exactly vacuum` removes them past the retention): {}", self.orphan_files.len());
        if self.ok() {
            let what = match self.keys.as_ref().map(|k| k.kind.as_str()) {
                Some("aggregate") => "every group equals its recomputation from the topic",
                Some("upsert") => "every key holds the row of its last change, and no deleted key is present",
                Some(_) => "every key of the topic is in the table exactly once",
                None => "every committed offset is in the tables exactly once, as Kafka holds it",
            };
            let _ = writeln!(s, "result: OK — {what}");
        } else {
            let _ = writeln!(
                s,
                "result: FAILED — offsets missing, duplicated or unexpected, content that differs from Kafka's, or commits by a fenced member"
            );
        }
    }
}
