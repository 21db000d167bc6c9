//! The toolkit the integration tests (`tests/common`) and the chaos suite (`chaos/harness.rs`)
//! share: unique names, config files, `exactly run` processes, what a table records, and its
//! log read through delta-rs. Errors are strings: the tests unwrap them, the chaos suite reports
//! them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use deltalake::kernel::Action;
use exactly::config::{PipelineConfig, TableLocation};

/// A name no other test or run uses: the process id, the clock, and a counter (two calls in one
/// clock tick).
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}-{n}", std::process::id(), nanos % 10_000_000_000)
}

/// Writes `config` as `dir/pipeline.toml`, for `exactly run`.
pub fn write_config(config: &PipelineConfig, dir: &Path) -> Result<PathBuf, String> {
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, toml::to_string(config).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok(file)
}

/// `exactly run` on `config` without progress output. The config names its brokers
/// (`KAFKA_BROKERS` would replace them); `failpoints` arms `EXACTLY_FAILPOINTS`. Callers say
/// where stderr goes.
pub fn exactly_run(bin: &Path, config: &Path, failpoints: Option<&str>) -> Command {
    let mut c = Command::new(bin);
    c.args(["run", "--progress", "off", "--config"]).arg(config).env_remove("KAFKA_BROKERS").stdout(Stdio::null());
    if let Some(fp) = failpoints {
        c.env("EXACTLY_FAILPOINTS", fp);
    }
    c
}

/// Sends SIGTERM (a graceful stop: the open epoch is committed).
pub fn sigterm(child: &Child) -> Result<(), String> {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().map_err(|e| e.to_string())?;
    status.success().then_some(()).ok_or_else(|| format!("kill -TERM {} failed", child.id()))
}

/// What the data table of `config` records of its pipeline over its topics' partitions: the cut
/// summed over them, and the pipeline's epoch (0, 0: no table yet, or not a Delta sink).
pub async fn table_progress(config: &PipelineConfig) -> Result<(i64, u64), String> {
    let Some(table) = config.table_path() else { return Ok((0, 0)) };
    let Some(t) = exactly::sink::delta::load_table(table.clone()).await.map_err(|e| e.to_string())? else { return Ok((0, 0)) };
    let connection = exactly::source::Connection::of(&config.source).map_err(|e| e.to_string())?;
    let tps = exactly::source::preflight(&connection, config.source.subscription(), Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let id = &config.id;
    let cut = exactly::sink::delta::recorded_cut(&t, &table, id, &tps).await.map_err(|e| e.to_string())?.values().sum();
    let epoch = exactly::sink::delta::txn_version(&t, &table, id).await.map_err(|e| e.to_string())?.unwrap_or(0).max(0) as u64;
    Ok((cut, epoch))
}

/// Every commit the log of the table at `table` still holds, oldest first, as delta-rs reads
/// its actions (empty: no table).
pub async fn log_commits(table: &TableLocation) -> Result<Vec<(u64, Vec<Action>)>, String> {
    let Some(t) = exactly::sink::delta::load_table(table.clone()).await.map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    let latest = t.version().unwrap_or(0);
    exactly::sink::delta::table::commits(&t, table, 0..=latest).await.map_err(|e| e.to_string())
}

/// Every `txn` version the log of the table at `table` holds for `app_id`, one per commit that
/// wrote it, in order.
pub async fn txn_versions(table: &TableLocation, app_id: &str) -> Result<Vec<i64>, String> {
    let mut versions: Vec<i64> = log_commits(table)
        .await?
        .iter()
        .flat_map(|(_, actions)| exactly::sink::delta::table::txn_versions(actions, app_id).collect::<Vec<_>>())
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

/// Update-mode `count` and `sum(id)` per `value`, in 4 buckets: the aggregation the chaos suite
/// and the tests run over the demo events.
pub fn counts_by_value() -> exactly::config::AggregateConfig {
    use exactly::config::{AggregateConfig, AggregateOp, AggregateSpec, OutputMode};
    AggregateConfig {
        group_by: vec!["value".into()],
        aggregates: vec![
            AggregateSpec { op: AggregateOp::Count, field: None, name: None },
            AggregateSpec { op: AggregateOp::Sum, field: Some("id".into()), name: None },
        ],
        output_mode: OutputMode::Update,
        buckets: 4,
    }
}
