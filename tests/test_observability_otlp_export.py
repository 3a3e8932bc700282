"""The wire encoder of the OTLP exporters writes exactly the request the SDK's encoder builds."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
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

from actors.telemetry import encode_spans, grpc_span_exporter, http_span_exporter


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


def test_span_records_encode_as_the_sdk_encodes_their_spans() -> None:
    """A span without events, links or trace state waits for export as a record (a plain tuple); the
    request built from records, mixed with the spans that stay spans, is the SDK encoder's."""
    from actors.telemetry import RECORD_FIELDS, span_record

    spans = _spans_of_every_shape()
    queued = [span_record(span) or span for span in spans]
    recorded = [span.name for span, item in zip(spans, queued, strict=True) if type(item) is tuple]
    assert recorded == ["ok", "", "send", "process", "send"], "links, events, a trace state: kept as spans"
    for batch, expected in ((queued, spans), (queued[::-1], spans[::-1])):
        assert ExportTraceServiceRequest.FromString(encode_spans(batch)) == sdk_encode_spans(expected)
    bare = ReadableSpan("bare", context=spans[3].context, attributes=None, start_time=1, end_time=2)
    assert span_record(bare)[RECORD_FIELDS:] == (), "no attributes: none recorded"
    for incomplete in (
        ReadableSpan("no times", context=spans[3].context),
        ReadableSpan("no context", start_time=1, end_time=2),
        ReadableSpan("no kind", context=spans[3].context, kind=None, start_time=1, end_time=2),
    ):
        assert span_record(incomplete) is None, f"{incomplete.name}: waits as itself"


def test_spans_of_tracers_made_per_call_share_their_scopes_record_origin(monkeypatch) -> None:
    """A tracer got per call has a scope object of its own: its spans' records share the origin of
    the equal scope (one ``ScopeSpans`` in the request, the registry grows by one); once
    ``MAX_RECORD_ORIGINS`` are taken, spans of a new origin wait as themselves and export the same."""
    from actors.telemetry import message_spans, span_record

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "origins"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for n in range(50):
        provider.get_tracer("per.call", "1").start_span(f"s{n}").end()
    provider.get_tracer("other").start_span("other").end()
    spans = exporter.get_finished_spans()
    before = len(message_spans._origins)
    records = [span_record(span) for span in spans]
    assert len(message_spans._origins) == before + 2 and len({record[0] for record in records}) == 2
    request = ExportTraceServiceRequest.FromString(encode_spans(records))
    assert [len(scope.spans) for scope in request.resource_spans[0].scope_spans] == [50, 1]
    assert request == sdk_encode_spans(spans)
    monkeypatch.setattr(message_spans, "MAX_RECORD_ORIGINS", len(message_spans._origins))
    provider.get_tracer("yet.another").start_span("late").end()
    late = exporter.get_finished_spans()[-1]
    assert span_record(late) is None, "no origin left: the span waits as itself"
    assert ExportTraceServiceRequest.FromString(encode_spans([*records, late])) == sdk_encode_spans(
        [*spans, late]
    )


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
    Tracing middleware's own spans (built by ``actors.telemetry.message_spans``), encode as the SDK does."""
    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker

    from actors.telemetry import Tracing

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

    from actors.telemetry import MessageBatchSpanProcessor, MessageSpan, Tracing

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
    kept per length: every length (one byte and two byte varints, multi-byte characters) as the SDK,
    from spans and from span records."""
    from actors.telemetry import span_record

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
    records = [span_record(span) for span in spans]
    assert ExportTraceServiceRequest.FromString(encode_spans(records)) == sdk_encode_spans(spans)


class _QueueReadingExporter(InMemorySpanExporter):
    """Reads ``QueuedSpan`` objects and span records, as tradeflow's OTLP exporters do: keeps what it is
    handed (``spans``) and the spans of the request :func:`encode_spans` builds of it (``received``)."""

    reads_queued_spans = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list = []
        self.received: list = []

    def export(self, spans):
        self.spans.extend(spans)
        request = ExportTraceServiceRequest.FromString(encode_spans(spans))
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.received.extend(scope_spans.spans)
        return super().export([])


def _id(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _traced_through_the_hooks(provider: TracerProvider, own: TracerProvider) -> None:
    """Two messages sent (one delayed, one retried) and processed (one failing, with an actor's own
    span from ``own`` inside), and one send whose enqueue never came back (ended as failed)."""
    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker

    from actors.telemetry import tracing as tracing_module

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


def test_queued_spans_export_as_the_sdk_encodes_the_sdk_paths_spans() -> None:
    """With an exporter that reads them (``reads_queued_spans``), the middleware's send spans are
    ``QueuedSpan``s and every span without events waits for export as a span record: the request
    built from what was queued is the one the SDK's encoder builds from the SDK's own span objects
    (a second processor on the providers makes the middleware use them), ids and times aside; each
    process span is the child of its send, and the actor's span nests under it."""
    from actors.telemetry import MessageBatchSpanProcessor, MessageSpan, RunTraceIdGenerator

    requests, exporters = {}, {}
    for queued in (True, False):
        exporter, memory = _QueueReadingExporter(), InMemorySpanExporter()
        processor = MessageBatchSpanProcessor(exporter, schedule_delay_millis=60_000)
        assert processor.reads_queued_spans
        providers = [
            TracerProvider(
                resource=Resource.create({"service.name": name}), id_generator=RunTraceIdGenerator()
            )
            for name in ("a", "b")
        ]
        for provider in providers:
            if not queued:
                provider.add_span_processor(SimpleSpanProcessor(memory))
            provider.add_span_processor(processor)
        _traced_through_the_hooks(*providers)
        assert processor.force_flush()
        assert len(exporter.spans) == 8
        if queued:
            requests[queued] = _comparable(encode_spans(exporter.spans))
        else:
            requests[queued] = _comparable(sdk_encode_spans(memory.get_finished_spans()).SerializeToString())
        exporters[queued] = exporter
        processor.shutdown()
    queued_types = [type(span) for span in exporters[True].spans]
    assert queued_types.count(tuple) == 7, "every span but the failed attempt's (an exception event)"
    assert queued_types.count(MessageSpan) == 1
    assert requests[True] == requests[False]
    statuses = [span.status.message for _, _, span in requests[True] if span.name == "send default"]
    assert statuses.count("enqueue did not complete") == 1
    by_name: dict[str, list] = {}
    for span in exporters[True].received:
        by_name.setdefault(span.name, []).append(span)
    for n in range(2):
        send, inside, process = (by_name[name][n] for name in ("send default", "inside", "process default"))
        assert process.parent_span_id == send.span_id and process.trace_id == send.trace_id
        assert inside.parent_span_id == process.span_id, "the actor's span nests under it"


def test_spans_waiting_for_export_leave_the_garbage_collector_nothing_to_track() -> None:
    """The spans of 500 messages sent and processed through the hooks wait for export as records the
    collector no longer tracks: the objects it tracks grow by a handful, not by thousands.  (Queued
    as objects, every span kept half a dozen tracked objects alive until its export, which reached
    the oldest generation and made a worker collect its whole heap every few thousand messages.)"""
    import gc

    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker

    from actors.telemetry import MessageBatchSpanProcessor, RunTraceIdGenerator, Tracing

    exporter = _QueueReadingExporter()
    processor = MessageBatchSpanProcessor(
        exporter, schedule_delay_millis=60_000, max_queue_size=4096, max_export_batch_size=4096
    )
    provider = TracerProvider(id_generator=RunTraceIdGenerator())
    provider.add_span_processor(processor)
    tracing = Tracing(tracer_provider=provider)
    broker = StubBroker()
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="collected")

    def send_and_process(count: int) -> None:
        for _ in range(count):
            message = actor.message()
            tracing.before_enqueue(broker, message, None)
            tracing.after_enqueue(broker, message, None)
            proxy = MessageProxy(dramatiq.Message.decode(message.encode()))
            tracing.before_process_message(broker, proxy)
            tracing.after_process_message(broker, proxy)

    send_and_process(20)  # caches filled
    gc.collect()
    tracked = len(gc.get_objects())
    send_and_process(500)
    gc.collect()
    queue = list(processor._batch_processor._queue)
    assert len(queue) == 1040
    assert all(type(item) is tuple and not gc.is_tracked(item) for item in queue)
    assert len(gc.get_objects()) - tracked < 100
    assert processor.force_flush() and len(exporter.received) == 1040
    assert [span.name for span in exporter.received[-2:]] == ["send default", "process default"]
    provider.shutdown()


def test_an_exporter_that_does_not_read_queued_spans_gets_sdk_spans() -> None:
    """A ``QueuedSpan`` is only ever handed to an exporter that says it reads them: any other
    exporter gets the SDK's spans, which it can read through their public properties."""
    from actors.telemetry import MessageBatchSpanProcessor, QueuedSpan

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

    from actors.telemetry import MessageBatchSpanProcessor, QueuedSpan, RunTraceIdGenerator, Tracing

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
        spans = exporter.received
        assert len(spans) == 3
        assert (_id(spans[0].trace_id), _id(spans[0].span_id)) == (trace_id, span_id)
        assert spans[0].parent_span_id == b"" and spans[0].end_time_unix_nano >= spans[0].start_time_unix_nano
        assert _id(spans[1].parent_span_id) == inside.get_span_context().span_id
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

    from actors.telemetry import MessageBatchSpanProcessor, MessageSpan, RunTraceIdGenerator, Tracing
    from actors.telemetry import tracing as tracing_module

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

    from actors.settings import Settings
    from actors.telemetry import MessageBatchSpanProcessor, RunTraceIdGenerator, Tracing, root_sampler

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
    names = [span.name for span in exporter.received]
    assert names == ["send cold", "process cold"] * 20
    assert current == {"hot": [False] * 20, "cold": [True] * 20}
    provider.shutdown()
