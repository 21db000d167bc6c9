//! The channel sink: hands every committed epoch to a Tokio channel, like Spark's
//! `foreachBatch`. For embedding `exactly` in a program, and for tests that inspect exactly what
//! was committed. Like `foreachBatch`, delivery is at-least-once across a crash that falls
//! between this commit and the checkpoint: the receiver sees the same epoch number again and can
//! drop it.

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc;

use super::Sink;
use crate::error::{Error, Result};
use crate::model::TopicPartition;
use crate::sink::EpochBatch;

/// Sends each committed [`EpochBatch`] to a channel.
pub struct ChannelSink {
    tx: mpsc::UnboundedSender<EpochBatch>,
}

impl ChannelSink {
    /// A sink and the receiver of its epochs.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<EpochBatch>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ChannelSink { tx }, rx)
    }
}

impl Sink for ChannelSink {
    fn name(&self) -> &str {
        "channel"
    }

    fn recorded<'a>(&'a self, _partitions: &'a [TopicPartition]) -> BoxFuture<'a, Result<Option<crate::model::Recorded>>> {
        async { Ok(None) }.boxed()
    }

    fn commit<'a>(&'a self, batch: &'a EpochBatch) -> BoxFuture<'a, Result<super::Committed>> {
        async move {
            self.tx.send(batch.clone()).map_err(|_| Error::Sink("channel sink: receiver dropped".into()))?;
            Ok(Default::default())
        }
        .boxed()
    }
}
