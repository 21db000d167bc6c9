//! Secured Kafka, against the real broker's SASL_SSL and mutual-TLS listeners (`scripts/kafka`
//! starts them beside the plaintext one, with a throwaway CA and a SCRAM user): pipelines append
//! exactly once over each, `verify`, `produce`, `topics` and `check` work over them, every kind
//! of refused connection is one line and a non-zero exit with nothing written, and no output of
//! a run — its streams, its metrics — ever holds the password.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use exactly::config::security::{Mechanism, Protocol, Secret, SecurityConfig};
use exactly::config::PipelineConfig;
use exactly::source::producer::{produce, ProduceOptions};
use exactly::source::Connection;

use crate::common;

/// The secured listeners of the broker under test (`scripts/kafka secure-env`, exported by
/// `scripts/with-kafka`).
struct Secured {
    sasl_ssl: String,
    ssl: String,
    tls: PathBuf,
}

fn secured() -> Secured {
    let var = |name: &str| {
        std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!("{name} is not set: the security tests need the local broker's secured listeners (run them through `just test`, or `eval \"$(scripts/kafka secure-env)\"`)")
        })
    };
    Secured { sasl_ssl: var("KAFKA_SASL_SSL_BROKERS"), ssl: var("KAFKA_SSL_BROKERS"), tls: PathBuf::from(var("KAFKA_TLS_DIR")) }
}

impl Secured {
    fn password(&self) -> String {
        std::fs::read_to_string(self.tls.join("password")).unwrap().trim().to_string()
    }

    /// SASL_SSL with `mechanism` as the user `exactly`, the password read from its file.
    fn sasl(&self, mechanism: Mechanism) -> SecurityConfig {
        SecurityConfig {
            protocol: Protocol::SaslSsl,
            mechanism: Some(mechanism),
            username: Some("exactly".into()),
            password: Some(Secret::File(self.tls.join("password"))),
            ca_file: Some(self.tls.join("ca.pem")),
            ..Default::default()
        }
    }

    /// Mutual TLS with the client certificate the test CA signed.
    fn mtls(&self) -> SecurityConfig {
        SecurityConfig {
            protocol: Protocol::Ssl,
            ca_file: Some(self.tls.join("ca.pem")),
            cert_file: Some(self.tls.join("client.pem")),
            key_file: Some(self.tls.join("client.key")),
            ..Default::default()
        }
    }
}

/// A Delta pipeline config reading `topic` through `brokers` with `security`.
fn secured_config(topic: &str, dir: &Path, brokers: &str, security: SecurityConfig) -> PipelineConfig {
    let mut c = common::delta_config(&common::unique("sec"), topic, dir);
    c.source.brokers = brokers.to_string();
    c.source.security = security;
    c
}

/// Creates the topic, produces and consumes over the secured connection, audits over it too.
async fn appends_exactly_once_over(brokers: &str, security: SecurityConfig) {
    let dir = tempfile::tempdir().unwrap();
    let name = common::unique("secured");
    let mut config = secured_config(&name, dir.path(), brokers, security);
    let connection = exactly::source::Connection::of(&config.source).unwrap();
    assert!(exactly::source::create_topic(&connection, &name, 3, 1).await.unwrap(), "topic created over the secured listener");
    let mut opts = ProduceOptions::new(&connection, &name, 3_000);
    opts.malformed_every = Some(97);
    let report = produce(&opts, std::future::pending()).await.unwrap();
    assert_eq!(report.sent, 3_000);

    config.epoch.interval_ms = 100;
    let pipeline = common::start(&config, Default::default()).await;
    common::wait_table_drained(&dir.path().join("table"), &config.id, &name, Duration::from_secs(60)).await;
    pipeline.shutdown().await.unwrap();
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.expected), 3_000);
    assert_eq!(audit.total(|p| p.dead_lettered), 3_000 / 97);
    assert_eq!(audit.total(|p| p.rows), 3_000 - 3_000 / 97);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_over_sasl_ssl_with_scram_sha_512_appends_exactly_once() {
    let s = secured();
    appends_exactly_once_over(&s.sasl_ssl, s.sasl(Mechanism::ScramSha512)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_over_mutual_tls_appends_exactly_once() {
    let s = secured();
    appends_exactly_once_over(&s.ssl, s.mtls()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sasl_mechanism_the_broker_enables_connects() {
    let s = secured();
    let topic = common::topic("mech", 1).await;
    for mechanism in [Mechanism::Plain, Mechanism::ScramSha256, Mechanism::ScramSha512] {
        let dir = tempfile::tempdir().unwrap();
        let config = secured_config(&topic, dir.path(), &s.sasl_ssl, s.sasl(mechanism));
        let partitions = exactly::source::preflight(
            &exactly::source::Connection::of(&config.source).unwrap(),
            config.source.subscription(),
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
        assert_eq!(partitions.len(), 1, "{mechanism:?}");
    }
    // OAUTHBEARER with librdkafka's unsecured tokens, which the test broker's default validator
    // accepts (an OIDC token endpoint is configured with [source.security.oauth] instead).
    let dir = tempfile::tempdir().unwrap();
    let security = SecurityConfig {
        protocol: Protocol::SaslSsl,
        mechanism: Some(Mechanism::OAuthBearer),
        ca_file: Some(s.tls.join("ca.pem")),
        ..Default::default()
    };
    let mut config = secured_config(&topic, dir.path(), &s.sasl_ssl, security);
    config.source.properties.insert("enable.sasl.oauthbearer.unsecure.jwt".into(), "true".into());
    config.source.properties.insert("sasl.oauthbearer.config".into(), "principal=exactly".into());
    let connection = exactly::source::Connection::of(&config.source).unwrap();
    let partitions = exactly::source::preflight(
        &connection,
        exactly::config::Subscription::Named(std::slice::from_ref(&topic)),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(partitions.len(), 1, "OAUTHBEARER");
    let report = produce(&ProduceOptions::new(&connection, &topic, 10), std::future::pending()).await.unwrap();
    assert_eq!(report.sent, 10, "OAUTHBEARER: produced");
}

fn exactly(args: &[&str], envs: &[(&str, &str)]) -> Output {
    // The configs name the secured listeners; KAFKA_BROKERS (the plaintext one) would replace them.
    let mut c = Command::new(env!("CARGO_BIN_EXE_exactly"));
    c.args(args).env("RUST_LOG", "off").env_remove("KAFKA_BROKERS");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every way a connection is refused: one `error:` line naming the problem, a non-zero exit,
/// and neither a table nor a checkpoint written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_one_clear_line_and_write_nothing() {
    let s = secured();
    let topic = common::topic("refused", 1).await;
    let plaintext = common::brokers();
    let wrong_password =
        SecurityConfig { password: Some(Secret::Value("not-the-password".into())), ..s.sasl(Mechanism::ScramSha512) };
    let untrusted = SecurityConfig { ca_file: Some(s.tls.join("other-ca.pem")), ..s.sasl(Mechanism::ScramSha512) };
    let no_client_cert = SecurityConfig { cert_file: None, key_file: None, ..s.mtls() };
    let tls_to_plaintext = SecurityConfig { protocol: Protocol::Ssl, ca_file: Some(s.tls.join("ca.pem")), ..Default::default() };
    let unknown_user = SecurityConfig { username: Some("nobody".into()), ..s.sasl(Mechanism::ScramSha256) };
    let cases: Vec<(&str, &str, SecurityConfig, &str)> = vec![
        ("wrong password", &s.sasl_ssl, wrong_password, "authentication failed for user 'exactly'"),
        ("unknown user", &s.sasl_ssl, unknown_user, "authentication failed for user 'nobody'"),
        ("untrusted CA", &s.sasl_ssl, untrusted, "certificate is not trusted"),
        ("plaintext client, TLS listener", &s.sasl_ssl, SecurityConfig::default(), "speaks TLS"),
        ("TLS client, plaintext listener", &plaintext, tls_to_plaintext, "does not speak TLS"),
        ("mutual TLS without a client certificate", &s.ssl, no_client_cert, "client certificate"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let runs: Vec<_> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (what, brokers, security, expected))| {
            let case_dir = dir.path().join(i.to_string());
            std::fs::create_dir_all(&case_dir).unwrap();
            let mut config = secured_config(&topic, &case_dir, brokers, security);
            config.source.connect_timeout_ms = 30_000;
            let file = common::write_config(&config, &case_dir);
            let run = std::thread::spawn(move || exactly(&["run", "--progress", "off", "--config", file.to_str().unwrap()], &[]));
            (what, expected, case_dir, config, run)
        })
        .collect();
    for (what, expected, case_dir, config, run) in runs {
        let out = run.join().unwrap();
        let all = text(&out);
        assert!(!out.status.success(), "{what}: must exit non-zero: {all}");
        let errors: Vec<&str> = all.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{what}: one error line: {all}");
        assert!(errors[0].contains("refused the connection") && errors[0].contains(expected), "{what}: {}", errors[0]);
        assert!(!all.contains("not-the-password"), "{what}: the password was printed: {all}");
        assert!(!case_dir.join("table").exists() && !config.checkpoint_dir().exists(), "{what}: something was written");
    }

    // A CA file that does not exist is a config error, named before any connection.
    let mut config = secured_config(&topic, dir.path(), &s.sasl_ssl, s.sasl(Mechanism::ScramSha512));
    config.source.security.ca_file = Some(dir.path().join("missing-ca.pem"));
    let file = common::write_config(&config, dir.path());
    let out = exactly(&["run", "--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().count() == 1 && err.contains("source.security.ca_file") && err.contains("missing-ca.pem"), "{err}");

    // A password whose environment variable is not set: one line naming the field and the
    // variable, before any connection.
    config.source.security =
        SecurityConfig { password: Some(Secret::Env("EXACTLY_TEST_SURELY_UNSET".into())), ..s.sasl(Mechanism::ScramSha512) };
    let file = common::write_config(&config, dir.path());
    let out = exactly(&["check", "--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().count() == 1 && err.contains("source.security.password") && err.contains("EXACTLY_TEST_SURELY_UNSET"),
        "{err}"
    );
}

/// The CLI end to end over SASL_SSL, the password in an environment variable: `topics create`,
/// `check`, `produce`, `run` (with its metrics endpoint scraped), `verify` — every stream of
/// every command, and the metrics, are searched for the password; it is never there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_over_sasl_ssl_and_never_prints_the_password() {
    let s = secured();
    let password = s.password();
    let dir = tempfile::tempdir().unwrap();
    let topic = common::unique("cli-sec");
    let port = common::free_port();
    let mut config = secured_config(
        &topic,
        dir.path(),
        &s.sasl_ssl,
        SecurityConfig { password: Some(Secret::Env("EXACTLY_TEST_KAFKA_PASSWORD".into())), ..s.sasl(Mechanism::ScramSha512) },
    );
    config.metrics.listen = Some(format!("127.0.0.1:{port}"));
    let file = common::write_config(&config, dir.path());
    let file = file.to_str().unwrap();
    let env = [("EXACTLY_TEST_KAFKA_PASSWORD", password.as_str()), ("RUST_LOG", "info")];
    let mut seen = String::new();

    let out = exactly(&["topics", "create", "--config", file, "--topic", &topic, "--partitions", "2"], &env);
    seen += &text(&out);
    assert!(out.status.success(), "{}", text(&out));
    let out = exactly(&["check", "--config", file], &env);
    seen += &text(&out);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SASL_SSL SCRAM-SHA-512 as 'exactly'"), "{}", text(&out));
    let out = exactly(&["produce", "--config", file, "--count", "1200"], &env);
    seen += &text(&out);
    assert!(out.status.success(), "{}", text(&out));

    let log = dir.path().join("run.log");
    let child = Command::new(env!("CARGO_BIN_EXE_exactly"))
        .args(["run", "--config", file])
        .envs(env)
        .env_remove("KAFKA_BROKERS")
        .stdout(std::fs::File::create(dir.path().join("run.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    common::wait_table_drained(&dir.path().join("table"), &config.id, &topic, Duration::from_secs(60)).await;
    let metrics = tokio::task::spawn_blocking(move || common::http_get(port, "/metrics"))
        .await
        .unwrap()
        .expect("the metrics endpoint answers");
    assert!(metrics.contains("exactly_records_committed_total"), "{metrics}");
    seen += &metrics;
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let mut child = child;
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(exit.success());
    seen += &std::fs::read_to_string(&log).unwrap();
    seen += &std::fs::read_to_string(dir.path().join("run.out")).unwrap();

    let out = exactly(&["verify", "--config", file], &env);
    seen += &text(&out);
    assert!(out.status.success(), "verify over SASL_SSL: {}", text(&out));
    for args in [&["--help"][..], &["run", "--help"], &["produce", "--help"], &["check", "--help"]] {
        seen += &text(&exactly(args, &env));
    }
    assert!(seen.contains("SASL_SSL"), "the outputs were collected");
    assert!(!seen.contains(&password), "the password appeared in an output or the metrics");
    // The same audit in-process, the password read from its file this time.
    config.source.security.password = Some(Secret::File(s.tls.join("password")));
    let audit = common::assert_verified(&config).await;
    assert_eq!(audit.total(|p| p.rows), 1_200);
}

/// The SIGKILL exactly-once test, once over SASL_SSL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_over_sasl_ssl_stays_exactly_once() {
    let s = secured();
    let topic = common::topic("sigkill-sec", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let config = secured_config(&topic, dir.path(), &s.sasl_ssl, s.sasl(Mechanism::ScramSha512));
    crate::crash::sigkill_while_producing(&config, &topic, dir.path(), &Connection::of(&config.source).unwrap()).await;
}

#[test]
fn the_example_configs_of_the_managed_services_are_valid() {
    for example in
        ["examples/secured/msk-scram.toml", "examples/secured/confluent-cloud.toml", "examples/secured/event-hubs.toml"]
    {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{example}: {e}"));
        let parsed = PipelineConfig::parse(&text, example).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.source.security.protocol, Protocol::SaslSsl, "{example}");
        assert!(
            matches!(parsed.source.security.password, Some(Secret::Env(_))),
            "{example}: the password comes from the environment"
        );
    }
}
