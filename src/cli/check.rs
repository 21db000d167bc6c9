//! `exactly check`: every connection `run` would make, checked and reported.

use std::sync::Arc;

use exactly::source as kafka;
use exactly::testing::failpoint::FailPoints;

use super::plan;

/// `exactly check`: every connection `run` would make, checked and reported, nothing written
/// to a table.
pub(crate) async fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let plan = plan(path)?;
    let config = &plan.config;
    let connection = exactly::source::Connection::of(&config.source)?;
    let src = &config.source;
    let cluster = kafka::check(&connection, src.subscription(), std::time::Duration::from_millis(src.connect_timeout_ms)).await?;
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
    if let Some(c) = &config.catalog {
        let entry = exactly::catalog::Entry::of(c, &config.id, None);
        let checked = tokio::task::spawn_blocking(move || exactly::catalog::hive::check(&entry)).await?;
        let database = &c.database;
        match checked.map_err(|e| anyhow::anyhow!("catalog: {e}"))? {
            true => println!("catalog: {}: answered; database `{database}` exists", c.uri),
            false => println!("catalog: {}: answered; database `{database}` is created at the first registration", c.uri),
        }
    }
    if let Some(at) = config.checkpoint_remote() {
        exactly::sink::storage::preflight_checkpoint(&at).await?;
        let remote = exactly::sink::storage::checkpoint_remote(&at)?;
        let epochs = remote.epochs().await?;
        match epochs.last() {
            Some(e) => {
                println!("checkpoint.remote {at}: writable; {} persisted checkpoints, the newest of epoch {e}", epochs.len())
            }
            None => println!("checkpoint.remote {at}: writable; no persisted checkpoint yet"),
        }
    }
    Ok(())
}
