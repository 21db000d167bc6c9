//! What the pipeline tells its operators: metric names and the Prometheus exporter
//! ([`metrics`]), and per-epoch progress reports ([`progress`]).

pub mod metrics;
pub mod progress;
