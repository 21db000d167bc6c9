"""The seed's pipeline, as the article writes it, for `just bench`: readStream kafka ->
from_json(schema) -> [dropDuplicates(["id"]) | groupBy("value").count()] -> writeStream delta
with a checkpointLocation, trigger interval = our epoch interval. Runs in local[2].

Prints one JSON line per batch ({"batch", "rows"}), stops itself once `--expected` input rows
were processed and prints {"seconds": wall time from query start to the last of them, ...}."""
import argparse
import json
import time

from pyspark.sql import SparkSession
from pyspark.sql.functions import col, from_json
from pyspark.sql.types import LongType, StringType, StructType


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--mode", choices=["append", "dedup", "counts"], required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--trigger-seconds", type=float, default=1.0)
    p.add_argument("--expected", type=int, required=True)
    a = p.parse_args()

    spark = (
        SparkSession.builder.appName(f"exactly-bench-spark-{a.mode}")
        .master("local[2]")
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", a.brokers)
        .option("subscribe", a.topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    schema = StructType().add("id", LongType()).add("value", StringType()).add("ts", LongType())
    parsed = df.select(
        from_json(col("value").cast("string"), schema).alias("data"),
        col("topic").alias("_kafka_topic"),
        col("partition").alias("_kafka_partition"),
        col("offset").alias("_kafka_offset"),
        col("timestamp").alias("_kafka_timestamp"),
    ).select("data.*", "_kafka_topic", "_kafka_partition", "_kafka_offset", "_kafka_timestamp")
    if a.mode == "dedup":
        out, mode = parsed.dropDuplicates(["id"]), "append"
    elif a.mode == "counts":
        # Spark's Delta sink has no update mode: complete, as in the seed.
        out, mode = parsed.groupBy("value").count(), "complete"
    else:
        out, mode = parsed, "append"
    trigger = f"{int(a.trigger_seconds * 1000)} milliseconds"
    start = time.time()
    q = (
        out.writeStream.format("delta")
        .outputMode(mode)
        .option("checkpointLocation", a.checkpoint)
        .trigger(processingTime=trigger)
        .start(a.table)
    )
    # Idle triggers report progress under the batch id that runs next, with 0 rows: count each
    # batch id by its largest report, not its first.
    rows, done_at = {}, None
    while done_at is None:
        time.sleep(0.2)
        for prog in q.recentProgress:
            b, n = prog["batchId"], prog["numInputRows"]
            if n > rows.get(b, -1):
                rows[b] = n
                print(json.dumps({"batch": b, "rows": n}), flush=True)
        if sum(rows.values()) >= a.expected:
            done_at = time.time()
        if q.exception() is not None:
            raise q.exception()
    q.stop()
    print(json.dumps({"seconds": done_at - start, "batches": len(rows), "rows": sum(rows.values())}), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
