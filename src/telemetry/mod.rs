//! What the pipeline tells its operators: metric names ([`metrics`]), the HTTP listener with
//! `/metrics` and the probes ([`http`], [`health`]), and per-epoch progress reports
//! ([`progress`]).

pub mod health;
pub mod http;
pub mod metrics;
pub mod process;
pub mod progress;
