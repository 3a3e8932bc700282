"""OTLP span exporters that write the protobuf wire format directly.

The OpenTelemetry SDK's OTLP exporters build a tree of protobuf message
objects per batch (a ``Span``, a ``KeyValue`` and an ``AnyValue`` object per
attribute, ...) and then serialize it: about 35 µs of CPU per span, more
than creating the span.  For a worker that records a ``send`` and a
``process`` span per message that was the largest part of the cost of
tracing.  :func:`encode_spans` writes the same ``ExportTraceServiceRequest``
bytes straight from the SDK's spans, with the resource and scope blocks and
the attribute keys encoded once per process; the exporters below send those
bytes through the SDK's own transports (TLS, headers, compression, retries
and the ``OTEL_EXPORTER_OTLP_*`` variables all behave as with the stock
exporters).  The tests check that the bytes parse to exactly the message
the SDK's encoder builds.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from .message_spans import (
    _CONTEXT_IS_TUPLE,
    _STATUS_NUMBERS,
    _UNSET_STATUS,
    RECORD_FIELDS,
    SPAN_KINDS,
    MessageSpan,
    QueuedSpan,
    SpanRecord,
    record_origin,
)

logger = logging.getLogger(__name__)

#: ``SpanFlags``: the span (link) says whether its parent is remote, and that it is.
FLAG_HAS_IS_REMOTE = 0x100
FLAG_IS_REMOTE = 0x200

#: Most attribute keys whose encoding is kept (keys are few: semantic-convention names).
MAX_CACHED_KEYS = 4096

_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack

#: Varints of 0..127 are one byte: pre-built.
_SMALL_VARINTS = [bytes((n,)) for n in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    if value < 0:  # int64 is sent as its 64-bit two's complement
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _varint(len(payload)) + payload


_BOOL_VALUES = {True: b"\x10\x01", False: b"\x10\x00"}


def _any_value(value: Any) -> bytes:
    """The fields of an ``AnyValue`` (without its own tag and length)."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, bool):
        return _BOOL_VALUES[value]
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if value is None:
        return b""
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        pairs = b"".join(_field(b"\x0a", _key_value(str(key), item)) for key, item in value.items())
        return _field(b"\x32", pairs)
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: Any) -> bytes:
    """The fields of a ``KeyValue`` (values of a ``kvlist``)."""
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _any_value(value))


#: Most distinct string values of one attribute key whose encoded pair is kept;
#: a key with more (a message id) is encoded afresh each time.
MAX_CACHED_VALUES_PER_KEY = 256

#: Most string lengths per attribute key whose field prefix is kept (see :func:`_attributes`).
MAX_CACHED_PREFIXES_PER_KEY = 64

# Per field tag: key -> its encoded ``KeyValue.key`` field, the encoded fields
# of its values (None once the key proved to have too many), and the encoded
# field up to the string bytes, by the string's encoded length.
_keys_by_tag: dict[bytes, dict[str, tuple[bytes, dict[Any, bytes] | None, dict[int, bytes]]]] = {}


def _string_prefix(tag: bytes, encoded_key: bytes, length: int) -> bytes:
    """A string attribute's field up to its bytes: the same for every string of ``length`` bytes."""
    any_length = 1 + len(_varint(length)) + length
    pair_length = len(encoded_key) + 1 + len(_varint(any_length)) + any_length
    any_prefix = b"\x12" + _varint(any_length) + b"\x0a" + _varint(length)
    return tag + _varint(pair_length) + encoded_key + any_prefix


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated ``KeyValue`` fields under ``tag``; a value that cannot be encoded is logged and left out.

    Most attributes repeat (``messaging.system=dramatiq``, queue and actor
    names, retry counts): their encoded fields are kept per key and value
    (strings, ints and bools), bounded.
    """
    if not attributes:
        return b""
    return _pairs(tag, attributes.items())


def _pairs(tag: bytes, pairs: Iterable[tuple[str, Any]]) -> bytes:
    """:func:`_attributes` of the (key, value) ``pairs``."""
    parts = []
    keys = _keys_by_tag.get(tag)
    if keys is None:
        keys = _keys_by_tag.setdefault(tag, {})
    varint = _varint
    for key, value in pairs:
        cached = keys.get(key)
        if cached is None:
            cached = (_field(b"\x0a", key.encode()), {}, {})
            if len(keys) < MAX_CACHED_KEYS:
                keys[key] = cached
        encoded_key, fields, prefixes = cached
        kind = type(value)
        if kind is str:
            value_key = value
        elif kind is int or kind is bool:
            value_key = (kind, value)  # True == 1: the type keeps them apart
        else:
            value_key = fields = None
        if fields is not None:
            field = fields.get(value_key)
            if field is not None:
                parts.append(field)
                continue
        if kind is str:
            # A value not seen before (a message id): only its bytes are new.
            text = value.encode()
            prefix = prefixes.get(len(text))
            if prefix is None:
                prefix = _string_prefix(tag, encoded_key, len(text))
                if len(prefixes) < MAX_CACHED_PREFIXES_PER_KEY:
                    prefixes[len(text)] = prefix
            field = prefix + text
        else:
            try:
                any_value = _any_value(value)
            except Exception as error:  # as the SDK's encoder: drop the attribute, keep the span
                logger.exception("Failed to encode key %s: %s", key, error)
                continue
            pair = encoded_key + b"\x12" + varint(len(any_value)) + any_value
            field = tag + varint(len(pair)) + pair
        parts.append(field)
        if fields is not None:
            if len(fields) < MAX_CACHED_VALUES_PER_KEY:
                fields[value_key] = field
            elif key in keys:
                keys[key] = (encoded_key, None, prefixes)
    return b"".join(parts)


def _uint_field(tag: bytes, value: int) -> bytes:
    return tag + _varint(value) if value else b""


def _span_flags(parent: Any) -> int:
    if parent is not None and parent.is_remote:
        return FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE
    return FLAG_HAS_IS_REMOTE


def _trace_state(trace_state: Any) -> bytes:
    if not trace_state:
        return b""
    return _field(b"\x1a", ",".join(f"{key}={value}" for key, value in trace_state.items()).encode())


def _event(event: Any) -> bytes:
    return (
        b"\x09"
        + _fixed64(event.timestamp)
        + _field(b"\x12", event.name.encode())
        + _attributes(b"\x1a", event.attributes)
        + _uint_field(b"\x20", event.dropped_attributes)
    )


def _link(link: Any) -> bytes:
    context = link.context
    return (
        b"\x0a\x10"
        + context.trace_id.to_bytes(16, "big")
        + b"\x12\x08"
        + context.span_id.to_bytes(8, "big")
        + _attributes(b"\x22", link.attributes)
        + _uint_field(b"\x28", link.dropped_attributes)
        + b"\x35"
        + _fixed32(_span_flags(context))
    )


def _status(status: Any) -> bytes:
    if status is None:
        return b""
    return _status_field(status.status_code.value, status.description)


def _status_field(code: int, description: str | None) -> bytes:
    body = b""
    if description:
        body += _field(b"\x12", description.encode())
    if code:
        body += b"\x18" + _varint(code)
    return _field(b"\x7a", body)


#: Encoded ``Span.name`` fields by name (span names are few: ``send {queue}``, ``process {queue}``).
_names: dict[str, bytes] = {}

#: Encoded ``Span.kind`` fields by ``id()`` of the SpanKind member (as above), and by OTLP number.
_KIND_FIELDS = {id(kind): b"\x30" + _SMALL_VARINTS[number] for kind, number in SPAN_KINDS.items()}
_KIND_NUMBER_FIELDS = {number: b"\x30" + _SMALL_VARINTS[number] for number in SPAN_KINDS.values()}

#: Encoded ``Span.status`` fields of statuses without a description, by code number.
_CODE_FIELDS = {code.value: _status_field(code.value, None) for code in StatusCode}

#: The fields of the SDK's ``ReadableSpan`` that :func:`encode_span` reads directly.
_READABLE_FIELDS = (
    "_context",
    "_parent",
    "_name",
    "_kind",
    "_start_time",
    "_end_time",
    "_attributes",
    "_status",
)


def _readable_fields_present() -> bool:
    probe = ReadableSpan("probe", attributes=BoundedAttributes(1, {"k": "v"}))
    return all(hasattr(probe, name) for name in (*_READABLE_FIELDS, "_events", "_links")) and hasattr(
        probe._attributes, "_dict"
    )


#: Whether the SDK's spans have the fields :func:`encode_span` reads without the properties.
_DIRECT_READ = _readable_fields_present()

#: Span types read through their fields: the SDK's copies, and the middleware's own spans
#: (handed to exporters themselves by :class:`~actors.telemetry.message_spans.MessageBatchSpanProcessor`).
_FIELD_READ_TYPES = (ReadableSpan, MessageSpan, QueuedSpan) if _DIRECT_READ else (QueuedSpan,)


def encode_span(span: ReadableSpan) -> bytes:
    """The fields of one OTLP ``Span``."""
    if type(span) in _FIELD_READ_TYPES:
        # What the SDK hands exporters: read its fields, not its properties (each copies or wraps).
        context, parent, name, kind = span._context, span._parent, span._name, span._kind
        start_time, end_time, status = span._start_time, span._end_time, span._status
        attributes = span._attributes
        if type(attributes) is BoundedAttributes:
            attributes, dropped = attributes._dict, attributes.dropped
        else:
            dropped = 0
        has_events, has_links = bool(span._events), bool(span._links)
    else:
        context, parent, name, kind = span.context, span.parent, span.name, span.kind
        start_time, end_time, status = span.start_time, span.end_time, span.status
        attributes, dropped = span.attributes, span.dropped_attributes
        has_events, has_links = bool(span.events), bool(span.links)
    name_field = _names.get(name) or _name_field(name)
    # A SpanContext is a tuple: unpacked, its fields are read without a property call each.
    if _CONTEXT_IS_TUPLE and type(context) is SpanContext:
        trace_id, span_id, _, _, trace_state, _ = context
    else:
        trace_id, span_id, trace_state = context.trace_id, context.span_id, context.trace_state
    if parent is None:
        parent_field, remote = b"", False
    elif _CONTEXT_IS_TUPLE and type(parent) is SpanContext:
        parent_field, remote = b"\x22\x08" + parent[1].to_bytes(8, "big"), parent[2]
    else:
        parent_field, remote = b"\x22\x08" + parent.span_id.to_bytes(8, "big"), parent.is_remote
    parts = [
        b"\x0a\x10",
        trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        span_id.to_bytes(8, "big"),
        b"" if trace_state is DEFAULT_TRACE_STATE else _trace_state(trace_state),
        parent_field,
        name_field,
        _KIND_FIELDS[id(kind)],
        b"\x39",
        _fixed64(start_time),
        b"\x41",
        _fixed64(end_time),
        _attributes(b"\x4a", attributes),
        _uint_field(b"\x50", dropped) if dropped else b"",
    ]
    if has_events:
        parts.extend(_field(b"\x5a", _event(event)) for event in span.events)
        parts.append(_uint_field(b"\x60", span.dropped_events))
    if has_links:
        parts.extend(_field(b"\x6a", _link(link)) for link in span.links)
        parts.append(_uint_field(b"\x70", span.dropped_links))
    if status is _UNSET_STATUS:  # the middleware's spans' until one is set
        parts.append(_CODE_FIELDS[0])
    else:
        plain = status is not None and not status.description
        code = _STATUS_NUMBERS.get(id(status.status_code)) if plain else None
        parts.append(_status(status) if code is None else _CODE_FIELDS[code])
    parts.append(_REMOTE_FLAGS if remote else _LOCAL_FLAGS)
    return b"".join(parts)


def encode_record(record: SpanRecord) -> bytes:
    """The fields of one OTLP ``Span``, from a :data:`~actors.telemetry.message_spans.SpanRecord`."""
    name, trace_id, span_id, parent_id, remote, kind, start, end = record[1:9]
    dropped, code, text = record[9:RECORD_FIELDS]
    count = (len(record) - RECORD_FIELDS) >> 1
    parts = [
        b"\x0a\x10",
        trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        span_id.to_bytes(8, "big"),
        b"" if parent_id is None else b"\x22\x08" + parent_id.to_bytes(8, "big"),
        _names.get(name) or _name_field(name),
        _KIND_NUMBER_FIELDS[kind],
        b"\x39",
        _fixed64(start),
        b"\x41",
        _fixed64(end),
        _pairs(b"\x4a", zip(record[RECORD_FIELDS:-count], record[-count:], strict=True)) if count else b"",
        _uint_field(b"\x50", dropped) if dropped else b"",
        _CODE_FIELDS[code] if text is None else _status_field(code, text),
        _REMOTE_FLAGS if remote else _LOCAL_FLAGS,
    ]
    return b"".join(parts)


def _name_field(name: str) -> bytes:
    """The ``Span.name`` field, kept for the next span of that name."""
    field = _field(b"\x2a", name.encode())
    if len(_names) < MAX_CACHED_KEYS:
        _names[name] = field
    return field


#: ``Span.flags`` (field 16, fixed32) of a span whose parent is remote, and of any other.
_REMOTE_FLAGS = b"\x85\x01" + _fixed32(FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE)
_LOCAL_FLAGS = b"\x85\x01" + _fixed32(FLAG_HAS_IS_REMOTE)


# Caches by object identity: hashing an SDK ``Resource`` serializes its attributes to JSON.
_resources: dict[int, tuple[Any, bytes]] = {}
_scopes: dict[int, tuple[Any, bytes]] = {}


def _resource_block(resource: Any) -> bytes:
    """``ResourceSpans.resource`` (field 1), encoded once per resource."""
    cached = _resources.get(id(resource))
    if cached is not None and cached[0] is resource:
        return cached[1]
    block = _field(b"\x0a", _attributes(b"\x0a", resource.attributes))
    if len(_resources) < 64:
        _resources[id(resource)] = (resource, block)
    return block


def _scope_block(scope: Any) -> bytes:
    """``ScopeSpans.scope`` (field 1), encoded once per instrumentation scope."""
    cached = _scopes.get(id(scope))
    if cached is not None and cached[0] is scope:
        return cached[1]
    body = b""
    if scope is not None:
        body = (
            (_field(b"\x0a", scope.name.encode()) if scope.name else b"")
            + (_field(b"\x12", scope.version.encode()) if scope.version else b"")
            + _attributes(b"\x1a", scope.attributes)
        )
    block = _field(b"\x0a", body)
    if len(_scopes) < 256:
        _scopes[id(scope)] = (scope, block)
    return block


def _origin(span: ReadableSpan | SpanRecord) -> tuple[Any, Any]:
    """The resource and instrumentation scope (``None`` for none) of ``span``."""
    if type(span) is tuple:
        resource, scope = record_origin(span[0])
        return resource, scope or None
    if type(span) in _FIELD_READ_TYPES:
        return span._resource, span._instrumentation_scope or None
    return span.resource, span.instrumentation_scope or None


def encode_spans(spans: Sequence[ReadableSpan | SpanRecord]) -> bytes:
    """A serialized ``ExportTraceServiceRequest`` of ``spans``, grouped by resource and scope.

    A span is an SDK span, a :class:`~actors.telemetry.message_spans.QueuedSpan` or a
    :data:`~actors.telemetry.message_spans.SpanRecord`.
    """
    # Grouped by identity: a process has one resource and a few scopes, shared by all its spans.
    grouped: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    last: tuple[Any, Any, list[bytes]] = (None, None, [])
    for span in spans:
        resource, scope = _origin(span)
        if resource is not last[0] or scope is not last[1]:  # spans mostly come in runs of one scope
            by_scope = grouped.get(id(resource))
            if by_scope is None:
                by_scope = grouped[id(resource)] = (resource, {})
            encoded = by_scope[1].get(id(scope))
            if encoded is None:
                encoded = by_scope[1][id(scope)] = (scope, [])
            last = (resource, scope, encoded[1])
        body = encode_record(span) if type(span) is tuple else encode_span(span)
        last[2].extend((b"\x12", _varint(len(body)), body))  # joined once, per scope
    request = []
    for resource, by_scope in grouped.values():
        body = [_resource_block(resource)]
        for scope, encoded in by_scope.values():
            schema_url = scope.schema_url if scope is not None else ""
            scope_spans = _scope_block(scope) + b"".join(encoded)
            if schema_url:
                scope_spans += _field(b"\x1a", schema_url.encode())
            body.append(_field(b"\x12", scope_spans))
        if resource.schema_url:
            body.append(_field(b"\x1a", resource.schema_url.encode()))
        request.append(_field(b"\x0a", b"".join(body)))
    return b"".join(request)


try:  # private to the SDK: where they moved, the exporter falls back to the SDK's own export
    from opentelemetry.exporter.otlp.proto.http._common import RequestPayloadTooLargeError as _TooLarge
    from opentelemetry.exporter.otlp.proto.http._common import _is_request_too_large as _too_large
except ImportError:  # pragma: no cover
    _TooLarge, _too_large = Exception, None


def http_span_exporter(**kwargs: Any) -> Any:
    """An OTLP/HTTP span exporter sending :func:`encode_spans` bytes.

    It posts through the SDK exporter's own client; should a later SDK move
    that client, the exporter falls back to the SDK's encoder (and the tests
    say so).
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    class WireOTLPSpanExporter(OTLPSpanExporter):
        """The SDK's OTLP/HTTP exporter with :func:`encode_spans` as its encoder."""

        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            client_export = getattr(getattr(self, "_client", None), "export", None)
            self.wire_encoding = (
                callable(client_export)
                and hasattr(self, "_metrics")
                and isinstance(getattr(self, "_max_request_size", None), int)
                and _too_large is not None
            )
            #: Whether it encodes :class:`~actors.telemetry.message_spans.QueuedSpan`s
            #: (its encoder reads them).
            self.reads_queued_spans = self.wire_encoding

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            # The SDK's export with the encoder swapped: same size limit, logs and metrics.
            if not self.wire_encoding or self._shutdown:
                return super().export(spans)
            with self._metrics.export_operation(len(spans)) as result:
                try:
                    data = encode_spans(spans)
                except Exception as error:
                    logger.error("Failed to encode span batch: %s", error)
                    result.error = error
                    return SpanExportResult.FAILURE
                if _too_large(data, self._max_request_size):
                    logger.warning(
                        "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                        len(data),
                        self._max_request_size,
                    )
                    result.error = _TooLarge(
                        f"Serialized span request size {len(data)} bytes exceeds max_request_size "
                        f"{self._max_request_size} bytes."
                    )
                    return SpanExportResult.FAILURE
                outcome = self._client.export(data)
                if not outcome.success:
                    result.error = outcome.error
                    status = getattr(outcome, "status_code", None)
                    result.error_attrs = {"http.response.status_code": status} if status is not None else None
                    return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

    return WireOTLPSpanExporter(**kwargs)


def grpc_span_exporter(**kwargs: Any) -> Any:
    """An OTLP/gRPC span exporter whose request is parsed (in C) from :func:`encode_spans` bytes."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    class WireOTLPSpanExporter(OTLPSpanExporter):
        """The SDK's OTLP/gRPC exporter building its request from :func:`encode_spans`."""

        #: It encodes :class:`~actors.telemetry.message_spans.QueuedSpan`s (its encoder reads them).
        reads_queued_spans = True

        def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
            return ExportTraceServiceRequest.FromString(encode_spans(data))

    return WireOTLPSpanExporter(**kwargs)
