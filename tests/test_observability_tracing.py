"""Tracing middleware: spans, attributes, errors, detached contexts, retries, workflows, and a
cross-process trace exported over OTLP/HTTP by real worker processes."""

from __future__ import annotations

import logging
import time

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, CurrentMessage, Pipelines, Retries
from obs_actors import QUEUE, declare
from obs_support import result_of, start_workers, stop_workers
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
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

from actors.runtime import build_broker
from actors.settings import Settings
from actors.telemetry import TraceIdFormatter, Tracing, tracer_provider_for, tracing
from saga.run_tracing import (
    ATTRIBUTES_OPTION,
    LINKS_OPTION,
    NEXT_TRACE_ID,
    PARENT_OPTION,
    WORKFLOW_COMPENSATION,
    WORKFLOW_RUN_ID,
    WORKFLOW_STEP,
    run_trace_id,
)

pytest_plugins = ["obs_fixtures"]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _stub_broker(provider: TracerProvider, *, tracing_first: bool = True) -> StubBroker:
    middleware = [AgeLimit(), Pipelines(), Retries(min_backoff=10, max_backoff=20), CurrentMessage()]
    traced = Tracing(tracer_provider=provider)
    middleware = [traced, *middleware] if tracing_first else [*middleware, traced]
    broker = StubBroker(middleware=middleware)
    broker.emit_after("process_boot")
    return broker


def _run(broker: StubBroker, queue: str = "default") -> None:
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    try:
        broker.join(queue, fail_fast=False, timeout=10_000)
        worker.join()
    finally:
        worker.stop()


def _by_name(spans, name: str) -> list:
    return [span for span in spans if span.name == name]


def test_send_and_process_spans_carry_messaging_attributes(provider, exporter) -> None:
    broker = _stub_broker(provider)
    seen = {}

    @dramatiq.actor(broker=broker, queue_name="orders")
    def place(order: int) -> None:
        seen["span"] = trace.get_current_span().get_span_context()

    message = place.send(7)
    _run(broker, "orders")

    (send,) = _by_name(exporter.get_finished_spans(), "send orders")
    (process,) = _by_name(exporter.get_finished_spans(), "process orders")
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id
    assert seen["span"].span_id == process.context.span_id, "the process span is current in the actor"
    for span, operation in ((send, "send"), (process, "process")):
        assert span.attributes["messaging.system"] == "dramatiq"
        assert span.attributes["messaging.operation.type"] == operation
        assert span.attributes["messaging.destination.name"] == "orders"
        assert span.attributes["messaging.message.id"] == message.message_id
        assert span.attributes["messaging.dramatiq.actor"] == "place"
        assert span.attributes["messaging.dramatiq.retry_count"] == 0


def test_exception_is_recorded_with_error_status_and_context_detached(provider, exporter) -> None:
    middleware = Tracing(tracer_provider=provider)
    stub = StubBroker()

    @dramatiq.actor(broker=stub, max_retries=0)
    def boom() -> None: ...

    message = boom.message()
    middleware.before_enqueue(stub, message, None)
    middleware.after_enqueue(stub, message, None)
    proxy = MessageProxy(message)
    middleware.before_process_message(stub, proxy)
    assert trace.get_current_span().get_span_context().is_valid
    proxy.fail()
    middleware.after_process_message(stub, proxy, exception=KeyError("missing"))

    assert not trace.get_current_span().get_span_context().is_valid, "context leaked after processing"
    (process,) = _by_name(exporter.get_finished_spans(), "process default")
    assert process.status.status_code is StatusCode.ERROR
    assert "KeyError" in process.status.description
    assert [event.name for event in process.events] == ["exception"]
    assert process.events[0].attributes["exception.type"] == "KeyError"
    assert process.attributes["messaging.dramatiq.will_retry"] is False


def test_skipped_message_ends_its_span_and_detaches(provider, exporter) -> None:
    broker = _stub_broker(provider)

    @dramatiq.actor(broker=broker)
    def stale() -> None:
        raise AssertionError("a message older than max_age must not run")

    stale.send_with_options(max_age=1)
    time.sleep(0.05)
    _run(broker)

    (process,) = _by_name(exporter.get_finished_spans(), "process default")
    assert process.attributes["messaging.dramatiq.skipped"] is True
    assert process.status.status_code is StatusCode.ERROR
    assert not trace.get_current_span().get_span_context().is_valid


@pytest.mark.parametrize("tracing_first", [True, False], ids=["tracing-first", "tracing-last"])
def test_retry_continues_the_original_trace(provider, exporter, tracing_first: bool) -> None:
    """Whatever the middleware order, the retry's spans stay in the first attempt's trace."""
    broker = _stub_broker(provider, tracing_first=tracing_first)
    attempts = []

    @dramatiq.actor(broker=broker, max_retries=2)
    def flaky() -> None:
        attempts.append(trace.get_current_span().get_span_context().trace_id)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    flaky.send()
    _run(broker)

    spans = exporter.get_finished_spans()
    processes = _by_name(spans, "process default")
    assert len(processes) == 2 and len(attempts) == 2
    assert len({span.context.trace_id for span in spans}) == 1, [span.name for span in spans]
    failed, retried = sorted(processes, key=lambda span: span.start_time)
    assert failed.status.status_code is StatusCode.ERROR
    assert retried.status.status_code is StatusCode.UNSET
    assert retried.attributes["messaging.dramatiq.retry_count"] == 1
    retry_sends = [
        s for s in _by_name(spans, "send default") if s.attributes["messaging.dramatiq.retry_count"]
    ]
    assert retry_sends and retry_sends[0].parent.span_id == failed.context.span_id


def test_pipeline_is_one_trace_nested_step_by_step(provider, exporter) -> None:
    broker = _stub_broker(provider)
    step = dramatiq.actor(lambda value: value + 1, broker=broker, actor_name="step")

    dramatiq.pipeline([step.message(1), step.message(), step.message()], broker=broker).run()
    _run(broker)

    spans = exporter.get_finished_spans()
    assert len({span.context.trace_id for span in spans}) == 1
    by_id = {span.context.span_id: span for span in spans}
    chain = [span.name for span in spans if span.name == "process default"]
    assert len(chain) == 3
    # every send after the first is made inside the previous step's process span
    nested_sends = [s for s in _by_name(spans, "send default") if s.parent is not None]
    assert len(nested_sends) == 2
    assert all(by_id[s.parent.span_id].name == "process default" for s in nested_sends)


def test_trace_options_give_a_messages_spans_their_parent_links_and_attributes(provider, exporter) -> None:
    """The message-level contract any producer can use: ``trace_parent``, ``trace_links`` and
    ``trace_attributes`` options (the saga engine sets ``trace_links`` on a large fan-out)."""
    broker = _stub_broker(provider)
    step = dramatiq.actor(lambda: None, broker=broker, actor_name="wf_step")
    with provider.get_tracer("producer").start_as_current_span("workflow settle") as root:
        pass
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=set_span_in_context(root))
    step.send_with_options(**{PARENT_OPTION: carrier, ATTRIBUTES_OPTION: {WORKFLOW_STEP: "reserve"}})
    attributes = {WORKFLOW_STEP: "refund", WORKFLOW_COMPENSATION: True}
    step.send_with_options(**{PARENT_OPTION: carrier, ATTRIBUTES_OPTION: attributes})
    step.send_with_options(**{LINKS_OPTION: [carrier], ATTRIBUTES_OPTION: {WORKFLOW_STEP: "fan"}})
    _run(broker)

    spans = exporter.get_finished_spans()
    run_trace = root.get_span_context().trace_id
    nested = [s for s in spans if s.attributes.get(WORKFLOW_STEP) in ("reserve", "refund")]
    assert len(nested) == 4 and all(s.context.trace_id == run_trace for s in nested)
    sends = [s for s in nested if s.kind is SpanKind.PRODUCER]
    assert all(s.parent.span_id == root.get_span_context().span_id for s in sends)
    compensations = [s.attributes.get(WORKFLOW_COMPENSATION) for s in nested if s.kind is SpanKind.CONSUMER]
    assert compensations.count(True) == 1
    fanned = [s for s in spans if s.attributes.get(WORKFLOW_STEP) == "fan"]
    send = next(s for s in fanned if s.kind is SpanKind.PRODUCER)
    assert send.context.trace_id != run_trace and send.parent is None
    assert [link.context.span_id for link in send.links] == [root.get_span_context().span_id]


def test_tracing_off_installs_nothing(obs_settings: Settings) -> None:
    settings = obs_settings
    broker = build_broker(settings)
    assert settings.tracing_exporter == "none"
    assert not any(isinstance(m, Tracing) for m in broker.middleware)
    assert tracer_provider_for(settings) is None


def test_unknown_exporter_is_a_clear_settings_error() -> None:
    with pytest.raises(ValueError, match="tracing_exporter"):
        Settings(tracing_exporter="zipkin")


def test_log_lines_carry_trace_ids(provider) -> None:
    tracing.install_log_trace_ids()
    formatter = TraceIdFormatter(logging.Formatter("%(message)s"))
    with provider.get_tracer("t").start_as_current_span("work") as span:
        record = logging.getLogger("t").makeRecord("t", logging.INFO, __file__, 1, "hello", (), None)
    trace_id = trace.format_trace_id(span.get_span_context().trace_id)
    assert formatter.format(record) == f"hello [trace_id={trace_id} span_id={record.span_id}]"
    outside = logging.getLogger("t").makeRecord("t", logging.INFO, __file__, 1, "plain", (), None)
    assert formatter.format(outside) == "plain"


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_cross_process_trace_over_otlp_http(obs_settings: Settings) -> None:
    """A 3-step pipeline and a failing-then-retried actor, run by real worker processes."""
    with OTLPReceiver() as receiver:
        producer_settings = obs_settings.model_copy(
            update={"tracing_exporter": "otlp-http", "tracing_endpoint": receiver.url}
        )
        broker = build_broker(producer_settings)
        declared = declare(broker)
        provider = tracer_provider_for(producer_settings)
        workers = start_workers(
            obs_settings,
            TRADEFLOW_TRACING_EXPORTER="otlp-http",
            TRADEFLOW_TRACING_ENDPOINT=receiver.url,
            TRADEFLOW_TRACING_SERVICE_NAME="tradeflow-worker",
        )
        try:
            with provider.get_tracer("test").start_as_current_span("test run") as root:
                step = declared["obs_step"]
                pipe = dramatiq.pipeline([step.message(1), step.message(), step.message()], broker=broker)
                pipe.run()
            flaky_message = declared["obs_flaky"].send(5)
            assert result_of(broker, pipe.messages[-1]) == 4
            assert result_of(broker, flaky_message) == 5
            provider.force_flush()
            trace_id = trace.format_trace_id(root.get_span_context().trace_id)

            def complete(spans) -> bool:
                in_trace = [s for s in spans if s.trace_id == trace_id]
                flaky = [
                    s for s in spans if s.attributes.get("messaging.message.id") == flaky_message.message_id
                ]
                return len(in_trace) >= 10 and len([s for s in flaky if s.kind == "CONSUMER"]) == 2

            spans = receiver.wait_for(complete, timeout=45)
        finally:
            stderr = stop_workers(workers)
            # While its receiver still listens: left running, the provider's exporter would retry
            # at interpreter exit against the closed port for about ten seconds.
            provider.shutdown()

    in_trace = [s for s in spans if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in in_trace}
    processes = [s for s in in_trace if s.name == f"process {QUEUE}"]
    assert len(processes) == 3 and {s.service for s in processes} == {"tradeflow-worker"}
    # root -> send -> process -> (work, send) -> process -> ... : every hop is a child of the one before
    for process in processes:
        send = by_id[process.parent_span_id]
        assert send.kind == "PRODUCER" and send.name == f"send {QUEUE}"
        assert send.parent_span_id in by_id
    work = [s for s in in_trace if s.name == "obs_step work"]
    assert len(work) == 3 and all(by_id[s.parent_span_id].name == f"process {QUEUE}" for s in work)
    assert f"trace_id={trace_id}" in stderr, "worker log lines carry the trace id"

    flaky = [s for s in spans if s.attributes.get("messaging.message.id") == flaky_message.message_id]
    assert len({s.trace_id for s in flaky}) == 1, "the retry continues the first attempt's trace"
    failed, succeeded = sorted(
        (s for s in flaky if s.kind == "CONSUMER"),
        key=lambda s: s.attributes["messaging.dramatiq.retry_count"],
    )
    assert failed.status == "ERROR" and "exception" in failed.events
    assert succeeded.status == "UNSET" and succeeded.attributes["messaging.dramatiq.retry_count"] == 1


def test_unsampled_traces_propagate_their_decision_without_spans(exporter) -> None:
    unsampled = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    unsampled.add_span_processor(SimpleSpanProcessor(exporter))
    broker = _stub_broker(unsampled)
    seen = []

    @dramatiq.actor(broker=broker, actor_name="quiet")
    def quiet(value: int) -> int:
        seen.append(trace.get_current_span().get_span_context())
        return value

    dramatiq.pipeline([quiet.message(1), quiet.message(), quiet.message()], broker=broker).run()
    _run(broker)

    assert exporter.get_finished_spans() == ()
    assert len(seen) == 3 and len({span_context.trace_id for span_context in seen}) == 1, "one trace"
    assert all(span_context.is_valid and not span_context.trace_flags.sampled for span_context in seen)
    assert not trace.get_current_span().get_span_context().is_valid


def test_an_unsampled_send_carries_its_decision_and_leaves_nothing_open() -> None:
    """A send the sampler drops writes its ``traceparent`` (sampled flag off) and keeps no open send span
    for ``after_enqueue`` to find: at a low sampling ratio most sends cost no bookkeeping."""
    middleware = tracing.Tracing(tracer_provider=TracerProvider(sampler=ParentBased(ALWAYS_OFF)))
    broker = StubBroker()
    message = dramatiq.actor(lambda: None, broker=broker, actor_name="dropped").message()
    middleware.before_enqueue(broker, message, None)
    flags = message.options[tracing.CONTEXT_OPTION]["traceparent"].rsplit("-", 1)[1]
    assert not int(flags, 16) & 0x01, "the sampled flag is off"
    assert not middleware._send_spans
    middleware.after_enqueue(broker, message, None)


def test_steps_of_a_workflow_run_share_the_runs_trace_whoever_sends_them(exporter) -> None:
    """The engine's step messages (``saga`` option) join their run's trace without a stored carrier."""
    provider = TracerProvider(id_generator=tracing.RunTraceIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = _stub_broker(provider)

    @dramatiq.actor(broker=broker, queue_name="settle")
    def settle_step(name: str) -> None:
        if name == "reserve":  # the engine dispatches the next step from within this one
            settle_step.send_with_options(args=("charge",), saga=_saga("run-1", "charge"))

    # the engine starting the run (no span), and an unrelated request's span starting another
    settle_step.send_with_options(args=("reserve",), saga=_saga("run-1", "reserve"))
    with provider.get_tracer("api").start_as_current_span("POST /runs") as request:
        settle_step.send_with_options(args=("other",), saga=_saga("run-2", "reserve"))
    _run(broker, "settle")
    # recovery re-sending a lost step, and a compensation, from the engine's maintenance (no span)
    settle_step.send_with_options(args=("refund",), saga=_saga("run-1", "refund", kind="compensate"))
    _run(broker, "settle")

    spans = exporter.get_finished_spans()
    run_1 = [s for s in spans if s.attributes.get("tradeflow.workflow.run_id") == "run-1"]
    assert len(run_1) == 6, [s.name for s in run_1]
    assert {s.context.trace_id for s in run_1} == {run_trace_id("run-1")}, "the whole run is one trace"
    by_step = {(s.attributes[WORKFLOW_STEP], s.kind): s for s in run_1}
    charge_send = by_step[("charge", SpanKind.PRODUCER)]
    assert charge_send.parent.span_id == by_step[("reserve", SpanKind.CONSUMER)].context.span_id
    assert by_step[("refund", SpanKind.PRODUCER)].attributes[WORKFLOW_COMPENSATION] is True
    assert by_step[("charge", SpanKind.PRODUCER)].attributes[WORKFLOW_COMPENSATION] is False
    other = [s for s in spans if s.attributes.get("tradeflow.workflow.run_id") == "run-2"]
    assert {s.context.trace_id for s in other} == {run_trace_id("run-2")}, "not the request's trace"
    started_by = next(s for s in other if s.kind == SpanKind.PRODUCER).links
    assert [link.context.span_id for link in started_by] == [request.get_span_context().span_id]


def _saga(run: str, step: str, *, kind: str = "step") -> dict:
    return {"run": run, "step": step, "kind": kind, "epoch": 0}


@pytest.mark.timeout(60)
def test_engine_opens_a_runs_root_span_its_steps_nest_under(exporter, settings) -> None:
    """``SagaEngine.start`` opens ``workflow {name}`` in the run's own trace; the first step's send
    span is its child, later steps join the same trace, and the caller's span is linked."""
    from saga_helpers import running_stack, wait_for_run

    from actors.broker import enqueue_messages
    from saga import SagaEngine, Step, Workflow

    provider = TracerProvider(id_generator=tracing.RunTraceIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with running_stack(settings, worker=False) as stack:
        stack.broker.add_middleware(
            Tracing(tracer_provider=provider), before=type(stack.broker.middleware[0])
        )
        engine = SagaEngine(
            database=stack.db, broker=stack.broker, send_many=enqueue_messages, tracer_provider=provider
        )
        worker = dramatiq.Worker(stack.broker, worker_threads=2, worker_timeout=100)
        worker.start()
        try:
            workflow = Workflow(
                "traced",
                [
                    Step("first", "record", args=("a",)),
                    Step("second", "record", args=("b",), depends_on=["first"]),
                ],
            )
            with provider.get_tracer("api").start_as_current_span("POST /runs") as request:
                run_id = engine.start(workflow)
            assert wait_for_run(stack.db, run_id).status == "succeeded"
        finally:
            worker.stop(timeout=10_000)
    spans = exporter.get_finished_spans()
    (root,) = _by_name(spans, "workflow traced")
    assert root.context.trace_id == run_trace_id(run_id) and root.parent is None
    assert [link.context.span_id for link in root.links] == [request.get_span_context().span_id]
    steps = [s for s in spans if s.attributes.get("tradeflow.workflow.run_id") == run_id and s is not root]
    assert {s.attributes[WORKFLOW_STEP] for s in steps} == {"first", "second"}
    assert {s.context.trace_id for s in steps} == {root.context.trace_id}, "the run is one trace"
    first_send = next(
        s for s in steps if s.attributes[WORKFLOW_STEP] == "first" and s.kind == SpanKind.PRODUCER
    )
    assert first_send.parent.span_id == root.context.span_id


class _RecordingProcessor(SpanProcessor):
    """Records every span processors are handed, at start and at end."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: list[str] = []

    def on_start(self, span, parent_context=None) -> None:
        self.started.append(span.name)

    def on_end(self, span) -> None:
        self.ended.append(span.name)


class _AddingSampler(Sampler):
    """Samples every span and adds an attribute of its own, as a custom sampler may."""

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None):
        return SamplingResult(Decision.RECORD_AND_SAMPLE, {**(attributes or {}), "sampler.added": name})

    def get_description(self) -> str:
        return "adding"


def _fields(span) -> dict:
    """A finished span's fields, ids of its own and times left out."""
    return {
        "name": span.name,
        "kind": span.kind,
        "trace_id": span.context.trace_id,
        "flags": span.context.trace_flags,
        "trace_state": span.context.trace_state,
        "parent": span.parent,
        "attributes": dict(span.attributes),
        "dropped": span.dropped_attributes,
        "links": [(link.context, dict(link.attributes or {})) for link in span.links],
        "events": [(event.name, dict(event.attributes or {})) for event in span.events],
        "status": (span.status.status_code, span.status.description),
        "resource": span.resource,
        "scope": span.instrumentation_scope,
    }


@pytest.mark.parametrize(
    "sampler",
    [None, ParentBased(TraceIdRatioBased(0.5)), ParentBased(ALWAYS_OFF), _AddingSampler()],
    ids=["default", "ratio", "off", "custom"],
)
def test_middleware_spans_are_the_sdks_spans_and_reach_every_processor(sampler) -> None:
    """``SpanStarter`` (no re-validation of the middleware's own attributes) starts the span
    ``tracer.start_span`` would, through the provider's sampler, ids, limits and processors."""
    from actors.telemetry import SpanStarter

    exporter, recorder = InMemorySpanExporter(), _RecordingProcessor()
    ids = tracing.RunTraceIdGenerator()
    provider = (
        TracerProvider(sampler=sampler, id_generator=ids) if sampler else TracerProvider(id_generator=ids)
    )
    provider.add_span_processor(recorder)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tradeflow.test")
    starter = SpanStarter(tracer)
    assert starter.direct, "the SDK in use no longer has the shape the fast path was written for"
    remote = SpanContext(
        0xA1, 0xB2, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")])
    )
    unsampled = SpanContext(0xA3, 0xB4, is_remote=True, trace_flags=TraceFlags(0))
    parents = [
        None,
        set_span_in_context(NonRecordingSpan(remote)),
        set_span_in_context(NonRecordingSpan(unsampled)),
    ]
    attributes = {"messaging.system": "dramatiq", "messaging.dramatiq.retry_count": 3, "flag": True}
    extra = {"listed": [1, 2], "step": "reserve"}  # from message options: validated (list -> tuple)
    links = [Link(SpanContext(0xC1, 0xD2, is_remote=True), {"why": "fan-out"})]

    def start(fast: bool, parent):
        if fast:
            return starter.start(
                "s",
                parent=parent,
                kind=SpanKind.PRODUCER,
                attributes=dict(attributes),
                extra=extra,
                links=links,
            )
        return tracer.start_span(
            "s", context=parent, kind=SpanKind.PRODUCER, attributes={**attributes, **extra}, links=links
        )

    for parent in parents:
        for fast in (True, False):
            token = NEXT_TRACE_ID.set(0xFEED)  # root spans get the same trace id both ways
            try:
                span = start(fast, parent)
            finally:
                NEXT_TRACE_ID.reset(token)
            span.set_attribute("late", ["x"])
            span.record_exception(ValueError("boom"))
            span.add_link(remote)
            span.set_status(Status(StatusCode.ERROR, "bad"))
            span.end()
    spans = exporter.get_finished_spans()
    assert len(spans) % 2 == 0 and recorder.started == recorder.ended == ["s"] * len(spans)
    for fast, sdk in zip(spans[::2], spans[1::2], strict=True):
        fast_fields, sdk_fields = _fields(fast), _fields(sdk)
        for fields in (fast_fields, sdk_fields):  # the exception events carry the stack trace
            fields["events"] = [(name, attrs.get("exception.type")) for name, attrs in fields["events"]]
        assert fast_fields == sdk_fields
    if sampler is None:
        assert spans and all(dict(span.attributes)["listed"] == (1, 2) for span in spans)


def test_carriers_read_and_written_as_the_global_propagator_does() -> None:
    """``traceparent`` written and read directly gives what ``propagate.inject``/``extract`` give, and
    anything else (trace state, baggage, odd headers, another propagator) goes through them."""
    from opentelemetry import baggage, context, propagate
    from opentelemetry.propagators.textmap import TextMapPropagator

    from actors.telemetry import carrier_of, context_from

    def injected(span) -> dict:
        carrier: dict = {}
        propagate.inject(carrier, context=set_span_in_context(span))
        return carrier

    spans = [
        NonRecordingSpan(
            SpanContext(0xA1, 0xB2, is_remote=False, trace_flags=TraceFlags(flags), trace_state=state)
        )
        for flags in (0, 1, 3)
        for state in (None, TraceState([("k", "v")]))
    ]
    for span in [*spans, NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)]:
        assert carrier_of(span) == injected(span)
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        assert carrier_of(spans[2]) == injected(spans[2]) and "baggage" in carrier_of(spans[2])
    finally:
        context.detach(token)

    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    carriers = [
        {"traceparent": f"00-{trace_id}-{span_id}-01"},
        {"traceparent": f"00-{trace_id}-{span_id}-00"},
        {"traceparent": f"00-{trace_id}-{span_id}-01", "tracestate": "k=v"},
        {"traceparent": f"00-{trace_id}-{span_id}-01", "baggage": "tenant=acme"},
        {"traceparent": f"00-{trace_id.upper()}-{span_id}-01"},
        {"traceparent": f"  00-{trace_id}-{span_id}-01"},
        {"traceparent": f"01-{trace_id}-{span_id}-01-future"},
        {"traceparent": f"ff-{trace_id}-{span_id}-01"},
        {"traceparent": f"00-{'0' * 32}-{span_id}-01"},
        {"traceparent": f"00-{trace_id}-{'0' * 16}-01"},
        {"traceparent": "garbage"},
        {"other": "x"},
    ]
    for carrier in carriers:
        expected = propagate.extract(carrier)
        got = context_from(carrier) or context.Context()
        assert (
            trace.get_current_span(got).get_span_context()
            == trace.get_current_span(expected).get_span_context()
        ), carrier
        assert baggage.get_all(got) == baggage.get_all(expected), carrier

    class Custom(TextMapPropagator):
        """Another format: carried under its own key."""

        def inject(self, carrier, context=None, setter=None) -> None:
            span_context = trace.get_current_span(context).get_span_context()
            carrier["x-trace"] = f"{span_context.trace_id:x}:{span_context.span_id:x}"

        def extract(self, carrier, context=None, getter=None):
            trace_part, span_part = carrier["x-trace"].split(":")
            remote = SpanContext(int(trace_part, 16), int(span_part, 16), is_remote=True)
            return set_span_in_context(NonRecordingSpan(remote))

        @property
        def fields(self) -> set:
            return {"x-trace"}

    default = propagate.get_global_textmap()
    propagate.set_global_textmap(Custom())
    try:
        assert carrier_of(spans[2]) == {"x-trace": "a1:b2"}
        extracted = context_from({"traceparent": f"00-{trace_id}-{span_id}-01", "x-trace": "a1:b2"})
        assert trace.get_current_span(extracted).get_span_context().span_id == 0xB2
        assert context_from({"x-trace": "a1:b2"}) is not None
    finally:
        propagate.set_global_textmap(default)


def _traced_messages(provider: TracerProvider) -> None:
    """A sent and processed message, a retried attempt that failed, and a skipped one, through the hooks."""
    middleware = Tracing(tracer_provider=provider)
    broker = StubBroker()
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="lone", queue_name="lone")
    for outcome in ("ok", "failed", "skipped"):
        message = actor.message_with_options(retries=1, **{ATTRIBUTES_OPTION: {"extra": outcome}})
        token = NEXT_TRACE_ID.set(0xFEED)  # both providers' roots in the same trace
        try:
            middleware.before_enqueue(broker, message, 50)
        finally:
            NEXT_TRACE_ID.reset(token)
        middleware.after_enqueue(broker, message, 50)
        proxy = MessageProxy(dramatiq.Message.decode(message.encode()))
        middleware.before_process_message(broker, proxy)
        if outcome == "ok":
            trace.get_current_span().set_attribute("set.by.actor", 1)
            middleware.after_process_message(broker, proxy, result=None)
        elif outcome == "failed":
            proxy.fail()
            middleware.after_process_message(broker, proxy, exception=ValueError("boom"))
        else:
            middleware.after_skip_message(broker, proxy)


def test_a_lone_message_batch_processor_exports_the_middlewares_spans_as_the_sdk_path_does() -> None:
    """Alone on a provider, ``MessageBatchSpanProcessor`` is handed the middleware's spans themselves
    (no ``ReadableSpan`` copy); with any other processor registered, every processor gets the SDK's
    copies; both export the same spans."""
    from actors.telemetry import MessageBatchSpanProcessor, MessageSpan

    exported = {}
    for lone in (True, False):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(id_generator=tracing.RunTraceIdGenerator())
        recorder = _RecordingProcessor()
        if not lone:
            provider.add_span_processor(recorder)
        processor = MessageBatchSpanProcessor(exporter, schedule_delay_millis=60_000)
        assert processor.direct, "the SDK's batch processor no longer has the fields on_end reads"
        provider.add_span_processor(processor)
        _traced_messages(provider)
        assert provider.force_flush()
        spans = exporter.get_finished_spans()
        assert {type(span) for span in spans} == ({MessageSpan} if lone else {ReadableSpan})
        assert len(recorder.ended) == (0 if lone else len(spans))
        exported[lone] = spans
        provider.shutdown()
    fast, sdk = ([_fields(span) for span in exported[lone]] for lone in (True, False))
    assert len(fast) == 6 and [fields["name"] for fields in fast] == [fields["name"] for fields in sdk]
    for fields in (*fast, *sdk):  # the exception events carry the stack trace; ids differ
        fields["events"] = [(name, attrs.get("exception.type")) for name, attrs in fields["events"]]
        fields["parent"] = fields["parent"] is not None
        fields["attributes"].pop("messaging.message.id")
        fields["resource"] = dict(fields["resource"].attributes)
    assert fast == sdk
    assert exported[True][1].attributes["set.by.actor"] == 1
    assert exported[True][3].status.status_code is StatusCode.ERROR


def test_message_batch_processor_keeps_the_sdks_queue_flush_and_shutdown() -> None:
    """Spans are queued until a flush exports them, oldest first; after shutdown none is."""
    from actors.telemetry import MessageBatchSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    processor = MessageBatchSpanProcessor(
        exporter, max_queue_size=4, max_export_batch_size=4, schedule_delay_millis=60_000
    )
    provider.add_span_processor(processor)
    starter = Tracing(tracer_provider=provider).spans
    for n in range(3):
        starter.start(f"s{n}", parent=None, kind=SpanKind.PRODUCER, attributes={}).end()
    assert provider.force_flush()
    assert [span.name for span in exporter.get_finished_spans()] == ["s0", "s1", "s2"]
    provider.shutdown()
    starter.start("late", parent=None, kind=SpanKind.PRODUCER, attributes={}).end()
    assert [span.name for span in exporter.get_finished_spans()] == ["s0", "s1", "s2"]


class _RecordOnlySampler(Sampler):
    """Records every span without sampling it (exported by no batch processor)."""

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None):
        return SamplingResult(Decision.RECORD_ONLY, attributes)

    def get_description(self) -> str:
        return "record-only"


def test_recorded_but_unsampled_spans_are_recording_and_never_exported() -> None:
    """A RECORD_ONLY decision gives the SDK's recording, unsampled span; batch processors skip it."""
    from actors.telemetry import MessageBatchSpanProcessor, SpanStarter

    exporter, recorder = InMemorySpanExporter(), _RecordingProcessor()
    provider = TracerProvider(sampler=_RecordOnlySampler())
    provider.add_span_processor(recorder)
    provider.add_span_processor(MessageBatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracer = provider.get_tracer("tradeflow.test")
    ours = SpanStarter(tracer).start("ours", parent=None, kind=SpanKind.PRODUCER, attributes={"k": 1})
    sdks = tracer.start_span("sdks", kind=SpanKind.PRODUCER, attributes={"k": 1})
    for span in (ours, sdks):
        assert span.is_recording() and not span.get_span_context().trace_flags.sampled
        span.end()
    assert ours.get_span_context().trace_flags == sdks.get_span_context().trace_flags
    assert recorder.ended == ["ours", "sdks"]
    provider.force_flush()
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


class _ParentRecordingSampler(Sampler):
    """Samples every span and keeps the span context of the parent each decision was given."""

    def __init__(self) -> None:
        self.parents: list = []

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None):
        self.parents.append(trace.get_current_span(parent_context).get_span_context())
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "parent-recording"


def test_a_resent_message_s_sampler_sees_the_context_it_carries() -> None:
    """A message re-enqueued with a context (a retry, a delayed message falling due) is sent under
    that context; a sampler the middleware cannot decide itself is handed it, not the current one."""
    sampler = _ParentRecordingSampler()
    provider = TracerProvider(sampler=sampler)
    middleware = Tracing(tracer_provider=provider)
    broker = StubBroker()
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="resent")
    first = actor.message()
    middleware.before_enqueue(broker, first, None)
    middleware.after_enqueue(broker, first, None)
    resent = dramatiq.Message.decode(first.encode())
    middleware.before_enqueue(broker, resent, 100)
    middleware.after_enqueue(broker, resent, 100)
    assert len(sampler.parents) == 2 and not sampler.parents[0].is_valid  # the first send is a root
    from actors.telemetry import parent_from
    from saga.run_tracing import CONTEXT_OPTION

    sent_context = parent_from(first.options[CONTEXT_OPTION])[1]
    assert sampler.parents[-1].span_id == sent_context.span_id
    assert sampler.parents[-1].trace_id == sent_context.trace_id
    provider.shutdown()


def test_queue_ratio_sampler_decides_by_queue_and_as_the_middleware_decides_it() -> None:
    """``QueueRatioSampler`` keeps a new trace by its first span's queue (others by the default); the
    middleware's fast paths decide it as its ``should_sample`` does, and children follow the parent."""
    import random

    from actors.telemetry import QueueRatioSampler
    from actors.telemetry.message_spans import _decidable, _decide

    sampler = ParentBased(QueueRatioSampler({"hot": 0.0, "warm": 0.5}, default=1.0))
    assert _decidable(sampler), "the fast paths would fall back to start_span"
    parents = [
        None,
        SpanContext(0xA1, 0xB2, is_remote=True, trace_flags=TraceFlags(1)),
        SpanContext(0xA1, 0xB2, is_remote=True, trace_flags=TraceFlags(0)),
    ]
    rng = random.Random(8)
    kept: dict = {}
    for queue in ("hot", "warm", "cold", None):
        attributes = {"messaging.destination.name": queue} if queue else {}
        for parent in parents:
            context = set_span_in_context(NonRecordingSpan(parent)) if parent else None
            for _ in range(200):
                trace_id = rng.getrandbits(128)
                expected = sampler.should_sample(context, trace_id, "s", attributes=attributes).decision
                assert _decide(sampler, parent, trace_id, attributes) is expected, (queue, parent)
                if parent is None:
                    kept.setdefault(queue, []).append(expected.is_sampled())
                else:
                    assert expected.is_sampled() == parent.trace_flags.sampled, "children follow the parent"
    assert not any(kept["hot"]) and all(kept["cold"]) and all(kept[None])
    assert 0.3 < sum(kept["warm"]) / len(kept["warm"]) < 0.7
    # A workflow run is one trace: its steps are decided by the default, whatever their queue.
    step = {"messaging.destination.name": "hot", WORKFLOW_RUN_ID: "run-1"}
    assert _decide(sampler, None, rng.getrandbits(128), step).is_sampled()
