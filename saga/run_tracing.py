"""One trace per workflow run: the run's root span, its end span and fan-out links.

A run's messages share a trace whose id derives from the run id
(:func:`run_trace_id`), so whichever process sends a step, its spans land in
the run's trace.  The engine opens the run's root span ``workflow {name}``
when it creates the run (:func:`run_root_span`), records ``workflow {name}
{status}`` once a transition ended the run (:func:`end_run_span`), and puts a
span link instead of a parent on the messages of a fan-out wider than
:data:`FAN_OUT_LINK_THRESHOLD` (:func:`fan_out_links`), so one run does not
become a trace of thousands of spans that Jaeger cannot draw.  The
``Tracing`` broker middleware (``actors.telemetry.tracing``) reads the message options
defined here; any producer may set them.

This module only needs ``opentelemetry-api``: with tracing off every
function is a cheap no-op.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

#: Message option: the W3C context a message's ``send`` span is parented to.
PARENT_OPTION = "trace_parent"

#: Message option: W3C contexts the message's spans link to (large fan-outs).
LINKS_OPTION = "trace_links"

#: Message option: extra span attributes (step name, compensation flag).
ATTRIBUTES_OPTION = "trace_attributes"

#: Message option written by the middleware: the context of the message's
#: latest ``send`` (or ``process``) span, read by the consumer and by retries.
CONTEXT_OPTION = "trace_context"

#: Above this many sibling messages, children link to the run's root span
#: instead of nesting under it.
FAN_OUT_LINK_THRESHOLD = 100

#: Attribute names of workflow spans.
WORKFLOW_NAME = "tradeflow.workflow.name"
WORKFLOW_RUN_ID = "tradeflow.workflow.run_id"
WORKFLOW_STEP = "tradeflow.workflow.step"
WORKFLOW_COMPENSATION = "tradeflow.workflow.compensation"
WORKFLOW_STATUS = "tradeflow.workflow.status"

#: Final run statuses whose end span is an error.
ERROR_STATUSES = frozenset({"failed", "compensation_failed"})


#: The trace id the next span started without a parent gets: a workflow run's.
#: Read by the tracer provider's id generator (``actors.telemetry.tracing.RunTraceIdGenerator``).
NEXT_TRACE_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar("next_trace_id", default=None)


def run_trace_id(run_id: str) -> int:
    """The trace id of a run's messages: derived from its id, the same in every process.

    The tracing middleware starts the trace of a step message sent outside
    any span of its run (the engine starting the run, recovery re-sending a
    lost step, ``workflow resume``) with this id, so a run is one trace even
    without a carrier stored with it.  Uniformly distributed, as ratio
    sampling expects, so a run is sampled whole or not at all.
    """
    digest = hashlib.blake2b(run_id.encode(), digest_size=16, person=b"tradeflow-run").digest()
    return int.from_bytes(digest, "big") or 1


def _tracer(tracer_provider: trace.TracerProvider | None) -> trace.Tracer:
    return trace.get_tracer(__name__, tracer_provider=tracer_provider)


@contextmanager
def run_root_span(
    workflow: str, run_id: str, *, tracer_provider: trace.TracerProvider | None = None
) -> Iterator[None]:
    """The run's root span ``workflow {workflow}``, current while the run's first steps are sent.

    It opens the run's own trace (:func:`run_trace_id`), so the steps sent
    under it nest below it and later steps, whoever sends them, join the same
    trace; a caller's span (an API request) is linked, not made the parent.
    With tracing off (no provider, or one with a random id generator and no
    processor) it costs one no-op span.
    """
    current = trace.get_current_span().get_span_context()
    token = NEXT_TRACE_ID.set(run_trace_id(run_id))
    try:
        span = _tracer(tracer_provider).start_span(
            f"workflow {workflow}",
            context=context.Context(),
            kind=SpanKind.INTERNAL,
            attributes={WORKFLOW_NAME: workflow, WORKFLOW_RUN_ID: run_id},
            links=[Link(current)] if current.is_valid else None,
        )
    finally:
        NEXT_TRACE_ID.reset(token)
    with trace.use_span(span, end_on_exit=True):
        yield


def end_run_span(
    workflow: str,
    run_id: str,
    *,
    status: str,
    error: str | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> None:
    """Record that a run ended: a span ``workflow {workflow} {status}`` in the run's trace.

    The engine calls it once the transaction that gave the run its final
    status committed.  It nests under the current span when that belongs to
    the run (the ``process`` span of the step whose outcome ended it);
    otherwise (an operator's cancel, the recovery sweep) it is a top-level
    span of the run's trace, linked to the caller's span if any.  ``failed``
    and ``compensation_failed`` runs get ERROR status, with ``error``.
    """
    trace_id = run_trace_id(run_id)
    current = trace.get_current_span().get_span_context()
    in_run = current.is_valid and current.trace_id == trace_id
    token = None if in_run else NEXT_TRACE_ID.set(trace_id)
    try:
        span = _tracer(tracer_provider).start_span(
            f"workflow {workflow} {status}",
            context=None if in_run else context.Context(),
            attributes={WORKFLOW_NAME: workflow, WORKFLOW_RUN_ID: run_id, WORKFLOW_STATUS: status},
            links=[Link(current)] if current.is_valid and not in_run else None,
        )
    finally:
        if token is not None:
            NEXT_TRACE_ID.reset(token)
    if status in ERROR_STATUSES:
        span.set_status(Status(StatusCode.ERROR, error or f"workflow run {status}"))
    span.end()


def fan_out_links(count: int) -> list[dict[str, str]] | None:
    """The :data:`LINKS_OPTION` for each of ``count`` messages sent at once: a link to the
    current span when ``count`` exceeds :data:`FAN_OUT_LINK_THRESHOLD` (each child then starts
    a trace of its own), None when they should nest under it (or no span is current)."""
    if count <= FAN_OUT_LINK_THRESHOLD:
        return None
    carrier = sender_carrier()
    return None if carrier is None else [carrier]


def sender_carrier() -> dict[str, str] | None:
    """The W3C carrier of the current span, for messages another thread will send on its
    behalf (:func:`address`); None when no span is current (tracing off costs this lookup)."""
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def address(messages: list, carrier: dict[str, str] | None) -> None:
    """Make ``messages`` nest under (or, for a fan-out wider than
    :data:`FAN_OUT_LINK_THRESHOLD`, link to) the span of ``carrier``, whichever thread sends
    them: what sending them with that span current does."""
    if carrier is None:
        return
    option, value = (
        (LINKS_OPTION, [carrier]) if len(messages) > FAN_OUT_LINK_THRESHOLD else (PARENT_OPTION, carrier)
    )
    for message in messages:
        message.options[option] = value


def links_from(carriers: list[Mapping[str, str]] | None) -> list[Link]:
    """Span links to the valid contexts among ``carriers``."""
    links = []
    for carrier in carriers or ():
        span_context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    return links
