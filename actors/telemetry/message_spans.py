"""The Tracing middleware's spans and trace contexts, built without the SDK's generic checks.

Per message the middleware starts a ``send`` and a ``process`` span and
writes and reads one ``traceparent``.  Through the SDK's generic entry
points that costs about twice what the spans themselves need: every
attribute is re-validated (~2 µs each, and ours are strings and ints built
by the middleware), each span is made through the tracer's generic checks,
and inject/extract go through the composite propagator (a ``baggage``
lookup, a getter/setter per field, a regular expression search).

:class:`SpanStarter` starts the same SDK span objects with the provider's
sampler, id generator, limits, resource and span processors (every
processor still gets ``on_start`` and ``on_end`` for every span, and the
spans are current and nest as any other); it only skips validating the
attributes the middleware built itself (extra attributes from message
options are still validated), decides the SDK's own samplers and
:class:`~actors.telemetry.sampling.QueueRatioSampler` without a call (each is one
comparison or lookup; any other sampler is called as ``start_span`` calls
it), and makes a span's events and links lists on the first one.
:func:`carrier_of` and :func:`context_from`
write and read a ``traceparent`` directly while the global propagator is the
default W3C one (trace context + baggage) and there is no baggage or trace
state to carry; otherwise they use the global propagator.  When the SDK in
use does not have the shape this module was written against,
:class:`SpanStarter` falls back to ``tracer.start_span``; the tests compare
both paths' spans field by field.

:class:`MessageBatchSpanProcessor` is the batch processor of the
middleware's own providers: alone on a provider, it is handed the
middleware's spans themselves at ``end`` (not the SDK's ``ReadableSpan``
copy), and queues them without the SDK's per-span ``os.getpid()``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from time import time_ns
from types import MappingProxyType
from typing import Any

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import ReadableSpan, SynchronousMultiSpanProcessor, _Span, sampling
from opentelemetry.sdk.trace import Span as SDKSpan
from opentelemetry.sdk.trace import Tracer as SDKTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from .sampling import QueueRatioSampler

#: The ``traceparent`` this module writes, and the only form it reads itself
#: (version 00, lowercase hex); any other carrier goes to the global propagator.
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")

logger = logging.getLogger(__name__)

#: Carrier key of the W3C trace context.
TRACEPARENT_KEY = "traceparent"

_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16

#: Private attributes of ``ParentBased``: its delegate samplers.
_PARENT_BASED_DELEGATES = (
    "_root",
    "_remote_parent_sampled",
    "_remote_parent_not_sampled",
    "_local_parent_sampled",
    "_local_parent_not_sampled",
)


class MessageSpan(SDKSpan):
    """An SDK span whose middleware-built attributes are stored without re-validation.

    Everything after construction (``set_attribute``, events, ``end``,
    processors, export) is the SDK's own.
    """

    def __init__(
        self,
        name: str,
        span_context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: Sequence[Link],
        tracer: SDKTracer,
        record_end_metrics: Any,
    ) -> None:
        # The fields SDKSpan.__init__ sets (checked by SpanStarter against the SDK in use).
        limits = tracer._span_limits
        self._name = name
        self._context = span_context
        self._kind = kind
        self._instrumentation_info = tracer.instrumentation_info
        self._instrumentation_scope = tracer._instrumentation_scope
        self._parent = parent
        self._start_time = None
        self._end_time = None
        self._resource = tracer.resource
        self._status = _UNSET_STATUS
        self._sampler = tracer.sampler
        self._trace_config = None
        self._record_exception = True
        self._set_status_on_exception = True
        self._span_processor = tracer.span_processor
        self._limits = limits
        self._lock = threading.Lock()
        self._attributes = bounded = BoundedAttributes(
            limits.max_span_attributes, None, immutable=False, max_value_len=limits.max_span_attribute_length
        )
        if (limits.max_span_attributes is None or len(attributes) <= limits.max_span_attributes) and (
            limits.max_span_attribute_length is None
        ):
            bounded._dict.update(attributes)
        else:  # limits to apply: the SDK's own way
            bounded._set_items(attributes)
        # Most spans get no event or link: their lists are made on the first one.
        self._events = _NONE
        self._links = self._new_links(links) if links else _NONE
        self._record_end_metrics = record_end_metrics

    def end(self, end_time: int | None = None) -> None:
        """End the span as the SDK does; to a lone :class:`MessageBatchSpanProcessor`, hand the span itself.

        The SDK hands processors a ``ReadableSpan`` copy of every span (a
        dozen fields copied, the attributes and events shared anyway).  An
        ended span ignores every change (the SDK's setters check it), so
        when the provider's only processor is ours, which only queues spans
        for export, the copy buys nothing.  With any other processor
        registered the SDK's own ``end`` runs, so it sees what it always saw.
        """
        processor = _lone_batch_processor(self._span_processor)
        if processor is None:
            super().end(end_time)
            return
        with self._lock:
            if self._start_time is None:
                raise RuntimeError("Calling end() on a not started span.")
            if self._end_time is not None:
                logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            self._attributes._immutable = True
        if self._record_end_metrics:
            self._record_end_metrics()
        # BatchSpanProcessor._on_ending does nothing: not called.
        processor.on_end(self)

    def _add_event(self, event: Any) -> None:
        with self._lock:
            if self._events is _NONE:
                self._events = BoundedList(self._limits.max_events)
        super()._add_event(event)

    def _add_link(self, link: Link) -> None:
        with self._lock:
            if self._links is _NONE:
                self._links = BoundedList(self._limits.max_links)
        super()._add_link(link)


def _lone_batch_processor(processors: Any) -> MessageBatchSpanProcessor | None:
    """The provider's processor when it is one :class:`MessageBatchSpanProcessor` alone, else None.

    Read at every ``end``: processors can be added to a provider at any time.
    """
    if type(processors) is not SynchronousMultiSpanProcessor:
        return None
    registered = processors._span_processors
    if len(registered) == 1 and type(registered[0]) is MessageBatchSpanProcessor and registered[0].direct:
        return registered[0]
    return None


class MessageBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's ``BatchSpanProcessor`` (same queue, thread, batches, flush and shutdown), cheaper per span.

    ``on_end`` queues a sampled span as ``BatchProcessor.emit`` does, minus
    its ``os.getpid()`` per span: the processor already re-creates its queue
    and thread in a forked child through ``os.register_at_fork``, which every
    platform this runs on has (where it is missing, or when the queue is
    full or the processor shut down, ``emit`` itself runs, logging and
    counting as the SDK does).  Alone on a provider, it is also handed
    :class:`MessageSpan` objects themselves rather than copies (see
    :meth:`MessageSpan.end`).  When its exporter reads them
    (``reads_queued_spans``, as tradeflow's OTLP exporters do), the
    middleware's send spans may be :class:`QueuedSpan` objects.

    Spans are encoded by the export thread, a batch at a time: encoded at
    each span's ``end`` instead (tried, 2026-12-03), the same encoding cost
    a producer's send about 12 µs more CPU, run cold between the send's
    other work, where a batch of them costs about 3 µs a span.  When the
    exporter reads them, a span waits for its export as a :data:`SpanRecord`
    (see :func:`span_record`): the span objects go at ``end``, and the
    record is a tuple the garbage collector stops tracking at its next
    collection.  Queued as objects, every span kept half a dozen tracked
    objects alive until its export, long enough to be promoted to the
    oldest generation: they made a worker collect its whole heap every few
    thousand messages.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        batch = getattr(self, "_batch_processor", None)
        #: Whether the SDK's batch processor has the fields on_end uses (else the SDK's own on_end runs).
        self.direct = _AT_FORK and all(hasattr(batch, name) for name in _BATCH_FIELDS)
        #: Whether the exporter encodes :class:`QueuedSpan` objects (tradeflow's OTLP exporters do).
        self.reads_queued_spans = self.direct and (
            getattr(getattr(batch, "_exporter", None), "reads_queued_spans", False) is True
        )

    def on_end(self, span: ReadableSpan) -> None:
        if not self.direct:
            super().on_end(span)
            return
        if not span._context.trace_flags & _SAMPLED:
            return
        batch = self._batch_processor
        queue = batch._queue
        if batch._shutdown or len(queue) >= batch._max_queue_size:
            batch.emit(span)
            return
        record = span_record(span) if self.reads_queued_spans and type(span) in _RECORDED_TYPES else None
        queue.appendleft(span if record is None else record)  # the export thread pops from the right
        if len(queue) >= batch._max_export_batch_size and not batch._worker_awaken.is_set():
            batch._worker_awaken.set()


#: Whether forked children re-create a batch processor's queue and thread themselves.
_AT_FORK = hasattr(os, "register_at_fork")

#: Fields of the SDK's ``BatchProcessor`` that :meth:`MessageBatchSpanProcessor.on_end` reads.
_BATCH_FIELDS = ("emit", "_queue", "_shutdown", "_max_queue_size", "_max_export_batch_size", "_worker_awaken")


try:  # private to the SDK: when it moves, spans make the (no-op) metrics calls as before
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics as _NoOpTracerMetrics
except ImportError:  # pragma: no cover
    _NoOpTracerMetrics = None

#: Trace flag bits, and the TraceFlags of every flags byte (made once, not per span).
_SAMPLED = TraceFlags.SAMPLED
_RANDOM_TRACE_ID = TraceFlags.RANDOM_TRACE_ID
_TRACE_FLAGS = [TraceFlags(flags) for flags in range(256)]

#: The end of a ``traceparent``, by flags byte.
_FLAGS_SUFFIX = [f"-{flags:02x}" for flags in range(256)]


def _span_context_is_a_tuple() -> bool:
    """Whether ``SpanContext`` is the tuple ``(trace_id, span_id, is_remote, flags, state, is_valid)``."""
    fields = (0xAB, 0xCD, True, _TRACE_FLAGS[1], DEFAULT_TRACE_STATE, True)
    try:
        made = tuple.__new__(SpanContext, fields)
        sdk = SpanContext(0xAB, 0xCD, is_remote=True, trace_flags=TraceFlags(1))
    except Exception:
        return False
    read = (made.trace_id, made.span_id, made.is_remote, made.trace_flags, made.trace_state, made.is_valid)
    return tuple(sdk) == fields and read == fields


def _valid(trace_id: int, span_id: int) -> bool:
    # SpanContext's is_valid, for ids from an id generator (which may be any).
    return 0 < trace_id < 1 << 128 and 0 < span_id < 1 << 64


#: Whether a ``SpanContext``'s fields can be read as a tuple's (by the wire encoder, too).
_CONTEXT_IS_TUPLE = _span_context_is_a_tuple()

#: ``SpanContext`` made from its six fields without its ``__new__``'s Python frame (which only
#: fills in defaults and works out ``is_valid``, which callers pass).
_new_span_context = (
    functools.partial(tuple.__new__, SpanContext)
    if _CONTEXT_IS_TUPLE
    else lambda fields: SpanContext(*fields[:3], trace_flags=fields[3], trace_state=fields[4])
)

#: Sampling decisions, compared by identity as ``Decision.is_sampled`` and ``is_recording`` do.
_RECORD_AND_SAMPLE = sampling.Decision.RECORD_AND_SAMPLE
_RECORD_ONLY = sampling.Decision.RECORD_ONLY


#: The events and links of a span that has none (read as empty by the SDK and the exporters).
_NONE: tuple[Any, ...] = ()


#: The status a span starts with (immutable, shared as the SDK's ``ReadableSpan`` default is).
_UNSET_STATUS = Status(StatusCode.UNSET)


#: A span waiting for export, as :func:`span_record` writes it: a plain tuple of
#: ``(origin, name, trace_id, span_id, parent_span_id, parent_is_remote, kind, start_time,
#: end_time, dropped_attributes, status_code, status_description, *keys, *values)``, where
#: ``origin`` numbers the span's resource and instrumentation scope (:func:`record_origin`),
#: ``parent_span_id`` is ``None`` for a root, ``kind`` and ``status_code`` are OTLP numbers,
#: and the attributes' keys then their values close the tuple.  Holding only ints and strings
#: (and a sequence attribute's tuple), it is untracked by the garbage collector at the first
#: collection it meets.  Flat on purpose: the collector untracks a tuple whose items are
#: untracked already, and a tuple holding a dict, or tuples it reaches after their holder,
#: stays tracked.
SpanRecord = tuple

#: The fields of a :data:`SpanRecord` before its attributes.
RECORD_FIELDS = 12

#: The attributes of a span that has none.
_NO_ATTRIBUTES: Mapping[str, Any] = MappingProxyType({})

#: OTLP ``Span.SpanKind`` numbers.
SPAN_KINDS = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}

#: OTLP numbers of span kinds and status codes, by ``id()`` of the enum member (hashing a
#: member runs ``Enum.__hash__`` in Python; members live for good).
_KIND_NUMBERS = {id(kind): number for kind, number in SPAN_KINDS.items()}
_STATUS_NUMBERS = {id(code): code.value for code in StatusCode}

#: Most distinct (resource, scope) pairs that records number; spans of any further pair are
#: queued as they are.
MAX_RECORD_ORIGINS = 256

#: Most scope objects whose origin number is looked up by identity (a tracer made per call has
#: a scope object of its own, equal to the last one's): the cache is emptied when full.
MAX_CACHED_SCOPES = 1024

#: The (resource, scope) pair of each origin number.
_origins: list[tuple[Any, Any]] = []

#: ``id(scope)`` -> (scope, resource, origin number); holding the scope keeps its id its own.
_origin_numbers: dict[int, tuple[Any, Any, int]] = {}

_origins_lock = threading.Lock()


def record_origin(number: int) -> tuple[Any, Any]:
    """The resource and instrumentation scope of a :data:`SpanRecord`'s ``origin``."""
    return _origins[number]


def _origin_number(resource: Any, scope: Any) -> int | None:
    """The origin number of (``resource``, ``scope``); ``None`` when :data:`MAX_RECORD_ORIGINS` are taken."""
    known = _origin_numbers.get(id(scope))
    if known is not None and known[0] is scope and known[1] is resource:
        return known[2]
    with _origins_lock:
        # Equal scopes share a number: a tracer made per call has a scope object of its own.
        same = (n for n, (owner, other) in enumerate(_origins) if owner is resource and _same(other, scope))
        number = next(same, None)
        if number is None:
            if len(_origins) >= MAX_RECORD_ORIGINS:
                return None
            number = len(_origins)
            _origins.append((resource, scope))
        if len(_origin_numbers) >= MAX_CACHED_SCOPES:
            _origin_numbers.clear()
        _origin_numbers[id(scope)] = (scope, resource, number)
    return number


def _same(scope: Any, other: Any) -> bool:
    return type(scope) is type(other) and scope == other


def span_record(span: Any) -> SpanRecord | None:
    """``span`` (an ended SDK, middleware or queued span) as a :data:`SpanRecord`.

    ``None`` for a span with events, links or a trace state (whose objects a
    record does not hold), or one missing what an exported span has (a
    context, times, a known kind and status): it is queued as it is.
    """
    context, start, end = span._context, span._start_time, span._end_time
    if span._events or span._links or context is None or start is None or end is None:
        return None
    if _CONTEXT_IS_TUPLE and type(context) is SpanContext:
        trace_id, span_id, _, _, trace_state, _ = context
    else:
        trace_id, span_id, trace_state = context.trace_id, context.span_id, context.trace_state
    status = span._status
    if (trace_state is not DEFAULT_TRACE_STATE and trace_state) or status is None:
        return None
    if status is _UNSET_STATUS:
        code, description = 0, None
    else:
        code, description = _STATUS_NUMBERS.get(id(status.status_code)), status.description
    kind = _KIND_NUMBERS.get(id(span._kind))
    if code is None or kind is None:
        return None
    origin = _origin_number(span._resource, span._instrumentation_scope)
    if origin is None:
        return None
    attributes = span._attributes
    if type(attributes) is BoundedAttributes:
        attributes, dropped = attributes._dict, attributes.dropped
    else:
        attributes, dropped = attributes or _NO_ATTRIBUTES, 0
    parent = span._parent
    if parent is None:
        parent_id, remote = None, False
    elif _CONTEXT_IS_TUPLE and type(parent) is SpanContext:
        parent_id, remote = parent[1], parent[2]
    else:
        parent_id, remote = parent.span_id, parent.is_remote
    return (
        origin,
        span._name,
        trace_id,
        span_id,
        parent_id,
        remote,
        kind,
        start,
        end,
        dropped,
        code,
        description,
        *attributes,
        *attributes.values(),
    )


def _decidable(sampler: Any, depth: int = 0) -> bool:
    """Whether :func:`_decide` knows ``sampler``: the SDK's own samplers, delegates included.

    They decide on the parent's flags and the trace id alone, return the
    attributes they are given unchanged, and the parent's trace state.
    """
    kind = type(sampler)
    if kind is sampling.StaticSampler:
        return isinstance(getattr(sampler, "_decision", None), sampling.Decision)
    if kind is sampling.TraceIdRatioBased:
        return isinstance(getattr(sampler, "bound", None), int) and hasattr(sampler, "TRACE_ID_LIMIT")
    if kind in (sampling.ParentBased, sampling.ParentBasedTraceIdRatio) and depth < 4:
        return all(_decidable(getattr(sampler, name, None), depth + 1) for name in _PARENT_BASED_DELEGATES)
    if kind is QueueRatioSampler and depth < 4:
        return all(_decidable(delegate, depth + 1) for delegate in sampler.samplers())
    return False


def _decide(
    sampler: Any, parent: SpanContext | None, trace_id: int, attributes: Mapping[str, Any] | None = None
) -> sampling.Decision:
    """``sampler.should_sample(...).decision`` of a :func:`_decidable` sampler; ``parent`` valid or None.

    ``attributes`` are the span's, which only a :class:`QueueRatioSampler` reads.
    """
    kind = type(sampler)
    if kind is sampling.StaticSampler:
        return sampler._decision
    if kind is sampling.TraceIdRatioBased:
        if trace_id & sampler.TRACE_ID_LIMIT < sampler.bound:
            return sampling.Decision.RECORD_AND_SAMPLE
        return sampling.Decision.DROP
    if kind is QueueRatioSampler:
        return _decide(sampler.sampler_for(attributes), parent, trace_id)
    if parent is None:
        delegate = sampler._root
    elif parent.is_remote:
        delegate = (
            sampler._remote_parent_sampled
            if parent.trace_flags.sampled
            else sampler._remote_parent_not_sampled
        )
    else:
        delegate = (
            sampler._local_parent_sampled if parent.trace_flags.sampled else sampler._local_parent_not_sampled
        )
    return _decide(delegate, parent, trace_id, attributes)


def _sdk_shape_matches(tracer: SDKTracer) -> bool:
    """Whether this SDK's tracer and span have the fields :class:`MessageSpan` sets and reads."""
    needed = ("sampler", "id_generator", "span_processor", "resource", "instrumentation_info")
    needed_private = ("_span_limits", "_instrumentation_scope", "_tracer_metrics", "_is_enabled")
    if not all(hasattr(tracer, name) for name in (*needed, *needed_private)):
        return False
    if not hasattr(TraceFlags, "RANDOM_TRACE_ID") or not hasattr(tracer.id_generator, "is_trace_id_random"):
        return False
    try:
        probe = trace.INVALID_SPAN_CONTEXT
        sdk_span = _Span("probe", probe, limits=tracer._span_limits)
        ours = MessageSpan("probe", probe, None, SpanKind.INTERNAL, {}, (), tracer, None)
    except Exception:
        return False
    return set(vars(sdk_span)) == set(vars(ours)) and isinstance(ours._attributes, BoundedAttributes)


class SpanStarter:
    """Starts spans as ``tracer.start_span`` does, minus validating the middleware's own attributes.

    Parameters:
      tracer(Tracer): The middleware's tracer; anything but an SDK tracer
        of the expected shape is used through ``start_span``.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self.direct = isinstance(tracer, SDKTracer) and _sdk_shape_matches(tracer)
        self._known_sampler = self.direct and _decidable(tracer.sampler)
        # Without SDK metrics a span's start and end metrics are no-op calls: not made.
        self._no_metrics = self.direct and type(tracer._tracer_metrics) is _NoOpTracerMetrics
        #: Whether :meth:`start_queued` may start a :class:`QueuedSpan` (SDK metrics would miss it).
        self._queueable = self._known_sampler and self._no_metrics
        processors = tracer.span_processor if self._queueable else None
        # What queued_root and start_current need of the provider, read again when its processors change.
        self._processors = processors if type(processors) is SynchronousMultiSpanProcessor else None
        sampler = tracer.sampler if self._known_sampler else None
        #: The sampler deciding a root span (a ``ParentBased`` sampler's root delegate), looked up once.
        self._root_sampler = sampler._root if isinstance(sampler, sampling.ParentBased) else sampler
        self._registered: Any = None
        self._root_processor: MessageBatchSpanProcessor | None = None
        self._lone_processor: MessageBatchSpanProcessor | None = None

    def start(
        self,
        name: str,
        *,
        parent: context.Context | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        extra: Mapping[str, Any] | None = None,
        links: Sequence[Link] = (),
        parent_span_context: SpanContext | None = None,
    ) -> trace.Span:
        """A started span; ``attributes`` must be valid attribute values, ``extra`` may be anything.

        ``parent_span_context``, when the caller has it, is ``parent``'s span context.
        """
        tracer = self.tracer
        if not self.direct:
            return tracer.start_span(
                name, context=parent, kind=kind, attributes={**attributes, **(extra or {})}, links=links
            )
        if not tracer._is_enabled():
            return tracer.start_span(name, context=parent, kind=kind, attributes=attributes, links=links)
        if parent_span_context is None:
            parent_span_context = trace.get_current_span(parent).get_span_context()
        parent_span_context, trace_id, random_trace_id = self._trace_of(parent_span_context)
        if self._known_sampler:
            seen = {**attributes, **extra} if extra else attributes  # what start_span's sampler sees
            decision = _decide(tracer.sampler, parent_span_context, trace_id, seen)
            trace_state = parent_span_context.trace_state if parent_span_context is not None else None
            result = None
        else:  # any other sampler sees every attribute and may change them, as with start_span
            if extra:
                attributes, extra = {**attributes, **extra}, None
            result = tracer.sampler.should_sample(parent, trace_id, name, kind, attributes, links)
            decision, trace_state = result.decision, result.trace_state
        # Decision.is_sampled() and is_recording(), without the calls.
        sampled = decision is _RECORD_AND_SAMPLE
        span_context = self._context_of(trace_id, random_trace_id, sampled, trace_state)
        if self._no_metrics:
            record_end_metrics = None
        else:
            record_end_metrics = tracer._tracer_metrics.start_span(parent_span_context, decision)
        if not sampled and decision is not _RECORD_ONLY:
            return NonRecordingSpan(span_context)
        if result is None:
            span = MessageSpan(name, span_context, parent_span_context, kind, attributes, links, tracer, None)
        else:  # the sampler's attributes, validated
            span = MessageSpan(name, span_context, parent_span_context, kind, {}, links, tracer, None)
            span._attributes._set_items(result.attributes)
        if extra:
            span._attributes._set_items(extra)
        span._record_end_metrics = record_end_metrics
        span._start_time = time_ns()
        processors = span._span_processor
        if _lone_batch_processor(processors) is None:  # a batch processor's on_start does nothing
            processors.on_start(span, parent_context=parent)
        return span

    def start_queued(
        self,
        name: str,
        *,
        parent: context.Context | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        parent_span_context: SpanContext,
    ) -> trace.Span | QueuedSpan:
        """A span only its caller ever sees (never current, no links), as :meth:`start` starts it.

        When the provider's lone processor is a :class:`MessageBatchSpanProcessor`
        whose exporter reads QueuedSpans and the span needs no limits applied, it is a
        :class:`QueuedSpan`: the fields the encoder reads and nothing more.
        ``attributes`` must be valid attribute values; ``parent_span_context``
        is ``parent``'s span context and may be invalid (a root).
        """
        tracer = self.tracer
        processor = _lone_batch_processor(tracer.span_processor) if self._queueable else None
        limits = tracer._span_limits if processor is not None else None
        if (
            processor is None
            or not processor.reads_queued_spans
            or limits.max_span_attribute_length is not None
            or (limits.max_span_attributes is not None and len(attributes) > limits.max_span_attributes)
            or not tracer._is_enabled()
        ):
            return self.start(
                name, parent=parent, kind=kind, attributes=attributes, parent_span_context=parent_span_context
            )
        parent_span_context, trace_id, random_trace_id = self._trace_of(parent_span_context)
        decision = _decide(tracer.sampler, parent_span_context, trace_id, attributes)
        sampled = decision is _RECORD_AND_SAMPLE
        trace_state = parent_span_context.trace_state if parent_span_context is not None else None
        span_context = self._context_of(trace_id, random_trace_id, sampled, trace_state)
        if not sampled:  # RECORD_ONLY too: recorded for no processor, as its batch processor skips it
            return NonRecordingSpan(span_context)
        return QueuedSpan(name, span_context, parent_span_context, kind, attributes, tracer, processor)

    def queued_root(
        self, name: str, kind: SpanKind, attributes: dict[str, Any]
    ) -> tuple[QueuedSpan | None, str] | None:
        """A root span as :meth:`start_queued` starts it, with its ``traceparent``, in one step.

        For the common send, a message sent outside any span (the caller
        checked that the current context is empty, so there is no parent
        and no baggage): nothing is looked up but the provider's state,
        and the ``traceparent`` is written from the new ids.  ``None``
        when :meth:`start_queued` and :func:`carrier_of` are needed
        instead (another processor, limits, a sampler or propagator of
        another kind, the tracer disabled, an id generator giving an
        invalid id); the span is ``None`` when the sampler drops the trace,
        whose ``traceparent`` then carries that decision.
        """
        processor = self._root_processor_of()
        if processor is None or not self.tracer._is_enabled() or not _is_default_propagator():
            return None
        limit = self.tracer._span_limits.max_span_attributes
        if limit is not None and len(attributes) > limit:
            return None
        generator = self.tracer.id_generator
        trace_id = generator.generate_trace_id()
        decision = _decide(self._root_sampler, None, trace_id, attributes)
        span_id = generator.generate_span_id()
        if not _valid(trace_id, span_id):
            return None
        flags = _RANDOM_TRACE_ID if generator.is_trace_id_random() else 0
        # The traceparent as carrier_of writes it; bytes.hex() costs a third of a format spec's work.
        ids = "00-" + trace_id.to_bytes(16, "big").hex() + "-" + span_id.to_bytes(8, "big").hex()
        if decision is not _RECORD_AND_SAMPLE:  # RECORD_ONLY too, as in start_queued
            return None, ids + _FLAGS_SUFFIX[flags]
        flags |= _SAMPLED
        span_context = _new_span_context(
            (trace_id, span_id, False, _TRACE_FLAGS[flags], DEFAULT_TRACE_STATE, True)
        )
        span = QueuedSpan(name, span_context, None, kind, attributes, self.tracer, processor)
        return span, ids + _FLAGS_SUFFIX[flags]

    def start_current(
        self, name: str, kind: SpanKind, attributes: dict[str, Any], parent: SpanContext
    ) -> tuple[trace.Span, context.Context] | None:
        """A span under the remote ``parent`` and the context that makes it current, in one step.

        For the worker's common case, a message carrying a sampled
        ``traceparent`` of ours and no links or extra attributes: the span
        :meth:`start` would start (a :class:`MessageSpan`), without building
        the parent's context or looking its span up again.  ``None`` when
        :meth:`start` is needed instead (another processor registered, SDK
        metrics, a sampler of another kind, the tracer disabled).
        ``attributes`` must be valid attribute values.
        """
        tracer = self.tracer
        if self._lone_processor_of() is None or not tracer._is_enabled():
            return None
        trace_id = parent.trace_id
        decision = _decide(tracer.sampler, parent, trace_id, attributes)
        random_trace_id = bool(parent.trace_flags & _RANDOM_TRACE_ID)
        sampled = decision is _RECORD_AND_SAMPLE
        span_context = self._context_of(trace_id, random_trace_id, sampled, parent.trace_state)
        if not sampled and decision is not _RECORD_ONLY:
            span: trace.Span = NonRecordingSpan(span_context)
        else:  # a lone batch processor's on_start does nothing: not called, as in start
            span = MessageSpan(name, span_context, parent, kind, attributes, (), tracer, None)
            span._start_time = time_ns()
        return span, current_context(span)

    def _lone_processor_of(self) -> MessageBatchSpanProcessor | None:
        """The provider's processor when it is one :class:`MessageBatchSpanProcessor` alone, else ``None``.

        Also ``None`` when :meth:`start` is needed anyway (SDK metrics, a sampler of another kind).
        """
        if self._processors is None:
            return None
        if self._processors._span_processors is not self._registered:
            self._read_processors()
        return self._lone_processor

    def _root_processor_of(self) -> MessageBatchSpanProcessor | None:
        """The processor :meth:`queued_root` queues to; ``None`` when the provider's state rules it out."""
        if self._processors is None:
            return None
        if self._processors._span_processors is not self._registered:
            self._read_processors()
        return self._root_processor

    def _read_processors(self) -> None:
        # Once per set of registered processors: the SDK replaces its tuple on each add.
        self._registered = self._processors._span_processors
        self._lone_processor = processor = _lone_batch_processor(self._processors)
        usable = processor is not None and processor.reads_queued_spans
        no_length_limit = self.tracer._span_limits.max_span_attribute_length is None
        self._root_processor = processor if usable and no_length_limit else None

    def _context_of(
        self, trace_id: int, random_trace_id: bool, sampled: bool, trace_state: Any
    ) -> SpanContext:
        """A new span's context in trace ``trace_id``, with a span id from the tracer's generator."""
        flags = _TRACE_FLAGS[(_SAMPLED if sampled else 0) | (_RANDOM_TRACE_ID if random_trace_id else 0)]
        span_id = self.tracer.id_generator.generate_span_id()
        return _new_span_context(
            (trace_id, span_id, False, flags, trace_state or DEFAULT_TRACE_STATE, _valid(trace_id, span_id))
        )

    def _trace_of(self, parent: SpanContext | None) -> tuple[SpanContext | None, int, bool]:
        """The parent (None for a root), the trace id and whether it is random, of a span under ``parent``."""
        if parent is None or not parent.is_valid:
            id_generator = self.tracer.id_generator
            return None, id_generator.generate_trace_id(), id_generator.is_trace_id_random()
        return parent, parent.trace_id, parent.trace_flags.random_trace_id


class QueuedSpan:
    """A span no code but its starter sees, ended straight into a :class:`MessageBatchSpanProcessor`.

    The middleware's ``send`` span is never made current, has no events or
    links and gets only a status: building the SDK's span object for it (two
    dozen fields, two locks, a ``BoundedAttributes``) cost more than the rest
    of the send hooks.  This one holds the fields the wire encoder reads
    (:func:`actors.telemetry.otlp_export.encode_span`), and is queued at its ``end``.
    """

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_instrumentation_scope",
        "_kind",
        "_name",
        "_parent",
        "_processor",
        "_resource",
        "_start_time",
        "_status",
    )

    #: No events or links, ever.
    _events = _links = ()

    def __init__(
        self,
        name: str,
        span_context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        tracer: SDKTracer,
        processor: MessageBatchSpanProcessor,
    ) -> None:
        self._context = span_context
        self._parent = parent
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._status = _UNSET_STATUS
        self._resource = tracer.resource
        self._instrumentation_scope = tracer._instrumentation_scope
        self._processor = processor
        self._end_time = None
        self._start_time = time_ns()

    @property
    def name(self) -> str:
        return self._name

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_status(self, status: Status) -> None:
        if self._end_time is None:
            self._status = status

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            logger.warning("Calling end() on an ended span.")
            return
        self._end_time = end_time if end_time is not None else time_ns()
        self._processor.on_end(self)


#: Span types :meth:`MessageBatchSpanProcessor.on_end` queues as records (their fields are read).
_RECORDED_TYPES = frozenset({ReadableSpan, MessageSpan, QueuedSpan})


_default_propagator: tuple[Any, bool] = (None, False)


def _is_default_propagator() -> bool:
    """Whether the global propagator is the SDK's default: W3C trace context (and baggage)."""
    global _default_propagator
    propagator = propagate.get_global_textmap()
    known, default = _default_propagator
    if propagator is known:
        return default
    inner = getattr(propagator, "_propagators", None)
    default = (
        type(propagator) is CompositePropagator
        and isinstance(inner, list | tuple)
        and [type(p) for p in inner]
        in ([TraceContextTextMapPropagator, W3CBaggagePropagator], [TraceContextTextMapPropagator])
    )
    _default_propagator = (propagator, default)
    return default


def carrier_of(span: trace.Span) -> dict[str, str]:
    """The W3C carrier of ``span``'s context and the current baggage, as ``propagate.inject`` writes it."""
    span_context = span.get_span_context()
    trace_state = span_context.trace_state
    if (trace_state is not DEFAULT_TRACE_STATE and trace_state) or not _is_default_propagator() or _baggage():
        carrier: dict[str, str] = {}
        # Its context, not the span: a QueuedSpan is no trace.Span, which the propagators would skip.
        propagate.inject(carrier, context=trace.set_span_in_context(NonRecordingSpan(span_context)))
        return carrier
    if not span_context.is_valid:
        return {}
    trace_id, span_id, flags = span_context.trace_id, span_context.span_id, span_context.trace_flags
    return {TRACEPARENT_KEY: f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"}


def _baggage() -> bool:
    """Whether the current context carries baggage (``baggage.get_all()``, without building its mapping)."""
    if _BAGGAGE_KEY is None:
        return bool(baggage.get_all())
    return bool(context.get_current().get(_BAGGAGE_KEY))


#: The context key of the current baggage (private to the API: when it moves, ``get_all`` is used).
_BAGGAGE_KEY = getattr(baggage, "_BAGGAGE_KEY", None)


def context_from(carrier: Mapping[str, str] | None) -> context.Context | None:
    """The context a carrier holds, ``None`` when it holds none."""
    extracted, span_context = parent_from(carrier)
    return extracted if span_context.is_valid else None


def parent_from(carrier: Mapping[str, str] | None) -> tuple[context.Context, SpanContext]:
    """The context a carrier holds and its span's context; an empty context and an invalid one when none.

    One pass for a message's parent: a ``traceparent`` of ours is parsed
    once, its span context kept rather than looked up again in the context.
    """
    if not carrier:
        return _EMPTY_CONTEXT, trace.INVALID_SPAN_CONTEXT
    span_context = traceparent_of(carrier)
    if span_context is None:
        extracted = propagate.extract(carrier)
        span_context = trace.get_current_span(extracted).get_span_context()
    else:
        extracted = current_context(NonRecordingSpan(span_context))
    if not span_context.is_valid:
        return _EMPTY_CONTEXT, trace.INVALID_SPAN_CONTEXT
    return extracted, span_context


def traceparent_of(carrier: Any) -> SpanContext | None:
    """The remote span context of a carrier holding a ``traceparent`` of ours and nothing else.

    ``None`` for any other carrier (more fields, another form, another
    global propagator): the global propagator reads those.  Ids of zero
    give the invalid span context, as ``propagate.extract`` does.
    """
    if type(carrier) is not dict or len(carrier) != 1 or not _is_default_propagator():
        return None
    value = carrier.get(TRACEPARENT_KEY)
    match = TRACEPARENT.match(value) if type(value) is str else None
    if match is None:
        return None
    trace_id, span_id, flags = match.groups()
    if trace_id == _INVALID_TRACE_ID or span_id == _INVALID_SPAN_ID:
        return trace.INVALID_SPAN_CONTEXT
    return _new_span_context(
        (int(trace_id, 16), int(span_id, 16), True, _TRACE_FLAGS[int(flags, 16)], DEFAULT_TRACE_STATE, True)
    )


def current_context(span: trace.Span) -> context.Context:
    """The context holding ``span`` and nothing else: ``set_span_in_context(span, Context())`` in one step."""
    return context.Context({_SPAN_KEY: span})


#: The key ``set_span_in_context`` stores the span under (read off the API, not imported: it is private).
_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, context.Context())))

#: The context of a message without a parent (contexts are immutable: one serves all).
_EMPTY_CONTEXT = context.Context()
