//! The entry point: [`Pipeline::start`] checks the brokers, spawns the supervisor and returns a
//! handle; [`run`] runs until a shutdown future resolves (Ctrl-C in the CLI, anything in tests).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::config::{PipelineConfig, SinkConfig};
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::runtime::messages::{PipelineStatus, SupervisorMsg};
use crate::runtime::supervisor::{SupervisorActor, SupervisorArgs};
use crate::sink::{console, delta, Sink};
use crate::source;
use crate::telemetry::progress::Progress;
use crate::testing::failpoint::FailPoints;

/// How to start a pipeline, beyond its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Fail points to arm (tests and the chaos suite); share them with the sink.
    pub failpoints: Arc<FailPoints>,
    /// Rebuild the checkpoint from the table's last committed epoch before starting: the
    /// documented way out when the checkpoint was lost or belongs to another run.
    pub reset_checkpoint_from_table: bool,
    /// Read every partition to the offsets that are latest now, commit, and stop (a scheduled
    /// job; see `runtime::supervisor::until`).
    pub until_caught_up: bool,
}

/// A running pipeline.
pub struct Pipeline {
    supervisor: ActorRef<SupervisorMsg>,
    join: JoinHandle<()>,
    outcome: Arc<Mutex<Option<Error>>>,
    stopped_cleanly: Arc<AtomicBool>,
    progress: broadcast::Sender<Progress>,
    shutdown_timeout: Duration,
}

/// Beyond `supervisor.shutdown_timeout_ms`, how long the supervisor gets to tear the tree down
/// before [`Pipeline::shutdown`] stops waiting for it (a supervisor stuck in a start-up step).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Asks the supervisor to commit the open epoch and stop, and waits for it — at most the
/// configured shutdown timeout plus [`SHUTDOWN_GRACE`]; then the supervisor is killed and the
/// stop is reported as failed. Every way a pipeline is stopped goes through here.
async fn stop(
    supervisor: &ActorRef<SupervisorMsg>,
    join: &mut JoinHandle<()>,
    outcome: &Mutex<Option<Error>>,
    timeout: Duration,
) {
    let _ = supervisor.cast(SupervisorMsg::Shutdown);
    if tokio::time::timeout(timeout + SHUTDOWN_GRACE, &mut *join).await.is_err() {
        supervisor.kill();
        outcome.lock().expect("outcome lock").get_or_insert(Error::Shutdown(format!(
            "the pipeline did not stop within {} s",
            (timeout + SHUTDOWN_GRACE).as_secs()
        )));
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, join).await;
    }
}

impl Pipeline {
    /// Checks the brokers, topics and the sink's storage, then starts the actor tree. Fails
    /// fast, with one clear error, when the brokers do not answer, a topic is missing, or the
    /// table's store cannot be written.
    pub async fn start(config: PipelineConfig, sink: Arc<dyn Sink>) -> Result<Pipeline> {
        Self::start_with(config, sink, RunOptions::default()).await
    }

    /// [`Pipeline::start`] with options.
    pub async fn start_with(config: PipelineConfig, sink: Arc<dyn Sink>, options: RunOptions) -> Result<Pipeline> {
        Self::start_planned(Plan::new(&config)?, sink, options).await
    }

    /// Starts the pipeline `plan` describes, committing to `sink` (built from the same plan by
    /// [`sink`]: the reader schema is fetched once).
    pub async fn start_planned(plan: Plan, sink: Arc<dyn Sink>, options: RunOptions) -> Result<Pipeline> {
        let config = &plan.config;
        let src = &config.source;
        if options.reset_checkpoint_from_table && src.group_id.is_some() {
            return Err(Error::Recovery(
                "--reset-checkpoint-from-table has no meaning in group mode (source.group_id): members keep no checkpoint, the table records where each partition resumes".into(),
            ));
        }
        if options.until_caught_up && src.group_id.is_some() {
            return Err(Error::Config(crate::error::ConfigError::Invalid {
                path: config.id.clone(),
                field: "source.group_id".into(),
                problem: "cannot be used with --until-caught-up yet: each member would stop at its own partitions' ends".into(),
            }));
        }
        let connection = crate::source::Connection::of(&config.source)?;
        let timeout = Duration::from_millis(src.connect_timeout_ms);
        let partitions = source::preflight(&connection, src.subscription(), timeout).await?;
        let until = match options.until_caught_up {
            true => Some(
                source::resolve_starting_offsets(&connection, &partitions, crate::config::StartingOffsets::Latest, timeout)
                    .await?,
            ),
            false => None,
        };
        sink.preflight().await?;
        if src.group_id.is_none() {
            let dir = config.checkpoint_dir();
            crate::sink::storage::preflight_local(&dir).map_err(|detail| Error::Checkpoint { path: dir, detail })?;
        }
        let persisted = match config.checkpoint_remote() {
            Some(at) => {
                crate::sink::storage::preflight_checkpoint(&at).await?;
                let remote = crate::sink::storage::checkpoint_remote(&at)?;
                let found = crate::state::persist::start(remote, &config.checkpoint_dir(), &config.id).await?;
                let took = found.restored.map_or(0.0, |(_, _, took)| took.as_secs_f64());
                metrics::gauge!(crate::telemetry::metrics::CHECKPOINT_RESTORE_SECONDS).set(took);
                Some(found)
            }
            None => None,
        };
        let outcome = Arc::new(Mutex::new(None));
        let stopped_cleanly = Arc::new(AtomicBool::new(false));
        let (progress, _) = broadcast::channel(1024);
        let shutdown_timeout = Duration::from_millis(config.supervisor.shutdown_timeout_ms);
        let args = SupervisorArgs {
            plan,
            connection,
            sink,
            partitions,
            outcome: outcome.clone(),
            stopped_cleanly: stopped_cleanly.clone(),
            progress: progress.clone(),
            failpoints: options.failpoints,
            reset_checkpoint_from_table: options.reset_checkpoint_from_table,
            persisted,
            until,
        };
        let (supervisor, join) = Actor::spawn(None, SupervisorActor, args).await.map_err(|e| Error::Actor(e.to_string()))?;
        Ok(Pipeline { supervisor, join, outcome, stopped_cleanly, progress, shutdown_timeout })
    }

    /// Progress reports, one per committed epoch, from now on.
    pub fn progress(&self) -> broadcast::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The tree's current state.
    pub async fn status(&self) -> Result<PipelineStatus> {
        ractor::call_t!(self.supervisor, SupervisorMsg::Status, 10_000).map_err(|e| Error::Actor(format!("status: {e}")))
    }

    /// What `/readyz` asks: the pipeline's readiness (see [`crate::telemetry::health::readiness`]),
    /// from the supervisor's status; a supervisor that does not answer within 2 s is not ready.
    pub fn readiness_probe(&self) -> crate::telemetry::http::Probe {
        let supervisor = self.supervisor.clone();
        Arc::new(move || {
            let supervisor = supervisor.clone();
            Box::pin(async move {
                match ractor::call_t!(supervisor, SupervisorMsg::Status, 2_000) {
                    Ok(status) => crate::telemetry::health::readiness(&status.health),
                    Err(_) => Err("the supervisor does not answer".into()),
                }
            })
        })
    }

    /// True once the pipeline has stopped (by itself, on a fatal error, or after shutdown).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Commits the open epoch and stops; returns the pipeline's outcome.
    pub async fn shutdown(mut self) -> Result<()> {
        stop(&self.supervisor, &mut self.join, &self.outcome, self.shutdown_timeout).await;
        take_outcome(&self.outcome, &self.stopped_cleanly)
    }

    /// Waits until the pipeline stops by itself; `Err` if it stopped on a fatal error.
    pub async fn wait(self) -> Result<()> {
        let _ = self.join.await;
        take_outcome(&self.outcome, &self.stopped_cleanly)
    }
}

/// How the pipeline ended: the fatal error its supervisor recorded, an error when the supervisor
/// itself failed (it recorded nothing and never reached `post_stop`), or `Ok`.
fn take_outcome(outcome: &Mutex<Option<Error>>, stopped_cleanly: &AtomicBool) -> Result<()> {
    match outcome.lock().expect("outcome lock").take() {
        Some(e) => Err(e),
        None if !stopped_cleanly.load(Ordering::SeqCst) => {
            Err(Error::Actor("the pipeline's supervisor failed without a recorded reason (see the log); nothing past the last committed epoch was committed".into()))
        }
        None => Ok(()),
    }
}

/// Runs a pipeline until `shutdown` resolves (then commits the open epoch and stops) or until it
/// fails for good (restart budget spent, unrecoverable state).
pub async fn run(
    config: PipelineConfig,
    sink: Arc<dyn Sink>,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let pipeline = Pipeline::start_with(config, sink, options).await?;
    let supervisor = pipeline.supervisor.clone();
    let outcome = pipeline.outcome.clone();
    let stopped_cleanly = pipeline.stopped_cleanly.clone();
    let timeout = pipeline.shutdown_timeout;
    let mut join = pipeline.join;
    tokio::select! {
        _ = &mut join => {}
        _ = shutdown => stop(&supervisor, &mut join, &outcome, timeout).await,
    }
    take_outcome(&outcome, &stopped_cleanly)
}

/// Builds the sink `plan` names: the console, or the Delta tables (data, dead letters,
/// `sink.outputs`) with their maintenance.
pub fn sink(plan: &Plan, failpoints: Arc<FailPoints>) -> Arc<dyn Sink> {
    let config = &plan.config;
    let (Some(table), Some(dead_letters), Some(data), Some(plain)) = (
        config.table_path(),
        config.dead_letter_path(),
        crate::maintenance::Settings::of(&config.sink, config.aggregate.is_some()),
        crate::maintenance::Settings::of(&config.sink, false),
    ) else {
        let num_rows = match config.sink {
            SinkConfig::Console { num_rows } => num_rows,
            SinkConfig::Delta { .. } => 0,
        };
        return Arc::new(console::ConsoleSink::stdout(num_rows));
    };
    let (schema, partition_by) = plan.table.clone();
    // `[catalog]`: each table's maintenance registers it.
    let entry = |suffix: Option<&str>| config.catalog.as_ref().map(|c| crate::catalog::Entry::of(c, &config.id, suffix));
    let (data, dead) = (data.cataloged(entry(None)), plain.clone().cataloged(entry(Some("dead_letters"))));
    let sink = delta::DeltaSink::new(&config.id, (table, data), (dead_letters, dead), schema, partition_by, failpoints)
        .evolving(config.sink.schema_evolution())
        .meaning(plan.meaning.clone())
        .taking_writer_columns(config.takes_writer_columns())
        .upserting(config.upsert.clone());
    let sink = match &plan.outputs {
        Some((fan_out, schemas)) => {
            let tables = config
                .sink
                .outputs()
                .iter()
                .zip(schemas)
                .map(|(o, schema)| {
                    let settings = plain.clone().cataloged(entry(Some(&o.name)));
                    (config.output_path(o), settings, schema.clone(), o.partition_by.clone())
                })
                .collect();
            sink.with_outputs(tables, fan_out.clone())
        }
        None => sink,
    };
    match &config.source.group_id {
        Some(_) => Arc::new(sink.in_group(source::group::member_name())),
        None => Arc::new(sink),
    }
}

/// [`sink`] of a config planned here (tests, embedders that build the config in code).
pub fn sink_for(config: &PipelineConfig, failpoints: Arc<FailPoints>) -> Result<Arc<dyn Sink>> {
    Ok(sink(&Plan::new(config)?, failpoints))
}
