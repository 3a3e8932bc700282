"""What a benchmark's producer process runs after its sends, so that what they caused counts."""

import sys

from opentelemetry import trace


def flush(broker) -> None:
    """Write the audit events still queued (tradeflow sides) and export the spans still held by
    the tracer provider (tracing sides)."""
    if "actors" in sys.modules:
        from actors import audit_writer_of

        writer = audit_writer_of(broker)
        if writer is not None:
            writer.flush(120)
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if force_flush is not None:
        force_flush()
