"""OpenTelemetry tracing middleware: one trace from send to process, across processes and retries.

Modelled on the contrib Remoulade instrumentation and the messaging semantic
conventions: a PRODUCER span ``send {queue}`` per enqueue whose context
travels in the message options, and a CONSUMER span ``process {queue}``
parented to it and made current while the actor runs, so the actor's own
spans (and any redis/psycopg/sqlalchemy instrumentation) nest under it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import OrderedDict
from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message
from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from actors.settings import Settings
from saga import SAGA_OPTION
from saga.engine import COMPENSATE
from saga.run_tracing import (
    ATTRIBUTES_OPTION,
    CONTEXT_OPTION,
    LINKS_OPTION,
    NEXT_TRACE_ID,
    PARENT_OPTION,
    WORKFLOW_COMPENSATION,
    WORKFLOW_RUN_ID,
    WORKFLOW_STEP,
    links_from,
    run_trace_id,
)

from .message_spans import (
    TRACEPARENT_KEY,
    MessageBatchSpanProcessor,
    SpanStarter,
    carrier_of,
    context_from,
    current_context,
    parent_from,
    traceparent_of,
)
from .otlp_export import grpc_span_exporter, http_span_exporter
from .sampling import QUEUE_ATTRIBUTE, QueueRatioSampler

#: ``messaging.system`` of our spans.
MESSAGING_SYSTEM = "dramatiq"

#: Default OTLP endpoints, by exporter (Jaeger all-in-one listens on both).
DEFAULT_ENDPOINTS = {"otlp-grpc": "http://127.0.0.1:4317", "otlp-http": "http://127.0.0.1:4318/v1/traces"}

#: Most ``send`` spans waiting for their enqueue to finish; beyond it the
#: oldest are ended as failed (their enqueue raised and never came back).
MAX_OPEN_SEND_SPANS = 10_000

#: Seconds a worker waits at shutdown for its last spans to be exported.
SHUTDOWN_FLUSH_TIMEOUT = 10.0

#: The trace flag of a sampled trace.
_SAMPLED = TraceFlags.SAMPLED

#: Batch span processor, tuned for throughput (the SDK's defaults are 2048
#: and 512): a 2,000 messages/s worker records 4,000 spans/s, so a larger
#: queue rides out an export stalled by a busy collector instead of dropping
#: spans, and larger batches mean fewer requests.  A batch still leaves at
#: least every :data:`BATCH_SCHEDULE_DELAY_MS`.  ``OTEL_BSP_*`` variables,
#: when set, win, as with any OpenTelemetry SDK.
BATCH_MAX_QUEUE_SIZE = 8192
BATCH_MAX_EXPORT_SIZE = 2048
BATCH_SCHEDULE_DELAY_MS = 2000


class Tracing(Middleware):
    """Traces every message: ``send {queue}`` on enqueue, ``process {queue}`` on processing.

    Must be the FIRST middleware: ``after_*`` hooks run in reverse order, so
    only then are Retries, Pipelines and Callbacks done enqueueing (inside
    the process span) before this one closes the span and detaches its
    context.  Retries continue the original trace in any order anyway: a
    re-enqueue of a message being processed is parented to its process
    span, and a failed attempt's context is written into the options the
    retry re-enqueues.  A saga step message sent outside any span of its
    run starts a span in the run's trace (:func:`saga.run_tracing.run_trace_id`,
    with providers from :func:`tracer_provider_for`), so a workflow run is one
    trace whichever process sends its steps.

    Parameters:
      tracer_provider(TracerProvider): Where spans go.  Defaults to the global one.
    """

    actor_options = {PARENT_OPTION, LINKS_OPTION, ATTRIBUTES_OPTION}

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.logger = get_logger(__name__, type(self))
        self.tracer_provider = tracer_provider
        self.tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self.spans = SpanStarter(self.tracer)
        self._send_spans: OrderedDict[str, Span] = OrderedDict()
        self._send_lock = threading.Lock()
        self._process_spans: dict[str, tuple[Span | None, object]] = {}
        self._constant_attributes: dict[tuple[str, str, str], tuple[str, dict[str, str]]] = {}

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        options = message.options
        if (
            options.keys().isdisjoint(_TRACE_OPTIONS)
            and not context.get_current()
            and self._send_root(message, delay)
        ):
            return
        links = links_from(options[LINKS_OPTION]) if LINKS_OPTION in options else []
        parent = self._parent_of_send(message, bool(links))
        # Looked up once (the current span's when parent is None), for the sampling checks and the span.
        parent_span_context = trace.get_current_span(parent).get_span_context()
        if parent_span_context.is_valid and not parent_span_context.trace_flags.sampled:
            # Parent-based sampling: nothing would be recorded: pass the decision on, spend nothing.
            options[CONTEXT_OPTION] = carrier_of(trace.get_current_span(parent))
            return
        run_trace = self._run_trace_of(options, parent_span_context) if parent is None else None
        if run_trace is not None:
            parent = context.Context()  # the first span of the run's trace here: a root with the run's id
            caller, parent_span_context = parent_span_context, trace.INVALID_SPAN_CONTEXT
            if caller.is_valid:  # e.g. the API request that started the run: linked, not parent
                links = [*links, Link(caller)]
        name, attributes = self._attributes(
            "send", message.queue_name, message.actor_name, message.message_id, options
        )
        if delay:
            attributes["messaging.dramatiq.delay_ms"] = delay
        token = NEXT_TRACE_ID.set(run_trace) if run_trace is not None else None
        extra = _extra_attributes(options)
        try:
            if links or extra:
                span = self.spans.start(
                    name,
                    parent=parent,
                    kind=SpanKind.PRODUCER,
                    links=links,
                    attributes=attributes,
                    extra=extra,
                    parent_span_context=parent_span_context,
                )
            else:  # the common send: a span nobody but this middleware sees
                span = self.spans.start_queued(
                    name,
                    parent=parent,
                    kind=SpanKind.PRODUCER,
                    attributes=attributes,
                    parent_span_context=parent_span_context,
                )
        finally:
            if token is not None:
                NEXT_TRACE_ID.reset(token)
        options[CONTEXT_OPTION] = carrier_of(span)
        if span.is_recording():  # not sampled: nothing to end, so nothing for after_enqueue to find
            self._open_send(message, span)

    def _send_root(self, message: Message, delay: int | None) -> bool:
        """Start the send span of a message sent outside any span, its first send; False if it cannot here.

        The producer's common send, in one straight line: a new trace, its
        decision and ``traceparent`` (see :meth:`SpanStarter.queued_root`).
        """
        name, attributes = self._attributes(
            "send", message.queue_name, message.actor_name, message.message_id, message.options
        )
        if delay:
            attributes["messaging.dramatiq.delay_ms"] = delay
        root = self.spans.queued_root(name, SpanKind.PRODUCER, attributes)
        if root is None:
            return False
        span, traceparent = root
        message.options[CONTEXT_OPTION] = {TRACEPARENT_KEY: traceparent}
        if span is not None:
            self._open_send(message, span)
        return True

    def _open_send(self, message: Message, span: Span) -> None:
        """Keep ``span`` until ``after_enqueue`` ends it (or, never called, until it is evicted as failed)."""
        with self._send_lock:
            self._send_spans[_send_key(message)] = span
            if len(self._send_spans) > MAX_OPEN_SEND_SPANS:
                _, stale = self._send_spans.popitem(last=False)
                stale.set_status(Status(StatusCode.ERROR, "enqueue did not complete"))
                stale.end()

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        with self._send_lock:
            span = self._send_spans.pop(_send_key(message), None)
        if span is not None:
            span.end()

    def before_process_message(self, broker: Broker, message: Message) -> None:
        # The proxied message's fields are read on the message itself: each read through the proxy is a call.
        inner = _unproxied(message)
        options, message_id = inner.options, inner.message_id
        if options.keys().isdisjoint(_SPAN_OPTIONS) and self._process_remote(inner):
            return
        parent, parent_span_context = parent_from(options.get(CONTEXT_OPTION))
        if parent_span_context.is_valid and not parent_span_context.trace_flags.sampled:
            # The actor's own sends still carry the trace's decision.
            self._process_spans[message_id] = (None, context.attach(parent))
            return
        name, attributes = self._attributes(
            "process", inner.queue_name, inner.actor_name, message_id, options
        )
        span = self.spans.start(
            name,
            parent=parent,
            kind=SpanKind.CONSUMER,
            links=links_from(options[LINKS_OPTION]) if LINKS_OPTION in options else (),
            attributes=attributes,
            extra=_extra_attributes(options),
            parent_span_context=parent_span_context,
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        self._process_spans[message_id] = (span, token)

    def _process_remote(self, message: Message) -> bool:
        """Open the processing of a message carrying a ``traceparent`` of ours; False if it cannot here.

        The worker's common message, in one straight line: the carried
        context's span, or a process span under it (see
        :meth:`SpanStarter.start_current`), made current.
        """
        parent = traceparent_of(message.options.get(CONTEXT_OPTION))
        if parent is None or not parent.is_valid:
            return False
        if not parent.trace_flags & _SAMPLED:  # the actor's own sends still carry the trace's decision
            token = context.attach(current_context(NonRecordingSpan(parent)))
            self._process_spans[message.message_id] = (None, token)
            return True
        name, attributes = self._attributes(
            "process", message.queue_name, message.actor_name, message.message_id, message.options
        )
        started = self.spans.start_current(name, SpanKind.CONSUMER, attributes, parent)
        if started is None:
            return False
        span, current = started
        self._process_spans[message.message_id] = (span, context.attach(current))
        return True

    def after_process_message(
        self, broker: Broker, message: Message, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        span = self._close(message)
        if span is None:
            return
        try:
            if exception is not None:
                # A retry re-enqueues these very options: it continues from this attempt.
                message.options[CONTEXT_OPTION] = carrier_of(span)
                span.record_exception(exception)
                span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))
                span.set_attribute("messaging.dramatiq.will_retry", not message.failed)
        finally:
            span.end()

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        span = self._close(message)
        if span is None:
            return
        span.set_attribute("messaging.dramatiq.skipped", True)
        if message.failed:
            span.set_status(Status(StatusCode.ERROR, "skipped and failed (e.g. too old)"))
        span.end()

    def _close(self, message: Message) -> Span | None:
        """Detach the context of ``message``'s processing; its span, still to be ended (``None``: no span)."""
        entry = self._process_spans.pop(_unproxied(message).message_id, None)
        if entry is None:
            return None
        span, token = entry
        context.detach(token)
        return span

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        flush = getattr(self.tracer_provider or trace.get_tracer_provider(), "force_flush", None)
        if flush is not None:
            flush(int(SHUTDOWN_FLUSH_TIMEOUT * 1000))

    def _parent_of_send(self, message: Message, linked: bool) -> context.Context | None:
        options = message.options
        if not (linked or self._process_spans or CONTEXT_OPTION in options or PARENT_OPTION in options):
            return None  # most sends: a fresh message, sent outside any message's processing
        processing = self._process_spans.get(message.message_id)
        if processing is not None and processing[0] is not None:  # a retry, its attempt's span open
            return trace.set_span_in_context(processing[0])
        # A message that already carries a context is being re-enqueued (a
        # retry, or a delayed message reaching its queue): it stays in its trace.
        for key in (CONTEXT_OPTION, PARENT_OPTION):
            parent = context_from(options.get(key))
            if parent is not None:
                return parent
        return context.Context() if linked else None

    def _run_trace_of(self, options: dict[str, Any], current: SpanContext) -> int | None:
        """The run's trace id for a workflow step sent outside any span of its run, else None.

        Parameters:
          options(dict): The message's options.
          current(SpanContext): The current span's context.
        """
        saga = options.get(SAGA_OPTION)
        if not isinstance(saga, dict) or not isinstance(saga.get("run"), str):
            return None
        trace_id = run_trace_id(saga["run"])
        if current.is_valid and current.trace_id == trace_id:
            return None  # sent by another step of the run: nests under its process span
        return trace_id

    def _attributes(
        self, operation: str, queue_name: str, actor_name: str, message_id: str, options: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The span's name and attributes (valid values only: they are not validated again)."""
        # The name and attributes of a (operation, queue, actor) never change: built once, copied per span.
        key = (operation, queue_name, actor_name)
        constant = self._constant_attributes.get(key)
        if constant is None:
            queue = q_name(queue_name)
            constant = self._constant_attributes[key] = (
                f"{operation} {queue}",
                {
                    "messaging.system": MESSAGING_SYSTEM,
                    "messaging.operation.type": operation,
                    QUEUE_ATTRIBUTE: queue,  # what a QueueRatioSampler reads
                    "messaging.dramatiq.actor": actor_name,
                },
            )
        name, attributes = constant
        attributes = {
            **attributes,
            "messaging.message.id": message_id,
            "messaging.dramatiq.retry_count": options.get("retries", 0),
        }
        saga = options.get(SAGA_OPTION)
        if isinstance(saga, dict):
            attributes[WORKFLOW_RUN_ID] = str(saga.get("run"))
            attributes[WORKFLOW_STEP] = str(saga.get("step"))
            attributes[WORKFLOW_COMPENSATION] = saga.get("kind") == COMPENSATE
        return name, attributes


#: Options that give a process span links or extra attributes: a message with neither, carrying a
#: ``traceparent`` of ours, is processed under it in one step (:meth:`Tracing._process_remote`).
_SPAN_OPTIONS = frozenset({LINKS_OPTION, ATTRIBUTES_OPTION})

#: Options that give a send its parent, links, attributes or workflow run: a send with none of them,
#: outside any span, starts a new trace (:meth:`Tracing._send_root`).
_TRACE_OPTIONS = frozenset({CONTEXT_OPTION, PARENT_OPTION, LINKS_OPTION, ATTRIBUTES_OPTION, SAGA_OPTION})


def _extra_attributes(options: dict[str, Any]) -> dict[str, Any] | None:
    # Attributes from the message's options: anything a sender wrote, validated by the SDK.
    extra = options.get(ATTRIBUTES_OPTION)
    return extra if isinstance(extra, dict) else None


def _unproxied(message: Message) -> Message:
    # The message a Dramatiq MessageProxy wraps (its fields, unlike the proxy's own state, never differ).
    return getattr(message, "_message", message)


def _send_key(message: Message) -> str:
    # The Redis broker gives every enqueue its own id; a retry reuses the message id.
    return message.options.get("redis_message_id") or message.message_id


_providers: dict[tuple, TracerProvider] = {}
_providers_lock = threading.Lock()


def tracer_provider_for(settings: Settings) -> TracerProvider | None:
    """This process's TracerProvider for ``settings`` (``None`` when tracing is off).

    Created on first use in each process, so every forked worker process
    gets its own exporter thread; the first one becomes the global provider,
    so ``trace.get_tracer(...)`` in actors uses it too.
    """
    if settings.tracing_exporter == "none":
        return None
    key = (
        os.getpid(),
        settings.tracing_exporter,
        settings.tracing_endpoint,
        settings.tracing_service_name,
        settings.tracing_sample_ratio,
        tuple(sorted(settings.tracing_queue_sample_ratios.items())),
    )
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            provider = TracerProvider(
                resource=Resource.create({"service.name": settings.tracing_service_name}),
                sampler=ParentBased(root_sampler(settings)),
                id_generator=RunTraceIdGenerator(),
            )
            provider.add_span_processor(
                MessageBatchSpanProcessor(
                    build_exporter(settings),
                    max_queue_size=_unless_set("OTEL_BSP_MAX_QUEUE_SIZE", BATCH_MAX_QUEUE_SIZE),
                    max_export_batch_size=_unless_set(
                        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", BATCH_MAX_EXPORT_SIZE
                    ),
                    schedule_delay_millis=_unless_set("OTEL_BSP_SCHEDULE_DELAY", BATCH_SCHEDULE_DELAY_MS),
                )
            )
            _providers[key] = provider
            if not isinstance(trace.get_tracer_provider(), TracerProvider):
                trace.set_tracer_provider(provider)
            install_log_trace_ids()
    return provider


def root_sampler(settings: Settings) -> TraceIdRatioBased | QueueRatioSampler:
    """The sampler deciding new traces: by queue when ratios are set per queue (:mod:`.sampling`)."""
    if settings.tracing_queue_sample_ratios:
        return QueueRatioSampler(settings.tracing_queue_sample_ratios, default=settings.tracing_sample_ratio)
    return TraceIdRatioBased(settings.tracing_sample_ratio)


def _unless_set(variable: str, value: int) -> int | None:
    # None lets the SDK read the OpenTelemetry variable an operator set.
    return None if os.environ.get(variable) else value


class RunTraceIdGenerator(RandomIdGenerator):
    """Random ids, except the trace id the Tracing middleware asks for (a workflow run's)."""

    def generate_trace_id(self) -> int:
        # getrandbits directly, as the SDK's generate_trace_id (which also redraws the invalid id 0).
        return NEXT_TRACE_ID.get() or random.getrandbits(128) or super().generate_trace_id()


def build_exporter(settings: Settings) -> SpanExporter:
    """The span exporter the settings name.

    The OTLP ones are the SDK's exporters with the wire encoder of
    :mod:`actors.telemetry.otlp_export` (a third of the CPU per span).
    """
    endpoint = settings.tracing_endpoint or DEFAULT_ENDPOINTS.get(settings.tracing_exporter)
    if settings.tracing_exporter == "otlp-grpc":
        return grpc_span_exporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    if settings.tracing_exporter == "otlp-http":
        return http_span_exporter(endpoint=endpoint)
    if settings.tracing_exporter == "console":
        return ConsoleSpanExporter()
    raise ValueError(f"unknown tracing exporter {settings.tracing_exporter!r}")


def install_log_trace_ids() -> None:
    """Give every log record ``trace_id`` and ``span_id`` and append them to formatted lines.

    Records made outside a span get empty ids and are printed unchanged.
    Idempotent.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "adds_trace_ids", False):
        return

    def record_with_trace_ids(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = trace.format_trace_id(span_context.trace_id)
            record.span_id = trace.format_span_id(span_context.span_id)
        else:
            record.trace_id = record.span_id = ""
        return record

    record_with_trace_ids.adds_trace_ids = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(record_with_trace_ids)
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, TraceIdFormatter):
            handler.setFormatter(TraceIdFormatter(handler.formatter or logging.Formatter()))


class TraceIdFormatter(logging.Formatter):
    """Formats with ``inner`` and appends ``trace_id=... span_id=...`` when the record has them.

    Parameters:
      inner(logging.Formatter): The formatter whose lines are extended.
    """

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        trace_id = getattr(record, "trace_id", "")
        if not trace_id:
            return line
        return f"{line} [trace_id={trace_id} span_id={record.span_id}]"
