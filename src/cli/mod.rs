//! The commands of the `exactly` binary, one file each, and what they share: loading and
//! planning a config, the stop signal, which Kafka cluster and which tables a command works on.

pub(crate) mod adopt;
pub(crate) mod check;
pub(crate) mod checkpoint;
pub(crate) mod exit;
pub(crate) mod maintenance;
pub(crate) mod produce;
pub(crate) mod run;
pub(crate) mod topics;
pub(crate) mod verify;

use std::path::PathBuf;

use clap::Args;
use exactly::config::{PipelineConfig, TableLocation};
use exactly::plan::Plan;
use exactly::source as kafka;

/// Whether stderr's lines are JSON objects (`--log-format json`), set once at start.
pub(crate) static JSON_LINES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Writes one line for the operator on stderr: as it is, or with `--log-format json` as an
/// object like the log lines' (`timestamp`, `level`, `message`).
pub(crate) fn say(level: &str, line: &str) {
    if *JSON_LINES.get().unwrap_or(&false) {
        let object = serde_json::json!({
            "timestamp": exactly::telemetry::progress::Progress::now(),
            "level": level,
            "message": line,
        });
        eprintln!("{object}");
    } else if level == "ERROR" {
        eprintln!("error: {line}");
    } else {
        eprintln!("{line}");
    }
}

/// Loads, checks and plans the config at `path` (errors name the file).
pub(crate) fn plan(path: &std::path::Path) -> anyhow::Result<Plan> {
    let config = PipelineConfig::load(path)?;
    Ok(Plan::of(&config, &path.display().to_string())?)
}

/// Installs the Ctrl-C and SIGTERM handlers at once (a signal that arrives while the pipeline
/// starts is kept, not fatal) and resolves on the first of them; a second Ctrl-C exits at once.
pub(crate) fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        say("INFO", "stopping: committing the open epoch (press Ctrl-C again to exit at once; nothing committed is lost)");
        tokio::spawn(async move {
            let _ = int.recv().await;
            std::process::exit(130);
        });
    }
}

/// Which Kafka cluster a command talks to, and how.
#[derive(Args)]
pub(crate) struct KafkaArgs {
    /// A pipeline config whose [source] (brokers, [source.security], properties) to connect
    /// with: the way to reach a secured cluster.
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
    /// Kafka bootstrap servers; replaces the config's. Default: $KAFKA_BROKERS, else
    /// 127.0.0.1:9092.
    #[arg(long)]
    pub(crate) brokers: Option<String>,
}

impl KafkaArgs {
    /// The connection, and the config it came from.
    pub(crate) fn connection(&self) -> anyhow::Result<(kafka::Connection, Option<PipelineConfig>)> {
        match &self.config {
            Some(path) => {
                let mut config = PipelineConfig::load(path)?;
                if let Some(b) = &self.brokers {
                    config.source.brokers = b.clone();
                }
                Ok((exactly::source::Connection::of(&config.source)?, Some(config)))
            }
            None => {
                let env = std::env::var(exactly::config::BROKERS_ENV).ok().filter(|b| !b.trim().is_empty());
                let brokers = self.brokers.clone().or(env).unwrap_or_else(|| "127.0.0.1:9092".into());
                Ok((kafka::Connection::plaintext(brokers), None))
            }
        }
    }
}

/// Which tables a maintenance command works on.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub(crate) struct TableArgs {
    /// A pipeline config: its data and dead-letter tables.
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
    /// One Delta table: a directory, or a URL (s3://, abfss://, gs://; credentials from the
    /// standard environment variables).
    #[arg(long, value_parser = parse_location)]
    pub(crate) path: Option<TableLocation>,
}

fn parse_location(text: &str) -> Result<TableLocation, String> {
    TableLocation::parse(text)
}

impl TableArgs {
    /// The tables to work on (`zorder`: a Z-order's, the data table only).
    pub(crate) async fn tables(&self, zorder: bool) -> anyhow::Result<Vec<TableLocation>> {
        let config = self.config.as_deref().map(PipelineConfig::load).transpose()?;
        let tables = exactly::maintenance::commands::tables_of(config.as_ref(), self.path.as_ref(), zorder).await?;
        if tables.is_empty() {
            anyhow::bail!("the config's sink.path holds no Delta table yet (run the pipeline first)");
        }
        Ok(tables)
    }
}
