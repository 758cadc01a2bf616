"""An OTLP/gRPC trace receiver for the tests: oteltest's GrpcSink (PyPI) on a given port,
writing each span it receives as one JSON line (service, trace and span ids, parent, name,
attributes). Usage: otlp_sink.py PORT OUT.jsonl"""

import json
import logging
import sys

from oteltest.sink import GrpcSink
from oteltest.sink.handler import RequestHandler


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Spans(RequestHandler):
    def __init__(self, path):
        self.out = open(path, "a", buffering=1)

    def handle_logs(self, request, headers):
        pass

    def handle_metrics(self, request, headers):
        pass

    def handle_trace(self, request, headers):
        for rs in request.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.out.write(json.dumps({
                        "service": resource.get("service.name"),
                        "resource": resource,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                    }) + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sink = GrpcSink(Spans(sys.argv[2]), logging.getLogger("otlp-sink"), port=int(sys.argv[1]))
    sink.start()
    sink.wait_for_termination()
