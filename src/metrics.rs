//! Metric names, in one place, and the Prometheus exporter. Every name is documented in
//! `dashboards/README.md`.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

use crate::error::{Error, Result};

/// Counter, labels `topic`, `partition`: records read from Kafka (including re-reads after a
/// restart).
pub const RECORDS_CONSUMED: &str = "exactly_records_consumed_total";
/// Counter: records committed to the sink (each record once).
pub const RECORDS_COMMITTED: &str = "exactly_records_committed_total";
/// Counter: records dropped by dedup as duplicates.
pub const DUPLICATES_DROPPED: &str = "exactly_duplicates_dropped_total";
/// Counter: records written to the dead-letter table.
pub const DEAD_LETTERS: &str = "exactly_dead_letters_total";
/// Gauge, label `kind` (`dedup`, `aggregate`): keys held in the RocksDB state.
pub const STATE_KEYS: &str = "exactly_state_keys";
/// Gauge: bytes of the RocksDB state on disk (SST files).
pub const STATE_BYTES: &str = "exactly_state_bytes";
/// Gauge: the last committed epoch.
pub const EPOCH_COMMITTED: &str = "exactly_epoch_committed";
/// Histogram, label `phase` (`sink`, `checkpoint`): seconds spent committing an epoch.
pub const COMMIT_SECONDS: &str = "exactly_commit_duration_seconds";
/// Histogram: seconds from the oldest Kafka timestamp in an epoch to its commit.
pub const END_TO_END_SECONDS: &str = "exactly_end_to_end_latency_seconds";
/// Gauge, labels `topic`, `partition`: records in Kafka not yet committed by the pipeline.
pub const CONSUMER_LAG: &str = "exactly_consumer_lag_records";
/// Counter, labels `actor`, `reason`: restarts of the actor tree.
pub const ACTOR_RESTARTS: &str = "exactly_actor_restarts_total";
/// Gauge: the current generation of the actor tree (increments on every restart).
pub const GENERATION: &str = "exactly_generation";

/// Serves `/metrics` on `addr` for the rest of the process.
pub fn install_exporter(addr: SocketAddr) -> Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| Error::Io { context: format!("metrics endpoint on {addr}"), source: std::io::Error::other(e.to_string()) })
}
