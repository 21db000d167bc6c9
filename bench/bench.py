#!/usr/bin/env python3
"""`just bench`: the physical limit, our pipeline, and the seed's Spark Structured Streaming +
Delta job, on the same machine, the same pre-produced topic, in the same run.

Method: the topic (JSON events {"id","value","ts"} of ~70 bytes, every 10th a duplicate of an
earlier event, 4 partitions) is produced once before anything is timed. Each system starts from
an empty table and checkpoint and runs until every record is committed; runs are repeated and
the median is reported. CPU seconds and peak RSS are read from /proc for the whole process tree.
Commit-to-visible latency: at a fixed produce rate, for every row, the commit time of the Delta
version that added its file minus the row's Kafka timestamp. Recovery: while records keep
arriving, SIGKILL after the first commits, restart, time to the first commit with records.

Append to object storage: the same append pipeline with its tables on the local S3-compatible
server (SeaweedFS, `scripts/s3`; `bench/run` starts it), beside local disk.

Writes bench/results.json and the results section of bench/README.md. `--quick` (small data,
one run) only proves the harness works; its figures mean nothing. `--modes` runs a subset of
ours (and no Spark) and writes nothing.
"""
import argparse
import re
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EXACTLY_CACHE", Path.home() / ".cache/exactly"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))
BROKERS = os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092")
TICK = os.sysconf("SC_CLK_TCK")


CHILDREN = []  # every process started, killed on exit if still running


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    CHILDREN.append(p)
    return p


def kill_children():
    for p in CHILDREN:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL) if kw_session(p) else p.kill()
            except OSError:
                pass


def kw_session(p):
    try:
        return os.getpgid(p.pid) == p.pid
    except OSError:
        return False


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---- /proc accounting over a process tree -------------------------------------------------
def descendants(pid):
    kids = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid):
    try:
        f = (Path(f"/proc/{pid}/stat").read_text()).rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def status_kb(pid, key):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Samples CPU seconds (summed, kept per pid so exits do not lose them) and RSS (summed,
    peak) of a process tree every 200 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.cpu, self.peak_rss_kb, self.stop = pid, {}, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.sample()
            time.sleep(0.2)

    def sample(self):
        rss = 0
        for p in descendants(self.pid):
            self.cpu[p] = max(self.cpu.get(p, 0.0), cpu_seconds(p))
            rss += status_kb(p, "VmRSS")
        self.peak_rss_kb = max(self.peak_rss_kb, rss)

    def cpu_total(self):
        self.sample()
        return sum(self.cpu.values())


# ---- helpers ------------------------------------------------------------------------------
def binary(profile, name):
    """A binary of the cargo profile `profile` — or, when `profile` is a directory (`--baseline`),
    the one in that directory."""
    return str(Path(profile) / name) if "/" in profile else str(TARGET / profile / name)


def watermarks(profile, topic):
    out = subprocess.run([binary(profile, "exactly-bench"), "watermarks", "--topic", topic], capture_output=True, text=True)
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


def ensure_topic(profile, topic, events, partitions=4):
    subprocess.run([binary(profile, "exactly"), "topics", "create", "--topic", topic, "--partitions", str(partitions)], check=True, capture_output=True)
    have = watermarks(profile, topic)
    if have >= events:
        log(f"topic {topic} holds {have} records (produced earlier)")
        return
    log(f"producing {events - have} events to {topic} (once, before timing)")
    subprocess.run([binary(profile, "exactly"), "produce", "--topic", topic, "--count", str(events - have),
                    "--first-id", str(have), "--duplicate-every", "10", "--distinct-values", "1000"], check=True, capture_output=True)


def s3_env():
    """The AWS_* variables reaching the local S3 server (`scripts/s3 env`)."""
    out = subprocess.run([str(ROOT / "scripts/s3"), "env"], capture_output=True, text=True, check=True).stdout
    return dict(kv.split("=", 1) for kv in out.replace("export ", "").split())


def s3_prefix(work):
    return f"exactly/bench/{work.parent.name}-{work.name}"


def s3_delete(work):
    """Removes a run's tables from the S3 server (pyarrow's S3 file system)."""
    from pyarrow import fs
    env = s3_env()
    s3 = fs.S3FileSystem(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                         endpoint_override=env["AWS_ENDPOINT_URL"], region=env["AWS_REGION"])
    try:
        s3.delete_dir(s3_prefix(work))
    except OSError as e:
        log(f"could not delete the bench tables on S3: {e}")


def sasl_ssl_source():
    """The broker's SASL_SSL listener (scripts/kafka secure-env, exported by scripts/with-kafka):
    its address and the [source.security] lines that reach it with SCRAM-SHA-512."""
    brokers, tls = os.environ.get("KAFKA_SASL_SSL_BROKERS"), os.environ.get("KAFKA_TLS_DIR")
    if not brokers or not tls:
        raise RuntimeError("append_sasl_ssl needs the local broker's secured listeners (bench/run exports them)")
    return brokers, ('[source.security]\nprotocol = "sasl_ssl"\nmechanism = "SCRAM-SHA-512"\nusername = "exactly"\n'
                     f'password = {{ file = "{tls}/password" }}\nca_file = "{tls}/ca.pem"\n')


def pipeline_config(mode, topic, work, interval_ms, sink_extra="", group=None):
    brokers, security = BROKERS, ""
    if group:  # group mode: every process started with this config joins the group
        security = f'group_id = "{group}"\nproperties = {{ "session.timeout.ms" = "6000" }}\n' 
    if mode == "append_sasl_ssl":  # the append pipeline, reading over TLS with SCRAM
        brokers, security = sasl_ssl_source()
        mode = "append"
    transform = ""
    if mode == "append_transform":  # the append pipeline with a typical [transform] (issue #17)
        transform = ('[transform]\nselect = ["id", "upper(value) AS value", "to_date(ts) AS date", '
                     '"_kafka_timestamp AS ingested_at"]\nwhere = "value IS NOT NULL"\n')
        mode = "append"
    if mode == "append_s3":  # the append pipeline, its tables on the S3 server
        env = s3_env()
        sink_extra = (f'path = "s3://{s3_prefix(work)}/table"\n' + sink_extra + "[sink.storage]\n"
                      + "".join(f'{k} = "{env[k]}"\n' for k in ["AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ALLOW_HTTP"]))
        mode = "append"
    path_line = "" if sink_extra.startswith("path =") else f'path = "{work}/table"\n'
    seed = 'fields = [{ name = "id", type = "long", nullable = false }, { name = "value", type = "string" }, { name = "ts", type = "timestamp" }]'
    extra = ""
    if mode == "dedup":
        extra = '[dedup]\nkey = ["id"]\nmax_age_epochs = 1000000\n'
    elif mode == "dedup_partition":  # group mode's dedup: each partition's state its own, by event time
        extra = '[state]\nscope = "partition"\n[dedup]\nkey = ["id"]\nwatermark_field = "ts"\nallowed_lateness_ms = 86400000\n'
    elif mode == "upsert":
        extra = '[upsert]\nkey = ["id"]\n'
    elif mode == "counts":
        extra = '[aggregate]\ngroup_by = ["value"]\naggregates = [{ op = "count" }]\noutput_mode = "update"\nbuckets = 16\n'
    text = f'''id = "bench-{mode}"
[source]
brokers = "{brokers}"
topics = ["{topic}"]
starting_offsets = "earliest"
{security}[decode]
format = "json"
{seed}
{transform}{extra}[epoch]
interval_ms = {interval_ms}
[sink]
kind = "delta"
{path_line}{sink_extra}[checkpoint]
dir = "{work}/checkpoint"
'''
    work.mkdir(parents=True, exist_ok=True)
    (work / "pipeline.toml").write_text(text)
    return work / "pipeline.toml"


class Ours:
    """`exactly run` with JSON progress on stderr, counting committed input records."""

    def __init__(self, profile, config, env=None):
        # The config names its brokers: KAFKA_BROKERS would replace them (the plaintext listener).
        base = {k: v for k, v in os.environ.items() if k != "KAFKA_BROKERS"}
        self.p = spawn([binary(profile, "exactly"), "run", "--progress", "json", "--config", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env={**base, "RUST_LOG": "error", **(env or {})})
        self.started = time.time()
        self.total, self.first_commit_at, self.lock = 0, None, threading.Lock()
        # Every progress line with the time it arrived (the upsert measure reads each epoch's).
        self.progress = []
        # Group mode: the partitions of the last commit, and when each partition got records.
        self.owned, self.partition_commits = set(), []
        # The last lines that were not progress (an exit's reason), for errors.
        self.said = []
        # Every line that is not progress (what a RUST_LOG below error adds), with its time.
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def exited(self):
        """Why the process exited, for an error message: its code and last words."""
        return f"exit {self.p.returncode}: {' | '.join(self.said[-3:]) or 'nothing on stderr'}"

    def _read(self):
        for line in self.p.stderr:
            if not line.startswith("{"):
                self.said = (self.said + [line.strip()])[-5:]
                self.lines.append((time.time(), line.strip()))
            if line.startswith("{"):
                try:
                    prog = json.loads(line)
                except ValueError:
                    continue
                with self.lock:
                    self.progress.append((time.time(), prog))
                    self.owned = {f"{p['topic']}/{p['partition']}" for p in prog.get("partitions", [])}
                    with_records = {f"{p['topic']}/{p['partition']}" for p in prog.get("partitions", []) if p["records"] > 0}
                    self.partition_commits.append((time.time(), with_records))
                    self.total += prog["input_rows"]
                    if prog["input_rows"] > 0 and self.first_commit_at is None:
                        self.first_commit_at = time.time()

    def wait_total(self, n, timeout):
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                if self.total >= n:
                    return time.time()
            if self.p.poll() is not None:
                raise RuntimeError(f"exactly exited ({self.exited()})")
            time.sleep(0.02)
        raise RuntimeError(f"timed out waiting for {n} committed records (have {self.total})")

    def stop(self, sig=signal.SIGTERM):
        self.p.send_signal(sig)
        self.p.wait(timeout=120)


def run_ours(profile, mode, topic, events, work, interval_ms):
    cfg = pipeline_config(mode, topic, work, interval_ms)
    s3 = mode == "append_s3"
    o = Ours(profile, cfg, env=s3_env() if s3 else None)
    sampler = TreeSampler(o.p.pid)
    sampler.start()
    done = o.wait_total(events, timeout=3600)
    cpu = sampler.cpu_total()
    sampler.stop.set()
    o.stop()
    if s3:
        s3_delete(work)
    secs = done - o.started
    return {"seconds": secs, "records_per_s": events / secs, "cpu_s_per_million": cpu / events * 1e6, "peak_rss_mb": sampler.peak_rss_kb / 1024}


def spark_env():
    venv = CACHE / "bench-venv"
    py = venv / "bin/python"
    home = subprocess.run([str(py), "-c", "import pyspark,os;print(os.path.dirname(pyspark.__file__))"], capture_output=True, text=True, check=True).stdout.strip()
    env = {**os.environ, "SPARK_HOME": home, "PYSPARK_PYTHON": str(py), "PATH": f"{venv}/bin:{os.environ['PATH']}"}
    jars_dir = CACHE / "spark-jars"
    jars = ",".join(str(p) for p in sorted(jars_dir.glob("*.jar"))
                    if p.name.startswith(("spark-sql-kafka", "spark-token-provider", "kafka-clients", "commons-pool2", "delta-spark", "delta-storage")))
    return env, str(venv / "bin/spark-submit"), jars


def start_spark(mode, topic, expected, work, interval_ms):
    env, submit, jars = spark_env()
    work.mkdir(parents=True, exist_ok=True)
    cmd = [submit, "--driver-memory", "1g", "--jars", jars, str(ROOT / "bench/spark_job.py"), "--brokers", BROKERS, "--topic", topic,
           "--mode", mode, "--table", str(work / "table"), "--checkpoint", str(work / "checkpoint"),
           "--trigger-seconds", str(interval_ms / 1000), "--expected", str(expected)]
    return spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)


def run_spark(mode, topic, events, work, interval_ms):
    started = time.time()
    p = start_spark(mode, topic, events, work, interval_ms)
    sampler = TreeSampler(p.pid)
    sampler.start()
    result, cpu = None, 0.0
    for line in p.stdout:
        if line.startswith("{") and '"seconds"' in line:
            result = json.loads(line)
            cpu = sampler.cpu_total()
    p.wait(timeout=600)
    sampler.stop.set()
    if result is None:
        raise RuntimeError(f"spark job failed (exit {p.returncode})")
    total = time.time() - started
    secs = result["seconds"]
    return {"seconds": secs, "seconds_with_startup": total, "records_per_s": events / secs,
            "cpu_s_per_million": cpu / events * 1e6, "peak_rss_mb": sampler.peak_rss_kb / 1024}


def commit_latencies(table):
    """For every row: commit time of the Delta version that added its file - its Kafka timestamp.
    Files an OPTIMIZE adds (auto-compaction; Spark's table is never compacted) hold rows that were
    visible already: they are not new rows."""
    from deltalake import DeltaTable
    import pyarrow as pa
    import pyarrow.parquet as pq
    dt = DeltaTable(str(table))
    commit_ms = {h["version"]: h["timestamp"] for h in dt.history()}
    rewrites = {h["version"] for h in dt.history() if h.get("operation") == "OPTIMIZE"}
    seen, lat = set(), []
    for v in sorted(commit_ms):
        files = set(DeltaTable(str(table), version=v).file_uris())
        for f in (files - seen) if v not in rewrites else ():
            col = pq.read_table(f, columns=["_kafka_timestamp"]).column(0)
            # ours writes TIMESTAMP_MICROS, Spark INT96 (read as ns): normalise to milliseconds
            ms = col.cast(pa.timestamp("ms", tz=col.type.tz), safe=False).cast(pa.int64()).to_pylist()
            lat.extend(commit_ms[v] - t for t in ms if t is not None)
        seen |= files
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
    return {"rows": len(lat), "p50_ms": q(0.5), "p99_ms": q(0.99)}


def latency(system, profile, rate, seconds, work, interval_ms):
    topic = f"bench-latency-{system}-{int(time.time())}"
    subprocess.run([binary(profile, "exactly"), "topics", "create", "--topic", topic, "--partitions", "4"], check=True, capture_output=True)
    n = rate * seconds
    if system == "ours":
        o = Ours(profile, pipeline_config("append", topic, work, interval_ms))
        time.sleep(2)
        subprocess.run([binary(profile, "exactly"), "produce", "--topic", topic, "--rate", str(rate), "--count", str(n)], check=True, capture_output=True)
        o.wait_total(n, timeout=600)
        o.stop()
    else:
        p = start_spark("append", topic, n, work, interval_ms)
        time.sleep(30)  # JVM start and first (empty) batch, so the produce run meets a running query
        subprocess.run([binary(profile, "exactly"), "produce", "--topic", topic, "--rate", str(rate), "--count", str(n)], check=True, capture_output=True)
        p.communicate(timeout=900)
    return commit_latencies(work / "table")


def first_spark_batch(p, timeout):
    """Waits for the Spark job's first batch with rows; returns when it was seen."""
    end = time.time() + timeout
    for line in p.stdout:
        if line.startswith("{") and '"batch"' in line and json.loads(line)["rows"] > 0:
            return time.time()
        if time.time() > end:
            break
    raise RuntimeError("spark committed no batch")


def recovery(system, profile, rate, work, interval_ms):
    """While records keep arriving at `rate`: wait for a first commit, SIGKILL, restart, and
    time the restart to its first commit with records."""
    topic = f"bench-recovery-{system}-{int(time.time())}"
    subprocess.run([binary(profile, "exactly"), "topics", "create", "--topic", topic, "--partitions", "4"], check=True, capture_output=True)
    producer = spawn([binary(profile, "exactly"), "produce", "--topic", topic, "--rate", str(rate)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if system == "ours":
            cfg = pipeline_config("append", topic, work, interval_ms)
            o = Ours(profile, cfg)
            while o.first_commit_at is None:
                time.sleep(0.01)
            time.sleep(2 * interval_ms / 1000)
            o.stop(signal.SIGKILL)
            t0 = time.time()
            o = Ours(profile, cfg)
            while o.first_commit_at is None:
                if time.time() - t0 > 300:
                    raise RuntimeError("no commit after the restart")
                time.sleep(0.005)
            o.stop()
            return o.first_commit_at - t0
        p = start_spark("append", topic, 10**12, work, interval_ms)
        first_spark_batch(p, 300)
        time.sleep(2 * interval_ms / 1000)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        t0 = time.time()
        p = start_spark("append", topic, 10**12, work, interval_ms)
        t1 = first_spark_batch(p, 600)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return t1 - t0
    finally:
        producer.send_signal(signal.SIGINT)
        producer.wait(timeout=60)


def group_throughput(profile, topic, events, work, interval_ms, members, mode="append"):
    """`members` processes of one group (`source.group_id`) share the pre-produced topic: time
    from the first start to every record committed (summed over the members). Includes the
    group forming: the members join one after another, each join a rebalance. Each member has a
    checkpoint directory of its own (its disk)."""
    group = f"bench-group-{mode}-{members}-{int(time.time())}"
    cfgs = [pipeline_config(mode, topic, work / f"member-{i}", interval_ms, sink_extra=f'path = "{work}/table"\n', group=group)
            for i in range(members)]
    os_ = [Ours(profile, cfg) for cfg in cfgs]
    samplers = [TreeSampler(o.p.pid) for o in os_]
    for sm in samplers:
        sm.start()
    t0, end = min(o.started for o in os_), time.time() + 3600
    while sum(o.total for o in os_) < events:
        if time.time() > end or any(o.p.poll() is not None for o in os_):
            why = "; ".join(o.exited() for o in os_ if o.p.poll() is not None) or "timed out"
            raise RuntimeError(f"group of {members}: {sum(o.total for o in os_)} of {events} committed ({why})")
        time.sleep(0.02)
    done = time.time()
    cpu = sum(sm.cpu_total() for sm in samplers)
    for sm in samplers:
        sm.stop.set()
    for o in os_:
        o.stop()
    secs = done - t0
    return {"members": members, "seconds": secs, "records_per_s": events / secs, "cpu_s_per_million": cpu / events * 1e6,
            "peak_rss_mb": sum(sm.peak_rss_kb for sm in samplers) / 1024}


def group_takeover(profile, rate, work, interval_ms):
    """Two members share a topic fed at `rate`; one is SIGKILLed. Seconds from the kill to the
    survivor's first commit with records of a partition the killed member owned (the group
    first waits the session timeout, 6 s here, for the silent member)."""
    topic = f"bench-takeover-{int(time.time())}"
    subprocess.run([binary(profile, "exactly"), "topics", "create", "--topic", topic, "--partitions", "4"], check=True, capture_output=True)
    producer = spawn([binary(profile, "exactly"), "produce", "--topic", topic, "--rate", str(rate)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cfg = pipeline_config("append", topic, work, interval_ms, group=f"bench-takeover-{int(time.time())}")
        a = Ours(profile, cfg)
        while a.first_commit_at is None:
            time.sleep(0.01)
        b = Ours(profile, cfg)
        end = time.time() + 120
        while not (a.owned and b.owned and not (a.owned & b.owned)):  # the group split the partitions
            if time.time() > end:
                raise RuntimeError("the two members never shared the partitions")
            time.sleep(0.05)
        time.sleep(2 * interval_ms / 1000)
        lost = set(a.owned)
        a.stop(signal.SIGKILL)
        t0 = time.time()
        while time.time() - t0 < 120:
            with b.lock:
                taken = [t for t, parts in b.partition_commits if t > t0 and parts & lost]
            if taken:
                b.stop()
                return taken[0] - t0
            time.sleep(0.01)
        raise RuntimeError("the survivor never committed the killed member's partitions")
    finally:
        producer.send_signal(signal.SIGINT)
        producer.wait(timeout=60)


def dedup_scale(profile, ids, interval_ms, work):
    """Dedup with epoch retention over `ids` distinct ids: RSS sampled as the key count grows."""
    topic = f"bench-distinct-{ids}"
    subprocess.run([binary(profile, "exactly"), "topics", "create", "--topic", topic, "--partitions", "4"], check=True, capture_output=True)
    if watermarks(profile, topic) < ids:
        log(f"producing {ids} distinct ids to {topic}")
        subprocess.run([binary(profile, "exactly"), "produce", "--topic", topic, "--count", str(ids - watermarks(profile, topic))],
                       check=True, capture_output=True)
    cfg = pipeline_config("dedup", topic, work, interval_ms)
    text = cfg.read_text().replace("max_age_epochs = 1000000", "max_age_epochs = 5")
    cfg.write_text(text)
    o = Ours(profile, cfg)
    samples = []
    marks = [ids * q // 10 for q in range(1, 11)]
    for m in marks:
        o.wait_total(m, timeout=3600)
        samples.append({"records": m, "rss_mb": status_kb(o.p.pid, "VmRSS") / 1024})
    peak = status_kb(o.p.pid, "VmHWM") / 1024
    o.stop()
    return {"ids": ids, "retention_epochs": 5, "rss_by_progress": samples, "peak_rss_mb": peak}


def scrape(port):
    """The pipeline's metrics endpoint as {name: value} (unlabelled series only)."""
    import urllib.request
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$", line)
        if m and all(l.startswith("pipeline=") for l in (m.group(2) or "").split(",") if l):
            out[m.group(1)] = float(m.group(3))
    return out


def persist_cost(profile, keys, rate, seconds, interval_ms, work):
    """A dedup pipeline over `keys` distinct ids with its checkpoint persisted to the S3 server
    every 5 epochs: the cost of one persist (ms, bytes uploaded) while `rate` new ids/s arrive
    for `seconds`, then the restore of its checkpoint onto an empty directory."""
    import socket
    topic = f"bench-persist-{keys}-{work.parent.name}"
    subprocess.run([binary(profile, "exactly"), "topics", "create", "--topic", topic, "--partitions", "4"], check=True, capture_output=True)
    log(f"persist: producing {keys} distinct ids to {topic}")
    subprocess.run([binary(profile, "exactly"), "produce", "--topic", topic, "--count", str(keys)], check=True, capture_output=True)
    cfg = pipeline_config("dedup", topic, work, interval_ms)
    env = s3_env()
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    text = cfg.read_text().replace("[checkpoint]\n", "[checkpoint]\n"
                                   f'remote = "s3://{s3_prefix(work)}/checkpoint"\npersist_every_epochs = 5\npersist_interval_ms = 60000\n', 1)
    text += "[checkpoint.storage]\n" + "".join(f'{k} = "{env[k]}"\n' for k in ["AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ALLOW_HTTP", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
    text += f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    cfg.write_text(text)
    o = Ours(profile, cfg, env={"RUST_LOG": "error,exactly::runtime::persister=info", "NO_COLOR": "1"})
    o.wait_total(keys, timeout=3600)
    log(f"persist: {keys} keys in the state; {rate} new ids/s for {seconds} s")
    # RocksDB compacts the load's files for a while: measured after it, what a steady stream costs.
    time.sleep(20 * interval_ms / 1000)
    before = scrape(port)
    t_steady = time.time()
    producer = spawn([binary(profile, "exactly"), "produce", "--topic", topic, "--count", str(rate * seconds), "--rate", str(rate),
                      "--first-id", str(keys)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    producer.wait(timeout=seconds * 3 + 60)
    o.wait_total(keys + rate * seconds, timeout=600)
    after = scrape(port)
    steady = [l for t, l in o.lines if t >= t_steady and "checkpoint persisted" in l]
    per = [dict(kv.split("=", 1) for kv in re.findall(r"\b(\w+=\d+)", re.sub(r"\x1b\[[0-9;]*m", "", l))) for l in steady]
    o.stop()
    n = after.get("exactly_checkpoint_persist_duration_seconds_count", 0) - before.get("exactly_checkpoint_persist_duration_seconds_count", 0)
    ms = (after.get("exactly_checkpoint_persist_duration_seconds_sum", 0) - before.get("exactly_checkpoint_persist_duration_seconds_sum", 0)) / max(n, 1) * 1000
    uploaded = (after.get("exactly_checkpoint_persist_bytes_total", 0) - before.get("exactly_checkpoint_persist_bytes_total", 0)) / max(n, 1)
    state = after.get("exactly_state_bytes", 0)
    # The restore: the graceful stop persisted the last epoch; an empty directory restores it.
    import shutil
    shutil.rmtree(work / "checkpoint")
    o = Ours(profile, cfg)
    deadline = time.time() + 600
    restore = None
    while time.time() < deadline and restore is None:
        if o.p.poll() is not None:
            raise RuntimeError(f"exactly exited ({o.exited()})")
        m = scrape(port)
        if "exactly_checkpoint_restore_seconds" in m:
            restore = m["exactly_checkpoint_restore_seconds"]
        time.sleep(0.2)
    o.stop()
    s3_delete(work)
    shutil.rmtree(work, ignore_errors=True)
    each = [{k: int(v) for k, v in p.items() if k in ("epoch", "uploaded_files", "uploaded_bytes", "ms")} for p in per]
    # The first persist of the window also uploads what the load left unpersisted: the steady
    # cost is that of the ones after it.
    rest = each[1:] or each
    if rest:
        ms = statistics.median(p["ms"] for p in rest)
        uploaded = statistics.median(p["uploaded_bytes"] for p in rest)
    return {"keys": keys, "rate": rate, "seconds": seconds, "persists": n, "persist_ms": ms, "uploaded_bytes_per_persist": uploaded,
            "state_bytes": state, "restore_s": restore, "each": each}


def render_persist(rows):
    out = ["| dedup keys | new ids/s | persists | ms per persist (median) | MB uploaded per persist (median) | state on disk, MB | restore, s |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['keys']:,} | {r['rate']:,} | {r['persists']:.0f} | {r['persist_ms']:.0f} | {r['uploaded_bytes_per_persist'] / 1e6:.2f} "
                   f"| {r['state_bytes'] / 1e6:.0f} | {r['restore_s']:.2f} |")
    return "\n".join(out)


UPSERT_MERGE = r"""
import json, random, resource, sys, time
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
path, keys, per_epoch, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rows(ids, r):
    return pa.table({"id": pa.array(ids, pa.int64()), "value": [f"event_{r.randrange(1_000_000)}" for _ in ids],
                     "ts": pa.array([1_700_000_000_000_000] * len(ids), pa.timestamp("us", tz="UTC"))})
r = random.Random(1)
t0 = time.time()
for start in range(0, keys, 1_000_000):  # files of up to 1M rows, as ours
    write_deltalake(path, rows(list(range(start, min(keys, start + 1_000_000))), r), mode="append")
load = time.time() - t0
times = []
for e in range(epochs):
    batch = rows([r.randrange(keys) for _ in range(per_epoch)], r)
    batch = batch.group_by("id").aggregate([("value", "max"), ("ts", "max")]).rename_columns(["id", "value", "ts"])
    t = time.time()
    (DeltaTable(path).merge(source=batch, predicate="t.id = s.id", source_alias="s", target_alias="t")
        .when_matched_update_all().when_not_matched_insert_all().execute())
    times.append(time.time() - t)
print(json.dumps({"load_s": load, "merge_s": times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def upsert_run(profile, keys, per_epoch, epochs, interval_ms, work, block_cache_mb=None, merge=True):
    """The upsert pipeline over a table of `keys` keys. The initial load: every key once, in
    epochs of up to 1M rows (files of that size). Sustained: a backlog of `per_epoch * epochs`
    changes to random keys, consumed in epochs of about `per_epoch` (changes/s, CPU, peak RSS).
    Commit time: then `epochs` rounds of exactly `per_epoch` changes, each produced once the
    previous one is committed, so each is one epoch; its commit time is state + Delta +
    checkpoint, from the progress line."""
    initial, backlog = f"bench-upsert-{keys}", f"bench-upsert-{keys}-changes-{per_epoch}x{epochs}"
    rounds = f"bench-upsert-{keys}-rounds-{per_epoch}-{work.parent.name}"
    for topic, count, args in ((initial, keys, ["--initial"]), (backlog, per_epoch * epochs, ["--count", str(per_epoch * epochs)]), (rounds, 0, None)):
        subprocess.run([binary(profile, "exactly"), "topics", "create", "--topic", topic, "--partitions", "4"], check=True, capture_output=True)
        have = watermarks(profile, topic)
        if args and have < count:
            if have:
                raise RuntimeError(f"topic {topic} holds a partial production ({have} of {count}); delete it and run again")
            log(f"producing {count} records to {topic} (once, before timing)")
            subprocess.run([binary(profile, "exactly-bench"), "changes", "--topic", topic, "--keys", str(keys), *args], check=True, capture_output=True)
    cfg = pipeline_config("upsert", initial, work, interval_ms)
    text = cfg.read_text()
    if block_cache_mb:
        text = text.replace("[checkpoint]", f"[state]\nblock_cache_mb = {block_cache_mb}\n[checkpoint]")

    def run(topics, interval, max_records):
        t = text.replace(f'topics = ["{initial}"]', "topics = [" + ", ".join(f'"{x}"' for x in topics) + "]")
        cfg.write_text(t.replace(f"interval_ms = {interval_ms}", f"interval_ms = {interval}\nmax_records = {max_records}"))
        return Ours(profile, cfg)

    o = run([initial], interval_ms, 1_000_000)
    o.wait_total(keys, timeout=3600)
    load_s = time.time() - o.started
    o.stop()
    o = run([initial, backlog], interval_ms, per_epoch)
    sampler = TreeSampler(o.p.pid)
    sampler.start()
    done = o.wait_total(per_epoch * epochs, timeout=3600)
    cpu = sampler.cpu_total()
    sampler.stop.set()
    o.stop()
    first = min(t for t, p in o.progress if p["input_rows"] > 0)
    r = {"keys": keys, "changes_per_epoch": per_epoch, "load_s": load_s,
         "changes_per_s": per_epoch * epochs / (done - o.started), "changes_per_s_after_first_epoch": None,
         "cpu_s_per_million": cpu / (per_epoch * epochs) * 1e6, "peak_rss_mb": sampler.peak_rss_kb / 1024}
    rest = sum(p["input_rows"] for t, p in o.progress if t > first)
    if done > first:
        r["changes_per_s_after_first_epoch"] = rest / (done - first)
    o = run([initial, backlog, rounds], 600_000, per_epoch)
    for i in range(epochs):
        subprocess.run([binary(profile, "exactly-bench"), "changes", "--topic", rounds, "--keys", str(keys), "--count", str(per_epoch),
                        "--seed", str(1000 + i)], check=True, capture_output=True)
        o.wait_total((i + 1) * per_epoch, timeout=600)
    o.stop()
    commits = [p for _, p in o.progress if p["input_rows"] > 0]
    commit_ms = [p["state_ms"] + p["sink_ms"] + p["checkpoint_ms"] for p in commits]
    log(f"upsert {keys} keys, {per_epoch}/epoch: commit ms {[round(c) for c in commit_ms]}")
    r.update({"epochs": len(commits), "commit_ms_median": statistics.median(commit_ms), "commit_ms_max": max(commit_ms),
              "state_ms_median": statistics.median(p["state_ms"] for p in commits),
              "sink_ms_median": statistics.median(p["sink_ms"] for p in commits)})
    r["block_cache_mb"] = block_cache_mb or 64
    if not merge:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
        r["merge"] = {"merge_ms_median": float("nan"), "changes_per_s": float("nan"), "peak_rss_mb": float("nan")}
        return r
    log("delta-rs MERGE, the same workload")
    merge_epochs = min(epochs, 3)
    out = subprocess.run([str(CACHE / "venv/bin/python"), "-c", UPSERT_MERGE, str(work / "merge-table"), str(keys), str(per_epoch), str(merge_epochs)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the MERGE run failed: {out.stderr[-2000:]}")
    m = json.loads(out.stdout.strip().splitlines()[-1])
    r["merge"] = {"epochs": merge_epochs, "load_s": m["load_s"], "merge_ms_median": statistics.median(m["merge_s"]) * 1000,
                  "changes_per_s": per_epoch / statistics.median(m["merge_s"]), "peak_rss_mb": m["peak_rss_mb"]}
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    return r


def render_upsert(rows):
    out = ["| keys | changes per epoch | epochs | epoch commit time, median (max), ms | of which state / Delta, ms | changes/s over a backlog (after its first epoch) | CPU-s per million changes | peak RSS, MB | delta-rs MERGE: per epoch, ms | MERGE changes/s | MERGE peak RSS, MB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["merge"]
        out.append(f"| {r['keys']:,} | {r['changes_per_epoch']:,} | {r['epochs']} | {r['commit_ms_median']:,.0f} ({r['commit_ms_max']:,.0f}) | "
                   f"{r['state_ms_median']:,.0f} / {r['sink_ms_median']:,.0f} | {r['changes_per_s']:,.0f} ({r['changes_per_s_after_first_epoch'] or float('nan'):,.0f}) | {r['cpu_s_per_million']:.1f} | {r['peak_rss_mb']:.0f} | "
                   f"{m['merge_ms_median']:,.0f} | {m['changes_per_s']:,.0f} | {m['peak_rss_mb']:.0f} |")
    return "\n".join(out)


def upsert(profile, interval_ms, work, quick, points=None, block_cache_mb=None, merge=True):
    """The `upsert` measure: the same number of changes per epoch against a small and a 10x larger
    table (cost follows the change?), and 1% of the larger table's keys per epoch; or `points`
    (keys, changes per epoch) with a state block cache of `block_cache_mb`."""
    small, large = (20_000, 200_000) if quick else (1_000_000, 10_000_000)
    epochs = 3 if quick else 10
    points = points or [(small, small // 100), (large, small // 100), (large, large // 100)]
    return [upsert_run(profile, k, c, epochs, interval_ms, work / f"upsert-{k}-{c}", block_cache_mb, merge) for k, c in points]


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def table_files(table):
    """(live files, bytes of live files, _delta_log entries, _delta_log bytes) of a table."""
    from deltalake import DeltaTable
    dt = DeltaTable(str(table))
    adds = dt.get_add_actions(flatten=True)
    sizes = adds.column("size_bytes").to_pylist()
    log_dir = Path(table) / "_delta_log"
    entries = [f for f in log_dir.rglob("*") if f.is_file()]
    return len(sizes), sum(sizes), len(entries), sum(f.stat().st_size for f in entries)


def soak(profile, mode, epochs, rate, interval_ms, work, sink_extra):
    """A long run at a steady produce rate: per epoch, the commit time (progress `sink_ms`), the
    process CPU and RSS; the table's live files and `_delta_log` size every tenth of the run.
    Compares the first and the last tenth of the epochs."""
    topic = f"bench-soak-{mode}-{int(time.time())}"
    subprocess.run([binary(profile, "exactly"), "topics", "create", "--topic", topic, "--partitions", "4"], check=True, capture_output=True)
    cfg = pipeline_config(mode, topic, work, interval_ms, sink_extra)
    p = spawn([binary(profile, "exactly"), "run", "--progress", "json", "--config", str(cfg)],
              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "error"})
    producer = spawn([binary(profile, "exactly"), "produce", "--topic", topic, "--rate", str(rate), "--distinct-values", "1000"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows, tables, other = [], [], []
    tenth = max(1, epochs // 10)
    try:
        for line in p.stderr:
            if not line.startswith("{"):
                other = (other + [line.rstrip()])[-5:]
                continue
            try:
                prog = json.loads(line)
            except ValueError:
                continue
            if "sink_ms" not in prog:
                continue
            rows.append({"epoch": prog["epoch"], "records": prog["input_rows"], "sink_ms": prog["sink_ms"],
                         "cpu_s": cpu_seconds(p.pid), "rss_kb": status_kb(p.pid, "VmRSS"), "t": time.time()})
            if len(rows) % tenth == 0:
                files, fbytes, log_entries, log_bytes = table_files(work / "table")
                tables.append({"epoch": prog["epoch"], "live_files": files, "live_bytes": fbytes,
                               "log_entries": log_entries, "log_bytes": log_bytes, "rss_mb": rows[-1]["rss_kb"] / 1024})
                log(f"soak {mode}: epoch {prog['epoch']}, {files} live files, _delta_log {log_entries} entries / {log_bytes / 1e6:.1f} MB, "
                    f"commit p50 {percentile([r['sink_ms'] for r in rows[-tenth:]], 0.5):.1f} ms")
            if len(rows) >= epochs:
                break
        if len(rows) < epochs:
            raise RuntimeError(f"exactly exited after {len(rows)} epochs (exit {p.wait()}): " + " / ".join(other))
    finally:
        producer.send_signal(signal.SIGINT)
        producer.wait(timeout=60)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)

    def part(rs, prev_cpu):
        recs = sum(r["records"] for r in rs)
        return {"commit_p50_ms": percentile([r["sink_ms"] for r in rs], 0.5), "commit_p99_ms": percentile([r["sink_ms"] for r in rs], 0.99),
                "records_per_epoch": recs / len(rs), "cpu_us_per_record": (rs[-1]["cpu_s"] - prev_cpu) / max(recs, 1) * 1e6,
                "rss_mb": statistics.median(r["rss_kb"] for r in rs) / 1024}
    first, last = rows[:tenth], rows[-tenth:]
    a, b = part(first, rows[0]["cpu_s"]), part(last, rows[-tenth - 1]["cpu_s"])
    return {"mode": mode, "epochs": len(rows), "interval_ms": interval_ms, "rate": rate, "sink": sink_extra.strip(),
            "first_tenth": a, "last_tenth": b,
            "p99_ratio": b["commit_p99_ms"] / a["commit_p99_ms"], "cpu_ratio": b["cpu_us_per_record"] / a["cpu_us_per_record"],
            "max_live_files": max(t["live_files"] for t in tables), "max_log_bytes": max(t["log_bytes"] for t in tables),
            "tables": tables}


def render_soak(rs):
    out = [f"| mode | epochs | commit p50 / p99, first tenth, ms | last tenth, ms | p99 last / first | CPU µs/record first / last | "
           f"max live files | max `_delta_log` MB | RSS first / last, MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        a, b = r["first_tenth"], r["last_tenth"]
        out.append(f"| {r['mode']} | {r['epochs']:,} | {a['commit_p50_ms']:.1f} / {a['commit_p99_ms']:.1f} | {b['commit_p50_ms']:.1f} / {b['commit_p99_ms']:.1f} "
                   f"| {r['p99_ratio']:.2f}x | {a['cpu_us_per_record']:.1f} / {b['cpu_us_per_record']:.1f} | {r['max_live_files']:,} "
                   f"| {r['max_log_bytes'] / 1e6:.1f} | {a['rss_mb']:.0f} / {b['rss_mb']:.0f} |")
    return "\n".join(out)


LIMIT_SETTINGS = {
    "the pipeline's fetch settings": [],
    "deeper prefetch (queued.min.messages=100000)": ["queued.min.messages=100000"],
    "librdkafka's defaults": ["queued.min.messages=100000", "fetch.queue.backoff.ms=1000", "fetch.wait.max.ms=500"],
}


def median_of(runs):
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data, one run: proves the harness, figures mean nothing")
    ap.add_argument("--events", type=int)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--rate", type=int, help="produce rate for the latency measure")
    ap.add_argument("--latency-seconds", type=int)
    ap.add_argument("--interval-ms", type=int, default=1000, help="epoch interval = Spark trigger interval")
    ap.add_argument("--profile", default=None, help="cargo profile of the binaries (release; debug for --quick)")
    ap.add_argument("--skip-spark", action="store_true")
    ap.add_argument("--baseline", metavar="DIR", help="also run ours with the `exactly` binary in DIR (the build before a change), "
                    "alternating with the current one, and report both")
    ap.add_argument("--modes", help="only these of ours (append,dedup,counts,append_transform,append_s3,append_sasl_ssl,group), no Spark; writes nothing")
    ap.add_argument("--dedup-scale", type=int, metavar="IDS", help="only: RSS of dedup with retention over IDS distinct ids")
    ap.add_argument("--soak", type=int, metavar="EPOCHS", help="only: a soak run of EPOCHS epochs per mode (see bench/README.md)")
    ap.add_argument("--soak-modes", default="append,counts", help="modes of the soak run")
    ap.add_argument("--upsert", action="store_true", help="only: the upsert measure beside delta-rs MERGE (see bench/README.md)")
    ap.add_argument("--upsert-points", help="with --upsert: KEYS:CHANGES_PER_EPOCH,... instead of the standard points; writes nothing")
    ap.add_argument("--block-cache-mb", type=int, help="with --upsert: the pipeline's state.block_cache_mb")
    ap.add_argument("--skip-merge", action="store_true", help="with --upsert: no delta-rs MERGE runs")
    ap.add_argument("--persist", action="store_true", help="only: the cost of persisting a dedup checkpoint to S3 at 1M and 10M keys, and its restore")
    ap.add_argument("--soak-sink", default="", help="extra [sink] lines for the soak run's pipelines")
    a = ap.parse_args()
    events = a.events or (20_000 if a.quick else 5_000_000)
    runs = a.runs or (1 if a.quick else 3)
    rate = a.rate or (2_000 if a.quick else 20_000)
    lat_s = a.latency_seconds or (5 if a.quick else 30)
    profile = a.profile or ("debug" if a.quick else "release")
    stamp = int(time.time())
    work = CACHE / "bench-work" / str(stamp)
    if a.dedup_scale:
        r = dedup_scale(profile, a.dedup_scale, a.interval_ms, work / "dedup-scale")
        (ROOT / "bench/dedup-scale.json").write_text(json.dumps(r, indent=2) + "\n")
        print(json.dumps(r, indent=2))
        return
    if a.upsert:
        points = [tuple(int(x) for x in p.split(":")) for p in a.upsert_points.split(",")] if a.upsert_points else None
        rows = upsert(profile, a.interval_ms, work, a.quick, points, a.block_cache_mb, not a.skip_merge)
        print(render_upsert(rows))
        print(json.dumps(rows))
        if not a.quick and not points and not a.block_cache_mb:
            (ROOT / "bench/upsert.json").write_text(json.dumps(rows, indent=2) + "\n")
        return
    if a.persist:
        points = [100_000] if a.quick else [1_000_000, 10_000_000]
        rows = [persist_cost(profile, k, 2_000 if a.quick else 20_000, 5 if a.quick else 60, a.interval_ms, work / f"persist-{k}") for k in points]
        print(render_persist(rows))
        print(json.dumps(rows))
        if not a.quick:
            (ROOT / "bench/persist.json").write_text(json.dumps(rows, indent=2) + "\n")
        return
    if a.soak:
        interval = a.interval_ms if "--interval-ms" in sys.argv else 100
        rs = []
        for m in a.soak_modes.split(","):
            rs.append(soak(profile, m, a.soak, a.rate or 5_000, interval, work / f"soak-{m}", a.soak_sink.replace("\\n", "\n") + "\n" if a.soak_sink else ""))
            log("soak result:\n" + render_soak(rs[-1:]) + "\n" + json.dumps({k: v for k, v in rs[-1].items() if k != "tables"}))
        print(render_soak(rs))
        if not a.quick:
            (ROOT / "bench/soak.json").write_text(json.dumps(rs, indent=2) + "\n")
        import shutil
        shutil.rmtree(work, ignore_errors=True)
        return
    topic = f"bench-{events}"
    ensure_topic(profile, topic, events)
    results = {"events": events, "runs": runs, "interval_ms": a.interval_ms, "profile": profile, "quick": a.quick,
               "machine": {"cores": os.cpu_count(), "kernel": os.uname().release}}

    # The limit is the best librdkafka does over a few fetch settings: the pipeline's own, a
    # deeper prefetch, and librdkafka's defaults; ours is never compared with a handicapped limit.
    variants = {}
    for name, sets in LIMIT_SETTINGS.items():
        log(f"limit: librdkafka consume, {name}")
        cmd = [binary(profile, "exactly-bench"), "consume", "--topic", topic] + [x for kv in sets for x in ("--set", kv)]
        variants[name] = median_of([json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout) for _ in range(runs)])
    best = max(variants, key=lambda n: variants[n]["records_per_s"])
    results["limit_consume"] = {**variants[best], "settings": best}
    results["limit_consume_by_settings"] = variants
    log("limit: decode + parquet encode")
    results["limit_parquet"] = median_of([json.loads(subprocess.run([binary(profile, "exactly-bench"), "parquet", "--topic", topic],
                                                                     capture_output=True, text=True, check=True).stdout) for _ in range(runs)])
    partial = a.modes is not None
    systems = ["ours"] + ([] if a.skip_spark or partial else ["spark"])
    for system in systems:
        modes = ["append", "dedup", "counts"] + (["append_transform", "append_s3", "append_sasl_ssl"] if system == "ours" else [])
        for mode in a.modes.split(",") if partial else modes:
            if mode == "group":
                continue  # measured below, beside recovery
            log(f"{system} {mode}: {runs} run(s) over {events} events")
            rs, before = [], []
            for r in range(runs):
                w = work / f"{system}-{mode}-{r}"
                if system == "ours" and a.baseline:  # before and after alternate, so drift hits both
                    before.append(run_ours(a.baseline, mode, topic, events, work / f"before-{mode}-{r}", a.interval_ms))
                rs.append(run_ours(profile, mode, topic, events, w, a.interval_ms) if system == "ours" else run_spark(mode, topic, events, w, a.interval_ms))
            results[f"{system}_{mode}"] = median_of(rs)
            if before:
                results[f"before_{mode}"] = median_of(before)
        if system == "ours" and (not partial or "group" in a.modes.split(",")):
            # Scale out: 1, 2 and 4 members of one group on this machine, and the takeover.
            results["ours_group"] = {}
            for n in [1, 2] if a.quick else [1, 2, 4]:
                log(f"ours group mode, {n} member(s): {runs} run(s) over {events} events")
                results["ours_group"][str(n)] = median_of([group_throughput(profile, topic, events, work / f"group-{n}-{r}", a.interval_ms, n) for r in range(runs)])
            # Stateful group mode: partition-scoped dedup with 1 and 2 members, then the state
            # of every partition rebuilt from the 1-member run's table (what a member taking
            # them on a fresh disk does).
            results["ours_group_dedup"] = {}
            for n in [1, 2]:
                log(f"ours group mode, dedup (state.scope = partition), {n} member(s): {runs} run(s) over {events} events")
                results["ours_group_dedup"][str(n)] = median_of([group_throughput(profile, topic, events, work / f"group-dedup-{n}-{r}", a.interval_ms, n, "dedup_partition") for r in range(runs)])
            log("ours group mode: dedup state rebuilt from the table")
            cmd = [binary(profile, "exactly-bench"), "restore", "--topic", topic, "--table", str(work / "group-dedup-1-0" / "table"), "--partitions", "4"]
            results["ours_group_restore"] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            log("ours group mode: takeover after a member's SIGKILL")
            results["ours_group_takeover_s"] = group_takeover(profile, min(rate, 5_000), work / "group-takeover", a.interval_ms)
        if partial:
            break
        log(f"{system}: latency at {rate} events/s for {lat_s} s")
        results[f"{system}_latency"] = latency(system, profile, rate, lat_s, work / f"{system}-latency", a.interval_ms)
        if system == "spark" and a.quick:
            continue  # two JVM start-ups: minutes, and the quick run only proves the harness
        log(f"{system}: recovery after SIGKILL")
        results[f"{system}_recovery_s"] = recovery(system, profile, min(rate, 5_000), work / f"{system}-recovery", a.interval_ms)
    if partial:
        print(json.dumps({k: v for k, v in results.items() if k.startswith(("ours_", "before_", "limit_consume"))}, indent=2))
        return
    log("scale: append, dedup and counts as the events and the partitions grow")
    results["scale"] = scale(profile, results, work, a.interval_ms, a.quick)
    table, scale_table = render(results), render_scale(results["scale"])
    print(table + "\n\n" + scale_table)
    if a.quick:  # prove the soak and upsert harnesses too (their full runs: bench/README.md)
        print(render_soak([soak(profile, m, 40, 2_000, 100, work / f"soak-{m}", "") for m in ["append", "counts"]]))
        print(render_upsert(upsert(profile, 200, work, True)))
    if not a.quick:  # a quick run's figures mean nothing: it never replaces the measured ones
        (ROOT / "bench/results.json").write_text(json.dumps(results, indent=2) + "\n")
        readme = ROOT / "bench/README.md"
        text = readme.read_text()
        for (start, end), body in [(("<!-- results:start -->", "<!-- results:end -->"), table),
                                   (("<!-- scale:start -->", "<!-- scale:end -->"), scale_table)]:
            if start in text and end in text:
                text = text.split(start)[0] + start + "\n" + body + "\n" + end + text.split(end)[1]
        readme.write_text(text)
    import shutil
    shutil.rmtree(work, ignore_errors=True)


# How cost grows: events at 4 partitions, and partitions at the main measure's events.
SCALE_EVENTS, SCALE_PARTITIONS = [1_000_000, 5_000_000, 20_000_000], [4, 16, 64]


def scale(profile, results, work, interval_ms, quick):
    """Append, dedup and counts at each events count (4 partitions) and each partition count (the
    main measure's events), one run per point; the main measure's own point (median of its runs)
    is reused. Topics: `bench-<events>` (4 partitions) and `bench-<events>-p<partitions>`."""
    events_list, parts_list = ([10_000, 20_000], [4, 8]) if quick else (SCALE_EVENTS, SCALE_PARTITIONS)
    base = results["events"]
    points = [(e, 4) for e in events_list] + [(base, p) for p in parts_list if p != 4]
    rows = []
    for events, parts in points:
        topic = f"bench-{events}" if parts == 4 else f"bench-{events}-p{parts}"
        ensure_topic(profile, topic, events, parts)
        for mode in ["append", "dedup", "counts"]:
            main = results.get(f"ours_{mode}") if (events, parts) == (base, 4) else None
            if main is None:
                log(f"scale: {mode}, {events} events, {parts} partitions")
            r = main or run_ours(profile, mode, topic, events, work / f"scale-{mode}-{events}-{parts}", interval_ms)
            rows.append({"mode": mode, "events": events, "partitions": parts, "runs": results["runs"] if main else 1, **r})
    return rows


def render_scale(rows):
    """One row per point; the cost per record relative to the mode's smallest point."""
    out = ["| mode | events | partitions | runs | records/s | CPU-s per million | peak RSS, MB | CPU per record vs the first row of the mode |",
           "|---|---|---|---|---|---|---|---|"]
    first = {}
    for r in rows:
        f = first.setdefault(r["mode"], r)
        out.append(f"| {r['mode']} | {r['events']:,} | {r['partitions']} | {r['runs']} | {r['records_per_s']:,.0f} | {r['cpu_s_per_million']:.2f} "
                   f"| {r['peak_rss_mb']:.0f} | {r['cpu_s_per_million'] / f['cpu_s_per_million']:.2f}x |")
    return "\n".join(out)


def render(r):
    lim = r["limit_consume"]["records_per_s"]
    rows = [f"Measured {time.strftime('%Y-%m-%d')} on {r['machine']['cores']} cores, {r['events']:,} events, median of {r['runs']} run(s), "
            f"epoch interval / trigger {r['interval_ms']} ms, `{r['profile']}` build.", "",
            "| measure | limit | ours | Spark | ours / limit | ours / Spark |", "|---|---|---|---|---|---|",
            f"| librdkafka consume, records/s (best: {r['limit_consume'].get('settings', '')}) | {lim:,.0f} | | | | |",
            f"| librdkafka consume: CPU-seconds per million records | {r['limit_consume'].get('cpu_s_per_million', float('nan')):.2f} | | | | |",
            f"| decode to Arrow (one core), records/s | {r['limit_parquet']['decode_records_per_s']:,.0f} | | | | |",
            f"| Parquet encode (one core), records/s | {r['limit_parquet']['encode_records_per_s']:,.0f} | | | | |"]
    for mode, label in [("append", "append"), ("dedup", "dedup"), ("counts", "keyed count (ours: update, Spark: complete)")]:
        o, s = r.get(f"ours_{mode}"), r.get(f"spark_{mode}")
        if not o:
            continue
        sp = lambda k, f: f.format(s[k]) if s else "—"
        ratio = lambda k: f"{o[k] / s[k]:.1f}x" if s else "—"
        rows.append(f"| {label}: records/s | | {o['records_per_s']:,.0f} | {sp('records_per_s', '{:,.0f}')} | {o['records_per_s'] / lim:.0%} | {ratio('records_per_s')} |")
        rows.append(f"| {label}: CPU-seconds per million records | | {o['cpu_s_per_million']:.1f} | {sp('cpu_s_per_million', '{:.1f}')} | | |")
        rows.append(f"| {label}: peak RSS, MB | | {o['peak_rss_mb']:.0f} | {sp('peak_rss_mb', '{:.0f}')} | | |")
    for mode in ["append", "dedup", "counts", "append_transform", "append_s3", "append_sasl_ssl"]:
        b, o = r.get(f"before_{mode}"), r.get(f"ours_{mode}")
        if b and o:  # --baseline: the same measure on the binaries before a change, in this run
            rows.append(f"| {mode}, before (`--baseline`): records/s | | {b['records_per_s']:,.0f} | | {b['records_per_s'] / lim:.0%} | "
                        f"after / before {o['records_per_s'] / b['records_per_s']:.2f}x; CPU-s per million {b['cpu_s_per_million']:.2f} -> "
                        f"{o['cpu_s_per_million']:.2f}; peak RSS {b['peak_rss_mb']:.0f} -> {o['peak_rss_mb']:.0f} MB |")
    lo, ls_ = r.get("ours_latency"), r.get("spark_latency")
    fmt = lambda l: f"{l['p50_ms']:,.0f} / {l['p99_ms']:,.0f}" if l else "—"
    rows.append(f"| commit-to-visible latency p50 / p99 at a fixed rate, ms | | {fmt(lo)} | {fmt(ls_)} | | |")
    o3, oa = r.get("ours_append_s3"), r.get("ours_append")
    if o3 and oa:
        rows.append(f"| append to S3 (local SeaweedFS): records/s | | {o3['records_per_s']:,.0f} | | {o3['records_per_s'] / lim:.0%} | "
                    f"{o3['records_per_s'] / oa['records_per_s']:.0%} of ours to local disk |")
    ox = r.get("ours_append_transform")
    if ox and oa:
        rows.append(f"| append with a projection + filter ([transform]: upper, to_date, a WHERE): records/s | | {ox['records_per_s']:,.0f} | | "
                    f"{ox['records_per_s'] / lim:.0%} | {ox['records_per_s'] / oa['records_per_s']:.0%} of plain append |")
    ot = r.get("ours_append_sasl_ssl")
    if ot and oa:
        rows.append(f"| append reading over SASL_SSL (TLS + SCRAM-SHA-512): records/s | | {ot['records_per_s']:,.0f} | | {ot['records_per_s'] / lim:.0%} | "
                    f"{ot['records_per_s'] / oa['records_per_s']:.0%} of ours over plaintext |")
    for n, g in (r.get("ours_group") or {}).items():
        rows.append(f"| group mode, {n} member(s) on this machine: records/s | | {g['records_per_s']:,.0f} | | {g['records_per_s'] / lim:.0%} | "
                    f"CPU-s per million {g['cpu_s_per_million']:.1f}, peak RSS {g['peak_rss_mb']:.0f} MB (all members) |")
    for n, g in (r.get("ours_group_dedup") or {}).items():
        rows.append(f"| group mode, dedup (state.scope = partition), {n} member(s): records/s | | {g['records_per_s']:,.0f} | | {g['records_per_s'] / lim:.0%} | "
                    f"CPU-s per million {g['cpu_s_per_million']:.1f}, peak RSS {g['peak_rss_mb']:.0f} MB (all members) |")
    if r.get("ours_group_restore"):
        g = r["ours_group_restore"]
        rows.append(f"| group mode: dedup state of {g['partitions']} partitions rebuilt from the table ({g['keys']:,} keys), s | | {g['seconds']:.2f} | | | |")
    if r.get("ours_group_takeover_s") is not None:
        rows.append(f"| group mode: a member SIGKILLed, s to its partitions' first commit by another (session timeout 6 s) | | {r['ours_group_takeover_s']:.2f} | | | |")
    ro, rs = r.get("ours_recovery_s"), r.get("spark_recovery_s")
    rows.append(f"| recovery after SIGKILL, s to the first commit | | {ro:.2f} | {'—' if rs is None else f'{rs:.2f}'} | | |" if ro is not None else "")
    return "\n".join(x for x in rows if x)


if __name__ == "__main__":
    import atexit
    atexit.register(kill_children)
    main()
