# exactly — the two commands a newcomer needs are `just run` and `just test`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Build output and caches live outside the clone, so a fresh clone on the same machine builds
# incrementally and CI can keep them between runs.
export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", env_var("HOME") / ".cache/exactly/target")
export EXACTLY_CACHE := env_var_or_default("EXACTLY_CACHE", env_var("HOME") / ".cache/exactly")

bin := CARGO_TARGET_DIR / "debug/exactly"

# List the recipes.
default:
    @just --list

# The main job: a local Kafka broker, the demo topic, a demo producer, the pipeline with live
# progress. Ctrl-C commits the open epoch and stops everything this started.
run: setup-demo build
    scripts/run-demo

# `just run` with the tables on the local S3-compatible server (SeaweedFS, started if needed):
# examples/s3.toml. `just verify-s3` audits it from the store.
run-s3: setup build
    scripts/with-stores bash -c 'eval "$(scripts/s3 env)" && CONFIG=examples/s3.toml scripts/run-demo'

# Audit the demo table against its topic: every offset exactly once (needs the broker).
verify config="examples/demo.toml": build
    scripts/with-kafka {{bin}} verify --config {{config}}

# Audit the `just run-s3` tables, read from the local S3-compatible server.
verify-s3: build
    scripts/with-kafka scripts/with-stores bash -c 'eval "$(scripts/s3 env)" && {{bin}} verify --config examples/s3.toml'

# The layering check (scripts/layers), then the whole test suite against a real Kafka broker, a real S3-compatible server, Azurite and a
# real Confluent-compatible schema registry (Apicurio Registry), PostgreSQL and Kafka Connect with
# Debezium, and a Hive Metastore — each started if none answers, stopped after if this recipe
# started it (KEEP_KAFKA=1 / KEEP_STORES=1 / KEEP_REGISTRY=1 / KEEP_DEBEZIUM=1 / KEEP_METASTORE=1
# keep them running) — then `bench --quick`, which proves the benchmark harness (ours and Spark) works
# on small data without judging any figure.
test: setup
    scripts/layers
    scripts/with-kafka scripts/with-stores scripts/with-registry scripts/with-debezium scripts/with-metastore bash -c 'cargo test --all-targets --locked && bench/run --quick'

# The container image `exactly:latest`, offline with buildah from scratch (scripts/image), from
# the binary of `profile` (`just image dist`: what ships, a 41-minute build from empty).
image profile="release": setup
    cargo build --profile {{profile}} --locked --bins
    scripts/image --binary {{CARGO_TARGET_DIR}}/{{profile}}/exactly

# The chaos suite: kill actors, the process and the broker mid-batch, then audit. Options:
# --cases a,b --iterations N --faults N --seed S --duration SECS (see chaos/README.md).
chaos *args: setup
    cargo build --locked --bins
    scripts/with-kafka {{CARGO_TARGET_DIR}}/debug/chaos {{args}}

# Benchmarks side by side on one topic: the librdkafka/Parquet limit, ours, and the seed's Spark
# Structured Streaming + Delta job (pyspark from PyPI, connectors from Maven Central, cached).
# `just bench --quick` proves the harness on small data; see bench/README.md.
bench *args: setup
    bench/run {{args}}

# Prometheus on 127.0.0.1:9090 scraping `just run`'s pipeline (127.0.0.1:9464) with the shipped
# config and alert rules (dashboards/). Grafana dashboards: dashboards/grafana/*.json.
monitor: setup
    scripts/monitor

# Install what this machine lacks (Debian packages, just, Kafka jars, the test suite's servers
# and readers, the bench's Spark); fast when all is there.
setup:
    scripts/setup

# Install only what `just run` needs (the build, Java, the Kafka broker's jars).
setup-demo:
    scripts/setup --demo

# Build the binary.
build:
    cargo build --locked

# Start the local broker (idempotent); prints its address.
kafka-up:
    scripts/kafka up

# Stop the broker that kafka-up started.
kafka-down:
    scripts/kafka down

# Is a broker answering?
kafka-status:
    scripts/kafka status

# The dependency layers (scripts/layers), format, lint.
lint:
    scripts/layers
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings
