//! The command line, as a user meets it: bad input gives one line and a non-zero exit.

use std::process::Command;

fn exactly() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exactly"));
    c.env_remove("KAFKA_BROKERS").env("RUST_LOG", "off");
    c
}

/// Runs `exactly run --config <text>` and returns (exit code, stderr); the text gets a console
/// sink unless it names a sink (every file must).
fn run_with_config(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    let sink = if text.contains("[sink]") { "" } else { "\n[sink]\nkind = \"console\"\n" };
    std::fs::write(&path, format!("{text}{sink}")).unwrap();
    let out = exactly().args(["run", "--config"]).arg(&path).current_dir(dir.path()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

fn assert_one_line_error(code: i32, stderr: &str, needles: &[&str]) {
    assert_ne!(code, 0, "must exit non-zero; stderr: {stderr}");
    assert_ne!(code, 101, "not a panic's code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line; stderr: {stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "error line must mention {n:?}: {}", lines[0]);
    }
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
}

#[test]
fn unknown_key_is_one_line_naming_the_key() {
    let (code, err) = run_with_config("id = \"p\"\n[source]\ntopics = [\"t\"]\n[epoch]\nintervl_ms = 100\n");
    assert_one_line_error(code, &err, &["pipeline.toml", "line 5", "intervl_ms"]);
    assert_eq!(code, 2, "a config error");
}

#[test]
fn invalid_value_is_one_line_naming_the_field() {
    let (code, err) = run_with_config("id = \"p\"\n[source]\ntopics = []\n");
    assert_one_line_error(code, &err, &["source.topics"]);
    let (code, err) = run_with_config("id = \"p\"\n[source]\ntopics = [\"t\"]\n[epoch]\ninterval_ms = \"soon\"\n");
    assert_one_line_error(code, &err, &["interval_ms = \"soon\""]);
}

#[test]
fn missing_config_file_is_one_line() {
    let out = exactly().args(["run", "--config", "/nonexistent/pipeline.toml"]).output().unwrap();
    assert_one_line_error(
        out.status.code().unwrap_or(-1),
        &String::from_utf8_lossy(&out.stderr),
        &["/nonexistent/pipeline.toml"],
    );
}

#[test]
fn unreachable_broker_is_one_line_naming_the_address() {
    // Port 1 on loopback: nothing listens there.
    let (code, err) =
        run_with_config("id = \"p\"\n[source]\nbrokers = \"127.0.0.1:1\"\ntopics = [\"t\"]\nconnect_timeout_ms = 1500\n");
    assert_one_line_error(code, &err, &["cannot reach Kafka", "127.0.0.1:1"]);
    assert_eq!(code, 3, "cannot connect");
}

#[test]
fn missing_topic_is_one_line_naming_the_topic() {
    let brokers = crate::common::brokers();
    let topic = crate::common::unique("no-such-topic");
    let (code, err) = run_with_config(&format!("id = \"p\"\n[source]\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\n"));
    assert_one_line_error(code, &err, &[&topic, "does not exist"]);
    assert_eq!(code, 3, "not there");
}

#[test]
fn managed_kafka_settings_are_refused_with_the_reason() {
    // read_committed keeps records of aborted transactions out of every table; turning it off
    // (or choosing where to reset) is not the user's to change.
    for (key, value, why) in [
        ("isolation.level", "read_uncommitted", "read_committed"),
        ("auto.offset.reset", "earliest", "silently skipping"),
        ("enable.auto.commit", "true", "checkpoint"),
    ] {
        let (code, err) =
            run_with_config(&format!("id = \"p\"\n[source]\ntopics = [\"t\"]\n[source.properties]\n\"{key}\" = \"{value}\"\n"));
        assert_one_line_error(code, &err, &[&format!("source.properties.\"{key}\""), "managed", why]);
    }
}

/// `scripts/with-kafka` stops the broker it started itself: no JVM is left behind. Runs a broker
/// of its own on a port no other test uses.
#[test]
fn with_kafka_stops_the_broker_it_started() {
    let root = env!("CARGO_MANIFEST_DIR");
    let port = "19292";
    let out = Command::new(format!("{root}/scripts/with-kafka"))
        .args(["bash", "-c", "cat \"${EXACTLY_CACHE:-$HOME/.cache/exactly}/kafka-broker-$KAFKA_PORT/kafka.pid\""])
        .env_remove("KAFKA_BROKERS")
        .env("KAFKA_PORT", port)
        .env("KAFKA_HEAP", "256m")
        .output()
        .unwrap();
    assert!(out.status.success(), "with-kafka failed: {}", String::from_utf8_lossy(&out.stderr));
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!pid.is_empty(), "the broker's pid file was not written");
    // `kill -0` succeeds while the process exists.
    let alive = Command::new("kill").args(["-0", &pid]).stderr(std::process::Stdio::null()).status().unwrap().success();
    if alive {
        let _ = Command::new("kill").arg(&pid).status();
    }
    assert!(!alive, "scripts/with-kafka left the broker it started running (pid {pid})");
}

#[test]
fn optimize_and_vacuum_without_a_table_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-table");
    for cmd in ["optimize", "vacuum"] {
        let out = exactly().arg(cmd).arg("--path").arg(&missing).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_one_line_error(out.status.code().unwrap_or(-1), &err, &["no Delta table", "no-table"]);
    }
    let path = dir.path().join("pipeline.toml");
    std::fs::write(
        &path,
        format!("id = \"p\"\n[source]\ntopics = [\"t\"]\n[sink]\nkind = \"delta\"\npath = \"{}\"\n", missing.display()),
    )
    .unwrap();
    let out = exactly().args(["vacuum", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_one_line_error(out.status.code().unwrap_or(-1), &err, &["sink.path", "no Delta table"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_schema_registry_that_does_not_answer() {
    let topic = crate::common::topic("check-registry", 1).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.avsc"), r#"{"type": "record", "name": "R", "fields": [{"name": "id", "type": "long"}]}"#)
        .unwrap();
    let port = crate::common::free_port();
    let text = format!(
        "id = \"p\"\n[source]\nbrokers = \"{}\"\ntopics = [\"{topic}\"]\n[decode]\nformat = \"avro\"\n[decode.avro]\n\
         schema_file = \"r.avsc\"\nframing = \"confluent\"\n[decode.avro.registry]\nurl = \"http://127.0.0.1:{port}\"\n\
         username = \"u\"\npassword = \"hunter2\"\ntimeout_ms = 1000\n[sink]\nkind = \"console\"\n",
        crate::common::brokers()
    );
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let out = exactly().args(["check", "--config"]).arg(&path).current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_one_line_error(
        out.status.code().unwrap_or(-1),
        &stderr,
        &[&format!("schema registry http://127.0.0.1:{port} did not answer")],
    );
    assert!(
        !stderr.contains("hunter2") && !String::from_utf8_lossy(&out.stdout).contains("hunter2"),
        "the password is never shown"
    );
}

/// A local table or checkpoint that cannot be a directory fails at once, with one line naming
/// it, and nothing is written (it used to restart the tree until the budget was spent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_or_checkpoint_path_that_cannot_be_a_directory_fails_at_once() {
    let topic = crate::common::topic("local-preflight", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a table").unwrap();
    let brokers = crate::common::brokers();
    let cases = [
        (file.display().to_string(), dir.path().join("cp").display().to_string(), "it is a file"),
        (file.join("t").display().to_string(), dir.path().join("cp").display().to_string(), "cannot be created"),
        (dir.path().join("t").display().to_string(), file.join("cp").display().to_string(), "checkpoint"),
    ];
    for (table, checkpoint, says) in cases {
        let started = std::time::Instant::now();
        let (code, err) = run_with_config(&format!(
            "id = \"p\"\n[source]\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\n[sink]\nkind = \"delta\"\npath = \"{table}\"\n\
             [checkpoint]\ndir = \"{checkpoint}\"\n"
        ));
        assert_one_line_error(code, &err, &[says, "a-file"]);
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "at once, not through the restart budget");
        assert_eq!(std::fs::read(&file).unwrap(), b"not a table");
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["a-file"], "nothing written");
    }
}

/// A config file must say where epochs go.
#[test]
fn a_config_without_a_sink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, "id = \"p\"\n[source]\ntopics = [\"t\"]\n").unwrap();
    let out = exactly().args(["run", "--config"]).arg(&path).output().unwrap();
    assert_one_line_error(out.status.code().unwrap_or(-1), &String::from_utf8_lossy(&out.stderr), &["`sink` is missing"]);
}

/// `${VAR}` and `${VAR:-default}` anywhere in the file: one file for every environment. A
/// variable that is not set is one line naming it; a substituted secret is never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_takes_its_values_from_the_environment() {
    use crate::common;
    let topic = common::topic("env-config", 2).await;
    common::produce_events(&topic, 0, 500).await;
    let dir = tempfile::tempdir().unwrap();
    let text = "id = \"${PIPELINE_ID:-env-pipeline}\"\n[source]\nbrokers = \"${TEST_BROKERS}\"\ntopics = [\"${TEST_TOPIC}\"]\n\
                [sink]\nkind = \"delta\"\npath = \"${TEST_ROOT}/table\"\n[checkpoint]\ndir = \"${TEST_ROOT}/checkpoint\"\n";
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let env =
        [("TEST_BROKERS", common::brokers()), ("TEST_TOPIC", topic.clone()), ("TEST_ROOT", dir.path().display().to_string())];

    // Unset: one line naming the variable and its line.
    let out = exactly().args(["run", "--config"]).arg(&path).envs(env[..2].iter().cloned()).output().unwrap();
    assert_one_line_error(out.status.code().unwrap_or(-1), &String::from_utf8_lossy(&out.stderr), &["${TEST_ROOT}", "line 7"]);
    // A parse error shows the line as written, not the value put in it.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = \"p\"\n[epoch]\ninterval_ms = \"${TEST_SECRET}\"\n").unwrap();
    let out = exactly().args(["run", "--config"]).arg(&bad).env("TEST_SECRET", "not-the-password").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_one_line_error(out.status.code().unwrap_or(-1), &err, &["interval_ms = \"${TEST_SECRET}\""]);
    assert!(!err.contains("not-the-password"), "{err}");

    let child = kit_run(&path).envs(env.iter().cloned()).spawn().unwrap();
    let table = dir.path().join("table");
    common::wait_table_drained(&table, "env-pipeline", &topic, std::time::Duration::from_secs(60)).await;
    common::terminate(child).await;
    assert_eq!(common::read_with_python(&table)["rows"].as_u64(), Some(500));
}

/// `exactly run` as the tests start it, its stderr piped.
fn kit_run(config: &std::path::Path) -> Command {
    let mut c = crate::kit::exactly_run(std::path::Path::new(env!("CARGO_BIN_EXE_exactly")), config, None);
    c.env("RUST_LOG", "off").stderr(std::process::Stdio::piped());
    c
}

/// `exactly verify`'s exit codes: 0 clean, 4 the audit found problems, 5 it could not run, 3
/// Kafka cannot be reached, 2 a bad config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_exits_with_a_code_for_each_outcome() {
    use crate::common;
    let topic = common::topic("verify-codes", 1).await;
    common::produce_events(&topic, 0, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let table = dir.path().join("table");
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&table, &config.id, &topic, std::time::Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    let file = common::write_config(&config, dir.path());
    let verify = |brokers: &str| {
        let out = exactly().args(["verify", "--config"]).arg(&file).env("KAFKA_BROKERS", brokers).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let brokers = common::brokers();
    assert_eq!(verify(&brokers).0, 0);
    let (code, err) = verify("127.0.0.1:1");
    assert_eq!(code, 3, "{err}");

    // A data file deleted behind the table's back: the audit finds rows missing.
    let parquet = common::parquet_files(&table).remove(0);
    let kept = std::fs::read(&parquet).unwrap();
    std::fs::write(&parquet, b"").unwrap();
    let (code, err) = verify(&brokers);
    assert_eq!(code, 5, "a file it cannot read: the audit could not run: {err}");
    std::fs::write(&parquet, kept).unwrap();
    assert_eq!(verify(&brokers).0, 0);

    // A commit added by hand that removes a file: rows the range says are committed are gone.
    let log = table.join("_delta_log");
    let last = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".json")?.parse::<u64>().ok())
        .max()
        .unwrap();
    let name = parquet.file_name().unwrap().to_str().unwrap();
    let remove = format!(
        "{{\"remove\":{{\"path\":\"{name}\",\"deletionTimestamp\":1,\"dataChange\":true}}}}\n{{\"commitInfo\":{{\"operation\":\"DELETE\"}}}}\n"
    );
    std::fs::write(log.join(format!("{:020}.json", last + 1)), remove).unwrap();
    let (code, err) = verify(&brokers);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("missing"), "{err}");

    std::fs::write(&file, "id = \"p\"\n[source]\ntopics = []\n[sink]\nkind = \"console\"\n").unwrap();
    assert_eq!(verify(&brokers).0, 2);
}

/// `--log-format json`: every line on stderr is a JSON object a log collector can read — the
/// log lines, the start banner, each epoch's progress, the stop — and none carries a colour
/// code; a refused start's one line is an object too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    use crate::common;
    let topic = common::topic("json-logs", 2).await;
    common::produce_events(&topic, 0, 400).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let file = common::write_config(&config, dir.path());
    // (stderr to a file: a pipe nobody reads fills up and blocks the logging process)
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_exactly"))
        .args(["run", "--log-format", "json", "--config"])
        .arg(&file)
        .env_remove("KAFKA_BROKERS")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, std::time::Duration::from_secs(60)).await;
    crate::kit::sigterm(&child).unwrap();
    let mut status = None;
    common::wait_until(std::time::Duration::from_secs(60), "the exit after SIGTERM", || {
        status = child.try_wait().unwrap();
        std::future::ready(status.is_some())
    })
    .await;
    let status = status.unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    let objects: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect();
    assert!(!stderr.contains('\u{1b}'), "no colour codes: {stderr}");
    for o in &objects {
        assert!(o["timestamp"].as_str().is_some_and(|t| t.ends_with('Z') || t.contains('T')), "{o}");
    }
    let epochs: u64 = objects
        .iter()
        .filter(|o| o["epoch"].is_u64() && o["input_rows"].is_u64())
        .map(|o| o["input_rows"].as_u64().unwrap())
        .sum();
    assert_eq!(epochs, 400, "the progress objects count every record");
    assert!(objects.iter().any(|o| o["message"].as_str().is_some_and(|m| m.starts_with("pipeline '"))), "the banner");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = \"p\"\n[source]\ntopics = []\n[sink]\nkind = \"console\"\n").unwrap();
    let out = exactly().args(["run", "--log-format", "json", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["level"], "ERROR");
    assert!(err["message"].as_str().unwrap().contains("source.topics"), "{err}");
}

/// Commits `n` events with ids from `first` in one Kafka transaction: the partitions it writes
/// then end with a transaction marker.
async fn produce_in_a_transaction(topic: &str, first: u64, n: u64) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let (brokers, topic, txn) = (crate::common::brokers(), topic.to_string(), crate::common::unique("txn"));
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> = exactly::source::Connection::plaintext(brokers.as_str())
            .client_config()
            .set("transactional.id", &txn)
            .create()
            .unwrap();
        let timeout = std::time::Duration::from_secs(30);
        producer.init_transactions(timeout).unwrap();
        producer.begin_transaction().unwrap();
        for id in first..first + n {
            let (json, key) = (exactly::source::producer::event_json(id, 10, 0), id.to_string());
            producer.send(BaseRecord::to(&topic).key(&key).payload(&json)).unwrap();
        }
        producer.commit_transaction(timeout).unwrap();
    })
    .await
    .unwrap();
}

/// `exactly run --until-caught-up`: reads to the offsets that were latest at the start (past the
/// transaction markers partitions end with), commits, exits 0 with the audit clean; records
/// produced while it runs wait for the next run, which takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_caught_up_reads_what_was_there_commits_and_exits() {
    use crate::common;
    let topic = common::topic("until-caught-up", 3).await;
    common::produce_events(&topic, 0, 1_000).await;
    produce_in_a_transaction(&topic, 1_000, 90).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let file = common::write_config(&config, dir.path());
    let run = |file: &std::path::Path| {
        let child = kit_run(file).arg("--until-caught-up").spawn().unwrap();
        common::wait_exit(child, std::time::Duration::from_secs(90), "--until-caught-up exits by itself")
    };
    let (status, stderr) = run(&file).await;
    assert!(status.success(), "{stderr}");
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 1_090);

    // Records keep coming while the second run reads: it stops at what was there when it began
    // and the third run takes the rest.
    let mut opts = exactly::source::producer::ProduceOptions::new(&common::brokers(), &topic, 2_000);
    (opts.first_id, opts.rate) = (2_000, Some(1_000));
    let producer = tokio::spawn(async move { exactly::source::producer::produce(&opts, std::future::pending()).await.unwrap() });
    let (status, stderr) = run(&file).await;
    assert!(status.success(), "{stderr}");
    producer.await.unwrap();
    let (status, stderr) = run(&file).await;
    assert!(status.success(), "{stderr}");
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 3_090);
    assert_eq!(common::read_with_python(&dir.path().join("table"))["rows"].as_u64(), Some(3_090));
}

/// The Kubernetes manifests (`deploy/kubernetes/`: a group Deployment, a StatefulSet, a CronJob)
/// pass the Kubernetes schemas strictly (`kubernetes-validate`, which `scripts/setup` installs),
/// their pipeline configs parse and validate once the environment fills them in, and each pod
/// gets more time to stop than the pipeline takes to commit its open epoch.
#[test]
fn the_kubernetes_manifests_validate_and_their_pipelines_parse() {
    let venv = std::path::PathBuf::from(crate::common::python()).parent().unwrap().to_path_buf();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifests: Vec<std::path::PathBuf> =
        ["group.yaml", "statefulset.yaml", "job.yaml"].iter().map(|f| root.join("deploy/kubernetes").join(f)).collect();
    let out =
        Command::new(venv.join("kubernetes-validate")).args(["--strict", "-k", "1.31.0"]).args(&manifests).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    let extract = r#"
import json, sys, yaml
out = []
for f in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(f)) if d]
    pod = [d for d in docs if d["kind"] != "ConfigMap"][0]
    spec = pod["spec"]["jobTemplate"]["spec"] if pod["kind"] == "CronJob" else pod["spec"]
    out.append({"kind": pod["kind"], "config": [d for d in docs if d["kind"] == "ConfigMap"][0]["data"]["pipeline.toml"],
                "grace": spec["template"]["spec"]["terminationGracePeriodSeconds"]})
print(json.dumps(out))
"#;
    let out = Command::new(crate::common::python()).arg("-c").arg(extract).args(&manifests).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let found: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found.iter().map(|m| m["kind"].as_str().unwrap()).collect::<Vec<_>>(), ["Deployment", "StatefulSet", "CronJob"]);
    for m in &found {
        let env = |name: &str| {
            Some(match name {
                "TABLE_URL" => "s3://analytics/kafka/t".to_string(),
                "CHECKPOINT_URL" => "s3://analytics/checkpoints/t".to_string(),
                _ => format!("value-of-{name}"),
            })
        };
        let (text, _) = exactly::config::env::substitute(m["config"].as_str().unwrap(), env).unwrap();
        let config = exactly::config::PipelineConfig::parse(&text, "pipeline.toml").unwrap();
        config.validate("pipeline.toml").unwrap();
        let grace_ms = m["grace"].as_u64().unwrap() * 1000;
        assert!(grace_ms > config.supervisor.shutdown_timeout_ms, "{}: the pod must outlive the stop", m["kind"]);
    }
}

/// The systemd unit (`deploy/systemd/exactly@.service`) passes `systemd-analyze verify` without
/// a warning (pointed at this build's binary), gives the process more time to stop than the
/// pipeline takes to commit its open epoch, and does not restart on the exit code of a config
/// error; its example pipeline parses and validates once the environment fills it in.
#[test]
fn the_systemd_unit_verifies_and_its_pipeline_parses() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("deploy/systemd/exactly@.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let instance = dir.path().join("exactly@orders.service");
    std::fs::write(&instance, unit.replace("/usr/local/bin/exactly", env!("CARGO_BIN_EXE_exactly"))).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&instance).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");

    let setting = |key: &str| -> String {
        let line = unit.lines().find(|l| l.starts_with(&format!("{key}="))).unwrap_or_else(|| panic!("no {key}"));
        line[key.len() + 1..].to_string()
    };
    let env = |name: &str| match name {
        "KAFKA_BROKERS" => Some("kafka-1:9092".to_string()),
        "STATE_DIRECTORY" => Some("/var/lib/exactly/orders".to_string()),
        _ => None,
    };
    let text = std::fs::read_to_string(root.join("deploy/systemd/orders.toml")).unwrap();
    let (text, _) = exactly::config::env::substitute(&text, env).unwrap();
    let config = exactly::config::PipelineConfig::parse(&text, "orders.toml").unwrap();
    config.validate("orders.toml").unwrap();
    assert_eq!(config.checkpoint_dir(), std::path::PathBuf::from("/var/lib/exactly/orders"));
    let stop_ms = setting("TimeoutStopSec").parse::<u64>().unwrap() * 1000;
    assert!(stop_ms > config.supervisor.shutdown_timeout_ms, "the unit must outlive the stop");

    // The config error's exit code is the one the unit does not restart on.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = \"x\"\n[source]\ntopics = []\n[sink]\nkind = \"console\"\n").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_exactly")).args(["run", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(run.status.code().map(|c| c.to_string()), Some(setting("RestartPreventExitStatus")));
}

/// The container image (`Containerfile`, built offline by `scripts/image` with buildah from
/// scratch: this build's binary and the libraries it links) runs a pipeline as its non-root
/// user against the project's broker and S3 server: `exactly run --until-caught-up` inside it
/// exits 0 and the audit of the table it wrote is clean. It runs under buildah's chroot
/// isolation: the OCI runtime (crun) refuses this machine's hybrid cgroups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_a_pipeline_against_the_broker_and_the_s3_server() {
    use crate::common;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tag = format!("localhost/exactly:{}", common::unique("test"));
    let out = Command::new(root.join("scripts/image"))
        .args(["--binary", env!("CARGO_BIN_EXE_exactly"), "--tag", &tag])
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/image: {}", String::from_utf8_lossy(&out.stderr));
    let buildah = |args: &[&str]| Command::new("buildah").arg("--storage-driver").arg("vfs").args(args).output().unwrap();

    let topic = common::topic("image", 2).await;
    common::produce_events(&topic, 0, 1_000).await;
    let dir = tempfile::tempdir().unwrap();
    let (etc, state) = (dir.path().join("etc"), dir.path().join("state"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    // The image's user (10001) writes the checkpoint on the mounted directory.
    std::os::unix::fs::chown(&state, Some(10001), Some(10001)).unwrap();
    let mut config = common::delta_config(&common::unique("image"), &topic, dir.path());
    let exactly::config::SinkConfig::Delta { path, storage, .. } = &mut config.sink else { unreachable!() };
    *path = exactly::config::TableLocation::parse(&format!("s3://exactly/{}/table", common::unique("image"))).unwrap();
    *storage = common::s3_options();
    config.checkpoint.dir = Some("/var/lib/exactly/checkpoint".into());
    std::fs::write(etc.join("pipeline.toml"), toml::to_string(&config).unwrap()).unwrap();

    let from = buildah(&["from", "--quiet", &tag]);
    assert!(from.status.success(), "buildah from: {}", String::from_utf8_lossy(&from.stderr));
    let container = String::from_utf8_lossy(&from.stdout).trim().to_string();
    let (etc_mount, state_mount) =
        (format!("{}:/etc/exactly:ro", etc.display()), format!("{}:/var/lib/exactly", state.display()));
    let run = tokio::task::spawn_blocking({
        let container = container.clone();
        move || {
            Command::new("buildah")
                .args(["--storage-driver", "vfs", "run", "--isolation", "chroot", "--network", "host"])
                .args(["-v", &etc_mount, "-v", &state_mount, &container, "--"])
                .args(["exactly", "run", "--config", "/etc/exactly/pipeline.toml", "--until-caught-up"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let _ = buildah(&["rm", &container]);
    let _ = buildah(&["rmi", &tag]);
    assert!(run.status.success(), "exactly run in the image: {}", String::from_utf8_lossy(&run.stderr));
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(state.join("checkpoint")).unwrap().uid();
    assert_eq!(owner, 10001, "the checkpoint, on the mounted directory, is written by the image's non-root user");

    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 1_000);
}

/// The first offset of each partition in a table's rows.
async fn first_offsets(table: &std::path::Path) -> std::collections::BTreeMap<i32, i64> {
    use deltalake::arrow::array::{Int32Array, Int64Array};
    let mut first = std::collections::BTreeMap::new();
    for b in crate::common::read_rows(table).await {
        let parts = b.column_by_name("_kafka_partition").unwrap().as_any().downcast_ref::<Int32Array>().unwrap().clone();
        let offsets = b.column_by_name("_kafka_offset").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        for i in 0..b.num_rows() {
            let e = first.entry(parts.value(i)).or_insert(i64::MAX);
            *e = (*e).min(offsets.value(i));
        }
    }
    first
}

/// Runs `exactly adopt <args>`; the config section it prints.
fn adopt(args: &[&str]) -> String {
    let out = exactly().arg("adopt").args(args).output().unwrap();
    assert!(out.status.success(), "exactly adopt: {}", String::from_utf8_lossy(&out.stderr));
    let section = String::from_utf8(out.stdout).unwrap();
    toml::from_str::<toml::Value>(&section).expect("a TOML section");
    section
}

/// Taking over a kafka-delta-ingest table: `exactly adopt kafka-delta-ingest` reads the
/// `<app_id>-<partition>` txn actions it records (its last written offsets; the table written
/// here by Python `deltalake` with kafka-delta-ingest's convention) and prints the config
/// section that starts each partition after them; the pipeline then writes exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_takes_over_where_kafka_delta_ingest_stopped() {
    use crate::common;
    let topic = common::topic("adopt-kdi", 2).await;
    common::produce_events(&topic, 0, 1_000).await;
    let dir = tempfile::tempdir().unwrap();
    let kdi = dir.path().join("kdi");
    let script = "import sys, pyarrow as pa\nfrom deltalake import write_deltalake, Transaction, CommitProperties\n\
                  write_deltalake(sys.argv[1], pa.table({'id': [1]}), commit_properties=CommitProperties(app_transactions=[\
                  Transaction(app_id='kdi-orders-0', version=99), Transaction(app_id='kdi-orders-1', version=149)]))\n";
    let out = Command::new(common::python()).args(["-c", script]).arg(&kdi).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let config = common::delta_config(&common::unique("adopt"), &topic, dir.path());
    let file = common::write_config(&config, dir.path());
    let section = adopt(&[
        "kafka-delta-ingest",
        "--config",
        file.to_str().unwrap(),
        "--table",
        kdi.to_str().unwrap(),
        "--app-id",
        "kdi-orders",
    ]);
    let text = std::fs::read_to_string(&file).unwrap() + "\n" + &section;
    std::fs::write(&file, &text).unwrap();
    let config = exactly::config::PipelineConfig::load(&file).unwrap();

    let child = kit_run(&file).spawn().unwrap();
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, std::time::Duration::from_secs(60)).await;
    common::terminate(child).await;
    assert_eq!(first_offsets(&dir.path().join("table")).await, [(0, 100), (1, 150)].into_iter().collect());
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 1_000 - 250);
}

/// Taking over from Spark Structured Streaming: a real Spark job (the bench's, with the bench's
/// pyspark) reads 600 records into its checkpoint; 400 more arrive; `exactly adopt
/// spark-checkpoint` prints the end offsets of Spark's last committed batch, and the pipeline
/// writes exactly the 400 Spark did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_takes_over_where_a_spark_checkpoint_stopped() {
    use crate::common;
    let topic = common::topic("adopt-spark", 2).await;
    common::produce_events(&topic, 0, 600).await;
    let dir = tempfile::tempdir().unwrap();
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("EXACTLY_CACHE").unwrap_or_else(|_| format!("{home}/.cache/exactly"));
    let jars: Vec<String> = std::fs::read_dir(format!("{cache}/spark-jars"))
        .expect("bench/setup installs Spark's connectors")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            ["spark-sql-kafka", "spark-token-provider", "kafka-clients", "commons-pool2", "delta-spark", "delta-storage"]
                .iter()
                .any(|prefix| n.starts_with(prefix))
        })
        .map(|p| p.display().to_string())
        .collect();
    let python = format!("{cache}/bench-venv/bin/python");
    let spark_home =
        Command::new(&python).args(["-c", "import pyspark, os; print(os.path.dirname(pyspark.__file__))"]).output().unwrap();
    let checkpoint = dir.path().join("spark-checkpoint");
    let spark = tokio::task::spawn_blocking({
        let (topic, checkpoint, table) = (topic.clone(), checkpoint.clone(), dir.path().join("spark-table"));
        move || {
            Command::new(format!("{cache}/bench-venv/bin/spark-submit"))
                .args(["--driver-memory", "1g", "--jars", &jars.join(",")])
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/spark_job.py"))
                .args(["--brokers", &common::brokers(), "--topic", &topic, "--mode", "append", "--expected", "600"])
                .arg("--table")
                .arg(&table)
                .arg("--checkpoint")
                .arg(&checkpoint)
                .env("SPARK_HOME", String::from_utf8_lossy(&spark_home.stdout).trim())
                .env("PYSPARK_PYTHON", &python)
                .env_remove("LD_LIBRARY_PATH")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(spark.status.success(), "the Spark job: {}", String::from_utf8_lossy(&spark.stderr));
    common::produce_events(&topic, 600, 400).await;

    let section = adopt(&["spark-checkpoint", "--dir", checkpoint.to_str().unwrap()]);
    let config = common::delta_config(&common::unique("adopt"), &topic, dir.path());
    let file = common::write_config(&config, dir.path());
    std::fs::write(&file, std::fs::read_to_string(&file).unwrap() + "\n" + &section).unwrap();
    let config = exactly::config::PipelineConfig::load(&file).unwrap();
    let child = kit_run(&file).spawn().unwrap();
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, std::time::Duration::from_secs(60)).await;
    common::terminate(child).await;
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 400, "{}", audit.render());
}
