//! `sink.outputs`: the fan-out of the main table's rows to further tables, each through its own
//! `where` / `select`.

use deltalake::arrow::array::BooleanArray;
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::{Schema, SchemaRef};
use deltalake::arrow::record_batch::RecordBatch;

use super::{Applied, Transform};

/// `sink.outputs`, planned: each output's name and its `where` / `select` over the rows the
/// main table gets.
#[derive(Debug, Default, Clone)]
pub struct Outputs(Vec<(String, Transform)>);

/// What fanning a batch of rows out made.
#[derive(Debug)]
pub struct FanOut {
    /// The rows the main table gets: the input without the rows an output's expression failed
    /// on (those records are dead letters: in no table).
    pub main: RecordBatch,
    /// Each output's rows, in the order of `sink.outputs`.
    pub outputs: Vec<RecordBatch>,
    /// Input rows an output's expression failed on, with the reason (the first failure).
    pub failed: Vec<(usize, String)>,
}

impl Outputs {
    /// Plans `outputs` against the main table's rows `rows`; `Err` names the output.
    pub fn new(outputs: &[crate::config::OutputConfig], rows: &Schema) -> Result<Outputs, String> {
        outputs
            .iter()
            .map(|o| {
                Transform::new(&o.transform(), rows).map(|t| (o.name.clone(), t)).map_err(|e| format!("output `{}`: {e}", o.name))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Outputs)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each output's schema (its columns out, then the `_kafka_*` ones) for the main table's
    /// rows `rows`, in order.
    pub fn schemas(&self, rows: &Schema) -> Vec<SchemaRef> {
        self.0.iter().map(|(_, t)| t.output_schema(rows)).collect()
    }

    /// Fans `rows` (the main table's) out to every output. A row any output's expression fails
    /// on is taken out of every table — the main one too — so its record is a dead letter and
    /// nothing else, whatever the outputs.
    pub fn fan_out(&self, rows: &RecordBatch) -> FanOut {
        let mut failed: std::collections::BTreeMap<usize, String> = Default::default();
        // Input row of each row of `main` (rows taken out leave the others' indices behind).
        let mut index: Vec<usize> = (0..rows.num_rows()).collect();
        let mut main = rows.clone();
        loop {
            let applied: Vec<Applied> = self.0.iter().map(|(_, t)| t.apply(&main)).collect();
            let mut out: Vec<usize> = Vec::new();
            for ((name, _), a) in self.0.iter().zip(&applied) {
                for (i, why) in &a.failed {
                    failed.entry(index[*i]).or_insert_with(|| format!("output `{name}`: {why}"));
                    out.push(*i);
                }
            }
            if out.is_empty() {
                return FanOut {
                    main,
                    outputs: applied.into_iter().map(|a| a.rows).collect(),
                    failed: failed.into_iter().collect(),
                };
            }
            let keep: BooleanArray = (0..main.num_rows()).map(|i| Some(!out.contains(&i))).collect();
            main = filter_record_batch(&main, &keep).expect("a mask of the batch's length");
            index = index.into_iter().enumerate().filter(|(i, _)| !out.contains(i)).map(|(_, v)| v).collect();
        }
    }
}
