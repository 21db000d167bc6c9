//! `exactly` — an exactly-once Kafka -> Delta Lake streaming runtime on a supervised actor tree.
//!
//! # Layout
//! The folders follow the data; a module imports only from modules above it in this list (or
//! from its own folder), and [`pipeline`] is the one place that knows every module
//! (`scripts/layers` checks it in `just lint`).
//!
//! - [`model`]: the vocabulary — records, offsets, partition ranges, column names, dead-letter
//!   reasons, table locations, what a table records. Imports nothing from the crate.
//! - [`error`]: typed errors, one line each.
//! - [`testing`]: fail points and faults (tests, the chaos suite).
//! - [`telemetry`]: metric names, the exporter, progress reports.
//! - [`config`]: the TOML configuration as plain data, with per-section syntax checks.
//! - [`source`]: everything Kafka — the connection, pre-flight, admin, reading a partition, the
//!   group member, the demo producer.
//! - [`transform`]: SQL `select` / `where`, and the fan-out to `sink.outputs`.
//! - [`decode`]: record bytes -> Arrow rows or dead letters (JSON, Avro, the schema registry).
//! - [`state`]: dedup and keyed aggregation, and the checkpoint (offsets + RocksDB state).
//! - [`plan`]: a config turned into the built pieces once — reader schema, decoder, transform,
//!   outputs, the tables' schemas — where every check that needs them lives.
//! - [`catalog`]: registering the tables in a catalog (a Hive Metastore), off the commit path.
//! - [`sink`]: where an epoch is committed; [`sink::delta`] with its one commit path.
//! - [`maintenance`]: Delta checkpoints, log cleanup, compaction; `optimize` / `vacuum`.
//! - [`runtime`]: the actor tree — consumers, aggregator, committer, supervisor — and the rules
//!   they share (recovery, replay, backpressure).
//! - [`verify`]: the exactly-once audit of a pipeline's tables against its topics.
//! - [`pipeline`]: the composition root: plan -> sink -> supervisor.
#![warn(missing_docs)]

pub mod model;

pub mod error;

pub mod testing;

pub mod telemetry;

pub mod config;

pub mod source;

pub mod transform;

pub mod decode;

pub mod state;

pub mod plan;

pub mod catalog;

pub mod sink;

pub mod maintenance;

pub mod runtime;

pub mod verify;

pub mod pipeline;

pub use config::PipelineConfig;
pub use error::{Error, Result};

/// jemalloc for every binary that links the library: the pipeline frees large per-epoch buffers
/// from many threads, which glibc's per-thread arenas keep as resident memory.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
