//! The console sink, Spark's `format("console")`: prints each epoch as a small table.
//! Not durable — for looking at a stream, not for keeping it.

use std::io::Write;
use std::sync::Mutex;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{CommittedEpoch, Sink};
use crate::error::Result;
use crate::record::EpochBatch;

/// Prints the first `num_rows` records of each epoch and counts the rest.
pub struct ConsoleSink {
    num_rows: usize,
    out: Mutex<Box<dyn Write + Send>>,
}

impl ConsoleSink {
    /// A console sink on standard output.
    pub fn stdout(num_rows: usize) -> Self {
        ConsoleSink {
            num_rows,
            out: Mutex::new(Box::new(std::io::stdout())),
        }
    }

    /// A console sink writing to `out`.
    pub fn new(num_rows: usize, out: Box<dyn Write + Send>) -> Self {
        ConsoleSink {
            num_rows,
            out: Mutex::new(out),
        }
    }

    fn render(&self, batch: &EpochBatch) -> String {
        let mut s = format!("-------------------------------------------\nEpoch: {}\n-------------------------------------------\n", batch.epoch);
        s.push_str("partition | offset | key | value\n");
        for r in batch.records.iter().take(self.num_rows) {
            let key = r
                .key
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let value = r
                .payload
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_else(|| "null".into());
            s.push_str(&format!("{} | {} | {} | {}\n", r.tp, r.offset, key, value));
        }
        if batch.records.len() > self.num_rows {
            s.push_str(&format!(
                "only showing top {} of {} rows\n",
                self.num_rows,
                batch.records.len()
            ));
        }
        s
    }
}

impl Sink for ConsoleSink {
    fn name(&self) -> &str {
        "console"
    }

    fn committed_epoch(&self) -> BoxFuture<'_, Result<Option<CommittedEpoch>>> {
        async { Ok(None) }.boxed()
    }

    fn commit<'a>(&'a self, batch: &'a EpochBatch) -> BoxFuture<'a, Result<()>> {
        async move {
            let text = self.render(batch);
            let mut out = self.out.lock().expect("console lock");
            out.write_all(text.as_bytes())
                .and_then(|_| out.flush())
                .map_err(|e| crate::Error::Sink(format!("console: {e}")))
        }
        .boxed()
    }
}
