"""The saga engine's spans with a real worker, Redis and database: a run's end span with its
final status, and a large fan-out linked to its parent instead of nested under it."""

from __future__ import annotations

from contextlib import contextmanager

import dramatiq
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from saga_helpers import running_stack, wait_for_run

from actors.telemetry import RunTraceIdGenerator, Tracing
from saga import Step, Workflow
from saga.run_tracing import FAN_OUT_LINK_THRESHOLD, WORKFLOW_STATUS, WORKFLOW_STEP, run_trace_id

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@contextmanager
def traced_stack(settings, exporter: InMemorySpanExporter, *, worker: bool = True):
    """The saga stack with tracing into ``exporter`` and (``worker``) a worker of 4 threads."""
    provider = TracerProvider(id_generator=RunTraceIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with running_stack(settings, worker=False) as stack:
        stack.broker.add_middleware(
            Tracing(tracer_provider=provider), before=type(stack.broker.middleware[0])
        )
        stack.engine.tracer_provider = provider
        stack.provider = provider
        running = dramatiq.Worker(stack.broker, worker_threads=4, worker_timeout=100) if worker else None
        if running:
            running.start()
        try:
            yield stack
        finally:
            if running:
                running.stop(timeout=10_000)


def _named(spans, name: str) -> list:
    return [span for span in spans if span.name == name]


def test_a_run_ends_with_a_span_of_its_status_under_the_step_that_ended_it(settings, exporter) -> None:
    with traced_stack(settings, exporter) as stack:
        good = Workflow(
            "good", [Step("a", "record", args=("a",)), Step("b", "record", args=("b",), depends_on=["a"])]
        )
        bad = Workflow("bad", [Step("x", "fail", args=("x",), max_retries=0)])
        good_id, bad_id = stack.engine.start(good), stack.engine.start(bad)
        assert wait_for_run(stack.db, good_id).status == "succeeded"
        assert wait_for_run(stack.db, bad_id).status == "failed"
    spans = exporter.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}

    (ended,) = _named(spans, "workflow good succeeded")
    assert ended.context.trace_id == run_trace_id(good_id)
    assert ended.attributes[WORKFLOW_STATUS] == "succeeded" and ended.status.status_code is StatusCode.UNSET
    parent = by_id[ended.parent.span_id]
    assert parent.kind is SpanKind.CONSUMER and parent.attributes[WORKFLOW_STEP] == "b"

    (failed,) = _named(spans, "workflow bad failed")
    assert failed.context.trace_id == run_trace_id(bad_id)
    assert failed.status.status_code is StatusCode.ERROR and "step 'x' failed" in failed.status.description


def test_a_cancel_from_outside_ends_the_run_in_its_trace_linked_to_the_caller(settings, exporter) -> None:
    with traced_stack(settings, exporter, worker=False) as stack:  # the step stays ready
        run_id = stack.engine.start(Workflow("held", [Step("wait", "record", args=("wait",))]))
        with stack.provider.get_tracer("api").start_as_current_span("POST /runs/cancel") as request:
            stack.engine.cancel(run_id)
        assert wait_for_run(stack.db, run_id).status == "cancelled"
    (ended,) = _named(exporter.get_finished_spans(), "workflow held cancelled")
    assert ended.context.trace_id == run_trace_id(run_id) and ended.parent is None
    assert [link.context.span_id for link in ended.links] == [request.get_span_context().span_id]


@pytest.mark.parametrize("width", [3, FAN_OUT_LINK_THRESHOLD + 1])
def test_a_fan_out_nests_under_its_parent_up_to_the_threshold_and_links_beyond(
    settings, exporter, width: int
) -> None:
    leaves = [Step(f"leaf{i}", "count", args=(f"leaf{i}",), depends_on=["root"]) for i in range(width)]
    workflow = Workflow("fan", [Step("root", "count", args=("root",)), *leaves])
    with traced_stack(settings, exporter) as stack:
        run_id = stack.engine.start(workflow)
        assert wait_for_run(stack.db, run_id).status == "succeeded"
    spans = exporter.get_finished_spans()
    (root_process,) = [
        s for s in spans if s.attributes.get(WORKFLOW_STEP) == "root" and s.kind is SpanKind.CONSUMER
    ]
    sends = [
        s
        for s in spans
        if str(s.attributes.get(WORKFLOW_STEP)).startswith("leaf") and s.kind is SpanKind.PRODUCER
    ]
    assert len(sends) == width
    if width <= FAN_OUT_LINK_THRESHOLD:
        assert all(s.parent.span_id == root_process.context.span_id for s in sends)
        assert {s.context.trace_id for s in sends} == {run_trace_id(run_id)}
    else:
        assert all(s.parent is None for s in sends), "children start traces of their own"
        assert len({s.context.trace_id for s in sends}) == width
        assert all(
            [link.context.span_id for link in s.links] == [root_process.context.span_id] for s in sends
        )
