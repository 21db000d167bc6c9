#!/usr/bin/env python3
"""Spark's view of Delta tables, for the tests that compare it: reads with Spark and delta-spark
from the bench's virtualenv (bench/setup installs them, the connectors from Maven Central), in
the same value forms as scripts/read_delta.py: timestamps in ISO 8601 (UTC), decimals as text,
bytes in base64, structs and maps as objects. `_kafka_timestamp` is left out.

    read_spark.py TABLE               {"rows": n, "records": [...]}
    read_spark.py --many < request    {"tables": {name: {"rows", "records"}}, "stream": {...}}

The request is JSON: {"tables": {name: path}, "stream": {"table": path, "checkpoint": dir,
"out": dir}, "metastore": "thrift://host:port", "named": {name: "database.table"}}. With
"metastore", the session's catalog is that Hive Metastore, and each "named" table is read by its
name there (`spark.table`), its answer under "tables" too. "stream" (optional) runs `readStream.format("delta")` on the table into a Parquet
sink at "out" with Spark's checkpoint at "checkpoint", once (`availableNow`): a second request
with the same checkpoint continues where the first stopped. Its answer is every row the sink
holds after the run, as [topic, partition, offset]."""
import base64
import datetime
import decimal
import glob
import json
import os
import sys


def plain(v):
    """A value Spark returned, as JSON can hold it, losing nothing."""
    from pyspark.sql import Row
    if isinstance(v, Row):
        return {k: plain(x) for k, x in v.asDict().items()}
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, datetime.datetime):
        return v.replace(tzinfo=datetime.timezone.utc).isoformat()
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return base64.b64encode(bytes(v)).decode()
    return v


def session(metastore=None):
    # PySpark hands timestamps over in the process's local time zone: make it UTC.
    import time
    os.environ["TZ"] = "UTC"
    time.tzset()
    from pyspark.sql import SparkSession
    cache = os.environ.get("EXACTLY_CACHE", os.path.expanduser("~/.cache/exactly"))
    jars = ",".join(sorted(glob.glob(f"{cache}/spark-jars/*.jar")))
    builder = SparkSession.builder
    if metastore:
        import tempfile
        builder = (
            builder.config("spark.hadoop.hive.metastore.uris", metastore)
            .config("spark.sql.warehouse.dir", tempfile.mkdtemp(prefix="spark-warehouse-"))
            .enableHiveSupport()
        )
    spark = (
        builder.master("local[1]")
        .config("spark.jars", jars)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def read(spark, path=None, name=None):
    rows = (spark.table(name) if name else spark.read.format("delta").load(path)).collect()
    records = [{k: plain(v) for k, v in r.asDict().items() if k != "_kafka_timestamp"} for r in rows]
    return {"rows": len(records), "records": records}


def stream(spark, request):
    query = (
        spark.readStream.format("delta").load(request["table"])
        .select("_kafka_topic", "_kafka_partition", "_kafka_offset")
        .writeStream.format("parquet")
        .option("path", request["out"])
        .option("checkpointLocation", request["checkpoint"])
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    rows = spark.read.parquet(request["out"]).collect()
    return {"rows": [[r[0], r[1], r[2]] for r in rows]}


def main():
    if sys.argv[1] == "--many":
        request = json.load(sys.stdin)
        spark = session(request.get("metastore"))
        answer = {"tables": {name: read(spark, path) for name, path in request.get("tables", {}).items()}}
        answer["tables"].update({key: read(spark, name=name) for key, name in request.get("named", {}).items()})
        if "stream" in request:
            answer["stream"] = stream(spark, request["stream"])
        print(json.dumps(answer))
    else:
        spark = session()
        print(json.dumps(read(spark, sys.argv[1])))
    spark.stop()


if __name__ == "__main__":
    main()
