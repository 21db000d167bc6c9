//! The `exactly` command line.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::maintenance::{OptimizeArgs, VacuumArgs};
use cli::produce::ProduceArgs;
use cli::run::RunArgs;
use cli::topics::TopicsCommand;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "exactly", version, about = "Exactly-once Kafka -> Delta Lake streaming on a supervised actor tree")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written on stderr: `text` (coloured on a terminal) or `json` (one
    /// object per line: timestamp, level, message, fields; for log collectors).
    #[arg(long, global = true, value_enum, default_value = "text", env = "EXACTLY_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// security settings, its topics exist, its schema registry answers, its tables' store (and
    /// `checkpoint.remote`'s) can be written.
    Check {
        /// The pipeline's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// See and manage the checkpoints a pipeline persisted to `checkpoint.remote`.
    Checkpoint {
        #[command(subcommand)]
        command: cli::checkpoint::CheckpointCommand,
    },
    /// Take over from kafka-delta-ingest or Spark Structured Streaming: print where each
    /// partition starts, as the `[source.starting_partition_offsets]` section of the config.
    Adopt {
        #[command(subcommand)]
        command: cli::adopt::AdoptCommand,
    },
    /// Manage topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
}

async fn main_inner(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => cli::run::run(args).await,
        Command::Verify { config } => cli::verify::verify(&config).await,
        Command::Optimize(a) => cli::maintenance::optimize(a).await,
        Command::Vacuum(a) => cli::maintenance::vacuum(a).await,
        Command::Produce(a) => cli::produce::produce(a).await,
        Command::Topics { command } => cli::topics::topics(command).await,
        Command::Checkpoint { command } => cli::checkpoint::checkpoint(command).await,
        Command::Check { config } => cli::check::check(&config).await,
        Command::Adopt { command } => cli::adopt::adopt(command).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // delta-rs warns "table updated but max_retries is 0" for every commit that lands on a
    // newer version than it read with retries off; compaction and bucket replacement commit so
    // on purpose and read again themselves (see their comments): not a warning for the user.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("warn,exactly=info,deltalake_core::writer::stats=error,deltalake_core::kernel::transaction=error")
    });
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = cli::JSON_LINES.set(cli.log_format == LogFormat::Json);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
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
            cli::say("ERROR", &msg);
            ExitCode::from(cli::exit::code(&e))
        }
    }
}
