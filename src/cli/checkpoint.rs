//! `exactly checkpoint ls|restore|rm`: the checkpoints a pipeline persisted to
//! `checkpoint.remote`, seen and managed by an operator.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use exactly::state::persist::Remote;
use exactly::PipelineConfig;

#[derive(Subcommand)]
pub(crate) enum CheckpointCommand {
    /// List the persisted checkpoints (newest last) and the local one.
    Ls {
        /// The pipeline's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Restore a persisted checkpoint (default: the newest) into the local checkpoint
    /// directory, which must hold none. A pipeline starting on an empty directory
    /// does this by itself; this is for choosing an older one.
    Restore {
        /// The pipeline's TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// The persisted epoch to restore.
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Delete a persisted checkpoint (e.g. one that cannot be restored); the files only it
    /// named are deleted by the pipeline's next clean.
    Rm {
        /// The pipeline's TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// The persisted epoch to delete.
        #[arg(long)]
        epoch: u64,
    },
}

fn remote(config: &PipelineConfig) -> anyhow::Result<Remote> {
    let at = config.checkpoint_remote().context("the config sets no checkpoint.remote: its checkpoint is not persisted")?;
    Ok(exactly::sink::storage::checkpoint_remote(&at)?)
}

/// Runs one `exactly checkpoint` command.
pub(crate) async fn checkpoint(command: CheckpointCommand) -> anyhow::Result<()> {
    match command {
        CheckpointCommand::Ls { config } => {
            let config = PipelineConfig::load(&config)?;
            let remote = remote(&config)?;
            let epochs = remote.epochs().await?;
            println!(
                "persisted in {remote:?}: {}",
                if epochs.is_empty() { "none".to_string() } else { format!("{} checkpoints", epochs.len()) }
            );
            for e in epochs {
                match remote.manifest(e).await {
                    Ok(m) => {
                        let at = chrono::DateTime::from_timestamp_millis(m.created_ms as i64)
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_default();
                        let records: i64 = m.offsets.iter().map(|o| o.next_offset).sum();
                        println!(
                            "  epoch {:>8}  {at}  {} files, {} bytes, next offsets sum {records}",
                            m.epoch,
                            m.files.len(),
                            m.bytes()
                        );
                    }
                    Err(err) => println!("  epoch {e:>8}  UNUSABLE: {err}"),
                }
            }
            let dir = config.checkpoint_dir();
            match dir.join("CURRENT").exists() {
                true => println!("local: {} (a checkpoint; open it with the pipeline stopped to see its epoch)", dir.display()),
                false => {
                    println!("local: {} holds no checkpoint (the next start restores the newest persisted one)", dir.display())
                }
            }
            Ok(())
        }
        CheckpointCommand::Restore { config, epoch } => {
            let config = PipelineConfig::load(&config)?;
            let remote = remote(&config)?;
            let dir = config.checkpoint_dir();
            if dir.join("CURRENT").exists() {
                anyhow::bail!("{} holds a checkpoint: move it away first (it is the working copy)", dir.display());
            }
            let m = match epoch {
                Some(e) => remote.manifest(e).await?,
                None => remote.newest().await?.context("no persisted checkpoint to restore")?,
            };
            if m.pipeline != config.id {
                anyhow::bail!("the persisted checkpoint belongs to pipeline '{}', not '{}'", m.pipeline, config.id);
            }
            let bytes = remote.restore(&m, &dir).await?;
            println!("restored epoch {} ({bytes} bytes) into {}", m.epoch, dir.display());
            Ok(())
        }
        CheckpointCommand::Rm { config, epoch } => {
            let config = PipelineConfig::load(&config)?;
            let remote = remote(&config)?;
            if !remote.epochs().await?.contains(&epoch) {
                anyhow::bail!("no persisted checkpoint of epoch {epoch} in {remote:?}");
            }
            remote.remove(epoch).await?;
            println!("deleted the persisted checkpoint of epoch {epoch}");
            Ok(())
        }
    }
}
