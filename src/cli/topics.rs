//! `exactly topics`: topic administration.

use clap::Subcommand;
use exactly::source as kafka;

use super::KafkaArgs;

#[derive(Subcommand)]
pub(crate) enum TopicsCommand {
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

/// Runs a topics command.
pub(crate) async fn topics(command: TopicsCommand) -> anyhow::Result<()> {
    let TopicsCommand::Create { kafka: k, topic, partitions, replication } = command;
    let (connection, _) = k.connection()?;
    kafka::check(&connection, exactly::config::Subscription::Named(&[]), std::time::Duration::from_secs(10)).await?;
    if kafka::create_topic(&connection, &topic, partitions, replication).await? {
        eprintln!("created topic '{topic}' with {partitions} partitions on {connection:?}");
    } else {
        eprintln!("topic '{topic}' already exists on {connection:?}");
    }
    Ok(())
}
