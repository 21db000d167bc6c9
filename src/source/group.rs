//! Group mode (`source.group_id`): several processes run one pipeline, sharing its partitions
//! through a Kafka consumer group. This file holds the member's side of the group — its
//! long-lived client, the thread that serves the group protocol, and the bridge from
//! librdkafka's rebalance callback to the supervisor. The rules (ARCHITECTURE.md, "Group
//! mode"):
//!
//! - **The table is the authority for offsets.** A partition assigned to this member starts at
//!   the data table's recorded next offset for it (its per-partition `txn`), never at Kafka's
//!   committed offsets or a local checkpoint (`sink::Sink::group_start`).
//! - **Fencing.** A member commits a partition only while the table still records, for it, the
//!   offset this member last read or wrote; Delta's conflict check on the partitions' txn appIds
//!   catches a commit that raced in between. A fenced member drops its open epoch and waits a
//!   session timeout — long enough for its client to learn it lost the partition — before it
//!   reads the table again ([`FENCE_WAIT`] below is that wait).
//! - **Revocation aborts the open epoch.** Any change of this member's partitions ends the
//!   current generation of the actor tree (a commit in progress completes first) before the
//!   partitions change hands, then a new generation starts over the new assignment from the
//!   table's offsets.
//!
//! The client outlives generations: closing it would leave the group and trigger another
//! rebalance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{select, Either};
use rdkafka::consumer::Consumer;

use crate::config::{Subscription, TopicPattern};
use crate::error::{Error, Result};
use crate::model::{Offsets, TopicPartition};
use crate::source::{self, GroupListener, PipelineConsumer};

/// The longest a rebalance callback waits for the supervisor (tearing down a generation waits
/// for a commit in progress).
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a fenced member waits before it reads the table again, beyond the session timeout.
pub const FENCE_WAIT: Duration = Duration::from_secs(1);

/// The name of this member in its commits: host and process id.
pub fn member_name() -> String {
    member_name_for(std::process::id())
}

/// The name the member running as process `pid` on this host commits under.
pub fn member_name_for(pid: u32) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{pid}")
}

/// What the supervisor is asked during a rebalance.
pub enum GroupRequest {
    /// Abort the open epoch and say where `partitions` start.
    Assigning(Vec<TopicPartition>, std::sync::mpsc::Sender<Result<Offsets>>),
    /// Abort the open epoch: `partitions` are taken away (`lost`: already out of the group).
    Revoking(Vec<TopicPartition>, bool, std::sync::mpsc::Sender<()>),
    /// The assignment changed.
    Changed {
        /// Now assigned.
        added: Vec<TopicPartition>,
        /// No longer assigned.
        removed: Vec<TopicPartition>,
    },
}

/// Hands a [`GroupRequest`] to whoever positions the partitions (the supervisor); `false` when
/// it is gone.
pub type Notify = Box<dyn Fn(GroupRequest) -> bool + Send + Sync>;

/// Carries rebalance callbacks to the supervisor and waits for its answers.
struct Bridge {
    notify: Notify,
    /// Set when the member leaves: the callbacks of the final unassignment only unassign.
    closing: AtomicBool,
}

impl Bridge {
    fn ask<T>(&self, make: impl FnOnce(std::sync::mpsc::Sender<T>) -> GroupRequest) -> Option<T> {
        if self.closing.load(Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        if !(self.notify)(make(tx)) {
            return None;
        }
        // A supervisor that stops drops the request (and the sender): no answer is coming.
        let asked = std::time::Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(answer) => return Some(answer),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if self.closing.load(Ordering::SeqCst) || asked.elapsed() > CALLBACK_TIMEOUT {
                        return None;
                    }
                }
            }
        }
    }
}

impl GroupListener for Bridge {
    fn assigning(&self, partitions: &[TopicPartition]) -> Result<Offsets> {
        self.ask(|tx| GroupRequest::Assigning(partitions.to_vec(), tx))
            .unwrap_or_else(|| Err(Error::Actor("the pipeline did not position the assigned partitions".into())))
    }

    fn revoking(&self, partitions: &[TopicPartition], lost: bool) {
        if self.ask(|tx| GroupRequest::Revoking(partitions.to_vec(), lost, tx)).is_none() && !self.closing.load(Ordering::SeqCst)
        {
            tracing::error!("the pipeline did not abort the open epoch of the revoked partitions in time");
        }
    }

    fn changed(&self, added: Vec<TopicPartition>, removed: Vec<TopicPartition>) {
        if !self.closing.load(Ordering::SeqCst) {
            (self.notify)(GroupRequest::Changed { added, removed });
        }
    }
}

/// The topics `pattern` matches now, in order.
fn matching(client: &PipelineConsumer, brokers: &str, pattern: &TopicPattern, timeout: Duration) -> Result<Vec<String>> {
    let partitions = source::partitions_of(client, brokers, Subscription::Matching(pattern), timeout)?;
    Ok(source::topics_of(&partitions))
}

/// A member's `source.topic_pattern`, resolved again every `every`.
struct Watch {
    client: Arc<PipelineConsumer>,
    brokers: String,
    pattern: TopicPattern,
    every: Duration,
}

impl Watch {
    /// Starts the thread; it subscribes again when the matching topics differ from `topics`, and
    /// returns when its sender is dropped.
    fn spawn(self, mut topics: Vec<String>) -> Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("exactly-topics".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(self.every) {
                    // No match (every matching topic deleted) keeps the subscription: an empty
                    // one is refused, and a deleted topic's partitions are revoked anyway.
                    let now = match matching(&self.client, &self.brokers, &self.pattern, self.every.max(Duration::from_secs(5))) {
                        Ok(now) => now,
                        Err(e) => {
                            tracing::warn!(error = %e, "topic discovery failed; trying again");
                            continue;
                        }
                    };
                    if now != topics {
                        let names: Vec<&str> = now.iter().map(String::as_str).collect();
                        match self.client.subscribe(&names) {
                            Ok(()) => {
                                tracing::info!(topics = %now.join(","), "the topics source.topic_pattern matches changed; subscribed to them");
                                topics = now;
                            }
                            Err(e) => tracing::warn!(error = %e, "subscribing to the matching topics failed; trying again"),
                        }
                    }
                }
            })
            .map_err(|e| Error::Actor(format!("cannot start the topic discovery thread: {e}")))?;
        Ok((stop, thread))
    }
}

/// This process's membership in the group: the client (shared with every generation's
/// partition queues) and the thread that serves its main queue, where librdkafka delivers
/// rebalances.
pub struct GroupMember {
    client: Arc<PipelineConsumer>,
    bridge: Arc<Bridge>,
    stop: Option<futures::channel::oneshot::Sender<()>>,
    poller: Option<std::thread::JoinHandle<()>>,
    /// `source.topic_pattern`: the thread that subscribes to the matching topics as they change.
    watcher: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    /// How long the group waits for a silent member before reassigning its partitions.
    pub session_timeout: Duration,
}

impl GroupMember {
    /// Joins `group_id` for the topics `subscription` reads: rebalances go to `notify` (the
    /// supervisor's mailbox). A pattern is resolved here, as one process resolves it
    /// ([`source::partitions_of`]: one matcher, the same topics in both modes), and again every
    /// `discovery_ms` on a thread of its own: when the matching topics change, the member
    /// subscribes to the new list (a cooperative rebalance moves only the partitions of the
    /// topics that came or went).
    pub fn join(
        connection: &source::Connection,
        group_id: &str,
        subscription: Subscription<'_>,
        discovery_ms: u64,
        context: source::StatsContext,
        notify: Notify,
    ) -> Result<GroupMember> {
        let bridge = Arc::new(Bridge { notify, closing: AtomicBool::new(false) });
        let client: PipelineConsumer = source::group_consumer_config(connection, group_id, discovery_ms)
            .create_with_context(context.with_group(bridge.clone()))?;
        let client = Arc::new(client);
        let every = Duration::from_millis(discovery_ms);
        let (topics, watcher) = match subscription {
            Subscription::Named(topics) => (topics.to_vec(), None),
            Subscription::Matching(pattern) => {
                let brokers = connection.brokers().to_string();
                let topics = matching(client.as_ref(), &brokers, pattern, every.max(Duration::from_secs(5)))?;
                let watch = Watch { client: client.clone(), brokers, pattern: pattern.clone(), every };
                (topics.clone(), Some(watch.spawn(topics)?))
            }
        };
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        client.subscribe(&names)?;
        let (stop, mut stopped) = futures::channel::oneshot::channel::<()>();
        let polled = client.clone();
        // The main queue carries rebalances, errors and statistics (records go to the
        // partitions' own queues). Served on a thread of its own: a rebalance callback blocks
        // until the supervisor has aborted the open epoch, which must never stall the executor.
        let poller = std::thread::Builder::new()
            .name("exactly-group".into())
            .spawn(move || loop {
                let next = futures::executor::block_on(select(Box::pin(polled.recv()), &mut stopped));
                match next {
                    Either::Left((Ok(m), _)) => {
                        tracing::error!(topic = rdkafka::Message::topic(&m), "record on the main queue (partition not split)")
                    }
                    Either::Left((Err(e), _)) => {
                        tracing::warn!(error = %e, "kafka client error");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Either::Right(_) => return,
                }
            })
            .map_err(|e| Error::Actor(format!("cannot start the group thread: {e}")))?;
        Ok(GroupMember {
            client,
            bridge,
            stop: Some(stop),
            poller: Some(poller),
            watcher,
            session_timeout: source::session_timeout(connection),
        })
    }

    /// The group client.
    pub fn client(&self) -> &Arc<PipelineConsumer> {
        &self.client
    }

    /// Leaves the group (blocking: run it off the executor). The final unassignment's callbacks
    /// no longer reach the supervisor.
    pub fn leave(mut self) {
        // First the pattern's watcher, so that no subscription follows the unsubscription.
        if let Some((stop, watcher)) = self.watcher.take() {
            drop(stop);
            let _ = watcher.join();
        }
        // Also frees a rebalance callback waiting for the stopped supervisor.
        self.bridge.closing.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        self.client.unsubscribe();
        // Dropping the last handle closes the client: it leaves the group and serves the final
        // revocation itself.
    }
}
