#!/usr/bin/env python3
"""Independent reader for the tests: reads a Delta table with the `deltalake` package from PyPI
(a different implementation path than the writer's; deletion vectors applied) and prints what the tests compare, as JSON:
row count, distinct Kafka coordinates, column names and their Delta types, and the table version.
With `--rows`, also every row (sorted by partition and offset) as JSON: decimals as their exact
text, timestamps and dates in ISO 8601, bytes in base64, maps as objects."""
import base64
import datetime
import decimal
import json
import os
import sys

from deltalake import DeltaTable


def plain(v, t):
    """A value of Arrow type `t` as JSON can hold it, losing nothing."""
    import pyarrow as pa
    if v is None:
        return None
    if pa.types.is_map(t):
        return {k: plain(x, t.item_type) for k, x in v}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [plain(x, t.value_type) for x in v]
    if pa.types.is_struct(t):
        return {t.field(i).name: plain(v[t.field(i).name], t.field(i).type) for i in range(t.num_fields)}
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    return v


def read(table: DeltaTable):
    """The table's rows. A table with deletion vectors (an upsert table) is read through the
    package's DataFusion query engine, which applies them (its pyarrow dataset refuses them)."""
    import pyarrow as pa
    if "deletionVectors" in (table.protocol().reader_features or []):
        from deltalake import QueryBuilder
        return pa.table(QueryBuilder().register("t", table).execute("SELECT * FROM t").read_all())
    return table.to_pyarrow_table()


def main(path: str, rows: bool) -> None:
    table = DeltaTable(path)
    data = read(table)
    # Per-record tables carry each row's coordinates; aggregate tables do not.
    per_record = "_kafka_offset" in data.column_names
    coords = set(
        zip(
            data.column("_kafka_topic").to_pylist(),
            data.column("_kafka_partition").to_pylist(),
            data.column("_kafka_offset").to_pylist(),
        )
    ) if per_record else set()
    out = {}
    if rows:
        records = data.to_pylist()
        if per_record:
            records.sort(key=lambda r: (r["_kafka_partition"], r["_kafka_offset"]))
        types = {f.name: f.type for f in data.schema}
        out["records"] = [{k: plain(v, types[k]) for k, v in r.items() if k != "_kafka_timestamp"} for r in records]
    print(json.dumps({
        **out,
        "version": table.version(),
        "rows": data.num_rows,
        "distinct_coordinates": len(coords),
        "columns": data.column_names,
        "types": {f.name: str(f.type) for f in table.schema().fields},
    }))


if __name__ == "__main__":
    main(sys.argv[1], "--rows" in sys.argv[2:])
    sys.stdout.flush()
    # Skip interpreter finalization: with deltalake 1.6 + pyarrow, native thread pools
    # sometimes abort the process at exit ("terminate called without an active exception")
    # after the work is done.
    os._exit(0)
