//! Catalog registration (`[catalog]`) in a real Hive Metastore (Apache Hive's standalone
//! metastore, scripts/metastore): every table of a pipeline — data, dead letters, an output — is
//! registered as an external Delta table and re-registered when its schema grows; Spark finds
//! each by name through the metastore and reads Python's rows; a metastore that is away costs no
//! epoch, is counted, and the registration lands once it is back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use exactly::catalog::{hive, Entry, Existing};
use exactly::config::{
    CatalogConfig, CatalogKind, DecodeConfig, FieldConfig, FieldType, OutputConfig, SchemaEvolution, SinkConfig,
};
use exactly::source::producer::{produce, ProduceOptions};
use exactly::PipelineConfig;
use serde_json::json;

use crate::common;

/// The Thrift URI of the metastore `scripts/with-metastore` started.
fn metastore() -> String {
    std::env::var("EXACTLY_METASTORE")
        .expect("EXACTLY_METASTORE is not set: run the suite with `just test` (scripts/with-metastore starts the metastore)")
}

/// `[catalog]` for `uri`, in a database of the test's own.
fn catalog(uri: String) -> CatalogConfig {
    CatalogConfig {
        kind: CatalogKind::Hive,
        uri,
        database: common::unique("db").replace('-', "_"),
        table: None,
        timeout_ms: 5_000,
    }
}

/// What the real metastore holds for `config`'s table `suffix` names.
fn registered(config: &PipelineConfig, suffix: Option<&str>) -> Option<Existing> {
    let mut c = config.catalog.clone().unwrap();
    c.uri = metastore();
    hive::lookup(&Entry::of(&c, &config.id, suffix)).unwrap()
}

/// Waits until the metastore holds `config`'s table `suffix` names at `table`, with a schema
/// holding `column`.
async fn wait_registered(config: &PipelineConfig, suffix: Option<&str>, table: &Path, column: &str) {
    let location = url::Url::from_directory_path(table).unwrap().as_str().trim_end_matches('/').to_string();
    let what = format!("{suffix:?} registered at {location} with `{column}`");
    common::wait_until(Duration::from_secs(60), &what, || async {
        registered(config, suffix).is_some_and(|e| {
            let schema = e.properties.get("spark.sql.sources.schema").cloned().unwrap_or_default();
            e.location.as_deref().is_some_and(|l| exactly::catalog::same_location(l, &location))
                && schema.contains(&format!("\"name\":\"{column}\""))
        })
    })
    .await;
}

fn declared(with_ts: bool) -> DecodeConfig {
    let mut fields = vec![FieldConfig::new("id", FieldType::Long, false), FieldConfig::new("value", FieldType::String, true)];
    if with_ts {
        fields.push(FieldConfig::new("ts", FieldType::Timestamp, true));
    }
    DecodeConfig { fields, ..DecodeConfig::seed() }
}

/// Runs `config` until its table holds the topic and the metastore holds `tables` (suffix, path,
/// a column of its schema), then stops it; it passes `verify`.
async fn run(config: &PipelineConfig, tables: &[(Option<&str>, &Path, &str)]) {
    let pipeline = common::start(config, Default::default()).await;
    common::wait_table_drained(config.table_path().unwrap(), &config.id, &config.source.topics[0], Duration::from_secs(60)).await;
    for (suffix, path, column) in tables {
        wait_registered(config, *suffix, path, column).await;
    }
    pipeline.shutdown().await.unwrap();
    common::assert_verified(config).await;
}

/// Data, dead letters and a partitioned output are registered once created; a table whose
/// schema grows is registered again; Spark reads each by its name in the metastore and gets
/// Python's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_is_registered_and_spark_reads_it_by_name() {
    let topic = common::topic("catalog", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let batch = |first_id: u64| {
        let mut opts = ProduceOptions::new(&common::brokers(), &topic, 300);
        (opts.first_id, opts.malformed_every) = (first_id, Some(30));
        opts
    };
    produce(&batch(0), std::future::pending()).await.unwrap();
    // A pipeline with an output (outputs and schema evolution do not go together yet).
    let mut fanned = common::delta_config(&common::unique("cat"), &topic, &dir.path().join("fanned"));
    fanned.catalog = Some(catalog(metastore()));
    let evens = dir.path().join("fanned/evens");
    if let SinkConfig::Delta { outputs, .. } = &mut fanned.sink {
        outputs.push(OutputConfig {
            name: "evens".into(),
            path: evens.clone().into(),
            select: None,
            filter: Some("id % 2 = 0".into()),
            partition_by: vec!["value".into()],
        });
    }
    let (table, dead) = (dir.path().join("fanned/table"), dir.path().join("fanned/table_dead_letters"));
    run(&fanned, &[(None, table.as_path(), "value"), (Some("dead_letters"), &dead, "reason"), (Some("evens"), &evens, "value")])
        .await;
    let registered_data = registered(&fanned, None).unwrap();
    assert_eq!(registered_data.properties.get("spark.sql.sources.provider").map(String::as_str), Some("delta"));
    assert_eq!(
        registered(&fanned, Some("evens")).unwrap().properties.get("spark.sql.sources.schema.partCol.0").map(String::as_str),
        Some("value")
    );

    // A pipeline whose schema grows (`ts` declared on its second run), in the same catalog.
    let mut grown = common::delta_config(&common::unique("grown"), &topic, &dir.path().join("grown"));
    grown.decode = declared(false);
    grown.catalog = Some(CatalogConfig { database: fanned.catalog.as_ref().unwrap().database.clone(), ..catalog(metastore()) });
    if let SinkConfig::Delta { schema_evolution, .. } = &mut grown.sink {
        *schema_evolution = SchemaEvolution::AddColumns;
    }
    let grown_table = dir.path().join("grown/table");
    run(&grown, &[(None, grown_table.as_path(), "value")]).await;
    produce(&batch(300), std::future::pending()).await.unwrap();
    grown.decode = declared(true);
    run(&grown, &[(None, grown_table.as_path(), "ts")]).await;

    let name = |config: &PipelineConfig, suffix: Option<&str>| {
        let c = config.catalog.as_ref().unwrap();
        format!("{}.{}", c.database, c.name_of(&config.id, suffix))
    };
    let answer = common::spark(&json!({
        "metastore": metastore(),
        "named": {
            "data": name(&fanned, None),
            "dead": name(&fanned, Some("dead_letters")),
            "evens": name(&fanned, Some("evens")),
            "grown": name(&grown, None),
        },
    }));
    for (key, path, at_least) in
        [("data", &table, 280), ("dead", &dead, 10), ("evens", &evens, 140), ("grown", &grown_table, 550)]
    {
        let python = common::canonical(&common::read_rows_with_python(path)["records"]);
        let spark = common::canonical(&answer["tables"][key]["records"]);
        assert!(python.len() >= at_least, "{key}: {} rows", python.len());
        assert_eq!(spark, python, "{key}: Spark reads the registered table's rows");
    }
    let with_ts = answer["tables"]["grown"]["records"].as_array().unwrap().iter().filter(|r| !r["ts"].is_null()).count();
    assert!(with_ts >= 250, "Spark sees the grown column through the catalog ({with_ts})");
}

/// A proxy in front of the real metastore that refuses connections until it is opened: the
/// catalog away, then back. Every connection it lets through reaches the real metastore.
struct Gate {
    addr: std::net::SocketAddr,
    open: Arc<AtomicBool>,
}

async fn gate(upstream: String) -> Gate {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicBool::new(false));
    let state = open.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if !state.load(Ordering::SeqCst) {
                continue; // dropped: the connection is closed at once
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    Gate { addr, open }
}

/// The metastore away: every epoch commits anyway (the table drains and passes `verify`),
/// the failures are counted in `exactly_catalog_errors_total`, nothing is registered; once it is
/// back, the retried registration lands without a commit to prompt it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_that_is_away_costs_no_epoch_and_is_retried() {
    let topic = common::topic("catalog-away", 1).await;
    common::produce_events(&topic, 0, 500).await;
    let dir = tempfile::tempdir().unwrap();
    let upstream = metastore().trim_start_matches("thrift://").to_string();
    let gate = gate(upstream).await;
    let mut config = common::delta_config(&common::unique("away"), &topic, dir.path());
    config.catalog = Some(catalog(format!("thrift://{}", gate.addr)));
    let port = common::free_port();
    config.metrics.listen = Some(format!("127.0.0.1:{port}"));
    let file = common::write_config(&config, dir.path());
    let child = common::spawn(&file, None);
    let table: PathBuf = dir.path().join("table");
    common::wait_table_drained(&table, &config.id, &topic, Duration::from_secs(60)).await;
    let errors = || {
        let metrics = common::http_get(port, "/metrics").unwrap_or_default();
        metrics
            .lines()
            .filter(|l| l.starts_with("exactly_catalog_errors_total{") && l.contains("table=\"data\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    common::wait_until(Duration::from_secs(30), "catalog failures counted", || async { errors() >= 1.0 }).await;
    assert!(registered(&config, None).is_none(), "nothing registered while the catalog is away");
    gate.open.store(true, Ordering::SeqCst);
    wait_registered(&config, None, &table, "value").await;
    common::terminate(child).await;
    common::assert_verified(&config).await;
}

/// `exactly check` asks the metastore: it answers (and whether the database exists yet), or the
/// check fails with one line naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_asks_the_metastore() {
    let topic = common::topic("catalog-check", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let check = |uri: &str| {
        let mut config = common::delta_config(&common::unique("chk"), &topic, dir.path());
        config.catalog = Some(catalog(uri.to_string()));
        let file = common::write_config(&config, dir.path());
        let out =
            std::process::Command::new(env!("CARGO_BIN_EXE_exactly")).args(["check", "--config"]).arg(&file).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, stdout, stderr) = check(&metastore());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("catalog: {}: answered; database `", metastore())), "{stdout}");
    let port = common::free_port();
    let (code, _, stderr) = check(&format!("thrift://127.0.0.1:{port}"));
    assert_ne!(code, Some(0));
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() == 1 && lines[0].contains(&format!("catalog: Hive Metastore 127.0.0.1:{port}")), "{stderr}");
}
