//! The actor tree: per-partition [`consumer`]s, the [`aggregator`] that aligns barriers and runs
//! the stateful stages, the single [`committer`], and the [`supervisor`] that cuts epochs and
//! restarts the tree. The messages between them live in [`messages`]; the rules several actors
//! follow have one home each: [`recovery`], [`replay`], [`backpressure`].

pub mod aggregator;
pub mod backpressure;
pub mod committer;
pub mod consumer;
pub mod messages;
pub mod persister;
pub mod recovery;
pub mod replay;
pub mod supervisor;
