//! The `exactly` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::sync::Arc;

use exactly::config::{PipelineConfig, TableLocation};
use exactly::pipeline::{Pipeline, RunOptions};
use exactly::plan::Plan;
use exactly::source as kafka;
use exactly::source::producer::{produce, ProduceOptions};
use exactly::testing::failpoint::FailPoints;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "exactly", version, about = "Exactly-once Kafka -> Delta Lake streaming on a supervised actor tree")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until Ctrl-C/SIGTERM (the open epoch is committed before exit).
    Run(RunArgs),
    /// Audit a Delta-sink pipeline's tables against its Kafka topics: every committed offset
    /// must be in the table or the dead-letter table exactly once (exit 0 only then).
    Verify {
        /// The pipeline's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Compact a pipeline's tables (or one table) into fewer, larger files, optionally Z-ordered
    /// (Delta OPTIMIZE). Commits with dataChange=false: streaming readers see no new data. Safe
    /// while the pipeline runs.
    Optimize(OptimizeArgs),
    /// Delete files no table version within the retention references (Delta VACUUM). Lists
    /// what it would delete unless --execute is given.
    Vacuum(VacuumArgs),
    /// Produce demo events {"id","value","ts"} to a topic (the seed's producer).
    Produce(ProduceArgs),
    /// Check a pipeline's connections without running it: the brokers answer and accept its
    /// security settings, its topics exist, its schema registry answers, its tables' store can
    /// be written.
    Check {
        /// The pipeline's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Manage topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The pipeline's TOML config (see docs/config.md).
    #[arg(long, short)]
    config: PathBuf,
    /// How to report each committed epoch on stderr.
    #[arg(long, value_enum, default_value = "text")]
    progress: ProgressFormat,
    /// Before starting, rebuild the checkpoint from the table's last committed epoch: the way
    /// out when the checkpoint was lost, or belongs to another run of the same table.
    #[arg(long)]
    reset_checkpoint_from_table: bool,
}

/// Which tables a maintenance command works on.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct TableArgs {
    /// A pipeline config: its data and dead-letter tables.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// One Delta table: a directory, or a URL (s3://, abfss://, gs://; credentials from the
    /// standard environment variables).
    #[arg(long, value_parser = parse_location)]
    path: Option<TableLocation>,
}

fn parse_location(text: &str) -> Result<TableLocation, String> {
    TableLocation::parse(text)
}

impl TableArgs {
    /// The tables to work on (`zorder`: a Z-order's, the data table only).
    async fn tables(&self, zorder: bool) -> anyhow::Result<Vec<TableLocation>> {
        let config = self.config.as_deref().map(PipelineConfig::load).transpose()?;
        let tables = exactly::maintenance::commands::tables_of(config.as_ref(), self.path.as_ref(), zorder).await?;
        if tables.is_empty() {
            anyhow::bail!("the config's sink.path holds no Delta table yet (run the pipeline first)");
        }
        Ok(tables)
    }
}

#[derive(Args)]
struct OptimizeArgs {
    #[command(flatten)]
    tables: TableArgs,
    /// Z-order by these columns (comma-separated) instead of bin-packing.
    #[arg(long, value_delimiter = ',')]
    zorder: Vec<String>,
    /// Target file size in MiB (default: the table's delta.targetFileSize, else 100).
    #[arg(long)]
    target_size_mb: Option<u64>,
}

#[derive(Args)]
struct VacuumArgs {
    #[command(flatten)]
    tables: TableArgs,
    /// Delete the files (default: only list them).
    #[arg(long)]
    execute: bool,
    /// Keep files removed within this many hours (default: the table's
    /// delta.deletedFileRetentionDuration, 7 days for tables the pipeline created).
    #[arg(long)]
    retention_hours: Option<u64>,
    /// Allow a retention shorter than the table's (readers of older versions may fail).
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProgressFormat {
    /// One human-readable line per epoch.
    Text,
    /// One JSON object per epoch (StreamingQueryProgress-like).
    Json,
    /// Nothing.
    Off,
}

/// Which Kafka cluster a command talks to, and how.
#[derive(Args)]
struct KafkaArgs {
    /// A pipeline config whose [source] (brokers, [source.security], properties) to connect
    /// with: the way to reach a secured cluster.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers; replaces the config's. Default: $KAFKA_BROKERS, else
    /// 127.0.0.1:9092.
    #[arg(long)]
    brokers: Option<String>,
}

impl KafkaArgs {
    /// The connection, and the config it came from.
    fn connection(&self) -> anyhow::Result<(kafka::Connection, Option<PipelineConfig>)> {
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

#[derive(Args)]
struct ProduceArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Target topic (default: the config's first topic, else `events`).
    #[arg(long)]
    topic: Option<String>,
    /// Stop after this many records (default: until Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
    /// Records per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// First event id.
    #[arg(long, default_value_t = 0)]
    first_id: u64,
    /// Number of distinct `value`s (event_0 .. event_{n-1}).
    #[arg(long, default_value_t = 10)]
    distinct_values: u64,
    /// Every Nth record re-sends an earlier event unchanged.
    #[arg(long)]
    duplicate_every: Option<u64>,
    /// Every Nth record is malformed (not JSON, wrong type, missing field, not UTF-8).
    #[arg(long)]
    malformed_every: Option<u64>,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create a topic (does nothing if it exists).
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Topic name.
        #[arg(long)]
        topic: String,
        /// Partitions.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

/// Installs the Ctrl-C and SIGTERM handlers at once (a signal that arrives while the pipeline
/// starts is kept, not fatal) and resolves on the first of them; a second Ctrl-C exits at once.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("stopping: committing the open epoch (press Ctrl-C again to exit at once; nothing committed is lost)");
        tokio::spawn(async move {
            let _ = int.recv().await;
            std::process::exit(130);
        });
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let stop = stop_signal();
    let plan = plan(&args.config)?;
    let config = plan.config.clone();
    if let Some(listen) = &config.metrics.listen {
        exactly::telemetry::metrics::install_exporter(listen.parse()?, &config.id)?;
        eprintln!("metrics: http://{listen}/metrics");
    }
    let failpoints = Arc::new(FailPoints::from_env()?);
    let sink = exactly::pipeline::sink(&plan, failpoints.clone());
    eprintln!(
        "pipeline '{}': {} from {} ({}) -> {} sink; checkpoint {}",
        config.id,
        config.source.topics.join(","),
        config.source.brokers,
        config.source.security.summary(),
        sink.name(),
        config.checkpoint_dir().display()
    );
    if let (Some(table), Some(dead)) = (config.table_path(), config.dead_letter_path()) {
        eprintln!("table: {table}  dead letters: {dead}");
    }
    let options = RunOptions { failpoints, reset_checkpoint_from_table: args.reset_checkpoint_from_table };
    let pipeline = Pipeline::start_planned(plan, sink, options).await?;
    let mut progress = pipeline.progress();
    let format = args.progress;
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

/// `exactly check`: every connection `run` would make, checked and reported, nothing written
/// to a table.
async fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let plan = plan(path)?;
    let config = &plan.config;
    let connection = exactly::source::Connection::of(&config.source)?;
    let src = &config.source;
    let cluster = kafka::check(&connection, &src.topics, std::time::Duration::from_millis(src.connect_timeout_ms)).await?;
    let mut per_topic: Vec<(String, usize)> = Vec::new();
    for tp in &cluster.partitions {
        match per_topic.last_mut() {
            Some((t, n)) if **t == *tp.topic => *n += 1,
            _ => per_topic.push((tp.topic.to_string(), 1)),
        }
    }
    let topics: Vec<String> = per_topic.iter().map(|(t, n)| format!("'{t}' ({n} partitions)")).collect();
    println!(
        "kafka: {} ({}): {} broker{} answered; topics {}",
        connection.brokers(),
        connection.security().summary(),
        cluster.brokers,
        if cluster.brokers == 1 { "" } else { "s" },
        topics.join(", ")
    );
    if let Some(url) = plan.decoder.check_registry().await? {
        println!("schema registry: {url}: answered");
    }
    let sink = exactly::pipeline::sink(&plan, Arc::new(FailPoints::default()));
    sink.preflight().await?;
    match (config.table_path(), config.dead_letter_path()) {
        (Some(table), Some(dead)) => println!("sink: {} tables {table} and {dead}: writable", sink.name()),
        _ => println!("sink: {}", sink.name()),
    }
    Ok(())
}

/// Loads, checks and plans the config at `path` (errors name the file).
fn plan(path: &std::path::Path) -> anyhow::Result<Plan> {
    let config = PipelineConfig::load(path)?;
    Ok(Plan::of(&config, &path.display().to_string())?)
}

async fn wait_finished(p: &Pipeline) {
    while !p.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn main_inner(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Verify { config } => {
            let plan = plan(&config)?;
            let audit = exactly::verify::verify(&plan.config).await?;
            print!("{}", audit.render());
            if audit.ok() {
                Ok(())
            } else {
                let keys = audit.keys.as_ref().map(|k| k.missing + k.duplicated + k.mismatched).unwrap_or(0);
                // The data table's partitions and every output's.
                let total = |f: fn(&exactly::verify::PartitionAudit) -> u64| {
                    audit.total(f) + audit.outputs.iter().map(|o| o.total(f)).sum::<u64>()
                };
                anyhow::bail!(
                    "verify: {} missing, {} duplicated, {} unexpected offsets, {} rows or dead letters unlike Kafka's record, {} key problems, {} commits by a fenced group member, {} epochs committed twice (in the data table and its outputs)",
                    total(|p| p.missing),
                    total(|p| p.duplicated),
                    total(|p| p.unexpected),
                    total(|p| p.mismatched),
                    keys,
                    audit.fencing.len(),
                    audit.twice.len()
                )
            }
        }
        Command::Optimize(a) => {
            for table in a.tables.tables(!a.zorder.is_empty()).await? {
                let r = exactly::maintenance::commands::optimize(&table, a.target_size_mb.map(|m| m * 1024 * 1024), &a.zorder)
                    .await?;
                println!(
                    "{}: {} files ({} bytes) compacted into {}, {} partitions; {} live files{}",
                    r.table,
                    r.files_removed,
                    r.bytes_removed,
                    r.files_added,
                    r.partitions_optimized,
                    r.live_files,
                    r.version.map(|v| format!("; version {v}")).unwrap_or_else(|| "; nothing to do".into())
                );
            }
            Ok(())
        }
        Command::Vacuum(a) => {
            let retention = a.retention_hours.map(|h| std::time::Duration::from_secs(h * 3600));
            for table in a.tables.tables(false).await? {
                let r = exactly::maintenance::commands::vacuum(&table, retention, !a.execute, a.force).await?;
                for f in &r.files {
                    println!("{}{f}", if r.dry_run { "would delete " } else { "deleted " });
                }
                println!(
                    "{}: {} {} files{}",
                    r.table,
                    if r.dry_run { "would delete" } else { "deleted" },
                    r.files.len(),
                    if r.dry_run { " (dry run: add --execute to delete them)" } else { "" }
                );
            }
            Ok(())
        }
        Command::Produce(a) => {
            let (connection, config) = a.kafka.connection()?;
            let topic =
                a.topic.or_else(|| config.and_then(|c| c.source.topics.first().cloned())).unwrap_or_else(|| "events".into());
            let opts = ProduceOptions {
                connection,
                topic,
                count: a.count,
                rate: a.rate,
                first_id: a.first_id,
                distinct_values: a.distinct_values,
                duplicate_every: a.duplicate_every,
                malformed_every: a.malformed_every,
            };
            let pre =
                kafka::preflight(&opts.connection, std::slice::from_ref(&opts.topic), std::time::Duration::from_secs(10)).await?;
            eprintln!("producing to '{}' ({} partitions) on {:?}", opts.topic, pre.len(), opts.connection);
            let report = produce(&opts, stop_signal()).await?;
            eprintln!(
                "produced {} records to '{}': {} events, {} duplicates, {} malformed",
                report.sent, opts.topic, report.events, report.duplicates, report.malformed
            );
            Ok(())
        }
        Command::Topics { command: TopicsCommand::Create { kafka: k, topic, partitions, replication } } => {
            let (connection, _) = k.connection()?;
            kafka::check(&connection, &[], std::time::Duration::from_secs(10)).await?;
            if kafka::create_topic(&connection, &topic, partitions, replication).await? {
                eprintln!("created topic '{topic}' with {partitions} partitions on {connection:?}");
            } else {
                eprintln!("topic '{topic}' already exists on {connection:?}");
            }
            Ok(())
        }
        Command::Check { config } => check(&config).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // delta-rs warns "table updated but max_retries is 0" for every commit that lands on
            // a newer version than it read with retries off; compaction and bucket replacement
            // commit so on purpose and read again themselves (see their comments): not a
            // warning for the user.
            EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                EnvFilter::new("warn,exactly=info,deltalake_core::writer::stats=error,deltalake_core::kernel::transaction=error")
            }),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(main_inner(cli));
    // Blocking tasks still running (a Kafka call, a stuck store) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what was wrong, where, and what to do.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
