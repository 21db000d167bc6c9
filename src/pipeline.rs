//! The entry point: [`Pipeline::start`] checks the brokers, spawns the supervisor and returns a
//! handle; [`run`] runs until a shutdown future resolves (Ctrl-C in the CLI, anything in tests).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::failpoint::FailPoints;
use crate::kafka;
use crate::progress::Progress;
use crate::sink::Sink;
use crate::supervisor::{PipelineStatus, SupervisorActor, SupervisorArgs, SupervisorMsg};

/// How to start a pipeline, beyond its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Fail points to arm (tests and the chaos suite); share them with the sink.
    pub failpoints: Arc<FailPoints>,
    /// Rebuild the checkpoint from the table's last committed epoch before starting: the
    /// documented way out when the checkpoint was lost or belongs to another run.
    pub reset_checkpoint_from_table: bool,
}

/// A running pipeline.
pub struct Pipeline {
    supervisor: ActorRef<SupervisorMsg>,
    join: JoinHandle<()>,
    outcome: Arc<Mutex<Option<Error>>>,
    progress: broadcast::Sender<Progress>,
}

impl Pipeline {
    /// Checks the brokers and topics, then starts the actor tree. Fails fast, with one clear
    /// error, when the brokers do not answer or a topic is missing.
    pub async fn start(config: PipelineConfig, sink: Arc<dyn Sink>) -> Result<Pipeline> {
        Self::start_with(config, sink, RunOptions::default()).await
    }

    /// [`Pipeline::start`] with options.
    pub async fn start_with(config: PipelineConfig, sink: Arc<dyn Sink>, options: RunOptions) -> Result<Pipeline> {
        let src = &config.source;
        let partitions = kafka::preflight(&src.brokers, &src.topics, Duration::from_millis(src.connect_timeout_ms)).await?;
        let outcome = Arc::new(Mutex::new(None));
        let (progress, _) = broadcast::channel(1024);
        let args = SupervisorArgs {
            config: Arc::new(config),
            sink,
            partitions,
            outcome: outcome.clone(),
            progress: progress.clone(),
            failpoints: options.failpoints,
            reset_checkpoint_from_table: options.reset_checkpoint_from_table,
        };
        let (supervisor, join) = Actor::spawn(None, SupervisorActor, args).await.map_err(|e| Error::Actor(e.to_string()))?;
        Ok(Pipeline { supervisor, join, outcome, progress })
    }

    /// Progress reports, one per committed epoch, from now on.
    pub fn progress(&self) -> broadcast::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The tree's current state.
    pub async fn status(&self) -> Result<PipelineStatus> {
        ractor::call_t!(self.supervisor, SupervisorMsg::Status, 10_000).map_err(|e| Error::Actor(format!("status: {e}")))
    }

    /// True once the pipeline has stopped (by itself, on a fatal error, or after shutdown).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Commits the open epoch and stops; returns the pipeline's outcome.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.supervisor.cast(SupervisorMsg::Shutdown);
        self.wait().await
    }

    /// Waits until the pipeline stops by itself; `Err` if it stopped on a fatal error.
    pub async fn wait(self) -> Result<()> {
        let _ = self.join.await;
        match self.outcome.lock().expect("outcome lock").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
    let mut join = pipeline.join;
    tokio::select! {
        _ = &mut join => {}
        _ = shutdown => {
            let _ = supervisor.cast(SupervisorMsg::Shutdown);
            let _ = join.await;
        }
    }
    let result = outcome.lock().expect("outcome lock").take();
    match result {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
