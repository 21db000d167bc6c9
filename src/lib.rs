//! `exactly` — an exactly-once Kafka -> Delta Lake streaming runtime on a supervised actor tree.
//!
//! # Layout
//! The modules, in the order data flows through them:
//!
//! - [`config`]: the pipeline's TOML configuration (every field documented, safe defaults).
//! - [`kafka`]: the connection every client is made from (brokers, TLS, SASL), the pre-flight
//!   check, topic admin, partition statistics.
//! - [`consumer`]: one actor per Kafka partition; reads its partition's queue in batches ([`fetch`]), runs the
//!   [`decode`] stage and the [`transform`] (SQL `select` / `where`), and forwards rows and dead
//!   letters, then epoch barriers, to the aggregator.
//! - [`aggregator`]: aligns barriers from every consumer and closes an epoch when all have arrived;
//!   then runs the [`state`]ful stages (dedup, keyed aggregation on RocksDB) over it.
//! - [`committer`]: the only writer; commits an epoch to the [`sink`] (a Delta Lake table and its
//!   dead-letter table, exactly once) and then writes the [`checkpoint`].
//! - [`supervisor`]: the root actor; cuts epochs, restarts the tree from the last committed epoch
//!   when any actor fails, enforces the restart budget, picks up partitions added to a topic.
//!
//! Rules several actors follow have one home each: [`recovery`] (which epoch is committed, from
//! the checkpoint and every table's record), [`replay`] (re-cutting an epoch some tables hold
//! but the checkpoint missed), [`backpressure`] (when consumers may read), and
//! [`sink::delta::commit`] (the one commit path of every table write).
//! - [`maintenance`]: beside the sink, per table: Delta checkpoints, log cleanup,
//!   auto-compaction; and the `optimize` / `vacuum` commands.
//! - [`pipeline`]: [`pipeline::run`], the entry point that ties it together with a shutdown signal.
//!
//! Around them: [`record`] (records, offsets, epochs), [`verify`] (the exactly-once audit of a
//! table against its topic), [`producer`] (the demo producer), [`progress`] (per-epoch progress
//! reports), [`metrics`] (metric names and the exporter) and [`failpoint`] / [`fault`] (failure
//! injection for tests and the chaos suite).
#![warn(missing_docs)]

pub mod aggregator;
pub mod backpressure;
pub mod checkpoint;
pub mod committer;
pub mod config;
pub mod consumer;
pub mod decode;
pub mod error;
pub mod failpoint;
pub mod fault;
pub mod fetch;
pub mod group;
pub mod kafka;
pub mod maintenance;
pub mod metrics;
pub mod pipeline;
pub mod producer;
pub mod progress;
pub mod record;
pub mod recovery;
pub mod replay;
pub mod sink;
pub mod state;
pub mod supervisor;
pub mod transform;
pub mod verify;

pub use config::PipelineConfig;
pub use error::{Error, Result};

/// jemalloc for every binary that links the library: the pipeline frees large per-epoch buffers
/// from many threads, which glibc's per-thread arenas keep as resident memory.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
