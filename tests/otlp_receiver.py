"""A protocol-level OTLP/HTTP trace receiver (the part of Jaeger our exporters talk to).

It accepts ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest``
(optionally gzip-compressed), decodes it with ``opentelemetry-proto`` and
keeps the spans.  Used by the tests and by ``bench/tracing_overhead.py``.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

#: OTLP span kinds by their protobuf number.
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}

#: OTLP status codes by their protobuf number.
STATUSES = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass
class ReceivedSpan:
    """One decoded span."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    status: str
    service: str
    attributes: dict[str, Any]
    events: list[str]
    links: list[tuple[str, str]] = field(default_factory=list)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def count_spans(body: bytes) -> int:
    """How many spans one serialized ``ExportTraceServiceRequest`` holds (parsed in C, nothing decoded)."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one serialized ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=KINDS[span.kind],
                        status=STATUSES[span.status.code],
                        service=resource.get("service.name", ""),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        events=[event.name for event in span.events],
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                    )
                )
    return spans


class OTLPReceiver:
    """Serves OTLP/HTTP on ``127.0.0.1`` (a free port); ``url`` is the traces endpoint.

    Parameters:
      keep_spans(bool): Decode and keep spans.  Defaults to True.  The bench only counts them
        (parsing each request in C), so that the receiver, which shares the machine, costs
        little next to the exporter it measures, as a collector on its own host would.
    """

    def __init__(self, *, keep_spans: bool = True) -> None:
        self.keep_spans = keep_spans
        self.spans: list[ReceivedSpan] = []
        self.span_count = 0
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                try:
                    spans = decode(body) if receiver.keep_spans else count_spans(body)
                except Exception as exc:  # a malformed body is the client's bug: say so
                    self.send_error(400, f"not an ExportTraceServiceRequest: {exc}")
                    return
                receiver._add(spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _add(self, spans: list[ReceivedSpan] | int) -> None:
        with self._lock:
            self.requests += 1
            if isinstance(spans, int):  # counted only
                self.span_count += spans
                return
            self.span_count += len(spans)
            self.spans.extend(spans)

    def wait_for(self, condition: Callable[[list[ReceivedSpan]], bool], *, timeout: float = 30.0) -> list:
        """The spans once ``condition(spans)`` holds; AssertionError with what arrived after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if condition(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted(f"{s.name}({s.kind})" for s in spans)
                raise AssertionError(f"spans did not arrive within {timeout}s; got {names}")
            time.sleep(0.1)
