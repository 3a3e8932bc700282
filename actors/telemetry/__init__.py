"""Telemetry: OpenTelemetry tracing of messages (spans, sampling, OTLP export), Prometheus metrics
and their exposition, and health checks.
"""

from .exposition import RedisStateCollector, registry_for
from .health import Check, HealthReport, check_health
from .message_spans import (
    RECORD_FIELDS,
    MessageBatchSpanProcessor,
    MessageSpan,
    QueuedSpan,
    SpanStarter,
    carrier_of,
    context_from,
    parent_from,
    span_record,
)
from .metrics import (
    ENQUEUED_KEY,
    SCHEDULER_KEY,
    EnqueueCounts,
    Metrics,
    WorkerMetrics,
    claim_directory,
    count_restart,
    enqueue_counts,
    mark_dead_processes,
    restart_counts,
    use_directory,
)
from .otlp_export import encode_spans, grpc_span_exporter, http_span_exporter
from .sampling import QueueRatioSampler
from .tracing import RunTraceIdGenerator, TraceIdFormatter, Tracing, root_sampler, tracer_provider_for

__all__ = [
    "ENQUEUED_KEY",
    "RECORD_FIELDS",
    "SCHEDULER_KEY",
    "Check",
    "EnqueueCounts",
    "HealthReport",
    "MessageBatchSpanProcessor",
    "MessageSpan",
    "Metrics",
    "QueueRatioSampler",
    "QueuedSpan",
    "RedisStateCollector",
    "RunTraceIdGenerator",
    "SpanStarter",
    "TraceIdFormatter",
    "Tracing",
    "WorkerMetrics",
    "carrier_of",
    "check_health",
    "claim_directory",
    "context_from",
    "count_restart",
    "encode_spans",
    "enqueue_counts",
    "grpc_span_exporter",
    "http_span_exporter",
    "mark_dead_processes",
    "parent_from",
    "registry_for",
    "restart_counts",
    "root_sampler",
    "span_record",
    "tracer_provider_for",
    "use_directory",
]
