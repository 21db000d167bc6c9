//! Change data capture end to end, every part real: PostgreSQL (Debian's package,
//! scripts/postgres) -> Debezium's PostgreSQL connector in Kafka Connect (Maven Central,
//! scripts/debezium) on the test broker -> `exactly run`, SIGKILLed at random moments -> a Delta
//! table that Python `deltalake` and Spark read equal to `SELECT * FROM` the database's table,
//! row for row; `exactly verify` agrees. With Kafka's JSON converter, and with Apicurio's Avro
//! converter against the project's registry. Runs under scripts/with-debezium and
//! scripts/with-registry (`just test` does).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use exactly::config::{Envelope, FieldConfig, FieldType, UpsertConfig};
use rand::Rng;
use serde_json::{json, Value};

use crate::common;

/// Kafka Connect's REST API (scripts/with-debezium sets it).
fn connect() -> String {
    std::env::var("EXACTLY_CONNECT")
        .expect("EXACTLY_CONNECT is not set: run the suite under scripts/with-debezium (`just test` does)")
}

/// Runs SQL on the test database (scripts/postgres) and returns what psql prints (unaligned).
fn psql(sql: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres");
    let mut child = Command::new(script)
        .args(["psql", "-At", "-f", "-"])
        .env("PG_PORT", std::env::var("EXACTLY_POSTGRES_PORT").unwrap_or_else(|_| "5433".into()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run scripts/postgres psql");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `curl` against Connect's REST API: the method, the path, a JSON body.
fn rest(method: &str, path: &str, body: Option<&Value>) -> String {
    let mut c = Command::new("curl");
    c.args(["-sS", "-X", method, "-H", "Content-Type: application/json"]).arg(format!("{}{path}", connect()));
    if let Some(b) = body {
        c.args(["-d", &b.to_string()]);
    }
    let out = c.output().expect("curl");
    assert!(out.status.success(), "{method} {path}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The database table as JSON rows by id, in the forms the Delta readers print: timestamps in
/// ISO 8601 with `+00:00`.
fn database_rows(table: &str) -> BTreeMap<i64, Value> {
    let out = psql(&format!("set timezone = 'UTC'; select coalesce(json_agg(t), '[]') from {table} t;"));
    let rows: Vec<Value> = serde_json::from_str(out.trim()).unwrap();
    rows.into_iter().map(|r| (r["id"].as_i64().unwrap(), r)).collect()
}

/// A reader's rows (scripts/read_delta.py or scripts/read_spark.py) by id, the table's columns
/// only.
fn table_rows(read: &Value) -> BTreeMap<i64, Value> {
    read["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let cols: serde_json::Map<String, Value> =
                ["id", "name", "qty", "price", "active", "updated"].iter().map(|c| (c.to_string(), r[*c].clone())).collect();
            (r["id"].as_i64().unwrap(), Value::Object(cols))
        })
        .collect()
}

/// Rows equal, doubles compared as numbers.
fn same(a: &BTreeMap<i64, Value>, b: &BTreeMap<i64, Value>) -> bool {
    let norm = |m: &BTreeMap<i64, Value>| -> Vec<(i64, Vec<String>)> {
        m.iter()
            .map(|(id, r)| {
                let cells = ["id", "name", "qty", "price", "active", "updated"]
                    .iter()
                    .map(|c| match &r[*c] {
                        Value::Number(n) => format!("{:.6}", n.as_f64().unwrap()),
                        Value::String(t) if *c == "updated" => micros(t),
                        v => v.to_string(),
                    })
                    .collect();
                (*id, cells)
            })
            .collect()
    };
    norm(a) == norm(b)
}

/// An ISO 8601 instant with its fraction in microseconds, whatever digits it was printed with
/// (PostgreSQL drops trailing zeros, Python keeps six).
fn micros(t: &str) -> String {
    let (time, zone) = t.split_at(t.len() - 6);
    let (whole, fraction) = time.split_once('.').unwrap_or((time, ""));
    format!("{whole}.{fraction:0<6}{zone}")
}

/// What differs between a reader's rows and the database's (a few of each kind).
fn diff(have: &BTreeMap<i64, Value>, want: &BTreeMap<i64, Value>) -> String {
    let missing: Vec<&i64> = want.keys().filter(|k| !have.contains_key(k)).take(5).collect();
    let extra: Vec<&i64> = have.keys().filter(|k| !want.contains_key(k)).take(5).collect();
    let differ: Vec<String> = want
        .iter()
        .filter(|(k, v)| {
            have.get(k).is_some_and(|h| !same(&BTreeMap::from([(**k, h.clone())]), &BTreeMap::from([(**k, (*v).clone())])))
        })
        .take(3)
        .map(|(k, v)| format!("{k}: table {} database {v}", have[k]))
        .collect();
    format!("{} rows, database {}; missing {missing:?}, extra {extra:?}, differing {differ:?}", have.len(), want.len())
}

/// A seeded random workload of transactions: inserts, updates, updates of the key, deletes.
struct Workload {
    table: String,
    ids: Vec<i64>,
    next: i64,
}

impl Workload {
    fn value(&self, rng: &mut impl Rng, id: i64) -> String {
        let name = if rng.random_bool(0.1) { "null".to_string() } else { format!("'item {id} v{}'", rng.random_range(0..1000)) };
        format!(
            "{name}, {}, {}, {}, timestamptz '2026-01-01 00:00:00+00' + interval '{} microseconds'",
            rng.random_range(-50..500),
            rng.random_range(0..100_000) as f64 / 100.0,
            rng.random_bool(0.5),
            rng.random_range(0..10_000_000_000i64)
        )
    }

    /// `n` transactions of one to five statements, as one SQL script.
    fn transactions(&mut self, rng: &mut impl Rng, n: usize) -> String {
        let mut sql = String::new();
        for _ in 0..n {
            sql.push_str("begin;\n");
            for _ in 0..rng.random_range(1..=5) {
                let pick = rng.random_range(0..100);
                if self.ids.is_empty() || pick < 35 {
                    let id = self.next;
                    self.next += 1;
                    sql.push_str(&format!("insert into {} values ({id}, {});\n", self.table, self.value(rng, id)));
                    self.ids.push(id);
                } else {
                    let at = rng.random_range(0..self.ids.len());
                    let id = self.ids[at];
                    if pick < 75 {
                        sql.push_str(&format!(
                            "update {} set (name, qty, price, active, updated) = ({}) where id = {id};\n",
                            self.table,
                            self.value(rng, id)
                        ));
                    } else if pick < 85 {
                        let new = self.next;
                        self.next += 1;
                        sql.push_str(&format!("update {} set id = {new} where id = {id};\n", self.table));
                        self.ids[at] = new;
                    } else {
                        sql.push_str(&format!("delete from {} where id = {id};\n", self.table));
                        self.ids.swap_remove(at);
                    }
                }
            }
            sql.push_str("commit;\n");
        }
        sql
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_table_through_debezium_is_mirrored_exactly_through_sigkills() {
    mirror(Converter::Json).await;
}

/// The same in Avro: Apicurio's Avro converter registers the envelope's and the key's schemas
/// in the project's registry and frames each record with its schema id; `exactly` reads the
/// envelope as its reader schema (the `after` record's fields are the columns; `timestamptz`,
/// Debezium's ISO 8601 string, a timestamp column) and the tombstones' Avro keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_table_through_debezium_in_avro_through_the_registry_is_mirrored_exactly() {
    mirror(Converter::Avro).await;
}

/// How the connector writes its records.
#[derive(Clone, Copy, PartialEq)]
enum Converter {
    /// Kafka's JSON converter, with its schemas.
    Json,
    /// Apicurio's Avro converter, in the Confluent wire format, against the project's registry.
    Avro,
}

/// The project's registry (scripts/with-registry): its Confluent API, and Apicurio's own.
fn registry() -> (String, String) {
    let ccompat = std::env::var("EXACTLY_SCHEMA_REGISTRY")
        .expect("EXACTLY_SCHEMA_REGISTRY is not set: run the suite under scripts/with-registry (`just test` does)");
    let native = ccompat.replace("/apis/ccompat/v7", "/apis/registry/v2");
    (ccompat, native)
}

/// The connector's converter settings for `converter` (none: the worker's JSON converter).
fn converter_config(converter: Converter) -> serde_json::Map<String, Value> {
    let mut c = serde_json::Map::new();
    if converter == Converter::Avro {
        let (_, native) = registry();
        for side in ["key", "value"] {
            c.insert(format!("{side}.converter"), json!("io.apicurio.registry.utils.converter.AvroConverter"));
            for (k, v) in [
                ("apicurio.registry.url", native.as_str()),
                ("apicurio.registry.auto-register", "true"),
                ("apicurio.registry.find-latest", "true"),
                ("apicurio.registry.headers.enabled", "false"),
                ("apicurio.registry.as-confluent", "true"),
                ("apicurio.registry.use-id", "contentId"),
            ] {
                c.insert(format!("{side}.converter.{k}"), json!(v));
            }
        }
    }
    c
}

/// A PostgreSQL table mirrored into Delta through Debezium (its records converted by
/// `converter`) and `exactly`, SIGKILLed at random moments.
async fn mirror(converter: Converter) {
    let _heavy = common::heavy().await;
    let mut rng = common::seeded_rng(if converter == Converter::Json { "cdc postgres" } else { "cdc postgres avro" });
    let name = common::unique("cdc").replace('-', "_");
    let table = format!("items_{name}");
    psql(&format!(
        "create table {table} (id bigint primary key, name text, qty integer, price double precision, active boolean, updated timestamptz);"
    ));
    let mut work = Workload { table: table.clone(), ids: Vec::new(), next: 1 };
    // Rows before the connector starts: its snapshot (`op = r`).
    psql(&work.transactions(&mut rng, 40));
    let connector = format!("dbz_{name}");
    let prefix = format!("cdc{}", name.replace('_', ""));
    let mut connector_config = json!({
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "database.hostname": "127.0.0.1",
            "database.port": std::env::var("EXACTLY_POSTGRES_PORT").unwrap_or_else(|_| "5433".into()),
            "database.user": "postgres",
            "database.password": "unused",
            "database.dbname": "exactly",
            "topic.prefix": prefix,
            "table.include.list": format!("public.{table}"),
            "plugin.name": "pgoutput",
            "slot.name": connector,
            "publication.name": connector,
            "publication.autocreate.mode": "filtered",
            "topic.creation.default.replication.factor": "1",
            "topic.creation.default.partitions": "3",
    });
    connector_config.as_object_mut().unwrap().extend(converter_config(converter));
    rest("PUT", &format!("/connectors/{connector}/config"), Some(&connector_config));
    let _cleanup = Cleanup(connector.clone());
    let topic = format!("{prefix}.public.{table}");
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    match converter {
        Converter::Json => {
            config.decode.format = exactly::config::DecodeFormat::Json;
            config.decode.fields = vec![
                FieldConfig::new("id", FieldType::Long, false),
                FieldConfig::new("name", FieldType::String, true),
                FieldConfig::new("qty", FieldType::Int, true),
                FieldConfig::new("price", FieldType::Double, true),
                FieldConfig::new("active", FieldType::Boolean, true),
                FieldConfig::new("updated", FieldType::Timestamp, true),
            ];
        }
        Converter::Avro => {
            // The columns come from the envelope's schema, the topic's value subject.
            config.decode.format = exactly::config::DecodeFormat::Avro;
            config.decode.fields = Vec::new();
            config.decode.avro = Some(exactly::config::AvroConfig {
                reader_subject: Some(format!("{topic}-value")),
                framing: exactly::config::AvroFraming::Confluent,
                registry: Some(exactly::config::RegistryConfig {
                    url: registry().0,
                    username: None,
                    password: None,
                    ca_file: None,
                    timeout_ms: 5_000,
                    attempts: 3,
                }),
                ..Default::default()
            });
        }
    }
    config.decode.envelope = Envelope::Debezium;
    config.upsert = Some(UpsertConfig { key: vec!["id".into()], sequence_by: Some("source.lsn".into()) });
    // The topic appears with the snapshot's first record.
    common::wait_until(Duration::from_secs(120), "the connector's topic", || async {
        exactly::source::preflight(
            &common::kafka(),
            exactly::config::Subscription::Named(std::slice::from_ref(&topic)),
            Duration::from_secs(5),
        )
        .await
        .is_ok()
    })
    .await;
    let path = common::write_config(&config, dir.path());
    // The workload in rounds; `exactly` SIGKILLed at a random moment in each.
    for _ in 0..6 {
        let mut child = Running(common::spawn(&path, None));
        psql(&work.transactions(&mut rng, 30));
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_500))).await;
        child.0.kill().unwrap();
        child.0.wait().unwrap();
    }
    // The last run catches up: the Delta table, read by Python `deltalake`, equals the database.
    let want = database_rows(&table);
    let mut child = Running(common::spawn(&path, None));
    let start = Instant::now();
    let table_dir = dir.path().join("table");
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("exactly run exited ({status}) before the table equalled the database: {err}");
        }
        if !table_dir.join("_delta_log").is_dir() {
            assert!(start.elapsed() < Duration::from_secs(180), "no table after 180 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let read = common::read_rows_with_python(&table_dir);
        if same(&table_rows(&read), &want) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the table never equalled the database: {}",
            diff(&table_rows(&read), &want)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    common::terminate(std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap())).await;

    let python = table_rows(&common::read_rows_with_python(&table_dir));
    assert!(same(&python, &want), "Python deltalake reads the database's rows");
    assert_eq!(python.len(), want.len());
    let audit = common::assert_verified(&config).await;
    let keys = audit.keys.as_ref().unwrap();
    assert_eq!((keys.expected, keys.found), (want.len() as u64, want.len() as u64));
    common::assert_each_epoch_committed_once(&table_dir, &config.id).await;
    if converter == Converter::Json {
        // (The table's form does not depend on the converter: one Spark read is enough.)
        let spark = read_with_spark(&table_dir);
        assert!(same(&table_rows(&spark), &want), "Spark reads the database's rows");
    }
}

/// An `exactly run` process, killed if the test ends while it runs.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the test's connector and its replication slot (which would keep the database's WAL),
/// however the test ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let name = &self.0;
        let _ = Command::new("curl").args(["-sS", "-X", "DELETE"]).arg(format!("{}/connectors/{name}", connect())).output();
        let drop_slot = format!(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '{name}' and not active"
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres");
        // The connector's task lets go of the slot shortly after its deletion.
        for _ in 0..60 {
            let out = Command::new(script)
                .args([
                    "psql",
                    "-Atc",
                    &format!("{drop_slot}; select count(*) from pg_replication_slots where slot_name = '{name}'"),
                ])
                .output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim().ends_with('0')) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The table as Spark reads it (scripts/read_spark.py, with the bench's pyspark and delta-spark).
fn read_with_spark(table: &std::path::Path) -> Value {
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("EXACTLY_CACHE").unwrap_or_else(|_| format!("{home}/.cache/exactly"));
    let out = Command::new(format!("{cache}/bench-venv/bin/python"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/read_spark.py"))
        .arg(table)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run Spark (bench/setup installs it)");
    assert!(out.status.success(), "Spark failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}
