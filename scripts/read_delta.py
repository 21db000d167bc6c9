#!/usr/bin/env python3
"""Independent reader for the tests: reads a Delta table with the `deltalake` package from PyPI
(a different implementation path than the writer's) and prints what the tests compare, as JSON:
row count, distinct Kafka coordinates, column names and their Delta types, and the table version."""
import json
import os
import sys

from deltalake import DeltaTable


def main(path: str) -> None:
    table = DeltaTable(path)
    data = table.to_pyarrow_table()
    coords = set(
        zip(
            data.column("_kafka_topic").to_pylist(),
            data.column("_kafka_partition").to_pylist(),
            data.column("_kafka_offset").to_pylist(),
        )
    )
    print(json.dumps({
        "version": table.version(),
        "rows": data.num_rows,
        "distinct_coordinates": len(coords),
        "columns": data.column_names,
        "types": {f.name: str(f.type) for f in table.schema().fields},
    }))


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    # Skip interpreter finalization: with deltalake 1.6 + pyarrow, native thread pools
    # sometimes abort the process at exit ("terminate called without an active exception")
    # after the work is done.
    os._exit(0)
