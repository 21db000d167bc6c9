//! The integration suite: one binary, every test against the real Apache Kafka broker that
//! `just test` starts (or the cluster in `KAFKA_BROKERS`).

// The toolkit shared with the chaos suite: names, config files, processes, table logs.
mod kit;
// Shared helpers: broker address, unique topics, producing, waiting with a deadline.
mod common;
// Every record of a topic is committed exactly once, in per-partition offset order.
mod consume;
// Killed and panicking actors are restarted from the last committed epoch; the restart budget.
mod supervision;
// The Delta sink: exactly once through restarts and fail points, audited and read independently.
mod delta;
// The process dies for real (SIGKILL, abort) and recovery is audited; lost checkpoints; records
// deleted before their commit are refused, never skipped.
mod crash;
// Exactly-once holes closed: growing topics, replays under back-pressure, stops with a stuck
// sink, stateful resets, late and future events, recreated topics, an audit that reads content.
mod holes;
// Column types: timestamps from RFC 3339 strings, dates, base64 binary, nested structs, lists
// and maps, exact decimals; read back with their Delta types.
mod types;
// Avro from an independent encoder: two writer schema versions in the Confluent wire format
// resolved into one table, single-object and bare framing, bad values as dead letters.
mod avro;
// Protobuf and JSON Schema from Confluent's own serializers and the real registry: every kind of
// field, writer schema versions, a protoc descriptor set, bad values as dead letters.
mod formats;
// Schema evolution: new columns join the table with their first values; drops, retypes and
// evolution without the setting are refused; kills around the evolving commit.
mod schema;
// Malformed records of every kind go to the dead-letter table; the pipeline keeps running.
mod malformed;
// Offset gaps (transaction markers, aborted records) are never counted as losses.
mod gaps;
// Dedup and keyed aggregation on RocksDB: retention, output modes, failures, readers.
mod stateful;

// Upserts and deletes by key (keyed topics, Debezium events) through deletion vectors; the
// upsert audit.
mod upsert;
// Spark reads every kind of table (append, dead letters, partitioned output, aggregates, a grown
// schema) as Python deltalake does, and streams the append table exactly once.
mod spark;
// Catalog registration in a real Hive Metastore: every table registered and re-registered as its
// schema grows, read by name by Spark; a metastore away costs no epoch and is retried.
mod catalog;
// Change data capture end to end: PostgreSQL -> Debezium in Kafka Connect -> exactly (SIGKILLed)
// -> Delta, equal to the database for Python deltalake and Spark.
mod cdc;

// SQL projections and filters over the decoded rows.
mod transform;
// One commit protocol, one recovery rule: crashes between tables, lost checkpoints, deleted
// tables, a second writer of an aggregate table, vacuum beside commits in flight.
mod recovery;
// Tables maintained while the pipeline writes them: a foreign OPTIMIZE between epochs.
mod maintenance;
// Tables on real object stores (SeaweedFS for S3, Azurite for Azure): exactly once, audited and
// read from the store; fences, outages, fresh disks, bad credentials.
mod object_storage;
// Checkpoints persisted to object storage: fresh disks restore and catch up with the table;
// SIGKILLs with a fresh disk every time stay exact; an unusable persisted checkpoint is refused.
mod persist;
// Secured Kafka (SASL_SSL with SCRAM and PLAIN, mutual TLS): exactly once over each, every
// refusal one line, the password never printed.
mod security;
// Group mode: several processes share the partitions; churn, paused members and refusals,
// audited on the data and on the log's claims.
mod group;
// Stateful group mode: each partition's dedup keys and counts move with it, on fresh disks.
mod group_state;
// The chaos suite's CI subset: every fault kind once, audited.
mod chaos;
// Monitoring against a real Prometheus: promtool, dashboards, panel data, alerts.
mod monitoring;
// The CLI: bad configs and unreachable brokers give one line and a non-zero exit.
mod cli;
