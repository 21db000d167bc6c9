#!/usr/bin/env python3
"""Spark's view of a Delta table, for the tests that compare it (the change data capture test):
reads the table with Spark and delta-spark from the bench's virtualenv (bench/setup installs them,
the connectors from Maven Central) and prints {"rows": n, "records": [...]} as JSON — the same
value forms as scripts/read_delta.py: timestamps in ISO 8601 (UTC), decimals as text."""
import datetime
import decimal
import glob
import json
import os
import sys


def plain(v):
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, datetime.datetime):
        return v.replace(tzinfo=datetime.timezone.utc).isoformat()
    if isinstance(v, datetime.date):
        return v.isoformat()
    return v


def main(path: str) -> None:
    # PySpark hands timestamps over in the process's local time zone: make it UTC.
    import time
    os.environ["TZ"] = "UTC"
    time.tzset()
    from pyspark.sql import SparkSession
    cache = os.environ.get("EXACTLY_CACHE", os.path.expanduser("~/.cache/exactly"))
    jars = ",".join(sorted(glob.glob(f"{cache}/spark-jars/*.jar")))
    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.jars", jars)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    rows = spark.read.format("delta").load(path).collect()
    records = [{k: plain(v) for k, v in r.asDict().items() if k != "_kafka_timestamp"} for r in rows]
    print(json.dumps({"rows": len(records), "records": records}))
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])
