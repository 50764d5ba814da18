#!/usr/bin/env python3
"""A minimal OTLP/gRPC trace receiver for tests (tracing_otlp.rs).

Listens on 127.0.0.1 (port 0: the kernel picks a free one), prints `listening PORT` on stdout
once it accepts calls, and appends every received span to the file given as its only argument,
one JSON object per line:

  {"trace_id", "span_id", "parent_span_id" (hex, "" for a root), "name", "kind" (int),
   "start_ns", "end_ns", "attributes": {...}, "resource": {...}, "links": [{"trace_id", "span_id"}]}

Needs the PyPI packages grpcio and opentelemetry-proto (scripts/install-packages test).
Runs until killed.
"""

import json
import sys
import threading
from concurrent import futures

try:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import (
        trace_service_pb2,
        trace_service_pb2_grpc,
    )
except ImportError as error:  # pragma: no cover - reported to the test
    print(
        f"otlp_receiver: {error}: run `scripts/install-packages test` "
        "(pip: grpcio, opentelemetry-proto)",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(3)


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(any_value, kind)
    if kind in ("array_value", "kvlist_value"):
        return str(value)
    if kind == "bytes_value":
        return value.hex()
    return value


def attributes(key_values):
    return {kv.key: value_of(kv.value) for kv in key_values}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def Export(self, request, context):
        lines = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(
                        json.dumps(
                            {
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "name": span.name,
                                "kind": span.kind,
                                "start_ns": span.start_time_unix_nano,
                                "end_ns": span.end_time_unix_nano,
                                "attributes": attributes(span.attributes),
                                "resource": resource,
                                "links": [
                                    {
                                        "trace_id": link.trace_id.hex(),
                                        "span_id": link.span_id.hex(),
                                    }
                                    for link in span.links
                                ],
                            }
                        )
                    )
        with self.lock, open(self.path, "a", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
            out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    if len(sys.argv) != 2:
        print("usage: otlp_receiver.py SPANS_FILE", file=sys.stderr)
        sys.exit(2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(sys.argv[1]), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
