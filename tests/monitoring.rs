//! Monitoring, tested against a real Prometheus: the shipped config and rules pass promtool,
//! the Grafana dashboards are valid, every panel query returns data on a healthy run, every
//! series an alert uses exists, and the "no commit" alert fires when the commit path stalls.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use exactly::config::DedupConfig;
use exactly::source::producer::{produce, ProduceOptions};
use serde_json::Value;

use crate::common;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

use common::free_port;

/// A GET against Prometheus's HTTP API, returning the JSON `data`.
fn prom_get(port: u16, path_and_query: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(&common::http_get(port, path_and_query)?).ok()?;
    (v["status"] == "success").then(|| v["data"].clone())
}

fn query(port: u16, expr: &str) -> Option<Vec<Value>> {
    let q: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    prom_get(port, &format!("/api/v1/query?query={q}")).and_then(|d| d["result"].as_array().cloned())
}

fn dashboards() -> Vec<(String, Value)> {
    std::fs::read_dir(repo("dashboards/grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| (p.display().to_string(), serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()))
        .collect()
}

/// Every PromQL expression of every panel, with Grafana's variables filled in.
fn panel_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let e = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "15s")
                    .replace("$pipeline", ".*")
                    .replace("$partition", ".*");
                out.push((format!("{file}: {}", p["title"]), e));
            }
        }
    }
    out
}

#[test]
fn shipped_prometheus_config_and_rules_pass_promtool() {
    for args in [["check", "config"], ["check", "rules"]] {
        let file = if args[1] == "config" { "dashboards/prometheus.yml" } else { "dashboards/alerts.yml" };
        let out =
            Command::new("promtool").args(args).arg(repo(file)).output().expect("promtool (scripts/setup installs prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?} {file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn grafana_dashboards_are_valid_dashboard_json() {
    let ds = dashboards();
    assert!(ds.len() >= 2, "overview and partitions");
    for (file, d) in ds {
        for key in ["uid", "title", "schemaVersion", "panels", "templating", "time"] {
            assert!(!d[key].is_null(), "{file}: missing {key}");
        }
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
            "{file}: needs a Prometheus datasource variable"
        );
        let mut ids = std::collections::HashSet::new();
        for p in d["panels"].as_array().unwrap() {
            assert!(ids.insert(p["id"].as_i64().unwrap()), "{file}: duplicate panel id {}", p["id"]);
            for key in ["type", "title", "gridPos", "datasource", "targets"] {
                assert!(!p[key].is_null(), "{file}: panel {} lacks {key}", p["id"]);
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: panel {} must use the datasource variable", p["id"]);
            for k in ["x", "y", "w", "h"] {
                assert!(p["gridPos"][k].is_u64(), "{file}: panel {} gridPos.{k}", p["id"]);
            }
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty());
            for t in targets {
                assert!(
                    t["refId"].is_string() && t["expr"].as_str().is_some_and(|e| e.contains("exactly_")),
                    "{file}: panel {} target",
                    p["id"]
                );
            }
        }
    }
}

struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_scraped_by_prometheus_has_data_for_every_panel_and_alert_and_the_stall_alert_fires() {
    let topic = common::topic("monitor", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let (port_a, port_b, port_prom) = (free_port(), free_port(), free_port());

    // A: healthy (dedup, so every panel has its series). B: its commit path stalls forever.
    let mut a = common::delta_config(&common::unique("healthy"), &topic, &dir.path().join("a"));
    a.dedup = Some(DedupConfig::by_epochs(&["id"], 1_000));
    // Persisted (to a directory) every epoch, so the persist panel has its series.
    a.checkpoint.remote = Some(exactly::config::TableLocation::local(&dir.path().join("a").join("remote")));
    a.checkpoint.persist_every_epochs = 1;
    a.metrics.listen = Some(format!("127.0.0.1:{port_a}"));
    let mut b = common::delta_config(&common::unique("stalled"), &topic, &dir.path().join("b"));
    b.metrics.listen = Some(format!("127.0.0.1:{port_b}"));
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let fa = common::write_config(&a, &dir.path().join("a"));
    let fb = common::write_config(&b, &dir.path().join("b"));

    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 40_000);
    opts.rate = Some(800);
    opts.duplicate_every = Some(10);
    opts.malformed_every = Some(50);
    let producer = tokio::spawn(async move { produce(&opts, std::future::pending()).await });

    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: exactly\n    static_configs:\n      - targets: [\"127.0.0.1:{port_a}\", \"127.0.0.1:{port_b}\"]\n",
            repo("dashboards/alerts.yml").display()
        ),
    )
    .unwrap();
    let mut running = Running(vec![common::spawn(&fa, None), common::spawn(&fb, Some("after-parquet-write=sleep(600000)"))]);
    running.0.push(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", prom_dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port_prom}"))
            .arg("--log.level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/setup installs it)"),
    );

    // Every panel's query returns data while the pipeline runs.
    let exprs = panel_exprs();
    assert!(exprs.len() >= 15);
    common::wait_until(Duration::from_secs(90), "data for every dashboard panel", || {
        let exprs = exprs.clone();
        async move {
            tokio::task::spawn_blocking(move || exprs.iter().all(|(_, e)| query(port_prom, e).is_some_and(|r| !r.is_empty())))
                .await
                .unwrap()
        }
    })
    .await;
    for (panel, e) in &exprs {
        let r = query(port_prom, e).unwrap_or_default();
        assert!(!r.is_empty(), "{panel}: no data for {e}");
    }

    // Every rule loaded, and every series an alert uses exists.
    let rules = prom_get(port_prom, "/api/v1/rules").expect("rules");
    let rules: Vec<&Value> = rules["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert_eq!(rules.len(), 7);
    let series = regex_series(&rules.iter().map(|r| r["query"].as_str().unwrap().to_string()).collect::<Vec<_>>());
    for s in &series {
        assert!(query(port_prom, s).is_some_and(|r| !r.is_empty()), "alert series {s} has no data");
    }
    for r in &rules {
        assert_eq!(r["health"], "ok", "rule {} is unhealthy: {}", r["name"], r["lastError"]);
    }

    // The stalled pipeline trips "no epoch committed" (pending, then firing after `for`).
    let stalled = b.id.clone();
    common::wait_until(Duration::from_secs(90), "ExactlyNoEpochCommitted for the stalled pipeline", || {
        let stalled = stalled.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                prom_get(port_prom, "/api/v1/alerts").is_some_and(|d| {
                    d["alerts"].as_array().unwrap().iter().any(|a| {
                        a["labels"]["alertname"] == "ExactlyNoEpochCommitted"
                            && a["labels"]["pipeline"] == stalled.as_str()
                            && (a["state"] == "pending" || a["state"] == "firing")
                    })
                })
            })
            .await
            .unwrap()
        }
    })
    .await;
    // ...and never for the healthy one.
    let alerts = prom_get(port_prom, "/api/v1/alerts").unwrap();
    assert!(
        !alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["labels"]["alertname"] == "ExactlyNoEpochCommitted" && x["labels"]["pipeline"] == a.id.as_str()),
        "the healthy pipeline must not trip the stall alert"
    );
    producer.abort();
    drop(running);
}

/// The metric names (and `up`) used by alert expressions.
fn regex_series(exprs: &[String]) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for e in exprs {
        let bytes = e.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if e[i..].starts_with("exactly_") && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')) {
                let end = e[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(e.len(), |n| i + n);
                out.insert(e[i..end].to_string());
                i = end;
            } else {
                i += 1;
            }
        }
        if e.contains("up{") {
            out.insert("up{job=\"exactly\"}".to_string());
        }
    }
    out.into_iter().collect()
}

/// The status line and body of `GET path` on 127.0.0.1:`port` (`None`: no answer).
fn probe(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    Some((head.split_whitespace().nth(1)?.parse().ok()?, body.to_string()))
}

/// `/healthz` answers while the process lives; `/readyz` is 503 until an epoch resolves, 200
/// while epochs commit, 503 while a stop drains (and while the tree restarts after a failure);
/// `/metrics` is on the same listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probes_follow_the_pipeline_through_start_drain_and_restarts() {
    let topic = common::topic("probes", 2).await;
    common::produce_events(&topic, 0, 1_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::delta_config(&common::unique("p"), &topic, dir.path());
    let port = common::free_port();
    config.metrics.listen = Some(format!("127.0.0.1:{port}"));
    let file = common::write_config(&config, dir.path());

    // Every commit takes 3 s, and records keep coming: the stop's epoch has some, and its
    // drain lasts long enough to be seen.
    let mut opts = ProduceOptions::new(&common::brokers(), &topic, 1_000_000);
    (opts.rate, opts.first_id) = (Some(200), 10_000);
    let producer = tokio::spawn(async move { produce(&opts, std::future::pending()).await });
    let child = common::spawn(&file, Some("before-delta-commit=1000*sleep(3000)"));
    common::wait_until(Duration::from_secs(30), "/healthz answers", || async {
        probe(port, "/healthz").is_some_and(|(c, _)| c == 200)
    })
    .await;
    let (code, body) = probe(port, "/readyz").unwrap();
    assert_eq!(code, 503, "not ready before an epoch resolved: {body}");
    common::wait_until(Duration::from_secs(60), "/readyz says ready", || async {
        probe(port, "/readyz").is_some_and(|(c, _)| c == 200)
    })
    .await;
    let metrics = probe(port, "/metrics").unwrap().1;
    for series in ["exactly_records_committed_total", "exactly_build_info{", "process_cpu_seconds_total", "process_open_fds"] {
        assert!(metrics.contains(series), "{series} in /metrics:\n{metrics}");
    }
    assert_eq!(probe(port, "/nope").unwrap().0, 404);

    crate::kit::sigterm(&child).unwrap();
    common::wait_until(Duration::from_secs(10), "/readyz says draining", || async {
        probe(port, "/readyz").is_some_and(|(c, b)| c == 503 && b.contains("draining"))
    })
    .await;
    assert_eq!(probe(port, "/healthz").unwrap().0, 200, "alive while draining");
    let (status, stderr) = common::wait_exit(child, Duration::from_secs(60), "the drained stop").await;
    assert!(status.success(), "{stderr}");
    producer.abort();

    // Commits that fail: between generations (a 3 s backoff) the tree is restarting.
    config.supervisor.backoff_ms = 3_000;
    let file = common::write_config(&config, dir.path());
    common::produce_events(&topic, 1_000, 100).await;
    let child = common::spawn(&file, Some("before-delta-commit=1000*error"));
    common::wait_until(Duration::from_secs(60), "/readyz says restarting", || async {
        probe(port, "/readyz").is_some_and(|(c, b)| c == 503 && b.contains("starting"))
    })
    .await;
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
}
