//! `exactly run`: a pipeline until Ctrl-C / SIGTERM, with progress on stderr.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use exactly::pipeline::{Pipeline, RunOptions};
use exactly::testing::failpoint::FailPoints;

use super::{plan, say, stop_signal};

#[derive(Args)]
pub(crate) struct RunArgs {
    /// The pipeline's TOML config (see docs/config.md).
    #[arg(long, short)]
    pub(crate) config: PathBuf,
    /// How to report each committed epoch on stderr (default: `text`, or `json` with
    /// `--log-format json`).
    #[arg(long, value_enum)]
    pub(crate) progress: Option<ProgressFormat>,
    /// Before starting, rebuild the checkpoint from the table's last committed epoch: the way
    /// out when the checkpoint was lost, or belongs to another run of the same table.
    #[arg(long)]
    pub(crate) reset_checkpoint_from_table: bool,
    /// Read every partition up to the offsets that are latest at the start, commit, and exit 0
    /// (a scheduled job: Spark's Trigger.AvailableNow). Records produced meanwhile wait for
    /// the next run.
    #[arg(long)]
    pub(crate) until_caught_up: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ProgressFormat {
    /// One human-readable line per epoch.
    Text,
    /// One JSON object per epoch (StreamingQueryProgress-like).
    Json,
    /// Nothing.
    Off,
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let stop = stop_signal();
    let plan = plan(&args.config)?;
    let config = plan.config.clone();
    let probe = exactly::telemetry::http::ProbeCell::default();
    if let Some(listen) = &config.metrics.listen {
        exactly::telemetry::http::serve(listen.parse()?, &config.id, probe.clone()).await?;
        say("INFO", &format!("metrics: http://{listen}/metrics (probes: /healthz, /readyz)"));
    }
    let failpoints = Arc::new(FailPoints::from_env()?);
    let sink = exactly::pipeline::sink(&plan, failpoints.clone());
    say(
        "INFO",
        &format!(
            "pipeline '{}': {} from {} ({}) -> {} sink; checkpoint {}",
            config.id,
            config.source.subscription(),
            config.source.brokers,
            config.source.security.summary(),
            sink.name(),
            config.checkpoint_dir().display()
        ),
    );
    if let (Some(table), Some(dead)) = (config.table_path(), config.dead_letter_path()) {
        say("INFO", &format!("table: {table}  dead letters: {dead}"));
    }
    let options = RunOptions {
        failpoints,
        reset_checkpoint_from_table: args.reset_checkpoint_from_table,
        until_caught_up: args.until_caught_up,
    };
    let pipeline = Pipeline::start_planned(plan, sink, options).await?;
    let _ = probe.set(pipeline.readiness_probe());
    let mut progress = pipeline.progress();
    let json = *super::JSON_LINES.get().unwrap_or(&false);
    let format = args.progress.unwrap_or(if json { ProgressFormat::Json } else { ProgressFormat::Text });
    let printer = tokio::spawn(async move {
        while let Ok(p) = progress.recv().await {
            match format {
                ProgressFormat::Text => eprintln!("{p}"),
                ProgressFormat::Json => {
                    eprintln!("{}", serde_json::to_string(&p).unwrap_or_default())
                }
                ProgressFormat::Off => {}
            }
        }
    });
    let result = tokio::select! {
        _ = stop => None,
        r = wait_finished(&pipeline) => Some(r),
    };
    let outcome = match result {
        None => pipeline.shutdown().await,
        Some(()) => pipeline.wait().await,
    };
    printer.abort();
    outcome?;
    Ok(())
}

async fn wait_finished(p: &Pipeline) {
    while !p.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
