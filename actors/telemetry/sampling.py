"""Head sampling by queue: a busy queue of tiny messages can keep a share of its traces, the rest all.

An OpenTelemetry sampler like any other (wrap it in ``ParentBased`` so a
trace is kept or dropped whole); the Tracing middleware's fast paths decide
it without a call, as they do the SDK's own samplers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from saga.run_tracing import WORKFLOW_RUN_ID

#: The span attribute naming a message's queue (set by the Tracing middleware on its spans).
QUEUE_ATTRIBUTE = "messaging.destination.name"


class QueueRatioSampler(Sampler):
    """Samples a new trace by the ratio of the queue its first span names, other traces by ``default``.

    A workflow run's spans are decided by ``default`` whatever their queue:
    the run is one trace, started by whichever of its steps is sent first,
    and a step on a queue of its own ratio would otherwise cut it in parts.

    Parameters:
      ratios(Mapping[str, float]): Share of new traces kept (0..1), by queue name
        (the ``messaging.destination.name`` attribute, e.g. ``ib_positions``).
      default(float): Share of the other new traces kept (0..1).
    """

    def __init__(self, ratios: Mapping[str, float], *, default: float) -> None:
        self.default = TraceIdRatioBased(default)
        self.by_queue = {queue: TraceIdRatioBased(ratio) for queue, ratio in ratios.items()}

    def sampler_for(self, attributes: Attributes) -> TraceIdRatioBased:
        """The ratio sampler that decides a span with ``attributes``."""
        if not attributes or not self.by_queue or WORKFLOW_RUN_ID in attributes:
            return self.default
        return self.by_queue.get(attributes.get(QUEUE_ATTRIBUTE), self.default)  # type: ignore[arg-type]

    def samplers(self) -> list[TraceIdRatioBased]:
        """Every sampler it delegates to."""
        return [self.default, *self.by_queue.values()]

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        return self.sampler_for(attributes).should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        queues = ",".join(f"{queue}={sampler.rate}" for queue, sampler in sorted(self.by_queue.items()))
        return f"QueueRatioSampler{{default={self.default.rate},{queues}}}"

    def __repr__(self) -> str:
        return self.get_description()
