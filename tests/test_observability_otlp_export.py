"""The wire encoder of the OTLP exporters writes exactly the request the SDK's encoder builds."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from otlp_receiver import OTLPReceiver

from actors.otlp_export import encode_spans, grpc_span_exporter, http_span_exporter


def _spans_of_every_shape() -> list:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "wire", "replicas": 3}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scope.a", "1.2", schema_url="https://example.com/schema")
    other = provider.get_tracer("scope.b")
    remote = SpanContext(
        0xABC,
        0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("k", "v"), ("a", "b")]),
    )
    attributes = {
        "text": "é and ascii",
        "empty": "",
        "no": False,
        "yes": True,
        "zero": 0,
        "negative": -5,
        "big": 2**62,
        "ratio": 0.5,
        "names": ("a", "b"),
        "numbers": (1, 2),
        "long": "x" * 300,
    }
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes=attributes) as root:
        root.add_event("event", {"n": 1})
        root.add_event("bare")
        try:
            raise ValueError("boom")
        except ValueError as exc:
            root.record_exception(exc)
        root.set_status(Status(StatusCode.ERROR, "bad"))
        other.start_span("linked", kind=SpanKind.PRODUCER, links=[Link(remote, {"why": "fan-out"})]).end()
    context = set_span_in_context(NonRecordingSpan(remote))
    tracer.start_span("remote parent", context=context, kind=SpanKind.CONSUMER).end()
    ok = tracer.start_span("ok", kind=SpanKind.CLIENT)
    ok.set_status(Status(StatusCode.OK))
    ok.end()
    tracer.start_span("").end()
    # the same string values again: the encoder's cache of repeated pairs must not mix fields up
    for operation in ("send", "process", "send"):
        tracer.start_span(operation, attributes={"messaging.operation.type": operation, "text": "é"}).end()
    return list(exporter.get_finished_spans())


def test_wire_encoding_parses_to_the_sdk_encoders_request() -> None:
    spans = _spans_of_every_shape()
    assert len(spans) == 8
    expected = sdk_encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == expected
    assert ExportTraceServiceRequest.FromString(encode_spans(spans[::-1])) == sdk_encode_spans(spans[::-1])
    assert encode_spans([]) == b""


def test_http_exporter_sends_wire_bytes_through_the_sdk_client() -> None:
    spans = _spans_of_every_shape()
    with OTLPReceiver() as receiver:
        exporter = http_span_exporter(endpoint=receiver.url)
        assert exporter.wire_encoding, (
            "the SDK's OTLP/HTTP client moved: the exporter fell back to its encoder"
        )
        assert exporter.export(spans).name == "SUCCESS"
        received = receiver.wait_for(lambda got: len(got) == len(spans))
    assert sorted(span.name for span in received) == sorted(span.name for span in spans)
    root = next(span for span in received if span.name == "root")
    assert root.status == "ERROR" and root.events == ["event", "bare", "exception"]
    assert root.attributes["big"] == 2**62 and root.attributes["text"] == "é and ascii"


def test_http_exporter_drops_a_batch_over_max_request_size_as_the_sdk_does(caplog) -> None:
    """The wire exporter keeps the SDK exporter's request size limit: a batch whose request is over
    ``max_request_size`` is dropped with a warning saying both sizes, and nothing is posted."""
    spans = _spans_of_every_shape()
    with OTLPReceiver() as receiver:
        small = http_span_exporter(endpoint=receiver.url, max_request_size=len(encode_spans(spans)) - 1)
        assert small.wire_encoding
        with caplog.at_level("WARNING"):
            assert small.export(spans).name == "FAILURE"
        assert "exceeds max_request_size" in caplog.text
        exact = http_span_exporter(endpoint=receiver.url, max_request_size=len(encode_spans(spans)))
        assert exact.export(spans).name == "SUCCESS"
        received = receiver.wait_for(lambda got: len(got) >= len(spans))
    assert len(received) == len(spans), "only the batch within the limit was posted"


def test_grpc_exporter_builds_its_request_from_wire_bytes() -> None:
    spans = _spans_of_every_shape()
    exporter = grpc_span_exporter(endpoint="http://127.0.0.1:4317", insecure=True)
    try:
        assert exporter._translate_data(spans) == sdk_encode_spans(spans)
    finally:
        exporter.shutdown()


def test_wire_encoding_of_live_spans_and_the_middlewares_spans() -> None:
    """Spans other than the SDK's ``ReadableSpan`` copies (read through their properties), and the
    Tracing middleware's own spans (built by ``actors.message_spans``), encode as the SDK does."""
    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker

    from actors.tracing import Tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(tracer_provider=provider)
    broker = StubBroker()
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="wired")
    message = actor.message_with_options(retries=2)
    tracing.before_enqueue(broker, message, 250)
    tracing.after_enqueue(broker, message, 250)
    proxy = MessageProxy(dramatiq.Message.decode(message.encode()))
    tracing.before_process_message(broker, proxy)
    tracing.after_process_message(broker, proxy, exception=KeyError("k"))
    live = provider.get_tracer("live").start_span("live", attributes={"n": 1, "flag": True})
    live.add_event("e")
    live.end()
    spans = [*exporter.get_finished_spans(), live]
    assert [span.name for span in spans] == ["send default", "process default", "live", "live"]
    assert type(spans[-1]) is not type(spans[0]), "one span read through its properties"
    for batch in (spans, spans[::-1], spans * 2):
        assert ExportTraceServiceRequest.FromString(encode_spans(batch)) == sdk_encode_spans(batch)


def test_wire_encoding_of_the_middlewares_spans_handed_over_themselves() -> None:
    """The middleware's spans as a lone ``MessageBatchSpanProcessor`` hands them to exporters (the
    spans themselves, read through their fields) encode as the SDK encodes them."""
    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker

    from actors.message_spans import MessageBatchSpanProcessor, MessageSpan
    from actors.tracing import Tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "wire"}))
    provider.add_span_processor(MessageBatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracing = Tracing(tracer_provider=provider)
    broker = StubBroker()
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="wired")
    for exception in (None, KeyError("k")):
        message = actor.message_with_options(retries=2)
        tracing.before_enqueue(broker, message, 250)
        tracing.after_enqueue(broker, message, 250)
        proxy = MessageProxy(dramatiq.Message.decode(message.encode()))
        tracing.before_process_message(broker, proxy)
        tracing.after_process_message(broker, proxy, exception=exception)
    provider.force_flush()
    spans = list(exporter.get_finished_spans())
    assert len(spans) == 4 and {type(span) for span in spans} == {MessageSpan}
    for batch in (spans, spans[::-1], spans * 2):
        assert ExportTraceServiceRequest.FromString(encode_spans(batch)) == sdk_encode_spans(batch)
    provider.shutdown()


def test_wire_encoding_of_many_distinct_string_values() -> None:
    """Past the per-key cache of values (a message id per span), strings are encoded after a prefix
    kept per length: every length (one byte and two byte varints, multi-byte characters) as the SDK."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("many")
    for n in range(600):
        value = f"{n:036d}" if n % 3 else "é" * (n % 90) + "x" * n
        tracer.start_span("s", attributes={"messaging.message.id": value, "n": n, "other": value[:5]}).end()
    spans = list(exporter.get_finished_spans())
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == sdk_encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(encode_spans(spans[::-1])) == sdk_encode_spans(spans[::-1])


class _QueueReadingExporter(InMemorySpanExporter):
    """Encodes ``QueuedSpan`` objects, as tradeflow's OTLP exporters do; keeps what it is handed."""

    reads_queued_spans = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list = []

    def export(self, spans):
        self.spans.extend(spans)
        return super().export([])


def _traced_through_the_hooks(provider: TracerProvider, own: TracerProvider) -> None:
    """Two messages sent (one delayed, one retried) and processed (one failing, with an actor's own
    span from ``own`` inside), and one send whose enqueue never came back (ended as failed)."""
    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker

    from actors import tracing as tracing_module

    tracing = tracing_module.Tracing(tracer_provider=provider)
    broker = StubBroker()
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="queued")
    for exception, delay in ((None, 250), (KeyError("k"), None)):
        message = actor.message_with_options(retries=1 if exception else 0)
        tracing.before_enqueue(broker, message, delay)
        tracing.after_enqueue(broker, message, delay)
        proxy = MessageProxy(dramatiq.Message.decode(message.encode()))
        tracing.before_process_message(broker, proxy)
        with own.get_tracer("actor.own").start_as_current_span("inside", attributes={"n": 1}):
            pass
        tracing.after_process_message(broker, proxy, exception=exception)
    limit, tracing_module.MAX_OPEN_SEND_SPANS = tracing_module.MAX_OPEN_SEND_SPANS, 1
    try:
        lost, kept = actor.message(), actor.message()
        tracing.before_enqueue(broker, lost, None)  # never comes back
        tracing.before_enqueue(broker, kept, None)  # evicts the lost one, ended as failed
        tracing.after_enqueue(broker, kept, None)
    finally:
        tracing_module.MAX_OPEN_SEND_SPANS = limit


def _comparable(request: bytes) -> list:
    """The spans of a request with their ids, times and message ids blanked (parents kept as a flag)."""
    parsed = ExportTraceServiceRequest.FromString(request)
    spans = []
    for resource_spans in parsed.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.trace_id = span.span_id = b""
                span.parent_span_id = b"p" if span.parent_span_id else b""
                span.start_time_unix_nano = span.end_time_unix_nano = 0
                for event in span.events:
                    event.time_unix_nano = 0
                    for pair in event.attributes:
                        if pair.key == "exception.stacktrace":
                            pair.value.string_value = ""
                kept = [pair for pair in span.attributes if pair.key != "messaging.message.id"]
                del span.attributes[:]
                span.attributes.extend(kept)
                spans.append((resource_spans.resource, scope_spans.scope, span))
    return spans


def test_queued_send_spans_export_as_the_sdk_paths_spans() -> None:
    """With an exporter that reads them (``reads_queued_spans``), the middleware's send spans are
    ``QueuedSpan``s: the request built from the queued spans is the one built from the SDK's own span
    objects (a second processor on the provider makes the middleware use them), ids and times aside;
    each process span is the child of its send."""
    from actors.message_spans import MessageBatchSpanProcessor, QueuedSpan
    from actors.tracing import RunTraceIdGenerator

    requests, exporters = {}, {}
    for queued in (True, False):
        exporter = _QueueReadingExporter()
        processor = MessageBatchSpanProcessor(exporter, schedule_delay_millis=60_000)
        assert processor.reads_queued_spans
        providers = [
            TracerProvider(
                resource=Resource.create({"service.name": name}), id_generator=RunTraceIdGenerator()
            )
            for name in ("a", "b")
        ]
        if not queued:
            providers[0].add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        for provider in providers:
            provider.add_span_processor(processor)
        _traced_through_the_hooks(*providers)
        assert processor.force_flush()
        assert len(exporter.spans) == 8
        requests[queued] = _comparable(encode_spans(exporter.spans))
        exporters[queued] = exporter
        processor.shutdown()
    queued_types = [type(span).__name__ for span in exporters[True].spans]
    assert queued_types.count(QueuedSpan.__name__) == 4 and QueuedSpan.__name__ not in {
        type(span).__name__ for span in exporters[False].spans
    }
    assert requests[True] == requests[False]
    statuses = [span.status.message for _, _, span in requests[True] if span.name == "send default"]
    assert statuses.count("enqueue did not complete") == 1
    spans = exporters[True].spans
    for send, inside, process in (spans[0:3], spans[3:6]):
        assert (send.name, inside.name, process.name) == ("send default", "inside", "process default")
        assert process._parent.span_id == send._context.span_id
        assert process._context.trace_id == send._context.trace_id
        assert inside._parent.span_id == process._context.span_id, "the actor's span nests under it"


def test_an_exporter_that_does_not_read_queued_spans_gets_sdk_spans() -> None:
    """A ``QueuedSpan`` is only ever handed to an exporter that says it reads them: any other
    exporter gets the SDK's spans, which it can read through their public properties."""
    from actors.message_spans import MessageBatchSpanProcessor, QueuedSpan

    exporter = InMemorySpanExporter()
    processor = MessageBatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    assert not processor.reads_queued_spans
    provider = TracerProvider()
    provider.add_span_processor(processor)
    _traced_through_the_hooks(provider, provider)
    assert processor.force_flush()
    spans = exporter.get_finished_spans()
    assert len(spans) == 8 and not any(type(span) is QueuedSpan for span in spans)
    assert {span.name for span in spans} == {"send default", "process default", "inside"}
    assert all(span.to_json() for span in spans)
    provider.shutdown()


def _root_send(middleware, *, inside=None, baggage_entry=None):
    """One message sent through ``middleware``'s send hooks, inside ``inside`` (a span) or with
    baggage; its ``traceparent``'s ids and flags, and the send span left open before ``after_enqueue``."""
    import dramatiq
    from dramatiq.brokers.stub import StubBroker
    from opentelemetry import baggage, context, trace

    broker = StubBroker()
    message = dramatiq.actor(lambda: None, broker=broker, actor_name="root").message()
    current = context.get_current()
    if inside is not None:
        current = trace.set_span_in_context(inside, current)
    if baggage_entry is not None:
        current = baggage.set_baggage(*baggage_entry, context=current)
    token = context.attach(current)
    try:
        middleware.before_enqueue(broker, message, None)
    finally:
        context.detach(token)
    open_spans = list(middleware._send_spans.values())
    middleware.after_enqueue(broker, message, None)
    carrier = message.options["trace_context"]
    _, trace_id, span_id, flags = carrier["traceparent"].split("-")
    return carrier, int(trace_id, 16), int(span_id, 16), int(flags, 16), open_spans


def test_a_root_send_is_one_queued_span_whose_ids_its_traceparent_carries() -> None:
    """A message sent outside any span starts a new trace in one step (``SpanStarter.queued_root``): a
    ``QueuedSpan`` without parent whose ids and flags (sampled, random trace id) the ``traceparent``
    carries; sent inside a span or with baggage, it takes the general path (parented, baggage kept);
    dropped by the sampler, it carries the decision and leaves no open span and nothing to export."""
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from actors.message_spans import MessageBatchSpanProcessor, QueuedSpan
    from actors.tracing import RunTraceIdGenerator, Tracing

    spans = []
    for ratio in (1.0, 0.0):
        exporter = _QueueReadingExporter()
        provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(ratio)), id_generator=RunTraceIdGenerator()
        )
        provider.add_span_processor(MessageBatchSpanProcessor(exporter, schedule_delay_millis=60_000))
        middleware = Tracing(tracer_provider=provider)
        carrier, trace_id, span_id, flags, open_spans = _root_send(middleware)
        assert list(carrier) == ["traceparent"] and flags & 0x02, "a random trace id, flagged"
        if ratio == 0.0:
            assert not flags & 0x01 and open_spans == []
            assert provider.force_flush() and exporter.spans == []
            continue
        assert flags & 0x01 and len(open_spans) == 1 and type(open_spans[0]) is QueuedSpan
        inside = provider.get_tracer("caller").start_span("caller")
        _, nested_trace, _, _, nested = _root_send(middleware, inside=inside)
        assert nested_trace == inside.get_span_context().trace_id
        assert nested[0]._parent.span_id == inside.get_span_context().span_id
        carried, _, _, _, _ = _root_send(middleware, baggage_entry=("tenant", "t1"))
        assert carried["baggage"] == "tenant=t1"
        assert provider.force_flush()
        spans = exporter.spans
        assert len(spans) == 3 and spans[0] is open_spans[0]
        assert (spans[0]._context.trace_id, spans[0]._context.span_id) == (trace_id, span_id)
        assert spans[0]._parent is None and spans[0]._end_time >= spans[0]._start_time
        provider.shutdown()
    assert spans, "the sampled side exported its spans"


def test_a_message_carrying_our_traceparent_is_processed_in_one_step(monkeypatch) -> None:
    """A message carrying only a ``traceparent`` of ours is processed under it without building the
    parent's context (``SpanStarter.start_current``): the process span, a child of the carried span, is
    the whole current context while the actor runs, and the context before is back afterwards; an
    unsampled ``traceparent`` makes its span current and records nothing; with another processor
    registered the general path runs."""
    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker
    from opentelemetry import context, trace

    from actors import tracing as tracing_module
    from actors.message_spans import MessageBatchSpanProcessor, MessageSpan
    from actors.tracing import RunTraceIdGenerator, Tracing

    exporter = _QueueReadingExporter()
    provider = TracerProvider(id_generator=RunTraceIdGenerator())
    provider.add_span_processor(MessageBatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    middleware = Tracing(tracer_provider=provider)
    broker = StubBroker()
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="lean", queue_name="lean")
    trace_id, span_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331

    def general_path(carrier):
        raise AssertionError("the general path ran")

    def processed(flags: int, *, fail: bool = False):
        carrier = {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"}
        message = actor.message_with_options(trace_context=carrier)
        proxy = MessageProxy(dramatiq.Message.decode(message.encode()))
        before = context.get_current()
        middleware.before_process_message(broker, proxy)
        current, span = context.get_current(), trace.get_current_span()
        middleware.after_process_message(broker, proxy, exception=KeyError("k") if fail else None)
        assert context.get_current() is before, "the context is detached"
        return current, span, proxy

    monkeypatch.setattr(tracing_module, "parent_from", general_path)
    current, span, proxy = processed(0x03, fail=True)
    assert type(span) is MessageSpan and dict(current) == dict(
        trace.set_span_in_context(span, context.Context())
    )
    assert span.kind is trace.SpanKind.CONSUMER and span.name == "process lean"
    assert (span._parent.trace_id, span._parent.span_id, span._parent.is_remote) == (trace_id, span_id, True)
    assert span.get_span_context().trace_id == trace_id and span.get_span_context().trace_flags == 0x03
    assert span.attributes["messaging.message.id"] == proxy.message_id
    assert span.status.status_code is trace.StatusCode.ERROR and span.events[0].name == "exception"
    assert (
        proxy.options["trace_context"]["traceparent"].split("-")[2]
        == f"{span.get_span_context().span_id:016x}"
    )
    _, unsampled, _ = processed(0x02)
    assert type(unsampled) is trace.NonRecordingSpan
    assert (unsampled.get_span_context().span_id, unsampled.get_span_context().trace_flags) == (span_id, 0x02)
    assert provider.force_flush() and exporter.spans == [span], "only the sampled span is exported"

    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    with_another = middleware.spans.start_current("s", trace.SpanKind.CONSUMER, {}, span._parent)
    assert with_another is None, "another processor registered: the general path's on_start calls"
    provider.shutdown()


def test_a_queue_with_its_own_ratio_keeps_that_share_of_traces_through_the_fast_paths() -> None:
    """With ``tracing_queue_sample_ratios``, a message starting a trace is kept by its queue's ratio:
    through the root-send and one-step process paths (the sampler is decided without a call), a
    message to a queue at 0 carries an unsampled ``traceparent`` and records nothing at either end,
    while one to another queue records both spans."""
    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import ParentBased

    from actors.message_spans import MessageBatchSpanProcessor
    from actors.tracing import RunTraceIdGenerator, Tracing, root_sampler
    from config import Settings

    settings = Settings(tracing_sample_ratio=1.0, tracing_queue_sample_ratios={"hot": 0.0})
    exporter = _QueueReadingExporter()
    provider = TracerProvider(sampler=ParentBased(root_sampler(settings)), id_generator=RunTraceIdGenerator())
    provider.add_span_processor(MessageBatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    middleware = Tracing(tracer_provider=provider)
    assert middleware.spans._known_sampler, "the queue sampler keeps the fast paths"
    broker = StubBroker()
    current = {}
    for queue in ("hot", "cold"):
        actor = dramatiq.actor(lambda: None, broker=broker, actor_name=f"a_{queue}", queue_name=queue)
        for _ in range(20):
            message = actor.message()
            middleware.before_enqueue(broker, message, None)
            middleware.after_enqueue(broker, message, None)
            proxy = MessageProxy(dramatiq.Message.decode(message.encode()))
            middleware.before_process_message(broker, proxy)
            current.setdefault(queue, []).append(trace.get_current_span().is_recording())
            middleware.after_process_message(broker, proxy)
            flags = int(message.options["trace_context"]["traceparent"][-2:], 16)
            assert bool(flags & 0x01) == (queue == "cold"), queue
    assert provider.force_flush()
    names = [span._name for span in exporter.spans]
    assert names == ["send cold", "process cold"] * 20
    assert current == {"hot": [False] * 20, "cold": [True] * 20}
    provider.shutdown()
