#!/usr/bin/env python3
"""Independent Protobuf and JSON Schema writer for the tests: Confluent's own serializers
(`confluent-kafka`'s ProtobufSerializer and JSONSerializer, PyPI) encode JSON records and register
their schema in the real registry under TOPIC-value, so the pipeline's decoding is never checked
against its own encoder.

    registry_encode.py protobuf REGISTRY TOPIC FILE.proto MESSAGE [DESCRIPTOR_SET_OUT] < records.jsonl > values.hex
    registry_encode.py json REGISTRY TOPIC SCHEMA.json < records.jsonl > values.hex

Protobuf: FILE.proto is compiled with protoc (`grpcio-tools`; with DESCRIPTOR_SET_OUT, its
descriptor set with imports is written there too), each record is read into MESSAGE by
protobuf's JSON mapping (`json_format.ParseDict`) and serialized in the Confluent wire format
(schema id, message indexes). JSON: each record is validated against SCHEMA.json and serialized
(schema id, JSON text). Each output line is the hex of one Kafka value."""
import json
import os
import subprocess
import sys
import tempfile

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext


def protobuf_serializer(registry, proto, message, descriptor_out):
    """A serializer of MESSAGE from FILE.proto, and a function making one from a dict."""
    import grpc_tools
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
    from google.protobuf import timestamp_pb2, wrappers_pb2  # noqa: F401 (the well-known types, in the pool)
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer

    out = descriptor_out or os.path.join(tempfile.mkdtemp(prefix="registry-encode-"), "set.desc")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{os.path.dirname(os.path.abspath(proto))}", f"-I{include}",
         "--include_imports", f"--descriptor_set_out={out}", os.path.basename(proto)],
        check=True, cwd=os.path.dirname(os.path.abspath(proto)),
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(open(out, "rb").read())
    pool = descriptor_pool.Default()
    for f in files.file:
        if not f.name.startswith("google/protobuf/"):
            pool.Add(f)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(message))
    serializer = ProtobufSerializer(cls, registry, {"use.deprecated.format": False})
    return serializer, lambda record: json_format.ParseDict(record, cls())


def main():
    kind, url, topic = sys.argv[1:4]
    registry = SchemaRegistryClient({"url": url})
    if kind == "protobuf":
        proto, message = sys.argv[4:6]
        serializer, make = protobuf_serializer(registry, proto, message, sys.argv[6] if len(sys.argv) > 6 else None)
    elif kind == "json":
        from confluent_kafka.schema_registry.json_schema import JSONSerializer
        serializer, make = JSONSerializer(open(sys.argv[4]).read(), registry), lambda record: record
    else:
        sys.exit(f"unknown kind {kind!r}: protobuf or json")
    context = SerializationContext(topic, MessageField.VALUE)
    for line in sys.stdin:
        if line.strip():
            print(serializer(make(json.loads(line)), context).hex())


if __name__ == "__main__":
    main()
