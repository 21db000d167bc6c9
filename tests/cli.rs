//! The command line, as a user meets it: bad input gives one line and a non-zero exit.

use std::process::Command;

fn exactly() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exactly"));
    c.env_remove("KAFKA_BROKERS").env("RUST_LOG", "off");
    c
}

/// Runs `exactly run --config <text>` and returns (exit code, stderr).
fn run_with_config(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let out = exactly().args(["run", "--config"]).arg(&path).current_dir(dir.path()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

fn assert_one_line_error(code: i32, stderr: &str, needles: &[&str]) {
    assert_ne!(code, 0, "must exit non-zero; stderr: {stderr}");
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
}

#[test]
fn missing_topic_is_one_line_naming_the_topic() {
    let brokers = crate::common::brokers();
    let topic = crate::common::unique("no-such-topic");
    let (code, err) = run_with_config(&format!("id = \"p\"\n[source]\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\n"));
    assert_one_line_error(code, &err, &[&topic, "does not exist"]);
}
