#!/usr/bin/env python3
"""Independent Avro writer for the tests: encodes JSON records with `fastavro` (PyPI), so the
pipeline's Avro decoding is never checked against its own encoder.

    avro_encode.py FRAMING SCHEMA.avsc [SCHEMA_ID] < records.jsonl > values.hex

Each input line is a JSON record; each output line is the hex of one Kafka value, framed as
FRAMING says: `none` (the bare body), `confluent` (magic byte 0, the 4-byte big-endian
SCHEMA_ID, the body) or `single-object` (C3 01, the 8-byte little-endian CRC-64-AVRO fingerprint
of the schema, the body). Decimal values are given as strings ("12.30") and written exactly."""
import decimal
import io
import json
import sys

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form


def convert(value, schema):
    """JSON values as fastavro writes them: decimal strings as `Decimal`."""
    if value is None:
        return None
    if isinstance(schema, list):
        for branch in schema:
            if branch == "null":
                continue
            return convert(value, branch)
        return value
    if isinstance(schema, dict):
        if schema.get("logicalType") == "decimal":
            return decimal.Decimal(value)
        kind = schema.get("type")
        if kind == "record":
            return {f["name"]: convert(value.get(f["name"]), f["type"]) for f in schema["fields"] if f["name"] in value}
        if kind == "array":
            return [convert(v, schema["items"]) for v in value]
        if kind == "map":
            return {k: convert(v, schema["values"]) for k, v in value.items()}
    return value


def main(framing: str, schema_path: str, schema_id: int) -> None:
    with open(schema_path) as f:
        raw = json.load(f)
    parsed = fastavro.parse_schema(raw)
    if framing == "confluent":
        prefix = b"\x00" + schema_id.to_bytes(4, "big")
    elif framing == "single-object":
        fp = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
        prefix = b"\xc3\x01" + bytes.fromhex(fp)  # fastavro gives the little-endian bytes
    elif framing == "none":
        prefix = b""
    else:
        raise SystemExit(f"unknown framing {framing}")
    for line in sys.stdin:
        if not line.strip():
            continue
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, convert(json.loads(line), raw))
        print((prefix + out.getvalue()).hex())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
