//! The console sink, Spark's `format("console")`: prints each epoch as a small table.
//! Not durable — for looking at a stream, not for keeping it.

use std::io::Write;
use std::sync::Mutex;

use deltalake::arrow::array::{Array, BinaryArray};
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::future::BoxFuture;
use futures::FutureExt;

use super::Sink;
use crate::error::{Error, Result};
use crate::model::TopicPartition;
use crate::sink::EpochBatch;

/// Prints the first `num_rows` rows of each epoch and counts the rest.
pub struct ConsoleSink {
    num_rows: usize,
    out: Mutex<Box<dyn Write + Send>>,
}

impl ConsoleSink {
    /// A console sink on standard output.
    pub fn stdout(num_rows: usize) -> Self {
        ConsoleSink { num_rows, out: Mutex::new(Box::new(std::io::stdout())) }
    }

    /// A console sink writing to `out`.
    pub fn new(num_rows: usize, out: Box<dyn Write + Send>) -> Self {
        ConsoleSink { num_rows, out: Mutex::new(out) }
    }

    /// The text printed for one epoch.
    pub fn render(&self, batch: &EpochBatch) -> Result<String> {
        let mut s = format!(
            "-------------------------------------------\nEpoch: {}\n-------------------------------------------\n",
            batch.epoch
        );
        let opts = FormatOptions::default().with_null("null");
        let mut shown = 0;
        for (i, b) in batch.output.rows().iter().enumerate() {
            if i == 0 {
                let schema = b.schema();
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                s.push_str(&names.join(" | "));
                s.push('\n');
            }
            let cols = b.columns();
            let formatters = cols
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Sink(format!("console: {e}")))?;
            for row in 0..b.num_rows() {
                if shown == self.num_rows {
                    break;
                }
                let cells: Vec<String> = cols
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| match c.data_type() {
                        // Raw bytes read better as (lossy) text than as hex.
                        DataType::Binary if c.is_valid(row) => {
                            let a = c.as_any().downcast_ref::<BinaryArray>().expect("binary array");
                            String::from_utf8_lossy(a.value(row)).into_owned()
                        }
                        _ => f.value(row).to_string(),
                    })
                    .collect();
                s.push_str(&cells.join(" | "));
                s.push('\n');
                shown += 1;
            }
        }
        let total = batch.row_count();
        if total > shown {
            s.push_str(&format!("only showing top {shown} of {total} rows\n"));
        }
        if !batch.dead_letters.is_empty() {
            let d = &batch.dead_letters[0];
            s.push_str(&format!("{} dead letters, e.g. {} offset {}: {}\n", batch.dead_letters.len(), d.tp, d.offset, d.reason));
        }
        Ok(s)
    }
}

impl Sink for ConsoleSink {
    fn name(&self) -> &str {
        "console"
    }

    fn recorded<'a>(&'a self, _partitions: &'a [TopicPartition]) -> BoxFuture<'a, Result<Option<crate::model::Recorded>>> {
        async { Ok(None) }.boxed()
    }

    fn commit<'a>(&'a self, batch: &'a EpochBatch) -> BoxFuture<'a, Result<super::Committed>> {
        async move {
            let text = self.render(batch)?;
            let mut out = self.out.lock().expect("console lock");
            out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(|e| Error::Sink(format!("console: {e}")))?;
            Ok(Default::default())
        }
        .boxed()
    }
}
