//! `exactly produce`: the demo producer (the seed's events, optionally with duplicates and
//! malformed records).

use clap::Args;
use exactly::source as kafka;
use exactly::source::producer::{produce as send, ProduceOptions};

use super::{stop_signal, KafkaArgs};

#[derive(Args)]
pub(crate) struct ProduceArgs {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    /// Target topic (default: the config's first topic, else `events`).
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Stop after this many records (default: until Ctrl-C).
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Records per second (default: as fast as possible).
    #[arg(long)]
    pub(crate) rate: Option<u64>,
    /// First event id.
    #[arg(long, default_value_t = 0)]
    pub(crate) first_id: u64,
    /// Number of distinct `value`s (event_0 .. event_{n-1}).
    #[arg(long, default_value_t = 10)]
    pub(crate) distinct_values: u64,
    /// Every Nth record re-sends an earlier event unchanged.
    #[arg(long)]
    pub(crate) duplicate_every: Option<u64>,
    /// Every Nth record is malformed (not JSON, wrong type, missing field, not UTF-8).
    #[arg(long)]
    pub(crate) malformed_every: Option<u64>,
}

/// Produces the events `a` asks for until done or Ctrl-C.
pub(crate) async fn produce(a: ProduceArgs) -> anyhow::Result<()> {
    let (connection, config) = a.kafka.connection()?;
    if a.topic.is_none() && config.as_ref().is_some_and(|c| c.source.topic_pattern.is_some()) {
        anyhow::bail!("the config reads topics by source.topic_pattern: name the topic to write with --topic");
    }
    let topic = a.topic.or_else(|| config.and_then(|c| c.source.topics.first().cloned())).unwrap_or_else(|| "events".into());
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
    let pre = kafka::preflight(
        &opts.connection,
        exactly::config::Subscription::Named(std::slice::from_ref(&opts.topic)),
        std::time::Duration::from_secs(10),
    )
    .await?;
    eprintln!("producing to '{}' ({} partitions) on {:?}", opts.topic, pre.len(), opts.connection);
    let report = send(&opts, stop_signal()).await?;
    eprintln!(
        "produced {} records to '{}': {} events, {} duplicates, {} malformed",
        report.sent, opts.topic, report.events, report.duplicates, report.malformed
    );
    Ok(())
}
